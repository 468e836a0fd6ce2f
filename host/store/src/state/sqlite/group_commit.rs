//! Group commit: one thread commits the transitions that executions hand it,
//! as many as are waiting in one transaction, and reports each only after
//! that commit.
//!
//! Why: an execution's transitions were written by the task that made them,
//! on a tokio worker thread, each in its own transaction behind the
//! connection's mutex. Two hundred executions at once then spent their time
//! queueing on that mutex with the worker threads blocked, and committing one
//! transition at a time. Here a task hands its transition over and awaits the
//! answer without blocking its thread, and concurrent transitions share one
//! commit (one fsync with `synchronous=FULL`). A transition that fails (its
//! lease was lost) is rolled back to its savepoint and does not take the
//! others with it.
//!
//! One exception, for latency: while the store is quiet, a crash-durable
//! transition is written in place (see [`GroupCommit::record`]).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

use super::{Owner, write_transaction, write_transition};
use crate::state::{EventRecord, Recorded, Transition, recorded_now};

/// At most this many transitions share a transaction, so a burst does not
/// hold the connection from readers for long.
const MAX_BATCH: usize = 256;

/// How long after the last contention transitions keep being handed over.
const QUIET: std::time::Duration = std::time::Duration::from_millis(20);

type Answer = anyhow::Result<Option<EventRecord>>;

/// One transition waiting for the commit thread, and where its answer goes.
struct Job {
    transition: Transition,
    owner: Option<Owner>,
    answer: futures::channel::oneshot::Sender<Answer>,
}

/// The handle to the commit thread; the thread ends when this drops (after
/// committing what was handed to it).
pub(super) struct GroupCommit {
    jobs: mpsc::Sender<Job>,
    /// The connection the thread commits on, shared with the store.
    connection: Arc<Mutex<Connection>>,
    /// Transitions handed over and not answered yet.
    pending: Arc<AtomicUsize>,
    /// Whether a transition may be written in place when nothing waits
    /// (see [`GroupCommit::record`]).
    in_place: bool,
    /// When a transition last found others waiting or the connection held,
    /// in µs since `opened`.
    contended_us: AtomicU64,
    opened: std::time::Instant,
}

impl GroupCommit {
    /// Start the commit thread on `connection`, shared with the store's other
    /// calls through its mutex. `in_place`: whether a transition may be
    /// written on the caller's thread while the store is quiet; only when
    /// commits are not synced (a sync would hold that thread for a flush).
    pub(super) fn start(
        connection: Arc<Mutex<Connection>>,
        in_place: bool,
    ) -> std::io::Result<Self> {
        let (jobs, waiting) = mpsc::channel();
        let pending = Arc::new(AtomicUsize::new(0));
        let (thread_connection, thread_pending) = (connection.clone(), pending.clone());
        std::thread::Builder::new()
            .name("sluice-sqlite-commit".into())
            .spawn(move || commit_loop(&thread_connection, &waiting, &thread_pending))?;
        Ok(Self {
            jobs,
            connection,
            pending,
            in_place,
            contended_us: AtomicU64::new(0),
            opened: std::time::Instant::now(),
        })
    }

    /// Record `transition` (written as `owner`, see `held_by_us`): the
    /// future resolves after the transaction holding it commits.
    ///
    /// When the store is quiet (no transition found others waiting or the
    /// connection held for [`QUIET`]), a crash-durable transition is written
    /// in place, in its own transaction: one short SQLite write into the WAL
    /// (no sync, no lock waited for), where handing it to the thread and
    /// being woken with the answer cost about 50 µs of thread wake-ups, a
    /// third of a no-op action's time. Under load, every transition is
    /// handed over and shares a commit.
    pub(super) fn record(&self, transition: Transition, owner: Option<Owner>) -> Recorded {
        if self.in_place && self.quiet() {
            if let Ok(mut db) = self.connection.try_lock() {
                return recorded_now(commit_one(&mut db, transition, owner.as_ref()));
            }
            self.contended_us.store(self.now_us(), Ordering::Release);
        }
        self.submit(transition, owner)
    }

    /// Whether no transition was handed over, or found the connection held,
    /// for [`QUIET`]; notes it when one is waiting now.
    fn quiet(&self) -> bool {
        let now = self.now_us();
        if self.pending.load(Ordering::Acquire) > 0 {
            self.contended_us.store(now, Ordering::Release);
            return false;
        }
        now.saturating_sub(self.contended_us.load(Ordering::Acquire)) > QUIET.as_micros() as u64
    }

    fn now_us(&self) -> u64 {
        // Offset by QUIET so that a store opened just now counts as quiet.
        (self.opened.elapsed() + QUIET).as_micros() as u64 + 1
    }

    /// Hand `transition` over (written as `owner`, see `held_by_us`); the
    /// future resolves after the transaction holding it commits.
    fn submit(&self, transition: Transition, owner: Option<Owner>) -> Recorded {
        let (answer, answered) = futures::channel::oneshot::channel();
        let job = Job {
            transition,
            owner,
            answer,
        };
        self.pending.fetch_add(1, Ordering::AcqRel);
        let handed = self.jobs.send(job);
        Box::pin(async move {
            handed.map_err(|_| anyhow::anyhow!("the state store's commit thread has stopped"))?;
            answered.await.map_err(|_| {
                anyhow::anyhow!("the state store's commit thread stopped before answering")
            })?
        })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Wait for a transition, take every other one already waiting, commit them
/// together, answer; until the store is dropped.
fn commit_loop(
    connection: &Mutex<Connection>,
    waiting: &mpsc::Receiver<Job>,
    pending: &AtomicUsize,
) {
    while let Ok(first) = waiting.recv() {
        let mut batch = vec![first];
        batch.extend(waiting.try_iter().take(MAX_BATCH - 1));
        let count = batch.len();
        let (senders, work): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .map(|job| (job.answer, (job.transition, job.owner)))
            .unzip();
        let answers = commit(&mut lock(connection), work);
        pending.fetch_sub(count, Ordering::AcqRel);
        for (sender, answer) in senders.into_iter().zip(answers) {
            // The awaiting task may be gone (its execution was dropped): the
            // transition is committed all the same.
            let _ = sender.send(answer);
        }
    }
}

/// Commit one transition in a transaction of its own, on this thread.
pub(super) fn commit_one(
    db: &mut Connection,
    transition: Transition,
    owner: Option<&Owner>,
) -> Answer {
    let tx = write_transaction(db)?;
    let stored = write_transition(&tx, owner, transition)?;
    tx.commit()?;
    Ok(stored)
}

/// Commit `batch` in one transaction: each transition in a savepoint of its
/// own when there are several, so that one refused does not undo the others.
/// If the commit itself fails, every transition is answered with that error.
fn commit(db: &mut Connection, work: Vec<(Transition, Option<Owner>)>) -> Vec<Answer> {
    let count = work.len();
    let alone = count == 1;
    let mut answers = Vec::with_capacity(count);
    let committed = (|| -> anyhow::Result<()> {
        let mut tx = write_transaction(db)?;
        for (transition, owner) in work {
            let answer = if alone {
                write_transition(&tx, owner.as_ref(), transition)
            } else {
                in_savepoint(&mut tx, owner.as_ref(), transition)?
            };
            answers.push(answer);
        }
        if answers.iter().all(Result::is_err) {
            tx.rollback()?;
        } else {
            tx.commit()?;
        }
        Ok(())
    })();
    if let Err(error) = committed {
        let error = format!("{error:#}");
        answers = (0..count)
            .map(|_| {
                Err(anyhow::anyhow!(
                    "committing the state store failed: {error}"
                ))
            })
            .collect();
    }
    answers
}

/// Write one transition of a batch in a savepoint, released when it was
/// written and rolled back when it was refused; `Err` only when the
/// savepoint itself fails (then the whole batch does).
fn in_savepoint(
    tx: &mut rusqlite::Transaction<'_>,
    owner: Option<&Owner>,
    transition: Transition,
) -> anyhow::Result<Answer> {
    let savepoint = tx.savepoint()?;
    let answer = write_transition(&savepoint, owner, transition);
    if answer.is_ok() {
        savepoint.commit()?;
    }
    // Dropped without commit, a savepoint rolls back to where it began.
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::state::{Change, Durability, EventStore, ExecutionStore, LeaseStore, SqliteStore};

    fn owner() -> Owner {
        Owner {
            id: "a".into(),
            lease_ms: 100,
        }
    }

    fn stage_started(execution: &str) -> Transition {
        Transition {
            execution: execution.into(),
            change: Change::StageStarted {
                stage: "S".into(),
                position: 0,
            },
            now_ms: 2_001,
            event: Some(EventRecord {
                seq: 0,
                ts_ms: 2_001,
                execution: execution.into(),
                pipeline: "p".into(),
                kind: "stage".into(),
                name: "S".into(),
                state: "STARTED".into(),
                detail: String::new(),
            }),
        }
    }

    /// A store holding executions `ids`, leased to `a`, the second taken over by `b`.
    fn store_with_a_taken_over_execution(ids: &[&str]) -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("state.db")).unwrap();
        store.lease_as(owner());
        let none = serde_json::json!({});
        for id in ids {
            (store.start_execution(id, "p", Path::new("p.toml"), &none, &none, 1_000)).unwrap();
        }
        let after_the_lease = store.clock_ms() + 60_000;
        assert!(
            (store.claim_execution(ids[1], "b", after_the_lease, after_the_lease + 9_000)).unwrap()
        );
        (dir, store)
    }

    fn batch(ids: &[&str]) -> Vec<(Transition, Option<Owner>)> {
        ids.iter()
            .map(|id| (stage_started(id), Some(owner())))
            .collect()
    }

    #[test]
    fn a_batch_commits_together_and_a_refused_transition_is_undone_alone() {
        let ids = ["e0", "e1", "e2"];
        let (_dir, store) = store_with_a_taken_over_execution(&ids);
        let answers = commit(&mut store.db(), batch(&ids));
        let seqs: Vec<i64> = [&answers[0], &answers[2]]
            .iter()
            .map(|a| a.as_ref().unwrap().as_ref().unwrap().seq)
            .collect();
        let refused = format!("{:#}", answers[1].as_ref().unwrap_err());
        assert!(refused.contains("held by b now"), "{refused}");
        assert_eq!(store.stages("e0").unwrap().len(), 1);
        assert!(store.stages("e1").unwrap().is_empty());
        assert_eq!(store.stages("e2").unwrap().len(), 1);
        let stored: Vec<i64> = (store.events_after(0, 10).unwrap().iter())
            .map(|e| e.seq)
            .collect();
        assert_eq!(stored, seqs, "the refused transition's event is undone too");
    }

    #[test]
    fn a_batch_refused_whole_leaves_nothing_behind() {
        let ids = ["e0", "e1"];
        let (_dir, store) = store_with_a_taken_over_execution(&ids);
        let answers = commit(&mut store.db(), batch(&["e1", "e1"]));
        assert!(answers.iter().all(Result::is_err));
        assert!(store.stages("e1").unwrap().is_empty());
        assert!(store.events_after(0, 10).unwrap().is_empty());
    }

    #[test]
    fn power_loss_durability_syncs_every_commit_and_crash_durability_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        let synchronous = |durability| {
            let path = dir.path().join(format!("{durability:?}.db"));
            let store = SqliteStore::open_with(&path, durability).unwrap();
            let level: i64 = (store.db())
                .pragma_query_value(None, "synchronous", |row| row.get(0))
                .unwrap();
            level
        };
        assert_eq!(synchronous(Durability::PowerLoss), 2, "FULL");
        assert_eq!(synchronous(Durability::Crash), 1, "NORMAL");
    }
}
