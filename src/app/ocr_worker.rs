//! Wiring of the OCR job (setting `search.ocr`): one thread at [`OCR_NICE`] running
//! [`OcrWorker`] over a [`QueueOcrSource`], which hands it the queue's clips waiting for their
//! screen text (oldest first) and files each outcome in the queue. Publishes the OCR backlog
//! to the status board. When the disk is below its floor the waiting work is dropped (the raw
//! segments it needs must be free to go; recording never waits for OCR) and the status page
//! says so. Called by `app/mod.rs` only when the setting is on.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sha2::Digest;

use super::{AppError, Context, threads};
use crate::clock::Clock;
use crate::encode::state_path;
use crate::ocr::OcrError;
use crate::ocr::tesseract::Tesseract;
use crate::ocr::{
    OCR_BACKOFF_MS, OCR_IDLE_POLL_MS, OCR_NICE, OCR_STATUS_SOURCE, OcrJob, OcrSource, OcrWorker,
    Tick,
};
use crate::queue::Queue;
use crate::status::StatusBoard;

/// The reason written on OCR work dropped because the disk ran low.
pub const OCR_DROPPED_REASON: &str = "dropped: the disk went below its floor";

/// The queue as the OCR job's source of clips.
pub struct QueueOcrSource {
    queue: Arc<Queue>,
    clock: Arc<dyn Clock>,
    status: StatusBoard,
}

impl QueueOcrSource {
    /// A source over `queue`; `status` is read for the disk state and told of dropped work.
    pub fn new(queue: Arc<Queue>, clock: Arc<dyn Clock>, status: StatusBoard) -> Self {
        Self {
            queue,
            clock,
            status,
        }
    }

    /// Drops the waiting OCR work when the disk is below its floor; returns whether it did.
    fn drop_if_disk_low(&self) -> bool {
        if self.status.snapshot().disk.state.admits_new_sessions() {
            return false;
        }
        match self.queue.drop_ocr_work(OCR_DROPPED_REASON) {
            Ok(0) => false,
            Ok(n) => {
                log::warn!("event=ocr_work_dropped clips={n} reason=disk_below_floor");
                self.status.record_error(
                    OCR_STATUS_SOURCE,
                    &format!("screen text (OCR) of {n} clips dropped: the disk is below its floor"),
                );
                true
            }
            Err(e) => {
                log::error!("event=ocr_queue_failed error={e}");
                false
            }
        }
    }

    fn file(&self, what: &str, r: Result<impl Sized, crate::queue::QueueError>) {
        if let Err(e) = r {
            log::error!("event=ocr_queue_failed step={what} error={e}");
            self.status.record_error(OCR_STATUS_SOURCE, &e.to_string());
        }
    }
}

impl OcrSource for QueueOcrSource {
    fn next_job(&mut self) -> Option<OcrJob> {
        self.drop_if_disk_low();
        let task = match self.queue.next_ocr_task(self.clock.now_ms()) {
            Ok(t) => t?,
            Err(e) => {
                log::error!("event=ocr_queue_failed error={e}");
                return None;
            }
        };
        // A previous segment whose end state is gone: the clip is read from a blank screen.
        let start_state_path = task
            .previous_segment_path
            .map(|p| state_path(&p))
            .filter(|p| p.is_file());
        Some(OcrJob {
            clip: task.work.clip,
            segment_path: task.segment_path,
            start_state_path,
            clip_path: task.clip_path,
        })
    }

    fn encodes_waiting(&self) -> bool {
        self.queue
            .counts()
            .map(|c| c.segments.sealed > 0)
            .unwrap_or(false)
    }

    fn finished(&mut self, job: &OcrJob, result: Result<&Path, &OcrError>) {
        match result {
            Ok(path) => match file_sha256(path) {
                Ok((sha256, bytes)) => {
                    let r = self
                        .queue
                        .ocr_read(job.clip, path.to_owned(), sha256, bytes);
                    self.file("read", r);
                }
                Err(e) => {
                    let r = self.queue.ocr_attempt_failed(
                        job.clip,
                        &format!("{}: {e}", path.display()),
                        self.clock.now_ms() + OCR_BACKOFF_MS,
                    );
                    self.file("attempt_failed", r);
                }
            },
            Err(e) => {
                let r = self.queue.ocr_failed(job.clip, &e.to_string());
                self.file("failed", r);
            }
        }
    }

    fn failed_for_now(&mut self, job: &OcrJob, error: &OcrError) {
        let r = self.queue.ocr_attempt_failed(
            job.clip,
            &error.to_string(),
            self.clock.now_ms() + OCR_BACKOFF_MS,
        );
        if let Ok(true) = r {
            log::warn!("event=ocr_given_up clip={} error={error}", job.clip);
        }
        self.file("attempt_failed", r);
    }
}

fn file_sha256(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    let bytes = std::io::copy(&mut f, &mut h)?;
    Ok((hex::encode(h.finalize()), bytes))
}

/// Publishes the OCR counts to the status board, and why the job is paused when `paused`
/// (the last OCR problem on the board).
fn publish(queue: &Queue, status: &StatusBoard, paused: bool) {
    let paused = paused
        .then(|| {
            let snapshot = status.snapshot();
            let last = snapshot
                .recent_errors
                .iter()
                .rev()
                .find(|e| e.source == OCR_STATUS_SOURCE);
            last.map(|e| e.message.clone())
        })
        .flatten();
    if let Ok(c) = queue.ocr_counts() {
        status.update(|s| {
            s.ocr = crate::status::OcrFacts {
                enabled: true,
                pending: c.pending,
                read: c.read,
                uploaded: c.uploaded,
                failed: c.failed,
                paused,
            };
        });
    }
}

/// Starts the OCR thread (the caller checked `search.ocr`).
///
/// # Errors
/// The OS refused a thread.
pub fn start(ctx: &Context, workers: &mut threads::Workers) -> Result<(), AppError> {
    let source = QueueOcrSource::new(ctx.queue.clone(), ctx.clock.clone(), ctx.status.clone());
    let mut worker = OcrWorker::new(source, Tesseract::default(), Arc::new(ctx.status.clone()));
    let (queue, status, shutdown) = (ctx.queue.clone(), ctx.status.clone(), ctx.shutdown.clone());
    let heartbeat = ctx.heartbeats.register("ocr");
    publish(&queue, &status, false);
    workers.spawn("ocr", None, move || {
        threads::lower_priority(OCR_NICE);
        while !shutdown.is_requested() {
            heartbeat.beat();
            let tick = worker.tick(&shutdown, &heartbeat);
            publish(&queue, &status, matches!(tick, Tick::Backoff(_)));
            let pause = match tick {
                Tick::Worked => Duration::ZERO,
                Tick::Idle => Duration::from_millis(OCR_IDLE_POLL_MS),
                Tick::Backoff(d) => d,
            };
            if !pause.is_zero() && shutdown.sleep(pause) {
                break;
            }
        }
    })?;
    Ok(())
}
