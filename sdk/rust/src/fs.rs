//! Filesystem helpers for moving artifacts around the sandbox.
//!
//! Prefer [`copy_tree`]: the host copies, so executable bits and symlinks
//! survive (WASI has no mode bits, so a copy made inside the guest loses them).

use std::fs;
use std::io;
use std::path::Path;

use crate::bindings::sluice::action::files;

/// What [`copy_tree`] copied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeStats {
    /// Regular files copied.
    pub files: u64,
    /// Bytes copied.
    pub bytes: u64,
    /// Symlinks recreated as links.
    pub symlinks: u64,
}

/// Copy the tree at `source` into `destination` on the host, keeping
/// executable bits and symlinks that stay inside `source` (a symlink leaving it
/// is an error naming it). Both are guest paths such as `/in/src`,
/// `/workspace/build` or `/out/site`. `include` globs (relative to `source`;
/// `*` stays in one segment, `**` crosses them) select files; empty selects all.
///
/// ```no_run
/// # fn demo(ctx: &sluice_sdk::Context) -> Result<(), String> {
/// // Stage an input into the workspace, then collect the build's binaries.
/// sluice_sdk::fs::copy_tree(ctx.input_dir("source"), ctx.workspace(), &[])?;
/// sluice_sdk::fs::copy_tree(ctx.workspace(), ctx.output_dir("bin"), &["target/release/app"])?;
/// # Ok(()) }
/// ```
pub fn copy_tree(
    source: impl AsRef<Path>,
    destination: impl AsRef<Path>,
    include: &[&str],
) -> Result<TreeStats, String> {
    let include: Vec<String> = include.iter().map(|s| s.to_string()).collect();
    let stats = files::copy_tree(
        &source.as_ref().to_string_lossy(),
        &destination.as_ref().to_string_lossy(),
        &include,
    )?;
    Ok(TreeStats {
        files: stats.files,
        bytes: stats.bytes,
        symlinks: stats.symlinks,
    })
}

/// What [`copy_dir_all`] copied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Regular files copied.
    pub files: u64,
    /// Bytes copied.
    pub bytes: u64,
    /// Symlinks skipped (never followed, so a link cannot smuggle in outside files).
    pub symlinks_skipped: u64,
}

/// Recursively copy the contents of `src` into `dst` inside the guest, creating
/// `dst` and merging with whatever is already there (existing files are
/// overwritten). Executable bits are lost and symlinks skipped: use
/// [`copy_tree`] unless the plugin must also run where `files` is missing.
pub fn copy_dir_all(src: impl AsRef<Path>, dst: impl AsRef<Path>) -> io::Result<CopyStats> {
    let mut stats = CopyStats::default();
    copy_into(src.as_ref(), dst.as_ref(), &mut stats)?;
    Ok(stats)
}

fn copy_into(src: &Path, dst: &Path, stats: &mut CopyStats) -> io::Result<()> {
    fs::create_dir_all(dst)?;
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        // `DirEntry::file_type` does not follow symlinks, which is what we want.
        let kind = entry.file_type()?;
        let to = dst.join(entry.file_name());
        if kind.is_dir() {
            copy_into(&entry.path(), &to, stats)?;
        } else if kind.is_file() {
            stats.bytes += fs::copy(entry.path(), &to)?;
            stats.files += 1;
        } else {
            stats.symlinks_skipped += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_tree_and_counts() {
        let base = std::env::temp_dir().join(format!("sluice-sdk-fs-{}", std::process::id()));
        let src = base.join("src");
        fs::create_dir_all(src.join("a/b")).unwrap();
        fs::write(src.join("top.txt"), "12345").unwrap();
        fs::write(src.join("a/b/deep.txt"), "xy").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink("/etc/passwd", src.join("link")).unwrap();
        let stats = copy_dir_all(&src, base.join("dst")).unwrap();
        assert_eq!((stats.files, stats.bytes), (2, 7));
        assert_eq!(
            fs::read_to_string(base.join("dst/a/b/deep.txt")).unwrap(),
            "xy"
        );
        assert!(!base.join("dst/link").exists());
        fs::remove_dir_all(base).unwrap();
    }
}
