//! The PostgreSQL implementation of the state store: the scale-out engine.
//!
//! The same tables as SQLite, with `BIGINT` times and counters and identity
//! columns where SQLite used its `rowid`. Migrations are numbered like SQLite's;
//! the version is the row count of `sluice_schema`, and each step runs in one
//! transaction holding an advisory lock, so processes starting together take
//! each step once. A database newer than the binary is refused.
//!
//! Callers are synchronous and often on a tokio worker thread, where the
//! `postgres` client (which drives its own runtime) must not block. Each call
//! therefore runs on a short-lived scoped thread holding the connection.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use ::postgres::fallible_iterator::FallibleIterator as _;
use ::postgres::types::ToSql;
use ::postgres::{Client, GenericClient, NoTls, Row};
use anyhow::Context as _;

use super::*;

/// Every migration, in order; the database's version is how many it took.
/// Append only; never edit one that shipped.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE executions (
    id TEXT PRIMARY KEY,
    ord BIGINT GENERATED ALWAYS AS IDENTITY,
    pipeline TEXT NOT NULL,
    pipeline_file TEXT NOT NULL,
    status TEXT NOT NULL,
    started_ms BIGINT NOT NULL,
    ended_ms BIGINT,
    error TEXT,
    variables TEXT NOT NULL DEFAULT '{}',
    trigger TEXT NOT NULL DEFAULT '{}',
    pipeline_version BIGINT
);
CREATE INDEX executions_by_start ON executions (started_ms);
CREATE TABLE stage_runs (
    execution_id TEXT NOT NULL REFERENCES executions(id),
    stage TEXT NOT NULL,
    position BIGINT NOT NULL,
    status TEXT NOT NULL,
    started_ms BIGINT NOT NULL,
    ended_ms BIGINT,
    error TEXT,
    PRIMARY KEY (execution_id, stage)
);
CREATE TABLE action_runs (
    execution_id TEXT NOT NULL REFERENCES executions(id),
    stage TEXT NOT NULL,
    action TEXT NOT NULL,
    run_order BIGINT NOT NULL,
    plugin TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    started_ms BIGINT NOT NULL,
    ended_ms BIGINT,
    resolved_config TEXT NOT NULL DEFAULT '[]',
    summary TEXT,
    error TEXT,
    variables TEXT NOT NULL DEFAULT '[]',
    outputs TEXT NOT NULL DEFAULT '[]',
    percent BIGINT,
    progress TEXT,
    continuation TEXT,
    continue_at_ms BIGINT,
    PRIMARY KEY (execution_id, action)
);
CREATE TABLE action_logs (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    execution_id TEXT NOT NULL,
    action TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    ts_ms BIGINT NOT NULL,
    stream TEXT NOT NULL,
    line TEXT NOT NULL
);
CREATE INDEX action_logs_by_action ON action_logs (execution_id, action, seq);
CREATE TABLE pipelines (
    name TEXT NOT NULL,
    version BIGINT NOT NULL,
    source TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    deleted BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (name, version)
);
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    pipelines TEXT NOT NULL DEFAULT '[]',
    description TEXT NOT NULL DEFAULT '',
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT,
    revoked_ms BIGINT
);
CREATE TABLE transitions (
    pipeline TEXT NOT NULL,
    stage TEXT NOT NULL,
    disabled_reason TEXT,
    changed_by TEXT NOT NULL,
    changed_ms BIGINT NOT NULL,
    PRIMARY KEY (pipeline, stage)
);
CREATE TABLE approvals (
    execution_id TEXT NOT NULL,
    action TEXT NOT NULL,
    token TEXT NOT NULL,
    approvers TEXT NOT NULL,
    message TEXT NOT NULL,
    status TEXT NOT NULL,
    expires_ms BIGINT NOT NULL,
    decided_by TEXT,
    decided_ms BIGINT,
    comment TEXT,
    PRIMARY KEY (execution_id, action)
);
CREATE TABLE events (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts_ms BIGINT NOT NULL,
    execution_id TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE TABLE poll_state (
    pipeline TEXT NOT NULL,
    action TEXT NOT NULL,
    last_revision TEXT NOT NULL,
    polled_ms BIGINT NOT NULL,
    PRIMARY KEY (pipeline, action)
);
CREATE TABLE notify_cursor (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL
);
CREATE TABLE audit (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts_ms BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    result TEXT NOT NULL,
    pipeline TEXT
);
CREATE TABLE webhook_deliveries (
    pipeline TEXT NOT NULL,
    delivery TEXT NOT NULL,
    execution_id TEXT,
    received_ms BIGINT NOT NULL,
    PRIMARY KEY (pipeline, delivery)
);
"#,
    r#"
CREATE TABLE cron_fires (
    pipeline TEXT NOT NULL,
    expression TEXT NOT NULL,
    due_ms BIGINT NOT NULL,
    PRIMARY KEY (pipeline, expression, due_ms)
);
"#,
    r#"
ALTER TABLE executions ADD COLUMN owner TEXT;
ALTER TABLE executions ADD COLUMN lease_until_ms BIGINT;
"#,
    r#"
CREATE TABLE attempts (
    key TEXT PRIMARY KEY,
    ord BIGINT GENERATED ALWAYS AS IDENTITY,
    execution_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL,
    worker TEXT,
    fence BIGINT NOT NULL DEFAULT 0,
    lease_until_ms BIGINT,
    result TEXT,
    queued_ms BIGINT NOT NULL
);
CREATE INDEX attempts_by_state ON attempts (state, lease_until_ms);
CREATE INDEX attempts_by_execution ON attempts (execution_id);
"#,
    "ALTER TABLE executions ADD COLUMN stop_request TEXT;",
    r#"
CREATE TABLE gate_places (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pipeline TEXT NOT NULL,
    stage TEXT NOT NULL,
    execution_id TEXT NOT NULL,
    state TEXT NOT NULL,
    UNIQUE (pipeline, stage, execution_id)
);
CREATE INDEX gate_places_by_execution ON gate_places (execution_id);
"#,
    "CREATE TABLE notifier (id INTEGER PRIMARY KEY CHECK (id = 1), owner TEXT NOT NULL, until_ms BIGINT NOT NULL);",
    "CREATE INDEX events_by_execution ON events (execution_id, kind, seq);",
    r#"
ALTER TABLE executions ADD COLUMN rollback_stage TEXT;
CREATE INDEX executions_asking_rollback ON executions (ended_ms) WHERE rollback_stage IS NOT NULL;
"#,
];

/// The advisory lock key migrations hold ("sluice" in ASCII).
const MIGRATION_LOCK: i64 = 0x736c_7569_6365;

/// The state store on a PostgreSQL database.
pub struct PostgresStore {
    /// Sessions to the database, reused (see [`POOL_SIZE`]).
    pool: Mutex<Pool>,
    /// Told when a session is given back or closed.
    freed: Condvar,
    /// To open sessions, and again when the server closed one.
    url: String,
    /// Encrypts continuation tokens (they may carry secrets) while stored.
    sealer: crate::secrets::TokenSealer,
    /// Masks the host's secrets in events and audit rows.
    masker: std::sync::OnceLock<std::sync::Arc<crate::secrets::Masker>>,
    /// Who new executions are leased to ([`LeaseStore::lease_as`]).
    owner: std::sync::OnceLock<Owner>,
    /// Attempt wake-ups, fed by a session that LISTENs (started on first use).
    signals: Arc<StoreSignals>,
    /// Whether that session's thread was started.
    listening: std::sync::Once,
    /// The database server's clock, which leases are measured in.
    clock: super::shared_clock::SharedClock,
}

impl PostgresStore {
    /// Connect to `url` (`postgres://user@host/db`, libpq options such as
    /// `?options=-csearch_path%3Dmy_schema` included) and create or migrate the
    /// schema. Continuation tokens are sealed with the key at `key` (created if
    /// missing; every process sharing the database needs the same key).
    pub fn connect(url: &str, key: &Path) -> anyhow::Result<Self> {
        let store = Self {
            pool: Mutex::new(Pool::default()),
            freed: Condvar::new(),
            url: url.to_string(),
            sealer: crate::secrets::TokenSealer::new(key.to_path_buf()),
            masker: std::sync::OnceLock::new(),
            owner: std::sync::OnceLock::new(),
            signals: Arc::new(StoreSignals::across_processes()),
            listening: std::sync::Once::new(),
            clock: super::shared_clock::SharedClock::new(),
        };
        store.with(|db| migrate(db).context("creating or migrating the state database"))?;
        Ok(store)
    }

    fn mask(&self, text: &str) -> String {
        match self.masker.get() {
            Some(masker) => masker.mask(text),
            None => text.to_string(),
        }
    }

    fn pool(&self) -> MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lend a session to the caller alone: an idle one, a new one while fewer
    /// than [`POOL_SIZE`] are open, or else the next one given back. Call it
    /// off the tokio runtime (it may connect).
    fn lend(&self) -> anyhow::Result<Lent<'_>> {
        let mut pool = self.pool();
        let idle = loop {
            if let Some(client) = pool.idle.pop() {
                break Some(client);
            }
            if pool.open < POOL_SIZE {
                pool.open += 1;
                break None;
            }
            pool = self.freed.wait(pool).unwrap_or_else(|e| e.into_inner());
        };
        drop(pool);
        let mut lent = Lent {
            store: self,
            client: None,
        };
        // The server ends a session that sat in a transaction too long (this
        // process was paused), and a failed call may have closed one.
        lent.client = match idle {
            Some(client) if !client.is_closed() => Some(client),
            _ => Some(session(&self.url)?),
        };
        Ok(lent)
    }

    /// Run `work` with a session of its own, on a thread outside any tokio
    /// runtime (the synchronous client drives a runtime of its own).
    fn with<T: Send>(
        &self,
        work: impl FnOnce(&mut Client) -> anyhow::Result<T> + Send,
    ) -> anyhow::Result<T> {
        off_runtime(|| {
            let mut lent = self.lend()?;
            work(lent.client())
        })
    }

    /// One statement; returns the rows it changed.
    fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> anyhow::Result<u64> {
        self.with(|db| Ok(db.execute(sql, params)?))
    }

    /// One query's rows.
    fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> anyhow::Result<Vec<Row>> {
        self.with(|db| Ok(db.query(sql, params)?))
    }

    /// One write to an execution this process holds (see [`held_by_us`]).
    fn write_held(
        &self,
        execution: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> anyhow::Result<()> {
        let owner = self.owner.get();
        self.with(|db| {
            let mut transaction = db.transaction()?;
            held_by_us(&mut transaction, owner, execution)?;
            transaction.execute(sql, params)?;
            transaction.commit()?;
            Ok(())
        })
    }

    /// One write to an execution this process holds and the event announcing
    /// it, committed together.
    fn write_announced(
        &self,
        execution: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        event: Option<EventRecord>,
    ) -> anyhow::Result<Option<EventRecord>> {
        self.write_announced_then(execution, sql, params, event, |_| Ok(()))
    }

    /// [`Self::write_announced`], with `then` run in the same transaction.
    fn write_announced_then(
        &self,
        execution: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        event: Option<EventRecord>,
        then: impl FnOnce(&mut ::postgres::Transaction<'_>) -> anyhow::Result<()> + Send,
    ) -> anyhow::Result<Option<EventRecord>> {
        let event = event.map(|mut e| {
            e.detail = self.mask(&e.detail);
            e
        });
        let owner = self.owner.get();
        self.with(|db| {
            let mut transaction = db.transaction()?;
            held_by_us(&mut transaction, owner, execution)?;
            transaction.execute(sql, params)?;
            then(&mut transaction)?;
            let stored = event
                .map(|e| insert_event(&mut transaction, e))
                .transpose()?;
            transaction.commit()?;
            Ok(stored)
        })
    }
}

/// How long the server lets a session sit idle inside a transaction before it
/// ends it. Transactions here never wait on anything but the database, so an
/// idle one means this process stalled (paused, swapped out) while holding row
/// locks that other servers' writes and lease claims would otherwise wait on
/// for as long as it stays stalled.
const STALLED_TRANSACTION: &str = "5s";

/// How long the listening session waits for a notification before it checks
/// that its store still exists.
const LISTEN_TICK: Duration = Duration::from_secs(1);

/// Relay notifications on [`signals::CHANNEL`] to `signals` until the store
/// is gone, and on [`signals::EVENTS_CHANNEL`] from the first tick after
/// anyone here asked for events; a lost session is opened again (waiters
/// poll meanwhile).
fn listen_for_signals(url: &str, signals: &std::sync::Weak<StoreSignals>) {
    while signals.strong_count() > 0 {
        let listening = session(url).and_then(|mut client| {
            client.batch_execute(&format!("LISTEN {}", signals::CHANNEL))?;
            Ok(client)
        });
        let mut client = match listening {
            Ok(client) => client,
            Err(e) => {
                tracing::warn!("listening for attempts: {e:#}; trying again");
                std::thread::sleep(LISTEN_TICK);
                continue;
            }
        };
        let mut listening_to_events = false;
        loop {
            if !listening_to_events && signals.upgrade().is_some_and(|s| s.wants_events()) {
                let listen = format!("LISTEN {}", signals::EVENTS_CHANNEL);
                if let Err(e) = client.batch_execute(&listen) {
                    tracing::warn!("the listening session ended: {e}; opening another");
                    break;
                }
                listening_to_events = true;
            }
            let mut notifications = client.notifications();
            let next = notifications.timeout_iter(LISTEN_TICK).next();
            let Some(signals) = signals.upgrade() else {
                return;
            };
            match next {
                Ok(Some(notification)) => signals.announce(notification.payload()),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!("the listening session ended: {e}; opening another");
                    break;
                }
            }
        }
    }
}

/// A new session on `url`, set up as every Sluice session is.
fn session(url: &str) -> anyhow::Result<Client> {
    let mut client =
        Client::connect(url, NoTls).with_context(|| format!("connecting to {}", redacted(url)))?;
    client.batch_execute(&format!(
        "SET idle_in_transaction_session_timeout = '{STALLED_TRANSACTION}'"
    ))?;
    Ok(client)
}

/// Bring the schema to the newest version this binary knows, one step per
/// transaction under an advisory lock; refuse a database a newer binary moved on.
fn migrate(client: &mut Client) -> anyhow::Result<()> {
    client.batch_execute("CREATE TABLE IF NOT EXISTS sluice_schema (version BIGINT PRIMARY KEY, applied_ms BIGINT NOT NULL)")?;
    loop {
        let mut transaction = client.transaction()?;
        transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
        let version: i64 = transaction
            .query_one("SELECT COUNT(*) FROM sluice_schema", &[])?
            .get(0);
        let known = MIGRATIONS.len() as i64;
        anyhow::ensure!(
            version <= known,
            "the database's schema is at version {version}, newer than this binary knows ({known}); upgrade Sluice"
        );
        if version == known {
            return Ok(());
        }
        transaction
            .batch_execute(MIGRATIONS[version as usize])
            .with_context(|| format!("migration {}", version + 1))?;
        transaction.execute(
            "INSERT INTO sluice_schema (version, applied_ms) VALUES ($1, $2)",
            &[&(version + 1), &sluice_core::units::now_ms()],
        )?;
        transaction.commit()?;
    }
}

/// A connection string without its password, for errors.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{}{user}{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// A status column.
fn status(row: &Row, index: usize) -> anyhow::Result<Status> {
    let name: String = row.try_get(index)?;
    Status::from_name(&name).with_context(|| format!("unknown status `{name}`"))
}

/// A JSON column read into `T`; bad JSON is an error naming the column.
fn json_column<T: serde::de::DeserializeOwned>(
    row: &Row,
    index: usize,
    column: &'static str,
) -> anyhow::Result<T> {
    let text: String = row.try_get(index)?;
    serde_json::from_str(&text).with_context(|| format!("column {column} holds bad JSON"))
}

/// A count for `LIMIT`/`OFFSET`, clamped to what BIGINT holds.
fn sql_count(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// An unsigned counter stored as BIGINT.
fn counter(row: &Row, index: usize) -> anyhow::Result<u32> {
    let value: i64 = row.try_get(index)?;
    u32::try_from(value).with_context(|| format!("counter {value} out of range"))
}

const EXECUTION_COLUMNS: &str = "id, pipeline, pipeline_file, status, started_ms, ended_ms, error, variables, pipeline_version, trigger";

fn execution_from_row(row: &Row) -> anyhow::Result<ExecutionRecord> {
    Ok(ExecutionRecord {
        id: row.try_get(0)?,
        pipeline: row.try_get(1)?,
        pipeline_file: row.try_get(2)?,
        status: status(row, 3)?,
        started_ms: row.try_get(4)?,
        ended_ms: row.try_get(5)?,
        error: row.try_get(6)?,
        variables: json_column(row, 7, "executions.variables")?,
        pipeline_version: row.try_get(8)?,
        trigger: json_column(row, 9, "executions.trigger")?,
    })
}

fn pipeline_from_row(row: &Row) -> anyhow::Result<PipelineRecord> {
    Ok(PipelineRecord {
        name: row.try_get(0)?,
        version: row.try_get(1)?,
        source: row.try_get(2)?,
        created_ms: row.try_get(3)?,
    })
}

/// A row of `SELECT id, action, attempt, ts_ms, stream, line FROM action_logs`.
fn log_record(row: &Row) -> anyhow::Result<LogRecord> {
    Ok(LogRecord {
        id: row.try_get(0)?,
        action: row.try_get(1)?,
        attempt: counter(row, 2)?,
        ts_ms: row.try_get(3)?,
        stream: row.try_get(4)?,
        line: row.try_get(5)?,
    })
}

fn event_from_row(row: &Row) -> anyhow::Result<EventRecord> {
    Ok(EventRecord {
        seq: row.try_get(0)?,
        ts_ms: row.try_get(1)?,
        execution: row.try_get(2)?,
        pipeline: row.try_get(3)?,
        kind: row.try_get(4)?,
        name: row.try_get(5)?,
        state: row.try_get(6)?,
        detail: row.try_get(7)?,
    })
}

/// The `postgres` client owns a runtime, which must not be dropped on a
/// tokio worker (it panics there): close the sessions on a thread.
impl Drop for PostgresStore {
    fn drop(&mut self) {
        let idle = std::mem::take(&mut self.pool().idle);
        std::thread::spawn(move || drop(idle)).join().ok();
    }
}

/// How many sessions one process opens at most. Calls from concurrent
/// executions run side by side up to this many; the next waits for one.
pub const POOL_SIZE: usize = 8;

/// The sessions of one process.
#[derive(Default)]
struct Pool {
    /// Sessions nobody uses now.
    idle: Vec<Client>,
    /// Sessions open or being opened, lent or idle.
    open: usize,
}

/// A session lent to one caller; given back (or, closed, forgotten) when
/// dropped. Drop it off the tokio runtime.
struct Lent<'a> {
    store: &'a PostgresStore,
    client: Option<Client>,
}

impl Lent<'_> {
    fn client(&mut self) -> &mut Client {
        self.client.as_mut().expect("lent until dropped")
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        let mut pool = self.store.pool();
        match self.client.take() {
            Some(client) if !client.is_closed() => pool.idle.push(client),
            closed => {
                pool.open -= 1;
                drop(pool);
                drop(closed);
            }
        }
        self.store.freed.notify_one();
    }
}

/// Run `work` on a scoped thread: outside any tokio runtime.
fn off_runtime<T: Send>(work: impl FnOnce() -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(work)
            .join()
            .map_err(|_| anyhow::anyhow!("the database thread panicked"))?
    })
}

impl GateStore for PostgresStore {
    fn join_gate(
        &self,
        pipeline: &str,
        stage: &str,
        execution: &str,
        supersede: bool,
    ) -> anyhow::Result<()> {
        self.with(|db| {
            let mut tx = db.transaction()?;
            lock_gate(&mut tx, pipeline, stage)?;
            let joined = tx.execute(
                "INSERT INTO gate_places (pipeline, stage, execution_id, state) VALUES ($1, $2, $3, 'waiting') ON CONFLICT DO NOTHING",
                &[&pipeline, &stage, &execution],
            )?;
            if joined == 1 && supersede {
                // As SQLite's: not the first in line of an empty stage.
                let sql = format!("UPDATE gate_places SET state = 'superseded' WHERE pipeline = $1 AND stage = $2 AND execution_id <> $3 AND state = 'waiting' AND {SUPERSEDABLE}");
                let superseded = tx.execute(&sql, &[&pipeline, &stage, &execution])?;
                // The superseded may wait in another process: tell it now.
                if superseded > 0 {
                    tx.query(
                        "SELECT pg_notify($1, $2)",
                        &[&signals::CHANNEL, &signals::GATES],
                    )?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn try_enter_gate(
        &self,
        pipeline: &str,
        stage: &str,
        execution: &str,
        one_at_a_time: bool,
    ) -> anyhow::Result<GateTry> {
        self.with(|db| {
            let mut tx = db.transaction()?;
            lock_gate(&mut tx, pipeline, stage)?;
            let key: [&(dyn ToSql + Sync); 3] = [&pipeline, &stage, &execution];
            let place: Option<String> = tx
                .query_opt(
                    "SELECT state FROM gate_places WHERE pipeline = $1 AND stage = $2 AND execution_id = $3",
                    &key,
                )?
                .map(|row| row.try_get(0))
                .transpose()?;
            let remove = "DELETE FROM gate_places WHERE pipeline = $1 AND stage = $2 AND execution_id = $3";
            let entry = match place.as_deref() {
                Some("inside") => GateTry::Entered,
                Some("superseded") => {
                    tx.execute(remove, &key)?;
                    GateTry::Superseded
                }
                _ if !one_at_a_time => {
                    tx.execute(remove, &key)?;
                    GateTry::Entered
                }
                _ => {
                    if place.is_none() {
                        tx.execute("INSERT INTO gate_places (pipeline, stage, execution_id, state) VALUES ($1, $2, $3, 'waiting')", &key)?;
                    }
                    let occupied: bool = tx
                        .query_one(&format!("SELECT EXISTS (SELECT 1 {LIVE_PLACES} AND g.pipeline = $1 AND g.stage = $2 AND g.state = 'inside' AND g.execution_id <> $3)"), &key)?
                        .try_get(0)?;
                    let first: Option<String> = tx
                        .query_opt(&format!("SELECT g.execution_id {LIVE_PLACES} AND g.pipeline = $1 AND g.stage = $2 AND g.state = 'waiting' ORDER BY g.seq LIMIT 1"), &[&pipeline, &stage])?
                        .map(|row| row.try_get(0))
                        .transpose()?;
                    if occupied || first.as_deref() != Some(execution) {
                        GateTry::Wait
                    } else {
                        tx.execute("UPDATE gate_places SET state = 'inside' WHERE pipeline = $1 AND stage = $2 AND execution_id = $3", &key)?;
                        GateTry::Entered
                    }
                }
            };
            tx.commit()?;
            Ok(entry)
        })
    }

    fn leave_gate_line(&self, pipeline: &str, stage: &str, execution: &str) -> anyhow::Result<()> {
        self.query(
            "WITH gone AS (DELETE FROM gate_places WHERE pipeline = $1 AND stage = $2 AND execution_id = $3 AND state <> 'inside' RETURNING 1)
             SELECT pg_notify($4, $5) FROM (SELECT 1 FROM gone LIMIT 1) AS place_left",
            &[&pipeline, &stage, &execution, &signals::CHANNEL, &signals::GATES],
        )?;
        Ok(())
    }

    fn gate_waiting(&self, pipeline: &str) -> anyhow::Result<usize> {
        let row = self.query(
            &format!("SELECT COUNT(*) {LIVE_PLACES} AND g.pipeline = $1 AND g.state = 'waiting'"),
            &[&pipeline],
        )?;
        let count: i64 = row[0].try_get(0)?;
        Ok(count as usize)
    }
}

impl AttemptQueue for PostgresStore {
    fn queue_attempt(&self, key: &str, execution: &str, payload: &str) -> anyhow::Result<()> {
        // The notification goes out with the row's commit, in the same round trip.
        self.query(
            "WITH queued AS (
                 INSERT INTO attempts (key, execution_id, payload, state, queued_ms) VALUES ($1, $2, $3, 'queued', $4)
                 ON CONFLICT (key) DO UPDATE SET state = 'queued', payload = excluded.payload, worker = NULL, result = NULL, lease_until_ms = NULL
                 WHERE attempts.state = 'cancelled'
                 RETURNING key)
             SELECT pg_notify($5, $6) FROM queued",
            &[&key, &execution, &payload, &sluice_core::units::now_ms(), &signals::CHANNEL, &signals::QUEUED],
        )?;
        self.signals.announce(signals::QUEUED);
        Ok(())
    }

    fn claim_attempt(
        &self,
        worker: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> anyhow::Result<Option<ClaimedAttempt>> {
        // SKIP LOCKED: workers claiming at once each take a different row
        // instead of queueing behind one another's lock.
        let rows = self.query(
            "UPDATE attempts SET state = 'running', worker = $1, fence = fence + 1, lease_until_ms = $3
             WHERE key = (SELECT key FROM attempts
                          WHERE state = 'queued' OR (state = 'running' AND lease_until_ms < $2)
                          ORDER BY ord LIMIT 1 FOR UPDATE SKIP LOCKED)
             RETURNING key, execution_id, payload, fence",
            &[&worker, &now_ms, &until_ms],
        )?;
        Ok(rows.first().map(|row| ClaimedAttempt {
            key: row.get(0),
            execution: row.get(1),
            payload: row.get(2),
            fence: row.get(3),
        }))
    }

    fn renew_attempt(&self, key: &str, fence: i64, until_ms: i64) -> anyhow::Result<bool> {
        let changed = self.execute(
            "UPDATE attempts SET lease_until_ms = $3 WHERE key = $1 AND fence = $2 AND state = 'running'",
            &[&key, &fence, &until_ms],
        )?;
        Ok(changed == 1)
    }

    fn complete_attempt(&self, key: &str, fence: i64, result: &str) -> anyhow::Result<bool> {
        let done = signals::done(key);
        let changed = self.query(
            "WITH done AS (
                 UPDATE attempts SET state = 'done', result = $3, lease_until_ms = NULL WHERE key = $1 AND fence = $2 AND state = 'running'
                 RETURNING key)
             SELECT pg_notify($4, $5) FROM done",
            &[&key, &fence, &result, &signals::CHANNEL, &done],
        )?;
        self.signals.announce(&done);
        Ok(changed.len() == 1)
    }

    fn queued_attempt(&self, key: &str) -> anyhow::Result<Option<QueuedAttempt>> {
        let rows = self.query(
            "SELECT state, worker, fence, result FROM attempts WHERE key = $1",
            &[&key],
        )?;
        rows.first()
            .map(|row| {
                Ok(QueuedAttempt {
                    state: AttemptState::parse(row.get(0))?,
                    worker: row.get(1),
                    fence: row.get(2),
                    result: row.get(3),
                })
            })
            .transpose()
    }

    fn cancel_attempt(&self, key: &str) -> anyhow::Result<()> {
        let done = signals::done(key);
        let owner = self.owner.get().map(|o| o.id.as_str());
        self.query(
            "WITH cancelled AS (
                 UPDATE attempts SET state = 'cancelled', lease_until_ms = NULL WHERE key = $1 AND state IN ('queued', 'running')
                   AND ($4::TEXT IS NULL OR NOT EXISTS (SELECT 1 FROM executions e WHERE e.id = attempts.execution_id AND e.owner <> $4))
                 RETURNING key)
             SELECT pg_notify($2, $3) FROM cancelled",
            &[&key, &signals::CHANNEL, &done, &owner],
        )?;
        self.signals.announce(&done);
        Ok(())
    }

    fn forget_attempts(&self, execution: &str) -> anyhow::Result<()> {
        self.execute(
            "DELETE FROM attempts WHERE execution_id = $1 AND state IN ('done', 'cancelled')",
            &[&execution],
        )?;
        Ok(())
    }

    fn signals(&self) -> Arc<StoreSignals> {
        let url = self.url.clone();
        let signals = Arc::downgrade(&self.signals);
        self.listening.call_once(|| {
            let started = std::thread::Builder::new()
                .name("sluice-listen".into())
                .spawn(move || listen_for_signals(&url, &signals));
            if let Err(e) = started {
                tracing::warn!("not listening for attempts (waiters poll): {e}");
            }
        });
        self.signals.clone()
    }
}

/// Refuse a write to `execution` when another process holds it now (see
/// SQLite's). The row lock taken here holds off a claim until the write commits.
fn held_by_us(
    db: &mut impl GenericClient,
    owner: Option<&Owner>,
    execution: &str,
) -> anyhow::Result<()> {
    let Some(owner) = owner else {
        return Ok(());
    };
    let rows = db.query(
        "SELECT owner FROM executions WHERE id = $1 FOR UPDATE",
        &[&execution],
    )?;
    let holder: Option<String> = match rows.first() {
        Some(row) => row.try_get(0)?,
        None => None,
    };
    match holder {
        Some(holder) if holder != owner.id => Err(lease_lost(execution, &holder)),
        _ => Ok(()),
    }
}

/// Remove the places `execution` holds at stage gates (see SQLite's).
fn leave_gates(
    db: &mut impl GenericClient,
    execution: &str,
    stage: Option<&str>,
) -> anyhow::Result<()> {
    // Only a place that existed wakes other processes' waiters: a stage of a
    // pipeline that runs in parallel leaves nothing and notifies nobody.
    const NOTIFY: &str = "SELECT pg_notify($1, $2) FROM (SELECT 1 FROM gone LIMIT 1) AS place_left";
    const AT_STAGE: &str =
        "WITH gone AS (DELETE FROM gate_places WHERE execution_id = $3 AND stage = $4 RETURNING 1)";
    const ANYWHERE: &str =
        "WITH gone AS (DELETE FROM gate_places WHERE execution_id = $3 RETURNING 1)";
    let channel = (signals::CHANNEL, signals::GATES);
    match stage {
        Some(stage) => db.query(
            &format!("{AT_STAGE} {NOTIFY}"),
            &[&channel.0, &channel.1, &execution, &stage],
        )?,
        None => db.query(
            &format!("{ANYWHERE} {NOTIFY}"),
            &[&channel.0, &channel.1, &execution],
        )?,
    };
    Ok(())
}

/// Which waiting places a newcomer supersedes (see SQLite's).
const SUPERSEDABLE: &str = "(EXISTS (SELECT 1 FROM gate_places g JOIN executions e ON e.id = g.execution_id WHERE e.status = 'InProgress' AND g.pipeline = $1 AND g.stage = $2 AND g.state = 'inside')
  OR gate_places.seq > (SELECT MIN(g.seq) FROM gate_places g JOIN executions e ON e.id = g.execution_id WHERE e.status = 'InProgress' AND g.pipeline = $1 AND g.stage = $2 AND g.state = 'waiting'))";

/// Places at a gate that count: those of executions still in progress.
const LIVE_PLACES: &str =
    "FROM gate_places g JOIN executions e ON e.id = g.execution_id WHERE e.status = 'InProgress'";

/// Serialize every change at one gate across processes, to the commit: the
/// line's order and "nobody inside" are read and acted on as one step.
fn lock_gate(db: &mut impl GenericClient, pipeline: &str, stage: &str) -> anyhow::Result<()> {
    db.execute(
        "SELECT pg_advisory_xact_lock(hashtext('gate/' || $1 || '/' || $2))",
        &[&pipeline, &stage],
    )?;
    Ok(())
}

/// The advisory lock event inserts hold until their transaction commits.
const EVENTS_LOCK: i64 = 0x736c_7569_6365_0001;

/// Insert an (already masked) event inside a transaction; returns it with its
/// sequence number. The lock, held to the commit, makes sequence order commit
/// order across every process on the database: a reader that has seen event
/// N never sees an event below N appear later (the SSE stream and the
/// notification cursor both resume "after N").
fn insert_event(
    db: &mut impl GenericClient,
    mut event: EventRecord,
) -> anyhow::Result<EventRecord> {
    db.execute("SELECT pg_advisory_xact_lock($1)", &[&EVENTS_LOCK])?;
    // Other servers' event streams are woken at commit (see `signals`).
    let row = db.query_one(
        "WITH inserted AS (INSERT INTO events (ts_ms, execution_id, pipeline, kind, name, state, detail) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING seq)
         SELECT seq, pg_notify($8, $9) FROM inserted",
        &[&event.ts_ms, &event.execution, &event.pipeline, &event.kind, &event.name, &event.state, &event.detail, &signals::EVENTS_CHANNEL, &signals::EVENTS],
    )?;
    event.seq = row.try_get(0)?;
    Ok(event)
}

/// Record a new execution as InProgress: ($1 id, $2 pipeline, $3 file, $4
/// status, $5 start, $6 variables, $7 trigger, $8 owner, $9 lease end).
const INSERT_EXECUTION: &str = "INSERT INTO executions (id, pipeline, pipeline_file, status, started_ms, variables, trigger, owner, lease_until_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

fn collect<T>(rows: Vec<Row>, read: impl Fn(&Row) -> anyhow::Result<T>) -> anyhow::Result<Vec<T>> {
    rows.iter().map(read).collect()
}

impl ExecutionStore for PostgresStore {
    fn open_continuation(&self, stored: &str) -> anyhow::Result<String> {
        self.sealer.open(stored)
    }

    fn start_execution(
        &self,
        id: &str,
        pipeline: &str,
        file: &Path,
        variables: &serde_json::Value,
        trigger: &serde_json::Value,
        now_ms: i64,
    ) -> anyhow::Result<()> {
        // The lease ends by the database's clock; `now_ms` only dates the start.
        let (owner, until) = lease(self.owner.get(), self.clock_ms());
        self.execute(
            INSERT_EXECUTION,
            &[
                &id,
                &pipeline,
                &file.display().to_string(),
                &Status::InProgress.name(),
                &now_ms,
                &variables.to_string(),
                &trigger.to_string(),
                &owner,
                &until,
            ],
        )?;
        Ok(())
    }

    fn finish_execution(
        &self,
        id: &str,
        end: ExecutionEnd<'_>,
        now_ms: i64,
        event: Option<EventRecord>,
    ) -> anyhow::Result<Option<EventRecord>> {
        self.write_announced_then(
            id,
            "UPDATE executions SET status = $2, error = $3, ended_ms = $4, rollback_stage = $5 WHERE id = $1",
            &[&id, &end.status.name(), &end.error, &now_ms, &end.rollback],
            event,
            |tx| leave_gates(tx, id, None),
        )
    }

    fn pending_rollbacks(&self) -> anyhow::Result<Vec<(String, String)>> {
        let rows = self.query(
            "SELECT id, rollback_stage FROM executions WHERE rollback_stage IS NOT NULL AND pipeline_version IS NOT NULL ORDER BY ended_ms",
            &[],
        )?;
        collect(rows, |row| Ok((row.try_get(0)?, row.try_get(1)?)))
    }

    fn start_asked_rollback(
        &self,
        asked_by: &str,
        id: &str,
        pipeline: &str,
        file: &Path,
        variables: &serde_json::Value,
        trigger: &serde_json::Value,
        now_ms: i64,
    ) -> anyhow::Result<bool> {
        let (owner, until) = lease(self.owner.get(), self.clock_ms());
        self.with(|db| {
            let mut transaction = db.transaction()?;
            let taken = transaction.execute(
                "UPDATE executions SET rollback_stage = NULL WHERE id = $1 AND rollback_stage IS NOT NULL",
                &[&asked_by],
            )?;
            if taken == 0 {
                return Ok(false);
            }
            transaction.execute(
                INSERT_EXECUTION,
                &[&id, &pipeline, &file.display().to_string(), &Status::InProgress.name(), &now_ms, &variables.to_string(), &trigger.to_string(), &owner, &until],
            )?;
            transaction.commit()?;
            Ok(true)
        })
    }

    fn drop_rollback(&self, execution: &str) -> anyhow::Result<()> {
        self.execute(
            "UPDATE executions SET rollback_stage = NULL WHERE id = $1",
            &[&execution],
        )?;
        Ok(())
    }

    fn start_stage(
        &self,
        execution: &str,
        stage: &str,
        position: usize,
        now_ms: i64,
        event: Option<EventRecord>,
    ) -> anyhow::Result<Option<EventRecord>> {
        self.write_announced(
            execution,
            "INSERT INTO stage_runs (execution_id, stage, position, status, started_ms) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (execution_id, stage) DO UPDATE SET position = excluded.position, status = excluded.status, started_ms = excluded.started_ms, ended_ms = NULL, error = NULL",
            &[&execution, &stage, &sql_count(position), &Status::InProgress.name(), &now_ms],
            event,
        )
    }

    fn finish_stage(
        &self,
        execution: &str,
        stage: &str,
        status: Status,
        error: Option<&str>,
        now_ms: i64,
        event: Option<EventRecord>,
    ) -> anyhow::Result<Option<EventRecord>> {
        self.write_announced_then(
            execution,
            "UPDATE stage_runs SET status = $3, error = $4, ended_ms = $5 WHERE execution_id = $1 AND stage = $2",
            &[&execution, &stage, &status.name(), &error, &now_ms],
            event,
            |tx| leave_gates(tx, execution, Some(stage)),
        )
    }

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
    ) -> anyhow::Result<Option<EventRecord>> {
        // Like SQLite's INSERT OR REPLACE: a rerun starts from a clean row.
        self.write_announced(
            execution,
            "INSERT INTO action_runs (execution_id, stage, action, run_order, plugin, status, started_ms, resolved_config) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (execution_id, action) DO UPDATE SET stage = excluded.stage, run_order = excluded.run_order, plugin = excluded.plugin, status = excluded.status,
               started_ms = excluded.started_ms, resolved_config = excluded.resolved_config, attempts = 0, ended_ms = NULL, summary = NULL, error = NULL,
               variables = '[]', outputs = '[]', percent = NULL, progress = NULL, continuation = NULL, continue_at_ms = NULL",
            &[&execution, &stage, &action, &i64::from(run_order), &plugin, &Status::InProgress.name(), &now_ms, &serde_json::to_string(resolved_config)?],
            event,
        )
    }

    fn finish_action(
        &self,
        execution: &str,
        action: &str,
        end: &ActionEnd<'_>,
        now_ms: i64,
        event: Option<EventRecord>,
    ) -> anyhow::Result<Option<EventRecord>> {
        self.write_announced(
            execution,
            "UPDATE action_runs SET status = $3, attempts = $4, summary = $5, error = $6, variables = $7, outputs = $8, ended_ms = $9, continuation = NULL, continue_at_ms = NULL WHERE execution_id = $1 AND action = $2",
            &[
                &execution,
                &action,
                &end.status.name(),
                &i64::from(end.attempts),
                &end.summary,
                &end.error,
                &serde_json::to_string(end.variables)?,
                &serde_json::to_string(end.outputs)?,
                &now_ms,
            ],
            event,
        )
    }

    fn append_logs(
        &self,
        execution: &str,
        action: &str,
        attempt: u32,
        claim: Option<AttemptClaim<'_>>,
        lines: &[LogLine],
    ) -> anyhow::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let owner = self.owner.get();
        self.with(|db| {
            let mut transaction = db.transaction()?;
            held_by_us(&mut transaction, owner, execution)?;
            if let Some(claim) = claim {
                // Shared: a worker claiming it meanwhile skips it until this commits.
                let held = transaction.query(
                    "SELECT 1 FROM attempts WHERE key = $1 AND fence = $2 AND state = 'running' FOR SHARE",
                    &[&claim.key, &claim.fence],
                )?;
                if held.is_empty() {
                    return Err(claim_lost(claim));
                }
            }
            // One writer of an action's lines at a time keeps `seq` dense.
            transaction.execute(
                "SELECT pg_advisory_xact_lock(hashtext($1 || '/' || $2))",
                &[&execution, &action],
            )?;
            let next: i64 = transaction
                .query_one(
                    "SELECT COALESCE(MAX(seq) + 1, 0) FROM action_logs WHERE execution_id = $1 AND action = $2",
                    &[&execution, &action],
                )?
                .get(0);
            let insert = transaction.prepare(
                "INSERT INTO action_logs (execution_id, action, attempt, seq, ts_ms, stream, line) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )?;
            for (i, line) in lines.iter().enumerate() {
                transaction.execute(
                    &insert,
                    &[&execution, &action, &i64::from(attempt), &(next + i as i64), &line.timestamp_ms, &line.stream, &line.text],
                )?;
            }
            transaction.commit()?;
            Ok(())
        })
    }

    fn list_executions(
        &self,
        filter: &ExecutionFilter<'_>,
    ) -> anyhow::Result<Vec<ExecutionRecord>> {
        let rows = self.query(
            &format!(
                "SELECT {EXECUTION_COLUMNS} FROM executions
                 WHERE ($1::TEXT IS NULL OR pipeline = $1) AND ($2::TEXT IS NULL OR status = $2)
                 ORDER BY started_ms DESC, ord DESC LIMIT $3 OFFSET $4"
            ),
            &[
                &filter.pipeline,
                &filter.status,
                &sql_count(filter.limit),
                &sql_count(filter.offset),
            ],
        )?;
        collect(rows, execution_from_row)
    }

    fn execution(&self, id_or_prefix: &str) -> anyhow::Result<Option<ExecutionRecord>> {
        // A prefix is matched literally: escape LIKE's wildcards.
        let pattern = format!(
            "{}%",
            id_or_prefix
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        let rows = self.query(
            &format!(
                "SELECT {EXECUTION_COLUMNS} FROM executions
                 WHERE id = $1 OR id LIKE $2 ORDER BY (id = $1) DESC LIMIT 2"
            ),
            &[&id_or_prefix, &pattern],
        )?;
        let rows = collect(rows, execution_from_row)?;
        match rows.as_slice() {
            [] => Ok(None),
            [only] => Ok(Some(only.clone())),
            [first, ..] if first.id == id_or_prefix => Ok(Some(first.clone())),
            _ => anyhow::bail!(
                "execution id prefix `{id_or_prefix}` is ambiguous; give more characters"
            ),
        }
    }

    fn stages(&self, execution: &str) -> anyhow::Result<Vec<StageRecord>> {
        let rows = self.query(
            "SELECT stage, status, started_ms, ended_ms, error FROM stage_runs WHERE execution_id = $1 ORDER BY position",
            &[&execution],
        )?;
        collect(rows, |row| {
            Ok(StageRecord {
                stage: row.try_get(0)?,
                status: status(row, 1)?,
                started_ms: row.try_get(2)?,
                ended_ms: row.try_get(3)?,
                error: row.try_get(4)?,
            })
        })
    }

    fn actions(&self, execution: &str) -> anyhow::Result<Vec<ActionRecord>> {
        let rows = self.query(
            "SELECT a.stage, action, run_order, plugin, a.status, attempts, a.started_ms, a.ended_ms, resolved_config, summary, a.error, variables, outputs, percent, progress, continuation, continue_at_ms
             FROM action_runs a LEFT JOIN stage_runs s ON s.execution_id = a.execution_id AND s.stage = a.stage
             WHERE a.execution_id = $1 ORDER BY s.position, run_order, a.started_ms, action",
            &[&execution],
        )?;
        collect(rows, |row| {
            let percent: Option<i64> = row.try_get(13)?;
            Ok(ActionRecord {
                stage: row.try_get(0)?,
                action: row.try_get(1)?,
                run_order: counter(row, 2)?,
                plugin: row.try_get(3)?,
                status: status(row, 4)?,
                attempts: counter(row, 5)?,
                started_ms: row.try_get(6)?,
                ended_ms: row.try_get(7)?,
                resolved_config: json_column(row, 8, "action_runs.resolved_config")?,
                summary: row.try_get(9)?,
                error: row.try_get(10)?,
                variables: json_column(row, 11, "action_runs.variables")?,
                outputs: json_column(row, 12, "action_runs.outputs")?,
                percent: percent.map(|p| p.clamp(0, 100) as u8),
                progress: row.try_get(14)?,
                continuation: row.try_get(15)?,
                continue_at_ms: row.try_get(16)?,
            })
        })
    }

    fn logs(&self, execution: &str, action: Option<&str>) -> anyhow::Result<Vec<LogRecord>> {
        let rows = self.query(
            "SELECT id, action, attempt, ts_ms, stream, line FROM action_logs
             WHERE execution_id = $1 AND ($2::TEXT IS NULL OR action = $2) ORDER BY ts_ms, action, seq",
            &[&execution, &action],
        )?;
        collect(rows, log_record)
    }

    fn logs_after(
        &self,
        execution: &str,
        action: Option<&str>,
        after: i64,
        limit: usize,
    ) -> anyhow::Result<Vec<LogRecord>> {
        let rows = self.query(
            "SELECT id, action, attempt, ts_ms, stream, line FROM action_logs
             WHERE execution_id = $1 AND ($2::TEXT IS NULL OR action = $2) AND id > $3
             ORDER BY id LIMIT $4",
            &[&execution, &action, &after, &sql_count(limit)],
        )?;
        collect(rows, log_record)
    }

    fn set_execution_version(&self, id: &str, version: i64) -> anyhow::Result<()> {
        self.write_held(
            id,
            "UPDATE executions SET pipeline_version = $2 WHERE id = $1",
            &[&id, &version],
        )?;
        Ok(())
    }

    fn fail_execution(&self, id: &str, reason: &str, now_ms: i64) -> anyhow::Result<()> {
        let owner = self.owner.get();
        self.with(|db| {
            let mut transaction = db.transaction()?;
            held_by_us(&mut transaction, owner, id)?;
            for table in ["action_runs", "stage_runs"] {
                transaction.execute(
                    &format!("UPDATE {table} SET status = 'Failed', error = $2, ended_ms = $3 WHERE execution_id = $1 AND status = 'InProgress'"),
                    &[&id, &reason, &now_ms],
                )?;
            }
            transaction.execute(
                "UPDATE executions SET status = 'Failed', error = $2, ended_ms = $3 WHERE id = $1",
                &[&id, &reason, &now_ms],
            )?;
            leave_gates(&mut transaction, id, None)?;
            transaction.commit()?;
            Ok(())
        })
    }

    fn set_continuation(
        &self,
        execution: &str,
        action: &str,
        token: &str,
        due_ms: i64,
        summary: &str,
    ) -> anyhow::Result<()> {
        let token = self.sealer.seal(token)?;
        self.write_held(
            execution,
            "UPDATE action_runs SET continuation = $3, continue_at_ms = $4, summary = $5 WHERE execution_id = $1 AND action = $2",
            &[&execution, &action, &token, &due_ms, &summary],
        )?;
        Ok(())
    }

    fn set_progress(
        &self,
        execution: &str,
        action: &str,
        claim: Option<AttemptClaim<'_>>,
        percent: u8,
        message: &str,
    ) -> anyhow::Result<()> {
        let (key, fence) = (claim.map(|c| c.key), claim.map(|c| c.fence));
        self.write_held(
            execution,
            "UPDATE action_runs SET percent = $3, progress = $4 WHERE execution_id = $1 AND action = $2
               AND ($5::TEXT IS NULL OR EXISTS (SELECT 1 FROM attempts WHERE key = $5 AND fence = $6 AND state = 'running'))",
            &[&execution, &action, &i64::from(percent), &message, &key, &fence],
        )?;
        Ok(())
    }

    fn in_progress(&self, pipeline: &str) -> anyhow::Result<usize> {
        let rows = self.query(
            "SELECT COUNT(*) FROM executions WHERE pipeline = $1 AND status IN ('InProgress', 'Stopping')",
            &[&pipeline],
        )?;
        let count: i64 = rows[0].try_get(0)?;
        Ok(count as usize)
    }

    fn set_execution_status(&self, id: &str, status: Status) -> anyhow::Result<()> {
        self.write_held(
            id,
            "UPDATE executions SET status = $2 WHERE id = $1",
            &[&id, &status.name()],
        )?;
        Ok(())
    }

    fn reopen_execution(&self, id: &str) -> anyhow::Result<bool> {
        // Whoever retries a finished execution runs it, so it holds it now.
        let (owner, until) = lease(self.owner.get(), self.clock_ms());
        let changed = self.execute(
            "UPDATE executions SET status = 'InProgress', error = NULL, ended_ms = NULL, owner = $2, lease_until_ms = $3
             WHERE id = $1 AND status NOT IN ('InProgress', 'Stopping')",
            &[&id, &owner, &until],
        )?;
        Ok(changed == 1)
    }

    fn execution_counts(&self) -> anyhow::Result<Vec<(String, i64)>> {
        let rows = self.query(
            "SELECT status, COUNT(*) FROM executions GROUP BY status ORDER BY status",
            &[],
        )?;
        collect(rows, |row| Ok((row.try_get(0)?, row.try_get(1)?)))
    }

    fn latest_execution(&self) -> anyhow::Result<Option<String>> {
        let rows = self.query(
            "SELECT id FROM executions ORDER BY started_ms DESC, ord DESC LIMIT 1",
            &[],
        )?;
        rows.first().map(|row| Ok(row.try_get(0)?)).transpose()
    }

    fn oldest_running_start(&self) -> anyhow::Result<Option<i64>> {
        let rows = self.query(
            "SELECT MIN(started_ms) FROM executions WHERE status IN ('InProgress', 'Stopping')",
            &[],
        )?;
        Ok(rows[0].try_get(0)?)
    }
}

impl LeaseStore for PostgresStore {
    fn lease_as(&self, owner: Owner) {
        let _ = self.owner.set(owner);
    }

    fn clock_ms(&self) -> i64 {
        self.clock.now_ms(|| {
            let rows = self.query(
                "SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT",
                &[],
            )?;
            Ok(rows[0].try_get(0)?)
        })
    }

    fn claim_execution(
        &self,
        id: &str,
        owner: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> anyhow::Result<bool> {
        let changed = self.execute(
            "UPDATE executions SET owner = $2, lease_until_ms = $4 WHERE id = $1 AND status = 'InProgress'
               AND (owner IS NULL OR owner = $2 OR lease_until_ms IS NULL OR lease_until_ms < $3)",
            &[&id, &owner, &now_ms, &until_ms],
        )?;
        Ok(changed == 1)
    }

    fn renew_leases(&self, owner: &str, until_ms: i64) -> anyhow::Result<u64> {
        self.execute(
            "UPDATE executions SET lease_until_ms = $2 WHERE owner = $1 AND status IN ('InProgress', 'Stopping')",
            &[&owner, &until_ms],
        )
    }

    fn lease_holder(&self, execution: &str) -> anyhow::Result<Option<String>> {
        let rows = self.query("SELECT owner FROM executions WHERE id = $1", &[&execution])?;
        Ok(rows.first().and_then(|row| row.get(0)))
    }

    fn request_stop(&self, execution: &str, request: &str) -> anyhow::Result<bool> {
        let changed = self.execute(
            "UPDATE executions SET stop_request = $2 WHERE id = $1 AND status = 'InProgress'",
            &[&execution, &request],
        )?;
        Ok(changed == 1)
    }

    fn stop_requests(&self, owner: &str) -> anyhow::Result<Vec<(String, String)>> {
        let rows = self.query(
            "SELECT id, stop_request FROM executions WHERE owner = $1 AND status = 'InProgress' AND stop_request IS NOT NULL",
            &[&owner],
        )?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    fn hold_admission<'a>(&'a self, pipeline: &str) -> anyhow::Result<AdmissionHold<'a>> {
        // A session lock, on a session kept for it until the hold ends: the
        // calls that count and start (on other sessions) commit while it is
        // held. The caller holds its own in-process lock meanwhile, so one
        // session at most is kept here. Ended sessions release it too.
        let key = format!("admission/{pipeline}");
        let lent = off_runtime(|| {
            let mut lent = self.lend()?;
            lent.client()
                .execute("SELECT pg_advisory_lock(hashtext($1))", &[&key])?;
            Ok(lent)
        })?;
        Ok(AdmissionHold::new(move || {
            let released = off_runtime(move || {
                let mut lent = lent;
                let unlock = "SELECT pg_advisory_unlock(hashtext($1))";
                lent.client().execute(unlock, &[&key])?;
                Ok(())
            });
            if let Err(e) = released {
                tracing::warn!("releasing an admission lock: {e:#}");
            }
        }))
    }

    fn unleased_executions(
        &self,
        owner: &str,
        now_ms: i64,
        own: bool,
    ) -> anyhow::Result<Vec<String>> {
        let rows = self.query(
            "SELECT id FROM executions WHERE status = 'InProgress'
               AND (owner IS NULL OR lease_until_ms IS NULL OR lease_until_ms < $2 OR ($3 AND owner = $1))
             ORDER BY started_ms, ord",
            &[&owner, &now_ms, &own],
        )?;
        collect(rows, |row| Ok(row.try_get(0)?))
    }
}

impl PipelineStore for PostgresStore {
    fn put_pipeline(&self, name: &str, source: &str, now_ms: i64) -> anyhow::Result<i64> {
        self.with(|db| {
            let mut transaction = db.transaction()?;
            // Two registrations at once must not take the same version.
            transaction.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&name])?;
            let version: i64 = transaction
                .query_one(
                    "SELECT COALESCE(MAX(version), 0) + 1 FROM pipelines WHERE name = $1",
                    &[&name],
                )?
                .get(0);
            transaction.execute(
                "INSERT INTO pipelines (name, version, source, created_ms) VALUES ($1, $2, $3, $4)",
                &[&name, &version, &source, &now_ms],
            )?;
            // Re-registering a deleted pipeline brings it back with a new version.
            transaction.execute(
                "UPDATE pipelines SET deleted = FALSE WHERE name = $1",
                &[&name],
            )?;
            transaction.commit()?;
            Ok(version)
        })
    }

    fn pipeline(&self, name: &str, version: Option<i64>) -> anyhow::Result<Option<PipelineRecord>> {
        let rows = self.query(
            "SELECT name, version, source, created_ms FROM pipelines
             WHERE name = $1 AND NOT deleted AND ($2::BIGINT IS NULL OR version = $2) ORDER BY version DESC LIMIT 1",
            &[&name, &version],
        )?;
        rows.first().map(pipeline_from_row).transpose()
    }

    fn pipelines(&self) -> anyhow::Result<Vec<PipelineRecord>> {
        let rows = self.query(
            "SELECT DISTINCT ON (name) name, version, source, created_ms FROM pipelines
             WHERE NOT deleted ORDER BY name, version DESC",
            &[],
        )?;
        collect(rows, pipeline_from_row)
    }

    fn delete_pipeline(&self, name: &str) -> anyhow::Result<bool> {
        let changed = self.execute(
            "UPDATE pipelines SET deleted = TRUE WHERE name = $1 AND NOT deleted",
            &[&name],
        )?;
        Ok(changed > 0)
    }

    fn set_transition(
        &self,
        pipeline: &str,
        stage: &str,
        disabled: Option<&str>,
        by: &str,
        now_ms: i64,
    ) -> anyhow::Result<()> {
        self.execute(
            "INSERT INTO transitions (pipeline, stage, disabled_reason, changed_by, changed_ms) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (pipeline, stage) DO UPDATE SET disabled_reason = excluded.disabled_reason, changed_by = excluded.changed_by, changed_ms = excluded.changed_ms",
            &[&pipeline, &stage, &disabled, &by, &now_ms],
        )?;
        Ok(())
    }

    fn disabled_transitions(&self) -> anyhow::Result<Vec<(String, String, String)>> {
        let rows = self.query(
            "SELECT pipeline, stage, disabled_reason FROM transitions WHERE disabled_reason IS NOT NULL",
            &[],
        )?;
        collect(rows, |row| {
            Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
        })
    }
}

impl ApprovalStore for PostgresStore {
    fn open_approval(
        &self,
        execution: &str,
        action: &str,
        approvers: &str,
        message: &str,
        expires_ms: i64,
    ) -> anyhow::Result<ApprovalRecord> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        self.execute(
            "INSERT INTO approvals (execution_id, action, token, approvers, message, status, expires_ms) VALUES ($1, $2, $3, $4, $5, 'pending', $6)
             ON CONFLICT (execution_id, action) DO UPDATE SET status = 'pending', token = excluded.token, expires_ms = excluded.expires_ms, decided_by = NULL, decided_ms = NULL, comment = NULL
             WHERE approvals.status IN ('rejected', 'expired')",
            &[&execution, &action, &token, &approvers, &message, &expires_ms],
        )?;
        self.approval(execution, action)?
            .context("approval not recorded")
    }

    fn approval(&self, execution: &str, action: &str) -> anyhow::Result<Option<ApprovalRecord>> {
        let rows = self.query(
            "SELECT execution_id, action, token, approvers, message, status, expires_ms, decided_by, decided_ms, comment
             FROM approvals WHERE execution_id = $1 AND action = $2",
            &[&execution, &action],
        )?;
        rows.first()
            .map(|row| {
                let name: String = row.try_get(5)?;
                Ok(ApprovalRecord {
                    execution_id: row.try_get(0)?,
                    action: row.try_get(1)?,
                    token: row.try_get(2)?,
                    approvers: row.try_get(3)?,
                    message: row.try_get(4)?,
                    status: ApprovalStatus::from_name(&name)
                        .with_context(|| format!("unknown approval status `{name}`"))?,
                    expires_ms: row.try_get(6)?,
                    decided_by: row.try_get(7)?,
                    decided_ms: row.try_get(8)?,
                    comment: row.try_get(9)?,
                })
            })
            .transpose()
    }

    fn decide_approval(
        &self,
        execution: &str,
        action: &str,
        decision: &Decision<'_>,
    ) -> anyhow::Result<bool> {
        let Decision {
            token,
            approve,
            by,
            comment,
            now_ms,
        } = *decision;
        let status = if approve { "approved" } else { "rejected" };
        let changed = self.execute(
            "UPDATE approvals SET status = $4, decided_by = $5, decided_ms = $6, comment = $7
             WHERE execution_id = $1 AND action = $2 AND token = $3 AND status = 'pending'",
            &[&execution, &action, &token, &status, &by, &now_ms, &comment],
        )?;
        Ok(changed == 1)
    }

    fn expire_approval(&self, execution: &str, action: &str) -> anyhow::Result<()> {
        self.execute(
            "UPDATE approvals SET status = 'expired' WHERE execution_id = $1 AND action = $2 AND status = 'pending'",
            &[&execution, &action],
        )?;
        Ok(())
    }
}

impl EventStore for PostgresStore {
    fn mask_with(&self, masker: std::sync::Arc<crate::secrets::Masker>) {
        let _ = self.masker.set(masker);
    }

    fn append_event(&self, mut event: EventRecord) -> anyhow::Result<EventRecord> {
        event.detail = self.mask(&event.detail);
        let owner = self.owner.get();
        self.with(|db| {
            let mut transaction = db.transaction()?;
            held_by_us(&mut transaction, owner, &event.execution)?;
            let stored = insert_event(&mut transaction, event)?;
            transaction.commit()?;
            Ok(stored)
        })
    }

    fn events_after(&self, after_seq: i64, limit: usize) -> anyhow::Result<Vec<EventRecord>> {
        let rows = self.query(
            "SELECT seq, ts_ms, execution_id, pipeline, kind, name, state, detail FROM events WHERE seq > $1 ORDER BY seq LIMIT $2",
            &[&after_seq, &sql_count(limit)],
        )?;
        collect(rows, event_from_row)
    }

    fn rule_events(&self, execution: &str) -> anyhow::Result<Vec<EventRecord>> {
        let rows = self.query(
            "SELECT seq, ts_ms, execution_id, pipeline, kind, name, state, detail FROM events WHERE execution_id = $1 AND kind = 'rule' ORDER BY seq",
            &[&execution],
        )?;
        collect(rows, event_from_row)
    }

    fn notify_cursor(&self) -> anyhow::Result<i64> {
        let rows = self.query("SELECT seq FROM notify_cursor WHERE id = 1", &[])?;
        Ok(match rows.first() {
            Some(row) => row.try_get(0)?,
            None => 0,
        })
    }

    fn set_notify_cursor(&self, seq: i64) -> anyhow::Result<()> {
        self.execute(
            "INSERT INTO notify_cursor (id, seq) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET seq = excluded.seq",
            &[&seq],
        )?;
        Ok(())
    }

    fn last_event_seq(&self) -> anyhow::Result<i64> {
        let rows = self.query("SELECT COALESCE(MAX(seq), 0) FROM events", &[])?;
        Ok(rows[0].try_get(0)?)
    }

    fn hold_notifier(&self, owner: &str, now_ms: i64, until_ms: i64) -> anyhow::Result<bool> {
        let changed = self.execute(
            "INSERT INTO notifier (id, owner, until_ms) VALUES (1, $1, $3)
             ON CONFLICT (id) DO UPDATE SET owner = excluded.owner, until_ms = excluded.until_ms
             WHERE notifier.owner = excluded.owner OR notifier.until_ms < $2",
            &[&owner, &now_ms, &until_ms],
        )?;
        Ok(changed == 1)
    }
}

impl AccessStore for PostgresStore {
    fn add_token(&self, token: &TokenRecord, secret_hash: &str, now_ms: i64) -> anyhow::Result<()> {
        self.execute(
            "INSERT INTO tokens (id, secret_hash, role, pipelines, description, created_ms, expires_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[&token.id, &secret_hash, &token.role, &serde_json::to_string(&token.pipelines)?, &token.description, &now_ms, &token.expires_ms],
        )?;
        Ok(())
    }

    fn tokens(&self) -> anyhow::Result<Vec<(TokenRecord, String)>> {
        let rows = self.query(
            "SELECT id, role, pipelines, description, expires_ms, revoked_ms, secret_hash FROM tokens ORDER BY created_ms, id",
            &[],
        )?;
        collect(rows, |row| {
            let record = TokenRecord {
                id: row.try_get(0)?,
                role: row.try_get(1)?,
                pipelines: json_column(row, 2, "tokens.pipelines")?,
                description: row.try_get(3)?,
                expires_ms: row.try_get(4)?,
                revoked_ms: row.try_get(5)?,
            };
            Ok((record, row.try_get(6)?))
        })
    }

    fn revoke_token(&self, id: &str, now_ms: i64) -> anyhow::Result<bool> {
        let changed = self.execute(
            "UPDATE tokens SET revoked_ms = COALESCE(revoked_ms, $2) WHERE id = $1",
            &[&id, &now_ms],
        )?;
        Ok(changed > 0)
    }

    fn audit(&self, entry: &AuditRecord) -> anyhow::Result<()> {
        let (action, target, result) = (
            self.mask(&entry.action),
            self.mask(&entry.target),
            self.mask(&entry.result),
        );
        self.execute(
            "INSERT INTO audit (ts_ms, actor, action, target, result, pipeline) VALUES ($1, $2, $3, $4, $5, $6)",
            &[&entry.ts_ms, &entry.actor, &action, &target, &result, &entry.pipeline],
        )?;
        Ok(())
    }

    fn audit_log(
        &self,
        after_seq: i64,
        limit: usize,
        scope: Option<&[String]>,
    ) -> anyhow::Result<Vec<AuditRecord>> {
        let scope: Option<Vec<String>> = scope.map(<[String]>::to_vec);
        let rows = self.query(
            "SELECT seq, ts_ms, actor, action, target, result, pipeline FROM audit
             WHERE seq > $1 AND ($3::TEXT[] IS NULL OR pipeline = ANY($3))
             ORDER BY seq LIMIT $2",
            &[&after_seq, &sql_count(limit), &scope],
        )?;
        collect(rows, |row| {
            Ok(AuditRecord {
                seq: row.try_get(0)?,
                ts_ms: row.try_get(1)?,
                actor: row.try_get(2)?,
                action: row.try_get(3)?,
                target: row.try_get(4)?,
                result: row.try_get(5)?,
                pipeline: row.try_get(6)?,
            })
        })
    }
}

impl TriggerStore for PostgresStore {
    fn poll_revision(&self, pipeline: &str, action: &str) -> anyhow::Result<Option<String>> {
        let rows = self.query(
            "SELECT last_revision FROM poll_state WHERE pipeline = $1 AND action = $2",
            &[&pipeline, &action],
        )?;
        rows.first().map(|row| Ok(row.try_get(0)?)).transpose()
    }

    fn swap_poll_revision(
        &self,
        pipeline: &str,
        action: &str,
        from: Option<&str>,
        to: Option<&str>,
        now_ms: i64,
    ) -> anyhow::Result<bool> {
        let changed = match (from, to) {
            (None, Some(to)) => self.execute(
                "INSERT INTO poll_state (pipeline, action, last_revision, polled_ms) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                &[&pipeline, &action, &to, &now_ms],
            )?,
            (Some(from), Some(to)) => self.execute(
                "UPDATE poll_state SET last_revision = $4, polled_ms = $5 WHERE pipeline = $1 AND action = $2 AND last_revision = $3",
                &[&pipeline, &action, &from, &to, &now_ms],
            )?,
            (Some(from), None) => self.execute(
                "DELETE FROM poll_state WHERE pipeline = $1 AND action = $2 AND last_revision = $3",
                &[&pipeline, &action, &from],
            )?,
            (None, None) => 0,
        };
        Ok(changed == 1)
    }

    fn claim_delivery(
        &self,
        pipeline: &str,
        delivery: &str,
        now_ms: i64,
    ) -> anyhow::Result<Option<Option<String>>> {
        self.with(|db| {
            let inserted = db.execute(
                "INSERT INTO webhook_deliveries (pipeline, delivery, received_ms) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&pipeline, &delivery, &now_ms],
            )?;
            if inserted > 0 {
                return Ok(None);
            }
            let row = db.query_one(
                "SELECT execution_id FROM webhook_deliveries WHERE pipeline = $1 AND delivery = $2",
                &[&pipeline, &delivery],
            )?;
            Ok(Some(row.try_get(0)?))
        })
    }

    fn set_delivery_execution(
        &self,
        pipeline: &str,
        delivery: &str,
        execution: &str,
    ) -> anyhow::Result<()> {
        self.execute(
            "UPDATE webhook_deliveries SET execution_id = $3 WHERE pipeline = $1 AND delivery = $2",
            &[&pipeline, &delivery, &execution],
        )?;
        Ok(())
    }

    fn claim_cron_fire(
        &self,
        pipeline: &str,
        expression: &str,
        due_ms: i64,
    ) -> anyhow::Result<bool> {
        let inserted = self.execute(
            "INSERT INTO cron_fires (pipeline, expression, due_ms) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            &[&pipeline, &expression, &due_ms],
        )?;
        Ok(inserted > 0)
    }

    fn release_delivery(&self, pipeline: &str, delivery: &str) -> anyhow::Result<()> {
        self.execute(
            "DELETE FROM webhook_deliveries WHERE pipeline = $1 AND delivery = $2 AND execution_id IS NULL",
            &[&pipeline, &delivery],
        )?;
        Ok(())
    }
}

/// Which executions a retention sweep removes: finished before the cutoff ($1).
const GC_DOOMED: &str = "SELECT id FROM executions WHERE status NOT IN ('InProgress', 'Stopping') AND ended_ms IS NOT NULL AND ended_ms < $1";

impl RetentionStore for PostgresStore {
    fn gc(&self, cutoff_ms: i64) -> anyhow::Result<GcCounts> {
        self.with(|db| {
            let mut transaction = db.transaction()?;
            let mut children = |table: &str| -> anyhow::Result<u64> {
                let sql = format!("DELETE FROM {table} WHERE execution_id IN ({GC_DOOMED})");
                Ok(transaction.execute(&sql, &[&cutoff_ms])?)
            };
            children("attempts")?;
            children("gate_places")?;
            let mut counts = GcCounts {
                log_lines: children("action_logs")?,
                action_runs: children("action_runs")?,
                stage_runs: children("stage_runs")?,
                approvals: children("approvals")?,
                ..GcCounts::default()
            };
            counts.executions = transaction.execute(
                &format!("DELETE FROM executions WHERE id IN ({GC_DOOMED})"),
                &[&cutoff_ms],
            )?;
            // An event the notification loop has not delivered yet stays (see SQLite's).
            counts.events = transaction.execute(
                "DELETE FROM events WHERE ts_ms < $1
                   AND seq <= COALESCE((SELECT seq FROM notify_cursor), seq)",
                &[&cutoff_ms],
            )?;
            counts.webhook_deliveries = transaction.execute(
                "DELETE FROM webhook_deliveries WHERE received_ms < $1",
                &[&cutoff_ms],
            )?;
            counts.audit_rows =
                transaction.execute("DELETE FROM audit WHERE ts_ms < $1", &[&cutoff_ms])?;
            counts.cron_fires =
                transaction.execute("DELETE FROM cron_fires WHERE due_ms < $1", &[&cutoff_ms])?;
            transaction.commit()?;
            Ok(counts)
        })
    }

    fn referenced_digests(&self) -> anyhow::Result<std::collections::HashSet<String>> {
        let rows = self.query("SELECT outputs FROM action_runs", &[])?;
        let mut digests = std::collections::HashSet::new();
        for row in &rows {
            // An unreadable row is an error, not "no outputs" (see SQLite's).
            let outputs: Vec<OutputRecord> = json_column(row, 0, "action_runs.outputs")?;
            digests.extend(outputs.into_iter().map(|o| o.digest));
        }
        Ok(digests)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The database the tests use: `SLUICE_TEST_POSTGRES`, or the local
    /// server this project's machines run (trust auth, database `test`).
    fn test_database() -> String {
        std::env::var("SLUICE_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
    }

    /// A store in a schema of its own, dropped when the test ends.
    struct Scratch {
        store: PostgresStore,
        schema: String,
        _key: tempfile::TempDir,
    }

    impl Scratch {
        fn new() -> Scratch {
            let schema = format!("sluice_test_{}", uuid::Uuid::new_v4().simple());
            admin(&format!("CREATE SCHEMA {schema}"));
            let url = format!("{}?options=-csearch_path%3D{schema}", test_database());
            let key = tempfile::tempdir().unwrap();
            let store = PostgresStore::connect(&url, &key.path().join("continuation.key"))
                .unwrap_or_else(|e| panic!("PostgreSQL at {}: {e:#}", test_database()));
            Scratch {
                store,
                schema,
                _key: key,
            }
        }
    }

    impl Scratch {
        /// `--database` for this scratch schema.
        fn url(&self) -> String {
            format!(
                "{}?options=-csearch_path%3D{}",
                test_database(),
                self.schema
            )
        }

        /// Another process's store on the same schema (its own connection).
        fn second_store(&self) -> (PostgresStore, tempfile::TempDir) {
            let key = tempfile::tempdir().unwrap();
            let store = PostgresStore::connect(&self.url(), &key.path().join("k")).unwrap();
            (store, key)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            admin(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema));
        }
    }

    /// One statement on the test database, outside any store.
    fn admin(sql: &str) {
        let url = test_database();
        let sql = sql.to_string();
        std::thread::spawn(move || {
            let mut client = Client::connect(&url, NoTls).expect("the test database");
            client.batch_execute(&sql).expect("an admin statement");
        })
        .join()
        .unwrap();
    }

    /// Every engine-independent check of the store, on a fresh schema each.
    macro_rules! conformance {
        ($($check:ident),* $(,)?) => {$(
            #[test]
            fn $check() {
                let scratch = Scratch::new();
                super::super::conformance::$check(&scratch.store);
            }
        )*};
    }

    #[test]
    fn admission_is_held_by_one_process_at_a_time() {
        let scratch = Scratch::new();
        let (second, _key) = scratch.second_store();
        super::super::conformance::admission_is_held_by_one_process_at_a_time(
            &scratch.store,
            &second,
        );
    }

    #[test]
    fn concurrent_claimers_never_share_an_attempt() {
        let scratch = Scratch::new();
        let (second, _key) = scratch.second_store();
        super::super::conformance::concurrent_claimers_never_share_an_attempt(
            &scratch.store,
            &second,
        );
    }

    /// Another process queueing or completing an attempt wakes this one's
    /// waiters through LISTEN/NOTIFY (this store never polls here: without
    /// the notification the waits below would run out).
    #[tokio::test(flavor = "multi_thread")]
    async fn another_process_queueing_and_completing_an_attempt_wakes_the_waiters() {
        let scratch = Scratch::new();
        let (other, _key) = scratch.second_store();
        let signals = scratch.store.signals();
        let bound = Duration::from_secs(30);
        // The listening session starts on first use; give it a moment to LISTEN.
        tokio::time::sleep(Duration::from_millis(500)).await;

        let queued = signals.queued().notified();
        tokio::pin!(queued);
        queued.as_mut().enable();
        other.queue_attempt("k1", "e1", "{}").unwrap();
        tokio::time::timeout(bound, queued)
            .await
            .expect("woken by the other process's queueing");

        let done = signals.done("k1");
        let finished = done.notified();
        tokio::pin!(finished);
        finished.as_mut().enable();
        let claim = other.claim_attempt("w", 0, i64::MAX).unwrap().unwrap();
        assert!(other.complete_attempt("k1", claim.fence, "{}").unwrap());
        tokio::time::timeout(bound, finished)
            .await
            .expect("woken by the other process's result");
    }

    /// Another server storing an event wakes this one's event streams at
    /// once; a process that never streams events is not sent them.
    #[tokio::test(flavor = "multi_thread")]
    async fn another_process_storing_an_event_wakes_the_event_streams() {
        let scratch = Scratch::new();
        let (other, _key) = scratch.second_store();
        let signals = scratch.store.signals();
        assert!(!signals.wants_events());
        let woken = signals.events().notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        assert!(signals.wants_events());
        // The listening session starts on first use and LISTENs for events
        // from its next tick.
        tokio::time::sleep(LISTEN_TICK * 2).await;
        let event = EventRecord {
            seq: 0,
            ts_ms: 1,
            execution: "e".into(),
            pipeline: "p".into(),
            kind: "pipeline".into(),
            name: "p".into(),
            state: "STARTED".into(),
            detail: String::new(),
        };
        let stored = other.append_event(event).unwrap();
        tokio::time::timeout(Duration::from_secs(30), woken)
            .await
            .expect("woken by the other process's event");
        assert_eq!(
            scratch.store.events_after(0, 10).unwrap()[0].seq,
            stored.seq
        );
    }

    /// Another process's stage end giving up its place inside a gate, and a
    /// newcomer superseding a waiting execution, wake this one's gate waiters.
    #[tokio::test(flavor = "multi_thread")]
    async fn another_process_changing_a_gate_wakes_the_waiters() {
        let scratch = Scratch::new();
        let (other, _key) = scratch.second_store();
        let signals = scratch.store.signals();
        let bound = Duration::from_secs(30);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let none = serde_json::json!({});
        for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
            let file = Path::new("p.toml");
            other
                .start_execution(id, "p", file, &none, &none, i as i64)
                .unwrap();
        }
        other.join_gate("p", "s", "a", false).unwrap();
        assert_eq!(
            other.try_enter_gate("p", "s", "a", true).unwrap(),
            GateTry::Entered
        );
        other.start_stage("a", "s", 0, 1, None).unwrap();

        let woken = signals.gates().notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        other
            .finish_stage("a", "s", Status::Succeeded, None, 2, None)
            .unwrap();
        tokio::time::timeout(bound, woken)
            .await
            .expect("woken by the place given up");

        other.join_gate("p", "s", "b", true).unwrap();
        let woken = signals.gates().notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        other.join_gate("p", "s", "c", true).unwrap();
        tokio::time::timeout(bound, woken)
            .await
            .expect("woken by b being superseded");
    }

    #[test]
    fn racing_processes_start_an_asked_rollback_once() {
        let scratch = Scratch::new();
        let (second, _key) = scratch.second_store();
        super::super::conformance::racing_processes_start_an_asked_rollback_once(
            &scratch.store,
            &second,
        );
    }

    #[test]
    fn racing_processes_enter_a_gate_one_at_a_time_in_order() {
        let scratch = Scratch::new();
        let (second, _key) = scratch.second_store();
        super::super::conformance::racing_processes_enter_a_gate_one_at_a_time_in_order(
            &scratch.store,
            &second,
        );
    }

    conformance!(
        paging_past_the_end_lists_nothing,
        an_end_is_stored_with_its_event,
        gc_keeps_undelivered_events_and_prunes_old_webhook_deliveries,
        a_webhook_delivery_is_claimed_once,
        an_approval_is_decided_once,
        pipeline_versions_count_up_and_stay,
        a_cron_fire_is_claimed_once,
        a_lease_is_held_by_one_owner_until_it_runs_out,
        a_process_that_lost_its_lease_records_nothing_more,
        a_new_lease_runs_from_the_stores_clock,
        a_process_that_lost_its_lease_withdraws_no_attempt,
        an_id_prefix_matches_literally,
        an_attempt_is_fenced_after_its_claim_runs_out,
        a_cancelled_attempt_is_withdrawn_and_can_be_queued_again,
        a_stop_request_reaches_the_holder_only,
        a_finished_execution_is_reopened_once,
        a_polled_revision_is_claimed_once,
        a_gate_admits_one_execution_at_a_time_in_line_order,
        a_superseding_gate_replaces_older_waiting_executions,
        notifications_are_delivered_by_one_holder_at_a_time,
        an_executions_rule_evaluations_are_listed_in_order,
        event_numbers_never_go_back_when_gc_empties_the_events,
        an_asked_rollback_waits_until_one_process_starts_it,
        a_lost_claims_late_log_lines_and_progress_are_refused,
    );
    #[test]
    fn concurrent_transitions_are_each_committed_and_a_refusal_stays_alone() {
        let scratch = Scratch::new();
        let (store, _key) = scratch.second_store();
        super::super::conformance::concurrent_transitions_are_each_committed_and_a_refusal_stays_alone(
            std::sync::Arc::new(store),
        );
    }

    #[test]
    fn concurrent_calls_of_one_process_run_on_up_to_pool_size_sessions() {
        let scratch = Scratch::new();
        let threads = POOL_SIZE * 2;
        let barrier = std::sync::Barrier::new(threads);
        let sessions: std::collections::HashSet<i32> = std::thread::scope(|scope| {
            let calls: Vec<_> = (0..threads)
                .map(|_| {
                    let (store, barrier) = (&scratch.store, &barrier);
                    scope.spawn(move || {
                        barrier.wait();
                        let rows = store
                            .query("SELECT pg_backend_pid(), pg_sleep(0.3)::text", &[])
                            .unwrap();
                        rows[0].get::<_, i32>(0)
                    })
                })
                .collect();
            calls.into_iter().map(|c| c.join().unwrap()).collect()
        });
        assert!(sessions.len() > 1, "every call waited for one session");
        assert!(sessions.len() <= POOL_SIZE, "{} sessions", sessions.len());
    }

    #[test]
    fn a_second_connection_finds_the_schema_migrated_and_takes_nothing_twice() {
        let scratch = Scratch::new();
        let (again, _key) = scratch.second_store();
        let versions = again
            .query("SELECT version FROM sluice_schema", &[])
            .unwrap();
        assert_eq!(versions.len(), MIGRATIONS.len());
    }

    #[test]
    fn a_database_newer_than_the_binary_is_refused() {
        let scratch = Scratch::new();
        scratch
            .store
            .execute(
                "INSERT INTO sluice_schema (version, applied_ms) VALUES ($1, 0)",
                &[&(MIGRATIONS.len() as i64 + 1)],
            )
            .unwrap();
        let key = tempfile::tempdir().unwrap();
        let error = match PostgresStore::connect(&scratch.url(), &key.path().join("k")) {
            Ok(_) => panic!("a newer database must be refused"),
            Err(error) => format!("{error:#}"),
        };
        assert!(error.contains("newer than this binary knows"), "{error}");
    }

    #[test]
    fn a_row_with_bad_json_is_an_error_naming_its_column() {
        let scratch = Scratch::new();
        let none = serde_json::json!({});
        scratch
            .store
            .start_execution("e", "p", Path::new("p.toml"), &none, &none, 1)
            .unwrap();
        scratch
            .store
            .execute(
                "UPDATE executions SET variables = '{\"who\": ' WHERE id = 'e'",
                &[],
            )
            .unwrap();
        let error = scratch.store.execution("e").unwrap_err();
        assert!(
            format!("{error:#}").contains("column executions.variables holds bad JSON"),
            "{error:#}"
        );
    }

    #[test]
    fn a_session_stalled_in_a_transaction_is_ended_and_the_store_connects_again() {
        let scratch = Scratch::new();
        scratch
            .store
            .with(|db| Ok(db.batch_execute("BEGIN; SELECT 1")?))
            .unwrap();
        // As a paused process would: sit in the transaction past the timeout.
        std::thread::sleep(std::time::Duration::from_secs(7));
        // The first call may find the session ended under it; then the store
        // connects again for the next.
        let _first = scratch.store.last_event_seq();
        assert_eq!(scratch.store.last_event_seq().unwrap(), 0);
    }

    #[test]
    fn the_password_never_appears_in_a_connection_error() {
        assert_eq!(
            redacted("postgres://sluice:hunter2@db.internal/ci"),
            "postgres://sluice@db.internal/ci"
        );
        assert_eq!(redacted("host=x user=y"), "host=x user=y");
    }
}
