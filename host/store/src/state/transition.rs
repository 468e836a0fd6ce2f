//! A change of an execution's record, owned, so that the executor can hand it
//! to the store and await its commit without blocking a thread
//! ([`ExecutionStore::record`]).

use std::future::Future;
use std::pin::Pin;

use super::{ActionEnd, EventRecord, ExecutionEnd, ExecutionStore, OutputRecord, Status};

/// Resolves, with the stored event, once a [`Transition`] is committed.
pub type Recorded = Pin<Box<dyn Future<Output = anyhow::Result<Option<EventRecord>>> + Send>>;

/// One transition of an execution and the event announcing it, committed
/// together.
#[derive(Clone, Debug)]
pub struct Transition {
    /// The execution it changes.
    pub execution: String,
    /// What changes.
    pub change: Change,
    /// When, ms since the epoch.
    pub now_ms: i64,
    /// The event announcing it, stored in the same transaction.
    pub event: Option<EventRecord>,
}

/// What a [`Transition`] changes: the start or end of a stage or an action,
/// or the end of the execution.
#[derive(Clone, Debug)]
pub enum Change {
    /// As [`ExecutionStore::start_stage`].
    StageStarted {
        /// Stage name.
        stage: String,
        /// Its position in the pipeline.
        position: usize,
    },
    /// As [`ExecutionStore::finish_stage`].
    StageEnded {
        /// Stage name.
        stage: String,
        /// Final status.
        status: Status,
        /// Why it failed, if it did.
        error: Option<String>,
    },
    /// As [`ExecutionStore::start_action`].
    ActionStarted {
        /// Its stage.
        stage: String,
        /// Action name.
        action: String,
        /// Its run order in the stage.
        run_order: u32,
        /// The plugin (`name@version`) or built-in it runs.
        plugin: String,
        /// Its configuration, resolved and masked.
        resolved_config: Vec<(String, String)>,
    },
    /// As [`ExecutionStore::finish_action`].
    ActionEnded {
        /// Action name.
        action: String,
        /// How it ended.
        end: EndOfAction,
    },
    /// As [`ExecutionStore::finish_execution`].
    ExecutionEnded {
        /// Final status.
        status: Status,
        /// Why it failed, if it did.
        error: Option<String>,
        /// The stage a condition asked to roll back, stored with the end so
        /// that the rollback starts even if this process dies first.
        rollback: Option<String>,
    },
}

/// How an action run ended: [`ActionEnd`], owned.
#[derive(Clone, Debug)]
pub struct EndOfAction {
    /// Final status.
    pub status: Status,
    /// Attempts made.
    pub attempts: u32,
    /// Summary.
    pub summary: Option<String>,
    /// Error.
    pub error: Option<String>,
    /// Output variables.
    pub variables: Vec<(String, String)>,
    /// Output artifacts.
    pub outputs: Vec<OutputRecord>,
}

impl EndOfAction {
    /// The borrowed form the store's `finish_action` takes.
    pub fn as_end(&self) -> ActionEnd<'_> {
        ActionEnd {
            status: self.status,
            attempts: self.attempts,
            summary: self.summary.as_deref(),
            error: self.error.as_deref(),
            variables: &self.variables,
            outputs: &self.outputs,
        }
    }
}

impl Transition {
    /// Record it through `store`'s one-call methods, on this thread.
    pub fn apply_to<S: ExecutionStore + ?Sized>(
        self,
        store: &S,
    ) -> anyhow::Result<Option<EventRecord>> {
        let Transition {
            execution: id,
            change,
            now_ms,
            event,
        } = self;
        match change {
            Change::StageStarted { stage, position } => {
                store.start_stage(&id, &stage, position, now_ms, event)
            }
            Change::StageEnded {
                stage,
                status,
                error,
            } => store.finish_stage(&id, &stage, status, error.as_deref(), now_ms, event),
            Change::ActionStarted {
                stage,
                action,
                run_order,
                plugin,
                resolved_config,
            } => store.start_action(
                &id,
                &stage,
                &action,
                run_order,
                &plugin,
                &resolved_config,
                now_ms,
                event,
            ),
            Change::ActionEnded { action, end } => {
                store.finish_action(&id, &action, &end.as_end(), now_ms, event)
            }
            Change::ExecutionEnded {
                status,
                error,
                rollback,
            } => {
                let end = ExecutionEnd {
                    status,
                    error: error.as_deref(),
                    rollback: rollback.as_deref(),
                };
                store.finish_execution(&id, end, now_ms, event)
            }
        }
    }
}

/// A future already resolved: for engines that record on the calling thread.
pub fn recorded_now(result: anyhow::Result<Option<EventRecord>>) -> Recorded {
    Box::pin(std::future::ready(result))
}
