//! The control plane's execution semantics through the real server: execution
//! modes with overlapping starts, stop (finish / abandon), disabled
//! transitions, limits and the pipeline state view.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Workspace, eventually, text};
use crate::server::{Server, token, wait_for_end};

/// One stage whose action sleeps `seconds`, in `mode`.
fn sleepy(mode: &str, seconds: &str, extra_header: &str) -> String {
    format!(
        r#"
[pipeline]
name = "sleepy"
execution-mode = "{mode}"
{extra_header}
[[stages]]
name = "Work"
[[stages.actions]]
name = "nap"
plugin = "command@0.1"
config = {{ run = "sleep {seconds}" }}
grants = {{ commands = ["sleep"] }}
[[stages]]
name = "After"
[[stages.actions]]
name = "done"
plugin = "command@0.1"
config = {{ run = "true" }}
grants = {{ commands = ["true"] }}
"#
    )
}

struct Fixture {
    _workspace: Workspace,
    server: Server,
    admin: String,
}

fn fixture(pipeline: &str) -> Fixture {
    let workspace = Workspace::new();
    let admin = token(&workspace, &["--role", "admin"]);
    let server = Server::start(&workspace);
    let (status, body) = server.call(
        "PUT",
        "/api/v1/pipelines/sleepy",
        Some(&admin),
        Some(pipeline),
    );
    assert_eq!(status, 201, "{body}");
    Fixture {
        _workspace: workspace,
        server,
        admin,
    }
}

impl Fixture {
    /// `kill -9` the server, let `meanwhile` see the data directory with no
    /// server running, and start another one with `flags`.
    fn restart(self, flags: &[&str], meanwhile: impl FnOnce(&Workspace)) -> Fixture {
        let Fixture {
            _workspace: workspace,
            mut server,
            admin,
        } = self;
        server.kill9();
        drop(server);
        meanwhile(&workspace);
        let server = Server::start_with(&workspace, flags);
        Fixture {
            _workspace: workspace,
            server,
            admin,
        }
    }

    fn start(&self) -> String {
        let (status, body) = self.server.call(
            "POST",
            "/api/v1/pipelines/sleepy/executions",
            Some(&self.admin),
            None,
        );
        assert_eq!(status, 202, "{body}");
        body["id"].as_str().unwrap().to_string()
    }

    fn get(&self, path: &str) -> Value {
        let (status, body) = self.server.call("GET", path, Some(&self.admin), None);
        assert_eq!(status, 200, "{path}: {body}");
        body
    }

    /// Start three executions back to back and wait for all of them.
    fn three_overlapping(&self) -> Vec<Value> {
        let ids: Vec<String> = (0..3).map(|_| self.start()).collect();
        ids.iter()
            .map(|id| wait_for_end(&self.server, &self.admin, id))
            .collect()
    }

    fn wait_until(&self, what: &str, check: impl Fn(&Fixture) -> bool) {
        for _ in 0..300 {
            if check(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("timed out waiting until {what}");
    }
}

fn nap(execution: &Value) -> (i64, i64) {
    let action = execution["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["action"] == "nap")
        .unwrap();
    (
        action["started_ms"].as_i64().unwrap(),
        action["ended_ms"].as_i64().unwrap(),
    )
}

fn statuses(executions: &[Value]) -> Vec<String> {
    executions
        .iter()
        .map(|e| e["execution"]["status"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn queued_runs_one_at_a_time_in_arrival_order() {
    let f = fixture(&sleepy("queued", "0.5", ""));
    let runs = f.three_overlapping();
    assert_eq!(statuses(&runs), ["Succeeded", "Succeeded", "Succeeded"]);
    let spans: Vec<(i64, i64)> = runs.iter().map(nap).collect();
    assert!(
        spans[0].1 <= spans[1].0 && spans[1].1 <= spans[2].0,
        "stage Work overlapped: {spans:?}"
    );
}

#[test]
fn superseded_replaces_the_waiting_execution_with_the_newer_one() {
    let f = fixture(&sleepy("superseded", "0.5", ""));
    let runs = f.three_overlapping();
    assert_eq!(statuses(&runs), ["Succeeded", "Superseded", "Succeeded"]);
    assert_eq!(
        runs[1]["actions"],
        json!([]),
        "the superseded execution never entered a stage"
    );
}

#[test]
fn parallel_executions_run_independently() {
    let f = fixture(&sleepy("parallel", "0.5", ""));
    let runs = f.three_overlapping();
    assert_eq!(statuses(&runs), ["Succeeded", "Succeeded", "Succeeded"]);
    let spans: Vec<(i64, i64)> = runs.iter().map(nap).collect();
    assert!(
        spans[1].0 < spans[0].1 && spans[2].0 < spans[1].1,
        "parallel executions did not overlap: {spans:?}"
    );
}

#[test]
fn starts_beyond_the_limits_get_429_and_accepted_ones_all_finish() {
    let f = fixture(&sleepy("queued", "0.5", "max-executions = 2"));
    let first = f.start();
    let second = f.start();
    let (status, body) = f.server.call(
        "POST",
        "/api/v1/pipelines/sleepy/executions",
        Some(&f.admin),
        None,
    );
    assert_eq!(status, 429, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("max-executions = 2"),
        "{body}"
    );
    for id in [first, second] {
        assert_eq!(
            wait_for_end(&f.server, &f.admin, &id)["execution"]["status"],
            "Succeeded"
        );
    }
}

#[test]
fn starts_racing_for_the_last_place_never_exceed_max_executions() {
    let f = fixture(&sleepy("parallel", "2", "max-executions = 2"));
    let barrier = std::sync::Barrier::new(16);
    let answers: Vec<(u16, Value)> = std::thread::scope(|scope| {
        let racers: Vec<_> = (0..16)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    f.server.call(
                        "POST",
                        "/api/v1/pipelines/sleepy/executions",
                        Some(&f.admin),
                        None,
                    )
                })
            })
            .collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let accepted: Vec<&str> = answers
        .iter()
        .filter(|(status, _)| *status == 202)
        .filter_map(|(_, body)| body["id"].as_str())
        .collect();
    let refused = answers.iter().filter(|(status, _)| *status == 429).count();
    assert_eq!((accepted.len(), refused), (2, 14), "{answers:?}");
    for id in accepted {
        wait_for_end(&f.server, &f.admin, id);
    }
}

/// Store calls run off the server's tokio workers: starts waiting for the
/// admission hold (held here, as another process admitting would hold it)
/// leave the server answering everything else. With the calls on the
/// workers, eight such starts took both of them and the request below hung.
#[test]
fn starts_waiting_for_the_admission_hold_leave_the_server_answering() {
    let workspace = Workspace::new();
    let admin = token(&workspace, &["--role", "admin"]);
    let server = Server::start(&workspace);
    let pipeline = sleepy("parallel", "0", "");
    let (status, body) = server.call(
        "PUT",
        "/api/v1/pipelines/sleepy",
        Some(&admin),
        Some(&pipeline),
    );
    assert_eq!(status, 201, "{body}");
    let hold = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(workspace.path(".sluice/state.db-admission"))
        .unwrap();
    hold.lock().unwrap();
    std::thread::scope(|scope| {
        let starts: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    server.call(
                        "POST",
                        "/api/v1/pipelines/sleepy/executions",
                        Some(&admin),
                        None,
                    )
                })
            })
            .collect();
        // Let the starts reach the hold first (else the request below could
        // be answered before they take anything).
        std::thread::sleep(Duration::from_secs(1));
        let (answered, answer) = std::sync::mpsc::channel();
        let (server, admin) = (&server, &admin);
        scope.spawn(move || {
            let _ = answered.send(server.call("GET", "/api/v1/pipelines", Some(admin), None));
        });
        // A bound on liveness, not a timing: without it a stalled server
        // would hang the suite instead of failing it.
        let listed = answer.recv_timeout(Duration::from_secs(60));
        let still_waiting = starts.iter().filter(|s| !s.is_finished()).count();
        hold.unlock().unwrap();
        let (status, body) = listed.expect("the server answered while starts waited for the hold");
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            still_waiting, 8,
            "every start waited for the hold meanwhile"
        );
        for start in starts {
            let (status, body) = start.join().unwrap();
            assert_eq!(status, 202, "{body}");
        }
    });
}

#[test]
fn stop_finish_lets_the_running_action_end_and_abandon_does_not() {
    let f = fixture(&sleepy("parallel", "1", ""));
    let running = |f: &Fixture, id: &str| {
        let body = f.get(&format!("/api/v1/executions/{id}"));
        body["actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["status"] == "InProgress")
    };
    let finish = f.start();
    f.wait_until("nap runs", |f| running(f, &finish));
    let (status, body) = f.server.call(
        "POST",
        &format!("/api/v1/executions/{finish}/stop"),
        Some(&f.admin),
        Some(r#"{"mode": "finish", "reason": "release freeze"}"#),
    );
    assert_eq!(status, 202, "{body}");
    let stopped = wait_for_end(&f.server, &f.admin, &finish);
    assert_eq!(stopped["execution"]["status"], "Stopped");
    assert!(
        stopped["execution"]["error"]
            .as_str()
            .unwrap()
            .contains("release freeze")
    );
    let actions = stopped["actions"].as_array().unwrap();
    assert_eq!(
        actions.len(),
        1,
        "nothing new starts after a stop: {actions:?}"
    );
    assert_eq!(
        actions[0]["status"], "Succeeded",
        "finish lets the running action end"
    );

    let abandon = f.start();
    f.wait_until("nap runs", |f| running(f, &abandon));
    let (status, _) = f.server.call(
        "POST",
        &format!("/api/v1/executions/{abandon}/stop"),
        Some(&f.admin),
        Some(r#"{"mode": "abandon"}"#),
    );
    assert_eq!(status, 202);
    let stopped = wait_for_end(&f.server, &f.admin, &abandon);
    assert_eq!(stopped["execution"]["status"], "Stopped");
    assert_eq!(stopped["actions"][0]["status"], "Abandoned");
    let (status, _) = f.server.call(
        "POST",
        &format!("/api/v1/executions/{abandon}/stop"),
        Some(&f.admin),
        None,
    );
    assert_eq!(status, 409, "a finished execution cannot be stopped");
}

#[test]
fn a_disabled_transition_holds_executions_until_enabled_and_state_shows_it() {
    let f = fixture(&sleepy("queued", "0", ""));
    let path = "/api/v1/pipelines/sleepy/stages/After/transition";
    let (status, body) = f
        .server
        .call("PUT", path, Some(&f.admin), Some(r#"{"enabled": false}"#));
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("reason")),
        "{body}"
    );
    let (status, _) = f.server.call(
        "PUT",
        path,
        Some(&f.admin),
        Some(r#"{"enabled": false, "reason": "change freeze"}"#),
    );
    assert_eq!(status, 200);
    let id = f.start();
    f.wait_until("Work finishes", |f| {
        let state = f.get("/api/v1/pipelines/sleepy/state");
        state["stages"][0]["current"]["status"] == "Succeeded"
    });
    std::thread::sleep(Duration::from_millis(300));
    let state = f.get("/api/v1/pipelines/sleepy/state");
    assert_eq!(
        state["stages"][1]["transition"],
        json!({"enabled": false, "reason": "change freeze"})
    );
    assert_eq!(
        state["stages"][1]["current"],
        Value::Null,
        "held at the boundary: {state:#}"
    );
    assert_eq!(state["stages"][0]["current"]["execution"], id.as_str());
    assert_eq!(
        f.get(&format!("/api/v1/executions/{id}"))["execution"]["status"],
        "InProgress"
    );

    let (status, _) = f
        .server
        .call("PUT", path, Some(&f.admin), Some(r#"{"enabled": true}"#));
    assert_eq!(status, 200);
    assert_eq!(
        wait_for_end(&f.server, &f.admin, &id)["execution"]["status"],
        "Succeeded"
    );
    let state = f.get("/api/v1/pipelines/sleepy/state");
    assert_eq!(
        state["stages"][1]["current"]["actions"][0]["status"],
        "Succeeded"
    );
}

const GATED: &str = r#"
[pipeline]
name = "sleepy"
execution-mode = "parallel"
[[stages]]
name = "Build"
[[stages.actions]]
name = "build"
plugin = "command@0.1"
config = { run = "true" }
grants = { commands = ["true"] }
[[stages]]
name = "Gate"
[[stages.actions]]
name = "sign-off"
plugin = "approval"
namespace = "gate"
config = { approvers = "operator", message = "ship it?", timeout = "TIMEOUT" }
[[stages]]
name = "Deploy"
[[stages.actions]]
name = "deploy"
plugin = "command@0.1"
config = { run = "echo deploying after #{gate.approved_by}" }
grants = { commands = ["echo"] }
"#;

impl Fixture {
    /// The pending approval token of `sign-off` once the execution waits on it.
    fn approval_token(&self, id: &str) -> String {
        let mut token = String::new();
        self.wait_until("the approval is pending", |f| {
            let state = f.get("/api/v1/pipelines/sleepy/state");
            let action = &state["stages"][1]["current"]["actions"][0];
            state["stages"][1]["current"]["execution"] == id
                && action["approval"]["status"] == "pending"
        });
        let state = self.get("/api/v1/pipelines/sleepy/state");
        token.push_str(
            state["stages"][1]["current"]["actions"][0]["approval"]["token"]
                .as_str()
                .unwrap(),
        );
        token
    }

    fn decide(&self, who: &str, id: &str, body: Value) -> (u16, Value) {
        self.server.call(
            "POST",
            &format!("/api/v1/executions/{id}/approvals/sign-off"),
            Some(who),
            Some(&body.to_string()),
        )
    }
}

#[test]
fn manual_approval_waits_for_an_approver_and_records_the_decision() {
    let f = fixture(&GATED.replace("TIMEOUT", "1h"));
    let viewer = token(&f._workspace, &["--role", "viewer"]);
    let operator = token(&f._workspace, &["--role", "operator"]);
    let approved = f.start();
    let secret = f.approval_token(&approved);
    let state = f.get("/api/v1/pipelines/sleepy/state");
    assert_eq!(
        state["stages"][1]["current"]["actions"][0]["approval"]["message"],
        "ship it?"
    );
    let (status, _) = f.decide(
        &viewer,
        &approved,
        json!({"decision": "approve", "token": secret}),
    );
    assert_eq!(status, 403, "a viewer may not approve");
    let (status, body) = f.decide(
        &operator,
        &approved,
        json!({"decision": "approve", "token": "wrong"}),
    );
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("token")),
        "{body}"
    );
    let (status, body) = f.decide(
        &operator,
        &approved,
        json!({"decision": "approve", "token": secret, "comment": "looks good"}),
    );
    assert_eq!(status, 200, "{body}");
    let done = wait_for_end(&f.server, &f.admin, &approved);
    assert_eq!(done["execution"]["status"], "Succeeded", "{done:#}");
    let sign_off = done["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["action"] == "sign-off")
        .unwrap();
    let by = body["by"].as_str().unwrap();
    assert_eq!(sign_off["summary"], format!("approved by {by}: looks good"));
    let (_, logs) = f.server.call(
        "GET",
        &format!("/api/v1/executions/{approved}/logs?action=deploy"),
        Some(&f.admin),
        None,
    );
    assert!(
        logs["lines"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["line"] == format!("deploying after {by}")),
        "{logs:#}"
    );
    let (status, _) = f.decide(
        &operator,
        &approved,
        json!({"decision": "reject", "token": secret}),
    );
    assert_eq!(status, 409, "decided once");

    let rejected = f.start();
    let secret = f.approval_token(&rejected);
    // The CLI's approve verb, against the server.
    let url = format!("http://{}", f.server.addr);
    let cli = f._workspace.sluice(&[
        "--server",
        &url,
        "--token",
        &operator,
        "approve",
        &rejected,
        "sign-off",
        "--approval-token",
        &secret,
        "--reject",
        "--comment",
        "not today",
    ]);
    assert!(cli.status.success(), "{}", crate::harness::text(&cli));
    let done = wait_for_end(&f.server, &f.admin, &rejected);
    assert_eq!(done["execution"]["status"], "Failed");
    assert!(
        done["execution"]["error"]
            .as_str()
            .unwrap()
            .contains("rejected by"),
        "{done:#}"
    );
    assert!(
        !done["actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == "deploy"),
        "a rejection fails the stage"
    );
}

#[test]
fn an_unanswered_approval_times_out_and_fails_its_stage() {
    let f = fixture(&GATED.replace("TIMEOUT", "1s"));
    let id = f.start();
    let done = wait_for_end(&f.server, &f.admin, &id);
    assert_eq!(done["execution"]["status"], "Failed");
    assert!(
        done["execution"]["error"]
            .as_str()
            .unwrap()
            .contains("approval timed out after 1s"),
        "{done:#}"
    );
}

#[test]
fn a_pending_approval_survives_a_server_kill() {
    let workspace = Workspace::new();
    let admin = token(&workspace, &["--role", "admin"]);
    let server = Server::start(&workspace);
    let pipeline = GATED.replace("TIMEOUT", "1h");
    assert_eq!(
        server
            .call(
                "PUT",
                "/api/v1/pipelines/sleepy",
                Some(&admin),
                Some(&pipeline)
            )
            .0,
        201
    );
    let f = Fixture {
        _workspace: workspace,
        server,
        admin,
    };
    let id = f.start();
    let secret = f.approval_token(&id);
    let f = f.restart(&[], |_| {});
    assert_eq!(
        f.approval_token(&id),
        secret,
        "the same approval is still pending"
    );
    let admin = f.admin.clone();
    assert_eq!(
        f.decide(&admin, &id, json!({"decision": "approve", "token": secret}))
            .0,
        200
    );
    assert_eq!(
        wait_for_end(&f.server, &f.admin, &id)["execution"]["status"],
        "Succeeded"
    );
}

/// Read Server-Sent Events until `done` says so; returns (id, event, data).
fn read_events(
    f: &Fixture,
    path: &str,
    last_event_id: Option<i64>,
    done: impl Fn(&Value) -> bool,
) -> Vec<(i64, String, Value)> {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = std::net::TcpStream::connect(&f.server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let resume = last_event_id
        .map(|id| format!("Last-Event-ID: {id}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n{resume}\r\n",
        f.admin
    )
    .unwrap();
    let mut events = Vec::new();
    let (mut id, mut name) = (0, String::new());
    for line in BufReader::new(stream).lines() {
        let line = line.expect("the event stream ended early");
        if let Some(value) = line
            .strip_prefix("id: ")
            .or_else(|| line.strip_prefix("id:"))
        {
            id = value.trim().parse().unwrap();
        } else if let Some(value) = line
            .strip_prefix("event: ")
            .or_else(|| line.strip_prefix("event:"))
        {
            name = value.trim().to_string();
        } else if let Some(value) = line
            .strip_prefix("data: ")
            .or_else(|| line.strip_prefix("data:"))
        {
            let data: Value = serde_json::from_str(value.trim()).unwrap();
            let finished = done(&data);
            events.push((id, name.clone(), data));
            if finished {
                break;
            }
        }
    }
    events
}

#[test]
fn state_changes_stream_as_server_sent_events_and_resume_by_last_event_id() {
    let f = fixture(&sleepy("queued", "0", ""));
    let id = f.start();
    let is_end = |id: String| {
        move |d: &Value| {
            d["kind"] == "pipeline" && d["execution"] == id.as_str() && d["state"] != "STARTED"
        }
    };
    let events = read_events(
        &f,
        &format!("/api/v1/events?after=0&execution={id}"),
        None,
        is_end(id.clone()),
    );
    let names: Vec<&str> = events.iter().map(|(_, name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "pipeline.STARTED",
            "stage.STARTED",
            "action.STARTED",
            "action.SUCCEEDED",
            "stage.SUCCEEDED",
            "stage.STARTED",
            "action.STARTED",
            "action.SUCCEEDED",
            "stage.SUCCEEDED",
            "pipeline.SUCCEEDED"
        ],
    );
    assert!(events.windows(2).all(|w| w[0].0 < w[1].0), "ids increase");
    // Reconnect after the third event: everything after it comes again.
    let (third, _, _) = events[2].clone();
    let resumed = read_events(
        &f,
        &format!("/api/v1/events?execution={id}"),
        Some(third),
        is_end(id.clone()),
    );
    assert_eq!(resumed.len(), events.len() - 3);
    assert!(resumed[0].0 > third);
    assert_eq!(resumed[0].1, "action.SUCCEEDED");
}

const CONVERGING: &str = r#"
[pipeline]
name = "sleepy"
[[stages]]
name = "Deploy"
[[stages.actions]]
name = "converge"
plugin = "noop@0.1"
config = { rounds = 3, delay-ms = 400 }
"#;

#[test]
fn a_continuing_action_is_called_again_with_its_token_even_across_a_restart() {
    let workspace = Workspace::new();
    let admin = token(&workspace, &["--role", "admin"]);
    let server = Server::start(&workspace);
    assert_eq!(
        server
            .call(
                "PUT",
                "/api/v1/pipelines/sleepy",
                Some(&admin),
                Some(CONVERGING)
            )
            .0,
        201
    );
    let f = Fixture {
        _workspace: workspace,
        server,
        admin,
    };
    let id = f.start();
    f.wait_until("the first round is reported", |f| {
        let state = f.get("/api/v1/pipelines/sleepy/state");
        let action = &state["stages"][0]["current"]["actions"][0];
        action["status"] == "InProgress" && action["summary"] == "1 of 3 rounds done"
    });
    let f = f.restart(&[], |_| {});
    let done = wait_for_end(&f.server, &f.admin, &id);
    assert_eq!(done["execution"]["status"], "Succeeded", "{done:#}");
    assert_eq!(done["actions"][0]["summary"], "done after 3 rounds");
    let logs = f.get(&format!("/api/v1/executions/{id}/logs?action=converge"));
    let lines: Vec<&str> = logs["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["line"].as_str().unwrap())
        .collect();
    let first_rounds = lines.iter().filter(|l| **l == "round 1 of 3").count();
    assert_eq!(
        first_rounds, 1,
        "the restart resumed from the stored token: {lines:?}"
    );
    assert!(lines.contains(&"round 3 of 3"), "{lines:?}");
}

/// A listener that records the body of every request it gets.
pub(crate) fn recording_server() -> (u16, std::sync::mpsc::Receiver<String>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let mut reader = BufReader::new(stream);
            let (mut chunked, mut length) = (false, 0usize);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                chunked |= lower.starts_with("transfer-encoding: chunked");
                if let Some(v) = lower.strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = Vec::new();
            if chunked {
                loop {
                    let mut size = String::new();
                    reader.read_line(&mut size).unwrap();
                    let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                    let mut chunk = vec![0; size + 2];
                    reader.read_exact(&mut chunk).unwrap();
                    if size == 0 {
                        break;
                    }
                    body.extend_from_slice(&chunk[..size]);
                }
            } else {
                body.resize(length, 0);
                reader.read_exact(&mut body).unwrap();
            }
            let _ = reader
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = sender.send(String::from_utf8_lossy(&body).into_owned());
        }
    });
    (port, receiver)
}

#[test]
fn state_changes_are_delivered_to_the_notification_plugin() {
    let (port, received) = recording_server();
    let pipeline = format!(
        r##"
[pipeline]
name = "sleepy"
[notifications]
events = ["pipeline.SUCCEEDED", "pipeline.FAILED"]
[notifications.action]
name = "notify"
plugin = "http@0.1"
config = {{ url = "http://127.0.0.1:{port}/events", method = "POST", body = "#{{event.pipeline}} #{{event.state}} #{{event.execution}}" }}
grants = {{ hosts = ["127.0.0.1:{port}"] }}
[[stages]]
name = "Work"
[[stages.actions]]
name = "work"
plugin = "command@0.1"
config = {{ run = "true" }}
grants = {{ commands = ["true"] }}
"##
    );
    let f = fixture(&pipeline);
    let id = f.start();
    assert_eq!(
        wait_for_end(&f.server, &f.admin, &id)["execution"]["status"],
        "Succeeded"
    );
    let body = received
        .recv_timeout(Duration::from_secs(20))
        .expect("no notification arrived");
    assert_eq!(body, format!("sleepy SUCCEEDED {id}"));
}

/// Two stages of five parallel no-op actions, any number of executions at once.
const WIDE: &str = r#"
[pipeline]
name = "sleepy"
execution-mode = "parallel"
max-executions = 100
[[stages]]
name = "First"
[[stages.actions]]
name = "a1"
plugin = "noop@0.1"
[[stages.actions]]
name = "a2"
plugin = "noop@0.1"
[[stages.actions]]
name = "a3"
plugin = "noop@0.1"
[[stages]]
name = "Second"
[[stages.actions]]
name = "b1"
plugin = "noop@0.1"
[[stages.actions]]
name = "b2"
plugin = "noop@0.1"
"#;

/// Open `/api/v1/events?after=<after>` and return the reader once the server
/// has answered (so it is subscribed).
fn subscribe(f: &Fixture, after: i64) -> std::io::BufReader<std::net::TcpStream> {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = std::net::TcpStream::connect(&f.server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "GET /api/v1/events?after={after} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        f.admin
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while line != "\r\n" {
        line.clear();
        reader.read_line(&mut line).unwrap();
    }
    reader
}

/// Event ids from `reader` until `ends` executions have ended.
fn ids_until_ended(reader: std::io::BufReader<std::net::TcpStream>, ends: usize) -> Vec<i64> {
    use std::io::BufRead;
    let (mut ids, mut ended) = (Vec::new(), 0);
    for line in reader.lines() {
        let line = line.expect("the event stream ended early");
        if let Some(id) = line.strip_prefix("id:") {
            ids.push(id.trim().parse().unwrap());
        } else if line.starts_with("event:")
            && line.contains("pipeline.")
            && !line.contains("STARTED")
        {
            ended += 1;
            if ended == ends {
                break;
            }
        }
    }
    ids
}

#[test]
fn a_live_subscriber_gets_every_event_of_concurrent_executions_once_and_in_order() {
    const EXECUTIONS: usize = 40;
    let f = fixture(WIDE);
    let live = subscribe(&f, 0);
    let reader = std::thread::spawn(move || ids_until_ended(live, EXECUTIONS));
    std::thread::scope(|scope| {
        for _ in 0..EXECUTIONS {
            scope.spawn(|| f.start());
        }
    });
    let live = reader.join().unwrap();
    let stored = ids_until_ended(subscribe(&f, 0), EXECUTIONS);
    // pipeline, 2 stages and 5 actions, each started and ended.
    assert_eq!(stored.len(), EXECUTIONS * 16, "{stored:?}");
    assert_eq!(
        live, stored,
        "the live stream lost, repeated or reordered events"
    );
}

/// Source builds a `version` file from `#{variables.release}`; Deploy prints it.
const RELEASES: &str = r##"
[pipeline]
name = "sleepy"
execution-mode = "parallel"
[variables]
release = { default = "v0" }
[[stages]]
name = "Source"
[[stages.actions]]
name = "build"
plugin = "command@0.1"
outputs = ["bundle"]
config = { run = "sh -c 'echo #{variables.release} > version'", outputs = "bundle=version" }
grants = { commands = ["sh"] }
[[stages]]
name = "Deploy"
[[stages.actions]]
name = "deploy"
plugin = "command@0.1"
inputs = ["bundle"]
config = { run = "sh -c 'echo deploying $(cat version) with #{variables.release}'" }
grants = { commands = ["sh", "cat"] }
"##;

impl Fixture {
    fn start_release(&self, release: &str) -> String {
        let body = format!(r#"{{"variables": {{"release": "{release}"}}}}"#);
        let path = "/api/v1/pipelines/sleepy/executions";
        let (status, started) = self
            .server
            .call("POST", path, Some(&self.admin), Some(&body));
        assert_eq!(status, 202, "{started}");
        let id = started["id"].as_str().unwrap().to_string();
        let done = wait_for_end(&self.server, &self.admin, &id);
        assert_eq!(done["execution"]["status"], "Succeeded", "{done:#}");
        id
    }

    /// Assert that the `deploy` action of execution `id` logged `line`.
    fn assert_deploy_said(&self, id: &str, line: &str) {
        let logs = self.get(&format!("/api/v1/executions/{id}/logs?action=deploy"));
        let lines = logs["lines"].as_array().unwrap();
        assert!(lines.iter().any(|l| l["line"] == line), "{logs:#}");
    }

    fn rollback(&self, stage: &str, body: Option<&str>) -> (u16, Value) {
        let path = format!("/api/v1/pipelines/sleepy/stages/{stage}/rollback");
        self.server.call("POST", &path, Some(&self.admin), body)
    }
}

#[test]
fn a_rollback_runs_the_stage_again_with_an_earlier_executions_artifacts_and_variables() {
    let f = fixture(RELEASES);
    let first = f.start_release("v1");
    let _second = f.start_release("v2");

    // A viewer may not roll back.
    let viewer = token(&f._workspace, &["--role", "viewer"]);
    let path = "/api/v1/pipelines/sleepy/stages/Deploy/rollback";
    let (status, answer) = f.server.call("POST", path, Some(&viewer), None);
    assert_eq!(status, 403, "{answer}");

    let (status, started) = f.rollback("Deploy", None);
    assert_eq!(status, 202, "{started}");
    let rollback = started["id"].as_str().unwrap().to_string();
    let done = wait_for_end(&f.server, &f.admin, &rollback);
    assert_eq!(done["execution"]["status"], "Succeeded", "{done:#}");
    assert_eq!(done["execution"]["trigger"]["kind"], "rollback", "{done:#}");
    assert_eq!(
        done["execution"]["trigger"]["event"],
        first.as_str(),
        "{done:#}"
    );
    let ran: Vec<&str> = done["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(ran, ["deploy"], "only the rolled-back stage runs: {done:#}");
    f.assert_deploy_said(&rollback, "deploying v1 with v1");

    let (status, answer) = f.rollback("Deploy", Some(&format!(r#"{{"execution": "{rollback}"}}"#)));
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer.to_string().contains("is itself a rollback"),
        "{answer}"
    );
    // Through the CLI, as an operator would.
    let url = format!("http://{}", f.server.addr);
    let remote = ["--server", url.as_str(), "--token", f.admin.as_str()];
    let refused = f
        ._workspace
        .sluice(&[&remote[..], &["rollback", "sleepy", "Source"]].concat());
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        text(&refused)
            .contains("stage `Source` is the source stage (the first); it cannot be rolled back"),
        "{}",
        text(&refused)
    );
    let again = f._workspace.sluice(
        &[
            &remote[..],
            &["rollback", "sleepy", "Deploy", "--to", &first[..8]],
        ]
        .concat(),
    );
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        text(&again).contains("rolling back stage Deploy of sleepy: execution "),
        "{}",
        text(&again)
    );
    // A new version of the pipeline: the earlier executions ran another one.
    let changed = RELEASES.replace("deploying", "shipping");
    let (status, body) = f.server.call(
        "PUT",
        "/api/v1/pipelines/sleepy",
        Some(&f.admin),
        Some(&changed),
    );
    assert_eq!(status, 200, "{body}");
    let (status, answer) = f.rollback("Deploy", Some(&format!(r#"{{"execution": "{first}"}}"#)));
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer.to_string().contains("not the current version 2"),
        "{answer}"
    );
}

/// [`RELEASES`] whose deploy fails for release `bad` and whose Deploy
/// stage then asks for a rollback.
fn rolled_back_when_bad() -> String {
    RELEASES
        .replace(
            "config = { run = \"sh -c 'echo deploying",
            "config = { run = \"sh -c 'test #{variables.release} != bad && echo deploying",
        )
        .replace(
            "name = \"Deploy\"\n",
            "name = \"Deploy\"\non-failure = { result = \"rollback\" }\n",
        )
}

impl Fixture {
    /// Start release `bad` and wait for it to fail; its id.
    fn fail_release(&self) -> String {
        let path = "/api/v1/pipelines/sleepy/executions";
        let body = r#"{"variables": {"release": "bad"}}"#;
        let (status, started) = self
            .server
            .call("POST", path, Some(&self.admin), Some(body));
        assert_eq!(status, 202, "{started}");
        let bad = started["id"].as_str().unwrap().to_string();
        let done = wait_for_end(&self.server, &self.admin, &bad);
        assert_eq!(done["execution"]["status"], "Failed", "{done:#}");
        bad
    }

    /// The rollback executions, once there are any (30 s at most).
    fn rollbacks(&self) -> Vec<Value> {
        let listed = || {
            let listed = self.get("/api/v1/executions?pipeline=sleepy&limit=50");
            let all = listed["executions"].as_array().unwrap().clone();
            all.into_iter()
                .filter(|e| e["trigger"]["kind"] == "rollback")
                .collect::<Vec<_>>()
        };
        eventually(30, || !listed().is_empty());
        listed()
    }

    /// Wait for the one rollback to succeed, back to `good`; its id.
    fn one_rollback_to(&self, good: &str) -> String {
        let started = self.rollbacks();
        assert_eq!(started.len(), 1, "{started:#?}");
        assert_eq!(
            started[0]["trigger"]["event"], good,
            "back to the last good one"
        );
        let id = started[0]["id"].as_str().unwrap().to_string();
        let done = wait_for_end(&self.server, &self.admin, &id);
        assert_eq!(done["execution"]["status"], "Succeeded", "{done:#}");
        self.assert_deploy_said(&id, "deploying v1 with v1");
        id
    }
}

#[test]
fn a_failed_deploy_whose_on_failure_condition_says_rollback_is_rolled_back() {
    let f = fixture(&rolled_back_when_bad());
    let good = f.start_release("v1");
    f.fail_release();
    f.one_rollback_to(&good);
}

/// The ask for a rollback is stored with the execution's end: a server that
/// dies after recording the end and before starting the rollback leaves it
/// to the next server, which starts it once.
#[test]
fn a_rollback_asked_for_just_before_the_server_died_is_started_by_the_next_one_once() {
    let f = fixture(&rolled_back_when_bad());
    let good = f.start_release("v1");
    let bad = f.fail_release();
    let first = f.one_rollback_to(&good);
    // What the dead server would have left had it died in between: the end
    // with its ask, and no rollback. A short lease: the next server's lease
    // loop, which looks for asks, turns every second.
    let f = f.restart(&["--lease", "3s"], |workspace| {
        let db = rusqlite::Connection::open(workspace.path(".sluice/state.db")).unwrap();
        db.execute(
            "UPDATE executions SET rollback_stage = 'Deploy' WHERE id = ?1",
            [&bad],
        )
        .unwrap();
        let rows = [
            "action_runs",
            "stage_runs",
            "events",
            "action_logs",
            "gate_places",
        ];
        for table in rows {
            let sql = format!("DELETE FROM {table} WHERE execution_id = ?1");
            db.execute(&sql, [&first]).unwrap();
        }
        db.execute("DELETE FROM executions WHERE id = ?1", [&first])
            .unwrap();
    });
    let again = f.one_rollback_to(&good);
    assert_ne!(again, first);
    // The server's lease loop looks for asks again and again: never a second.
    std::thread::sleep(Duration::from_secs(3));
    let started = f.rollbacks();
    assert_eq!(started.len(), 1, "{started:#?}");
}

/// A store failure while the asked rollback starts (here a trigger makes the
/// database refuse new rollback executions) may pass, so the ask is kept:
/// once the database accepts them again, the lease loop starts it, once.
#[test]
fn a_rollback_that_a_failing_store_kept_from_starting_starts_once_it_works_again() {
    let f = fixture(&rolled_back_when_bad()).restart(&["--lease", "3s"], |_| {});
    let good = f.start_release("v1");
    let db = rusqlite::Connection::open(f._workspace.path(".sluice/state.db")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    db.execute_batch(
        r#"CREATE TRIGGER failing_disk BEFORE INSERT ON executions
           WHEN json_extract(NEW."trigger", '$.kind') = 'rollback'
           BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"#,
    )
    .unwrap();
    let bad = f.fail_release();
    // The lease loop turns every second: let it fail a few times.
    std::thread::sleep(Duration::from_secs(3));
    let asked: Option<String> = db
        .query_row(
            "SELECT rollback_stage FROM executions WHERE id = ?1",
            [&bad],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(asked.as_deref(), Some("Deploy"), "the ask was dropped");
    db.execute_batch("DROP TRIGGER failing_disk").unwrap();
    f.one_rollback_to(&good);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(f.rollbacks().len(), 1, "the rollback started twice");
}

/// A rollback whose pipeline version the store fails to record, right after
/// its start was recorded, still runs: it does not stay InProgress with
/// nothing running it.
#[test]
fn a_rollback_whose_version_the_store_fails_to_record_still_runs() {
    let f = fixture(&rolled_back_when_bad());
    let good = f.start_release("v1");
    let db = rusqlite::Connection::open(f._workspace.path(".sluice/state.db")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    db.execute_batch(
        r#"CREATE TRIGGER failing_disk BEFORE UPDATE OF pipeline_version ON executions
           WHEN json_extract(NEW."trigger", '$.kind') = 'rollback'
           BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"#,
    )
    .unwrap();
    f.fail_release();
    let rollback = f.one_rollback_to(&good);
    let version: Option<i64> = db
        .query_row(
            "SELECT pipeline_version FROM executions WHERE id = ?1",
            [&rollback],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(
        version, None,
        "the failing disk never failed the rollback's version"
    );
}

#[test]
fn an_operator_overrides_the_condition_that_failed_a_stage_and_the_audit_log_says_who() {
    let gated = RELEASES.replace(
        "name = \"Deploy\"\n",
        "name = \"Deploy\"\nbefore-entry = { rules = [{ name = \"v1-only\", provider = \"variable-check\", variable = \"#{variables.release}\", operator = \"eq\", value = \"v1\" }] }\n",
    );
    let f = fixture(&gated);
    let operator = token(&f._workspace, &["--role", "operator"]);
    let body = r#"{"variables": {"release": "v2"}}"#;
    let path = "/api/v1/pipelines/sleepy/executions";
    let (status, started) = f.server.call("POST", path, Some(&f.admin), Some(body));
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_str().unwrap().to_string();
    let done = wait_for_end(&f.server, &f.admin, &id);
    assert_eq!(done["execution"]["status"], "Failed", "{done:#}");

    let call = |condition: &str| {
        let path = format!("/api/v1/executions/{id}/stages/Deploy/conditions/{condition}/override");
        f.server.call("POST", &path, Some(&operator), None)
    };
    let (status, answer) = call("on-failure");
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = call("on-success");
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer
            .to_string()
            .contains("did not fail by its on-success condition"),
        "{answer}"
    );
    // A viewer may look, not override.
    let viewer = token(&f._workspace, &["--role", "viewer"]);
    let path = format!("/api/v1/executions/{id}/stages/Deploy/conditions/before-entry/override");
    let (status, answer) = f.server.call("POST", &path, Some(&viewer), None);
    assert_eq!(status, 403, "{answer}");
    let (status, answer) = call("before-entry");
    assert_eq!(status, 202, "{answer}");
    let done = wait_for_end(&f.server, &f.admin, &id);
    assert_eq!(done["execution"]["status"], "Succeeded", "{done:#}");
    f.assert_deploy_said(&id, "deploying v2 with v2");
    let rules: Vec<(String, bool)> = done["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["rule"].as_str().unwrap().to_string(),
                r["passed"].as_bool().unwrap(),
            )
        })
        .collect();
    let expected = [
        ("v1-only".to_string(), false),
        ("(override)".to_string(), true),
    ];
    assert_eq!(rules, expected, "{done:#}");

    let audit = f.get("/api/v1/audit");
    let entries = audit["entries"].as_array().unwrap();
    let overridden = entries.iter().any(|e| {
        e["action"]
            == format!(
                "POST /api/v1/executions/{id}/stages/Deploy/conditions/before-entry/override"
            )
            && e["result"] == "202"
            && e["actor"].as_str().is_some_and(|a| a.starts_with("tok_"))
    });
    assert!(
        overridden,
        "the override is audited with the operator: {audit:#}"
    );
}
