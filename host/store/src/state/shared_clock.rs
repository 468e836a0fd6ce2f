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
    /// The last reading, if one was taken.
    last: Mutex<Option<Reading>>,
    /// Held while one caller reads; with when reading last failed, so an
    /// unreachable database is asked (and logged) once per
    /// [`SharedClock::RETRY`], not on every call.
    reading: Mutex<Option<Instant>>,
}

#[derive(Clone, Copy)]
struct Reading {
    /// When it was taken, on the monotonic clock and on this machine's wall
    /// clock.
    taken: Instant,
    taken_local_ms: i64,
    /// What the remote clock said then (ms since the epoch).
    remote_ms: i64,
}

impl Reading {
    fn elapsed_ms(self) -> i64 {
        i64::try_from(self.taken.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    fn now_ms(self) -> i64 {
        self.remote_ms.saturating_add(self.elapsed_ms())
    }

    /// Young enough to carry on. The monotonic clock stands still while the
    /// machine is suspended, so a reading is also taken again when the wall
    /// clock moved on much more than it (or was stepped).
    fn is_fresh(self) -> bool {
        let elapsed = self.elapsed_ms();
        let wall_elapsed = sluice_core::units::now_ms() - self.taken_local_ms;
        elapsed < SharedClock::RESYNC.as_millis() as i64
            && (wall_elapsed - elapsed).abs() < SharedClock::SUSPEND_SLACK_MS
    }
}

impl SharedClock {
    /// How old a reading may get before it is taken again.
    pub const RESYNC: Duration = Duration::from_secs(30);

    /// How long after a failed reading the next is tried.
    pub const RETRY: Duration = Duration::from_secs(1);

    /// How far the wall clock may run apart from the monotonic one since a
    /// reading (a suspend, a step) before the reading is taken again.
    const SUSPEND_SLACK_MS: i64 = 1_000;

    /// A clock with no reading yet.
    pub fn new() -> Self {
        Self {
            last: Mutex::new(None),
            reading: Mutex::new(None),
        }
    }

    /// The remote clock's time now, in ms since the epoch. `read` asks the
    /// remote clock; it is called when the last reading is not fresh (older
    /// than [`Self::RESYNC`], or the machine was suspended since). While
    /// another caller reads, and when reading fails, the last reading is
    /// carried further (with none, this machine's clock stands in).
    pub fn now_ms(&self, read: impl FnOnce() -> anyhow::Result<i64>) -> i64 {
        let last = *self.last.lock().unwrap_or_else(|e| e.into_inner());
        let carried = || last.map_or_else(sluice_core::units::now_ms, Reading::now_ms);
        if let Some(reading) = last.filter(|r| r.is_fresh()) {
            return reading.now_ms();
        }
        let mut failed = match self.reading.try_lock() {
            Ok(failed) => failed,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) if last.is_some() => return carried(),
            Err(std::sync::TryLockError::WouldBlock) => {
                self.reading.lock().unwrap_or_else(|e| e.into_inner())
            }
        };
        // A caller that held the lock meanwhile may have just read it.
        let newest = *self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(reading) = newest.filter(|r| r.is_fresh()) {
            return reading.now_ms();
        }
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

    /// Ask the remote clock, and date its answer at the middle of the round
    /// trip (the error is at most half of it).
    fn take_reading(read: impl FnOnce() -> anyhow::Result<i64>) -> anyhow::Result<Reading> {
        let asked = Instant::now();
        let remote_ms = read()?;
        let answered = Instant::now();
        let taken = asked + (answered - asked) / 2;
        let taken_local_ms =
            sluice_core::units::now_ms() - i64::try_from(taken.elapsed().as_millis()).unwrap_or(0);
        Ok(Reading {
            taken,
            taken_local_ms,
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

    /// Make the last reading `by` older, on both of this machine's clocks.
    fn age(clock: &SharedClock, by: Duration) {
        let mut last = clock.last.lock().unwrap();
        let reading = last.as_mut().unwrap();
        reading.taken = reading.taken.checked_sub(by).unwrap();
        reading.taken_local_ms -= by.as_millis() as i64;
    }

    #[test]
    fn a_reading_is_taken_again_after_the_machine_was_suspended() {
        let clock = SharedClock::new();
        clock.now_ms(|| Ok(local_ms()));
        // A suspend of a minute: the wall clock moved on, the monotonic one not.
        clock.last.lock().unwrap().as_mut().unwrap().taken_local_ms -= 60_000;
        let remote = local_ms() + HOUR_AHEAD;
        let now = clock.now_ms(|| Ok(remote));
        assert!(
            now >= remote,
            "the reading from before the suspend was carried on"
        );
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
        age(&clock, SharedClock::RESYNC);
        let carried = clock.now_ms(|| anyhow::bail!("the database is down"));
        let behind = local_ms() - carried;
        assert!(
            (HOUR_AHEAD - 60_000..HOUR_AHEAD + 60_000).contains(&(behind + 30_000)),
            "{carried} is not the last reading carried forward ({behind} ms behind)"
        );
        clock.now_ms(|| panic!("asked again at once after a failure"));
        *clock.reading.lock().unwrap() = Instant::now().checked_sub(SharedClock::RETRY);
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
