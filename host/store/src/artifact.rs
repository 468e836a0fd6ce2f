//! The local content-addressed artifact store.
//!
//! An artifact is an immutable directory tree named by the blake3 digest of its
//! contents (paths, file bytes, executable bits and symlink targets). Ingesting an
//! action's output renames its directory into the store, so no bytes are copied;
//! later actions see the stored directory itself, preopened read-only.
//!
//! Before the rename, ingest makes sure that nothing stored can be changed or
//! followed from outside: a file with more than one hard link (the guest may
//! have linked a mount's file into its output) is replaced by a private copy,
//! and a symlink whose target leaves the artifact is refused.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// Facts about a stored artifact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArtifactInfo {
    /// Hex blake3 digest of the tree.
    pub digest: String,
    /// Number of regular files.
    pub files: u64,
    /// Total bytes of regular files.
    pub bytes: u64,
}

/// A directory of artifacts, one subdirectory per digest.
#[derive(Clone, Debug)]
pub struct ArtifactStore {
    root: PathBuf,
}

impl ArtifactStore {
    /// The store under `root` (created if missing).
    pub fn open(root: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(root)
            .with_context(|| format!("creating artifact store {}", root.display()))?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// Where the artifact with `digest` lives.
    pub fn path_of(&self, digest: &str) -> PathBuf {
        self.root.join(digest)
    }

    /// A fresh path in the store's directory (so on its filesystem) for a
    /// transfer or staging tree; dot-named, so never taken for an artifact.
    pub fn scratch_path(&self, label: &str) -> PathBuf {
        self.root
            .join(format!(".{label}-{}", uuid::Uuid::new_v4().simple()))
    }

    /// Whether an artifact is stored.
    pub fn contains(&self, digest: &str) -> bool {
        self.path_of(digest).is_dir()
    }

    /// Move `dir` into the store under its digest. `dir` must be on the same
    /// filesystem as the store (it is: both live in the data directory).
    pub fn ingest(&self, dir: &Path) -> anyhow::Result<ArtifactInfo> {
        seal_tree(dir)?;
        let info = digest_tree(dir)?;
        let target = self.path_of(&info.digest);
        if target.exists() {
            // Same content already stored: identical by construction.
            std::fs::remove_dir_all(dir).ok();
            return Ok(info);
        }
        make_read_only(dir)?;
        match std::fs::rename(dir, &target) {
            Ok(()) => Ok(info),
            Err(_) if target.exists() => {
                // Another action stored the same tree at the same moment.
                remove_tree(dir).ok();
                Ok(info)
            }
            Err(e) => Err(e).with_context(|| format!("moving {} into the store", dir.display())),
        }
    }
}

/// An action's output quota (`limits.output-files`, `limits.output-size`) and
/// what its outputs used so far.
#[derive(Clone, Debug)]
pub struct OutputBudget {
    max_files: u64,
    max_bytes: u64,
    files: u64,
    bytes: u64,
}

impl OutputBudget {
    /// A budget from an action's limits.
    pub fn new(limits: &sluice_core::pipeline::limits::Limits) -> Self {
        Self {
            max_files: limits.output_files,
            max_bytes: limits.output_bytes,
            files: 0,
            bytes: 0,
        }
    }

    /// Count `dir`'s entries and file sizes against the budget, from metadata
    /// only (no file is read), stopping at the first entry over it. Entries
    /// that cannot be read are left for ingest to report.
    pub fn charge(&mut self, dir: &Path) -> Result<(), sluice_core::pipeline::limits::LimitHit> {
        use sluice_core::pipeline::limits::LimitHit;
        use sluice_core::units::format_bytes;
        let walker = walkdir::WalkDir::new(dir).min_depth(1).follow_links(false);
        for entry in walker.into_iter().filter_map(Result::ok) {
            self.files += 1;
            if self.files > self.max_files {
                return Err(LimitHit::quota(
                    "output-files",
                    self.max_files.to_string(),
                    format!("the outputs hold more than {} entries", self.max_files),
                ));
            }
            if entry.file_type().is_file() {
                self.bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
                if self.bytes > self.max_bytes {
                    return Err(LimitHit::quota(
                        "output-size",
                        format_bytes(self.max_bytes),
                        format!(
                            "the outputs hold more than {} of files",
                            format_bytes(self.max_bytes)
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Why a symlink at `path` (relative to an artifact's root) with `target` would
/// reach outside the artifact, if it would.
pub fn check_link(path: &Path, target: &Path) -> Result<(), String> {
    use std::path::Component;
    let refuse = |why: &str| {
        Err(format!(
            "symlink `{}` -> `{}` {why}; only links that stay inside the artifact are kept",
            path.display(),
            target.display()
        ))
    };
    if target.is_absolute() {
        return refuse("is absolute");
    }
    // Depth below the root of the directory holding the link, then walk the target.
    let mut depth = path.components().count().saturating_sub(1) as i64;
    for part in target.components() {
        match part {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return refuse("is absolute"),
        }
        if depth < 0 {
            return refuse("points outside the artifact");
        }
    }
    Ok(())
}

/// Refuse escaping symlinks and give every multiply-linked file its own inode,
/// so the stored tree cannot be reached through a link from outside.
fn seal_tree(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    for entry in walkdir::WalkDir::new(dir).min_depth(1).follow_links(false) {
        let entry = entry.with_context(|| format!("reading artifact {}", dir.display()))?;
        let relative = entry.path().strip_prefix(dir).unwrap_or(entry.path());
        let kind = entry.file_type();
        if kind.is_symlink() {
            let target = std::fs::read_link(entry.path())?;
            check_link(relative, &target).map_err(|why| anyhow::anyhow!(why))?;
        } else if kind.is_file() && entry.metadata()?.nlink() > 1 {
            break_hard_link(entry.path())
                .with_context(|| format!("copying hard-linked `{}`", relative.display()))?;
        }
    }
    Ok(())
}

/// Replace `path` by a copy of itself, leaving the other links' inode untouched.
fn break_hard_link(path: &Path) -> anyhow::Result<()> {
    let copy = path.with_file_name(format!(".sluice-copy-{}", uuid::Uuid::new_v4()));
    std::fs::copy(path, &copy)?;
    std::fs::rename(&copy, path)?;
    Ok(())
}

/// Digest a directory tree: sorted entries of (path, kind, content hash).
pub fn digest_tree(dir: &Path) -> anyhow::Result<ArtifactInfo> {
    let mut hasher = blake3::Hasher::new();
    let (mut files, mut bytes) = (0u64, 0u64);
    let walker = walkdir::WalkDir::new(dir)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name();
    for entry in walker {
        let entry = entry.with_context(|| format!("reading artifact {}", dir.display()))?;
        let relative = entry.path().strip_prefix(dir).unwrap_or(entry.path());
        let kind = entry.file_type();
        hasher.update(relative.to_string_lossy().as_bytes());
        hasher.update(&[0]);
        if kind.is_symlink() {
            let target = std::fs::read_link(entry.path())?;
            hasher.update(b"L");
            hasher.update(target.to_string_lossy().as_bytes());
        } else if kind.is_dir() {
            hasher.update(b"D");
        } else {
            let metadata = entry.metadata()?;
            let file_hash = hash_file(entry.path())?;
            hasher.update(if is_executable(&metadata) { b"X" } else { b"F" });
            hasher.update(file_hash.as_bytes());
            files += 1;
            bytes += metadata.len();
        }
        hasher.update(&[0]);
    }
    Ok(ArtifactInfo {
        digest: hasher.finalize().to_hex().to_string(),
        files,
        bytes,
    })
}

/// Streams the file: memory stays flat whatever its size.
fn hash_file(path: &Path) -> anyhow::Result<blake3::Hash> {
    let mut hasher = blake3::Hasher::new();
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    hasher
        .update_reader(file)
        .with_context(|| format!("hashing {}", path.display()))?;
    Ok(hasher.finalize())
}

fn is_executable(metadata: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    metadata.permissions().mode() & 0o111 != 0
}

/// Make the tree the host's and read-only: every directory 0555, every file
/// 0555 or 0444 by its executable bit (the only mode bit in the digest). A
/// command user may have made its outputs; it keeps neither ownership (an
/// owner could `chmod` them back) nor modes that hide them from later actions.
fn make_read_only(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid/getegid cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    // Children first: a read-only directory could not be walked into after.
    for entry in walkdir::WalkDir::new(dir)
        .follow_links(false)
        .contents_first(true)
    {
        let entry = entry?;
        if uid == 0 {
            std::os::unix::fs::lchown(entry.path(), Some(uid), Some(gid))?;
        }
        if entry.file_type().is_symlink() {
            continue;
        }
        let metadata = entry.metadata()?;
        let mode = if metadata.is_dir() || is_executable(&metadata) {
            0o555
        } else {
            0o444
        };
        std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Delete a tree whose directories may be read-only (a stored artifact, a
/// scratch store, Go's module cache in a pipeline cache): directories are made
/// writable first, since entries can only be unlinked from a writable one.
/// Returns the bytes of the regular files removed; a missing tree is 0.
pub fn remove_tree(dir: &Path) -> anyhow::Result<u64> {
    use std::os::unix::fs::PermissionsExt as _;
    if !dir.exists() {
        return Ok(0);
    }
    let mut bytes = 0;
    for entry in walkdir::WalkDir::new(dir).follow_links(false) {
        let entry = entry?;
        let metadata = entry.metadata()?;
        if entry.file_type().is_dir() {
            let mode = metadata.permissions().mode() | 0o700;
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode))?;
        } else if entry.file_type().is_file() {
            bytes += metadata.len();
        }
    }
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(root: &Path, files: &[(&str, &str)]) {
        for (path, content) in files {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
    }

    #[test]
    fn equal_trees_share_a_digest_and_different_ones_do_not() {
        let temp = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            temp.path().join("a"),
            temp.path().join("b"),
            temp.path().join("c"),
        );
        tree(&a, &[("x/1.txt", "one"), ("2.txt", "two")]);
        tree(&b, &[("2.txt", "two"), ("x/1.txt", "one")]);
        tree(&c, &[("x/1.txt", "one"), ("2.txt", "TWO")]);
        let (da, db, dc) = (
            digest_tree(&a).unwrap(),
            digest_tree(&b).unwrap(),
            digest_tree(&c).unwrap(),
        );
        assert_eq!(da.digest, db.digest);
        assert_ne!(da.digest, dc.digest);
        assert_eq!((da.files, da.bytes), (2, 6));
    }

    #[test]
    fn links_that_leave_the_artifact_are_refused() {
        let ok = |p: &str, t: &str| check_link(Path::new(p), Path::new(t)).is_ok();
        assert!(ok("node_modules/.bin/uvu", "../uvu/bin/uvu"));
        assert!(ok("a", "b/c"));
        assert!(ok("a/b/c", "../../x"));
        assert!(!ok("a/b/c", "../../../x"));
        assert!(!ok("a", "../a"));
        assert!(!ok("a", "/etc/passwd"));
        assert!(!ok("a/b", "c/../../../etc"));
    }

    #[test]
    fn ingest_refuses_an_escaping_symlink_and_names_it() {
        let temp = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(&temp.path().join("store")).unwrap();
        let out = temp.path().join("out");
        tree(&out, &[("bin/tool", "#!/bin/sh\n")]);
        std::os::unix::fs::symlink("../../secret", out.join("bin/escape")).unwrap();
        let error = format!("{:#}", store.ingest(&out).unwrap_err());
        assert!(error.contains("bin/escape"), "{error}");
        assert!(error.contains("outside the artifact"), "{error}");
    }

    #[test]
    fn a_hard_linked_file_is_copied_so_the_original_stays_apart() {
        use std::os::unix::fs::PermissionsExt;
        let temp = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(&temp.path().join("store")).unwrap();
        let outside = temp.path().join("mount.txt");
        std::fs::write(&outside, "original").unwrap();
        let out = temp.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::hard_link(&outside, out.join("linked.txt")).unwrap();
        let info = store.ingest(&out).unwrap();
        std::fs::write(&outside, "tampered").unwrap();
        let stored = store.path_of(&info.digest).join("linked.txt");
        assert_eq!(std::fs::read_to_string(stored).unwrap(), "original");
        let mode = std::fs::metadata(&outside).unwrap().permissions().mode();
        assert_ne!(
            mode & 0o200,
            0,
            "ingest must not change the outside file's mode"
        );
    }

    #[test]
    fn the_output_budget_counts_across_outputs_and_stops_at_the_first_excess() {
        use sluice_core::pipeline::limits::Limits;
        let temp = tempfile::tempdir().unwrap();
        let (a, b) = (temp.path().join("a"), temp.path().join("b"));
        tree(&a, &[("1", "12345"), ("2", "12345")]);
        tree(&b, &[("3", "12345")]);
        let limits = Limits {
            output_files: 3,
            output_bytes: 12,
            ..Limits::default()
        };
        let mut budget = OutputBudget::new(&limits);
        budget.charge(&a).unwrap();
        let hit = budget.charge(&b).unwrap_err().to_string();
        assert!(
            hit.starts_with("limit output-size (12 B) exceeded"),
            "{hit}"
        );
        let mut budget = OutputBudget::new(&Limits {
            output_files: 2,
            ..limits
        });
        budget.charge(&a).unwrap();
        let hit = budget.charge(&b).unwrap_err().to_string();
        assert!(hit.starts_with("limit output-files (2) exceeded"), "{hit}");
    }

    #[test]
    fn modes_and_link_targets_change_the_digest() {
        use std::os::unix::fs::PermissionsExt;
        let temp = tempfile::tempdir().unwrap();
        let (a, b) = (temp.path().join("a"), temp.path().join("b"));
        tree(&a, &[("run.sh", "x")]);
        tree(&b, &[("run.sh", "x")]);
        std::fs::set_permissions(b.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_ne!(
            digest_tree(&a).unwrap().digest,
            digest_tree(&b).unwrap().digest
        );
        std::os::unix::fs::symlink("run.sh", a.join("l")).unwrap();
        std::os::unix::fs::symlink("other", b.join("l")).unwrap();
        std::fs::set_permissions(b.join("run.sh"), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_ne!(
            digest_tree(&a).unwrap().digest,
            digest_tree(&b).unwrap().digest
        );
    }

    #[test]
    fn ingest_moves_the_tree_and_makes_it_read_only() {
        let temp = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(&temp.path().join("store")).unwrap();
        let out = temp.path().join("out");
        tree(&out, &[("a.txt", "hello")]);
        let info = store.ingest(&out).unwrap();
        assert!(!out.exists());
        let stored = store.path_of(&info.digest).join("a.txt");
        assert_eq!(std::fs::read_to_string(&stored).unwrap(), "hello");
        let mode = std::fs::metadata(&stored).unwrap().permissions();
        assert!(mode.readonly());
    }

    #[test]
    fn ingest_makes_private_files_readable_by_later_actions() {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        let temp = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(&temp.path().join("store")).unwrap();
        let out = temp.path().join("out");
        tree(&out, &[("private.txt", "p"), ("run.sh", "#!/bin/sh\n")]);
        let mode = std::fs::Permissions::from_mode;
        std::fs::set_permissions(out.join("private.txt"), mode(0o600)).unwrap();
        std::fs::set_permissions(out.join("run.sh"), mode(0o700)).unwrap();
        std::fs::set_permissions(&out, mode(0o700)).unwrap();
        let stored = store.path_of(&store.ingest(&out).unwrap().digest);
        let stored_mode =
            |name: &str| std::fs::metadata(stored.join(name)).unwrap().mode() & 0o7777;
        assert_eq!(stored_mode("private.txt"), 0o444);
        assert_eq!(stored_mode("run.sh"), 0o555);
        assert_eq!(stored_mode(""), 0o555);
    }
}
