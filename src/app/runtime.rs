//! Where the daemon's runtime files live (today: the private unix socket between the HTTPS
//! front and tiny_http), and the removal of those a killed daemon left behind.
//!
//! Under systemd the unit's `RuntimeDirectory=` gives `$RUNTIME_DIRECTORY` (`/run/...`,
//! emptied by systemd whenever the service stops); elsewhere the files go to `<data-dir>/run`,
//! so nothing is scattered in `/tmp`. The socket there has a fixed name: the socket a daemon
//! killed with `kill -9` left is replaced by the next start. Directories of the old layout,
//! `/tmp/session-recorder-http-<pid>-*`, whose process is gone are removed at start too.
//! Called by the wiring in [`super`] before the HTTP server starts.

use std::path::{Path, PathBuf};

use crate::limits::UNIX_SOCKET_PATH_BYTES_MAX;

/// Prefix of the per-process socket directories the old layout made in the temp directory.
const LEGACY_PREFIX: &str = "session-recorder-http-";

/// The runtime directory: the first entry of `runtime_directory` (systemd's
/// `$RUNTIME_DIRECTORY`, colon-separated) when set, else `<data_dir>/run`.
pub fn runtime_dir(runtime_directory: Option<&str>, data_dir: &Path) -> PathBuf {
    match runtime_directory.and_then(|v| v.split(':').find(|p| !p.is_empty())) {
        Some(dir) => PathBuf::from(dir),
        None => data_dir.join("run"),
    }
}

/// Creates `dir` (private to the daemon's user) for the HTTP socket and returns it, or `None`
/// when it cannot be made or its socket path would be too long for a unix socket: the server
/// then makes its own directory in the temp dir, as before. Either way the reason is logged.
pub fn prepare_socket_dir(dir: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let socket = dir.join("http.sock");
    if socket.as_os_str().len() > UNIX_SOCKET_PATH_BYTES_MAX {
        log::warn!(
            "event=runtime_dir_unused dir={} reason=socket_path_too_long",
            dir.display()
        );
        return None;
    }
    let made = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        // An existing directory keeps its mode: make sure only the daemon's user gets in.
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)));
    match made {
        Ok(()) => Some(dir.to_path_buf()),
        Err(e) => {
            log::warn!("event=runtime_dir_unused dir={} error={e}", dir.display());
            None
        }
    }
}

/// Removes the old layout's socket directories in `temp_dir` whose daemon is gone (a
/// `kill -9` left them); returns how many.
pub fn remove_stale_legacy_dirs(temp_dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(temp_dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(legacy_pid) else {
            continue;
        };
        if pid == std::process::id() || process_alive(pid) {
            continue;
        }
        let dir = entry.path();
        let _ = std::fs::remove_file(dir.join("http.sock"));
        match std::fs::remove_dir(&dir) {
            Ok(()) => {
                removed += 1;
                log::info!("event=stale_runtime_dir_removed dir={}", dir.display());
            }
            Err(e) => log::debug!(
                "event=stale_runtime_dir_kept dir={} error={e}",
                dir.display()
            ),
        }
    }
    removed
}

/// The pid in `session-recorder-http-<pid>-<suffix>`.
fn legacy_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(LEGACY_PREFIX)?;
    let (pid, suffix) = rest.split_once('-')?;
    if suffix.is_empty() {
        return None;
    }
    pid.parse().ok()
}

/// Whether a process with `pid` exists (any user's: a directory of a live daemon of another
/// user is not ours to remove, and its owner's permissions keep us out anyway).
fn process_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_runtime_directory_wins_over_the_data_dir() {
        let data = Path::new("/var/lib/sr");
        assert_eq!(runtime_dir(None, data), PathBuf::from("/var/lib/sr/run"));
        assert_eq!(
            runtime_dir(Some(""), data),
            PathBuf::from("/var/lib/sr/run")
        );
        assert_eq!(
            runtime_dir(Some("/run/session-recorder:/run/other"), data),
            PathBuf::from("/run/session-recorder")
        );
    }

    #[test]
    fn only_dead_daemons_legacy_dirs_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        // A pid that cannot exist (above the kernel's pid_max of 2^22), ours, and strangers.
        let dead = tmp.path().join(format!("{LEGACY_PREFIX}4999999-abc"));
        let ours = tmp
            .path()
            .join(format!("{LEGACY_PREFIX}{}-def", std::process::id()));
        let other = tmp.path().join("session-recorder-httpd");
        let no_suffix = tmp.path().join(format!("{LEGACY_PREFIX}4999998"));
        for d in [&dead, &ours, &other, &no_suffix] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(dead.join("http.sock"), b"").unwrap();
        assert_eq!(remove_stale_legacy_dirs(tmp.path()), 1);
        assert!(!dead.exists());
        assert!(ours.exists() && other.exists() && no_suffix.exists());
    }

    #[test]
    fn the_socket_dir_is_private_and_long_paths_fall_back() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data/run");
        assert_eq!(prepare_socket_dir(&dir), Some(dir.clone()));
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let long = tmp.path().join("d".repeat(UNIX_SOCKET_PATH_BYTES_MAX));
        assert_eq!(prepare_socket_dir(&long), None);
        assert!(!long.exists());
    }
}
