//! `dir-source`: snapshot `/mnt/<path>` into the first output artifact.

use sluice_sdk::{Context, Failure, Outcome, fs::copy_tree};
use std::path::{Component, Path};

fn run(ctx: &Context) -> Result<Outcome, Failure> {
    let path = ctx.require("path")?.trim().trim_matches('/');
    let mount = check_path(path)?;
    if !ctx.mounts().iter().any(|m| m == mount) {
        return Err(Failure::permission(format!(
            "mount `{mount}` is not granted to this action (grants.mounts)"
        )));
    }
    let output = ctx
        .outputs()
        .first()
        .ok_or_else(|| Failure::config("dir-source needs an output artifact to snapshot into"))?;
    let src = Path::new("/mnt").join(path);
    if !src.is_dir() {
        return Err(Failure::revision(format!(
            "{} is not a directory",
            src.display()
        )));
    }
    // The host copies: executable bits and symlinks inside the tree survive; a
    // symlink leaving it fails the snapshot with its path.
    let stats = copy_tree(&src, ctx.output_dir(output), &[]).map_err(Failure::job)?;
    Ok(Outcome::new(format!(
        "snapshot of {path}: {} file(s), {} byte(s), {} symlink(s) into `{output}`",
        stats.files, stats.bytes, stats.symlinks
    ))
    .variable("files", stats.files)
    .variable("bytes", stats.bytes))
}

/// Validate `path` (no `..`, `.` or empty parts) and return its mount name.
fn check_path(path: &str) -> Result<&str, Failure> {
    let bad = |why: &str| Failure::config(format!("`path` = `{path}`: {why}"));
    if path.is_empty() {
        return Err(bad("expected <mount> or <mount>/<subdir>"));
    }
    if path
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
        || Path::new(path)
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(bad("must be a plain relative path without `.` or `..`"));
    }
    Ok(path.split('/').next().unwrap_or(path))
}

sluice_sdk::export_action!(run);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_of_path() {
        assert_eq!(check_path("repo"), Ok("repo"));
        assert_eq!(check_path("repo/app/src"), Ok("repo"));
        assert!(check_path("").is_err());
        assert!(check_path("repo/../etc").is_err());
        assert!(check_path("repo//x").is_err());
        assert!(check_path("./repo").is_err());
    }
}
