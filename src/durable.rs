//! Durable file writes: the temp file + fsync + rename + directory fsync dance that makes a new
//! file appear whole or not at all, even across a power cut.
//!
//! Owns only that dance and its cleanup (a failed write, e.g. on a full disk, removes its
//! temporary file so nothing half-written stays behind). Callers choose the paths and classify
//! the errors: the spool import, the encoder's end states, the local object store and start-up
//! recovery all come here instead of keeping copies of their own.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// `path` with `suffix` appended to its last component (`a.state` + `.tmp` -> `a.state.tmp`).
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// fsyncs the directory holding `path`, so a rename into it (or a removal from it) survives a
/// power cut.
///
/// # Errors
/// Opening or syncing the directory failed.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => sync_dir(dir),
        _ => Ok(()),
    }
}

/// fsyncs the directory `dir` itself, making the names created in it durable.
///
/// # Errors
/// Opening or syncing the directory failed.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes a temporary file if it exists; any other failure is only logged, because cleanup must
/// not hide the error that caused it.
pub fn remove_if_present(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("event=temp_remove_failed path={} error={e}", path.display()),
    }
}

/// fsyncs `from`, renames it to `to` and fsyncs the directory of `to`.
///
/// # Errors
/// Syncing, renaming or syncing the directory failed; `from` is left where it was.
pub fn rename_durably(from: &Path, to: &Path) -> io::Result<()> {
    File::open(from)?.sync_all()?;
    std::fs::rename(from, to)?;
    sync_parent(to)
}

/// Creates `tmp`, lets `fill` write it, fsyncs it, renames it to `dest` and fsyncs the
/// directory of `dest`. On any failure `tmp` is removed and `dest` is untouched. `io_err` turns
/// an I/O failure on a path into the caller's error type.
///
/// # Errors
/// Whatever `fill` returned, or a creating, syncing or renaming failure through `io_err`.
pub fn replace_via_temp<T, E>(
    tmp: &Path,
    dest: &Path,
    io_err: impl Fn(&Path, io::Error) -> E,
    fill: impl FnOnce(&mut File) -> Result<T, E>,
) -> Result<T, E> {
    let written = (|| {
        let mut file = File::create(tmp).map_err(|e| io_err(tmp, e))?;
        let value = fill(&mut file)?;
        file.sync_all().map_err(|e| io_err(tmp, e))?;
        drop(file);
        std::fs::rename(tmp, dest).map_err(|e| io_err(dest, e))?;
        Ok(value)
    })();
    match written {
        Ok(value) => {
            sync_parent(dest).map_err(|e| io_err(dest, e))?;
            Ok(value)
        }
        Err(e) => {
            remove_if_present(tmp);
            Err(e)
        }
    }
}

/// Writes `bytes` to `path` through `path.tmp`, durably. On failure (a full disk) the temporary
/// file is removed and `path` is untouched.
///
/// # Errors
/// Creating, writing, syncing or renaming failed.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace_via_temp(
        &with_suffix(path, ".tmp"),
        path,
        |_, e| e,
        |f| f.write_all(bytes),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomically_replaces_the_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.state");
        std::fs::write(&path, b"old").unwrap();
        write_atomically(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert!(!with_suffix(&path, ".tmp").exists());
    }

    #[test]
    fn a_failed_fill_removes_the_temp_and_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.obj");
        let tmp = dir.path().join("a.obj.partial");
        std::fs::write(&path, b"old").unwrap();
        let result: io::Result<()> = replace_via_temp(
            &tmp,
            &path,
            |_, e| e,
            |f| {
                f.write_all(b"half")?;
                Err(io::Error::other("disk full"))
            },
        );
        assert_eq!(result.unwrap_err().to_string(), "disk full");
        assert!(!tmp.exists(), "the temp file was left behind");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
    }

    #[test]
    fn with_suffix_appends_to_the_last_component() {
        assert_eq!(
            with_suffix(Path::new("/d/000001.guac"), ".tmp"),
            PathBuf::from("/d/000001.guac.tmp")
        );
    }
}
