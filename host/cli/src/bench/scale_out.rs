//! The scale-out figures: actions per second with the state in PostgreSQL and
//! 1, 2 and 4 `sluice worker` processes (next to the server process running
//! them itself, and to SQLite measured earlier in the same run), and the
//! handoff of a 100 MiB artifact between two machines through the bucket.

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use sluice_core::units::format_bytes;
use sluice_engine::executor::{Executor, Placement, Sharing};
use sluice_store::artifact::ArtifactStore;
use sluice_store::remote::RemoteArtifacts;
use sluice_store::secrets::SecretSource;
use sluice_store::state::PostgresStore;

use super::{Bench, micros, percentiles, write_tree};

/// Executions timed one at a time for the latency figures.
const LATENCY_RUNS: usize = 5;

/// Attempts each worker process runs at once.
const WORKER_CONCURRENCY: &str = "16";

/// A schema of its own on the benchmark's database, dropped afterwards.
struct BenchSchema {
    admin: String,
    name: String,
    url: String,
}

impl BenchSchema {
    fn create(database: &str) -> anyhow::Result<Self> {
        let name = format!("sluice_bench_{}", uuid::Uuid::new_v4().simple());
        let separator = if database.contains('?') { '&' } else { '?' };
        let schema = Self {
            url: format!("{database}{separator}options=-csearch_path%3D{name}"),
            admin: database.to_string(),
            name,
        };
        schema.execute(&format!("CREATE SCHEMA {}", schema.name))?;
        Ok(schema)
    }

    fn execute(&self, sql: &str) -> anyhow::Result<()> {
        let (admin, sql) = (self.admin.clone(), sql.to_string());
        // The postgres client drives its own runtime: not on a tokio worker.
        std::thread::spawn(move || -> anyhow::Result<()> {
            let mut client = postgres::Client::connect(&admin, postgres::NoTls)
                .with_context(|| format!("connecting to {admin}"))?;
            client.batch_execute(&sql)?;
            Ok(())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the schema thread panicked"))?
    }
}

impl Drop for BenchSchema {
    fn drop(&mut self) {
        let _ = self.execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
    }
}

/// `sluice worker` processes, killed when dropped.
struct Workers(Vec<Child>);

impl Workers {
    fn spawn(count: usize, database: &str, scratch: &Path, plugins: &Path) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let mut workers = Self(Vec::new());
        for i in 0..count {
            let mut child = Command::new(&exe)
                .arg("--data-dir")
                .arg(scratch.join(format!("worker-{i}")))
                .arg("--plugins")
                .arg(plugins)
                .args(["--database", database, "worker", "--concurrency"])
                .arg(WORKER_CONCURRENCY)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()?;
            let mut ready = String::new();
            std::io::BufReader::new(child.stdout.take().context("worker stdout")?)
                .read_line(&mut ready)?;
            anyhow::ensure!(ready.contains("ready"), "worker {i} said {ready:?}");
            workers.0.push(child);
        }
        Ok(workers)
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Pipeline text of 3 stages x 5 parallel no-op actions: workers parse it.
fn pipeline_text() -> String {
    let mut text = String::from(
        "[pipeline]\nname = \"scale-out\"\nexecution-mode = \"parallel\"\nmax-executions = 100000\n",
    );
    for stage in 0..3 {
        text.push_str(&format!("[[stages]]\nname = \"s{stage}\"\n"));
        for action in 0..5 {
            text.push_str(&format!(
                "[[stages.actions]]\nname = \"s{stage}a{action}\"\nplugin = \"noop\"\n"
            ));
        }
    }
    text
}

impl Bench {
    /// Actions per second on PostgreSQL: in the server process, then with
    /// 1, 2 and 4 worker processes doing the work.
    pub(super) async fn scale_out(
        &mut self,
        database: &str,
        executions: usize,
    ) -> anyhow::Result<()> {
        let label = Path::new("scale-out.toml");
        let plan =
            sluice_core::pipeline::parse(label, pipeline_text(), &self.registry, &self.scratch)
                .map_err(|d| anyhow::anyhow!("{d}"))?;
        let plan = Arc::new(plan);
        for workers in [0, 1, 2, 4] {
            let (latency, rate) = self
                .postgres_throughput(database, &plan, workers, executions)
                .await?;
            let who = match workers {
                0 => "in the server process".to_string(),
                n => format!("{n} worker process(es)"),
            };
            self.record(
                format!("latency, PostgreSQL, {who}, one execution alone (p50 of {LATENCY_RUNS})"),
                format!("{:.1} ms", latency.as_secs_f64() * 1000.0),
                "-",
            );
            self.record(
                format!("throughput, PostgreSQL, {who}, {executions} executions at once"),
                format!("{rate:.0} actions/s"),
                "-",
            );
        }
        Ok(())
    }

    async fn postgres_throughput(
        &mut self,
        database: &str,
        plan: &Arc<sluice_core::pipeline::Plan>,
        workers: usize,
        executions: usize,
    ) -> anyhow::Result<(Duration, f64)> {
        let schema = BenchSchema::create(database)?;
        let data = self.scratch.join(format!("postgres-{workers}"));
        let state = {
            let (url, key) = (schema.url.clone(), data.join("continuation.key"));
            tokio::task::spawn_blocking(move || PostgresStore::connect(&url, &key)).await??
        };
        let placement = match workers {
            0 => Placement::Here,
            _ => Placement::Workers,
        };
        let executor = Executor::new(
            self.runtime.clone(),
            ArtifactStore::open(&data.join("artifacts"))?,
            Arc::new(state),
            SecretSource::default(),
            data.join("work"),
            Arc::new(|_| {}),
            Sharing {
                placement,
                remote: None,
            },
        );
        let plugins = self.scratch.join("plugins");
        let _workers = Workers::spawn(workers, &schema.url, &data, &plugins)?;
        executor.run(plan.clone(), &BTreeMap::new()).await?;
        // One execution at a time on an idle system: what handing each
        // attempt to a worker and its result back adds to a pipeline's wall time.
        let mut alone = Vec::new();
        for _ in 0..LATENCY_RUNS {
            let started = Instant::now();
            executor.run(plan.clone(), &BTreeMap::new()).await?;
            alone.push(started.elapsed());
        }
        alone.sort();
        let latency = alone[alone.len() / 2];
        let started = Instant::now();
        let mut running = tokio::task::JoinSet::new();
        for _ in 0..executions {
            let (executor, plan) = (executor.clone(), plan.clone());
            running.spawn(async move { executor.run(plan, &BTreeMap::new()).await });
        }
        while let Some(result) = running.join_next().await {
            let result = result??;
            anyhow::ensure!(
                result.error.is_none(),
                "a benchmark execution failed: {result:?}"
            );
        }
        let rate = (executions * 15) as f64 / started.elapsed().as_secs_f64();
        Ok((latency, rate))
    }

    /// A 100 MiB artifact from one machine's store to another's through the
    /// bucket: upload, then download with its digest checked.
    pub(super) async fn remote_handoff(&mut self, url: &str) -> anyhow::Result<()> {
        const SIZE: u64 = 100 << 20;
        let remote = RemoteArtifacts::open(url)?;
        let (from, to) = (
            ArtifactStore::open(&self.scratch.join("remote-from"))?,
            ArtifactStore::open(&self.scratch.join("remote-to"))?,
        );
        let mut times: Vec<Duration> = Vec::new();
        let mut local: Vec<Duration> = Vec::new();
        for round in 0..5 {
            let tree = self.scratch.join(format!("remote-tree-{round}"));
            write_tree(&tree, SIZE)?;
            // Each round its own content: nothing is already in the bucket.
            std::fs::write(
                tree.join("round"),
                format!("{round} {}", uuid::Uuid::new_v4()),
            )?;
            let copy = self.scratch.join(format!("remote-copy-{round}"));
            let started = Instant::now();
            let status = Command::new("cp")
                .arg("-r")
                .arg(&tree)
                .arg(&copy)
                .status()?;
            anyhow::ensure!(status.success(), "cp -r failed");
            local.push(started.elapsed());
            std::fs::remove_dir_all(&copy).ok();
            let info = from.ingest(&tree)?;
            let started = Instant::now();
            remote.upload(&from, &info.digest).await?;
            remote.download(&to, &info.digest).await?;
            times.push(started.elapsed());
        }
        let (p50, _) = percentiles(&mut times);
        let (floor, _) = percentiles(&mut local);
        let rate = SIZE as f64 / (1 << 20) as f64 / p50.as_secs_f64();
        self.record(
            format!(
                "handoff between machines through {}, {} (n={})",
                remote.url(),
                format_bytes(SIZE),
                times.len()
            ),
            format!(
                "p50 {} ({rate:.0} MiB/s); cp -r here {} ({:.1}x)",
                micros(p50),
                micros(floor),
                p50.as_secs_f64() / floor.as_secs_f64().max(1e-9)
            ),
            "-",
        );
        Ok(())
    }
}
