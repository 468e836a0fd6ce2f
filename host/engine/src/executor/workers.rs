//! Attempts run by worker processes (`sluice worker`), coordinated through
//! the state store's [`AttemptQueue`](sluice_store::state::AttemptQueue).
//!
//! With [`Placement::Workers`], the executor does not open a sandbox: it
//! queues the attempt (everything a worker needs to run it, the pipeline text
//! included) and waits for its result row. A [`Worker`] claims attempts under
//! a lease that it renews every third of it, runs each in its own sandbox, and
//! records the result under the fencing token of its claim. A worker that dies
//! stops renewing; once its lease runs out another worker claims the attempt,
//! and the dead one's late result (were it only paused) is refused by the
//! fence. A worker that loses its claim (taken over, or withdrawn because the
//! execution stopped) drops its run, which kills the action's native commands.
//!
//! The key of an attempt is its execution, action, attempt number and
//! continuation: an executor resumed after a crash queues the same key and
//! waits on the attempt already queued, done or running, instead of running
//! the action a second time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_core::pipeline::{ActionKind, Plan};
use sluice_core::plugin::{InstalledPlugin, Registry};
use sluice_sandbox::ActionOutcome;
use sluice_store::off_workers;
use sluice_store::remote::RemoteArtifacts;
use sluice_store::state::{
    AttemptClaim, AttemptState, ClaimedAttempt, OutputRecord, Store, StoreSignals,
};

use super::runner::{AttemptFailure, AttemptRequest, Attempted};
use super::{Executor, SandboxRunner};
use crate::cache::CacheStore;

/// The first look at a queued attempt's row; later looks back off to [`LAST_LOOK`].
const FIRST_LOOK: Duration = Duration::from_millis(10);
/// The slowest look at a queued attempt's row.
const LAST_LOOK: Duration = Duration::from_millis(250);
/// How long an idle worker waits before it looks for work again.
const IDLE_LOOK: Duration = Duration::from_millis(100);
/// The same two, where the store's signals reach across processes
/// (PostgreSQL's LISTEN/NOTIFY): a safety net for a lost notification.
const SIGNALLED_LOOK: Duration = Duration::from_secs(1);
/// Most plans a worker keeps; past it the cache starts over (pipelines are
/// re-registered over time, and a plan is cheap to parse again).
const MOST_PLANS: usize = 256;

/// Where this process runs the actions of its executions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Placement {
    /// In its own sandboxes.
    #[default]
    Here,
    /// Queued in the state store for `sluice worker` processes.
    Workers,
}

/// How a process shares work with others on the same database.
#[derive(Clone, Debug, Default)]
pub struct Sharing {
    /// Where attempts run.
    pub placement: Placement,
    /// The bucket every output is uploaded to and missing inputs are
    /// downloaded from; `None` keeps artifacts on this machine only.
    pub remote: Option<RemoteArtifacts>,
}

/// A plugin a queued attempt needs, pinned by its component's digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct PluginPin {
    name: String,
    version: String,
    sha256: String,
    component: String,
}

impl PluginPin {
    fn of(installed: &InstalledPlugin) -> Self {
        let manifest = &installed.manifest;
        Self {
            name: manifest.name.clone(),
            version: manifest.version.to_string(),
            sha256: manifest.sha256.clone().unwrap_or_default(),
            component: manifest.component.clone(),
        }
    }

    fn matches(&self, installed: &InstalledPlugin) -> bool {
        *self == Self::of(installed)
    }
}

/// What a worker is handed: enough to run the attempt with no other lookup.
#[derive(Debug, Serialize, Deserialize)]
struct AttemptJob {
    execution: String,
    /// The pipeline's text and the file it came from (for its diagnostics).
    source: String,
    file: PathBuf,
    action: String,
    attempt: u32,
    continuation: Option<String>,
    config: Vec<(String, String)>,
    inputs: Vec<(String, String)>,
    /// Every plugin the pipeline names (parsing it needs them all).
    plugins: Vec<PluginPin>,
    /// The action's granted caches as the queueing process resolved
    /// `#{cache.<name>}` in `config`: (name, its directory there). A cache is
    /// a directory of the machine that runs the action, so the worker puts
    /// its own in their place.
    #[serde(default)]
    caches: Vec<(String, String)>,
}

impl AttemptJob {
    /// `config` with each cache directory of the queueing process replaced
    /// by this worker's (`caches`).
    fn config_here(&self, pipeline: &str, caches: &CacheStore) -> Vec<(String, String)> {
        let mut config = self.config.clone();
        for (name, there) in &self.caches {
            let here = caches.dir(pipeline, name).display().to_string();
            for (_, value) in &mut config {
                *value = value.replace(there.as_str(), &here);
            }
        }
        config
    }
}

/// A worker's answer, as stored in the attempt's row.
#[derive(Debug, Serialize, Deserialize)]
enum AttemptResult {
    Succeeded {
        summary: String,
        variables: Vec<(String, String)>,
        /// (token, delay in ms).
        continuation: Option<(String, u64)>,
        outputs: Vec<OutputRecord>,
    },
    NotLoaded(String),
    Failed {
        error: String,
        retryable: bool,
        kept_outputs: Option<Vec<OutputRecord>>,
    },
}

impl From<Result<Attempted, AttemptFailure>> for AttemptResult {
    fn from(result: Result<Attempted, AttemptFailure>) -> Self {
        match result {
            Ok(Attempted { outcome, outputs }) => Self::Succeeded {
                summary: outcome.summary,
                variables: outcome.variables,
                continuation: outcome
                    .continuation
                    .map(|(token, delay)| (token, delay.as_millis() as u64)),
                outputs,
            },
            Err(AttemptFailure::NotLoaded(error)) => Self::NotLoaded(error),
            Err(AttemptFailure::Failed {
                error,
                retryable,
                kept_outputs,
            }) => Self::Failed {
                error,
                retryable,
                kept_outputs,
            },
        }
    }
}

impl From<AttemptResult> for Result<Attempted, AttemptFailure> {
    fn from(result: AttemptResult) -> Self {
        match result {
            AttemptResult::Succeeded {
                summary,
                variables,
                continuation,
                outputs,
            } => Ok(Attempted {
                outcome: ActionOutcome {
                    summary,
                    variables,
                    continuation: continuation
                        .map(|(token, ms)| (token, Duration::from_millis(ms))),
                },
                outputs,
            }),
            AttemptResult::NotLoaded(error) => Err(AttemptFailure::NotLoaded(error)),
            AttemptResult::Failed {
                error,
                retryable,
                kept_outputs,
            } => Err(AttemptFailure::Failed {
                error,
                retryable,
                kept_outputs,
            }),
        }
    }
}

/// A failure of the bookkeeping around an attempt, not of the action.
fn host_failure(error: impl std::fmt::Display) -> AttemptFailure {
    AttemptFailure::Failed {
        error: error.to_string(),
        retryable: false,
        kept_outputs: None,
    }
}

/// The queue key of an attempt (see the module's documentation).
fn attempt_key(request: &AttemptRequest<'_>) -> String {
    format!(
        "{}/{}/{}/{}",
        request.execution,
        request.action.name,
        request.attempt,
        request.continuation.as_deref().unwrap_or("")
    )
}

/// Every plugin `plan` names, once each.
fn plugin_pins(plan: &Plan) -> Vec<PluginPin> {
    let actions = plan.stages.iter().flat_map(|s| &s.actions);
    let notifier = plan.notifications.iter().map(|n| &n.action);
    let mut pins: Vec<PluginPin> = actions
        .chain(notifier)
        .filter_map(|a| match &a.kind {
            ActionKind::Plugin(installed) => Some(PluginPin::of(installed)),
            _ => None,
        })
        .collect();
    pins.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
    pins.dedup();
    pins
}

/// Withdraws a queued attempt when the executor stops waiting for it (the
/// execution was stopped, abandoning its running actions).
struct Withdraw {
    state: Arc<dyn Store>,
    key: Option<String>,
}

impl Drop for Withdraw {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let state = self.state.clone();
        let cancel = move || {
            if let Err(e) = state.cancel_attempt(&key) {
                tracing::warn!("withdrawing attempt {key}: {e:#}");
            }
        };
        // The withdrawal lands before the executor records the stop (a retry
        // then queues the attempt afresh, never to be withdrawn late). On a
        // tokio worker thread (the wait's future is dropped there), tokio is
        // told the thread blocks, so its other tasks move on meanwhile.
        match tokio::runtime::Handle::try_current().map(|runtime| runtime.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(cancel),
            _ => cancel(),
        }
    }
}

/// Queue `request` for a worker and wait for its result.
pub(super) async fn dispatch(
    runner: &SandboxRunner,
    request: AttemptRequest<'_>,
) -> Result<Attempted, AttemptFailure> {
    let key = attempt_key(&request);
    let job = AttemptJob {
        execution: request.execution.to_string(),
        source: request.plan.source.to_string(),
        file: request.plan.file.clone(),
        action: request.action.name.clone(),
        attempt: request.attempt,
        continuation: request.continuation.clone(),
        config: request.config.to_vec(),
        inputs: request.inputs.clone(),
        plugins: plugin_pins(request.plan),
        caches: (request.action.grants.caches.iter())
            .map(|name| {
                let there = runner.caches.dir(&request.plan.name, name);
                (name.clone(), there.display().to_string())
            })
            .collect(),
    };
    let payload = serde_json::to_string(&job).map_err(host_failure)?;
    let state = runner.state.clone();
    let (queue, queued_key, execution) =
        (state.clone(), key.clone(), request.execution.to_string());
    off_workers(move || queue.queue_attempt(&queued_key, &execution, &payload))
        .await
        .map_err(|e| host_failure(format!("queueing the attempt: {e:#}")))?;
    let mut withdraw = Withdraw {
        state: state.clone(),
        key: Some(key.clone()),
    };
    let progress = runner.progress_hook(request.execution, request.action, None);
    let signals = state.signals();
    let done = signals.done(&key);
    let last_look = look(&signals, LAST_LOOK);
    let (mut wait, mut shown_claim) = (FIRST_LOOK, 0);
    loop {
        // Told of the result at once; the look on a timer is the safety net
        // (and shows which worker took the attempt).
        let woken = done.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let (reader, looked_up) = (state.clone(), key.clone());
        let queued = off_workers(move || reader.queued_attempt(&looked_up))
            .await
            .map_err(|e| host_failure(format!("reading the queued attempt: {e:#}")))?
            .ok_or_else(|| host_failure("the queued attempt is gone"))?;
        match queued.state {
            AttemptState::Done => {
                withdraw.key = None;
                let stored = queued.result.unwrap_or_default();
                let result: AttemptResult = serde_json::from_str(&stored)
                    .map_err(|e| host_failure(format!("a worker's result is unreadable: {e}")))?;
                return result.into();
            }
            AttemptState::Cancelled => {
                withdraw.key = None;
                return Err(host_failure("the attempt was withdrawn"));
            }
            AttemptState::Queued if shown_claim == 0 => {
                progress(0, "waiting for a worker");
                shown_claim = -1;
            }
            AttemptState::Running if queued.fence != shown_claim => {
                let worker = queued.worker.unwrap_or_default();
                progress(0, &format!("running on worker {worker}"));
                shown_claim = queued.fence;
            }
            _ => {}
        }
        tokio::select! {
            () = &mut woken => {}
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(last_look);
    }
}

/// How long a waiter goes between looks: [`SIGNALLED_LOOK`] where signals
/// reach across processes (they wake it), `local` where only this process's do.
fn look(signals: &StoreSignals, local: Duration) -> Duration {
    match signals.reach_other_processes() {
        true => SIGNALLED_LOOK,
        false => local,
    }
}

/// Claims queued attempts and runs them in this process's sandboxes.
pub struct Worker {
    executor: Arc<Executor>,
    registry: Registry,
    pipelines_root: PathBuf,
    id: String,
    lease: Duration,
    /// Plans by the text they were parsed from.
    plans: tokio::sync::Mutex<HashMap<(String, PathBuf), Arc<Plan>>>,
}

impl Worker {
    /// A worker named `id` running attempts through `executor`'s sandbox
    /// runner. Pipelines are parsed against `registry` (plugins missing from
    /// it are pulled from the shared bucket by digest and precompiled here),
    /// relative host paths against `pipelines_root`. Its claims last `lease`
    /// unless renewed.
    pub fn new(
        executor: Arc<Executor>,
        registry: Registry,
        pipelines_root: PathBuf,
        id: String,
        lease: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            executor,
            registry,
            pipelines_root,
            id,
            lease,
            plans: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    fn state(&self) -> &Arc<dyn Store> {
        &self.executor.runner.state
    }

    fn lease_ms(&self) -> i64 {
        i64::try_from(self.lease.as_millis())
            .unwrap_or(i64::MAX)
            .max(1)
    }

    /// Claim and run attempts, at most `concurrency` at once, until `shutdown`
    /// completes; then wait for the running ones to finish.
    pub async fn run(
        self: Arc<Self>,
        concurrency: usize,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let slots = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
        let signals = self.state().signals();
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                permit = slots.clone().acquire_owned() => permit.expect("never closed"),
                () = &mut shutdown => break,
            };
            // Registered before looking, so an attempt queued in between wakes it.
            let queued = signals.queued().notified();
            tokio::pin!(queued);
            queued.as_mut().enable();
            let (state, id, lease_ms) = (self.state().clone(), self.id.clone(), self.lease_ms());
            let claimed = off_workers(move || {
                let now = state.clock_ms();
                state.claim_attempt(&id, now, now + lease_ms)
            })
            .await;
            match claimed {
                Ok(Some(claim)) => {
                    let worker = self.clone();
                    tokio::spawn(async move {
                        worker.run_claimed(claim).await;
                        drop(permit);
                    });
                    continue;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!("claiming an attempt: {e:#}"),
            }
            drop(permit);
            tokio::select! {
                () = &mut queued => {}
                () = tokio::time::sleep(look(&signals, IDLE_LOOK)) => {}
                () = &mut shutdown => break,
            }
        }
        let all = u32::try_from(concurrency.max(1)).unwrap_or(u32::MAX);
        let _ = slots.acquire_many(all).await;
    }

    /// Run one claimed attempt while renewing the claim; record its result
    /// under the claim's fence.
    #[tracing::instrument(name = "claimed", skip_all, fields(key = claim.key, fence = claim.fence))]
    async fn run_claimed(&self, claim: ClaimedAttempt) {
        let result = tokio::select! {
            result = self.attempt(&claim) => result,
            () = self.keep_claim(&claim) => {
                tracing::warn!("lost the claim: the attempt is dropped here");
                return;
            }
        };
        let stored = serde_json::to_string(&result).expect("attempt results serialize");
        let (state, key, fence) = (self.state().clone(), claim.key.clone(), claim.fence);
        match off_workers(move || state.complete_attempt(&key, fence, &stored)).await {
            Ok(true) => tracing::debug!("attempt recorded"),
            Ok(false) => tracing::warn!("the result came too late: another claim holds it"),
            Err(e) => tracing::warn!("recording the attempt's result: {e:#}"),
        }
    }

    /// Renew the claim every third of the lease; returns once it is lost.
    async fn keep_claim(&self, claim: &ClaimedAttempt) {
        loop {
            tokio::time::sleep(self.lease / 3).await;
            let (state, key, fence, lease_ms) = (
                self.state().clone(),
                claim.key.clone(),
                claim.fence,
                self.lease_ms(),
            );
            let renewed = off_workers(move || {
                let until = state.clock_ms() + lease_ms;
                state.renew_attempt(&key, fence, until)
            })
            .await;
            match renewed {
                Ok(true) => {}
                Ok(false) => return,
                // The database is unreachable: keep running; the fence
                // decides whether the result still counts.
                Err(e) => tracing::warn!("renewing the claim: {e:#}"),
            }
        }
    }

    /// Run the claimed attempt in a sandbox here.
    async fn attempt(&self, claim: &ClaimedAttempt) -> AttemptResult {
        let job: AttemptJob = match serde_json::from_str(&claim.payload) {
            Ok(job) => job,
            Err(e) => return AttemptResult::NotLoaded(format!("unreadable queued attempt: {e}")),
        };
        let plan = match self.plan(&job).await {
            Ok(plan) => plan,
            Err(e) => {
                return AttemptResult::NotLoaded(format!("on worker {}: {e:#}", self.id));
            }
        };
        let Some(action) = plan
            .stages
            .iter()
            .flat_map(|s| &s.actions)
            .find(|a| a.name == job.action)
        else {
            return AttemptResult::NotLoaded(format!("no action `{}` in the pipeline", job.action));
        };
        let ActionKind::Plugin(plugin) = &action.kind else {
            return AttemptResult::NotLoaded(format!("`{}` is not a plugin action", job.action));
        };
        let config = job.config_here(&plan.name, &self.executor.runner.caches);
        let request = AttemptRequest {
            execution: &job.execution,
            plan: &plan,
            action,
            plugin,
            config: &config,
            inputs: job.inputs.clone(),
            attempt: job.attempt,
            continuation: job.continuation.clone(),
            claim: Some(AttemptClaim {
                key: &claim.key,
                fence: claim.fence,
            }),
        };
        self.executor.runner.attempt_here(request).await.into()
    }

    /// The job's plan, parsed here against this worker's registry once its
    /// plugins are installed at the digests the job pins.
    async fn plan(&self, job: &AttemptJob) -> anyhow::Result<Arc<Plan>> {
        let mut plans = self.plans.lock().await;
        let key = (job.source.clone(), job.file.clone());
        if let Some(plan) = plans.get(&key) {
            return Ok(plan.clone());
        }
        for pin in &job.plugins {
            self.install_pinned(pin).await?;
        }
        let plan = sluice_core::pipeline::parse(
            &job.file,
            job.source.clone(),
            &self.registry,
            &self.pipelines_root,
        )
        .map_err(|d| anyhow::anyhow!("the pipeline does not validate here: {d}"))?;
        for pin in plugin_pins(&plan) {
            anyhow::ensure!(
                job.plugins.contains(&pin),
                "plugin {}@{} resolves here to sha256 {}, not the one the server ran",
                pin.name,
                pin.version,
                pin.sha256
            );
        }
        let plan = Arc::new(plan);
        if plans.len() >= MOST_PLANS {
            plans.clear();
        }
        plans.insert(key, plan.clone());
        Ok(plan)
    }

    /// Make `pin` installed here: already, or pulled from the shared bucket.
    async fn install_pinned(&self, pin: &PluginPin) -> anyhow::Result<()> {
        if self.registry.list()?.iter().any(|p| pin.matches(p)) {
            return Ok(());
        }
        let remote = self.executor.runner.sharing.remote.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "plugin {}@{} (sha256 {}) is not installed, and no --artifacts bucket is set to pull it from",
                pin.name,
                pin.version,
                pin.sha256
            )
        })?;
        let scratch = self
            .executor
            .runner
            .work_root
            .join(format!("pull-{}", uuid::Uuid::new_v4().simple()));
        let pulled = self.pull(remote, pin, &scratch).await;
        std::fs::remove_dir_all(&scratch).ok();
        pulled.map_err(|e| {
            e.context(format!(
                "pulling plugin {}@{} from {}",
                pin.name,
                pin.version,
                remote.url()
            ))
        })
    }

    async fn pull(
        &self,
        remote: &RemoteArtifacts,
        pin: &PluginPin,
        scratch: &Path,
    ) -> anyhow::Result<()> {
        remote
            .download_plugin(&pin.sha256, &pin.component, scratch)
            .await?;
        let (registry, source) = (self.registry.clone(), scratch.to_path_buf());
        let runtime = self.executor.runner.runtime.clone();
        let expected = pin.clone();
        tokio::task::spawn_blocking(move || {
            // The manifest's sha256 is checked against the component here.
            let plan = registry.plan(&source)?;
            let installed = registry.install(&source, &plan, runtime.as_ref())?;
            anyhow::ensure!(
                expected.matches(&installed),
                "the bucket's plugin under sha256 {} is {}",
                expected.sha256,
                installed.id()
            );
            tracing::info!(plugin = installed.id(), "pulled and precompiled");
            Ok(())
        })
        .await?
    }
}
