//! Many executions at once, and `kill -9` of `sluice serve` while they run:
//! after a restart on the same data directory every execution ends, no action
//! recorded as Succeeded runs again, and each execution's events tell its
//! story once, in order.
//!
//! The native actions report each completed run to a ledger (a TCP listener
//! of the test) tagged with the server "life" that ran them (`CRASH_LIFE`, a
//! host variable the server passes on), so a run is attributed to the process
//! that started it whatever the timing. The state at each kill is read with
//! the local CLI while no server runs: it is exactly what the dead server had
//! recorded.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Workspace, eventually, text};
use crate::server::{Server, token};

/// Executions started at once.
const EXECUTIONS: usize = 20;

/// Native actions, each of which reports its runs to the ledger.
const LEDGER_ACTIONS: [&str; 4] = ["compile", "lint", "test", "deploy"];

/// Stages in order, with their actions (`scan` is a Wasm action with no
/// side effect: only the state and events can tell whether it reran).
const STAGES: [(&str, &[&str]); 3] = [
    ("Build", &["compile", "lint"]),
    ("Test", &["test", "scan"]),
    ("Deploy", &["deploy"]),
];

/// The tail of every native action's script: report this run to the ledger
/// and wait for its answer, so a run that succeeded was always counted.
const REPORT: &str = r#"
sleep 0.3
exec 3<>/dev/tcp/127.0.0.1/PORT
printf 'POST /ran/%s/%s/ACTION HTTP/1.0\r\n\r\n' "$CRASH_LIFE" "$EXECUTION" >&3
read -r reply <&3
case "$reply" in *" 200 "*) ;; *) echo "ledger said: $reply"; exit 1;; esac
"#;

const PIPELINE: &str = r#"
[pipeline]
name = "crash"
execution-mode = "parallel"
max-executions = 100
queue-depth = 100

[[stages]]
name = "Build"
[[stages.actions]]
name = "compile"
plugin = "command@0.1"
outputs = ["binary"]
config = { script = '''
mkdir dist
echo "$EXECUTION" > dist/built-for
COMPILE''', shell = "bash", env = "EXECUTION=#{execution.id}", outputs = "binary=dist/**" }
GRANTS
[[stages.actions]]
name = "lint"
plugin = "command@0.1"
config = { script = '''LINT''', shell = "bash", env = "EXECUTION=#{execution.id}" }
GRANTS

[[stages]]
name = "Test"
[[stages.actions]]
name = "test"
plugin = "command@0.1"
inputs = ["binary"]
config = { script = '''
test "$(cat dist/built-for)" = "$EXECUTION" || { echo "built for $(cat dist/built-for)"; exit 1; }
TEST''', shell = "bash", env = "EXECUTION=#{execution.id}" }
GRANTS
[[stages.actions]]
name = "scan"
plugin = "noop@0.1"
config = { sleep-ms = 300 }

[[stages]]
name = "Deploy"
[[stages.actions]]
name = "deploy"
plugin = "command@0.1"
config = { script = '''DEPLOY''', shell = "bash", env = "EXECUTION=#{execution.id}" }
GRANTS
"#;

/// The pipeline, reporting to the ledger on `port`.
fn pipeline(port: u16) -> String {
    let grants = format!(
        r#"grants = {{ commands = ["bash"], env = ["CRASH_LIFE"], hosts = ["127.0.0.1:{port}"] }}"#
    );
    let mut pipeline = PIPELINE.replace("GRANTS", &grants);
    for action in LEDGER_ACTIONS {
        let report = REPORT
            .replace("PORT", &port.to_string())
            .replace("ACTION", action);
        pipeline = pipeline.replace(&action.to_uppercase(), &report);
    }
    pipeline
}

/// One completed run of a native action, as the ledger heard it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Run {
    life: usize,
    execution: String,
    action: String,
}

/// The test's record of every completed run (answered `200` once stored).
struct Ledger {
    port: u16,
    runs: Arc<Mutex<Vec<Run>>>,
}

impl Ledger {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let runs = Arc::new(Mutex::new(Vec::new()));
        let stored = runs.clone();
        // One connection at a time, in the order they arrived. The thread
        // ends with the test process.
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Some(run) = answer(stream) {
                    stored.lock().unwrap().push(run);
                }
            }
        });
        Ledger { port, runs }
    }

    fn runs(&self) -> Vec<Run> {
        self.runs.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.runs.lock().unwrap().len()
    }
}

/// Read `POST /ran/<life>/<execution>/<action>`, store nothing if it is cut
/// off (its sender was killed), answer 200 otherwise.
fn answer(stream: TcpStream) -> Option<Run> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    loop {
        let mut header = String::new();
        match reader.read_line(&mut header) {
            Ok(0) | Err(_) => return None,
            Ok(_) if header.trim().is_empty() => break,
            Ok(_) => {}
        }
    }
    let path = request_line.split_whitespace().nth(1)?;
    let mut parts = path.strip_prefix("/ran/")?.split('/');
    let run = Run {
        life: parts.next()?.parse().ok()?,
        execution: parts.next()?.to_string(),
        action: parts.next()?.to_string(),
    };
    reader
        .get_mut()
        .write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
        .ok()?;
    Some(run)
}

/// A server whose native actions see `CRASH_LIFE=<life>`.
fn start_server(workspace: &mut Workspace, life: usize) -> Server {
    workspace.env("CRASH_LIFE", &life.to_string());
    Server::start(workspace)
}

/// Register the pipeline and start [`EXECUTIONS`] executions at once.
fn start_executions(server: &Server, admin: &str, ledger: &Ledger) -> Vec<String> {
    let (status, body) = server.call(
        "PUT",
        "/api/v1/pipelines/crash",
        Some(admin),
        Some(&pipeline(ledger.port)),
    );
    assert_eq!(status, 201, "{body}");
    let ids: Vec<String> = std::thread::scope(|scope| {
        let starts: Vec<_> = (0..EXECUTIONS)
            .map(|_| {
                scope.spawn(|| {
                    server.call(
                        "POST",
                        "/api/v1/pipelines/crash/executions",
                        Some(admin),
                        None,
                    )
                })
            })
            .collect();
        starts
            .into_iter()
            .map(|start| {
                let (status, body) = start.join().unwrap();
                assert_eq!(status, 202, "{body}");
                body["id"].as_str().unwrap().to_string()
            })
            .collect()
    });
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), EXECUTIONS, "ids are unique: {ids:?}");
    ids
}

/// Kill the server once the ledger holds `runs` runs (some actions done,
/// others under way); return what the dead server had recorded, by execution.
fn kill_after(
    server: &mut Server,
    workspace: &Workspace,
    ledger: &Ledger,
    runs: usize,
    ids: &[String],
) -> HashMap<String, Value> {
    assert!(
        eventually(120, || ledger.count() >= runs),
        "only {} runs reached the ledger",
        ledger.count()
    );
    server.kill9();
    let recorded: HashMap<String, Value> = ids
        .iter()
        .map(|id| (id.clone(), show(workspace, id)))
        .collect();
    assert!(
        recorded
            .values()
            .any(|e| e["execution"]["status"] == "InProgress"),
        "the kill came after every execution ended; nothing was tested"
    );
    recorded
}

/// `sluice executions show ID` against the data directory (no server).
fn show(workspace: &Workspace, id: &str) -> Value {
    let output = workspace.sluice(&["--output", "json", "executions", "show", id]);
    assert!(output.status.success(), "{}", text(&output));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Wait (generously) until no execution of the pipeline is in progress.
fn wait_for_all(server: &Server, admin: &str, ids: &[String]) -> HashMap<String, Value> {
    let ended = eventually(180, || {
        let (status, body) = server.call(
            "GET",
            "/api/v1/executions?pipeline=crash&limit=500",
            Some(admin),
            None,
        );
        assert_eq!(status, 200, "{body}");
        body["executions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| !matches!(e["status"].as_str(), Some("InProgress" | "Stopping")))
    });
    assert!(ended, "executions still in progress after 180 s");
    ids.iter()
        .map(|id| {
            let (status, body) = server.call(
                "GET",
                &format!("/api/v1/executions/{id}"),
                Some(admin),
                None,
            );
            assert_eq!(status, 200, "execution {id} was lost: {body}");
            (id.clone(), body)
        })
        .collect()
}

/// An action's record in an execution document, if it has one.
fn action_record<'a>(execution: &'a Value, action: &str) -> Option<&'a Value> {
    execution["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["action"] == action)
}

fn action_status<'a>(execution: &'a Value, action: &str) -> &'a str {
    action_record(execution, action)
        .and_then(|a| a["status"].as_str())
        .unwrap_or("none")
}

/// Every execution Succeeded, every stage and action too, each action in
/// one attempt, and each stage started after the one before it ended.
fn assert_all_succeeded(finals: &HashMap<String, Value>) {
    for (id, execution) in finals {
        assert_eq!(
            execution["execution"]["status"], "Succeeded",
            "{id}: {execution:#}"
        );
        let mut previous_end = 0;
        for (stage, actions) in STAGES {
            let record = execution["stages"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["stage"] == stage)
                .unwrap_or_else(|| panic!("{id}: no stage {stage}: {execution:#}"));
            assert_eq!(record["status"], "Succeeded", "{id}: {execution:#}");
            assert!(
                record["started_ms"].as_i64().unwrap() >= previous_end,
                "{id}: stage {stage} started before the previous stage ended: {execution:#}"
            );
            for action in actions {
                let run = action_record(execution, action)
                    .unwrap_or_else(|| panic!("{id}: no action {action}: {execution:#}"));
                assert_eq!(run["status"], "Succeeded", "{id}: {execution:#}");
                assert_eq!(run["attempts"], 1, "{id}: {execution:#}");
                assert!(
                    run["started_ms"].as_i64().unwrap() >= previous_end,
                    "{id}: {action} started before stage {stage} was entered: {execution:#}"
                );
            }
            previous_end = record["ended_ms"].as_i64().unwrap();
        }
    }
}

/// Check each action's runs against what each dead server had recorded:
/// `at_kills[k]` is the state when life `k + 1` was killed.
fn assert_runs_match_records(
    runs: &[Run],
    at_kills: &[HashMap<String, Value>],
    finals: &HashMap<String, Value>,
) {
    let mut by_action: BTreeMap<(&str, &str), Vec<usize>> = BTreeMap::new();
    for run in runs {
        by_action
            .entry((&run.execution, &run.action))
            .or_default()
            .push(run.life);
    }
    for (id, execution) in finals {
        for action in LEDGER_ACTIONS {
            let mut lives = by_action.remove(&(id, action)).unwrap_or_default();
            lives.sort();
            let context = || format!("{id}/{action} ran in lives {lives:?}");
            let mut distinct = lives.clone();
            distinct.dedup();
            assert_eq!(distinct, lives, "ran twice in one life: {}", context());
            // The life that recorded it Succeeded ran it, and no later life did.
            let succeeded_in = at_kills
                .iter()
                .position(|recorded| action_status(&recorded[id], action) == "Succeeded")
                .map_or(at_kills.len() + 1, |kill| kill + 1);
            assert!(lives.contains(&succeeded_in), "{}", context());
            assert!(
                lives.iter().all(|life| *life <= succeeded_in),
                "rerun after it was recorded Succeeded: {}",
                context()
            );
            // A run is recorded as started before it runs.
            for life in &lives {
                if let Some(recorded) = at_kills.get(life - 1) {
                    assert_ne!(
                        action_status(&recorded[id], action),
                        "none",
                        "ran without a record: {}",
                        context()
                    );
                }
            }
        }
        // What was recorded Succeeded (the Wasm action too) is kept as it was.
        for recorded in at_kills {
            for (_, actions) in STAGES {
                for action in actions {
                    let before = action_record(&recorded[id], action);
                    if before.is_some_and(|a| a["status"] == "Succeeded") {
                        let after = action_record(execution, action).unwrap();
                        assert_eq!(
                            (&before.unwrap()["started_ms"], &before.unwrap()["ended_ms"]),
                            (&after["started_ms"], &after["ended_ms"]),
                            "{id}/{action} was recorded Succeeded, then again"
                        );
                    }
                }
            }
        }
    }
    assert!(
        by_action.is_empty(),
        "runs of unknown executions: {by_action:?}"
    );
}

/// One stored state change: (sequence number, kind, name, state).
type Event = (i64, String, String, String);

/// Every stored event of the pipeline, by execution, from the event stream
/// (`GET /api/v1/events?after=0`), read until each execution's final
/// pipeline event or until the stream is quiet for a while.
fn events_by_execution(server: &Server, admin: &str) -> HashMap<String, Vec<Event>> {
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET /api/v1/events?after=0&pipeline=crash HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\n\r\n"
    )
    .unwrap();
    let mut events: HashMap<String, Vec<Event>> = HashMap::new();
    let mut ended = 0;
    // A stream that stops short ends in a read timeout: the assertions on
    // what arrived say what is missing.
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        let data: Value = serde_json::from_str(data.trim()).unwrap();
        let field = |name: &str| data[name].as_str().unwrap().to_string();
        let (kind, state) = (field("kind"), field("state"));
        if kind == "pipeline" && !matches!(state.as_str(), "STARTED" | "RESUMED") {
            ended += 1;
        }
        events.entry(field("execution")).or_default().push((
            data["seq"].as_i64().unwrap(),
            kind,
            field("name"),
            state,
        ));
        if ended == EXECUTIONS {
            break;
        }
    }
    events
}

/// Each execution's events: ids strictly increasing; started once and ended
/// once as Succeeded; each stage and action succeeded exactly once, never
/// started again after that, and never started before the previous stage
/// succeeded; no state change repeated within one server life.
fn assert_events_tell_each_story_once(
    events: &HashMap<String, Vec<Event>>,
    ids: &[String],
    kills: usize,
) {
    for id in ids {
        let events = events.get(id).map(Vec::as_slice).unwrap_or_default();
        let story: Vec<String> = events
            .iter()
            .map(|(seq, kind, name, state)| format!("{seq} {kind} {name} {state}"))
            .collect();
        let context = || format!("execution {id}:\n{}", story.join("\n"));
        assert!(
            events.windows(2).all(|w| w[0].0 < w[1].0),
            "ids not increasing: {}",
            context()
        );
        let position = |kind: &str, name: &str, state: &str| -> Vec<usize> {
            events
                .iter()
                .enumerate()
                .filter(|(_, (_, k, n, s))| k == kind && n == name && s == state)
                .map(|(i, _)| i)
                .collect()
        };
        let pipeline = |state: &str| position("pipeline", "crash", state);
        assert_eq!(pipeline("STARTED"), [0], "{}", context());
        assert_eq!(pipeline("SUCCEEDED"), [events.len() - 1], "{}", context());
        let resumed = pipeline("RESUMED");
        assert!(resumed.len() <= kills, "{}", context());
        // A life is the run of events between two RESUMED.
        let life_of = |index: usize| resumed.iter().filter(|r| **r < index).count();
        let mut seen = std::collections::HashSet::new();
        for (index, (_, kind, name, state)) in events.iter().enumerate() {
            assert!(
                seen.insert((life_of(index), kind, name, state)),
                "repeated within one life: {index}: {}",
                context()
            );
        }
        let mut previous_stage_done: Option<usize> = None;
        for (stage, actions) in STAGES {
            let stage_done = position("stage", stage, "SUCCEEDED");
            assert_eq!(stage_done.len(), 1, "stage {stage}: {}", context());
            let stage_done = stage_done[0];
            for action in actions {
                let done = position("action", action, "SUCCEEDED");
                assert_eq!(done.len(), 1, "action {action}: {}", context());
                let started = position("action", action, "STARTED");
                assert!(
                    started
                        .iter()
                        .any(|s| *s < done[0] && life_of(*s) == life_of(done[0])),
                    "{action} succeeded without starting in that life: {}",
                    context()
                );
                assert!(
                    started.iter().all(|s| *s < done[0]),
                    "{action} started again after it succeeded: {}",
                    context()
                );
                assert!(done[0] < stage_done, "{action}: {}", context());
                if let Some(previous) = previous_stage_done {
                    assert!(
                        started.iter().all(|s| *s > previous),
                        "{action} started before the previous stage succeeded: {}",
                        context()
                    );
                }
            }
            previous_stage_done = Some(stage_done);
        }
    }
}

/// Start the executions, kill the server after each threshold of ledger
/// runs and restart it, then check everything.
fn crash_and_recover(kill_thresholds: &[usize]) {
    crash_and_recover_on(kill_thresholds, None);
}

/// [`crash_and_recover`] with every process (server and CLI) on `database`.
fn crash_and_recover_on(kill_thresholds: &[usize], database: Option<&str>) -> Workspace {
    let mut workspace = Workspace::new();
    if let Some(url) = database {
        workspace.env("SLUICE_DATABASE", url);
    }
    let admin = token(&workspace, &["--role", "admin"]);
    let ledger = Ledger::start();
    let mut server = start_server(&mut workspace, 1);
    let ids = start_executions(&server, &admin, &ledger);
    let mut at_kills = Vec::new();
    for (kill, threshold) in kill_thresholds.iter().enumerate() {
        at_kills.push(kill_after(
            &mut server,
            &workspace,
            &ledger,
            *threshold,
            &ids,
        ));
        server = start_server(&mut workspace, kill + 2);
    }
    let finals = wait_for_all(&server, &admin, &ids);
    assert_all_succeeded(&finals);
    assert_runs_match_records(&ledger.runs(), &at_kills, &finals);
    let events = events_by_execution(&server, &admin);
    assert_events_tell_each_story_once(&events, &ids, kill_thresholds.len());
    workspace
}

#[test]
fn a_server_killed_under_many_executions_loses_repeats_and_reorders_nothing() {
    // 80 ledger runs in all; the kill comes a quarter of the way through.
    crash_and_recover(&[EXECUTIONS]);
}

#[test]
fn a_server_killed_twice_in_a_row_still_runs_everything_once() {
    crash_and_recover(&[EXECUTIONS / 2, EXECUTIONS * 2]);
}

#[test]
fn a_server_on_postgresql_killed_under_many_executions_loses_repeats_and_reorders_nothing() {
    let schema = crate::harness::PostgresSchema::new();
    let workspace = crash_and_recover_on(&[EXECUTIONS], Some(&schema.url));
    assert_eq!(schema.count("executions"), EXECUTIONS as i64);
    assert!(
        !workspace.path(".sluice/state.db").exists(),
        "nothing may fall back to SQLite"
    );
}
