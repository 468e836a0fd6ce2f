//! The clock that leases and claims are measured in when processes on
//! several machines share one store.
//!
//! Each machine's wall clock may be wrong. A worker whose clock is an hour
//! behind would otherwise record claims that every other process sees as run
//! out at once (and take over while it still runs the action); one an hour
//! ahead would hold a claim for an hour after it died. So every process reads
//! one clock, the database server's, and carries the reading forward on its
//! own monotonic clock, which wall-clock steps do not move. A reading is
//! taken again every [`SharedClock::RESYNC`], so the drift between the two
//! clocks (parts per million) never adds up.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The reading of a remote clock, carried forward on this machine's
/// monotonic clock between readings.
pub struct SharedClock {
    /// The last reading: when it was taken here, and what it said (ms since
    /// the epoch), if one was taken.
    last: Mutex<Option<Reading>>,
    /// When reading last failed: the next try waits [`SharedClock::RETRY`],
    /// so an unreachable database is not asked (and logged) on every call.
    failed: Mutex<Option<Instant>>,
}

#[derive(Clone, Copy)]
struct Reading {
    taken: Instant,
    remote_ms: i64,
}

impl Reading {
    fn now_ms(self) -> i64 {
        let elapsed = i64::try_from(self.taken.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.remote_ms.saturating_add(elapsed)
    }
}

impl SharedClock {
    /// How old a reading may get before it is taken again.
    pub const RESYNC: Duration = Duration::from_secs(30);

    /// How long after a failed reading the next is tried.
    pub const RETRY: Duration = Duration::from_secs(1);

    /// A clock with no reading yet.
    pub fn new() -> Self {
        Self {
            last: Mutex::new(None),
            failed: Mutex::new(None),
        }
    }

    /// The remote clock's time now, in ms since the epoch. `read` asks the
    /// remote clock; it is called when there is no reading younger than
    /// [`Self::RESYNC`]. When it fails, the last reading is carried further
    /// (and with none, this machine's clock stands in) until it answers.
    pub fn now_ms(&self, read: impl FnOnce() -> anyhow::Result<i64>) -> i64 {
        if let Some(reading) = self.fresh_reading() {
            return reading.now_ms();
        }
        // One caller reads at a time; the others then find its reading fresh.
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(reading) = self.fresh_reading() {
            return reading.now_ms();
        }
        let last = *self.last.lock().unwrap_or_else(|e| e.into_inner());
        let carried = || last.map_or_else(sluice_core::units::now_ms, Reading::now_ms);
        if failed.is_some_and(|at| at.elapsed() < Self::RETRY) {
            return carried();
        }
        match Self::take_reading(read) {
            Ok(reading) => {
                *failed = None;
                *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(reading);
                reading.now_ms()
            }
            Err(e) => {
                *failed = Some(Instant::now());
                tracing::warn!("reading the database's clock failed: {e:#}");
                carried()
            }
        }
    }

    /// The last reading, if it is younger than [`Self::RESYNC`].
    fn fresh_reading(&self) -> Option<Reading> {
        let last = *self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.filter(|r| r.taken.elapsed() < Self::RESYNC)
    }

    /// Ask the remote clock, and date its answer at the middle of the round
    /// trip (the error is at most half of it).
    fn take_reading(read: impl FnOnce() -> anyhow::Result<i64>) -> anyhow::Result<Reading> {
        let asked = Instant::now();
        let remote_ms = read()?;
        let answered = Instant::now();
        Ok(Reading {
            taken: asked + (answered - asked) / 2,
            remote_ms,
        })
    }
}

impl Default for SharedClock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR_AHEAD: i64 = 3_600_000;

    fn local_ms() -> i64 {
        sluice_core::units::now_ms()
    }

    #[test]
    fn the_remote_clock_is_read_once_and_carried_forward() {
        let clock = SharedClock::new();
        let remote = local_ms() + HOUR_AHEAD;
        let first = clock.now_ms(|| Ok(remote));
        assert!(first >= remote, "{first} < {remote}");
        std::thread::sleep(Duration::from_millis(20));
        let later = clock.now_ms(|| panic!("read again before the reading got old"));
        assert!(
            later >= first + 20,
            "{later} did not move on from {first} with the local monotonic clock"
        );
        assert!(
            later - local_ms() > HOUR_AHEAD - 60_000,
            "{later} is not an hour ahead of the local clock"
        );
    }

    #[test]
    fn a_failed_reading_carries_the_last_one_further() {
        let clock = SharedClock::new();
        let remote = local_ms() - HOUR_AHEAD;
        clock.now_ms(|| Ok(remote));
        // Age the reading past the resync interval.
        clock.last.lock().unwrap().as_mut().unwrap().taken -= SharedClock::RESYNC;
        let carried = clock.now_ms(|| anyhow::bail!("the database is down"));
        let behind = local_ms() - carried;
        assert!(
            (HOUR_AHEAD - 60_000..HOUR_AHEAD + 60_000).contains(&(behind + 30_000)),
            "{carried} is not the last reading carried forward ({behind} ms behind)"
        );
        clock.now_ms(|| panic!("asked again at once after a failure"));
        *clock.failed.lock().unwrap() = Some(Instant::now() - SharedClock::RETRY);
        let answered = clock.now_ms(|| Ok(42));
        assert!(
            (42..1_042).contains(&answered),
            "once the database answers again, its reading counts: {answered}"
        );
    }

    #[test]
    fn with_no_reading_at_all_the_local_clock_stands_in() {
        let clock = SharedClock::new();
        let before = local_ms();
        let now = clock.now_ms(|| anyhow::bail!("unreachable"));
        assert!((before..=local_ms()).contains(&now));
    }
}
