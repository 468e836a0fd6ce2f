//! Workspace tasks: `cargo xtask <verb>`.

mod guests;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const HELP: &str = "\
cargo xtask <verb>

Verbs:
  plugins   Build every guest plugin for wasm32-wasip2 and package it into
            target/plugins/<name>/ (component + plugin.toml with sha256).
  example   plugins, build the sluice CLI, install target/plugins and run
            examples/hello/pipeline.toml; exits with the run's exit code.
  bench     plugins (plus the Python and JS example plugins when their
            toolchains install), build sluice --release and run `sluice bench`;
            extra arguments go to `sluice bench`.
  test      Make sure the wasm target is installed, then `cargo test --workspace`
            (host unit tests, end-to-end tests, plugin and SDK unit tests).
  help      Show this message (also -h, --help).
";

fn main() -> ExitCode {
    let verb = std::env::args().nth(1);
    let result = match verb.as_deref() {
        Some("plugins") => plugins().map(|_| ExitCode::SUCCESS),
        Some("example") => example(),
        Some("test") => test(),
        Some("bench") => bench(),
        None | Some("help" | "-h" | "--help") => {
            print!("{HELP}");
            Ok(ExitCode::SUCCESS)
        }
        Some(other) => Err(format!("unknown verb `{other}`\n\n{HELP}")),
    };
    result.unwrap_or_else(|e| {
        eprintln!("xtask: {e}");
        ExitCode::FAILURE
    })
}

/// The workspace root: xtask lives one level below it.
fn root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

fn plugins() -> Result<PathBuf, String> {
    guests::ensure_wasm_target()?;
    let root = root();
    let out = root.join("target").join("plugins");
    for p in guests::build_and_package(&root, &out)? {
        println!(
            "packaged {:<14} {} sha256={}",
            p.name,
            p.wasm.display(),
            p.sha256
        );
    }
    Ok(out)
}

fn example() -> Result<ExitCode, String> {
    let plugins_dir = plugins()?;
    let root = root();
    run(cargo(&root).args(["build", "-p", "sluice"]))?;
    let sluice = root.join("target").join("debug").join("sluice");
    // Only the first-party plugins: test fixtures (hostile, noop) stay out of
    // the user's registry.
    let mut install = Command::new(&sluice);
    install
        .current_dir(&root)
        .args(["plugin", "install", "--yes"]);
    for name in first_party_plugins(&root)? {
        install.arg(plugins_dir.join(name));
    }
    run(&mut install)?;
    let status = Command::new(&sluice)
        .current_dir(&root)
        .args(["run", "examples/hello/pipeline.toml"])
        .status()
        .map_err(|e| format!("running {}: {e}", sluice.display()))?;
    Ok(exit_code(status.code()))
}

fn bench() -> Result<ExitCode, String> {
    let plugins_dir = plugins()?;
    let root = root();
    for (language, plugin) in [("python", "manifest-check"), ("js", "release-notes")] {
        let script = root.join("sdk").join(language).join("build.sh");
        let source = root.join("sdk").join(language).join(plugin);
        let status = Command::new("bash")
            .arg(script)
            .arg(source)
            .arg(plugins_dir.join(plugin))
            .status()
            .map_err(|e| format!("running the {language} build: {e}"))?;
        if !status.success() {
            eprintln!("xtask: skipping the {language} plugin: its build failed (see above)");
        }
    }
    run(cargo(&root).args(["build", "--release", "-p", "sluice"]))?;
    let status = Command::new(root.join("target").join("release").join("sluice"))
        .current_dir(&root)
        .arg("--data-dir")
        .arg(root.join("target").join("bench-data"))
        .arg("bench")
        .arg(&plugins_dir)
        .args(std::env::args().skip(2))
        .status()
        .map_err(|e| format!("running sluice bench: {e}"))?;
    Ok(exit_code(status.code()))
}

/// Names of the plugins under `plugins/`.
fn first_party_plugins(root: &Path) -> Result<Vec<String>, String> {
    let dir = root.join("plugins");
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("plugin.toml").is_file())
        .filter_map(|e| {
            guests::toml_string(
                &std::fs::read_to_string(e.path().join("plugin.toml")).ok()?,
                None,
                "name",
            )
        })
        .collect();
    names.sort();
    Ok(names)
}

fn test() -> Result<ExitCode, String> {
    guests::ensure_wasm_target()?;
    let root = root();
    let status = cargo(&root)
        .args(["test", "--workspace"])
        .args(std::env::args().skip(2))
        .status()
        .map_err(|e| format!("running cargo test: {e}"))?;
    Ok(exit_code(status.code()))
}

fn cargo(root: &Path) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root);
    cmd
}

/// Run `cmd`, failing unless it exits successfully.
fn run(cmd: &mut Command) -> Result<(), String> {
    let status = cmd
        .status()
        .map_err(|e| format!("running {:?}: {e}", cmd.get_program()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{:?} failed: {status}", cmd.get_program()))
    }
}

/// An exit code to pass on; a signal death becomes plain failure.
fn exit_code(code: Option<i32>) -> ExitCode {
    match code {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => ExitCode::FAILURE,
    }
}
