//! Failed-login backoff, per user name and per client address: after
//! `login_failures_free` failures within the window, each further failure blocks the key for
//! `login_backoff_base_ms`, doubled per failure up to `login_backoff_max_ms`. While a key is
//! blocked, a login for it is refused before the password is checked (no argon2 work for an
//! attacker), answered 429 with `Retry-After`, and the first refusal of each block is audited
//! (`admin.rs` writes the entry; later refusals of the same block are counted, not audited,
//! so a hammering client cannot flood the audit log).
//!
//! Bounded: at most `HTTP_LOGIN_THROTTLE_ENTRIES_MAX` keys; when full, forgotten keys go first,
//! then the least recently failed one. State is in memory only: a restart forgets it (the
//! audit log keeps the history). Time comes from the server's clock, so tests step it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::HttpLimits;
use crate::limits::HTTP_LOGIN_THROTTLE_ENTRIES_MAX;

/// What is throttled.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    User(String),
    Addr(String),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last_failure_ms: u64,
    blocked_until_ms: u64,
    refusal_audited: bool,
}

/// A refused login attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Until when, ms since the epoch.
    pub until_ms: u64,
    /// `"user"` or `"address"`: which key is blocked (the user's when both are).
    pub by: &'static str,
    /// Failures counted for that key.
    pub failures: u32,
    /// Whether this is the first refusal of the block (the one to audit).
    pub audit: bool,
}

/// The throttle shared by the request workers.
pub struct LoginThrottle {
    limits: HttpLimits,
    entries: Mutex<HashMap<Key, Entry>>,
    refused: AtomicU64,
}

impl LoginThrottle {
    /// An empty throttle with these limits.
    pub fn new(limits: HttpLimits) -> Self {
        Self {
            limits,
            entries: Mutex::new(HashMap::new()),
            refused: AtomicU64::new(0),
        }
    }

    /// Attempts refused since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Whether a login for `user` from `addr` may be tried now.
    ///
    /// # Errors
    /// The [`Refusal`] when either key is blocked.
    pub fn check(&self, user: &str, addr: &str, now_ms: u64) -> Result<(), Refusal> {
        let mut m = self.lock();
        for (key, by) in [
            (Key::User(user.into()), "user"),
            (Key::Addr(addr.into()), "address"),
        ] {
            if let Some(e) = m.get_mut(&key)
                && now_ms < e.blocked_until_ms
            {
                let audit = !e.refusal_audited;
                e.refusal_audited = true;
                self.refused.fetch_add(1, Ordering::Relaxed);
                return Err(Refusal {
                    until_ms: e.blocked_until_ms,
                    by,
                    failures: e.failures,
                    audit,
                });
            }
        }
        Ok(())
    }

    /// Counts a failed login; returns until when the user or address is now blocked, if the
    /// failure started (or lengthened) a block.
    pub fn failed(&self, user: &str, addr: &str, now_ms: u64) -> Option<u64> {
        let mut m = self.lock();
        let mut blocked = None;
        for key in [Key::User(user.into()), Key::Addr(addr.into())] {
            if !m.contains_key(&key) {
                make_room(&mut m, now_ms, &self.limits);
            }
            let e = m.entry(key).or_insert(Entry {
                failures: 0,
                last_failure_ms: now_ms,
                blocked_until_ms: 0,
                refusal_audited: false,
            });
            if now_ms.saturating_sub(e.last_failure_ms) > self.limits.login_failure_window_ms {
                e.failures = 0;
            }
            e.failures = e.failures.saturating_add(1);
            e.last_failure_ms = now_ms;
            if let Some(ms) = backoff_ms(e.failures, &self.limits) {
                e.blocked_until_ms = now_ms.saturating_add(ms);
                e.refusal_audited = false;
                blocked =
                    Some(blocked.map_or(e.blocked_until_ms, |b: u64| b.max(e.blocked_until_ms)));
            }
        }
        blocked
    }

    /// A successful login clears both keys.
    pub fn succeeded(&self, user: &str, addr: &str) {
        let mut m = self.lock();
        m.remove(&Key::User(user.into()));
        m.remove(&Key::Addr(addr.into()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The block after the `failures`-th failure: none while failures are free, then the base
/// doubled per further failure, capped.
fn backoff_ms(failures: u32, l: &HttpLimits) -> Option<u64> {
    let over = failures.checked_sub(l.login_failures_free)?;
    let factor = 1u64.checked_shl(over).unwrap_or(u64::MAX);
    Some(
        l.login_backoff_base_ms
            .saturating_mul(factor)
            .min(l.login_backoff_max_ms),
    )
}

/// Keeps the map under its bound: forgotten keys first, else the least recently failed one.
fn make_room(m: &mut HashMap<Key, Entry>, now_ms: u64, l: &HttpLimits) {
    if m.len() < HTTP_LOGIN_THROTTLE_ENTRIES_MAX {
        return;
    }
    m.retain(|_, e| {
        now_ms < e.blocked_until_ms
            || now_ms.saturating_sub(e.last_failure_ms) <= l.login_failure_window_ms
    });
    if m.len() >= HTTP_LOGIN_THROTTLE_ENTRIES_MAX
        && let Some(oldest) = m
            .iter()
            .min_by_key(|(_, e)| e.last_failure_ms)
            .map(|(k, _)| k.clone())
    {
        m.remove(&oldest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle() -> LoginThrottle {
        LoginThrottle::new(HttpLimits {
            login_failures_free: 5,
            login_backoff_base_ms: 1_000,
            login_backoff_max_ms: 8_000,
            login_failure_window_ms: 3_600_000,
            ..HttpLimits::default()
        })
    }

    #[test]
    fn five_failures_are_free_then_the_backoff_doubles_up_to_its_cap() {
        let t = throttle();
        let mut now = 1_000_000;
        for _ in 0..4 {
            assert_eq!(t.failed("alice", "10.0.0.1", now), None);
            assert!(t.check("alice", "10.0.0.1", now).is_ok());
        }
        let mut blocks = Vec::new();
        for _ in 0..5 {
            let until = t.failed("alice", "10.0.0.1", now).expect("blocked");
            blocks.push(until - now);
            let r = t.check("alice", "10.0.0.1", now).unwrap_err();
            assert_eq!(r.by, "user");
            now = until; // the block is over exactly then
            assert!(t.check("alice", "10.0.0.1", now).is_ok());
        }
        assert_eq!(blocks, [1_000, 2_000, 4_000, 8_000, 8_000]);
    }

    #[test]
    fn the_address_is_throttled_across_user_names_and_success_clears() {
        let t = throttle();
        let now = 5_000;
        for i in 0..5 {
            t.failed(&format!("user{i}"), "10.0.0.9", now);
        }
        // A sixth name from the same address is refused: the address is blocked.
        let r = t.check("someone-else", "10.0.0.9", now).unwrap_err();
        assert_eq!(r.by, "address");
        assert!(r.audit, "the first refusal of a block is audited");
        assert!(
            !t.check("x", "10.0.0.9", now).unwrap_err().audit,
            "later ones are not"
        );
        assert_eq!(t.refused(), 2);
        // Another address is not affected.
        assert!(t.check("someone-else", "10.0.0.10", now).is_ok());
        t.succeeded("user0", "10.0.0.9");
        assert!(t.check("user1", "10.0.0.9", now).is_ok());
    }

    #[test]
    fn old_failures_are_forgotten_and_the_map_stays_bounded() {
        let t = throttle();
        for _ in 0..5 {
            t.failed("bob", "10.0.0.2", 0);
        }
        // An hour and more later the count starts again: one failure is free.
        let later = 3_600_001 + 8_000;
        assert_eq!(t.failed("bob", "10.0.0.2", later), None);
        for i in 0..(HTTP_LOGIN_THROTTLE_ENTRIES_MAX + 100) {
            t.failed(&format!("u{i}"), &format!("a{i}"), later + i as u64);
        }
        assert!(t.lock().len() <= HTTP_LOGIN_THROTTLE_ENTRIES_MAX);
    }
}
