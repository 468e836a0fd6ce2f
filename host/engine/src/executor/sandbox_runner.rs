//! The real [`ActionRunner`]: attempts in wasmtime sandboxes, approvals
//! decided through the state store, polls and notifications as one-off
//! sandboxed calls.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use super::runner::{ActionRunner, AttemptFailure, AttemptRequest, Attempted};
use super::workers::{Placement, Sharing};
use super::{Event, EventSink, ExecutionContext, lock, resolve_config};
use crate::cache::CacheStore;
use sluice_core::pipeline::limits::Limits;
use sluice_core::pipeline::{ActionKind, ActionPlan, ApprovalPolicy, Plan};
use sluice_core::plugin::InstalledPlugin;
use sluice_sandbox::log::{LineHook, LogSink, LogStream, ProgressHook};
use sluice_sandbox::{
    ActionError, ActionOutcome, Invocation, LoadedPlugin, RuleVerdict, Runtime, SandboxSpec,
};
use sluice_store::artifact::ArtifactStore;
use sluice_store::off_workers;
use sluice_store::secrets::{Masker, SecretSource};
use sluice_store::state::ApprovalStatus;
use sluice_store::state::{AttemptClaim, EventRecord, LogLine, OutputRecord, Store};

/// How often a running action's new log lines are stored.
const LOG_FLUSH: Duration = Duration::from_millis(250);

/// Runs actions in wasmtime sandboxes; scratch directories go under `work_root`.
pub struct SandboxRunner {
    pub(super) runtime: Arc<Runtime>,
    pub(super) artifacts: ArtifactStore,
    pub(super) state: Arc<dyn Store>,
    pub(super) secrets: SecretSource,
    /// Every secret the host holds, masked in everything stored or shown.
    pub(super) masker: Arc<Masker>,
    pub(super) work_root: PathBuf,
    pub(super) caches: CacheStore,
    pub(super) events: EventSink,
    /// Woken when a decision on an approval is recorded in this process.
    pub(super) approvals: tokio::sync::Notify,
    /// Where attempts run, and the bucket artifacts are shared through.
    pub(super) sharing: Sharing,
    /// Empty workspaces kept for reuse.
    pub(super) workspaces: IdleWorkspaces,
}

/// Empty workspace directories kept between attempts: taking one is a
/// rename, not a mkdir (inode allocation, and on ext4 with `discard` a scan
/// of recently deleted inodes), and giving one back spares the rmdir.
/// Only a directory that is empty, ours, and as we made it is kept, so an
/// attempt never finds anything of an earlier one.
pub(super) struct IdleWorkspaces {
    root: PathBuf,
    idle: std::sync::Mutex<Vec<PathBuf>>,
}

/// Most idle workspaces kept.
const MOST_IDLE: usize = 1024;
/// The mode `create_dir` gives a workspace (umask 022).
const WORKSPACE_MODE: u32 = 0o755;

impl IdleWorkspaces {
    pub(super) fn under(root: PathBuf) -> Self {
        Self {
            root,
            idle: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Make `path` an empty directory: an idle one renamed, or a new one.
    fn take(&self, path: &std::path::Path) -> std::io::Result<()> {
        while let Some(idle) = self.lock().pop() {
            if std::fs::rename(&idle, path).is_ok() {
                return Ok(());
            }
            std::fs::remove_dir(&idle).ok();
        }
        std::fs::create_dir_all(self.root.as_path())?;
        std::fs::create_dir(path)
    }

    /// An idle workspace, as it is (no rename), if one is kept.
    fn take_as_is(&self) -> Option<PathBuf> {
        self.lock().pop()
    }

    /// Keep `path` for a later attempt if it is empty, owned by whoever owns
    /// the work directory (this process's user) and has the mode it was made
    /// with; whether it was kept.
    fn give_back(&self, path: &std::path::Path) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return false;
        };
        let Ok(root) = std::fs::metadata(&self.root) else {
            return false;
        };
        let ours = meta.is_dir()
            && meta.uid() == root.uid()
            && meta.gid() == root.gid()
            && meta.mode() & 0o7777 == WORKSPACE_MODE;
        let empty = std::fs::read_dir(path).is_ok_and(|mut d| d.next().is_none());
        if !ours || !empty || self.lock().len() >= MOST_IDLE {
            return false;
        }
        if Self::is_idle_name(path) {
            self.lock().push(path.to_path_buf());
            return true;
        }
        let idle = self
            .root
            .join(format!(".idle-{}", uuid::Uuid::new_v4().simple()));
        if std::fs::rename(path, &idle).is_err() {
            return false;
        }
        self.lock().push(idle);
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<PathBuf>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `path` is named as an idle workspace (taken as it is).
    fn is_idle_name(path: &std::path::Path) -> bool {
        path.file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with(".idle-"))
    }
}

/// What one sandboxed call of an action is given.
struct CallSpec<'a> {
    execution: &'a str,
    plan: &'a Plan,
    action: &'a ActionPlan,
    attempt: u32,
    continuation: Option<String>,
    config: &'a [(String, String)],
    inputs: Vec<(String, PathBuf)>,
    outputs: Vec<(String, PathBuf)>,
    workspace: PathBuf,
    log: LogSink,
}

impl ActionRunner for SandboxRunner {
    /// Fresh `out/<name>` and `workspace` directories, the log stored every
    /// [`LOG_FLUSH`] and shown live, the granted caches locked around the call.
    #[tracing::instrument(name = "attempt", skip_all, fields(attempt = request.attempt))]
    async fn attempt(&self, request: AttemptRequest<'_>) -> Result<Attempted, AttemptFailure> {
        match self.sharing.placement {
            Placement::Here => self.attempt_here(request).await,
            Placement::Workers => super::workers::dispatch(self, request).await,
        }
    }

    /// Waits on the state store's approval record, created once (with its
    /// token and deadline) so a restarted server keeps waiting on the same one.
    /// People decide through the API, or the local CLI writing to the same store.
    async fn approval(
        &self,
        execution: &str,
        action: &ActionPlan,
        policy: &ApprovalPolicy,
    ) -> Result<ActionOutcome, String> {
        let failed = |e: anyhow::Error| format!("approval bookkeeping failed: {e:#}");
        // The deadline is kept by the store's clock: a server that resumes
        // the wait on another machine keeps the same one.
        let timeout = policy.timeout.as_millis() as i64;
        let (state, id, name) = (
            self.state.clone(),
            execution.to_string(),
            action.name.clone(),
        );
        let (approvers, message) = (policy.approvers.clone(), policy.message.clone());
        let approval = off_workers(move || {
            let expires = state.clock_ms() + timeout;
            state.open_approval(&id, &name, &approvers, &message, expires)
        })
        .await
        .map_err(failed)?;
        self.progress_hook(execution, action, None)(
            0,
            &format!("waiting for approval (token {})", approval.token),
        );
        loop {
            let notified = self.approvals.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (state, id, name) = (
                self.state.clone(),
                execution.to_string(),
                action.name.clone(),
            );
            let (current, now) =
                off_workers(move || Ok((state.approval(&id, &name)?, state.clock_ms())))
                    .await
                    .map_err(failed)?;
            let current = current.ok_or_else(|| "approval record vanished".to_string())?;
            let by = current.decided_by.clone().unwrap_or_default();
            let comment = current.comment.clone().unwrap_or_default();
            match current.status {
                ApprovalStatus::Approved => {
                    return Ok(ActionOutcome {
                        continuation: None,
                        summary: format!("approved by {by}: {comment}"),
                        variables: vec![("approved_by".into(), by), ("comment".into(), comment)],
                    });
                }
                ApprovalStatus::Rejected => return Err(format!("rejected by {by}: {comment}")),
                _ => {}
            }
            let remaining = current.expires_ms - now;
            if remaining <= 0 {
                let (state, id, name) = (
                    self.state.clone(),
                    execution.to_string(),
                    action.name.clone(),
                );
                off_workers(move || state.expire_approval(&id, &name))
                    .await
                    .map_err(failed)?;
                return Err(format!(
                    "approval timed out after {}",
                    humantime::format_duration(policy.timeout)
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

    async fn sleep(&self, wait: Duration) {
        tokio::time::sleep(wait).await;
    }

    /// The source action's `check` with the configuration resolved against
    /// the variables' defaults, its caches locked around the call.
    async fn poll(
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
        let context =
            ExecutionContext::outside(&plan, format!("poll-{}", uuid::Uuid::new_v4()), "poll")?;
        let (call, spec) = self.side_call(&context, &action, installed).await?;
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

    async fn evaluate_rule(
        &self,
        plan: &Arc<Plan>,
        execution: &str,
        rule: &ActionPlan,
        config: Vec<(String, String)>,
    ) -> Result<RuleVerdict, String> {
        let ActionKind::Plugin(installed) = &rule.kind else {
            return Err(format!("rule `{}` names no plugin", rule.name));
        };
        let (call, spec) = self
            .side_call_with(execution, plan, rule, installed, config)
            .await
            .map_err(|e| format!("{e:#}"))?;
        let result = self.runtime.evaluate(&call.plugin, spec).await;
        call.finish(&format!("rule {}/{}", plan.name, rule.name));
        result.map_err(|e| call.masker.mask(&e.to_string()))
    }

    /// `Err` leaves the event for the next try (delivery is at least once).
    async fn notify(&self, plan: Arc<Plan>, event: &EventRecord) -> anyhow::Result<()> {
        let Some(notifications) = &plan.notifications else {
            return Ok(());
        };
        let action = notifications.action.clone();
        let ActionKind::Plugin(installed) = &action.kind else {
            anyhow::bail!("notifications need a plugin action");
        };
        let context = ExecutionContext::outside(&plan, event.execution.clone(), "notification")?;
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
        let (call, spec) = self.side_call(&context, &action, installed).await?;
        let result = self.runtime.invoke(&call.plugin, spec).await;
        call.finish(&format!("notify {}", plan.name));
        result
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!(call.masker.mask(&e.to_string())))
    }

    fn approvals_changed(&self) {
        self.approvals.notify_waiters();
    }

    /// Attempts remove their own directories; what a crash or an abandoned
    /// attempt left (`<execution>.*` under `work/`) goes here.
    fn execution_ended(&self, execution: &str) {
        let prefix = format!("{execution}.");
        let Ok(entries) = std::fs::read_dir(&self.work_root) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                sluice_store::artifact::remove_tree(&entry.path()).ok();
            }
        }
    }
}

impl SandboxRunner {
    /// One attempt in a sandbox of this process: inputs fetched from the
    /// shared bucket if missing here, outputs ingested (and shared).
    pub(super) async fn attempt_here(
        &self,
        request: AttemptRequest<'_>,
    ) -> Result<Attempted, AttemptFailure> {
        let installed = request.plugin;

        let plugin = self.load(installed).await.map_err(|e| {
            AttemptFailure::NotLoaded(format!("loading plugin {}: {e:#}", installed.id()))
        })?;
        self.attempt_in_sandbox(&request, &plugin)
            .await
            .map_err(|(error, kept_outputs)| AttemptFailure::Failed {
                retryable: matches!(&error, AttemptError::Action(e) if e.retryable()),
                error: error.to_string(),
                kept_outputs,
            })
    }

    /// The loaded plugin: from the runtime's cache, else loaded (deserialized,
    /// or compiled) off the async workers.
    async fn load(&self, installed: &InstalledPlugin) -> anyhow::Result<LoadedPlugin> {
        let precompiled = installed.precompiled_path(self.runtime.compatibility_key());
        if let Some(plugin) = self.runtime.loaded(&precompiled) {
            return Ok(plugin);
        }
        let (runtime, component) = (self.runtime.clone(), installed.component_path());
        off_workers(move || runtime.load(&component, &precompiled)).await
    }

    /// One attempt of a loaded plugin; a failure comes with the outputs kept
    /// from it (see [`SandboxRunner::keep_failed_outputs`]).
    async fn attempt_in_sandbox(
        &self,
        request: &AttemptRequest<'_>,
        plugin: &LoadedPlugin,
    ) -> Result<Attempted, (AttemptError, Option<Vec<OutputRecord>>)> {
        let (action, attempt) = (request.action, request.attempt);
        self.fetch_inputs(&request.inputs).await.map_err(|e| {
            let error = AttemptError::Host(format!("fetching input artifacts: {e:#}"));
            (error, None)
        })?;
        // Flat under `work/`: one mkdir and one rmdir per attempt without
        // outputs. Directory churn is most of a no-op action's cost on some
        // filesystems (ext4 mounted with `discard`: ~170 µs per mkdir+rmdir).
        let prefix = format!("{}.{}-{attempt}", request.execution, action.name);
        let named = self.work_root.join(&prefix);
        let outputs: Vec<(String, PathBuf)> = action
            .outputs
            .iter()
            .map(|o| (o.clone(), self.work_root.join(format!("{prefix}.out.{o}"))))
            .collect();
        let mut dirs: Vec<PathBuf> = outputs
            .iter()
            .map(|(_, d)| d.clone())
            .chain([named.clone()])
            .collect();
        // A server killed during this attempt left its directories behind: the
        // rerun after the restart starts as empty as the first run did.
        let stale: Vec<PathBuf> = dirs.iter().filter(|d| d.exists()).cloned().collect();
        if !stale.is_empty() {
            off_workers(move || {
                stale
                    .iter()
                    .try_for_each(|d| sluice_store::artifact::remove_tree(d).map(|_| ()))
            })
            .await
            .map_err(|e| {
                let error = AttemptError::Host(format!("clearing {prefix}: {e:#}"));
                (error, None)
            })?;
        }
        for dir in outputs.iter().map(|(_, d)| d) {
            std::fs::create_dir_all(dir).map_err(|e| {
                let error = AttemptError::Host(format!("creating {}: {e}", dir.display()));
                (error, None)
            })?;
        }
        // Without native commands nothing sees the workspace's host path: an
        // idle one serves as it is, sparing a rename in and one out.
        let idle = match action.grants.commands.is_empty() {
            true => self.workspaces.take_as_is(),
            false => None,
        };
        let workspace = match idle {
            Some(idle) => {
                dirs.retain(|d| *d != named);
                dirs.push(idle.clone());
                idle
            }
            None => {
                self.workspaces.take(&named).map_err(|e| {
                    let error = AttemptError::Host(format!("creating {}: {e}", named.display()));
                    (error, None)
                })?;
                named
            }
        };
        let log = LogSink::new(
            action.limits.log_bytes,
            self.masker.clone(),
            Some(self.progress_hook(request.execution, action, request.claim)),
        );
        // What the action prints is shown live; the host's own note of a failed
        // attempt (below) is not: the retry or end event says it already.
        let live = log.clone().with_live(self.live_hook(action));
        let spec = self.sandbox_spec(CallSpec {
            execution: request.execution,
            plan: request.plan,
            action,
            attempt,
            continuation: request.continuation.clone(),
            config: request.config,
            inputs: self.input_dirs(&request.inputs),
            outputs: outputs.clone(),
            workspace: workspace.clone(),
            log: live.clone(),
        });
        let (result, stored_so_far) = self
            .storing_logs(
                request,
                &log,
                self.invoke_locked(request.plan, action, plugin, spec, &log),
            )
            .await;
        if let Err(error) = &result {
            log.line(
                LogStream::Host,
                &format!("attempt {attempt} failed: {error}"),
            );
            let error = self.masker.mask(&error.to_string());
            tracing::info!(error = error.as_str(), "attempt failed");
        } else {
            tracing::debug!("attempt succeeded");
        }
        let captured = live.finish();
        let stored = match stored_so_far {
            Ok(()) => self.store_logs(request, captured.lines).await,
            failed => failed,
        };
        let ingested = match result {
            Ok(outcome) => self
                .ingest(action, outputs)
                .await
                .map(|outputs| Attempted { outcome, outputs })
                .map_err(|error| (error, None)),
            Err(error) => {
                let kept = self.keep_failed_outputs(action, &error, &outputs).await;
                Err((AttemptError::Action(error), kept))
            }
        };
        // A workspace no native command touched and the action left empty
        // is kept for the next attempt instead of removed.
        if action.grants.commands.is_empty() && self.workspaces.give_back(&workspace) {
            dirs.retain(|d| *d != workspace);
        }
        remove_attempt_dirs(dirs).await;
        if let Err(e) = stored {
            return Err((AttemptError::Host(format!("storing logs: {e:#}")), None));
        }
        ingested
    }

    /// A plugin that failed on purpose may still have left outputs (a test
    /// run's reports, with `collect-on-failure`): store the non-empty ones, to
    /// be recorded with the failed action so they can be downloaded.
    async fn keep_failed_outputs(
        &self,
        action: &ActionPlan,
        error: &ActionError,
        outputs: &[(String, PathBuf)],
    ) -> Option<Vec<OutputRecord>> {
        if !matches!(error, ActionError::Plugin { .. }) {
            return None;
        }
        let filled: Vec<(String, PathBuf)> = outputs
            .iter()
            .filter(|(_, dir)| std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()))
            .cloned()
            .collect();
        Some(self.ingest(action, filled).await.unwrap_or_default())
    }

    /// Await `call`, storing the log lines it captures every [`LOG_FLUSH`] so
    /// `sluice logs -f` follows them while the action runs. The first storage
    /// error is returned (and storing stops) rather than lost.
    async fn storing_logs<T>(
        &self,
        request: &AttemptRequest<'_>,
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
                    stored = self.store_logs(request, lines).await;
                }
            }
        }
    }

    /// Append an attempt's log lines to the state store, off the tokio
    /// workers (nothing to do without lines: the usual case of a no-op),
    /// under the worker's claim if it runs one.
    async fn store_logs(
        &self,
        request: &AttemptRequest<'_>,
        lines: Vec<LogLine>,
    ) -> anyhow::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let (state, execution, action, attempt) = (
            self.state.clone(),
            request.execution.to_string(),
            request.action.name.clone(),
            request.attempt,
        );
        let claim = request.claim.map(|c| (c.key.to_string(), c.fence));
        off_workers(move || {
            let claim = (claim.as_ref()).map(|(key, fence)| AttemptClaim { key, fence: *fence });
            state.append_logs(&execution, &action, attempt, claim, &lines)
        })
        .await
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

    /// Stores each progress report (shown by the pipeline state API), under
    /// the worker's claim if it runs one, and shows it.
    pub(super) fn progress_hook(
        &self,
        execution: &str,
        action: &ActionPlan,
        claim: Option<AttemptClaim<'_>>,
    ) -> ProgressHook {
        let events = self.events.clone();
        let name = action.name.clone();
        let stored = ProgressWriter::new(self.state.clone(), execution, &name, claim);
        Arc::new(move |percent, message| {
            stored.write(percent, message);
            events(Event::ActionProgress {
                action: name.clone(),
                percent,
                message: message.to_string(),
            })
        })
    }

    /// Invoke with the action's caches locked for exactly as long as it runs
    /// (see [`crate::cache`]); over-size caches are cleared after it.
    async fn invoke_locked(
        &self,
        plan: &Plan,
        action: &ActionPlan,
        plugin: &LoadedPlugin,
        spec: SandboxSpec,
        log: &LogSink,
    ) -> Result<ActionOutcome, ActionError> {
        let lease = self
            .caches
            .acquire(plan, &action.grants.caches, log)
            .await
            .map_err(ActionError::Host)?;
        let result = self.runtime.invoke(plugin, spec).await;
        lease.release(log).await;
        result
    }

    /// The stored directories of the input artifacts.
    fn input_dirs(&self, inputs: &[(String, String)]) -> Vec<(String, PathBuf)> {
        inputs
            .iter()
            .map(|(name, digest)| (name.clone(), self.artifacts.path_of(digest)))
            .collect()
    }

    /// Store the output directories (hashing every byte: off the async workers).
    async fn ingest(
        &self,
        action: &ActionPlan,
        outputs: Vec<(String, PathBuf)>,
    ) -> Result<Vec<OutputRecord>, AttemptError> {
        if outputs.is_empty() {
            return Ok(Vec::new());
        }
        let (artifacts, limits) = (self.artifacts.clone(), action.limits);
        let records = off_workers(move || ingest_outputs(&artifacts, &limits, &outputs)).await?;
        if let Some(remote) = &self.sharing.remote {
            for record in &records {
                remote
                    .upload(&self.artifacts, &record.digest)
                    .await
                    .map_err(|e| {
                        AttemptError::Host(format!("sharing output `{}`: {e:#}", record.name))
                    })?;
            }
        }
        Ok(records)
    }

    /// Inputs another machine produced are downloaded (and their digests
    /// checked) before the sandbox opens them.
    async fn fetch_inputs(&self, inputs: &[(String, String)]) -> anyhow::Result<()> {
        let Some(remote) = &self.sharing.remote else {
            return Ok(());
        };
        for (name, digest) in inputs {
            remote
                .download(&self.artifacts, digest)
                .await
                .with_context(|| format!("input `{name}`"))?;
        }
        Ok(())
    }

    /// What the sandbox of one call may reach: the action's grants, its inputs
    /// from the store, the given output and workspace directories.
    fn sandbox_spec(&self, call: CallSpec<'_>) -> SandboxSpec {
        let action = call.action;
        SandboxSpec {
            invocation: Invocation {
                pipeline: call.plan.name.clone(),
                stage: action.stage.clone(),
                action: action.name.clone(),
                execution_id: call.execution.to_string(),
                attempt: call.attempt,
                config: call.config.to_vec(),
                inputs: action.inputs.clone(),
                outputs: action.outputs.clone(),
                mounts: action
                    .grants
                    .mounts
                    .iter()
                    .map(|m| m.name.clone())
                    .collect(),
                continuation: call.continuation,
            },
            inputs: call.inputs,
            outputs: call.outputs,
            workspace: call.workspace,
            mounts: action.grants.mounts.clone(),
            caches: self.caches.granted(call.plan, &action.grants.caches),
            secret_names: action.grants.secrets.clone(),
            secret_values: self.secrets.granted(&action.grants.secrets),
            hosts: action.grants.hosts.clone(),
            commands: action.grants.commands.clone(),
            inherit_env: action.grants.env.clone(),
            toolchains: action.grants.toolchains.clone(),
            run_as_root: action.grants.run_as_root,
            limits: action.limits,
            log: call.log,
        }
    }

    /// A one-off sandboxed call of `action` outside an execution (polls,
    /// notifications): its own workspace, no inputs or outputs.
    async fn side_call(
        &self,
        context: &ExecutionContext,
        action: &ActionPlan,
        installed: &InstalledPlugin,
    ) -> anyhow::Result<(SideCall, SandboxSpec)> {
        let config = resolve_config(context, action, &self.caches).map_err(anyhow::Error::msg)?;
        self.side_call_with(&context.id, &context.plan, action, installed, config)
            .await
    }

    /// The same, with the configuration already resolved.
    async fn side_call_with(
        &self,
        execution: &str,
        plan: &Plan,
        action: &ActionPlan,
        installed: &InstalledPlugin,
        config: Vec<(String, String)>,
    ) -> anyhow::Result<(SideCall, SandboxSpec)> {
        let plugin = self.load(installed).await?;
        let workspace = self
            .work_root
            .join(format!("side-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&workspace)?;
        let masker = self.masker.clone();
        let log = LogSink::new(action.limits.log_bytes, masker.clone(), None);
        let spec = self.sandbox_spec(CallSpec {
            execution,
            plan,
            action,
            attempt: 1,
            continuation: None,
            config: &config,
            inputs: Vec::new(),
            outputs: Vec::new(),
            workspace: workspace.clone(),
            log: log.clone(),
        });
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
}

/// A prepared one-off call; `finish` cleans up after it.
struct SideCall {
    plugin: LoadedPlugin,
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

/// Stores an action's progress reports without blocking the caller (a guest's
/// host call, on a tokio worker thread): one write at a time on the blocking
/// pool, each of the newest report, so a burst ends with the last one stored.
struct ProgressWriter {
    state: Arc<dyn Store>,
    execution: String,
    action: String,
    /// The worker's claim (key, fence) the reports are stored under.
    claim: Option<(String, i64)>,
    /// The newest report not yet taken by a write, and whether one is under way.
    latest: std::sync::Mutex<(Option<(u8, String)>, bool)>,
}

impl ProgressWriter {
    fn new(
        state: Arc<dyn Store>,
        execution: &str,
        action: &str,
        claim: Option<AttemptClaim<'_>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            state,
            execution: execution.to_string(),
            action: action.to_string(),
            claim: claim.map(|c| (c.key.to_string(), c.fence)),
            latest: std::sync::Mutex::new((None, false)),
        })
    }

    fn write(self: &Arc<Self>, percent: u8, message: &str) {
        let mut latest = self.lock();
        latest.0 = Some((percent, message.to_string()));
        if latest.1 {
            return; // the write under way takes this one next
        }
        latest.1 = true;
        drop(latest);
        let writer = self.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || writer.drain())),
            Err(_) => writer.drain(),
        }
    }

    /// Store the newest report until none is left.
    fn drain(&self) {
        loop {
            let next = {
                let mut latest = self.lock();
                let next = latest.0.take();
                latest.1 = next.is_some();
                next
            };
            let Some((percent, message)) = next else {
                return;
            };
            // Losing one report is harmless; a panic must not end the loop
            // with the flag still set, or every later report of this attempt
            // would wait for a write that never comes.
            let state = &self.state;
            let stored = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let claim =
                    (self.claim.as_ref()).map(|(key, fence)| AttemptClaim { key, fence: *fence });
                state.set_progress(&self.execution, &self.action, claim, percent, &message)
            }));
            if stored.is_err() {
                tracing::warn!(action = %self.action, "storing a progress report panicked");
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Option<(u8, String)>, bool)> {
        self.latest.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Remove an attempt's directories: an empty one at once (one rmdir, the
/// usual case), anything left in one off the async workers.
async fn remove_attempt_dirs(dirs: Vec<PathBuf>) {
    let full: Vec<PathBuf> = dirs
        .into_iter()
        .filter(|d| d.exists() && std::fs::remove_dir(d).is_err())
        .collect();
    if !full.is_empty() {
        off_workers(move || {
            for dir in full {
                sluice_store::artifact::remove_tree(&dir).ok();
            }
        })
        .await;
    }
}

/// Store each output directory in the artifact store, refusing the lot when
/// they are over the action's output limits.
fn ingest_outputs(
    artifacts: &ArtifactStore,
    limits: &Limits,
    outputs: &[(String, PathBuf)],
) -> Result<Vec<OutputRecord>, AttemptError> {
    // Counted from metadata before anything is hashed or stored, so an
    // action over its output quota costs no more than a directory walk.
    let mut budget = sluice_store::artifact::OutputBudget::new(limits);
    for (_, dir) in outputs {
        budget
            .charge(dir)
            .map_err(|hit| AttemptError::Action(ActionError::Limit(hit)))?;
    }
    let mut records = Vec::new();
    for (name, dir) in outputs {
        let info = artifacts
            .ingest(dir)
            .map_err(|e| AttemptError::Host(format!("storing output artifact `{name}`: {e:#}")))?;
        records.push(OutputRecord {
            name: name.clone(),
            digest: info.digest.clone(),
            files: info.files,
            bytes: info.bytes,
        });
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    /// A burst of progress reports from a guest (each report a host call that
    /// must not wait on the database) ends with the newest one stored.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_progress_reports_ends_with_the_newest_stored() {
        let dir = tempfile::tempdir().unwrap();
        let state: Arc<dyn Store> =
            Arc::new(sluice_store::state::SqliteStore::open(&dir.path().join("state.db")).unwrap());
        let (file, none) = (std::path::Path::new("p.toml"), serde_json::json!({}));
        state
            .start_execution("e", "p", file, &none, &none, 1)
            .unwrap();
        state.start_stage("e", "s", 0, 1, None).unwrap();
        state
            .start_action("e", "s", "a", 1, "noop@0.1.0", &[], 1, None)
            .unwrap();
        let writer = ProgressWriter::new(state.clone(), "e", "a", None);
        for percent in 0..=100u8 {
            writer.write(percent, &format!("step {percent}"));
        }
        let stored = || {
            let action = state.actions("e").unwrap().remove(0);
            (action.percent, action.progress)
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while stored().0 != Some(100) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(stored(), (Some(100), Some("step 100".to_string())));
        // Nothing older lands after it.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(stored(), (Some(100), Some("step 100".to_string())));
    }

    fn workspaces() -> (tempfile::TempDir, IdleWorkspaces) {
        let dir = tempfile::tempdir().unwrap();
        let workspaces = IdleWorkspaces::under(dir.path().join("work"));
        (dir, workspaces)
    }

    #[test]
    fn an_idle_workspace_is_handed_out_as_it_is_and_kept_again_without_a_rename() {
        let (_dir, workspaces) = workspaces();
        let named = workspaces.root.join("e.a-1");
        workspaces.take(&named).unwrap();
        assert!(workspaces.give_back(&named));
        assert!(!named.exists(), "renamed aside");
        let idle = workspaces.take_as_is().expect("one kept");
        assert!(idle.is_dir() && std::fs::read_dir(&idle).unwrap().next().is_none());
        assert!(workspaces.give_back(&idle));
        assert_eq!(
            workspaces.take_as_is(),
            Some(idle.clone()),
            "same directory"
        );
        assert!(idle.is_dir());
    }

    #[test]
    fn a_workspace_left_with_anything_in_it_or_another_mode_is_not_kept() {
        let (_dir, workspaces) = workspaces();
        let named = workspaces.root.join("e.a-1");
        workspaces.take(&named).unwrap();
        assert!(workspaces.give_back(&named));
        let idle = workspaces.take_as_is().unwrap();
        std::fs::write(idle.join("left-behind"), "x").unwrap();
        assert!(!workspaces.give_back(&idle), "not empty");
        std::fs::remove_file(idle.join("left-behind")).unwrap();
        std::fs::set_permissions(&idle, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(!workspaces.give_back(&idle), "another mode");
        assert_eq!(workspaces.take_as_is(), None);
    }
}
