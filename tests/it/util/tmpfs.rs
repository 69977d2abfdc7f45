//! A real, small filesystem for full-disk tests: a tmpfs of a given size mounted on a fresh
//! temporary directory, unmounted on drop (lazily if it is still busy).
//!
//! Tests run as root (locally and on CI), so `mount -t tmpfs` works; when it does not, the
//! test fails with the reason instead of skipping, because a skipped full-disk test proves
//! nothing. [`Tmpfs::fill_leaving`] fills it with a filler file so that exactly the wanted
//! room stays free (to the page), and [`Tmpfs::free_filler`] gives the space back.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// tmpfs allocates whole pages: sizes and room are rounded to this.
pub const PAGE_BYTES: u64 = 4096;

/// A mounted tmpfs; unmounted when dropped.
pub struct Tmpfs {
    dir: tempfile::TempDir,
    filler: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size_bytes` (rounded up to pages) on a new temporary directory.
    ///
    /// # Panics
    /// When mounting fails (not root, no tmpfs): a full-disk test must not pass without a
    /// full disk.
    pub fn mount(size_bytes: u64) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("tmpfs-")
            .tempdir()
            .expect("temporary mount point");
        let size = size_bytes.div_ceil(PAGE_BYTES) * PAGE_BYTES;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755")])
            .arg("tmpfs")
            .arg(dir.path())
            .output()
            .unwrap_or_else(|e| panic!("full-disk test: cannot run mount(8): {e}"));
        assert!(
            out.status.success(),
            "full-disk test needs a real tmpfs (run as root): `mount -t tmpfs -o size={size} \
             tmpfs {}` failed: {} {}",
            dir.path().display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let filler = dir.path().join(".filler");
        Self { dir, filler }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Bytes free for an unprivileged-or-not writer right now (statvfs `f_bavail`).
    pub fn free_bytes(&self) -> u64 {
        let c = std::ffi::CString::new(self.path().as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: statvfs is plain data (all-zero is a valid value), `c` is a valid
        // NUL-terminated path and `st` a writable statvfs that outlives the call.
        let (rc, st) = unsafe {
            let mut st: libc::statvfs = std::mem::zeroed();
            (libc::statvfs(c.as_ptr(), &mut st), st)
        };
        assert_eq!(rc, 0, "statvfs {}", self.path().display());
        st.f_bavail * st.f_frsize
    }

    /// Fills the filesystem with a filler file until writes fail with ENOSPC, then shrinks the
    /// filler so that `room_bytes` (a multiple of [`PAGE_BYTES`]) stay free. Returns the room
    /// actually free.
    pub fn fill_leaving(&self, room_bytes: u64) -> u64 {
        assert!(
            room_bytes.is_multiple_of(PAGE_BYTES),
            "tmpfs frees whole pages: room must be a multiple of {PAGE_BYTES}"
        );
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.filler)
            .expect("filler file");
        let chunk = vec![0xA5u8; 64 * 1024];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", self.filler.display()),
            }
        }
        assert_eq!(self.free_bytes(), 0, "the filler filled the filesystem");
        let len = f.metadata().expect("filler size").len();
        assert!(
            len >= room_bytes,
            "the tmpfs is smaller than the room asked"
        );
        f.set_len((len / PAGE_BYTES) * PAGE_BYTES - room_bytes)
            .expect("shrink filler");
        drop(f);
        self.free_bytes()
    }

    /// Removes the filler: the space it took is free again.
    pub fn free_filler(&self) {
        match std::fs::remove_file(&self.filler) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("removing {}: {e}", self.filler.display()),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let plain = Command::new("umount").arg(self.path()).status();
        if !matches!(plain, Ok(s) if s.success()) {
            // Still busy (a daemon's open file, a cwd): detach now, the kernel frees it later.
            let lazy = Command::new("umount").arg("-l").arg(self.path()).status();
            if !matches!(lazy, Ok(s) if s.success()) {
                eprintln!("warning: could not unmount tmpfs {}", self.path().display());
            }
        }
    }
}
