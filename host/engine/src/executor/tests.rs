//! Unit tests of the executor without Wasm: the loop is driven by a
//! [`FakeRunner`] whose attempts succeed, fail or hold as each test scripts
//! them, with the real stage gates and a real (temporary SQLite) state store.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;

use super::runner::{ActionRunner, AttemptFailure, AttemptRequest, Attempted};
use super::{ExecutionResult, Executor, Reopened, Started, StopMode};
use crate::cache::CacheStore;
use sluice_core::pipeline::{
    ActionKind, ActionPlan, ApprovalPolicy, ExecutionMode, Grants, OnRestart, Plan, RetryPolicy,
    StagePlan,
};
use sluice_core::plugin::InstalledPlugin;
use sluice_core::plugin::manifest::Manifest;
use sluice_sandbox::ActionOutcome;
use sluice_sandbox::limits::Limits;
use sluice_store::secrets::Masker;
use sluice_store::state::{ActionEnd, EventRecord, OutputRecord, SqliteStore, Status, Store};

/// How one scripted attempt ends.
#[derive(Clone, Copy, Debug)]
enum Script {
    Succeed,
    Fail {
        retryable: bool,
    },
    /// Succeed this round and ask to be called again with a token after `delay`.
    Continue {
        delay: Duration,
    },
}

/// One attempt the fake was asked for.
#[derive(Clone, Debug)]
struct Call {
    execution: String,
    action: String,
    attempt: u32,
    config: Vec<(String, String)>,
    inputs: Vec<(String, String)>,
    continuation: Option<String>,
}

/// A runner whose attempts do what the test scripted (succeed by default),
/// optionally holding until the test releases them, and which remembers every
/// attempt and sleep.
#[derive(Default)]
struct FakeRunner {
    scripts: Mutex<HashMap<String, VecDeque<Script>>>,
    /// Actions whose attempts wait for a permit before they end.
    holds: Mutex<HashMap<String, Arc<Semaphore>>>,
    calls: Mutex<Vec<Call>>,
    sleeps: Mutex<Vec<Duration>>,
    in_flight: Mutex<InFlight>,
}

/// Attempts running now, and the most that ever ran at once.
#[derive(Default)]
struct InFlight {
    now: usize,
    most: usize,
}

impl FakeRunner {
    fn script(&self, action: &str, attempts: &[Script]) {
        let mut scripts = self.scripts.lock().unwrap();
        scripts.insert(action.to_string(), attempts.iter().copied().collect());
    }

    /// Attempts of `action` wait until [`FakeRunner::release`] lets them end.
    fn hold(&self, action: &str) {
        let mut holds = self.holds.lock().unwrap();
        holds.insert(action.to_string(), Arc::new(Semaphore::new(0)));
    }

    /// Let `count` held attempts of `action` end.
    fn release(&self, action: &str, count: usize) {
        self.holds.lock().unwrap()[action].add_permits(count);
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn attempted(&self, execution: &str, action: &str) -> Vec<u32> {
        self.calls()
            .iter()
            .filter(|c| c.execution == execution && c.action == action)
            .map(|c| c.attempt)
            .collect()
    }

    fn in_flight(&self) -> usize {
        self.in_flight.lock().unwrap().now
    }

    fn most_in_flight(&self) -> usize {
        self.in_flight.lock().unwrap().most
    }

    fn enter_flight(&self) {
        let mut flight = self.in_flight.lock().unwrap();
        flight.now += 1;
        flight.most = flight.most.max(flight.now);
    }
}

/// Counts an attempt out of flight when it ends, aborted ones included.
struct Flying<'a>(&'a FakeRunner);

impl Drop for Flying<'_> {
    fn drop(&mut self) {
        self.0.in_flight.lock().unwrap().now -= 1;
    }
}

impl ActionRunner for FakeRunner {
    async fn attempt(&self, request: AttemptRequest<'_>) -> Result<Attempted, AttemptFailure> {
        let action = request.action.name.clone();
        self.calls.lock().unwrap().push(Call {
            execution: request.execution.to_string(),
            action: action.clone(),
            attempt: request.attempt,
            config: request.config.to_vec(),
            inputs: request.inputs.clone(),
            continuation: request.continuation.clone(),
        });
        self.enter_flight();
        let _flying = Flying(self);
        let hold = self.holds.lock().unwrap().get(&action).cloned();
        if let Some(hold) = hold {
            hold.acquire().await.expect("never closed").forget();
        }
        let script = self
            .scripts
            .lock()
            .unwrap()
            .get_mut(&action)
            .and_then(VecDeque::pop_front)
            .unwrap_or(Script::Succeed);
        match script {
            Script::Succeed => Ok(Attempted {
                outcome: ActionOutcome {
                    summary: format!("{action} done"),
                    variables: vec![("version".to_string(), format!("{action}-1"))],
                    continuation: None,
                },
                outputs: request
                    .action
                    .outputs
                    .iter()
                    .map(|name| output(name))
                    .collect(),
            }),
            Script::Continue { delay } => Ok(Attempted {
                outcome: ActionOutcome {
                    summary: "still deploying".to_string(),
                    variables: Vec::new(),
                    continuation: Some((format!("token-{}", self.calls().len()), delay)),
                },
                outputs: Vec::new(),
            }),
            Script::Fail { retryable } => Err(AttemptFailure::Failed {
                error: format!("{action} broke on attempt {}", request.attempt),
                retryable,
                kept_outputs: None,
            }),
        }
    }

    async fn approval(
        &self,
        _execution: &str,
        _action: &ActionPlan,
        _policy: &ApprovalPolicy,
    ) -> Result<ActionOutcome, String> {
        Err("the fake runner approves nothing".to_string())
    }

    async fn sleep(&self, wait: Duration) {
        self.sleeps.lock().unwrap().push(wait);
    }

    async fn poll(
        &self,
        _plan: Arc<Plan>,
        _action: &str,
        _last: Option<String>,
    ) -> anyhow::Result<Vec<String>> {
        Ok(Vec::new())
    }

    async fn notify(&self, _plan: Arc<Plan>, _event: &EventRecord) -> anyhow::Result<()> {
        Ok(())
    }

    async fn evaluate_rule(
        &self,
        _plan: &Arc<Plan>,
        _execution: &str,
        rule: &ActionPlan,
        _config: Vec<(String, String)>,
    ) -> Result<sluice_sandbox::RuleVerdict, String> {
        Err(format!(
            "the fake runner runs no rule plugin (`{}`)",
            rule.name
        ))
    }

    fn approvals_changed(&self) {}

    fn execution_ended(&self, _execution: &str) {}
}

fn output(name: &str) -> OutputRecord {
    OutputRecord {
        name: name.to_string(),
        digest: format!("blake3:{name}"),
        files: 1,
        bytes: 1,
    }
}

fn plugin() -> InstalledPlugin {
    InstalledPlugin {
        manifest: Manifest {
            name: "fake".to_string(),
            version: semver::Version::new(0, 1, 0),
            world: "action".to_string(),
            component: "fake.wasm".to_string(),
            sha256: None,
            description: String::new(),
            language: None,
            categories: Vec::new(),
            config: BTreeMap::new(),
            capabilities: Default::default(),
        },
        dir: PathBuf::from("/nonexistent"),
    }
}

fn action(stage: &str, name: &str, run_order: u32) -> ActionPlan {
    ActionPlan {
        name: name.to_string(),
        stage: stage.to_string(),
        run_order,
        kind: ActionKind::Plugin(Box::new(plugin())),
        inputs: Vec::new(),
        outputs: Vec::new(),
        namespace: None,
        config: Vec::new(),
        grants: Grants::default(),
        limits: Limits::default(),
        retry: RetryPolicy::default(),
        on_restart: OnRestart::Rerun,
    }
}

/// A pipeline of these stages, each of (action, run order) pairs.
fn plan(mode: ExecutionMode, stages: &[(&str, &[(&str, u32)])]) -> Plan {
    Plan {
        name: "demo".to_string(),
        file: PathBuf::from("pipeline.toml"),
        execution_mode: mode,
        max_executions: 10,
        queue_depth: 10,
        triggers: Default::default(),
        notifications: None,
        variables: BTreeMap::new(),
        source: "".into(),
        caches: BTreeMap::new(),
        stages: stages
            .iter()
            .map(|(stage, actions)| StagePlan {
                conditions: Default::default(),
                name: stage.to_string(),
                actions: actions
                    .iter()
                    .map(|(name, order)| action(stage, name, *order))
                    .collect(),
            })
            .collect(),
    }
}

fn action_mut<'a>(plan: &'a mut Plan, name: &str) -> &'a mut ActionPlan {
    plan.stages
        .iter_mut()
        .flat_map(|s| &mut s.actions)
        .find(|a| a.name == name)
        .expect("the action is in the plan")
}

/// An executor over the fake runner and a state store in a temporary directory.
struct Harness {
    executor: Arc<Executor<FakeRunner>>,
    state: Arc<dyn Store>,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let state =
            Arc::new(SqliteStore::open(&dir.path().join("state.db")).expect("a state store"));
        let executor = Executor::with_runner(
            FakeRunner::default(),
            state.clone(),
            Arc::new(Masker::default()),
            CacheStore::under(dir.path()),
            Arc::new(|_| {}),
        );
        Self {
            executor,
            state,
            _dir: dir,
        }
    }

    fn runner(&self) -> &FakeRunner {
        &self.executor.runner
    }

    async fn run(&self, plan: Plan) -> ExecutionResult {
        self.executor
            .run(Arc::new(plan), &BTreeMap::new())
            .await
            .expect("the execution runs")
    }

    /// Run a begun execution on its own task.
    fn spawn(&self, started: Started) -> tokio::task::JoinHandle<ExecutionResult> {
        let executor = self.executor.clone();
        tokio::spawn(async move { executor.complete(started).await.expect("it runs") })
    }

    fn begin(&self, plan: &Arc<Plan>) -> Started {
        self.executor
            .begin(plan.clone(), &BTreeMap::new())
            .expect("it begins")
    }

    /// Wait until `condition` holds (the tasks under test move meanwhile).
    async fn until(&self, what: &str, condition: impl Fn(&FakeRunner) -> bool) {
        for _ in 0..10_000 {
            if condition(self.runner()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("never happened: {what}");
    }

    /// Let every task that can move do so.
    async fn settle(&self) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    fn action_status(&self, execution: &str, action: &str) -> (String, u32, Option<String>) {
        let actions = self.state.actions(execution).expect("actions");
        let record = actions
            .iter()
            .find(|a| a.action == action)
            .unwrap_or_else(|| panic!("no record of {action}"));
        (
            record.status.to_string(),
            record.attempts,
            record.error.clone(),
        )
    }

    fn stage_statuses(&self, execution: &str) -> Vec<(String, String)> {
        let stages = self.state.stages(execution).expect("stages");
        stages
            .into_iter()
            .map(|s| (s.stage, s.status.to_string()))
            .collect()
    }

    /// The stored events of `execution`, as `kind name STATE`.
    fn events(&self, execution: &str) -> Vec<String> {
        let events = self.state.events_after(0, 10_000).expect("events");
        events
            .into_iter()
            .filter(|e| e.execution == execution)
            .map(|e| format!("{} {} {}", e.kind, e.name, e.state))
            .collect()
    }

    fn event_detail(&self, execution: &str, kind: &str, name: &str, state: &str) -> String {
        let events = self.state.events_after(0, 10_000).expect("events");
        events
            .into_iter()
            .find(|e| {
                e.execution == execution && e.kind == kind && e.name == name && e.state == state
            })
            .unwrap_or_else(|| panic!("no {kind} {name} {state} event"))
            .detail
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// An execution whose start was recorded but that could not take its place
/// at the first stage's gate (the store failed) is failed, saying why, and
/// does not stay InProgress with nothing running it.
#[tokio::test(flavor = "multi_thread")]
async fn an_execution_the_store_fails_to_start_is_failed_not_left_in_progress() {
    let harness = Harness::new();
    let db = rusqlite::Connection::open(harness._dir.path().join("state.db")).unwrap();
    db.execute_batch(
        "CREATE TRIGGER failing_disk BEFORE INSERT ON gate_places
         BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END",
    )
    .unwrap();
    let plan = Arc::new(plan(ExecutionMode::Queued, &[("Build", &[("compile", 1)])]));

    let refused = harness.executor.begin(plan, &BTreeMap::new());

    let error = format!("{:#}", refused.err().expect("the start fails"));
    assert!(error.contains("disk I/O error"), "{error}");
    let id = harness.state.latest_execution().unwrap().expect("recorded");
    let execution = harness.state.execution(&id).unwrap().unwrap();
    assert_eq!(execution.status, Status::Failed);
    let reason = execution.error.unwrap_or_default();
    assert!(
        reason.contains("could not start") && reason.contains("disk I/O error"),
        "{reason}"
    );
    assert_eq!(
        harness.events(&id),
        strings(&["pipeline demo STARTED", "pipeline demo FAILED"]),
        "event streams see it end"
    );
}

#[tokio::test]
async fn an_action_that_fails_twice_then_succeeds_succeeds_with_three_attempts() {
    let harness = Harness::new();
    let mut plan = plan(ExecutionMode::Queued, &[("Build", &[("compile", 1)])]);
    action_mut(&mut plan, "compile").retry = RetryPolicy {
        attempts: 3,
        backoff: Duration::from_secs(5),
    };
    let flaky = Script::Fail { retryable: true };
    harness
        .runner()
        .script("compile", &[flaky, flaky, Script::Succeed]);

    let result = harness.run(plan).await;

    assert_eq!(result.status, Status::Succeeded, "{:?}", result.error);
    let (status, attempts, _) = harness.action_status(&result.id, "compile");
    assert_eq!((status.as_str(), attempts), ("Succeeded", 3));
    assert_eq!(harness.runner().attempted(&result.id, "compile"), [1, 2, 3]);
    let waits = harness.runner().sleeps.lock().unwrap().clone();
    assert_eq!(
        waits,
        [Duration::from_secs(5), Duration::from_secs(10)],
        "the backoff doubles"
    );
    assert_eq!(
        harness.events(&result.id),
        strings(&[
            "pipeline demo STARTED",
            "stage Build STARTED",
            "action compile STARTED",
            "action compile RETRYING",
            "action compile RETRYING",
            "action compile SUCCEEDED",
            "stage Build SUCCEEDED",
            "pipeline demo SUCCEEDED",
        ])
    );
    let retry = harness.event_detail(&result.id, "action", "compile", "RETRYING");
    assert_eq!(
        retry,
        "attempt 1 failed: compile broke on attempt 1; retrying in 5s"
    );
}

#[tokio::test]
async fn an_action_gives_up_when_its_attempts_are_exhausted() {
    let harness = Harness::new();
    let mut plan = plan(ExecutionMode::Queued, &[("Build", &[("compile", 1)])]);
    action_mut(&mut plan, "compile").retry = RetryPolicy {
        attempts: 2,
        backoff: Duration::from_millis(10),
    };
    let flaky = Script::Fail { retryable: true };
    harness
        .runner()
        .script("compile", &[flaky, flaky, Script::Succeed]);

    let result = harness.run(plan).await;

    assert_eq!(result.status, Status::Failed);
    let (status, attempts, error) = harness.action_status(&result.id, "compile");
    assert_eq!((status.as_str(), attempts), ("Failed", 2));
    assert_eq!(error.as_deref(), Some("compile broke on attempt 2"));
    assert_eq!(harness.runner().attempted(&result.id, "compile"), [1, 2]);
    assert_eq!(
        result.error.as_deref(),
        Some("action `compile` failed: compile broke on attempt 2")
    );
}

#[tokio::test]
async fn a_failure_that_retrying_cannot_cure_is_not_retried() {
    let harness = Harness::new();
    let mut plan = plan(ExecutionMode::Queued, &[("Build", &[("compile", 1)])]);
    action_mut(&mut plan, "compile").retry = RetryPolicy {
        attempts: 3,
        backoff: Duration::from_millis(10),
    };
    let denied = Script::Fail { retryable: false };
    harness.runner().script("compile", &[denied]);

    let result = harness.run(plan).await;

    assert_eq!(result.status, Status::Failed);
    assert_eq!(harness.runner().attempted(&result.id, "compile"), [1]);
    assert!(harness.runner().sleeps.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_failed_stage_skips_the_later_stages() {
    let harness = Harness::new();
    let plan = plan(
        ExecutionMode::Queued,
        &[
            ("Build", &[("compile", 1), ("lint", 1)]),
            ("Deploy", &[("ship", 1)]),
            ("Announce", &[("tell", 1)]),
        ],
    );
    harness
        .runner()
        .script("compile", &[Script::Fail { retryable: false }]);

    let result = harness.run(plan).await;

    assert_eq!(result.status, Status::Failed);
    assert_eq!(
        harness.stage_statuses(&result.id),
        [
            ("Build".to_string(), "Failed".to_string()),
            ("Deploy".to_string(), "Skipped".to_string()),
            ("Announce".to_string(), "Skipped".to_string()),
        ]
    );
    let (lint, _, _) = harness.action_status(&result.id, "lint");
    assert_eq!(lint, "Succeeded", "the rest of the failed group ran");
    assert!(harness.runner().attempted(&result.id, "ship").is_empty());
    assert!(harness.runner().attempted(&result.id, "tell").is_empty());
    let events = harness.events(&result.id);
    assert!(
        events.contains(&"stage Deploy SKIPPED".to_string()),
        "{events:?}"
    );
    assert!(
        events.contains(&"stage Announce SKIPPED".to_string()),
        "{events:?}"
    );
    assert!(
        !events.contains(&"stage Deploy FAILED".to_string()),
        "{events:?}"
    );
    let detail = harness.event_detail(&result.id, "stage", "Deploy", "SKIPPED");
    assert_eq!(detail, "an earlier stage failed");
}

#[tokio::test]
async fn a_later_run_order_group_waits_for_the_earlier_and_a_failure_stops_the_stage() {
    let harness = Harness::new();
    let plan = plan(
        ExecutionMode::Queued,
        &[("Build", &[("fetch", 1), ("compile", 2), ("package", 3)])],
    );
    harness
        .runner()
        .script("compile", &[Script::Fail { retryable: false }]);

    let result = harness.run(plan).await;

    assert_eq!(result.status, Status::Failed);
    let order: Vec<String> = harness
        .runner()
        .calls()
        .into_iter()
        .map(|c| c.action)
        .collect();
    assert_eq!(order, ["fetch", "compile"], "package never starts");
}

#[tokio::test]
async fn stop_with_finish_lets_the_running_action_end_and_starts_nothing_new() {
    let harness = Harness::new();
    let plan = Arc::new(plan(
        ExecutionMode::Queued,
        &[
            ("Build", &[("compile", 1), ("package", 2)]),
            ("Deploy", &[("ship", 1)]),
        ],
    ));
    harness.runner().hold("compile");
    let started = harness.begin(&plan);
    let id = started.id().to_string();
    let running = harness.spawn(started);
    harness
        .until("compile starts", |r| {
            !r.attempted(&id, "compile").is_empty()
        })
        .await;

    let stopped = harness.executor.stop(&id, StopMode::Finish, "enough");
    assert!(stopped.expect("recorded"), "the execution is running here");
    harness.runner().release("compile", 1);
    let result = running.await.expect("the task ends");

    assert_eq!(result.status, Status::Stopped);
    assert_eq!(result.error.as_deref(), Some("stopped (finish): enough"));
    let (compile, _, _) = harness.action_status(&id, "compile");
    assert_eq!(compile, "Succeeded", "the running action finished");
    assert!(harness.runner().attempted(&id, "package").is_empty());
    assert!(harness.runner().attempted(&id, "ship").is_empty());
    assert_eq!(
        harness.stage_statuses(&id),
        [("Build".to_string(), "Stopped".to_string())],
        "the next stage is not even recorded"
    );
}

#[tokio::test]
async fn stop_with_abandon_abandons_the_running_actions() {
    let harness = Harness::new();
    let plan = Arc::new(plan(
        ExecutionMode::Queued,
        &[("Deploy", &[("ship", 1), ("migrate", 1)])],
    ));
    harness.runner().hold("ship");
    harness.runner().hold("migrate");
    let started = harness.begin(&plan);
    let id = started.id().to_string();
    let running = harness.spawn(started);
    harness
        .until("both actions start", |r| r.in_flight() == 2)
        .await;

    harness
        .executor
        .stop(&id, StopMode::Abandon, "wrong build")
        .expect("recorded");
    let result = running.await.expect("the task ends");

    assert_eq!(result.status, Status::Stopped);
    assert_eq!(
        result.error.as_deref(),
        Some("stopped (abandon): wrong build")
    );
    for action in ["ship", "migrate"] {
        let (status, _, error) = harness.action_status(&id, action);
        assert_eq!(status, "Abandoned");
        assert_eq!(
            error.as_deref(),
            Some("abandoned: stopped (abandon): wrong build")
        );
        let events = harness.events(&id);
        assert!(
            events.contains(&format!("action {action} ABANDONED")),
            "{events:?}"
        );
    }
    assert_eq!(harness.runner().in_flight(), 0, "the attempts were dropped");
}

#[tokio::test]
async fn a_stop_while_waiting_at_a_gate_leaves_the_line() {
    let harness = Harness::new();
    let plan = Arc::new(plan(ExecutionMode::Queued, &[("Deploy", &[("ship", 1)])]));
    harness.runner().hold("ship");
    let first = harness.begin(&plan);
    let second = harness.begin(&plan);
    let second_id = second.id().to_string();
    let first = harness.spawn(first);
    let second = harness.spawn(second);
    harness
        .until("the first execution ships", |r| r.in_flight() == 1)
        .await;

    harness
        .executor
        .stop(&second_id, StopMode::Finish, "not needed")
        .expect("recorded");
    let stopped = second.await.expect("the task ends");
    harness.runner().release("ship", 1);
    let shipped = first.await.expect("the task ends");

    assert_eq!(stopped.status, Status::Stopped);
    assert!(harness.stage_statuses(&second_id).is_empty());
    assert_eq!(shipped.status, Status::Succeeded);
    assert_eq!(harness.executor.gates().waiting("demo").unwrap(), 0);
    assert!(harness.runner().attempted(&second_id, "ship").is_empty());
}

#[tokio::test]
async fn queued_executions_take_a_stage_one_at_a_time_in_order() {
    let harness = Harness::new();
    let plan = Arc::new(plan(ExecutionMode::Queued, &[("Deploy", &[("ship", 1)])]));
    harness.runner().hold("ship");
    let first = harness.begin(&plan);
    let second = harness.begin(&plan);
    let (first_id, second_id) = (first.id().to_string(), second.id().to_string());
    let second = harness.spawn(second);
    let first = harness.spawn(first);
    harness.until("one ships", |r| r.in_flight() == 1).await;
    harness.settle().await;

    assert_eq!(
        harness.executor.gates().waiting("demo").unwrap(),
        1,
        "one waits"
    );
    harness.runner().release("ship", 2);
    let (first, second) = (first.await.unwrap(), second.await.unwrap());

    assert_eq!(
        (first.status, second.status),
        (Status::Succeeded, Status::Succeeded)
    );
    assert_eq!(harness.runner().most_in_flight(), 1, "never two at once");
    let order: Vec<String> = harness
        .runner()
        .calls()
        .into_iter()
        .map(|c| c.execution)
        .collect();
    assert_eq!(order, [first_id, second_id], "in the order they began");
}

#[tokio::test]
async fn superseded_replaces_the_waiting_execution_with_the_newer_one() {
    let harness = Harness::new();
    let plan = Arc::new(plan(
        ExecutionMode::Superseded,
        &[("Deploy", &[("ship", 1)])],
    ));
    harness.runner().hold("ship");
    let first = harness.begin(&plan);
    let first_id = first.id().to_string();
    let first = harness.spawn(first);
    harness
        .until("the first ships", |r| r.in_flight() == 1)
        .await;
    let older = harness.begin(&plan);
    let newer = harness.begin(&plan);
    let (older_id, newer_id) = (older.id().to_string(), newer.id().to_string());
    let older = harness.spawn(older);
    let newer = harness.spawn(newer);

    let replaced = older.await.expect("the task ends");
    harness.settle().await;
    assert_eq!(
        harness.executor.gates().waiting("demo").unwrap(),
        1,
        "the newer waits"
    );
    harness.runner().release("ship", 2);
    let (first, newer) = (first.await.unwrap(), newer.await.unwrap());

    assert_eq!(replaced.status, Status::Superseded);
    assert!(
        harness.stage_statuses(&older_id).is_empty(),
        "it never entered"
    );
    assert_eq!(
        harness.events(&older_id),
        strings(&["pipeline demo STARTED", "pipeline demo SUPERSEDED"])
    );
    assert_eq!(
        (first.status, newer.status),
        (Status::Succeeded, Status::Succeeded)
    );
    assert_eq!(harness.runner().most_in_flight(), 1, "never two at once");
    let shipped: Vec<String> = harness
        .runner()
        .calls()
        .into_iter()
        .map(|c| c.execution)
        .collect();
    assert_eq!(shipped, [first_id, newer_id]);
}

#[tokio::test]
async fn parallel_executions_do_not_wait_for_each_other() {
    let harness = Harness::new();
    let plan = Arc::new(plan(ExecutionMode::Parallel, &[("Deploy", &[("ship", 1)])]));
    harness.runner().hold("ship");
    let first = harness.spawn(harness.begin(&plan));
    let second = harness.spawn(harness.begin(&plan));

    harness
        .until("both ship at once", |r| r.in_flight() == 2)
        .await;
    harness.runner().release("ship", 2);

    assert_eq!(first.await.unwrap().status, Status::Succeeded);
    assert_eq!(second.await.unwrap().status, Status::Succeeded);
}

/// Record what a process that stopped mid-way leaves: `build` succeeded (with
/// an output and variables), `deploy` was running.
fn interrupted_execution(state: &dyn Store, plan: &Plan) -> String {
    let id = "interrupted".to_string();
    let json = serde_json::json!({});
    state
        .start_execution(&id, &plan.name, &plan.file, &json, &json, 1)
        .unwrap();
    state.start_stage(&id, "Build", 0, 1, None).unwrap();
    state
        .start_action(&id, "Build", "build", 1, "fake@0.1.0", &[], 1, None)
        .unwrap();
    let end = ActionEnd {
        status: Status::Succeeded,
        attempts: 1,
        summary: Some("built"),
        error: None,
        variables: &[("version".to_string(), "1.2.3".to_string())],
        outputs: &[output("site")],
    };
    state.finish_action(&id, "build", &end, 2, None).unwrap();
    state
        .finish_stage(&id, "Build", Status::Succeeded, None, 2, None)
        .unwrap();
    state.start_stage(&id, "Deploy", 1, 3, None).unwrap();
    state
        .start_action(&id, "Deploy", "deploy", 1, "fake@0.1.0", &[], 3, None)
        .unwrap();
    id
}

fn build_then_deploy() -> Plan {
    let mut plan = plan(
        ExecutionMode::Queued,
        &[("Build", &[("build", 1)]), ("Deploy", &[("deploy", 1)])],
    );
    let build = action_mut(&mut plan, "build");
    build.outputs = vec!["site".to_string()];
    build.namespace = Some("build".to_string());
    let deploy = action_mut(&mut plan, "deploy");
    deploy.inputs = vec!["site".to_string()];
    deploy.config = vec![("release".to_string(), "#{build.version}".to_string())];
    plan
}

#[tokio::test]
async fn a_resumed_execution_does_not_rerun_what_succeeded_before_the_restart() {
    let harness = Harness::new();
    let plan = Arc::new(build_then_deploy());
    let id = interrupted_execution(harness.state.as_ref(), &plan);

    let Reopened::Resume(started) = harness.executor.reopen(plan, &id).unwrap() else {
        panic!("the execution resumes");
    };
    let result = harness.executor.complete(started).await.unwrap();

    assert_eq!(result.status, Status::Succeeded, "{:?}", result.error);
    assert!(harness.runner().attempted(&id, "build").is_empty());
    let calls = harness.runner().calls();
    let [deploy] = calls.as_slice() else {
        panic!("only deploy runs: {calls:?}")
    };
    assert_eq!(deploy.action, "deploy");
    assert_eq!(
        deploy.config,
        [("release".to_string(), "1.2.3".to_string())],
        "build's variables were restored"
    );
    assert_eq!(
        deploy.inputs,
        [("site".to_string(), "blake3:site".to_string())],
        "build's output was restored"
    );
    let (build, attempts, _) = harness.action_status(&id, "build");
    assert_eq!((build.as_str(), attempts), ("Succeeded", 1));
    let events = harness.events(&id);
    assert_eq!(
        events.first().map(String::as_str),
        Some("pipeline demo RESUMED")
    );
}

#[tokio::test]
async fn a_resumed_execution_fails_when_a_running_action_must_not_run_twice() {
    let harness = Harness::new();
    let mut plan = build_then_deploy();
    action_mut(&mut plan, "deploy").on_restart = OnRestart::Fail;
    let id = interrupted_execution(harness.state.as_ref(), &plan);

    let reopened = harness.executor.reopen(Arc::new(plan), &id).unwrap();

    let Reopened::Failed(reason) = reopened else {
        panic!("the execution cannot resume");
    };
    assert_eq!(
        reason,
        "action `deploy` was running when the server stopped, and its on-restart policy is fail"
    );
    let execution = harness.state.execution(&id).unwrap().unwrap();
    assert_eq!(execution.status, Status::Failed);
    assert_eq!(execution.error.as_deref(), Some(reason.as_str()));
    let (deploy, _, _) = harness.action_status(&id, "deploy");
    assert_eq!(deploy, "Failed");
    assert!(harness.runner().calls().is_empty(), "nothing runs");
    // Subscribers and notifications learn of it like of any other failure.
    assert_eq!(
        harness.events(&id),
        [
            "action deploy FAILED",
            "stage Deploy FAILED",
            "pipeline demo FAILED"
        ]
    );
}

#[tokio::test]
async fn a_continuing_action_is_called_again_with_its_token_within_one_attempt() {
    let harness = Harness::new();
    let plan = plan(ExecutionMode::Queued, &[("Deploy", &[("rollout", 1)])]);
    let wait = Duration::from_secs(30);
    let rounds = [
        Script::Continue { delay: wait },
        Script::Continue { delay: wait },
    ];
    harness.runner().script("rollout", &rounds);

    let result = harness.run(plan).await;

    assert_eq!(result.status, Status::Succeeded, "{:?}", result.error);
    let calls = harness.runner().calls();
    let tokens: Vec<Option<&str>> = calls.iter().map(|c| c.continuation.as_deref()).collect();
    assert_eq!(tokens, [None, Some("token-1"), Some("token-2")]);
    assert_eq!(harness.runner().attempted(&result.id, "rollout"), [1, 1, 1]);
    assert_eq!(*harness.runner().sleeps.lock().unwrap(), [wait, wait]);
    let (status, attempts, _) = harness.action_status(&result.id, "rollout");
    assert_eq!((status.as_str(), attempts), ("Succeeded", 1));
    let events = harness.events(&result.id);
    let started = events.iter().filter(|e| *e == "action rollout STARTED");
    assert_eq!(
        started.count(),
        1,
        "rounds are not stored as starts: {events:?}"
    );
}
