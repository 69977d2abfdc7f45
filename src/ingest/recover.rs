//! Start-up recovery of recorded sessions a crash (kill -9, power cut) left open: their segment
//! files are cut back to the last complete frame, fsynced and handed to the queue, and the
//! sessions end as `Interrupted`.
//!
//! Why it is needed: the tap registers a segment only when it seals it, so at a crash the
//! segment being written (and a rolled one whose seal had not committed) exists on disk only,
//! possibly ending inside an instruction (a torn write). Without this the recording's tail is
//! never encoded, and a reconnect of the session would reuse the index and truncate the file.
//!
//! Order: the daemon calls [`recover_sessions`] after `Queue::recover` and before the tap and
//! the spool import start. Each session costs one queue transaction
//! ([`Queue::end_interrupted_session`]) after its files were cut and fsynced, so a crash during
//! recovery leaves each session either untouched on the queue side (its files are cut again,
//! which changes nothing) or fully ended (skipped next time): nothing lost, nothing duplicated.
//!
//! Then any segment still `Writing` (it belonged to no open session) is sealed with what
//! reached the disk.
//!
//! Owns no queue state and no tap state; the file layout comes from [`super::segment`].

use std::fs::OpenOptions;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::durable;
use crate::limits::RECOVER_READ_CHUNK_BYTES;
use crate::queue::{
    Queue, QueueError, RecoveredSegment, SegmentPatch, SegmentState, SegmentStateKind, Session,
};

use super::scan::{Event, Scanner};
use super::segment::{is_safe_session_id, segment_path};

/// Where the complete instructions and frames of a segment file end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cut {
    /// Bytes read.
    pub file_bytes: u64,
    /// End of the last complete instruction (0: none).
    pub instruction_end: u64,
    /// End of the last complete `sync` (0: none).
    pub frame_end: u64,
    /// Complete `sync` instructions.
    pub frames: u64,
    /// Timestamp of the first complete `sync`.
    pub first_sync_ms: Option<u64>,
    /// Timestamp of the last complete `sync` (the one `frame_end` follows).
    pub last_sync_ms: Option<u64>,
    /// Where the stream stopped being Guacamole, if it did (garbage, not just a torn tail).
    pub broken_at: Option<u64>,
}

/// What to do with a segment file, from its [`Cut`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    /// Keep the first `keep` bytes: the stream up to its last complete frame.
    Frames {
        /// Bytes to keep.
        keep: u64,
    },
    /// Complete instructions but no complete frame: keep them (nothing recorded is thrown
    /// away) and park the segment, since encoding it can show nothing.
    NoFrame {
        /// Bytes to keep.
        keep: u64,
    },
    /// Not one complete instruction: the file is removed.
    Empty,
}

impl Cut {
    /// The repair this cut calls for.
    pub fn repair(&self) -> Repair {
        if self.frames > 0 {
            Repair::Frames {
                keep: self.frame_end,
            }
        } else if self.instruction_end > 0 {
            Repair::NoFrame {
                keep: self.instruction_end,
            }
        } else {
            Repair::Empty
        }
    }
}

/// Scans a segment stream for its last complete instruction and frame. A stream that stops
/// being Guacamole ends there (`broken_at`); an incomplete instruction or character at the end
/// is simply not counted.
///
/// # Errors
/// Reading failed.
pub fn find_cut(mut input: impl Read) -> io::Result<Cut> {
    let mut cut = Cut::default();
    let mut scanner = Scanner::new();
    let mut chunk = vec![0u8; RECOVER_READ_CHUNK_BYTES];
    loop {
        let n = match input.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let base = cut.file_bytes;
        cut.file_bytes += n as u64;
        if cut.broken_at.is_some() {
            continue;
        }
        let scanned = scanner.feed(&chunk[..n], |event, pos, cap| {
            if event != Event::End {
                return;
            }
            let end = base + pos as u64;
            cut.instruction_end = end;
            if cap.opcode() == b"sync" {
                cut.frame_end = end;
                cut.frames += 1;
                let ts = cap
                    .element(1)
                    .and_then(|t| std::str::from_utf8(t).ok())
                    .and_then(|t| t.parse::<u64>().ok());
                if ts.is_some() {
                    cut.first_sync_ms = cut.first_sync_ms.or(ts);
                    cut.last_sync_ms = ts;
                }
            }
        });
        if let Err(e) = scanned {
            log::warn!("event=recover_stream_broken error={e}");
            cut.broken_at = Some(cut.instruction_end);
        }
    }
    Ok(cut)
}

/// A segment file after [`repair_file`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repaired {
    /// What was done.
    pub repair: Repair,
    /// The scan behind it.
    pub cut: Cut,
    /// The file's last modification before the repair: when the crashed writer last wrote.
    pub modified: Option<SystemTime>,
}

/// Cuts a segment file back per [`Cut::repair`] and fsyncs it; removes it (and fsyncs its
/// directory) when it holds no complete instruction. The modification time is kept, so a
/// second run after a crash during recovery sees the same evidence. Idempotent.
///
/// # Errors
/// Opening, reading, truncating, syncing or removing failed.
pub fn repair_file(path: &Path) -> io::Result<Repaired> {
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let modified = file.metadata()?.modified().ok();
    let cut = find_cut(&mut file)?;
    let repair = cut.repair();
    match repair {
        Repair::Frames { keep } | Repair::NoFrame { keep } => {
            if keep < cut.file_bytes {
                file.set_len(keep)?;
                if let Some(at) = modified {
                    file.set_modified(at)?;
                }
            }
            file.sync_all()?;
        }
        Repair::Empty => {
            drop(file);
            std::fs::remove_file(path)?;
            durable::sync_parent(path)?;
        }
    }
    Ok(Repaired {
        repair,
        cut,
        modified,
    })
}

/// The tap's segment files in a session directory, by index. Other names (temporaries, the
/// spool import's `<index>.guac` files under internal ids) are not the tap's and are skipped.
///
/// # Errors
/// The directory exists but cannot be listed.
pub fn segment_files(session_dir: &Path) -> io::Result<Vec<(u32, PathBuf)>> {
    let entries = match std::fs::read_dir(session_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(index) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".guac"))
            .filter(|stem| stem.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|stem| stem.parse::<u32>().ok())
        else {
            continue;
        };
        // Exactly the writer's spelling (`000012.guac`), nothing that merely parses.
        let path = segment_path(session_dir, index);
        if path.file_name() == Some(name.as_os_str()) && entry.file_type()?.is_file() {
            out.push((index, path));
        }
    }
    out.sort();
    Ok(out)
}

/// Start-up recovery of one session failed on the file side; the session is left as it is
/// and retried at the next start.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// A segment file or directory could not be read, cut or synced.
    #[error("segment file {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The queue could not record the result.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

impl crate::error::Classify for RecoverError {
    fn is_transient(&self) -> bool {
        match self {
            RecoverError::Io { source, .. } => source.is_transient(),
            RecoverError::Queue(e) => e.is_transient(),
        }
    }
}

/// What [`recover_sessions`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionsRecovered {
    /// Sessions ended as interrupted.
    pub sessions: u32,
    /// Segment files registered (they were on disk only) or sealed.
    pub segments: u32,
    /// Of those, parked because they hold no complete frame.
    pub quarantined: u32,
    /// Empty segment files removed.
    pub removed: u32,
    /// Bytes cut off the ends of segment files (torn instructions, frames never completed).
    pub bytes_cut: u64,
    /// Sessions left open because their files could not be handled (logged; retried at the
    /// next start).
    pub failed: u32,
    /// Segments still `Writing` that belonged to no open session, sealed with what reached
    /// the disk (or quarantined when their file is gone).
    pub orphans_sealed: u32,
}

/// Ends every session a previous run left open (see the module docs). Call once at start-up,
/// after `Queue::recover`, before the tap and the spool import start.
///
/// # Errors
/// Queue errors (the start must then fail: the queue is unusable). A session whose files
/// cannot be handled is logged, counted in `failed` and left for the next start.
pub fn recover_sessions(
    queue: &Queue,
    segments_dir: &Path,
) -> Result<SessionsRecovered, QueueError> {
    let mut total = SessionsRecovered::default();
    for session in queue.sessions_left_open()? {
        match recover_session(queue, segments_dir, &session, &mut total) {
            Ok(()) => total.sessions += 1,
            Err(RecoverError::Queue(e)) => return Err(e),
            Err(e) => {
                log::error!(
                    "event=session_recovery_failed session={} error={e}",
                    session.session_id
                );
                total.failed += 1;
            }
        }
    }
    total.orphans_sealed = seal_orphaned_segments(queue)?;
    Ok(total)
}

/// Any segment still `Writing` once the open sessions were handled belongs to no open
/// session (a session's own were cut and sealed above): keeps what reached the disk (sealed
/// at the file's size), or quarantines it when its file is gone. Returns how many.
fn seal_orphaned_segments(queue: &Queue) -> Result<u32, QueueError> {
    let mut sealed = 0;
    for seg in queue.segments_in_state(SegmentStateKind::Writing, usize::MAX)? {
        let (to, patch) = match std::fs::metadata(&seg.path) {
            Ok(m) => (
                SegmentState::Sealed,
                SegmentPatch {
                    bytes: Some(m.len()),
                    ..SegmentPatch::default()
                },
            ),
            Err(e) => (
                SegmentState::Quarantined {
                    reason: format!("segment file lost in a crash: {e}"),
                },
                SegmentPatch::default(),
            ),
        };
        log::warn!(
            "event=segment_sealed_at_recovery segment={} to={}",
            seg.id,
            to.kind().name()
        );
        queue.transition_segment(seg.id, SegmentStateKind::Writing, to, &patch)?;
        sealed += 1;
    }
    Ok(sealed)
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RecoverError {
    let path = path.to_path_buf();
    move |source| RecoverError::Io { path, source }
}

/// Cuts and syncs one session's files, then ends it in one queue transaction.
fn recover_session(
    queue: &Queue,
    segments_dir: &Path,
    session: &Session,
    total: &mut SessionsRecovered,
) -> Result<(), RecoverError> {
    let (candidates, tap_dir) = candidates(queue, segments_dir, session)?;
    let mut last_write = None;
    let mut found = Vec::new();
    for Candidate {
        index,
        path,
        registered,
    } in candidates
    {
        let repaired = match repair_file(&path) {
            Ok(r) => r,
            // A registered `Writing` segment whose file is gone: nothing to cut; park it. (A
            // listed file that vanished since was no segment of ours: skip it.)
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if registered {
                    found.push(RecoveredSegment {
                        index,
                        path,
                        bytes: 0,
                        first_sync_ms: None,
                        last_sync_ms: None,
                        quarantine: Some(format!("segment file lost in a crash: {e}")),
                    });
                }
                continue;
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        last_write = last_write.max(repaired.modified);
        log_repair(session, index, &repaired);
        if let Some(seg) = recovered(index, path, &repaired, total) {
            found.push(seg);
        }
    }
    // The tap created these files without syncing their directory: make the names durable
    // before the queue points at them.
    if let Some(dir) = &tap_dir {
        durable::sync_dir(dir).map_err(io_err(dir))?;
    }
    // The end is when the writer last wrote; without a file, the start (never a later guess).
    let end_ms = last_write
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(session.start_ms, |d| d.as_millis() as u64);
    let done = queue.end_interrupted_session(session.id, end_ms, &found)?;
    total.segments += done.registered + done.sealed;
    total.quarantined += done.quarantined;
    log::warn!(
        "event=session_interrupted session={} id={} end_ms={end_ms} segments_registered={} \
         segments_sealed={} quarantined={}",
        session.session_id,
        session.id,
        done.registered,
        done.sealed,
        done.quarantined
    );
    Ok(())
}

/// The files to cut, by index, each with whether the queue knows it (as `Writing`): the tap's
/// files the queue does not hold in a final state, plus `Writing` segments wherever they are.
/// Also the tap directory, when it holds segment files.
fn candidates(
    queue: &Queue,
    segments_dir: &Path,
    session: &Session,
) -> Result<(Vec<Candidate>, Option<PathBuf>), RecoverError> {
    // The tap's files live under the external id; sessions of the spool import (numeric
    // directories, registered as they are copied) have none there.
    let mut listed = Vec::new();
    let mut tap_dir = None;
    if is_safe_session_id(&session.session_id) {
        let dir = segments_dir.join(&session.session_id);
        listed = segment_files(&dir).map_err(io_err(&dir))?;
        tap_dir = Some(dir).filter(|_| !listed.is_empty());
    }
    let registered = queue.segments_of_session(session.id)?;
    let writing = |s: &&crate::queue::Segment| s.state.kind() == SegmentStateKind::Writing;
    let mut out = Vec::new();
    for (index, path) in listed {
        let known = registered.iter().find(|s| s.index == index);
        if known.is_none_or(|s| writing(&s)) {
            out.push(Candidate {
                index,
                path,
                registered: known.is_some(),
            });
        }
    }
    for seg in registered.iter().filter(writing) {
        if !out.iter().any(|c| c.index == seg.index) {
            out.push(Candidate {
                index: seg.index,
                path: seg.path.clone(),
                registered: true,
            });
        }
    }
    out.sort_by_key(|c| c.index);
    Ok((out, tap_dir))
}

/// A segment file to cut.
struct Candidate {
    index: u32,
    path: PathBuf,
    /// The queue knows it (as `Writing`).
    registered: bool,
}

fn log_repair(session: &Session, index: u32, repaired: &Repaired) {
    let cut = &repaired.cut;
    log::warn!(
        "event=segment_recovered session={} index={index} file_bytes={} repair={:?} frames={} \
         broken_at={:?}",
        session.session_id,
        cut.file_bytes,
        repaired.repair,
        cut.frames,
        cut.broken_at
    );
}

/// The queue's view of a repaired file (`None`: it was removed), counting what was cut.
fn recovered(
    index: u32,
    path: PathBuf,
    repaired: &Repaired,
    total: &mut SessionsRecovered,
) -> Option<RecoveredSegment> {
    let cut = &repaired.cut;
    let (keep, quarantine) = match repaired.repair {
        Repair::Frames { keep } => (keep, None),
        Repair::NoFrame { keep } => (
            keep,
            Some(format!(
                "interrupted by a crash before its first complete frame ({keep} bytes of \
                 complete instructions kept)"
            )),
        ),
        Repair::Empty => {
            total.removed += 1;
            total.bytes_cut += cut.file_bytes;
            return None;
        }
    };
    total.bytes_cut += cut.file_bytes - keep;
    Some(RecoveredSegment {
        index,
        path,
        bytes: keep,
        first_sync_ms: cut.first_sync_ms,
        last_sync_ms: cut.last_sync_ms,
        quarantine,
    })
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::Write;
    use std::sync::Arc;

    use super::*;
    use crate::clock::ManualClock;
    use crate::queue::{NewSegment, NewSession, QueueOptions, SegmentState, SessionState};

    const FRAME_1: &str = "3.img,1.1,2.14;4.sync,4.1000;";
    const FRAME_2: &str = "4.rect,1.0,1.0,1.0,2.10,2.10;4.sync,4.1040;";

    fn cut_of(bytes: &[u8]) -> Cut {
        find_cut(bytes).unwrap()
    }

    #[test]
    fn a_partial_instruction_is_cut_back_to_the_last_frame() {
        let whole = format!("{FRAME_1}{FRAME_2}");
        let mut torn = whole.clone().into_bytes();
        // A complete instruction after the last frame, then a torn one.
        torn.extend_from_slice(b"5.mouse,2.10,2.20,1.0,4.1050;4.rect,1.0,3.");
        let cut = cut_of(&torn);
        assert_eq!(cut.frames, 2);
        assert_eq!(cut.frame_end, whole.len() as u64);
        assert_eq!(
            cut.instruction_end,
            (whole.len() + "5.mouse,2.10,2.20,1.0,4.1050;".len()) as u64
        );
        assert_eq!(
            (cut.first_sync_ms, cut.last_sync_ms),
            (Some(1000), Some(1040))
        );
        assert_eq!(cut.broken_at, None);
        assert_eq!(
            cut.repair(),
            Repair::Frames {
                keep: whole.len() as u64
            }
        );
        // Every split point of a torn file lands on the last complete frame before it.
        for end in 0..=whole.len() {
            let cut = cut_of(&whole.as_bytes()[..end]);
            let expected = if end >= whole.len() {
                whole.len()
            } else if end >= FRAME_1.len() {
                FRAME_1.len()
            } else {
                0
            };
            assert_eq!(cut.frame_end, expected as u64, "end {end}");
        }
    }

    #[test]
    fn a_partial_utf8_character_is_not_a_complete_instruction() {
        // `name` with a 3-character value whose last character (€, 3 bytes) is cut.
        let complete = "4.name,3.hé€;";
        let full = format!("{FRAME_1}{complete}");
        for drop in 1..=3 {
            let torn = &full.as_bytes()[..full.len() - 1 - drop];
            let cut = cut_of(torn);
            assert_eq!(cut.instruction_end, FRAME_1.len() as u64, "drop {drop}");
        }
        // The `;` alone missing: still incomplete.
        let cut = cut_of(&full.as_bytes()[..full.len() - 1]);
        assert_eq!(cut.instruction_end, FRAME_1.len() as u64);
        let cut = cut_of(full.as_bytes());
        assert_eq!(cut.instruction_end, full.len() as u64);
        // Lengths count characters: a value one byte short of 3 characters is not complete.
        let cut = cut_of("4.name,3.hé€".as_bytes());
        assert_eq!(cut.instruction_end, 0);
    }

    #[test]
    fn no_sync_at_all_keeps_the_instructions_and_parks_them() {
        let cut = cut_of(b"3.img,1.1,2.14;4.rect,1.0,1.0");
        assert_eq!(cut.frames, 0);
        assert_eq!(cut.repair(), Repair::NoFrame { keep: 15 });
        assert_eq!(cut_of(b"").repair(), Repair::Empty);
        assert_eq!(cut_of(b"4.sy").repair(), Repair::Empty);
    }

    #[test]
    fn garbage_ends_the_stream_where_it_starts() {
        let mut bytes = FRAME_1.as_bytes().to_vec();
        bytes.extend_from_slice(b"\0\0\0\0garbage;4.sync,4.9999;");
        let cut = cut_of(&bytes);
        assert_eq!(cut.broken_at, Some(FRAME_1.len() as u64));
        assert_eq!(cut.frame_end, FRAME_1.len() as u64);
        assert_eq!(cut.file_bytes, bytes.len() as u64);
    }

    /// A recording of the shared directory (beside the repository, or `/work/shared`).
    fn shared_recording(name: &str) -> Option<Vec<u8>> {
        ["../shared/recordings", "/work/shared/recordings"]
            .iter()
            .map(|d| Path::new(env!("CARGO_MANIFEST_DIR")).join(d).join(name))
            .find(|p| p.is_file())
            .map(|p| std::fs::read(p).unwrap())
    }

    #[test]
    fn a_real_recording_cut_anywhere_keeps_exactly_its_complete_frames() {
        let Some(data) = shared_recording("ssh-green-800x600.guac") else {
            return;
        };
        let whole = cut_of(&data[..]);
        assert_eq!(whole.instruction_end, data.len() as u64);
        assert!(whole.frames > 10);
        // Cuts across the 256 KiB read chunks land on the same frames.
        for end in [data.len() / 3, data.len() / 2 + 7, data.len() - 1] {
            let cut = cut_of(&data[..end]);
            let kept = &data[..cut.frame_end as usize];
            assert!(kept.ends_with(b";"), "end {end}");
            assert_eq!(cut_of(kept).frame_end, cut.frame_end, "idempotent at {end}");
            assert_eq!(cut_of(kept).instruction_end, cut.frame_end);
        }
    }

    /// Scan speed of start-up recovery (a crashed session's open segment is read whole):
    /// `cargo test --release --lib bench_find_cut -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn bench_find_cut() {
        let data = shared_recording("vnc-jpeg-keys-1280x800.guac").expect("shared recordings");
        let started = std::time::Instant::now();
        let rounds = 10;
        for _ in 0..rounds {
            assert!(cut_of(&data[..]).frames > 0);
        }
        let secs = started.elapsed().as_secs_f64();
        let mb = (data.len() * rounds) as f64 / 1e6;
        eprintln!(
            "find_cut: {mb:.0} MB in {secs:.2} s = {:.0} MB/s",
            mb / secs
        );
    }

    fn write(path: &Path, bytes: &[u8]) {
        let mut f = File::create(path).unwrap();
        f.write_all(bytes).unwrap();
    }

    #[test]
    fn repair_cuts_keeps_mtime_removes_empty_files_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let torn = dir.path().join("000001.guac");
        write(&torn, format!("{FRAME_1}{FRAME_2}4.rect,1.").as_bytes());
        let old = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        File::options()
            .write(true)
            .open(&torn)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let first = repair_file(&torn).unwrap();
        let kept = (FRAME_1.len() + FRAME_2.len()) as u64;
        assert_eq!(first.repair, Repair::Frames { keep: kept });
        assert_eq!(first.modified, Some(old));
        assert_eq!(std::fs::metadata(&torn).unwrap().len(), kept);
        assert_eq!(std::fs::metadata(&torn).unwrap().modified().unwrap(), old);
        let second = repair_file(&torn).unwrap();
        assert_eq!(second.repair, first.repair);
        assert_eq!(second.modified, Some(old));

        let empty = dir.path().join("000002.guac");
        write(&empty, b"4.sy");
        assert_eq!(repair_file(&empty).unwrap().repair, Repair::Empty);
        assert!(!empty.exists());
    }

    #[test]
    fn only_the_writers_file_names_are_segments() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "000000.guac",
            "000012.guac",
            "3.guac",
            "000001.guac.tmp",
            "x.guac",
            "0000001.guac",
        ] {
            write(&dir.path().join(name), b"");
        }
        let found: Vec<u32> = segment_files(dir.path())
            .unwrap()
            .into_iter()
            .map(|(i, _)| i)
            .collect();
        assert_eq!(found, vec![0, 12]);
        assert!(
            segment_files(&dir.path().join("missing"))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn recovery_registers_cuts_and_ends_each_open_session_once() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(
            &QueueOptions::new(dir.path().join("queue")),
            Arc::new(ManualClock::new(5)),
        )
        .unwrap();
        let segments = dir.path().join("segments");
        let sdir = segments.join("sess-1");
        std::fs::create_dir_all(&sdir).unwrap();
        let register = |id: &str| {
            q.register_session(&NewSession {
                session_id: id.into(),
                user_id: "u".into(),
                username: "u".into(),
                image_friendly_name: "i".into(),
                protocol: "vnc".into(),
                start_ms: 1,
                target: String::new(),
                client_addr: String::new(),
            })
            .unwrap()
        };
        let s = register("sess-1");
        // A second session died before its first frame: its instructions are kept, parked.
        let frameless = register("sess-2");
        std::fs::create_dir_all(segments.join("sess-2")).unwrap();
        write(
            &segment_path(&segments.join("sess-2"), 0),
            b"3.img,1.1,2.14;4.rect,1.",
        );
        // 0 sealed by the tap; 1 rolled but its seal never committed; 2 open with a torn tail;
        // 3 created at the last roll, nothing written yet.
        write(&segment_path(&sdir, 0), FRAME_1.as_bytes());
        q.register_segment(&NewSegment {
            session: s,
            index: 0,
            path: segment_path(&sdir, 0),
            bytes: FRAME_1.len() as u64,
            first_sync_ms: None,
            last_sync_ms: None,
            sealed: true,
        })
        .unwrap();
        write(&segment_path(&sdir, 1), FRAME_2.as_bytes());
        write(
            &segment_path(&sdir, 2),
            format!("{FRAME_1}4.rect,1.0,1.0,1.0,2.10,2.10;4.sync,2.").as_bytes(),
        );
        write(&segment_path(&sdir, 3), b"");
        // A crash after the files were cut, before the queue committed: nothing registered,
        // and the next start does the whole session again.
        q.set_failpoint(Some(crate::queue::Failpoint::AfterTransitionWrite));
        assert!(recover_sessions(&q, &segments).is_err());
        assert_eq!(q.session(s).unwrap().unwrap().state, SessionState::Live);
        assert_eq!(q.segments_of_session(s).unwrap().len(), 1);
        let done = recover_sessions(&q, &segments).unwrap();
        assert_eq!(
            done,
            SessionsRecovered {
                sessions: 2,
                segments: 3,
                quarantined: 1,
                // Cut and removed by the interrupted run already (sess-1), cut now (sess-2).
                removed: 0,
                bytes_cut: 9,
                failed: 0,
                orphans_sealed: 0
            }
        );
        let parked = q.segment_at(frameless, 0).unwrap().unwrap();
        assert_eq!(parked.bytes, 15);
        let SegmentState::Quarantined { reason } = &parked.state else {
            panic!("{parked:?}");
        };
        assert!(reason.contains("first complete frame"), "{reason}");
        assert_eq!(
            q.session(frameless).unwrap().unwrap().state,
            SessionState::Interrupted
        );
        let session = q.session(s).unwrap().unwrap();
        assert_eq!(session.state, SessionState::Interrupted);
        assert!(session.end_ms.is_some_and(|e| e >= 1));
        assert_eq!(session.segment_count, 3);
        let segs = q.segments_of_session(s).unwrap();
        assert_eq!(segs.len(), 3);
        assert!(segs.iter().all(|g| g.state == SegmentState::Sealed));
        assert_eq!(segs[2].bytes, FRAME_1.len() as u64);
        assert_eq!(
            std::fs::read(segment_path(&sdir, 2)).unwrap(),
            FRAME_1.as_bytes()
        );
        assert!(!segment_path(&sdir, 3).exists());
        // A second start finds nothing to do.
        assert_eq!(
            recover_sessions(&q, &segments).unwrap(),
            SessionsRecovered::default()
        );
        assert_eq!(q.segments_of_session(s).unwrap(), segs);
    }
}
