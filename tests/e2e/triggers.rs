//! Triggers through the real server: signed webhooks with filters, and cron.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::harness::Workspace;
use crate::server::{Server, token, wait_for_end};

const HOOKED: &str = r##"
[pipeline]
name = "hooked"
execution-mode = "parallel"
[triggers.webhook]
secret = "HOOK_KEY"
branches = ["main", "release/*"]
paths = ["src/**", "Cargo.toml"]
[[stages]]
name = "Build"
[[stages.actions]]
name = "build"
plugin = "command@0.1"
config = { run = "echo building #{trigger.revision} on #{trigger.branch} after #{trigger.event}" }
grants = { commands = ["echo"] }
"##;

fn signed(key: &str, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// POST a delivery with its headers; returns (status, body).
fn deliver(server: &Server, event: &str, body: &str, signature: &str) -> (u16, Value) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(&server.addr).unwrap();
    write!(
        stream,
        "POST /api/v1/webhooks/hooked HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: {event}\r\nX-Hub-Signature-256: {signature}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, payload) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let payload = payload.trim();
    let json_start = payload.find('{').unwrap_or(0);
    let json_end = payload.rfind('}').map(|i| i + 1).unwrap_or(payload.len());
    (
        status,
        serde_json::from_str(&payload[json_start..json_end]).unwrap_or(Value::Null),
    )
}

fn push(branch: &str, paths: &[&str], after: &str) -> String {
    json!({ "ref": format!("refs/heads/{branch}"), "after": after, "commits": [{ "added": [], "modified": paths, "removed": [] }] }).to_string()
}

#[test]
fn signed_webhooks_start_filtered_executions_with_their_revision() {
    let mut workspace = Workspace::new();
    workspace.env("SLUICE_SECRET_HOOK_KEY", "hook-key-123");
    let admin = token(&workspace, &["--role", "admin"]);
    let server = Server::start(&workspace);
    assert_eq!(
        server
            .call(
                "PUT",
                "/api/v1/pipelines/hooked",
                Some(&admin),
                Some(HOOKED)
            )
            .0,
        201
    );

    let body = push("main", &["src/lib.rs"], "abc123");
    assert_eq!(
        deliver(&server, "push", &body, &signed("wrong-key", &body)).0,
        401,
        "bad signature"
    );
    assert_eq!(deliver(&server, "push", &body, "sha256=00").0, 401);
    let (status, started) = deliver(&server, "push", &body, &signed("hook-key-123", &body));
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_str().unwrap();
    let done = wait_for_end(&server, &admin, id);
    assert_eq!(done["execution"]["status"], "Succeeded");
    assert_eq!(done["execution"]["trigger"]["kind"], "webhook");
    assert_eq!(
        done["actions"][0]["resolved_config"][0][1],
        "echo building abc123 on main after push"
    );

    for (branch, paths, why) in [
        ("feature/x", vec!["src/a.rs"], "branch `feature/x`"),
        ("release/1.0/hotfix", vec!["src/a.rs"], "branch"),
        ("release/1.0", vec!["docs/readme.md"], "no changed path"),
    ] {
        let body = push(branch, &paths, "def");
        let (status, answer) = deliver(&server, "push", &body, &signed("hook-key-123", &body));
        assert_eq!(status, 200, "{answer}");
        assert!(
            answer["ignored"].as_str().unwrap().contains(why),
            "{answer}"
        );
    }
    let body = push("release/2.0", &["Cargo.toml"], "fed");
    assert_eq!(
        deliver(&server, "push", &body, &signed("hook-key-123", &body)).0,
        202,
        "release/* and a root file match"
    );
    let pr = json!({ "pull_request": { "base": { "ref": "main" }, "head": { "sha": "0a0b" } } })
        .to_string();
    let (status, started) = deliver(&server, "pull_request", &pr, &signed("hook-key-123", &pr));
    assert_eq!(status, 202);
    let done = wait_for_end(&server, &admin, started["id"].as_str().unwrap());
    assert_eq!(
        done["actions"][0]["resolved_config"][0][1],
        "echo building 0a0b on main after pull_request"
    );

    let (_, audit) = server.call("GET", "/api/v1/audit", Some(&admin), None);
    let webhook_entries = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["actor"] == "webhook")
        .count();
    assert_eq!(webhook_entries, 8, "every delivery is audited: {audit:#}");
}

#[test]
fn cron_schedules_start_executions() {
    let workspace = Workspace::new();
    let admin = token(&workspace, &["--role", "admin"]);
    let server = Server::start(&workspace);
    let pipeline = HOOKED
        .replace("[triggers.webhook]\nsecret = \"HOOK_KEY\"\nbranches = [\"main\", \"release/*\"]\npaths = [\"src/**\", \"Cargo.toml\"]", "[triggers]\ncron = [\"* * * * * *\"]")
        .replace("hooked", "ticking");
    assert_eq!(
        server
            .call(
                "PUT",
                "/api/v1/pipelines/ticking",
                Some(&admin),
                Some(&pipeline)
            )
            .0,
        201
    );
    let mut found = None;
    for _ in 0..100 {
        let (_, listed) = server.call(
            "GET",
            "/api/v1/executions?pipeline=ticking",
            Some(&admin),
            None,
        );
        if let Some(execution) = listed["executions"].as_array().unwrap().first() {
            found = Some(execution["id"].as_str().unwrap().to_string());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let id = found.expect("the every-second schedule never fired");
    let done = wait_for_end(&server, &admin, &id);
    assert_eq!(done["execution"]["trigger"]["kind"], "cron");
    assert_eq!(done["execution"]["trigger"]["event"], "* * * * * *");
    let (status, body) = server.call(
        "PUT",
        "/api/v1/pipelines/ticking",
        Some(&admin),
        Some(&pipeline.replace("* * * * * *", "every minute")),
    );
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("invalid cron schedule"),
        "{body}"
    );
}

fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let output = std::process::Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

#[test]
fn polling_a_git_source_starts_an_execution_per_new_commit() {
    let workspace = Workspace::new();
    let repo = workspace.path("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "--quiet"]);
    std::fs::write(repo.join("app.txt"), "v1").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "--quiet", "-m", "one"]);
    let first = git(&repo, &["rev-parse", "HEAD"]);
    let admin = token(&workspace, &["--role", "admin"]);
    let server = Server::start(&workspace);
    let pipeline = format!(
        r##"
[pipeline]
name = "polled"
execution-mode = "queued"
[triggers]
poll = {{ action = "checkout", interval = "300ms" }}
[[stages]]
name = "Source"
[[stages.actions]]
name = "checkout"
plugin = "git-source@0.1"
outputs = ["source"]
namespace = "src"
config = {{ repo = "{repo}", branch = "main", revision = "#{{trigger.revision}}" }}
grants = {{ commands = ["git"], toolchains = ["{repo}"] }}
[[stages]]
name = "Build"
[[stages.actions]]
name = "show"
plugin = "command@0.1"
inputs = ["source"]
config = {{ run = "cat app.txt" }}
grants = {{ commands = ["cat"] }}
"##,
        repo = repo.display()
    );
    let (status, body) = server.call(
        "PUT",
        "/api/v1/pipelines/polled",
        Some(&admin),
        Some(&pipeline),
    );
    assert_eq!(status, 201, "{body}");
    let executions = |n: usize| {
        for _ in 0..200 {
            let (_, listed) = server.call(
                "GET",
                "/api/v1/executions?pipeline=polled",
                Some(&admin),
                None,
            );
            let list = listed["executions"].as_array().unwrap().clone();
            if list.len() >= n {
                return list;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("fewer than {n} polled executions");
    };
    let list = executions(1);
    let done = wait_for_end(&server, &admin, list[0]["id"].as_str().unwrap());
    assert_eq!(done["execution"]["status"], "Succeeded", "{done:#}");
    assert_eq!(done["execution"]["trigger"]["revision"], first.as_str());
    assert_eq!(
        done["actions"][0]["variables"][0],
        json!(["revision", first])
    );

    std::fs::write(repo.join("app.txt"), "v2").unwrap();
    git(&repo, &["commit", "--quiet", "-am", "two"]);
    let second = git(&repo, &["rev-parse", "HEAD"]);
    let list = executions(2);
    let newest = list
        .iter()
        .find(|e| e["trigger"]["revision"] == second.as_str())
        .expect("an execution for the new commit");
    let done = wait_for_end(&server, &admin, newest["id"].as_str().unwrap());
    let (_, logs) = server.call(
        "GET",
        &format!(
            "/api/v1/executions/{}/logs?action=show",
            newest["id"].as_str().unwrap()
        ),
        Some(&admin),
        None,
    );
    assert!(
        logs["lines"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["line"] == "v2"),
        "{done:#} {logs:#}"
    );
}
