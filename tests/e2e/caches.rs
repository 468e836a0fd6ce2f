//! Pipeline caches: directories kept between executions, one user at a time,
//! capped in size, listed and cleared by `sluice cache`.

use crate::harness::{Workspace, action, text};

/// A one-action pipeline `name` whose `command` action runs `script` with
/// `sh -c`, the cache `data` granted and its host path in `$CACHE`.
fn cache_pipeline(name: &str, cache: &str, script: &str) -> String {
    format!(
        r#"[pipeline]
name = "{name}"

[caches]
data = {cache}

[[stages]]
name = "Build"
[[stages.actions]]
name = "build"
plugin = "command@0.1"
config = {{ run = "sh -c '{script}'", env = "CACHE=#{{cache.data}}" }}
grants = {{ commands = ["sh"], caches = ["data"] }}
"#
    )
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn a_cache_keeps_what_the_previous_run_wrote() {
    let workspace = Workspace::new();
    let pipeline = cache_pipeline(
        "keep",
        "{}",
        "echo run >> $CACHE/runs; echo ::set-variable runs=$(wc -l < $CACHE/runs)",
    );
    for expected in ["1", "2"] {
        let output = workspace.run_pipeline(&pipeline);
        assert!(output.status.success(), "{}", text(&output));
        let execution = workspace.latest_execution();
        let variables = &action(&execution, "build")["variables"];
        assert!(
            variables.to_string().contains(&format!("\"{expected}\"")),
            "run {expected} saw {variables}"
        );
    }
    let file = workspace.path(".sluice/caches/keep/data/runs");
    assert_eq!(std::fs::read_to_string(file).unwrap(), "run\nrun\n");
}

#[test]
fn a_wasm_action_sees_its_cache_at_slash_cache() {
    let workspace = Workspace::new();
    let pipeline = r#"[pipeline]
name = "count"
[caches]
data = { max-size = "1MiB" }
[[stages]]
name = "Count"
[[stages.actions]]
name = "count"
plugin = "hostile@0.1"
config = { mode = "cache-count", file = "data/count" }
grants = { caches = ["data"] }
"#;
    for expected in ["count 1", "count 2"] {
        let output = workspace.run_pipeline(pipeline);
        assert!(output.status.success(), "{}", text(&output));
        assert!(stdout(&output).contains(expected), "{}", text(&output));
    }
}

#[test]
fn concurrent_runs_take_turns_with_a_cache() {
    let workspace = Workspace::new();
    workspace.write(
        "pipeline.toml",
        // Parallel: in the other modes the second run would wait at the
        // stage boundary before it reached the cache.
        &cache_pipeline(
            "turns",
            "{}",
            "echo start >> $CACHE/log; sleep 2; echo end >> $CACHE/log",
        )
        .replace("[caches]", "execution-mode = \"parallel\"\n\n[caches]"),
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
    let log = std::fs::read_to_string(workspace.path(".sluice/caches/turns/data/log")).unwrap();
    assert_eq!(log, "start\nend\nstart\nend\n", "the two runs interleaved");
    let waited = outputs
        .iter()
        .any(|o| stdout(o).contains("waiting for cache `data` (in use by another execution)"));
    assert!(
        waited,
        "neither run said it waited:\n{}\n{}",
        text(&outputs[0]),
        text(&outputs[1])
    );
}

#[test]
fn a_cache_above_its_max_size_is_cleared_with_a_warning() {
    let workspace = Workspace::new();
    let small = cache_pipeline(
        "capped",
        "{ max-size = \"1KiB\" }",
        "echo small > $CACHE/small",
    );
    let output = workspace.run_pipeline(&small);
    assert!(output.status.success(), "{}", text(&output));
    let dir = workspace.path(".sluice/caches/capped/data");
    assert!(
        dir.join("small").exists(),
        "under the cap, the cache is kept"
    );

    let big = cache_pipeline(
        "capped",
        "{ max-size = \"1KiB\" }",
        "head -c 4096 /dev/zero > $CACHE/big",
    );
    let output = workspace.run_pipeline(&big);
    assert!(output.status.success(), "{}", text(&output));
    let warning = "cache `data` holds 4.0 KiB, above its max-size of 1.0 KiB: cleared it";
    assert!(
        String::from_utf8_lossy(&output.stderr).contains(warning),
        "{}",
        text(&output)
    );
    assert!(workspace.latest_logs().contains(warning));
    assert!(!dir.exists(), "the cache was not cleared");
}

#[test]
fn cache_ls_and_clear() {
    let workspace = Workspace::new();
    let output = workspace.run_pipeline(&cache_pipeline(
        "listed",
        "{}",
        "printf hello > $CACHE/greeting",
    ));
    assert!(output.status.success(), "{}", text(&output));

    let listed = workspace.sluice(&["cache", "ls"]);
    assert!(listed.status.success(), "{}", text(&listed));
    let table = stdout(&listed);
    assert!(table.contains("PIPELINE"), "{table}");
    let row = table.lines().find(|l| l.starts_with("listed")).unwrap();
    assert!(row.contains("data") && row.contains("5 B"), "{table}");

    let json = workspace.sluice(&["--output", "json", "cache", "ls"]);
    assert!(json.status.success(), "{}", text(&json));
    let caches: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(caches[0]["pipeline"], "listed");
    assert_eq!(caches[0]["cache"], "data");
    assert_eq!(caches[0]["bytes"], 5);
    assert!(
        caches[0]["last_used_ms"].as_i64().unwrap() > 0,
        "{caches:#}"
    );

    let missing = workspace.sluice(&["cache", "clear", "nosuch"]);
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no cache `nosuch`"));

    let cleared = workspace.sluice(&["cache", "clear", "--pipeline", "listed", "data"]);
    assert!(cleared.status.success(), "{}", text(&cleared));
    assert!(
        stdout(&cleared).contains("cleared cache `data` of pipeline `listed` (5 B)"),
        "{}",
        text(&cleared)
    );
    assert!(!workspace.path(".sluice/caches/listed/data").exists());
    let listed = workspace.sluice(&["cache", "ls"]);
    assert_eq!(stdout(&listed).trim(), "no caches");
}

#[test]
fn clearing_waits_for_the_action_using_the_cache() {
    let workspace = Workspace::new();
    workspace.write(
        "pipeline.toml",
        &cache_pipeline(
            "busy",
            "{}",
            "echo start >> $CACHE/log; sleep 3; echo end >> $CACHE/log",
        ),
    );
    let log = workspace.path(".sluice/caches/busy/data/log");
    std::thread::scope(|scope| {
        let run = scope.spawn(|| workspace.sluice(&["run", "pipeline.toml"]));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !log.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "the action never started"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let cleared = workspace.sluice(&["cache", "clear", "data"]);
        assert!(cleared.status.success(), "{}", text(&cleared));
        let waited = "waiting for cache `data` of pipeline `busy` (in use by a running action)";
        assert!(
            String::from_utf8_lossy(&cleared.stderr).contains(waited),
            "{}",
            text(&cleared)
        );
        // Both markers were written before the clear: it waited for the action.
        assert!(
            stdout(&cleared).contains("cleared cache `data` of pipeline `busy` (10 B)"),
            "{}",
            text(&cleared)
        );
        let run = run.join().unwrap();
        assert!(run.status.success(), "{}", text(&run));
    });
    assert!(!log.exists());
}

/// Validate `pipeline` and assert it is rejected at `line:column` with `message`.
fn rejected_at(pipeline: &str, line: usize, column: usize, message: &str) {
    let workspace = Workspace::new();
    workspace.write("pipeline.toml", pipeline);
    let output = workspace.sluice(&["validate", "pipeline.toml"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(2),
        "expected rejection:\n{stderr}"
    );
    let location = format!("pipeline.toml:{line}:{column}: error:");
    let hit = stderr
        .lines()
        .any(|l| l.contains(&location) && l.contains(message));
    assert!(hit, "expected `{location} …{message}…` in:\n{stderr}");
}

#[test]
fn caches_must_be_declared_granted_and_allowed() {
    let base = cache_pipeline("checks", "{}", "true");
    // Line 12 is the config, line 13 the grants; columns are 1-based.
    rejected_at(
        &base.replace(r#"caches = ["data"]"#, r#"caches = ["data", "npm"]"#),
        13,
        49,
        "cache `npm` is not declared; declare it under [caches]",
    );
    rejected_at(
        &base.replace(r#", caches = ["data"]"#, ""),
        12,
        40,
        "`#{cache.data}` refers to cache `data`, which is not granted to this action",
    );
    rejected_at(
        &base.replace("#{cache.data}", "#{cache.other}"),
        12,
        40,
        "`#{cache.other}` refers to cache `other`, which [caches] does not declare",
    );
    rejected_at(
        &base.replace("data = {}", "data = {}\nunused = {}"),
        6,
        10,
        "cache `unused` is declared but no action is granted it",
    );
    rejected_at(
        &base.replace("data = {}", r#"data = { max-size = "lots" }"#),
        5,
        21,
        "cache `data`: invalid size `lots`",
    );
    let junit = base
        .replace("command@0.1", "junit-gate@0.1")
        .replace(r#"commands = ["sh"], "#, "");
    rejected_at(
        &junit,
        13,
        22,
        "grant of cache `data` exceeds the manifest of junit-gate@0.1.0, which allows no caches",
    );
}
