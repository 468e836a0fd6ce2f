//! `sluice serve`: the HTTP API against the real server process.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Workspace, text};

/// A running `sluice serve`, killed when dropped.
pub(crate) struct Server {
    child: Child,
    pub(crate) addr: String,
}

impl Server {
    pub(crate) fn start(workspace: &Workspace) -> Self {
        Self::start_with(workspace, &[])
    }

    /// Start with extra `sluice serve` flags.
    pub(crate) fn start_with(workspace: &Workspace, flags: &[&str]) -> Self {
        Self::spawn(workspace, flags, &[], Stdio::null())
    }

    /// Start with extra flags and environment variables, writing the
    /// server's log (its stderr) to `log`, a file in the workspace.
    pub(crate) fn start_logging(
        workspace: &Workspace,
        flags: &[&str],
        envs: &[(&str, &str)],
        log: &str,
    ) -> Self {
        let file = std::fs::File::create(workspace.path(log)).unwrap();
        Self::spawn(workspace, flags, envs, Stdio::from(file))
    }

    fn spawn(workspace: &Workspace, flags: &[&str], envs: &[(&str, &str)], stderr: Stdio) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .current_dir(workspace.dir.path())
            .env_remove("SLUICE_LOG")
            .env_remove("RUST_LOG")
            .envs(workspace.envs())
            .envs(envs.iter().copied())
            .arg("--data-dir")
            .arg(workspace.path(".sluice"))
            .arg("--plugins")
            .arg(workspace.registry())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(flags)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_string();
        Server { child, addr }
    }

    /// One request; returns the status and the JSON body (Null when empty).
    pub(crate) fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, Value) {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| ("Authorization", a))
            .into_iter()
            .collect();
        let (status, _, payload) = self.exchange(method, path, &headers, body);
        let json = if payload.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&payload).unwrap_or(Value::String(payload))
        };
        (status, json)
    }

    /// One request with these headers; returns the status, the response
    /// head (status line and headers) and the body.
    pub(crate) fn exchange(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> (u16, String, String) {
        let mut stream = TcpStream::connect(&self.addr).unwrap();
        let body = body.unwrap_or("");
        let extra: String = headers
            .iter()
            .map(|(name, value)| format!("{name}: {value}\r\n"))
            .collect();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        let response = String::from_utf8_lossy(&response).into_owned();
        let (head, payload) = response.split_once("\r\n\r\n").unwrap();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let payload = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(payload)
        } else {
            payload.to_string()
        };
        (status, head.to_string(), payload)
    }

    /// Send `signal` and wait for the server to exit; its exit code.
    pub(crate) fn signal_and_wait(&mut self, signal: i32) -> Option<i32> {
        // SAFETY: signalling the server process this test started.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        self.child.wait().unwrap().code()
    }

    /// Send a signal (`STOP`, `CONT`, …) to the server process.
    pub(crate) fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -s {name}");
    }

    /// The server's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A GET whose body is not JSON (e.g. /metrics).
fn raw_get(server: &Server, path: &str) -> String {
    match server.call("GET", path, None, None) {
        (200, Value::String(text)) => text,
        other => panic!("GET {path}: {other:?}"),
    }
}

fn dechunk(mut text: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = text.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        text = &rest[size + 2..];
    }
    out
}

pub(crate) fn token(workspace: &Workspace, args: &[&str]) -> String {
    let mut full = vec!["token", "create"];
    full.extend_from_slice(args);
    let output = workspace.sluice(&full);
    assert!(output.status.success(), "{}", text(&output));
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

const DEMO: &str = r#"
[pipeline]
name = "demo"
[variables]
who = { default = "world" }
[[stages]]
name = "Say"
[[stages.actions]]
name = "say"
plugin = "command@0.1"
config = { run = "echo hello #{variables.who}" }
grants = { commands = ["echo"] }
"#;

/// Poll an execution until it leaves InProgress (bounded wait, not a timing assertion).
pub(crate) fn wait_for_end(server: &Server, token: &str, id: &str) -> Value {
    for _ in 0..300 {
        let (status, body) = server.call(
            "GET",
            &format!("/api/v1/executions/{id}"),
            Some(token),
            None,
        );
        assert_eq!(status, 200, "{body}");
        if !matches!(
            body["execution"]["status"].as_str(),
            Some("InProgress" | "Stopping")
        ) {
            return body;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("execution {id} did not end");
}

#[test]
fn tokens_roles_scopes_and_the_audit_log() {
    let workspace = Workspace::new();
    let admin = token(&workspace, &["--role", "admin"]);
    let viewer = token(&workspace, &["--role", "viewer"]);
    let scoped = token(&workspace, &["--role", "operator", "--pipeline", "other"]);
    let server = Server::start(&workspace);

    assert_eq!(server.call("GET", "/api/v1/pipelines", None, None).0, 401);
    assert_eq!(
        server
            .call("GET", "/api/v1/pipelines", Some("sluice_wrong"), None)
            .0,
        401
    );
    let (status, body) = server.call("PUT", "/api/v1/pipelines/demo", Some(&viewer), Some(DEMO));
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("needs admin"));
    assert_eq!(
        server.call("PUT", "/api/v1/pipelines/demo", Some(&admin), Some(DEMO)),
        (201, json!({"name": "demo", "version": 1}))
    );
    let updated = DEMO.replace("world", "everyone");
    assert_eq!(
        server.call(
            "PUT",
            "/api/v1/pipelines/demo",
            Some(&admin),
            Some(&updated)
        ),
        (200, json!({"name": "demo", "version": 2}))
    );
    let (status, first) = server.call(
        "GET",
        "/api/v1/pipelines/demo/versions/1",
        Some(&viewer),
        None,
    );
    assert_eq!(status, 200);
    assert!(first["source"].as_str().unwrap().contains("world"));
    let (_, latest) = server.call("GET", "/api/v1/pipelines/demo", Some(&viewer), None);
    assert_eq!(latest["version"], 2);
    let (status, body) = server.call(
        "POST",
        "/api/v1/pipelines/demo/executions",
        Some(&scoped),
        None,
    );
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("not scoped to pipeline `demo`")
    );
    let (_, listed) = server.call("GET", "/api/v1/pipelines", Some(&scoped), None);
    assert_eq!(
        listed["pipelines"],
        json!([]),
        "a scoped token sees only its pipelines"
    );
    assert_eq!(
        server.call("GET", "/api/v1/audit", Some(&viewer), None).0,
        403
    );

    let (status, audit) = server.call("GET", "/api/v1/audit", Some(&admin), None);
    assert_eq!(status, 200);
    let entries: Vec<(String, String, String)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        // Token creation is audited too, as a local (CLI) entry.
        .filter(|e| !e["actor"].as_str().unwrap().starts_with("local:"))
        .map(|e| {
            (
                e["action"].as_str().unwrap().into(),
                e["result"].as_str().unwrap().into(),
                e["actor"].as_str().unwrap().into(),
            )
        })
        .collect();
    let results: Vec<&str> = entries.iter().map(|(_, r, _)| r.as_str()).collect();
    assert_eq!(results, ["403", "201", "200", "403"], "{entries:?}");
    assert!(
        entries
            .iter()
            .all(|(action, _, actor)| actor.starts_with("tok_") && !action.is_empty())
    );
    assert!(
        entries[3].0 == "POST /api/v1/pipelines/demo/executions",
        "{entries:?}"
    );
}

#[test]
fn executions_start_run_and_are_queryable_with_clear_errors() {
    let workspace = Workspace::new();
    let admin = token(&workspace, &["--role", "admin"]);
    let server = Server::start(&workspace);
    assert_eq!(
        server
            .call("PUT", "/api/v1/pipelines/demo", Some(&admin), Some(DEMO))
            .0,
        201
    );

    let (status, started) = server.call(
        "POST",
        "/api/v1/pipelines/demo/executions",
        Some(&admin),
        Some(r#"{"variables": {"who": "api"}}"#),
    );
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_str().unwrap().to_string();
    let done = wait_for_end(&server, &admin, &id);
    assert_eq!(done["execution"]["status"], "Succeeded", "{done:#}");
    assert_eq!(done["execution"]["pipeline_version"], 1);
    assert_eq!(
        done["actions"][0]["resolved_config"],
        json!([["run", "echo hello api"]])
    );
    let (_, logs) = server.call(
        "GET",
        &format!("/api/v1/executions/{id}/logs?action=say"),
        Some(&admin),
        None,
    );
    assert!(
        logs["lines"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["line"] == "hello api"),
        "{logs:#}"
    );
    let (_, listed) = server.call(
        "GET",
        "/api/v1/executions?pipeline=demo&status=Succeeded&limit=10",
        Some(&admin),
        None,
    );
    assert_eq!(listed["executions"][0]["id"], id.as_str());
    let (_, none) = server.call(
        "GET",
        "/api/v1/executions?status=Failed",
        Some(&admin),
        None,
    );
    assert_eq!(none["executions"], json!([]));

    let metrics = raw_get(&server, "/metrics");
    assert!(
        metrics.contains("sluice_executions{status=\"Succeeded\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_action_duration_seconds_count 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_queue_depth{pipeline=\"demo\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_plugin_instantiation_seconds_count 1"),
        "{metrics}"
    );

    let bad = |method: &str, path: &str, body: Option<&str>, field: &str, words: &str| {
        let (status, error) = server.call(method, path, Some(&admin), body);
        assert_eq!(status, 400, "{method} {path}: {error}");
        assert_eq!(error["field"], field, "{error}");
        assert!(error["error"].as_str().unwrap().contains(words), "{error}");
    };
    bad(
        "POST",
        "/api/v1/pipelines/demo/executions",
        Some(r#"{"variables": 5}"#),
        "variables",
        "invalid type",
    );
    bad(
        "POST",
        "/api/v1/pipelines/demo/executions",
        Some(r#"{"variables": {"nope": "x"}}"#),
        "variables",
        "variable `nope` is not declared",
    );
    bad(
        "PUT",
        "/api/v1/pipelines/demo",
        Some("[pipeline]\nname = \"demo\"\n[[stages]]\nname = 1\n"),
        "source",
        "demo.toml:4:8",
    );
    // A name with a dot keeps it in the file named by errors.
    bad(
        "PUT",
        "/api/v1/pipelines/app_2.0",
        Some("[pipeline]\nname = \"app_2.0\"\n[[stages]]\nname = 1\n"),
        "source",
        "app_2.0.toml:4:8",
    );
    bad(
        "GET",
        "/api/v1/executions?status=Bogus",
        None,
        "status",
        "unknown status",
    );
    bad(
        "GET",
        "/api/v1/executions?limit=lots",
        None,
        "limit",
        "invalid digit",
    );
    assert_eq!(
        server
            .call("GET", "/api/v1/executions/no-such-id", Some(&admin), None)
            .0,
        404
    );
    assert_eq!(
        server
            .call("DELETE", "/api/v1/pipelines/demo", Some(&admin), None)
            .0,
        204
    );
    assert_eq!(
        server
            .call("GET", "/api/v1/pipelines/demo", Some(&admin), None)
            .0,
        404
    );

    let (status, openapi) = server.call("GET", "/openapi.json", None, None);
    assert_eq!(status, 200);
    assert!(
        openapi["paths"]["/api/v1/pipelines/{name}/executions"]["post"].is_object(),
        "{openapi:#}"
    );
}

const TWO_STAGES: &str = r#"
[pipeline]
name = "durable"
[[stages]]
name = "First"
[[stages.actions]]
name = "first"
plugin = "command@0.1"
namespace = "first"
outputs = ["out"]
config = { run = "sh -c 'mkdir o && echo made > o/f && echo ::set-variable made=yes'", outputs = "out=o/**" }
grants = { commands = ["sh"] }
[[stages]]
name = "Second"
[[stages.actions]]
name = "second"
plugin = "command@0.1"
inputs = ["out"]
config = { run = "sh -c 'sleep 2; cat o/f; echo first said #{first.made}'" }
grants = { commands = ["sh"] }
ON_RESTART
"#;

/// Start `pipeline`, SIGKILL the server while action `second` runs, restart it.
fn kill_during_second(pipeline: &str) -> (Workspace, Server, String, String) {
    let workspace = Workspace::new();
    let admin = token(&workspace, &["--role", "admin"]);
    let mut server = Server::start(&workspace);
    assert_eq!(
        server
            .call(
                "PUT",
                "/api/v1/pipelines/durable",
                Some(&admin),
                Some(pipeline)
            )
            .0,
        201
    );
    let (_, started) = server.call(
        "POST",
        "/api/v1/pipelines/durable/executions",
        Some(&admin),
        None,
    );
    let id = started["id"].as_str().unwrap().to_string();
    let mut running = false;
    for _ in 0..200 {
        let (_, body) = server.call(
            "GET",
            &format!("/api/v1/executions/{id}"),
            Some(&admin),
            None,
        );
        let second = body["actions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["action"] == "second")
            .cloned();
        if second.is_some_and(|a| a["status"] == "InProgress") {
            running = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(running, "action `second` never started");
    server.kill9();
    let server = Server::start(&workspace);
    (workspace, server, admin, id)
}

#[test]
fn a_killed_server_resumes_its_executions_where_they_stopped() {
    let (_workspace, server, admin, id) = kill_during_second(&TWO_STAGES.replace("ON_RESTART", ""));
    let done = wait_for_end(&server, &admin, &id);
    assert_eq!(done["execution"]["status"], "Succeeded", "{done:#}");
    let first = done["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["action"] == "first")
        .unwrap();
    assert_eq!(first["attempts"], 1, "a finished action is not rerun");
    let (_, logs) = server.call(
        "GET",
        &format!("/api/v1/executions/{id}/logs?action=second"),
        Some(&admin),
        None,
    );
    let lines: Vec<&str> = logs["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["line"].as_str().unwrap())
        .collect();
    assert!(
        lines.contains(&"made") && lines.contains(&"first said yes"),
        "artifacts and variables survive: {lines:?}"
    );
    let (_, pipeline) = server.call("GET", "/api/v1/pipelines/durable", Some(&admin), None);
    assert_eq!(pipeline["version"], 1, "registered pipelines survive");
}

#[test]
fn an_action_that_must_not_rerun_fails_truthfully_after_a_kill() {
    let (_workspace, server, admin, id) =
        kill_during_second(&TWO_STAGES.replace("ON_RESTART", "on-restart = \"fail\""));
    let (_, body) = server.call(
        "GET",
        &format!("/api/v1/executions/{id}"),
        Some(&admin),
        None,
    );
    assert_eq!(body["execution"]["status"], "Failed", "{body:#}");
    assert!(
        body["execution"]["error"]
            .as_str()
            .unwrap()
            .contains("on-restart policy is fail"),
        "{body:#}"
    );
    let second = body["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["action"] == "second")
        .unwrap();
    assert_eq!(second["status"], "Failed");
}

#[test]
fn the_cli_drives_the_server_register_start_watch_logs_audit() {
    let workspace = Workspace::new();
    let admin = token(&workspace, &["--role", "admin"]);
    let server = Server::start(&workspace);
    let url = format!("http://{}", server.addr);
    let client = |args: &[&str]| {
        let mut full = vec!["--server", url.as_str(), "--token", admin.as_str()];
        full.extend_from_slice(args);
        workspace.sluice(&full)
    };
    workspace.write("demo.toml", DEMO);
    let put = client(&["pipelines", "put", "demo.toml"]);
    assert!(
        put.status.success() && text(&put).contains("registered \"demo\" version 1"),
        "{}",
        text(&put)
    );
    let started = client(&["start", "demo", "--var", "who=cli"]);
    assert!(started.status.success(), "{}", text(&started));
    let id = String::from_utf8(started.stdout)
        .unwrap()
        .trim()
        .to_string();
    let watched = client(&["watch", &id]);
    assert!(watched.status.success(), "{}", text(&watched));
    assert!(
        text(&watched).contains(&format!("execution {id}: Succeeded")),
        "{}",
        text(&watched)
    );
    let shown = client(&["--output", "json", "executions", "show", &id]);
    let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(
        shown["actions"][0]["resolved_config"],
        json!([["run", "echo hello cli"]])
    );
    let logs = client(&["logs", &id, "say"]);
    assert!(text(&logs).contains("hello cli"), "{}", text(&logs));
    let audit = client(&["audit"]);
    assert!(
        text(&audit).contains("POST /api/v1/pipelines/demo/executions"),
        "{}",
        text(&audit)
    );
    let denied = workspace.sluice(&["--server", &url, "pipelines", "list"]);
    assert_eq!(denied.status.code(), Some(2));
    assert!(text(&denied).contains("401"), "{}", text(&denied));
    let offline = workspace.sluice(&["start", "demo"]);
    assert!(
        text(&offline).contains("pass --server URL"),
        "{}",
        text(&offline)
    );
}

#[test]
fn a_failed_stage_is_retried_on_the_latest_execution_only() {
    let workspace = Workspace::new();
    let admin = token(&workspace, &["--role", "admin"]);
    let server = Server::start(&workspace);
    let marker = workspace.path("fixed");
    let flaky = format!(
        r#"
[pipeline]
name = "flaky"
[[stages]]
name = "Build"
[[stages.actions]]
name = "build"
plugin = "command@0.1"
namespace = "build"
config = {{ run = "echo ::set-variable n=1" }}
grants = {{ commands = ["echo"] }}
[[stages]]
name = "Test"
[[stages.actions]]
name = "steady"
plugin = "command@0.1"
config = {{ run = "true" }}
grants = {{ commands = ["true"] }}
[[stages.actions]]
name = "flaky"
plugin = "command@0.1"
config = {{ run = "test -f {marker}" }}
grants = {{ commands = ["test"] }}
[[stages]]
name = "Deploy"
[[stages.actions]]
name = "deploy"
plugin = "command@0.1"
config = {{ run = "echo deploying #{{build.n}}" }}
grants = {{ commands = ["echo"] }}
"#,
        marker = marker.display()
    );
    assert_eq!(
        server
            .call("PUT", "/api/v1/pipelines/flaky", Some(&admin), Some(&flaky))
            .0,
        201
    );
    let start = |server: &Server| {
        let (_, started) = server.call(
            "POST",
            "/api/v1/pipelines/flaky/executions",
            Some(&admin),
            None,
        );
        let id = started["id"].as_str().unwrap().to_string();
        (wait_for_end(server, &admin, &id), id)
    };
    let (first, first_id) = start(&server);
    assert_eq!(first["execution"]["status"], "Failed");
    let retry = |id: &str, body: &str| {
        server.call(
            "POST",
            &format!("/api/v1/executions/{id}/stages/Test/retry"),
            Some(&admin),
            Some(body),
        )
    };
    assert_eq!(retry(&first_id, r#"{"mode": "sometimes"}"#).0, 400);
    assert_eq!(
        server
            .call(
                "POST",
                &format!("/api/v1/executions/{first_id}/stages/Build/retry"),
                Some(&admin),
                None
            )
            .0,
        409
    );

    std::fs::write(&marker, "").unwrap();
    let (status, body) = retry(&first_id, r#"{"mode": "failed"}"#);
    assert_eq!(status, 202, "{body}");
    let retried = wait_for_end(&server, &admin, &first_id);
    assert_eq!(retried["execution"]["status"], "Succeeded", "{retried:#}");
    let actions = retried["actions"].as_array().unwrap();
    let attempts =
        |name: &str| actions.iter().find(|a| a["action"] == name).unwrap()["started_ms"].clone();
    assert_eq!(
        attempts("steady"),
        first["actions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["action"] == "steady")
            .unwrap()["started_ms"],
        "mode failed keeps succeeded actions"
    );
    let (_, logs) = server.call(
        "GET",
        &format!("/api/v1/executions/{first_id}/logs?action=deploy"),
        Some(&admin),
        None,
    );
    assert!(
        logs["lines"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["line"] == "deploying 1"),
        "{logs:#}"
    );

    std::fs::remove_file(&marker).unwrap();
    let (_, second_id) = start(&server);
    let (_, third_id) = start(&server);
    let (status, body) = retry(&second_id, "");
    assert_eq!(status, 409, "an older execution cannot be retried: {body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("only the latest execution"),
        "{body}"
    );
    std::fs::write(&marker, "").unwrap();
    assert_eq!(retry(&third_id, r#"{"mode": "all"}"#).0, 202);
    assert_eq!(
        wait_for_end(&server, &admin, &third_id)["execution"]["status"],
        "Succeeded"
    );
}

/// Each call's (status, `field`) when it is refused.
fn refusal(server: &Server, token: &str, method: &str, path: &str, body: &str) -> (u16, Value) {
    let (status, error) = server.call(method, path, Some(token), Some(body));
    assert!(
        error["error"].is_string(),
        "{method} {path}: not a JSON error: {error}"
    );
    (status, error["field"].clone())
}

#[test]
fn pipeline_names_are_checked_where_a_pipeline_is_registered() {
    let workspace = Workspace::new();
    let admin = token(&workspace, &["--role", "admin"]);
    let server = Server::start(&workspace);
    let named = |name: &str| {
        let toml_name = format!("name = \"{}\"", name.replace('\0', "\\u0000"));
        DEMO.replacen("name = \"demo\"", &toml_name, 1)
    };
    let long = "x".repeat(10_000);
    for (name, in_url) in [
        ("../../etc/passwd", "..%2F..%2Fetc%2Fpasswd"),
        ("/", "%2F"),
        ("a\0b", "a%00b"),
        ("..", "%2E%2E"),
        (".", "."),
        (long.as_str(), long.as_str()),
    ] {
        let path = format!("/api/v1/pipelines/{in_url}");
        let (status, error) = server.call("PUT", &path, Some(&admin), Some(&named(name)));
        assert_eq!(
            (status, error["field"].as_str()),
            (400, Some("name")),
            "{name:.40}: {error}"
        );
        assert!(
            error["error"]
                .as_str()
                .unwrap()
                .contains("ASCII letters, digits"),
            "{error}"
        );
    }
    // A good URL name with a bad name in the file: the file's line and column.
    let (status, error) = server.call(
        "PUT",
        "/api/v1/pipelines/demo",
        Some(&admin),
        Some(&named("../demo")),
    );
    assert_eq!((status, error["field"].as_str()), (400, Some("source")));
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .contains("demo.toml:3:8: error: pipeline name `../demo` contains '/'"),
        "{error}"
    );
    let (status, listed) = server.call("GET", "/api/v1/pipelines", Some(&admin), None);
    assert_eq!((status, &listed["pipelines"]), (200, &json!([])));
    let dotted = named("my-app_2.0");
    let path = "/api/v1/pipelines/my-app_2.0";
    assert_eq!(server.call("PUT", path, Some(&admin), Some(&dotted)).0, 201);
}

#[test]
fn paging_past_the_end_lists_nothing_and_bad_numbers_name_their_parameter() {
    let workspace = Workspace::new();
    let admin = token(&workspace, &["--role", "admin"]);
    let server = Server::start(&workspace);
    server.call("PUT", "/api/v1/pipelines/demo", Some(&admin), Some(DEMO));
    let (_, started) = server.call(
        "POST",
        "/api/v1/pipelines/demo/executions",
        Some(&admin),
        None,
    );
    let id = started["id"].as_str().unwrap().to_string();
    wait_for_end(&server, &admin, &id);
    let page = |query: &str| {
        let (status, page) = server.call(
            "GET",
            &format!("/api/v1/executions?{query}"),
            Some(&admin),
            None,
        );
        assert_eq!(status, 200, "{query}: {page}");
        page
    };
    assert_eq!(page("offset=0")["executions"][0]["id"], id.as_str());
    assert_eq!(page("offset=1")["executions"], json!([]));
    let last = page("offset=18446744073709551615");
    assert_eq!(last["executions"], json!([]), "not the first page again");
    assert_eq!(last["offset"], json!(u64::MAX));
    assert_eq!(page("offset=9223372036854775808")["executions"], json!([]));
    for (query, parameter) in [
        ("offset=-1", "offset"),
        ("offset=18446744073709551616", "offset"),
        ("offset=1e3", "offset"),
        ("limit=", "limit"),
        ("limit=0", "limit"),
        ("colour=red", "colour"),
    ] {
        let path = format!("/api/v1/executions?{query}");
        assert_eq!(
            refusal(&server, &admin, "GET", &path, ""),
            (400, json!(parameter)),
            "{query}"
        );
    }
    let logs = format!("/api/v1/executions/{id}/logs?after=soon");
    assert_eq!(
        refusal(&server, &admin, "GET", &logs, ""),
        (400, json!("after"))
    );
    assert_eq!(
        refusal(&server, &admin, "GET", "/api/v1/audit?limit=-5", ""),
        (400, json!("limit"))
    );
}

#[test]
fn request_bodies_must_be_json_objects_and_a_misfit_names_its_field() {
    let workspace = Workspace::new();
    let admin = token(&workspace, &["--role", "admin"]);
    let server = Server::start(&workspace);
    server.call("PUT", "/api/v1/pipelines/demo", Some(&admin), Some(DEMO));
    let start = "/api/v1/pipelines/demo/executions";
    for body in ["[]", "null", "\"go\"", "5", "{", r#"{"variables": {}} x"#] {
        assert_eq!(
            refusal(&server, &admin, "POST", start, body),
            (400, json!("body")),
            "{body}"
        );
    }
    for (body, field) in [
        (r#"{"variables": {"who": 5}}"#, "variables.who"),
        (r#"{"variables": ["who"]}"#, "variables"),
        (r#"{"revision": 7}"#, "revision"),
        (r#"{"colour": "red"}"#, "colour"),
    ] {
        assert_eq!(
            refusal(&server, &admin, "POST", start, body),
            (400, json!(field)),
            "{body}"
        );
    }
    let (_, listed) = server.call("GET", "/api/v1/executions", Some(&admin), None);
    assert_eq!(listed["executions"], json!([]), "no refused start ran");

    let (_, started) = server.call("POST", start, Some(&admin), Some("{}"));
    let id = started["id"].as_str().unwrap().to_string();
    wait_for_end(&server, &admin, &id);
    let transition = "/api/v1/pipelines/demo/stages/Say/transition";
    let execution = |rest: &str| format!("/api/v1/executions/{id}/{rest}");
    for (method, path, body, field) in [
        ("PUT", transition.to_string(), "", "enabled"),
        (
            "PUT",
            transition.to_string(),
            r#"{"enabled": "no"}"#,
            "enabled",
        ),
        (
            "PUT",
            transition.to_string(),
            r#"{"enabled": false, "why": "x"}"#,
            "why",
        ),
        ("POST", execution("stop"), r#"{"mode": 3}"#, "mode"),
        ("POST", execution("stop"), r#"{"mode": "later"}"#, "mode"),
        ("POST", execution("stop"), "[]", "body"),
        (
            "POST",
            execution("stages/Say/retry"),
            r#"{"mode": "some"}"#,
            "mode",
        ),
        (
            "POST",
            execution("approvals/say"),
            r#"{"decision": "maybe", "token": "t"}"#,
            "decision",
        ),
        (
            "POST",
            execution("stages/Say/retry"),
            r#"{"mode": true}"#,
            "mode",
        ),
        (
            "POST",
            execution("approvals/say"),
            r#"{"decision": "approve"}"#,
            "token",
        ),
        (
            "POST",
            execution("approvals/say"),
            r#"{"token": "t"}"#,
            "decision",
        ),
    ] {
        assert_eq!(
            refusal(&server, &admin, method, &path, body),
            (400, json!(field)),
            "{method} {path} {body}"
        );
    }
    assert_eq!(
        refusal(&server, &admin, "GET", "/api/v1/pipelines/%FF", ""),
        (400, json!("path"))
    );
}

#[test]
fn unknown_routes_and_wrong_methods_say_which_in_json() {
    let workspace = Workspace::new();
    let admin = token(&workspace, &["--role", "admin"]);
    let server = Server::start(&workspace);
    for (method, path, status, words) in [
        (
            "GET",
            "/api/v1/nothing-here",
            404,
            "no route GET /api/v1/nothing-here",
        ),
        ("GET", "/nowhere", 404, "no route GET /nowhere"),
        (
            "DELETE",
            "/api/v1/executions",
            405,
            "/api/v1/executions does not take DELETE",
        ),
        ("POST", "/metrics", 405, "/metrics does not take POST"),
        (
            "PATCH",
            "/api/v1/pipelines/demo",
            405,
            "does not take PATCH",
        ),
    ] {
        let (got, error) = server.call(method, path, Some(&admin), None);
        assert_eq!(got, status, "{method} {path}: {error}");
        assert!(
            error["error"].as_str().is_some_and(|e| e.contains(words)),
            "{method} {path}: {error}"
        );
    }
}

#[test]
fn metrics_escape_label_values() {
    let workspace = Workspace::new();
    token(&workspace, &["--role", "admin"]);
    // A name from before names were checked, stored as an older server did.
    use sluice_store::state::prelude::*;
    let state =
        sluice_store::state::SqliteStore::open(&workspace.path(".sluice/state.db")).unwrap();
    state.put_pipeline("old\"one\\\nx", DEMO, 0).unwrap();
    drop(state);
    let server = Server::start(&workspace);
    let metrics = raw_get(&server, "/metrics");
    assert!(
        metrics.contains("sluice_queue_depth{pipeline=\"old\\\"one\\\\\\nx\"} 0\n"),
        "{metrics}"
    );
}

#[test]
fn the_cli_encodes_names_in_urls() {
    let workspace = Workspace::new();
    let admin = token(&workspace, &["--role", "admin"]);
    let server = Server::start(&workspace);
    let url = format!("http://{}", server.addr);
    let client = |args: &[&str]| {
        let mut full = vec!["--server", url.as_str(), "--token", admin.as_str()];
        full.extend_from_slice(args);
        workspace.sluice(&full)
    };
    let marker = workspace.path("fixed");
    workspace.write(
        "encoded.toml",
        &format!(
            r#"
[pipeline]
name = "encoded"
[[stages]]
name = "Test/1?x"
[[stages.actions]]
name = "a&b c#d"
plugin = "command@0.1"
config = {{ run = "sh -c 'echo checking; test -f {marker}'" }}
grants = {{ commands = ["sh"] }}
"#,
            marker = marker.display()
        ),
    );
    let put = client(&["pipelines", "put", "encoded.toml"]);
    assert!(put.status.success(), "{}", text(&put));
    let started = client(&["start", "encoded"]);
    assert!(started.status.success(), "{}", text(&started));
    let id = String::from_utf8(started.stdout)
        .unwrap()
        .trim()
        .to_string();
    let watched = client(&["watch", &id]);
    assert_eq!(watched.status.code(), Some(1), "{}", text(&watched));
    let logs = client(&["logs", &id, "a&b c#d"]);
    assert!(
        logs.status.success() && text(&logs).contains("checking"),
        "{}",
        text(&logs)
    );
    std::fs::write(&marker, "").unwrap();
    let retried = client(&["retry", &id, "Test/1?x"]);
    assert!(retried.status.success(), "{}", text(&retried));
    let watched = client(&["watch", &id]);
    assert!(watched.status.success(), "{}", text(&watched));
    // `..` would climb out of the path: refused before anything is sent.
    let climbing = client(&["logs", ".."]);
    assert_eq!(climbing.status.code(), Some(2));
    assert!(
        text(&climbing).contains("`..` cannot be sent as a name in a URL path"),
        "{}",
        text(&climbing)
    );
}

/// The routes the API serves, as (method, path).
const API_ROUTES: [(&str, &str); 26] = [
    ("get", "/api/v1/pipelines"),
    ("get", "/api/v1/pipelines/{name}"),
    ("put", "/api/v1/pipelines/{name}"),
    ("delete", "/api/v1/pipelines/{name}"),
    ("get", "/api/v1/pipelines/{name}/versions/{version}"),
    ("post", "/api/v1/pipelines/{name}/executions"),
    ("put", "/api/v1/pipelines/{name}/stages/{stage}/transition"),
    ("get", "/api/v1/pipelines/{name}/state"),
    ("get", "/api/v1/executions"),
    ("get", "/api/v1/executions/{id}"),
    ("get", "/api/v1/executions/{id}/logs"),
    ("get", "/api/v1/executions/{id}/logs/download"),
    ("get", "/api/v1/executions/{id}/artifacts"),
    ("get", "/api/v1/executions/{id}/artifacts/{name}"),
    ("post", "/api/v1/executions/{id}/stages/{stage}/retry"),
    ("post", "/api/v1/pipelines/{name}/stages/{stage}/rollback"),
    (
        "post",
        "/api/v1/executions/{id}/stages/{stage}/conditions/{condition}/override",
    ),
    ("post", "/api/v1/executions/{id}/stop"),
    ("post", "/api/v1/executions/{id}/approvals/{action}"),
    ("get", "/api/v1/events"),
    ("get", "/api/v1/audit"),
    ("get", "/api/v1/whoami"),
    ("get", "/api/v1/plugins"),
    ("post", "/api/v1/webhooks/{name}"),
    ("get", "/metrics"),
    ("get", "/health"),
];

#[test]
fn the_generated_openapi_document_matches_the_router() {
    let workspace = Workspace::new();
    let admin = token(&workspace, &["--role", "admin"]);
    let server = Server::start(&workspace);
    let (status, document) = server.call("GET", "/openapi.json", None, None);
    assert_eq!(status, 200);
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.push((method.clone(), path.clone()));
        }
    }
    documented.sort();
    let mut expected: Vec<(String, String)> = API_ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    expected.sort();
    assert_eq!(documented, expected, "{document:#}");
    // Every documented route is served (a stream would not end: skip it).
    for (method, path) in documented.iter().filter(|(_, p)| p != "/api/v1/events") {
        let concrete = path.replace("{version}", "1").replace(['{', '}'], "");
        let (status, body) = server.call(&method.to_uppercase(), &concrete, Some(&admin), None);
        let unrouted = status == 405
            || (status == 404
                && body["error"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("no route")));
        assert!(
            !unrouted,
            "{method} {path} is documented but not served: {status} {body}"
        );
    }
    // Bodies, parameters and errors come from their types.
    let schemas = &document["components"]["schemas"];
    assert!(
        schemas["StartRequest"]["properties"]["variables"].is_object(),
        "{schemas:#}"
    );
    assert!(
        schemas["ErrorBody"]["properties"]["field"].is_object(),
        "{schemas:#}"
    );
    let list = &document["paths"]["/api/v1/executions"]["get"];
    let parameters: Vec<&str> = list["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(
        parameters,
        ["pipeline", "status", "limit", "offset"],
        "{list:#}"
    );
    assert!(list["responses"]["401"].is_object(), "{list:#}");
    // Answers come from their types too, the same ones the CLI client reads.
    for (path, method, status, schema) in [
        ("/api/v1/executions", "get", "200", "ExecutionPage"),
        ("/api/v1/executions/{id}", "get", "200", "ExecutionDetail"),
        ("/api/v1/executions/{id}/logs", "get", "200", "LogPage"),
        (
            "/api/v1/pipelines/{name}/state",
            "get",
            "200",
            "PipelineState",
        ),
        (
            "/api/v1/pipelines/{name}/executions",
            "post",
            "202",
            "Started",
        ),
    ] {
        let answer = &document["paths"][path][method]["responses"][status];
        assert_eq!(
            answer["content"]["application/json"]["schema"]["$ref"],
            format!("#/components/schemas/{schema}"),
            "{method} {path}: {answer:#}"
        );
    }
    let statuses = schemas["Status"]["enum"].as_array().unwrap();
    assert!(
        statuses.contains(&json!("InProgress")) && statuses.contains(&json!("Superseded")),
        "{statuses:?}"
    );
    // No reference points at a schema the document does not have.
    let mut references = Vec::new();
    collect_references(&document, &mut references);
    assert!(references.len() > 20, "{references:?}");
    for reference in references {
        let name = reference
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected reference {reference}"));
        assert!(
            schemas[name].is_object(),
            "{reference} is not in the document"
        );
    }
}

/// Every `$ref` in a JSON document.
fn collect_references(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(reference)) = map.get("$ref") {
                found.push(reference.clone());
            }
            map.values().for_each(|v| collect_references(v, found));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_references(v, found)),
        _ => {}
    }
}

/// The JSON log lines `serve --log-format json` wrote; every line must be one.
fn json_log(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// Whether a log line happened inside a span with these fields.
fn in_span(line: &Value, fields: &Value) -> bool {
    line["spans"].as_array().is_some_and(|spans| {
        spans.iter().any(|span| {
            fields
                .as_object()
                .unwrap()
                .iter()
                .all(|(key, value)| &span[key] == value)
        })
    })
}

#[test]
fn serve_logs_requests_and_execution_spans_as_json_lines_without_tokens() {
    let workspace = Workspace::new();
    let admin = token(&workspace, &["--role", "admin"]);
    let server = Server::start_logging(
        &workspace,
        &["--log-format", "json"],
        &[("RUST_LOG", "sluice=debug")],
        "serve.json",
    );
    let (status, _) = server.call("PUT", "/api/v1/pipelines/demo", Some(&admin), Some(DEMO));
    assert_eq!(status, 201);
    let (status, started) = server.call(
        "POST",
        "/api/v1/pipelines/demo/executions",
        Some(&admin),
        None,
    );
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_str().unwrap().to_string();
    let done = wait_for_end(&server, &admin, &id);
    assert_eq!(done["execution"]["status"], "Succeeded", "{done:#}");
    let (status, _) = server.call(
        "GET",
        "/api/v1/executions?pipeline=demo&limit=5",
        Some(&admin),
        None,
    );
    assert_eq!(status, 200);
    // A token in a query string stays out of the log too.
    let (status, _) = server.call("GET", &format!("/health?token={admin}"), None, None);
    assert_eq!(status, 200);
    drop(server);

    let text = std::fs::read_to_string(workspace.path("serve.json")).unwrap();
    assert!(!text.contains(&admin), "the token was logged:\n{text}");
    assert!(
        !text.contains("limit=5"),
        "a query string was logged:\n{text}"
    );
    let lines = json_log(&text);
    let answered = |method: &str, path: &str, status: u16| {
        lines.iter().any(|line| {
            line["fields"]["message"] == "answered"
                && line["fields"]["status"] == status
                && line["fields"]["latency_ms"].is_number()
                && line["span"] == json!({"name": "request", "method": method, "path": path})
        })
    };
    assert!(answered("PUT", "/api/v1/pipelines/demo", 201), "{text}");
    assert!(
        answered("POST", "/api/v1/pipelines/demo/executions", 202),
        "{text}"
    );
    assert!(answered("GET", "/api/v1/executions", 200), "{text}");
    assert!(answered("GET", "/health", 200), "{text}");

    let execution = json!({"name": "execution", "execution": id, "pipeline": "demo"});
    let action = json!({"name": "action", "action": "say"});
    let stage = json!({"name": "stage", "stage": "Say"});
    let finished = lines.iter().any(|line| {
        line["fields"]["message"] == "action say: SUCCEEDED"
            && line["span"] == action
            && in_span(line, &execution)
            && in_span(line, &stage)
    });
    assert!(finished, "no action state change in its spans:\n{text}");
    let attempted = lines.iter().any(|line| {
        line["level"] == "DEBUG"
            && line["span"] == json!({"name": "attempt", "attempt": 1})
            && in_span(line, &action)
            && in_span(line, &execution)
    });
    assert!(
        attempted,
        "no attempt span under its action and execution:\n{text}"
    );
}

#[test]
fn serve_logs_requests_as_text_by_default() {
    let workspace = Workspace::new();
    let server = Server::start_logging(&workspace, &[], &[], "serve.log");
    assert_eq!(server.call("GET", "/health", None, None).0, 200);
    drop(server);
    let text = std::fs::read_to_string(workspace.path("serve.log")).unwrap();
    let answered = text.lines().any(|line| {
        line.contains(" INFO ")
            && line.contains("request{method=GET path=/health}")
            && line.contains("answered status=200")
    });
    assert!(answered, "{text}");
    assert!(!text.contains("DEBUG"), "debug lines by default:\n{text}");
    assert!(!text.trim_start().starts_with('{'), "{text}");
}
