//! [`RemoteObjects`] on the upload stage's [`ObjectStore`]: playback and downloads of clips
//! whose local file is gone go through the appliance from the bucket (or, with the presign
//! option, to a presigned URL).

use std::io::Read;
use std::sync::Arc;

use super::clips::{ClipError, RemoteObjects};
use crate::error::Classify;
use crate::upload::{ObjectStore, StoreError};

/// The bucket as a clip source.
pub struct StoreClips {
    store: Arc<dyn ObjectStore>,
}

impl StoreClips {
    /// Wraps a store.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self { store }
    }
}

fn err(e: StoreError) -> ClipError {
    if matches!(e, StoreError::NotFound { .. }) {
        return ClipError::Unavailable;
    }
    ClipError::Remote {
        transient: e.is_transient(),
        message: e.to_string(),
    }
}

impl RemoteObjects for StoreClips {
    fn size(&self, key: &str) -> Result<Option<u64>, ClipError> {
        Ok(self.store.head(key).map_err(err)?.map(|i| i.size_bytes))
    }

    fn read(&self, key: &str, start: u64, len: u64) -> Result<Box<dyn Read + Send>, ClipError> {
        if len == 0 {
            return Ok(Box::new(std::io::empty()));
        }
        let r = self
            .store
            .get(key, Some((start, Some(start + len - 1))))
            .map_err(err)?;
        // Never hand out more than asked, whatever the store sends.
        Ok(Box::new(r.take(len)))
    }

    fn presign(&self, key: &str, expiry_s: u32) -> Option<String> {
        match self.store.presign_get(key, expiry_s) {
            Ok(u) => u,
            Err(e) => {
                log::warn!("event=presign_failed error={e}");
                None
            }
        }
    }
}

/// The thumbnail key the uploader uses for a clip key (`.mp4` -> `.jpg`).
pub fn thumb_key_of(clip_key: &str) -> Option<String> {
    clip_key
        .ends_with(".mp4")
        .then(|| crate::upload::location::thumbnail_key(clip_key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::backend::ClipRow;
    use crate::serve::clips::{ClipSource, LocalThenRemote};
    use crate::upload::{LocalDirStore, PutOptions};

    #[test]
    fn clips_without_a_local_file_stream_from_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::open(&dir.path().join("bucket")).unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
        let opts = PutOptions {
            content_type: "video/mp4".into(),
            sha256_hex: String::new(),
        };
        store.put_bytes("u/s/clip-1.mp4", &data, &opts).unwrap();
        store.put_bytes("u/s/clip-1.jpg", b"JPEG", &opts).unwrap();
        let source = LocalThenRemote::new(Some(Arc::new(StoreClips::new(Arc::new(store)))));
        let clip = ClipRow {
            id: 1,
            local_path: Some(dir.path().join("gone.mp4")),
            thumb_path: None,
            object_key: Some("u/s/clip-1.mp4".into()),
            thumb_key: thumb_key_of("u/s/clip-1.mp4"),
            location: "file:///bucket/u/s/clip-1.mp4".into(),
            bytes: 0,
            duration_ms: 0,
            start_ms: 0,
            state: "uploaded".into(),
            failed: false,
            sha256: None,
        };
        assert_eq!(source.size(&clip).unwrap(), 10_000);
        let mut out = Vec::new();
        source
            .read(&clip, 100, 50)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, &data[100..150]);
        assert_eq!(source.thumbnail(&clip).unwrap().unwrap(), b"JPEG");
        let missing = ClipRow {
            object_key: Some("u/s/none.mp4".into()),
            ..clip
        };
        assert!(matches!(source.size(&missing), Err(ClipError::Unavailable)));
    }
}
