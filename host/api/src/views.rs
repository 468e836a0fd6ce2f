//! The JSON documents of executions, logs and artifacts. The API handlers and
//! the local CLI (`--output json` without `--server`) both build them here, so
//! a script sees one shape whichever way it asks.

use sluice_store::state::{ActionRecord, EventRecord, ExecutionRecord, LogRecord, Status, Store};

use crate::responses::{
    ActionInputs, ArtifactList, ExecutionDetail, ExecutionPage, Located, LogPage, PlannedAction,
    RuleEvaluation, StageCondition,
};
use sluice_core::pipeline::conditions::When;
use sluice_core::pipeline::{Plan, StagePlan};

/// `GET /executions`: a page of executions, newest first.
pub fn execution_list(
    executions: &[&ExecutionRecord],
    limit: usize,
    offset: usize,
) -> ExecutionPage {
    ExecutionPage {
        executions: executions.iter().map(|&e| e.clone()).collect(),
        limit,
        offset,
    }
}

/// `GET /executions/{id}`: the execution, its stage runs and its action runs.
pub fn execution(
    state: &dyn Store,
    execution: &ExecutionRecord,
) -> anyhow::Result<ExecutionDetail> {
    let rules = (state.rule_events(&execution.id)?)
        .iter()
        .filter_map(rule_evaluation)
        .collect();
    Ok(ExecutionDetail {
        execution: execution.clone(),
        stages: state.stages(&execution.id)?,
        actions: state.actions(&execution.id)?,
        rules,
        inputs: Vec::new(),
    })
}

/// The input artifacts of each action of `plan` that takes any.
pub fn action_inputs(plan: &Plan) -> Vec<ActionInputs> {
    plan.stages
        .iter()
        .flat_map(|stage| &stage.actions)
        .filter(|action| !action.inputs.is_empty())
        .map(|action| ActionInputs {
            stage: action.stage.clone(),
            action: action.name.clone(),
            artifacts: action.inputs.clone(),
        })
        .collect()
}

/// A stage's actions as declared, in run order (declaration order within one).
pub fn planned_actions(stage: &StagePlan) -> Vec<PlannedAction> {
    let mut actions: Vec<PlannedAction> = stage
        .actions
        .iter()
        .map(|action| PlannedAction {
            action: action.name.clone(),
            run_order: action.run_order,
            provider: action.provider(),
        })
        .collect();
    actions.sort_by_key(|action| action.run_order);
    actions
}

/// A stage's conditions, in the order they are checked.
pub fn stage_conditions(stage: &StagePlan) -> Vec<StageCondition> {
    [When::BeforeEntry, When::OnSuccess, When::OnFailure]
        .into_iter()
        .filter_map(|when| {
            let condition = stage.conditions.get(when)?;
            Some(StageCondition {
                condition: when.key().to_string(),
                result: condition.result.name().to_string(),
                rules: condition.rules.iter().map(|r| r.name.clone()).collect(),
            })
        })
        .collect()
}

/// A `rule` event (`<stage>.<condition>.<rule>`, PASSED or FAILED) read back.
fn rule_evaluation(event: &EventRecord) -> Option<RuleEvaluation> {
    let (stage, condition, rule) = ["before-entry", "on-success", "on-failure"]
        .into_iter()
        .find_map(|condition| {
            let (stage, rule) = event.name.split_once(&format!(".{condition}."))?;
            Some((stage, condition, rule))
        })?;
    Some(RuleEvaluation {
        stage: stage.to_string(),
        condition: condition.to_string(),
        rule: rule.to_string(),
        passed: event.state == "PASSED",
        detail: event.detail.clone(),
        ts_ms: event.ts_ms,
    })
}

/// `GET /executions/{id}/logs`: stored (masked) log lines.
/// `status` is the execution's status read before the lines: once it is
/// final, every line is in `lines` (`logs -f` stops on it).
pub fn logs(execution: &str, status: Status, lines: &[LogRecord]) -> LogPage {
    LogPage {
        execution: execution.to_string(),
        status,
        lines: lines.to_vec(),
    }
}

/// One output artifact of an execution.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ArtifactEntry {
    /// Artifact name (unique in a pipeline).
    pub name: String,
    /// The action that produced it.
    pub action: String,
    /// That action's stage.
    pub stage: String,
    /// Hex blake3 digest of the tree.
    pub digest: String,
    /// Regular files.
    pub files: u64,
    /// Total bytes of regular files.
    pub bytes: u64,
}

/// The output artifacts recorded for an execution's actions, in action order.
pub fn artifact_entries(actions: &[ActionRecord]) -> Vec<ArtifactEntry> {
    actions
        .iter()
        .flat_map(|action| {
            action.outputs.iter().map(|output| ArtifactEntry {
                name: output.name.clone(),
                action: action.action.clone(),
                stage: action.stage.clone(),
                digest: output.digest.clone(),
                files: output.files,
                bytes: output.bytes,
            })
        })
        .collect()
}

/// `GET /executions/{id}/artifacts`.
pub fn artifacts(execution: &str, entries: &[ArtifactEntry]) -> ArtifactList {
    ArtifactList {
        execution: execution.to_string(),
        artifacts: entries.to_vec(),
    }
}

/// Validation problems, each located by line and column (the API's 400
/// `diagnostics` and `sluice validate --output json`).
pub fn diagnostics(diagnostics: &sluice_core::pipeline::Diagnostics) -> Vec<Located> {
    diagnostics
        .0
        .iter()
        .map(|d| Located {
            line: d.line,
            column: d.column,
            message: d.message.clone(),
        })
        .collect()
}

/// A pipeline version for people: `v3`, or `-` for an execution of a file
/// (`sluice run`), which has no registered version.
pub fn version_label(version: Option<i64>) -> String {
    match version {
        Some(v) => format!("v{v}"),
        None => "-".to_string(),
    }
}
