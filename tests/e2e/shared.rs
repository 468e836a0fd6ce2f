//! Two `sluice serve` processes on one PostgreSQL database: a cron fire starts
//! one execution whichever server sees it first, and an event stream on either
//! server carries the executions the other one ran.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{PostgresSchema, Workspace, eventually};
use crate::server::{Server, token, wait_for_end};

const TICKING: &str = r#"
[pipeline]
name = "ticking"
execution-mode = "parallel"
max-executions = 100
[triggers]
cron = ["* * * * * *"]
[[stages]]
name = "Say"
[[stages.actions]]
name = "say"
plugin = "command@0.1"
config = { run = "echo fired for #{trigger.scheduled}" }
grants = { commands = ["echo"] }
"#;

/// A live event stream (`GET /events` from now on) read on its own thread:
/// the pipeline events it carried, as (execution, state), once it goes quiet.
fn subscribe(server: &Server, admin: &str) -> std::thread::JoinHandle<Vec<(String, String)>> {
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(6)))
        .unwrap();
    write!(
        stream,
        "GET /api/v1/events?pipeline=ticking HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\n\r\n"
    )
    .unwrap();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        // Keep-alives come every 15 s: six quiet seconds end the reading.
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let Some(data) = line.strip_prefix("data:") else {
                continue;
            };
            let event: Value = serde_json::from_str(data.trim()).unwrap();
            if event["kind"] == "pipeline" {
                let field = |name: &str| event[name].as_str().unwrap().to_string();
                seen.push((field("execution"), field("state")));
            }
        }
        seen
    })
}

fn executions(server: &Server, admin: &str) -> Vec<Value> {
    let (status, listed) = server.call(
        "GET",
        "/api/v1/executions?pipeline=ticking&limit=500",
        Some(admin),
        None,
    );
    assert_eq!(status, 200, "{listed}");
    listed["executions"].as_array().unwrap().clone()
}

#[test]
fn servers_sharing_a_database_fire_each_cron_tick_once_and_stream_each_others_events() {
    let schema = PostgresSchema::new();
    let mut workspace = Workspace::new();
    workspace.env("SLUICE_DATABASE", &schema.url);
    let admin = token(&workspace, &["--role", "admin"]);
    let first = Server::start(&workspace);
    let second = Server::start(&workspace);
    let streams = [subscribe(&first, &admin), subscribe(&second, &admin)];
    std::thread::sleep(Duration::from_millis(500));

    let (status, body) = first.call(
        "PUT",
        "/api/v1/pipelines/ticking",
        Some(&admin),
        Some(TICKING),
    );
    assert_eq!(status, 201, "{body}");
    assert!(
        eventually(60, || executions(&second, &admin).len() >= 4),
        "the schedule fired fewer than 4 times"
    );
    let (status, body) = second.call("DELETE", "/api/v1/pipelines/ticking", Some(&admin), None);
    assert_eq!(status, 204, "{body}");
    // A fire claimed just before the delete may still start: settle first.
    std::thread::sleep(Duration::from_secs(2));
    let all = executions(&first, &admin);
    let mut by_fire: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for execution in &all {
        let id = execution["id"].as_str().unwrap().to_string();
        let done = wait_for_end(&first, &admin, &id);
        assert_eq!(done["execution"]["status"], "Succeeded", "{done:#}");
        let fire = execution["trigger"]["scheduled"].as_str().unwrap();
        by_fire.entry(fire.to_string()).or_default().push(id);
    }
    let repeated: Vec<_> = by_fire.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(repeated.is_empty(), "fires started twice: {repeated:?}");

    let ids: BTreeSet<String> = all
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    for (server, stream) in ["first", "second"].into_iter().zip(streams) {
        let seen = stream.join().unwrap();
        let ended: BTreeSet<String> = seen
            .iter()
            .filter(|(_, state)| state == "SUCCEEDED")
            .map(|(id, _)| id.clone())
            .collect();
        assert_eq!(ended, ids, "the {server} server's stream: {seen:?}");
        let started = seen.iter().filter(|(_, state)| state == "STARTED").count();
        assert_eq!(started, ids.len(), "the {server} server's stream: {seen:?}");
    }
}

const SLOW: &str = r#"
[pipeline]
name = "slow"
execution-mode = "parallel"
[[stages]]
name = "Work"
[[stages.actions]]
name = "work"
plugin = "command@0.1"
config = { script = "sleep 4; echo done", shell = "bash" }
grants = { commands = ["bash", "sleep", "echo"] }
"#;

/// The stored events of one execution, as `kind name STATE`.
fn stored_events(server: &Server, admin: &str, id: &str) -> Vec<String> {
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    write!(
        stream,
        "GET /api/v1/events?after=0&execution={id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\n\r\n"
    )
    .unwrap();
    BufReader::new(stream)
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| {
            let event: Value = serde_json::from_str(line.strip_prefix("data:")?.trim()).ok()?;
            let field = |name: &str| event[name].as_str().unwrap_or_default().to_string();
            Some(format!(
                "{} {} {}",
                field("kind"),
                field("name"),
                field("state")
            ))
        })
        .collect()
}

/// The `slow` pipeline with `script` as its action's.
fn slow(script: &str) -> String {
    SLOW.replace("sleep 4; echo done", script)
}

/// Two servers on one PostgreSQL schema with leases of `lease`, `pipeline`
/// (one named `slow`) registered.
struct TwoServers {
    _schema: PostgresSchema,
    _workspace: Workspace,
    admin: String,
    first: Server,
    second: Server,
}

impl TwoServers {
    fn new(lease: &str, pipeline: &str) -> Self {
        let schema = PostgresSchema::new();
        let mut workspace = Workspace::new();
        workspace.env("SLUICE_DATABASE", &schema.url);
        let admin = token(&workspace, &["--role", "admin"]);
        let first = Server::start_with(&workspace, &["--lease", lease]);
        let second = Server::start_with(&workspace, &["--lease", lease]);
        let (status, body) = first.call(
            "PUT",
            "/api/v1/pipelines/slow",
            Some(&admin),
            Some(pipeline),
        );
        assert_eq!(status, 201, "{body}");
        Self {
            _schema: schema,
            _workspace: workspace,
            admin,
            first,
            second,
        }
    }
}

/// Wait until the first action of `id` runs, as `server` sees it.
fn wait_running(server: &Server, admin: &str, id: &str) {
    let running = eventually(30, || {
        let (_, detail) = server.call(
            "GET",
            &format!("/api/v1/executions/{id}"),
            Some(admin),
            None,
        );
        detail["actions"][0]["status"] == "InProgress"
    });
    assert!(running, "the action of {id} never started");
}

fn start(server: &Server, admin: &str) -> String {
    let (status, body) = server.call(
        "POST",
        "/api/v1/pipelines/slow/executions",
        Some(admin),
        None,
    );
    assert_eq!(status, 202, "{body}");
    body["id"].as_str().unwrap().to_string()
}

#[test]
fn a_live_server_keeps_its_executions_and_a_dead_ones_are_taken_over_once() {
    // Leases of 2 s against an action of 4 s: only renewing keeps them.
    let TwoServers {
        _schema,
        _workspace,
        admin,
        mut first,
        second,
    } = TwoServers::new("2s", &slow("sleep 4; echo done"));

    let kept = start(&first, &admin);
    let done = wait_for_end(&second, &admin, &kept);
    assert_eq!(done["execution"]["status"], "Succeeded", "{done:#}");
    let events = stored_events(&second, &admin, &kept);
    assert!(
        !events.iter().any(|e| e.ends_with("RESUMED")),
        "the other server took a live server's execution: {events:?}"
    );

    let orphan = start(&first, &admin);
    wait_running(&second, &admin, &orphan);
    first.kill9();
    let done = wait_for_end(&second, &admin, &orphan);
    assert_eq!(done["execution"]["status"], "Succeeded", "{done:#}");
    let events = stored_events(&second, &admin, &orphan);
    let resumed = events.iter().filter(|e| e.ends_with("RESUMED")).count();
    assert_eq!(resumed, 1, "{events:?}");
    let ended = events
        .iter()
        .filter(|e| *e == "pipeline slow SUCCEEDED")
        .count();
    assert_eq!(ended, 1, "{events:?}");
}

#[test]
fn a_paused_server_that_lost_its_lease_records_nothing_when_it_wakes() {
    let TwoServers {
        _schema,
        _workspace,
        admin,
        first,
        second,
    } = TwoServers::new("2s", &slow("sleep 4; echo done"));
    let id = start(&first, &admin);
    wait_running(&second, &admin, &id);
    // Paused mid-action (as a stalled VM or a long GC would be): its lease
    // runs out, the other server takes the execution over and finishes it.
    first.signal("STOP");
    let done = wait_for_end(&second, &admin, &id);
    first.signal("CONT");
    assert_eq!(done["execution"]["status"], "Succeeded", "{done:#}");
    // The woken server's action ends too; what it would record is refused.
    std::thread::sleep(Duration::from_secs(6));
    let (_, after) = second.call(
        "GET",
        &format!("/api/v1/executions/{id}"),
        Some(&admin),
        None,
    );
    assert_eq!(after["execution"], done["execution"], "{after:#}");
    assert_eq!(after["actions"], done["actions"], "{after:#}");
    let events = stored_events(&second, &admin, &id);
    let ends: Vec<_> = events
        .iter()
        .filter(|e| e.ends_with("SUCCEEDED") || e.ends_with("FAILED"))
        .collect();
    assert_eq!(
        ends,
        [
            "action work SUCCEEDED",
            "stage Work SUCCEEDED",
            "pipeline slow SUCCEEDED"
        ],
        "{events:?}"
    );
}

#[test]
fn max_executions_holds_across_servers_starting_at_once() {
    let schema = PostgresSchema::new();
    let mut workspace = Workspace::new();
    workspace.env("SLUICE_DATABASE", &schema.url);
    let admin = token(&workspace, &["--role", "admin"]);
    let servers = [Server::start(&workspace), Server::start(&workspace)];
    let single = SLOW
        .replace("name = \"slow\"", "name = \"single\"")
        .replace("execution-mode = \"parallel\"", "max-executions = 1");
    let (status, body) = servers[0].call(
        "PUT",
        "/api/v1/pipelines/single",
        Some(&admin),
        Some(&single),
    );
    assert_eq!(status, 201, "{body}");
    let barrier = std::sync::Barrier::new(16);
    let answers: Vec<u16> = std::thread::scope(|scope| {
        let starts: Vec<_> = (0..16)
            .map(|i| {
                let (server, barrier, admin) = (&servers[i % 2], &barrier, &admin);
                scope.spawn(move || {
                    barrier.wait();
                    let path = "/api/v1/pipelines/single/executions";
                    server.call("POST", path, Some(admin), None).0
                })
            })
            .collect();
        starts.into_iter().map(|s| s.join().unwrap()).collect()
    });
    let admitted = answers.iter().filter(|s| **s == 202).count();
    let refused = answers.iter().filter(|s| **s == 429).count();
    assert_eq!((admitted, refused), (1, 15), "{answers:?}");
    assert_eq!(schema.count("executions"), 1);
}

/// Whether process `pid` descends from process `ancestor` (by /proc's ppid).
fn descends_from(mut pid: u32, ancestor: u32) -> bool {
    while pid > 1 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        // `pid (comm) state ppid …`: comm may hold spaces, so split after ')'.
        let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
        else {
            return false;
        };
        if ppid == ancestor {
            return true;
        }
        pid = ppid;
    }
    false
}

/// Processes whose command line contains `pattern` (the shell running a
/// script that names it, as well as the command itself).
fn processes_with(pattern: &str) -> Vec<u32> {
    let output = std::process::Command::new("pgrep")
        .args(["-f", pattern])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[test]
fn a_server_that_wakes_without_its_lease_kills_the_command_it_had_started() {
    // A duration no other process uses, to find the command by.
    let nap = format!("60.{}", std::process::id() % 9973);
    let TwoServers {
        _schema,
        _workspace,
        admin,
        first,
        second,
    } = TwoServers::new("2s", &slow(&format!("sleep {nap}; echo done")));
    let id = start(&first, &admin);
    let pattern = format!("sleep {nap}");
    let by = |server: &Server| {
        processes_with(&pattern)
            .into_iter()
            .filter(|pid| descends_from(*pid, server.pid()))
            .count()
    };
    assert!(
        eventually(30, || by(&first) > 0),
        "the first server never ran the command"
    );
    // Paused past its lease: the second server takes the execution over and
    // runs the action again.
    first.signal("STOP");
    assert!(
        eventually(30, || by(&second) > 0),
        "the second server never took over"
    );
    first.signal("CONT");
    assert!(
        eventually(15, || by(&first) == 0),
        "the woken server left its command running next to the new holder's"
    );
    assert!(by(&second) > 0, "the new holder's command must go on");
    let (status, body) = second.call(
        "POST",
        &format!("/api/v1/executions/{id}/stop"),
        Some(&admin),
        Some(r#"{"mode": "abandon"}"#),
    );
    assert_eq!(status, 202, "{body}");
    let done = wait_for_end(&second, &admin, &id);
    assert_eq!(done["execution"]["status"], "Stopped", "{done:#}");
}

#[test]
fn a_stop_asked_of_the_other_server_stops_the_execution_where_it_runs() {
    let TwoServers {
        _schema,
        _workspace,
        admin,
        first,
        second,
    } = TwoServers::new("3s", &slow("sleep 60; echo done"));
    let id = start(&first, &admin);
    wait_running(&second, &admin, &id);
    let (status, body) = second.call(
        "POST",
        &format!("/api/v1/executions/{id}/stop"),
        Some(&admin),
        Some(r#"{"mode": "abandon", "reason": "wrong branch"}"#),
    );
    assert_eq!(status, 202, "{body}");
    let done = wait_for_end(&second, &admin, &id);
    assert_eq!(done["execution"]["status"], "Stopped", "{done:#}");
    assert_eq!(done["actions"][0]["status"], "Abandoned", "{done:#}");
    assert!(
        done.to_string().contains("wrong branch"),
        "the reason was lost: {done:#}"
    );
    let (status, _) = second.call(
        "POST",
        &format!("/api/v1/executions/{id}/stop"),
        Some(&admin),
        None,
    );
    assert_eq!(status, 409, "a finished execution cannot be stopped");
}

#[test]
fn queued_mode_and_queue_depth_hold_across_servers() {
    let queued = slow("sleep 3; echo done").replace(
        "execution-mode = \"parallel\"",
        "execution-mode = \"queued\"\nqueue-depth = 1",
    );
    let TwoServers {
        _schema,
        _workspace,
        admin,
        first,
        second,
    } = TwoServers::new("15s", &queued);
    let ahead = start(&first, &admin);
    wait_running(&second, &admin, &ahead);
    let behind = start(&second, &admin);
    // The line (one place) is full, whichever server is asked.
    for server in [&first, &second] {
        let path = "/api/v1/pipelines/slow/executions";
        let (status, body) = server.call("POST", path, Some(&admin), None);
        assert_eq!(status, 429, "{body}");
        assert!(body.to_string().contains("queue-depth = 1"), "{body}");
    }
    let ahead = wait_for_end(&first, &admin, &ahead);
    let behind = wait_for_end(&second, &admin, &behind);
    for done in [&ahead, &behind] {
        assert_eq!(done["execution"]["status"], "Succeeded", "{done:#}");
    }
    let left = ahead["stages"][0]["ended_ms"].as_i64().unwrap();
    let entered = behind["stages"][0]["started_ms"].as_i64().unwrap();
    assert!(
        entered >= left,
        "the second server let its execution into the stage while the first one's was inside ({entered} < {left})"
    );
}

#[test]
fn each_notification_is_delivered_once_by_servers_sharing_a_database() {
    let (port, received) = crate::control::recording_server();
    let notified = slow("true").replace(
        "[[stages]]",
        &format!(
            r##"[notifications]
events = ["pipeline.SUCCEEDED"]
[notifications.action]
name = "notify"
plugin = "http@0.1"
config = {{ url = "http://127.0.0.1:{port}/events", method = "POST", body = "#{{event.execution}}" }}
grants = {{ hosts = ["127.0.0.1:{port}"] }}
[[stages]]"##
        ),
    );
    let TwoServers {
        _schema,
        _workspace,
        admin,
        first,
        second,
    } = TwoServers::new("3s", &notified);
    let mut ids: Vec<String> = (0..6)
        .map(|i| start([&first, &second][i % 2], &admin))
        .collect();
    for id in &ids {
        let done = wait_for_end(&first, &admin, id);
        assert_eq!(done["execution"]["status"], "Succeeded", "{done:#}");
    }
    let mut bodies = Vec::new();
    while bodies.len() < ids.len() {
        let body = received
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("only {} notifications arrived: {bodies:?}", bodies.len()));
        bodies.push(body);
    }
    // Both servers poll every 300 ms: a second delivery would come by now.
    std::thread::sleep(Duration::from_secs(3));
    bodies.extend(received.try_iter());
    bodies.sort();
    ids.sort();
    assert_eq!(bodies, ids, "each execution's end notified once");
}
