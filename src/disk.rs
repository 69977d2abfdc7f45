//! Free-space watch on the filesystem holding the spool and data directories.
//!
//! Owns the probe trait (so tests can simulate a filling disk), the sysinfo-backed probe with a
//! `statvfs` fallback, and the state machine available / low / critical with hysteresis that the
//! admission gate and the status page read. It does not decide what to do about a low disk: the
//! tap refuses new recorded sessions at `Low` and seals active ones at `Critical`.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::limits::DISK_HYSTERESIS_BYTES_MIN;

/// Measures free space.
pub trait DiskProbe: Send + Sync {
    /// Bytes available to unprivileged writers on the filesystem holding `path`.
    ///
    /// # Errors
    /// When the filesystem cannot be queried (path missing, I/O error).
    fn free_bytes(&self, path: &Path) -> io::Result<u64>;
}

/// The real probe: sysinfo's disk list, picking the mount point that is the longest prefix of
/// the canonical path; `statvfs` on the path itself when sysinfo does not list the filesystem
/// (it skips pseudo filesystems such as tmpfs).
#[derive(Debug, Default)]
pub struct SystemProbe;

impl DiskProbe for SystemProbe {
    fn free_bytes(&self, path: &Path) -> io::Result<u64> {
        let canonical = path.canonicalize()?;
        let Ok(disks) = sysinfo::Disks::new_with_refreshed_list() else {
            return statvfs_free_bytes(&canonical);
        };
        let best = disks
            .iter()
            .filter(|d| canonical.starts_with(d.mount_point()))
            .max_by_key(|d| d.mount_point().as_os_str().len());
        match best {
            Some(disk) => Ok(disk.available_space()),
            None => statvfs_free_bytes(&canonical),
        }
    }
}

/// Free bytes for unprivileged users on the filesystem holding `path`, from `statvfs(3)`.
fn statvfs_free_bytes(path: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let mut stat: libc::statvfs = unsafe {
        // SAFETY: statvfs is a plain C struct of integers; all-zero is a valid value.
        std::mem::zeroed()
    };
    // SAFETY: c_path is a valid NUL-terminated string and stat a valid, writable statvfs.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// A probe that reports whatever the test sets: for simulating a filling or full disk.
#[derive(Debug)]
pub struct FixedProbe {
    free_bytes: AtomicU64,
    failing: std::sync::atomic::AtomicBool,
}

impl FixedProbe {
    /// A probe reporting `free_bytes`.
    pub fn new(free_bytes: u64) -> Self {
        Self {
            free_bytes: AtomicU64::new(free_bytes),
            failing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Changes the reported free space.
    pub fn set_free_bytes(&self, free_bytes: u64) {
        self.free_bytes.store(free_bytes, Ordering::SeqCst);
    }

    /// Makes every probe fail with an I/O error (a broken storage device).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }
}

impl DiskProbe for FixedProbe {
    fn free_bytes(&self, _path: &Path) -> io::Result<u64> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(io::Error::other("simulated storage failure"));
        }
        Ok(self.free_bytes.load(Ordering::SeqCst))
    }
}

/// What the free space means for recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskState {
    /// At or above the floor: new recorded sessions are admitted.
    Available,
    /// Below the floor: new recorded sessions are refused; active ones go on.
    Low,
    /// Below half the floor: active recorded sessions are sealed and closed.
    Critical,
    /// The probe itself failed: treated like `Critical` (fail closed).
    Unknown,
}

impl DiskState {
    /// Whether a new session that must be recorded may start.
    pub fn admits_new_sessions(self) -> bool {
        self == DiskState::Available
    }

    /// Whether active recorded sessions must be sealed and closed.
    pub fn must_close_sessions(self) -> bool {
        matches!(self, DiskState::Critical | DiskState::Unknown)
    }
}

/// Turns free-space samples into a [`DiskState`] with hysteresis, so that a disk hovering at the
/// floor does not flap between admitting and refusing sessions: leaving a worse state needs the
/// free space to climb a margin above the threshold that entered it.
#[derive(Debug, Clone)]
pub struct DiskWatch {
    path: PathBuf,
    floor_bytes: u64,
    margin_bytes: u64,
    state: DiskState,
    free_bytes: Option<u64>,
}

impl DiskWatch {
    /// A watch over the filesystem holding `path` with the given floor.
    pub fn new(path: PathBuf, floor_bytes: u64) -> Self {
        assert!(
            floor_bytes > 0,
            "the disk floor is validated to be positive"
        );
        Self {
            path,
            floor_bytes,
            // 5 % of the floor, at least a named minimum: large enough to stop flapping, small
            // enough that a freed disk is admitted again promptly.
            margin_bytes: (floor_bytes / 20).max(DISK_HYSTERESIS_BYTES_MIN),
            state: DiskState::Available,
            free_bytes: None,
        }
    }

    /// Samples the probe and returns the new state.
    pub fn sample(&mut self, probe: &dyn DiskProbe) -> DiskState {
        match probe.free_bytes(&self.path) {
            Ok(free) => self.update(free),
            Err(e) => {
                log::error!(
                    "event=disk_probe_failed path={} error={e}",
                    self.path.display()
                );
                self.free_bytes = None;
                self.state = DiskState::Unknown;
                self.state
            }
        }
    }

    /// Feeds one free-space figure and returns the new state.
    pub fn update(&mut self, free_bytes: u64) -> DiskState {
        let low = self.floor_bytes;
        let critical = self.floor_bytes / 2;
        let m = self.margin_bytes;
        let next = match self.state {
            DiskState::Available | DiskState::Unknown if free_bytes < critical => {
                DiskState::Critical
            }
            DiskState::Available if free_bytes < low => DiskState::Low,
            DiskState::Available => DiskState::Available,
            DiskState::Unknown if free_bytes < low => DiskState::Low,
            DiskState::Unknown => DiskState::Available,
            DiskState::Low if free_bytes < critical => DiskState::Critical,
            DiskState::Low if free_bytes >= low.saturating_add(m) => DiskState::Available,
            DiskState::Low => DiskState::Low,
            DiskState::Critical if free_bytes >= low.saturating_add(m) => DiskState::Available,
            DiskState::Critical if free_bytes >= critical.saturating_add(m) => DiskState::Low,
            DiskState::Critical => DiskState::Critical,
        };
        if next != self.state {
            log::warn!(
                "event=disk_state_changed from={:?} to={next:?} free_bytes={free_bytes} floor_bytes={}",
                self.state,
                self.floor_bytes
            );
        }
        self.state = next;
        self.free_bytes = Some(free_bytes);
        next
    }

    /// The current state.
    pub fn state(&self) -> DiskState {
        self.state
    }

    /// The last measured free bytes, if the last sample succeeded.
    pub fn free_bytes(&self) -> Option<u64> {
        self.free_bytes
    }

    /// Applies a reloaded floor from the next sample on (the state keeps its hysteresis).
    pub fn set_floor(&mut self, floor_bytes: u64) {
        if floor_bytes > 0 {
            self.floor_bytes = floor_bytes;
            self.margin_bytes = (floor_bytes / 20).max(DISK_HYSTERESIS_BYTES_MIN);
        }
    }

    /// The configured floor.
    pub fn floor_bytes(&self) -> u64 {
        self.floor_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1_000_000;

    fn watch() -> DiskWatch {
        DiskWatch::new(PathBuf::from("/"), 500 * MB)
    }

    #[test]
    fn states_follow_floor_and_half_floor() {
        let mut w = watch();
        assert_eq!(w.update(800 * MB), DiskState::Available);
        assert_eq!(w.update(499 * MB), DiskState::Low);
        assert_eq!(w.update(249 * MB), DiskState::Critical);
    }

    #[test]
    fn hysteresis_needs_margin_to_recover() {
        let mut w = watch();
        w.update(499 * MB);
        // Just back above the floor is not enough: still low.
        assert_eq!(w.update(501 * MB), DiskState::Low);
        assert_eq!(w.update(530 * MB), DiskState::Available);
        w.update(200 * MB);
        assert_eq!(w.update(260 * MB), DiskState::Critical);
        assert_eq!(w.update(300 * MB), DiskState::Low);
    }

    #[test]
    fn failing_probe_fails_closed() {
        let probe = FixedProbe::new(10_000 * MB);
        let mut w = watch();
        assert_eq!(w.sample(&probe), DiskState::Available);
        probe.set_failing(true);
        let s = w.sample(&probe);
        assert_eq!(s, DiskState::Unknown);
        assert!(!s.admits_new_sessions());
        assert!(s.must_close_sessions());
    }

    #[test]
    fn system_probe_reads_a_real_filesystem() {
        let free = SystemProbe.free_bytes(Path::new("/")).expect("probe /");
        assert!(free > 0);
        let direct = statvfs_free_bytes(Path::new("/")).expect("statvfs /");
        assert!(direct > 0);
    }
}
