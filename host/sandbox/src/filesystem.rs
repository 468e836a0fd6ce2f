//! Filesystem capability: the only host directories a guest can see.
//!
//! Input artifacts are preopened read-only straight from the artifact store (no
//! copy, so handing over a 1 GiB artifact costs the same as 1 KiB). Outputs and the
//! workspace are fresh writable directories. Granted mounts appear under `/mnt`,
//! granted caches (kept between executions, see `sluice_engine::cache`) under `/cache`.
//! wasmtime-wasi resolves every guest path beneath a preopen with cap-std, so `..`,
//! absolute paths and symlinks cannot leave these directories.

use std::path::PathBuf;

use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

/// One host directory shown to the guest.
#[derive(Clone, Debug)]
pub struct Preopen {
    /// Directory on the host.
    pub host: PathBuf,
    /// Where the guest sees it.
    pub guest: String,
    /// Whether the guest may write into it.
    pub writable: bool,
}

pub use sluice_core::pipeline::Mount;

/// The directory layout of one invocation.
pub struct FilesystemCapability {
    preopens: Vec<Preopen>,
}

impl FilesystemCapability {
    /// The layout for these inputs, outputs, workspace, mounts and caches.
    pub fn from_grant(
        inputs: &[(String, PathBuf)],
        outputs: &[(String, PathBuf)],
        workspace: &std::path::Path,
        mounts: &[Mount],
        caches: &[(String, PathBuf)],
    ) -> Self {
        let mut preopens = Vec::new();
        for (name, host) in inputs {
            preopens.push(Preopen {
                host: host.clone(),
                guest: format!("/in/{name}"),
                writable: false,
            });
        }
        for (name, host) in outputs {
            preopens.push(Preopen {
                host: host.clone(),
                guest: format!("/out/{name}"),
                writable: true,
            });
        }
        preopens.push(Preopen {
            host: workspace.to_path_buf(),
            guest: "/workspace".to_string(),
            writable: true,
        });
        for mount in mounts {
            preopens.push(Preopen {
                host: mount.host.clone(),
                guest: format!("/mnt/{}", mount.name),
                writable: mount.writable,
            });
        }
        for (name, host) in caches {
            preopens.push(Preopen {
                host: host.clone(),
                guest: format!("/cache/{name}"),
                writable: true,
            });
        }
        Self { preopens }
    }

    /// The directories, as the guest sees them.
    pub fn preopens(&self) -> &[Preopen] {
        &self.preopens
    }

    /// Add the preopens to a WASI context.
    pub fn install(&self, builder: &mut WasiCtxBuilder) -> anyhow::Result<()> {
        for preopen in &self.preopens {
            let perms = if preopen.writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            builder
                .preopened_dir(&preopen.host, &preopen.guest, perms)
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot open {} for the guest at {}: {e}",
                        preopen.host.display(),
                        preopen.guest
                    )
                })?;
        }
        Ok(())
    }
}
