//! When to try again an asked rollback that a failure of the store kept from
//! starting (decisions only; the lease loop's rollback task does the I/O).
//!
//! The ask stays in the database, so no server loses it; this server waits
//! longer after each failed try (1 s, doubling, at most 5 minutes), so a
//! store that keeps failing is neither hammered nor logged on every turn,
//! and gives up after [`RollbackRetries::MAX_TRIES`] (about 20 minutes).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The asks this server failed to start, with when each may be tried again.
#[derive(Default)]
pub(crate) struct RollbackRetries {
    asks: Mutex<HashMap<String, Retry>>,
}

struct Retry {
    tries: u32,
    next: Instant,
}

/// What to do after a failed try.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AfterFailure {
    /// Keep the ask; try again after this long.
    TryAgainAfter(Duration),
    /// Drop the ask: it failed [`RollbackRetries::MAX_TRIES`] times.
    GiveUp,
}

impl RollbackRetries {
    /// Failed tries after which an ask is dropped.
    pub(crate) const MAX_TRIES: u32 = 12;
    const FIRST_WAIT: Duration = Duration::from_secs(1);
    const LONGEST_WAIT: Duration = Duration::from_secs(300);

    /// Whether the ask of `execution` may be tried now.
    pub(crate) fn is_due(&self, execution: &str, now: Instant) -> bool {
        self.lock().get(execution).is_none_or(|r| r.next <= now)
    }

    /// Record a failed try of the ask of `execution`.
    pub(crate) fn failed(&self, execution: &str, now: Instant) -> AfterFailure {
        let mut asks = self.lock();
        let retry = asks.entry(execution.to_string()).or_insert(Retry {
            tries: 0,
            next: now,
        });
        retry.tries += 1;
        if retry.tries >= Self::MAX_TRIES {
            // Forgotten once the ask is dropped; should dropping fail too,
            // the next try waits the longest.
            retry.next = now + Self::LONGEST_WAIT;
            return AfterFailure::GiveUp;
        }
        let wait = Self::FIRST_WAIT
            .saturating_mul(1 << (retry.tries - 1).min(16))
            .min(Self::LONGEST_WAIT);
        retry.next = now + wait;
        AfterFailure::TryAgainAfter(wait)
    }

    /// Forget the ask of `execution`: it started, was refused, or is gone.
    pub(crate) fn forget(&self, execution: &str) {
        self.lock().remove(execution);
    }

    /// Forget every ask but those `pending` (others started or dropped them).
    pub(crate) fn keep_only(&self, pending: &[&str]) {
        self.lock().retain(|id, _| pending.contains(&id.as_str()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Retry>> {
        self.asks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_five_minutes_then_the_ask_is_given_up() {
        let retries = RollbackRetries::default();
        let start = Instant::now();
        let mut waits = Vec::new();
        let mut now = start;
        loop {
            assert!(retries.is_due("e", now));
            match retries.failed("e", now) {
                AfterFailure::TryAgainAfter(wait) => {
                    assert!(!retries.is_due("e", now + wait - Duration::from_millis(1)));
                    waits.push(wait.as_secs());
                    now += wait;
                }
                AfterFailure::GiveUp => break,
            }
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(waits.len() as u32, RollbackRetries::MAX_TRIES - 1);
        assert!(
            !retries.is_due("e", now),
            "until the ask is dropped, the next try waits"
        );
        assert_eq!(
            retries.failed("e", now),
            AfterFailure::GiveUp,
            "still given up"
        );
        retries.forget("e");
        assert!(retries.is_due("e", now), "a dropped ask is forgotten");
    }

    #[test]
    fn a_started_or_vanished_ask_starts_over_and_others_keep_their_wait() {
        let retries = RollbackRetries::default();
        let now = Instant::now();
        retries.failed("a", now);
        retries.failed("b", now);
        retries.failed("c", now);
        retries.forget("a");
        retries.keep_only(&["a", "b"]);
        assert!(retries.is_due("a", now));
        assert!(!retries.is_due("b", now));
        assert!(retries.is_due("c", now));
        assert_eq!(
            retries.failed("c", now),
            AfterFailure::TryAgainAfter(Duration::from_secs(1)),
            "c starts over"
        );
    }
}
