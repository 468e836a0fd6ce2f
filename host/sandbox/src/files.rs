//! Files capability: `sluice:action/files`, host-side tree copies.
//!
//! WASI has no mode bits, so a guest that copies an input into its workspace
//! loses every executable bit, and it cannot see symlinks as links. This
//! capability copies on the host instead, between the same directories the
//! guest can already reach, with the same permissions: the source must be one
//! of its preopens, the destination a writable one.
//!
//! Every path is opened beneath its preopen with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)`, and entries are opened with `O_NOFOLLOW`, so a
//! symlink the guest (or a native command) planted can neither redirect a read
//! nor a write outside those directories.

use std::collections::HashMap;
use std::ffi::{CStr, OsStr};
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::SandboxState;
use super::bindings::sluice::action::files::{CopyStats, Host};
use super::filesystem::Preopen;

/// The guest-visible directories a copy may use.
pub struct FilesCapability {
    preopens: Vec<Preopen>,
}

impl FilesCapability {
    /// Copies may read any preopen and write the writable ones.
    pub fn from_grant(preopens: Vec<Preopen>) -> Self {
        Self { preopens }
    }

    /// The host directory of the preopen holding `guest`, and the path below it.
    fn locate(&self, guest: &str, write: bool) -> Result<(&Preopen, PathBuf), String> {
        let path = Path::new(guest);
        let clean = path.is_absolute()
            && path
                .components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        if !clean {
            return Err(format!(
                "`{guest}` must be an absolute guest path without `.` or `..`"
            ));
        }
        let preopen = self
            .preopens
            .iter()
            .filter(|p| path.starts_with(&p.guest))
            .max_by_key(|p| p.guest.len())
            .ok_or_else(|| format!("`{guest}` is not inside a directory this action can reach"))?;
        if write && !preopen.writable {
            return Err(format!("`{guest}` is read-only for this action"));
        }
        let below = path.strip_prefix(&preopen.guest).unwrap_or(Path::new(""));
        Ok((preopen, below.to_path_buf()))
    }
}

impl Host for SandboxState {
    async fn copy_tree(
        &mut self,
        source: String,
        destination: String,
        include: Vec<String>,
    ) -> wasmtime::Result<Result<CopyStats, String>> {
        let request = self
            .files
            .locate(&source, false)
            .and_then(|(from, from_below)| {
                let (to, to_below) = self.files.locate(&destination, true)?;
                let filter = Filter::new(&include)?;
                let from = (from.host.clone(), from_below);
                Ok((from, (to.host.clone(), to_below), filter))
            });
        let ((from_root, from_below), (to_root, to_below), filter) = match request {
            Ok(request) => request,
            Err(message) => return Ok(Err(message)),
        };
        let copy = move || -> Result<CopyStats, String> {
            let from = open_beneath(&from_root, &from_below, false)
                .map_err(|e| format!("opening `{source}`: {e}"))?;
            let target = open_beneath(&to_root, &to_below, true)
                .map_err(|e| format!("opening `{destination}`: {e}"))?;
            let mut copy = TreeCopy {
                filter,
                target,
                opened: HashMap::new(),
                stats: CopyStats {
                    files: 0,
                    bytes: 0,
                    symlinks: 0,
                },
            };
            copy.copy_dir(&from, Path::new(""))?;
            Ok(copy.stats)
        };
        let result = tokio::task::spawn_blocking(copy)
            .await
            .unwrap_or_else(|e| Err(format!("copy task failed: {e}")));
        Ok(result)
    }
}

/// Which relative paths a copy takes.
struct Filter(Option<GlobSet>);

impl Filter {
    fn new(patterns: &[String]) -> Result<Self, String> {
        if patterns.is_empty() {
            return Ok(Self(None));
        }
        let mut set = GlobSetBuilder::new();
        for pattern in patterns {
            let pattern = pattern.trim().trim_start_matches("./");
            if pattern.starts_with('/') || pattern.split('/').any(|part| part == "..") {
                return Err(format!("glob `{pattern}` must stay inside the source"));
            }
            let glob = GlobBuilder::new(pattern)
                .literal_separator(true)
                .build()
                .map_err(|e| format!("bad glob `{pattern}`: {e}"))?;
            set.add(glob);
        }
        set.build()
            .map(|s| Self(Some(s)))
            .map_err(|e| e.to_string())
    }

    fn takes(&self, relative: &Path) -> bool {
        self.0.as_ref().is_none_or(|set| set.is_match(relative))
    }
}

/// One recursive copy and its running totals.
struct TreeCopy {
    filter: Filter,
    /// The destination root.
    target: OwnedFd,
    /// Destination directories opened so far, by relative path; created only
    /// when something is copied into them, so a filter copies no empty ones.
    opened: HashMap<PathBuf, OwnedFd>,
    stats: CopyStats,
}

impl TreeCopy {
    fn copy_dir(&mut self, from: &OwnedFd, relative: &Path) -> Result<(), String> {
        if self.filter.0.is_none() {
            self.target_dir(relative)?; // keep empty directories when copying everything
        }
        let mut names = Vec::new();
        let dir = rustix::fs::Dir::read_from(from).map_err(|e| io_error(relative, e))?;
        for entry in dir {
            let entry = entry.map_err(|e| io_error(relative, e))?;
            let name = entry.file_name();
            if name != c"." && name != c".." {
                names.push(name.to_owned());
            }
        }
        names.sort();
        for name in names {
            let path = relative.join(OsStr::from_bytes(name.to_bytes()));
            self.copy_entry(from, &name, &path)?;
        }
        Ok(())
    }

    fn copy_entry(&mut self, from: &OwnedFd, name: &CStr, path: &Path) -> Result<(), String> {
        let stat = rustix::fs::statat(from, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| io_error(path, e))?;
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::Directory => {
                let sub =
                    open_entry(from, name, OFlags::DIRECTORY).map_err(|e| io_error(path, e))?;
                self.copy_dir(&sub, path)
            }
            FileType::RegularFile if self.filter.takes(path) => {
                self.copy_file(from, name, path, stat.st_mode)
            }
            FileType::Symlink if self.filter.takes(path) => self.copy_symlink(from, name, path),
            // Devices, sockets and fifos are never copied; the filter leaves out the rest.
            _ => Ok(()),
        }
    }

    /// The destination directory for entries of `relative`, created on demand.
    fn target_dir(&mut self, relative: &Path) -> Result<&OwnedFd, String> {
        if !self.opened.contains_key(relative) {
            let dir = open_beneath_fd(&self.target, relative, true)?;
            self.opened.insert(relative.to_path_buf(), dir);
        }
        Ok(&self.opened[relative])
    }

    fn parent_of(&mut self, path: &Path) -> Result<&OwnedFd, String> {
        self.target_dir(path.parent().unwrap_or(Path::new("")))
    }

    fn copy_file(
        &mut self,
        from: &OwnedFd,
        name: &CStr,
        path: &Path,
        mode: u32,
    ) -> Result<(), String> {
        let source =
            File::from(open_entry(from, name, OFlags::RDONLY).map_err(|e| io_error(path, e))?);
        let executable = mode & 0o111 != 0;
        let target_mode = Mode::from_raw_mode(if executable { 0o755 } else { 0o644 });
        let parent = self.parent_of(path)?;
        let target =
            File::from(create_file(parent, name, target_mode).map_err(|e| io_error(path, e))?);
        // The umask may have narrowed the mode at creation; set it exactly.
        rustix::fs::fchmod(&target, target_mode).map_err(|e| io_error(path, e))?;
        let bytes = std::io::copy(&mut &source, &mut &target)
            .map_err(|e| format!("copying `{}`: {e}", path.display()))?;
        // Build tools (cargo, make) decide what is fresh by modification time:
        // a copy that looked new would rebuild everything on every run.
        keep_times(&source, &target).map_err(|e| io_error(path, e))?;
        self.stats.files += 1;
        self.stats.bytes += bytes;
        Ok(())
    }

    fn copy_symlink(&mut self, from: &OwnedFd, name: &CStr, path: &Path) -> Result<(), String> {
        let target =
            rustix::fs::readlinkat(from, name, Vec::new()).map_err(|e| io_error(path, e))?;
        sluice_store::artifact::check_link(path, Path::new(OsStr::from_bytes(target.to_bytes())))?;
        let parent = self.parent_of(path)?;
        match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(io_error(path, e)),
        }
        rustix::fs::symlinkat(target.as_c_str(), parent, name).map_err(|e| io_error(path, e))?;
        self.stats.symlinks += 1;
        Ok(())
    }
}

fn keep_times(source: &File, target: &File) -> Result<(), Errno> {
    let stat = rustix::fs::fstat(source)?;
    let time = |sec, nsec| rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    };
    let times = rustix::fs::Timestamps {
        last_access: time(stat.st_atime, stat.st_atime_nsec as _),
        last_modification: time(stat.st_mtime, stat.st_mtime_nsec as _),
    };
    rustix::fs::futimens(target, &times)
}

fn io_error(path: &Path, error: Errno) -> String {
    let shown = if path.as_os_str().is_empty() {
        ".".to_string()
    } else {
        path.display().to_string()
    };
    match error {
        Errno::LOOP | Errno::XDEV => {
            format!("`{shown}`: a symlink is in the way (links are never followed)")
        }
        other => format!("`{shown}`: {}", std::io::Error::from(other)),
    }
}

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// Open the directory `below` beneath `root` without following any symlink;
/// with `create`, make the missing directories on the way.
pub fn open_beneath(root: &Path, below: &Path, create: bool) -> Result<OwnedFd, String> {
    let root = rustix::fs::open(
        root,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("{}: {}", root.display(), std::io::Error::from(e)))?;
    open_beneath_fd(&root, below, create)
}

fn open_beneath_fd(root: &OwnedFd, below: &Path, create: bool) -> Result<OwnedFd, String> {
    let mut dir = rustix::io::dup(root).map_err(|e| io_error(below, e))?;
    for part in below.components() {
        let Component::Normal(name) = part else {
            continue;
        };
        let next = if create {
            make_dir(&dir, name)
        } else {
            open_entry(&dir, name, OFlags::DIRECTORY)
        };
        dir = next.map_err(|e| io_error(below, e))?;
    }
    Ok(dir)
}

fn open_entry<P: rustix::path::Arg>(
    dir: &OwnedFd,
    name: P,
    flags: OFlags,
) -> Result<OwnedFd, Errno> {
    rustix::fs::openat2(
        dir.as_fd(),
        name,
        flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        RESOLVE,
    )
}

fn make_dir<P: rustix::path::Arg + Copy>(dir: &OwnedFd, name: P) -> Result<OwnedFd, Errno> {
    match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o755)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(e),
    }
    open_entry(dir, name, OFlags::DIRECTORY)
}

fn create_file(dir: &OwnedFd, name: &CStr, mode: Mode) -> Result<OwnedFd, Errno> {
    let flags =
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::openat2(dir, name, flags, mode, RESOLVE) {
        // A symlink sits where the file goes: replace the link, never write through it.
        Err(Errno::LOOP) => {
            rustix::fs::unlinkat(dir, name, AtFlags::empty())?;
            rustix::fs::openat2(dir, name, flags, mode, RESOLVE)
        }
        other => other,
    }
}
