//! The executor's decisions, apart from its I/O (in the style of Tekton's
//! `pipelinerunstate`): no tokio, no state store, no sandbox.
//!
//! [`RunState`] walks one execution through its plan. The driver (see
//! `executor::Executor`) asks it for the next [`Step`], does the I/O that step
//! names (waits at a gate, runs a group of actions, records a stage) and reports
//! back what happened: a gate result, a group's end, a stop request. The other
//! decisions are plain functions: whether a failed attempt is retried
//! ([`after_failed_attempt`]) and what a resumed execution does with each action
//! recorded before the restart ([`on_resume`]).

use std::collections::HashSet;
use std::time::Duration;

use sluice_core::pipeline::conditions::{ConditionResult, StageConditions, When};
use sluice_core::pipeline::{ActionPlan, OnRestart, Plan, RetryPolicy};
use sluice_store::state::{ExecutionRecord, Status};

/// How a stage or a whole execution ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Everything ran and succeeded.
    Succeeded,
    /// An action failed; the reason names it.
    Failed(String),
    /// A newer execution replaced this one at a stage boundary.
    Superseded,
    /// Someone stopped it; the reason says how and why.
    Stopped(String),
    /// (A stage only) its before-entry condition skipped it; the reason
    /// names the rules that did not pass. The execution goes on.
    Skipped(String),
}

impl Outcome {
    /// The status this outcome is recorded with, and its reason.
    pub fn status(&self) -> (Status, Option<&str>) {
        match self {
            Outcome::Succeeded => (Status::Succeeded, None),
            Outcome::Failed(reason) => (Status::Failed, Some(reason)),
            Outcome::Superseded => (Status::Superseded, None),
            Outcome::Stopped(reason) => (Status::Stopped, Some(reason)),
            Outcome::Skipped(reason) => (Status::Skipped, Some(reason)),
        }
    }
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StopRequest {
    /// Finish or abandon.
    pub mode: StopMode,
    /// Why, as the person asking said.
    pub reason: String,
}

impl StopRequest {
    /// The reason the stopped execution (and stage) is recorded with.
    pub fn describe(&self) -> String {
        let mode = match self.mode {
            StopMode::Finish => "finish",
            StopMode::Abandon => "abandon",
        };
        format!("stopped ({mode}): {}", self.reason)
    }

    /// Whether running actions are abandoned rather than awaited.
    pub fn abandons_running(&self) -> bool {
        self.mode == StopMode::Abandon
    }
}

/// What the driver does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Record stage `stage` (an index into the plan's stages) as Skipped.
    Skip {
        /// Its position in the plan.
        stage: usize,
    },
    /// Wait at the gate into stage `stage`, then report [`RunState::entered`]
    /// or [`RunState::superseded`]; a stop while waiting ends the wait.
    Enter {
        /// Its position in the plan.
        stage: usize,
    },
    /// Run these actions of stage `stage` in parallel, then report
    /// [`RunState::group_ended`].
    Run {
        /// Its position in the plan.
        stage: usize,
        /// Names of the actions, in plan order.
        actions: Vec<String>,
    },
    /// Evaluate the rules of stage `stage`'s condition `when`, then report
    /// [`RunState::condition_checked`].
    Check {
        /// Its position in the plan.
        stage: usize,
        /// Which condition.
        when: When,
    },
    /// Record the end of stage `stage` and leave it (its gate opens).
    EndStage {
        /// Its position in the plan.
        stage: usize,
        /// How it ended.
        outcome: Outcome,
    },
    /// The execution is over.
    End(Outcome),
}

/// How a group of actions running in parallel ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupEnd {
    /// Every action ended on its own; these are the failures' reasons.
    Ran {
        /// One reason per failed action; empty when all succeeded.
        failures: Vec<String>,
    },
    /// A stop with [`StopMode::Abandon`] abandoned the actions still running.
    Abandoned,
}

/// Where the walk is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Position {
    /// Before the gate of this stage (one past the last: after every stage).
    Before(usize),
    /// Waiting at the gate of this stage.
    AtGate(usize),
    /// Inside this stage, before group `group`.
    Inside { stage: usize, group: usize },
    /// Inside this stage while group `group` runs.
    Running { stage: usize, group: usize },
    /// Inside this stage while its condition `when` is evaluated; `failure`
    /// is why the stage failed (on-failure).
    Checking {
        stage: usize,
        when: When,
        failure: Option<String>,
    },
    /// This stage is over and must be recorded before the walk goes on.
    Leaving { stage: usize, outcome: Outcome },
    /// Done.
    Over(Outcome),
}

/// The stages of a plan as the machine sees them: action names, grouped by
/// run order.
#[derive(Clone, Debug)]
struct StageShape {
    groups: Vec<Vec<String>>,
    conditions: StageConditions,
}

/// One execution's walk through its plan's stages and groups.
#[derive(Clone, Debug)]
pub struct RunState {
    stages: Vec<StageShape>,
    /// Actions that succeeded before a restart: never run again.
    done: HashSet<String>,
    /// Stages whose success was recorded before a restart: passed over.
    ended: HashSet<usize>,
    position: Position,
    /// The first failed stage's reason: every later stage is skipped.
    failure: Option<String>,
    stop: Option<StopRequest>,
    /// Stages their on-failure condition ran again (once each).
    retried: HashSet<usize>,
    /// The stage a condition asked to roll back (its result `rollback`).
    rollback: Option<usize>,
    /// A condition an operator overrode: not checked (see [`RunState::overriding`]).
    overridden: Option<(usize, When)>,
}

impl RunState {
    /// A walk through `plan` that skips the actions in `done` (they succeeded
    /// before a restart).
    pub fn new(plan: &Plan, done: HashSet<String>) -> Self {
        let stages = plan
            .stages
            .iter()
            .map(|stage| StageShape {
                groups: stage
                    .groups()
                    .into_iter()
                    .map(|group| group.into_iter().map(|a| a.name.clone()).collect())
                    .collect(),
                conditions: stage.conditions.clone(),
            })
            .collect();
        Self {
            stages,
            done,
            ended: HashSet::new(),
            position: Position::Before(0),
            failure: None,
            stop: None,
            retried: HashSet::new(),
            rollback: None,
            overridden: None,
        }
    }

    /// The next thing to do. Call it again after reporting what the last
    /// [`Step::Enter`] or [`Step::Run`] led to; other steps move on by
    /// themselves.
    pub fn next_step(&mut self) -> Step {
        loop {
            match self.position.clone() {
                Position::Before(stage) => {
                    if let Some(step) = self.before_stage(stage) {
                        return step;
                    }
                }
                Position::Inside { stage, group } => {
                    if let Some(step) = self.inside_stage(stage, group) {
                        return step;
                    }
                }
                Position::Leaving { stage, outcome } => {
                    self.position = match &outcome {
                        Outcome::Succeeded => Position::Before(stage + 1),
                        Outcome::Failed(reason) => {
                            self.failure = Some(reason.clone());
                            Position::Before(stage + 1)
                        }
                        Outcome::Skipped(_) => Position::Before(stage + 1),
                        Outcome::Superseded | Outcome::Stopped(_) => {
                            Position::Over(outcome.clone())
                        }
                    };
                    return Step::EndStage { stage, outcome };
                }
                Position::Over(outcome) => return Step::End(outcome),
                // The driver owes a report; asking again repeats the step.
                Position::AtGate(stage) => return Step::Enter { stage },
                Position::Running { stage, group } => {
                    let actions = self.pending(stage, group);
                    return Step::Run { stage, actions };
                }
                Position::Checking { stage, when, .. } => return Step::Check { stage, when },
            }
        }
    }

    /// Stages (by position) whose success was recorded before a restart.
    /// Only these are passed over: a stage whose actions all succeeded but
    /// whose end was never recorded is entered again, runs nothing and ends.
    pub fn ended_before_restart(mut self, stages: HashSet<usize>) -> Self {
        self.ended = stages;
        self
    }

    /// Pass over condition `when` of stage `stage`, as if its rules had
    /// passed: an operator overrode it.
    pub fn overriding(mut self, overridden: Option<(usize, When)>) -> Self {
        self.overridden = overridden;
        self
    }

    /// Whether stage `stage` has a condition `when` to check.
    fn checks(&self, stage: usize, when: When) -> bool {
        self.stages[stage].conditions.get(when).is_some() && self.overridden != Some((stage, when))
    }

    /// Before a stage's gate: skip it after a failure, pass over it when a
    /// restart found it ended, end on a stop, or wait at its gate.
    fn before_stage(&mut self, stage: usize) -> Option<Step> {
        if stage == self.stages.len() {
            let outcome = match &self.failure {
                Some(reason) => Outcome::Failed(reason.clone()),
                None => Outcome::Succeeded,
            };
            self.position = Position::Over(outcome);
            return None;
        }
        if self.failure.is_some() {
            self.position = Position::Before(stage + 1);
            return Some(Step::Skip { stage });
        }
        if self.ended.contains(&stage) {
            self.position = Position::Before(stage + 1);
            return None;
        }
        if let Some(stop) = &self.stop {
            self.position = Position::Over(Outcome::Stopped(stop.describe()));
            return None;
        }
        self.position = Position::AtGate(stage);
        Some(Step::Enter { stage })
    }

    /// Inside a stage: run its next group that has anything left to run, or
    /// leave the stage once every group ran.
    fn inside_stage(&mut self, stage: usize, group: usize) -> Option<Step> {
        if group == self.stages[stage].groups.len() {
            self.position = match self.checks(stage, When::OnSuccess) {
                true => Position::Checking {
                    stage,
                    when: When::OnSuccess,
                    failure: None,
                },
                false => Position::Leaving {
                    stage,
                    outcome: Outcome::Succeeded,
                },
            };
            return None;
        }
        let actions = self.pending(stage, group);
        if actions.is_empty() {
            self.position = Position::Inside {
                stage,
                group: group + 1,
            };
            return None;
        }
        self.position = Position::Running { stage, group };
        Some(Step::Run { stage, actions })
    }

    /// The actions of a group that did not succeed before a restart.
    fn pending(&self, stage: usize, group: usize) -> Vec<String> {
        self.stages[stage].groups[group]
            .iter()
            .filter(|name| !self.done.contains(*name))
            .cloned()
            .collect()
    }

    /// The execution entered the stage it waited at.
    pub fn entered(&mut self) {
        if let Position::AtGate(stage) = self.position {
            self.position = match self.checks(stage, When::BeforeEntry) {
                true => Position::Checking {
                    stage,
                    when: When::BeforeEntry,
                    failure: None,
                },
                false => Position::Inside { stage, group: 0 },
            };
        }
    }

    /// The condition of the last [`Step::Check`] was evaluated: `failed`
    /// names the rules that did not pass (empty when all did).
    ///
    /// - before-entry: all passed, the first group runs; else the stage is
    ///   skipped (`skip`) or fails (`fail`);
    /// - on-success: all passed, the stage succeeds; else it fails;
    /// - on-failure: all passed, the stage runs again from its first group,
    ///   once (`retry`); else it fails as it would have.
    ///
    /// A stop asked meanwhile ends the stage Stopped instead.
    pub fn condition_checked(&mut self, failed: &[String]) {
        let Position::Checking {
            stage,
            when,
            failure,
        } = self.position.clone()
        else {
            return;
        };
        let Some(condition) = self.stages[stage].conditions.get(when) else {
            return;
        };
        let result = condition.result;
        let passed = failed.is_empty();
        let because = || format!("{} condition not met: {}", when.key(), failed.join("; "));
        let outcome = if let Some(stop) = &self.stop {
            Outcome::Stopped(stop.describe())
        } else {
            match (when, passed) {
                (When::BeforeEntry, true) => {
                    self.position = Position::Inside { stage, group: 0 };
                    return;
                }
                (When::BeforeEntry, false) if result == ConditionResult::Skip => {
                    Outcome::Skipped(because())
                }
                (When::OnSuccess, false) if result == ConditionResult::Rollback => {
                    self.rollback = Some(stage);
                    Outcome::Failed(because())
                }
                (When::OnFailure, true) if result == ConditionResult::Rollback => {
                    self.rollback = Some(stage);
                    Outcome::Failed(failure.unwrap_or_default())
                }
                (When::BeforeEntry | When::OnSuccess, false) => Outcome::Failed(because()),
                (When::OnSuccess, true) => Outcome::Succeeded,
                (When::OnFailure, true) if result == ConditionResult::Retry => {
                    self.retried.insert(stage);
                    self.position = Position::Inside { stage, group: 0 };
                    return;
                }
                (When::OnFailure, _) => Outcome::Failed(failure.unwrap_or_default()),
            }
        };
        self.position = Position::Leaving { stage, outcome };
    }

    /// A newer execution replaced this one at the gate: it ends Superseded,
    /// and the stage is never recorded.
    pub fn superseded(&mut self) {
        if let Position::AtGate(_) = self.position {
            self.position = Position::Over(Outcome::Superseded);
        }
    }

    /// Someone asked the execution to stop. A later request replaces an
    /// earlier one, so a `Finish` can be escalated to `Abandon`.
    ///
    /// Waiting at a gate, the execution leaves at once (the stage is never
    /// recorded). Inside a stage, nothing new starts: with `Finish` the running
    /// group ends on its own, with `Abandon` the driver abandons it (see
    /// [`RunState::abandons_running`]); either way the stage ends Stopped.
    pub fn stop_requested(&mut self, request: StopRequest) {
        if let Position::AtGate(_) = self.position {
            self.position = Position::Over(Outcome::Stopped(request.describe()));
        }
        self.stop = Some(request);
    }

    /// The stage a condition asked to roll back, once the walk is over.
    pub fn rollback_asked(&self) -> Option<usize> {
        self.rollback
    }

    /// Whether running actions are to be abandoned now, not awaited.
    pub fn abandons_running(&self) -> bool {
        self.stop
            .as_ref()
            .is_some_and(StopRequest::abandons_running)
    }

    /// The running group ended. The first failure ends the stage (and every
    /// later stage is skipped); a stop ends it once the group is over.
    pub fn group_ended(&mut self, end: GroupEnd) {
        let Position::Running { stage, group } = self.position else {
            return;
        };
        let outcome = match end {
            GroupEnd::Ran { failures } if !failures.is_empty() => {
                let failure = failures.join("; ");
                let may_retry = self.checks(stage, When::OnFailure)
                    && !self.retried.contains(&stage)
                    && self.stop.is_none();
                if may_retry {
                    self.position = Position::Checking {
                        stage,
                        when: When::OnFailure,
                        failure: Some(failure),
                    };
                    return;
                }
                Outcome::Failed(failure)
            }
            GroupEnd::Ran { .. } => match &self.stop {
                Some(stop) => Outcome::Stopped(stop.describe()),
                None => {
                    self.position = Position::Inside {
                        stage,
                        group: group + 1,
                    };
                    return;
                }
            },
            GroupEnd::Abandoned => {
                let reason = self.stop.as_ref().map(StopRequest::describe);
                Outcome::Stopped(reason.unwrap_or_default())
            }
        };
        self.position = Position::Leaving { stage, outcome };
    }
}

/// Why execution `target` cannot be what a rollback of stage `stage` (at
/// `position` in the plan) goes back to, if it cannot: the source stage (the
/// first) is never rolled back, a rollback is never the target of another,
/// and the target must have succeeded in that stage under the pipeline's
/// current version (`stage_status` is how it ended there, if it ran it).
pub fn rollback_refusal(
    position: usize,
    stage: &str,
    target: &ExecutionRecord,
    stage_status: Option<Status>,
    current_version: i64,
) -> Option<String> {
    let id = &target.id;
    if position == 0 {
        return Some(format!(
            "stage `{stage}` is the source stage (the first); it cannot be rolled back"
        ));
    }
    if target.trigger["kind"] == "rollback" {
        return Some(format!(
            "execution {id} is itself a rollback; roll back to an execution that ran the stage"
        ));
    }
    if stage_status != Some(Status::Succeeded) {
        return Some(format!("execution {id} did not succeed in stage `{stage}`"));
    }
    match target.pipeline_version {
        Some(version) if version == current_version => None,
        Some(version) => Some(format!(
            "execution {id} ran version {version} of `{}`, not the current version {current_version}",
            target.pipeline
        )),
        None => Some(format!(
            "execution {id} ran from a file, not a registered version of `{}`",
            target.pipeline
        )),
    }
}

/// What follows a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterFailure {
    /// Try again after this wait.
    RetryAfter(Duration),
    /// The action fails.
    GiveUp,
}

/// Whether failed attempt number `attempt` (1-based) is followed by another:
/// only a failure that trying again might cure, and only while the policy's
/// attempts last. The wait is the backoff, doubled after every retry.
pub fn after_failed_attempt(policy: &RetryPolicy, attempt: u32, retryable: bool) -> AfterFailure {
    if !retryable || attempt >= policy.attempts {
        return AfterFailure::GiveUp;
    }
    let doubling = 2u32.saturating_pow(attempt.saturating_sub(1));
    AfterFailure::RetryAfter(policy.backoff.saturating_mul(doubling))
}

/// What a resumed execution does with an action recorded before it stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OnResume {
    /// It succeeded: keep its outputs and variables, do not run it again.
    Keep,
    /// It was between continuation rounds: carry on with the rounds, whatever
    /// its on-restart policy says (no round was running).
    ContinueRounds,
    /// It was running and must not run twice: the execution fails.
    Fail(String),
    /// Run it (again) when its group comes.
    Run,
}

/// How an action recorded with `status` (a [`Status`] name) before a restart
/// is resumed. `rerun_all` is set when someone retries the action's stage with
/// all its actions, succeeded ones included.
pub fn on_resume(
    action: &ActionPlan,
    status: Status,
    between_rounds: bool,
    rerun_all: bool,
) -> OnResume {
    let succeeded = status == Status::Succeeded;
    let running = status == Status::InProgress;
    if succeeded && !rerun_all {
        OnResume::Keep
    } else if running && between_rounds {
        OnResume::ContinueRounds
    } else if running && action.on_restart == OnRestart::Fail {
        OnResume::Fail(format!(
            "action `{}` was running when the server stopped, and its on-restart policy is fail",
            action.name
        ))
    } else {
        OnResume::Run
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::pipeline::{ActionKind, ApprovalPolicy, StagePlan};

    fn approval(stage: &str, name: &str, run_order: u32) -> ActionPlan {
        ActionPlan {
            name: name.to_string(),
            stage: stage.to_string(),
            run_order,
            kind: ActionKind::Approval(ApprovalPolicy {
                approvers: "operator".to_string(),
                timeout: Duration::from_secs(60),
                message: String::new(),
            }),
            inputs: Vec::new(),
            outputs: Vec::new(),
            namespace: None,
            config: Vec::new(),
            grants: Default::default(),
            limits: Default::default(),
            retry: RetryPolicy::default(),
            on_restart: OnRestart::Rerun,
        }
    }

    /// Build: a, b (run order 1), c (2); Deploy: d.
    fn plan() -> Plan {
        let stage = |name: &str, actions: Vec<ActionPlan>| StagePlan {
            conditions: Default::default(),
            name: name.to_string(),
            actions,
        };
        Plan {
            name: "p".to_string(),
            file: "pipeline.toml".into(),
            execution_mode: Default::default(),
            max_executions: 1,
            queue_depth: 1,
            triggers: Default::default(),
            notifications: None,
            variables: Default::default(),
            source: "".into(),
            caches: Default::default(),
            stages: vec![
                stage(
                    "Build",
                    vec![
                        approval("Build", "a", 1),
                        approval("Build", "b", 1),
                        approval("Build", "c", 2),
                    ],
                ),
                stage("Deploy", vec![approval("Deploy", "d", 1)]),
            ],
        }
    }

    fn run(stage: usize, actions: &[&str]) -> Step {
        let actions = actions.iter().map(|a| a.to_string()).collect();
        Step::Run { stage, actions }
    }

    fn ran() -> GroupEnd {
        GroupEnd::Ran {
            failures: Vec::new(),
        }
    }

    fn stop(mode: StopMode) -> StopRequest {
        StopRequest {
            mode,
            reason: "why".to_string(),
        }
    }

    #[test]
    fn stages_and_groups_run_in_order() {
        let mut walk = RunState::new(&plan(), HashSet::new());
        assert_eq!(walk.next_step(), Step::Enter { stage: 0 });
        walk.entered();
        assert_eq!(walk.next_step(), run(0, &["a", "b"]));
        walk.group_ended(ran());
        assert_eq!(walk.next_step(), run(0, &["c"]));
        walk.group_ended(ran());
        let succeeded = Outcome::Succeeded;
        assert_eq!(
            walk.next_step(),
            Step::EndStage {
                stage: 0,
                outcome: succeeded.clone()
            }
        );
        assert_eq!(walk.next_step(), Step::Enter { stage: 1 });
        walk.entered();
        assert_eq!(walk.next_step(), run(1, &["d"]));
        walk.group_ended(ran());
        assert_eq!(
            walk.next_step(),
            Step::EndStage {
                stage: 1,
                outcome: succeeded.clone()
            }
        );
        assert_eq!(walk.next_step(), Step::End(succeeded));
    }

    #[test]
    fn a_failure_ends_its_stage_and_skips_the_rest() {
        let mut walk = RunState::new(&plan(), HashSet::new());
        walk.next_step();
        walk.entered();
        walk.next_step();
        walk.group_ended(GroupEnd::Ran {
            failures: vec!["a broke".into(), "b broke".into()],
        });
        let failed = Outcome::Failed("a broke; b broke".into());
        assert_eq!(
            walk.next_step(),
            Step::EndStage {
                stage: 0,
                outcome: failed.clone()
            }
        );
        assert_eq!(walk.next_step(), Step::Skip { stage: 1 });
        assert_eq!(walk.next_step(), Step::End(failed));
    }

    #[test]
    fn a_resumed_walk_passes_over_what_was_done() {
        let done = HashSet::from(["a".to_string(), "c".to_string()]);
        let mut walk = RunState::new(&plan(), done);
        assert_eq!(walk.next_step(), Step::Enter { stage: 0 });
        walk.entered();
        assert_eq!(
            walk.next_step(),
            run(0, &["b"]),
            "c's group has nothing left"
        );
        walk.group_ended(ran());
        assert!(matches!(walk.next_step(), Step::EndStage { stage: 0, .. }));
        let all_done = HashSet::from(["a", "b", "c"].map(String::from));
        let mut walk =
            RunState::new(&plan(), all_done.clone()).ended_before_restart(HashSet::from([0]));
        assert_eq!(
            walk.next_step(),
            Step::Enter { stage: 1 },
            "Build is not entered again"
        );
    }

    #[test]
    fn a_stage_whose_end_was_never_recorded_is_entered_and_ended_with_nothing_to_run() {
        // The process died after Build's last action was recorded Succeeded
        // but before Build's end: Build must still end, or it stays InProgress.
        let all_done = HashSet::from(["a", "b", "c"].map(String::from));
        let mut walk = RunState::new(&plan(), all_done);
        assert_eq!(walk.next_step(), Step::Enter { stage: 0 });
        walk.entered();
        assert!(
            matches!(
                walk.next_step(),
                Step::EndStage {
                    stage: 0,
                    outcome: Outcome::Succeeded
                }
            ),
            "nothing runs again"
        );
    }

    #[test]
    fn a_finish_stop_ends_the_stage_after_the_running_group() {
        let mut walk = RunState::new(&plan(), HashSet::new());
        walk.next_step();
        walk.entered();
        walk.next_step();
        walk.stop_requested(stop(StopMode::Finish));
        assert!(!walk.abandons_running());
        walk.group_ended(ran());
        let stopped = Outcome::Stopped("stopped (finish): why".into());
        assert_eq!(
            walk.next_step(),
            Step::EndStage {
                stage: 0,
                outcome: stopped.clone()
            }
        );
        assert_eq!(walk.next_step(), Step::End(stopped));
    }

    #[test]
    fn an_abandon_stop_can_follow_a_finish_stop() {
        let mut walk = RunState::new(&plan(), HashSet::new());
        walk.next_step();
        walk.entered();
        walk.next_step();
        walk.stop_requested(stop(StopMode::Finish));
        walk.stop_requested(stop(StopMode::Abandon));
        assert!(walk.abandons_running());
        walk.group_ended(GroupEnd::Abandoned);
        let stopped = Outcome::Stopped("stopped (abandon): why".into());
        assert_eq!(
            walk.next_step(),
            Step::EndStage {
                stage: 0,
                outcome: stopped
            }
        );
    }

    #[test]
    fn gate_results_end_the_walk_before_the_stage_starts() {
        let mut walk = RunState::new(&plan(), HashSet::new());
        walk.next_step();
        walk.superseded();
        assert_eq!(walk.next_step(), Step::End(Outcome::Superseded));
        let mut walk = RunState::new(&plan(), HashSet::new());
        walk.next_step();
        walk.stop_requested(stop(StopMode::Finish));
        let stopped = Outcome::Stopped("stopped (finish): why".into());
        assert_eq!(walk.next_step(), Step::End(stopped), "no stage to record");
    }

    #[test]
    fn retries_double_their_backoff_until_the_attempts_are_spent() {
        let policy = RetryPolicy {
            attempts: 4,
            backoff: Duration::from_secs(2),
        };
        let after = |attempt| after_failed_attempt(&policy, attempt, true);
        assert_eq!(after(1), AfterFailure::RetryAfter(Duration::from_secs(2)));
        assert_eq!(after(2), AfterFailure::RetryAfter(Duration::from_secs(4)));
        assert_eq!(after(3), AfterFailure::RetryAfter(Duration::from_secs(8)));
        assert_eq!(after(4), AfterFailure::GiveUp);
        assert_eq!(
            after_failed_attempt(&policy, 1, false),
            AfterFailure::GiveUp
        );
        let huge = RetryPolicy {
            attempts: u32::MAX,
            backoff: Duration::from_secs(1),
        };
        assert!(matches!(
            after_failed_attempt(&huge, 200, true),
            AfterFailure::RetryAfter(_)
        ));
    }

    #[test]
    fn resuming_keeps_successes_continues_rounds_and_honours_on_restart() {
        let mut action = approval("Build", "a", 1);
        assert_eq!(
            on_resume(&action, Status::Succeeded, false, false),
            OnResume::Keep
        );
        assert_eq!(
            on_resume(&action, Status::Succeeded, false, true),
            OnResume::Run
        );
        assert_eq!(
            on_resume(&action, Status::Failed, false, false),
            OnResume::Run
        );
        assert_eq!(
            on_resume(&action, Status::InProgress, false, false),
            OnResume::Run
        );
        action.on_restart = OnRestart::Fail;
        assert_eq!(
            on_resume(&action, Status::InProgress, true, false),
            OnResume::ContinueRounds
        );
        assert!(matches!(
            on_resume(&action, Status::InProgress, false, false),
            OnResume::Fail(_)
        ));
    }

    /// `plan()` with conditions on Build written as TOML would give them.
    fn with_conditions(result: ConditionResult, when: When) -> Plan {
        use sluice_core::pipeline::conditions::{Condition, Operator, Rule, RuleCheck};
        let rule = Rule {
            name: "r".into(),
            check: RuleCheck::VariableCheck {
                variable: "x".into(),
                operator: Operator::Eq,
                value: "x".into(),
            },
        };
        let condition = Some(Condition {
            result,
            rules: vec![rule],
        });
        let mut plan = plan();
        let conditions = &mut plan.stages[0].conditions;
        match when {
            When::BeforeEntry => conditions.before_entry = condition,
            When::OnSuccess => conditions.on_success = condition,
            When::OnFailure => conditions.on_failure = condition,
        }
        plan
    }

    fn through_build(walk: &mut RunState) {
        walk.group_ended(ran());
        assert_eq!(walk.next_step(), run(0, &["c"]));
        walk.group_ended(ran());
    }

    #[test]
    fn a_before_entry_condition_that_fails_skips_the_stage_or_fails_it() {
        let not_met = ["rule `r`: no".to_string()];
        let mut walk = RunState::new(
            &with_conditions(ConditionResult::Skip, When::BeforeEntry),
            HashSet::new(),
        );
        assert_eq!(walk.next_step(), Step::Enter { stage: 0 });
        walk.entered();
        let check = Step::Check {
            stage: 0,
            when: When::BeforeEntry,
        };
        assert_eq!(walk.next_step(), check);
        walk.condition_checked(&not_met);
        let skipped = Outcome::Skipped("before-entry condition not met: rule `r`: no".into());
        assert_eq!(
            walk.next_step(),
            Step::EndStage {
                stage: 0,
                outcome: skipped
            }
        );
        assert_eq!(
            walk.next_step(),
            Step::Enter { stage: 1 },
            "the execution goes on"
        );

        let mut walk = RunState::new(
            &with_conditions(ConditionResult::Fail, When::BeforeEntry),
            HashSet::new(),
        );
        walk.next_step();
        walk.entered();
        assert_eq!(walk.next_step(), check);
        walk.condition_checked(&[]);
        assert_eq!(
            walk.next_step(),
            run(0, &["a", "b"]),
            "all passed: the stage runs"
        );
        let mut walk = RunState::new(
            &with_conditions(ConditionResult::Fail, When::BeforeEntry),
            HashSet::new(),
        );
        walk.next_step();
        walk.entered();
        walk.next_step();
        walk.condition_checked(&not_met);
        let failed = Outcome::Failed("before-entry condition not met: rule `r`: no".into());
        assert_eq!(
            walk.next_step(),
            Step::EndStage {
                stage: 0,
                outcome: failed.clone()
            }
        );
        assert_eq!(walk.next_step(), Step::Skip { stage: 1 });
        assert_eq!(walk.next_step(), Step::End(failed));
    }

    #[test]
    fn an_on_success_condition_is_checked_after_the_last_group_and_can_fail_the_stage() {
        let mut walk = RunState::new(
            &with_conditions(ConditionResult::Fail, When::OnSuccess),
            HashSet::new(),
        );
        walk.next_step();
        walk.entered();
        assert_eq!(walk.next_step(), run(0, &["a", "b"]));
        through_build(&mut walk);
        assert_eq!(
            walk.next_step(),
            Step::Check {
                stage: 0,
                when: When::OnSuccess
            }
        );
        walk.condition_checked(&["rule `r`: no".to_string()]);
        let failed = Outcome::Failed("on-success condition not met: rule `r`: no".into());
        assert_eq!(
            walk.next_step(),
            Step::EndStage {
                stage: 0,
                outcome: failed
            }
        );
    }

    #[test]
    fn an_on_failure_retry_runs_the_stage_again_once() {
        let failing = || GroupEnd::Ran {
            failures: vec!["b failed".to_string()],
        };
        let mut walk = RunState::new(
            &with_conditions(ConditionResult::Retry, When::OnFailure),
            HashSet::new(),
        );
        walk.next_step();
        walk.entered();
        walk.next_step();
        walk.group_ended(failing());
        assert_eq!(
            walk.next_step(),
            Step::Check {
                stage: 0,
                when: When::OnFailure
            }
        );
        walk.condition_checked(&[]);
        assert_eq!(
            walk.next_step(),
            run(0, &["a", "b"]),
            "the stage runs again"
        );
        walk.group_ended(failing());
        let failed = Outcome::Failed("b failed".into());
        assert_eq!(
            walk.next_step(),
            Step::EndStage {
                stage: 0,
                outcome: failed
            },
            "only once"
        );

        let mut walk = RunState::new(
            &with_conditions(ConditionResult::Retry, When::OnFailure),
            HashSet::new(),
        );
        walk.next_step();
        walk.entered();
        walk.next_step();
        walk.group_ended(failing());
        walk.next_step();
        walk.condition_checked(&["rule `r`: no".to_string()]);
        let failed = Outcome::Failed("b failed".into());
        assert_eq!(
            walk.next_step(),
            Step::EndStage {
                stage: 0,
                outcome: failed
            },
            "rules not met: no retry"
        );
    }
}
