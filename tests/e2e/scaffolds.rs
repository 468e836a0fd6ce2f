//! `sluice plugin new` writes plugins that build, install and run as they stand,
//! with no absolute path in them: outside the repository with a vendored SDK,
//! inside it with the checkout's SDK by a relative path. The Python and JS
//! toolchains land in the user's cache, never in the Sluice checkout. And
//! `sdk/harness/try.sh` runs real components.
//!
//! Each language is built once per place (six builds in all, two of them Rust).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{Workspace, packaged_plugins, root, text};
use crate::languages::{skip, toolchain_outcome};

const LANGUAGES: [&str; 3] = ["rust", "python", "js"];

/// The pipeline a scaffold runs in: the greeting goes into an artifact that a
/// second action prints.
fn pipeline(plugin: &str) -> String {
    format!(
        r#"
[pipeline]
name = "greet"

[[stages]]
name = "Greet"
[[stages.actions]]
name = "greet"
plugin = "{plugin}@0.1"
outputs = ["greeting"]
config = {{ who = "tests" }}

[[stages]]
name = "Show"
[[stages.actions]]
name = "show"
plugin = "command@0.1"
inputs = ["greeting"]
config = {{ run = "cat greeting.txt" }}
grants = {{ commands = ["cat"] }}
"#
    )
}

/// Every file under `dir` except build output (dist/, target/).
fn source_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if d != dir || (name != "dist" && name != "target") {
                    stack.push(path);
                }
            } else {
                found.push(path);
            }
        }
    }
    found
}

/// Fail when any source file of the plugin names one of `paths`.
fn assert_no_absolute_paths(plugin: &Path, paths: &[&Path]) {
    let files = source_files(plugin);
    assert!(
        !files.is_empty(),
        "nothing scaffolded in {}",
        plugin.display()
    );
    for file in files {
        let content = String::from_utf8_lossy(&std::fs::read(&file).unwrap()).into_owned();
        for path in paths {
            let path = path.to_str().unwrap();
            assert!(
                !content.contains(path),
                "{} names the absolute path {path}:\n{content}",
                file.display()
            );
        }
    }
}

/// `git status --porcelain` of the repository (ignored files excluded).
fn git_status() -> String {
    let output = Command::new("git")
        .current_dir(root())
        .args(["status", "--porcelain", "--untracked-files=all"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Where toolchains used to be installed inside the checkout.
const OLD_TOOLCHAIN_PLACES: [&str; 4] = [
    "target/py-venv",
    "target/js-tools",
    "sdk/python/.venv",
    "sdk/js/node_modules",
];

/// The toolchain cache as sdk/toolchain.sh computes it.
fn toolchains_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("SLUICE_TOOLCHAINS") {
        return dir.into();
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"));
    cache.join("sluice").join("toolchains")
}

/// Scaffold `language` into `parent`, check it for absolute paths, build it with
/// its own build.sh, install it and run it in a pipeline. `Err` when its
/// toolchain could not be installed.
fn round_trip(language: &str, parent: &Path, forbidden: &[&Path]) -> Result<PathBuf, String> {
    let workspace = Workspace::with_private_registry();
    let name = format!("greeter-{language}");
    let dir = parent.join(&name);
    let created = workspace.sluice(&[
        "plugin",
        "new",
        &name,
        "--lang",
        language,
        "--dir",
        dir.to_str().unwrap(),
    ]);
    assert!(created.status.success(), "{}", text(&created));
    assert_no_absolute_paths(&dir, forbidden);

    let built = Command::new(dir.join("build.sh"))
        .env("CARGO_TARGET_DIR", root().join("target").join("scaffold"))
        .output()
        .unwrap();
    toolchain_outcome(
        &built,
        &format!("building the {language} scaffold as it stands"),
    )?;
    // Building adds nothing that names a machine path either (Cargo.lock, caches).
    assert_no_absolute_paths(&dir, forbidden);

    let package = dir.join("dist").join(&name);
    for plugin in [package.clone(), packaged_plugins().join("command")] {
        let installed = workspace.sluice(&["plugin", "install", plugin.to_str().unwrap(), "--yes"]);
        assert!(installed.status.success(), "{}", text(&installed));
    }
    let run = workspace.run_pipeline(&pipeline(&name));
    assert!(
        run.status.success() && text(&run).contains("hello, tests"),
        "{}",
        text(&run)
    );
    let logs = workspace.latest_logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("hello, tests") && l.contains("show")),
        "the greeting artifact did not reach the next action:\n{logs}"
    );
    Ok(package)
}

/// Run every language's round trip under `parent`; returns the packaged Rust
/// plugin. Toolchain failures skip that language.
fn round_trips(parent: &Path, forbidden: &[&Path], place: &str) -> PathBuf {
    let before = git_status();
    let old_places: Vec<bool> = OLD_TOOLCHAIN_PLACES
        .iter()
        .map(|p| root().join(p).exists())
        .collect();
    let mut rust = None;
    for language in LANGUAGES {
        match round_trip(language, parent, forbidden) {
            Ok(package) if language == "rust" => rust = Some(package),
            Ok(_) => {
                let cache = toolchains_root();
                let prefix = if language == "python" {
                    "componentize-py-"
                } else {
                    "jco-"
                };
                let installed = std::fs::read_dir(&cache)
                    .unwrap()
                    .filter_map(|e| e.ok())
                    .any(|e| {
                        e.file_name().to_string_lossy().starts_with(prefix)
                            && e.path().join(".complete").is_file()
                    });
                assert!(
                    installed,
                    "the {language} toolchain is not in {}",
                    cache.display()
                );
            }
            Err(reason) => skip(&format!("{language} scaffold {place}"), &reason),
        }
    }
    assert_eq!(
        git_status(),
        before,
        "scaffolding and building {place} wrote into the Sluice checkout"
    );
    for (place, existed) in OLD_TOOLCHAIN_PLACES.iter().zip(old_places) {
        assert!(
            existed || !root().join(place).exists(),
            "a toolchain was installed into the checkout at {place}"
        );
    }
    rust.expect("the Rust scaffold needs no toolchain download")
}

#[test]
fn scaffolds_outside_the_repository_vendor_their_sdk_and_build_install_and_run() {
    let outside = tempfile::tempdir().unwrap();
    let parent = outside.path().canonicalize().unwrap();
    assert!(
        !parent.starts_with(root().canonicalize().unwrap()),
        "the temporary directory must be outside the repository"
    );
    let package = round_trips(&parent, &[&parent, &root()], "outside the repository");
    let plugin = parent.join("greeter-rust");
    assert!(plugin.join("vendor/sluice/sdk/rust/Cargo.toml").is_file());
    let manifest = std::fs::read_to_string(plugin.join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains(r#"sluice-sdk = { path = "vendor/sluice/sdk/rust" }"#),
        "{manifest}"
    );

    // The vendored harness runs the built component without the host.
    let out = parent.join("harness-out");
    std::fs::create_dir_all(&out).unwrap();
    let tried = Command::new(plugin.join("vendor/sluice/sdk/harness/try.sh"))
        .arg(package.join("greeter-rust.wasm"))
        .arg(r#"{"config":[["who","harness"]],"outputs":["o"]}"#)
        .arg(format!("/out/o={}", out.display()))
        .output()
        .unwrap();
    if let Err(reason) = toolchain_outcome(&tried, "sdk/harness/try.sh") {
        return skip("try.sh on the Rust scaffold", &reason);
    }
    let stdout = String::from_utf8_lossy(&tried.stdout);
    assert!(
        stdout.contains("[log info] greeting harness")
            && stdout
                .contains(r#"OK {"summary":"hello, harness","variables":[["who","harness"]]}"#),
        "{}",
        text(&tried)
    );
    assert_eq!(
        std::fs::read_to_string(out.join("greeting.txt")).unwrap(),
        "hello, harness\n"
    );
}

#[test]
fn scaffolds_inside_the_repository_use_its_sdk_by_a_relative_path() {
    let parent_dir = root().join("target").join("e2e-scaffold");
    std::fs::create_dir_all(&parent_dir).unwrap();
    let inside = tempfile::tempdir_in(&parent_dir).unwrap();
    let parent = inside.path().canonicalize().unwrap();
    round_trips(&parent, &[&parent, &root()], "inside the repository");
    let manifest = std::fs::read_to_string(parent.join("greeter-rust/Cargo.toml")).unwrap();
    assert!(
        manifest.contains(r#"sluice-sdk = { path = "../../../../sdk/rust" }"#),
        "{manifest}"
    );
    for language in LANGUAGES {
        assert!(
            !parent.join(format!("greeter-{language}/vendor")).exists(),
            "a scaffold inside the repository vendored the SDK"
        );
    }
    let build = std::fs::read_to_string(parent.join("greeter-python/build.sh")).unwrap();
    assert!(
        build.contains(r#""../../../../sdk/python/build.sh" . "dist/greeter-python""#),
        "{build}"
    );
}

#[test]
fn the_harness_runs_a_component_and_reports_its_result() {
    let noop = packaged_plugins().join("noop").join("noop.wasm");
    let tried = Command::new(root().join("sdk/harness/try.sh"))
        .arg(&noop)
        .arg("{}")
        .output()
        .unwrap();
    if let Err(reason) = toolchain_outcome(&tried, "sdk/harness/try.sh") {
        return skip("try.sh", &reason);
    }
    assert_eq!(
        String::from_utf8_lossy(&tried.stdout),
        "OK {\"summary\":\"noop\",\"variables\":[]}\n",
        "{}",
        text(&tried)
    );

    // Bad input is a harness error (exit 2) that says what is wrong.
    let bad = Command::new(root().join("sdk/harness/try.sh"))
        .arg(&noop)
        .arg("{not json")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("the invocation is not JSON"),
        "{}",
        text(&bad)
    );
}

/// The READMEs show the templates' code, which the tests above build and run.
#[test]
fn the_sdk_readmes_show_the_code_the_scaffolds_run() {
    for (readme, template) in [
        ("sdk/python/README.md", "sdk/python/template/app.py"),
        ("sdk/js/README.md", "sdk/js/template/app.js"),
        ("sdk/rust/README.md", "sdk/rust/template/src/lib.rs"),
    ] {
        let readme_text = std::fs::read_to_string(root().join(readme)).unwrap();
        // The line naming the plugin ({{name}} in the Rust template) differs.
        let code: String = std::fs::read_to_string(root().join(template))
            .unwrap()
            .lines()
            .filter(|l| !l.contains("{{name}}"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(
            readme_text.contains(code.trim()),
            "{readme} does not show {template} as it is"
        );
    }
}
