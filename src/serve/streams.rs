//! Long responses (clip playback, clip downloads, session zips) written off the request
//! workers, so slow or stalled clients cannot take the status page, the history or login down.
//!
//! A fixed set of named streaming threads, each writing one response at a time, and a count
//! of [`Slot`]s that bounds them (`HTTP_STREAMS_MAX`). A handler takes a slot *before* it
//! audits and opens the bytes: without one it answers 503 with `Retry-After` ([`busy`]) and
//! audits nothing, because nothing was served. The router then hands the request, the
//! response and the slot to a streaming thread ([`Streams::hand_off`]) and its worker is free
//! for the next request at once. A job holds its slot until its response is written or the
//! write fails: the front drops a client connection that went away or stopped reading for
//! `HTTP_WRITE_TIMEOUT_MS`, which fails the write here (no slot is held forever).
//!
//! Memory per stream is bounded: the body is a `Read` copied through tiny_http's buffers,
//! never collected.
//!
//! Not here: what is streamed and audited (`history.rs`), the stall timeout (`front.rs`).

use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// A response a streaming thread writes.
pub struct Job {
    /// The request being answered.
    pub request: tiny_http::Request,
    /// The response, headers set, body not read yet.
    pub response: tiny_http::Response<Box<dyn Read + Send>>,
    /// Released when the job is over.
    pub slot: Slot,
}

struct Count {
    active: AtomicUsize,
    max: usize,
}

/// The right to run one stream; given back on drop.
pub struct Slot {
    count: Arc<Count>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let before = self.count.active.fetch_sub(1, Ordering::SeqCst);
        assert!(before >= 1, "a slot was released twice");
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Slot")
    }
}

/// The streaming threads and their slots.
pub struct Streams {
    count: Arc<Count>,
    jobs: smol::channel::Sender<Job>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Streams {
    /// Starts `max` streaming threads (`max >= 1`).
    ///
    /// # Errors
    /// A thread could not be spawned (the ones already started end on drop of the result).
    pub fn start(max: usize) -> std::io::Result<Self> {
        assert!(max >= 1, "at least one streaming thread");
        // Never full: every queued job holds one of the `max` slots.
        let (tx, rx) = smol::channel::bounded::<Job>(max);
        let streams = Self {
            count: Arc::new(Count {
                active: AtomicUsize::new(0),
                max,
            }),
            jobs: tx,
            threads: Mutex::new(Vec::with_capacity(max)),
        };
        for i in 0..max {
            let rx = rx.clone();
            let t = std::thread::Builder::new()
                .name(format!("http-stream-{i}"))
                .spawn(move || {
                    while let Ok(job) = rx.recv_blocking() {
                        run(job);
                    }
                })?;
            streams.lock_threads().push(t);
        }
        Ok(streams)
    }

    /// A slot when fewer than the limit are streaming.
    pub fn try_slot(&self) -> Option<Slot> {
        let max = self.count.max;
        self.count
            .active
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |a| {
                (a < max).then_some(a + 1)
            })
            .ok()
            .map(|_| Slot {
                count: self.count.clone(),
            })
    }

    /// Streams running or queued now.
    pub fn active(&self) -> usize {
        self.count.active.load(Ordering::SeqCst)
    }

    /// The limit.
    pub fn max(&self) -> usize {
        self.count.max
    }

    /// Gives `job` to a streaming thread. After [`Streams::stop`] the calling thread writes it
    /// itself (the server is going down; the front has dropped the connection already).
    pub fn hand_off(&self, job: Job) {
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(smol::channel::TrySendError::Closed(job)) => run(job),
            Err(smol::channel::TrySendError::Full(_)) => {
                unreachable!("more stream jobs queued than slots exist")
            }
        }
    }

    /// Lets the streaming threads finish their current response and joins them.
    pub fn stop(&self) {
        self.jobs.close();
        let threads = std::mem::take(&mut *self.lock_threads());
        for t in threads {
            let _ = t.join();
        }
    }

    fn lock_threads(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.threads.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Streams {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes one response; the slot is released when this returns (or unwinds).
fn run(job: Job) {
    let Job {
        request,
        response,
        slot,
    } = job;
    let started = std::time::Instant::now();
    let path = request.url().split('?').next().unwrap_or("").to_string();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| request.respond(response)));
    drop(slot);
    let ms = started.elapsed().as_millis();
    match r {
        Ok(Ok(())) => log::debug!("event=http_stream_done path={path} ms={ms}"),
        Ok(Err(e)) => log::info!("event=http_stream_ended path={path} ms={ms} error={e}"),
        Err(_) => log::error!("event=http_stream_panicked path={path} ms={ms}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_come_back_on_drop() {
        let s = Streams::start(2).unwrap();
        let a = s.try_slot().expect("first");
        let b = s.try_slot().expect("second");
        assert!(s.try_slot().is_none(), "a third slot past the limit");
        assert_eq!(s.active(), 2);
        drop(a);
        assert_eq!(s.active(), 1);
        let c = s.try_slot().expect("a released slot is reusable");
        drop((b, c));
        assert_eq!(s.active(), 0);
        s.stop();
    }
}
