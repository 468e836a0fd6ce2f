//! The `sluice` command line: argument parsing and dispatch.
//!
//! Exit codes: 0 success, 1 an execution failed, 2 bad input (an invalid pipeline,
//! an unknown plugin, a refused install...).

mod artifacts;
mod caches;
mod history;
mod logging;
mod plugins;
mod remote;
mod report;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use sluice_core::plugin::Registry;
use sluice_engine::executor::{Executor, Placement, Sharing, Worker};
use sluice_sandbox::Runtime;
use sluice_store::artifact::ArtifactStore;
use sluice_store::secrets::SecretSource;
use sluice_store::state::{Durability, Owner, PostgresStore, SqliteStore, Status, Store};

/// Self-hosted continuous delivery: every action is a sandboxed WASI component.
#[derive(Parser)]
#[command(name = "sluice", version, about)]
struct Cli {
    /// Data directory: state database, artifacts, plugin registry.
    #[arg(
        long,
        global = true,
        env = "SLUICE_DATA_DIR",
        default_value = ".sluice"
    )]
    data_dir: PathBuf,
    /// Plugin registry directory [default: <data-dir>/plugins].
    #[arg(long, global = true, env = "SLUICE_PLUGINS")]
    plugins: Option<PathBuf>,
    /// Talk to a running `sluice serve` at this URL instead of the local data directory.
    #[arg(long, global = true, env = "SLUICE_SERVER")]
    server: Option<String>,
    /// Bearer token for --server (see `sluice token create`).
    #[arg(long, global = true, env = "SLUICE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Output format of client verbs.
    #[arg(long, global = true, value_enum, default_value = "text")]
    output: OutputFormat,
    /// Most actions in their sandbox at once (the instance pool); more wait
    /// for a free slot, shown as waiting in their log.
    #[arg(long, global = true, env = "SLUICE_SANDBOX_SLOTS", default_value_t = sluice_sandbox::DEFAULT_SANDBOX_SLOTS,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    sandbox_slots: u32,
    /// State database: a `postgres://` URL, or SQLite at <data-dir>/state.db
    /// when not given. Artifacts and plugins stay in the data directory.
    #[arg(long, global = true, env = "SLUICE_DATABASE", hide_env_values = true)]
    database: Option<String>,
    /// A bucket shared by processes on several machines (`s3://bucket/prefix`,
    /// or `file:///dir`): outputs are uploaded to it, missing inputs and
    /// plugins downloaded from it and checked against their digests.
    #[arg(long, global = true, env = "SLUICE_ARTIFACTS")]
    artifacts: Option<String>,
    /// What a recorded transition survives, with SQLite: `crash` (the
    /// process dying; commits synced at checkpoints) or `power-loss` (the
    /// machine too; each group commit synced before it is reported).
    /// PostgreSQL follows its own settings.
    #[arg(
        long,
        global = true,
        env = "SLUICE_DURABILITY",
        value_enum,
        default_value = "crash"
    )]
    durability: DurabilityArg,
    #[command(subcommand)]
    command: Command,
}

/// Where `sluice serve` runs actions.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ActionsAt {
    /// In this process.
    Here,
    /// In `sluice worker` processes.
    Workers,
    /// Queued for workers, and this process works the queue too.
    Both,
}

/// `sluice worker`'s options.
#[derive(clap::Args)]
struct WorkerArgs {
    /// Relative host paths in pipelines resolve against this [default: .].
    #[arg(long, value_name = "DIR")]
    pipelines_root: Option<PathBuf>,
    /// TOML file of secret values (NAME = "value"); SLUICE_SECRET_<NAME> also works.
    #[arg(long, value_name = "FILE")]
    secrets: Option<PathBuf>,
    /// Most attempts this worker runs at once; the rest wait in the queue
    /// for it or another worker.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    concurrency: u32,
    /// How long a claim on an attempt lasts unless renewed (every third of
    /// it). Another worker takes over an attempt whose worker stopped renewing.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    lease: std::time::Duration,
    /// Log lines on stderr as text or as JSON objects, one a line.
    #[arg(long, value_enum, default_value = "text")]
    log_format: logging::LogFormat,
}

/// `--durability`: SQLite's `synchronous` setting, by what it protects against.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DurabilityArg {
    /// Committed transitions survive the process crashing.
    Crash,
    /// They survive the machine losing power too.
    PowerLoss,
}

impl From<DurabilityArg> for Durability {
    fn from(arg: DurabilityArg) -> Self {
        match arg {
            DurabilityArg::Crash => Durability::Crash,
            DurabilityArg::PowerLoss => Durability::PowerLoss,
        }
    }
}

/// How client verbs print their answers.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OutputFormat {
    /// For people.
    Text,
    /// The API's JSON.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline file locally, from start to finish.
    Run {
        /// The pipeline file.
        file: PathBuf,
        /// Override a pipeline variable: NAME=VALUE (repeatable).
        #[arg(long = "var", value_name = "NAME=VALUE", value_parser = parse_assignment)]
        vars: Vec<(String, String)>,
        /// TOML file of secret values (NAME = "value"); SLUICE_SECRET_<NAME> also works.
        #[arg(long, value_name = "FILE")]
        secrets: Option<PathBuf>,
        /// Do not show the actions' output as it happens (stages, actions and progress still show).
        #[arg(long, short)]
        quiet: bool,
    },
    /// Check a pipeline file against the installed plugins without running it.
    Validate {
        /// The pipeline file.
        file: PathBuf,
    },
    /// Install, list, inspect and remove plugins.
    #[command(subcommand)]
    Plugin(plugins::PluginCommand),
    /// Past and running executions.
    #[command(subcommand)]
    Executions(history::ExecutionsCommand),
    /// Serve the JSON API (pipelines, executions, logs, audit) until stopped.
    Serve {
        /// Address to listen on (port 0 picks a free one; the address is printed).
        #[arg(long, default_value = "127.0.0.1:8700")]
        listen: std::net::SocketAddr,
        /// Relative host paths in registered pipelines resolve against this [default: .].
        #[arg(long, value_name = "DIR")]
        pipelines_root: Option<PathBuf>,
        /// TOML file of secret values (NAME = "value"); SLUICE_SECRET_<NAME> also works.
        #[arg(long, value_name = "FILE")]
        secrets: Option<PathBuf>,
        /// On SIGTERM or Ctrl-C, how long running executions may finish before
        /// the server exits; what is left is resumed at the next start.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        drain_timeout: std::time::Duration,
        /// Run `sluice gc --older-than` with this age at start and then hourly (e.g. 30d).
        #[arg(long, value_name = "AGE", value_parser = sluice_core::units::parse_duration)]
        retention: Option<std::time::Duration>,
        /// Log lines on stderr as text or as JSON objects, one a line. The
        /// level: RUST_LOG or SLUICE_LOG (e.g. `sluice=debug`), info by default.
        #[arg(long, value_enum, default_value = "text")]
        log_format: logging::LogFormat,
        /// How long this server's hold on a running execution lasts unless
        /// renewed (every third of it). Another server on the same database
        /// takes over and resumes an execution whose holder stopped renewing.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        lease: std::time::Duration,
        /// Where actions run: in this process (`here`), only in `sluice worker`
        /// processes on the same database (`workers`), or both.
        #[arg(long, value_enum, default_value = "here")]
        actions: ActionsAt,
        #[command(flatten)]
        limits: sluice_server::Limits,
    },
    /// Run actions that servers on the same `--database` queue (see `serve
    /// --actions workers`); needs no inbound port.
    Worker(WorkerArgs),
    /// Registered pipelines on a server (needs --server).
    #[command(subcommand)]
    Pipelines(remote::PipelinesCommand),
    /// Start an execution of a registered pipeline on a server (needs --server).
    Start {
        /// Pipeline name.
        name: String,
        /// Override a pipeline variable: NAME=VALUE (repeatable).
        #[arg(long = "var", value_name = "NAME=VALUE", value_parser = parse_assignment)]
        vars: Vec<(String, String)>,
    },
    /// Follow an execution on a server until it ends (needs --server).
    Watch {
        /// Execution id.
        id: String,
    },
    /// The server's audit log (needs --server and an admin token).
    Audit,
    /// Approve (or reject) a manual approval; with --server through the API,
    /// otherwise in the local data directory (for a running `sluice run`).
    Approve {
        /// Execution id.
        execution: String,
        /// The approval action's name.
        action: String,
        /// The approval's token (from `sluice pipelines state`, or the run's output).
        #[arg(long = "approval-token", value_name = "TOKEN")]
        approval_token: String,
        /// Reject instead of approving.
        #[arg(long)]
        reject: bool,
        /// Why.
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Stop a running execution on a server (needs --server).
    Stop {
        /// Execution id.
        id: String,
        /// Abandon running actions instead of letting them finish.
        #[arg(long)]
        abandon: bool,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Retry a failed stage of the latest execution on a server (needs --server).
    Retry {
        /// Execution id.
        id: String,
        /// Stage name.
        stage: String,
        /// Rerun every action of the stage, not only the failed ones.
        #[arg(long)]
        all: bool,
    },
    /// Roll a stage of a pipeline on a server back: run it again with the
    /// artifacts and variables of an earlier execution that succeeded in it
    /// (needs --server).
    Rollback {
        /// Pipeline name.
        pipeline: String,
        /// Stage name.
        stage: String,
        /// The execution to go back to (default: the one before the latest
        /// that succeeded in the stage under the current version).
        #[arg(long)]
        to: Option<String>,
    },
    /// API tokens for `sluice serve`.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Measure this host: per-action overhead, throughput, plugin load, artifact
    /// handoff and memory (see BENCHMARKS.md).
    Bench(BenchArgs),
    /// Pipeline caches in the data directory: list and clear them.
    #[command(subcommand)]
    Cache(caches::CacheCommand),
    /// An execution's output artifacts: list them, or write one into a directory.
    #[command(subcommand)]
    Artifacts(artifacts::ArtifactsCommand),
    /// Remove finished executions (with their runs and logs), events and audit
    /// rows older than an age, and the artifacts nothing remaining refers to.
    Gc {
        /// Age, e.g. 30d, 12h, 0s.
        #[arg(long, value_name = "AGE", value_parser = sluice_core::units::parse_duration)]
        older_than: std::time::Duration,
    },
    /// Print the logs of an execution, or of one of its actions.
    Logs {
        /// Execution id (or a unique prefix, or `latest`).
        execution: String,
        /// Only this action.
        action: Option<String>,
        /// Keep printing lines as they are stored until the execution ends.
        #[arg(long, short)]
        follow: bool,
    },
}

/// Token commands.
#[derive(Subcommand)]
enum TokenCommand {
    /// Create a bearer token; its secret is printed once.
    Create {
        /// viewer (read), operator (also start executions) or admin (everything).
        #[arg(long, value_enum)]
        role: sluice_server::auth::Role,
        /// Limit the token to this pipeline (repeatable); all pipelines when absent.
        #[arg(long = "pipeline", value_name = "NAME")]
        pipelines: Vec<String>,
        /// What the token is for.
        #[arg(long, default_value = "")]
        description: String,
        /// Stop accepting the token after this long (e.g. 30d, 12h); never when absent.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires: Option<std::time::Duration>,
    },
    /// Revoke a token by id: it is refused (401) from then on.
    Revoke {
        /// Token id (tok_...), as `sluice token list` shows.
        id: String,
    },
    /// Token ids, roles, scopes, expiry and revocation (never the secrets).
    List,
}

/// Options of `sluice bench`.
#[derive(clap::Args)]
struct BenchArgs {
    /// Directory of packaged plugins (as `cargo xtask plugins` writes); must hold `noop`.
    #[arg(default_value = "target/plugins")]
    plugins: PathBuf,
    /// Sequential no-op actions timed for the overhead figure.
    #[arg(long, default_value_t = 2000)]
    actions: usize,
    /// Executions (3 stages x 5 actions) for the throughput figure.
    #[arg(long, default_value_t = 200)]
    executions: usize,
    /// Largest artifact for the handoff figure (1MiB, 100MiB, 1GiB are measured up to it).
    #[arg(long, default_value = "1GiB", value_parser = sluice_core::units::parse_bytes)]
    max_artifact: u64,
    /// Concurrent sleeping actions for the memory figure.
    #[arg(long, default_value_t = 100)]
    sleepers: usize,
    /// Only measure what the native-command sandbox adds per command.
    #[arg(long)]
    native_only: bool,
    /// Also measure actions/s on this PostgreSQL database, in the process and
    /// with 1, 2 and 4 `sluice worker` processes (a scratch schema each).
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,
}

fn parse_assignment(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("`{text}` is not NAME=VALUE"))
}

/// Paths derived from the global options.
struct Paths {
    data_dir: PathBuf,
    plugins: PathBuf,
    /// `--output`, for local verbs that honour it.
    output: OutputFormat,
    /// `--output json`: verbs print the API's JSON documents.
    json: bool,
    /// `--sandbox-slots`.
    sandbox_slots: u32,
    /// `--database`: a PostgreSQL URL, or None for SQLite in the data directory.
    database: Option<String>,
    /// `--artifacts`: the shared bucket's URL.
    artifacts: Option<String>,
    /// `--durability`, for SQLite.
    durability: Durability,
}

impl Paths {
    fn registry(&self) -> anyhow::Result<Registry> {
        Registry::open(&self.plugins)
    }

    /// The shared bucket `--artifacts` names, if any.
    fn remote(&self) -> anyhow::Result<Option<sluice_store::remote::RemoteArtifacts>> {
        self.artifacts
            .as_deref()
            .map(sluice_store::remote::RemoteArtifacts::open)
            .transpose()
    }

    /// Local artifacts shared through `--artifacts` when given; actions run
    /// as `placement` says.
    fn sharing(&self, placement: Placement) -> anyhow::Result<Sharing> {
        Ok(Sharing {
            placement,
            remote: self.remote()?,
        })
    }

    /// The state store: PostgreSQL when `--database` names one, else SQLite
    /// in the data directory. The continuation key stays in the data directory.
    fn state(&self) -> anyhow::Result<Arc<dyn Store>> {
        let key = self.data_dir.join("continuation.key");
        Ok(match &self.database {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Arc::new(PostgresStore::connect(url, &key)?)
            }
            Some(other) => anyhow::bail!(
                "--database `{other}` is not a postgres:// URL (leave it out for SQLite in the data directory)"
            ),
            None => Arc::new(SqliteStore::open_with(
                &self.data_dir.join("state.db"),
                self.durability,
            )?),
        })
    }
}

/// `path` made absolute against the current directory (not resolving links).
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(&match cli.command {
        Command::Serve { log_format, .. } => logging::LogSettings::serve(log_format),
        Command::Worker(WorkerArgs { log_format, .. }) => logging::LogSettings::serve(log_format),
        _ => logging::LogSettings::command(),
    });
    if !matches!(
        cli.command,
        Command::Run { .. } | Command::Serve { .. } | Command::Worker(_)
    ) {
        quiet_broken_pipe();
    }
    let paths = Paths {
        json: cli.output == OutputFormat::Json,
        // Absolute from here on: native commands run in other directories (and
        // the sandbox names paths to the kernel), so `.sluice` must not move.
        plugins: absolute(
            &cli.plugins
                .clone()
                .unwrap_or_else(|| cli.data_dir.join("plugins")),
        ),
        data_dir: absolute(&cli.data_dir),
        output: cli.output,
        sandbox_slots: cli.sandbox_slots,
        database: cli.database.clone(),
        artifacts: cli.artifacts.clone(),
        durability: cli.durability.into(),
    };
    let client = cli.server.as_deref().map(|server| {
        remote::Client::new(server, cli.token.clone(), cli.output == OutputFormat::Json)
    });
    let result = match client {
        Some(client) => dispatch_remote(cli.command, &client, &paths),
        None => dispatch(cli.command, &paths),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// `sluice … | head` closes stdout early: end quietly, as other tools do,
/// instead of panicking in `println!`. Not for `run` and `serve`, whose work
/// must not die with their output.
fn quiet_broken_pipe() {
    // SAFETY: `signal` only sets the process-wide disposition; no handler runs.
    // Sockets are unaffected (std sends with MSG_NOSIGNAL).
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn dispatch(command: Command, paths: &Paths) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            file,
            vars,
            secrets,
            quiet,
        } => run(
            paths,
            &file,
            vars.into_iter().collect(),
            secrets.as_deref(),
            quiet,
        ),
        Command::Validate { file } => validate(paths, &file),
        Command::Plugin(command) => plugins::dispatch(command, paths),
        Command::Executions(command) => history::executions(command, paths, paths.json),
        Command::Artifacts(command) => artifacts::local(command, paths, paths.json),
        Command::Gc { older_than } => artifacts::gc(paths, older_than, paths.json),
        Command::Bench(args) => bench(paths, args),
        Command::Serve {
            listen,
            pipelines_root,
            secrets,
            drain_timeout,
            retention,
            limits,
            lease,
            actions,
            log_format: _,
        } => {
            if let Some(keep) = retention {
                artifacts::spawn_retention(paths, keep)?;
            }
            serve(
                paths,
                listen,
                pipelines_root,
                secrets.as_deref(),
                (drain_timeout, limits, lease, actions),
            )
        }
        Command::Worker(args) => worker(paths, args),
        Command::Approve {
            execution,
            action,
            approval_token: token,
            reject,
            comment,
        } => {
            let state = paths.state()?;
            let execution = history::resolve_id(state.as_ref(), &execution)?;
            let by = format!(
                "local:{}",
                std::env::var("USER").unwrap_or_else(|_| "user".into())
            );
            let now = sluice_core::units::now_ms();
            anyhow::ensure!(
                state.decide_approval(
                    &execution,
                    &action,
                    &sluice_store::state::Decision {
                        token: &token,
                        approve: !reject,
                        by: &by,
                        comment: &comment,
                        now_ms: now,
                    }
                )?,
                "no pending approval `{action}` with that token in execution {execution}"
            );
            let status = if reject { "rejected" } else { "approved" };
            if paths.json {
                let document = serde_json::json!({ "execution": execution, "action": action, "status": status, "by": by });
                println!("{}", serde_json::to_string_pretty(&document)?);
            } else {
                println!("{status} {action} of {execution}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Pipelines(_)
        | Command::Start { .. }
        | Command::Watch { .. }
        | Command::Audit
        | Command::Stop { .. }
        | Command::Retry { .. }
        | Command::Rollback { .. } => {
            anyhow::bail!(
                "this verb talks to a server: pass --server URL (or set SLUICE_SERVER) and --token"
            )
        }
        Command::Token(TokenCommand::Create {
            role,
            pipelines,
            description,
            expires,
        }) => {
            let state = paths.state()?;
            let (token, secret) = sluice_server::auth::create_token(
                state.as_ref(),
                role,
                pipelines,
                description,
                expires,
            )?;
            if paths.json {
                let document = serde_json::json!({ "token": token, "secret": secret });
                println!("{}", serde_json::to_string_pretty(&document)?);
                return Ok(ExitCode::SUCCESS);
            }
            eprintln!(
                "created {} ({}); the secret is shown only now:",
                token.id, token.role
            );
            println!("{secret}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Token(TokenCommand::Revoke { id }) => {
            sluice_server::auth::revoke_token(paths.state()?.as_ref(), &id)?;
            eprintln!("revoked {id}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Token(TokenCommand::List) => {
            print!(
                "{}",
                sluice_server::auth::list_tokens(paths.state()?.as_ref())?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Logs {
            execution,
            action,
            follow,
        } => history::logs(paths, &execution, action.as_deref(), follow, paths.json),
        Command::Cache(command) => caches::dispatch(command, paths),
    }
}

/// With --server: client verbs go to the API; local-only verbs still run here.
fn dispatch_remote(
    command: Command,
    client: &remote::Client,
    paths: &Paths,
) -> anyhow::Result<ExitCode> {
    match command {
        Command::Pipelines(command) => client.pipelines(command),
        Command::Start { name, vars } => client.start(&name, vars.into_iter().collect()),
        Command::Watch { id } => client.watch(&id),
        Command::Audit => client.audit(),
        Command::Approve {
            execution,
            action,
            approval_token,
            reject,
            comment,
        } => client.approve(&execution, &action, &approval_token, !reject, &comment),
        Command::Stop {
            id,
            abandon,
            reason,
        } => client.stop(&id, abandon, reason),
        Command::Retry { id, stage, all } => client.retry(&id, &stage, all),
        Command::Rollback {
            pipeline,
            stage,
            to,
        } => client.rollback(&pipeline, &stage, to),
        Command::Executions(history::ExecutionsCommand::List {
            pipeline, limit, ..
        }) => client.list_executions(pipeline.as_deref(), limit),
        Command::Executions(history::ExecutionsCommand::Show { id, .. }) => {
            client.show_execution(&id)
        }
        Command::Logs {
            execution,
            action,
            follow,
        } => client.logs(&execution, action.as_deref(), follow),
        Command::Artifacts(command) => artifacts::remote(command, client, paths.json),
        Command::Gc { .. } => anyhow::bail!(
            "gc works on a local data directory; a server sweeps with `sluice serve --retention AGE`"
        ),
        local => dispatch(local, paths),
    }
}

fn validate(paths: &Paths, file: &Path) -> anyhow::Result<ExitCode> {
    let loaded = sluice_core::pipeline::load(file, &paths.registry()?);
    if paths.json {
        let document = match &loaded {
            Ok(plan) => serde_json::json!({ "file": file, "valid": true, "pipeline": plan.name,
                "stages": plan.stages.len(), "actions": plan.stages.iter().map(|s| s.actions.len()).sum::<usize>() }),
            Err(d) => serde_json::json!({ "file": file, "valid": false, "error": d.to_string(),
                "diagnostics": sluice_api::views::diagnostics(d) }),
        };
        println!("{}", serde_json::to_string_pretty(&document)?);
        return Ok(ExitCode::from(if loaded.is_ok() { 0 } else { 2 }));
    }
    match loaded {
        Ok(plan) => {
            let actions: usize = plan.stages.iter().map(|s| s.actions.len()).sum();
            println!(
                "{}: pipeline `{}` is valid ({} stages, {actions} actions)",
                file.display(),
                plan.name,
                plan.stages.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(diagnostics) => {
            eprintln!("{diagnostics}");
            Ok(ExitCode::from(2))
        }
    }
}

fn run(
    paths: &Paths,
    file: &Path,
    overrides: BTreeMap<String, String>,
    secrets_file: Option<&Path>,
    quiet: bool,
) -> anyhow::Result<ExitCode> {
    let plan = match sluice_core::pipeline::load(file, &paths.registry()?) {
        Ok(plan) => Arc::new(plan),
        Err(diagnostics) => {
            eprintln!("{diagnostics}");
            return Ok(ExitCode::from(2));
        }
    };
    Executor::resolve_variables(&plan, &overrides)?;
    // With --output json, stdout carries only the execution document at the end.
    let live = match paths.json {
        true => Arc::new(|_| {}),
        false => report::live_printer(quiet),
    };
    let (state, executor) = executor(paths, secrets_file, live, paths.sharing(Placement::Here)?)?;
    // A server sharing the database leaves this execution alone while the run
    // renews its lease; once this process dies, a server fails it (a `sluice
    // run` does not resume).
    let owner = Owner {
        id: format!("run-{}", uuid::Uuid::new_v4().simple()),
        lease_ms: 30_000,
    };
    state.lease_as(owner.clone());
    let runtime = tokio_runtime()?;
    runtime.spawn(sluice_server::renew_leases_while_running(
        state.clone(),
        owner.clone(),
    ));
    runtime.spawn(apply_stop_requests(
        state.clone(),
        executor.clone(),
        owner.id,
    ));
    let result = runtime.block_on(run_until_interrupted(&executor, plan, &overrides))?;
    // The execution is recorded and its work is over: `run | head` may now end quietly.
    quiet_broken_pipe();
    match state.execution(&result.id)? {
        Some(record) if paths.json => println!(
            "{}",
            serde_json::to_string_pretty(&sluice_api::views::execution(state.as_ref(), &record)?)?
        ),
        _ => report::summary(state.as_ref(), &result.id)?,
    }
    Ok(match result.status {
        Status::Succeeded => ExitCode::SUCCESS,
        Status::Stopped => ExitCode::from(130),
        _ => ExitCode::from(1),
    })
}

/// A server sharing the database may be asked to stop this run's execution:
/// it records the request, and this applies it (checked every second).
async fn apply_stop_requests(state: Arc<dyn Store>, executor: Arc<Executor>, owner: String) {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let Ok(requests) = state.stop_requests(&owner) else {
            continue;
        };
        for (id, request) in requests {
            let Ok(request) = serde_json::from_str::<sluice_api::StopRequest>(&request) else {
                continue;
            };
            let mode = match request.mode {
                sluice_api::StopMode::Finish => sluice_engine::executor::StopMode::Finish,
                sluice_api::StopMode::Abandon => sluice_engine::executor::StopMode::Abandon,
            };
            let reason = request.reason.unwrap_or_default();
            if let Err(e) = executor.stop(&id, mode, &reason) {
                eprintln!("error: stopping {id} as asked: {e:#}");
            }
        }
    }
}

/// Run an execution to its end. The first Ctrl-C (or SIGTERM) stops it:
/// running actions are abandoned, which kills their native commands, and the
/// execution is recorded as Stopped. A second one exits at once.
async fn run_until_interrupted(
    executor: &Arc<Executor>,
    plan: Arc<sluice_core::pipeline::Plan>,
    overrides: &BTreeMap<String, String>,
) -> anyhow::Result<sluice_engine::executor::ExecutionResult> {
    use tokio::signal::unix::{SignalKind, signal};
    let started = executor.begin(plan, overrides)?;
    let id = started.id().to_string();
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let run = executor.complete(started);
    tokio::pin!(run);
    let mut stopping = false;
    loop {
        let signal_name = tokio::select! {
            result = &mut run => return result,
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        if stopping {
            eprintln!("■ {signal_name} again: exiting without waiting");
            std::process::exit(130);
        }
        stopping = true;
        eprintln!("■ {signal_name}: stopping execution {id} (press Ctrl-C again to exit at once)");
        let reason = format!("interrupted by {signal_name}");
        executor.stop(&id, sluice_engine::executor::StopMode::Abandon, &reason)?;
    }
}

fn serve(
    paths: &Paths,
    listen: std::net::SocketAddr,
    pipelines_root: Option<PathBuf>,
    secrets_file: Option<&Path>,
    (drain_timeout, limits, lease, actions): (
        std::time::Duration,
        sluice_server::Limits,
        std::time::Duration,
        ActionsAt,
    ),
) -> anyhow::Result<ExitCode> {
    // Held until the process exits: the data directory's instance id is ours.
    let (instance, _instance_lock) = instance_id(&paths.data_dir)?;
    let owner = Owner {
        id: instance,
        lease_ms: i64::try_from(lease.as_millis()).unwrap_or(i64::MAX).max(1),
    };
    let action_durations = Arc::new(sluice_core::metrics::Histogram::default());
    anyhow::ensure!(
        actions != ActionsAt::Workers || paths.database.is_some(),
        "serve --actions workers needs --database postgres://… shared with the `sluice worker`s (or --actions both, to work the queue here too)"
    );
    if actions != ActionsAt::Here && paths.artifacts.is_none() {
        tracing::warn!(
            "actions run in workers but no --artifacts bucket is set: an action's inputs are found only if its worker shares this data directory"
        );
    }
    let placement = match actions {
        ActionsAt::Here => Placement::Here,
        ActionsAt::Workers | ActionsAt::Both => Placement::Workers,
    };
    let (state, executor) = executor(
        paths,
        secrets_file,
        metrics_sink(action_durations.clone()),
        paths.sharing(placement)?,
    )?;
    let root = pipelines_root
        .map(Ok)
        .unwrap_or_else(std::env::current_dir)?;
    let in_process_worker = match actions {
        ActionsAt::Both => Some(Worker::new(
            executor.clone(),
            paths.registry()?,
            root.clone(),
            owner.id.clone(),
            DEFAULT_WORKER_LEASE,
        )),
        ActionsAt::Here | ActionsAt::Workers => None,
    };
    let app = sluice_server::AppState::new(
        state,
        paths.registry()?,
        Arc::new(crate::engine::LocalEngine(executor)),
        root,
        action_durations,
    )
    .with_limits(limits)
    .with_lease(owner);
    // Tests and scripts read the real address from stdout (the port may have been 0).
    let announce = |address| println!("listening on http://{address}");
    let runtime = tokio_runtime()?;
    if let Some(worker) = in_process_worker {
        runtime.spawn(worker.run(DEFAULT_WORKER_CONCURRENCY, std::future::pending()));
    }
    runtime.block_on(sluice_server::serve(app, listen, drain_timeout, announce))?;
    Ok(ExitCode::SUCCESS)
}

/// How long `serve --actions both`'s own worker holds a claim unless renewed.
const DEFAULT_WORKER_LEASE: std::time::Duration = std::time::Duration::from_secs(15);
/// Most attempts `serve --actions both`'s own worker runs at once.
const DEFAULT_WORKER_CONCURRENCY: usize = 8;

/// `sluice worker`: claim attempts from the database and run them here until
/// SIGTERM or Ctrl-C, then let the running ones finish.
fn worker(paths: &Paths, args: WorkerArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        paths.database.is_some(),
        "a worker needs --database postgres://… shared with the servers that queue its work"
    );
    let (instance, instance_lock) = instance_id(&paths.data_dir)?;
    let id = instance.replacen("serve-", "worker-", 1);
    if instance_lock.is_some() {
        // This data directory is ours alone: what attempts of a previous
        // life left in `work/` (it was killed mid-attempt) goes.
        sluice_store::artifact::remove_tree(&paths.data_dir.join("work"))?;
    }
    let sharing = paths.sharing(Placement::Here)?;
    let (_state, executor) = executor(paths, args.secrets.as_deref(), Arc::new(|_| {}), sharing)?;
    let root = args
        .pipelines_root
        .map(Ok)
        .unwrap_or_else(std::env::current_dir)?;
    let worker = Worker::new(executor, paths.registry()?, root, id.clone(), args.lease);
    let runtime = tokio_runtime()?;
    runtime.block_on(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        // Tests and scripts wait for this line.
        println!("worker {id} ready");
        let shutdown = async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            tracing::info!("stopping: running attempts finish first");
        };
        worker.run(args.concurrency as usize, shutdown).await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// This server's owner id for execution leases: the data directory's
/// `instance-id`, kept across restarts (a restarted server takes its own
/// executions back at once, without waiting for their leases to run out) and
/// locked while the process lives. A second server on the same data directory
/// finds it locked and takes a fresh id.
fn instance_id(data_dir: &Path) -> anyhow::Result<(String, Option<std::fs::File>)> {
    use std::io::{Read as _, Write as _};
    let path = data_dir.join("instance-id");
    std::fs::create_dir_all(data_dir)?;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
    if file.try_lock().is_err() {
        return Ok((format!("serve-{}", uuid::Uuid::new_v4().simple()), None));
    }
    let mut id = String::new();
    file.read_to_string(&mut id)?;
    let id = id.trim().to_string();
    if !id.is_empty() {
        return Ok((id, Some(file)));
    }
    let id = format!("serve-{}", uuid::Uuid::new_v4().simple());
    file.write_all(id.as_bytes())?;
    Ok((id, Some(file)))
}

/// An event sink that records finished actions' durations.
fn metrics_sink(
    durations: Arc<sluice_core::metrics::Histogram>,
) -> sluice_engine::executor::EventSink {
    Arc::new(move |event| {
        if let sluice_engine::executor::Event::ActionFinished { duration, .. } = event {
            durations.observe(duration);
        }
    })
}

fn bench(paths: &Paths, args: BenchArgs) -> anyhow::Result<ExitCode> {
    let scratch = paths
        .data_dir
        .join(format!("bench-{}", uuid::Uuid::new_v4()));
    let options = crate::bench::BenchOptions {
        plugins: args.plugins,
        scratch: scratch.clone(),
        actions: args.actions,
        executions: args.executions,
        max_artifact: args.max_artifact,
        sleepers: args.sleepers,
        native_only: args.native_only,
        postgres: args.postgres,
        // With --artifacts, the handoff between machines through that bucket.
        remote: paths.artifacts.clone(),
    };
    println!("sluice bench on {}", crate::bench::machine());
    let result = tokio_runtime()?.block_on(crate::bench::run(&options));
    remove_scratch(&scratch);
    result?;
    Ok(ExitCode::SUCCESS)
}

/// Stored artifacts are read-only: make them writable again before deleting.
fn remove_scratch(dir: &Path) {
    let _ = sluice_store::artifact::remove_tree(dir);
}

/// The state store and an executor over this data directory's stores.
fn executor(
    paths: &Paths,
    secrets_file: Option<&Path>,
    events: sluice_engine::executor::EventSink,
    sharing: Sharing,
) -> anyhow::Result<(Arc<dyn Store>, Arc<Executor>)> {
    let state = paths.state()?;
    let executor = Executor::new(
        Arc::new(Runtime::with_slots(paths.sandbox_slots)?),
        ArtifactStore::open(&paths.data_dir.join("artifacts"))?,
        state.clone(),
        SecretSource::load(secrets_file)?,
        paths.data_dir.join("work"),
        events,
        sharing,
    );
    Ok((state, executor))
}

fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
