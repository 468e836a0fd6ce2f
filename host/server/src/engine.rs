//! What the server asks of the engine that runs executions.
//!
//! The server records, authorizes and schedules; running an execution is the
//! engine's job (`sluice-engine`, which needs wasmtime). The server sees it only
//! through [`Engine`], so this crate builds without the sandbox, and a server
//! can be tested, or later scaled out, with another engine behind it.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use sluice_api::StopMode;
use sluice_core::metrics::Histogram;
use sluice_core::pipeline::Plan;
use sluice_core::pipeline::conditions::When;
use sluice_store::artifact::ArtifactStore;
use sluice_store::state::{EventRecord, ExecutionRecord, Status};

/// An execution the engine has recorded (InProgress) but not yet run.
pub struct Begun {
    /// The execution id.
    pub id: String,
    /// Runs it to its end; the server spawns it on its own task. It ends
    /// with the stage a condition asked to roll back, if one did.
    pub run: BoxFuture<'static, anyhow::Result<Option<String>>>,
}

/// What the engine made of an execution a previous process left InProgress.
pub enum Reopened {
    /// It continues where it stopped.
    Resume(Begun),
    /// It could not continue; it is recorded as Failed with this reason.
    Failed(String),
}

/// The engine behind the server: begins, resumes and stops executions, holds
/// the stage gates and publishes state changes.
pub trait Engine: Send + Sync + 'static {
    /// Record a new execution of `plan` with these variable overrides and the
    /// `#{trigger.*}` variables of what started it.
    fn begin(
        &self,
        plan: Arc<Plan>,
        overrides: &BTreeMap<String, String>,
        trigger: BTreeMap<String, String>,
    ) -> anyhow::Result<Begun>;

    /// Pick up an execution a stopped process left InProgress.
    fn reopen(&self, plan: Arc<Plan>, id: &str) -> anyhow::Result<Reopened>;

    /// Retry a failed stage of a failed execution (its failed actions, or all of
    /// them with `all`), then the stages after it.
    fn reopen_for_retry(
        &self,
        plan: Arc<Plan>,
        id: &str,
        stage: &str,
        all: bool,
        overriding: Option<(When, &str)>,
    ) -> anyhow::Result<Begun>;

    /// Start a rollback of `stage` to what execution `target` ran there (see
    /// the executor's `begin_rollback`); `asked_by` the execution that asked
    /// for it, if one did: `None` when another process started it already.
    fn begin_rollback(
        &self,
        plan: Arc<Plan>,
        target: &str,
        stage: &str,
        asked_by: Option<&str>,
    ) -> anyhow::Result<Option<Begun>>;

    /// Why `target` cannot be what a rollback of `stage` goes back to.
    fn rollback_refusal(
        &self,
        plan: &Plan,
        stage: &str,
        target: &ExecutionRecord,
        stage_status: Option<Status>,
        current_version: i64,
    ) -> Option<String>;

    /// Stop a running execution; `false` if it is not running in this engine.
    fn stop(&self, id: &str, mode: StopMode, reason: &str) -> anyhow::Result<bool>;

    /// How many executions this engine is running.
    fn running_executions(&self) -> usize;

    /// How many executions of `pipeline` wait at its stage boundaries, in
    /// every process on the database.
    fn waiting(&self, pipeline: &str) -> anyhow::Result<usize>;

    /// Disable (with the reason) or enable the transition into `stage`.
    fn set_transition(&self, pipeline: &str, stage: &str, disabled: Option<String>);

    /// The disabled transitions are exactly `all` (pipeline, stage, reason),
    /// as the store holds them now (another server may have changed them).
    fn sync_transitions(&self, all: Vec<(String, String, String)>);

    /// An approval was decided: waiting approval actions look again.
    fn approvals_changed(&self);

    /// Every state change from now on, as stored.
    fn subscribe_events(&self) -> tokio::sync::broadcast::Receiver<EventRecord>;

    /// New revisions of a poll-triggered source action since `last`, oldest first.
    fn poll<'a>(
        &'a self,
        plan: Arc<Plan>,
        action: &'a str,
        last: Option<String>,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>>;

    /// Deliver one stored event through the pipeline's `[notifications]` action.
    fn notify<'a>(
        &'a self,
        plan: Arc<Plan>,
        event: &'a EventRecord,
    ) -> BoxFuture<'a, anyhow::Result<()>>;

    /// The ids of the executions running in this process.
    fn running_ids(&self) -> Vec<String>;

    /// Abandon the running actions of `id` here without recording anything:
    /// another process holds it now. Whether it was running here.
    fn let_go(&self, id: &str, reason: &str) -> bool;

    /// The artifact store outputs are kept in.
    fn artifacts(&self) -> &ArtifactStore;

    /// Make artifact `digest` present in [`Engine::artifacts`]: a worker on
    /// another machine may have produced it, and shared it through a bucket.
    fn fetch_artifact<'a>(&'a self, digest: &'a str) -> BoxFuture<'a, anyhow::Result<()>>;

    /// The value of a host secret, if this host has one by that name.
    fn secret(&self, name: &str) -> Option<String>;

    /// Time to instantiate a plugin for one invocation.
    fn instantiations(&self) -> &Histogram;
}
