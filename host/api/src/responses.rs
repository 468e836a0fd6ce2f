//! The HTTP API's response bodies. The server's handlers answer with them, the
//! CLI's client reads them back, and the OpenAPI document describes them, so the
//! three cannot drift apart. Records that are answered as they are stored
//! (executions, stage and action runs, log lines, audit entries, events) are
//! the state store's own types.

use serde::{Deserialize, Serialize};
use sluice_core::pipeline::ExecutionMode;
pub use sluice_store::state::ApprovalStatus;
use sluice_store::state::{
    ActionRecord, AuditRecord, ExecutionRecord, LogRecord, StageRecord, Status,
};
use utoipa::ToSchema;

/// `GET /pipelines`: the latest version of each pipeline the caller may see.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PipelineList {
    /// By name.
    pub pipelines: Vec<PipelineSummary>,
}

/// A registered pipeline version, without its text.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PipelineSummary {
    /// Pipeline name.
    pub name: String,
    /// Version, from 1.
    pub version: i64,
    /// When this version was registered, ms since the epoch.
    pub created_ms: i64,
}

/// `PUT /pipelines/{name}`: the version now registered.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Registered {
    /// Pipeline name.
    pub name: String,
    /// The new version (the same one when the text did not change).
    pub version: i64,
}

/// `POST /pipelines/{name}/executions`: the execution started.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Started {
    /// Execution id.
    pub id: String,
    /// Pipeline name.
    pub pipeline: String,
    /// The pipeline version it runs.
    pub version: i64,
}

/// `POST /executions/{id}/stop`: the stop was accepted.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Stopping {
    /// Execution id.
    pub id: String,
    /// Always `Stopping`: running actions finish or are abandoned first.
    pub status: Status,
}

/// `POST /executions/{id}/retry`: the stage runs again.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct RetryStarted {
    /// Execution id (a retry continues the same execution).
    pub id: String,
    /// The stage retried.
    pub stage: String,
    /// Its failed actions, or all of them.
    pub mode: crate::RetryScope,
}

/// `POST /executions/{id}/approvals/{action}`: the decision recorded.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Decided {
    /// Execution id.
    pub execution: String,
    /// The approval action.
    pub action: String,
    /// Approved or rejected.
    pub status: ApprovalStatus,
    /// Who decided: a token id.
    pub by: String,
}

/// Whether executions may enter a stage.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TransitionState {
    /// False while the transition is disabled.
    pub enabled: bool,
    /// Why it was disabled.
    pub reason: Option<String>,
}

/// `POST /pipelines/{name}/stages/{stage}/transition`: the transition now.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Transition {
    /// Pipeline name.
    pub pipeline: String,
    /// The stage entered through it.
    pub stage: String,
    /// False while the transition is disabled.
    pub enabled: bool,
    /// Why it was disabled.
    pub reason: Option<String>,
}

/// `GET /pipelines/{name}/state`: per stage, its transition and the newest
/// execution that reached it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PipelineState {
    /// Pipeline name.
    pub pipeline: String,
    /// The latest registered version.
    pub version: i64,
    /// How executions share the stages.
    pub execution_mode: ExecutionMode,
    /// Declared variables and their defaults (null: a start must give it).
    #[serde(default)]
    pub variables: std::collections::BTreeMap<String, Option<String>>,
    /// In pipeline order.
    pub stages: Vec<StageState>,
}

/// One stage in [`PipelineState`].
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct StageState {
    /// Stage name.
    pub stage: String,
    /// Whether executions may enter it.
    pub transition: TransitionState,
    /// Its actions as the latest version declares them, in run order.
    #[serde(default)]
    pub actions: Vec<PlannedAction>,
    /// Its conditions, in the order they are checked.
    #[serde(default)]
    pub conditions: Vec<StageCondition>,
    /// The newest execution that ran (or runs) it; none yet if null.
    pub current: Option<CurrentRun>,
    /// Set when an execution newer than `current` skipped the stage (a
    /// `before-entry` condition, or an earlier stage that failed).
    #[serde(default)]
    pub skipped: Option<SkippedRun>,
}

/// The newest skip of a stage, in [`StageState`].
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SkippedRun {
    /// Execution id.
    pub execution: String,
    /// Why it was skipped.
    pub reason: Option<String>,
}

/// An action as a pipeline version declares it, in [`StageState`].
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PlannedAction {
    /// Action name.
    pub action: String,
    /// Actions with the same run order run in parallel; lower orders first.
    pub run_order: u32,
    /// `name@version` of its plugin, or `approval`.
    pub provider: String,
}

/// A stage condition, in [`StageState`].
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct StageCondition {
    /// `before-entry`, `on-success` or `on-failure`.
    pub condition: String,
    /// What it does: `fail`, `skip`, `retry` or `rollback`.
    pub result: String,
    /// Its rules' names.
    pub rules: Vec<String>,
}

/// The newest run of a stage in [`StageState`].
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CurrentRun {
    /// Execution id.
    pub execution: String,
    /// The stage run's status.
    pub status: Status,
    /// Its actions.
    pub actions: Vec<ActionState>,
}

/// One action of a [`CurrentRun`].
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ActionState {
    /// Action name.
    pub action: String,
    /// Its status.
    pub status: Status,
    /// When it started, ms since the epoch.
    #[serde(default)]
    pub started_ms: i64,
    /// When it ended, if it has.
    #[serde(default)]
    pub ended_ms: Option<i64>,
    /// Attempts so far (retries included).
    #[serde(default)]
    pub attempts: u32,
    /// Summary from the plugin.
    pub summary: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// Latest progress report: percent.
    pub percent: Option<u8>,
    /// Latest progress report: message.
    pub progress: Option<String>,
    /// The approval it waits for (or waited for), if it is an approval action.
    pub approval: Option<ApprovalState>,
}

/// An approval in [`ActionState`].
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ApprovalState {
    /// The token a decision must quote.
    pub token: String,
    /// Pending, approved, rejected or expired.
    pub status: ApprovalStatus,
    /// Least role that may decide.
    pub approvers: String,
    /// What is asked.
    pub message: String,
    /// Deadline, ms since the epoch.
    pub expires_ms: i64,
    /// Who decided.
    pub decided_by: Option<String>,
    /// Their comment.
    pub comment: Option<String>,
}

/// `POST /webhooks/{name}`: what a delivery did.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum WebhookAnswer {
    /// A `ping` delivery (200).
    Pong {
        /// Always true.
        pong: bool,
        /// Pipeline name.
        pipeline: String,
    },
    /// A delivery id seen before (200): the execution it started.
    Duplicate {
        /// The repeated X-GitHub-Delivery id.
        duplicate: String,
        /// The execution the first delivery started (none if it started none).
        id: Option<String>,
        /// Pipeline name.
        pipeline: String,
    },
    /// An execution started (202).
    Started {
        /// Execution id.
        id: String,
        /// Pipeline name.
        pipeline: String,
        /// The commit it runs.
        revision: String,
    },
    /// The trigger's filters rejected it (200), and why.
    Ignored {
        /// Why.
        ignored: String,
    },
}

/// `GET /executions`: a page of executions, newest first.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ExecutionPage {
    /// This page.
    pub executions: Vec<ExecutionRecord>,
    /// Page size asked for.
    pub limit: usize,
    /// Executions skipped before it.
    pub offset: usize,
}

/// `GET /executions/{id}`: the execution, its stage runs and its action runs.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ExecutionDetail {
    /// The execution.
    pub execution: ExecutionRecord,
    /// Its stage runs, in order.
    pub stages: Vec<StageRecord>,
    /// Its action runs, in order.
    pub actions: Vec<ActionRecord>,
    /// Its stage conditions' rule evaluations, in order.
    #[serde(default)]
    pub rules: Vec<RuleEvaluation>,
    /// The artifacts each action takes in, by name, as its pipeline version
    /// declares them (empty for an execution of a file).
    #[serde(default)]
    pub inputs: Vec<ActionInputs>,
}

/// The input artifacts of one action, in [`ExecutionDetail`].
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ActionInputs {
    /// Its stage.
    pub stage: String,
    /// Action name.
    pub action: String,
    /// Artifact names.
    pub artifacts: Vec<String>,
}

/// `GET /whoami`: the caller's token.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Whoami {
    /// Token id.
    pub token: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    /// The pipelines it is limited to; empty when it sees all.
    pub pipelines: Vec<String>,
}

/// `GET /plugins`: the installed plugins.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PluginList {
    /// By name, then version.
    pub plugins: Vec<PluginInfo>,
}

/// One installed plugin.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PluginInfo {
    /// Plugin name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The WIT world it implements: `action` or `source`.
    pub world: String,
    /// What it does.
    pub description: String,
    /// Hex SHA-256 of its component, as its manifest pins it.
    pub sha256: Option<String>,
    /// What it may ever be granted.
    pub capabilities: PluginCapabilities,
}

/// What a plugin may ever be granted (`"*"`: whatever a pipeline grants).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PluginCapabilities {
    /// Secret names.
    pub secrets: Vec<String>,
    /// Outbound HTTP host patterns.
    pub hosts: Vec<String>,
    /// Programs it may run.
    pub commands: Vec<String>,
    /// Whether host directories may be mounted.
    pub mounts: bool,
    /// Whether pipeline caches may be granted.
    pub caches: bool,
}

/// One evaluation of a stage condition's rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RuleEvaluation {
    /// Stage name.
    pub stage: String,
    /// `before-entry`, `on-success` or `on-failure`.
    pub condition: String,
    /// Rule name.
    pub rule: String,
    /// Whether it passed.
    pub passed: bool,
    /// What was found (masked).
    pub detail: String,
    /// When, ms since the epoch.
    pub ts_ms: i64,
}

/// `GET /executions/{id}/logs`: stored (masked) log lines.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct LogPage {
    /// Execution id.
    pub execution: String,
    /// The execution's status, read before the lines: once it is final, every
    /// line is here (`logs -f` stops on it).
    pub status: Status,
    /// The lines after the cursor asked for, oldest first.
    pub lines: Vec<LogRecord>,
}

/// `GET /executions/{id}/artifacts`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ArtifactList {
    /// Execution id.
    pub execution: String,
    /// Its output artifacts, in action order.
    pub artifacts: Vec<crate::views::ArtifactEntry>,
}

/// `GET /audit`: audit entries, newest first.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    /// This page.
    pub entries: Vec<AuditRecord>,
}

/// A validation problem, located in the pipeline file (the 400 answer's
/// `diagnostics` and `sluice validate --output json`).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Located {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

/// The JSON body of every error answer.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub error: String,
    /// The request field, parameter or part at fault (`variables.region`,
    /// `limit`, `body`, `name`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Why a token was refused: `unknown`, `expired` or `revoked`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The body limit that was exceeded (413).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_bytes: Option<u64>,
    /// Pipeline validation errors, each with file, line and column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnostics: Option<Vec<Located>>,
}
