//! Per-action quotas: an action that returns, writes or holds too much fails
//! with the limit named (`limit summary (64.0 KiB) exceeded: …`), stores
//! nothing of the excess, and a bystander in the same run-order group works on.

use crate::harness::{Workspace, action, text};

/// A hostile `attack` (with `config` and `extra` lines) next to a well-behaved
/// `bystander` in the same run-order group, which writes and stores files.
fn beside_bystander(config: &str, extra: &str) -> String {
    format!(
        r#"
[pipeline]
name = "quotas"

[[stages]]
name = "Attack"
[[stages.actions]]
name = "attack"
plugin = "hostile@0.1"
config = {{ {config} }}
{extra}

[[stages.actions]]
name = "bystander"
plugin = "hostile@0.1"
outputs = ["calm"]
config = {{ mode = "many-files", count = "200" }}
"#
    )
}

/// Run the pipeline; the attack must fail with `reason` in its error and the
/// bystander must succeed. Returns the attack's error.
fn stopped(workspace: &Workspace, pipeline: &str, reason: &str) -> String {
    let output = workspace.run_pipeline(pipeline);
    let printed = text(&output);
    assert_eq!(
        output.status.code(),
        Some(1),
        "the attack must fail:\n{printed}"
    );
    let execution = workspace.latest_execution();
    let attack = action(&execution, "attack");
    assert_eq!(attack["status"], "Failed", "{execution:#}");
    let error = attack["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains(reason), "expected `{reason}` in `{error}`");
    assert!(
        printed.contains(reason),
        "the reason is printed:\n{printed}"
    );
    let bystander = action(&execution, "bystander");
    assert_eq!(bystander["status"], "Succeeded", "{execution:#}");
    error
}

#[test]
fn an_oversized_summary_is_refused_by_name() {
    let workspace = Workspace::new();
    let pipeline = beside_bystander(r#"mode = "big-summary", kib = "1024""#, "");
    stopped(
        &workspace,
        &pipeline,
        "limit summary (64.0 KiB) exceeded: the summary is 1.0 MiB",
    );
    let custom = beside_bystander(
        r#"mode = "big-summary", kib = "4""#,
        r#"limits = { summary = "2KiB" }"#,
    );
    stopped(&workspace, &custom, "limit summary (2.0 KiB) exceeded");
}

#[test]
fn too_many_or_too_large_variables_are_refused_by_name() {
    let workspace = Workspace::new();
    let pipeline = beside_bystander(r#"mode = "many-variables", count = "5000""#, "");
    stopped(
        &workspace,
        &pipeline,
        "limit variables (1000) exceeded: the action set 5000 output variables",
    );
    let large = beside_bystander(
        r#"mode = "many-variables", count = "10", size = "2048""#,
        r#"limits = { variables-size = "16KiB" }"#,
    );
    stopped(
        &workspace,
        &large,
        "limit variables-size (16.0 KiB) exceeded",
    );
    let fits = beside_bystander(
        r#"mode = "many-variables", count = "10", size = "2048""#,
        r#"limits = { variables = 10, variables-size = "32KiB" }"#,
    );
    let output = workspace.run_pipeline(&fits);
    assert!(output.status.success(), "{}", text(&output));
}

#[test]
fn too_many_output_files_are_refused_before_they_are_stored() {
    let workspace = Workspace::new();
    let pipeline = beside_bystander(
        r#"mode = "many-files", count = "600""#,
        "outputs = [\"heap\"]\nlimits = { output-files = 500 }",
    );
    stopped(
        &workspace,
        &pipeline,
        "limit output-files (500) exceeded: the outputs hold more than 500 entries",
    );
    let store = workspace.path(".sluice/artifacts");
    let stored = walk_count(&store);
    assert!(
        stored < 600,
        "the refused outputs were not stored ({stored} entries)"
    );
}

#[test]
fn too_large_outputs_are_refused_by_name() {
    let workspace = Workspace::new();
    let pipeline = beside_bystander(
        r#"mode = "big-file", mb = "24""#,
        "outputs = [\"blob\"]\nlimits = { output-size = \"16MiB\" }",
    );
    stopped(
        &workspace,
        &pipeline,
        "limit output-size (16.0 MiB) exceeded: the outputs hold more than 16.0 MiB of files",
    );
}

#[test]
fn holding_too_many_open_files_is_stopped_and_a_parallel_action_works_on() {
    let workspace = Workspace::new();
    let pipeline = beside_bystander(r#"mode = "open-files", max = "100000""#, "");
    let error = stopped(&workspace, &pipeline, "limit open-files (1024) exceeded");
    assert!(!error.contains("ESCAPED"), "{error}");
    let custom = beside_bystander(
        r#"mode = "open-files", max = "100000""#,
        "limits = { open-files = 64 }",
    );
    stopped(&workspace, &custom, "limit open-files (64) exceeded");
    let fits = beside_bystander(
        r#"mode = "open-files", max = "20""#,
        "limits = { open-files = 64 }",
    );
    let output = workspace.run_pipeline(&fits);
    let printed = text(&output);
    assert_eq!(output.status.code(), Some(0), "{printed}");
}

#[test]
fn unbounded_recursion_is_reported_as_a_stack_overflow() {
    let workspace = Workspace::new();
    // Frames of registers only exhaust wasmtime's own stack; frames with 1 KiB
    // of locals exhaust the guest's stack in linear memory first.
    for (frame, reason) in [
        ("0", "plugin crashed: stack overflow"),
        (
            "1024",
            "plugin crashed: stack overflow (the plugin's stack in linear memory ran out)",
        ),
    ] {
        let config = format!(r#"mode = "stack-overflow", frame = "{frame}""#);
        let error = stopped(&workspace, &beside_bystander(&config, ""), reason);
        assert!(!error.contains("out of bounds"), "frame {frame}: {error}");
        if frame == "0" {
            assert!(!error.contains("linear memory"), "{error}");
        }
    }
}

#[test]
fn a_symlink_out_of_a_read_write_mount_is_denied() {
    let workspace = Workspace::new();
    workspace.write("data/keep.txt", "kept");
    let grant = r#"grants = { mounts = { data = { host = "data", mode = "rw" } } }"#;
    for target in ["../../../../etc/passwd", "sub/../../outside", "/etc/passwd"] {
        let pipeline = beside_bystander(
            &format!(r#"mode = "mount-symlink", target = "{target}""#),
            grant,
        );
        stopped(&workspace, &pipeline, "symlink `/mnt/data/escape` -> ");
        assert!(
            std::fs::symlink_metadata(workspace.path("data/escape")).is_err(),
            "no link to {target} was created in the mount"
        );
    }
    let inside = beside_bystander(r#"mode = "mount-symlink", target = "keep.txt""#, grant);
    let output = workspace.run_pipeline(&inside);
    assert!(output.status.success(), "{}", text(&output));
    let link = std::fs::read_link(workspace.path("data/escape")).unwrap();
    assert_eq!(link, std::path::Path::new("keep.txt"));
}

#[test]
fn quota_limits_are_validated_with_their_location() {
    let workspace = Workspace::new();
    let pipeline = beside_bystander(
        r#"mode = "noop""#,
        r#"limits = { summary = "lots", open-files = 2 }"#,
    );
    workspace.write("pipeline.toml", &pipeline);
    let output = workspace.sluice(&["validate", "pipeline.toml"]);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    for message in [
        "limit `summary`: ",
        "limit `open-files` must be at least 16, not 2",
    ] {
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with("pipeline.toml:11:10: error:") && l.contains(message)),
            "expected `{message}` at 11:10 in:\n{stderr}"
        );
    }
}

fn walk_count(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| {
                    let path = e.path();
                    if path.is_dir() && !path.is_symlink() {
                        1 + walk_count(&path)
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn ingest_memory_does_not_grow_with_output_size() {
    let workspace = Workspace::new();
    let peak = |mb: u64| {
        let pipeline = beside_bystander(
            &format!(r#"mode = "big-file", mb = "{mb}""#),
            "outputs = [\"blob\"]",
        );
        workspace.write("pipeline.toml", &pipeline);
        peak_rss_of_run(&workspace)
    };
    let small = peak(1);
    let large = peak(256);
    assert!(
        large < small + (64 << 10),
        "peak memory grew from {small} KiB to {large} KiB for a 256 MiB output"
    );
}

/// Run `sluice run pipeline.toml` in `workspace`; it must succeed. Returns its
/// peak resident memory in KiB, as the kernel measured it.
// The child is reaped by `wait4` (for its rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn peak_rss_of_run(workspace: &Workspace) -> u64 {
    use std::process::{Command, Stdio};
    let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .current_dir(workspace.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .env_remove("SLUICE_DATA_DIR")
        .env_remove("SLUICE_PLUGINS")
        .arg("--data-dir")
        .arg(workspace.path(".sluice"))
        .arg("--plugins")
        .arg(workspace.registry())
        .args(["run", "pipeline.toml"])
        .spawn()
        .unwrap();
    let mut status = 0;
    // SAFETY: rusage is plain data, filled in by wait4.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: reaps our own child, which `child` never waits for afterwards.
    let reaped = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(reaped, child.id() as libc::pid_t);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the run failed: {status}"
    );
    usage.ru_maxrss as u64
}
