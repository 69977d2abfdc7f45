//! The config file as the settings page (and the one-time move of the old web settings into
//! it) edits it: the file stays the one source of truth, so an edit changes only the keys it
//! names, keeps the operator's comments, order and layout (`toml_edit`), and replaces the file
//! atomically (temporary file in the same directory, fsync, rename, directory fsync) with the
//! old file's permissions. Validating the result is the caller's job ([`crate::config`]); this
//! module never writes text that does not parse.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use toml_edit::{DocumentMut, Item, Table, value};

use crate::config::ConfigError;

/// A new value for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewValue {
    /// A whole number.
    Int(u64),
    /// A string (secrets too).
    Text(String),
    /// Remove the key: its default applies.
    Unset,
}

/// Why an edit could not be written.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// The file's current text could not be read or parsed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A key the edit names cannot be set in this file (a value where a table is expected).
    #[error("cannot set `{key}` in {path}: {why}")]
    Shape {
        /// The dotted key.
        key: String,
        /// The file.
        path: PathBuf,
        /// What is in the way.
        why: String,
    },
    /// Writing the file failed (read-only file system, permissions, full disk).
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file or its temporary.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl crate::error::Classify for EditError {
    fn is_transient(&self) -> bool {
        match self {
            Self::Config(e) => e.is_transient(),
            Self::Shape { .. } => false,
            Self::Write { source, .. } => source.is_transient(),
        }
    }
}

pub use crate::config::read_text;

/// `text` with `changes` applied (dotted keys such as `video.framerate`); everything else,
/// comments included, as it was. A key already present keeps its place and its trailing
/// comment; a new key goes at the end of its table, and a missing table is added at the end.
///
/// # Errors
/// [`EditError::Config`] when `text` is not TOML; [`EditError::Shape`] when a key's table is
/// a value in this file.
pub fn apply(text: &str, changes: &[(&str, NewValue)], origin: &Path) -> Result<String, EditError> {
    let mut doc: DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| {
        EditError::Config(ConfigError::Syntax {
            path: origin.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })
    })?;
    for (key, new) in changes {
        let shape = |why: &str| EditError::Shape {
            key: (*key).to_string(),
            path: origin.to_path_buf(),
            why: why.to_string(),
        };
        let (table_name, leaf) = match key.rsplit_once('.') {
            Some((t, l)) => (Some(t), l),
            None => (None, *key),
        };
        let table: &mut Table = match table_name {
            None => doc.as_table_mut(),
            Some(t) => {
                let root = doc.as_table_mut();
                if !root.contains_key(t) {
                    root.insert(t, Item::Table(Table::new()));
                }
                match root.get_mut(t) {
                    Some(Item::Table(table)) => table,
                    _ => return Err(shape("its table is written as a value (inline table?)")),
                }
            }
        };
        match new {
            NewValue::Unset => {
                table.remove(leaf);
            }
            NewValue::Int(n) => set_keeping_decor(table, leaf, value(*n as i64)),
            NewValue::Text(s) => set_keeping_decor(table, leaf, value(s.as_str())),
        }
    }
    Ok(doc.to_string())
}

/// Sets `leaf` in `table` to `item`, keeping the old value's surrounding whitespace and
/// trailing comment.
fn set_keeping_decor(table: &mut Table, leaf: &str, mut item: Item) {
    match table.get_mut(leaf) {
        // Replaced in place: the key (and the comment lines above it) stays as it was.
        Some(slot) => {
            if let (Item::Value(old), Item::Value(new)) = (&*slot, &mut item) {
                *new.decor_mut() = old.decor().clone();
            }
            *slot = item;
        }
        None => {
            table.insert(leaf, item);
        }
    }
}

/// Replaces `path` with `text`: a temporary file in the same directory, written and fsynced,
/// given the old file's permissions, renamed over it, then the directory fsynced. A failure
/// leaves the old file untouched and no temporary behind.
///
/// # Errors
/// [`EditError::Write`].
pub fn write(path: &Path, text: &str) -> Result<(), EditError> {
    let mode = std::fs::metadata(path).ok().map(|m| m.permissions());
    let mut rnd = [0u8; 6];
    let _ = getrandom::fill(&mut rnd);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config.toml".into());
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", hex::encode(rnd)));
    crate::durable::replace_via_temp(
        &tmp,
        path,
        |p, source| EditError::Write {
            path: p.to_path_buf(),
            source,
        },
        |f| {
            if let Some(mode) = mode.clone() {
                f.set_permissions(mode).map_err(|source| EditError::Write {
                    path: tmp.clone(),
                    source,
                })?;
            }
            f.write_all(text.as_bytes())
                .map_err(|source| EditError::Write {
                    path: tmp.clone(),
                    source,
                })?;
            Ok(text.len() as u64)
        },
    )?;
    Ok(())
}

/// Whether the daemon can replace `path` (it may create a file in its directory): a probe
/// file is created and removed. `Err` says why not, for the settings page.
pub fn writable(path: &Path) -> Result<(), String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut rnd = [0u8; 6];
    let _ = getrandom::fill(&mut rnd);
    let probe = dir.join(format!(".write-probe.{}.tmp", hex::encode(rnd)));
    match std::fs::File::create(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(format!(
            "{} is not writable for the daemon: {e}",
            dir.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# operator's notes\ndata-dir = \"/srv/rec\"  # big disk\n\n\
                        [video]\n# keep it light\nframerate = 10 # was 15\nbitrate-kbps = 2000\n";

    #[test]
    fn edits_keep_comments_order_and_untouched_keys() {
        let out = apply(
            FILE,
            &[
                ("video.framerate", NewValue::Int(5)),
                ("disk-floor-mb", NewValue::Int(800)),
                ("storage.region", NewValue::Text("eu-west-1".into())),
            ],
            Path::new("t"),
        )
        .unwrap();
        assert!(out.contains("# operator's notes"), "{out}");
        assert!(out.contains("data-dir = \"/srv/rec\"  # big disk"), "{out}");
        assert!(out.contains("# keep it light"), "{out}");
        assert!(out.contains("framerate = 5 # was 15"), "{out}");
        assert!(out.contains("bitrate-kbps = 2000"), "{out}");
        assert!(out.contains("[storage]\nregion = \"eu-west-1\""), "{out}");
        let raw = crate::config::RawConfig::from_toml(&out, Path::new("t")).unwrap();
        assert_eq!(raw.video.framerate, 5);
        assert_eq!(raw.disk_floor_mb, 800);
        let back = apply(&out, &[("storage.region", NewValue::Unset)], Path::new("t")).unwrap();
        assert!(!back.contains("eu-west-1"), "{back}");
    }

    #[test]
    fn a_write_replaces_the_file_with_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, FILE).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(writable(&path).is_ok());
        write(&path, "queue-length = 3\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "queue-length = 3\n"
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary left behind");
    }
}
