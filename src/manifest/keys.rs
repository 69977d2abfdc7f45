//! The appliance's manifest signing key: an ed25519 secret kept in the data directory
//! (`fleet-signing.key`, 32 bytes as hex, mode 0600), created on first start.
//!
//! Owns creating, reading and checking that file. Does not sign (see `manifest.rs`) nor decide
//! who trusts the key (the history role's `[fleet] trusted-keys`). Called by the daemon at
//! start-up and by `doctor`.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;

/// File name of the key in the data directory.
pub const SIGNING_KEY_FILE: &str = "fleet-signing.key";

/// Why the key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read, created or written.
    #[error("signing key {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file exists but does not hold a key.
    #[error("signing key {path} is not 64 hex digits")]
    Corrupt {
        /// The key file.
        path: PathBuf,
    },
    /// Group or others may read the file.
    #[error("signing key {path} has mode {mode:o}; it must be 0600")]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// No randomness available to make a key.
    #[error("no randomness for a new signing key: {0}")]
    Random(String),
}

impl crate::error::Classify for KeyError {
    fn is_transient(&self) -> bool {
        match self {
            KeyError::Io { source, .. } => crate::error::Classify::is_transient(source),
            KeyError::Corrupt { .. } | KeyError::Permissions { .. } | KeyError::Random(_) => false,
        }
    }
}

/// The key file's path under `data_dir`.
pub fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SIGNING_KEY_FILE)
}

/// Reads the key under `data_dir`, creating it (0600, fsynced) when there is none.
///
/// # Errors
/// [`KeyError`]: unreadable or corrupt file, loose permissions, no randomness.
pub fn load_or_create(data_dir: &Path) -> Result<SigningKey, KeyError> {
    let path = key_path(data_dir);
    match read(&path) {
        Err(KeyError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
        other => return other,
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
    let io = |source| KeyError::Io {
        path: path.clone(),
        source,
    };
    // Written to a temporary and renamed: a crash never leaves half a key, and two starts
    // racing end with one of the two keys, both complete.
    let tmp = path.with_extension("key.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(hex::encode(seed).as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(io)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    log::info!("event=signing_key_created path={}", path.display());
    read(&path)
}

/// Reads an existing key file and checks its permissions.
///
/// # Errors
/// [`KeyError`].
pub fn read(path: &Path) -> Result<SigningKey, KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    let seed: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| KeyError::Corrupt {
            path: path.to_path_buf(),
        })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Hex of the public half, as `doctor` and the status page show it and `[fleet] trusted-keys`
/// takes it.
pub fn public_hex(key: &SigningKey) -> String {
    hex::encode(key.verifying_key().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_0600_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(key_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = load_or_create(dir.path()).unwrap();
        assert_eq!(public_hex(&a), public_hex(&b));
        assert_eq!(public_hex(&a).len(), 64);
    }

    #[test]
    fn loose_permissions_and_garbage_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path()).unwrap();
        let p = key_path(dir.path());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(read(&p), Err(KeyError::Permissions { .. })));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&p, "zz").unwrap();
        assert!(matches!(read(&p), Err(KeyError::Corrupt { .. })));
    }
}
