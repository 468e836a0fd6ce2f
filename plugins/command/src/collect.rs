//! Copying workspace files that match output globs into output artifacts.

use crate::spec::OutputSpec;
use std::fs;
use std::io;
use std::path::Path;

/// Every regular file under `root`, as `/`-separated paths relative to it, sorted.
/// Symlinks are skipped: they may point outside the workspace.
pub fn files_under(root: &Path) -> io::Result<Vec<String>> {
    let mut found = Vec::new();
    walk(root, "", &mut found)?;
    found.sort();
    Ok(found)
}

fn walk(dir: &Path, prefix: &str, found: &mut Vec<String>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let kind = entry.file_type()?;
        if kind.is_dir() {
            walk(&entry.path(), &rel, found)?;
        } else if kind.is_file() {
            found.push(rel);
        }
    }
    Ok(())
}

/// The files of `files` that `spec` selects.
pub fn select<'a>(spec: &OutputSpec, files: &'a [String]) -> Vec<&'a str> {
    files
        .iter()
        .filter(|f| spec.globs.is_match(f.as_str()))
        .map(String::as_str)
        .collect()
}

/// Copy `files` (relative to `from`) into `to`, keeping relative paths. Returns bytes.
pub fn copy_files(from: &Path, to: &Path, files: &[&str]) -> io::Result<u64> {
    let mut bytes = 0;
    for rel in files {
        let dst = to.join(rel);
        if let Some(parent) = dst.parent() {
            fs::create_dir_all(parent)?;
        }
        bytes += fs::copy(from.join(rel), dst)?;
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse_outputs;

    #[test]
    fn selects_and_copies_with_relative_paths() {
        let base = std::env::temp_dir().join(format!("plugin-command-{}", std::process::id()));
        let ws = base.join("ws");
        fs::create_dir_all(ws.join("build/sub")).unwrap();
        fs::write(ws.join("build/app.js"), "a").unwrap();
        fs::write(ws.join("build/sub/lib.js"), "bb").unwrap();
        fs::write(ws.join("notes.txt"), "n").unwrap();
        let files = files_under(&ws).unwrap();
        assert_eq!(files, ["build/app.js", "build/sub/lib.js", "notes.txt"]);
        let spec = &parse_outputs("d=build/**/*.js").unwrap()[0];
        let picked = select(spec, &files);
        assert_eq!(picked, ["build/app.js", "build/sub/lib.js"]);
        let bytes = copy_files(&ws, &base.join("out"), &picked).unwrap();
        assert_eq!(bytes, 3);
        assert!(base.join("out/build/sub/lib.js").is_file());
        fs::remove_dir_all(base).unwrap();
    }
}
