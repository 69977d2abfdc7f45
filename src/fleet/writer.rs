//! The appliance side of fleet history: turns a session's queue records into a signed fleet
//! manifest version and puts it in the bucket under the manifest prefix.
//!
//! Owns the version rule and the end-state rule, and the clean-up of superseded versions.
//! Called by the upload worker after every clip upload and when a session has settled; does
//! not decide when sessions end (ingest and queue recovery do).
//!
//! Version rule: `2 x clips listed`, `+1` once final. Clips only ever land, and a final
//! manifest gains none, so versions grow with every rewrite and are the same number for the
//! same content (a rewrite after a restart writes identical bytes under a new key; the reader
//! keeps one).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ed25519_dalek::SigningKey;
use sha2::Digest;

use super::manifest::{EndState, FleetClip, FleetManifest, ManifestInput, version_key};
use crate::queue::{Clip, ClipStateKind, Segment, SegmentStateKind, Session, SessionState};
use crate::upload::location::thumbnail_key;
use crate::upload::store::{CONTENT_TYPE_JSON, ObjectStore, PutOptions, StoreError};

/// What the writer needs to know about this appliance.
#[derive(Clone)]
pub struct FleetWriterConfig {
    /// Setting `appliance-id`.
    pub appliance_id: String,
    /// Key prefix of manifests in the bucket (setting `storage.manifest-prefix`).
    pub prefix: String,
    /// The appliance's signing key.
    pub key: Arc<SigningKey>,
}

impl std::fmt::Debug for FleetWriterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetWriterConfig")
            .field("appliance_id", &self.appliance_id)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Where a session stands, as far as its manifest is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Still live or work still pending: a partial manifest.
    No,
    /// Ended and nothing more will come: a final manifest with this end state.
    Yes(EndState),
}

/// Decides whether a session is settled: ended (closed, or interrupted with its end known),
/// every segment done with (encoded, failed, quarantined) and every clip done with (up or
/// expired). Failed segments and expired clips make the end state `failed`.
pub fn settled(session: &Session, segments: &[Segment], clips: &[Clip]) -> Settled {
    let ended = match session.state {
        SessionState::Closed => Some(EndState::Closed),
        SessionState::Interrupted if session.end_ms.is_some() => Some(EndState::Interrupted),
        _ => None,
    };
    let Some(mut state) = ended else {
        return Settled::No;
    };
    for s in segments {
        match s.state.kind() {
            SegmentStateKind::Encoded => {}
            SegmentStateKind::Failed | SegmentStateKind::Quarantined => state = EndState::Failed,
            _ => return Settled::No,
        }
    }
    for c in clips {
        match c.state.kind() {
            ClipStateKind::Uploaded | ClipStateKind::LocalDeleted => {}
            ClipStateKind::Expired => state = EndState::Failed,
            _ => return Settled::No,
        }
    }
    Settled::Yes(state)
}

/// Writes manifest versions; shared by the upload threads.
pub struct FleetWriter {
    cfg: FleetWriterConfig,
    /// Last version written per queue session id this run, and its key: superseded versions
    /// are deleted, and an unchanged version is not written twice.
    last: Mutex<HashMap<u64, (u64, String)>>,
}

impl FleetWriter {
    /// A writer for this appliance.
    pub fn new(cfg: FleetWriterConfig) -> Self {
        Self {
            cfg,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// Public key hex of the signing key.
    pub fn public_key_hex(&self) -> String {
        super::keys::public_hex(&self.cfg.key)
    }

    /// Writes the manifest version of `session` now (clips that are up, in session order),
    /// unless this run already wrote that version. Returns the key written, if any.
    ///
    /// # Errors
    /// The store's error; the caller retries at its next housekeeping.
    pub fn write(
        &self,
        store: &dyn ObjectStore,
        session: &Session,
        segments: &[Segment],
        clips: &[Clip],
        now_ms: u64,
    ) -> Result<Option<String>, StoreError> {
        let state = match settled(session, segments, clips) {
            Settled::No => EndState::Live,
            Settled::Yes(s) => s,
        };
        let listed = listed_clips(segments, clips);
        let version = 2 * listed.len() as u64 + u64::from(state != EndState::Live);
        let previous = self.lock().get(&session.id).cloned();
        if previous.as_ref().is_some_and(|(v, _)| *v >= version) {
            return Ok(None);
        }
        let input = ManifestInput {
            appliance_id: self.cfg.appliance_id.clone(),
            version,
            state,
            session_id: session.session_id.clone(),
            user_id: session.user_id.clone(),
            username: session.username.clone(),
            image_friendly_name: session.image_friendly_name.clone(),
            protocol: session.protocol.clone(),
            start_ms: session.start_ms,
            end_ms: if state == EndState::Live {
                None
            } else {
                session.end_ms
            },
            clips: listed,
        };
        let m =
            FleetManifest::signed(input, &self.cfg.key).map_err(|e| StoreError::Inconsistent {
                key: session.session_id.clone(),
                detail: e.to_string(),
            })?;
        let key = version_key(
            &self.cfg.prefix,
            now_ms,
            &self.cfg.appliance_id,
            &session.session_id,
            version,
        );
        let json = m.to_json();
        let opts = PutOptions {
            content_type: CONTENT_TYPE_JSON.into(),
            sha256_hex: hex::encode(sha2::Sha256::digest(&json)),
        };
        store.put_bytes(&key, &json, &opts)?;
        self.lock().insert(session.id, (version, key.clone()));
        if let Some((_, old)) = previous
            && old != key
            && let Err(e) = store.delete(&old)
        {
            // The reader keeps the highest version anyway; the old object is only clutter.
            log::warn!("event=fleet_manifest_old_version_kept key={old:?} error={e}");
        }
        log::info!(
            "event=fleet_manifest session={} version={version} state={} key={key:?}",
            session.session_id,
            state.name()
        );
        Ok(Some(key))
    }

    /// Forgets a session whose final manifest is written (keeps the map small).
    pub fn forget(&self, session: u64) {
        self.lock().remove(&session);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (u64, String)>> {
        self.last.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The clips that are up, in session order (segment index, then part), with their keys.
fn listed_clips(segments: &[Segment], clips: &[Clip]) -> Vec<FleetClip> {
    let seg_index: HashMap<u64, u32> = segments.iter().map(|s| (s.id, s.index)).collect();
    let mut up: Vec<&Clip> = clips
        .iter()
        .filter(|c| {
            matches!(
                c.state.kind(),
                ClipStateKind::Uploaded | ClipStateKind::LocalDeleted
            ) && c.object_key.is_some()
        })
        .collect();
    up.sort_by_key(|c| {
        (
            seg_index.get(&c.segment).copied().unwrap_or(0),
            c.index,
            c.id,
        )
    });
    up.iter()
        .map(|c| {
            let key = c.object_key.clone().unwrap_or_default();
            FleetClip {
                index: 0,
                thumbnail_key: c.thumb_path.as_ref().map(|_| thumbnail_key(&key)),
                key,
                size_bytes: c.bytes,
                sha256: c.sha256.clone(),
                start_ms: c.start_ms,
                end_ms: c.end_ms,
            }
        })
        .collect()
}
