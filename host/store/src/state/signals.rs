//! Wake-ups from the shared store: a worker that looks for work, a server
//! that waits for an attempt's result, and an execution waiting at a stage
//! gate are told as soon as something changed instead of only finding out at
//! their next look. The looks stay (a missed wake-up costs one interval,
//! never an attempt or a place in line); the signals only make them come
//! sooner.
//!
//! In one process the store announces its own attempt writes (gates have
//! their own in-process wake-up). Across processes PostgreSQL carries them:
//! queueing, completing and withdrawing an attempt, and a place leaving or
//! being superseded at a gate, `NOTIFY` the channel [`CHANNEL`] in the same
//! statement, delivered at commit, and one session per process `LISTEN`s.
//!
//! New events go on a channel of their own, [`EVENTS_CHANNEL`], which only a
//! process that streams events (a server with SSE subscribers) listens to:
//! workers never see that traffic.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;

/// The PostgreSQL channel changes are announced on (one per database; the
/// stores of other schemas on it only cause an extra look).
pub const CHANNEL: &str = "sluice_attempts";

/// What a notification says: an attempt was queued.
pub const QUEUED: &str = "queued";

/// What a notification says: a place at a stage gate left or was superseded.
pub const GATES: &str = "gates";

/// The PostgreSQL channel new events are announced on (see the module doc).
pub const EVENTS_CHANNEL: &str = "sluice_events";

/// What a notification on [`EVENTS_CHANNEL`] says: events were stored. One
/// payload for all, so a transaction storing several announces them once.
pub const EVENTS: &str = "events";

/// What a notification says about attempt `key`: it has a result, or was
/// withdrawn.
pub fn done(key: &str) -> String {
    format!("done {key}")
}

/// Wake-ups from the shared store; see the module doc.
#[derive(Default)]
pub struct StoreSignals {
    queued: Notify,
    gates: Notify,
    events: Notify,
    /// Whether anyone here waited for events: only then is it worth
    /// listening to [`EVENTS_CHANNEL`].
    streaming: std::sync::atomic::AtomicBool,
    done: Mutex<HashMap<String, Weak<Notify>>>,
    across_processes: bool,
}

impl StoreSignals {
    /// Signals that other processes' writes reach too (PostgreSQL).
    pub fn across_processes() -> Self {
        Self {
            across_processes: true,
            ..Self::default()
        }
    }

    /// Whether other processes' writes reach these signals: waiters may then
    /// look on a slow timer, as a safety net only.
    pub fn reach_other_processes(&self) -> bool {
        self.across_processes
    }

    /// Told when any process queued an attempt (workers looking for work).
    pub fn queued(&self) -> &Notify {
        &self.queued
    }

    /// Told when another process changed a line at a stage gate.
    pub fn gates(&self) -> &Notify {
        &self.gates
    }

    /// Told when another process stored events (event streams); asking
    /// for it makes this process listen for them from then on.
    pub fn events(&self) -> &Notify {
        self.streaming
            .store(true, std::sync::atomic::Ordering::Relaxed);
        &self.events
    }

    /// Whether anyone here waits for other processes' events.
    pub fn wants_events(&self) -> bool {
        self.streaming.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Told when attempt `key` has a result or was withdrawn. Hold the
    /// returned handle while waiting; the registration goes with it.
    pub fn done(&self, key: &str) -> Arc<Notify> {
        let mut waiting = self.waiting();
        if let Some(existing) = waiting.get(key).and_then(Weak::upgrade) {
            return existing;
        }
        waiting.retain(|_, notify| notify.strong_count() > 0);
        let notify = Arc::new(Notify::new());
        waiting.insert(key.to_string(), Arc::downgrade(&notify));
        notify
    }

    /// Wake whoever waits on what `message` ([`QUEUED`], [`GATES`],
    /// [`EVENTS`] or [`done`]) says.
    pub fn announce(&self, message: &str) {
        if message == QUEUED {
            self.queued.notify_waiters();
        } else if message == GATES {
            self.gates.notify_waiters();
        } else if message == EVENTS {
            self.events.notify_waiters();
        } else if let Some(key) = message.strip_prefix("done ") {
            let notify = self.waiting().get(key).and_then(Weak::upgrade);
            if let Some(notify) = notify {
                notify.notify_waiters();
            }
        }
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<String, Weak<Notify>>> {
        self.done.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_done_announcement_wakes_the_waiter_of_that_attempt_only() {
        let signals = StoreSignals::default();
        let mine = signals.done("a");
        let other = signals.done("b");
        let mine_woken = mine.notified();
        let other_woken = other.notified();
        tokio::pin!(mine_woken, other_woken);
        mine_woken.as_mut().enable();
        other_woken.as_mut().enable();
        signals.announce(&done("a"));
        let soon = std::time::Duration::from_millis(50);
        assert!(tokio::time::timeout(soon, mine_woken).await.is_ok());
        assert!(tokio::time::timeout(soon, other_woken).await.is_err());
    }

    #[test]
    fn registrations_go_with_their_handles() {
        let signals = StoreSignals::default();
        drop(signals.done("a"));
        let _kept = signals.done("b");
        assert_eq!(signals.waiting().len(), 1, "the dropped one was swept");
        let _also = signals.done("c");
        assert_eq!(signals.waiting().len(), 2);
    }
}
