//! Plugins in any language: Python (componentize-py) and JavaScript (jco) plugins
//! built from source with the SDKs' helper modules run next to Rust ones;
//! installed plugins never compile at run. (`sluice plugin new` is in
//! scaffolds.rs.)
//!
//! The Python and JS toolchains come from PyPI and npm into the user's toolchain
//! cache. When one cannot be installed, the test prints `SKIPPED` with the reason
//! and stops early.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{Workspace, action, packaged_plugins, root, text};

/// Build a Python or JS plugin directory with its SDK's build.sh; `Err` carries
/// the toolchain problem when one could not be installed.
fn build(language: &str, plugin: &Path, name: &str) -> Result<PathBuf, String> {
    let out = root().join("target").join("e2e-lang").join(name);
    let script = root().join("sdk").join(language).join("build.sh");
    let output = Command::new("bash")
        .arg(&script)
        .arg(plugin)
        .arg(&out)
        .output()
        .unwrap();
    toolchain_outcome(&output, &format!("building {}", plugin.display()))?;
    Ok(out)
}

/// `Ok` when a build or harness run succeeded; `Err(reason)` when it failed
/// because a toolchain could not be installed (no python3, node, PyPI or npm);
/// a panic for any other failure.
pub fn toolchain_outcome(output: &std::process::Output, what: &str) -> Result<(), String> {
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let toolchain_missing = [
        "could not install",
        "not found; install",
        "could not create a venv",
    ]
    .iter()
    .any(|m| stderr.contains(m));
    assert!(toolchain_missing, "{what} failed:\n{}", text(output));
    Err(stderr
        .lines()
        .rfind(|l| l.contains("error:"))
        .unwrap_or("toolchain unavailable")
        .to_string())
}

pub fn skip(what: &str, reason: &str) {
    eprintln!("SKIPPED {what}: {reason}");
}

const MIXED: &str = r##"
[pipeline]
name = "polyglot"

[[stages]]
name = "Source"
[[stages.actions]]
name = "checkout"
plugin = "dir-source@0.1"
outputs = ["source"]
config = { path = "app" }
grants = { mounts = { app = { host = "app" } } }

[[stages]]
name = "Check"
[[stages.actions]]
name = "manifest"
plugin = "manifest-check@0.1"
inputs = ["source"]
namespace = "app"
[[stages.actions]]
name = "rust-side"
plugin = "command@0.1"
inputs = ["source"]
config = { run = "cat manifest.json" }
grants = { commands = ["cat"] }

[[stages]]
name = "Notes"
[[stages.actions]]
name = "notes"
plugin = "release-notes@0.1"
outputs = ["notes"]
namespace = "notes"
config = { version = "#{app.version}", title = "#{app.name}", changes = "faster builds; fewer bugs" }
[[stages.actions]]
name = "show"
run-order = 2
plugin = "command@0.1"
inputs = ["notes"]
config = { run = "cat RELEASE_NOTES.md" }
grants = { commands = ["cat"] }
"##;

#[test]
fn python_and_js_plugins_run_next_to_rust_plugins_without_compiling() {
    let python = match build(
        "python",
        &root().join("sdk/python/manifest-check"),
        "manifest-check",
    ) {
        Ok(dir) => dir,
        Err(reason) => return skip("Python plugin", &reason),
    };
    let js = match build("js", &root().join("sdk/js/release-notes"), "release-notes") {
        Ok(dir) => dir,
        Err(reason) => return skip("JavaScript plugin", &reason),
    };
    let workspace = Workspace::with_private_registry();
    for plugin in [
        packaged_plugins().join("dir-source"),
        packaged_plugins().join("command"),
        python,
        js,
    ] {
        let installed = workspace.sluice(&["plugin", "install", plugin.to_str().unwrap(), "--yes"]);
        assert!(installed.status.success(), "{}", text(&installed));
    }
    workspace.write(
        "app/manifest.json",
        r#"{"name": "shop", "version": "2.4.1", "dependencies": {"left-pad": "1.3.0"}}"#,
    );
    workspace.write("pipeline.toml", MIXED);
    let run = workspace.sluice(&["run", "pipeline.toml"]);
    let printed = text(&run);
    assert!(run.status.success(), "{printed}");
    assert!(
        !printed.contains("compiling it now"),
        "an installed plugin was compiled at run time:\n{printed}"
    );

    let execution = workspace.sluice(&["executions", "show", "latest", "--json"]);
    let execution: serde_json::Value = serde_json::from_slice(&execution.stdout).unwrap();
    let variables = action(&execution, "manifest")["variables"].to_string();
    assert!(
        variables.contains(r#"["version","2.4.1"]"#) && variables.contains(r#"["name","shop"]"#),
        "{variables}"
    );
    let logs =
        String::from_utf8_lossy(&workspace.sluice(&["logs", "latest", "show"]).stdout).into_owned();
    assert!(
        logs.contains("2.4.1") && logs.contains("faster builds"),
        "release notes not rendered:\n{logs}"
    );

    // A bad manifest fails the Python action with every problem listed.
    workspace.write("app/manifest.json", r#"{"version": "two"}"#);
    let bad = workspace.sluice(&["run", "pipeline.toml"]);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    let execution = workspace.sluice(&["executions", "show", "latest", "--json"]);
    let execution: serde_json::Value = serde_json::from_slice(&execution.stdout).unwrap();
    let error = action(&execution, "manifest")["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        error.contains("name") && error.contains("version"),
        "{error}"
    );

    // The helper modules' errors: a missing file (Python `read_text`) and a
    // blank required key (JS `require`) are configuration errors naming them.
    workspace.write("helpers.toml", HELPER_ERRORS);
    let failed = workspace.sluice(&["run", "helpers.toml"]);
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed));
    let execution = workspace.latest_execution();
    for (name, message) in [
        ("manifest", "/in/source/missing.json does not exist"),
        ("notes", "config `version` is required"),
    ] {
        let record = action(&execution, name);
        let error = record["error"].as_str().unwrap_or_default();
        assert!(error.contains(message), "{record:#}");
    }
}

const HELPER_ERRORS: &str = r#"
[pipeline]
name = "helpers"

[[stages]]
name = "Source"
[[stages.actions]]
name = "checkout"
plugin = "dir-source@0.1"
outputs = ["source"]
config = { path = "app" }
grants = { mounts = { app = { host = "app" } } }

[[stages]]
name = "Check"
[[stages.actions]]
name = "manifest"
plugin = "manifest-check@0.1"
inputs = ["source"]
config = { file = "missing.json" }
[[stages.actions]]
name = "notes"
plugin = "release-notes@0.1"
outputs = ["notes"]
config = { version = " " }
"#;

#[test]
fn a_plugin_without_precompiled_code_is_compiled_once_and_says_so() {
    let workspace = Workspace::with_private_registry();
    let noop = packaged_plugins().join("noop");
    let installed = workspace.sluice(&["plugin", "install", noop.to_str().unwrap(), "--yes"]);
    assert!(installed.status.success(), "{}", text(&installed));
    workspace.write(
        "pipeline.toml",
        "[pipeline]\nname = \"n\"\n[[stages]]\nname = \"S\"\n[[stages.actions]]\nname = \"a\"\nplugin = \"noop@0.1\"\n",
    );
    let first = workspace.sluice(&["run", "pipeline.toml"]);
    assert!(
        first.status.success() && !text(&first).contains("compiling it now"),
        "{}",
        text(&first)
    );
    std::fs::remove_dir_all(workspace.registry().join("noop/0.1.0/cache")).unwrap();
    let cold = workspace.sluice(&["run", "pipeline.toml"]);
    assert!(
        cold.status.success() && text(&cold).contains("compiling it now"),
        "{}",
        text(&cold)
    );
    let warm = workspace.sluice(&["run", "pipeline.toml"]);
    assert!(
        warm.status.success() && !text(&warm).contains("compiling it now"),
        "{}",
        text(&warm)
    );
}
