//! Executor behaviour: parallel groups, variables across stages, retries, masking.

use crate::harness::{Workspace, action, text};

fn millis(record: &serde_json::Value, field: &str) -> i64 {
    record[field]
        .as_i64()
        .unwrap_or_else(|| panic!("no {field} in {record:#}"))
}

#[test]
fn actions_with_the_same_run_order_overlap_in_time() {
    let workspace = Workspace::new();
    let output = workspace.run_pipeline(
        r#"
[pipeline]
name = "parallel"
[[stages]]
name = "Work"
[[stages.actions]]
name = "left"
plugin = "command@0.1"
config = { run = "sleep 1" }
grants = { commands = ["sleep"] }
[[stages.actions]]
name = "right"
plugin = "command@0.1"
config = { run = "sleep 1" }
grants = { commands = ["sleep"] }
[[stages.actions]]
name = "after"
run-order = 2
plugin = "command@0.1"
config = { run = "true" }
grants = { commands = ["true"] }
"#,
    );
    assert!(output.status.success(), "{}", text(&output));
    let execution = workspace.latest_execution();
    let (left, right, after) = (
        action(&execution, "left"),
        action(&execution, "right"),
        action(&execution, "after"),
    );
    assert!(
        millis(left, "started_ms") < millis(right, "ended_ms")
            && millis(right, "started_ms") < millis(left, "ended_ms"),
        "run-order 1 actions did not overlap: {left:#} {right:#}"
    );
    let group_end = millis(left, "ended_ms").max(millis(right, "ended_ms"));
    assert!(
        millis(after, "started_ms") >= group_end,
        "run-order 2 started before run-order 1 ended"
    );
}

#[test]
fn variables_flow_across_stages_and_resolved_config_is_recorded() {
    let workspace = Workspace::new();
    let output = workspace.run_pipeline(
        r#"
[pipeline]
name = "vars"
[variables]
target = { default = "staging" }
[[stages]]
name = "Build"
[[stages.actions]]
name = "version"
plugin = "command@0.1"
namespace = "build"
config = { run = "echo ::set-variable version=1.2.3" }
grants = { commands = ["echo"] }
[[stages]]
name = "Deploy"
[[stages.actions]]
name = "announce"
plugin = "command@0.1"
config = { run = "echo deploying #{build.version} to #{variables.target} as #{execution.id}" }
grants = { commands = ["echo"] }
"#,
    );
    assert!(output.status.success(), "{}", text(&output));
    let execution = workspace.latest_execution();
    let id = execution["execution"]["id"].as_str().unwrap();
    let expected = format!("echo deploying 1.2.3 to staging as {id}");
    let announce = action(&execution, "announce");
    assert_eq!(
        announce["resolved_config"][0],
        serde_json::json!(["run", expected])
    );
    assert_eq!(
        action(&execution, "version")["variables"][1],
        serde_json::json!(["version", "1.2.3"])
    );
    assert!(
        workspace
            .latest_logs()
            .contains(&format!("deploying 1.2.3 to staging as {id}"))
    );
}

#[test]
fn a_failing_action_is_retried_then_fails_its_stage_and_the_execution() {
    let workspace = Workspace::new();
    let output = workspace.run_pipeline(
        r#"
[pipeline]
name = "retry"
[[stages]]
name = "Flaky"
[[stages.actions]]
name = "flaky"
plugin = "command@0.1"
config = { run = "sh -c 'echo failing; exit 3'" }
grants = { commands = ["sh"] }
retry = { attempts = 3, backoff = "10ms" }
[[stages]]
name = "Never"
[[stages.actions]]
name = "never"
plugin = "command@0.1"
config = { run = "true" }
grants = { commands = ["true"] }
"#,
    );
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let execution = workspace.latest_execution();
    assert_eq!(execution["execution"]["status"], "Failed");
    assert!(
        execution["execution"]["error"]
            .as_str()
            .unwrap()
            .contains("action `flaky` failed")
    );
    let flaky = action(&execution, "flaky");
    assert_eq!(flaky["attempts"], 3);
    assert_eq!(execution["stages"][0]["status"], "Failed");
    assert_eq!(execution["stages"][1]["status"], "Skipped");
    let logs = workspace.latest_logs();
    for attempt in 1..=3 {
        assert!(
            logs.contains(&format!("[flaky #{attempt}]")),
            "attempt {attempt} has no logs:\n{logs}"
        );
    }
}

#[test]
fn granted_secrets_reach_commands_but_are_masked_in_every_encoding() {
    let mut workspace = Workspace::new();
    let secret = "s3cr3t-Token-value-77";
    workspace.env("SLUICE_SECRET_API_TOKEN", secret);
    let output = workspace.run_pipeline(
        r#"
[pipeline]
name = "secrets"
[[stages]]
name = "Use"
[[stages.actions]]
name = "leaky"
plugin = "command@0.1"
namespace = "leaky"
config = { run = "sh -c 'echo token=$API_TOKEN; printf %s $API_TOKEN | base64; echo ::set-variable copy=$API_TOKEN'", secret-env = "API_TOKEN" }
grants = { commands = ["sh"], secrets = ["API_TOKEN"] }
"#,
    );
    assert!(output.status.success(), "{}", text(&output));
    let logs = workspace.latest_logs();
    assert!(
        logs.contains("token=***"),
        "the command did not see the secret:\n{logs}"
    );
    let shown = workspace.sluice(&["executions", "show", "latest", "--json"]);
    let everything = format!("{logs}{}{}", text(&output), text(&shown));
    let encoded = base64_of(secret);
    assert!(
        !everything.contains(secret),
        "plain secret leaked:\n{everything}"
    );
    assert!(
        !everything.contains(&encoded[..encoded.len() - 4]),
        "base64 secret leaked:\n{everything}"
    );
}

fn base64_of(text: &str) -> String {
    let output = std::process::Command::new("sh")
        .args(["-c", &format!("printf %s '{text}' | base64")])
        .output()
        .unwrap();
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// Host processes whose command line contains `marker` (zombies excluded).
pub fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(marker) && !stat.contains(") Z ") {
            found.push(pid);
        }
    }
    found
}

#[test]
fn nothing_a_command_starts_outlives_its_action() {
    let workspace = Workspace::new();
    // Both a plain background child and one in its own session (`setsid`),
    // which escaped process-group kills before commands got a PID namespace.
    let output = workspace.run_pipeline(
        r#"
[pipeline]
name = "orphans"
[[stages]]
name = "Spawn"
[[stages.actions]]
name = "spawn"
plugin = "command@0.1"
config = { script = """
sleep 300.4711 &
setsid sleep 300.4712 > /dev/null 2>&1 &
echo spawned
""" }
grants = { commands = ["sh"] }
"#,
    );
    assert!(output.status.success(), "{}", text(&output));
    for _ in 0..50 {
        if processes_with("300.471").is_empty() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("{:?} outlived the action", processes_with("300.471"));
}

#[test]
fn more_parallel_actions_than_sandbox_slots_wait_for_one_and_all_succeed() {
    let workspace = Workspace::new();
    let actions: String = (1..=6)
        .map(|n| {
            format!(
                "[[stages.actions]]\nname = \"nap{n}\"\nplugin = \"noop@0.1\"\nconfig = {{ sleep-ms = 300 }}\n"
            )
        })
        .collect();
    workspace.write(
        "pipeline.toml",
        &format!("[pipeline]\nname = \"wide\"\n[[stages]]\nname = \"Wide\"\n{actions}"),
    );
    let output = workspace.sluice(&["--sandbox-slots", "2", "run", "pipeline.toml"]);
    assert!(output.status.success(), "{}", text(&output));
    let execution = workspace.latest_execution();
    for n in 1..=6 {
        assert_eq!(
            action(&execution, &format!("nap{n}"))["status"],
            "Succeeded"
        );
    }
    let logs = workspace.latest_logs();
    assert!(
        logs.matches("waiting for a free sandbox slot").count() >= 4,
        "four of six actions wait for one of two slots:\n{logs}"
    );
    assert!(!logs.contains("concurrent limit"), "{logs}");
}

#[test]
fn a_state_database_from_a_newer_sluice_is_refused_with_its_version() {
    let workspace = Workspace::new();
    std::fs::create_dir_all(workspace.path(".sluice")).unwrap();
    rusqlite::Connection::open(workspace.path(".sluice/state.db"))
        .unwrap()
        .pragma_update(None, "user_version", 42)
        .unwrap();
    let output = workspace.sluice(&["executions", "list"]);
    let printed = text(&output);
    assert!(!output.status.success(), "{printed}");
    assert!(
        printed.contains("state.db")
            && printed.contains("schema version 42, newer than this sluice knows"),
        "{printed}"
    );
    assert!(!printed.contains("panicked"), "{printed}");
}

#[test]
fn two_runs_of_a_queued_pipeline_take_the_stage_in_turn_and_say_why_one_waits() {
    let workspace = Workspace::new();
    workspace.write(
        "pipeline.toml",
        r#"
[pipeline]
name = "turns"
execution-mode = "queued"
[[stages]]
name = "Deploy"
[[stages.actions]]
name = "deploy"
plugin = "command@0.1"
config = { run = "sleep 2" }
grants = { commands = ["sleep"] }
"#,
    );
    let outputs: Vec<_> = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| workspace.sluice(&["run", "pipeline.toml"])))
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for output in &outputs {
        assert!(output.status.success(), "{}", text(output));
    }
    let waited: Vec<_> = outputs
        .iter()
        .filter(|o| {
            text(o).contains("stage Deploy: waiting (execution mode queued: another execution is in the stage or ahead in line)")
        })
        .collect();
    assert_eq!(
        waited.len(),
        1,
        "{}\n{}",
        text(&outputs[0]),
        text(&outputs[1])
    );
    // The stage spans of the two executions do not overlap.
    let json = |args: &[&str]| -> serde_json::Value {
        let output = workspace.sluice(&[&["--output", "json"], args].concat());
        assert!(output.status.success(), "{}", text(&output));
        serde_json::from_slice(&output.stdout).unwrap()
    };
    let listed = json(&["executions", "list"]);
    let mut spans: Vec<(i64, i64)> = listed["executions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let shown = json(&["executions", "show", e["id"].as_str().unwrap()]);
            let stage = &shown["stages"][0];
            (millis(stage, "started_ms"), millis(stage, "ended_ms"))
        })
        .collect();
    spans.sort();
    assert_eq!(spans.len(), 2, "{listed:#}");
    assert!(
        spans[0].1 <= spans[1].0,
        "both were in the stage at once: {spans:?}"
    );
}

#[test]
fn stage_conditions_skip_retry_and_fail_stages_and_say_which_rule_decided() {
    let workspace = Workspace::new();
    let output = workspace.run_pipeline(
        r##"
[pipeline]
name = "gated"
[variables]
target = { default = "staging" }
[caches]
marks = {}
[[stages]]
name = "Build"
[[stages.actions]]
name = "build"
plugin = "command@0.1"
namespace = "build"
config = { run = "true" }
grants = { commands = ["true"] }
[[stages]]
name = "Deploy"
before-entry = { result = "skip", rules = [
  { name = "prod-only", provider = "variable-check", variable = "#{variables.target}", operator = "eq", value = "production" },
] }
[[stages.actions]]
name = "deploy"
plugin = "command@0.1"
config = { run = "true" }
grants = { commands = ["true"] }
[[stages]]
name = "Flaky"
on-success = { rules = [{ name = "built", provider = "variable-check", variable = "#{build.exit_code}", operator = "eq", value = "0" }] }
on-failure = { result = "retry" }
[[stages.actions]]
name = "flaky"
plugin = "command@0.1"
config = { run = "sh -c 'if [ -e $MARKS/tried ]; then echo second try; else touch $MARKS/tried; exit 1; fi'", env = "MARKS=#{cache.marks}" }
grants = { commands = ["sh"], caches = ["marks"] }
[[stages]]
name = "Window"
before-entry = { rules = [{ name = "closed", provider = "deployment-window", cron = "0 0 0 1 1 * 2001", time-zone = "Europe/Paris" }] }
[[stages.actions]]
name = "late"
plugin = "command@0.1"
config = { run = "true" }
grants = { commands = ["true"] }
"##,
    );
    let shown = text(&output);
    assert!(!output.status.success(), "{shown}");
    for line in [
        "✗ Deploy before-entry rule prod-only: not: `staging` equals `production`",
        "✓ Flaky on-success rule built: `0` equals `0`",
        "✗ Window before-entry rule closed: not: `0 0 0 1 1 * 2001` never opens again",
    ] {
        assert!(shown.contains(line), "no `{line}` in:\n{shown}");
    }
    let json = workspace.sluice(&["--output", "json", "executions", "show", "latest"]);
    let record: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let stages: Vec<(String, String)> = record["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let field = |k: &str| s[k].as_str().unwrap_or_default().to_string();
            (field("stage"), field("status"))
        })
        .collect();
    let expected = [
        ("Build", "Succeeded"),
        ("Deploy", "Skipped"),
        ("Flaky", "Succeeded"),
        ("Window", "Failed"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(stages, expected, "{record:#}");
    let rules: Vec<(String, bool)> = record["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let field = |k: &str| r[k].as_str().unwrap().to_string();
            let name = format!(
                "{}/{}/{}",
                field("stage"),
                field("condition"),
                field("rule")
            );
            (name, r["passed"].as_bool().unwrap())
        })
        .collect();
    let expected_rules = [
        ("Deploy/before-entry/prod-only", false),
        ("Flaky/on-success/built", true),
        ("Window/before-entry/closed", false),
    ];
    let expected_rules: Vec<(String, bool)> = expected_rules
        .iter()
        .map(|(r, p)| (r.to_string(), *p))
        .collect();
    assert_eq!(
        rules, expected_rules,
        "the recorded evaluations: {record:#}"
    );
    let ran = |name: &str| {
        record["actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == name)
    };
    assert!(
        !ran("deploy") && !ran("late"),
        "a stage a condition held ran: {record:#}"
    );
    let flaky = action(&record, "flaky");
    assert_eq!(flaky["status"], "Succeeded", "{record:#}");
    assert!(
        record["execution"]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("rule `closed`"),
        "{record:#}"
    );
}
