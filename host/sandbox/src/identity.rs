//! Who native commands run as.
//!
//! A host that runs as root hands each action's native commands a uid of
//! their own, from [`FIRST_UID`] up, with a gid of the same number and the
//! shared supplementary group [`SANDBOX_GROUP`]. Without capabilities, root
//! would still own every root-owned file on the host; an unprivileged uid owns
//! only what it is handed here: the action's workspace, outputs and caches.
//! Two parallel actions never share a uid, so file modes keep them apart even
//! beside Landlock, and `RLIMIT_NPROC` counts one action's processes only.
//!
//! A pipeline can keep root for one action with `grants.run-as-root = true`;
//! a host that is not root needs none of this (its commands keep its uid).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Mutex;

/// The group every command user is in: give it write access to a read-write
/// mount (`chgrp 1900000000 dir && chmod g+w dir`) for commands to write there.
pub const SANDBOX_GROUP: u32 = 1_900_000_000;

/// The first uid handed to an action; the range holds [`UID_COUNT`].
pub const FIRST_UID: u32 = SANDBOX_GROUP + 1;

/// How many command users can exist at once in one host process.
const UID_COUNT: u32 = 65_536;

/// The uids handed out and not yet released.
static IN_USE: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

/// One action's command user; its uid is free again when this is dropped.
#[derive(Debug)]
pub struct CommandUser {
    uid: u32,
}

impl CommandUser {
    /// A command user for an action, if commands must drop root: the host runs
    /// as root and the action was not granted `run-as-root`.
    pub fn for_action(run_as_root: bool) -> Option<Self> {
        // SAFETY: geteuid cannot fail.
        let host_is_root = unsafe { libc::geteuid() } == 0;
        (host_is_root && !run_as_root).then(Self::allocate)
    }

    /// A uid no live action of this process holds. The search starts at an
    /// offset from the pid, so two host processes rarely pick the same one.
    fn allocate() -> Self {
        let mut in_use = IN_USE.lock().unwrap_or_else(|e| e.into_inner());
        let start = std::process::id().wrapping_mul(131) % UID_COUNT;
        let uid = (0..UID_COUNT)
            .map(|i| FIRST_UID + (start + i) % UID_COUNT)
            .find(|uid| !in_use.contains(uid))
            .unwrap_or(FIRST_UID + start);
        in_use.insert(uid);
        Self { uid }
    }

    /// The uid (and primary gid) the commands run as.
    pub fn uid(&self) -> u32 {
        self.uid
    }
}

/// Make `uid` the owner of everything under `dirs` (an action's workspace,
/// outputs and caches), so its commands can write there. Links are never
/// followed: a symlink left by an earlier command changes only itself. A file
/// with another hard link (the guest may have linked a stored input or a
/// mount's file into its workspace) gets an inode of its own first, so the
/// other names never change owner. Nothing else runs in these trees
/// meanwhile: the guest waits for its command, and earlier commands died
/// with their PID namespace.
pub fn hand_over(uid: u32, dirs: &[PathBuf]) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    for dir in dirs {
        for entry in walkdir::WalkDir::new(dir).follow_links(false) {
            let entry = entry.map_err(std::io::Error::other)?;
            let metadata = entry.metadata().map_err(std::io::Error::other)?;
            if metadata.uid() == uid && metadata.gid() == uid {
                continue;
            }
            if metadata.is_file() && metadata.nlink() > 1 {
                copy_in_place(entry.path())?;
            }
            std::os::unix::fs::lchown(entry.path(), Some(uid), Some(uid))?;
        }
    }
    Ok(())
}

/// Replace `path` by a copy of itself (same bytes, mode and times).
fn copy_in_place(path: &std::path::Path) -> std::io::Result<()> {
    let copy = path.with_file_name(format!(".sluice-own-{}", uuid::Uuid::new_v4()));
    std::fs::copy(path, &copy)?;
    let times = std::fs::FileTimes::new().set_modified(std::fs::metadata(path)?.modified()?);
    std::fs::File::options()
        .write(true)
        .open(&copy)?
        .set_times(times)?;
    std::fs::rename(&copy, path)
}

impl Drop for CommandUser {
    fn drop(&mut self) {
        IN_USE
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_actions_never_share_a_uid_and_released_ones_are_reused() {
        let first = CommandUser::allocate();
        let second = CommandUser::allocate();
        assert_ne!(first.uid(), second.uid());
        assert!(first.uid() >= FIRST_UID && first.uid() < FIRST_UID + UID_COUNT);
        let uid = first.uid();
        drop(first);
        let again: Vec<_> = (0..3).map(|_| CommandUser::allocate()).collect();
        assert!(again.iter().any(|u| u.uid() == uid));
    }

    #[test]
    fn hand_over_owns_the_tree_without_following_links() {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return; // only root can give files away
        }
        use std::os::unix::fs::MetadataExt as _;
        let temp = tempfile::tempdir().unwrap();
        let outside = temp.path().join("outside");
        std::fs::write(&outside, "host file").unwrap();
        let stored = temp.path().join("stored");
        std::fs::write(&stored, "an input").unwrap();
        let tree = temp.path().join("tree");
        std::fs::create_dir_all(tree.join("sub")).unwrap();
        std::fs::write(tree.join("sub/file"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("link")).unwrap();
        std::fs::hard_link(&stored, tree.join("hard")).unwrap();
        let user = CommandUser::allocate();
        hand_over(user.uid(), std::slice::from_ref(&tree)).unwrap();
        let owner = |p: PathBuf| std::fs::symlink_metadata(p).unwrap().uid();
        assert_eq!(owner(tree.join("sub/file")), user.uid());
        assert_eq!(owner(tree.join("link")), user.uid());
        assert_eq!(owner(outside), 0, "the link's target was given away");
        assert_eq!(owner(tree.join("hard")), user.uid());
        assert_eq!(
            owner(stored.clone()),
            0,
            "a hard link's other name was given away"
        );
        assert_eq!(
            std::fs::read_to_string(tree.join("hard")).unwrap(),
            "an input"
        );
    }
}
