//! Artifacts out (`sluice artifacts ls/get`, locally and through the server),
//! retention (`sluice gc`, `serve --retention`) and CLI consistency (one JSON
//! shape, `latest` through the server, quiet broken pipes).

use std::io::{BufRead as _, BufReader, Read as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Workspace, text};
use crate::server::{Server, token};

/// Source → Build: a snapshot of `app/` (nested, with an executable and a
/// relative symlink), then a build writing `dist/` into the `site` artifact.
const PIPELINE: &str = r#"
[pipeline]
name = "shop"
[[stages]]
name = "Source"
[[stages.actions]]
name = "checkout"
plugin = "dir-source@0.1"
outputs = ["source"]
config = { path = "app" }
grants = { mounts = { app = { host = "app", mode = "ro" } } }
[[stages]]
name = "Build"
[[stages.actions]]
name = "compile"
plugin = "command@0.1"
inputs = ["source"]
outputs = ["site"]
config = { run = "sh build.sh", outputs = "site=dist/**" }
grants = { commands = ["sh"] }
"#;

fn project(workspace: &Workspace) {
    workspace.write(
        "app/build.sh",
        "mkdir -p dist/assets\ncp index.html dist/\necho 'body{}' > dist/assets/site.css\nprintf '#!/bin/sh\\necho run\\n' > dist/run.sh\nchmod +x dist/run.sh\n",
    );
    workspace.write("app/index.html", "<h1>shop</h1>\n");
    workspace.write("app/tools/deploy.sh", "#!/bin/sh\necho deploy\n");
    let tool = workspace.path("app/tools/deploy.sh");
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("tools/deploy.sh", workspace.path("app/deploy")).unwrap();
    workspace.write("pipeline.toml", PIPELINE);
}

fn run_ok(workspace: &Workspace) {
    let output = workspace.sluice(&["run", "pipeline.toml"]);
    assert!(output.status.success(), "{}", text(&output));
}

fn sluice_ok(workspace: &Workspace, args: &[&str]) -> String {
    let output = workspace.sluice(args);
    assert!(
        output.status.success(),
        "sluice {args:?}: {}",
        text(&output)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn json_ok(workspace: &Workspace, args: &[&str]) -> Value {
    let mut full = vec!["--output", "json"];
    full.extend_from_slice(args);
    serde_json::from_str(&sluice_ok(workspace, &full)).unwrap()
}

/// Every entry of a tree: path, kind, bytes or link target, executable bit.
fn snapshot(root: &Path) -> Vec<(PathBuf, String)> {
    let mut entries = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let relative = path.strip_prefix(root).unwrap().to_path_buf();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let described = if meta.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                stack.push(path.clone());
                "dir".to_string()
            } else {
                let exec = meta.permissions().mode() & 0o111 != 0;
                format!("file x={exec} {:?}", std::fs::read(&path).unwrap())
            };
            entries.push((relative, described));
        }
    }
    entries.sort();
    entries
}

fn artifact<'a>(list: &'a Value, name: &str) -> &'a Value {
    list["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name)
        .unwrap_or_else(|| panic!("no artifact {name} in {list:#}"))
}

#[test]
fn artifacts_ls_and_get_give_the_stored_tree_locally_and_through_the_server() {
    let workspace = Workspace::new();
    project(&workspace);
    run_ok(&workspace);

    let list = json_ok(&workspace, &["artifacts", "ls", "latest"]);
    let site = artifact(&list, "site").clone();
    assert_eq!(site["action"], "compile");
    assert_eq!(site["stage"], "Build");
    assert_eq!(site["files"], 3, "{list:#}");
    let digest = site["digest"].as_str().unwrap();
    assert_eq!(artifact(&list, "source")["action"], "checkout");
    let listed = sluice_ok(&workspace, &["artifacts", "ls", "latest"]);
    assert!(
        listed.contains(&format!("blake3:{}", &digest[..16])) && !listed.contains(digest),
        "text shows short digests:\n{listed}"
    );

    let stored = workspace.path(&format!(".sluice/artifacts/{digest}"));
    let printed = sluice_ok(&workspace, &["artifacts", "get", "latest", "site"]);
    assert!(printed.contains("wrote artifact `site`"), "{printed}");
    let local = workspace.path("site");
    assert_eq!(snapshot(&local), snapshot(&stored));
    // The copy is writable, and executable where the build made it so: the
    // host-side copies keep the bit from the command through the store.
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&local.join("dist/run.sh")), 0o755);
    assert_eq!(mode(&local.join("dist/index.html")), 0o644);
    assert_eq!(
        sluice_store::artifact::digest_tree(&local).unwrap().digest,
        digest,
        "the copy has the recorded digest"
    );

    // A non-empty target is refused; the source artifact goes where --to says.
    let again = workspace.sluice(&["artifacts", "get", "latest", "site"]);
    assert_eq!(again.status.code(), Some(2));
    assert!(
        text(&again).contains("already exists and is not empty"),
        "{}",
        text(&again)
    );
    sluice_ok(
        &workspace,
        &["artifacts", "get", "latest", "source", "--to", "out/src"],
    );
    let source_digest = artifact(&list, "source")["digest"].as_str().unwrap();
    assert_eq!(
        snapshot(&workspace.path("out/src")),
        snapshot(&workspace.path(&format!(".sluice/artifacts/{source_digest}")))
    );

    // Through the server: the same list and the same tree.
    let viewer = token(&workspace, &["--role", "viewer"]);
    let server = Server::start(&workspace);
    let url = format!("http://{}", server.addr);
    let remote = ["--server", url.as_str(), "--token", viewer.as_str()];
    let id = list["execution"].as_str().unwrap();
    let prefix = &id[..8];
    let remote_list = json_ok(
        &workspace,
        &[&remote[..], &["artifacts", "ls", prefix][..]].concat(),
    );
    assert_eq!(remote_list, list);
    sluice_ok(
        &workspace,
        &[
            &remote[..],
            &["artifacts", "get", "latest", "site", "--to", "remote-site"][..],
        ]
        .concat(),
    );
    assert_eq!(snapshot(&workspace.path("remote-site")), snapshot(&local));

    // The raw endpoint is a tar stream for viewers, scoped like executions.
    let (status, _) = server.call(
        "GET",
        &format!("/api/v1/executions/{id}/artifacts/site"),
        None,
        None,
    );
    assert_eq!(status, 401);
    let other = token(&workspace, &["--role", "viewer", "--pipeline", "other"]);
    let (status, _) = server.call(
        "GET",
        &format!("/api/v1/executions/{id}/artifacts"),
        Some(&other),
        None,
    );
    assert_eq!(status, 403);
    let head = raw_head(
        &server,
        &format!("/api/v1/executions/{id}/artifacts/site"),
        &viewer,
    );
    assert!(
        head.starts_with("http/1.1 200") && head.contains("content-type: application/x-tar"),
        "{head}"
    );
    let (_, openapi) = server.call("GET", "/openapi.json", None, None);
    let documented = &openapi["paths"]["/api/v1/executions/{id}/artifacts/{name}"]["get"];
    assert!(
        documented["responses"]["200"]["content"]["application/x-tar"].is_object(),
        "{openapi:#}"
    );
    assert!(openapi["paths"]["/api/v1/executions/{id}/artifacts"]["get"].is_object());
    let missing =
        workspace.sluice(&[&remote[..], &["artifacts", "get", id, "nothing"][..]].concat());
    assert!(
        text(&missing).contains("no artifact `nothing`; it has: source, site"),
        "{}",
        text(&missing)
    );
}

/// Status line and headers of a GET, lower-cased.
fn raw_head(server: &Server, path: &str, token: &str) -> String {
    use std::io::Write as _;
    let mut stream = std::net::TcpStream::connect(&server.addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(response.len());
    String::from_utf8_lossy(&response[..end]).to_lowercase()
}

#[test]
fn a_stored_artifact_edited_on_disk_is_refused_as_corrupt() {
    let workspace = Workspace::new();
    project(&workspace);
    run_ok(&workspace);
    let list = json_ok(&workspace, &["artifacts", "ls", "latest"]);
    let digest = artifact(&list, "site")["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let page = workspace.path(&format!(".sluice/artifacts/{digest}/dist/index.html"));
    std::fs::set_permissions(&page, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&page, "<h1>defaced</h1>\n").unwrap();

    let local = workspace.sluice(&["artifacts", "get", "latest", "site"]);
    assert_eq!(local.status.code(), Some(2));
    let expected = format!("artifact `site` is corrupt: stored digest {digest}, content digest ");
    assert!(text(&local).contains(&expected), "{}", text(&local));
    assert!(!workspace.path("site").exists(), "nothing written");

    let viewer = token(&workspace, &["--role", "viewer"]);
    let server = Server::start(&workspace);
    let url = format!("http://{}", server.addr);
    let remote = workspace.sluice(&[
        "--server",
        &url,
        "--token",
        &viewer,
        "artifacts",
        "get",
        "latest",
        "site",
    ]);
    assert_eq!(remote.status.code(), Some(2));
    assert!(text(&remote).contains(&expected), "{}", text(&remote));
    assert!(!workspace.path("site").exists(), "nothing written");
}

/// `source` + a pending approval: an execution that stays InProgress.
const WAITING: &str = r#"
[pipeline]
name = "waiting"
[[stages]]
name = "Source"
[[stages.actions]]
name = "checkout"
plugin = "dir-source@0.1"
outputs = ["fresh"]
config = { path = "fresh" }
grants = { mounts = { fresh = { host = "fresh", mode = "ro" } } }
[[stages]]
name = "Gate"
[[stages.actions]]
name = "sign-off"
plugin = "approval"
config = { approvers = "operator", message = "go?", timeout = "10m" }
"#;

fn stored_artifacts(workspace: &Workspace) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(workspace.path(".sluice/artifacts"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    names.sort();
    names
}

#[test]
fn gc_removes_finished_executions_and_their_artifacts_but_never_a_running_one() {
    let workspace = Workspace::new();
    project(&workspace);
    run_ok(&workspace);
    let finished = json_ok(&workspace, &["artifacts", "ls", "latest"]);
    assert_eq!(stored_artifacts(&workspace).len(), 2);

    // A second execution waits on an approval, holding its `fresh` artifact.
    workspace.write("fresh/note.txt", "still needed\n");
    workspace.write("waiting.toml", WAITING);
    let mut waiting = workspace
        .command(&["run", "waiting.toml"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pending = wait_until_waiting(&workspace);
    let fresh = artifact(
        &json_ok(&workspace, &["artifacts", "ls", &pending]),
        "fresh",
    )["digest"]
        .as_str()
        .unwrap()
        .to_string();

    let swept = json_ok(&workspace, &["gc", "--older-than", "0s"]);
    let _ = waiting.kill();
    let _ = waiting.wait();
    assert_eq!(swept["executions"], 1, "{swept:#}");
    assert_eq!(swept["action_runs"], 2, "{swept:#}");
    assert_eq!(swept["artifacts"], 2, "{swept:#}");
    assert!(swept["log_lines"].as_u64().unwrap() > 0, "{swept:#}");
    assert!(swept["artifact_bytes"].as_u64().unwrap() > 0, "{swept:#}");
    assert_eq!(
        stored_artifacts(&workspace),
        vec![fresh],
        "only the running one's"
    );

    let list = json_ok(&workspace, &["executions", "list"]);
    let ids: Vec<&str> = list["executions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![pending.as_str()]);
    let gone = workspace.sluice(&["artifacts", "ls", finished["execution"].as_str().unwrap()]);
    assert_eq!(gone.status.code(), Some(2), "{}", text(&gone));

    let printed = sluice_ok(&workspace, &["gc", "--older-than", "30d"]);
    assert!(printed.starts_with("removed 0 executions"), "{printed}");
}

/// The id of the `waiting` execution once its approval is pending.
fn wait_until_waiting(workspace: &Workspace) -> String {
    for _ in 0..300 {
        let output = workspace.sluice(&["--output", "json", "executions", "show", "latest"]);
        if output.status.success() {
            let shown: Value = serde_json::from_slice(&output.stdout).unwrap();
            let waiting = shown["execution"]["pipeline"] == "waiting"
                && shown["actions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|a| a["action"] == "sign-off" && a["status"] == "InProgress");
            if waiting {
                return shown["execution"]["id"].as_str().unwrap().to_string();
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the waiting execution never reached its approval");
}

#[test]
fn serve_with_retention_sweeps_at_start() {
    let workspace = Workspace::new();
    project(&workspace);
    run_ok(&workspace);
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .current_dir(workspace.dir.path())
        .arg("--data-dir")
        .arg(workspace.path(".sluice"))
        .arg("--plugins")
        .arg(workspace.registry())
        .args(["serve", "--listen", "127.0.0.1:0", "--retention", "0s"])
        .env_remove("SLUICE_LOG")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The sweep's line is one of the server's log lines (info, on stderr).
    let line = BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .find(|line| line.contains("retention:"))
        .unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        line.contains("retention: removed 1 executions") && line.contains("2 artifacts"),
        "{line}"
    );
    let list = json_ok(&workspace, &["executions", "list"]);
    assert_eq!(list["executions"], serde_json::json!([]), "{list:#}");
}

#[test]
fn local_and_server_json_have_one_shape_and_latest_works_remotely() {
    let workspace = Workspace::new();
    project(&workspace);
    run_ok(&workspace);
    run_ok(&workspace);
    let viewer = token(&workspace, &["--role", "viewer"]);
    let server = Server::start(&workspace);
    let url = format!("http://{}", server.addr);
    let remote = ["--server", url.as_str(), "--token", viewer.as_str()];
    let list = json_ok(&workspace, &["executions", "list"]);
    let id = list["executions"][0]["id"].as_str().unwrap().to_string();
    for args in [
        vec!["executions", "list"],
        vec!["executions", "show", "latest"],
        vec!["executions", "show", &id[..6]],
        vec!["logs", "latest"],
        vec!["logs", "latest", "compile"],
        vec!["artifacts", "ls", "latest"],
    ] {
        let local = json_ok(&workspace, &args);
        let through_server = json_ok(&workspace, &[&remote[..], &args[..]].concat());
        assert_eq!(local, through_server, "sluice {args:?}");
    }
    let shown = json_ok(
        &workspace,
        &[&remote[..], &["executions", "show", "latest"][..]].concat(),
    );
    assert_eq!(
        shown["execution"]["id"],
        id.as_str(),
        "latest is the newest"
    );

    let watched = sluice_ok(
        &workspace,
        &[&remote[..], &["watch", "latest"][..]].concat(),
    );
    assert!(
        watched.contains(&format!("execution {id}: Succeeded")),
        "{watched}"
    );

    // Text: a `sluice run` execution has no registered version; never `vnull`.
    for args in [
        vec!["executions", "list"],
        vec!["executions", "show", "latest"],
    ] {
        let printed = sluice_ok(&workspace, &[&remote[..], &args[..]].concat());
        assert!(!printed.contains("vnull"), "{printed}");
        assert!(printed.contains(&id), "{printed}");
    }
}

#[test]
fn a_closed_pipe_ends_listing_quietly() {
    let workspace = Workspace::new();
    workspace.write(
        "pipeline.toml",
        r#"
[pipeline]
name = "chatty"
[[stages]]
name = "Talk"
[[stages.actions]]
name = "talk"
plugin = "command@0.1"
config = { run = "sh -c 'i=0; while [ $i -lt 4000 ]; do echo line $i of a long log; i=$((i+1)); done'" }
grants = { commands = ["sh"] }
"#,
    );
    run_ok(&workspace);
    use sluice_store::state::prelude::*;
    let state =
        sluice_store::state::SqliteStore::open(&workspace.path(".sluice/state.db")).unwrap();
    for n in 0..2000 {
        let id = format!("00000000-0000-0000-0000-{n:012}");
        state
            .start_execution(
                &id,
                "many",
                Path::new("many.toml"),
                &serde_json::json!({}),
                &serde_json::json!({}),
                n,
            )
            .unwrap();
    }
    for args in [
        vec!["executions", "list", "--limit", "2000"],
        vec!["--output", "json", "executions", "list", "--limit", "2000"],
        vec!["logs", "latest"],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .current_dir(workspace.dir.path())
            .arg("--data-dir")
            .arg(workspace.path(".sluice"))
            .arg("--plugins")
            .arg(workspace.registry())
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Read one line, then hang up, as `| head -1` does.
        let mut stdout = child.stdout.take().unwrap();
        let mut first = [0u8; 64];
        let _ = stdout.read(&mut first).unwrap();
        drop(stdout);
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "sluice {args:?}: {stderr}"
        );
        assert_ne!(output.status.code(), Some(101), "sluice {args:?} panicked");
    }
}

#[test]
fn output_json_is_json_on_local_verbs_too() {
    let workspace = Workspace::new();
    project(&workspace);
    let valid = json_ok(&workspace, &["validate", "pipeline.toml"]);
    assert_eq!(
        (valid["valid"].clone(), valid["actions"].clone()),
        (true.into(), 2.into())
    );
    let ran = json_ok(&workspace, &["run", "pipeline.toml"]);
    assert_eq!(ran["execution"]["status"], "Succeeded", "{ran:#}");
    assert_eq!(ran, json_ok(&workspace, &["executions", "show", "latest"]));
    let logs = json_ok(&workspace, &["logs", "latest"]);
    assert_eq!(logs["execution"], ran["execution"]["id"]);
    let plugins = json_ok(&workspace, &["plugin", "list"]);
    assert!(
        plugins["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["manifest"]["name"] == "command"),
        "{plugins:#}"
    );
    let inspected = json_ok(&workspace, &["plugin", "inspect", "command"]);
    assert_eq!(inspected["manifest"]["name"], "command");
    let token = json_ok(&workspace, &["token", "create", "--role", "viewer"]);
    assert_eq!(token["token"]["role"], "viewer");
    assert!(
        token["secret"].as_str().unwrap().starts_with("sluice_"),
        "{token:#}"
    );

    workspace.write(
        "broken.toml",
        "[pipeline]\nname = \"broken\"\n[[stages]]\nname = 3\n",
    );
    let output = workspace.sluice(&["--output", "json", "validate", "broken.toml"]);
    assert_eq!(output.status.code(), Some(2));
    let invalid: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(invalid["valid"], false);
    assert!(
        invalid["diagnostics"][0]["line"].as_u64().is_some(),
        "{invalid:#}"
    );

    let private = Workspace::with_private_registry();
    let noop = crate::harness::packaged_plugins().join("noop");
    let output = private.sluice(&[
        "--output",
        "json",
        "plugin",
        "install",
        "--yes",
        noop.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", text(&output));
    let installed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(
        installed["installed"][0]["id"]
            .as_str()
            .unwrap()
            .starts_with("noop@"),
        "{installed:#}"
    );
}
