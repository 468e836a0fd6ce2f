//! The state store: executions, stage runs, action runs and logs, pipelines,
//! approvals, events, tokens and audit, behind one trait per entity.
//!
//! Every transition is committed before it is reported, so what `sluice
//! executions show` prints is what happened, even after a crash. [`Store`] is
//! all of the entity traits; [`SqliteStore`] implements it (the embedded
//! default). Callers hold an `Arc<dyn Store>` and import [`prelude`] for the
//! methods.

use std::path::Path;

use serde::{Deserialize, Serialize};

#[cfg(test)]
mod conformance;
mod postgres;
pub mod shared_clock;
pub mod signals;
mod sqlite;
mod transition;

pub use postgres::PostgresStore;
pub use signals::StoreSignals;
pub use sqlite::{Durability, SqliteStore};
pub use transition::{Change, EndOfAction, Recorded, Transition, recorded_now};

/// The entity traits, for calling store methods on a `dyn Store`.
pub mod prelude {
    pub use super::{
        AccessStore, ApprovalStore, AttemptQueue, EventStore, ExecutionStore, GateStore,
        LeaseStore, PipelineStore, RetentionStore, Store, TriggerStore,
    };
}

/// Everything Sluice records: every entity trait, shareable across threads.
pub trait Store:
    ExecutionStore
    + LeaseStore
    + PipelineStore
    + ApprovalStore
    + EventStore
    + AccessStore
    + TriggerStore
    + RetentionStore
    + AttemptQueue
    + GateStore
    + Send
    + Sync
{
}

impl<T> Store for T where
    T: ExecutionStore
        + LeaseStore
        + PipelineStore
        + ApprovalStore
        + EventStore
        + AccessStore
        + TriggerStore
        + RetentionStore
        + AttemptQueue
        + GateStore
        + Send
        + Sync
{
}

/// Executions and their stage runs, action runs and logs.
pub trait ExecutionStore {
    /// The plaintext of a continuation token as [`ExecutionStore::actions`] returns
    /// it (stored encrypted).
    fn open_continuation(&self, stored: &str) -> anyhow::Result<String>;

    /// Record a new execution as InProgress.
    fn start_execution(
        &self,
        id: &str,
        pipeline: &str,
        file: &Path,
        variables: &serde_json::Value,
        trigger: &serde_json::Value,
        now_ms: i64,
    ) -> anyhow::Result<()>;

    /// Record how an execution ended, and the event that announces it, in one
    /// transaction: a crash cannot record the end and lose its event (a resumed
    /// execution never ends again). Returns the event as stored.
    fn finish_execution(
        &self,
        id: &str,
        end: ExecutionEnd<'_>,
        now_ms: i64,
        event: Option<EventRecord>,
    ) -> anyhow::Result<Option<EventRecord>>;

    /// Executions of a registered pipeline (a server's, with a version) that
    /// ended asking for a rollback nobody has started yet: (execution, stage),
    /// oldest first. A `sluice run` leaves its rollback to `sluice rollback`.
    fn pending_rollbacks(&self) -> anyhow::Result<Vec<(String, String)>>;

    /// [`ExecutionStore::start_execution`] of the rollback that execution
    /// `asked_by` asked for when it ended, taking the ask in the same
    /// transaction: of processes racing to start it, one does (true); the
    /// others, and a call after the ask was dropped, record nothing (false).
    #[allow(clippy::too_many_arguments)]
    fn start_asked_rollback(
        &self,
        asked_by: &str,
        id: &str,
        pipeline: &str,
        file: &Path,
        variables: &serde_json::Value,
        trigger: &serde_json::Value,
        now_ms: i64,
    ) -> anyhow::Result<bool>;

    /// Forget the rollback `execution` asked for: it cannot be started.
    fn drop_rollback(&self, execution: &str) -> anyhow::Result<()>;

    /// Record a stage starting, with its event in the same transaction.
    fn start_stage(
        &self,
        execution: &str,
        stage: &str,
        position: usize,
        now_ms: i64,
        event: Option<EventRecord>,
    ) -> anyhow::Result<Option<EventRecord>>;

    /// Record how a stage ended, with its event in the same transaction (see
    /// [`ExecutionStore::finish_execution`]).
    fn finish_stage(
        &self,
        execution: &str,
        stage: &str,
        status: Status,
        error: Option<&str>,
        now_ms: i64,
        event: Option<EventRecord>,
    ) -> anyhow::Result<Option<EventRecord>>;

    /// Record an action starting, with its resolved configuration, and its
    /// event in the same transaction (one commit, not two, per start).
    #[allow(clippy::too_many_arguments)]
    fn start_action(
        &self,
        execution: &str,
        stage: &str,
        action: &str,
        run_order: u32,
        plugin: &str,
        resolved_config: &[(String, String)],
        now_ms: i64,
        event: Option<EventRecord>,
    ) -> anyhow::Result<Option<EventRecord>>;

    /// Record how an action ended, with its event in the same transaction (see
    /// [`ExecutionStore::finish_execution`]).
    fn finish_action(
        &self,
        execution: &str,
        action: &str,
        end: &ActionEnd<'_>,
        now_ms: i64,
        event: Option<EventRecord>,
    ) -> anyhow::Result<Option<EventRecord>>;

    /// Record `transition` (as the method its [`Change`] names), without
    /// blocking the calling thread: the future resolves once it is committed.
    /// An engine may commit several concurrent transitions in one transaction
    /// (SQLite's group commit); none is reported before its commit. By
    /// default, it is recorded through the one-call methods on tokio's
    /// blocking pool (on the calling thread outside a runtime).
    fn record(self: std::sync::Arc<Self>, transition: Transition) -> Recorded
    where
        Self: Send + Sync + 'static,
    {
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let work = runtime.spawn_blocking(move || transition.apply_to(&*self));
                Box::pin(async move { work.await? })
            }
            Err(_) => recorded_now(transition.apply_to(&*self)),
        }
    }

    /// Append an attempt's log lines in one transaction. An attempt a worker
    /// runs under `claim` has its lines refused once that claim is lost
    /// (another worker took the attempt over, or it was withdrawn): a late
    /// worker never mixes its lines into the run that replaced it.
    fn append_logs(
        &self,
        execution: &str,
        action: &str,
        attempt: u32,
        claim: Option<AttemptClaim<'_>>,
        lines: &[LogLine],
    ) -> anyhow::Result<()>;

    /// Executions, newest first.
    fn list_executions(&self, filter: &ExecutionFilter<'_>)
    -> anyhow::Result<Vec<ExecutionRecord>>;

    /// One execution by id or unique id prefix.
    fn execution(&self, id_or_prefix: &str) -> anyhow::Result<Option<ExecutionRecord>>;

    /// Stage runs of an execution, in pipeline order.
    fn stages(&self, execution: &str) -> anyhow::Result<Vec<StageRecord>>;

    /// Action runs of an execution, in start order.
    fn actions(&self, execution: &str) -> anyhow::Result<Vec<ActionRecord>>;

    /// Log lines of an execution, optionally of one action, in order.
    fn logs(&self, execution: &str, action: Option<&str>) -> anyhow::Result<Vec<LogRecord>>;

    /// Log lines stored after the line with id `after` (0: from the start), in
    /// the order they were stored, at most `limit`: for following a running execution.
    fn logs_after(
        &self,
        execution: &str,
        action: Option<&str>,
        after: i64,
        limit: usize,
    ) -> anyhow::Result<Vec<LogRecord>>;

    /// Record which pipeline version an execution runs.
    fn set_execution_version(&self, id: &str, version: i64) -> anyhow::Result<()>;

    /// Mark an execution and whatever of it is still InProgress as Failed.
    fn fail_execution(&self, id: &str, reason: &str, now_ms: i64) -> anyhow::Result<()>;

    /// Record that an action continues later with `token`, and its summary so far.
    fn set_continuation(
        &self,
        execution: &str,
        action: &str,
        token: &str,
        due_ms: i64,
        summary: &str,
    ) -> anyhow::Result<()>;

    /// Record an action's latest progress report. One from a worker under a
    /// `claim` it no longer holds is dropped: the worker that took the
    /// attempt over reports for it now.
    fn set_progress(
        &self,
        execution: &str,
        action: &str,
        claim: Option<AttemptClaim<'_>>,
        percent: u8,
        message: &str,
    ) -> anyhow::Result<()>;

    /// How many executions of `pipeline` are InProgress (running or waiting).
    fn in_progress(&self, pipeline: &str) -> anyhow::Result<usize>;

    /// Set an execution's status without ending it (Stopping).
    fn set_execution_status(&self, id: &str, status: Status) -> anyhow::Result<()>;

    /// Put a finished execution back InProgress (a stage retry), held by
    /// this process. False when it is not finished (two retries racing
    /// through two servers: one reopens it, the other is told so).
    fn reopen_execution(&self, id: &str) -> anyhow::Result<bool>;

    /// How many executions are recorded in each status.
    fn execution_counts(&self) -> anyhow::Result<Vec<(String, i64)>>;

    /// The id of the newest execution, if any.
    fn latest_execution(&self) -> anyhow::Result<Option<String>>;

    /// When the oldest execution still running or stopping started: artifacts
    /// stored since then may belong to it before its action run records them.
    fn oldest_running_start(&self) -> anyhow::Result<Option<i64>>;
}

/// Who runs an execution: the process holding its lease, which renews it while
/// it runs. A lease that ran out (its holder died) may be taken by another
/// process, which resumes the execution.
pub trait LeaseStore {
    /// From now on, executions started through this store are leased to
    /// `owner` (without this, they are leased to no one).
    fn lease_as(&self, owner: Owner);

    /// The time, in ms since the epoch, that leases and claims are measured
    /// in. Every process sharing the store reads the same clock, so a
    /// machine whose own clock is wrong neither takes over a live lease nor
    /// keeps a dead one: SQLite's is this machine's (only processes here
    /// share the file), PostgreSQL's the database server's (see
    /// [`shared_clock`]). May ask the database: call it where store calls
    /// are made.
    fn clock_ms(&self) -> i64;

    /// Take the lease of unfinished execution `id` for `owner` until
    /// `until_ms`, if it has none, `owner` holds it already, or it ran out
    /// before `now_ms`. Whether it was taken: one process wins a race.
    fn claim_execution(
        &self,
        id: &str,
        owner: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> anyhow::Result<bool>;

    /// Extend to `until_ms` every lease `owner` holds on an unfinished
    /// execution; returns how many.
    fn renew_leases(&self, owner: &str, until_ms: i64) -> anyhow::Result<u64>;

    /// Who holds the lease of `execution` (`None`: no one, or no such execution).
    fn lease_holder(&self, execution: &str) -> anyhow::Result<Option<String>>;

    /// Ask whichever process holds InProgress `execution` to stop it
    /// (`request`: the stop's mode and reason, as JSON). Not fenced: any
    /// process may ask. Whether it was InProgress.
    fn request_stop(&self, execution: &str, request: &str) -> anyhow::Result<bool>;

    /// Stops asked of InProgress executions `owner` holds: (id, request).
    fn stop_requests(&self, owner: &str) -> anyhow::Result<Vec<(String, String)>>;

    /// Hold the right to admit executions of `pipeline` until the returned
    /// guard drops: between counting what runs and recording a new start, no
    /// other process sharing the store admits one (`max-executions` holds
    /// across servers). Waits while another process holds it.
    fn hold_admission<'a>(&'a self, pipeline: &str) -> anyhow::Result<AdmissionHold<'a>>;

    /// InProgress executions no live process holds (no lease, or one that ran
    /// out before `now_ms`), and with `own`, those `owner` holds; oldest first.
    fn unleased_executions(
        &self,
        owner: &str,
        now_ms: i64,
        own: bool,
    ) -> anyhow::Result<Vec<String>>;
}

/// The right to admit executions of one pipeline, released when dropped.
pub struct AdmissionHold<'a> {
    release: Option<Box<dyn FnOnce() + Send + 'a>>,
}

impl<'a> AdmissionHold<'a> {
    /// A hold that `release` gives up.
    pub fn new(release: impl FnOnce() + Send + 'a) -> Self {
        Self {
            release: Some(Box::new(release)),
        }
    }
}

impl Drop for AdmissionHold<'_> {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

/// A process that holds executions' leases.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// Unique among the live processes sharing the store.
    pub id: String,
    /// How long a lease lasts unless renewed, in ms.
    pub lease_ms: i64,
}

/// The owner and lease end a new execution is recorded with: none without an owner.
fn lease(owner: Option<&Owner>, now_ms: i64) -> (Option<&str>, Option<i64>) {
    match owner {
        Some(owner) => (
            Some(owner.id.as_str()),
            Some(now_ms.saturating_add(owner.lease_ms)),
        ),
        None => (None, None),
    }
}

/// The error of a write refused because another process holds the execution.
fn lease_lost(execution: &str, holder: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "execution {execution} is held by {holder} now: this process lost its lease and records nothing more of it"
    )
}

/// Registered pipelines, their versions and their stage transitions.
pub trait PipelineStore {
    /// Register a new version of a pipeline; returns the version number.
    fn put_pipeline(&self, name: &str, source: &str, now_ms: i64) -> anyhow::Result<i64>;

    /// A pipeline's given version, or its latest when `version` is None.
    fn pipeline(&self, name: &str, version: Option<i64>) -> anyhow::Result<Option<PipelineRecord>>;

    /// The latest version of every registered pipeline.
    fn pipelines(&self) -> anyhow::Result<Vec<PipelineRecord>>;

    /// Delete a pipeline (its history stays); false when it did not exist.
    fn delete_pipeline(&self, name: &str) -> anyhow::Result<bool>;

    /// Enable (None) or disable (Some(reason)) the transition into a stage.
    fn set_transition(
        &self,
        pipeline: &str,
        stage: &str,
        disabled: Option<&str>,
        by: &str,
        now_ms: i64,
    ) -> anyhow::Result<()>;

    /// Disabled transitions: (pipeline, stage, reason).
    fn disabled_transitions(&self) -> anyhow::Result<Vec<(String, String, String)>>;
}

/// Manual approvals and their decisions.
pub trait ApprovalStore {
    /// The approval of an action, created (pending) if it does not exist yet.
    /// A retried stage asks again: a decided approval is reset to pending.
    fn open_approval(
        &self,
        execution: &str,
        action: &str,
        approvers: &str,
        message: &str,
        expires_ms: i64,
    ) -> anyhow::Result<ApprovalRecord>;

    /// The approval of an action, if any.
    fn approval(&self, execution: &str, action: &str) -> anyhow::Result<Option<ApprovalRecord>>;

    /// Record a decision on a pending approval; false if it was not pending
    /// with this token.
    fn decide_approval(
        &self,
        execution: &str,
        action: &str,
        decision: &Decision<'_>,
    ) -> anyhow::Result<bool>;

    /// Mark a pending approval as expired.
    fn expire_approval(&self, execution: &str, action: &str) -> anyhow::Result<()>;
}

/// State-change events (the SSE stream and notifications read them) and the notification cursor.
pub trait EventStore {
    /// Mask the host's secrets in every event and audit row stored from now on
    /// (the first masker set stays).
    fn mask_with(&self, masker: std::sync::Arc<crate::secrets::Masker>);

    /// Append an event; returns it with its sequence number.
    fn append_event(&self, event: EventRecord) -> anyhow::Result<EventRecord>;

    /// Events after `after_seq`, oldest first.
    fn events_after(&self, after_seq: i64, limit: usize) -> anyhow::Result<Vec<EventRecord>>;

    /// The last event handed to notification plugins (0 when none).
    fn notify_cursor(&self) -> anyhow::Result<i64>;

    /// Advance the notification cursor past `seq`.
    fn set_notify_cursor(&self, seq: i64) -> anyhow::Result<()>;

    /// The newest event's sequence number (0 when none).
    fn last_event_seq(&self) -> anyhow::Result<i64>;

    /// The rule evaluations (events of kind `rule`) recorded for
    /// `execution`, oldest first.
    fn rule_events(&self, execution: &str) -> anyhow::Result<Vec<EventRecord>>;

    /// Hold (or renew) the right to deliver notifications until `until_ms`:
    /// true for `owner` when nobody holds it or its holder's ran out before
    /// `now_ms`. One server delivers at a time, so an event is delivered
    /// once; after a failover the new holder starts from the shared cursor
    /// (at least once).
    fn hold_notifier(&self, owner: &str, now_ms: i64, until_ms: i64) -> anyhow::Result<bool>;
}

/// API tokens and the audit log.
pub trait AccessStore {
    /// Store a new API token (only the hash of its secret).
    fn add_token(&self, token: &TokenRecord, secret_hash: &str, now_ms: i64) -> anyhow::Result<()>;

    /// Every token with its secret's hash, oldest first (callers compare the
    /// hashes in constant time rather than letting SQL look one up).
    fn tokens(&self) -> anyhow::Result<Vec<(TokenRecord, String)>>;

    /// Revoke a token; false when there is no token with this id.
    fn revoke_token(&self, id: &str, now_ms: i64) -> anyhow::Result<bool>;

    /// Append to the audit log; `pipeline` is None for global entries.
    fn audit(&self, entry: &AuditRecord) -> anyhow::Result<()>;

    /// Audit entries, oldest first, after `after_seq`; with `scope`, only the
    /// entries of those pipelines (global entries are left out).
    fn audit_log(
        &self,
        after_seq: i64,
        limit: usize,
        scope: Option<&[String]>,
    ) -> anyhow::Result<Vec<AuditRecord>>;
}

/// What triggers remember: the last revision a poll saw, and webhook delivery ids.
pub trait TriggerStore {
    /// The last revision a poll of `pipeline`'s `action` started an execution for.
    fn poll_revision(&self, pipeline: &str, action: &str) -> anyhow::Result<Option<String>>;

    /// Move the last polled revision of `pipeline`'s `action` from `from` to
    /// `to` (`None`: no revision recorded), if it is still `from`: servers
    /// polling the same source race for a new revision, and the one whose
    /// swap succeeds starts the execution. Whether it swapped.
    fn swap_poll_revision(
        &self,
        pipeline: &str,
        action: &str,
        from: Option<&str>,
        to: Option<&str>,
        now_ms: i64,
    ) -> anyhow::Result<bool>;

    /// Claim a webhook delivery id for `pipeline`. None when it is new (the
    /// caller goes on to handle it); otherwise the execution the first
    /// delivery started, if it started one.
    fn claim_delivery(
        &self,
        pipeline: &str,
        delivery: &str,
        now_ms: i64,
    ) -> anyhow::Result<Option<Option<String>>>;

    /// Record the execution a claimed delivery started.
    fn set_delivery_execution(
        &self,
        pipeline: &str,
        delivery: &str,
        execution: &str,
    ) -> anyhow::Result<()>;

    /// Forget a claimed delivery that failed before it was handled, so that
    /// the sender's redelivery is handled instead of answered as a duplicate.
    fn release_delivery(&self, pipeline: &str, delivery: &str) -> anyhow::Result<()>;

    /// Claim the fire of a cron schedule due at `due_ms`: true for the one
    /// caller that gets it, so servers sharing a database start it once.
    fn claim_cron_fire(
        &self,
        pipeline: &str,
        expression: &str,
        due_ms: i64,
    ) -> anyhow::Result<bool>;
}

/// The retention sweep.
pub trait RetentionStore {
    /// Delete executions that finished before `cutoff_ms` with their stage and
    /// action runs, logs and approvals, and events (delivered ones), audit rows
    /// and webhook delivery ids older than it, in one transaction. Running or
    /// stopping executions always stay.
    fn gc(&self, cutoff_ms: i64) -> anyhow::Result<GcCounts>;

    /// Digests of every artifact an action run of a remaining execution records.
    fn referenced_digests(&self) -> anyhow::Result<std::collections::HashSet<String>>;
}

/// Action attempts handed to worker processes (`sluice worker`) through the
/// database: queued by the executor, claimed by one worker at a time under a
/// lease it renews, and completed under the fencing token of its claim.
///
/// A claim increments the attempt's `fence`; renewals and the completion
/// name the fence they hold, so a worker whose lease ran out (killed, paused,
/// cut off) and was claimed again by another can neither renew nor complete:
/// its late result is refused. Never two live runs of one attempt.
pub trait AttemptQueue {
    /// Queue an attempt under `key` (execution, action, attempt and round);
    /// a key queued before is left as it is, so an executor resumed after a
    /// crash waits on the same attempt instead of running it again.
    fn queue_attempt(&self, key: &str, execution: &str, payload: &str) -> anyhow::Result<()>;

    /// Claim the oldest attempt that is queued or whose claim ran out before
    /// `now_ms`, for `worker` until `until_ms`. Concurrent claimers never get
    /// the same one (PostgreSQL: `FOR UPDATE SKIP LOCKED`).
    fn claim_attempt(
        &self,
        worker: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> anyhow::Result<Option<ClaimedAttempt>>;

    /// Extend a claim to `until_ms`; false when `fence` no longer holds it
    /// (claimed again, completed or cancelled): the worker must stop.
    fn renew_attempt(&self, key: &str, fence: i64, until_ms: i64) -> anyhow::Result<bool>;

    /// Record the result of a claimed attempt; false (nothing recorded) when
    /// `fence` no longer holds it.
    fn complete_attempt(&self, key: &str, fence: i64, result: &str) -> anyhow::Result<bool>;

    /// The attempt queued under `key`, if any.
    fn queued_attempt(&self, key: &str) -> anyhow::Result<Option<QueuedAttempt>>;

    /// Withdraw an attempt that is not done (its execution was stopped): no
    /// worker claims it, and the one running it loses its claim. Nothing is
    /// withdrawn while another process holds the execution: one that lost its
    /// lease lets go of its waits, and the new holder waits on the same
    /// attempt.
    fn cancel_attempt(&self, key: &str) -> anyhow::Result<()>;

    /// Forget the finished attempts of `execution` (a stage retry runs its
    /// failed actions again from their first attempt).
    fn forget_attempts(&self, execution: &str) -> anyhow::Result<()>;

    /// Wake-ups when attempts are queued or done, by this process or (on
    /// PostgreSQL) any other: waiters look at once instead of at their next
    /// interval.
    fn signals(&self) -> std::sync::Arc<StoreSignals>;
}

/// Stage gates, shared by every process on the database: who waits in line
/// at, and who is inside, each stage boundary (execution modes `queued` and
/// `superseded` admit one execution at a time across all servers;
/// `queue-depth` counts the line).
///
/// A place is kept until the stage ends ([`ExecutionStore::finish_stage`]
/// removes it) or the execution does (`finish_execution`, `fail_execution`);
/// places of executions no longer in progress are ignored, so a crash never
/// blocks a line. Joining again keeps the place, so an execution resumed by
/// another process after a crash keeps its turn, and one resumed inside a
/// stage enters it again at once.
pub trait GateStore {
    /// Take a place in line at `stage` for `execution`, unless it has one.
    /// With `supersede`, a new place supersedes every older one still
    /// waiting there (they end as Superseded when they next try to enter).
    fn join_gate(
        &self,
        pipeline: &str,
        stage: &str,
        execution: &str,
        supersede: bool,
    ) -> anyhow::Result<()>;

    /// Enter `stage` if `execution` may: it was not superseded and, when
    /// `one_at_a_time`, it is first in line and no other execution in
    /// progress is inside.
    fn try_enter_gate(
        &self,
        pipeline: &str,
        stage: &str,
        execution: &str,
        one_at_a_time: bool,
    ) -> anyhow::Result<GateTry>;

    /// Give up a place in line (not one inside the stage): the execution was
    /// stopped while it waited. Idempotent.
    fn leave_gate_line(&self, pipeline: &str, stage: &str, execution: &str) -> anyhow::Result<()>;

    /// Executions in progress waiting in line at any stage of `pipeline`.
    fn gate_waiting(&self, pipeline: &str) -> anyhow::Result<usize>;
}

/// What trying to enter a stage found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateTry {
    /// Inside the stage now (or still, after a restart).
    Entered,
    /// A newer execution replaced this one in line; its place is gone.
    Superseded,
    /// Not yet: another execution is inside or ahead in line.
    Wait,
}

/// A retry found the execution running again: another retry, perhaps
/// through another server, reopened it first.
#[derive(Debug)]
pub struct AlreadyRunning(pub String);

impl std::fmt::Display for AlreadyRunning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "execution {} is running again already", self.0)
    }
}

impl std::error::Error for AlreadyRunning {}

/// Where a queued attempt is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttemptState {
    /// Waiting for a worker.
    Queued,
    /// Claimed by a worker.
    Running,
    /// Its result is recorded.
    Done,
    /// Withdrawn before it was done.
    Cancelled,
}

impl AttemptState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Done => "done",
            Self::Cancelled => "cancelled",
        }
    }

    /// The state stored as `name`.
    pub fn parse(name: &str) -> anyhow::Result<Self> {
        Ok(match name {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "done" => Self::Done,
            "cancelled" => Self::Cancelled,
            other => anyhow::bail!("unknown attempt state `{other}` in the database"),
        })
    }
}

/// An attempt as the queue holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedAttempt {
    /// Where it is.
    pub state: AttemptState,
    /// The worker that claimed it last.
    pub worker: Option<String>,
    /// How many times it was claimed (the fence of the last claim).
    pub fence: i64,
    /// The result, once done.
    pub result: Option<String>,
}

/// An attempt a worker claimed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimedAttempt {
    /// Its key.
    pub key: String,
    /// The execution it belongs to.
    pub execution: String,
    /// What to run, as the executor queued it.
    pub payload: String,
    /// The fencing token of this claim.
    pub fence: i64,
}

/// One captured, masked log line of an action, as stored.
#[derive(Clone, Debug)]
pub struct LogLine {
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Where it came from.
    pub stream: &'static str,
    /// The masked text, without the trailing newline.
    pub text: String,
}

/// Status of an execution, stage or action, named as CodePipeline names them
/// (the stored names are the serde names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Status {
    /// Running.
    InProgress,
    /// Finished well.
    Succeeded,
    /// Finished badly.
    Failed,
    /// Never ran because an earlier stage failed.
    Skipped,
    /// A newer execution replaced this one while it waited at a stage boundary.
    Superseded,
    /// A stop was requested; running actions are finishing.
    Stopping,
    /// Stopped on request.
    Stopped,
    /// An action that was running when its execution was stopped with abandon.
    Abandoned,
}

impl Status {
    /// The stored name.
    pub fn name(self) -> &'static str {
        match self {
            Status::InProgress => "InProgress",
            Status::Succeeded => "Succeeded",
            Status::Failed => "Failed",
            Status::Skipped => "Skipped",
            Status::Superseded => "Superseded",
            Status::Stopping => "Stopping",
            Status::Stopped => "Stopped",
            Status::Abandoned => "Abandoned",
        }
    }

    /// The status stored under `name`.
    pub fn from_name(name: &str) -> Option<Status> {
        [
            Status::InProgress,
            Status::Succeeded,
            Status::Failed,
            Status::Skipped,
            Status::Superseded,
            Status::Stopping,
            Status::Stopped,
            Status::Abandoned,
        ]
        .into_iter()
        .find(|status| status.name() == name)
    }

    /// Whether nothing more happens to what has this status.
    pub fn is_final(self) -> bool {
        !matches!(self, Status::InProgress | Status::Stopping)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

/// An output artifact as recorded for an action run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OutputRecord {
    /// Artifact name.
    pub name: String,
    /// blake3 digest.
    pub digest: String,
    /// Regular files.
    pub files: u64,
    /// Total bytes.
    pub bytes: u64,
}

/// One execution row.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExecutionRecord {
    /// Execution id.
    pub id: String,
    /// Pipeline name.
    pub pipeline: String,
    /// Pipeline file path.
    pub pipeline_file: String,
    /// Its status.
    pub status: Status,
    /// Start, ms since the epoch.
    pub started_ms: i64,
    /// End, ms since the epoch.
    pub ended_ms: Option<i64>,
    /// Why it failed.
    pub error: Option<String>,
    /// Pipeline variables as resolved at start (JSON object).
    pub variables: serde_json::Value,
    /// Registered pipeline version it ran (None for `sluice run` of a file).
    pub pipeline_version: Option<i64>,
    /// What started it: the `#{trigger.*}` variables.
    pub trigger: serde_json::Value,
}

/// Which executions to list, newest first.
#[derive(Clone, Copy, Debug)]
pub struct ExecutionFilter<'a> {
    /// Only this pipeline.
    pub pipeline: Option<&'a str>,
    /// Only this status.
    pub status: Option<&'a str>,
    /// At most this many.
    pub limit: usize,
    /// Skip this many (paging).
    pub offset: usize,
}

/// One stage run row.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StageRecord {
    /// Stage name.
    pub stage: String,
    /// Its status.
    pub status: Status,
    /// Start.
    pub started_ms: i64,
    /// End.
    pub ended_ms: Option<i64>,
    /// Why it failed.
    pub error: Option<String>,
}

/// One action run row.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ActionRecord {
    /// Stage name.
    pub stage: String,
    /// Action name.
    pub action: String,
    /// Run order.
    pub run_order: u32,
    /// `name@version` of the plugin.
    pub plugin: String,
    /// Its status.
    pub status: Status,
    /// Attempts made.
    pub attempts: u32,
    /// Start.
    pub started_ms: i64,
    /// End.
    pub ended_ms: Option<i64>,
    /// Configuration after variable resolution.
    pub resolved_config: Vec<(String, String)>,
    /// Summary from the plugin.
    pub summary: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// Output variables.
    pub variables: Vec<(String, String)>,
    /// Output artifacts.
    pub outputs: Vec<OutputRecord>,
    /// Latest progress report: percent.
    pub percent: Option<u8>,
    /// Latest progress report: message.
    pub progress: Option<String>,
    /// Token of the next round, while a continuing action waits: encrypted
    /// ([`ExecutionStore::open_continuation`] decrypts it).
    pub continuation: Option<String>,
    /// When the next round is due.
    pub continue_at_ms: Option<i64>,
}

/// One stored log line.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogRecord {
    /// Increasing id: a cursor for reading only newer lines ([`ExecutionStore::logs_after`]).
    pub id: i64,
    /// Action name.
    pub action: String,
    /// Attempt number.
    pub attempt: u32,
    /// ms since the epoch.
    pub ts_ms: i64,
    /// Stream name.
    pub stream: String,
    /// Masked text.
    pub line: String,
}

/// One stored version of a registered pipeline.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PipelineRecord {
    /// Pipeline name.
    pub name: String,
    /// Version, from 1, incremented by every update.
    pub version: i64,
    /// The pipeline file's text.
    pub source: String,
    /// When this version was registered.
    pub created_ms: i64,
}

/// An API token, without its secret.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenRecord {
    /// Public id (also shown in the audit log).
    pub id: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    /// Pipelines it is limited to; empty for all.
    pub pipelines: Vec<String>,
    /// Free text.
    pub description: String,
    /// When it stops being accepted, ms since the epoch; None: never.
    pub expires_ms: Option<i64>,
    /// When it was revoked, ms since the epoch.
    pub revoked_ms: Option<i64>,
}

/// The state of a manual approval.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalStatus {
    /// Waiting for a decision.
    Pending,
    /// Approved: the action succeeds.
    Approved,
    /// Rejected: the action fails.
    Rejected,
    /// Its deadline passed: the action fails.
    Expired,
}

impl ApprovalStatus {
    /// The status stored under `name` (`pending`, `approved`, …).
    pub fn from_name(name: &str) -> Option<ApprovalStatus> {
        match name {
            "pending" => Some(ApprovalStatus::Pending),
            "approved" => Some(ApprovalStatus::Approved),
            "rejected" => Some(ApprovalStatus::Rejected),
            "expired" => Some(ApprovalStatus::Expired),
            _ => None,
        }
    }
}

impl std::fmt::Display for ApprovalStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            ApprovalStatus::Pending => "pending",
            ApprovalStatus::Approved => "approved",
            ApprovalStatus::Rejected => "rejected",
            ApprovalStatus::Expired => "expired",
        })
    }
}

/// A manual approval and its decision.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApprovalRecord {
    /// Execution id.
    pub execution_id: String,
    /// Approval action name.
    pub action: String,
    /// Token a decision must quote (shown by the pipeline state).
    pub token: String,
    /// Least role that may decide.
    pub approvers: String,
    /// What is asked.
    pub message: String,
    /// Pending, approved, rejected or expired.
    pub status: ApprovalStatus,
    /// Deadline, ms since the epoch.
    pub expires_ms: i64,
    /// Who decided.
    pub decided_by: Option<String>,
    /// When.
    pub decided_ms: Option<i64>,
    /// Their comment.
    pub comment: Option<String>,
}

/// A state change of a pipeline execution, stage or action, as delivered to
/// subscribers (at least once: resume with the last `seq` seen).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventRecord {
    /// Order of events; the SSE id.
    pub seq: i64,
    /// When, ms since the epoch.
    pub ts_ms: i64,
    /// Execution id.
    pub execution: String,
    /// Pipeline name.
    pub pipeline: String,
    /// `pipeline`, `stage` or `action`.
    pub kind: String,
    /// The pipeline, stage or action name.
    pub name: String,
    /// STARTED, SUCCEEDED, FAILED, SKIPPED (stages), RETRYING (actions), STOPPED,
    /// SUPERSEDED, ABANDONED or RESUMED.
    pub state: String,
    /// Summary or reason.
    pub detail: String,
}

/// A decision on a manual approval.
#[derive(Clone, Copy, Debug)]
pub struct Decision<'a> {
    /// The approval's token.
    pub token: &'a str,
    /// Approve (true) or reject.
    pub approve: bool,
    /// Who decides.
    pub by: &'a str,
    /// Why.
    pub comment: &'a str,
    /// When, ms since the epoch.
    pub now_ms: i64,
}

/// One audit log entry.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditRecord {
    /// Order of entries.
    pub seq: i64,
    /// When, ms since the epoch.
    pub ts_ms: i64,
    /// Who: a token id.
    pub actor: String,
    /// What: method and route.
    pub action: String,
    /// On what: pipeline or execution.
    pub target: String,
    /// How it ended: the HTTP status.
    pub result: String,
    /// The pipeline it concerns; None for global entries (token management).
    pub pipeline: Option<String>,
}

/// A worker's claim on a queued attempt: its key and the fence it was
/// claimed with ([`AttemptQueue::claim_attempt`]).
#[derive(Clone, Copy, Debug)]
pub struct AttemptClaim<'a> {
    /// The attempt's key.
    pub key: &'a str,
    /// The claim's fencing token.
    pub fence: i64,
}

/// The error of a write refused because `claim` is no longer held.
fn claim_lost(claim: AttemptClaim<'_>) -> anyhow::Error {
    anyhow::anyhow!(
        "attempt {}: the claim (fence {}) is lost: another worker took the attempt over, or it was withdrawn",
        claim.key,
        claim.fence
    )
}

/// How an execution ended, for [`ExecutionStore::finish_execution`].
#[derive(Clone, Copy, Debug)]
pub struct ExecutionEnd<'a> {
    /// Final status.
    pub status: Status,
    /// Why it failed, if it did.
    pub error: Option<&'a str>,
    /// The stage a condition asked to roll back, if one did.
    pub rollback: Option<&'a str>,
}

impl<'a> ExecutionEnd<'a> {
    /// An end that asks for no rollback.
    pub fn new(status: Status, error: Option<&'a str>) -> Self {
        Self {
            status,
            error,
            rollback: None,
        }
    }
}

/// How an action run ended, for [`ExecutionStore::finish_action`].
pub struct ActionEnd<'a> {
    /// Final status.
    pub status: Status,
    /// Attempts made.
    pub attempts: u32,
    /// Summary.
    pub summary: Option<&'a str>,
    /// Error.
    pub error: Option<&'a str>,
    /// Output variables.
    pub variables: &'a [(String, String)],
    /// Output artifacts.
    pub outputs: &'a [OutputRecord],
}

/// Rows a retention sweep removed from the state store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GcCounts {
    /// Finished executions.
    pub executions: u64,
    /// Their stage runs.
    pub stage_runs: u64,
    /// Their action runs.
    pub action_runs: u64,
    /// Their log lines.
    pub log_lines: u64,
    /// Their approvals.
    pub approvals: u64,
    /// Events older than the cutoff.
    pub events: u64,
    /// Audit rows older than the cutoff.
    pub audit_rows: u64,
    /// Webhook delivery ids (kept to drop repeats) older than the cutoff.
    pub webhook_deliveries: u64,
    /// Claimed cron fires older than the cutoff.
    pub cron_fires: u64,
}
