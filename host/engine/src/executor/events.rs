//! One vocabulary of what happens during an execution: [`Event`].
//!
//! Every event goes to the executor's [`EventSink`] (what `sluice run` prints);
//! those that are state changes also have a stored form ([`Event::change`]),
//! appended to the state store's `events` table and broadcast to SSE
//! subscribers and notifications. Progress, log lines, later attempts and
//! continuation rounds are only shown.

use std::sync::Arc;
use std::time::Duration;

use sluice_store::state::Status;

/// Something that happened during an execution.
#[derive(Clone, Debug)]
pub enum Event {
    /// The execution was recorded and starts.
    ExecutionStarted {
        /// Execution id.
        id: String,
        /// Pipeline name.
        pipeline: String,
    },
    /// An interrupted or failed execution was picked up again.
    ExecutionResumed {
        /// Execution id.
        id: String,
        /// Pipeline name.
        pipeline: String,
    },
    /// The execution ended (`sluice run` prints its own summary instead).
    ExecutionFinished {
        /// Execution id.
        id: String,
        /// Pipeline name.
        pipeline: String,
        /// How it ended.
        status: Status,
        /// Why it did not succeed (masked).
        error: Option<String>,
    },
    /// A stage started.
    StageStarted {
        /// Stage name.
        stage: String,
    },
    /// A stage ended.
    StageFinished {
        /// Stage name.
        stage: String,
        /// How it ended.
        status: Status,
        /// How long it ran.
        duration: Duration,
        /// Why it did not succeed, or empty.
        detail: String,
    },
    /// The execution waits at the boundary into a stage (shown, not stored).
    StageWaiting {
        /// Stage name.
        stage: String,
        /// Why: the execution mode or a disabled transition.
        reason: String,
    },
    /// A stage did not run because an earlier one failed.
    StageSkipped {
        /// Stage name.
        stage: String,
    },
    /// An action attempt (or continuation round) started.
    ActionStarted {
        /// Stage name.
        stage: String,
        /// Action name.
        action: String,
        /// `name@version`, or who approves.
        plugin: String,
        /// Attempt number, from 1.
        attempt: u32,
        /// Whether this is the action's start (its first attempt's first
        /// round), stored as STARTED; later attempts and rounds are only shown.
        first: bool,
    },
    /// An action reported progress.
    ActionProgress {
        /// Action name.
        action: String,
        /// Percent done.
        percent: u8,
        /// What it is doing.
        message: String,
    },
    /// An action printed a line (masked): command output, guest stdout/stderr
    /// or a `log.write`. Frequent: sinks that only count things ignore it.
    ActionLog {
        /// Action name.
        action: String,
        /// Which stream.
        stream: &'static str,
        /// The line.
        text: String,
    },
    /// A condition asked for a rollback of the stage (a server starts it).
    RollbackAsked {
        /// Stage name.
        stage: String,
    },
    /// A rule of a stage condition was evaluated.
    RuleEvaluated {
        /// Stage name.
        stage: String,
        /// `before-entry`, `on-success` or `on-failure`.
        condition: &'static str,
        /// Rule name.
        rule: String,
        /// Whether it passed.
        passed: bool,
        /// What was found.
        detail: String,
    },
    /// An attempt failed and another will follow after `wait`.
    ActionRetrying {
        /// Action name.
        action: String,
        /// The attempt that failed.
        attempt: u32,
        /// Why (masked).
        error: String,
        /// How long until the next attempt.
        wait: Duration,
    },
    /// An action ended.
    ActionFinished {
        /// Action name.
        action: String,
        /// How it ended.
        status: Status,
        /// How long it ran, retries included.
        duration: Duration,
        /// Its summary, or why it failed.
        detail: String,
    },
}

/// Receives events; must be cheap (it runs on the executor's tasks).
pub type EventSink = Arc<dyn Fn(Event) + Send + Sync>;

/// The stored form of an event that changes state (see
/// [`sluice_store::state::EventRecord`] for the record it becomes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// `pipeline`, `stage` or `action`.
    pub kind: &'static str,
    /// The pipeline, stage or action name.
    pub name: String,
    /// STARTED, SUCCEEDED, FAILED, SKIPPED, RETRYING, STOPPED, SUPERSEDED,
    /// ABANDONED or RESUMED.
    pub state: &'static str,
    /// Summary or reason.
    pub detail: String,
}

impl Change {
    fn new(kind: &'static str, name: &str, state: &'static str, detail: &str) -> Self {
        Self {
            kind,
            name: name.to_string(),
            state,
            detail: detail.to_string(),
        }
    }
}

impl Event {
    /// The state change this event records, if it is one.
    pub fn change(&self) -> Option<Change> {
        let change = match self {
            Event::ExecutionStarted { pipeline, .. } => {
                Change::new("pipeline", pipeline, "STARTED", "")
            }
            Event::ExecutionResumed { pipeline, .. } => {
                Change::new("pipeline", pipeline, "RESUMED", "")
            }
            Event::ExecutionFinished {
                pipeline,
                status,
                error,
                ..
            } => Change::new(
                "pipeline",
                pipeline,
                event_state(*status),
                error.as_deref().unwrap_or(""),
            ),
            Event::StageStarted { stage } => Change::new("stage", stage, "STARTED", ""),
            Event::StageFinished {
                stage,
                status,
                detail,
                ..
            } => Change::new("stage", stage, event_state(*status), detail),
            Event::StageSkipped { stage } => {
                Change::new("stage", stage, "SKIPPED", SKIPPED_BECAUSE)
            }
            Event::ActionStarted {
                action,
                first: true,
                ..
            } => Change::new("action", action, "STARTED", ""),
            Event::RollbackAsked { stage } => Change::new(
                "stage",
                stage,
                "ROLLBACK",
                "a condition asked for a rollback",
            ),
            Event::RuleEvaluated {
                stage,
                condition,
                rule,
                passed,
                detail,
            } => {
                let name = format!("{stage}.{condition}.{rule}");
                let state = if *passed { "PASSED" } else { "FAILED" };
                Change::new("rule", &name, state, detail)
            }
            Event::ActionRetrying {
                action,
                attempt,
                error,
                wait,
            } => {
                let wait =
                    humantime::format_duration(Duration::from_millis(wait.as_millis() as u64));
                let detail = format!("attempt {attempt} failed: {error}; retrying in {wait}");
                Change::new("action", action, "RETRYING", &detail)
            }
            Event::ActionFinished {
                action,
                status,
                detail,
                ..
            } => Change::new("action", action, event_state(*status), detail),
            Event::ActionStarted { first: false, .. }
            | Event::ActionProgress { .. }
            | Event::StageWaiting { .. }
            | Event::ActionLog { .. } => return None,
        };
        Some(change)
    }
}

/// Why a stage is skipped (its recorded error and its event's detail).
pub const SKIPPED_BECAUSE: &str = "an earlier stage failed";

/// The event state name of a status.
pub fn event_state(status: Status) -> &'static str {
    match status {
        Status::InProgress => "STARTED",
        Status::Succeeded => "SUCCEEDED",
        Status::Failed => "FAILED",
        Status::Skipped => "SKIPPED",
        Status::Superseded => "SUPERSEDED",
        Status::Stopping | Status::Stopped => "STOPPED",
        Status::Abandoned => "ABANDONED",
    }
}
