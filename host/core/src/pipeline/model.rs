//! The pipeline file as written: TOML with source spans kept for diagnostics.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// A whole pipeline file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    /// `[pipeline]`.
    pub pipeline: Header,
    /// `[variables]`: pipeline variables with defaults.
    #[serde(default)]
    pub variables: BTreeMap<String, Spanned<VariableDecl>>,
    /// `[[stages]]`, in order.
    #[serde(default)]
    pub stages: Vec<StageDecl>,
    /// `[triggers]`: what starts executions besides people (used by `sluice serve`).
    pub triggers: Option<TriggersDecl>,
    /// `[notifications]`: deliver state-change events to a plugin (used by `sluice serve`).
    pub notifications: Option<NotificationsDecl>,
    /// `[caches]`: directories kept between executions, by name.
    #[serde(default)]
    pub caches: BTreeMap<String, Spanned<CacheDecl>>,
}

/// `cargo = { max-size = "2GiB" }` under `[caches]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheDecl {
    /// Above this size after an action, the cache is cleared; default 10GiB.
    #[serde(rename = "max-size", alias = "max_size")]
    pub max_size: Option<Spanned<String>>,
}

/// `[notifications]`: which events, and the action that delivers them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationsDecl {
    /// `kind.STATE` names (`pipeline.FAILED`, `action.SUCCEEDED`...) or `*`.
    #[serde(default)]
    pub events: Vec<String>,
    /// The delivering action; its config may use `#{event.kind}`, `#{event.name}`,
    /// `#{event.state}`, `#{event.detail}`, `#{event.execution}`, `#{event.pipeline}`.
    pub action: ActionDecl,
}

/// `[triggers]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggersDecl {
    /// `[triggers.webhook]`: GitHub-style push and pull-request webhooks.
    pub webhook: Option<Spanned<WebhookDecl>>,
    /// Cron schedules (`sec min hour day-of-month month day-of-week [year]`, UTC).
    #[serde(default)]
    pub cron: Vec<Spanned<String>>,
    /// Poll a source action's `check` on an interval.
    pub poll: Option<Spanned<PollDecl>>,
}

/// `poll = { action = "checkout", interval = "1m" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollDecl {
    /// The source action (its plugin implements world `source`).
    pub action: String,
    /// How often; default one minute.
    pub interval: Option<String>,
}

/// `[triggers.webhook]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookDecl {
    /// Name of the host secret holding the HMAC key (X-Hub-Signature-256).
    pub secret: String,
    /// `push` and/or `pull_request` (default both).
    #[serde(default)]
    pub events: Vec<String>,
    /// Branch globs (a push's branch, a pull request's base branch).
    #[serde(default)]
    pub branches: Vec<String>,
    /// Tag globs (pushes of tags).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Changed-path globs; a push touching none of them is ignored.
    #[serde(default)]
    pub paths: Vec<String>,
}

/// `[pipeline]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Pipeline name.
    pub name: Spanned<String>,
    /// `superseded` (default), `queued` or `parallel`.
    #[serde(rename = "execution-mode", alias = "execution_mode")]
    pub execution_mode: Option<Spanned<String>>,
    /// Free text.
    pub description: Option<String>,
    /// Most executions in progress (running or waiting) at once; a start beyond
    /// it is refused (`sluice serve` answers 429).
    #[serde(rename = "max-executions", alias = "max_executions")]
    pub max_executions: Option<Spanned<u32>>,
    /// Most executions waiting at stage boundaries; a start beyond it is refused.
    #[serde(rename = "queue-depth", alias = "queue_depth")]
    pub queue_depth: Option<Spanned<u32>>,
}

/// One pipeline variable.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariableDecl {
    /// Value used when a start does not override it.
    pub default: Option<String>,
    /// Free text.
    pub description: Option<String>,
}

/// `[[stages]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageDecl {
    /// Stage name.
    pub name: Spanned<String>,
    /// Rules checked after entering, before the first action.
    #[serde(rename = "before-entry", alias = "before_entry")]
    pub before_entry: Option<Spanned<super::conditions::ConditionDecl>>,
    /// Rules checked once every action succeeded.
    #[serde(rename = "on-success", alias = "on_success")]
    pub on_success: Option<Spanned<super::conditions::ConditionDecl>>,
    /// Rules checked after the stage failed.
    #[serde(rename = "on-failure", alias = "on_failure")]
    pub on_failure: Option<Spanned<super::conditions::ConditionDecl>>,
    /// `[[stages.actions]]`.
    #[serde(default)]
    pub actions: Vec<ActionDecl>,
}

/// `[[stages.actions]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionDecl {
    /// Action name, unique in the pipeline.
    pub name: Spanned<String>,
    /// `name@version-requirement`.
    pub plugin: Spanned<String>,
    /// Actions with the same run order run in parallel; default 1.
    #[serde(rename = "run-order", alias = "run_order")]
    pub run_order: Option<Spanned<u32>>,
    /// Input artifact names.
    #[serde(default)]
    pub inputs: Vec<Spanned<String>>,
    /// Output artifact names.
    #[serde(default)]
    pub outputs: Vec<Spanned<String>>,
    /// Namespace for output variables.
    pub namespace: Option<Spanned<String>>,
    /// Configuration; values may hold `#{namespace.key}` references.
    #[serde(default)]
    pub config: BTreeMap<String, Spanned<toml::Value>>,
    /// Capabilities granted to this action.
    pub grants: Option<Spanned<GrantsDecl>>,
    /// Wall-clock timeout, e.g. `10m`.
    pub timeout: Option<Spanned<String>>,
    /// Automatic retry policy.
    pub retry: Option<Spanned<RetryDecl>>,
    /// Resource limits.
    pub limits: Option<Spanned<LimitsDecl>>,
    /// What a restarted server does with this action if it was running:
    /// `rerun` (default) or `fail`.
    #[serde(rename = "on-restart", alias = "on_restart")]
    pub on_restart: Option<Spanned<String>>,
}

/// `grants = { ... }`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantsDecl {
    /// Secret names.
    #[serde(default)]
    pub secrets: Vec<Spanned<String>>,
    /// Outbound HTTP host patterns.
    #[serde(default)]
    pub hosts: Vec<Spanned<String>>,
    /// Program names.
    #[serde(default)]
    pub commands: Vec<Spanned<String>>,
    /// Host environment variables native commands inherit (`PATH`, ...).
    #[serde(default)]
    pub env: Vec<Spanned<String>>,
    /// Host directories native commands may read and run programs from.
    #[serde(default)]
    pub toolchains: Vec<Spanned<String>>,
    /// Host directories, by mount name.
    #[serde(default)]
    pub mounts: BTreeMap<String, Spanned<MountDecl>>,
    /// Names of the pipeline's `[caches]` this action may use.
    #[serde(default)]
    pub caches: Vec<Spanned<String>>,
    /// Native commands keep root when the host runs as root (they still
    /// lose every capability); by default they run as a user of their own.
    #[serde(default, rename = "run-as-root")]
    pub run_as_root: Option<Spanned<bool>>,
}

/// One granted host directory.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountDecl {
    /// Host path, relative to the pipeline file's directory unless absolute.
    pub host: String,
    /// `ro` (default) or `rw`.
    pub mode: Option<String>,
}

/// `retry = { attempts = 3, backoff = "5s" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryDecl {
    /// Total attempts, the first included.
    pub attempts: u32,
    /// Wait before the second attempt; doubles for each later one.
    pub backoff: Option<String>,
}

/// `limits = { memory = "256MiB", cpu = "60s", log = "4MiB", summary = "64KiB", ... }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsDecl {
    /// Maximum linear memory.
    pub memory: Option<String>,
    /// Maximum time executing WebAssembly.
    pub cpu: Option<String>,
    /// Maximum log bytes kept.
    pub log: Option<String>,
    /// Maximum summary size.
    pub summary: Option<String>,
    /// Maximum number of output variables.
    pub variables: Option<u64>,
    /// Maximum total size of output variables.
    #[serde(rename = "variables-size")]
    pub variables_size: Option<String>,
    /// Maximum number of output entries, across all outputs.
    #[serde(rename = "output-files")]
    pub output_files: Option<u64>,
    /// Maximum total size of output files, across all outputs.
    #[serde(rename = "output-size")]
    pub output_size: Option<String>,
    /// Maximum files, directories and streams open at once.
    #[serde(rename = "open-files")]
    pub open_files: Option<u64>,
    /// Memory limit of each native command (and what it starts).
    #[serde(rename = "command-memory")]
    pub command_memory: Option<String>,
}
