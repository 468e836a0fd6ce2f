//! Atomic `current` switch. Rust std on wasip2 has no stable symlink creation, so
//! this goes through the `wasi:filesystem` bindings directly.

use sluice_sdk::Failure;
use sluice_sdk::wasi::filesystem::preopens::get_directories;
use sluice_sdk::wasi::filesystem::types::{Descriptor, ErrorCode};
use std::path::Path;

/// Point `<root>/current` at `link_target` (relative to `root`): create
/// `current.tmp` and rename it over `current`, which replaces atomically.
pub fn switch_current(root: &Path, link_target: &str) -> Result<(), Failure> {
    let (dir, rel) = open_dir(root)?;
    let tmp = join(&rel, "current.tmp");
    let current = join(&rel, "current");
    // A leftover from a crashed run would make symlink_at fail with `exist`.
    let _ = dir.unlink_file_at(&tmp);
    dir.symlink_at(link_target, &tmp)
        .map_err(|e| fs_error("creating current.tmp", e))?;
    dir.rename_at(&tmp, &dir, &current)
        .map_err(|e| fs_error("renaming current.tmp over current", e))
}

/// The preopened directory that holds `path`, and `path` relative to it. The host
/// may preopen `/mnt/<name>` itself or a parent such as `/mnt`; take the closest.
fn open_dir(path: &Path) -> Result<(Descriptor, String), Failure> {
    let mut best: Option<(Descriptor, String)> = None;
    for (desc, pre) in get_directories() {
        let Ok(rest) = path.strip_prefix(&pre) else {
            continue;
        };
        let rest = rest.to_string_lossy().into_owned();
        if best.as_ref().is_none_or(|(_, r)| rest.len() < r.len()) {
            best = Some((desc, rest));
        }
    }
    best.ok_or_else(|| Failure::permission(format!("{} is not preopened", path.display())))
}

fn join(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_string()
    } else {
        format!("{rel}/{name}")
    }
}

fn fs_error(what: &str, e: ErrorCode) -> Failure {
    match e {
        ErrorCode::Access | ErrorCode::NotPermitted | ErrorCode::ReadOnly => {
            Failure::permission(format!("{what}: {e:?} (is the mount granted read-write?)"))
        }
        other => Failure::job(format!("{what}: {other:?}")),
    }
}
