//! Scale-out: one `sluice serve --actions workers` and two `sluice worker`
//! processes, each with its own data directory and an empty plugin registry
//! (as on other machines), on one PostgreSQL schema and one S3 bucket (moto's
//! server). Outputs go through the bucket from the worker that made them to
//! the worker that reads them; a worker killed with `kill -9` mid-action has
//! its attempt finished once by the other; a server killed mid-flight and
//! restarted waits on the attempts already queued instead of running them
//! again; live event streams miss nothing.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{PostgresSchema, S3Bucket, Workspace, eventually, packaged_plugins, text};
use crate::server::{Server, token, wait_for_end};

/// Build writes a file naming the execution (after an optional pause); Check,
/// in the next stage and so on whichever worker claims it, reads it from its
/// input artifact.
const HANDOFF: &str = r#"
[pipeline]
name = "handoff"
execution-mode = "parallel"
max-executions = 100
[variables]
pause = { default = "0" }
[[stages]]
name = "Build"
[[stages.actions]]
name = "build"
plugin = "command@0.1"
outputs = ["bin"]
config = { script = "mkdir -p out; echo built #{execution.id} > out/app.txt; sleep #{variables.pause}", outputs = "bin=out/**" }
grants = { commands = ["sh", "mkdir", "echo", "sleep"] }
[[stages]]
name = "Check"
[[stages.actions]]
name = "check"
plugin = "command@0.1"
inputs = ["bin"]
config = { run = "cat out/app.txt" }
grants = { commands = ["cat"] }
"#;

/// A PostgreSQL schema and an S3 bucket, with the server's workspace on
/// them: `command` installed there and shared through the bucket (the
/// workers' registries are empty: they pull it by digest).
struct Cluster {
    schema: PostgresSchema,
    _bucket: S3Bucket,
    /// What points a process at the schema and the bucket.
    envs: Vec<(String, String)>,
    workspace: Workspace,
}

impl Cluster {
    fn new() -> Self {
        let schema = PostgresSchema::new();
        let bucket = S3Bucket::start();
        let mut envs = bucket.env();
        envs.push(("SLUICE_DATABASE".into(), schema.url.clone()));
        let mut workspace = Workspace::with_private_registry();
        for (key, value) in &envs {
            workspace.env(key, value);
        }
        let command = packaged_plugins().join("command");
        let output = workspace.sluice(&["plugin", "install", "--yes", command.to_str().unwrap()]);
        assert!(output.status.success(), "{}", text(&output));
        assert!(
            text(&output).contains("shared through s3://"),
            "{}",
            text(&output)
        );
        Self {
            schema,
            _bucket: bucket,
            envs,
            workspace,
        }
    }
}

/// A running `sluice worker`, killed when dropped.
struct WorkerProcess {
    child: Child,
    id: String,
    /// The worker's data directory and registry (its log is `worker.log`).
    home: Workspace,
}

impl WorkerProcess {
    /// A worker with a data directory and an empty registry of its own.
    fn start(envs: &[(String, String)]) -> Self {
        let mut home = Workspace::with_private_registry();
        for (key, value) in envs {
            home.env(key, value);
        }
        let mut child = home
            .command(&["worker", "--lease", "2s"])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(home.path("worker.log")).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let id = line
            .trim()
            .strip_prefix("worker ")
            .and_then(|rest| rest.strip_suffix(" ready"))
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_string();
        Self { child, id, home }
    }

    /// Send a signal (`STOP`, `CONT`, …) to the worker process.
    fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args(["-s", name, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -s {name}");
    }

    fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A live stream of the pipeline's events, read on its own thread until
/// the server goes away: the sequence numbers it carried.
fn subscribe(server: &Server, admin: &str) -> std::thread::JoinHandle<Vec<i64>> {
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    write!(
        stream,
        "GET /api/v1/events?pipeline=handoff HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\n\r\n"
    )
    .unwrap();
    std::thread::spawn(move || {
        BufReader::new(stream)
            .lines()
            .map_while(Result::ok)
            .filter_map(|line| {
                let event: Value = serde_json::from_str(line.strip_prefix("data:")?.trim()).ok()?;
                event["seq"].as_i64()
            })
            .collect()
    })
}

/// Every stored event of the pipeline: (seq, execution, kind, name, state).
fn stored_events(server: &Server, admin: &str) -> Vec<(i64, String, String)> {
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    write!(
        stream,
        "GET /api/v1/events?after=0&pipeline=handoff HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\n\r\n"
    )
    .unwrap();
    BufReader::new(stream)
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| {
            let event: Value = serde_json::from_str(line.strip_prefix("data:")?.trim()).ok()?;
            let field = |name: &str| event[name].as_str().unwrap_or_default().to_string();
            let what = format!("{} {} {}", field("kind"), field("name"), field("state"));
            Some((event["seq"].as_i64()?, field("execution"), what))
        })
        .collect()
}

/// Register the `handoff` pipeline through `server`.
fn register_handoff(server: &Server, admin: &str) {
    let (status, body) = server.call(
        "PUT",
        "/api/v1/pipelines/handoff",
        Some(admin),
        Some(HANDOFF),
    );
    assert_eq!(status, 201, "{body}");
}

fn start(server: &Server, admin: &str, pause: u32) -> String {
    let (status, body) = server.call(
        "POST",
        "/api/v1/pipelines/handoff/executions",
        Some(admin),
        Some(&format!(r#"{{"variables": {{"pause": "{pause}"}}}}"#)),
    );
    assert_eq!(status, 202, "{body}");
    body["id"].as_str().unwrap().to_string()
}

/// The execution succeeded, and Check read what Build wrote for it.
fn assert_handed_off(server: &Server, admin: &str, id: &str) {
    let done = wait_for_end(server, admin, id);
    assert_eq!(done["execution"]["status"], "Succeeded", "{done:#}");
    let (status, logs) = server.call(
        "GET",
        &format!("/api/v1/executions/{id}/logs?action=check"),
        Some(admin),
        None,
    );
    assert_eq!(status, 200, "{logs}");
    assert!(
        logs.to_string().contains(&format!("built {id}")),
        "check did not read build's output: {logs}"
    );
}

/// (worker, fence, state) of each queued attempt of `execution`'s `action`.
fn attempts(schema: &PostgresSchema, execution: &str, action: &str) -> Vec<(String, i64, String)> {
    schema
        .rows(
            "SELECT COALESCE(worker, ''), fence, state FROM attempts WHERE execution_id = $1 AND key LIKE $2",
            &[&execution, &format!("{execution}/{action}/%")],
        )
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect()
}

/// The worker that claimed `execution`'s `action` and runs it now.
fn claimant(schema: &PostgresSchema, execution: &str, action: &str) -> String {
    let mut holder = String::new();
    let claimed = eventually(60, || {
        holder = attempts(schema, execution, action)
            .into_iter()
            .find(|(_, _, state)| state == "running")
            .map(|(worker, _, _)| worker)
            .unwrap_or_default();
        !holder.is_empty()
    });
    assert!(claimed, "no worker claimed {action} of {execution}");
    holder
}

/// Assert that each action of `execution` ran once (one attempt row, fence 1,
/// done); the workers that ran them.
fn ran_once(schema: &PostgresSchema, execution: &str) -> Vec<String> {
    ["build", "check"]
        .into_iter()
        .map(|action| {
            let rows = attempts(schema, execution, action);
            assert_eq!(rows.len(), 1, "{rows:?}");
            assert_eq!(
                (rows[0].1, rows[0].2.as_str()),
                (1, "done"),
                "{action} of {execution} ran twice or was taken over: {rows:?}"
            );
            rows[0].0.clone()
        })
        .collect()
}

#[test]
fn a_server_and_two_workers_on_postgres_and_s3_run_each_attempt_once_through_kills() {
    let Cluster {
        schema,
        _bucket,
        envs,
        workspace,
    } = Cluster::new();
    let admin = token(&workspace, &["--role", "admin"]);
    let mut server = Server::start_with(&workspace, &["--actions", "workers", "--lease", "3s"]);
    let mut workers = [WorkerProcess::start(&envs), WorkerProcess::start(&envs)];
    register_handoff(&server, &admin);
    let streams = [subscribe(&server, &admin), subscribe(&server, &admin)];
    std::thread::sleep(Duration::from_millis(300));

    // Many executions: every one hands its artifact over through the bucket.
    let many: Vec<String> = (0..12).map(|_| start(&server, &admin, 0)).collect();
    for id in &many {
        assert_handed_off(&server, &admin, id);
    }
    let ran_on: BTreeSet<String> = many.iter().flat_map(|id| ran_once(&schema, id)).collect();
    let ids: BTreeSet<String> = workers.iter().map(|w| w.id.clone()).collect();
    assert!(ran_on.is_subset(&ids), "{ran_on:?} not in {ids:?}");

    // kill -9 the worker running an action: the other finishes it, once.
    let slow = start(&server, &admin, 4);
    let holder = claimant(&schema, &slow, "build");
    let victim = workers.iter_mut().find(|w| w.id == holder).unwrap();
    victim.kill9();
    assert_handed_off(&server, &admin, &slow);
    let build = attempts(&schema, &slow, "build");
    assert_eq!(build.len(), 1, "{build:?}");
    let (worker, fence, state) = &build[0];
    assert_eq!((*fence, state.as_str()), (2, "done"), "{build:?}");
    assert_ne!(worker, &holder, "the killed worker's result was recorded");
    let (_, detail) = server.call(
        "GET",
        &format!("/api/v1/executions/{slow}"),
        Some(&admin),
        None,
    );
    let recorded = &detail["actions"][0];
    assert_eq!(
        (recorded["action"].as_str(), recorded["attempts"].as_i64()),
        (Some("build"), Some(1)),
        "{detail:#}"
    );
    let survivor = workers.iter().position(|w| w.id != holder).unwrap();
    workers[1 - survivor] = WorkerProcess::start(&envs);

    // A worker paused past its lease (SIGSTOP) loses the attempt to the
    // other; woken, it records nothing: the fence refuses it.
    let paused = start(&server, &admin, 4);
    let holder = claimant(&schema, &paused, "build");
    let sleeper = workers.iter().find(|w| w.id == holder).unwrap();
    sleeper.signal("STOP");
    assert_handed_off(&server, &admin, &paused);
    sleeper.signal("CONT");
    std::thread::sleep(Duration::from_secs(6));
    let build = attempts(&schema, &paused, "build");
    assert_eq!(build.len(), 1, "{build:?}");
    assert_eq!((build[0].1, build[0].2.as_str()), (2, "done"), "{build:?}");
    assert_ne!(
        build[0].0, holder,
        "the paused worker's result was recorded"
    );
    let log = std::fs::read_to_string(sleeper.home.path("worker.log")).unwrap();
    assert!(
        log.contains("lost the claim") || log.contains("came too late"),
        "the woken worker did not notice it lost the attempt:\n{log}"
    );

    // kill -9 the server mid-flight; the restarted one waits on the queued
    // attempts: each runs once, and every execution ends.
    let inflight: Vec<String> = (0..4).map(|_| start(&server, &admin, 2)).collect();
    assert!(
        eventually(60, || inflight
            .iter()
            .all(|id| !attempts(&schema, id, "build").is_empty())),
        "the builds were never queued"
    );
    server.kill9();
    let seen: Vec<Vec<i64>> = streams.into_iter().map(|s| s.join().unwrap()).collect();
    let server = Server::start_with(&workspace, &["--actions", "workers", "--lease", "3s"]);
    for id in &inflight {
        assert_handed_off(&server, &admin, id);
        ran_once(&schema, id);
    }

    // Each live stream carried every stored event of its lifetime, in order.
    let stored = stored_events(&server, &admin);
    for events in &seen {
        assert!(!events.is_empty());
        let (first, last) = (events[0], *events.last().unwrap());
        let expected: Vec<i64> = stored
            .iter()
            .map(|(seq, _, _)| *seq)
            .filter(|seq| (first..=last).contains(seq))
            .collect();
        assert_eq!(
            events, &expected,
            "a live stream skipped or reordered events"
        );
        for id in many.iter().chain([&slow]) {
            let ended = stored
                .iter()
                .filter(|(seq, execution, what)| {
                    execution == id
                        && what.ends_with("SUCCEEDED")
                        && what.starts_with("pipeline")
                        && events.contains(seq)
                })
                .count();
            assert_eq!(ended, 1, "the stream missed the end of {id}");
        }
    }
}

/// Whether a process whose command line contains `pattern` runs.
fn running_process(pattern: &str) -> bool {
    std::process::Command::new("pgrep")
        .args(["-f", pattern])
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn stopping_an_execution_withdraws_its_attempt_and_the_worker_kills_the_command() {
    let Cluster {
        schema,
        _bucket,
        envs,
        workspace,
    } = Cluster::new();
    let admin = token(&workspace, &["--role", "admin"]);
    let server = Server::start_with(&workspace, &["--actions", "workers"]);
    let worker = WorkerProcess::start(&envs);
    register_handoff(&server, &admin);
    // A duration no other process uses, to find the command by.
    let nap = format!(
        "{}.{}",
        40 + std::process::id() % 50,
        std::process::id() % 997
    );
    let id = {
        let (status, body) = server.call(
            "POST",
            "/api/v1/pipelines/handoff/executions",
            Some(&admin),
            Some(&format!(r#"{{"variables": {{"pause": "{nap}"}}}}"#)),
        );
        assert_eq!(status, 202, "{body}");
        body["id"].as_str().unwrap().to_string()
    };
    let pattern = format!("sleep {nap}");
    assert!(
        eventually(60, || running_process(&pattern)),
        "the worker never ran the command"
    );
    let (status, body) = server.call(
        "POST",
        &format!("/api/v1/executions/{id}/stop"),
        Some(&admin),
        Some(r#"{"mode": "abandon"}"#),
    );
    assert_eq!(status, 202, "{body}");
    let stopped = wait_for_end(&server, &admin, &id);
    assert_eq!(stopped["execution"]["status"], "Stopped", "{stopped:#}");
    let rows = attempts(&schema, &id, "build");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].2, "cancelled", "{rows:?}");
    assert!(
        eventually(30, || !running_process(&pattern)),
        "the worker left the command running after the execution stopped"
    );
    let log = std::fs::read_to_string(worker.home.path("worker.log")).unwrap();
    assert!(log.contains("lost the claim"), "{log}");
    // The worker is free again: the next execution runs to its end.
    let next = start(&server, &admin, 0);
    assert_handed_off(&server, &admin, &next);

    // A cache is a directory of the machine that runs the action: the
    // worker's, whatever path the server resolved `#{cache.data}` to.
    let (status, body) = server.call(
        "PUT",
        "/api/v1/pipelines/cached",
        Some(&admin),
        Some(CACHED),
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = server.call(
        "POST",
        "/api/v1/pipelines/cached/executions",
        Some(&admin),
        None,
    );
    assert_eq!(status, 202, "{body}");
    let done = wait_for_end(&server, &admin, body["id"].as_str().unwrap());
    assert_eq!(done["execution"]["status"], "Succeeded", "{done:#}");
    let kept = worker.home.path(".sluice/caches/cached/data/log");
    assert_eq!(
        std::fs::read_to_string(&kept).unwrap_or_default(),
        "warm\n",
        "{done:#}"
    );
    assert!(
        !workspace.path(".sluice/caches/cached").exists(),
        "the server's cache was used"
    );
}

/// One action writing into a cache.
const CACHED: &str = r#"
[pipeline]
name = "cached"
[caches]
data = {}
[[stages]]
name = "Build"
[[stages.actions]]
name = "build"
plugin = "command@0.1"
config = { run = "sh -c 'echo warm >> $CACHE/log'", env = "CACHE=#{cache.data}" }
grants = { commands = ["sh"], caches = ["data"] }
"#;

/// Where Debian's `faketime` package puts libfaketime, which moves the wall
/// clock of a process it is preloaded into (`.ci/run` installs it).
fn libfaketime() -> std::path::PathBuf {
    let lib = std::fs::read_dir("/usr/lib")
        .unwrap()
        .filter_map(Result::ok)
        .map(|arch| arch.path().join("faketime/libfaketime.so.1"))
        .find(|lib| lib.exists());
    lib.expect("libfaketime is missing: install Debian's `faketime` package")
}

/// `envs`, plus what sets a process's wall clock `offset` away (`-1h`,
/// `+1h`) from the real one. Its monotonic clock stays as it is.
fn clock_off_by(envs: &[(String, String)], offset: &str) -> Vec<(String, String)> {
    let mut envs = envs.to_vec();
    envs.extend([
        ("LD_PRELOAD".into(), libfaketime().display().to_string()),
        ("FAKETIME".into(), offset.into()),
        ("DONT_FAKE_MONOTONIC".into(), "1".into()),
    ]);
    envs
}

/// Machines' clocks disagree. A worker whose clock is an hour behind would
/// record claims that every other worker sees as run out at once (and take
/// over while it still runs the action); one an hour ahead would hold a claim
/// for an hour after it died. Claims are timed by the database's clock.
#[test]
fn workers_whose_clocks_are_an_hour_off_time_their_claims_by_the_databases_clock() {
    let Cluster {
        schema,
        _bucket,
        envs,
        workspace,
    } = Cluster::new();
    let admin = token(&workspace, &["--role", "admin"]);
    let server = Server::start_with(&workspace, &["--actions", "workers", "--lease", "3s"]);
    register_handoff(&server, &admin);

    // Behind: its claim holds while it runs, with a punctual worker waiting.
    // (moto does not check request times, so S3 requests signed with a
    // clock an hour off pass; real S3 allows 15 minutes.)
    let mut behind = WorkerProcess::start(&clock_off_by(&envs, "-1h"));
    let first = start(&server, &admin, 6);
    assert_eq!(claimant(&schema, &first, "build"), behind.id);
    let mut punctual = WorkerProcess::start(&envs);
    assert_eq!(
        attempts(&schema, &first, "build")[0].2,
        "running",
        "the build ended before the punctual worker was ready: nothing was checked"
    );
    assert_handed_off(&server, &admin, &first);
    assert_eq!(
        attempts(&schema, &first, "build"),
        [(behind.id.clone(), 1, "done".to_string())],
        "the punctual worker took over the live claim of the one behind"
    );

    // Ahead: killed mid-action, its claim runs out after the lease, not an
    // hour later, and a punctual worker finishes the action once.
    behind.kill9();
    punctual.kill9();
    let mut ahead = WorkerProcess::start(&clock_off_by(&envs, "+1h"));
    let second = start(&server, &admin, 4);
    assert_eq!(claimant(&schema, &second, "build"), ahead.id);
    ahead.kill9();
    let rescuer = WorkerProcess::start(&envs);
    assert_handed_off(&server, &admin, &second);
    assert_eq!(
        attempts(&schema, &second, "build"),
        [(rescuer.id.clone(), 2, "done".to_string())],
        "the dead worker's claim was not taken over after its lease"
    );

    // Many at once, with workers an hour behind, an hour ahead and on time
    // claiming side by side: every attempt runs once, none is taken over.
    let skewed = [
        WorkerProcess::start(&clock_off_by(&envs, "-1h")),
        WorkerProcess::start(&clock_off_by(&envs, "+1h")),
    ];
    let many: Vec<String> = (0..12).map(|_| start(&server, &admin, 1)).collect();
    let mut ran_on = BTreeSet::new();
    for id in &many {
        assert_handed_off(&server, &admin, id);
        ran_on.extend(ran_once(&schema, id));
    }
    assert!(
        ran_on.contains(&skewed[0].id),
        "the worker an hour behind ran nothing, so nothing was checked: {ran_on:?}"
    );
}

/// A server on the cluster's database with its wall clock `offset` away,
/// running actions itself and logging to `log` in the workspace.
fn server_with_clock(workspace: &Workspace, offset: &str, log: &str) -> Server {
    let skewed = clock_off_by(&[], offset);
    let envs: Vec<(&str, &str)> = skewed
        .iter()
        .map(|(key, value)| (key.as_str(), value.as_str()))
        .collect();
    Server::start_logging(workspace, &["--lease", "3s"], &envs, log)
}

/// The same for execution leases between servers: one an hour behind keeps
/// the execution it runs while a punctual one looks for executions to take
/// over; one an hour ahead that dies has its execution taken over after the
/// lease, not an hour later.
#[test]
fn servers_whose_clocks_are_an_hour_off_time_their_leases_by_the_databases_clock() {
    let Cluster {
        schema: _schema,
        _bucket,
        envs: _,
        workspace,
    } = Cluster::new();
    let admin = token(&workspace, &["--role", "admin"]);
    let punctual = Server::start_logging(&workspace, &["--lease", "3s"], &[], "punctual.log");
    register_handoff(&punctual, &admin);

    let mut behind = server_with_clock(&workspace, "-1h", "behind.log");
    let first = start(&behind, &admin, 4);
    assert_handed_off(&behind, &admin, &first);
    let (_, detail) = behind.call(
        "GET",
        &format!("/api/v1/executions/{first}"),
        Some(&admin),
        None,
    );
    assert_eq!(detail["actions"][0]["attempts"], 1, "{detail:#}");
    let read = |log: &str| std::fs::read_to_string(workspace.path(log)).unwrap();
    assert!(
        !read("punctual.log").contains(&first),
        "the punctual server took over the execution of the one behind:\n{}",
        read("punctual.log")
    );
    assert!(
        !read("behind.log").contains("lost the lease"),
        "{}",
        read("behind.log")
    );

    behind.kill9();
    let mut ahead = server_with_clock(&workspace, "+1h", "ahead.log");
    let second = start(&ahead, &admin, 4);
    assert!(
        eventually(30, || {
            let (_, detail) = ahead.call(
                "GET",
                &format!("/api/v1/executions/{second}"),
                Some(&admin),
                None,
            );
            detail["actions"][0]["status"] == "InProgress"
        }),
        "the build never started"
    );
    ahead.kill9();
    // wait_for_end gives up after 30 s: an hour-long lease fails it.
    assert_handed_off(&punctual, &admin, &second);
    assert!(
        read("punctual.log").contains(&second),
        "the punctual server did not say it took the execution over"
    );
}
