//! A native command's memory limit (`limits.command-memory`), set by the
//! launcher on itself before it forks the command, so everything the command
//! starts shares it.
//!
//! A cgroup of its own is the real limit (the kernel counts every page and
//! kills on excess): cgroup v2 where this process may make a child cgroup with
//! the memory controller, else cgroup v1's memory controller. Where neither is
//! writable, RLIMIT_AS is the fallback for a limit the action set: it counts
//! address space, not memory, so programs that reserve large ranges (V8,
//! rustc) may fail under it. The default limit is never applied that way.

use std::path::{Path, PathBuf};

/// How the limit was applied.
pub enum MemoryLimit {
    /// A cgroup made for this command; removed by [`MemoryLimit::release`].
    Cgroup {
        /// The command's own cgroup.
        dir: PathBuf,
        /// The cgroup the launcher returns to before removing `dir`.
        parent: PathBuf,
    },
    /// RLIMIT_AS, inherited by the command.
    AddressSpace,
    /// No cgroup could be made and the limit is only the default.
    Unenforced,
}

impl MemoryLimit {
    /// Limit this process (and its future children) to `bytes`; through
    /// RLIMIT_AS only if `address_space_fallback` (the action set the limit).
    pub fn apply(bytes: u64, address_space_fallback: bool) -> Result<Self, String> {
        let pid = std::process::id();
        for (base, limit_file) in cgroup_candidates() {
            let dir = base.join(format!("sluice-command-{pid}"));
            if let Ok(limit) = make_cgroup(&base, &dir, limit_file, bytes, pid) {
                return Ok(limit);
            }
        }
        if !address_space_fallback {
            return Ok(MemoryLimit::Unenforced);
        }
        let rlimit = libc::rlimit {
            rlim_cur: bytes as libc::rlim_t,
            rlim_max: bytes as libc::rlim_t,
        };
        // SAFETY: setrlimit with a valid pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_AS, &rlimit) } != 0 {
            return Err(format!(
                "setting RLIMIT_AS: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(MemoryLimit::AddressSpace)
    }

    /// Whether the kernel killed something in the cgroup for lack of memory.
    pub fn hit(&self) -> bool {
        let MemoryLimit::Cgroup { dir, .. } = self else {
            return false;
        };
        ["memory.events", "memory.oom_control"].iter().any(|file| {
            std::fs::read_to_string(dir.join(file)).is_ok_and(|text| {
                text.lines().any(|line| {
                    let mut words = line.split_whitespace();
                    matches!(words.next(), Some("oom_kill"))
                        && words.next().and_then(|n| n.parse::<u64>().ok()) > Some(0)
                })
            })
        })
    }

    /// Leave the command's cgroup and remove it (it is empty by now).
    pub fn release(&self) {
        if let MemoryLimit::Cgroup { dir, parent } = self {
            let _ = std::fs::write(parent.join("cgroup.procs"), std::process::id().to_string());
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Where this process could make a child cgroup, and the file that limits it.
fn cgroup_candidates() -> Vec<(PathBuf, &'static str)> {
    let Ok(own) = std::fs::read_to_string("/proc/self/cgroup") else {
        return Vec::new();
    };
    let mut candidates = Vec::new();
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = match (parts.next(), parts.next(), parts.next()) {
            (Some(id), Some(c), Some(p)) => (id, c, p.trim_start_matches('/')),
            _ => continue,
        };
        if controllers.is_empty() && Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            candidates.push((Path::new("/sys/fs/cgroup").join(path), "memory.max"));
        } else if controllers.split(',').any(|c| c == "memory") {
            let base = Path::new("/sys/fs/cgroup/memory").join(path);
            candidates.push((base, "memory.limit_in_bytes"));
        }
    }
    candidates
}

fn make_cgroup(
    parent: &Path,
    dir: &Path,
    limit_file: &str,
    bytes: u64,
    pid: u32,
) -> std::io::Result<MemoryLimit> {
    std::fs::create_dir(dir)?;
    let joined = std::fs::write(dir.join(limit_file), bytes.to_string())
        .and_then(|()| std::fs::write(dir.join("cgroup.procs"), pid.to_string()));
    match joined {
        Ok(()) => Ok(MemoryLimit::Cgroup {
            dir: dir.to_path_buf(),
            parent: parent.to_path_buf(),
        }),
        Err(e) => {
            let _ = std::fs::remove_dir(dir);
            Err(e)
        }
    }
}
