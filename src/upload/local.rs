//! `LocalDirStore`: a directory that behaves like a bucket, the embedded default store.
//!
//! Object `a/b.mp4` is the file `<root>/a/b.mp4`. Writes go to `<root>/.tmp/`, are fsynced and
//! renamed into place (then the directory is fsynced), so a reader never sees half an object.
//! Metadata (SHA-256, content type) lives in a sidecar `<root>/.meta/a/b.mp4.json`, written
//! before the object so `head()` of a present object finds it. Keys pass
//! [`super::store::check_key`] (no component starts with `.`), so they can never escape the
//! directory nor collide with the hidden `.tmp`/`.meta` trees.
//!
//! Temp files a crash left behind are removed when the store is opened, once they are older than
//! [`LOCAL_STORE_TMP_STALE_S`] (another process may be writing the fresh ones).
//!
//! Does not: presign (there is no URL; serve/ streams through `get`).

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::store::{
    ListPage, ListedObject, ObjectInfo, ObjectStore, PutOptions, StoreError, check_key,
};
use crate::durable;
use crate::limits::{LOCAL_STORE_TMP_STALE_S, STORE_LIST_PAGE_KEYS_MAX};

const TMP_DIR: &str = ".tmp";
const META_DIR: &str = ".meta";

/// Sidecar content.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Sidecar {
    sha256_hex: String,
    content_type: String,
    size_bytes: u64,
}

/// A bucket in a local directory.
#[derive(Debug)]
pub struct LocalDirStore {
    root: PathBuf,
}

impl LocalDirStore {
    /// Opens (creating if needed) the store rooted at `root`.
    ///
    /// # Errors
    /// [`StoreError::LocalIo`] when the directory cannot be created.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        for dir in [root.to_path_buf(), root.join(TMP_DIR), root.join(META_DIR)] {
            fs::create_dir_all(&dir).map_err(|source| StoreError::LocalIo { path: dir, source })?;
        }
        let removed = remove_stale_temps(&root.join(TMP_DIR), LOCAL_STORE_TMP_STALE_S);
        if removed > 0 {
            log::info!(
                "event=local_store_temps_removed count={removed} dir={}",
                root.display()
            );
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// The store rooted at `root`, without touching the disk: for a start-up where the
    /// directory cannot be made yet (a mount not up, a permission being fixed). Every write
    /// creates what is missing, so the store works once the cause is gone.
    pub fn unopened(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    /// The directory holding the objects.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn object_path(&self, key: &str) -> Result<PathBuf, StoreError> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    fn sidecar_path(&self, key: &str) -> PathBuf {
        self.root.join(META_DIR).join(format!("{key}.json"))
    }

    /// Writes `fill` into a temp file, fsyncs it and renames it to `dest` (fsyncing the parent).
    fn write_atomic(
        &self,
        dest: &Path,
        fill: impl FnOnce(&mut File) -> Result<u64, StoreError>,
    ) -> Result<u64, StoreError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::LocalIo { path, source }
        };
        let parent = dest.parent().unwrap_or(&self.root);
        fs::create_dir_all(parent).map_err(io(parent))?;
        let tmp_dir = self.root.join(TMP_DIR);
        fs::create_dir_all(&tmp_dir).map_err(io(&tmp_dir))?;
        let mut rnd = [0u8; 8];
        let _ = getrandom::fill(&mut rnd);
        let tmp = self.root.join(TMP_DIR).join(hex::encode(rnd));
        durable::replace_via_temp(
            &tmp,
            dest,
            |path, source| StoreError::LocalIo {
                path: path.to_path_buf(),
                source,
            },
            fill,
        )
    }

    fn write_sidecar(&self, key: &str, opts: &PutOptions, size: u64) -> Result<(), StoreError> {
        let sidecar = Sidecar {
            sha256_hex: opts.sha256_hex.clone(),
            content_type: opts.content_type.clone(),
            size_bytes: size,
        };
        let path = self.sidecar_path(key);
        let bytes = serde_json::to_vec(&sidecar).map_err(|e| StoreError::LocalIo {
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        self.write_atomic(&path, |f| {
            f.write_all(&bytes).map_err(|source| StoreError::LocalIo {
                path: path.clone(),
                source,
            })?;
            Ok(bytes.len() as u64)
        })?;
        Ok(())
    }

    fn info(&self, key: &str, size_bytes: u64, opts: &PutOptions) -> ObjectInfo {
        ObjectInfo {
            key: key.to_string(),
            size_bytes,
            sha256_hex: Some(opts.sha256_hex.clone()),
            etag: Some(opts.sha256_hex.clone()),
            content_type: Some(opts.content_type.clone()),
        }
    }
}

impl ObjectStore for LocalDirStore {
    fn put_file(
        &self,
        key: &str,
        path: &Path,
        opts: &PutOptions,
    ) -> Result<ObjectInfo, StoreError> {
        let dest = self.object_path(key)?;
        let src_err = |source| StoreError::SourceIo {
            path: path.to_path_buf(),
            source,
        };
        let mut src = File::open(path).map_err(src_err)?;
        let size = src.metadata().map_err(src_err)?.len();
        self.write_sidecar(key, opts, size)?;
        let written = self.write_atomic(&dest, |f| {
            // io::copy uses copy_file_range on Linux: no user-space copy of a 150 MB clip.
            io::copy(&mut src, f).map_err(|e| match e.kind() {
                // Errors on the write side are the store's; everything else is the source's.
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => StoreError::LocalIo {
                    path: dest.clone(),
                    source: e,
                },
                _ => src_err(e),
            })
        })?;
        if written != size {
            return Err(StoreError::Inconsistent {
                key: key.to_string(),
                detail: format!("copied {written} bytes of a {size}-byte file"),
            });
        }
        Ok(self.info(key, size, opts))
    }

    fn put_bytes(
        &self,
        key: &str,
        bytes: &[u8],
        opts: &PutOptions,
    ) -> Result<ObjectInfo, StoreError> {
        let dest = self.object_path(key)?;
        assert!(
            bytes.len() <= crate::limits::STORE_PUT_BYTES_MAX,
            "put_bytes of {} bytes: use put_file",
            bytes.len()
        );
        self.write_sidecar(key, opts, bytes.len() as u64)?;
        self.write_atomic(&dest, |f| {
            f.write_all(bytes).map_err(|source| StoreError::LocalIo {
                path: dest.clone(),
                source,
            })?;
            Ok(bytes.len() as u64)
        })?;
        Ok(self.info(key, bytes.len() as u64, opts))
    }

    fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        let path = self.object_path(key)?;
        let meta = match fs::metadata(&path) {
            Ok(m) if m.is_file() => m,
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::LocalIo { path, source }),
        };
        // A missing or unreadable sidecar leaves the object without a checksum: the uploader
        // then sees a mismatch and writes it again, which is the safe outcome.
        let sidecar: Option<Sidecar> = fs::read(self.sidecar_path(key))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(|s: &Sidecar| s.size_bytes == meta.len());
        Ok(Some(ObjectInfo {
            key: key.to_string(),
            size_bytes: meta.len(),
            sha256_hex: sidecar.as_ref().map(|s| s.sha256_hex.clone()),
            etag: sidecar.as_ref().map(|s| s.sha256_hex.clone()),
            content_type: sidecar.map(|s| s.content_type),
        }))
    }

    fn get(
        &self,
        key: &str,
        range: Option<(u64, Option<u64>)>,
    ) -> Result<Box<dyn Read + Send>, StoreError> {
        let path = self.object_path(key)?;
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound {
                    key: key.to_string(),
                });
            }
            Err(source) => return Err(StoreError::LocalIo { path, source }),
        };
        let Some((first, last)) = range else {
            return Ok(Box::new(file));
        };
        file.seek(SeekFrom::Start(first))
            .map_err(|source| StoreError::LocalIo { path, source })?;
        match last {
            Some(last) => Ok(Box::new(file.take((last + 1).saturating_sub(first)))),
            None => Ok(Box::new(file)),
        }
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.object_path(key)?;
        let meta_root = self.root.join(META_DIR);
        for (p, top) in [(path, &self.root), (self.sidecar_path(key), &meta_root)] {
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(StoreError::LocalIo { path: p, source }),
            }
            prune_empty_parents(&p, top);
        }
        Ok(())
    }

    fn presign_get(&self, key: &str, _expiry_s: u32) -> Result<Option<String>, StoreError> {
        check_key(key)?;
        Ok(None)
    }

    fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        token: Option<&str>,
    ) -> Result<ListPage, StoreError> {
        // The continuation token is the last key of the previous page: a directory has no
        // server-side state to point into.
        let after = token.or(start_after).unwrap_or("");
        // Only the directory the prefix names can hold matching keys.
        let base = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let mut found = Vec::new();
        let mut stack = vec![(self.root.join(base), base.to_string())];
        while let Some((dir, rel)) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(StoreError::LocalIo { path: dir, source }),
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                let key = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                let Ok(meta) = entry.metadata() else { continue };
                if meta.is_dir() {
                    // A directory can hold matching keys when the prefix starts with its
                    // path or its path starts with the prefix.
                    let dir_key = format!("{key}/");
                    if dir_key.starts_with(prefix) || prefix.starts_with(&dir_key) {
                        stack.push((entry.path(), key));
                    }
                } else if key.starts_with(prefix) && key.as_str() > after {
                    let mtime_ns = meta
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_nanos());
                    found.push(ListedObject {
                        etag: Some(format!("{mtime_ns:x}-{:x}", meta.len())),
                        key,
                        size_bytes: meta.len(),
                    });
                }
            }
        }
        found.sort_by(|a, b| a.key.cmp(&b.key));
        let more = found.len() > STORE_LIST_PAGE_KEYS_MAX;
        found.truncate(STORE_LIST_PAGE_KEYS_MAX);
        let next_token = more.then(|| found.last().map(|o| o.key.clone())).flatten();
        Ok(ListPage {
            objects: found,
            next_token,
        })
    }

    fn describe(&self) -> String {
        format!("local directory {}", self.root.display())
    }
}

/// Removes the files in `dir` last modified more than `stale_s` seconds ago; returns how many.
/// Best effort: a file that cannot be inspected or removed stays (and is retried next open).
/// Removes the directories between `file` and `top` (exclusive) that the deletion left empty,
/// as a bucket has no empty "folders": a key prefix exists only while it holds objects.
/// `remove_dir` refuses a directory that is not empty, so one that a concurrent put has just
/// filled stays; a put whose directory vanished at that moment fails transiently and is
/// retried.
fn prune_empty_parents(file: &Path, top: &Path) {
    let mut dir = file.parent();
    while let Some(d) = dir {
        if d == top || !d.starts_with(top) || fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
}

fn remove_stale_temps(dir: &Path, stale_s: u64) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let stale = std::time::Duration::from_secs(stale_s);
    entries
        .flatten()
        .filter(|e| {
            e.metadata().is_ok_and(|m| {
                m.is_file()
                    && m.modified()
                        .is_ok_and(|t| t.elapsed().is_ok_and(|a| a > stale))
            })
        })
        .filter(|e| fs::remove_file(e.path()).is_ok())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upload::store::CONTENT_TYPE_MP4;

    fn opts(sha: &str) -> PutOptions {
        PutOptions {
            content_type: CONTENT_TYPE_MP4.into(),
            sha256_hex: sha.into(),
        }
    }

    #[test]
    fn put_head_get_range_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::open(&dir.path().join("bucket")).unwrap();
        let src = dir.path().join("clip.mp4");
        fs::write(&src, b"0123456789").unwrap();
        let info = store.put_file("u/s/clip-1.mp4", &src, &opts("ab")).unwrap();
        assert_eq!(info.size_bytes, 10);
        let head = store.head("u/s/clip-1.mp4").unwrap().unwrap();
        assert_eq!(head.sha256_hex.as_deref(), Some("ab"));
        assert_eq!(head.content_type.as_deref(), Some(CONTENT_TYPE_MP4));
        let mut s = String::new();
        store
            .get("u/s/clip-1.mp4", Some((2, Some(4))))
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "234");
        s.clear();
        store
            .get("u/s/clip-1.mp4", Some((7, None)))
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "789");
        assert!(store.presign_get("u/s/clip-1.mp4", 60).unwrap().is_none());
        store.delete("u/s/clip-1.mp4").unwrap();
        store.delete("u/s/clip-1.mp4").unwrap();
        assert!(store.head("u/s/clip-1.mp4").unwrap().is_none());
        assert!(matches!(
            store.get("u/s/clip-1.mp4", None),
            Err(StoreError::NotFound { .. })
        ));
        // Nothing left in the temp area.
        assert_eq!(fs::read_dir(store.root().join(TMP_DIR)).unwrap().count(), 0);
        // No empty "folders" left behind (doctor's probe objects included), but the store's own
        // directories stay.
        assert!(!store.root().join("u").exists());
        assert!(!store.root().join(META_DIR).join("u").exists());
        assert!(store.root().join(META_DIR).is_dir());
    }

    #[test]
    fn stale_temps_of_a_crash_are_removed_at_open_fresh_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("bucket");
        LocalDirStore::open(&root).unwrap();
        let tmp = root.join(TMP_DIR);
        let old = tmp.join("0123456789abcdef");
        fs::write(&old, b"half a clip").unwrap();
        let an_hour_ago = std::time::SystemTime::now()
            - std::time::Duration::from_secs(LOCAL_STORE_TMP_STALE_S + 60);
        File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(an_hour_ago)
            .unwrap();
        let fresh = tmp.join("fedcba9876543210");
        fs::write(&fresh, b"being written").unwrap();
        LocalDirStore::open(&root).unwrap();
        assert!(!old.exists(), "a crash's leftover is removed");
        assert!(
            fresh.exists(),
            "a write in progress elsewhere is left alone"
        );
    }

    #[test]
    fn lists_pages_in_key_order_under_a_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::open(dir.path()).unwrap();
        for k in [
            "m/2.json",
            "m/1.json",
            "m/sub/3.json",
            "other/x.mp4",
            "mx.json",
        ] {
            store.put_bytes(k, b"{}", &opts(&"0".repeat(64))).unwrap();
        }
        let page = store.list_page("m/", None, None).unwrap();
        let keys: Vec<_> = page.objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, ["m/1.json", "m/2.json", "m/sub/3.json"]);
        assert_eq!(page.next_token, None);
        assert_eq!(page.objects[0].size_bytes, 2);
        let page = store.list_page("m/", Some("m/1.json"), None).unwrap();
        assert_eq!(page.objects.len(), 2);
        let page = store.list_page("m", None, None).unwrap();
        assert_eq!(page.objects.len(), 4, "{page:?}");
    }

    #[test]
    fn keys_never_escape_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::open(&dir.path().join("bucket")).unwrap();
        for key in [
            "../x.mp4",
            "/etc/x.mp4",
            "a/../../x.mp4",
            ".meta/x.json",
            "a/.tmp/x",
        ] {
            let e = store.put_bytes(key, b"x", &opts("00")).unwrap_err();
            assert!(matches!(e, StoreError::InvalidKey { .. }), "{key}: {e}");
        }
        assert!(!dir.path().join("x.mp4").exists());
    }

    #[test]
    fn overwrite_replaces_object_and_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::open(dir.path()).unwrap();
        store.put_bytes("k.json", b"one", &opts("11")).unwrap();
        store.put_bytes("k.json", b"second", &opts("22")).unwrap();
        let head = store.head("k.json").unwrap().unwrap();
        assert_eq!(
            (head.size_bytes, head.sha256_hex.as_deref()),
            (6, Some("22"))
        );
    }

    #[test]
    fn probe_round_trips_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::open(dir.path()).unwrap();
        store.probe().unwrap();
        // The probe's "folder" goes with its object: a bucket has no empty prefixes.
        let probe_dir = dir.path().join(crate::upload::store::PROBE_KEY_PREFIX);
        assert!(!probe_dir.exists(), "{}", probe_dir.display());
    }

    #[test]
    fn missing_source_file_is_permanent_source_error() {
        use crate::error::Classify;
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::open(dir.path()).unwrap();
        let e = store
            .put_file("a.mp4", &dir.path().join("nope.mp4"), &opts("00"))
            .unwrap_err();
        assert!(matches!(e, StoreError::SourceIo { .. }));
        assert!(!e.is_transient());
    }
}
