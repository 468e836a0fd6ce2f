//! `deploy-dir`: copy the first input into `/mnt/<target>/releases/<release>/`,
//! switch `/mnt/<target>/current` to it atomically, prune old releases.

mod link;

use sluice_sdk::{Context, Failure, Outcome, fs::copy_tree};
use std::fs;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

fn run(ctx: &Context) -> Result<Outcome, Failure> {
    let target = ctx.require("target")?.trim();
    if target.contains('/') || target == "." || target == ".." {
        return Err(Failure::config(format!(
            "`target` = `{target}` must be a mount name"
        )));
    }
    if !ctx.mounts().iter().any(|m| m == target) {
        return Err(Failure::permission(format!(
            "mount `{target}` is not granted to this action (grants.mounts)"
        )));
    }
    let keep = ctx.config_u64("keep", 5)?.max(1);
    let input = ctx
        .inputs()
        .first()
        .ok_or_else(|| Failure::config("deploy-dir needs an input artifact to deploy"))?;

    let root = ctx.mount_dir(target);
    let release = release_name(now_millis(), ctx.execution_id());
    let dir = root.join("releases").join(&release);
    ctx.progress(10, format!("copying `{input}` to releases/{release}"));
    // Copied by the host: executable bits and inside symlinks survive.
    let stats = copy_tree(ctx.input_dir(input), &dir, &[])
        .map_err(|e| Failure::job(format!("copying into {}: {e}", dir.display())))?;

    ctx.progress(80, "switching current");
    let previous = fs::read_link(root.join("current")).ok();
    link::switch_current(&root, &format!("releases/{release}"))?;

    let pruned = prune(&root.join("releases"), keep as usize, &release)?;
    let remaining = count_dirs(&root.join("releases"))?;
    ctx.info(format!("pruned {} old release(s)", pruned.len()));
    let mut outcome = Outcome::new(format!(
        "deployed `{input}` ({} file(s), {} byte(s)) to {target} as {release}",
        stats.files, stats.bytes
    ))
    .variable("release", &release)
    .variable("releases", remaining);
    if let Some(prev) = previous {
        outcome.set_variable("previous", prev.to_string_lossy());
    }
    Ok(outcome)
}

fn now_millis() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// `<millis, 13 digits>-<first 8 id chars>`: sorts by time as plain text.
fn release_name(millis: u128, execution_id: &str) -> String {
    let id: String = execution_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(8)
        .collect();
    format!("{millis:013}-{id}")
}

/// Which of `names` to delete so that `keep` releases remain: the oldest (by
/// name) first, never `live`.
fn to_prune(mut names: Vec<String>, keep: usize, live: &str) -> Vec<String> {
    names.sort();
    let excess = names.len().saturating_sub(keep);
    names
        .into_iter()
        .filter(|n| n != live)
        .take(excess)
        .collect()
}

/// Delete old releases in `releases`; returns the deleted names.
fn prune(releases: &Path, keep: usize, live: &str) -> Result<Vec<String>, Failure> {
    let names = release_dirs(releases)?;
    let doomed = to_prune(names, keep, live);
    for name in &doomed {
        fs::remove_dir_all(releases.join(name))
            .map_err(|e| Failure::job(format!("pruning release {name}: {e}")))?;
    }
    Ok(doomed)
}

fn release_dirs(releases: &Path) -> Result<Vec<String>, Failure> {
    let mut names = Vec::new();
    for entry in fs::read_dir(releases)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    Ok(names)
}

fn count_dirs(releases: &Path) -> Result<usize, Failure> {
    release_dirs(releases).map(|n| n.len())
}

sluice_sdk::export_action!(run);

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn release_names_sort_by_time() {
        let a = release_name(999_999_999_999, "0f3c9a2e-1111-2222");
        let b = release_name(1_700_000_000_000, "ab");
        assert_eq!(a, "0999999999999-0f3c9a2e");
        assert_eq!(b, "1700000000000-ab");
        assert!(a < b);
    }

    #[test]
    fn prunes_oldest_beyond_keep() {
        let all = names(&["3-c", "1-a", "4-d", "2-b"]);
        assert_eq!(to_prune(all.clone(), 2, "4-d"), names(&["1-a", "2-b"]));
        assert_eq!(to_prune(all.clone(), 10, "4-d"), Vec::<String>::new());
        // The live release survives even if it sorts first.
        assert_eq!(to_prune(all, 1, "1-a"), names(&["2-b", "3-c", "4-d"]));
    }
}
