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
