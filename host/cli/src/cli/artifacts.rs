//! `sluice artifacts ls/get` (locally or through `--server`) and `sluice gc`,
//! the retention sweep that `sluice serve --retention` also runs hourly.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use serde_json::json;

use super::Paths;
use super::remote::{self, Client};
use sluice_api::ArtifactList;
use sluice_api::views::{ArtifactEntry, artifact_entries};
use sluice_core::units::format_bytes;
use sluice_store::artifact::ArtifactStore;
use sluice_store::state::{GcCounts, Store};

/// Artifact commands.
#[derive(Subcommand)]
pub enum ArtifactsCommand {
    /// List an execution's output artifacts: name, producing action, digest, files, bytes.
    Ls {
        /// Execution id (or a unique prefix, or `latest`).
        execution: String,
    },
    /// Write an artifact's exact tree (bytes, executable bits, symlinks) into a directory.
    Get {
        /// Execution id (or a unique prefix, or `latest`).
        execution: String,
        /// Artifact name.
        name: String,
        /// Directory to create; it must not exist or be empty [default: ./<name>].
        #[arg(long, value_name = "DIR")]
        to: Option<PathBuf>,
    },
}

/// `sluice artifacts …` against the local data directory.
pub fn local(command: ArtifactsCommand, paths: &Paths, json: bool) -> anyhow::Result<ExitCode> {
    let state = paths.state()?;
    match command {
        ArtifactsCommand::Ls { execution } => {
            let id = super::history::resolve_id(state.as_ref(), &execution)?;
            let entries = artifact_entries(&state.actions(&id)?);
            print_list(&sluice_api::views::artifacts(&id, &entries), json);
        }
        ArtifactsCommand::Get {
            execution,
            name,
            to,
        } => {
            let id = super::history::resolve_id(state.as_ref(), &execution)?;
            let entry = find(artifact_entries(&state.actions(&id)?), &id, &name)?;
            let store = ArtifactStore::open(&paths.data_dir.join("artifacts"))?;
            let stored = sluice_store::export::verified_path(&store, &entry.name, &entry.digest)?;
            let dest = to.unwrap_or_else(|| PathBuf::from(&name));
            sluice_store::export::copy_out(&stored, &dest, &entry.digest)?;
            print_written(&id, &entry, &dest, json);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `sluice artifacts …` through the server's API.
pub fn remote(command: ArtifactsCommand, client: &Client, json: bool) -> anyhow::Result<ExitCode> {
    match command {
        ArtifactsCommand::Ls { execution } => {
            let path = format!("/executions/{}/artifacts", remote::segment(&execution)?);
            let answer: ArtifactList = client.get_json(&path)?;
            print_list(&answer, json);
        }
        ArtifactsCommand::Get {
            execution,
            name,
            to,
        } => {
            let path = format!("/executions/{}/artifacts", remote::segment(&execution)?);
            let answer: ArtifactList = client.get_json(&path)?;
            let id = answer.execution;
            let entry = find(answer.artifacts, &id, &name)?;
            let dest = to.unwrap_or_else(|| PathBuf::from(&name));
            let path = format!(
                "/executions/{}/artifacts/{}",
                remote::segment(&id)?,
                remote::segment(&name)?
            );
            let tar = client.download(&path)?;
            sluice_store::export::unpack_new(tar, &dest, Some(&entry.digest))?;
            print_written(&id, &entry, &dest, json);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn find(entries: Vec<ArtifactEntry>, id: &str, name: &str) -> anyhow::Result<ArtifactEntry> {
    let names: Vec<String> = entries.iter().map(|e| e.name.clone()).collect();
    entries
        .into_iter()
        .find(|e| e.name == name)
        .ok_or_else(|| match names.as_slice() {
            [] => anyhow::anyhow!("execution {id} has no artifacts"),
            _ => anyhow::anyhow!(
                "execution {id} has no artifact `{name}`; it has: {}",
                names.join(", ")
            ),
        })
}

fn print_list(document: &ArtifactList, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(document).unwrap_or_default()
        );
        return;
    }
    if document.artifacts.is_empty() {
        eprintln!("execution {} has no artifacts", document.execution);
    }
    for a in &document.artifacts {
        println!(
            "{:<16} {:<16} blake3:{}  {} files, {}",
            a.name,
            a.action,
            sluice_store::export::short(&a.digest),
            a.files,
            format_bytes(a.bytes)
        );
    }
}

fn print_written(id: &str, entry: &ArtifactEntry, dest: &Path, json: bool) {
    if json {
        let document = json!({ "execution": id, "artifact": entry, "path": dest });
        println!(
            "{}",
            serde_json::to_string_pretty(&document).unwrap_or_default()
        );
    } else {
        println!(
            "wrote artifact `{}` (blake3:{}, {} files, {}) of execution {id} to {}",
            entry.name,
            sluice_store::export::short(&entry.digest),
            entry.files,
            format_bytes(entry.bytes),
            dest.display()
        );
    }
}

/// What a retention sweep removed.
#[derive(Debug, Default, serde::Serialize)]
pub struct Swept {
    /// Rows removed from the state store.
    #[serde(flatten)]
    pub rows: GcCounts,
    /// Artifacts no remaining execution refers to.
    pub artifacts: u64,
    /// Their bytes.
    pub artifact_bytes: u64,
}

/// Remove what is older than `keep` (finished executions with their runs and
/// logs, events, audit rows), then the artifacts nothing remaining refers to.
pub fn sweep(state: &dyn Store, artifacts_root: &Path, keep: Duration) -> anyhow::Result<Swept> {
    // Ages of rows other machines wrote (webhook and cron dedup rows among
    // them): the store's clock, so a server running ahead deletes nothing early.
    let now = state.clock_ms();
    let cutoff = now - i64::try_from(keep.as_millis()).unwrap_or(i64::MAX).min(now);
    let rows = state.gc(cutoff)?;
    let referenced = state.referenced_digests()?;
    // An execution still running may have stored an artifact that its action
    // run does not record yet: keep everything stored since it started.
    let busy_since = state.oldest_running_start()?;
    let mut swept = Swept {
        rows,
        ..Swept::default()
    };
    let store = ArtifactStore::open(artifacts_root)?;
    for entry in std::fs::read_dir(artifacts_root)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_artifact = name.len() == 64
            && name.bytes().all(|b| b.is_ascii_hexdigit())
            && store.path_of(&name) == entry.path()
            && entry.file_type()?.is_dir();
        if !is_artifact || referenced.contains(&name) {
            continue;
        }
        if busy_since.is_some_and(|since| stored_at_ms(&entry.path()) >= since) {
            continue;
        }
        swept.artifact_bytes += remove_artifact(&entry.path())?;
        swept.artifacts += 1;
    }
    Ok(swept)
}

/// When an artifact was stored: ingest renames and chmods it, which sets ctime.
fn stored_at_ms(path: &Path) -> i64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::symlink_metadata(path)
        .map(|m| m.ctime() * 1000 + m.ctime_nsec() / 1_000_000)
        .unwrap_or(i64::MAX)
}

/// Delete a stored (read-only) tree; returns the bytes of its regular files.
fn remove_artifact(dir: &Path) -> anyhow::Result<u64> {
    sluice_store::artifact::remove_tree(dir)
}

fn describe(swept: &Swept) -> String {
    let r = &swept.rows;
    format!(
        "removed {} executions ({} stage runs, {} action runs, {} log lines, {} approvals), {} events, {} audit rows, {} webhook deliveries, {} artifacts ({})",
        r.executions,
        r.stage_runs,
        r.action_runs,
        r.log_lines,
        r.approvals,
        r.events,
        r.audit_rows,
        r.webhook_deliveries,
        swept.artifacts,
        format_bytes(swept.artifact_bytes)
    )
}

/// `sluice gc --older-than D`.
pub fn gc(paths: &Paths, older_than: Duration, json: bool) -> anyhow::Result<ExitCode> {
    let swept = sweep(
        paths.state()?.as_ref(),
        &paths.data_dir.join("artifacts"),
        older_than,
    )?;
    if json {
        println!("{}", serde_json::to_string_pretty(&swept)?);
    } else {
        println!("{}", describe(&swept));
    }
    Ok(ExitCode::SUCCESS)
}

/// `sluice serve --retention D`: sweep now, then every hour, on a thread of
/// its own with its own database connection.
pub fn spawn_retention(paths: &Paths, keep: Duration) -> anyhow::Result<()> {
    let state = paths.state()?;
    let root = paths.data_dir.join("artifacts");
    std::thread::Builder::new()
        .name("retention".into())
        .spawn(move || {
            loop {
                match sweep(state.as_ref(), &root, keep) {
                    Ok(swept) => tracing::info!("retention: {}", describe(&swept)),
                    Err(e) => tracing::error!("retention sweep failed: {e:#}"),
                }
                std::thread::sleep(Duration::from_secs(3600));
            }
        })?;
    Ok(())
}
