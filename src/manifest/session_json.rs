//! Per-session manifest: one JSON object listing every clip of a closed session, uploaded next
//! to the clips (key from [`crate::upload::location::manifest_key`]) after all of them are
//! confirmed.
//!
//! Owns the manifest's JSON shape (`format` 1). Does no I/O and does not decide when it is
//! written (the manifest worker does, once the session is over and its last clip is up).

use crate::clock::format_datetime_ms;
use crate::limits::MANIFEST_CLIPS_MAX;

/// Version of the manifest JSON layout.
pub const MANIFEST_FORMAT: u32 = 1;

/// One clip as listed in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ManifestClip {
    /// 0-based clip index within the session.
    pub index: u32,
    /// Object key of the MP4.
    pub key: String,
    /// Object key of the JPEG thumbnail, when one was uploaded.
    pub thumbnail_key: Option<String>,
    /// Size of the MP4 in bytes.
    pub size_bytes: u64,
    /// Hex SHA-256 of the MP4.
    pub sha256: String,
    /// Clip start, ms since the epoch.
    pub start_ms: u64,
    /// Clip end, ms since the epoch.
    pub end_ms: u64,
    /// Clip start as `2023-12-12 21:12:45.386547` (UTC).
    pub start: String,
    /// Clip end in the same form.
    pub end: String,
}

impl ManifestClip {
    /// A clip entry; the readable dates are derived from the millisecond times.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        index: u32,
        key: String,
        thumbnail_key: Option<String>,
        size_bytes: u64,
        sha256: String,
        start_ms: u64,
        end_ms: u64,
    ) -> Self {
        Self {
            index,
            key,
            thumbnail_key,
            size_bytes,
            sha256,
            start_ms,
            end_ms,
            start: format_datetime_ms(start_ms),
            end: format_datetime_ms(end_ms),
        }
    }
}

/// The manifest of one session.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionManifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: u32,
    /// Session id.
    pub session_id: String,
    /// User id.
    pub user_id: String,
    /// User name.
    pub username: String,
    /// Workspace image / connection name.
    pub image_friendly_name: String,
    /// Appliance host name.
    pub hostname: String,
    /// Session start, ms since the epoch.
    pub start_ms: u64,
    /// Session end, ms since the epoch.
    pub end_ms: u64,
    /// Session start as `2023-12-12 21:12:45.386547` (UTC).
    pub start: String,
    /// Session end in the same form.
    pub end: String,
    /// How the session ended (see `manifest::signed::FleetManifest::end_reason` for the
    /// names), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<String>,
    /// The remote host the session connected to (`host:port`), when known; absent in
    /// manifests of imported recordings and of sessions recorded before targets were kept.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target: String,
    /// The peer address the tap accepted (`ip:port`), when known; absent like `target`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_addr: String,
    /// Total bytes of all clips.
    pub total_bytes: u64,
    /// Clips in index order.
    pub clips: Vec<ManifestClip>,
}

/// A manifest that cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// More clips than [`MANIFEST_CLIPS_MAX`].
    #[error("session has {0} clips, more than a manifest lists")]
    TooManyClips(usize),
    /// Two clips share an index.
    #[error("clip index {0} appears twice")]
    DuplicateIndex(u32),
}

impl crate::error::Classify for ManifestError {
    fn is_transient(&self) -> bool {
        false
    }
}

impl SessionManifest {
    /// Builds a manifest; clips are sorted by index and totals computed.
    ///
    /// # Errors
    /// [`ManifestError`] for too many clips or a repeated index.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        session_id: &str,
        user_id: &str,
        username: &str,
        image_friendly_name: &str,
        hostname: &str,
        start_ms: u64,
        end_ms: u64,
        mut clips: Vec<ManifestClip>,
    ) -> Result<Self, ManifestError> {
        if clips.len() > MANIFEST_CLIPS_MAX {
            return Err(ManifestError::TooManyClips(clips.len()));
        }
        clips.sort_by_key(|c| c.index);
        if let Some(w) = clips.windows(2).find(|w| w[0].index == w[1].index) {
            return Err(ManifestError::DuplicateIndex(w[0].index));
        }
        Ok(Self {
            format: MANIFEST_FORMAT,
            session_id: session_id.into(),
            user_id: user_id.into(),
            username: username.into(),
            image_friendly_name: image_friendly_name.into(),
            hostname: hostname.into(),
            start_ms,
            end_ms,
            start: format_datetime_ms(start_ms),
            end: format_datetime_ms(end_ms),
            end_reason: None,
            target: String::new(),
            client_addr: String::new(),
            total_bytes: clips.iter().map(|c| c.size_bytes).sum(),
            clips,
        })
    }

    /// Pretty JSON bytes, ready for `put_bytes`.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain strings and integers cannot fail.
        serde_json::to_vec_pretty(self).expect("manifest serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clip(i: u32) -> ManifestClip {
        ManifestClip::new(
            i,
            format!("s/{i}.mp4"),
            Some(format!("s/{i}.jpg")),
            10 + u64::from(i),
            "ab".repeat(32),
            1_000 * u64::from(i),
            1_000 * u64::from(i) + 999,
        )
    }

    #[test]
    fn sorted_totals_and_round_trip() {
        let m = SessionManifest::new(
            "s",
            "u1",
            "alice",
            "Ubuntu",
            "host",
            0,
            5_000,
            vec![clip(2), clip(0), clip(1)],
        )
        .unwrap();
        assert_eq!(
            m.clips.iter().map(|c| c.index).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert_eq!(m.total_bytes, 33);
        let json = m.to_json();
        let back: SessionManifest = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, m);
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["format"], 1);
        assert_eq!(v["clips"][1]["start"], "1970-01-01 00:00:01.000000");
        assert!(v.get("target").is_none(), "no target: no member");
    }

    #[test]
    fn target_and_client_address_are_members_when_known() {
        let mut m = SessionManifest::new("s", "u", "n", "i", "h", 0, 1, vec![clip(0)]).unwrap();
        m.target = "erp.example:3389".into();
        m.client_addr = "10.1.2.3:50123".into();
        let v: serde_json::Value = serde_json::from_slice(&m.to_json()).unwrap();
        assert_eq!(v["target"], "erp.example:3389");
        assert_eq!(v["client_addr"], "10.1.2.3:50123");
        let back: SessionManifest = serde_json::from_slice(&m.to_json()).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn rejects_duplicate_index() {
        let e = SessionManifest::new("s", "u", "n", "i", "h", 0, 1, vec![clip(1), clip(1)]);
        assert_eq!(e.unwrap_err(), ManifestError::DuplicateIndex(1));
    }
}
