//! Life of the daemon's loops: the shutdown signal every loop waits on, and the heartbeats the
//! systemd watchdog checks before it pings.
//!
//! [`Shutdown`] is a flag plus a condition variable, so a loop sleeping between polls wakes at
//! once when SIGTERM arrives instead of finishing its sleep. [`Heartbeats`] holds one slot per
//! long-running loop; the watchdog thread sends `WATCHDOG=1` only while every slot has beaten
//! recently, so a wedged encoder or spool loop makes systemd restart the service.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The stop request shared by every loop. Cheap to clone.
#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Arc<ShutdownInner>,
}

#[derive(Default)]
struct ShutdownInner {
    requested: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

impl std::fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shutdown")
            .field("requested", &self.is_requested())
            .finish()
    }
}

impl Shutdown {
    /// A signal nobody has raised yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks every loop to stop and wakes the sleeping ones.
    pub fn request(&self) {
        self.inner.requested.store(true, Ordering::SeqCst);
        let _guard = self.inner.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.inner.wake.notify_all();
    }

    /// Whether a stop was requested.
    pub fn is_requested(&self) -> bool {
        self.inner.requested.load(Ordering::SeqCst)
    }

    /// Sleeps up to `duration`, returning early when a stop is requested. Returns true when the
    /// caller should stop.
    pub fn sleep(&self, duration: Duration) -> bool {
        let deadline = Instant::now() + duration;
        let mut guard = self.inner.lock.lock().unwrap_or_else(|p| p.into_inner());
        while !self.is_requested() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            guard = match self.inner.wake.wait_timeout(guard, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        self.is_requested()
    }

    /// Blocks until a stop is requested.
    pub fn wait(&self) {
        while !self.sleep(Duration::from_secs(3600)) {}
    }
}

/// A named slot: the loop's name and the ms (since `origin`) of its last beat.
type Slot = (String, Arc<AtomicU64>);

/// One slot per supervised loop; each loop beats its own slot every iteration.
#[derive(Clone)]
pub struct Heartbeats {
    origin: Instant,
    slots: Arc<Mutex<Vec<Slot>>>,
}

impl Default for Heartbeats {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            slots: Arc::default(),
        }
    }
}

impl std::fmt::Debug for Heartbeats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heartbeats").finish_non_exhaustive()
    }
}

/// A loop's own slot.
#[derive(Clone, Debug)]
pub struct Heartbeat {
    origin: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Heartbeat {
    /// A slot nobody watches (for calls outside a supervised loop, e.g. in tests).
    pub fn detached() -> Self {
        Self {
            origin: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Marks the loop alive now.
    pub fn beat(&self) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }
}

impl Heartbeats {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a slot named `name` (for the log line when it goes stale), alive now.
    pub fn register(&self, name: &str) -> Heartbeat {
        let beat = Heartbeat {
            origin: self.origin,
            last_ms: Arc::new(AtomicU64::new(0)),
        };
        beat.beat();
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.push((name.to_string(), beat.last_ms.clone()));
        beat
    }

    /// The names of loops that have not beaten within `max_age`; empty when all are alive.
    pub fn stale(&self, max_age: Duration) -> Vec<String> {
        let now_ms = self.origin.elapsed().as_millis() as u64;
        let max_ms = max_age.as_millis() as u64;
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .iter()
            .filter(|(_, last)| now_ms.saturating_sub(last.load(Ordering::Relaxed)) > max_ms)
            .map(|(name, _)| name.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleep_wakes_on_request() {
        let s = Shutdown::new();
        let s2 = s.clone();
        let t = std::thread::spawn(move || s2.sleep(Duration::from_secs(600)));
        std::thread::sleep(Duration::from_millis(20));
        s.request();
        assert!(t.join().unwrap());
        assert!(s.is_requested());
    }

    #[test]
    fn sleep_without_request_returns_false() {
        assert!(!Shutdown::new().sleep(Duration::from_millis(1)));
    }

    #[test]
    fn stale_names_the_silent_loop() {
        let hb = Heartbeats::new();
        let a = hb.register("encoder-0");
        let _b = hb.register("spool");
        assert!(hb.stale(Duration::from_secs(60)).is_empty());
        std::thread::sleep(Duration::from_millis(30));
        a.beat();
        assert_eq!(
            hb.stale(Duration::from_millis(10)),
            vec!["spool".to_string()]
        );
    }
}
