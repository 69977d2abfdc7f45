//! Pinned encoder workers: pull sealed segments from the queue in session order, encode each to
//! `<data-dir>/clips/<session>/<index>.mp4` + `.jpg`, register the clip and mark the segment
//! `Encoded`, all crash-safe.
//!
//! Owns the job around one encode: the start display state (the previous segment's end state,
//! persisted beside it as `<segment>.state`), temporary outputs renamed into place only when
//! complete, the clip's hash and wall-clock span, and the failure policy (corrupt input ->
//! `Quarantined`, panic or permanent error -> `Failed` then retried up to
//! [`ENCODE_ATTEMPTS_MAX`] times, transient -> back to `Sealed` after a backoff). It does not
//! own the rendering or x264 (behind [`SegmentEncoder`]), threads or pinning (`app`).
//!
//! Crash safety: every output is written under a `.tmp` name and renamed after an fsync, and
//! the queue commit (`finish_encoding`) comes last, so a kill at any moment leaves either no
//! clip record (the segment goes back to `Sealed` at start-up and is redone, overwriting the
//! same files with the same bytes) or a complete one.

use std::fs::File;
use std::io::{self, Read};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::clock::Clock;
use crate::durable::{remove_if_present, rename_durably, with_suffix, write_atomically};
use crate::encode::{EncodeError, VideoSettings, encode_recording_with_events};
use crate::error::Classify;
use crate::events::extract::ExtractSettings;
use crate::lifecycle::{Heartbeat, Shutdown};
use crate::limits::{ENCODE_ATTEMPTS_MAX, ENCODE_BACKOFF_MS, ENCODE_IDLE_POLL_MS};
use crate::queue::{
    ClipEventsObject, NewClip, Queue, QueueError, Segment, SegmentPatch, SegmentState,
    SegmentStateKind,
};
use crate::render::DisplaySnapshot;
use crate::status::{EncoderJob, EncoderStatus, StatusBoard};

/// Why one encode job failed, classified for the failure policy.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The segment is not a usable Guacamole stream: quarantine it, never retry.
    #[error("corrupt segment: {0}")]
    Corrupt(String),
    /// Retrying later may work (disk full, I/O hiccup).
    #[error("transient: {0}")]
    Transient(String),
    /// Retrying the same input will fail the same way (a bug, an unsupported stream).
    #[error("{0}")]
    Permanent(String),
}

impl Classify for JobError {
    fn is_transient(&self) -> bool {
        matches!(self, JobError::Transient(_))
    }
}

impl From<io::Error> for JobError {
    fn from(e: io::Error) -> Self {
        if e.is_transient() {
            JobError::Transient(e.to_string())
        } else {
            JobError::Permanent(e.to_string())
        }
    }
}

/// What an encoder made of one segment.
#[derive(Debug, Clone)]
pub struct EncodedSegment {
    /// Media duration of the MP4.
    pub duration_ms: u64,
    /// The display state at the end of the segment, serialised (postcard), for the next one.
    pub end_state: Vec<u8>,
    /// Whether a thumbnail was written.
    pub thumbnail: bool,
    /// The clip's events object ([`crate::events::format`]), when the encoder takes events.
    pub events: Option<Vec<u8>>,
}

/// Renders and encodes one segment. Implemented over `encode::encode_recording`; tests plug in
/// their own.
pub trait SegmentEncoder: Send + Sync {
    /// Encodes `input` (a Guacamole stream starting from display state `start_state`, or blank)
    /// to `out_mp4` and `out_thumb`, reporting progress as bytes of `input` consumed. The clip
    /// lasts at least `span_ms` (the segment's wall-clock span) when given: its last picture
    /// is held until then.
    ///
    /// # Errors
    /// [`JobError`], classified.
    fn encode(
        &self,
        input: &mut dyn Read,
        start_state: Option<&[u8]>,
        span_ms: Option<u64>,
        out_mp4: &Path,
        out_thumb: &Path,
        progress: &mut dyn FnMut(u64),
    ) -> Result<EncodedSegment, JobError>;
}

/// What one [`EncodeWorker::tick`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// Nothing to encode.
    Idle,
    /// One segment was handled (encoded, failed or quarantined).
    Worked,
    /// A transient problem: try again after this long.
    Backoff(Duration),
}

/// One encoder thread's worker.
pub struct EncodeWorker {
    slot: usize,
    core: Option<usize>,
    queue: Arc<Queue>,
    encoder: Arc<dyn SegmentEncoder>,
    status: StatusBoard,
    clock: Arc<dyn Clock>,
    clips_dir: PathBuf,
}

/// Where the end display state of `segment_path` is kept.
pub fn state_path(segment_path: &Path) -> PathBuf {
    with_suffix(segment_path, ".state")
}

/// Where the events object of the clip at `mp4` goes (beside it: `N.events.json`).
pub fn events_path(mp4: &Path) -> PathBuf {
    mp4.with_extension("events.json")
}

/// Where the clip of segment `index` of session `session` goes.
pub fn clip_paths(clips_dir: &Path, session: u64, index: u32) -> (PathBuf, PathBuf) {
    let dir = clips_dir.join(session.to_string());
    (
        dir.join(format!("{index}.mp4")),
        dir.join(format!("{index}.jpg")),
    )
}

impl EncodeWorker {
    /// A worker publishing to encoder slot `slot` of the status board.
    pub fn new(
        slot: usize,
        core: Option<usize>,
        queue: Arc<Queue>,
        encoder: Arc<dyn SegmentEncoder>,
        status: StatusBoard,
        clock: Arc<dyn Clock>,
        clips_dir: PathBuf,
    ) -> Self {
        Self {
            slot,
            core,
            queue,
            encoder,
            status,
            clock,
            clips_dir,
        }
    }

    /// Runs ticks until `shutdown`, beating `heartbeat` on every tick and every progress step.
    pub fn run(mut self, shutdown: &Shutdown, heartbeat: &Heartbeat) {
        self.publish(None);
        while !shutdown.is_requested() {
            heartbeat.beat();
            let pause = match self.tick_with(heartbeat) {
                Tick::Worked => continue,
                Tick::Idle => Duration::from_millis(ENCODE_IDLE_POLL_MS),
                Tick::Backoff(d) => d,
            };
            if shutdown.sleep(pause) {
                break;
            }
        }
        log::info!("event=encoder_stopped slot={}", self.slot);
    }

    /// Takes the next segment and handles it.
    pub fn tick(&mut self) -> Tick {
        self.tick_with(&Heartbeat::detached())
    }

    fn tick_with(&mut self, heartbeat: &Heartbeat) -> Tick {
        let segment = match self.queue.next_segment_to_encode() {
            Ok(Some(s)) => s,
            Ok(None) => return self.retry_failed(),
            Err(e) => return self.queue_trouble("next_segment_to_encode", &e),
        };
        let started_ms = self.clock.now_ms();
        let session_name = match self.queue.session(segment.session) {
            Ok(Some(s)) => s.session_id,
            _ => segment.session.to_string(),
        };
        let job = EncoderJob {
            session_id: session_name.clone(),
            segment_index: segment.index,
            progress: 0.0,
            started_ms,
        };
        self.publish(Some(job.clone()));
        log::info!(
            "event=encode_started slot={} session={session_name} segment={} index={} bytes={}",
            self.slot,
            segment.id,
            segment.index,
            segment.bytes
        );
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            self.encode_segment(&segment, &job, heartbeat)
        }));
        self.publish(None);
        let outcome = match outcome {
            Ok(r) => r,
            Err(panic) => Err(JobError::Permanent(format!(
                "encoder panicked: {}",
                panic_message(&panic)
            ))),
        };
        let elapsed_ms = self.clock.now_ms().saturating_sub(started_ms);
        match outcome {
            Ok(clip) => self.finish(&segment, clip, elapsed_ms),
            Err(e) => self.fail(&segment, e),
        }
    }

    /// Renders, encodes and persists one segment; returns the clip to register.
    fn encode_segment(
        &self,
        segment: &Segment,
        job: &EncoderJob,
        heartbeat: &Heartbeat,
    ) -> Result<NewClip, JobError> {
        let mut input = match File::open(&segment.path) {
            Ok(f) => io::BufReader::with_capacity(256 * 1024, f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(JobError::Corrupt(format!(
                    "segment file {} is missing",
                    segment.path.display()
                )));
            }
            Err(e) => return Err(io_at(&segment.path)(e)),
        };
        let start_state = self.start_state(segment);
        let start_ms = self.wall_start_ms(segment);
        let span_ms = self
            .wall_end_ms(segment)
            .map(|end| end.saturating_sub(start_ms));
        let (mp4, thumb) = clip_paths(&self.clips_dir, segment.session, segment.index);
        if let Some(dir) = mp4.parent() {
            std::fs::create_dir_all(dir).map_err(io_at(dir))?;
        }
        let (mp4_tmp, thumb_tmp) = (with_suffix(&mp4, ".tmp"), with_suffix(&thumb, ".tmp"));
        let mut last_shown = 0.0f32;
        let total = segment.bytes.max(1) as f32;
        let mut progress = |consumed: u64| {
            heartbeat.beat();
            let p = (consumed as f32 / total).min(1.0);
            if p - last_shown >= 0.01 || p >= 1.0 {
                last_shown = p;
                let mut job = job.clone();
                job.progress = p.clamp(0.0, 1.0);
                self.publish(Some(job));
            }
        };
        let encoded = self
            .encoder
            .encode(
                &mut input,
                start_state.as_deref(),
                span_ms,
                &mp4_tmp,
                &thumb_tmp,
                &mut progress,
            )
            .and_then(|encoded| {
                let thumb = encoded
                    .thumbnail
                    .then_some((thumb_tmp.as_path(), thumb.as_path()));
                persist_outputs(&segment.path, &encoded, (&mp4_tmp, &mp4), thumb)?;
                Ok(encoded)
            });
        let encoded = match encoded {
            Ok(encoded) => encoded,
            Err(e) => {
                // A failed job leaves no partial output behind (a full disk stays as full as
                // it was); the retry writes them again.
                remove_if_present(&mp4_tmp);
                remove_if_present(&thumb_tmp);
                return Err(e);
            }
        };
        let thumb_path = encoded.thumbnail.then_some(thumb);
        let events = match &encoded.events {
            Some(bytes) => Some(write_events(&mp4, bytes)?),
            None => None,
        };
        let (bytes, sha256) = hash_file(&mp4).map_err(io_at(&mp4))?;
        let end_ms = start_ms.saturating_add(encoded.duration_ms);
        Ok(NewClip {
            segment: segment.id,
            index: 0,
            path: mp4,
            thumb_path,
            bytes,
            sha256,
            duration_ms: encoded.duration_ms,
            start_ms,
            end_ms,
            object_key: None,
            events,
        })
    }

    /// The previous segment's end state, when it was encoded and its state file is readable.
    /// Anything else starts from a blank display (logged): a missing picture for a moment beats
    /// a segment that cannot be encoded at all.
    fn start_state(&self, segment: &Segment) -> Option<Vec<u8>> {
        let prev_index = segment.index.checked_sub(1)?;
        let prev = match self.queue.segment_at(segment.session, prev_index) {
            Ok(Some(p)) => p,
            Ok(None) => return None,
            Err(e) => {
                log::warn!(
                    "event=start_state_unavailable segment={} error={e}",
                    segment.id
                );
                return None;
            }
        };
        if prev.state.kind() != SegmentStateKind::Encoded {
            log::warn!(
                "event=start_state_blank segment={} previous={} previous_state={}",
                segment.id,
                prev.id,
                prev.state.kind().name()
            );
            return None;
        }
        match std::fs::read(state_path(&prev.path)) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                log::warn!(
                    "event=start_state_blank segment={} previous={} error={e}",
                    segment.id,
                    prev.id
                );
                None
            }
        }
    }

    /// Where the clip starts on the wall clock. Spool segments know guacd's sync timestamps:
    /// the session start plus this segment's offset within the session. Tap segments do not:
    /// they start where the previous segment's clip ended (segments are contiguous in time),
    /// the first one at the session's start. The clip ends its duration later.
    fn wall_start_ms(&self, segment: &Segment) -> u64 {
        let session_start_ms = match self.queue.session(segment.session) {
            Ok(Some(s)) => s.start_ms,
            _ => segment.created_ms,
        };
        let first_of_session = match self.queue.segment_at(segment.session, 0) {
            Ok(Some(s)) => s.first_sync_ms,
            _ => None,
        };
        match (first_of_session, segment.first_sync_ms) {
            (Some(first), Some(this)) => {
                session_start_ms.saturating_add(this.saturating_sub(first))
            }
            _ => self
                .previous_clip_end_ms(segment)
                .unwrap_or(session_start_ms),
        }
    }

    /// Where a tap segment's span ends on the wall clock, so that its clip holds the last
    /// picture until then: the session's end for its last segment; otherwise when the segment
    /// was sealed (the tap registers a segment as it seals it, at a roll or at the session's
    /// end), never after the session's end. `None` for spool segments: a finished recording
    /// says itself how long it lasts.
    fn wall_end_ms(&self, segment: &Segment) -> Option<u64> {
        if segment.first_sync_ms.is_some() {
            return None;
        }
        let session = self.queue.session(segment.session).ok()??;
        let has_next = !matches!(
            self.queue
                .segment_at(segment.session, segment.index.saturating_add(1)),
            Ok(None)
        );
        match session.end_ms {
            Some(end) if !has_next => Some(end),
            Some(end) => Some(segment.created_ms.min(end)),
            None => Some(segment.created_ms),
        }
    }

    /// When the clip of the previous segment of the same session ends, if it exists.
    fn previous_clip_end_ms(&self, segment: &Segment) -> Option<u64> {
        let prev = self
            .queue
            .segment_at(segment.session, segment.index.checked_sub(1)?)
            .ok()??;
        let clips = self.queue.clips_of_session(segment.session).ok()?;
        clips
            .iter()
            .filter(|c| c.segment == prev.id)
            .map(|c| c.end_ms)
            .max()
    }

    fn finish(&self, segment: &Segment, clip: NewClip, elapsed_ms: u64) -> Tick {
        match self
            .queue
            .finish_encoding(segment.id, std::slice::from_ref(&clip))
        {
            Ok(ids) => {
                log::info!(
                    "event=encode_finished slot={} segment={} clip={} bytes={} duration_ms={} elapsed_ms={elapsed_ms}",
                    self.slot,
                    segment.id,
                    ids.first().copied().unwrap_or(0),
                    clip.bytes,
                    clip.duration_ms
                );
                self.status.record_encode(clip.duration_ms, elapsed_ms);
                Tick::Worked
            }
            Err(e) => {
                // The segment stays `Encoding`; put it back so it is redone (outputs are
                // overwritten with the same bytes).
                self.requeue(segment);
                self.queue_trouble("finish_encoding", &e)
            }
        }
    }

    fn fail(&self, segment: &Segment, error: JobError) -> Tick {
        let reason = error.to_string();
        self.status
            .record_error("encode", &format!("segment {}: {reason}", segment.id));
        let (to, tick) = match &error {
            JobError::Corrupt(_) => (
                SegmentState::Quarantined {
                    reason: reason.clone(),
                },
                Tick::Worked,
            ),
            JobError::Transient(_) => (
                SegmentState::Sealed,
                Tick::Backoff(Duration::from_millis(ENCODE_BACKOFF_MS)),
            ),
            JobError::Permanent(_) => (
                SegmentState::Failed {
                    reason: reason.clone(),
                },
                Tick::Worked,
            ),
        };
        log::error!(
            "event=encode_failed slot={} segment={} attempts={} to={} reason={reason:?}",
            self.slot,
            segment.id,
            segment.attempts,
            to.kind().name()
        );
        match self.queue.transition_segment(
            segment.id,
            SegmentStateKind::Encoding,
            to,
            &SegmentPatch::default(),
        ) {
            Ok(_) => tick,
            Err(e) => self.queue_trouble("transition_segment", &e),
        }
    }

    /// When idle: failed segments are retried until they used their attempts, then
    /// quarantined, so one bad segment never blocks the rest of its session forever.
    fn retry_failed(&self) -> Tick {
        let failed = match self.queue.segments_in_state(SegmentStateKind::Failed, 16) {
            Ok(f) => f,
            Err(e) => return self.queue_trouble("segments_in_state", &e),
        };
        let mut worked = false;
        for seg in failed {
            let reason = match &seg.state {
                SegmentState::Failed { reason } => reason.clone(),
                _ => continue,
            };
            let to = if seg.attempts >= ENCODE_ATTEMPTS_MAX {
                SegmentState::Quarantined {
                    reason: format!("gave up after {} attempts: {reason}", seg.attempts),
                }
            } else {
                SegmentState::Sealed
            };
            match self.queue.transition_segment(
                seg.id,
                SegmentStateKind::Failed,
                to,
                &SegmentPatch::default(),
            ) {
                Ok(_) => worked = true,
                // Another encoder got there first.
                Err(QueueError::StaleState { .. }) => {}
                Err(e) => return self.queue_trouble("transition_segment", &e),
            }
        }
        if worked { Tick::Worked } else { Tick::Idle }
    }

    fn requeue(&self, segment: &Segment) {
        if let Err(e) = self.queue.transition_segment(
            segment.id,
            SegmentStateKind::Encoding,
            SegmentState::Sealed,
            &SegmentPatch::default(),
        ) {
            log::warn!("event=requeue_failed segment={} error={e}", segment.id);
        }
    }

    fn queue_trouble(&self, op: &str, e: &QueueError) -> Tick {
        let message = match e {
            QueueError::Full { .. } => format!("queue full, no new encodes: {e}"),
            _ => format!("{op}: {e}"),
        };
        log::error!(
            "event=encoder_queue_error slot={} op={op} error={e}",
            self.slot
        );
        self.status.record_error("encode", &message);
        Tick::Backoff(Duration::from_millis(ENCODE_BACKOFF_MS))
    }

    fn publish(&self, job: Option<EncoderJob>) {
        let (slot, core) = (self.slot, self.core);
        self.status.update(|s| {
            if let Some(e) = s.encoders.get_mut(slot) {
                *e = EncoderStatus { core, job };
            }
        });
    }
}

/// Saves the end display state beside the segment, then moves the outputs into place. The
/// state goes first: it is the file most likely to meet a full disk (it lives with the
/// segments), and a failure there must not leave a clip without a record.
///
/// # Errors
/// The failing file operation, classified by its `io::Error` (a full disk is transient).
fn persist_outputs(
    segment_path: &Path,
    encoded: &EncodedSegment,
    mp4: (&Path, &Path),
    thumb: Option<(&Path, &Path)>,
) -> Result<(), JobError> {
    let state = state_path(segment_path);
    write_atomically(&state, &encoded.end_state).map_err(io_at(&state))?;
    rename_durably(mp4.0, mp4.1).map_err(io_at(mp4.1))?;
    if let Some((tmp, path)) = thumb {
        rename_durably(tmp, path).map_err(io_at(path))?;
    }
    Ok(())
}

/// Writes the events object beside the clip's MP4 (durably: renamed into place, synced) and
/// says where, with its SHA-256 and size.
fn write_events(mp4: &Path, bytes: &[u8]) -> Result<ClipEventsObject, JobError> {
    let path = events_path(mp4);
    write_atomically(&path, bytes).map_err(io_at(&path))?;
    Ok(ClipEventsObject {
        sha256: hex::encode(Sha256::digest(bytes)),
        bytes: bytes.len() as u64,
        path,
    })
}

/// An `io::Error` on `path` as a classified [`JobError`] naming the file.
fn io_at(path: &Path) -> impl FnOnce(io::Error) -> JobError + '_ {
    move |e| {
        let text = format!("{}: {e}", path.display());
        if e.is_transient() {
            JobError::Transient(text)
        } else {
            JobError::Permanent(text)
        }
    }
}

/// Size and lowercase hex SHA-256 of a file.
fn hash_file(path: &Path) -> io::Result<(u64, String)> {
    let mut f = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((total, hex::encode(hasher.finalize())))
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

/// The production encoder: [`crate::encode::encode_recording`] (render + x264 + MP4 + JPEG),
/// with one x264 thread so that the output is deterministic (a redone encode after a crash
/// gives the same bytes).
pub struct X264SegmentEncoder {
    /// Replaced by a settings reload; each encode reads it once at its start.
    settings: std::sync::RwLock<VideoSettings>,
    /// How events are taken (`search.mask-unechoed-input`).
    extract: ExtractSettings,
}

impl X264SegmentEncoder {
    /// An encoder with these settings (`[video]`, see `config::VideoConfig::encoder_settings`)
    /// that takes events as `extract` says (`search.mask-unechoed-input`).
    pub fn new(settings: VideoSettings, extract: ExtractSettings) -> Self {
        Self {
            settings: std::sync::RwLock::new(settings),
            extract,
        }
    }

    /// Applies reloaded settings to the encodes that start from now on.
    pub fn set_video(&self, settings: VideoSettings) {
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = settings;
    }
}

impl SegmentEncoder for X264SegmentEncoder {
    fn encode(
        &self,
        input: &mut dyn Read,
        start_state: Option<&[u8]>,
        span_ms: Option<u64>,
        out_mp4: &Path,
        out_thumb: &Path,
        progress: &mut dyn FnMut(u64),
    ) -> Result<EncodedSegment, JobError> {
        // An unreadable state file costs the picture until the next full update, not the
        // segment: start blank.
        let start: Option<DisplaySnapshot> =
            start_state.and_then(|bytes| match postcard::from_bytes(bytes) {
                Ok(s) => Some(s),
                Err(e) => {
                    log::warn!("event=start_state_unreadable error={e}");
                    None
                }
            });
        let settings = self
            .settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let report = encode_recording_with_events(
            input,
            &settings,
            self.extract,
            start.as_ref(),
            span_ms,
            [out_mp4, out_thumb],
            progress,
        )
        .map_err(classify_encode_error)?;
        let end_state = postcard::to_allocvec(&report.end_state)
            .map_err(|e| JobError::Permanent(format!("cannot serialise display state: {e}")))?;
        Ok(EncodedSegment {
            duration_ms: report.duration_ms,
            end_state,
            thumbnail: report.thumb_bytes > 0,
            events: Some(crate::events::format::to_bytes(&report.events)),
        })
    }
}

/// Corrupt input is quarantined; the rest retried (transient) or failed (permanent).
fn classify_encode_error(e: EncodeError) -> JobError {
    match e {
        EncodeError::Corrupt { .. } | EncodeError::NoFrames { .. } => {
            JobError::Corrupt(e.to_string())
        }
        e if e.is_transient() => JobError::Transient(e.to_string()),
        e => JobError::Permanent(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::queue::{NewSegment, NewSession, QueueOptions};

    /// Writes `start_state ++ input` as the "MP4"; the end state is the input's length.
    struct FakeEncoder {
        mode: &'static str,
    }

    impl SegmentEncoder for FakeEncoder {
        fn encode(
            &self,
            input: &mut dyn Read,
            start_state: Option<&[u8]>,
            span_ms: Option<u64>,
            out_mp4: &Path,
            out_thumb: &Path,
            progress: &mut dyn FnMut(u64),
        ) -> Result<EncodedSegment, JobError> {
            match self.mode {
                "panic" => panic!("boom in the renderer"),
                "corrupt" => return Err(JobError::Corrupt("bad stream at byte 7".into())),
                _ => {}
            }
            let mut data = Vec::new();
            input.read_to_end(&mut data)?;
            let mut out = start_state.unwrap_or(b"blank:").to_vec();
            out.extend_from_slice(&data);
            std::fs::write(out_mp4, &out)?;
            std::fs::write(out_thumb, b"jpg")?;
            progress(data.len() as u64);
            // "span": a clip exactly as long as the span it was given (a still tail held).
            let duration_ms = match self.mode {
                "span" => span_ms.unwrap_or(1000),
                _ => 1000,
            };
            Ok(EncodedSegment {
                duration_ms,
                end_state: format!("end{}:", data.len()).into_bytes(),
                thumbnail: true,
                events: None,
            })
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        root: PathBuf,
        queue: Arc<Queue>,
        session: u64,
    }

    fn fixture(segments: &[&[u8]]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let clock = Arc::new(ManualClock::new(1_000_000));
        let queue = Arc::new(Queue::open(&QueueOptions::new(root.join("queue")), clock).unwrap());
        let session = queue
            .register_session(&NewSession {
                session_id: "s".into(),
                user_id: "u".into(),
                username: "alice".into(),
                image_friendly_name: "img".into(),
                protocol: "vnc".into(),
                start_ms: 5_000,
                target: String::new(),
                client_addr: String::new(),
            })
            .unwrap();
        for (i, bytes) in segments.iter().enumerate() {
            let path = root.join(format!("seg{i}.guac"));
            std::fs::write(&path, bytes).unwrap();
            queue
                .register_segment(&NewSegment {
                    session,
                    index: i as u32,
                    path,
                    bytes: bytes.len() as u64,
                    first_sync_ms: Some(100 + 1000 * i as u64),
                    last_sync_ms: Some(900 + 1000 * i as u64),
                    sealed: true,
                })
                .unwrap();
        }
        Fixture {
            _dir: dir,
            root,
            queue,
            session,
        }
    }

    /// `count` segments registered as the tap does: sealed, without sync timestamps.
    fn register_tap_segments(f: &Fixture, count: u32) {
        for i in 0..count {
            let path = f.root.join(format!("tap{i}.guac"));
            std::fs::write(&path, b"4.sync,1.1;").unwrap();
            f.queue
                .register_segment(&NewSegment {
                    session: f.session,
                    index: i,
                    path,
                    bytes: 11,
                    first_sync_ms: None,
                    last_sync_ms: None,
                    sealed: true,
                })
                .unwrap();
        }
    }

    fn worker(f: &Fixture, mode: &'static str) -> EncodeWorker {
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(2_000_000));
        EncodeWorker::new(
            0,
            None,
            f.queue.clone(),
            Arc::new(FakeEncoder { mode }),
            StatusBoard::new(clock.clone(), 1, 1),
            clock,
            f.root.join("clips"),
        )
    }

    #[test]
    fn chains_display_state_and_registers_one_clip_per_segment() {
        let f = fixture(&[b"4.sync,1.1;", b"4.sync,1.2;"]);
        let mut w = worker(&f, "ok");
        assert_eq!(w.tick(), Tick::Worked);
        assert_eq!(w.tick(), Tick::Worked);
        assert_eq!(w.tick(), Tick::Idle);
        let clips = f.queue.clips_of_session(f.session).unwrap();
        assert_eq!(clips.len(), 2);
        let second = std::fs::read(&clips[1].path).unwrap();
        // The second segment started from the first one's end state.
        assert_eq!(second, b"end11:4.sync,1.2;");
        assert_eq!(clips[1].path, f.root.join("clips/1/1.mp4"));
        // Wall clock: session start + offset of the segment's first sync in the session.
        assert_eq!(clips[1].start_ms, 5_000 + 1_000);
        assert_eq!(clips[1].end_ms, 5_000 + 1_000 + 1_000);
        let (bytes, sha) = hash_file(&clips[1].path).unwrap();
        assert_eq!((clips[1].bytes, &clips[1].sha256), (bytes, &sha));
        // No temporary file survives.
        let leftovers: Vec<_> = std::fs::read_dir(f.root.join("clips/1"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn a_panic_fails_the_segment_not_the_worker_and_is_quarantined_after_retries() {
        let f = fixture(&[b"4.sync,1.1;"]);
        let mut w = worker(&f, "panic");
        assert_eq!(w.tick(), Tick::Worked);
        let seg = f.queue.segment_at(f.session, 0).unwrap().unwrap();
        assert_eq!(seg.state.kind(), SegmentStateKind::Failed);
        // Retried until the attempts are used, then parked for good.
        for _ in 0..(2 * ENCODE_ATTEMPTS_MAX) {
            w.tick();
        }
        let seg = f.queue.segment_at(f.session, 0).unwrap().unwrap();
        assert_eq!(seg.state.kind(), SegmentStateKind::Quarantined);
        assert_eq!(seg.attempts, ENCODE_ATTEMPTS_MAX);
        match seg.state {
            SegmentState::Quarantined { reason } => assert!(reason.contains("boom"), "{reason}"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_corrupt_segment_is_quarantined_and_does_not_block_its_successor() {
        let f = fixture(&[b"garbage", b"4.sync,1.2;"]);
        let mut bad = worker(&f, "corrupt");
        assert_eq!(bad.tick(), Tick::Worked);
        let seg = f.queue.segment_at(f.session, 0).unwrap().unwrap();
        assert_eq!(seg.state.kind(), SegmentStateKind::Quarantined);
        assert!(seg.path.exists(), "a quarantined segment is never deleted");
        let mut good = worker(&f, "ok");
        assert_eq!(good.tick(), Tick::Worked);
        let clips = f.queue.clips_of_session(f.session).unwrap();
        assert_eq!(clips.len(), 1);
        // The successor started from a blank display.
        assert!(
            std::fs::read(&clips[0].path)
                .unwrap()
                .starts_with(b"blank:")
        );
    }

    #[test]
    fn tap_segments_without_sync_times_follow_the_previous_clip() {
        let f = fixture(&[]);
        register_tap_segments(&f, 2);
        let mut w = worker(&f, "ok");
        assert_eq!(w.tick(), Tick::Worked);
        assert_eq!(w.tick(), Tick::Worked);
        let clips = f.queue.clips_of_session(f.session).unwrap();
        assert_eq!((clips[0].start_ms, clips[0].end_ms), (5_000, 6_000));
        assert_eq!((clips[1].start_ms, clips[1].end_ms), (6_000, 7_000));
    }

    #[test]
    fn tap_clips_span_the_session_from_its_start_to_its_end() {
        let f = fixture(&[]);
        register_tap_segments(&f, 2);
        f.queue
            .transition_session(
                f.session,
                crate::queue::SessionState::Live,
                crate::queue::SessionState::Closed,
                Some(1_000_500),
            )
            .unwrap();
        let mut w = worker(&f, "span");
        assert_eq!(w.tick(), Tick::Worked);
        assert_eq!(w.tick(), Tick::Worked);
        let clips = f.queue.clips_of_session(f.session).unwrap();
        // The rolled segment lasts until it was sealed, the last one until the session ended.
        assert_eq!((clips[0].start_ms, clips[0].end_ms), (5_000, 1_000_000));
        assert_eq!((clips[1].start_ms, clips[1].end_ms), (1_000_000, 1_000_500));
    }

    #[test]
    fn a_missing_segment_file_is_quarantined() {
        let f = fixture(&[b"4.sync,1.1;"]);
        std::fs::remove_file(f.root.join("seg0.guac")).unwrap();
        let mut w = worker(&f, "ok");
        assert_eq!(w.tick(), Tick::Worked);
        let seg = f.queue.segment_at(f.session, 0).unwrap().unwrap();
        assert_eq!(seg.state.kind(), SegmentStateKind::Quarantined);
    }
}
