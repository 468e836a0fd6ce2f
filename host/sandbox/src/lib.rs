//! The sandbox runtime: runs one action invocation as a WASI 0.2 component.
//!
//! One [`Runtime`] (engine + linker) serves the whole process; each plugin is
//! loaded once into an [`ActionPre`] and every invocation gets a fresh `Store`.
//! What the guest can reach is assembled from the action's grants by one module
//! per capability, each with the same shape: a `*Capability` struct built
//! `from_grant`, stored in [`SandboxState`], implementing the WIT host trait:
//! [`filesystem`], [`files`], [`log`], [`secrets`], [`process`], [`http`], [`limits`].

#![deny(missing_docs)]

pub mod files;
pub mod filesystem;
pub mod http;
pub mod identity;
pub mod launcher;
pub mod limits;
pub mod log;
pub mod memory;
pub mod mount_view;
pub mod process;
pub mod secrets;
pub mod symlinks;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, UpdateDeadline,
};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use self::files::FilesCapability;
use self::filesystem::{FilesystemCapability, Mount};
use self::http::HttpCapability;
use self::limits::{CpuBudget, EPOCH_TICK, LimitHit, Limits, MemoryLimiter};
use self::log::{LogSink, LogStream};
use self::process::{ProcessCapability, ProcessGrant};
use self::secrets::SecretsCapability;
use self::symlinks::SymlinkGuard;
use sluice_core::plugin::write_atomically;

/// Host bindings generated from `wit/action.wit` (documented there).
#[allow(missing_docs)]
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "action",
        imports: { default: async | trappable },
        exports: { default: async },
    });
}

pub use bindings::sluice::action::types::Invocation;
use bindings::{Action, ActionPre};

/// Capability requests the sandbox refused. Any denial fails the action, so a
/// plugin probing for secrets or hosts cannot pass for a successful one.
#[derive(Clone, Default)]
pub struct Denials(Arc<Mutex<Vec<String>>>);

impl Denials {
    /// Record a denial and log it.
    pub fn record(&self, log: &LogSink, message: String) {
        log.line(LogStream::Host, &message);
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(message);
    }

    /// The first denial, if any.
    pub fn first(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .first()
            .cloned()
    }
}

/// What a rule plugin's `evaluate` answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleVerdict {
    /// Whether the rule passed.
    pub passed: bool,
    /// What it found, for people.
    pub detail: String,
}

/// Everything one invocation may touch, assembled from the action's grants.
pub struct SandboxSpec {
    /// What the guest is told.
    pub invocation: Invocation,
    /// Input artifact name → directory in the artifact store.
    pub inputs: Vec<(String, PathBuf)>,
    /// Output artifact name → fresh empty directory.
    pub outputs: Vec<(String, PathBuf)>,
    /// Fresh scratch directory.
    pub workspace: PathBuf,
    /// Granted host directories.
    pub mounts: Vec<Mount>,
    /// Granted caches: name → directory (locked by the caller), at `/cache/<name>`.
    pub caches: Vec<(String, PathBuf)>,
    /// Granted secret names.
    pub secret_names: Vec<String>,
    /// Values the host holds for the granted names.
    pub secret_values: HashMap<String, String>,
    /// Granted outbound HTTP host patterns.
    pub hosts: Vec<String>,
    /// Granted program names.
    pub commands: Vec<String>,
    /// Host environment variables native commands inherit.
    pub inherit_env: Vec<String>,
    /// Host directories native commands may read and execute (toolchains).
    pub toolchains: Vec<PathBuf>,
    /// Native commands keep the host's uid even when it is root.
    pub run_as_root: bool,
    /// Resource limits.
    pub limits: Limits,
    /// Where logs go.
    pub log: LogSink,
}

/// What kind of failure a plugin reported. Mirrors CodePipeline's failure types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The job itself failed.
    JobFailed,
    /// The configuration is wrong; retrying will not help.
    ConfigurationError,
    /// A needed capability was not granted.
    PermissionError,
    /// A source revision could not be fetched.
    RevisionUnavailable,
}

impl FailureKind {
    /// The kebab-case name used in the WIT contract and in stored state.
    pub fn name(self) -> &'static str {
        match self {
            FailureKind::JobFailed => "job-failed",
            FailureKind::ConfigurationError => "configuration-error",
            FailureKind::PermissionError => "permission-error",
            FailureKind::RevisionUnavailable => "revision-unavailable",
        }
    }
}

impl From<bindings::sluice::action::types::FailureKind> for FailureKind {
    fn from(kind: bindings::sluice::action::types::FailureKind) -> Self {
        use bindings::sluice::action::types::FailureKind as Wit;
        match kind {
            Wit::JobFailed => FailureKind::JobFailed,
            Wit::ConfigurationError => FailureKind::ConfigurationError,
            Wit::PermissionError => FailureKind::PermissionError,
            Wit::RevisionUnavailable => FailureKind::RevisionUnavailable,
        }
    }
}

/// Why an invocation did not succeed. Callers branch on it to decide retries.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ActionError {
    /// The plugin returned a failure.
    #[error("{}: {message}", kind.name())]
    Plugin {
        /// Its kind.
        kind: FailureKind,
        /// Its message (masked by the caller before storing).
        message: String,
    },
    /// The plugin asked for a capability it was not granted.
    #[error("{0}")]
    Denied(String),
    /// A resource limit stopped the plugin.
    #[error("{0}")]
    Limit(LimitHit),
    /// The plugin crashed (a WebAssembly trap).
    #[error("plugin crashed: {0}")]
    Trap(String),
    /// The host could not set up the sandbox.
    #[error("sandbox setup failed: {0}")]
    Host(String),
}

impl ActionError {
    /// Whether trying again might help.
    pub fn retryable(&self) -> bool {
        match self {
            ActionError::Plugin { kind, .. } => {
                matches!(
                    kind,
                    FailureKind::JobFailed | FailureKind::RevisionUnavailable
                )
            }
            ActionError::Limit(LimitHit::Timeout(_)) | ActionError::Trap(_) => true,
            ActionError::Host(_) => true,
            ActionError::Denied(_) | ActionError::Limit(_) => false,
        }
    }
}

/// A successful invocation's result, as the guest returned it.
#[derive(Clone, Debug, Default)]
pub struct ActionOutcome {
    /// One line for people.
    pub summary: String,
    /// Output variables.
    pub variables: Vec<(String, String)>,
    /// Set when the action asked to be called again: (token, delay).
    pub continuation: Option<(String, std::time::Duration)>,
}

/// The `T` of every `Store<T>`: one invocation's capabilities and accounting.
pub struct SandboxState {
    wasi: WasiCtx,
    http_ctx: WasiHttpCtx,
    http: HttpCapability,
    table: ResourceTable,
    memory: MemoryLimiter,
    cpu: CpuBudget,
    log: LogSink,
    secrets: SecretsCapability,
    process: ProcessCapability,
    files: FilesCapability,
    symlinks: SymlinkGuard,
    denials: Denials,
    /// What `continuation.resume-later` asked for.
    continuation: Option<(String, u64)>,
}

impl WasiView for SandboxState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for SandboxState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http_ctx,
            table: &mut self.table,
            hooks: &mut self.http,
        }
    }
}

impl bindings::sluice::action::types::Host for SandboxState {}

impl bindings::sluice::action::continuation::Host for SandboxState {
    async fn resume_later(&mut self, token: String, delay_ms: u64) -> wasmtime::Result<()> {
        self.continuation = Some((token, delay_ms));
        Ok(())
    }
}

/// A plugin compiled and linked, ready to instantiate many times.
#[derive(Clone)]
pub struct LoadedPlugin {
    pre: ActionPre<SandboxState>,
}

/// The engine, the linker and the cache of loaded plugins.
pub struct Runtime {
    engine: Engine,
    /// One permit per instance the pool holds: an invocation waits for one
    /// rather than fail when every slot is taken.
    slots: Arc<tokio::sync::Semaphore>,
    linker: Linker<SandboxState>,
    /// Loaded plugins by precompiled file. Each entry has a lock of its own,
    /// held while that plugin is deserialized (or compiled), so one plugin's
    /// load never waits for another's and a plugin is compiled once.
    loaded: Mutex<HashMap<PathBuf, Arc<Mutex<Option<LoadedPlugin>>>>>,
    compilations: AtomicU64,
    compatibility_key: String,
    /// How long instantiating a plugin took, per invocation.
    pub instantiations: sluice_core::metrics::Histogram,
}

impl Runtime {
    /// A runtime with [`DEFAULT_SANDBOX_SLOTS`].
    pub fn new() -> anyhow::Result<Self> {
        Self::with_slots(DEFAULT_SANDBOX_SLOTS)
    }

    /// A runtime with epoch interruption driven by a background ticker
    /// thread, for `slots` sandboxes at once.
    pub fn with_slots(slots: u32) -> anyhow::Result<Self> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        // Reusing pooled slots instead of mmap/munmap per invocation avoids a TLB
        // shootdown on every action end (measured: the largest kernel cost of a
        // no-op action). The pool is a hard cap on concurrent instances.
        config.memory_reservation(MAX_MEMORY_BYTES);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool_config(slots)));
        let engine =
            Engine::new(&config).map_err(|e| anyhow::anyhow!("creating the engine: {e}"))?;
        spawn_epoch_ticker(&engine)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| anyhow::anyhow!("linking WASI: {e}"))?;
        symlinks::add_to_linker(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| anyhow::anyhow!("linking wasi:http: {e}"))?;
        Action::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .map_err(|e| anyhow::anyhow!("linking sluice:action: {e}"))?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(Self {
            compatibility_key: format!("{:016x}", hasher.finish()),
            slots: Arc::new(tokio::sync::Semaphore::new(slots as usize)),
            engine,
            linker,
            loaded: Mutex::new(HashMap::new()),
            compilations: AtomicU64::new(0),
            instantiations: sluice_core::metrics::Histogram::default(),
        })
    }

    /// A key that changes whenever compiled code from another engine build or
    /// configuration would be unsafe to load here.
    pub fn compatibility_key(&self) -> &str {
        &self.compatibility_key
    }

    /// Compile a component ahead of time and check it fits the `action` world.
    pub fn precompile(&self, wasm: &[u8]) -> anyhow::Result<Vec<u8>> {
        self.compilations.fetch_add(1, Ordering::Relaxed);
        let compiled = self
            .engine
            .precompile_component(wasm)
            .map_err(|e| anyhow::anyhow!("not a valid component: {e}"))?;
        // SAFETY: these bytes were produced just now by this very engine.
        let component = unsafe { Component::deserialize(&self.engine, &compiled) }
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        self.link(&component)?;
        Ok(compiled)
    }

    /// How many components this runtime has compiled (precompiles included).
    pub fn compilations(&self) -> u64 {
        self.compilations.load(Ordering::Relaxed)
    }

    /// Load a plugin: from its precompiled file when present, else compile the
    /// component and write the precompiled file for next time. Cached per file.
    /// Blocking (deserializing takes milliseconds, compiling seconds): async
    /// callers look in [`Runtime::loaded`] first and run this off their workers.
    pub fn load(&self, component: &Path, precompiled: &Path) -> anyhow::Result<LoadedPlugin> {
        let entry = {
            let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
            loaded.entry(precompiled.to_path_buf()).or_default().clone()
        };
        let mut entry = entry.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(plugin) = entry.as_ref() {
            return Ok(plugin.clone());
        }
        if !precompiled.exists() {
            tracing::warn!(
                "{}: no precompiled code for this engine; compiling it now (install precompiles)",
                component.display()
            );
            let wasm = std::fs::read(component)
                .with_context(|| format!("reading {}", component.display()))?;
            let compiled = self.precompile(&wasm)?;
            write_atomically(precompiled, &compiled)?;
        }
        // SAFETY: only files this host wrote (at install, or just above) live at
        // `precompiled`, keyed by this engine's compatibility hash.
        let component = unsafe { Component::deserialize_file(&self.engine, precompiled) }
            .map_err(|e| anyhow::anyhow!("loading {}: {e}", precompiled.display()))?;
        let plugin = LoadedPlugin {
            pre: self.link(&component)?,
        };
        *entry = Some(plugin.clone());
        Ok(plugin)
    }

    /// The plugin [`Runtime::load`] already loaded from `precompiled`, if any:
    /// a map lookup, for callers that must not block on a load.
    pub fn loaded(&self, precompiled: &Path) -> Option<LoadedPlugin> {
        let entry = self
            .loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(precompiled)?
            .clone();
        entry.try_lock().ok()?.clone()
    }

    fn link(&self, component: &Component) -> anyhow::Result<ActionPre<SandboxState>> {
        let pre = self.linker.instantiate_pre(component).map_err(|e| {
            anyhow::anyhow!("the component does not fit world sluice:action/action: {e}")
        })?;
        ActionPre::new(pre).map_err(|e| anyhow::anyhow!("the component does not export `run`: {e}"))
    }

    /// A free sandbox slot, waited for (and said so in the log) when every
    /// one is taken: capacity delays an action, it never fails one.
    async fn slot(&self, log: &LogSink) -> tokio::sync::OwnedSemaphorePermit {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return permit;
        }
        log.line(
            LogStream::Host,
            "waiting for a free sandbox slot (all --sandbox-slots are in use)",
        );
        self.slots
            .clone()
            .acquire_owned()
            .await
            .expect("the slots semaphore is never closed")
    }

    /// Run one invocation in a fresh store.
    pub async fn invoke(
        &self,
        plugin: &LoadedPlugin,
        spec: SandboxSpec,
    ) -> Result<ActionOutcome, ActionError> {
        let limits = spec.limits;
        let invocation = spec.invocation.clone();
        let denials = Denials::default();
        let _slot = self.slot(&spec.log).await;
        let mut store = self.sandbox_store(spec, denials.clone())?;
        let result = {
            let call = async {
                let instantiating = std::time::Instant::now();
                let action = plugin.pre.instantiate_async(&mut store).await?;
                self.instantiations.observe(instantiating.elapsed());
                action.call_run(&mut store, &invocation).await
            };
            tokio::time::timeout(limits.timeout, call).await
        };
        let outcome = settle(result.map_err(|_| ()), store.data(), &limits, &denials)?;
        let continuation = store
            .data()
            .continuation
            .clone()
            .map(|(token, ms)| (token, std::time::Duration::from_millis(ms)));
        if let Ok(outcome) = &outcome {
            limits
                .check_outcome(&outcome.summary, &outcome.variables)
                .map_err(ActionError::Limit)?;
        }
        match outcome {
            Ok(outcome) => Ok(ActionOutcome {
                summary: outcome.summary,
                variables: outcome.variables,
                continuation,
            }),
            Err(failure) => Err(failure_error(failure)),
        }
    }

    /// Call a source plugin's `check` (world `source`) in a fresh sandbox with the
    /// same grants and limits as its `run`.
    pub async fn check(
        &self,
        plugin: &LoadedPlugin,
        spec: SandboxSpec,
        last_revision: Option<String>,
    ) -> Result<Vec<String>, ActionError> {
        type Checked = Result<Vec<String>, bindings::sluice::action::types::Failure>;
        let config = spec.invocation.config.clone();
        let export = ("check", "source");
        let answer: (Checked,) = self
            .call_export(plugin, spec, export, (config, last_revision))
            .await?;
        answer.0.map_err(failure_error)
    }

    /// Call a rule plugin's `evaluate` (world `rule`) in a fresh sandbox with
    /// its grants and limits: whether it passed, and why.
    pub async fn evaluate(
        &self,
        plugin: &LoadedPlugin,
        spec: SandboxSpec,
    ) -> Result<RuleVerdict, ActionError> {
        type Evaluated = Result<
            bindings::sluice::action::types::Verdict,
            bindings::sluice::action::types::Failure,
        >;
        let limits = spec.limits;
        let config = spec.invocation.config.clone();
        let answer: (Evaluated,) = self
            .call_export(plugin, spec, ("evaluate", "rule"), (config,))
            .await?;
        let verdict = answer.0.map_err(failure_error)?;
        limits
            .check_outcome(&verdict.detail, &[])
            .map_err(ActionError::Limit)?;
        Ok(RuleVerdict {
            passed: verdict.passed,
            detail: verdict.detail,
        })
    }

    /// Call export `name` (of world `world`, for the error when it is
    /// missing) of `plugin` with `params`, in a fresh sandbox built from
    /// `spec` and under its limits.
    async fn call_export<Params, Results>(
        &self,
        plugin: &LoadedPlugin,
        spec: SandboxSpec,
        (name, world): (&str, &str),
        params: Params,
    ) -> Result<Results, ActionError>
    where
        Params: wasmtime::component::ComponentNamedList + wasmtime::component::Lower + Send + Sync,
        Results: wasmtime::component::ComponentNamedList
            + wasmtime::component::Lift
            + Send
            + Sync
            + 'static,
    {
        let limits = spec.limits;
        let denials = Denials::default();
        let _slot = self.slot(&spec.log).await;
        let mut store = self.sandbox_store(spec, denials.clone())?;
        let result = {
            let call = async {
                let instance = plugin
                    .pre
                    .instance_pre()
                    .instantiate_async(&mut store)
                    .await?;
                let export = instance
                    .get_typed_func::<Params, Results>(&mut store, name)
                    .map_err(|e| {
                        wasmtime::format_err!(
                            "the plugin has no `{name}` export (world {world}): {e}"
                        )
                    })?;
                export.call_async(&mut store, params).await
            };
            tokio::time::timeout(limits.timeout, call).await
        };
        settle(result.map_err(|_| ()), store.data(), &limits, &denials)
    }

    /// A fresh store for one call: limiter, CPU budget by epoch ticks.
    fn sandbox_store(
        &self,
        spec: SandboxSpec,
        denials: Denials,
    ) -> Result<Store<SandboxState>, ActionError> {
        let state = self
            .new_state(spec, denials)
            .map_err(|e| ActionError::Host(format!("{e:#}")))?;
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.memory);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut ctx| match ctx.data_mut().cpu.spend_tick() {
            Ok(()) => Ok(UpdateDeadline::Yield(1)),
            Err(hit) => Err(wasmtime::format_err!("{hit}")),
        });
        Ok(store)
    }

    fn new_state(&self, spec: SandboxSpec, denials: Denials) -> anyhow::Result<SandboxState> {
        let filesystem = FilesystemCapability::from_grant(
            &spec.inputs,
            &spec.outputs,
            &spec.workspace,
            &spec.mounts,
            &spec.caches,
        );
        let owned = owned_by_commands(&spec);
        let mut builder = WasiCtxBuilder::new();
        builder
            .stdout(log::GuestOutput::new(spec.log.clone(), LogStream::Stdout))
            .stderr(log::GuestOutput::new(spec.log.clone(), LogStream::Stderr))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        filesystem.install(&mut builder)?;
        Ok(SandboxState {
            wasi: builder.build(),
            http_ctx: WasiHttpCtx::new(),
            http: HttpCapability::from_grant(
                &spec.hosts,
                SecretsCapability::from_grant(&spec.secret_names, spec.secret_values.clone()),
                denials.clone(),
                spec.log.clone(),
            ),
            // Every open file, directory and stream is a table entry holding
            // host resources: capping the table caps the host descriptors.
            table: handle_table(spec.limits.open_files),
            memory: MemoryLimiter::new(spec.limits.memory_bytes),
            cpu: CpuBudget::new(spec.limits.cpu),
            secrets: SecretsCapability::from_grant(&spec.secret_names, spec.secret_values),
            process: ProcessCapability::from_grant(
                ProcessGrant {
                    commands: spec.commands,
                    env: spec.inherit_env,
                    network: !spec.hosts.is_empty(),
                    read_only: readable(filesystem.preopens(), false)
                        .chain(spec.toolchains)
                        .collect(),
                    read_write: readable(filesystem.preopens(), true).collect(),
                    owned,
                    run_as_root: spec.run_as_root,
                    memory: spec.limits.command_memory,
                },
                spec.workspace.clone(),
                spec.limits.timeout,
            ),
            files: FilesCapability::from_grant(filesystem.preopens().to_vec()),
            symlinks: SymlinkGuard::from_preopens(filesystem.preopens()),
            log: spec.log,
            denials,
            continuation: None,
        })
    }
}

/// What an action's command user owns: its workspace, outputs and caches.
/// Read-write mounts are the host's own directories and keep their owner.
fn owned_by_commands(spec: &SandboxSpec) -> Vec<PathBuf> {
    std::iter::once(spec.workspace.clone())
        .chain(spec.outputs.iter().map(|(_, dir)| dir.clone()))
        .chain(spec.caches.iter().map(|(_, dir)| dir.clone()))
        .collect()
}

/// A resource table that holds at most `max` entries at once.
fn handle_table(max: u64) -> ResourceTable {
    let mut table = ResourceTable::new();
    table.set_max_capacity(usize::try_from(max).unwrap_or(usize::MAX));
    table
}

/// The host directories of the preopens that are (or are not) writable.
fn readable(
    preopens: &[filesystem::Preopen],
    writable: bool,
) -> impl Iterator<Item = PathBuf> + '_ {
    preopens
        .iter()
        .filter(move |p| p.writable == writable)
        .map(|p| p.host.clone())
}

pub use sluice_core::pipeline::limits::MAX_MEMORY_BYTES;

/// How many actions may be in their sandbox at once unless `--sandbox-slots`
/// says otherwise: the size of the instance pool.
pub const DEFAULT_SANDBOX_SLOTS: u32 = 1000;

/// The instance pool for `slots` sandboxes at once (one component instance
/// each; the pool refuses more, so [`Runtime`] never asks for more).
fn pool_config(slots: u32) -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(slots)
        .total_stacks(slots)
        // Python and JS components hold several core modules, memories and tables.
        .total_core_instances(slots * 8)
        .total_memories(slots * 2)
        .total_tables(slots * 4)
        .max_memories_per_module(2)
        .max_tables_per_module(4)
        .table_elements(200_000)
        .max_core_instance_size(4 << 20)
        .max_memory_size(MAX_MEMORY_BYTES as usize)
        // Keep freed memory slots warm: reuse beats re-faulting pages.
        // Not `pagemap_scan`: it resets only the dirty pages present in RAM,
        // so a page swapped out (or being migrated) at reset would keep the
        // last action's bytes for the next one (bytecodealliance/wasmtime#14357).
        // It made a no-op call 17 µs faster; isolation comes first.
        .max_unused_warm_slots(64);
    pool
}

/// Name the limit, trap or denial that stopped a call, or pass its answer on.
/// `Err(())` from the outside means the wall-clock timeout fired.
fn settle<T>(
    result: Result<wasmtime::Result<T>, ()>,
    state: &SandboxState,
    limits: &Limits,
    denials: &Denials,
) -> Result<T, ActionError> {
    let answer = match result {
        Err(()) => return Err(ActionError::Limit(LimitHit::Timeout(limits.timeout))),
        Ok(Err(_)) if state.cpu.hit => return Err(ActionError::Limit(LimitHit::Cpu(limits.cpu))),
        Ok(Err(_)) if state.memory.hit => {
            return Err(ActionError::Limit(LimitHit::Memory(limits.memory_bytes)));
        }
        Ok(Err(trap)) if table_full(&trap) => {
            return Err(ActionError::Limit(LimitHit::quota(
                "open-files",
                limits.open_files.to_string(),
                "the plugin held too many files, directories and streams open at once".into(),
            )));
        }
        Ok(Err(trap)) => {
            let mut crash = describe_trap(&trap);
            // A guest prints why it dies (a panic message, a traceback) just before
            // trapping; the trap alone ("unreachable") says nothing.
            let tail = state.log.crash_tail();
            if !tail.is_empty() {
                crash.push_str("\n  last output of the plugin:");
                for line in tail {
                    crash.push_str("\n    ");
                    crash.push_str(&line);
                }
            }
            return Err(ActionError::Trap(crash));
        }
        Ok(Ok(answer)) => answer,
    };
    match denials.first() {
        Some(denial) => Err(ActionError::Denied(denial)),
        None => Ok(answer),
    }
}

fn failure_error(failure: bindings::sluice::action::types::Failure) -> ActionError {
    ActionError::Plugin {
        kind: failure.kind.into(),
        message: failure.message,
    }
}

/// Whether a trap came from a full resource table (the `open-files` limit).
fn table_full(error: &wasmtime::Error) -> bool {
    error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<wasmtime::component::ResourceTableError>(),
            Some(wasmtime::component::ResourceTableError::Full)
        )
    })
}

/// One line saying how the guest crashed.
fn describe_trap(error: &wasmtime::Error) -> String {
    let text = format!("{error:#}");
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let first = lines.next().unwrap_or("unknown trap").trim().to_string();
    match error.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::StackOverflow) => "stack overflow".to_string(),
        Some(wasmtime::Trap::MemoryOutOfBounds) if deep_recursion(error) => {
            // Compilers keep large locals on a stack in linear memory; running off
            // its end reads below address 0, which wasmtime reports as an
            // out-of-bounds access. The backtrace shows what really happened.
            "stack overflow (the plugin's stack in linear memory ran out)".to_string()
        }
        Some(trap) if !first.contains(&trap.to_string()) => format!("{first}: {trap}"),
        _ => first,
    }
}

/// Whether the trap's backtrace is a full one made mostly of one function:
/// unbounded recursion.
fn deep_recursion(error: &wasmtime::Error) -> bool {
    let Some(backtrace) = error.downcast_ref::<wasmtime::WasmBacktrace>() else {
        return false;
    };
    let frames = backtrace.frames();
    if frames.len() < RECURSION_FRAMES {
        return false;
    }
    let mut counts: HashMap<u32, usize> = HashMap::new();
    for frame in frames {
        *counts.entry(frame.func_index()).or_default() += 1;
    }
    counts.values().any(|&n| n * 2 >= frames.len())
}

/// How many frames a backtrace needs to count as deep recursion (wasmtime keeps 20).
const RECURSION_FRAMES: usize = 16;

/// Advance the engine's epoch every tick for as long as the engine lives.
fn spawn_epoch_ticker(engine: &Engine) -> anyhow::Result<()> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("sluice-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .context("spawning the epoch ticker thread")?;
    Ok(())
}

impl sluice_core::plugin::Precompiler for Runtime {
    fn precompile(&self, wasm: &[u8]) -> anyhow::Result<Vec<u8>> {
        Runtime::precompile(self, wasm)
    }

    fn compatibility_key(&self) -> &str {
        Runtime::compatibility_key(self)
    }
}
