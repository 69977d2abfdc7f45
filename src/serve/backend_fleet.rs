//! The history role's [`HistorySource`]: sessions and clips come from the [`FleetIndex`]; the
//! audit log, users, tokens and web logins stay with the role's own queue (the ordinary
//! `QueueBackend` as the [`super::backend::AccountStore`]), so the existing pages, player,
//! downloads, zip and audit work unchanged over the fleet.
//!
//! Clip rows carry only object keys (no local files): playback and downloads stream from the
//! bucket through the role with `Range`. A clip whose object is gone, or a session whose
//! integrity failed, is shown as such; a failed-integrity session's clips stay playable so an
//! auditor can look at what is there, but the state says it is not trusted.
//!
//! Sessions are addressed as `ID@APPLIANCE` (`SessionRow::address`): two appliances may file
//! the same session id. A bare id still finds the session when only one appliance has it.
//! Clip rows carry the manifest's SHA-256, so serve hashes every whole clip it streams and
//! hands the verdict back here ([`HistorySource::clip_bytes_hashed`]) to be kept in the index.

use std::sync::{Arc, Mutex};

use super::backend::{
    BackendError, ClipRow, HistorySource, Page, SessionCursor, SessionQuery, SessionRow,
    split_address,
};
use crate::error::Classify;
use crate::fleet::index::{ClipBytes, FleetIndex, IndexError, IndexedSession, ListFilter};

/// The role's backend.
pub struct FleetBackend {
    index: Arc<FleetIndex>,
    /// `s3://bucket/`: precedes an object key in a clip's human location (audit wording).
    location_prefix: String,
    /// Appliance ids for the filter menu, refreshed by the indexer after each pass.
    appliances: Mutex<Vec<String>>,
}

fn err(e: IndexError) -> BackendError {
    BackendError {
        transient: e.is_transient(),
        message: e.to_string(),
    }
}

impl FleetBackend {
    /// Sessions and clips from `index`.
    pub fn new(index: Arc<FleetIndex>, location_prefix: String) -> Self {
        Self {
            index,
            location_prefix,
            appliances: Mutex::new(Vec::new()),
        }
    }

    /// Replaces the appliance list of the filter menu.
    pub fn set_appliances(&self, list: Vec<String>) {
        *self.appliances.lock().unwrap_or_else(|p| p.into_inner()) = list;
    }

    fn row(cursor: u64, s: &IndexedSession) -> SessionRow {
        let mut state = s.state.clone();
        if !s.is_final && s.state == "live" {
            state = "live (partial manifest)".into();
        }
        state = format!("{state} · {}", s.integrity_words());
        SessionRow {
            cursor,
            session_id: s.session_id.clone(),
            user: s.username.clone(),
            workspace: s.workspace.clone(),
            target: s.target.clone(),
            client_addr: s.client_addr.clone(),
            start_ms: s.start_ms,
            end_ms: s.end_ms,
            state,
            clip_count: s.clips.len() as u32,
            end_reason: None,
            appliance: Some(s.appliance_id.clone()),
        }
    }
}

impl FleetBackend {
    /// The session at `address` (`ID@APPLIANCE`, or a bare id only one appliance filed).
    fn resolve(&self, address: &str) -> Result<Option<(u64, IndexedSession)>, BackendError> {
        let (sid, appliance) = split_address(address);
        if let Some(found) = self.index.session(appliance, sid).map_err(err)? {
            return Ok(Some(found));
        }
        match appliance {
            // A session id that itself holds `@`, given bare.
            Some(_) => self.index.session(None, address).map_err(err),
            None => Ok(None),
        }
    }
}

impl HistorySource for FleetBackend {
    fn list_sessions(
        &self,
        q: &SessionQuery,
    ) -> Result<Page<SessionRow, SessionCursor>, BackendError> {
        let lower = |v: &Option<String>| {
            v.as_ref()
                .filter(|t| !t.is_empty())
                .map(|t| t.to_lowercase())
        };
        let f = ListFilter {
            appliance: q.appliance.clone().filter(|a| !a.is_empty()),
            user_lower: lower(&q.user),
            host_lower: lower(&q.host),
            from_ms: q.from_ms,
            to_ms: q.to_ms,
            text_lower: lower(&q.text),
            // The index's cursors order by start then filing: a place's id is the cursor.
            before: q.before.map(|c| c.id),
            after: q.after.map(|c| c.id),
            limit: q.limit.max(1),
        };
        let page = self.index.list(&f).map_err(err)?;
        let items: Vec<SessionRow> = page.items.iter().map(|(c, s)| Self::row(*c, s)).collect();
        let place = |c: u64| {
            items
                .iter()
                .find(|r| r.cursor == c)
                .map(SessionRow::place)
                .unwrap_or(SessionCursor {
                    start_ms: c >> 16,
                    id: c,
                })
        };
        Ok(Page {
            next_before: page.next_before.map(place),
            next_after: page.next_after.map(place),
            items,
        })
    }

    fn session(&self, address: &str) -> Result<Option<SessionRow>, BackendError> {
        Ok(self.resolve(address)?.map(|(c, s)| Self::row(c, &s)))
    }

    fn clips(&self, address: &str) -> Result<Vec<ClipRow>, BackendError> {
        let Some((cursor, s)) = self.resolve(address)? else {
            return Ok(Vec::new());
        };
        let signed = s.integrity.ok();
        Ok(s.clips
            .iter()
            .enumerate()
            .map(|(i, c)| ClipRow {
                // Stable per session and clip position.
                id: (cursor << 8) ^ i as u64,
                local_path: None,
                thumb_path: None,
                object_key: (!c.gone).then(|| c.key.clone()),
                thumb_key: c.thumbnail_key.clone().filter(|_| !c.gone),
                location: format!("{}{}", self.location_prefix, c.key),
                bytes: c.size_bytes,
                duration_ms: c.end_ms.saturating_sub(c.start_ms),
                start_ms: c.start_ms,
                state: if c.gone {
                    "gone: deleted from the bucket".into()
                } else {
                    format!("uploaded · {}", c.bytes.words())
                },
                failed: c.gone,
                // Hash what is streamed only against a hash a trusted key signed.
                sha256: (signed && !c.gone).then(|| c.sha256.clone()),
            })
            .collect())
    }

    fn clip_bytes_hashed(&self, address: &str, clip_index: usize, matched: bool) {
        let verdict = if matched {
            ClipBytes::Verified
        } else {
            ClipBytes::Failed
        };
        let recorded = self.resolve(address).and_then(|found| {
            let Some((cursor, s)) = found else {
                return Ok(false);
            };
            let Some(c) = s.clips.get(clip_index) else {
                return Ok(false);
            };
            let changed = self
                .index
                .record_clip_bytes(cursor, clip_index, &c.key, &c.sha256, verdict)
                .map_err(err)?;
            if changed && !matched {
                log::warn!(
                    "event=fleet_clip_bytes_failed source=stream appliance={} session_id={} \
                     clip={} key={:?}",
                    s.appliance_id,
                    s.session_id,
                    clip_index + 1,
                    c.key
                );
            }
            Ok(changed)
        });
        if let Err(e) = recorded {
            log::error!("event=fleet_clip_verdict_not_recorded error={e}");
        }
    }

    fn appliances(&self) -> Option<Vec<String>> {
        Some(
            self.appliances
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}
