//! The plugin registry: a plain directory of installed plugins.
//!
//! Layout: `<root>/<name>/<version>/` holds `plugin.toml`, the component and
//! `cache/<engine key>.cwasm`, the component precompiled for this engine at install
//! time so that a first run never compiles.

pub mod manifest;

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use sha2::Digest as _;

pub use manifest::Manifest;

/// What turns a component into native code for this host: the sandbox's
/// runtime. The registry stores its output beside the component, under the
/// runtime's compatibility key, and needs nothing else of it.
pub trait Precompiler {
    /// Native code for the component `wasm`.
    fn precompile(&self, wasm: &[u8]) -> anyhow::Result<Vec<u8>>;
    /// Names the engine settings the code is valid for.
    fn compatibility_key(&self) -> &str;
}

/// Write `bytes` to `path` through a temporary file and a rename, so that a
/// reader sees the old file or the whole new one, never half of it.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().context("path has no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let temp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4()));
    std::fs::write(&temp, bytes).with_context(|| format!("writing {}", temp.display()))?;
    std::fs::rename(&temp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// A plugin installed in the registry.
#[derive(Clone, Debug)]
pub struct InstalledPlugin {
    /// Its manifest.
    pub manifest: Manifest,
    /// Its directory in the registry.
    pub dir: PathBuf,
}

impl InstalledPlugin {
    /// The component file.
    pub fn component_path(&self) -> PathBuf {
        self.dir.join(&self.manifest.component)
    }

    /// The precompiled file for an engine with this compatibility key.
    pub fn precompiled_path(&self, engine_key: &str) -> PathBuf {
        self.dir.join("cache").join(format!("{engine_key}.cwasm"))
    }

    /// `name@version`.
    pub fn id(&self) -> String {
        self.manifest.id()
    }
}

/// A pipeline's reference to a plugin: `name@version-requirement`.
#[derive(Clone, Debug, PartialEq)]
pub struct PluginRef {
    /// Plugin name.
    pub name: String,
    /// Version requirement (`0.1` means `^0.1`); `*` when omitted.
    pub requirement: semver::VersionReq,
}

impl PluginRef {
    /// Parse `name` or `name@requirement`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (name, requirement) = match text.split_once('@') {
            Some((name, req)) => (name, req),
            None => (text, "*"),
        };
        if name.is_empty() {
            return Err(format!("`{text}` names no plugin; write `name@version`"));
        }
        let requirement = semver::VersionReq::parse(requirement)
            .map_err(|e| format!("invalid version requirement `{requirement}` in `{text}`: {e}"))?;
        Ok(Self {
            name: name.to_string(),
            requirement,
        })
    }
}

/// Why a plugin reference did not resolve. Validation turns these into
/// diagnostics that list what is installed.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// No plugin of that name is installed.
    #[error("unknown plugin `{name}`; installed plugins: {installed}")]
    UnknownPlugin {
        /// The name asked for.
        name: String,
        /// Comma-separated installed names.
        installed: String,
    },
    /// The plugin is installed, but no version matches.
    #[error(
        "no installed version of `{name}` matches `{requirement}`; installed versions: {installed}"
    )]
    NoMatchingVersion {
        /// The name asked for.
        name: String,
        /// The requirement.
        requirement: String,
        /// Comma-separated installed versions.
        installed: String,
    },
}

/// What installing one plugin would do; shown before asking for consent.
pub struct InstallPlan {
    /// The new plugin's manifest.
    pub manifest: Manifest,
    /// The newest installed version of the same plugin, if any.
    pub replaces: Option<Manifest>,
}

impl InstallPlan {
    /// The lines shown to a person before they consent.
    pub fn describe(&self) -> Vec<String> {
        let m = &self.manifest;
        let mut lines = vec![format!("{} — {}", m.id(), m.description)];
        match &self.replaces {
            Some(old) => {
                lines.push(format!("  upgrades {} ; capability changes:", old.id()));
                let widened = old.capabilities.widened_by(&m.capabilities);
                let narrowed = m.capabilities.widened_by(&old.capabilities);
                if widened.is_empty() && narrowed.is_empty() {
                    lines.push("    (none)".to_string());
                }
                lines.extend(widened.into_iter().map(|l| format!("    {l}")));
                lines.extend(
                    narrowed
                        .into_iter()
                        .map(|l| format!("    {}", l.replacen('+', "-", 1))),
                );
            }
            None => lines.push("  may be granted:".to_string()),
        }
        lines.extend(
            m.capabilities
                .describe()
                .into_iter()
                .map(|l| format!("    {l}")),
        );
        lines
    }
}

/// The registry directory.
#[derive(Clone, Debug)]
pub struct Registry {
    root: PathBuf,
}

impl Registry {
    /// The registry at `root` (created if missing).
    pub fn open(root: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(root)
            .with_context(|| format!("creating plugin registry {}", root.display()))?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// Every installed plugin, by name then version.
    pub fn list(&self) -> anyhow::Result<Vec<InstalledPlugin>> {
        let mut plugins = Vec::new();
        for name_dir in sorted_subdirs(&self.root)? {
            for version_dir in sorted_subdirs(&name_dir)? {
                if version_dir.join("plugin.toml").is_file() {
                    let manifest = Manifest::read(&version_dir)?;
                    plugins.push(InstalledPlugin {
                        manifest,
                        dir: version_dir,
                    });
                }
            }
        }
        plugins.sort_by(|a, b| {
            (&a.manifest.name, &a.manifest.version).cmp(&(&b.manifest.name, &b.manifest.version))
        });
        Ok(plugins)
    }

    /// The newest installed version matching `reference`.
    pub fn resolve(
        &self,
        reference: &PluginRef,
    ) -> anyhow::Result<Result<InstalledPlugin, ResolveError>> {
        let all = self.list()?;
        let versions: Vec<&InstalledPlugin> = all
            .iter()
            .filter(|p| p.manifest.name == reference.name)
            .collect();
        if versions.is_empty() {
            let mut names: Vec<&str> = all.iter().map(|p| p.manifest.name.as_str()).collect();
            names.dedup();
            return Ok(Err(ResolveError::UnknownPlugin {
                name: reference.name.clone(),
                installed: if names.is_empty() {
                    "none".into()
                } else {
                    names.join(", ")
                },
            }));
        }
        let best = versions
            .iter()
            .filter(|p| reference.requirement.matches(&p.manifest.version))
            .max_by(|a, b| a.manifest.version.cmp(&b.manifest.version));
        Ok(match best {
            Some(plugin) => Ok((*plugin).clone()),
            None => Err(ResolveError::NoMatchingVersion {
                name: reference.name.clone(),
                requirement: reference.requirement.to_string(),
                installed: versions
                    .iter()
                    .map(|p| p.manifest.version.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        })
    }

    /// Plugin source directories under `source`: itself if it holds a
    /// `plugin.toml`, else each subdirectory that does.
    pub fn sources(source: &Path) -> anyhow::Result<Vec<PathBuf>> {
        if source.join("plugin.toml").is_file() {
            return Ok(vec![source.to_path_buf()]);
        }
        let found: Vec<PathBuf> = sorted_subdirs(source)?
            .into_iter()
            .filter(|d| d.join("plugin.toml").is_file())
            .collect();
        anyhow::ensure!(
            !found.is_empty(),
            "{} holds no plugin.toml, and none of its subdirectories do",
            source.display()
        );
        Ok(found)
    }

    /// Verify a plugin source and describe what installing it would do.
    pub fn plan(&self, source: &Path) -> anyhow::Result<InstallPlan> {
        let manifest = Manifest::read(source)?;
        verify_digest(source, &manifest)?;
        let replaces = self
            .list()?
            .into_iter()
            .filter(|p| p.manifest.name == manifest.name)
            .max_by(|a, b| a.manifest.version.cmp(&b.manifest.version))
            .map(|p| p.manifest);
        Ok(InstallPlan { manifest, replaces })
    }

    /// Install a verified plugin: precompile it for `runtime` and copy it in.
    pub fn install(
        &self,
        source: &Path,
        plan: &InstallPlan,
        runtime: &impl Precompiler,
    ) -> anyhow::Result<InstalledPlugin> {
        let manifest = &plan.manifest;
        let wasm = std::fs::read(source.join(&manifest.component))?;
        let compiled = runtime
            .precompile(&wasm)
            .with_context(|| format!("precompiling {}", manifest.id()))?;
        let target = self
            .root
            .join(&manifest.name)
            .join(manifest.version.to_string());
        let staging = self.root.join(format!(".staging-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&staging)?;
        std::fs::copy(source.join("plugin.toml"), staging.join("plugin.toml"))?;
        std::fs::write(staging.join(&manifest.component), &wasm)?;
        let installed = InstalledPlugin {
            manifest: manifest.clone(),
            dir: staging.clone(),
        };
        write_atomically(
            &installed.precompiled_path(runtime.compatibility_key()),
            &compiled,
        )?;
        if target.exists() {
            std::fs::remove_dir_all(&target)
                .with_context(|| format!("replacing {}", target.display()))?;
        }
        std::fs::create_dir_all(target.parent().context("registry path")?)?;
        std::fs::rename(&staging, &target)
            .with_context(|| format!("moving plugin into {}", target.display()))?;
        Ok(InstalledPlugin {
            manifest: manifest.clone(),
            dir: target,
        })
    }

    /// Remove one installed version; returns what was removed.
    pub fn remove(&self, name: &str, version: &semver::Version) -> anyhow::Result<PathBuf> {
        let dir = self.root.join(name).join(version.to_string());
        anyhow::ensure!(
            dir.join("plugin.toml").is_file(),
            "{name}@{version} is not installed"
        );
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        let name_dir = self.root.join(name);
        if sorted_subdirs(&name_dir)?.is_empty() {
            std::fs::remove_dir(&name_dir).ok();
        }
        Ok(dir)
    }
}

/// Check the component's sha256 against the manifest's.
fn verify_digest(source: &Path, manifest: &Manifest) -> anyhow::Result<()> {
    let expected = manifest.sha256.as_deref().with_context(|| {
        format!(
            "{}: plugin.toml has no sha256; a plugin must pin its component's digest",
            manifest.id()
        )
    })?;
    let path = source.join(&manifest.component);
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let actual = hex::encode(sha2::Sha256::digest(&bytes));
    anyhow::ensure!(
        actual.eq_ignore_ascii_case(expected.trim()),
        "{}: digest mismatch for {}: plugin.toml pins sha256 {expected}, the file has {actual}",
        manifest.id(),
        path.display()
    );
    Ok(())
}

fn sorted_subdirs(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(dirs),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for entry in entries {
        let entry = entry?;
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if entry.file_type()?.is_dir() && !hidden {
            dirs.push(entry.path());
        }
    }
    dirs.sort();
    Ok(dirs)
}
