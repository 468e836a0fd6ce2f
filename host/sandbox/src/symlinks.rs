//! Symlink guard: in a read-write mount, a guest may only create symlinks that
//! resolve inside that mount.
//!
//! wasmtime-wasi already refuses absolute targets, but it lets a guest write
//! `../../etc/passwd` into a read-write mount. The guest itself cannot follow
//! it (cap-std resolves beneath the preopen), but the host's own tools, native
//! commands and later readers of that mount would. wasmtime-wasi 48 has no hook
//! for this, so `symlink-at` is shadowed in the linker by a wrapper that checks
//! the target first and then calls wasmtime-wasi's own implementation.
//!
//! The check is lexical, on the real location of the link's directory: the
//! directory descriptor's host path (from `/proc/self/fd`), and a link path
//! without `..` whose parent directories are not symlinks. A refused link is a
//! denial, so the action fails and names it.
//!
//! Outputs and the workspace are not guarded here: escaping links in an output
//! are refused at ingest (naming the artifact), and the workspace is deleted
//! after the action.

use std::os::fd::AsRawFd;
use std::path::{Component, Path, PathBuf};

use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemView};
use wasmtime_wasi::p2::bindings::filesystem::types::{ErrorCode, Host, HostDescriptor};

use super::SandboxState;
use super::filesystem::Preopen;

/// The WASI interface whose `symlink-at` is guarded (the version wasmtime-wasi links).
const FILESYSTEM_TYPES: &str = "wasi:filesystem/types@0.2.12";

/// The read-write mounts of one invocation, by their real host paths.
pub struct SymlinkGuard {
    writable: Vec<(PathBuf, String)>,
}

impl SymlinkGuard {
    /// Guard the read-write mounts among `preopens`.
    pub fn from_preopens(preopens: &[Preopen]) -> Self {
        let writable = preopens
            .iter()
            .filter(|p| p.writable && p.guest.starts_with("/mnt/"))
            .map(|p| {
                let host = std::fs::canonicalize(&p.host).unwrap_or_else(|_| p.host.clone());
                (host, p.guest.clone())
            })
            .collect();
        Self { writable }
    }

    /// Why a link at `link` (below the directory `dir`) to `target` is refused.
    fn check(&self, dir: &Path, link: &str, target: &str) -> Result<(), String> {
        let Some((root, guest)) = self
            .writable
            .iter()
            .filter(|(host, _)| dir.starts_with(host))
            .max_by_key(|(host, _)| host.as_os_str().len())
        else {
            // Not in a read-write mount: see the module comment.
            return Ok(());
        };
        let below = dir.strip_prefix(root).unwrap_or(Path::new(""));
        let link_path = Path::new(link);
        let shown = Path::new(guest).join(below).join(link_path);
        let refuse = |why: &str| {
            Err(format!(
                "symlink `{}` -> `{target}` denied: {why}",
                shown.display()
            ))
        };
        if !link_path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return refuse("the link's path must not contain `..`");
        }
        if let Some(parent) = link_path.parent().filter(|p| !p.as_os_str().is_empty())
            && super::files::open_beneath(dir, parent, false).is_err()
        {
            return refuse("a symlink is in the way of the link's directory");
        }
        let relative = below.join(link_path);
        if sluice_store::artifact::check_link(&relative, Path::new(target)).is_err() {
            return refuse(&format!("it would point outside `{guest}`"));
        }
        Ok(())
    }
}

/// Replace wasmtime-wasi's `symlink-at` in `linker` by the guarded one.
pub fn add_to_linker(linker: &mut Linker<SandboxState>) -> anyhow::Result<()> {
    linker.allow_shadowing(true);
    let mut types = linker
        .instance(FILESYSTEM_TYPES)
        .map_err(|e| anyhow::anyhow!("{FILESYSTEM_TYPES}: {e}"))?;
    types
        .func_wrap_async(
            "[method]descriptor.symlink-at",
            |mut store, (fd, target, link): (Resource<Descriptor>, String, String)| {
                Box::new(async move {
                    let state = store.data_mut();
                    if let Err(denial) = state.check_symlink(&fd, &link, &target) {
                        state.denials.record(&state.log, denial);
                        return Ok((Err(ErrorCode::NotPermitted),));
                    }
                    let mut view = state.filesystem();
                    let answer = match view.symlink_at(fd, target, link).await {
                        Ok(()) => Ok(()),
                        Err(error) => Err(view.convert_error_code(error)?),
                    };
                    Ok((answer,))
                })
            },
        )
        .map_err(|e| anyhow::anyhow!("guarding symlink-at: {e}"))?;
    linker.allow_shadowing(false);
    Ok(())
}

impl SandboxState {
    fn check_symlink(
        &mut self,
        fd: &Resource<Descriptor>,
        link: &str,
        target: &str,
    ) -> Result<(), String> {
        let Ok(Descriptor::Dir(dir)) = self.table.get(fd) else {
            // wasmtime-wasi answers a bad or non-directory descriptor itself.
            return Ok(());
        };
        let proc_path = format!("/proc/self/fd/{}", dir.dir.as_raw_fd());
        let host = std::fs::read_link(proc_path)
            .map_err(|e| format!("symlink `{link}` denied: locating its directory: {e}"))?;
        self.symlinks.check(&host, link, target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_leaving_a_writable_directory_are_refused() {
        let temp = tempfile::tempdir().unwrap();
        let mount = temp.path().join("mount");
        std::fs::create_dir_all(mount.join("sub")).unwrap();
        let guard = SymlinkGuard::from_preopens(&[Preopen {
            host: mount.clone(),
            guest: "/mnt/data".into(),
            writable: true,
        }]);
        let mount = std::fs::canonicalize(mount).unwrap();
        assert!(guard.check(&mount, "a", "sub/file").is_ok());
        assert!(guard.check(&mount.join("sub"), "a", "../file").is_ok());
        assert!(guard.check(&mount, "sub/a", "../file").is_ok());
        let error = guard.check(&mount, "a", "../outside").unwrap_err();
        assert_eq!(
            error,
            "symlink `/mnt/data/a` -> `../outside` denied: it would point outside `/mnt/data`"
        );
        assert!(guard.check(&mount.join("sub"), "a", "../../x").is_err());
        assert!(guard.check(&mount, "sub/../a", "x").is_err());
        assert!(guard.check(&mount, "a", "/etc/passwd").is_err());
    }
}
