//! Retry schedule of uploads: a pure function of (attempt, class, random draw).
//!
//! Transient failures (store down, timeouts, 5xx) back off exponentially from
//! [`UPLOAD_RETRY_BASE_MS`] up to [`UPLOAD_RETRY_TRANSIENT_CAP_MS`]. Permanent failures (bad
//! key, missing bucket, untrusted certificate) retry at the slow fixed
//! [`UPLOAD_RETRY_PERMANENT_MS`], so that fixing the settings heals the queue without a restart
//! and without hammering the store meanwhile. Every delay gets up to
//! [`UPLOAD_RETRY_JITTER_PERMILLE`] of random spread so a fleet of appliances does not retry in
//! lockstep. The caller supplies the random draw (no global RNG), which makes this testable.

use crate::limits::{
    UPLOAD_RETRY_BASE_MS, UPLOAD_RETRY_JITTER_PERMILLE, UPLOAD_RETRY_PERMANENT_MS,
    UPLOAD_RETRY_TRANSIENT_CAP_MS,
};

/// How a failure was classified (from [`crate::error::Classify::is_transient`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// May clear up by itself: back off exponentially.
    Transient,
    /// Needs a change of settings: retry slowly.
    Permanent,
}

impl FailureClass {
    /// Classifies an error.
    pub fn of(e: &impl crate::error::Classify) -> Self {
        if e.is_transient() { Self::Transient } else { Self::Permanent }
    }
}

/// Delay before retry number `attempt` (1 = the first retry after the first failure).
///
/// `random` is a uniformly random `u64` from the caller; it only chooses the jitter.
pub fn retry_delay_ms(attempt: u32, class: FailureClass, random: u64) -> u64 {
    assert!(attempt >= 1, "attempt numbers start at 1");
    let base = match class {
        FailureClass::Transient => {
            // 2 s, 4 s, 8 s, ... capped; shift bounded so it cannot overflow.
            let shift = (attempt - 1).min(32);
            UPLOAD_RETRY_BASE_MS.saturating_mul(1u64 << shift).min(UPLOAD_RETRY_TRANSIENT_CAP_MS)
        }
        FailureClass::Permanent => UPLOAD_RETRY_PERMANENT_MS,
    };
    let spread = base * UPLOAD_RETRY_JITTER_PERMILLE / 1000;
    let jitter = if spread == 0 { 0 } else { random % (spread + 1) };
    base + jitter
}

/// A fresh random `u64` for [`retry_delay_ms`] from the OS; 0 (no jitter) if it is unavailable.
pub fn os_random() -> u64 {
    let mut b = [0u8; 8];
    match getrandom::fill(&mut b) {
        Ok(()) => u64::from_le_bytes(b),
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_grows_exponentially_to_the_cap() {
        let d: Vec<u64> =
            (1..=12).map(|a| retry_delay_ms(a, FailureClass::Transient, 0)).collect();
        assert_eq!(&d[..4], &[2_000, 4_000, 8_000, 16_000]);
        assert!(d.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*d.last().unwrap(), UPLOAD_RETRY_TRANSIENT_CAP_MS);
        assert_eq!(retry_delay_ms(u32::MAX, FailureClass::Transient, 0), UPLOAD_RETRY_TRANSIENT_CAP_MS);
    }

    #[test]
    fn permanent_is_slow_and_fixed() {
        for a in [1, 2, 50, 10_000] {
            assert_eq!(retry_delay_ms(a, FailureClass::Permanent, 0), UPLOAD_RETRY_PERMANENT_MS);
        }
        assert!(UPLOAD_RETRY_PERMANENT_MS >= 60_000);
    }

    #[test]
    fn jitter_is_bounded_and_uses_the_draw() {
        for class in [FailureClass::Transient, FailureClass::Permanent] {
            for a in 1..20 {
                let lo = retry_delay_ms(a, class, 0);
                for r in [1, 7, 12_345, u64::MAX, u64::MAX / 3] {
                    let d = retry_delay_ms(a, class, r);
                    assert!(d >= lo && d <= lo + lo * UPLOAD_RETRY_JITTER_PERMILLE / 1000);
                }
            }
        }
        assert_ne!(
            retry_delay_ms(3, FailureClass::Transient, 1),
            retry_delay_ms(3, FailureClass::Transient, 999)
        );
    }

    #[test]
    fn class_follows_classification() {
        use crate::upload::store::StoreError;
        let e = StoreError::AccessDenied { detail: "x".into() };
        assert_eq!(FailureClass::of(&e), FailureClass::Permanent);
        let e = StoreError::Unreachable { detail: "x".into() };
        assert_eq!(FailureClass::of(&e), FailureClass::Transient);
    }
}
