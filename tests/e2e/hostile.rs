//! Hostile plugins: every escape, exfiltration and exhaustion attempt fails the
//! attacking action with a named reason, leaks nothing, and leaves the host,
//! the other actions and the next execution working.

use std::net::TcpListener;

use crate::harness::{Workspace, action, hostile_pipeline, text};

const PASSWD_MARKER: &str = "root:x:0:0";
const SECRET_VALUE: &str = "topsecret-value-8472";

/// A stage that produces artifact `bait`, then the attack (reading `bait`) next
/// to a well-behaved bystander. (Symlinks out of an artifact are refused at
/// ingest: see `escape_by_symlink_in_an_input_artifact_is_refused_at_ingest`.)
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
config = {{ mode = "noop" }}

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
fn escape_by_symlink_in_an_input_artifact_is_refused_at_ingest() {
    let workspace = Workspace::new();
    let pipeline = attack_on_bait(r#"mode = "escape-symlink", link = "relative-link""#, "")
        .replace(
            r#"config = { mode = "noop" }"#,
            r#"config = { mode = "plant-symlink" }"#,
        );
    let output = workspace.run_pipeline(&pipeline);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let execution = workspace.latest_execution();
    let plant = action(&execution, "plant");
    let error = plant["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("`relative-link`") && error.contains("points outside the artifact"),
        "the escaping link must be refused with its path: {execution:#}"
    );
    let logs = workspace.latest_logs();
    assert!(!logs.contains(PASSWD_MARKER) && !text(&output).contains(PASSWD_MARKER));
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

/// Instance memory is reused between actions (pooled slots): what one action
/// left in memory, a little and past 1 MiB, must not be readable by the next
/// action of the same plugin. One sandbox slot makes the next instance reuse
/// the planter's slot, and the seeker grows its memory past the planter's
/// before it scans.
#[test]
fn what_an_action_leaves_in_memory_is_not_readable_by_the_next() {
    let workspace = Workspace::new();
    let marker = "left-behind-4417";
    let mut pipeline = String::from("[pipeline]\nname = \"residue\"\n");
    for (stage, config) in [
        ("PlantSmall", "mode = \"plant-residue\", kib = 16"),
        ("SeekSmall", "mode = \"seek-residue\", grow-to-kib = 8192"),
        ("PlantLarge", "mode = \"plant-residue\", kib = 2048"),
        ("SeekLarge", "mode = \"seek-residue\", grow-to-kib = 8192"),
    ] {
        pipeline.push_str(&format!(
            "[[stages]]\nname = \"{stage}\"\n[[stages.actions]]\nname = \"{}\"\nplugin = \"hostile@0.1\"\nconfig = {{ {config}, marker = \"{marker}\" }}\n",
            stage.to_lowercase()
        ));
    }
    // The control: the scan finds a marker its own instance planted.
    pipeline.push_str(&format!(
        "[[stages]]\nname = \"Control\"\n[[stages.actions]]\nname = \"control\"\nplugin = \"hostile@0.1\"\nconfig = {{ mode = \"seek-residue\", marker = \"{marker}\", plant-first = \"true\" }}\n"
    ));
    workspace.write("pipeline.toml", &pipeline);
    let output = workspace.sluice(&["run", "--sandbox-slots", "1", "pipeline.toml"]);
    assert!(output.status.success(), "{}", text(&output));
    let execution = workspace.latest_execution();
    let summary = |name: &str| {
        action(&execution, name)["summary"]
            .as_str()
            .unwrap()
            .to_string()
    };
    for seeker in ["seeksmall", "seeklarge"] {
        let found = summary(seeker);
        assert!(
            found.starts_with("no residue in 8192 KiB"),
            "{seeker}: {found}"
        );
    }
    assert!(
        summary("control").starts_with("ESCAPED"),
        "{}",
        summary("control")
    );
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

#[test]
fn a_crashing_plugin_says_why_in_its_error() {
    let workspace = Workspace::new();
    let why = "the flux capacitor is empty";
    let pipeline = hostile_pipeline(&format!(r#"mode = "panic", message = "{why}""#), "");
    workspace.write("pipeline.toml", &pipeline);
    // Quiet: the message must come through the error, not the live output.
    let output = workspace.sluice(&["run", "--quiet", "pipeline.toml"]);
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let failed = &printed[printed.find("Failed: ").expect("a Failed: line")..];
    assert!(
        failed.contains("plugin crashed: ") && failed.contains(why),
        "{printed}"
    );
    let execution = workspace.latest_execution();
    let error = action(&execution, "attack")["error"].as_str().unwrap();
    assert!(error.starts_with("plugin crashed: "), "{error}");
    assert!(error.contains("[stderr] "), "{error}");
    assert!(error.contains(&format!("hostile: {why}")), "{error}");
    assert!(
        error.contains("[stdout] hostile: about to panic"),
        "the lines before the crash are quoted too: {error}"
    );
    let shown = workspace.sluice(&["executions", "show", "latest"]);
    assert!(text(&shown).contains(why), "{}", text(&shown));
}

/// What the hostile plugin's `terminal-escape` mode sends, as it must be shown.
const ESCAPED_ATTACK: &str = r"\x1b[2J\x1b[Hcleared \x1b]52;c;aGFja2Vk\x07clipboard \x1b]0;title\x07 \u{9b}31mred\r✓ stage Deploy Succeeded";

/// Raw bytes that must never reach a terminal from guest text.
fn assert_no_raw_controls(what: &str, bytes: &[u8]) {
    let shown = String::from_utf8_lossy(bytes);
    let raw = shown
        .char_indices()
        .find(|(_, c)| (c.is_control() && !matches!(c, '\n' | '\t')) || *c == '\u{202e}');
    if let Some((at, c)) = raw {
        panic!(
            "{what} printed a raw {c:?} at byte {at}:\n{}",
            shown.escape_debug()
        );
    }
}

#[test]
fn terminal_control_sequences_from_a_plugin_are_printed_escaped() {
    let workspace = Workspace::new();
    for (fail, last_channel) in [("false", "summary"), ("true", "failure")] {
        let pipeline =
            hostile_pipeline(&format!(r#"mode = "terminal-escape", fail = "{fail}""#), "");
        let output = workspace.run_pipeline(&pipeline);
        assert_eq!(
            output.status.success(),
            fail == "false",
            "{}",
            text(&output)
        );
        assert_no_raw_controls("sluice run", &output.stdout);
        let printed = String::from_utf8_lossy(&output.stdout).into_owned();
        for channel in ["log", "stdout", "stderr", "progress", last_channel] {
            let shown = format!("{channel} {ESCAPED_ATTACK}");
            assert!(printed.contains(&shown), "`{shown}` not in:\n{printed}");
        }
        if fail == "false" {
            assert!(printed.contains(r"name\x1b[2J=value \x1b[2J"), "{printed}");
        }

        let logs = workspace.sluice(&["logs", "latest"]);
        assert!(logs.status.success(), "{}", text(&logs));
        assert_no_raw_controls("sluice logs", &logs.stdout);
        let logged = String::from_utf8_lossy(&logs.stdout).into_owned();
        for channel in ["log", "stdout", "stderr", "progress"] {
            let shown = format!("{channel} {ESCAPED_ATTACK}");
            assert!(logged.contains(&shown), "`{shown}` not in:\n{logged}");
        }
        let shown = workspace.sluice(&["executions", "show", "latest"]);
        assert_no_raw_controls("sluice executions show", &shown.stdout);
        assert!(
            String::from_utf8_lossy(&shown.stdout).contains(ESCAPED_ATTACK),
            "{}",
            text(&shown)
        );
    }
}

#[test]
fn terminal_control_sequences_are_escaped_by_the_server_client_too() {
    use crate::server::{Server, token, wait_for_end};
    let workspace = Workspace::new();
    let admin = token(&workspace, &["--role", "admin"]);
    let server = Server::start(&workspace);
    let pipeline = hostile_pipeline(r#"mode = "terminal-escape", fail = "true""#, "");
    let (status, body) = server.call(
        "PUT",
        "/api/v1/pipelines/hostile",
        Some(&admin),
        Some(&pipeline),
    );
    assert_eq!(status, 201, "{body}");
    let (status, started) = server.call(
        "POST",
        "/api/v1/pipelines/hostile/executions",
        Some(&admin),
        None,
    );
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_str().unwrap();
    wait_for_end(&server, &admin, id);
    let url = format!("http://{}", server.addr);
    for verb in [
        vec!["logs", id],
        vec!["logs", "-f", id],
        vec!["executions", "show", id],
        vec!["executions", "list"],
        vec!["watch", id],
    ] {
        let mut args = vec!["--server", url.as_str(), "--token", admin.as_str()];
        args.extend_from_slice(&verb);
        let output = workspace.sluice(&args);
        assert_no_raw_controls(&verb.join(" "), &output.stdout);
        let printed = String::from_utf8_lossy(&output.stdout);
        assert!(
            printed.contains(r"\x1b[2J"),
            "{}: {}",
            verb.join(" "),
            text(&output)
        );
    }
}
