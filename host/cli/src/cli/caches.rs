//! `sluice cache ls` and `sluice cache clear`: pipeline caches in the data directory.

use std::process::ExitCode;

use clap::Subcommand;
use serde::Serialize;

use super::{OutputFormat, Paths};
use sluice_core::units::format_bytes;
use sluice_engine::cache::{CacheInfo, CacheStore};

/// Cache commands.
#[derive(Subcommand)]
pub enum CacheCommand {
    /// List caches: pipeline, name, size, last use.
    Ls,
    /// Delete caches (all of them, one pipeline's, or one by name). Waits for an
    /// action that is using a cache to finish with it first.
    Clear {
        /// Only this pipeline's caches.
        #[arg(long)]
        pipeline: Option<String>,
        /// Only the caches with this name.
        name: Option<String>,
    },
}

/// One cleared cache, for `--output json`.
#[derive(Serialize)]
struct Cleared {
    pipeline: String,
    cache: String,
    bytes: u64,
}

pub fn dispatch(command: CacheCommand, paths: &Paths) -> anyhow::Result<ExitCode> {
    let store = CacheStore::under(&paths.data_dir);
    let json = paths.output == OutputFormat::Json;
    match command {
        CacheCommand::Ls => list(&store, json),
        CacheCommand::Clear { pipeline, name } => {
            clear(&store, pipeline.as_deref(), name.as_deref(), json)
        }
    }
}

fn list(store: &CacheStore, json: bool) -> anyhow::Result<ExitCode> {
    let caches = store.list()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&caches)?);
        return Ok(ExitCode::SUCCESS);
    }
    if caches.is_empty() {
        println!("no caches");
        return Ok(ExitCode::SUCCESS);
    }
    let width = |f: fn(&CacheInfo) -> usize, title: &str| {
        caches.iter().map(f).max().unwrap_or(0).max(title.len())
    };
    let pipeline_width = width(|c| c.pipeline.chars().count(), "PIPELINE");
    let cache_width = width(|c| c.cache.len(), "CACHE");
    println!(
        "{:<pipeline_width$}  {:<cache_width$}  {:>10}  LAST USED",
        "PIPELINE", "CACHE", "SIZE"
    );
    for cache in &caches {
        println!(
            "{:<pipeline_width$}  {:<cache_width$}  {:>10}  {}",
            cache.pipeline,
            cache.cache,
            format_bytes(cache.bytes),
            last_used(cache.last_used_ms)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn last_used(ms: Option<i64>) -> String {
    let Some(ms) = ms.and_then(|ms| u64::try_from(ms).ok()) else {
        return "-".to_string();
    };
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(time).to_string()
}

fn clear(
    store: &CacheStore,
    pipeline: Option<&str>,
    name: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let matching: Vec<CacheInfo> = store
        .list()?
        .into_iter()
        .filter(|c| pipeline.is_none_or(|p| c.pipeline == p))
        .filter(|c| name.is_none_or(|n| c.cache == n))
        .collect();
    if let (Some(name), true) = (name, matching.is_empty()) {
        let of = pipeline
            .map(|p| format!(" of pipeline `{p}`"))
            .unwrap_or_default();
        anyhow::bail!("no cache `{name}`{of} (see `sluice cache ls`)");
    }
    let mut cleared = Vec::new();
    for cache in matching {
        let waiting = || {
            eprintln!(
                "waiting for cache `{}` of pipeline `{}` (in use by a running action)",
                cache.cache, cache.pipeline
            );
        };
        let bytes = store.clear(&cache.pipeline, &cache.cache, waiting)?;
        if !json {
            println!(
                "cleared cache `{}` of pipeline `{}` ({})",
                cache.cache,
                cache.pipeline,
                format_bytes(bytes)
            );
        }
        cleared.push(Cleared {
            pipeline: cache.pipeline,
            cache: cache.cache,
            bytes,
        });
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&cleared)?);
    } else if cleared.is_empty() {
        println!("no caches to clear");
    }
    Ok(ExitCode::SUCCESS)
}
