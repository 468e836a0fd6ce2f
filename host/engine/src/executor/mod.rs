//! The executor: runs executions of a [`Plan`].
//!
//! Stages run in order, each entered through its gate. Within a stage, actions
//! are grouped by run order and each group runs in parallel. Before an action
//! starts, its `#{…}` references are resolved and the resolved configuration
//! recorded; after it succeeds, its outputs are recorded and its variables
//! published to its namespace. A failed action fails its stage and the
//! execution; later stages are skipped.
//!
//! The code is in three parts:
//! - [`machine`]: the decisions, pure (which group runs next, retries, what a
//!   resumed execution skips, how stops and gate results apply);
//! - [`ActionRunner`]: the work (sandboxed attempts, approvals, sleeps, polls,
//!   notifications), [`SandboxRunner`] being the real one;
//! - this module and `drive`: the loop that asks the machine, calls the
//!   runner, waits at gates, and records every change in the state store
//!   as it publishes its [`Event`].

mod drive;
mod events;
pub mod machine;
mod runner;
mod sandbox_runner;
#[cfg(test)]
mod tests;
mod workers;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;

use crate::cache::CacheStore;
use crate::gates::StageGates;
use sluice_core::pipeline::conditions::When;
use sluice_core::pipeline::{ActionPlan, Plan, TRIGGER_KEYS, vars};
use sluice_core::units::now_ms;
use sluice_sandbox::Runtime;
use sluice_store::artifact::{ArtifactInfo, ArtifactStore};
use sluice_store::off_workers;
use sluice_store::secrets::{Masker, SecretSource};
use sluice_store::state::{self, ActionEnd, EventRecord, OutputRecord, Status, Store, Transition};

pub use events::{Change, Event, EventSink, event_state};
pub use machine::StopMode;
use machine::{OnResume, StopRequest};
pub use runner::{ActionRunner, AttemptFailure, AttemptRequest, Attempted};
pub use sandbox_runner::SandboxRunner;
pub use workers::{Placement, Sharing, Worker};

/// How an execution ended.
#[derive(Clone, Debug)]
pub struct ExecutionResult {
    /// Execution id.
    pub id: String,
    /// Succeeded or Failed.
    pub status: Status,
    /// Why it failed.
    pub error: Option<String>,
    /// The stage a condition asked to roll back (result `rollback`).
    pub rollback: Option<String>,
}

/// A stage condition an operator overrides when retrying its stage.
#[derive(Clone, Copy, Debug)]
pub struct Overriding<'a> {
    /// Which condition (`before-entry` or `on-success`: those fail a stage).
    pub condition: When,
    /// Who overrode it (recorded in the rule event).
    pub by: &'a str,
}

/// What [`Executor::reopen`] made of an interrupted execution.
pub enum Reopened {
    /// It continues where it stopped.
    Resume(Started),
    /// It could not continue; it is recorded as Failed with this reason.
    Failed(String),
}

/// An execution recorded by [`Executor::begin`], not yet run.
pub struct Started(Arc<ExecutionContext>);

impl Started {
    /// The execution id.
    pub fn id(&self) -> &str {
        &self.0.id
    }
}

/// Runs executions; one per process is enough, it is shared by reference.
/// `R` runs the actions: the sandbox, or a fake in unit tests.
pub struct Executor<R: ActionRunner = SandboxRunner> {
    runner: R,
    state: Arc<dyn Store>,
    /// Every secret the host holds, masked in everything stored or shown.
    masker: Arc<Masker>,
    /// Where `#{cache.<name>}` points.
    caches: CacheStore,
    events: EventSink,
    gates: StageGates,
    running: Mutex<HashMap<String, Arc<ExecutionContext>>>,
    event_log: tokio::sync::broadcast::Sender<EventRecord>,
}

/// What every action of one execution shares.
struct ExecutionContext {
    /// Actions that already succeeded (when resuming): skipped, not rerun.
    done: HashSet<String>,
    /// Positions of the stages whose success was recorded (when resuming):
    /// not entered again. A stage whose actions all succeeded is not always
    /// one of them: the process may have died before recording its end.
    ended_stages: HashSet<usize>,
    /// Continuation tokens of actions that were between rounds (when resuming).
    continuations: HashMap<String, String>,
    /// A stage condition an operator overrode (when retrying): not checked.
    overridden: Option<(usize, When)>,
    id: String,
    plan: Arc<Plan>,
    /// What started it (`#{trigger.*}`).
    trigger: BTreeMap<String, String>,
    variables: BTreeMap<String, String>,
    namespaces: Mutex<HashMap<String, BTreeMap<String, String>>>,
    artifacts: Mutex<HashMap<String, ArtifactInfo>>,
    /// Set once someone asks the execution to stop.
    stop: tokio::sync::watch::Sender<Option<StopRequest>>,
}

impl ExecutionContext {
    fn new(
        id: String,
        plan: Arc<Plan>,
        trigger: BTreeMap<String, String>,
        variables: BTreeMap<String, String>,
    ) -> Self {
        Self {
            done: HashSet::new(),
            ended_stages: HashSet::new(),
            continuations: HashMap::new(),
            overridden: None,
            id,
            plan,
            trigger,
            variables,
            namespaces: Mutex::new(HashMap::new()),
            artifacts: Mutex::new(HashMap::new()),
            stop: tokio::sync::watch::Sender::new(None),
        }
    }

    /// An execution-less context for polls and notifications.
    fn outside(plan: &Arc<Plan>, id: String, kind: &str) -> anyhow::Result<Self> {
        let variables = resolve_variables(plan, &BTreeMap::new())?;
        let trigger = BTreeMap::from([("kind".to_string(), kind.to_string())]);
        Ok(Self::new(id, plan.clone(), trigger, variables))
    }

    fn stop_requested(&self) -> Option<StopRequest> {
        self.stop.borrow().clone()
    }

    fn lookup(&self, namespace: &str, key: &str) -> Option<String> {
        match namespace {
            "variables" => self.variables.get(key).cloned(),
            "trigger" if TRIGGER_KEYS.contains(&key) => {
                Some(self.trigger.get(key).cloned().unwrap_or_default())
            }
            "execution" => match key {
                "id" => Some(self.id.clone()),
                "pipeline" => Some(self.plan.name.clone()),
                _ => None,
            },
            other => lock(&self.namespaces).get(other)?.get(key).cloned(),
        }
    }

    /// Make an action's recorded outputs available as inputs to later actions.
    fn add_outputs(&self, outputs: &[OutputRecord]) {
        let mut artifacts = lock(&self.artifacts);
        for output in outputs {
            let info = ArtifactInfo {
                digest: output.digest.clone(),
                files: output.files,
                bytes: output.bytes,
            };
            artifacts.insert(output.name.clone(), info);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Executor<SandboxRunner> {
    /// An executor over these stores; scratch directories go under `work_root`,
    /// which must be on the same filesystem as the artifact store. Its parent is
    /// the data directory: pipeline caches live beside it, in `caches/`.
    pub fn new(
        runtime: Arc<Runtime>,
        artifacts: ArtifactStore,
        state: Arc<dyn Store>,
        secrets: SecretSource,
        work_root: PathBuf,
        events: EventSink,
        sharing: Sharing,
    ) -> Arc<Self> {
        let data_dir = work_root.parent().unwrap_or(&work_root);
        let caches = CacheStore::under(data_dir);
        let masker = Arc::new(secrets.masker());
        let workspaces = sandbox_runner::IdleWorkspaces::under(work_root.clone());
        let runner = SandboxRunner {
            runtime,
            artifacts,
            state: state.clone(),
            secrets,
            masker: masker.clone(),
            work_root,
            caches: caches.clone(),
            events: events.clone(),
            approvals: tokio::sync::Notify::new(),
            sharing,
            workspaces,
        };
        Self::with_runner(runner, state, masker, caches, events)
    }

    /// The host's secret values (webhook keys are looked up here).
    pub fn secrets(&self) -> &SecretSource {
        &self.runner.secrets
    }

    /// The sandbox runtime this executor runs actions in.
    pub fn runtime(&self) -> &Runtime {
        &self.runner.runtime
    }

    /// The artifact store outputs are ingested into (downloads read from it).
    pub fn artifacts(&self) -> &ArtifactStore {
        &self.runner.artifacts
    }

    /// Make artifact `digest` present in [`Executor::artifacts`], downloading
    /// it (digest checked) from the shared bucket when there is one.
    pub async fn fetch_artifact(&self, digest: &str) -> anyhow::Result<()> {
        match &self.runner.sharing.remote {
            Some(remote) => remote.download(&self.runner.artifacts, digest).await,
            None => Ok(()),
        }
    }

    /// Pipeline variables for a start: defaults, then `overrides`.
    pub fn resolve_variables(
        plan: &Plan,
        overrides: &BTreeMap<String, String>,
    ) -> anyhow::Result<BTreeMap<String, String>> {
        resolve_variables(plan, overrides)
    }
}

impl<R: ActionRunner> Executor<R> {
    /// An executor whose actions `runner` runs; `masker` masks every host
    /// secret in what is stored (the state store masks its events with it too).
    pub fn with_runner(
        runner: R,
        state: Arc<dyn Store>,
        masker: Arc<Masker>,
        caches: CacheStore,
        events: EventSink,
    ) -> Arc<Self> {
        state.mask_with(masker.clone());
        Arc::new(Self {
            runner,
            gates: StageGates::new(state.clone()),
            state,
            masker,
            caches,
            events,
            running: Mutex::new(HashMap::new()),
            event_log: tokio::sync::broadcast::Sender::new(1024),
        })
    }

    /// Run the whole plan once and record everything.
    pub async fn run(
        self: &Arc<Self>,
        plan: Arc<Plan>,
        overrides: &BTreeMap<String, String>,
    ) -> anyhow::Result<ExecutionResult> {
        let started = self.begin(plan, overrides)?;
        self.complete(started).await
    }

    /// Record a new execution (InProgress) and return it, ready to `complete`.
    /// Callers that must hand out the id before the run ends use this pair.
    pub fn begin(
        &self,
        plan: Arc<Plan>,
        overrides: &BTreeMap<String, String>,
    ) -> anyhow::Result<Started> {
        let trigger = BTreeMap::from([("kind".to_string(), "manual".to_string())]);
        self.begin_triggered(plan, overrides, trigger)
    }

    /// [`Executor::begin`] with the `#{trigger.*}` variables of what started it.
    pub fn begin_triggered(
        &self,
        plan: Arc<Plan>,
        overrides: &BTreeMap<String, String>,
        trigger: BTreeMap<String, String>,
    ) -> anyhow::Result<Started> {
        let variables = resolve_variables(&plan, overrides)?;
        let id = uuid::Uuid::new_v4().to_string();
        let variables_json = serde_json::to_value(&variables)?;
        let trigger_json = serde_json::to_value(&trigger)?;
        self.state.start_execution(
            &id,
            &plan.name,
            &plan.file,
            &variables_json,
            &trigger_json,
            now_ms(),
        )?;
        let context = ExecutionContext::new(id, plan, trigger, variables);
        self.announce_start(context, 0)
    }

    /// Fail an execution whose start was recorded but which could not start
    /// (the store failed right after), so that it does not stay InProgress
    /// with nothing running it. Returns `error`, for the caller.
    fn fail_unstarted(&self, id: &str, error: anyhow::Error) -> anyhow::Error {
        let reason = format!("it could not start: {error:#}");
        if let Err(e) = self.state.fail_execution(id, &reason, now_ms()) {
            tracing::error!(execution = %id, "recording that it could not start failed: {e:#}");
        }
        error
    }

    /// [`Executor::fail_unstarted`] for an execution whose start was also
    /// announced: its end is stored and announced with its event, so event
    /// streams and notifications see it end.
    fn fail_announced(&self, context: &ExecutionContext, error: anyhow::Error) -> anyhow::Error {
        let reason = format!("it could not start: {error:#}");
        let event = Event::ExecutionFinished {
            id: context.id.clone(),
            pipeline: context.plan.name.clone(),
            status: Status::Failed,
            error: Some(reason.clone()),
        };
        let record = self.change_record(context, &event);
        let end = state::ExecutionEnd::new(Status::Failed, Some(&reason));
        match (self.state).finish_execution(&context.id, end, now_ms(), record) {
            Ok(stored) => self.announce(stored, event),
            Err(e) => {
                tracing::error!(execution = %context.id, "recording that it could not start failed: {e:#}")
            }
        }
        error
    }

    /// Publish a recorded start and take a place in line at stage `first`,
    /// the first the execution enters.
    fn announce_start(&self, context: ExecutionContext, first: usize) -> anyhow::Result<Started> {
        let context = Arc::new(context);
        self.publish(
            &context,
            Event::ExecutionStarted {
                id: context.id.clone(),
                pipeline: context.plan.name.clone(),
            },
        );
        if let Some(stage) = context.plan.stages.get(first) {
            let plan = &context.plan;
            let gate = self
                .gates
                .gate(&plan.name, &stage.name, plan.execution_mode);
            if let Err(e) = gate.join(&context.id) {
                return Err(self.fail_announced(&context, e));
            }
        }
        Ok(Started(context))
    }

    /// Start a rollback of `stage`: a new execution (trigger kind `rollback`,
    /// event the target's id) that runs only that stage again, with the
    /// artifacts and variables execution `target` had when it ran it: the
    /// earlier stages' actions count as done with the target's outputs and
    /// namespaces, and the later stages are passed over. The caller checks
    /// that the target may be rolled back to ([`machine::rollback_refusal`]).
    ///
    /// `asked_by`: the execution whose condition asked for this rollback. Its
    /// ask is taken with the start (see
    /// [`ExecutionStore::start_asked_rollback`](sluice_store::state::ExecutionStore::start_asked_rollback)):
    /// `None` when another process started it already.
    pub fn begin_rollback(
        &self,
        plan: Arc<Plan>,
        target: &str,
        stage: &str,
        asked_by: Option<&str>,
    ) -> anyhow::Result<Option<Started>> {
        let position = (plan.stages.iter())
            .position(|s| s.name == stage)
            .with_context(|| format!("pipeline `{}` has no stage `{stage}`", plan.name))?;
        let record =
            (self.state.execution(target)?).with_context(|| format!("no execution {target}"))?;
        let variables: BTreeMap<String, String> = serde_json::from_value(record.variables)?;
        let trigger = BTreeMap::from([
            ("kind".to_string(), "rollback".to_string()),
            ("event".to_string(), record.id.clone()),
        ]);
        let id = uuid::Uuid::new_v4().to_string();
        let (variables_json, trigger_json) = (
            serde_json::to_value(&variables)?,
            serde_json::to_value(&trigger)?,
        );
        let (state, name, file, now) = (&self.state, &plan.name, &plan.file, now_ms());
        let started = match asked_by {
            None => (state.start_execution(&id, name, file, &variables_json, &trigger_json, now))
                .map(|()| true),
            Some(by) => {
                state.start_asked_rollback(by, &id, name, file, &variables_json, &trigger_json, now)
            }
        }?;
        if !started {
            return Ok(None);
        }
        let context = ExecutionContext::new(id.clone(), plan.clone(), trigger, variables);
        match self.rollback_context(context, target, position) {
            Ok(context) => self.announce_start(context, position).map(Some),
            Err(e) => Err(self.fail_unstarted(&id, e)),
        }
    }

    /// A rollback of the stage at `position`: the other stages count as
    /// ended, and the earlier stages' actions as done with the outputs and
    /// namespaces they had in execution `target`.
    fn rollback_context(
        &self,
        mut context: ExecutionContext,
        target: &str,
        position: usize,
    ) -> anyhow::Result<ExecutionContext> {
        let plan = context.plan.clone();
        context.ended_stages = (0..plan.stages.len()).filter(|p| *p != position).collect();
        let earlier: HashSet<&str> = plan.stages[..position]
            .iter()
            .flat_map(|s| s.actions.iter().map(|a| a.name.as_str()))
            .collect();
        for action in self.state.actions(target)? {
            if !earlier.contains(action.action.as_str()) || action.status != Status::Succeeded {
                continue;
            }
            context.done.insert(action.action.clone());
            context.add_outputs(&action.outputs);
            let namespace = plan.stages[..position]
                .iter()
                .flat_map(|s| &s.actions)
                .find(|a| a.name == action.action)
                .and_then(|a| a.namespace.clone());
            if let Some(namespace) = namespace {
                let variables = action.variables.iter().cloned().collect();
                lock(&context.namespaces).insert(namespace, variables);
            }
        }
        Ok(context)
    }

    /// Pick up an execution a stopped process left InProgress: succeeded actions
    /// keep their outputs and variables, the rest run again, except actions
    /// whose `on-restart` is `fail`, which fail it.
    pub fn reopen(&self, plan: Arc<Plan>, id: &str) -> anyhow::Result<Reopened> {
        self.reopen_with(plan, id, None, None)
    }

    /// Retry a failed stage of a failed execution: its failed actions (or all of
    /// them, with `all`), then the stages after it. Earlier work is kept.
    pub fn reopen_for_retry(
        &self,
        plan: Arc<Plan>,
        id: &str,
        stage: &str,
        all: bool,
        overriding: Option<Overriding<'_>>,
    ) -> anyhow::Result<Started> {
        if !self.state.reopen_execution(id)? {
            return Err(sluice_store::state::AlreadyRunning(id.to_string()).into());
        }
        // The failed actions run again from their first attempt: not the
        // results their earlier attempts left in the queue.
        self.state.forget_attempts(id)?;
        match self.reopen_with(plan, id, Some((stage, all)), overriding)? {
            Reopened::Resume(started) => Ok(started),
            Reopened::Failed(reason) => anyhow::bail!(reason),
        }
    }

    /// Rebuild an execution's context from what the state store recorded,
    /// as [`machine::on_resume`] decides for each recorded action.
    fn reopen_with(
        &self,
        plan: Arc<Plan>,
        id: &str,
        retry: Option<(&str, bool)>,
        overriding: Option<Overriding<'_>>,
    ) -> anyhow::Result<Reopened> {
        let execution = self
            .state
            .execution(id)?
            .with_context(|| format!("no execution {id}"))?;
        let variables: BTreeMap<String, String> =
            serde_json::from_value(execution.variables.clone())?;
        let trigger = serde_json::from_value(execution.trigger.clone()).unwrap_or_default();
        let mut context = ExecutionContext::new(id.to_string(), plan.clone(), trigger, variables);
        context.ended_stages = self
            .state
            .stages(id)?
            .into_iter()
            .filter(|s| s.status == Status::Succeeded)
            .filter_map(|s| plan.stages.iter().position(|p| p.name == s.stage))
            .collect();
        for record in self.state.actions(id)? {
            let Some(action) = plan
                .stages
                .iter()
                .flat_map(|s| &s.actions)
                .find(|a| a.name == record.action)
            else {
                continue;
            };
            let rerun_all = retry.is_some_and(|(stage, all)| all && stage == action.stage);
            let between_rounds = record.continuation.is_some();
            match machine::on_resume(action, record.status, between_rounds, rerun_all) {
                OnResume::Keep => {
                    context.done.insert(record.action.clone());
                    context.add_outputs(&record.outputs);
                    if let Some(namespace) = &action.namespace {
                        let variables = record.variables.iter().cloned().collect();
                        lock(&context.namespaces).insert(namespace.clone(), variables);
                    }
                }
                OnResume::ContinueRounds => {
                    let stored = record.continuation.as_deref().unwrap_or_default();
                    let token = self.state.open_continuation(stored)?;
                    context.continuations.insert(record.action.clone(), token);
                }
                OnResume::Fail(reason) => {
                    self.fail_reopened(&context, &record.stage, &action.name, &reason)?;
                    return Ok(Reopened::Failed(reason));
                }
                OnResume::Run => {}
            }
        }
        if let (Some(overriding), Some((stage, _))) = (overriding, retry) {
            let position = plan.stages.iter().position(|s| s.name == stage);
            context.overridden = position.map(|p| (p, overriding.condition));
        }
        let context = Arc::new(context);
        if let (Some(overriding), Some((stage, _))) = (overriding, retry) {
            let event = Event::RuleEvaluated {
                stage: stage.to_string(),
                condition: overriding.condition.key(),
                rule: "(override)".to_string(),
                passed: true,
                detail: format!("overridden by {}", overriding.by),
            };
            self.publish(&context, event);
        }
        self.publish(
            &context,
            Event::ExecutionResumed {
                id: context.id.clone(),
                pipeline: context.plan.name.clone(),
            },
        );
        Ok(Reopened::Resume(Started(context)))
    }

    /// Record an interrupted execution that may not continue as Failed: the
    /// action, its stage and the execution, each with its event (subscribers
    /// and notifications learn of it like of any other failure).
    fn fail_reopened(
        &self,
        context: &ExecutionContext,
        stage: &str,
        action: &str,
        reason: &str,
    ) -> anyhow::Result<()> {
        let id = &context.id;
        let end = ActionEnd {
            status: Status::Failed,
            attempts: 1,
            summary: None,
            error: Some(reason),
            variables: &[],
            outputs: &[],
        };
        let event = Event::ActionFinished {
            action: action.to_string(),
            status: Status::Failed,
            duration: std::time::Duration::ZERO,
            detail: reason.to_string(),
        };
        let record = self.change_record(context, &event);
        let stored = self
            .state
            .finish_action(id, action, &end, now_ms(), record)?;
        self.announce(stored, event);
        let event = Event::StageFinished {
            stage: stage.to_string(),
            status: Status::Failed,
            duration: std::time::Duration::ZERO,
            detail: reason.to_string(),
        };
        let record = self.change_record(context, &event);
        let stored =
            (self.state).finish_stage(id, stage, Status::Failed, Some(reason), now_ms(), record)?;
        self.announce(stored, event);
        let event = Event::ExecutionFinished {
            id: id.clone(),
            pipeline: context.plan.name.clone(),
            status: Status::Failed,
            error: Some(reason.to_string()),
        };
        let record = self.change_record(context, &event);
        let end = state::ExecutionEnd::new(Status::Failed, Some(reason));
        let stored = (self.state).finish_execution(id, end, now_ms(), record)?;
        self.announce(stored, event);
        Ok(())
    }

    /// Run a begun execution to its end.
    #[tracing::instrument(name = "execution", skip_all, fields(execution = %started.0.id, pipeline = %started.0.plan.name))]
    pub async fn complete(self: &Arc<Self>, started: Started) -> anyhow::Result<ExecutionResult> {
        let context = started.0;
        let id = context.id.clone();
        lock(&self.running).insert(id.clone(), context.clone());
        let outcome = self.drive(&context).await;
        lock(&self.running).remove(&id);
        // Recording the end gave up any place at a gate (one taken at `begin`
        // and never used too): the next in line may go.
        self.gates.changed();
        let (outcome, rollback) = match outcome {
            Ok(ended) => ended,
            Err(error) => {
                // The state store failed mid-run: record what we can, then report.
                let reason = format!("internal error: {error:#}");
                self.state
                    .finish_execution(
                        &id,
                        state::ExecutionEnd::new(Status::Failed, Some(&reason)),
                        now_ms(),
                        None,
                    )
                    .ok();
                return Err(error);
            }
        };
        let (status, error) = match &outcome {
            machine::Outcome::Superseded => (
                Status::Superseded,
                Some("a newer execution replaced it at a stage boundary"),
            ),
            other => other.status(),
        };
        let error = error.map(|e| self.masker.mask(e));
        let event = Event::ExecutionFinished {
            id: id.clone(),
            pipeline: context.plan.name.clone(),
            status,
            error: error.clone(),
        };
        let change = state::Change::ExecutionEnded {
            status,
            error: error.clone(),
            rollback: rollback.clone(),
        };
        self.record(&context, change, Some(event)).await?;
        self.runner.execution_ended(&id);
        Ok(ExecutionResult {
            id,
            status,
            error,
            rollback,
        })
    }

    /// How many executions this process is running now.
    pub fn running_executions(&self) -> usize {
        lock(&self.running).len()
    }

    /// The ids of the executions this process runs.
    pub fn running_ids(&self) -> Vec<String> {
        lock(&self.running).keys().cloned().collect()
    }

    /// Another process holds `id` now (this one lost its lease while alive):
    /// abandon its running actions here, which kills their native commands,
    /// without recording anything (the store would refuse every write).
    /// Whether it was running here.
    pub fn let_go(&self, id: &str, reason: &str) -> bool {
        let Some(context) = lock(&self.running).get(id).cloned() else {
            return false;
        };
        let request = StopRequest {
            mode: StopMode::Abandon,
            reason: reason.to_string(),
        };
        context.stop.send_replace(Some(request));
        true
    }

    /// The stage gates (execution modes and disabled transitions).
    pub fn gates(&self) -> &StageGates {
        &self.gates
    }

    /// Ask a running execution to stop: `Finish` lets running actions end and
    /// starts nothing new; `Abandon` also abandons the running actions. False
    /// when the execution is not running in this process.
    pub fn stop(&self, id: &str, mode: StopMode, reason: &str) -> anyhow::Result<bool> {
        let Some(context) = lock(&self.running).get(id).cloned() else {
            return Ok(false);
        };
        self.state.set_execution_status(id, Status::Stopping)?;
        let request = StopRequest {
            mode,
            reason: reason.to_string(),
        };
        context.stop.send_replace(Some(request));
        Ok(true)
    }

    /// Live state-change events, as they are stored (see [`EventStore::events_after`](sluice_store::state::EventStore::events_after)
    /// for what came before subscribing).
    pub fn subscribe_events(&self) -> tokio::sync::broadcast::Receiver<EventRecord> {
        self.event_log.subscribe()
    }

    /// Wake approvals waiting in this process (after a decision was recorded).
    pub fn approvals_changed(&self) {
        self.runner.approvals_changed();
    }

    /// Poll the pipeline's source action: its `check` with the configuration
    /// resolved against the variables' defaults. New revisions, oldest first.
    pub async fn poll(
        &self,
        plan: Arc<Plan>,
        action_name: &str,
        last: Option<String>,
    ) -> anyhow::Result<Vec<String>> {
        self.runner.poll(plan, action_name, last).await
    }

    /// Deliver one state-change event through the pipeline's `[notifications]`
    /// action; `Err` leaves it for the next try (delivery is at least once).
    pub async fn notify(&self, plan: Arc<Plan>, event: &EventRecord) -> anyhow::Result<()> {
        self.runner.notify(plan, event).await
    }

    /// Show an event and, when it changes state, store it, then broadcast it.
    /// For code that already runs off the tokio workers (see
    /// [`Executor::publish_from_task`]).
    fn publish(&self, context: &ExecutionContext, event: Event) {
        let stored = self
            .change_record(context, &event)
            .and_then(|record| stored_or_logged(self.state.append_event(record)));
        self.announce(stored, event);
    }

    /// [`Executor::publish`] from async code: the store call runs on the
    /// blocking pool, and the event is announced once it is stored.
    async fn publish_from_task(&self, context: &ExecutionContext, event: Event) {
        let stored = match self.change_record(context, &event) {
            Some(record) => {
                let state = self.state.clone();
                stored_or_logged(off_workers(move || state.append_event(record)).await)
            }
            None => None,
        };
        self.announce(stored, event);
    }

    /// The stored form of `event` (none when it changes no state), logged as it
    /// is recorded. The state store appends it, alone or with the change itself.
    fn change_record(&self, context: &ExecutionContext, event: &Event) -> Option<EventRecord> {
        let change = event.change()?;
        // Stage and action events name the execution through their spans;
        // pipeline events may happen outside them (begin, reopen).
        tracing::info!(
            execution = (change.kind == "pipeline").then_some(context.id.as_str()),
            detail = (!change.detail.is_empty()).then_some(change.detail.as_str()),
            "{} {}: {}",
            change.kind,
            change.name,
            change.state
        );
        Some(EventRecord {
            seq: 0,
            ts_ms: now_ms(),
            execution: context.id.clone(),
            pipeline: context.plan.name.clone(),
            kind: change.kind.to_string(),
            name: change.name,
            state: change.state.to_string(),
            detail: change.detail,
        })
    }

    /// Record `change` of the execution with `event` (when it has a stored
    /// form) in the state store, without blocking this thread; once it is
    /// committed, announce the event.
    async fn record(
        &self,
        context: &ExecutionContext,
        change: state::Change,
        event: Option<Event>,
    ) -> anyhow::Result<()> {
        let stored = event.as_ref().and_then(|e| self.change_record(context, e));
        let transition = Transition {
            execution: context.id.clone(),
            change,
            now_ms: now_ms(),
            event: stored,
        };
        let stored = self.state.clone().record(transition).await?;
        if let Some(event) = event {
            self.announce(stored, event);
        }
        Ok(())
    }

    /// Broadcast an event the state store holds, and show `event`.
    fn announce(&self, stored: Option<EventRecord>, event: Event) {
        if let Some(stored) = stored {
            let _ = self.event_log.send(stored); // no subscriber is fine
        }
        (self.events)(event);
    }
}

/// The stored event, or none (logged) when storing it failed: an event that
/// could not be stored is still shown.
fn stored_or_logged(stored: anyhow::Result<EventRecord>) -> Option<EventRecord> {
    stored
        .inspect_err(|e| tracing::error!("recording an event failed: {e:#}"))
        .ok()
}

/// Pipeline variables for a start: defaults, then `overrides`.
fn resolve_variables(
    plan: &Plan,
    overrides: &BTreeMap<String, String>,
) -> anyhow::Result<BTreeMap<String, String>> {
    for name in overrides.keys() {
        anyhow::ensure!(
            plan.variables.contains_key(name),
            "variable `{name}` is not declared by pipeline `{}` (declared: {})",
            plan.name,
            plan.variables
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let mut resolved = BTreeMap::new();
    for (name, default) in &plan.variables {
        let value = overrides.get(name).or(default.as_ref()).with_context(|| {
            format!("variable `{name}` has no default; pass --var {name}=VALUE")
        })?;
        resolved.insert(name.clone(), value.clone());
    }
    Ok(resolved)
}

/// The action's configuration with every reference replaced; `#{cache.<name>}`
/// is the host path of a cache granted to the action.
fn resolve_config(
    context: &ExecutionContext,
    action: &ActionPlan,
    caches: &CacheStore,
) -> Result<Vec<(String, String)>, String> {
    let lookup = |ns: &str, k: &str| match ns {
        "cache" if action.grants.caches.iter().any(|c| c == k) => {
            Some(caches.dir(&context.plan.name, k).display().to_string())
        }
        _ => context.lookup(ns, k),
    };
    action
        .config
        .iter()
        .map(|(key, value)| {
            vars::resolve(value, lookup)
                .map(|resolved| (key.clone(), resolved))
                .map_err(|e| format!("config `{key}`: {e}"))
        })
        .collect()
}
