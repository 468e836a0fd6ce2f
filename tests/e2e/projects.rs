//! Real project pipelines, as a new user would write them from the README:
//! an npm package whose `npm ci` action hands `node_modules` (with its `.bin`
//! symlinks) to an `npm test` action, and a Rust crate built with `cargo test`.

use std::path::Path;
use std::process::Command;

use crate::harness::{Workspace, action, text};

/// Run a host command for the test's own setup; it must succeed. It is tried
/// three times: `npm pack` once failed silently under the full suite's load,
/// and the setup is not what these tests are about.
fn setup(dir: &Path, program: &str, args: &[&str]) {
    let run = || {
        Command::new(program)
            .current_dir(dir)
            .args(args)
            .env("HOME", dir)
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e} (the test needs it on PATH)"))
    };
    let mut output = run();
    for _ in 0..2 {
        if output.status.success() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
        output = run();
    }
    assert!(output.status.success(), "{program} {args:?}: {output:?}");
}

/// A Node project depending on a tiny local package that ships a `.bin` tool,
/// as a tarball in `vendor/` (no registry needed), with its lock file.
fn node_project(workspace: &Workspace) {
    workspace.write(
        "tool/package.json",
        r#"{"name":"tiny-check","version":"1.0.0","bin":{"tiny-check":"bin/cli.js"}}"#,
    );
    workspace.write(
        "tool/bin/cli.js",
        "#!/usr/bin/env node\nconsole.log('tiny-check ok: ' + process.argv.slice(2).join(' '));\n",
    );
    std::fs::create_dir_all(workspace.path("app/vendor")).unwrap();
    setup(
        &workspace.path("tool"),
        "npm",
        &["pack", "--pack-destination", "../app/vendor"],
    );
    workspace.write(
        "app/package.json",
        r#"{"name":"app","version":"1.0.0","scripts":{"test":"tiny-check all good"},
            "devDependencies":{"tiny-check":"file:vendor/tiny-check-1.0.0.tgz"}}"#,
    );
    setup(
        &workspace.path("app"),
        "npm",
        &[
            "install",
            "--package-lock-only",
            "--offline",
            "--no-audit",
            "--no-fund",
        ],
    );
}

const NODE_PIPELINE: &str = r#"
[pipeline]
name = "node-app"

[[stages]]
name = "Source"
[[stages.actions]]
name = "checkout"
plugin = "dir-source@0.1"
outputs = ["source"]
config = { path = "app" }
grants = { mounts = { app = { host = "app", mode = "ro" } } }

[[stages]]
name = "Install"
[[stages.actions]]
name = "install"
plugin = "command@0.1"
inputs = ["source"]
outputs = ["deps"]
config = { run = "npm ci --offline --no-audit --no-fund", outputs = "deps=node_modules/**" }
grants = { commands = ["npm"], env = ["PATH"] }

[[stages]]
name = "Test"
[[stages.actions]]
name = "test"
plugin = "command@0.1"
inputs = ["source", "deps"]
config = { run = "npm test" }
grants = { commands = ["npm"], env = ["PATH"] }
"#;

#[test]
fn npm_ci_hands_node_modules_bin_tools_to_npm_test() {
    let workspace = Workspace::new();
    node_project(&workspace);
    let output = workspace.run_pipeline(NODE_PIPELINE);
    assert!(output.status.success(), "{}", text(&output));
    let logs = workspace.latest_logs();
    assert!(logs.contains("tiny-check ok: all good"), "{logs}");
    let install = action(&workspace.latest_execution(), "install").clone();
    assert!(
        install["summary"].as_str().unwrap().contains("collected"),
        "{install:#}"
    );
}

/// A small library crate with a unit test, as `cargo new --lib` would make it.
fn rust_crate(workspace: &Workspace) {
    workspace.write(
        "crate/Cargo.toml",
        "[package]\nname = \"tiny-math\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\n",
    );
    workspace.write(
        "crate/src/lib.rs",
        "pub fn add(a: u64, b: u64) -> u64 { a + b }\n\n#[cfg(test)]\nmod tests {\n    #[test]\n    fn adds() { assert_eq!(super::add(2, 2), 4); }\n}\n",
    );
}

/// Where rustup keeps its toolchains on this host (`$RUSTUP_HOME`, or `~/.rustup`).
fn rustup_home() -> String {
    std::env::var("RUSTUP_HOME")
        .unwrap_or_else(|_| format!("{}/.rustup", std::env::var("HOME").unwrap()))
}

/// The directory holding the `cargo` found on PATH (rustup's proxies).
fn cargo_home() -> String {
    std::env::var("CARGO_HOME")
        .unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap()))
}

fn rust_pipeline(cache: &str) -> String {
    format!(
        r#"
[pipeline]
name = "rust-crate"
{cache}
[[stages]]
name = "Source"
[[stages.actions]]
name = "checkout"
plugin = "dir-source@0.1"
outputs = ["source"]
config = {{ path = "crate" }}
grants = {{ mounts = {{ crate = {{ host = "crate", mode = "ro" }} }} }}

[[stages]]
name = "Test"
[[stages.actions]]
name = "test"
plugin = "command@0.1"
inputs = ["source"]
config = {{ run = "cargo test --color never", env = "RUSTUP_HOME={rustup}CARGO_ENV" }}
grants = {{ commands = ["cargo"], env = ["PATH"], toolchains = ["{cargo}", "{rustup}"]CACHE_GRANT }}
"#,
        rustup = rustup_home(),
        cargo = cargo_home(),
    )
}

#[test]
fn cargo_test_runs_a_real_crate_with_only_documented_grants() {
    let workspace = Workspace::new();
    rust_crate(&workspace);
    let pipeline = rust_pipeline("")
        .replace("CARGO_ENV", "")
        .replace("CACHE_GRANT", "");
    let output = workspace.run_pipeline(&pipeline);
    assert!(
        output.status.success(),
        "{}\n{}",
        text(&output),
        workspace.latest_logs()
    );
    let logs = workspace.latest_logs();
    assert!(logs.contains("test tests::adds ... ok"), "{logs}");
}

#[test]
fn a_second_cargo_test_run_reuses_the_build_from_the_cache() {
    let workspace = Workspace::new();
    rust_crate(&workspace);
    let pipeline = rust_pipeline("[caches]\ncargo = { max-size = \"2GiB\" }\n")
        .replace("CARGO_ENV", ",CARGO_TARGET_DIR=#{cache.cargo}")
        .replace("CACHE_GRANT", ", caches = [\"cargo\"]");
    let first = workspace.run_pipeline(&pipeline);
    assert!(first.status.success(), "{}", text(&first));
    assert!(
        workspace.latest_logs().contains("Compiling tiny-math"),
        "{}",
        workspace.latest_logs()
    );
    let second = workspace.sluice(&["run", "pipeline.toml"]);
    assert!(second.status.success(), "{}", text(&second));
    let logs = workspace.latest_logs();
    assert!(logs.contains("test tests::adds ... ok"), "{logs}");
    assert!(
        !logs.contains("Compiling tiny-math"),
        "the second run recompiled the crate:\n{logs}"
    );
}
