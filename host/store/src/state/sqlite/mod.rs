//! The SQLite implementation of the state store (WAL): the embedded default.
//!
//! One connection behind a mutex; every transition is committed before it is
//! reported. The executor's transitions ([`ExecutionStore::record`]) go
//! through `group_commit`: a thread of their own commits as many as are
//! waiting in one transaction. The schema is a numbered list of migrations, the version in
//! `PRAGMA user_version`.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context as _;
use rusqlite::{Connection, OptionalExtension, params};

use super::*;

mod group_commit;
use group_commit::GroupCommit;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS executions (
    id TEXT PRIMARY KEY,
    pipeline TEXT NOT NULL,
    pipeline_file TEXT NOT NULL,
    status TEXT NOT NULL,
    started_ms INTEGER NOT NULL,
    ended_ms INTEGER,
    error TEXT,
    variables TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS executions_by_start ON executions (started_ms);
CREATE TABLE IF NOT EXISTS stage_runs (
    execution_id TEXT NOT NULL REFERENCES executions(id),
    stage TEXT NOT NULL,
    position INTEGER NOT NULL,
    status TEXT NOT NULL,
    started_ms INTEGER NOT NULL,
    ended_ms INTEGER,
    error TEXT,
    PRIMARY KEY (execution_id, stage)
);
CREATE TABLE IF NOT EXISTS action_runs (
    execution_id TEXT NOT NULL REFERENCES executions(id),
    stage TEXT NOT NULL,
    action TEXT NOT NULL,
    run_order INTEGER NOT NULL,
    plugin TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    started_ms INTEGER NOT NULL,
    ended_ms INTEGER,
    resolved_config TEXT NOT NULL DEFAULT '[]',
    summary TEXT,
    error TEXT,
    variables TEXT NOT NULL DEFAULT '[]',
    outputs TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (execution_id, action)
);
CREATE TABLE IF NOT EXISTS action_logs (
    execution_id TEXT NOT NULL,
    action TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    stream TEXT NOT NULL,
    line TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS action_logs_by_action ON action_logs (execution_id, action, seq);
CREATE TABLE IF NOT EXISTS pipelines (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    source TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    pipelines TEXT NOT NULL DEFAULT '[]',
    description TEXT NOT NULL DEFAULT '',
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS transitions (
    pipeline TEXT NOT NULL,
    stage TEXT NOT NULL,
    disabled_reason TEXT,
    changed_by TEXT NOT NULL,
    changed_ms INTEGER NOT NULL,
    PRIMARY KEY (pipeline, stage)
);
CREATE TABLE IF NOT EXISTS approvals (
    execution_id TEXT NOT NULL,
    action TEXT NOT NULL,
    token TEXT NOT NULL,
    approvers TEXT NOT NULL,
    message TEXT NOT NULL,
    status TEXT NOT NULL,
    expires_ms INTEGER NOT NULL,
    decided_by TEXT,
    decided_ms INTEGER,
    comment TEXT,
    PRIMARY KEY (execution_id, action)
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ms INTEGER NOT NULL,
    execution_id TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS poll_state (
    pipeline TEXT NOT NULL,
    action TEXT NOT NULL,
    last_revision TEXT NOT NULL,
    polled_ms INTEGER NOT NULL,
    PRIMARY KEY (pipeline, action)
);
CREATE TABLE IF NOT EXISTS notify_cursor (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    result TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    pipeline TEXT NOT NULL,
    delivery TEXT NOT NULL,
    execution_id TEXT,
    received_ms INTEGER NOT NULL,
    PRIMARY KEY (pipeline, delivery)
);
"#;

/// Columns added before numbered migrations existed: (table, column, type).
/// Databases from then may lack any of them; migration 1 adds what is missing.
const EARLY_COLUMNS: [(&str, &str, &str); 9] = [
    ("action_runs", "continuation", "TEXT"),
    ("action_runs", "continue_at_ms", "INTEGER"),
    ("executions", "trigger", "TEXT NOT NULL DEFAULT '{}'"),
    ("executions", "pipeline_version", "INTEGER"),
    ("action_runs", "percent", "INTEGER"),
    ("action_runs", "progress", "TEXT"),
    // The pipeline an audit row concerns (NULL: global, e.g. token
    // management; rows from before this column count as global), and token
    // expiry and revocation.
    ("audit", "pipeline", "TEXT"),
    ("tokens", "expires_ms", "INTEGER"),
    ("tokens", "revoked_ms", "INTEGER"),
];

/// One numbered step of the schema. The database records the last one it
/// took in `PRAGMA user_version`; each runs once, in its own transaction.
struct Migration {
    /// What it does, for the error when it fails.
    describe: &'static str,
    apply: fn(&rusqlite::Transaction<'_>) -> rusqlite::Result<()>,
}

/// Every migration, in order: the database's version is how many it took.
/// Append only; never edit one that shipped.
const MIGRATIONS: &[Migration] = &[
    Migration {
        describe: "the schema as it was before numbered migrations",
        apply: baseline,
    },
    Migration {
        describe: "claimed cron fires",
        apply: cron_fires,
    },
    Migration {
        describe: "execution leases",
        apply: execution_leases,
    },
    Migration {
        describe: "attempts queued for workers",
        apply: attempt_queue,
    },
    Migration {
        describe: "stops asked through another server",
        apply: stop_requests,
    },
    Migration {
        describe: "stage gates shared by every process",
        apply: gate_places,
    },
    Migration {
        describe: "the server that delivers notifications",
        apply: notifier,
    },
    Migration {
        describe: "events by execution",
        apply: events_by_execution,
    },
    Migration {
        describe: "fewer pages written per transition",
        apply: fewer_pages_per_transition,
    },
    Migration {
        describe: "rollbacks asked for and not started yet",
        apply: asked_rollbacks,
    },
];

/// Migration 10: the stage an ended execution asked to roll back, until a
/// process starts that rollback (see [`ExecutionStore::start_asked_rollback`]).
fn asked_rollbacks(db: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    db.execute_batch(
        "ALTER TABLE executions ADD COLUMN rollback_stage TEXT;
         CREATE INDEX executions_asking_rollback ON executions (ended_ms) WHERE rollback_stage IS NOT NULL",
    )
}

/// Migration 9: every page a transition changes is a WAL frame written at
/// its commit, and an action's start or end is most of a no-op action's
/// cost. So:
/// - `action_runs` and `stage_runs` are keyed by their primary key alone
///   (`WITHOUT ROWID`): one b-tree to change, not a table and its index;
/// - `events` numbers rows without `AUTOINCREMENT`, whose counter is a page
///   of its own (`sqlite_sequence`) changed by every insert. Numbers still
///   never go back: `event_floor` keeps the highest number given before gc
///   removed events (see [`insert_event`]);
/// - only rule evaluations are indexed by execution, the one kind looked up
///   that way.
fn fewer_pages_per_transition(db: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    db.execute_batch(
        "CREATE TABLE action_runs_keyed (
            execution_id TEXT NOT NULL REFERENCES executions(id),
            stage TEXT NOT NULL,
            action TEXT NOT NULL,
            run_order INTEGER NOT NULL,
            plugin TEXT NOT NULL,
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            started_ms INTEGER NOT NULL,
            ended_ms INTEGER,
            resolved_config TEXT NOT NULL DEFAULT '[]',
            summary TEXT,
            error TEXT,
            variables TEXT NOT NULL DEFAULT '[]',
            outputs TEXT NOT NULL DEFAULT '[]',
            continuation TEXT,
            continue_at_ms INTEGER,
            percent INTEGER,
            progress TEXT,
            PRIMARY KEY (execution_id, action)
         ) WITHOUT ROWID;
         INSERT INTO action_runs_keyed (execution_id, stage, action, run_order, plugin, status, attempts, started_ms, ended_ms, resolved_config, summary, error, variables, outputs, continuation, continue_at_ms, percent, progress)
           SELECT execution_id, stage, action, run_order, plugin, status, attempts, started_ms, ended_ms, resolved_config, summary, error, variables, outputs, continuation, continue_at_ms, percent, progress FROM action_runs;
         DROP TABLE action_runs;
         ALTER TABLE action_runs_keyed RENAME TO action_runs;
         CREATE TABLE stage_runs_keyed (
            execution_id TEXT NOT NULL REFERENCES executions(id),
            stage TEXT NOT NULL,
            position INTEGER NOT NULL,
            status TEXT NOT NULL,
            started_ms INTEGER NOT NULL,
            ended_ms INTEGER,
            error TEXT,
            PRIMARY KEY (execution_id, stage)
         ) WITHOUT ROWID;
         INSERT INTO stage_runs_keyed (execution_id, stage, position, status, started_ms, ended_ms, error)
           SELECT execution_id, stage, position, status, started_ms, ended_ms, error FROM stage_runs;
         DROP TABLE stage_runs;
         ALTER TABLE stage_runs_keyed RENAME TO stage_runs;
         CREATE TABLE event_floor (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL);
         INSERT INTO event_floor (id, seq)
           SELECT 1, MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0),
                      COALESCE((SELECT MAX(seq) FROM events), 0));
         CREATE TABLE events_numbered (
            seq INTEGER PRIMARY KEY,
            ts_ms INTEGER NOT NULL,
            execution_id TEXT NOT NULL,
            pipeline TEXT NOT NULL,
            kind TEXT NOT NULL,
            name TEXT NOT NULL,
            state TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT ''
         );
         INSERT INTO events_numbered SELECT seq, ts_ms, execution_id, pipeline, kind, name, state, detail FROM events;
         DROP TABLE events;
         ALTER TABLE events_numbered RENAME TO events;
         CREATE INDEX rule_events_by_execution ON events (execution_id, seq) WHERE kind = 'rule';",
    )
}

/// Migration 8: an execution's events of one kind (its rule evaluations).
fn events_by_execution(db: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    db.execute_batch("CREATE INDEX events_by_execution ON events (execution_id, kind, seq)")
}

/// Migration 7: which server delivers notifications, and until when.
fn notifier(db: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    db.execute_batch(
        "CREATE TABLE notifier (id INTEGER PRIMARY KEY CHECK (id = 1), owner TEXT NOT NULL, until_ms INTEGER NOT NULL)",
    )
}

/// Migration 6: places in line at, and inside, stage boundaries.
fn gate_places(db: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    db.execute_batch(
        "CREATE TABLE gate_places (seq INTEGER PRIMARY KEY AUTOINCREMENT, pipeline TEXT NOT NULL, stage TEXT NOT NULL, execution_id TEXT NOT NULL, state TEXT NOT NULL, UNIQUE (pipeline, stage, execution_id));
         CREATE INDEX gate_places_by_execution ON gate_places (execution_id)",
    )
}

/// Migration 5: a stop asked of an execution another process runs.
fn stop_requests(db: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    db.execute_batch("ALTER TABLE executions ADD COLUMN stop_request TEXT")
}

/// Migration 4: action attempts queued for worker processes.
fn attempt_queue(db: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    db.execute_batch(
        "CREATE TABLE attempts (key TEXT PRIMARY KEY, execution_id TEXT NOT NULL, payload TEXT NOT NULL, state TEXT NOT NULL, worker TEXT, fence INTEGER NOT NULL DEFAULT 0, lease_until_ms INTEGER, result TEXT, queued_ms INTEGER NOT NULL);
         CREATE INDEX attempts_by_state ON attempts (state, lease_until_ms);
         CREATE INDEX attempts_by_execution ON attempts (execution_id)",
    )
}

/// Migration 3: the process holding each execution, and until when.
fn execution_leases(db: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    db.execute_batch(
        "ALTER TABLE executions ADD COLUMN owner TEXT; ALTER TABLE executions ADD COLUMN lease_until_ms INTEGER",
    )
}

/// Migration 2: cron fires, claimed once by whichever server gets there first.
fn cron_fires(db: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    db.execute_batch(
        "CREATE TABLE cron_fires (pipeline TEXT NOT NULL, expression TEXT NOT NULL, due_ms INTEGER NOT NULL, PRIMARY KEY (pipeline, expression, due_ms))",
    )
}

/// Migration 1: create what is missing of the original schema, and adopt a
/// database made before numbered migrations by adding the columns it lacks.
fn baseline(db: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    db.execute_batch(SCHEMA)?;
    for (table, column, kind) in EARLY_COLUMNS {
        let exists: bool = db.query_row(
            &format!("SELECT COUNT(*) > 0 FROM pragma_table_info('{table}') WHERE name = ?1"),
            [column],
            |row| row.get(0),
        )?;
        if !exists {
            db.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"))?;
        }
    }
    Ok(())
}

/// Bring the database to the newest schema this binary knows; refuse one
/// that a newer binary has moved past it. The version is read inside each
/// step's write transaction, so two processes opening one database at once
/// never take a step twice.
fn migrate(db: &mut Connection) -> anyhow::Result<()> {
    let newest = MIGRATIONS.len() as i64;
    loop {
        let transaction = write_transaction(db)?;
        let version: i64 =
            transaction.pragma_query_value(None, "user_version", |row| row.get(0))?;
        anyhow::ensure!(
            version <= newest,
            "the state database is at schema version {version}, newer than this sluice knows \
             ({newest}): run a newer sluice, or use another --data-dir"
        );
        let Some(migration) = MIGRATIONS.get(version as usize) else {
            return Ok(());
        };
        let number = version + 1;
        (migration.apply)(&transaction)
            .and_then(|()| transaction.pragma_update(None, "user_version", number))
            .and_then(|()| transaction.commit())
            .with_context(|| format!("schema migration {number} ({})", migration.describe))?;
    }
}

/// A stored status that is not one of [`Status`]'s names is an error, never a guess.
impl rusqlite::types::FromSql for Status {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        let name = value.as_str()?;
        Status::from_name(name).ok_or_else(|| {
            rusqlite::types::FromSqlError::Other(format!("unknown status `{name}`").into())
        })
    }
}

/// A stored approval status that is not one of [`ApprovalStatus`]'s names is an error.
impl rusqlite::types::FromSql for ApprovalStatus {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        let name = value.as_str()?;
        ApprovalStatus::from_name(name).ok_or_else(|| {
            rusqlite::types::FromSqlError::Other(format!("unknown approval status `{name}`").into())
        })
    }
}

/// The SQLite-backed store.
pub struct SqliteStore {
    /// One connection for every call, shared with the group-commit thread.
    connection: Arc<Mutex<Connection>>,
    /// Commits the executor's transitions, several per transaction.
    group_commit: GroupCommit,
    /// A second connection, for calls that only read: in WAL mode they see
    /// every committed transaction without waiting for the writing one
    /// (a group commit may hold it for a batch).
    reader: Mutex<Connection>,
    /// Encrypts continuation tokens (they may carry secrets) while stored.
    sealer: crate::secrets::TokenSealer,
    /// Masks the host's secrets in events and audit rows (see [`SqliteStore::mask_with`]).
    masker: std::sync::OnceLock<std::sync::Arc<crate::secrets::Masker>>,
    /// Who new executions are leased to ([`LeaseStore::lease_as`]).
    owner: std::sync::OnceLock<Owner>,
    /// `<database>-admission`: flock'ed while a process admits executions.
    admission: std::path::PathBuf,
    /// This process's attempt wake-ups (other processes on the file poll).
    signals: std::sync::Arc<super::StoreSignals>,
}

/// Switch to WAL, create and migrate the schema. Processes opening one new
/// database at once (several `sluice run`) can get SQLITE_BUSY here without the
/// busy timeout applying (the journal-mode switch does not wait): try again.
fn set_up(connection: &mut Connection) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match set_up_once(connection) {
            Err(e) if is_busy_anyhow(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            result => return result,
        }
    }
}

fn set_up_once(connection: &mut Connection) -> anyhow::Result<()> {
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    // Checkpoint the WAL into the database every ~40 MiB rather than every
    // 4 MiB (SQLite's default): each action writes a few small transactions,
    // and a checkpoint every thousand pages was a measurable share of them.
    // Measured: p99 of a no-op action about halved, throughput up 3-11 %.
    // The WAL file is cut back to 64 MiB after a checkpoint.
    connection.pragma_update(None, "wal_autocheckpoint", 10_000)?;
    connection.pragma_update(None, "journal_size_limit", 64 << 20)?;
    migrate(connection)
}

/// Whether a set-up step failed because another process holds the database.
fn is_busy_anyhow(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|cause| cause.downcast_ref::<rusqlite::Error>())
        .any(is_busy)
}

fn is_busy(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Remove the places `execution` holds at stage gates: at `stage` (it ended
/// there), or everywhere (the execution ended).
fn leave_gates(tx: &Connection, execution: &str, stage: Option<&str>) -> rusqlite::Result<()> {
    match stage {
        Some(stage) => tx
            .prepare_cached("DELETE FROM gate_places WHERE execution_id = ?1 AND stage = ?2")?
            .execute(params![execution, stage])?,
        None => tx
            .prepare_cached("DELETE FROM gate_places WHERE execution_id = ?1")?
            .execute(params![execution])?,
    };
    Ok(())
}

/// A transaction that takes the write lock up front. A deferred one that reads
/// and then writes gets SQLITE_BUSY at once, without the busy timeout, when
/// another process (a second `sluice run` on the data directory) wrote meanwhile.
fn write_transaction(db: &mut Connection) -> rusqlite::Result<rusqlite::Transaction<'_>> {
    db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
}

/// A read-only connection to the (set up) database at `path`.
fn open_reader(path: &Path) -> anyhow::Result<Connection> {
    let reader = Connection::open(path)
        .with_context(|| format!("opening state database {}", path.display()))?;
    reader.busy_timeout(std::time::Duration::from_secs(10))?;
    reader.pragma_update(None, "query_only", true)?;
    Ok(reader)
}

/// What a committed transition survives: SQLite's `synchronous` setting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// The process crashing (`kill -9`), not the machine losing power:
    /// commits are written to the WAL, which is synced at checkpoints
    /// (`synchronous=NORMAL`).
    #[default]
    Crash,
    /// The machine losing power too: every commit is synced to disk before it
    /// is reported (`synchronous=FULL`); the group commit makes one sync
    /// serve every transition waiting at the time.
    PowerLoss,
}

impl SqliteStore {
    /// Open (and create or migrate) the database at `path`, durable against
    /// crashes ([`Durability::Crash`]).
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        Self::open_with(path, Durability::Crash)
    }

    /// Open (and create or migrate) the database at `path`, its commits
    /// durable as `durability` says.
    pub fn open_with(path: &Path, durability: Durability) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut connection = Connection::open(path)
            .with_context(|| format!("opening state database {}", path.display()))?;
        connection.busy_timeout(std::time::Duration::from_secs(10))?;
        set_up(&mut connection).with_context(|| {
            format!(
                "creating or migrating the state database {}",
                path.display()
            )
        })?;
        if durability == Durability::PowerLoss {
            connection.pragma_update(None, "synchronous", "FULL")?;
        }
        let key = path.with_file_name("continuation.key");
        let connection = Arc::new(Mutex::new(connection));
        let reader = open_reader(path)?;
        let in_place = durability == Durability::Crash;
        let group_commit = GroupCommit::start(connection.clone(), in_place)
            .context("starting the state store's commit thread")?;
        Ok(Self {
            connection,
            group_commit,
            reader: Mutex::new(reader),
            sealer: crate::secrets::TokenSealer::new(key),
            masker: std::sync::OnceLock::new(),
            owner: std::sync::OnceLock::new(),
            admission: path.with_file_name(format!(
                "{}-admission",
                path.file_name().unwrap_or_default().to_string_lossy()
            )),
            signals: std::sync::Arc::default(),
        })
    }

    fn mask(&self, text: &str) -> String {
        match self.masker.get() {
            Some(masker) => masker.mask(text),
            None => text.to_string(),
        }
    }

    fn db(&self) -> MutexGuard<'_, Connection> {
        self.connection.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection for calls that only read.
    fn read(&self) -> MutexGuard<'_, Connection> {
        self.reader.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Run one write with a cached prepared statement (parsing SQL on every
    /// action start and end would be a measurable share of an action's cost).
    fn write(&self, sql: &str, params: impl rusqlite::Params) -> anyhow::Result<()> {
        self.db().prepare_cached(sql)?.execute(params)?;
        Ok(())
    }

    /// One write to an execution this process holds (see [`held_by_us`]).
    fn write_held(
        &self,
        execution: &str,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> anyhow::Result<()> {
        let mut db = self.db();
        let transaction = write_transaction(&mut db)?;
        held_by_us(&transaction, self.owner.get(), execution)?;
        transaction.prepare_cached(sql)?.execute(params)?;
        transaction.commit()?;
        Ok(())
    }

    /// `transition` with its event's detail masked.
    fn masked(&self, mut transition: Transition) -> Transition {
        if let Some(event) = &mut transition.event {
            event.detail = self.mask(&event.detail);
        }
        transition
    }

    /// Record `transition` in its own transaction, on this thread.
    fn record_here(&self, transition: Transition) -> anyhow::Result<Option<EventRecord>> {
        let transition = self.masked(transition);
        group_commit::commit_one(&mut self.db(), transition, self.owner.get())
    }
}

/// A transition of `execution`, for the one-call methods.
fn transition(
    execution: &str,
    change: Change,
    now_ms: i64,
    event: Option<EventRecord>,
) -> Transition {
    Transition {
        execution: execution.to_string(),
        change,
        now_ms,
        event,
    }
}

/// Write a transition of an execution this process holds (see [`held_by_us`])
/// and its (masked) event inside the caller's transaction: the one place
/// that knows each change's SQL, for both the one-call methods and the
/// group commit.
fn write_transition(
    db: &Connection,
    owner: Option<&Owner>,
    transition: Transition,
) -> anyhow::Result<Option<EventRecord>> {
    let Transition {
        execution: id,
        change,
        now_ms,
        event,
    } = transition;
    held_by_us(db, owner, &id)?;
    match change {
        Change::ExecutionEnded {
            status,
            error,
            rollback,
        } => {
            db.prepare_cached(
                "UPDATE executions SET status = ?2, error = ?3, ended_ms = ?4, rollback_stage = ?5 WHERE id = ?1",
            )?
            .execute(params![id, status.name(), error, now_ms, rollback])?;
            leave_gates(db, &id, None)?;
        }
        Change::StageStarted { stage, position } => {
            db.prepare_cached(
                "INSERT OR REPLACE INTO stage_runs (execution_id, stage, position, status, started_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![id, stage, position as i64, Status::InProgress.name(), now_ms])?;
        }
        Change::StageEnded {
            stage,
            status,
            error,
        } => {
            db.prepare_cached(
                "UPDATE stage_runs SET status = ?3, error = ?4, ended_ms = ?5 WHERE execution_id = ?1 AND stage = ?2",
            )?
            .execute(params![id, stage, status.name(), error, now_ms])?;
            leave_gates(db, &id, Some(&stage))?;
        }
        Change::ActionStarted {
            stage,
            action,
            run_order,
            plugin,
            resolved_config,
        } => {
            db.prepare_cached(
                "INSERT OR REPLACE INTO action_runs (execution_id, stage, action, run_order, plugin, status, started_ms, resolved_config) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![id, stage, action, run_order, plugin, Status::InProgress.name(), now_ms, serde_json::to_string(&resolved_config)?])?;
        }
        Change::ActionEnded { action, end } => {
            db.prepare_cached(
                "UPDATE action_runs SET status = ?3, attempts = ?4, summary = ?5, error = ?6, variables = ?7, outputs = ?8, ended_ms = ?9, continuation = NULL, continue_at_ms = NULL WHERE execution_id = ?1 AND action = ?2",
            )?
            .execute(params![
                id,
                action,
                end.status.name(),
                end.attempts,
                end.summary,
                end.error,
                serde_json::to_string(&end.variables)?,
                serde_json::to_string(&end.outputs)?,
                now_ms
            ])?;
        }
    }
    event.map(|e| insert_event(db, e)).transpose()
}

impl ExecutionStore for SqliteStore {
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
        let new = NewExecution {
            id,
            pipeline,
            file,
            variables,
            trigger,
            now_ms,
        };
        insert_execution(&self.db(), self.owner.get(), &new)
    }

    fn finish_execution(
        &self,
        id: &str,
        end: ExecutionEnd<'_>,
        now_ms: i64,
        event: Option<EventRecord>,
    ) -> anyhow::Result<Option<EventRecord>> {
        let change = Change::ExecutionEnded {
            status: end.status,
            error: end.error.map(str::to_string),
            rollback: end.rollback.map(str::to_string),
        };
        self.record_here(transition(id, change, now_ms, event))
    }

    fn pending_rollbacks(&self) -> anyhow::Result<Vec<(String, String)>> {
        let db = self.read();
        let mut statement = db.prepare(
            "SELECT id, rollback_stage FROM executions WHERE rollback_stage IS NOT NULL AND pipeline_version IS NOT NULL ORDER BY ended_ms",
        )?;
        let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
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
        let mut db = self.db();
        let transaction = write_transaction(&mut db)?;
        let taken = transaction.execute(
            "UPDATE executions SET rollback_stage = NULL WHERE id = ?1 AND rollback_stage IS NOT NULL",
            params![asked_by],
        )?;
        if taken == 0 {
            return Ok(false);
        }
        let new = NewExecution {
            id,
            pipeline,
            file,
            variables,
            trigger,
            now_ms,
        };
        insert_execution(&transaction, self.owner.get(), &new)?;
        transaction.commit()?;
        Ok(true)
    }

    fn drop_rollback(&self, execution: &str) -> anyhow::Result<()> {
        self.write(
            "UPDATE executions SET rollback_stage = NULL WHERE id = ?1",
            params![execution],
        )
    }

    fn start_stage(
        &self,
        execution: &str,
        stage: &str,
        position: usize,
        now_ms: i64,
        event: Option<EventRecord>,
    ) -> anyhow::Result<Option<EventRecord>> {
        let stage = stage.to_string();
        let change = Change::StageStarted { stage, position };
        self.record_here(transition(execution, change, now_ms, event))
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
        let change = Change::StageEnded {
            stage: stage.to_string(),
            status,
            error: error.map(str::to_string),
        };
        self.record_here(transition(execution, change, now_ms, event))
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
        let change = Change::ActionStarted {
            stage: stage.to_string(),
            action: action.to_string(),
            run_order,
            plugin: plugin.to_string(),
            resolved_config: resolved_config.to_vec(),
        };
        self.record_here(transition(execution, change, now_ms, event))
    }

    fn finish_action(
        &self,
        execution: &str,
        action: &str,
        end: &ActionEnd<'_>,
        now_ms: i64,
        event: Option<EventRecord>,
    ) -> anyhow::Result<Option<EventRecord>> {
        let change = Change::ActionEnded {
            action: action.to_string(),
            end: EndOfAction {
                status: end.status,
                attempts: end.attempts,
                summary: end.summary.map(str::to_string),
                error: end.error.map(str::to_string),
                variables: end.variables.to_vec(),
                outputs: end.outputs.to_vec(),
            },
        };
        self.record_here(transition(execution, change, now_ms, event))
    }

    /// Handed to the group-commit thread: committed with whatever other
    /// transitions are waiting, and reported only after that commit.
    fn record(self: Arc<Self>, transition: Transition) -> Recorded {
        let transition = self.masked(transition);
        let owner = self.owner.get().cloned();
        self.group_commit.record(transition, owner)
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
        let mut db = self.db();
        let tx = write_transaction(&mut db)?;
        held_by_us(&tx, self.owner.get(), execution)?;
        if let Some(claim) = claim {
            let held: bool = tx.query_row(
                "SELECT COUNT(*) > 0 FROM attempts WHERE key = ?1 AND fence = ?2 AND state = 'running'",
                params![claim.key, claim.fence],
                |row| row.get(0),
            )?;
            if !held {
                return Err(claim_lost(claim));
            }
        }
        let next: i64 = tx.query_row(
            "SELECT COALESCE(MAX(seq) + 1, 0) FROM action_logs WHERE execution_id = ?1 AND action = ?2",
            params![execution, action],
            |row| row.get(0),
        )?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO action_logs (execution_id, action, attempt, seq, ts_ms, stream, line) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for (i, line) in lines.iter().enumerate() {
                insert.execute(params![
                    execution,
                    action,
                    attempt,
                    next + i as i64,
                    line.timestamp_ms,
                    line.stream,
                    line.text
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn list_executions(
        &self,
        filter: &ExecutionFilter<'_>,
    ) -> anyhow::Result<Vec<ExecutionRecord>> {
        let db = self.read();
        let mut statement = db.prepare(
            "SELECT id, pipeline, pipeline_file, status, started_ms, ended_ms, error, variables, pipeline_version, trigger FROM executions
             WHERE (?1 IS NULL OR pipeline = ?1) AND (?2 IS NULL OR status = ?2)
             ORDER BY started_ms DESC, rowid DESC LIMIT ?3 OFFSET ?4",
        )?;
        let rows = statement.query_map(
            params![
                filter.pipeline,
                filter.status,
                sql_count(filter.limit),
                sql_count(filter.offset)
            ],
            execution_from_row,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn execution(&self, id_or_prefix: &str) -> anyhow::Result<Option<ExecutionRecord>> {
        let db = self.read();
        let mut statement = db.prepare(
            "SELECT id, pipeline, pipeline_file, status, started_ms, ended_ms, error, variables, pipeline_version, trigger FROM executions
             WHERE id = ?1 OR substr(id, 1, length(?1)) = ?1 ORDER BY (id = ?1) DESC LIMIT 2",
        )?;
        let rows: Vec<ExecutionRecord> = statement
            .query_map(params![id_or_prefix], execution_from_row)?
            .collect::<Result<_, _>>()?;
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
        let db = self.read();
        let mut statement = db.prepare(
            "SELECT stage, status, started_ms, ended_ms, error FROM stage_runs WHERE execution_id = ?1 ORDER BY position",
        )?;
        let rows = statement.query_map(params![execution], |row| {
            Ok(StageRecord {
                stage: row.get(0)?,
                status: row.get(1)?,
                started_ms: row.get(2)?,
                ended_ms: row.get(3)?,
                error: row.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn actions(&self, execution: &str) -> anyhow::Result<Vec<ActionRecord>> {
        let db = self.read();
        let mut statement = db.prepare(
            "SELECT a.stage, action, run_order, plugin, a.status, attempts, a.started_ms, a.ended_ms, resolved_config, summary, a.error, variables, outputs, percent, progress, continuation, continue_at_ms
             FROM action_runs a LEFT JOIN stage_runs s ON s.execution_id = a.execution_id AND s.stage = a.stage
             WHERE a.execution_id = ?1 ORDER BY s.position, run_order, a.started_ms, action",
        )?;
        let rows = statement.query_map(params![execution], |row| {
            Ok(ActionRecord {
                stage: row.get(0)?,
                action: row.get(1)?,
                run_order: row.get(2)?,
                plugin: row.get(3)?,
                status: row.get(4)?,
                attempts: row.get(5)?,
                started_ms: row.get(6)?,
                ended_ms: row.get(7)?,
                resolved_config: json_column(row, 8, "action_runs.resolved_config")?,
                summary: row.get(9)?,
                error: row.get(10)?,
                variables: json_column(row, 11, "action_runs.variables")?,
                outputs: json_column(row, 12, "action_runs.outputs")?,
                percent: row.get(13)?,
                progress: row.get(14)?,
                continuation: row.get(15)?,
                continue_at_ms: row.get(16)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn logs(&self, execution: &str, action: Option<&str>) -> anyhow::Result<Vec<LogRecord>> {
        let db = self.read();
        let mut statement = db.prepare(
            "SELECT rowid, action, attempt, ts_ms, stream, line FROM action_logs
             WHERE execution_id = ?1 AND (?2 IS NULL OR action = ?2) ORDER BY ts_ms, action, seq",
        )?;
        let rows = statement.query_map(params![execution, action], log_record)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn logs_after(
        &self,
        execution: &str,
        action: Option<&str>,
        after: i64,
        limit: usize,
    ) -> anyhow::Result<Vec<LogRecord>> {
        let db = self.read();
        let mut statement = db.prepare(
            "SELECT rowid, action, attempt, ts_ms, stream, line FROM action_logs
             WHERE execution_id = ?1 AND (?2 IS NULL OR action = ?2) AND rowid > ?3
             ORDER BY rowid LIMIT ?4",
        )?;
        let rows = statement.query_map(
            params![execution, action, after, sql_count(limit)],
            log_record,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn set_execution_version(&self, id: &str, version: i64) -> anyhow::Result<()> {
        self.write_held(
            id,
            "UPDATE executions SET pipeline_version = ?2 WHERE id = ?1",
            params![id, version],
        )
    }

    fn fail_execution(&self, id: &str, reason: &str, now_ms: i64) -> anyhow::Result<()> {
        let mut db = self.db();
        let tx = write_transaction(&mut db)?;
        held_by_us(&tx, self.owner.get(), id)?;
        for table in ["action_runs", "stage_runs"] {
            tx.execute(
                &format!("UPDATE {table} SET status = 'Failed', error = ?2, ended_ms = ?3 WHERE execution_id = ?1 AND status = 'InProgress'"),
                params![id, reason, now_ms],
            )?;
        }
        tx.execute(
            "UPDATE executions SET status = 'Failed', error = ?2, ended_ms = ?3 WHERE id = ?1",
            params![id, reason, now_ms],
        )?;
        leave_gates(&tx, id, None)?;
        tx.commit()?;
        Ok(())
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
            "UPDATE action_runs SET continuation = ?3, continue_at_ms = ?4, summary = ?5 WHERE execution_id = ?1 AND action = ?2",
            params![execution, action, token, due_ms, summary],
        )
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
            "UPDATE action_runs SET percent = ?3, progress = ?4 WHERE execution_id = ?1 AND action = ?2
               AND (?5 IS NULL OR EXISTS (SELECT 1 FROM attempts WHERE key = ?5 AND fence = ?6 AND state = 'running'))",
            params![execution, action, percent, message, key, fence],
        )
    }

    fn in_progress(&self, pipeline: &str) -> anyhow::Result<usize> {
        let count: i64 = self.read().query_row(
            "SELECT COUNT(*) FROM executions WHERE pipeline = ?1 AND status IN ('InProgress', 'Stopping')",
            params![pipeline],
            |row| row.get(0),
        )?;
        Ok(count as usize)
    }

    fn set_execution_status(&self, id: &str, status: Status) -> anyhow::Result<()> {
        self.write_held(
            id,
            "UPDATE executions SET status = ?2 WHERE id = ?1",
            params![id, status.name()],
        )
    }

    fn reopen_execution(&self, id: &str) -> anyhow::Result<bool> {
        // Whoever retries a finished execution runs it, so it holds it now.
        let (owner, until) = lease(self.owner.get(), sluice_core::units::now_ms());
        let changed = self.db().execute(
            "UPDATE executions SET status = 'InProgress', error = NULL, ended_ms = NULL, owner = ?2, lease_until_ms = ?3
             WHERE id = ?1 AND status NOT IN ('InProgress', 'Stopping')",
            params![id, owner, until],
        )?;
        Ok(changed == 1)
    }

    fn execution_counts(&self) -> anyhow::Result<Vec<(String, i64)>> {
        let db = self.read();
        let mut statement = db.prepare_cached(
            "SELECT status, COUNT(*) FROM executions GROUP BY status ORDER BY status",
        )?;
        let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn latest_execution(&self) -> anyhow::Result<Option<String>> {
        Ok(self
            .read()
            .query_row(
                "SELECT id FROM executions ORDER BY started_ms DESC, rowid DESC LIMIT 1",
                [],
                |row| row.get(0),
            )
            .optional()?)
    }

    fn oldest_running_start(&self) -> anyhow::Result<Option<i64>> {
        Ok(self.read().query_row(
            "SELECT MIN(started_ms) FROM executions WHERE status IN ('InProgress', 'Stopping')",
            [],
            |row| row.get(0),
        )?)
    }
}

impl LeaseStore for SqliteStore {
    fn lease_as(&self, owner: Owner) {
        let _ = self.owner.set(owner);
    }

    fn clock_ms(&self) -> i64 {
        sluice_core::units::now_ms()
    }

    fn claim_execution(
        &self,
        id: &str,
        owner: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> anyhow::Result<bool> {
        let changed = self.db().execute(
            "UPDATE executions SET owner = ?2, lease_until_ms = ?4 WHERE id = ?1 AND status = 'InProgress'
               AND (owner IS NULL OR owner = ?2 OR lease_until_ms IS NULL OR lease_until_ms < ?3)",
            params![id, owner, now_ms, until_ms],
        )?;
        Ok(changed == 1)
    }

    fn renew_leases(&self, owner: &str, until_ms: i64) -> anyhow::Result<u64> {
        let changed = self.db().execute(
            "UPDATE executions SET lease_until_ms = ?2 WHERE owner = ?1 AND status IN ('InProgress', 'Stopping')",
            params![owner, until_ms],
        )?;
        Ok(changed as u64)
    }

    fn lease_holder(&self, execution: &str) -> anyhow::Result<Option<String>> {
        let holder: Option<Option<String>> = self
            .read()
            .query_row(
                "SELECT owner FROM executions WHERE id = ?1",
                params![execution],
                |row| row.get(0),
            )
            .optional()?;
        Ok(holder.flatten())
    }

    fn request_stop(&self, execution: &str, request: &str) -> anyhow::Result<bool> {
        let changed = self.db().execute(
            "UPDATE executions SET stop_request = ?2 WHERE id = ?1 AND status = 'InProgress'",
            params![execution, request],
        )?;
        Ok(changed == 1)
    }

    fn stop_requests(&self, owner: &str) -> anyhow::Result<Vec<(String, String)>> {
        let db = self.read();
        let mut query = db.prepare_cached(
            "SELECT id, stop_request FROM executions WHERE owner = ?1 AND status = 'InProgress' AND stop_request IS NOT NULL",
        )?;
        let rows = query.query_map(params![owner], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn hold_admission<'a>(&'a self, _pipeline: &str) -> anyhow::Result<AdmissionHold<'a>> {
        // One lock file for every pipeline: admissions are short, and other
        // processes on this database are on this machine.
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.admission)
            .with_context(|| format!("opening {}", self.admission.display()))?;
        file.lock()
            .with_context(|| format!("locking {}", self.admission.display()))?;
        Ok(AdmissionHold::new(move || drop(file)))
    }

    fn unleased_executions(
        &self,
        owner: &str,
        now_ms: i64,
        own: bool,
    ) -> anyhow::Result<Vec<String>> {
        let db = self.read();
        let mut statement = db.prepare(
            "SELECT id FROM executions WHERE status = 'InProgress'
               AND (owner IS NULL OR lease_until_ms IS NULL OR lease_until_ms < ?2 OR (?3 AND owner = ?1))
             ORDER BY started_ms, rowid",
        )?;
        let rows = statement.query_map(params![owner, now_ms, own], |row| row.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

impl PipelineStore for SqliteStore {
    fn put_pipeline(&self, name: &str, source: &str, now_ms: i64) -> anyhow::Result<i64> {
        let mut db = self.db();
        let tx = write_transaction(&mut db)?;
        let version: i64 = tx.query_row(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM pipelines WHERE name = ?1",
            params![name],
            |row| row.get(0),
        )?;
        tx.execute(
            "INSERT INTO pipelines (name, version, source, created_ms) VALUES (?1, ?2, ?3, ?4)",
            params![name, version, source, now_ms],
        )?;
        // Re-registering a deleted pipeline brings it back with a new version.
        tx.execute(
            "UPDATE pipelines SET deleted = 0 WHERE name = ?1",
            params![name],
        )?;
        tx.commit()?;
        Ok(version)
    }

    fn pipeline(&self, name: &str, version: Option<i64>) -> anyhow::Result<Option<PipelineRecord>> {
        let db = self.read();
        let mut statement = db.prepare_cached(
            "SELECT name, version, source, created_ms FROM pipelines
             WHERE name = ?1 AND deleted = 0 AND (?2 IS NULL OR version = ?2) ORDER BY version DESC LIMIT 1",
        )?;
        Ok(statement
            .query_row(params![name, version], pipeline_from_row)
            .optional()?)
    }

    fn pipelines(&self) -> anyhow::Result<Vec<PipelineRecord>> {
        let db = self.read();
        let mut statement = db.prepare(
            "SELECT name, MAX(version), source, created_ms FROM pipelines WHERE deleted = 0 GROUP BY name ORDER BY name",
        )?;
        let rows = statement.query_map([], pipeline_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn delete_pipeline(&self, name: &str) -> anyhow::Result<bool> {
        let changed = self.db().execute(
            "UPDATE pipelines SET deleted = 1 WHERE name = ?1 AND deleted = 0",
            params![name],
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
        self.write(
            "INSERT OR REPLACE INTO transitions (pipeline, stage, disabled_reason, changed_by, changed_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![pipeline, stage, disabled, by, now_ms],
        )
    }

    fn disabled_transitions(&self) -> anyhow::Result<Vec<(String, String, String)>> {
        let db = self.read();
        let mut statement = db.prepare(
            "SELECT pipeline, stage, disabled_reason FROM transitions WHERE disabled_reason IS NOT NULL",
        )?;
        let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

impl ApprovalStore for SqliteStore {
    fn open_approval(
        &self,
        execution: &str,
        action: &str,
        approvers: &str,
        message: &str,
        expires_ms: i64,
    ) -> anyhow::Result<ApprovalRecord> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        self.write(
            "INSERT INTO approvals (execution_id, action, token, approvers, message, status, expires_ms) VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6)
             ON CONFLICT (execution_id, action) DO UPDATE SET status = 'pending', token = excluded.token, expires_ms = excluded.expires_ms, decided_by = NULL, decided_ms = NULL, comment = NULL
             WHERE approvals.status IN ('rejected', 'expired')",
            params![execution, action, token, approvers, message, expires_ms],
        )?;
        self.approval(execution, action)?
            .context("approval not recorded")
    }

    fn approval(&self, execution: &str, action: &str) -> anyhow::Result<Option<ApprovalRecord>> {
        let db = self.read();
        let mut statement = db.prepare_cached(
            "SELECT execution_id, action, token, approvers, message, status, expires_ms, decided_by, decided_ms, comment
             FROM approvals WHERE execution_id = ?1 AND action = ?2",
        )?;
        Ok(statement
            .query_row(params![execution, action], |row| {
                Ok(ApprovalRecord {
                    execution_id: row.get(0)?,
                    action: row.get(1)?,
                    token: row.get(2)?,
                    approvers: row.get(3)?,
                    message: row.get(4)?,
                    status: row.get(5)?,
                    expires_ms: row.get(6)?,
                    decided_by: row.get(7)?,
                    decided_ms: row.get(8)?,
                    comment: row.get(9)?,
                })
            })
            .optional()?)
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
        let changed = self.db().execute(
            "UPDATE approvals SET status = ?4, decided_by = ?5, decided_ms = ?6, comment = ?7
             WHERE execution_id = ?1 AND action = ?2 AND token = ?3 AND status = 'pending'",
            params![
                execution,
                action,
                token,
                if approve { "approved" } else { "rejected" },
                by,
                now_ms,
                comment
            ],
        )?;
        Ok(changed == 1)
    }

    fn expire_approval(&self, execution: &str, action: &str) -> anyhow::Result<()> {
        self.write(
            "UPDATE approvals SET status = 'expired' WHERE execution_id = ?1 AND action = ?2 AND status = 'pending'",
            params![execution, action],
        )
    }
}

impl EventStore for SqliteStore {
    fn mask_with(&self, masker: std::sync::Arc<crate::secrets::Masker>) {
        let _ = self.masker.set(masker);
    }

    fn append_event(&self, mut event: EventRecord) -> anyhow::Result<EventRecord> {
        event.detail = self.mask(&event.detail);
        let mut db = self.db();
        let transaction = write_transaction(&mut db)?;
        held_by_us(&transaction, self.owner.get(), &event.execution)?;
        let stored = insert_event(&transaction, event)?;
        transaction.commit()?;
        Ok(stored)
    }

    fn events_after(&self, after_seq: i64, limit: usize) -> anyhow::Result<Vec<EventRecord>> {
        let db = self.read();
        let mut statement = db.prepare_cached(
            "SELECT seq, ts_ms, execution_id, pipeline, kind, name, state, detail FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = statement.query_map(params![after_seq, sql_count(limit)], event_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn rule_events(&self, execution: &str) -> anyhow::Result<Vec<EventRecord>> {
        let db = self.read();
        // `kind = 'rule'` literally, so that the partial index serves it.
        let mut statement = db.prepare_cached(
            "SELECT seq, ts_ms, execution_id, pipeline, kind, name, state, detail FROM events WHERE execution_id = ?1 AND kind = 'rule' ORDER BY seq",
        )?;
        let rows = statement.query_map(params![execution], event_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn notify_cursor(&self) -> anyhow::Result<i64> {
        Ok(self
            .read()
            .query_row("SELECT seq FROM notify_cursor WHERE id = 1", [], |row| {
                row.get(0)
            })
            .optional()?
            .unwrap_or(0))
    }

    fn set_notify_cursor(&self, seq: i64) -> anyhow::Result<()> {
        self.write(
            "INSERT OR REPLACE INTO notify_cursor (id, seq) VALUES (1, ?1)",
            params![seq],
        )
    }

    fn last_event_seq(&self) -> anyhow::Result<i64> {
        Ok(self
            .read()
            .query_row(
                "SELECT MAX(COALESCE((SELECT MAX(seq) FROM events), 0), COALESCE((SELECT seq FROM event_floor), 0))",
                [],
                |row| row.get(0),
            )?)
    }

    fn hold_notifier(&self, owner: &str, now_ms: i64, until_ms: i64) -> anyhow::Result<bool> {
        let changed = self
            .db()
            .prepare_cached(
                "INSERT INTO notifier (id, owner, until_ms) VALUES (1, ?1, ?3)
             ON CONFLICT (id) DO UPDATE SET owner = excluded.owner, until_ms = excluded.until_ms
             WHERE notifier.owner = excluded.owner OR notifier.until_ms < ?2",
            )?
            .execute(params![owner, now_ms, until_ms])?;
        Ok(changed == 1)
    }
}

impl AccessStore for SqliteStore {
    fn add_token(&self, token: &TokenRecord, secret_hash: &str, now_ms: i64) -> anyhow::Result<()> {
        self.write(
            "INSERT INTO tokens (id, secret_hash, role, pipelines, description, created_ms, expires_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![token.id, secret_hash, token.role, serde_json::to_string(&token.pipelines)?, token.description, now_ms, token.expires_ms],
        )
    }

    fn tokens(&self) -> anyhow::Result<Vec<(TokenRecord, String)>> {
        let db = self.read();
        let mut statement = db.prepare_cached(
            "SELECT id, role, pipelines, description, expires_ms, revoked_ms, secret_hash FROM tokens ORDER BY created_ms, id",
        )?;
        let rows = statement.query_map([], |row| {
            let record = TokenRecord {
                id: row.get(0)?,
                role: row.get(1)?,
                pipelines: json_column(row, 2, "tokens.pipelines")?,
                description: row.get(3)?,
                expires_ms: row.get(4)?,
                revoked_ms: row.get(5)?,
            };
            Ok((record, row.get(6)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn revoke_token(&self, id: &str, now_ms: i64) -> anyhow::Result<bool> {
        let changed = self.db().execute(
            "UPDATE tokens SET revoked_ms = COALESCE(revoked_ms, ?2) WHERE id = ?1",
            params![id, now_ms],
        )?;
        Ok(changed > 0)
    }

    fn audit(&self, entry: &AuditRecord) -> anyhow::Result<()> {
        let (action, target, result) = (
            self.mask(&entry.action),
            self.mask(&entry.target),
            self.mask(&entry.result),
        );
        self.write(
            "INSERT INTO audit (ts_ms, actor, action, target, result, pipeline) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![entry.ts_ms, entry.actor, action, target, result, entry.pipeline],
        )
    }

    fn audit_log(
        &self,
        after_seq: i64,
        limit: usize,
        scope: Option<&[String]>,
    ) -> anyhow::Result<Vec<AuditRecord>> {
        let db = self.read();
        let mut statement = db.prepare(
            "SELECT seq, ts_ms, actor, action, target, result, pipeline FROM audit
             WHERE seq > ?1 AND (?3 IS NULL OR pipeline IN (SELECT value FROM json_each(?3)))
             ORDER BY seq LIMIT ?2",
        )?;
        let scope = scope.map(serde_json::to_string).transpose()?;
        let rows = statement.query_map(params![after_seq, sql_count(limit), scope], |row| {
            Ok(AuditRecord {
                seq: row.get(0)?,
                ts_ms: row.get(1)?,
                actor: row.get(2)?,
                action: row.get(3)?,
                target: row.get(4)?,
                result: row.get(5)?,
                pipeline: row.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

impl TriggerStore for SqliteStore {
    fn poll_revision(&self, pipeline: &str, action: &str) -> anyhow::Result<Option<String>> {
        Ok(self
            .read()
            .query_row(
                "SELECT last_revision FROM poll_state WHERE pipeline = ?1 AND action = ?2",
                params![pipeline, action],
                |row| row.get(0),
            )
            .optional()?)
    }

    fn swap_poll_revision(
        &self,
        pipeline: &str,
        action: &str,
        from: Option<&str>,
        to: Option<&str>,
        now_ms: i64,
    ) -> anyhow::Result<bool> {
        let db = self.db();
        let changed = match (from, to) {
            (None, Some(to)) => db.execute(
                "INSERT INTO poll_state (pipeline, action, last_revision, polled_ms) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                params![pipeline, action, to, now_ms],
            )?,
            (Some(from), Some(to)) => db.execute(
                "UPDATE poll_state SET last_revision = ?4, polled_ms = ?5 WHERE pipeline = ?1 AND action = ?2 AND last_revision = ?3",
                params![pipeline, action, from, to, now_ms],
            )?,
            (Some(from), None) => db.execute(
                "DELETE FROM poll_state WHERE pipeline = ?1 AND action = ?2 AND last_revision = ?3",
                params![pipeline, action, from],
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
        let db = self.db();
        let inserted = db.execute(
            "INSERT OR IGNORE INTO webhook_deliveries (pipeline, delivery, received_ms) VALUES (?1, ?2, ?3)",
            params![pipeline, delivery, now_ms],
        )?;
        if inserted > 0 {
            return Ok(None);
        }
        let execution = db.query_row(
            "SELECT execution_id FROM webhook_deliveries WHERE pipeline = ?1 AND delivery = ?2",
            params![pipeline, delivery],
            |row| row.get(0),
        )?;
        Ok(Some(execution))
    }

    fn set_delivery_execution(
        &self,
        pipeline: &str,
        delivery: &str,
        execution: &str,
    ) -> anyhow::Result<()> {
        self.write(
            "UPDATE webhook_deliveries SET execution_id = ?3 WHERE pipeline = ?1 AND delivery = ?2",
            params![pipeline, delivery, execution],
        )
    }

    fn claim_cron_fire(
        &self,
        pipeline: &str,
        expression: &str,
        due_ms: i64,
    ) -> anyhow::Result<bool> {
        let inserted = self.db().execute(
            "INSERT OR IGNORE INTO cron_fires (pipeline, expression, due_ms) VALUES (?1, ?2, ?3)",
            params![pipeline, expression, due_ms],
        )?;
        Ok(inserted > 0)
    }

    fn release_delivery(&self, pipeline: &str, delivery: &str) -> anyhow::Result<()> {
        self.write(
            "DELETE FROM webhook_deliveries WHERE pipeline = ?1 AND delivery = ?2 AND execution_id IS NULL",
            params![pipeline, delivery],
        )
    }
}

impl RetentionStore for SqliteStore {
    fn gc(&self, cutoff_ms: i64) -> anyhow::Result<GcCounts> {
        let mut db = self.db();
        let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let children = |table: &str| -> rusqlite::Result<u64> {
            let sql = format!("DELETE FROM {table} WHERE execution_id IN ({GC_DOOMED})");
            Ok(tx.execute(&sql, params![cutoff_ms])? as u64)
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
        counts.executions = tx.execute(
            &format!("DELETE FROM executions WHERE id IN ({GC_DOOMED})"),
            params![cutoff_ms],
        )? as u64;
        // An event the notification loop has not delivered yet stays, however
        // old: delivery is at least once. (No cursor: no server ever ran the
        // loop, and nothing waits for the events.)
        // The newest number given stays known when its event goes (see
        // `insert_event`).
        tx.execute(
            "UPDATE event_floor SET seq = MAX(seq, (SELECT COALESCE(MAX(seq), 0) FROM events))",
            [],
        )?;
        counts.events = tx.execute(
            "DELETE FROM events WHERE ts_ms < ?1
               AND seq <= COALESCE((SELECT seq FROM notify_cursor), seq)",
            params![cutoff_ms],
        )? as u64;
        counts.webhook_deliveries = tx.execute(
            "DELETE FROM webhook_deliveries WHERE received_ms < ?1",
            params![cutoff_ms],
        )? as u64;
        counts.audit_rows =
            tx.execute("DELETE FROM audit WHERE ts_ms < ?1", params![cutoff_ms])? as u64;
        counts.cron_fires = tx.execute(
            "DELETE FROM cron_fires WHERE due_ms < ?1",
            params![cutoff_ms],
        )? as u64;
        tx.commit()?;
        Ok(counts)
    }

    fn referenced_digests(&self) -> anyhow::Result<std::collections::HashSet<String>> {
        let db = self.read();
        let mut statement = db.prepare("SELECT outputs FROM action_runs")?;
        // An unreadable row is an error, not "no outputs": gc would delete
        // artifacts it still refers to.
        let rows = statement.query_map([], |row| {
            json_column::<Vec<OutputRecord>>(row, 0, "action_runs.outputs")
        })?;
        let mut digests = std::collections::HashSet::new();
        for outputs in rows {
            digests.extend(outputs?.into_iter().map(|o| o.digest));
        }
        Ok(digests)
    }
}

// ---------------------------------------------------------------------------
// Retention (`sluice gc`, `sluice serve --retention`): rows older than a cutoff
// go, except those of executions still running or stopping.
// ---------------------------------------------------------------------------

/// Which executions a retention sweep removes: finished before the cutoff (?1).
const GC_DOOMED: &str = "SELECT id FROM executions WHERE status NOT IN ('InProgress', 'Stopping') AND ended_ms IS NOT NULL AND ended_ms < ?1";

// ---------------------------------------------------------------------------

/// A JSON column read into `T`. Bad JSON is an error naming the column, never
/// an empty value: a row that cannot be read must not pass for one that says
/// nothing.
fn json_column<T: serde::de::DeserializeOwned>(
    row: &rusqlite::Row<'_>,
    index: usize,
    column: &'static str,
) -> rusqlite::Result<T> {
    let text: String = row.get(index)?;
    serde_json::from_str(&text).map_err(|error| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            rusqlite::types::Type::Text,
            format!("column {column} holds bad JSON ({error})").into(),
        )
    })
}

fn pipeline_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<PipelineRecord> {
    Ok(PipelineRecord {
        name: row.get(0)?,
        version: row.get(1)?,
        source: row.get(2)?,
        created_ms: row.get(3)?,
    })
}

fn execution_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ExecutionRecord> {
    Ok(ExecutionRecord {
        id: row.get(0)?,
        pipeline: row.get(1)?,
        pipeline_file: row.get(2)?,
        status: row.get(3)?,
        started_ms: row.get(4)?,
        ended_ms: row.get(5)?,
        error: row.get(6)?,
        variables: json_column(row, 7, "executions.variables")?,
        pipeline_version: row.get(8)?,
        trigger: json_column(row, 9, "executions.trigger")?,
    })
}

/// A count or position for SQLite's `LIMIT` and `OFFSET`, which are signed:
/// `as i64` turns one above `i64::MAX` negative, and SQLite reads a negative
/// offset as none (the first page) and a negative limit as no limit.
fn sql_count(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// A row of `SELECT rowid, action, attempt, ts_ms, stream, line FROM action_logs`.
fn log_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<LogRecord> {
    Ok(LogRecord {
        id: row.get(0)?,
        action: row.get(1)?,
        attempt: row.get(2)?,
        ts_ms: row.get(3)?,
        stream: row.get(4)?,
        line: row.get(5)?,
    })
}

/// Which waiting places a newcomer supersedes: all of them while another
/// execution is inside, else all but the first in line (it is about to
/// enter an empty stage, not waiting behind anyone).
const SUPERSEDABLE: &str = "(EXISTS (SELECT 1 FROM gate_places g JOIN executions e ON e.id = g.execution_id WHERE e.status = 'InProgress' AND g.pipeline = ?1 AND g.stage = ?2 AND g.state = 'inside')
  OR gate_places.seq > (SELECT MIN(g.seq) FROM gate_places g JOIN executions e ON e.id = g.execution_id WHERE e.status = 'InProgress' AND g.pipeline = ?1 AND g.stage = ?2 AND g.state = 'waiting'))";

/// Places at a gate that count: those of executions still in progress.
const LIVE_PLACES: &str =
    "FROM gate_places g JOIN executions e ON e.id = g.execution_id WHERE e.status = 'InProgress'";

/// An `events` row, selected as `seq, ts_ms, execution_id, pipeline, kind,
/// name, state, detail`.
fn event_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<EventRecord> {
    Ok(EventRecord {
        seq: row.get(0)?,
        ts_ms: row.get(1)?,
        execution: row.get(2)?,
        pipeline: row.get(3)?,
        kind: row.get(4)?,
        name: row.get(5)?,
        state: row.get(6)?,
        detail: row.get(7)?,
    })
}

impl GateStore for SqliteStore {
    fn join_gate(
        &self,
        pipeline: &str,
        stage: &str,
        execution: &str,
        supersede: bool,
    ) -> anyhow::Result<()> {
        let mut db = self.db();
        let tx = write_transaction(&mut db)?;
        let joined = tx
            .prepare_cached("INSERT INTO gate_places (pipeline, stage, execution_id, state) VALUES (?1, ?2, ?3, 'waiting') ON CONFLICT DO NOTHING")?
            .execute(params![pipeline, stage, execution])?;
        if joined == 1 && supersede {
            tx.prepare_cached(&format!("UPDATE gate_places SET state = 'superseded' WHERE pipeline = ?1 AND stage = ?2 AND execution_id <> ?3 AND state = 'waiting' AND {SUPERSEDABLE}"))?
                .execute(params![pipeline, stage, execution])?;
        }
        tx.commit()?;
        Ok(())
    }

    fn try_enter_gate(
        &self,
        pipeline: &str,
        stage: &str,
        execution: &str,
        one_at_a_time: bool,
    ) -> anyhow::Result<GateTry> {
        let mut db = self.db();
        let tx = write_transaction(&mut db)?;
        let key = params![pipeline, stage, execution];
        let place: Option<String> = tx
            .prepare_cached("SELECT state FROM gate_places WHERE pipeline = ?1 AND stage = ?2 AND execution_id = ?3")?
            .query_row(key, |row| row.get(0))
            .optional()?;
        let entry = match place.as_deref() {
            Some("inside") => GateTry::Entered,
            Some("superseded") => {
                tx.execute("DELETE FROM gate_places WHERE pipeline = ?1 AND stage = ?2 AND execution_id = ?3", key)?;
                GateTry::Superseded
            }
            _ if !one_at_a_time => {
                tx.execute("DELETE FROM gate_places WHERE pipeline = ?1 AND stage = ?2 AND execution_id = ?3", key)?;
                GateTry::Entered
            }
            _ => {
                if place.is_none() {
                    tx.execute("INSERT INTO gate_places (pipeline, stage, execution_id, state) VALUES (?1, ?2, ?3, 'waiting')", key)?;
                }
                let occupied: bool = tx
                    .prepare_cached(&format!("SELECT EXISTS (SELECT 1 {LIVE_PLACES} AND g.pipeline = ?1 AND g.stage = ?2 AND g.state = 'inside' AND g.execution_id <> ?3)"))?
                    .query_row(key, |row| row.get(0))?;
                let first: Option<String> = tx
                    .prepare_cached(&format!("SELECT g.execution_id {LIVE_PLACES} AND g.pipeline = ?1 AND g.stage = ?2 AND g.state = 'waiting' ORDER BY g.seq LIMIT 1"))?
                    .query_row(params![pipeline, stage], |row| row.get(0))
                    .optional()?;
                if occupied || first.as_deref() != Some(execution) {
                    GateTry::Wait
                } else {
                    tx.execute("UPDATE gate_places SET state = 'inside' WHERE pipeline = ?1 AND stage = ?2 AND execution_id = ?3", key)?;
                    GateTry::Entered
                }
            }
        };
        tx.commit()?;
        Ok(entry)
    }

    fn leave_gate_line(&self, pipeline: &str, stage: &str, execution: &str) -> anyhow::Result<()> {
        self.write(
            "DELETE FROM gate_places WHERE pipeline = ?1 AND stage = ?2 AND execution_id = ?3 AND state <> 'inside'",
            params![pipeline, stage, execution],
        )
    }

    fn gate_waiting(&self, pipeline: &str) -> anyhow::Result<usize> {
        let count: i64 = self
            .read()
            .prepare_cached(&format!(
                "SELECT COUNT(*) {LIVE_PLACES} AND g.pipeline = ?1 AND g.state = 'waiting'"
            ))?
            .query_row(params![pipeline], |row| row.get(0))?;
        Ok(count as usize)
    }
}

impl AttemptQueue for SqliteStore {
    fn queue_attempt(&self, key: &str, execution: &str, payload: &str) -> anyhow::Result<()> {
        self.db().execute(
            "INSERT INTO attempts (key, execution_id, payload, state, queued_ms) VALUES (?1, ?2, ?3, 'queued', ?4)
             ON CONFLICT (key) DO UPDATE SET state = 'queued', payload = excluded.payload, worker = NULL, result = NULL, lease_until_ms = NULL
             WHERE attempts.state = 'cancelled'",
            params![key, execution, payload, sluice_core::units::now_ms()],
        )?;
        self.signals.announce(super::signals::QUEUED);
        Ok(())
    }

    fn claim_attempt(
        &self,
        worker: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> anyhow::Result<Option<ClaimedAttempt>> {
        let mut db = self.db();
        let tx = write_transaction(&mut db)?;
        let found = tx
            .query_row(
                "SELECT key, execution_id, payload, fence FROM attempts
                 WHERE state = 'queued' OR (state = 'running' AND lease_until_ms < ?1)
                 ORDER BY rowid LIMIT 1",
                params![now_ms],
                |row| {
                    Ok(ClaimedAttempt {
                        key: row.get(0)?,
                        execution: row.get(1)?,
                        payload: row.get(2)?,
                        fence: row.get::<_, i64>(3)? + 1,
                    })
                },
            )
            .optional()?;
        if let Some(claimed) = &found {
            tx.execute(
                "UPDATE attempts SET state = 'running', worker = ?2, fence = ?3, lease_until_ms = ?4 WHERE key = ?1",
                params![claimed.key, worker, claimed.fence, until_ms],
            )?;
        }
        tx.commit()?;
        Ok(found)
    }

    fn renew_attempt(&self, key: &str, fence: i64, until_ms: i64) -> anyhow::Result<bool> {
        let changed = self.db().execute(
            "UPDATE attempts SET lease_until_ms = ?3 WHERE key = ?1 AND fence = ?2 AND state = 'running'",
            params![key, fence, until_ms],
        )?;
        Ok(changed == 1)
    }

    fn complete_attempt(&self, key: &str, fence: i64, result: &str) -> anyhow::Result<bool> {
        let changed = self.db().execute(
            "UPDATE attempts SET state = 'done', result = ?3, lease_until_ms = NULL WHERE key = ?1 AND fence = ?2 AND state = 'running'",
            params![key, fence, result],
        )?;
        if changed == 1 {
            self.signals.announce(&super::signals::done(key));
        }
        Ok(changed == 1)
    }

    fn queued_attempt(&self, key: &str) -> anyhow::Result<Option<QueuedAttempt>> {
        let row = self
            .read()
            .query_row(
                "SELECT state, worker, fence, result FROM attempts WHERE key = ?1",
                params![key],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                    ))
                },
            )
            .optional()?;
        row.map(|(state, worker, fence, result)| {
            Ok(QueuedAttempt {
                state: AttemptState::parse(&state)?,
                worker,
                fence,
                result,
            })
        })
        .transpose()
    }

    fn cancel_attempt(&self, key: &str) -> anyhow::Result<()> {
        let owner = self.owner.get().map(|o| o.id.as_str());
        self.db().execute(
            "UPDATE attempts SET state = 'cancelled', lease_until_ms = NULL WHERE key = ?1 AND state IN ('queued', 'running')
               AND (?2 IS NULL OR NOT EXISTS (SELECT 1 FROM executions e WHERE e.id = attempts.execution_id AND e.owner <> ?2))",
            params![key, owner],
        )?;
        self.signals.announce(&super::signals::done(key));
        Ok(())
    }

    fn forget_attempts(&self, execution: &str) -> anyhow::Result<()> {
        self.db().execute(
            "DELETE FROM attempts WHERE execution_id = ?1 AND state IN ('done', 'cancelled')",
            params![execution],
        )?;
        Ok(())
    }

    fn signals(&self) -> std::sync::Arc<super::StoreSignals> {
        self.signals.clone()
    }
}

/// Refuse a write to `execution` when another process holds it now: this one
/// lost its lease (it stopped renewing, e.g. paused), and the execution was
/// taken over. Runs inside the write's transaction, so no claim falls between
/// the check and the write. Without an owner (no lease taken) nothing is refused.
fn held_by_us(db: &Connection, owner: Option<&Owner>, execution: &str) -> anyhow::Result<()> {
    let Some(owner) = owner else {
        return Ok(());
    };
    let holder: Option<Option<String>> = db
        .query_row(
            "SELECT owner FROM executions WHERE id = ?1",
            params![execution],
            |row| row.get(0),
        )
        .optional()?;
    match holder {
        Some(Some(holder)) if holder != owner.id => Err(lease_lost(execution, &holder)),
        _ => Ok(()),
    }
}

/// An execution to record as started.
struct NewExecution<'a> {
    id: &'a str,
    pipeline: &'a str,
    file: &'a Path,
    variables: &'a serde_json::Value,
    trigger: &'a serde_json::Value,
    now_ms: i64,
}

/// Record `new` as InProgress, leased to `owner`.
fn insert_execution(
    db: &Connection,
    owner: Option<&Owner>,
    new: &NewExecution<'_>,
) -> anyhow::Result<()> {
    // The lease runs from the store's clock; `now_ms` only dates the start.
    let (owner, until) = lease(owner, sluice_core::units::now_ms());
    db.prepare_cached(
        "INSERT INTO executions (id, pipeline, pipeline_file, status, started_ms, variables, trigger, owner, lease_until_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![new.id, new.pipeline, new.file.display().to_string(), Status::InProgress.name(), new.now_ms, new.variables.to_string(), new.trigger.to_string(), owner, until])?;
    Ok(())
}

/// Insert an (already masked) event; returns it with its sequence number:
/// one past the newest event's, or past `event_floor` (the highest number
/// given before gc removed events) if that is higher, so that a number is
/// never given twice (a stream resumed after it would skip the second).
fn insert_event(db: &Connection, mut event: EventRecord) -> anyhow::Result<EventRecord> {
    db.prepare_cached(
        "INSERT INTO events (seq, ts_ms, execution_id, pipeline, kind, name, state, detail)
         VALUES (MAX(COALESCE((SELECT MAX(seq) FROM events), 0), COALESCE((SELECT seq FROM event_floor), 0)) + 1,
                 ?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![event.ts_ms, event.execution, event.pipeline, event.kind, event.name, event.state, event.detail])?;
    event.seq = db.last_insert_rowid();
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store holding `count` executions of pipeline `p`, started 1 ms apart.
    fn store_with_executions(count: usize) -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("state.db")).unwrap();
        for i in 0..count {
            let id = format!("e{i}");
            let none = serde_json::json!({});
            let file = Path::new("p.toml");
            store
                .start_execution(&id, "p", file, &none, &none, i as i64)
                .unwrap();
        }
        (dir, store)
    }

    fn schema_version(path: &Path) -> i64 {
        let db = Connection::open(path).unwrap();
        db.pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap()
    }

    #[test]
    fn a_new_database_takes_every_migration_and_records_its_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        SqliteStore::open(&path).unwrap();
        assert_eq!(schema_version(&path), MIGRATIONS.len() as i64);
        // Opening again takes none twice.
        SqliteStore::open(&path).unwrap();
        assert_eq!(schema_version(&path), MIGRATIONS.len() as i64);
    }

    #[test]
    fn runs_and_event_numbers_survive_the_move_to_fewer_pages_per_transition() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            // A database at version 8, whose newest events gc has removed.
            let mut db = Connection::open(&path).unwrap();
            for (number, migration) in MIGRATIONS[..8].iter().enumerate() {
                let tx = db.transaction().unwrap();
                (migration.apply)(&tx).unwrap();
                tx.pragma_update(None, "user_version", number as i64 + 1)
                    .unwrap();
                tx.commit().unwrap();
            }
            db.execute_batch(
                "INSERT INTO executions (id, pipeline, pipeline_file, status, started_ms) VALUES ('x', 'p', 'p.toml', 'Succeeded', 1);
                 INSERT INTO stage_runs (execution_id, stage, position, status, started_ms) VALUES ('x', 'Build', 0, 'Succeeded', 1);
                 INSERT INTO action_runs (execution_id, stage, action, run_order, plugin, status, started_ms, progress) VALUES ('x', 'Build', 'compile', 1, 'noop@0.1', 'Succeeded', 1, 'half way');
                 INSERT INTO events (ts_ms, execution_id, pipeline, kind, name, state, detail) VALUES (1, 'x', 'p', 'rule', 'r', 'PASSED', ''), (2, 'x', 'p', 'pipeline', 'p', 'SUCCEEDED', ''), (3, 'x', 'p', 'pipeline', 'p', 'SUCCEEDED', '');
                 DELETE FROM events WHERE seq > 1;",
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(schema_version(&path), MIGRATIONS.len() as i64);
        assert_eq!(store.stages("x").unwrap()[0].stage, "Build");
        let actions = store.actions("x").unwrap();
        assert_eq!(actions[0].action, "compile");
        assert_eq!(actions[0].progress.as_deref(), Some("half way"));
        assert_eq!(store.rule_events("x").unwrap()[0].name, "r");
        let next = store
            .append_event(EventRecord {
                seq: 0,
                ts_ms: 4,
                execution: "x".into(),
                pipeline: "p".into(),
                kind: "pipeline".into(),
                name: "p".into(),
                state: "SUCCEEDED".into(),
                detail: String::new(),
            })
            .unwrap();
        assert_eq!(next.seq, 4, "numbers 2 and 3 were given before");
    }

    #[test]
    fn a_database_from_before_numbered_migrations_is_adopted_with_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            // The original tables, without the columns added later, and a row.
            let db = Connection::open(&path).unwrap();
            db.execute_batch(SCHEMA).unwrap();
            db.execute(
                "INSERT INTO executions (id, pipeline, pipeline_file, status, started_ms) VALUES ('old', 'p', 'p.toml', 'Succeeded', 1)",
                [],
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let old = store.execution("old").unwrap().unwrap();
        assert_eq!(old.trigger, serde_json::json!({}));
        assert_eq!(old.pipeline_version, None);
        assert_eq!(schema_version(&path), MIGRATIONS.len() as i64);
    }

    #[test]
    fn a_database_newer_than_the_binary_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let error = SqliteStore::open(&path)
            .err()
            .expect("a newer database opened");
        let message = format!("{error:#}");
        assert!(
            message.contains("schema version 99, newer than this sluice knows"),
            "{message}"
        );
        assert_eq!(schema_version(&path), 99);
    }

    #[test]
    fn a_row_with_bad_json_is_an_error_naming_its_column_not_an_empty_value() {
        let (_dir, store) = store_with_executions(1);
        store
            .db()
            .execute(
                "UPDATE executions SET variables = '{\"who\": ' WHERE id = 'e0'",
                [],
            )
            .unwrap();
        let error = store.execution("e0").unwrap_err();
        assert!(
            format!("{error:#}").contains("column executions.variables holds bad JSON"),
            "{error:#}"
        );
    }

    /// Every engine-independent check of the store, on a fresh SQLite store each.
    macro_rules! conformance {
        ($($check:ident),* $(,)?) => {$(
            #[test]
            fn $check() {
                let dir = tempfile::tempdir().unwrap();
                let store = SqliteStore::open(&dir.path().join("state.db")).unwrap();
                super::super::conformance::$check(&store);
            }
        )*};
    }

    #[test]
    fn admission_is_held_by_one_process_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let (first, second) = (
            SqliteStore::open(&path).unwrap(),
            SqliteStore::open(&path).unwrap(),
        );
        super::super::conformance::admission_is_held_by_one_process_at_a_time(&first, &second);
    }

    #[test]
    fn concurrent_claimers_never_share_an_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let (first, second) = (
            SqliteStore::open(&path).unwrap(),
            SqliteStore::open(&path).unwrap(),
        );
        super::super::conformance::concurrent_claimers_never_share_an_attempt(&first, &second);
    }

    #[test]
    fn racing_processes_start_an_asked_rollback_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let (first, second) = (
            SqliteStore::open(&path).unwrap(),
            SqliteStore::open(&path).unwrap(),
        );
        super::super::conformance::racing_processes_start_an_asked_rollback_once(&first, &second);
    }

    #[test]
    fn racing_processes_enter_a_gate_one_at_a_time_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let (first, second) = (
            SqliteStore::open(&path).unwrap(),
            SqliteStore::open(&path).unwrap(),
        );
        super::super::conformance::racing_processes_enter_a_gate_one_at_a_time_in_order(
            &first, &second,
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
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("state.db")).unwrap();
        super::super::conformance::concurrent_transitions_are_each_committed_and_a_refusal_stays_alone(
            Arc::new(store),
        );
    }
}
