//! Caches: named directories that persist between executions of a pipeline.
//!
//! A pipeline declares them under `[caches]` and grants them per action. Each
//! lives at `<data-dir>/caches/<pipeline>/<name>/`; a Wasm guest sees it at
//! `/cache/<name>`, and `#{cache.<name>}` in an action's configuration is its
//! absolute host path (for native commands, e.g. `CARGO_TARGET_DIR`).
//!
//! A cache has one user at a time. An attempt holds an exclusive flock(2) on
//! `<name>.lock` beside the directory from before it starts until after it ends.
//! flock rather than an in-process mutex, so that several `sluice run` processes
//! (and `sluice cache clear`) sharing a data directory also keep out of each
//! other's way; the kernel drops the lock when a process dies, so a crash never
//! leaves a cache locked. After the attempt, a cache above its max-size is
//! cleared, so that one runaway build cannot fill the disk for good.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use sluice_core::pipeline::Plan;
use sluice_core::units::format_bytes;
use sluice_sandbox::log::{LogSink, LogStream};

pub use sluice_core::pipeline::caches::{DEFAULT_MAX_BYTES, is_cache_name};

/// Longest pause between two tries of a busy lock.
const MAX_LOCK_PAUSE: Duration = Duration::from_millis(500);

/// Every pipeline's caches under one data directory.
#[derive(Clone, Debug)]
pub struct CacheStore {
    root: PathBuf,
}

/// One cache on disk, as `sluice cache ls` shows it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CacheInfo {
    /// The pipeline that declares it.
    pub pipeline: String,
    /// The cache's name.
    pub cache: String,
    /// Total size of its files, in bytes.
    pub bytes: u64,
    /// When an action last released it (or it was last modified), in ms since the epoch.
    pub last_used_ms: Option<i64>,
    /// Its directory on the host.
    pub path: PathBuf,
}

impl CacheStore {
    /// The caches of the data directory `data_dir` (in `<data_dir>/caches`).
    /// The path is made absolute: native commands get it through
    /// `#{cache.<name>}` and run in another directory.
    pub fn under(data_dir: &Path) -> Self {
        let caches = data_dir.join("caches");
        Self {
            root: std::path::absolute(&caches).unwrap_or(caches),
        }
    }

    /// The directory of cache `name` of `pipeline`.
    pub fn dir(&self, pipeline: &str, name: &str) -> PathBuf {
        self.root.join(pipeline).join(name)
    }

    fn lock_path(&self, pipeline: &str, name: &str) -> PathBuf {
        self.root.join(pipeline).join(format!("{name}.lock"))
    }

    /// The granted caches' names and directories, for the sandbox.
    pub fn granted(&self, plan: &Plan, granted: &[String]) -> Vec<(String, PathBuf)> {
        granted
            .iter()
            .map(|name| (name.clone(), self.dir(&plan.name, name)))
            .collect()
    }

    /// Lock the `granted` caches of `plan` for one attempt, waiting (without
    /// blocking a thread) while another execution holds one, and create their
    /// directories. Locks are taken in name order, so two actions that share
    /// several caches cannot deadlock.
    pub async fn acquire(
        &self,
        plan: &Plan,
        granted: &[String],
        log: &LogSink,
    ) -> Result<CacheLease, String> {
        let mut names: Vec<&String> = granted.iter().collect();
        names.sort();
        names.dedup();
        let mut held = Vec::new();
        for name in names {
            let lock = self.lock(&plan.name, name, log).await?;
            let dir = self.dir(&plan.name, name);
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("creating cache directory {}: {e}", dir.display()))?;
            held.push(Held {
                name: name.clone(),
                dir,
                max_bytes: plan.caches.get(name).copied().unwrap_or(DEFAULT_MAX_BYTES),
                lock,
            });
        }
        Ok(CacheLease { held })
    }

    async fn lock(&self, pipeline: &str, name: &str, log: &LogSink) -> Result<File, String> {
        let path = self.lock_path(pipeline, name);
        let file = open_lock(&path).map_err(|e| format!("opening {}: {e}", path.display()))?;
        let mut pause = Duration::from_millis(20);
        let mut told = false;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(file),
                Err(TryLockError::WouldBlock) => {
                    if !told {
                        let message =
                            format!("waiting for cache `{name}` (in use by another execution)");
                        log.progress(0, &message);
                        told = true;
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_LOCK_PAUSE);
                }
                Err(TryLockError::Error(e)) => {
                    return Err(format!("locking cache `{name}` ({}): {e}", path.display()));
                }
            }
        }
    }

    /// Every cache on disk, by pipeline then name.
    pub fn list(&self) -> std::io::Result<Vec<CacheInfo>> {
        let mut caches = Vec::new();
        for pipeline in sorted_entries(&self.root)? {
            if !pipeline.is_dir() {
                continue;
            }
            for dir in sorted_entries(&pipeline)?
                .into_iter()
                .filter(|d| d.is_dir())
            {
                let (Some(pipeline), Some(cache)) = (file_name(&pipeline), file_name(&dir)) else {
                    continue;
                };
                let stamp = self.lock_path(&pipeline, &cache);
                caches.push(CacheInfo {
                    bytes: size_of(&dir),
                    last_used_ms: modified_ms(&stamp).or_else(|| modified_ms(&dir)),
                    pipeline,
                    cache,
                    path: dir,
                });
            }
        }
        Ok(caches)
    }

    /// Delete one cache's contents, under its lock, so it cannot be cleared
    /// under a running action: `waiting` is called once if the lock is busy,
    /// then this blocks until it is free. Returns the bytes freed.
    pub fn clear(&self, pipeline: &str, name: &str, waiting: impl FnOnce()) -> anyhow::Result<u64> {
        let path = self.lock_path(pipeline, name);
        let file =
            open_lock(&path).map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                waiting();
                file.lock()?;
            }
            Err(TryLockError::Error(e)) => return Err(e.into()),
        }
        let dir = self.dir(pipeline, name);
        let bytes = size_of(&dir);
        remove_tree(&dir)?;
        Ok(bytes)
    }
}

/// Locks on the caches of one attempt; [`CacheLease::release`] enforces the
/// size caps and unlocks. Dropping it unlocks too (an abandoned attempt).
pub struct CacheLease {
    held: Vec<Held>,
}

struct Held {
    name: String,
    dir: PathBuf,
    max_bytes: u64,
    lock: File,
}

impl CacheLease {
    /// After the attempt: clear every cache above its max-size (saying so in
    /// the action's log and on stderr), record the time of use, and unlock.
    /// Sizing walks the whole tree, so it runs on a blocking thread.
    pub async fn release(self, log: &LogSink) {
        // Most actions hold no cache: no blocking thread to wake and wait for.
        if self.held.is_empty() {
            return;
        }
        let log = log.clone();
        let released = tokio::task::spawn_blocking(move || {
            for held in self.held {
                held.enforce_cap(&log);
                // The lock file's mtime is the cache's "last used"; not worth failing for.
                held.lock.set_modified(SystemTime::now()).ok();
            }
        });
        if let Err(e) = released.await {
            tracing::error!("releasing caches failed: {e}");
        }
    }
}

impl Held {
    fn enforce_cap(&self, log: &LogSink) {
        let bytes = size_of(&self.dir);
        if bytes <= self.max_bytes {
            return;
        }
        let message = match remove_tree(&self.dir) {
            Ok(()) => format!(
                "cache `{}` holds {}, above its max-size of {}: cleared it",
                self.name,
                format_bytes(bytes),
                format_bytes(self.max_bytes)
            ),
            Err(e) => format!(
                "cache `{}` holds {}, above its max-size of {}, and clearing it failed: {e:#}",
                self.name,
                format_bytes(bytes),
                format_bytes(self.max_bytes)
            ),
        };
        log.line(LogStream::Host, &format!("warning: {message}"));
        tracing::warn!("{message}");
    }
}

fn open_lock(path: &Path) -> std::io::Result<File> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    // Never truncated or deleted: a waiter holds the same inode, and a lock on
    // a deleted file would protect nothing.
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
}

/// Apparent size of the files under `dir` (symlinks not followed); 0 if absent.
fn size_of(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .follow_links(false)
        .into_iter()
        .flatten()
        .filter(|e| !e.file_type().is_dir())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Delete a tree (tools such as Go's module cache leave read-only directories).
fn remove_tree(dir: &Path) -> anyhow::Result<()> {
    sluice_store::artifact::remove_tree(dir).map(|_| ())
}

fn sorted_entries(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<Vec<_>, _>>()?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    entries.sort();
    Ok(entries)
}

fn file_name(path: &Path) -> Option<String> {
    path.file_name()?.to_str().map(str::to_string)
}

fn modified_ms(path: &Path) -> Option<i64> {
    let modified = path.metadata().ok()?.modified().ok()?;
    let since = modified.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    i64::try_from(since.as_millis()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_cannot_be_paths_are_refused() {
        assert!(is_cache_name("cargo-target_1"));
        assert!(!is_cache_name("../x"));
        assert!(!is_cache_name("a.b"));
        assert!(!is_cache_name(""));
    }

    #[test]
    fn clearing_removes_read_only_trees_and_lists_the_rest() {
        use std::os::unix::fs::PermissionsExt;
        let data = tempfile::tempdir().unwrap();
        let store = CacheStore::under(data.path());
        for name in ["go", "npm"] {
            let dir = store.dir("p", name);
            std::fs::create_dir_all(dir.join("pkg")).unwrap();
            std::fs::write(dir.join("pkg/file"), "12345").unwrap();
        }
        let pkg = store.dir("p", "go").join("pkg");
        std::fs::set_permissions(&pkg, std::fs::Permissions::from_mode(0o500)).unwrap();
        assert_eq!(store.clear("p", "go", || panic!("not busy")).unwrap(), 5);
        let listed = store.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].cache.as_str(), listed[0].bytes), ("npm", 5));
    }
}
