//! The executor: runs one execution of a [`Plan`].
//!
//! Stages run in order. Within a stage, actions are grouped by run order and
//! each group runs in parallel. Before an action starts, its `#{…}` references are
//! resolved and the resolved configuration recorded; after it succeeds, its
//! outputs are ingested into the artifact store and its variables published to
//! its namespace. A failed action fails its stage and the execution.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::task::JoinSet;

use crate::artifact::{ArtifactInfo, ArtifactStore};
use crate::gates::{Entry, StageGates};
use crate::pipeline::{
    ActionKind, ActionPlan, ApprovalPolicy, OnRestart, Plan, TRIGGER_KEYS, vars,
};
use crate::plugin::InstalledPlugin;
use crate::sandbox::log::{LineHook, LogSink, LogStream, ProgressHook, now_ms};
use crate::sandbox::{ActionError, ActionOutcome, Invocation, Runtime, SandboxSpec};
use crate::secrets::{Masker, SecretSource};
use crate::state::{ActionEnd, EventRecord, OutputRecord, StateStore, Status};

/// Something that happened during an execution, for live display.
#[derive(Clone, Debug)]
pub enum Event {
    /// The execution was recorded and starts.
    ExecutionStarted { id: String, pipeline: String },
    /// A stage started.
    StageStarted { stage: String },
    /// A stage ended.
    StageFinished {
        stage: String,
        status: Status,
        duration: Duration,
    },
    /// A stage did not run because an earlier one failed.
    StageSkipped { stage: String },
    /// An action attempt started.
    ActionStarted {
        stage: String,
        action: String,
        plugin: String,
        attempt: u32,
    },
    /// An action reported progress.
    ActionProgress {
        action: String,
        percent: u8,
        message: String,
    },
    /// An action printed a line (masked): command output, guest stdout/stderr
    /// or a `log.write`. Frequent: sinks that only count things ignore it.
    ActionLog {
        action: String,
        stream: &'static str,
        text: String,
    },
    /// An attempt failed and another will follow after `wait`.
    ActionRetrying {
        action: String,
        attempt: u32,
        error: String,
        wait: Duration,
    },
    /// An action ended.
    ActionFinished {
        action: String,
        status: Status,
        duration: Duration,
        detail: String,
    },
}

/// How often a running action's new log lines are stored.
const LOG_FLUSH: Duration = Duration::from_millis(250);

/// Receives events; must be cheap (it runs on the executor's tasks).
pub type EventSink = Arc<dyn Fn(Event) + Send + Sync>;

/// How an execution ended.
#[derive(Clone, Debug)]
pub struct ExecutionResult {
    /// Execution id.
    pub id: String,
    /// Succeeded or Failed.
    pub status: Status,
    /// Why it failed.
    pub error: Option<String>,
}

/// How stages (and whole executions) end.
enum Outcome {
    Succeeded,
    Failed(String),
    Superseded,
    Stopped(String),
}

/// How to stop an execution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// Let running actions finish; start nothing new.
    Finish,
    /// Abandon running actions too.
    Abandon,
}

/// A stop someone asked for.
#[derive(Clone, Debug)]
struct StopRequest {
    mode: StopMode,
    reason: String,
}

impl StopRequest {
    fn describe(&self) -> String {
        let mode = match self.mode {
            StopMode::Finish => "finish",
            StopMode::Abandon => "abandon",
        };
        format!("stopped ({mode}): {}", self.reason)
    }
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
pub struct Executor {
    runtime: Arc<Runtime>,
    artifacts: ArtifactStore,
    state: Arc<StateStore>,
    secrets: SecretSource,
    /// Every secret the host holds, masked in everything stored or shown.
    masker: Arc<Masker>,
    work_root: PathBuf,
    caches: crate::cache::CacheStore,
    events: EventSink,
    gates: StageGates,
    running: Mutex<HashMap<String, Arc<ExecutionContext>>>,
    approvals: tokio::sync::Notify,
    event_log: tokio::sync::broadcast::Sender<EventRecord>,
}

/// What every action of one execution shares.
struct ExecutionContext {
    /// Actions that already succeeded (when resuming): skipped, not rerun.
    done: HashSet<String>,
    /// Continuation tokens of actions that were between rounds (when resuming).
    continuations: HashMap<String, String>,
    id: String,
    plan: Arc<Plan>,
    /// What started it (`#{trigger.*}`).
    trigger: BTreeMap<String, String>,
    variables: BTreeMap<String, String>,
    namespaces: Mutex<HashMap<String, BTreeMap<String, String>>>,
    artifacts: Mutex<HashMap<String, ArtifactInfo>>,
    /// Outputs a failed attempt left, by action (see `keep_failed_outputs`).
    failed_outputs: Mutex<HashMap<String, Vec<OutputRecord>>>,
    /// Set once someone asks the execution to stop.
    stop: tokio::sync::watch::Sender<Option<StopRequest>>,
}

impl ExecutionContext {
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
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Executor {
    /// An executor over these stores; scratch directories go under `work_root`,
    /// which must be on the same filesystem as the artifact store. Its parent is
    /// the data directory: pipeline caches live beside it, in `caches/`.
    pub fn new(
        runtime: Arc<Runtime>,
        artifacts: ArtifactStore,
        state: Arc<StateStore>,
        secrets: SecretSource,
        work_root: PathBuf,
        events: EventSink,
    ) -> Arc<Self> {
        let data_dir = work_root.parent().unwrap_or(&work_root);
        let masker = Arc::new(secrets.masker());
        state.mask_with(masker.clone());
        Arc::new(Self {
            caches: crate::cache::CacheStore::under(data_dir),
            runtime,
            artifacts,
            state,
            secrets,
            masker,
            work_root,
            events,
            gates: StageGates::default(),
            running: Mutex::new(HashMap::new()),
            approvals: tokio::sync::Notify::new(),
            event_log: tokio::sync::broadcast::Sender::new(1024),
        })
    }

    /// The host's secret values (webhook keys are looked up here).
    pub fn secrets(&self) -> &SecretSource {
        &self.secrets
    }

    /// The sandbox runtime this executor runs actions in.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The artifact store outputs are ingested into (downloads read from it).
    pub fn artifacts(&self) -> &ArtifactStore {
        &self.artifacts
    }

    /// Pipeline variables for a start: defaults, then `overrides`.
    pub fn resolve_variables(
        plan: &Plan,
        overrides: &BTreeMap<String, String>,
    ) -> anyhow::Result<BTreeMap<String, String>> {
        let mut resolved = BTreeMap::new();
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
        for (name, default) in &plan.variables {
            let value = overrides.get(name).or(default.as_ref()).with_context(|| {
                format!("variable `{name}` has no default; pass --var {name}=VALUE")
            })?;
            resolved.insert(name.clone(), value.clone());
        }
        Ok(resolved)
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
        let variables = Self::resolve_variables(&plan, overrides)?;
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
        self.emit(Event::ExecutionStarted {
            id: id.clone(),
            pipeline: plan.name.clone(),
        });
        let context = Arc::new(ExecutionContext {
            done: HashSet::new(),
            continuations: HashMap::new(),
            id,
            plan,
            trigger,
            variables,
            namespaces: Mutex::new(HashMap::new()),
            artifacts: Mutex::new(HashMap::new()),
            failed_outputs: Mutex::new(HashMap::new()),
            stop: tokio::sync::watch::Sender::new(None),
        });
        self.record(&context, "pipeline", &context.plan.name, "STARTED", "");
        if let Some(gate) = self.first_gate(&context.plan) {
            gate.join(&context.id);
        }
        Ok(Started(context))
    }

    /// Pick up an execution a stopped process left InProgress: succeeded actions
    /// keep their outputs and variables, the rest run again, except actions
    /// whose `on-restart` is `fail`, which fail it.
    pub fn reopen(&self, plan: Arc<Plan>, id: &str) -> anyhow::Result<Reopened> {
        self.reopen_with(plan, id, None)
    }

    /// Retry a failed stage of a failed execution: its failed actions (or all of
    /// them, with `all`), then the stages after it. Earlier work is kept.
    pub fn reopen_for_retry(
        &self,
        plan: Arc<Plan>,
        id: &str,
        stage: &str,
        all: bool,
    ) -> anyhow::Result<Started> {
        self.state.reopen_execution(id)?;
        match self.reopen_with(plan, id, Some((stage, all)))? {
            Reopened::Resume(started) => Ok(started),
            Reopened::Failed(reason) => anyhow::bail!(reason),
        }
    }

    fn reopen_with(
        &self,
        plan: Arc<Plan>,
        id: &str,
        retry: Option<(&str, bool)>,
    ) -> anyhow::Result<Reopened> {
        let execution = self
            .state
            .execution(id)?
            .with_context(|| format!("no execution {id}"))?;
        let variables: BTreeMap<String, String> =
            serde_json::from_value(execution.variables.clone())?;
        let records = self.state.actions(id)?;
        let mut context = ExecutionContext {
            done: HashSet::new(),
            continuations: HashMap::new(),
            id: id.to_string(),
            plan: plan.clone(),
            trigger: serde_json::from_value(execution.trigger.clone()).unwrap_or_default(),
            variables,
            namespaces: Mutex::new(HashMap::new()),
            artifacts: Mutex::new(HashMap::new()),
            failed_outputs: Mutex::new(HashMap::new()),
            stop: tokio::sync::watch::Sender::new(None),
        };
        for record in &records {
            let Some(action) = plan
                .stages
                .iter()
                .flat_map(|s| &s.actions)
                .find(|a| a.name == record.action)
            else {
                continue;
            };
            let rerun_all = retry.is_some_and(|(stage, all)| all && stage == action.stage);
            match record.status.as_str() {
                "Succeeded" if !rerun_all => {
                    context.done.insert(record.action.clone());
                    for output in &record.outputs {
                        let info = ArtifactInfo {
                            digest: output.digest.clone(),
                            files: output.files,
                            bytes: output.bytes,
                        };
                        lock(&context.artifacts).insert(output.name.clone(), info);
                    }
                    if let Some(namespace) = &action.namespace {
                        lock(&context.namespaces).insert(
                            namespace.clone(),
                            record.variables.iter().cloned().collect(),
                        );
                    }
                }
                "InProgress" if record.continuation.is_some() => {
                    // Between rounds: resume the rounds, whatever on-restart says.
                    let stored = record.continuation.as_deref().unwrap_or_default();
                    let token = self.state.open_continuation(stored)?;
                    context.continuations.insert(record.action.clone(), token);
                }
                "InProgress" if action.on_restart == OnRestart::Fail => {
                    let reason = format!(
                        "action `{}` was running when the server stopped, and its on-restart policy is fail",
                        action.name
                    );
                    self.fail_reopened(id, &record.stage, &action.name, &reason)?;
                    return Ok(Reopened::Failed(reason));
                }
                _ => {}
            }
        }
        self.record(&context, "pipeline", &context.plan.name, "RESUMED", "");
        Ok(Reopened::Resume(Started(Arc::new(context))))
    }

    fn fail_reopened(
        &self,
        id: &str,
        stage: &str,
        action: &str,
        reason: &str,
    ) -> anyhow::Result<()> {
        let end = ActionEnd {
            status: Status::Failed,
            attempts: 1,
            summary: None,
            error: Some(reason),
            variables: &[],
            outputs: &[],
        };
        self.state.finish_action(id, action, &end, now_ms())?;
        self.state
            .finish_stage(id, stage, Status::Failed, Some(reason), now_ms())?;
        self.state
            .finish_execution(id, Status::Failed, Some(reason), now_ms())
    }

    /// Run a begun execution to its end.
    #[tracing::instrument(name = "execution", skip_all, fields(execution = %started.0.id, pipeline = %started.0.plan.name))]
    pub async fn complete(self: &Arc<Self>, started: Started) -> anyhow::Result<ExecutionResult> {
        let context = started.0;
        let id = context.id.clone();
        lock(&self.running).insert(id.clone(), context.clone());
        let outcome = self.run_stages(&context).await;
        lock(&self.running).remove(&id);
        // A place taken at `begin` that was never used must not block the line.
        if let Some(gate) = self.first_gate(&context.plan) {
            gate.withdraw(&id);
        }
        let (status, error) = match outcome {
            Ok(Outcome::Succeeded) => (Status::Succeeded, None),
            Ok(Outcome::Failed(reason)) => (Status::Failed, Some(reason)),
            Ok(Outcome::Superseded) => (
                Status::Superseded,
                Some("a newer execution replaced it at a stage boundary".to_string()),
            ),
            Ok(Outcome::Stopped(reason)) => (Status::Stopped, Some(reason)),
            Err(error) => {
                // The state store failed mid-run: record what we can, then report.
                let reason = format!("internal error: {error:#}");
                self.state
                    .finish_execution(&id, Status::Failed, Some(&reason), now_ms())
                    .ok();
                return Err(error);
            }
        };
        let error = error.map(|e| self.masker.mask(&e));
        self.state
            .finish_execution(&id, status, error.as_deref(), now_ms())?;
        self.record(
            &context,
            "pipeline",
            &context.plan.name,
            event_state(status),
            error.as_deref().unwrap_or(""),
        );
        std::fs::remove_dir_all(self.work_root.join(&id)).ok();
        Ok(ExecutionResult { id, status, error })
    }

    /// The gate of the plan's first stage, where `begin` queues an execution.
    fn first_gate(&self, plan: &Plan) -> Option<Arc<crate::gates::Gate>> {
        let stage = plan.stages.first()?;
        Some(
            self.gates
                .gate(&plan.name, &stage.name, plan.execution_mode),
        )
    }

    /// How many executions this process is running now.
    pub fn running_executions(&self) -> usize {
        lock(&self.running).len()
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

    /// Run every stage in order, each entered through its gate.
    async fn run_stages(
        self: &Arc<Self>,
        context: &Arc<ExecutionContext>,
    ) -> anyhow::Result<Outcome> {
        let mut failure: Option<String> = None;
        for (position, stage) in context.plan.stages.iter().enumerate() {
            if failure.is_some() {
                self.skip_stage(&context.id, &stage.name, position)?;
                continue;
            }
            if stage.actions.iter().all(|a| context.done.contains(&a.name)) {
                continue; // finished before a restart
            }
            if let Some(stop) = context.stop_requested() {
                return Ok(Outcome::Stopped(stop.describe()));
            }
            let gate =
                self.gates
                    .gate(&context.plan.name, &stage.name, context.plan.execution_mode);
            let mut stop = context.stop.subscribe();
            let pass = tokio::select! {
                entry = gate.enter(&context.id) => match entry {
                    Entry::Entered(pass) => pass,
                    Entry::Superseded => return Ok(Outcome::Superseded),
                },
                _ = stop.wait_for(Option::is_some) => {
                    gate.withdraw(&context.id);
                    let reason = context.stop_requested().map(|s| s.describe()).unwrap_or_default();
                    return Ok(Outcome::Stopped(reason));
                }
            };
            let outcome = self.run_stage(context, position).await?;
            drop(pass);
            match outcome {
                Outcome::Succeeded => {}
                Outcome::Failed(reason) => failure = Some(reason),
                other => return Ok(other),
            }
        }
        Ok(failure.map(Outcome::Failed).unwrap_or(Outcome::Succeeded))
    }

    /// Live state-change events, as they are stored (see [`StateStore::events_after`]
    /// for what came before subscribing).
    pub fn subscribe_events(&self) -> tokio::sync::broadcast::Receiver<EventRecord> {
        self.event_log.subscribe()
    }

    /// Store a state-change event, then broadcast it.
    fn record(
        &self,
        context: &ExecutionContext,
        kind: &str,
        name: &str,
        state: &str,
        detail: &str,
    ) {
        // Stage and action events name the execution through their spans;
        // pipeline events may happen outside them (begin, reopen).
        tracing::info!(
            execution = (kind == "pipeline").then_some(context.id.as_str()),
            detail = (!detail.is_empty()).then_some(detail),
            "{kind} {name}: {state}"
        );
        let event = EventRecord {
            seq: 0,
            ts_ms: now_ms(),
            execution: context.id.clone(),
            pipeline: context.plan.name.clone(),
            kind: kind.to_string(),
            name: name.to_string(),
            state: state.to_string(),
            detail: detail.to_string(),
        };
        match self.state.append_event(event) {
            Ok(stored) => {
                let _ = self.event_log.send(stored); // no subscriber is fine
            }
            Err(e) => tracing::error!("recording an event failed: {e:#}"),
        }
    }

    fn emit(&self, event: Event) {
        (self.events)(event);
    }

    fn skip_stage(&self, id: &str, stage: &str, position: usize) -> anyhow::Result<()> {
        self.state.start_stage(id, stage, position, now_ms())?;
        self.state.finish_stage(
            id,
            stage,
            Status::Skipped,
            Some("an earlier stage failed"),
            now_ms(),
        )?;
        self.emit(Event::StageSkipped {
            stage: stage.to_string(),
        });
        Ok(())
    }

    /// Run one stage, group by group.
    #[tracing::instrument(name = "stage", skip_all, fields(stage = %context.plan.stages[position].name))]
    async fn run_stage(
        self: &Arc<Self>,
        context: &Arc<ExecutionContext>,
        position: usize,
    ) -> anyhow::Result<Outcome> {
        let stage = &context.plan.stages[position];
        let started = Instant::now();
        self.state
            .start_stage(&context.id, &stage.name, position, now_ms())?;
        self.record(context, "stage", &stage.name, "STARTED", "");
        self.emit(Event::StageStarted {
            stage: stage.name.clone(),
        });
        let mut outcome = Outcome::Succeeded;
        for group in stage.groups() {
            let group: Vec<&ActionPlan> = group
                .into_iter()
                .filter(|a| !context.done.contains(&a.name))
                .collect();
            outcome = self.run_group(context, &group).await?;
            if !matches!(outcome, Outcome::Succeeded) {
                break;
            }
            if let Some(stop) = context.stop_requested() {
                outcome = Outcome::Stopped(stop.describe());
                break;
            }
        }
        let (status, error) = match &outcome {
            Outcome::Succeeded => (Status::Succeeded, None),
            Outcome::Failed(reason) => (Status::Failed, Some(reason.as_str())),
            Outcome::Stopped(reason) => (Status::Stopped, Some(reason.as_str())),
            Outcome::Superseded => (Status::Superseded, None),
        };
        self.state
            .finish_stage(&context.id, &stage.name, status, error, now_ms())?;
        self.record(
            context,
            "stage",
            &stage.name,
            event_state(status),
            error.unwrap_or(""),
        );
        self.emit(Event::StageFinished {
            stage: stage.name.clone(),
            status,
            duration: started.elapsed(),
        });
        Ok(outcome)
    }

    /// Run one run-order group in parallel; an abandon stops it at once.
    async fn run_group(
        self: &Arc<Self>,
        context: &Arc<ExecutionContext>,
        group: &[&ActionPlan],
    ) -> anyhow::Result<Outcome> {
        let mut running = JoinSet::new();
        let mut pending: HashSet<String> = HashSet::new();
        for action in group {
            let (executor, context, action) = (self.clone(), context.clone(), (*action).clone());
            pending.insert(action.name.clone());
            // In the stage's span, so the action's span is its child.
            running.spawn(tracing::Instrument::in_current_span(async move {
                let result = executor.run_action(&context, &action).await;
                (action.name, result)
            }));
        }
        let mut stop = context.stop.subscribe();
        let mut failures = Vec::new();
        loop {
            tokio::select! {
                joined = running.join_next() => match joined {
                    None => break,
                    Some(Ok((name, result))) => {
                        pending.remove(&name);
                        if let Err(reason) = result {
                            failures.push(reason);
                        }
                    }
                    Some(Err(panic)) => failures.push(format!("internal error: action task failed: {panic}")),
                },
                _ = stop.wait_for(|s| s.as_ref().is_some_and(|s| s.mode == StopMode::Abandon)) => {
                    running.abort_all();
                    let reason = context.stop_requested().map(|s| s.describe()).unwrap_or_default();
                    for name in &pending {
                        self.abandon_action(context, name, &reason)?;
                    }
                    return Ok(Outcome::Stopped(reason));
                }
            }
        }
        Ok(if failures.is_empty() {
            Outcome::Succeeded
        } else {
            Outcome::Failed(failures.join("; "))
        })
    }

    fn abandon_action(
        &self,
        context: &ExecutionContext,
        action: &str,
        reason: &str,
    ) -> anyhow::Result<()> {
        let error = format!("abandoned: {reason}");
        let end = ActionEnd {
            status: Status::Abandoned,
            attempts: 1,
            summary: None,
            error: Some(&error),
            variables: &[],
            outputs: &[],
        };
        self.state
            .finish_action(&context.id, action, &end, now_ms())?;
        self.record(context, "action", action, "ABANDONED", &error);
        self.emit(Event::ActionFinished {
            action: action.to_string(),
            status: Status::Abandoned,
            duration: Duration::ZERO,
            detail: error,
        });
        Ok(())
    }

    /// Run one action with its retries; `Err(reason)` when it failed.
    #[tracing::instrument(name = "action", skip_all, fields(action = %action.name))]
    async fn run_action(
        &self,
        context: &ExecutionContext,
        action: &ActionPlan,
    ) -> Result<(), String> {
        let started = Instant::now();
        let masker = self.masker.clone();
        let resolved = resolve_config(context, action, &self.caches);
        let recorded_config = match &resolved {
            Ok(config) => config.clone(),
            Err(_) => action.config.clone(),
        };
        let masked_config: Vec<(String, String)> = recorded_config
            .iter()
            .map(|(k, v)| (k.clone(), masker.mask(v)))
            .collect();
        let record = self.state.start_action(
            &context.id,
            &action.stage,
            &action.name,
            action.run_order,
            &action.provider(),
            &masked_config,
            now_ms(),
        );
        if let Err(e) = record {
            return Err(format!(
                "action `{}`: recording its start failed: {e:#}",
                action.name
            ));
        }
        self.record(context, "action", &action.name, "STARTED", "");
        let result = match (resolved, &action.kind) {
            (Ok(config), ActionKind::Plugin(plugin)) => {
                self.attempts(context, action, plugin, config, masker.clone())
                    .await
            }
            (Ok(_), ActionKind::Approval(policy)) => {
                self.await_approval(context, action, policy).await
            }
            (Err(reason), _) => Err((0, reason)),
        };
        self.finish_action(context, action, result, &masker, started)
    }

    /// Try the action up to its retry policy's attempts.
    async fn attempts(
        &self,
        context: &ExecutionContext,
        action: &ActionPlan,
        installed: &InstalledPlugin,
        config: Vec<(String, String)>,
        masker: Arc<Masker>,
    ) -> Result<(u32, ActionOutcome, Vec<OutputRecord>), (u32, String)> {
        let plugin = self
            .runtime
            .load(
                &installed.component_path(),
                &installed.precompiled_path(self.runtime.compatibility_key()),
            )
            .map_err(|e| (0, format!("loading plugin {}: {e:#}", installed.id())))?;
        let mut attempt = 1;
        let mut token = context.continuations.get(&action.name).cloned();
        loop {
            self.emit(Event::ActionStarted {
                stage: action.stage.clone(),
                action: action.name.clone(),
                plugin: installed.id(),
                attempt,
            });
            let round = Round {
                attempt,
                continuation: token.clone(),
            };
            let outcome = self
                .attempt(context, action, &config, &masker, &plugin, &round)
                .await;
            match outcome {
                Ok((outcome, _)) if outcome.continuation.is_some() => {
                    token = self
                        .continue_later(context, action, &outcome, &masker)
                        .await;
                }
                Ok((outcome, outputs)) => return Ok((attempt, outcome, outputs)),
                Err(AttemptError::Action(error))
                    if error.retryable() && attempt < action.retry.attempts =>
                {
                    let wait = action.retry.backoff * 2u32.saturating_pow(attempt - 1);
                    let error = masker.mask(&error.to_string());
                    self.emit(Event::ActionRetrying {
                        action: action.name.clone(),
                        attempt,
                        error,
                        wait,
                    });
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(error) => return Err((attempt, masker.mask(&error.to_string()))),
            }
        }
    }

    /// Record a continuation (so a restarted server resumes the rounds), show the
    /// round's summary, and sleep without a sandbox; returns the next token.
    async fn continue_later(
        &self,
        context: &ExecutionContext,
        action: &ActionPlan,
        outcome: &ActionOutcome,
        masker: &Masker,
    ) -> Option<String> {
        let (token, delay) = outcome.continuation.clone()?;
        let summary = masker.mask(&outcome.summary);
        let due = now_ms() + delay.as_millis() as i64;
        if let Err(e) =
            self.state
                .set_continuation(&context.id, &action.name, &token, due, &summary)
        {
            tracing::error!("recording a continuation failed: {e:#}");
        }
        self.emit(Event::ActionProgress {
            action: action.name.clone(),
            percent: 0,
            message: format!(
                "{summary} (continues in {})",
                humantime::format_duration(delay)
            ),
        });
        tokio::time::sleep(delay).await;
        Some(token)
    }

    /// Wait for people to approve or reject through the API (or the local CLI,
    /// which writes the decision to the same state store), or for the timeout.
    /// The approval record, with its token and deadline, is created once, so a
    /// restarted server keeps waiting on the same one.
    async fn await_approval(
        &self,
        context: &ExecutionContext,
        action: &ActionPlan,
        policy: &ApprovalPolicy,
    ) -> Result<(u32, ActionOutcome, Vec<OutputRecord>), (u32, String)> {
        let failed = |e: anyhow::Error| (1, format!("approval bookkeeping failed: {e:#}"));
        let expires = now_ms() + policy.timeout.as_millis() as i64;
        let approval = self
            .state
            .open_approval(
                &context.id,
                &action.name,
                &policy.approvers,
                &policy.message,
                expires,
            )
            .map_err(failed)?;
        self.emit(Event::ActionStarted {
            stage: action.stage.clone(),
            action: action.name.clone(),
            plugin: format!("approval by {}", policy.approvers),
            attempt: 1,
        });
        self.progress_hook(context, action)(
            0,
            &format!("waiting for approval (token {})", approval.token),
        );
        loop {
            let notified = self.approvals.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let current = self
                .state
                .approval(&context.id, &action.name)
                .map_err(failed)?
                .ok_or_else(|| (1, "approval record vanished".to_string()))?;
            let by = current.decided_by.clone().unwrap_or_default();
            let comment = current.comment.clone().unwrap_or_default();
            match current.status.as_str() {
                "approved" => {
                    let outcome = ActionOutcome {
                        continuation: None,
                        summary: format!("approved by {by}: {comment}"),
                        variables: vec![("approved_by".into(), by), ("comment".into(), comment)],
                    };
                    return Ok((1, outcome, Vec::new()));
                }
                "rejected" => return Err((1, format!("rejected by {by}: {comment}"))),
                _ => {}
            }
            let remaining = current.expires_ms - now_ms();
            if remaining <= 0 {
                self.state
                    .expire_approval(&context.id, &action.name)
                    .map_err(failed)?;
                return Err((
                    1,
                    format!(
                        "approval timed out after {}",
                        humantime::format_duration(policy.timeout)
                    ),
                ));
            }
            // The poll picks up decisions written by another process.
            let wait = Duration::from_millis(remaining.min(1000) as u64);
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Wake approvals waiting in this process (after a decision was recorded).
    pub fn approvals_changed(&self) {
        self.approvals.notify_waiters();
    }

    /// What the sandbox of one call of `action` may reach: its grants, its inputs
    /// from the store, the given output and workspace directories.
    fn sandbox_spec(
        &self,
        context: &ExecutionContext,
        action: &ActionPlan,
        round: &Round,
        sandbox: Sandbox<'_>,
    ) -> SandboxSpec {
        SandboxSpec {
            invocation: Invocation {
                pipeline: context.plan.name.clone(),
                stage: action.stage.clone(),
                action: action.name.clone(),
                execution_id: context.id.clone(),
                attempt: round.attempt,
                config: sandbox.config.to_vec(),
                inputs: action.inputs.clone(),
                outputs: action.outputs.clone(),
                mounts: action
                    .grants
                    .mounts
                    .iter()
                    .map(|m| m.name.clone())
                    .collect(),
                continuation: round.continuation.clone(),
            },
            inputs: self.input_dirs(context, action),
            outputs: sandbox.outputs,
            workspace: sandbox.workspace,
            mounts: action.grants.mounts.clone(),
            caches: self.caches.granted(&context.plan, &action.grants.caches),
            secret_names: action.grants.secrets.clone(),
            secret_values: self.secrets.granted(&action.grants.secrets),
            hosts: action.grants.hosts.clone(),
            commands: action.grants.commands.clone(),
            inherit_env: action.grants.env.clone(),
            toolchains: action.grants.toolchains.clone(),
            run_as_root: action.grants.run_as_root,
            limits: action.limits,
            log: sandbox.log,
        }
    }

    /// Poll the pipeline's source action: its `check` with the configuration
    /// resolved against the variables' defaults. New revisions, oldest first.
    pub async fn poll(
        &self,
        plan: Arc<Plan>,
        action_name: &str,
        last: Option<String>,
    ) -> anyhow::Result<Vec<String>> {
        let action = plan
            .stages
            .iter()
            .flat_map(|s| &s.actions)
            .find(|a| a.name == action_name)
            .with_context(|| format!("no action `{action_name}`"))?
            .clone();
        let ActionKind::Plugin(installed) = &action.kind else {
            anyhow::bail!("`{action_name}` is not a plugin action");
        };
        let context = side_context(&plan, format!("poll-{}", uuid::Uuid::new_v4()), "poll")?;
        let (call, spec) = self.side_call(&context, &action, installed)?;
        let lease = self.caches.acquire(&plan, &action.grants.caches, &call.log);
        let result = match lease.await {
            Ok(lease) => {
                let result = self.runtime.check(&call.plugin, spec, last).await;
                lease.release(&call.log).await;
                result.map_err(|e| anyhow::anyhow!(call.masker.mask(&e.to_string())))
            }
            Err(message) => Err(anyhow::anyhow!(message)),
        };
        call.finish(&format!("poll {}/{action_name}", plan.name));
        result
    }

    /// Deliver one state-change event through the pipeline's `[notifications]`
    /// action; `Err` leaves it for the next try (delivery is at least once).
    pub async fn notify(&self, plan: Arc<Plan>, event: &EventRecord) -> anyhow::Result<()> {
        let Some(notifications) = &plan.notifications else {
            return Ok(());
        };
        let action = notifications.action.clone();
        let ActionKind::Plugin(installed) = &action.kind else {
            anyhow::bail!("notifications need a plugin action");
        };
        let context = side_context(&plan, event.execution.clone(), "notification")?;
        let fields = [
            ("kind", &event.kind),
            ("name", &event.name),
            ("state", &event.state),
            ("detail", &event.detail),
            ("execution", &event.execution),
            ("pipeline", &event.pipeline),
        ];
        let values = fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        lock(&context.namespaces).insert("event".into(), values);
        let (call, spec) = self.side_call(&context, &action, installed)?;
        let result = self.runtime.invoke(&call.plugin, spec).await;
        call.finish(&format!("notify {}", plan.name));
        result
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!(call.masker.mask(&e.to_string())))
    }

    /// A one-off sandboxed call of `action` outside an execution (polls,
    /// notifications): its own workspace, no inputs or outputs.
    fn side_call(
        &self,
        context: &ExecutionContext,
        action: &ActionPlan,
        installed: &InstalledPlugin,
    ) -> anyhow::Result<(SideCall, SandboxSpec)> {
        let config = resolve_config(context, action, &self.caches).map_err(anyhow::Error::msg)?;
        let plugin = self.runtime.load(
            &installed.component_path(),
            &installed.precompiled_path(self.runtime.compatibility_key()),
        )?;
        let workspace = self
            .work_root
            .join(format!("side-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&workspace)?;
        let masker = self.masker.clone();
        let log = LogSink::new(action.limits.log_bytes, masker.clone(), None);
        let sandbox = Sandbox {
            config: &config,
            outputs: Vec::new(),
            workspace: workspace.clone(),
            log: log.clone(),
        };
        let round = Round {
            attempt: 1,
            continuation: None,
        };
        let spec = self.sandbox_spec(context, action, &round, sandbox);
        Ok((
            SideCall {
                plugin,
                workspace,
                log,
                masker,
            },
            spec,
        ))
    }

    /// One attempt in a fresh sandbox; outputs ingested on success.
    #[tracing::instrument(name = "attempt", skip_all, fields(attempt = round.attempt))]
    async fn attempt(
        &self,
        context: &ExecutionContext,
        action: &ActionPlan,
        config: &[(String, String)],
        masker: &Arc<Masker>,
        plugin: &crate::sandbox::LoadedPlugin,
        round: &Round,
    ) -> Result<(ActionOutcome, Vec<OutputRecord>), AttemptError> {
        let attempt = round.attempt;
        let work = self
            .work_root
            .join(&context.id)
            .join(format!("{}-{attempt}", action.name));
        let outputs: Vec<(String, PathBuf)> = action
            .outputs
            .iter()
            .map(|o| (o.clone(), work.join("out").join(o)))
            .collect();
        let workspace = work.join("workspace");
        for dir in outputs.iter().map(|(_, d)| d).chain([&workspace]) {
            std::fs::create_dir_all(dir)
                .map_err(|e| AttemptError::Host(format!("creating {}: {e}", dir.display())))?;
        }
        let log = LogSink::new(
            action.limits.log_bytes,
            masker.clone(),
            Some(self.progress_hook(context, action)),
        );
        // What the action prints is shown live; the host's own note of a failed
        // attempt (below) is not: the retry or end event says it already.
        let live = log.clone().with_live(self.live_hook(action));
        let sandbox = Sandbox {
            config,
            outputs: outputs.clone(),
            workspace,
            log: live.clone(),
        };
        let spec = self.sandbox_spec(context, action, round, sandbox);
        let (result, stored_so_far) = self
            .storing_logs(
                context,
                action,
                attempt,
                &log,
                self.invoke_locked(context, action, plugin, spec, &log),
            )
            .await;
        if let Err(error) = &result {
            log.line(
                LogStream::Host,
                &format!("attempt {attempt} failed: {error}"),
            );
            let error = masker.mask(&error.to_string());
            tracing::info!(error = error.as_str(), "attempt failed");
        } else {
            tracing::debug!("attempt succeeded");
        }
        let captured = live.finish();
        let stored = stored_so_far.and_then(|()| {
            self.state
                .append_logs(&context.id, &action.name, attempt, &captured.lines)
        });
        let ingested = match result {
            Ok(outcome) => self
                .ingest(context, action, &outputs)
                .map(|records| (outcome, records)),
            Err(error) => {
                self.keep_failed_outputs(context, action, &error, &outputs);
                Err(AttemptError::Action(error))
            }
        };
        std::fs::remove_dir_all(&work).ok();
        stored.map_err(|e| AttemptError::Host(format!("storing logs: {e:#}")))?;
        ingested
    }

    /// A plugin that failed on purpose may still have left outputs (a test
    /// run's reports, with `collect-on-failure`): store the non-empty ones and
    /// record them with the failed action, so they can be downloaded.
    fn keep_failed_outputs(
        &self,
        context: &ExecutionContext,
        action: &ActionPlan,
        error: &ActionError,
        outputs: &[(String, PathBuf)],
    ) {
        if !matches!(error, ActionError::Plugin { .. }) {
            return;
        }
        let filled: Vec<(String, PathBuf)> = outputs
            .iter()
            .filter(|(_, dir)| std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()))
            .cloned()
            .collect();
        let records = self.ingest(context, action, &filled).unwrap_or_default();
        lock(&context.failed_outputs).insert(action.name.clone(), records);
    }

    /// Await `call`, storing the log lines it captures every [`LOG_FLUSH`] so
    /// `sluice logs -f` follows them while the action runs. The first storage
    /// error is returned (and storing stops) rather than lost.
    async fn storing_logs<T>(
        &self,
        context: &ExecutionContext,
        action: &ActionPlan,
        attempt: u32,
        log: &LogSink,
        call: impl std::future::Future<Output = T>,
    ) -> (T, anyhow::Result<()>) {
        tokio::pin!(call);
        let mut flush = tokio::time::interval(LOG_FLUSH);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stored = Ok(());
        loop {
            tokio::select! {
                result = &mut call => return (result, stored),
                _ = flush.tick(), if stored.is_ok() => {
                    let lines = log.take_new();
                    stored = self.state.append_logs(&context.id, &action.name, attempt, &lines);
                }
            }
        }
    }

    /// Feeds each captured line to the event sink as [`Event::ActionLog`].
    fn live_hook(&self, action: &ActionPlan) -> LineHook {
        let events = self.events.clone();
        let name = action.name.clone();
        Arc::new(move |stream, text| {
            events(Event::ActionLog {
                action: name.clone(),
                stream,
                text: text.to_string(),
            })
        })
    }

    /// Invoke with the action's caches locked for exactly as long as it runs
    /// (see [`crate::cache`]); over-size caches are cleared after it.
    async fn invoke_locked(
        &self,
        context: &ExecutionContext,
        action: &ActionPlan,
        plugin: &crate::sandbox::LoadedPlugin,
        spec: SandboxSpec,
        log: &LogSink,
    ) -> Result<ActionOutcome, ActionError> {
        let caches = &action.grants.caches;
        let lease = self
            .caches
            .acquire(&context.plan, caches, log)
            .await
            .map_err(ActionError::Host)?;
        let result = self.runtime.invoke(plugin, spec).await;
        lease.release(log).await;
        result
    }

    fn progress_hook(&self, context: &ExecutionContext, action: &ActionPlan) -> ProgressHook {
        let events = self.events.clone();
        let name = action.name.clone();
        let (state, id) = (self.state.clone(), context.id.clone());
        Arc::new(move |percent, message| {
            // Shown by the pipeline state API; losing one report is harmless.
            state.set_progress(&id, &name, percent, message).ok();
            events(Event::ActionProgress {
                action: name.clone(),
                percent,
                message: message.to_string(),
            })
        })
    }

    fn input_dirs(
        &self,
        context: &ExecutionContext,
        action: &ActionPlan,
    ) -> Vec<(String, PathBuf)> {
        let artifacts = lock(&context.artifacts);
        action
            .inputs
            .iter()
            .filter_map(|name| {
                let info = artifacts.get(name)?;
                Some((name.clone(), self.artifacts.path_of(&info.digest)))
            })
            .collect()
    }

    fn ingest(
        &self,
        context: &ExecutionContext,
        action: &ActionPlan,
        outputs: &[(String, PathBuf)],
    ) -> Result<Vec<OutputRecord>, AttemptError> {
        // Counted from metadata before anything is hashed or stored, so an
        // action over its output quota costs no more than a directory walk.
        let mut budget = crate::artifact::OutputBudget::new(&action.limits);
        for (_, dir) in outputs {
            budget
                .charge(dir)
                .map_err(|hit| AttemptError::Action(ActionError::Limit(hit)))?;
        }
        let mut records = Vec::new();
        for (name, dir) in outputs {
            let info = self.artifacts.ingest(dir).map_err(|e| {
                AttemptError::Host(format!("storing output artifact `{name}`: {e:#}"))
            })?;
            records.push(OutputRecord {
                name: name.clone(),
                digest: info.digest.clone(),
                files: info.files,
                bytes: info.bytes,
            });
            lock(&context.artifacts).insert(name.clone(), info);
        }
        Ok(records)
    }

    fn finish_action(
        &self,
        context: &ExecutionContext,
        action: &ActionPlan,
        result: Result<(u32, ActionOutcome, Vec<OutputRecord>), (u32, String)>,
        masker: &Masker,
        started: Instant,
    ) -> Result<(), String> {
        let duration = started.elapsed();
        let (status, attempts, summary, error, variables, outputs) = match result {
            Ok((attempts, outcome, outputs)) => {
                let variables: Vec<(String, String)> = outcome
                    .variables
                    .iter()
                    .map(|(k, v)| (masker.mask(k), masker.mask(v)))
                    .collect();
                if let Some(namespace) = &action.namespace {
                    lock(&context.namespaces)
                        .insert(namespace.clone(), variables.iter().cloned().collect());
                }
                (
                    Status::Succeeded,
                    attempts,
                    Some(masker.mask(&outcome.summary)),
                    None,
                    variables,
                    outputs,
                )
            }
            Err((attempts, error)) => (
                Status::Failed,
                attempts,
                None,
                Some(masker.mask(&error)),
                Vec::new(),
                lock(&context.failed_outputs)
                    .remove(&action.name)
                    .unwrap_or_default(),
            ),
        };
        let end = ActionEnd {
            status,
            attempts,
            summary: summary.as_deref(),
            error: error.as_deref(),
            variables: &variables,
            outputs: &outputs,
        };
        self.state
            .finish_action(&context.id, &action.name, &end, now_ms())
            .map_err(|e| format!("action `{}`: recording its end failed: {e:#}", action.name))?;
        let detail = error.clone().or(summary).unwrap_or_default();
        self.record(
            context,
            "action",
            &action.name,
            event_state(status),
            &detail,
        );
        self.emit(Event::ActionFinished {
            action: action.name.clone(),
            status,
            duration,
            detail,
        });
        match error {
            Some(error) => Err(format!("action `{}` failed: {error}", action.name)),
            None => Ok(()),
        }
    }
}

/// An execution-less context for polls and notifications.
fn side_context(plan: &Arc<Plan>, id: String, kind: &str) -> anyhow::Result<ExecutionContext> {
    Ok(ExecutionContext {
        done: HashSet::new(),
        continuations: HashMap::new(),
        id,
        variables: Executor::resolve_variables(plan, &BTreeMap::new())?,
        plan: plan.clone(),
        trigger: BTreeMap::from([("kind".to_string(), kind.to_string())]),
        namespaces: Mutex::new(HashMap::new()),
        artifacts: Mutex::new(HashMap::new()),
        failed_outputs: Mutex::new(HashMap::new()),
        stop: tokio::sync::watch::Sender::new(None),
    })
}

/// A prepared one-off call; `finish` cleans up after it.
struct SideCall {
    plugin: crate::sandbox::LoadedPlugin,
    workspace: PathBuf,
    log: LogSink,
    masker: Arc<Masker>,
}

impl SideCall {
    /// Remove the workspace and hand the log to tracing (it belongs to no execution).
    fn finish(&self, label: &str) {
        std::fs::remove_dir_all(&self.workspace).ok();
        for line in self.log.finish().lines {
            tracing::debug!("{label}: {}", line.text);
        }
    }
}

/// The directories and log of one sandboxed call.
struct Sandbox<'a> {
    config: &'a [(String, String)],
    outputs: Vec<(String, PathBuf)>,
    workspace: PathBuf,
    log: LogSink,
}

/// One invocation of an action: which attempt, and which continuation round.
struct Round {
    attempt: u32,
    continuation: Option<String>,
}

/// The event state name of a final status.
fn event_state(status: Status) -> &'static str {
    match status {
        Status::InProgress => "STARTED",
        Status::Succeeded => "SUCCEEDED",
        Status::Failed | Status::Skipped => "FAILED",
        Status::Superseded => "SUPERSEDED",
        Status::Stopping | Status::Stopped => "STOPPED",
        Status::Abandoned => "ABANDONED",
    }
}

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    /// The sandboxed action failed.
    #[error("{0}")]
    Action(ActionError),
    /// The host failed around it.
    #[error("{0}")]
    Host(String),
}

/// The action's configuration with every reference replaced; `#{cache.<name>}`
/// is the host path of a cache granted to the action.
fn resolve_config(
    context: &ExecutionContext,
    action: &ActionPlan,
    caches: &crate::cache::CacheStore,
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
