//! What the daemon asks of the C allocator (glibc's malloc), so that its resident memory
//! stays flat over thousands of sessions.
//!
//! Every recorded session passes through several short-lived threads (the tap's blocking
//! pool, the encoders, the uploaders), and glibc gives threads their own arenas (up to eight
//! per core) and keeps what a freed allocation leaves in them for the next one. Memory freed
//! at the end of a session then stays resident, scattered over the arenas: a soak measured
//! 17 to 30 KiB of resident memory per ended session that only a restart gave back, while
//! the heap in use (heaptrack) stayed flat. Two remedies, both here: at start the daemon
//! bounds the arenas to [`MALLOC_ARENAS_MAX`] (unless the operator set `MALLOC_ARENA_MAX`),
//! and the housekeeping thread hands free pages back to the kernel every
//! [`MALLOC_TRIM_INTERVAL_MS`] ([`trim`]). Other C libraries: both are no-ops.

use crate::limits::MALLOC_ARENAS_MAX;
#[cfg(doc)]
use crate::limits::MALLOC_TRIM_INTERVAL_MS;

/// Bounds glibc's malloc arenas to [`MALLOC_ARENAS_MAX`], unless `MALLOC_ARENA_MAX` is set in
/// the environment (glibc then applies the operator's value itself). Call it before the
/// daemon starts its threads: arenas made earlier stay.
pub fn bound_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets a tunable of the allocator; M_ARENA_MAX takes a count.
        let done = unsafe { libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS_MAX) };
        if done != 1 {
            log::warn!("event=malloc_arena_max_refused value={MALLOC_ARENAS_MAX}");
        }
    }
}

/// Hands the allocator's free pages back to the kernel (`malloc_trim(0)`: every arena, every
/// whole free page, not only the top of the heap). Returns whether any memory was released.
/// Takes each arena's lock in turn, briefly: call it from a housekeeping thread, not from a
/// loop that moves a session's bytes.
pub fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes the allocator's own locks and touches no Rust object.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn trim_releases_pages_freed_inside_the_heap() {
        // 32 MiB in 64 KiB blocks (under glibc's mmap threshold, so inside an arena), then all
        // but every eighth freed: free runs inside the heap, which the top-of-heap shrink at
        // free() cannot give back and a trim can.
        let mut blocks: Vec<Vec<u8>> = (0..512).map(|_| vec![1u8; 64 * 1024]).collect();
        for (i, b) in blocks.iter_mut().enumerate() {
            if i % 8 != 7 {
                *b = Vec::new();
            }
        }
        assert!(trim(), "malloc_trim gave nothing back");
        drop(blocks);
    }
}
