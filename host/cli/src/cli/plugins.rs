//! `sluice plugin …`: install, list, inspect, remove.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::Paths;
use sluice_core::plugin::{PluginRef, Registry};
use sluice_sandbox::Runtime;

/// Plugin registry commands.
#[derive(Subcommand)]
pub enum PluginCommand {
    /// Install a plugin directory (with plugin.toml), or a directory of them.
    Install {
        /// Plugin directories, or directories whose subdirectories are plugins.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Consent to the listed capabilities without asking.
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// List installed plugins.
    List,
    /// Create a new plugin directory from a template; it builds and installs as is.
    New {
        /// Plugin name (lower-case letters, digits, -).
        name: String,
        /// Language of the plugin.
        #[arg(long, value_enum, default_value = "rust")]
        lang: crate::scaffold::Language,
        /// Directory to create [default: ./<name>].
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Depend on this Sluice `sdk/` directory (holding rust/, python/, js/) by a
        /// relative path [default: the enclosing Sluice checkout's, else a copy
        /// vendored into <dir>/vendor/sluice].
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Show a plugin's manifest: configuration keys and capabilities.
    Inspect {
        /// `name` or `name@version-requirement`.
        plugin: String,
    },
    /// Remove one installed version.
    Remove {
        /// `name@version` (exact version).
        plugin: String,
    },
}

pub fn dispatch(command: PluginCommand, paths: &Paths) -> anyhow::Result<ExitCode> {
    let registry = paths.registry()?;
    match command {
        PluginCommand::Install { dirs, yes } => {
            let remote = paths.remote()?;
            install(&registry, &dirs, yes, paths.json, remote.as_ref())
        }
        PluginCommand::List if paths.json => {
            let plugins: Vec<_> = registry.list()?.iter().map(plugin_json).collect();
            print_json(&serde_json::json!({ "plugins": plugins }))
        }
        PluginCommand::Inspect { plugin } if paths.json => {
            let reference = PluginRef::parse(&plugin).map_err(anyhow::Error::msg)?;
            print_json(&plugin_json(&registry.resolve(&reference)??))
        }
        PluginCommand::List => list(&registry),
        PluginCommand::New {
            name,
            lang,
            dir,
            sdk,
        } => new(&name, lang, dir, sdk),
        PluginCommand::Inspect { plugin } => inspect(&registry, &plugin),
        PluginCommand::Remove { plugin } => remove(&registry, &plugin, paths.json),
    }
}

/// Install into the local registry, and with `--artifacts` also into the
/// shared bucket, where workers pull it from by digest.
fn install(
    registry: &Registry,
    dirs: &[PathBuf],
    yes: bool,
    json: bool,
    remote: Option<&sluice_store::remote::RemoteArtifacts>,
) -> anyhow::Result<ExitCode> {
    // With --output json, stdout carries only the final document.
    let say = |line: String| match json {
        true => eprintln!("{line}"),
        false => println!("{line}"),
    };
    let (mut installed_json, mut skipped_json) = (Vec::new(), Vec::new());
    let runtime = Runtime::new()?;
    let mut refused = false;
    let mut sources = Vec::new();
    for dir in dirs {
        sources.extend(Registry::sources(dir)?);
    }
    for source in sources {
        let plan = registry.plan(&source)?;
        for line in plan.describe() {
            say(line);
        }
        if !yes && !ask_consent(&plan.manifest.id())? {
            say(format!("  skipped {}", plan.manifest.id()));
            skipped_json.push(plan.manifest.id());
            refused = true;
            continue;
        }
        let installed = registry.install(&source, &plan, &runtime)?;
        say(format!(
            "  installed {} (digest verified, precompiled) → {}",
            installed.id(),
            installed.dir.display()
        ));
        if let Some(remote) = remote {
            share_plugin(remote, &installed)?;
            say(format!("  shared through {}", remote.url()));
        }
        installed_json.push(serde_json::json!({ "id": installed.id(), "dir": installed.dir }));
    }
    if json {
        print_json(&serde_json::json!({ "installed": installed_json, "skipped": skipped_json }))?;
    }
    Ok(if refused {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// Upload an installed (so verified) plugin under its component's sha256.
fn share_plugin(
    remote: &sluice_store::remote::RemoteArtifacts,
    installed: &sluice_core::plugin::InstalledPlugin,
) -> anyhow::Result<()> {
    let manifest = &installed.manifest;
    let sha256 = manifest.sha256.as_deref().unwrap_or_default();
    let upload = remote.upload_plugin(&installed.dir, sha256, &manifest.component);
    super::tokio_runtime()?.block_on(upload)
}

fn new(
    name: &str,
    language: crate::scaffold::Language,
    dir: Option<PathBuf>,
    sdk: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    let vendor = dir.join(crate::scaffold::VENDOR_DIR);
    let (vendored, own): (Vec<_>, Vec<_>) =
        crate::scaffold::scaffold(name, language, &dir, sdk.as_deref())?
            .into_iter()
            .partition(|f| f.starts_with(&vendor));
    for file in own {
        println!("created {}", file.display());
    }
    if !vendored.is_empty() {
        println!(
            "vendored the SDK ({} files) into {}",
            vendored.len(),
            vendor.display()
        );
    }
    println!(
        "next: {}/build.sh && sluice plugin install {}/dist/{name}",
        dir.display(),
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn ask_consent(id: &str) -> anyhow::Result<bool> {
    let stdin = std::io::stdin();
    anyhow::ensure!(
        stdin.is_terminal(),
        "installing {id} needs consent to its capabilities; run interactively or pass --yes"
    );
    eprint!("Grant these capabilities to {id}? [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "Yes"))
}

/// An installed plugin for `--output json`: its manifest and where it lives.
fn plugin_json(plugin: &sluice_core::plugin::InstalledPlugin) -> serde_json::Value {
    serde_json::json!({ "manifest": plugin.manifest, "dir": plugin.dir })
}

fn print_json(document: &serde_json::Value) -> anyhow::Result<ExitCode> {
    println!("{}", serde_json::to_string_pretty(document)?);
    Ok(ExitCode::SUCCESS)
}

fn list(registry: &Registry) -> anyhow::Result<ExitCode> {
    let plugins = registry.list()?;
    if plugins.is_empty() {
        println!("no plugins installed; install some with `sluice plugin install <dir>`");
    }
    for plugin in plugins {
        let m = &plugin.manifest;
        println!(
            "{:<14} {:<8} {:<16} {}",
            m.name,
            m.version,
            m.categories.join(","),
            m.description
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn inspect(registry: &Registry, text: &str) -> anyhow::Result<ExitCode> {
    let reference = PluginRef::parse(text).map_err(anyhow::Error::msg)?;
    let plugin = registry.resolve(&reference)??;
    let m = &plugin.manifest;
    println!("{} — {}", m.id(), m.description);
    println!("  world:      {}", m.world);
    println!(
        "  component:  {} (sha256 {})",
        m.component,
        m.sha256.as_deref().unwrap_or("-")
    );
    println!("  categories: {}", m.categories.join(", "));
    println!("  directory:  {}", plugin.dir.display());
    println!("  config:");
    for (key, schema) in &m.config {
        let required = if schema.required {
            "required"
        } else {
            "optional"
        };
        println!(
            "    {key:<16} {:<8} {required:<9} {}",
            schema.kind.name(),
            schema.description
        );
    }
    println!("  capabilities:");
    for line in m.capabilities.describe() {
        println!("    {line}");
    }
    Ok(ExitCode::SUCCESS)
}

fn remove(registry: &Registry, text: &str, json: bool) -> anyhow::Result<ExitCode> {
    let (name, version) = text
        .split_once('@')
        .ok_or_else(|| anyhow::anyhow!("give the exact version to remove: name@x.y.z"))?;
    let version = semver::Version::parse(version)
        .map_err(|e| anyhow::anyhow!("`{version}` is not an exact version: {e}"))?;
    let dir = registry.remove(name, &version)?;
    if json {
        return print_json(
            &serde_json::json!({ "removed": format!("{name}@{version}"), "dir": dir }),
        );
    }
    println!("removed {name}@{version} ({})", dir.display());
    Ok(ExitCode::SUCCESS)
}
