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
//! Two more bounds: one user holds at most `streams_per_user_max` slots
//! ([`Streams::try_slot_for`]; the rest of the slots stay free for others), and a stream that
//! trickles (a reader just fast enough to dodge the stall timeout) or simply runs too long is
//! ended by [`Paced`], the reader every streamed body goes through: past `stream_life_ms_max`,
//! or below `stream_bytes_per_s_min` on average once `stream_grace_ms` has passed, its next
//! read fails, tiny_http drops the connection and the slot comes back. The limits come from
//! [`super::HttpLimits`] in the server's options (tests use small values).
//!
//! Not here: what is streamed and audited (`history.rs`), the stall timeout (`front.rs`).

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use super::HttpLimits;

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

/// Streams per user name.
type PerUser = Arc<Mutex<HashMap<String, usize>>>;

/// The right to run one stream; given back on drop.
pub struct Slot {
    count: Arc<Count>,
    /// The user's share, when taken with [`Streams::try_slot_for`].
    user: Option<(PerUser, String)>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some((per_user, name)) = self.user.take() {
            let mut m = per_user.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = m.get_mut(&name) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&name);
                }
            }
        }
        let before = self.count.active.fetch_sub(1, Ordering::SeqCst);
        assert!(before >= 1, "a slot was released twice");
    }
}

/// Why [`Streams::try_slot_for`] gave no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSlot {
    /// Every slot is taken.
    Full,
    /// This user already runs their share.
    UserFull,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Slot")
    }
}

/// The streaming threads and their slots.
pub struct Streams {
    count: Arc<Count>,
    per_user: PerUser,
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
            per_user: Arc::new(Mutex::new(HashMap::new())),
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
                user: None,
            })
    }

    /// A slot for `user` when fewer than the limit are streaming overall and `user` runs fewer
    /// than `per_user_max` streams.
    ///
    /// # Errors
    /// [`NoSlot`]: which of the two limits refused.
    pub fn try_slot_for(&self, user: &str, per_user_max: usize) -> Result<Slot, NoSlot> {
        // The user's share is checked and taken under one lock, so two requests of the same
        // user cannot both take the last share.
        // When everything is taken that is the answer (503), whoever holds the slots.
        let mut slot = self.try_slot().ok_or(NoSlot::Full)?;
        let mut m = self.per_user.lock().unwrap_or_else(|p| p.into_inner());
        let held = m.get(user).copied().unwrap_or(0);
        if held >= per_user_max {
            // `slot` has no user share yet: dropping it gives back only the global count.
            return Err(NoSlot::UserFull);
        }
        *m.entry(user.to_string()).or_insert(0) += 1;
        slot.user = Some((self.per_user.clone(), user.to_string()));
        Ok(slot)
    }

    /// Streams `user` runs now.
    pub fn active_for(&self, user: &str) -> usize {
        let m = self.per_user.lock().unwrap_or_else(|p| p.into_inner());
        m.get(user).copied().unwrap_or(0)
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

/// A streamed body that ends itself when the stream has lived too long or, after its grace
/// period, moves too slowly on average (see the module doc): its read fails, which makes
/// tiny_http give up the response and release the slot.
pub struct Paced<R> {
    inner: R,
    started: Instant,
    bytes: u64,
    limits: HttpLimits,
}

impl<R: Read> Paced<R> {
    /// Wraps `inner`, starting the clock now.
    pub fn new(inner: R, limits: HttpLimits) -> Self {
        Self {
            inner,
            started: Instant::now(),
            bytes: 0,
            limits,
        }
    }

    /// Why the stream must end now, if it must.
    fn verdict(&self) -> Option<String> {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if ms > self.limits.stream_life_ms_max {
            return Some(format!(
                "stream ended after {ms} ms (limit {} ms)",
                self.limits.stream_life_ms_max
            ));
        }
        if ms > self.limits.stream_grace_ms {
            let rate = self.bytes.saturating_mul(1000) / ms.max(1);
            if rate < self.limits.stream_bytes_per_s_min {
                return Some(format!(
                    "stream too slow: {rate} bytes/s on average after {ms} ms (minimum {} \
                     bytes/s)",
                    self.limits.stream_bytes_per_s_min
                ));
            }
        }
        None
    }
}

impl<R: Read> Read for Paced<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(why) = self.verdict() {
            log::warn!("event=http_stream_cut bytes={} reason={why:?}", self.bytes);
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, why));
        }
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        Ok(n)
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

    #[test]
    fn one_user_cannot_take_every_slot() {
        let s = Streams::start(4).unwrap();
        let a1 = s.try_slot_for("alice", 2).expect("first of alice");
        let a2 = s.try_slot_for("alice", 2).expect("second of alice");
        assert_eq!(s.try_slot_for("alice", 2).unwrap_err(), NoSlot::UserFull);
        assert_eq!(s.active_for("alice"), 2);
        let b1 = s.try_slot_for("bob", 2).expect("bob still gets one");
        let b2 = s.try_slot_for("bob", 2).expect("and a second");
        assert_eq!(s.try_slot_for("carol", 2).unwrap_err(), NoSlot::Full);
        assert_eq!(
            s.active_for("carol"),
            0,
            "a refused slot leaves no share behind"
        );
        drop(a1);
        assert_eq!(s.active_for("alice"), 1);
        let a3 = s
            .try_slot_for("alice", 2)
            .expect("a released share is reusable");
        drop((a2, a3, b1, b2));
        assert_eq!(s.active(), 0);
        assert_eq!(s.active_for("alice"), 0);
        s.stop();
    }

    fn limits(life_ms: u64, grace_ms: u64, min_bps: u64) -> HttpLimits {
        HttpLimits {
            stream_life_ms_max: life_ms,
            stream_grace_ms: grace_ms,
            stream_bytes_per_s_min: min_bps,
            ..HttpLimits::default()
        }
    }

    #[test]
    fn a_stream_past_its_life_fails_its_next_read() {
        let mut r = Paced::new(std::io::repeat(7), limits(40, 30, 0));
        let mut buf = [0u8; 64];
        assert_eq!(r.read(&mut buf).unwrap(), 64);
        std::thread::sleep(std::time::Duration::from_millis(60));
        let e = r.read(&mut buf).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("limit 40 ms"), "{e}");
    }

    #[test]
    fn a_trickling_reader_is_cut_after_the_grace_period_a_fast_one_is_not() {
        // 64 bytes in over 30 ms is ~2 kB/s: below a 1 MB/s minimum.
        let mut slow = Paced::new(std::io::repeat(7), limits(60_000, 20, 1_000_000));
        let mut buf = [0u8; 64];
        assert_eq!(slow.read(&mut buf).unwrap(), 64, "inside the grace period");
        std::thread::sleep(std::time::Duration::from_millis(30));
        let e = slow.read(&mut buf).unwrap_err();
        assert!(e.to_string().contains("too slow"), "{e}");
        // Megabytes in the same time pass the same rule.
        let mut fast = Paced::new(std::io::repeat(7), limits(60_000, 20, 1_000_000));
        let mut big = vec![0u8; 1 << 20];
        for _ in 0..8 {
            fast.read_exact(&mut big).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(30));
        assert!(
            fast.read(&mut buf).is_ok(),
            "8 MiB in ~30 ms is fast enough"
        );
    }
}
