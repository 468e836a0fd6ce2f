//! The `http` plugin against a local server on 127.0.0.1.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;

use crate::harness::{Workspace, action, text};

/// Serve one request with `status`; send what was received on the channel.
fn one_shot_server(status: u16) -> (u16, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream);
        let mut request = String::new();
        let mut length = 0;
        let mut chunked = false;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = value.trim().parse().unwrap();
            }
            chunked |= line
                .to_ascii_lowercase()
                .starts_with("transfer-encoding: chunked");
            request.push_str(&line);
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        let body = if chunked {
            read_chunked(&mut reader)
        } else {
            read_exact(&mut reader, length)
        };
        request.push_str(&String::from_utf8_lossy(&body));
        let reply = format!(
            "HTTP/1.1 {status} X\r\nContent-Length: 8\r\nConnection: close\r\n\r\ndeployed"
        );
        reader.get_mut().write_all(reply.as_bytes()).unwrap();
        sender.send(request).unwrap();
    });
    (port, receiver)
}

fn read_exact(reader: &mut impl Read, length: usize) -> Vec<u8> {
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    body
}

fn read_chunked(reader: &mut BufReader<std::net::TcpStream>) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size).unwrap();
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        let chunk = read_exact(reader, size + 2);
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&chunk[..size]);
    }
}

fn pipeline(port: u16) -> String {
    format!(
        r#"
[pipeline]
name = "notify"
[[stages]]
name = "Notify"
[[stages.actions]]
name = "hook"
plugin = "http@0.1"
namespace = "hook"
config = {{ url = "http://127.0.0.1:{port}/deploy", method = "POST", body = "release #{{execution.id}}", secret-headers = "Authorization=Bearer API_TOKEN" }}
grants = {{ hosts = ["127.0.0.1:{port}"], secrets = ["API_TOKEN"] }}
"#
    )
}

#[test]
fn http_calls_a_granted_endpoint_with_a_secret_header() {
    let mut workspace = Workspace::new();
    workspace.env("SLUICE_SECRET_API_TOKEN", "hook-secret-4321");
    let (port, received) = one_shot_server(200);
    let output = workspace.run_pipeline(&pipeline(port));
    assert!(output.status.success(), "{}", text(&output));
    let request = received.recv().unwrap();
    assert!(request.starts_with("POST /deploy"), "{request}");
    assert!(
        request
            .to_ascii_lowercase()
            .contains("authorization: bearer hook-secret-4321"),
        "{request}"
    );
    let execution = workspace.latest_execution();
    let id = execution["execution"]["id"].as_str().unwrap();
    assert!(request.ends_with(&format!("release {id}")), "{request}");
    let hook = action(&execution, "hook");
    let variables = hook["variables"].to_string();
    assert!(
        variables.contains(r#"["status","200"]"#) && variables.contains("deployed"),
        "{variables}"
    );
    let logs = workspace.latest_logs();
    assert!(!logs.contains("hook-secret-4321"), "{logs}");
    // The host filled the header from a handle: the plugin never read the value.
    assert!(!logs.contains("secrets.get"), "{logs}");
}

#[test]
fn http_naming_an_ungranted_secret_in_a_header_is_denied() {
    let mut workspace = Workspace::new();
    workspace.env("SLUICE_SECRET_API_TOKEN", "never-sent-777");
    let (port, received) = one_shot_server(200);
    let pipeline = pipeline(port).replace(r#", secrets = ["API_TOKEN"]"#, "");
    let output = workspace.run_pipeline(&pipeline);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let hook = action(&workspace.latest_execution(), "hook").clone();
    assert_eq!(hook["status"], "Failed", "{hook:#}");
    let error = hook["error"].as_str().unwrap();
    assert!(
        error.contains("secret `API_TOKEN` is not granted")
            && error.contains("named in HTTP header `authorization`"),
        "{error}"
    );
    assert!(
        received
            .recv_timeout(std::time::Duration::from_millis(300))
            .is_err(),
        "the request was sent"
    );
}

#[test]
fn http_fails_on_an_unexpected_status() {
    let mut workspace = Workspace::new();
    workspace.env("SLUICE_SECRET_API_TOKEN", "x-secret");
    let (port, received) = one_shot_server(503);
    let output = workspace.run_pipeline(&pipeline(port));
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    received.recv().unwrap();
    let error = action(&workspace.latest_execution(), "hook")["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(error.contains("503"), "{error}");
}

/// Answer every request until the test ends: `/health` 200 `status: ok`,
/// anything else 503 `down`.
fn health_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let mut reader = BufReader::new(stream);
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap_or_default();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
            }
            let (status, body) = match request_line.split_whitespace().nth(1) {
                Some("/health") => (200, "status: ok"),
                _ => (503, "down"),
            };
            let reply = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = reader.get_mut().write_all(reply.as_bytes());
        }
    });
    port
}

#[test]
fn a_rule_plugin_passes_a_healthy_endpoint_and_not_a_sick_or_ungranted_one() {
    let port = health_server();
    let rule = |name: &str, path: &str, host: &str| {
        format!(
            r#"{{ name = "{name}", provider = "plugin", plugin = "http-check@0.1", config = {{ url = "http://127.0.0.1:{port}{path}", contains = "ok" }}, grants = {{ hosts = ["{host}"] }} }}"#
        )
    };
    let granted = format!("127.0.0.1:{port}");
    let stage = |name: &str, result: &str, rule: String| {
        format!(
            "[[stages]]\nname = \"{name}\"\nbefore-entry = {{ result = \"{result}\", rules = [{rule}] }}\n[[stages.actions]]\nname = \"{}\"\nplugin = \"command@0.1\"\nconfig = {{ run = \"true\" }}\ngrants = {{ commands = [\"true\"] }}\n",
            name.to_lowercase()
        )
    };
    let pipeline = format!(
        "[pipeline]\nname = \"checked\"\n{}{}{}",
        stage("Healthy", "fail", rule("up", "/health", &granted)),
        stage("Sick", "skip", rule("down", "/sick", &granted)),
        // Granted another port of the same address: the request is denied.
        stage(
            "Sneaky",
            "skip",
            rule("elsewhere", "/health", "127.0.0.1:1")
        ),
    );
    let workspace = Workspace::new();
    let output = workspace.run_pipeline(&pipeline);
    let shown = text(&output);
    assert!(output.status.success(), "{shown}");
    for line in [
        format!(
            "✓ Healthy before-entry rule up: GET http://127.0.0.1:{port}/health answered HTTP 200 with `ok`"
        ),
        format!(
            "✗ Sick before-entry rule down: GET http://127.0.0.1:{port}/sick answered HTTP 503, expected 2xx"
        ),
        format!(
            "✗ Sneaky before-entry rule elsewhere: the rule plugin failed: permission denied: outbound HTTP to `127.0.0.1:{port}` is not granted"
        ),
    ] {
        assert!(shown.contains(&line), "no `{line}` in:\n{shown}");
    }
    let execution = workspace.latest_execution();
    let status = |stage: &str| {
        execution["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["stage"] == stage)
            .map(|s| s["status"].as_str().unwrap().to_string())
    };
    assert_eq!(status("Healthy").as_deref(), Some("Succeeded"));
    assert_eq!(status("Sick").as_deref(), Some("Skipped"));
    assert_eq!(status("Sneaky").as_deref(), Some("Skipped"));
    assert_eq!(action(&execution, "healthy")["status"], "Succeeded");
}
