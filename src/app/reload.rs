//! Settings reload: the config file is read again (on `SIGHUP`, i.e. `systemctl reload`, and
//! after the settings page wrote it), validated by every stage's own check, and what can
//! change while the daemon runs is applied at once: `[video]` (encodes that start from now
//! on), `[storage]` (the store is swapped; uploads in flight finish on the old one), the
//! retention periods and the disk floor. Live sessions are never touched. Keys that only a
//! restart can apply (listen addresses, directories, queue length...) are shown on the status
//! page as "restart pending" until then.
//!
//! A file that does not parse or validate changes nothing: the daemon keeps running on the
//! settings it had, the status page shows the problem with its key, and it is logged. Also
//! here: the one-time move of settings an older web page saved in the queue into the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::{Config, ConfigError, RawConfig};
use crate::config_edit::{self, NewValue};
use crate::encode::X264SegmentEncoder;
use crate::queue::Queue;
use crate::status::StatusBoard;
use crate::upload::{RetentionWorker, SharedStore, UploadWorker};

/// Keys applied while running; every other changed key waits for a restart.
fn applies_live(key: &str) -> bool {
    Config::applies_without_restart(key)
}

/// The parts of the running daemon a reload reaches.
pub struct LiveParts {
    /// The store every stage uses.
    pub store: Arc<SharedStore>,
    /// The upload worker (key template, retention period).
    pub uploads: Arc<UploadWorker>,
    /// The encoder (video settings).
    pub encoder: Arc<X264SegmentEncoder>,
    /// Raw segment, history and audit retention.
    pub retention: Arc<RetentionWorker>,
    /// The disk floor the housekeeping loop samples against, bytes.
    pub disk_floor_bytes: Arc<AtomicU64>,
    /// The tap's recording flags (`None` when the tap does not run).
    pub tap_flags: Option<Arc<crate::ingest::RecordingFlags>>,
}

/// Re-reads and applies the config file.
pub struct Reloader {
    file: Option<PathBuf>,
    /// What this process started with: the reference for "restart pending".
    started: RawConfig,
    /// In force now.
    current: Mutex<(RawConfig, Config)>,
    parts: LiveParts,
    status: StatusBoard,
}

impl Reloader {
    /// A reloader for a daemon started from `file` (`None` = embedded defaults) with `raw`.
    pub fn new(
        file: Option<PathBuf>,
        raw: RawConfig,
        config: Config,
        parts: LiveParts,
        status: StatusBoard,
    ) -> Self {
        Self {
            file,
            started: raw.clone(),
            current: Mutex::new((raw, config)),
            parts,
            status,
        }
    }

    /// Reads the file again and applies it; `why` names the trigger in the log. `Ok` lists
    /// the changed keys that wait for a restart.
    ///
    /// # Errors
    /// The file's problem, naming the key; nothing was changed.
    pub fn reload(&self, why: &str) -> Result<Vec<String>, String> {
        let loaded = match &self.file {
            Some(p) => RawConfig::from_file(p),
            None => Ok(RawConfig::default()),
        }
        .and_then(|raw| raw.validate().map(|c| (raw, c)));
        let (raw, config) = match loaded {
            Ok(x) => x,
            Err(e) => {
                log::error!("event=settings_reload_refused trigger={why} error={e}");
                let shown = format!(
                    "{e} (the config file was not applied: the daemon runs on the settings it \
                     loaded before)"
                );
                self.status.update(|s| s.settings_problems = vec![shown]);
                return Err(e.to_string());
            }
        };
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let changed = changed_keys(&current.0, &raw);
        if let Err(e) = self.apply(&current.1, &config) {
            log::error!("event=settings_reload_refused trigger={why} error={e}");
            self.status.update(|s| {
                s.settings_problems = vec![format!("{e} (not applied)")];
            });
            return Err(e);
        }
        let pending: Vec<String> = changed_keys(&self.started, &raw)
            .into_iter()
            .filter(|k| !applies_live(k))
            .collect();
        let applied: Vec<&String> = changed.iter().filter(|k| applies_live(k)).collect();
        log::info!(
            "event=settings_reloaded trigger={why} applied={} restart_pending={}",
            join(&applied),
            pending.join(",")
        );
        self.status.update(|s| {
            s.settings_problems.clear();
            s.restart_pending = pending.clone();
            s.disk.floor_bytes = config.disk_floor_bytes;
        });
        *current = (raw, config);
        Ok(pending)
    }

    /// Puts `new` in force in every live part.
    fn apply(&self, old: &Config, new: &Config) -> Result<(), String> {
        let p = &self.parts;
        if storage_differs(old, new) {
            let settings = new.storage.upload_settings();
            let location = settings.validate().map_err(|e| e.to_string())?;
            let (store, problem) = crate::upload::open_target_or_later(&settings, &location.target)
                .map_err(|e| format!("storage: {e}"))?;
            if let Some(e) = problem {
                log::warn!("event=store_not_ready error={e}");
                self.status.record_error("upload", &e.to_string());
            }
            p.store.replace(store);
            p.uploads.clear_problem();
            p.uploads
                .apply_settings(location.template, new.retention_hours);
        } else {
            let template = new
                .storage
                .upload_settings()
                .validate()
                .map_err(|e| e.to_string())?
                .template;
            p.uploads.apply_settings(template, new.retention_hours);
        }
        p.encoder.set_video(new.video.encoder_settings());
        p.retention.set_config(new.retention);
        p.disk_floor_bytes
            .store(new.disk_floor_bytes, Ordering::Relaxed);
        if let Some(flags) = &p.tap_flags {
            flags.set(new.tap.record_keys, new.tap.record_by_default);
        }
        Ok(())
    }
}

fn join(keys: &[&String]) -> String {
    keys.iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

fn storage_differs(a: &Config, b: &Config) -> bool {
    let (x, y) = (&a.storage, &b.storage);
    x.upload_location != y.upload_location
        || x.key != y.key
        || x.secret != y.secret
        || x.region != y.region
        || x.allow_http != y.allow_http
        || x.ca_file != y.ca_file
        || x.path_style != y.path_style
}

/// The dotted keys whose values differ between `a` and `b` (defaults included).
pub fn changed_keys(a: &RawConfig, b: &RawConfig) -> Vec<String> {
    let (fa, fb) = (flat(a), flat(b));
    let mut keys: Vec<String> = fa
        .keys()
        .chain(fb.keys())
        .filter(|k| fa.get(*k) != fb.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

fn flat(raw: &RawConfig) -> BTreeMap<String, toml::Value> {
    let mut out = BTreeMap::new();
    if let Ok(toml::Value::Table(t)) = toml::Value::try_from(raw) {
        flatten("", &t, &mut out);
    }
    out
}

fn flatten(prefix: &str, t: &toml::Table, out: &mut BTreeMap<String, toml::Value>) {
    for (k, v) in t {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(inner) => flatten(&key, inner, out),
            other => {
                out.insert(key, other.clone());
            }
        }
    }
}

/// The keys the old web page could save, with how each is written into the file.
const LEGACY_PAGE_KEYS: [&str; 16] = [
    "storage.upload-location",
    "storage.region",
    "storage.object-storage-key",
    "storage.object-storage-secret",
    "video.bitrate-kbps",
    "video.framerate",
    "video.keyframe-frames",
    "video.width",
    "video.height",
    "retention-hours",
    "queue-length",
    "disk-floor-mb",
    "segment-size-mb",
    "segment-retention-hours",
    "history-retention-days",
    "audit-retention-days",
];

/// What the one-time move did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Migration {
    /// The queue has no old settings table.
    Nothing,
    /// These keys were written into the file (possibly none: the file already agreed).
    Moved(Vec<String>),
    /// The old settings could not go into the file (the reason); the table was dropped and
    /// the audit entry lists what was left out.
    Dropped(String),
    /// No config file to move them into: the table stays until there is one.
    Kept,
}

/// Moves settings an older web page saved in the queue into the config file, once: the keys
/// that page edits and whose saved value differs from the file's are written into the file
/// (comments kept, atomically, after validating the result), then the table is dropped with
/// an audit entry in the same transaction. Run before the config is used.
///
/// # Errors
/// The queue failing, or the file not writable (nothing dropped then: the next start retries).
pub fn migrate_legacy_settings(queue: &Queue, file: Option<&Path>) -> Result<Migration, String> {
    let Some(saved) = queue.legacy_settings().map_err(|e| e.to_string())? else {
        return Ok(Migration::Nothing);
    };
    let Some(path) = file else {
        log::warn!(
            "event=legacy_settings_kept reason=no_config_file note=start_with_--config_to_move_them"
        );
        return Ok(Migration::Kept);
    };
    let who = format!(
        "settings saved from the web page (version {}, by {})",
        saved.version, saved.updated_by
    );
    let text = config_edit::read_text(path).map_err(|e| e.to_string())?;
    let plan = RawConfig::from_toml(&text, path)
        .map_err(|e| e.to_string())
        .and_then(|file_raw| {
            let origin = Path::new("<settings saved from the web page>");
            let old = RawConfig::from_toml(&saved.toml, origin).map_err(|e| e.to_string())?;
            let (fa, fb) = (flat(&file_raw), flat(&old));
            let changes: Vec<(&str, NewValue)> = LEGACY_PAGE_KEYS
                .iter()
                .filter(|k| fa.get(**k) != fb.get(**k))
                .map(|k| {
                    let v = match fb.get(*k) {
                        Some(toml::Value::Integer(n)) => NewValue::Int((*n).max(0) as u64),
                        Some(toml::Value::String(s)) if s.is_empty() => NewValue::Unset,
                        Some(toml::Value::String(s)) => NewValue::Text(s.clone()),
                        _ => NewValue::Unset,
                    };
                    (*k, v)
                })
                .collect();
            let new_text = config_edit::apply(&text, &changes, path).map_err(|e| e.to_string())?;
            RawConfig::from_toml(&new_text, path)
                .and_then(|r| r.validate())
                .map_err(|e: ConfigError| e.to_string())?;
            Ok((changes, new_text))
        });
    let outcome = match plan {
        Ok((changes, new_text)) => {
            let keys: Vec<String> = changes.iter().map(|(k, _)| (*k).to_string()).collect();
            if !keys.is_empty() {
                config_edit::write(path, &new_text).map_err(|e| e.to_string())?;
            }
            let message = format!(
                "The {who} moved into {}: {}. The queue's settings table is dropped; the \
                 config file is the one source of truth",
                path.display(),
                if keys.is_empty() {
                    "nothing differed from the file".to_string()
                } else {
                    keys.join(", ")
                }
            );
            queue
                .drop_legacy_settings(crate::queue::ACTOR_SYSTEM, &message)
                .map_err(|e| e.to_string())?;
            Migration::Moved(keys)
        }
        Err(why) => {
            let message = format!(
                "The {who} could not be moved into {} ({why}) and are dropped; the file's \
                 settings are in force",
                path.display()
            );
            queue
                .drop_legacy_settings(crate::queue::ACTOR_SYSTEM, &message)
                .map_err(|e| e.to_string())?;
            Migration::Dropped(why)
        }
    };
    log::warn!(
        "event=legacy_settings_moved file={} outcome={outcome:?}",
        path.display()
    );
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::queue::{AuditFilter, QueueOptions};

    #[test]
    fn old_web_settings_move_into_the_file_once_with_an_audit_entry() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(
            &file,
            "# the operator's note\ndisk-floor-mb = 700 # keep\n[video]\nframerate = 10\n",
        )
        .unwrap();
        let open = || {
            Queue::open(
                &QueueOptions::new(dir.path().join("queue")),
                Arc::new(ManualClock::new(1)),
            )
            .unwrap()
        };
        let queue = open();
        // The old page saved the whole effective config: the file's copy of the disk floor
        // (700) and the admin's framerate (5).
        queue
            .create_legacy_settings_for_test(
                "disk-floor-mb = 700\n[video]\nframerate = 5\nbitrate-kbps = 2000\n",
                "admin",
            )
            .unwrap();
        let moved = migrate_legacy_settings(&queue, Some(&file)).unwrap();
        assert_eq!(moved, Migration::Moved(vec!["video.framerate".into()]));
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains("# the operator's note"), "{text}");
        assert!(text.contains("disk-floor-mb = 700 # keep"), "{text}");
        assert!(text.contains("framerate = 5"), "{text}");
        assert!(queue.legacy_settings().unwrap().is_none(), "table gone");
        let audit = queue
            .list_audit(&AuditFilter {
                limit: 10,
                ..AuditFilter::default()
            })
            .unwrap();
        assert!(
            audit
                .items
                .iter()
                .any(|a| a.message.contains("video.framerate")
                    && a.message.contains("one source of truth")),
            "{audit:?}"
        );
        // Once: a later edit of the file stays, also after reopening the queue.
        std::fs::write(&file, "[video]\nframerate = 7\n").unwrap();
        drop(queue);
        let queue = open();
        assert!(queue.legacy_settings().unwrap().is_none());
        assert_eq!(
            migrate_legacy_settings(&queue, Some(&file)).unwrap(),
            Migration::Nothing
        );
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "[video]\nframerate = 7\n"
        );
    }

    #[test]
    fn old_settings_that_do_not_validate_are_dropped_and_said_so() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(&file, "[video]\nframerate = 10\n").unwrap();
        let queue = Queue::open(
            &QueueOptions::new(dir.path().join("queue")),
            Arc::new(ManualClock::new(1)),
        )
        .unwrap();
        queue
            .create_legacy_settings_for_test("[video]\nwidth = 5120\nheight = 2880\n", "admin")
            .unwrap();
        let out = migrate_legacy_settings(&queue, Some(&file)).unwrap();
        assert!(
            matches!(out, Migration::Dropped(ref w) if w.contains("video.width")),
            "{out:?}"
        );
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "[video]\nframerate = 10\n"
        );
        assert!(queue.legacy_settings().unwrap().is_none());
    }

    #[test]
    fn changed_keys_name_live_and_restart_keys() {
        let a = RawConfig::default();
        let b = RawConfig::from_toml(
            "queue-length = 3\n[video]\nframerate = 5\n[http]\nlisten = \"127.0.0.1:9\"\n",
            Path::new("t"),
        )
        .unwrap();
        let keys = changed_keys(&a, &b);
        assert_eq!(keys, ["http.listen", "queue-length", "video.framerate"]);
        let restart: Vec<&String> = keys.iter().filter(|k| !applies_live(k)).collect();
        assert_eq!(restart, ["http.listen", "queue-length"]);
    }
}
