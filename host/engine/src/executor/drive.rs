//! The loop that drives one execution: it asks the [`RunState`] what comes
//! next, does it (gates, the [`ActionRunner`], the state store) and reports
//! back. Every change is recorded before its event is published.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::events::SKIPPED_BECAUSE;
use super::machine::{self, AfterFailure, GroupEnd, Outcome, RunState, Step};
use super::runner::{ActionRunner, AttemptFailure, AttemptRequest};
use super::{Event, ExecutionContext, Executor, lock, resolve_config};
use crate::gates::Entry;
use sluice_core::pipeline::conditions::{RuleCheck, Verdict, When};
use sluice_core::pipeline::{ActionKind, ActionPlan, ApprovalPolicy, vars};
use sluice_core::plugin::InstalledPlugin;
use sluice_core::units::now_ms;
use sluice_sandbox::ActionOutcome;
use sluice_store::off_workers;
use sluice_store::state::{Change, EndOfAction, OutputRecord, Status};

/// How waiting at a gate ended.
enum GateResult {
    Entered,
    Superseded,
    /// A stop arrived while waiting; the place in line is given up.
    Stopped,
}

/// A succeeded action, as it is recorded.
struct Succeeded {
    attempts: u32,
    outcome: ActionOutcome,
    outputs: Vec<OutputRecord>,
}

/// A failed action, as it is recorded.
struct Failed {
    /// Attempts made (0 when none could start).
    attempts: u32,
    error: String,
    /// Outputs its last failed attempt left (see [`AttemptFailure::Failed`]).
    kept_outputs: Vec<OutputRecord>,
}

impl Failed {
    fn before_any_attempt(error: String) -> Self {
        Self {
            attempts: 0,
            error,
            kept_outputs: Vec::new(),
        }
    }
}

impl<R: ActionRunner> Executor<R> {
    /// Run the execution's stages as its [`RunState`] says, to the end.
    pub(super) async fn drive(
        self: &Arc<Self>,
        context: &Arc<ExecutionContext>,
    ) -> anyhow::Result<(Outcome, Option<String>)> {
        let mut walk = RunState::new(&context.plan, context.done.clone())
            .ended_before_restart(context.ended_stages.clone())
            .overriding(context.overridden);
        let mut stage_started = Instant::now();
        loop {
            tell_stop(&mut walk, context);
            match walk.next_step() {
                Step::Skip { stage } => self.skip_stage(context, stage).await?,
                Step::Enter { stage } => match self.enter_gate(context, stage).await? {
                    GateResult::Entered => {
                        walk.entered();
                        stage_started = Instant::now();
                        self.start_stage(context, stage).await?;
                    }
                    GateResult::Superseded => walk.superseded(),
                    GateResult::Stopped => tell_stop(&mut walk, context),
                },
                Step::Run { stage, actions } => {
                    let end = self.run_group(context, stage, &actions, &mut walk).await?;
                    tell_stop(&mut walk, context);
                    walk.group_ended(end);
                }
                Step::Check { stage, when } => {
                    let failed = self.check_condition(context, stage, when).await;
                    tell_stop(&mut walk, context);
                    walk.condition_checked(&failed);
                }
                Step::EndStage { stage, outcome } => {
                    // Recording the end gives the place inside up.
                    (self.end_stage(context, stage, &outcome, stage_started.elapsed())).await?;
                    self.gates.changed();
                }
                Step::End(outcome) => {
                    let stages = &context.plan.stages;
                    let rollback = walk.rollback_asked().map(|s| stages[s].name.clone());
                    if let Some(stage) = &rollback {
                        let event = Event::RollbackAsked {
                            stage: stage.clone(),
                        };
                        self.publish_from_task(context, event).await;
                    }
                    return Ok((outcome, rollback));
                }
            }
        }
    }

    /// Wait at the gate into `stage` until the execution may enter, a newer
    /// one replaces it, or someone stops it.
    async fn enter_gate(
        &self,
        context: &ExecutionContext,
        stage: usize,
    ) -> anyhow::Result<GateResult> {
        let plan = &context.plan;
        let name = &plan.stages[stage].name;
        let gate = self.gates.gate(&plan.name, name, plan.execution_mode);
        let mut stop = context.stop.subscribe();
        Ok(tokio::select! {
            entry = gate.enter(&context.id, |reason| {
                let stage = name.clone();
                self.publish(context, Event::StageWaiting { stage, reason });
            }) => match entry? {
                Entry::Entered => GateResult::Entered,
                Entry::Superseded => GateResult::Superseded,
            },
            _ = stop.wait_for(Option::is_some) => {
                gate.withdraw(&context.id)?;
                GateResult::Stopped
            }
        })
    }

    async fn start_stage(&self, context: &ExecutionContext, stage: usize) -> anyhow::Result<()> {
        let name = &context.plan.stages[stage].name;
        let event = Event::StageStarted {
            stage: name.clone(),
        };
        let change = Change::StageStarted {
            stage: name.clone(),
            position: stage,
        };
        self.record(context, change, Some(event)).await?;
        Ok(())
    }

    async fn end_stage(
        &self,
        context: &ExecutionContext,
        stage: usize,
        outcome: &Outcome,
        duration: Duration,
    ) -> anyhow::Result<()> {
        let name = &context.plan.stages[stage].name;
        let (status, error) = outcome.status();
        let event = Event::StageFinished {
            stage: name.clone(),
            status,
            duration,
            detail: error.unwrap_or_default().to_string(),
        };
        let change = Change::StageEnded {
            stage: name.clone(),
            status,
            error: error.map(str::to_string),
        };
        self.record(context, change, Some(event)).await?;
        Ok(())
    }

    /// Evaluate every rule of stage `stage`'s condition `when`, each verdict
    /// recorded as a `rule` event; the rules that did not pass, with why.
    async fn check_condition(
        &self,
        context: &ExecutionContext,
        stage: usize,
        when: When,
    ) -> Vec<String> {
        let plan_stage = &context.plan.stages[stage];
        let Some(condition) = plan_stage.conditions.get(when) else {
            return Vec::new();
        };
        let now = chrono::Utc::now();
        let resolve = |text: &str| vars::resolve(text, |ns, key| context.lookup(ns, key));
        let mut failed = Vec::new();
        for rule in &condition.rules {
            let verdict = match &rule.check {
                RuleCheck::Plugin(action) => self.plugin_verdict(context, &rule.name, action).await,
                _ => rule.evaluate(now, resolve),
            };
            if !verdict.passed {
                failed.push(format!("rule `{}`: {}", verdict.rule, verdict.detail));
            }
            let event = Event::RuleEvaluated {
                stage: plan_stage.name.clone(),
                condition: when.key(),
                rule: verdict.rule,
                passed: verdict.passed,
                detail: self.masker.mask(&verdict.detail),
            };
            self.publish_from_task(context, event).await;
        }
        failed
    }

    /// A rule plugin's verdict; one that could not be evaluated (a trap, a
    /// limit, a denied capability, a reference that does not resolve) did
    /// not pass, and says why.
    async fn plugin_verdict(
        &self,
        context: &ExecutionContext,
        rule: &str,
        action: &ActionPlan,
    ) -> Verdict {
        let evaluated = match resolve_config(context, action, &self.caches) {
            Ok(config) => {
                let plan = &context.plan;
                (self.runner)
                    .evaluate_rule(plan, &context.id, action, config)
                    .await
            }
            Err(reason) => Err(reason),
        };
        let (passed, detail) = match evaluated {
            Ok(verdict) => (verdict.passed, verdict.detail),
            Err(reason) => (false, format!("the rule plugin failed: {reason}")),
        };
        Verdict {
            rule: rule.to_string(),
            passed,
            detail,
        }
    }

    async fn skip_stage(&self, context: &ExecutionContext, stage: usize) -> anyhow::Result<()> {
        let name = &context.plan.stages[stage].name;
        let change = Change::StageStarted {
            stage: name.clone(),
            position: stage,
        };
        self.record(context, change, None).await?;
        let event = Event::StageSkipped {
            stage: name.clone(),
        };
        let change = Change::StageEnded {
            stage: name.clone(),
            status: Status::Skipped,
            error: Some(SKIPPED_BECAUSE.to_string()),
        };
        self.record(context, change, Some(event)).await?;
        Ok(())
    }

    /// Run one run-order group in parallel, each action on its own task. A
    /// stop that abandons running actions ends the group at once.
    #[tracing::instrument(name = "stage", skip_all, fields(stage = %context.plan.stages[stage].name))]
    async fn run_group(
        self: &Arc<Self>,
        context: &Arc<ExecutionContext>,
        stage: usize,
        names: &[String],
        walk: &mut RunState,
    ) -> anyhow::Result<GroupEnd> {
        let actions = &context.plan.stages[stage].actions;
        let mut running = JoinSet::new();
        let mut pending: HashSet<String> = HashSet::new();
        for action in actions.iter().filter(|a| names.contains(&a.name)) {
            let (executor, context, action) = (self.clone(), context.clone(), action.clone());
            pending.insert(action.name.clone());
            // In the stage's span, so the action's span is its child.
            running.spawn(tracing::Instrument::in_current_span(async move {
                let result = executor.run_action(&context, &action).await;
                (action.name, result)
            }));
        }
        let mut stop = context.stop.subscribe();
        let mut failures = Vec::new();
        let abandoned = loop {
            tokio::select! {
                joined = running.join_next() => match joined {
                    None => break false,
                    Some(Ok((name, result))) => {
                        pending.remove(&name);
                        if let Err(reason) = result {
                            failures.push(reason);
                        }
                    }
                    Some(Err(panic)) => failures.push(format!("internal error: action task failed: {panic}")),
                },
                // The stop's guard must not live across the awaits below.
                _ = stop.wait_for(|s| s.as_ref().is_some_and(machine::StopRequest::abandons_running)) => break true,
            }
        };
        if !abandoned {
            return Ok(GroupEnd::Ran { failures });
        }
        tell_stop(walk, context);
        running.abort_all();
        // The aborted tasks are dropped before the abandonment is recorded:
        // their commands killed, their queued attempts withdrawn, so a retry
        // of the execution never meets a withdrawal that lands late.
        while running.join_next().await.is_some() {}
        let reason = context
            .stop_requested()
            .map(|s| s.describe())
            .unwrap_or_default();
        for name in &pending {
            self.abandon_action(context, name, &reason).await?;
        }
        Ok(GroupEnd::Abandoned)
    }

    async fn abandon_action(
        &self,
        context: &ExecutionContext,
        action: &str,
        reason: &str,
    ) -> anyhow::Result<()> {
        let error = format!("abandoned: {reason}");
        let event = Event::ActionFinished {
            action: action.to_string(),
            status: Status::Abandoned,
            duration: Duration::ZERO,
            detail: error.clone(),
        };
        let end = EndOfAction {
            status: Status::Abandoned,
            attempts: 1,
            summary: None,
            error: Some(error),
            variables: Vec::new(),
            outputs: Vec::new(),
        };
        let action = action.to_string();
        let change = Change::ActionEnded { action, end };
        self.record(context, change, Some(event)).await?;
        Ok(())
    }

    /// The approval's policy with its message resolved (and masked) for this
    /// execution: approvers read what they are asked, not its template.
    fn approval_as_asked(
        &self,
        policy: &ApprovalPolicy,
        config: &[(String, String)],
    ) -> ApprovalPolicy {
        let mut asked = policy.clone();
        if let Some((_, message)) = config.iter().find(|(key, _)| key == "message") {
            asked.message = self.masker.mask(message);
        }
        asked
    }

    /// Run one action with its retries; `Err(reason)` when it failed.
    #[tracing::instrument(name = "action", skip_all, fields(action = %action.name))]
    async fn run_action(
        &self,
        context: &ExecutionContext,
        action: &ActionPlan,
    ) -> Result<(), String> {
        let started = Instant::now();
        let resolved = resolve_config(context, action, &self.caches);
        let recorded_config = match &resolved {
            Ok(config) => config,
            Err(_) => &action.config,
        };
        let masked_config: Vec<(String, String)> = recorded_config
            .iter()
            .map(|(k, v)| (k.clone(), self.masker.mask(v)))
            .collect();
        let plugin = match &action.kind {
            ActionKind::Plugin(installed) => installed.id(),
            ActionKind::Approval(policy) => format!("approval by {}", policy.approvers),
        };
        let event = Event::ActionStarted {
            stage: action.stage.clone(),
            action: action.name.clone(),
            plugin,
            attempt: 1,
            first: true,
        };
        let change = Change::ActionStarted {
            stage: action.stage.clone(),
            action: action.name.clone(),
            run_order: action.run_order,
            plugin: action.provider(),
            resolved_config: masked_config,
        };
        if let Err(e) = self.record(context, change, Some(event)).await {
            return Err(format!(
                "action `{}`: recording its start failed: {e:#}",
                action.name
            ));
        }
        let result = match (resolved, &action.kind) {
            (Ok(config), ActionKind::Plugin(installed)) => {
                self.attempts(context, action, installed, &config).await
            }
            (Ok(config), ActionKind::Approval(policy)) => self
                .runner
                .approval(
                    &context.id,
                    action,
                    &self.approval_as_asked(policy, &config),
                )
                .await
                .map(|outcome| Succeeded {
                    attempts: 1,
                    outcome,
                    outputs: Vec::new(),
                })
                .map_err(|error| Failed {
                    attempts: 1,
                    error,
                    kept_outputs: Vec::new(),
                }),
            (Err(reason), _) => Err(Failed::before_any_attempt(reason)),
        };
        (self.finish_action(context, action, result, started.elapsed())).await
    }

    /// Attempt the action until it succeeds or [`machine::after_failed_attempt`]
    /// gives up; a round that asks to be called again is followed by the next
    /// round after its delay (the attempt number stays).
    async fn attempts(
        &self,
        context: &ExecutionContext,
        action: &ActionPlan,
        plugin: &InstalledPlugin,
        config: &[(String, String)],
    ) -> Result<Succeeded, Failed> {
        let mut attempt = 1;
        let mut continuation = context.continuations.get(&action.name).cloned();
        let mut kept_outputs = Vec::new();
        loop {
            let request = AttemptRequest {
                execution: &context.id,
                plan: &context.plan,
                action,
                plugin,
                config,
                inputs: inputs_of(context, action),
                attempt,
                continuation: continuation.clone(),
                claim: None,
            };
            let failure = match self.runner.attempt(request).await {
                Ok(attempted) => match attempted.outcome.continuation.clone() {
                    Some((token, delay)) => {
                        self.continue_later(context, action, &attempted.outcome, &token, delay)
                            .await;
                        continuation = Some(token);
                        self.show_next_start(context, action, plugin, attempt);
                        continue;
                    }
                    None => {
                        context.add_outputs(&attempted.outputs);
                        return Ok(Succeeded {
                            attempts: attempt,
                            outcome: attempted.outcome,
                            outputs: attempted.outputs,
                        });
                    }
                },
                Err(failure) => failure,
            };
            let (error, retryable) = match failure {
                AttemptFailure::NotLoaded(error) => return Err(Failed::before_any_attempt(error)),
                AttemptFailure::Failed {
                    error,
                    retryable,
                    kept_outputs: kept,
                } => {
                    kept_outputs = kept.unwrap_or(kept_outputs);
                    (self.masker.mask(&error), retryable)
                }
            };
            match machine::after_failed_attempt(&action.retry, attempt, retryable) {
                AfterFailure::RetryAfter(wait) => {
                    let event = Event::ActionRetrying {
                        action: action.name.clone(),
                        attempt,
                        error,
                        wait,
                    };
                    self.publish_from_task(context, event).await;
                    self.runner.sleep(wait).await;
                    attempt += 1;
                    self.show_next_start(context, action, plugin, attempt);
                }
                AfterFailure::GiveUp => {
                    return Err(Failed {
                        attempts: attempt,
                        error,
                        kept_outputs,
                    });
                }
            }
        }
    }

    /// Show a later attempt or round starting (`run_action` stored the
    /// action's start with the first one).
    fn show_next_start(
        &self,
        context: &ExecutionContext,
        action: &ActionPlan,
        plugin: &InstalledPlugin,
        attempt: u32,
    ) {
        let event = Event::ActionStarted {
            stage: action.stage.clone(),
            action: action.name.clone(),
            plugin: plugin.id(),
            attempt,
            first: false,
        };
        self.publish(context, event);
    }

    /// Record a continuation (so a restarted server resumes the rounds), show the
    /// round's summary, and sleep without a sandbox.
    async fn continue_later(
        &self,
        context: &ExecutionContext,
        action: &ActionPlan,
        outcome: &ActionOutcome,
        token: &str,
        delay: Duration,
    ) {
        let summary = self.masker.mask(&outcome.summary);
        let due = now_ms() + delay.as_millis() as i64;
        let (state, id, name, token) = (
            self.state.clone(),
            context.id.clone(),
            action.name.clone(),
            token.to_string(),
        );
        let shown = summary.clone();
        let recorded =
            off_workers(move || state.set_continuation(&id, &name, &token, due, &shown)).await;
        if let Err(e) = recorded {
            tracing::error!("recording a continuation failed: {e:#}");
        }
        let event = Event::ActionProgress {
            action: action.name.clone(),
            percent: 0,
            message: format!(
                "{summary} (continues in {})",
                humantime::format_duration(delay)
            ),
        };
        self.publish(context, event);
        self.runner.sleep(delay).await;
    }

    /// Record how the action ended and publish its variables to its namespace;
    /// `Err` names the action and why it failed.
    async fn finish_action(
        &self,
        context: &ExecutionContext,
        action: &ActionPlan,
        result: Result<Succeeded, Failed>,
        duration: Duration,
    ) -> Result<(), String> {
        let masker = &self.masker;
        let (status, attempts, summary, error, variables, outputs) = match result {
            Ok(succeeded) => {
                let variables: Vec<(String, String)> = succeeded
                    .outcome
                    .variables
                    .iter()
                    .map(|(k, v)| (masker.mask(k), masker.mask(v)))
                    .collect();
                if let Some(namespace) = &action.namespace {
                    lock(&context.namespaces)
                        .insert(namespace.clone(), variables.iter().cloned().collect());
                }
                let summary = masker.mask(&succeeded.outcome.summary);
                let outputs = succeeded.outputs;
                (
                    Status::Succeeded,
                    succeeded.attempts,
                    Some(summary),
                    None,
                    variables,
                    outputs,
                )
            }
            Err(failed) => {
                let error = Some(masker.mask(&failed.error));
                let outputs = failed.kept_outputs;
                (
                    Status::Failed,
                    failed.attempts,
                    None,
                    error,
                    Vec::new(),
                    outputs,
                )
            }
        };
        let detail = error.clone().or(summary.clone()).unwrap_or_default();
        let event = Event::ActionFinished {
            action: action.name.clone(),
            status,
            duration,
            detail,
        };
        let end = EndOfAction {
            status,
            attempts,
            summary,
            error: error.clone(),
            variables,
            outputs,
        };
        let change = Change::ActionEnded {
            action: action.name.clone(),
            end,
        };
        (self.record(context, change, Some(event)).await)
            .map_err(|e| format!("action `{}`: recording its end failed: {e:#}", action.name))?;
        match error {
            Some(error) => Err(format!("action `{}` failed: {error}", action.name)),
            None => Ok(()),
        }
    }
}

/// Tell the walk about a stop someone asked for (the request lives in the
/// context, where [`Executor::stop`] puts it from another task).
fn tell_stop(walk: &mut RunState, context: &ExecutionContext) {
    if let Some(request) = context.stop_requested() {
        walk.stop_requested(request);
    }
}

/// The action's input artifacts as recorded so far: (name, digest).
fn inputs_of(context: &ExecutionContext, action: &ActionPlan) -> Vec<(String, String)> {
    let artifacts = lock(&context.artifacts);
    action
        .inputs
        .iter()
        .filter_map(|name| Some((name.clone(), artifacts.get(name)?.digest.clone())))
        .collect()
}
