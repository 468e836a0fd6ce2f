//! Hostile plugins: every escape, exfiltration and exhaustion attempt fails the
//! attacking action with a named reason, leaks nothing, and leaves the host,
//! the other actions and the next execution working.

use std::net::TcpListener;

use crate::harness::{Workspace, action, hostile_pipeline, text};

const PASSWD_MARKER: &str = "root:x:0:0";
const SECRET_VALUE: &str = "topsecret-value-8472";

/// A stage that plants symlinks out of the sandbox in artifact `bait`, then the
/// attack (reading `bait`) next to a well-behaved bystander.
fn attack_on_bait(config: &str, extra: &str) -> String {
    format!(
        r#"
[pipeline]
name = "hostile"

[[stages]]
name = "Plant"
[[stages.actions]]
name = "plant"
plugin = "hostile@0.1"
outputs = ["bait"]
config = {{ mode = "plant-symlink" }}

[[stages]]
name = "Attack"
[[stages.actions]]
name = "attack"
plugin = "hostile@0.1"
inputs = ["bait"]
config = {{ {config} }}
{extra}

[[stages.actions]]
name = "bystander"
plugin = "hostile@0.1"
config = {{ mode = "noop" }}
"#
    )
}

const FOLLOW_UP: &str = r#"
[pipeline]
name = "after"
[[stages]]
name = "Only"
[[stages.actions]]
name = "fine"
plugin = "hostile@0.1"
config = { mode = "noop" }
"#;

/// Run an attack; assert it failed with `reason`, leaked nothing, and that the
/// bystander (if any) and the next execution succeeded. Returns the logs.
fn contained(workspace: &Workspace, pipeline: &str, reason: &str) -> String {
    let output = workspace.run_pipeline(pipeline);
    let printed = text(&output);
    assert_eq!(
        output.status.code(),
        Some(1),
        "the attack should fail the execution:\n{printed}"
    );
    let execution = workspace.latest_execution();
    let attack = action(&execution, "attack");
    assert_eq!(attack["status"], "Failed", "{execution:#}");
    let error = attack["error"].as_str().unwrap();
    assert!(
        error.contains(reason),
        "expected `{reason}` in the action error `{error}`"
    );
    if pipeline.contains("bystander") {
        assert_eq!(
            action(&execution, "bystander")["status"],
            "Succeeded",
            "{execution:#}"
        );
    }
    let logs = workspace.latest_logs();
    for leak in [PASSWD_MARKER, SECRET_VALUE, "ESCAPED"] {
        assert!(
            !printed.contains(leak) && !logs.contains(leak),
            "`{leak}` leaked:\n{printed}\n{logs}"
        );
    }
    workspace.write("after.toml", FOLLOW_UP);
    let next = workspace.sluice(&["run", "after.toml"]);
    assert!(
        next.status.success(),
        "the next execution must run normally:\n{}",
        text(&next)
    );
    logs
}

#[test]
fn escape_by_dotdot_is_denied() {
    let workspace = Workspace::new();
    contained(
        &workspace,
        &attack_on_bait(r#"mode = "escape-dotdot""#, ""),
        "denied",
    );
}

#[test]
fn escape_by_absolute_path_is_denied() {
    let workspace = Workspace::new();
    contained(
        &workspace,
        &attack_on_bait(r#"mode = "escape-absolute""#, ""),
        "read /etc/passwd denied",
    );
}

#[test]
fn escape_by_symlink_in_an_input_artifact_is_denied() {
    let workspace = Workspace::new();
    let config = r#"mode = "escape-symlink", link = "relative-link""#;
    contained(
        &workspace,
        &attack_on_bait(config, ""),
        "read symlink /in/bait/relative-link denied",
    );
    // The bait really held a link out of the sandbox (cap-std refuses to create
    // absolute ones, so the relative one is the real attack).
    let output = workspace.sluice(&["executions", "list", "--json"]);
    let executions: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let attack_id = executions["executions"][1]["id"].as_str().unwrap();
    let shown = workspace.sluice(&["executions", "show", attack_id, "--json"]);
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert!(
        action(&shown, "plant")["summary"]
            .as_str()
            .unwrap()
            .contains("relative-link"),
        "{shown:#}"
    );
}

#[test]
fn writing_into_an_input_artifact_is_denied() {
    let workspace = Workspace::new();
    contained(
        &workspace,
        &attack_on_bait(r#"mode = "write-input""#, ""),
        "denied",
    );
}

#[test]
fn reading_an_ungranted_secret_is_denied_and_never_leaks() {
    let mut workspace = Workspace::new();
    workspace.env("SLUICE_SECRET_OTHER", SECRET_VALUE);
    workspace.env("SLUICE_SECRET_MINE", "mine-1234");
    let pipeline = attack_on_bait(
        r#"mode = "secret-ungranted", secret = "OTHER""#,
        r#"grants = { secrets = ["MINE"] }"#,
    );
    contained(
        &workspace,
        &pipeline,
        "secret `OTHER` is not granted to this action",
    );
}

#[test]
fn a_request_to_an_ungranted_host_is_denied_before_connecting() {
    let workspace = Workspace::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = format!(r#"mode = "http-ungranted", url = "http://127.0.0.1:{port}/steal""#);
    let pipeline = attack_on_bait(&config, r#"grants = { hosts = ["example.com"] }"#);
    contained(
        &workspace,
        &pipeline,
        &format!("outbound HTTP to `127.0.0.1:{port}` is not granted"),
    );
    assert!(
        listener.accept().is_err(),
        "the denied request must never connect"
    );
}

#[test]
fn a_command_off_the_allow_list_is_denied() {
    let workspace = Workspace::new();
    let pipeline = attack_on_bait(
        r#"mode = "command-not-allowed", program = "curl""#,
        r#"grants = { commands = ["sh"] }"#,
    );
    contained(
        &workspace,
        &pipeline,
        "command `curl` is not in this action's allow-list",
    );
}

#[test]
fn an_infinite_loop_hits_the_cpu_limit() {
    let workspace = Workspace::new();
    let pipeline = attack_on_bait(r#"mode = "infinite-loop""#, r#"limits = { cpu = "1s" }"#);
    contained(&workspace, &pipeline, "CPU time limit of 1s exceeded");
}

#[test]
fn an_infinite_loop_hits_the_wall_clock_timeout() {
    let workspace = Workspace::new();
    let pipeline = attack_on_bait(
        r#"mode = "infinite-loop""#,
        "timeout = \"1s\"\nlimits = { cpu = \"1m\" }",
    );
    contained(&workspace, &pipeline, "timeout of 1s exceeded");
}

#[test]
fn a_memory_bomb_hits_the_memory_limit() {
    let workspace = Workspace::new();
    let pipeline = attack_on_bait(
        r#"mode = "memory-bomb""#,
        r#"limits = { memory = "64MiB" }"#,
    );
    contained(&workspace, &pipeline, "memory limit of 64.0 MiB exceeded");
}

#[test]
fn a_log_flood_is_truncated_with_a_marker_not_a_trap() {
    let workspace = Workspace::new();
    let pipeline = hostile_pipeline(
        r#"mode = "log-flood", mb = "8""#,
        r#"limits = { log = "64KiB" }"#,
    );
    let output = workspace.run_pipeline(&pipeline);
    assert!(
        output.status.success(),
        "a flood is cut, not fatal:\n{}",
        text(&output)
    );
    let logs = workspace.latest_logs();
    assert!(
        logs.contains("log limit of 64.0 KiB reached"),
        "{}",
        &logs[logs.len().saturating_sub(500)..]
    );
    let stored: usize = logs.lines().map(|l| l.len()).sum();
    assert!(
        stored < 200 * 1024,
        "stored {stored} bytes of log for a 64 KiB limit"
    );
}
