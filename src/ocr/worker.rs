//! The OCR job: its own low-priority worker after the encode. It takes clips already encoded
//! (from an [`OcrSource`], which the wiring backs with the queue), renders each clip's segment
//! again from the previous segment's display state, reads its screen text and writes it as a
//! second events object `<clip>.ocr.events.json` beside the clip's MP4 (the same
//! [`crate::events::format`]). It waits while encodes are queued, before each Tesseract call,
//! so it never delays recording, encoding or uploading; the wiring runs it on one thread at
//! [`OCR_NICE`] (Tesseract runs at its own [`super::tesseract::TESSERACT_NICE`]).
//!
//! Tesseract missing: the job is not run; the status page says so (once, not per clip) and the
//! rest of the pipeline is untouched. Called by the wiring (`app/`).

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::tesseract::Tesseract;
use super::{OcrError, OcrReport};
use crate::error::Classify;
use crate::events::{ClipEvents, format};
use crate::lifecycle::{Heartbeat, Shutdown};
use crate::render::{DisplaySnapshot, RenderError};
use crate::status::StatusBoard;

/// Niceness of the OCR worker thread (19: runs only on CPU nothing else wants).
pub const OCR_NICE: i32 = 19;
/// How long the job waits between looks at the encode queue while encodes are queued, ms.
pub const OCR_YIELD_POLL_MS: u64 = 500;
/// How long the worker sleeps when there is nothing to read, ms.
pub const OCR_IDLE_POLL_MS: u64 = 5_000;
/// How long it waits after a transient failure (Tesseract missing or failing), ms.
pub const OCR_BACKOFF_MS: u64 = 60_000;
/// The status page's name for this worker's problems.
pub const OCR_STATUS_SOURCE: &str = "ocr";

/// One encoded clip to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OcrJob {
    /// The clip's id in the queue (0 outside the daemon).
    pub clip: u64,
    /// The clip's segment (the raw recording).
    pub segment_path: PathBuf,
    /// The previous segment's end display state (`None`: the session's first segment).
    pub start_state_path: Option<PathBuf>,
    /// The clip's MP4; the events object goes beside it.
    pub clip_path: PathBuf,
}

/// Where the clips to read come from and where results go: the queue, through the wiring.
pub trait OcrSource {
    /// The next encoded clip without OCR events, if any.
    fn next_job(&mut self) -> Option<OcrJob>;
    /// Whether encodes are waiting (the job then waits too).
    fn encodes_waiting(&self) -> bool;
    /// The job finished: `Ok` with the events object written, or the permanent error that
    /// ends it (transient ones are retried and not reported here).
    fn finished(&mut self, job: &OcrJob, result: Result<&Path, &OcrError>);
    /// The job failed transiently with something of its own (Tesseract failing or timing out
    /// on it; a missing Tesseract is not the job's): the source counts the attempt and gives
    /// the job up after its limit.
    fn failed_for_now(&mut self, job: &OcrJob, error: &OcrError);
}

/// What one tick did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// Nothing to read.
    Idle,
    /// One clip was handled (read, or failed for good).
    Worked,
    /// A transient problem: try again after this long.
    Backoff(Duration),
}

/// Where the OCR events object of the clip at `clip_path` goes: `<clip>.ocr.events.json`.
pub fn ocr_events_path(clip_path: &Path) -> PathBuf {
    clip_path.with_extension("ocr.events.json")
}

/// The OCR worker.
pub struct OcrWorker<S: OcrSource> {
    source: S,
    tesseract: Tesseract,
    status: std::sync::Arc<StatusBoard>,
}

impl<S: OcrSource> OcrWorker<S> {
    /// A worker reading the jobs `source` gives.
    pub fn new(source: S, tesseract: Tesseract, status: std::sync::Arc<StatusBoard>) -> Self {
        Self {
            source,
            tesseract,
            status,
        }
    }

    /// Runs ticks until shutdown (the caller lowers this thread's priority to [`OCR_NICE`]).
    pub fn run(mut self, shutdown: &Shutdown, heartbeat: &Heartbeat) {
        while !shutdown.is_requested() {
            heartbeat.beat();
            let pause = match self.tick(shutdown, heartbeat) {
                Tick::Worked => continue,
                Tick::Idle => Duration::from_millis(OCR_IDLE_POLL_MS),
                Tick::Backoff(d) => d,
            };
            if shutdown.sleep(pause) {
                break;
            }
        }
    }

    /// Reads one clip, if one waits.
    pub fn tick(&mut self, shutdown: &Shutdown, heartbeat: &Heartbeat) -> Tick {
        // Tesseract is checked only when a clip waits: an idle worker starts no process.
        let Some(job) = self.source.next_job() else {
            return Tick::Idle;
        };
        if let Err(e) = self.tesseract.check() {
            return self.trouble(&e);
        }
        let source = &self.source;
        let mut wait = || {
            while source.encodes_waiting() && !shutdown.is_requested() {
                heartbeat.beat();
                shutdown.sleep(Duration::from_millis(OCR_YIELD_POLL_MS));
            }
        };
        match read_clip(&job, &self.tesseract, &mut wait) {
            Ok((path, report)) => {
                log::info!(
                    "event=ocr_done clip={} moments={} regions={} events={}",
                    job.clip_path.display(),
                    report.moments,
                    report.regions,
                    report.events.len()
                );
                self.source.finished(&job, Ok(&path));
                Tick::Worked
            }
            Err(e) if e.is_transient() => {
                if !matches!(e, OcrError::TesseractMissing) {
                    self.source.failed_for_now(&job, &e);
                }
                self.trouble(&e)
            }
            Err(e) => {
                log::warn!(
                    "event=ocr_failed clip={} error={e}",
                    job.clip_path.display()
                );
                self.source.finished(&job, Err(&e));
                Tick::Worked
            }
        }
    }

    fn trouble(&self, e: &OcrError) -> Tick {
        log::warn!("event=ocr_unavailable error={e}");
        self.status.record_error_unless_repeated(
            OCR_STATUS_SOURCE,
            &format!("screen text (OCR) skipped: {e}"),
        );
        Tick::Backoff(Duration::from_millis(OCR_BACKOFF_MS))
    }
}

/// Reads one clip's screen text and writes its events object (temp file, then renamed);
/// returns where it went and what the reading found.
///
/// # Errors
/// [`OcrError`]: the segment or start state cannot be read, Tesseract fails, the object cannot
/// be written.
pub fn read_clip(
    job: &OcrJob,
    tesseract: &Tesseract,
    between_moments: &mut dyn FnMut(),
) -> Result<(PathBuf, OcrReport), OcrError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| OcrError::Io { path, source }
    };
    let start = match &job.start_state_path {
        Some(p) => {
            let bytes = std::fs::read(p).map_err(io(p))?;
            let snapshot: DisplaySnapshot = postcard::from_bytes(&bytes).map_err(|e| {
                OcrError::Snapshot(RenderError::Snapshot {
                    reason: e.to_string(),
                })
            })?;
            Some(snapshot)
        }
        None => None,
    };
    let file = File::open(&job.segment_path).map_err(io(&job.segment_path))?;
    let mut input = BufReader::with_capacity(256 * 1024, file);
    let report = super::read_recording(&mut input, start.as_ref(), tesseract, between_moments)?;
    let events = ClipEvents {
        events: report.events.clone(),
        ..ClipEvents::default()
    };
    let out = ocr_events_path(&job.clip_path);
    if let Some(dir) = out.parent() {
        // The clip's directory goes once its files are uploaded; OCR comes later.
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let tmp = out.with_extension("json.partial");
    std::fs::write(&tmp, format::to_bytes(&events)).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &out).map_err(io(&out))?;
    Ok((out, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_events_object_goes_beside_the_clip() {
        assert_eq!(
            ocr_events_path(Path::new("/d/clips/7/3.mp4")),
            PathBuf::from("/d/clips/7/3.ocr.events.json")
        );
    }
}
