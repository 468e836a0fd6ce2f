//! Build and package the guest components (first-party plugins and test plugins).
//!
//! Std-only apart from `sha2`, because `tests/build.rs` also includes this file with
//! `#[path = "../xtask/src/guests.rs"] mod guests;` to package guests for the
//! integration tests.

#![allow(dead_code)] // each includer uses a different subset

use sha2::{Digest, Sha256};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The target every guest is built for.
pub const WASM_TARGET: &str = "wasm32-wasip2";
/// The cargo profile for guests (defined in the root `Cargo.toml`).
pub const GUEST_PROFILE: &str = "guest";
/// Directories (relative to the workspace root) whose subdirectories are guests.
pub const GUEST_PARENTS: &[&str] = &["plugins", "tests/plugins"];

/// One plugin, built and packaged.
#[derive(Debug, Clone)]
pub struct PackagedPlugin {
    /// The plugin's name from `plugin.toml`.
    pub name: String,
    /// The cargo package that builds it.
    pub crate_name: String,
    /// Source directory of the crate.
    pub source_dir: PathBuf,
    /// `<out_dir>/<name>`: holds `plugin.toml` and the component.
    pub dir: PathBuf,
    /// The packaged component.
    pub wasm: PathBuf,
    /// Hex SHA-256 of the component, as written into the packaged `plugin.toml`.
    pub sha256: String,
}

/// A guest crate that holds a `plugin.toml`.
#[derive(Debug, Clone)]
pub struct GuestCrate {
    /// Crate directory.
    pub dir: PathBuf,
    /// Cargo package name.
    pub crate_name: String,
    /// Plugin name from `plugin.toml`.
    pub plugin_name: String,
    /// Component file name from `plugin.toml`.
    pub component: String,
}

/// Make sure the `wasm32-wasip2` standard library is installed.
pub fn ensure_wasm_target() -> Result<(), String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(&rustc)
        .args(["--print", "target-libdir", "--target", WASM_TARGET])
        .output()
        .map_err(|e| format!("running rustc: {e}"))?;
    let libdir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() && !libdir.is_empty() && Path::new(&libdir).is_dir() {
        return Ok(());
    }
    let status = Command::new("rustup")
        .args(["target", "add", WASM_TARGET])
        .status()
        .map_err(|e| format!("running rustup (is it installed?): {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "`rustup target add {WASM_TARGET}` failed: {status}"
        ))
    }
}

/// Every guest crate under [`GUEST_PARENTS`] that has both `Cargo.toml` and
/// `plugin.toml`, sorted by directory.
pub fn find_guest_crates(root: &Path) -> Result<Vec<GuestCrate>, String> {
    let mut found = Vec::new();
    for parent in GUEST_PARENTS {
        let Ok(entries) = fs::read_dir(root.join(parent)) else {
            continue;
        };
        for entry in entries.flatten() {
            let dir = entry.path();
            if dir.join("Cargo.toml").is_file() && dir.join("plugin.toml").is_file() {
                found.push(read_guest(&dir)?);
            }
        }
    }
    found.sort_by(|a, b| a.dir.cmp(&b.dir));
    Ok(found)
}

fn read_guest(dir: &Path) -> Result<GuestCrate, String> {
    let cargo = read(&dir.join("Cargo.toml"))?;
    let manifest = read(&dir.join("plugin.toml"))?;
    let field = |text: &str, table: Option<&str>, key: &str, file: &str| {
        toml_string(text, table, key)
            .ok_or_else(|| format!("{}: no `{key}` in {file}", dir.display()))
    };
    Ok(GuestCrate {
        dir: dir.to_path_buf(),
        crate_name: field(&cargo, Some("package"), "name", "Cargo.toml")?,
        plugin_name: field(&manifest, None, "name", "plugin.toml")?,
        component: field(&manifest, None, "component", "plugin.toml")?,
    })
}

/// Build every guest crate with one cargo invocation, then package each plugin
/// into `<out_dir>/<name>/` with its component and a `plugin.toml` carrying the
/// component's `sha256`.
pub fn build_and_package(root: &Path, out_dir: &Path) -> Result<Vec<PackagedPlugin>, String> {
    let guests = find_guest_crates(root)?;
    if guests.is_empty() {
        return Ok(Vec::new());
    }
    let target_dir = root.join("target").join("guest");
    build(root, &target_dir, &guests)?;
    let built = target_dir.join(WASM_TARGET).join(GUEST_PROFILE);
    guests.iter().map(|g| package(g, &built, out_dir)).collect()
}

fn build(root: &Path, target_dir: &Path, guests: &[GuestCrate]) -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args(["build", "--target", WASM_TARGET, "--profile", GUEST_PROFILE])
        .arg("--target-dir")
        .arg(target_dir);
    for g in guests {
        cmd.args(["-p", &g.crate_name]);
    }
    scrub_env(&mut cmd);
    let status = cmd
        .status()
        .map_err(|e| format!("running cargo build for guests: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("building guest components failed: {status}"))
    }
}

/// Remove what an outer cargo (running us as a build script) sets, so the inner
/// build compiles for wasm with its own flags, target dir and jobserver.
fn scrub_env(cmd: &mut Command) {
    const EXACT: &[&str] = &[
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "CARGO_PRIMARY_PACKAGE",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "TARGET",
        "HOST",
        "PROFILE",
        "OPT_LEVEL",
        "DEBUG",
        "OUT_DIR",
        "NUM_JOBS",
    ];
    const PREFIXES: &[&str] = &[
        "CARGO_PROFILE_",
        "CARGO_BUILD_",
        "CARGO_CFG_",
        "CARGO_FEATURE_",
        "CARGO_PKG_",
        "CARGO_MANIFEST_",
        "CARGO_ENCODED_",
        "DEP_",
    ];
    for (key, _) in std::env::vars_os() {
        let Some(k) = key.to_str() else { continue };
        if EXACT.contains(&k) || PREFIXES.iter().any(|p| k.starts_with(p)) {
            cmd.env_remove(k);
        }
    }
}

fn package(g: &GuestCrate, built: &Path, out_dir: &Path) -> Result<PackagedPlugin, String> {
    let wasm_src = built.join(format!("{}.wasm", g.crate_name.replace('-', "_")));
    let bytes = fs::read(&wasm_src)
        .map_err(|e| format!("{}: {e} (is the crate a cdylib?)", wasm_src.display()))?;
    let sha256 = hex(&Sha256::digest(&bytes));
    let dir = out_dir.join(&g.plugin_name);
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let wasm = dir.join(&g.component);
    write_if_changed(&wasm, &bytes)?;
    let manifest = with_sha256(&read(&g.dir.join("plugin.toml"))?, &sha256);
    write_if_changed(&dir.join("plugin.toml"), manifest.as_bytes())?;
    Ok(PackagedPlugin {
        name: g.plugin_name.clone(),
        crate_name: g.crate_name.clone(),
        source_dir: g.dir.clone(),
        dir,
        wasm,
        sha256,
    })
}

/// Write only when the content differs, so mtimes stay put for unchanged plugins.
fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<(), String> {
    if fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// `manifest` with its top-level `sha256` set: an existing line is replaced,
/// otherwise the line goes right after `component = ...`.
pub fn with_sha256(manifest: &str, sha256: &str) -> String {
    let line = format!("sha256 = \"{sha256}\"");
    let mut out = Vec::new();
    let mut done = false;
    let mut in_top = true;
    for l in manifest.lines() {
        if l.trim_start().starts_with('[') {
            if in_top && !done {
                // Neither sha256 nor component at top level: add before the first table.
                out.push(line.clone());
                done = true;
            }
            in_top = false;
        }
        if in_top && key_of(l) == Some("sha256") {
            if !done {
                out.push(line.clone());
                done = true;
            }
            continue;
        }
        out.push(l.to_string());
        if in_top && !done && key_of(l) == Some("component") && !has_key(manifest, "sha256") {
            out.push(line.clone());
            done = true;
        }
    }
    if !done {
        out.push(line);
    }
    let mut text = out.join("\n");
    text.push('\n');
    text
}

fn has_key(manifest: &str, key: &str) -> bool {
    manifest
        .lines()
        .take_while(|l| !l.trim_start().starts_with('['))
        .any(|l| key_of(l) == Some(key))
}

/// The key of a `key = value` line.
fn key_of(line: &str) -> Option<&str> {
    let (k, _) = line.split_once('=')?;
    let k = k.trim();
    (!k.is_empty() && !k.starts_with('#')).then_some(k)
}

/// The basic-string value of `key` in `[table]` (or the top level for `None`).
/// Enough TOML for `name = "..."` lines; not a general parser.
pub fn toml_string(text: &str, table: Option<&str>, key: &str) -> Option<String> {
    let mut current: Option<String> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix('[') {
            current = Some(rest.trim_end_matches(']').trim().to_string());
            continue;
        }
        if current.as_deref() != table || key_of(t) != Some(key) {
            continue;
        }
        let value = t.split_once('=')?.1.trim();
        let value = value.strip_prefix('"')?;
        return Some(value[..value.find('"')?].to_string());
    }
    None
}

/// Paths a build script should watch (`cargo:rerun-if-changed`) to rebuild guests.
pub fn rerun_if_changed_paths(root: &Path) -> Vec<PathBuf> {
    let mut paths = vec![
        root.join("wit"),
        root.join("sdk/rust/src"),
        root.join("sdk/rust/Cargo.toml"),
        root.join("Cargo.toml"),
    ];
    for parent in GUEST_PARENTS {
        let dir = root.join(parent);
        // Watch the parent too, so a newly added plugin triggers a rebuild.
        paths.push(dir.clone());
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let crate_dir = entry.path();
            if crate_dir.join("plugin.toml").is_file() {
                for part in ["src", "Cargo.toml", "plugin.toml"] {
                    paths.push(crate_dir.join(part));
                }
            }
        }
    }
    paths.sort();
    paths
}

fn read(path: &Path) -> Result<String, String> {
    fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str =
        "name = \"x\"\ncomponent = \"x.wasm\"\n\n[config.run]\ntype = \"string\"\n";

    #[test]
    fn adds_sha_after_component() {
        let out = with_sha256(MANIFEST, "ab");
        assert_eq!(
            out,
            "name = \"x\"\ncomponent = \"x.wasm\"\nsha256 = \"ab\"\n\n[config.run]\ntype = \"string\"\n"
        );
    }

    #[test]
    fn replaces_existing_sha() {
        let once = with_sha256(MANIFEST, "ab");
        assert_eq!(with_sha256(&once, "cd"), once.replace("ab", "cd"));
    }

    #[test]
    fn reads_toml_strings() {
        let cargo = "[package]\nname = \"plugin-x\"\n[dependencies]\nname = \"no\"\n";
        assert_eq!(
            toml_string(cargo, Some("package"), "name").as_deref(),
            Some("plugin-x")
        );
        assert_eq!(
            toml_string(MANIFEST, None, "component").as_deref(),
            Some("x.wasm")
        );
        assert_eq!(toml_string(MANIFEST, None, "missing"), None);
    }
}
