//! `sluice bench`: measures the figures BENCHMARKS.md reports, on this machine, in
//! one run, through the same executor, sandbox and durable state as `sluice run`.
//!
//! It installs the packaged plugins it is given into a scratch data directory
//! (timing the install-time precompile), then measures per-action overhead against
//! the fork+exec floor, throughput, plugin load, artifact handoff and ingest, and
//! peak memory with many concurrent sleeping actions.

mod scale_out;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use sluice_core::pipeline::{ActionPlan, ExecutionMode, Grants, Plan, RetryPolicy, StagePlan};
use sluice_core::plugin::{InstalledPlugin, PluginRef, Registry};
use sluice_core::units::{format_bytes, format_duration};
use sluice_engine::executor::{Event, Executor};
use sluice_sandbox::limits::Limits;
use sluice_sandbox::log::LogSink;
use sluice_sandbox::{Invocation, Runtime, SandboxSpec};
use sluice_store::artifact::ArtifactStore;
use sluice_store::secrets::{Masker, SecretSource};
use sluice_store::state::{Durability, SqliteStore};

/// What to measure, and how much.
pub struct BenchOptions {
    /// Directory of packaged plugins (`<name>/plugin.toml` + component); must hold `noop`.
    pub plugins: PathBuf,
    /// Scratch directory (on the filesystem artifacts would live on).
    pub scratch: PathBuf,
    /// Sequential no-op actions timed for the overhead figure.
    pub actions: usize,
    /// Executions of 3 stages x 5 actions for the throughput figure.
    pub executions: usize,
    /// Largest artifact for the handoff figure, in bytes.
    pub max_artifact: u64,
    /// Concurrent sleeping actions for the memory figure.
    pub sleepers: usize,
    /// Measure only the native-command sandbox (no plugins needed).
    pub native_only: bool,
    /// A PostgreSQL database for the scale-out figures (a schema is created
    /// and dropped per figure); `None` skips them.
    pub postgres: Option<String>,
    /// A bucket for the handoff-between-machines figure; `None` skips it.
    pub remote: Option<String>,
}

/// One measured figure.
pub struct Figure {
    /// What was measured.
    pub name: String,
    /// The result, for people.
    pub value: String,
    /// The target, if the brief sets one.
    pub target: String,
}

struct Bench {
    runtime: Arc<Runtime>,
    registry: Registry,
    scratch: PathBuf,
    figures: Vec<Figure>,
}

/// Run every benchmark and return the figures in report order.
pub async fn run(options: &BenchOptions) -> anyhow::Result<Vec<Figure>> {
    std::fs::create_dir_all(&options.scratch)?;
    if options.native_only {
        return native_sandbox(&options.scratch, options.actions.min(500));
    }
    let mut bench = Bench {
        runtime: Arc::new(Runtime::new()?),
        registry: Registry::open(&options.scratch.join("plugins"))?,
        scratch: options.scratch.clone(),
        figures: Vec::new(),
    };
    // Memory first, with only `noop` installed: the process's peak RSS is a
    // high-water mark that compiling large plugins or hashing large artifacts
    // would otherwise raise.
    bench.install_all(&options.plugins, |name| name == "noop")?;
    let noop = bench.plugin("noop")?;
    bench.memory(&noop, options.sleepers).await?;
    bench.install_all(&options.plugins, |name| name != "noop")?;
    bench
        .overhead(&noop, options.actions, Durability::Crash)
        .await?;
    bench
        .throughput(&noop, options.executions, Durability::Crash)
        .await?;
    // Synced commits cost a disk flush each (~0.2 ms here): fewer actions.
    let synced = options.actions.min(300);
    bench.overhead(&noop, synced, Durability::PowerLoss).await?;
    bench
        .throughput(&noop, options.executions, Durability::PowerLoss)
        .await?;
    bench.plugin_loads()?;
    bench.handoff(&noop, options.max_artifact).await?;
    if let Some(database) = &options.postgres {
        bench
            .scale_out(database, options.executions.min(100))
            .await?;
    }
    if let Some(url) = &options.remote {
        bench.remote_handoff(url).await?;
    }
    bench
        .figures
        .extend(native_sandbox(&options.scratch, options.actions.min(500))?);
    Ok(bench.figures)
}

impl Bench {
    fn record(
        &mut self,
        name: impl Into<String>,
        value: impl Into<String>,
        target: impl Into<String>,
    ) {
        let figure = Figure {
            name: name.into(),
            value: value.into(),
            target: target.into(),
        };
        println!(
            "{:<58} {:<44} target: {}",
            figure.name, figure.value, figure.target
        );
        self.figures.push(figure);
    }

    /// Install every packaged plugin, timing the install-time precompile.
    fn install_all(
        &mut self,
        packaged: &Path,
        wanted: impl Fn(&str) -> bool,
    ) -> anyhow::Result<()> {
        for source in Registry::sources(packaged)? {
            let plan = self.registry.plan(&source)?;
            if !wanted(&plan.manifest.name) {
                continue;
            }
            let size = std::fs::metadata(source.join(&plan.manifest.component))?.len();
            let started = Instant::now();
            let installed = self
                .registry
                .install(&source, &plan, self.runtime.as_ref())?;
            let elapsed = started.elapsed();
            self.record(
                format!(
                    "install + precompile {} ({})",
                    installed.id(),
                    format_bytes(size)
                ),
                format_duration(elapsed),
                "once, at install",
            );
        }
        Ok(())
    }

    fn plugin(&self, name: &str) -> anyhow::Result<InstalledPlugin> {
        let reference = PluginRef::parse(name).map_err(anyhow::Error::msg)?;
        Ok(self.registry.resolve(&reference)??)
    }

    fn executor(
        &self,
        name: &str,
        durability: Durability,
        events: sluice_engine::executor::EventSink,
    ) -> anyhow::Result<Arc<Executor>> {
        let data = self.scratch.join(format!("{name}-{durability:?}"));
        let state = Arc::new(SqliteStore::open_with(&data.join("state.db"), durability)?);
        Ok(Executor::new(
            self.runtime.clone(),
            ArtifactStore::open(&data.join("artifacts"))?,
            state,
            SecretSource::default(),
            data.join("work"),
            events,
            Default::default(),
        ))
    }

    /// Per-action host overhead with durable state, against fork+exec of /bin/true.
    async fn overhead(
        &mut self,
        noop: &InstalledPlugin,
        actions: usize,
        durability: Durability,
    ) -> anyhow::Result<()> {
        let durations = Arc::new(Mutex::new(Vec::new()));
        let sink = durations.clone();
        let executor = self.executor(
            "overhead",
            durability,
            Arc::new(move |event| {
                if let Event::ActionFinished { duration, .. } = event {
                    sink.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(duration);
                }
            }),
        )?;
        // One stage per action keeps them strictly sequential.
        let warmup = plan("warmup", noop, 1, 20, &[]);
        executor.run(Arc::new(warmup), &BTreeMap::new()).await?;
        durations.lock().unwrap_or_else(|e| e.into_inner()).clear();
        let measured = plan("overhead", noop, actions, 1, &[]);
        let started = Instant::now();
        executor.run(Arc::new(measured), &BTreeMap::new()).await?;
        let per_stage = started.elapsed() / actions.max(1) as u32;
        let mut host = std::mem::take(&mut *durations.lock().unwrap_or_else(|e| e.into_inner()));
        let mut floor = fork_exec_floor(actions.min(500))?;
        let (host_p50, host_p99) = percentiles(&mut host);
        let (floor_p50, floor_p99) = percentiles(&mut floor);
        let durable = durable_against(durability);
        self.record(
            format!("no-op action, warm, SQLite {durable} (n={})", host.len()),
            format!("p50 {} / p99 {}", micros(host_p50), micros(host_p99)),
            "p50 <= 150 us",
        );
        self.record(
            format!("the same, wall time per one-action stage, {durable}"),
            format!("mean {}", micros(per_stage)),
            "-",
        );
        if durability == Durability::PowerLoss {
            return Ok(());
        }
        self.record(
            format!("floor: fork+exec /bin/true (n={})", floor.len()),
            format!("p50 {} / p99 {}", micros(floor_p50), micros(floor_p99)),
            "-",
        );
        let ratio = host_p50.as_secs_f64() / floor_p50.as_secs_f64().max(1e-9);
        self.record(
            "ratio: no-op action p50 / fork+exec p50",
            format!("{ratio:.2}x"),
            "<= 0.2x",
        );
        Ok(())
    }

    /// Full executions of 3 stages x 5 parallel actions.
    async fn throughput(
        &mut self,
        noop: &InstalledPlugin,
        executions: usize,
        durability: Durability,
    ) -> anyhow::Result<()> {
        let executor = self.executor("throughput", durability, Arc::new(|_| {}))?;
        let durable = durable_against(durability);
        let shape = Arc::new(plan("throughput", noop, 3, 5, &[]));
        executor.run(shape.clone(), &BTreeMap::new()).await?;
        let started = Instant::now();
        for _ in 0..executions {
            executor.run(shape.clone(), &BTreeMap::new()).await?;
        }
        let sequential = (executions * 15) as f64 / started.elapsed().as_secs_f64();
        self.record(
            format!("throughput, {executions} executions one after another, {durable}"),
            format!("{sequential:.0} actions/s"),
            ">= 5,000 actions/s",
        );
        let started = Instant::now();
        let mut running = tokio::task::JoinSet::new();
        for _ in 0..executions {
            let (executor, shape) = (executor.clone(), shape.clone());
            running.spawn(async move { executor.run(shape, &BTreeMap::new()).await });
        }
        while let Some(result) = running.join_next().await {
            result??;
        }
        let concurrent = (executions * 15) as f64 / started.elapsed().as_secs_f64();
        self.record(
            format!("throughput, {executions} executions at once, {durable}"),
            format!("{concurrent:.0} actions/s"),
            ">= 5,000 actions/s",
        );
        Ok(())
    }

    /// Load of each installed plugin by a fresh engine, as on a first execution.
    fn plugin_loads(&mut self) -> anyhow::Result<()> {
        for plugin in self.registry.list()? {
            let runtime = Runtime::new()?;
            let cached = plugin.precompiled_path(runtime.compatibility_key());
            let started = Instant::now();
            runtime.load(&plugin.component_path(), &cached)?;
            let elapsed = started.elapsed();
            let compiled = if runtime.compilations() > 0 {
                " (compiled!)"
            } else {
                ""
            };
            let target = match plugin.manifest.language.as_deref() {
                None | Some("rust") => "<= 5 ms",
                Some(_) => "<= 50 ms",
            };
            self.record(
                format!("first-execution load of {}{compiled}", plugin.id()),
                micros(elapsed),
                target,
            );
        }
        Ok(())
    }

    /// Handing an artifact to the next action (preopen from the store) and
    /// ingesting one (digest + rename), against `cp -r` of the same tree.
    async fn handoff(&mut self, noop: &InstalledPlugin, max_bytes: u64) -> anyhow::Result<()> {
        let store = ArtifactStore::open(&self.scratch.join("handoff-store"))?;
        let loaded = self.runtime.load(
            &noop.component_path(),
            &noop.precompiled_path(self.runtime.compatibility_key()),
        )?;
        let baseline = self.time_invocations(&loaded, None, 50).await?;
        for size in [1u64 << 20, 100 << 20, 1 << 30]
            .into_iter()
            .filter(|s| *s <= max_bytes)
        {
            let tree = self.scratch.join(format!("tree-{size}"));
            write_tree(&tree, size)?;
            let copy = self.scratch.join(format!("copy-{size}"));
            let started = Instant::now();
            let status = std::process::Command::new("cp")
                .arg("-r")
                .arg(&tree)
                .arg(&copy)
                .status()?;
            anyhow::ensure!(status.success(), "cp -r failed");
            let cp = started.elapsed();
            std::fs::remove_dir_all(&copy).ok();
            let started = Instant::now();
            let info = store.ingest(&tree)?;
            let ingest = started.elapsed();
            let input = store.path_of(&info.digest);
            let with_input = self.time_invocations(&loaded, Some(&input), 50).await?;
            let handoff = with_input.saturating_sub(baseline);
            self.record(
                format!("artifact handoff, {}", format_bytes(size)),
                format!(
                    "{} (no-op with it as input {} vs without {})",
                    micros(handoff),
                    micros(with_input),
                    micros(baseline)
                ),
                "O(1); 1 GiB <= 10 ms",
            );
            let rate = |d: Duration| {
                format!(
                    "{:.0} MiB/s",
                    size as f64 / (1 << 20) as f64 / d.as_secs_f64()
                )
            };
            self.record(
                format!(
                    "ingest of {} output (blake3 + rename) vs cp -r",
                    format_bytes(size)
                ),
                format!(
                    "{} ({}) vs {} ({})",
                    micros(ingest),
                    rate(ingest),
                    micros(cp),
                    rate(cp)
                ),
                "-",
            );
        }
        Ok(())
    }

    /// Median time of `n` no-op invocations, optionally with one input artifact.
    async fn time_invocations(
        &self,
        plugin: &sluice_sandbox::LoadedPlugin,
        input: Option<&Path>,
        n: usize,
    ) -> anyhow::Result<Duration> {
        let workspace = self.scratch.join("handoff-workspace");
        std::fs::create_dir_all(&workspace)?;
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let inputs: Vec<(String, PathBuf)> = input
                .map(|p| vec![("payload".to_string(), p.to_path_buf())])
                .unwrap_or_default();
            let spec = noop_spec(inputs, &workspace);
            let started = Instant::now();
            self.runtime
                .invoke(plugin, spec)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            times.push(started.elapsed());
        }
        Ok(percentiles(&mut times).0)
    }

    /// Peak RSS while many actions sleep concurrently.
    async fn memory(&mut self, noop: &InstalledPlugin, sleepers: usize) -> anyhow::Result<()> {
        let before = rss_kib("VmRSS");
        let executor = self.executor("memory", Durability::Crash, Arc::new(|_| {}))?;
        let sleeping = plan("memory", noop, 1, sleepers, &[("sleep-ms", "2000")]);
        executor.run(Arc::new(sleeping), &BTreeMap::new()).await?;
        let peak = rss_kib("VmHWM");
        self.record(
            format!("peak RSS, {sleepers} concurrent sleeping actions"),
            format!(
                "{} (process RSS before: {})",
                format_bytes(peak * 1024),
                format_bytes(before * 1024)
            ),
            "<= 300 MB",
        );
        let per_action = peak.saturating_sub(before) * 1024 / sleepers.max(1) as u64;
        self.record(
            "peak RSS added per sleeping action",
            format_bytes(per_action),
            "-",
        );
        Ok(())
    }
}

/// How a figure's commits were made durable, for its name.
fn durable_against(durability: Durability) -> &'static str {
    match durability {
        Durability::Crash => "crash-durable",
        Durability::PowerLoss => "power-loss-durable",
    }
}

/// A plan of `stages` stages, each with `per_stage` parallel no-op actions.
fn plan(
    name: &str,
    noop: &InstalledPlugin,
    stages: usize,
    per_stage: usize,
    config: &[(&str, &str)],
) -> Plan {
    let stage = |s: usize| StagePlan {
        conditions: Default::default(),
        name: format!("s{s}"),
        actions: (0..per_stage)
            .map(|a| ActionPlan {
                name: format!("s{s}a{a}"),
                stage: format!("s{s}"),
                run_order: 1,
                kind: sluice_core::pipeline::ActionKind::Plugin(Box::new(noop.clone())),
                inputs: Vec::new(),
                outputs: Vec::new(),
                namespace: None,
                config: config
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                grants: Grants::default(),
                limits: Limits::default(),
                retry: RetryPolicy::default(),
                on_restart: Default::default(),
            })
            .collect(),
    };
    Plan {
        name: name.to_string(),
        file: PathBuf::from(format!("<bench:{name}>")),
        execution_mode: ExecutionMode::Parallel,
        max_executions: usize::MAX,
        triggers: Default::default(),
        notifications: None,
        queue_depth: usize::MAX,
        variables: BTreeMap::new(),
        source: "".into(),
        caches: BTreeMap::new(),
        stages: (0..stages).map(stage).collect(),
    }
}

fn noop_spec(inputs: Vec<(String, PathBuf)>, workspace: &Path) -> SandboxSpec {
    SandboxSpec {
        invocation: Invocation {
            pipeline: "bench".into(),
            stage: "bench".into(),
            action: "noop".into(),
            execution_id: "bench".into(),
            attempt: 1,
            config: Vec::new(),
            inputs: inputs.iter().map(|(n, _)| n.clone()).collect(),
            outputs: Vec::new(),
            mounts: Vec::new(),
            continuation: None,
        },
        inputs,
        outputs: Vec::new(),
        workspace: workspace.to_path_buf(),
        mounts: Vec::new(),
        caches: Vec::new(),
        secret_names: Vec::new(),
        secret_values: Default::default(),
        hosts: Vec::new(),
        commands: Vec::new(),
        inherit_env: Vec::new(),
        toolchains: Vec::new(),
        run_as_root: false,
        limits: Limits::default(),
        log: LogSink::new(1 << 20, Arc::new(Masker::default()), None),
    }
}

/// Write `size` bytes as 1 MiB files (a tree, like a build output).
fn write_tree(dir: &Path, size: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let chunk: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let files = (size / chunk.len() as u64).max(1);
    for i in 0..files {
        let sub = dir.join(format!("d{}", i % 16));
        std::fs::create_dir_all(&sub)?;
        let mut data = chunk.clone();
        data[..8].copy_from_slice(&i.to_le_bytes());
        std::fs::write(sub.join(format!("f{i}.bin")), &data)
            .with_context(|| format!("writing {}", dir.display()))?;
    }
    Ok(())
}

/// What the native-command sandbox adds per command: `/bin/true` through the
/// launcher (namespaces, `/proc`, Landlock), through the launcher with the
/// sandbox off (the re-exec alone), and plain fork+exec, in the same run.
fn native_sandbox(scratch: &Path, n: usize) -> anyhow::Result<Vec<Figure>> {
    let workspace = scratch.join("native-workspace");
    std::fs::create_dir_all(&workspace)?;
    let mut floor = fork_exec_floor(n)?;
    let mut sandboxed = launcher_runs(&workspace, n, true)?;
    let mut unsandboxed = launcher_runs(&workspace, n, false)?;
    let (floor_p50, floor_p99) = percentiles(&mut floor);
    let (sandboxed_p50, sandboxed_p99) = percentiles(&mut sandboxed);
    let (plain_p50, plain_p99) = percentiles(&mut unsandboxed);
    let figure = |name: String, value: String, target: &str| {
        println!("{name:<58} {value:<44} target: {target}");
        Figure {
            name,
            value,
            target: target.to_string(),
        }
    };
    let ratio = sandboxed_p50.as_secs_f64() / floor_p50.as_secs_f64().max(1e-9);
    Ok(vec![
        figure(
            format!("floor: fork+exec /bin/true (n={n})"),
            format!("p50 {} / p99 {}", micros(floor_p50), micros(floor_p99)),
            "-",
        ),
        figure(
            format!("native command, launcher, sandbox off (n={n})"),
            format!("p50 {} / p99 {}", micros(plain_p50), micros(plain_p99)),
            "-",
        ),
        figure(
            format!("native command, sandboxed: namespaces + Landlock (n={n})"),
            format!(
                "p50 {} / p99 {}",
                micros(sandboxed_p50),
                micros(sandboxed_p99)
            ),
            "-",
        ),
        figure(
            "ratio: sandboxed command p50 / fork+exec p50".to_string(),
            format!("{ratio:.1}x"),
            "measured, not a target",
        ),
    ])
}

/// Run `/bin/true` `n` times through `sluice __sandbox-exec`, as the process
/// capability does.
fn launcher_runs(workspace: &Path, n: usize, sandboxed: bool) -> anyhow::Result<Vec<Duration>> {
    use sluice_sandbox::identity::{CommandUser, hand_over};
    use sluice_sandbox::launcher::{LAUNCHER_ARG, LaunchSpec};
    use std::io::Write as _;
    // As in an action: a root host drops to a command user, handed the workspace.
    let user = sandboxed.then(|| CommandUser::for_action(false)).flatten();
    if let Some(user) = &user {
        hand_over(user.uid(), &[workspace.to_path_buf()])?;
    }
    let spec = LaunchSpec {
        program: PathBuf::from("/bin/true"),
        argv0: "true".into(),
        args: Vec::new(),
        cwd: workspace.to_path_buf(),
        env: Vec::new(),
        host_pid: std::process::id(),
        share_network: false,
        max_processes: 4096,
        max_open_files: 4096,
        max_memory: sluice_sandbox::limits::DEFAULT_COMMAND_MEMORY,
        max_memory_set: false,
        read_only: Vec::new(),
        read_write: vec![workspace.to_path_buf()],
        user: user.as_ref().map(CommandUser::uid),
        sandboxed,
    };
    let json = serde_json::to_vec(&spec)?;
    let exe = std::env::current_exe()?;
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let mut child = std::process::Command::new(&exe)
            .arg(LAUNCHER_ARG)
            .env_clear()
            .stdin(std::process::Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .context("launcher stdin")?
            .write_all(&json)?;
        let status = child.wait()?;
        times.push(started.elapsed());
        anyhow::ensure!(status.success(), "the launcher failed: {status}");
    }
    Ok(times)
}

fn fork_exec_floor(n: usize) -> anyhow::Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let status = std::process::Command::new("/bin/true").status()?;
        times.push(started.elapsed());
        anyhow::ensure!(status.success(), "/bin/true failed");
    }
    Ok(times)
}

/// (p50, p99) of the samples.
fn percentiles(samples: &mut [Duration]) -> (Duration, Duration) {
    if samples.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    samples.sort();
    let at = |p: f64| {
        samples[((samples.len() as f64 * p).ceil() as usize)
            .saturating_sub(1)
            .min(samples.len() - 1)]
    };
    (at(0.50), at(0.99))
}

fn micros(duration: Duration) -> String {
    match duration.as_secs_f64() * 1e6 {
        us if us < 10_000.0 => format!("{us:.1} µs"),
        us => format!("{:.1} ms", us / 1000.0),
    }
}

/// A field of /proc/self/status, in KiB.
fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A description of this machine for the report.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let memory = rss_from_meminfo();
    format!(
        "{cpu}, {cores} cores, {memory}, {} {}",
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

fn rss_from_meminfo() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map(|kib| format_bytes(kib * 1024))
        .unwrap_or_else(|| "unknown memory".into())
}
