//! Server hardening through the real `sluice serve`: audit scope, webhook
//! deduplication, ping, size and age limits, slow clients, connection cap,
//! token expiry and revocation, JSON errors.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::harness::{Workspace, text};
use crate::server::{Server, token, wait_for_end};

fn pipeline(name: &str) -> String {
    format!(
        r#"
[pipeline]
name = "{name}"
[[stages]]
name = "Say"
[[stages.actions]]
name = "say"
plugin = "command@0.1"
config = {{ run = "echo hello" }}
grants = {{ commands = ["echo"] }}
"#
    )
}

const HOOKED: &str = r##"
[pipeline]
name = "hooked"
execution-mode = "parallel"
[triggers.webhook]
secret = "HOOK_KEY"
[[stages]]
name = "Build"
[[stages.actions]]
name = "build"
plugin = "command@0.1"
config = { run = "echo building #{trigger.revision}" }
grants = { commands = ["echo"] }
"##;

const KEY: &str = "hook-key-123";

fn sign(message: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(KEY.as_bytes()).unwrap();
    mac.update(message);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Send raw bytes, read until the server closes; (status, JSON body).
fn exchange(addr: &str, request: &[u8]) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    parse(&response)
}

fn parse(response: &[u8]) -> (u16, Value) {
    let response = String::from_utf8_lossy(response);
    let (head, payload) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response: {response:?}"));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let start = payload.find('{').unwrap_or(0);
    let end = payload.rfind('}').map(|i| i + 1).unwrap_or(payload.len());
    (
        status,
        serde_json::from_str(&payload[start..end]).unwrap_or(Value::Null),
    )
}

/// POST a webhook delivery to `hooked` with these extra headers.
fn deliver(server: &Server, headers: &[(&str, &str)], body: &[u8]) -> (u16, Value) {
    let mut request = format!(
        "POST /api/v1/webhooks/hooked HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    exchange(&server.addr, &bytes)
}

fn push(after: &str) -> String {
    json!({ "ref": "refs/heads/main", "after": after, "commits": [] }).to_string()
}

fn hooked_server(workspace: &mut Workspace, flags: &[&str]) -> (Server, String) {
    workspace.env("SLUICE_SECRET_HOOK_KEY", KEY);
    let admin = token(workspace, &["--role", "admin"]);
    let server = Server::start_with(workspace, flags);
    let put = server.call(
        "PUT",
        "/api/v1/pipelines/hooked",
        Some(&admin),
        Some(HOOKED),
    );
    assert!(put.0 == 201 || put.0 == 200, "{put:?}");
    (server, admin)
}

fn executions_of(server: &Server, admin: &str, pipeline: &str) -> usize {
    let (status, listed) = server.call(
        "GET",
        &format!("/api/v1/executions?pipeline={pipeline}"),
        Some(admin),
        None,
    );
    assert_eq!(status, 200, "{listed}");
    listed["executions"].as_array().unwrap().len()
}

#[test]
fn a_scoped_admin_reads_only_its_pipelines_audit_entries() {
    let workspace = Workspace::new();
    let admin = token(&workspace, &["--role", "admin"]);
    let scoped = token(&workspace, &["--role", "admin", "--pipeline", "mine"]);
    let server = Server::start(&workspace);
    for name in ["mine", "theirs"] {
        let put = server.call(
            "PUT",
            &format!("/api/v1/pipelines/{name}"),
            Some(&admin),
            Some(&pipeline(name)),
        );
        assert_eq!(put.0, 201, "{put:?}");
    }
    let mut ids = Vec::new();
    for name in ["mine", "theirs"] {
        let (status, started) = server.call(
            "POST",
            &format!("/api/v1/pipelines/{name}/executions"),
            Some(&admin),
            None,
        );
        assert_eq!(status, 202, "{started}");
        let id = started["id"].as_str().unwrap().to_string();
        wait_for_end(&server, &admin, &id);
        // Stopping a finished execution is refused, and audited under its pipeline.
        let stop = server.call(
            "POST",
            &format!("/api/v1/executions/{id}/stop"),
            Some(&admin),
            None,
        );
        assert_eq!(stop.0, 409, "{stop:?}");
        ids.push(id);
    }

    let (status, audit) = server.call("GET", "/api/v1/audit", Some(&scoped), None);
    assert_eq!(status, 200, "{audit}");
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "PUT /api/v1/pipelines/mine".to_string(),
            "POST /api/v1/pipelines/mine/executions".to_string(),
            format!("POST /api/v1/executions/{}/stop", ids[0]),
        ],
        "a scoped admin sees its pipeline's entries, no other pipeline's and no global ones: {audit:#}"
    );
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["pipeline"] == "mine")
    );

    let (status, all) = server.call("GET", "/api/v1/audit", Some(&admin), None);
    assert_eq!(status, 200);
    let entries = all["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2 + 6, "{all:#}");
    let token_entries = entries
        .iter()
        .filter(|e| {
            e["action"]
                .as_str()
                .unwrap()
                .starts_with("token create tok_")
        })
        .count();
    assert_eq!(token_entries, 2, "token management is audited: {all:#}");
    assert!(entries.iter().any(|e| e["action"]
        == format!("POST /api/v1/executions/{}/stop", ids[1])
        && e["pipeline"] == "theirs"));
}

#[test]
fn webhook_deliveries_are_deduplicated_and_pings_answered() {
    let mut workspace = Workspace::new();
    let (server, admin) = hooked_server(&mut workspace, &[]);
    let body = push("abc123");
    let signature = sign(body.as_bytes());
    let headers = [
        ("X-GitHub-Event", "push"),
        ("X-Hub-Signature-256", signature.as_str()),
        ("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
    ];
    let (status, first) = deliver(&server, &headers, body.as_bytes());
    assert_eq!(status, 202, "{first}");
    let (status, again) = deliver(&server, &headers, body.as_bytes());
    assert_eq!(status, 200, "a redelivery is answered, not run: {again}");
    assert_eq!(again["id"], first["id"], "{again}");
    assert_eq!(executions_of(&server, &admin, "hooked"), 1);

    let other = [
        headers[0],
        headers[1],
        ("X-GitHub-Delivery", "another-delivery"),
    ];
    let (status, second) = deliver(&server, &other, body.as_bytes());
    assert_eq!(status, 202, "{second}");
    assert_ne!(second["id"], first["id"]);
    assert_eq!(executions_of(&server, &admin, "hooked"), 2);

    let ping = json!({ "zen": "Keep it logically awesome.", "hook_id": 1 }).to_string();
    let ping_signature = sign(ping.as_bytes());
    let (status, answer) = deliver(
        &server,
        &[
            ("X-GitHub-Event", "ping"),
            ("X-Hub-Signature-256", &ping_signature),
            ("X-GitHub-Delivery", "ping-1"),
        ],
        ping.as_bytes(),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["pong"], true, "{answer}");
    let (status, _) = deliver(
        &server,
        &[
            ("X-GitHub-Event", "ping"),
            ("X-Hub-Signature-256", "sha256=00"),
        ],
        ping.as_bytes(),
    );
    assert_eq!(status, 401, "a ping is signed too");
    assert_eq!(executions_of(&server, &admin, "hooked"), 2);
}

#[test]
fn webhooks_take_githubs_25_mb_and_refuse_more_with_json() {
    let mut workspace = Workspace::new();
    let (server, admin) = hooked_server(&mut workspace, &[]);
    // 3 MB: above axum's 2 MB default, within GitHub's 25 MB.
    let padding = "x".repeat(3 * 1024 * 1024);
    let body =
        json!({ "ref": "refs/heads/main", "after": "big", "commits": [], "padding": padding })
            .to_string();
    let signature = sign(body.as_bytes());
    let (status, started) = deliver(
        &server,
        &[
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", &signature),
        ],
        body.as_bytes(),
    );
    assert_eq!(status, 202, "{started}");
    let done = wait_for_end(&server, &admin, started["id"].as_str().unwrap());
    assert_eq!(done["execution"]["status"], "Succeeded");

    // Above 25 MB: refused from the declared length, before reading it.
    let request = format!(
        "POST /api/v1/webhooks/hooked HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\nX-Hub-Signature-256: sha256=00\r\nContent-Length: {}\r\n\r\n{{\"ref\":",
        26 * 1024 * 1024
    );
    let (status, refused) = exchange(&server.addr, request.as_bytes());
    assert_eq!(status, 413, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("25 MiB"),
        "{refused}"
    );
    // Other routes keep the 2 MB limit.
    let request = format!(
        "PUT /api/v1/pipelines/big HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\nContent-Length: {}\r\n\r\n[",
        3 * 1024 * 1024
    );
    let (status, refused) = exchange(&server.addr, request.as_bytes());
    assert_eq!(status, 413, "{refused}");
    assert!(refused["error"].as_str().is_some(), "{refused}");
}

#[test]
fn timestamped_webhooks_older_than_the_window_are_refused() {
    let mut workspace = Workspace::new();
    let (server, admin) = hooked_server(&mut workspace, &[]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let body = push("stamped");
    let signed_at = |at: u64| sign(format!("{at}.{body}").as_bytes());
    let fresh = now.to_string();
    let (status, started) = deliver(
        &server,
        &[
            ("X-GitHub-Event", "push"),
            ("X-Sluice-Timestamp", &fresh),
            ("X-Hub-Signature-256", &signed_at(now)),
        ],
        body.as_bytes(),
    );
    assert_eq!(status, 202, "{started}");

    let old = (now - 600).to_string();
    let (status, refused) = deliver(
        &server,
        &[
            ("X-GitHub-Event", "push"),
            ("X-Sluice-Timestamp", &old),
            ("X-Hub-Signature-256", &signed_at(now - 600)),
        ],
        body.as_bytes(),
    );
    assert_eq!(status, 401, "{refused}");
    // The age is measured when the server reads the request, so a second may
    // have passed since the test took `now`.
    let error = refused["error"].as_str().unwrap();
    let age: u64 = error
        .split("s old")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|age| age.parse().ok())
        .unwrap_or_else(|| panic!("no age in {error}"));
    assert!((600..=660).contains(&age), "{error}");
    // Moving the timestamp forward breaks the signature: it covers the timestamp.
    let (status, refused) = deliver(
        &server,
        &[
            ("X-GitHub-Event", "push"),
            ("X-Sluice-Timestamp", &fresh),
            ("X-Hub-Signature-256", &signed_at(now - 600)),
        ],
        body.as_bytes(),
    );
    assert_eq!(status, 401, "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("mismatch"));
    assert_eq!(executions_of(&server, &admin, "hooked"), 1);
    drop(server);

    // The window is configurable.
    let server = Server::start_with(&workspace, &["--webhook-max-age", "15m"]);
    let (status, started) = deliver(
        &server,
        &[
            ("X-GitHub-Event", "push"),
            ("X-Sluice-Timestamp", &old),
            ("X-Hub-Signature-256", &signed_at(now - 600)),
        ],
        body.as_bytes(),
    );
    assert_eq!(status, 202, "{started}");
}

/// Read until the server closes the connection (or 20 s pass); how long it took.
fn time_until_closed(stream: &mut TcpStream) -> (Duration, Vec<u8>) {
    let began = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
        }
    }
    (began.elapsed(), received)
}

#[test]
fn half_sent_headers_and_bodies_are_closed_after_their_timeouts() {
    let workspace = Workspace::new();
    let admin = token(&workspace, &["--role", "admin"]);
    let server = Server::start_with(
        &workspace,
        &["--header-timeout", "1s", "--body-timeout", "1s"],
    );

    let mut stream = TcpStream::connect(&server.addr).unwrap();
    stream.write_all(b"GET /api/v1/pipel").unwrap();
    let (took, _) = time_until_closed(&mut stream);
    assert!(
        took < Duration::from_secs(10),
        "half a request line was held for {took:?}"
    );

    let mut stream = TcpStream::connect(&server.addr).unwrap();
    write!(
        stream,
        "PUT /api/v1/pipelines/slow HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\nContent-Length: 100\r\n\r\n[pipeline]"
    )
    .unwrap();
    let (took, response) = time_until_closed(&mut stream);
    assert!(
        took < Duration::from_secs(10),
        "half a body was held for {took:?}"
    );
    let (status, body) = parse(&response);
    assert_eq!(status, 408, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("sent nothing"),
        "{body}"
    );

    // A complete request is still served.
    assert_eq!(
        server
            .call("GET", "/api/v1/pipelines", Some(&admin), None)
            .0,
        200
    );
}

#[test]
fn connections_beyond_the_cap_wait_until_one_closes() {
    let workspace = Workspace::new();
    let server = Server::start_with(
        &workspace,
        &["--max-connections", "1", "--header-timeout", "60s"],
    );
    let holder = TcpStream::connect(&server.addr).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut waiting = TcpStream::connect(&server.addr).unwrap();
    waiting
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    waiting
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut buffer = [0u8; 256];
    let blocked = waiting.read(&mut buffer);
    assert!(
        blocked.is_err(),
        "the second connection was served while the first held the only slot: {blocked:?}"
    );
    drop(holder);
    let (_, response) = time_until_closed(&mut waiting);
    let response = String::from_utf8_lossy(&response);
    assert!(
        response.starts_with("HTTP/1.1 200") && response.ends_with("ok"),
        "{response:?}"
    );
}

/// Create a token; (id, secret).
fn token_with_id(workspace: &Workspace, args: &[&str]) -> (String, String) {
    let mut full = vec!["token", "create"];
    full.extend_from_slice(args);
    let output = workspace.sluice(&full);
    assert!(output.status.success(), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let id = stderr
        .split_whitespace()
        .find(|w| w.starts_with("tok_"))
        .unwrap_or_else(|| panic!("no id in {stderr:?}"))
        .to_string();
    (
        id,
        String::from_utf8(output.stdout).unwrap().trim().to_string(),
    )
}

#[test]
fn tokens_expire_are_revoked_and_are_listed() {
    let workspace = Workspace::new();
    let admin = token(&workspace, &["--role", "admin"]);
    let server = Server::start(&workspace);
    let (brief_id, brief) = token_with_id(&workspace, &["--role", "viewer", "--expires", "3s"]);
    let created = Instant::now();
    assert_eq!(
        server
            .call("GET", "/api/v1/pipelines", Some(&brief), None)
            .0,
        200
    );
    std::thread::sleep(
        Duration::from_secs(3).saturating_sub(created.elapsed()) + Duration::from_millis(300),
    );
    let (status, refused) = server.call("GET", "/api/v1/pipelines", Some(&brief), None);
    assert_eq!(status, 401, "{refused}");
    let message = refused["error"].as_str().unwrap();
    assert!(
        message.contains(&brief_id) && message.contains("expired"),
        "{refused}"
    );

    let (revoked_id, revoked) = token_with_id(
        &workspace,
        &[
            "--role",
            "admin",
            "--pipeline",
            "web",
            "--description",
            "ci",
        ],
    );
    assert_eq!(
        server
            .call("GET", "/api/v1/pipelines", Some(&revoked), None)
            .0,
        200
    );
    let output = workspace.sluice(&["token", "revoke", &revoked_id]);
    assert!(output.status.success(), "{}", text(&output));
    let (status, refused) = server.call("GET", "/api/v1/pipelines", Some(&revoked), None);
    assert_eq!(status, 401, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("revoked"),
        "{refused}"
    );
    let (status, _) = server.call("PUT", "/api/v1/pipelines/web", Some(&revoked), Some("x"));
    assert_eq!(status, 401);
    let (_, audit) = server.call("GET", "/api/v1/audit", Some(&admin), None);
    let entries = audit["entries"].as_array().unwrap();
    assert!(
        entries.iter().any(|e| e["actor"] == "refused-token"
            && e["action"] == "PUT /api/v1/pipelines/web"
            && e["result"] == "401"),
        "a refused token's attempt is audited: {audit:#}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == format!("token revoke {revoked_id}") && e["pipeline"].is_null()),
        "{audit:#}"
    );
    let output = workspace.sluice(&["token", "revoke", "tok_nosuchtoken"]);
    assert!(!output.status.success());
    assert!(
        text(&output).contains("no token `tok_nosuchtoken`"),
        "{}",
        text(&output)
    );

    let (_, plain) = token_with_id(&workspace, &["--role", "operator"]);
    let output = workspace.sluice(&["token", "list"]);
    assert!(output.status.success(), "{}", text(&output));
    let listed = String::from_utf8_lossy(&output.stdout);
    assert!(
        !listed.contains(&plain) && !listed.contains(&revoked),
        "never the secrets"
    );
    let line = |id: &str| {
        listed
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{id} not listed: {listed}"))
            .to_string()
    };
    let brief_line = line(&brief_id);
    assert!(
        brief_line.contains("viewer") && brief_line.contains("(expired)"),
        "{brief_line}"
    );
    let revoked_line = line(&revoked_id);
    assert!(
        revoked_line.contains("admin")
            && revoked_line.contains("web")
            && revoked_line.contains("Z ")
            && revoked_line.contains("never"),
        "{revoked_line}"
    );
    assert!(
        listed.contains("EXPIRES") && listed.contains("REVOKED"),
        "{listed}"
    );
}

#[test]
fn unknown_routes_wrong_methods_and_bad_tokens_answer_json() {
    let workspace = Workspace::new();
    let admin = token(&workspace, &["--role", "admin"]);
    let server = Server::start(&workspace);
    for (method, path, token, expected) in [
        ("GET", "/api/v1/nothing-here", Some(admin.as_str()), 404),
        ("DELETE", "/api/v1/executions", Some(admin.as_str()), 405),
        ("GET", "/api/v1/pipelines", Some("sluice_wrong"), 401),
        ("GET", "/nowhere", None, 404),
    ] {
        let (status, body) = server.call(method, path, token, None);
        assert_eq!(status, expected, "{method} {path}: {body}");
        assert!(body["error"].is_string(), "{method} {path}: {body:?}");
    }
    let (_, openapi) = server.call("GET", "/openapi.json", None, None);
    let webhook = &openapi["paths"]["/api/v1/webhooks/{name}"]["post"];
    assert!(
        webhook["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "X-Sluice-Timestamp"),
        "{webhook:#}"
    );
    assert!(webhook["responses"]["413"].is_object(), "{webhook:#}");
}
