//! Sluice's HTTP API contract, shared by the server (`sluice-server`), the CLI's
//! client and the OpenAPI document.
//!
//! The request bodies are shared by the server's handlers (which read
//! them), the CLI's client (which sends them) and the OpenAPI document (which
//! describes them). Modes and decisions are enums with their wire names, so a
//! wrong one is refused by name (`"field": "mode"`) before a handler runs.

#![deny(missing_docs)]

pub mod responses;
pub mod views;

pub use responses::*;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `POST /pipelines/{name}/executions`. Every field may be left out.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// Pipeline variable overrides.
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    /// Source revision to build, as `#{trigger.revision}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
}

/// How a stop treats the actions that are running.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StopMode {
    /// Let running actions finish; start nothing new.
    #[default]
    Finish,
    /// Abandon running actions too.
    Abandon,
}

/// `POST /executions/{id}/stop`.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StopRequest {
    /// `finish` (default) or `abandon`.
    #[serde(default)]
    pub mode: StopMode,
    /// Why; recorded on the execution (default: who asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Which actions of a failed stage run again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RetryScope {
    /// Only the actions that failed.
    #[default]
    Failed,
    /// Every action of the stage.
    All,
}

/// `POST /executions/{id}/stages/{stage}/retry`.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryRequest {
    /// `failed` (default) or `all`.
    #[serde(default)]
    pub mode: RetryScope,
}

/// `POST /pipelines/{name}/stages/{stage}/rollback`.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The execution to go back to (an id, or a unique prefix of one). By
    /// default, the one before the latest that succeeded in the stage under
    /// the current version.
    #[serde(default)]
    pub execution: Option<String>,
}

/// An approver's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Let the execution go on.
    Approve,
    /// Fail the approval, and so its stage.
    Reject,
}

/// `POST /executions/{id}/approvals/{action}`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionRequest {
    /// `approve` or `reject` (required).
    pub decision: Option<Decision>,
    /// The approval's token, from the pipeline state (required): a decision
    /// on an approval that was asked again since is refused.
    pub token: Option<String>,
    /// Recorded with the decision.
    #[serde(default)]
    pub comment: String,
}

/// `PUT /pipelines/{name}/stages/{stage}/transition`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransitionRequest {
    /// Whether executions may enter the stage (required).
    pub enabled: Option<bool>,
    /// Why it is disabled (required to disable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_decisions_travel_by_their_wire_names() {
        let stop: StopRequest = serde_json::from_str(r#"{"mode": "abandon"}"#).unwrap();
        assert_eq!(stop.mode, StopMode::Abandon);
        assert_eq!(
            serde_json::from_str::<StopRequest>("{}").unwrap().mode,
            StopMode::Finish
        );
        assert!(serde_json::from_str::<StopRequest>(r#"{"mode": "later"}"#).is_err());
        let retry = serde_json::to_value(RetryRequest {
            mode: RetryScope::All,
        })
        .unwrap();
        assert_eq!(retry, serde_json::json!({ "mode": "all" }));
        let decision: DecisionRequest =
            serde_json::from_str(r#"{"decision": "reject", "token": "t"}"#).unwrap();
        assert_eq!(decision.decision, Some(Decision::Reject));
    }
}
