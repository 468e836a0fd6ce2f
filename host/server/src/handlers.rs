//! `/api/v1` handlers. Each checks the caller's role and pipeline scope first.
//!
//! A handler whose work is store calls runs its body on tokio's blocking
//! pool ([`sluice_store::off_workers`]): a store call may wait (on SQLite's
//! write lock, on PostgreSQL's round trips, on another server's admission
//! hold), and a tokio worker thread must not.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::auth::{Caller, Role};
use super::extract::{JsonBody, QueryParams, RawBody, UrlPath};
use super::{ApiError, AppState};
use sluice_api::{
    ActionState, ApprovalState, ApprovalStatus, ArtifactList, AuditPage, CurrentRun, Decided,
    DecisionRequest, ExecutionDetail, ExecutionPage, LogPage, PipelineList, PipelineState,
    PipelineSummary, PluginCapabilities, PluginInfo, PluginList, Registered, RetryRequest,
    RetryStarted, RollbackRequest, SkippedRun, StageState, StartRequest, Started, StopRequest,
    Stopping, Transition, TransitionRequest, TransitionState, WebhookAnswer, Whoami,
};
use sluice_core::pipeline::Plan;
use sluice_core::pipeline::conditions::When;
use sluice_core::units::now_ms;
use sluice_store::state::{EventRecord, ExecutionFilter, ExecutionRecord, PipelineRecord, Status};

type ApiResult<T> = Result<T, ApiError>;

/// The `/api/v1` routes, each documented by its `#[utoipa::path]`: the
/// router and the OpenAPI document come from the same list.
pub fn routes() -> OpenApiRouter<AppState> {
    let webhooks =
        OpenApiRouter::new()
            .routes(routes!(webhook))
            .layer(axum::extract::DefaultBodyLimit::max(
                super::WEBHOOK_BODY_LIMIT,
            ));
    OpenApiRouter::new()
        .routes(routes!(list_pipelines))
        .routes(routes!(get_pipeline, put_pipeline, delete_pipeline))
        .routes(routes!(get_pipeline_version))
        .routes(routes!(start_execution))
        .routes(routes!(set_transition))
        .routes(routes!(pipeline_state))
        .routes(routes!(list_executions))
        .routes(routes!(get_execution))
        .routes(routes!(get_logs))
        .routes(routes!(download_logs))
        .routes(routes!(list_artifacts))
        .routes(routes!(get_artifact))
        .routes(routes!(retry_stage))
        .routes(routes!(rollback_stage))
        .routes(routes!(override_condition))
        .routes(routes!(stop_execution))
        .routes(routes!(decide_approval))
        .routes(routes!(stream_events))
        .routes(routes!(get_audit))
        .routes(routes!(whoami))
        .routes(routes!(list_plugins))
        .merge(webhooks)
}

#[utoipa::path(
    get,
    path = "/pipelines",
    tag = "pipelines",
    summary = "List pipelines (latest versions)",
    description = "Requires role viewer.",
    responses((status = 200, description = "The pipelines", body = PipelineList)),
)]
async fn list_pipelines(
    State(app): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<PipelineList>> {
    sluice_store::off_workers(move || {
        caller.require(Role::Viewer, None)?;
        let pipelines = app.state.pipelines().map_err(ApiError::internal)?;
        let visible = pipelines
            .into_iter()
            .filter(|p| caller.may_see(&p.name))
            .map(|p| PipelineSummary {
                name: p.name,
                version: p.version,
                created_ms: p.created_ms,
            })
            .collect();
        Ok(Json(PipelineList { pipelines: visible }))
    })
    .await
}

fn stored_pipeline(app: &AppState, name: &str, version: Option<i64>) -> ApiResult<PipelineRecord> {
    let found = app
        .state
        .pipeline(name, version)
        .map_err(ApiError::internal)?;
    found.ok_or_else(|| match version {
        Some(v) => ApiError::not_found(format!("pipeline `{name}` has no version {v}")),
        None => ApiError::not_found(format!("no pipeline `{name}`")),
    })
}

#[utoipa::path(
    get,
    path = "/pipelines/{name}",
    tag = "pipelines",
    summary = "The latest version of a pipeline",
    description = "Requires role viewer.",
    params(("name" = String, Path, description = "Pipeline name")),
    responses((status = 200, description = "The pipeline: name, version, created_ms, source", body = PipelineRecord)),
)]
async fn get_pipeline(
    State(app): State<AppState>,
    caller: Caller,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<Json<PipelineRecord>> {
    sluice_store::off_workers(move || {
        caller.require(Role::Viewer, Some(&name))?;
        Ok(Json(stored_pipeline(&app, &name, None)?))
    })
    .await
}

#[utoipa::path(
    get,
    path = "/pipelines/{name}/versions/{version}",
    tag = "pipelines",
    summary = "One version of a pipeline",
    description = "Requires role viewer.",
    params(("name" = String, Path, description = "Pipeline name"), ("version" = i64, Path, description = "Version number")),
    responses((status = 200, description = "The pipeline version", body = PipelineRecord)),
)]
async fn get_pipeline_version(
    State(app): State<AppState>,
    caller: Caller,
    UrlPath((name, version)): UrlPath<(String, String)>,
) -> ApiResult<Json<PipelineRecord>> {
    sluice_store::off_workers(move || {
        caller.require(Role::Viewer, Some(&name))?;
        let version: i64 = version.parse().map_err(|_| {
            ApiError::bad_request("version", format!("`{version}` is not a version number"))
        })?;
        Ok(Json(stored_pipeline(&app, &name, Some(version))?))
    })
    .await
}

/// Validate pipeline text against the installed plugins.
fn plan_from_source(app: &AppState, name: &str, source: &str) -> ApiResult<Plan> {
    super::plans::parse_registered(app, name, source).map_err(|diagnostics| {
        ApiError::bad_request("source", diagnostics.to_string())
            .diagnostics(sluice_api::views::diagnostics(&diagnostics))
    })
}

/// Register a new version: the request body is the pipeline file's text.
#[utoipa::path(
    put,
    path = "/pipelines/{name}",
    tag = "pipelines",
    summary = "Register a new version of a pipeline (body: the pipeline TOML)",
    description = "Requires role admin.",
    params(("name" = String, Path, description = "Pipeline name")),
    request_body(content = String, content_type = "application/toml", description = "The pipeline file"),
    responses((status = 200, description = "A new version registered", body = Registered), (status = 201, description = "First version registered", body = Registered)),
)]
async fn put_pipeline(
    State(app): State<AppState>,
    caller: Caller,
    UrlPath(name): UrlPath<String>,
    RawBody(body): RawBody,
) -> ApiResult<(StatusCode, Json<Registered>)> {
    sluice_store::off_workers(move || {
        caller.require(Role::Admin, Some(&name))?;
        sluice_core::pipeline::check_name(&name)
            .map_err(|why| ApiError::bad_request("name", why))?;
        let body = String::from_utf8(body.to_vec()).map_err(|e| {
            ApiError::bad_request("source", format!("the pipeline file is not UTF-8: {e}"))
        })?;
        let plan = plan_from_source(&app, &name, &body)?;
        if plan.name != name {
            return Err(ApiError::bad_request(
                "name",
                format!(
                    "the URL names pipeline `{name}` but the file's [pipeline] name is `{}`",
                    plan.name
                ),
            ));
        }
        let version = app
            .state
            .put_pipeline(&name, &body, now_ms())
            .map_err(ApiError::internal)?;
        let status = if version == 1 {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok((status, Json(Registered { name, version })))
    })
    .await
}

#[utoipa::path(
    delete,
    path = "/pipelines/{name}",
    tag = "pipelines",
    summary = "Delete a pipeline (its history stays)",
    description = "Requires role admin.",
    params(("name" = String, Path, description = "Pipeline name")),
    responses((status = 204, description = "Deleted")),
)]
async fn delete_pipeline(
    State(app): State<AppState>,
    caller: Caller,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<StatusCode> {
    sluice_store::off_workers(move || {
        caller.require(Role::Admin, Some(&name))?;
        match app
            .state
            .delete_pipeline(&name)
            .map_err(ApiError::internal)?
        {
            true => Ok(StatusCode::NO_CONTENT),
            false => Err(ApiError::not_found(format!("no pipeline `{name}`"))),
        }
    })
    .await
}

#[utoipa::path(
    post,
    path = "/pipelines/{name}/executions",
    tag = "executions",
    summary = "Start an execution of the latest version",
    description = "Requires role operator.",
    params(("name" = String, Path, description = "Pipeline name")),
    request_body(content = Option<StartRequest>, description = "Optional variable overrides and revision"),
    responses((status = 202, description = "Started: its id", body = Started)),
)]
async fn start_execution(
    State(app): State<AppState>,
    caller: Caller,
    UrlPath(name): UrlPath<String>,
    JsonBody(request): JsonBody<StartRequest>,
) -> ApiResult<(StatusCode, Json<Started>)> {
    sluice_store::off_workers(move || {
        caller.require(Role::Operator, Some(&name))?;
        let record = stored_pipeline(&app, &name, None)?;
        // Plugins may have changed since registration: validate again.
        let plan = Arc::new(plan_from_source(&app, &name, &record.source)?);
        let mut trigger = BTreeMap::from([
            ("kind".to_string(), "manual".to_string()),
            ("event".to_string(), caller.id.clone()),
        ]);
        if let Some(revision) = request.revision {
            trigger.insert("revision".into(), revision);
        }
        let started = admit(&app, plan, &request.variables, trigger)?;
        let id = super::launch(&app, started, record.version);
        Ok(accepted(id, name, record.version))
    })
    .await
}

/// Start an execution of `plan` if its limits allow, refusing loudly (never
/// dropping silently). The check and the start hold one lock in this process
/// and one in the store: two starts at the same moment, on this server or on
/// two sharing the database, cannot both take the last free place under
/// `max-executions`.
pub(super) fn admit(
    app: &AppState,
    plan: Arc<Plan>,
    overrides: &BTreeMap<String, String>,
    trigger: BTreeMap<String, String>,
) -> ApiResult<crate::engine::Begun> {
    let _admission = app.admission.lock().unwrap_or_else(|e| e.into_inner());
    let _across_servers = app
        .state
        .hold_admission(&plan.name)
        .map_err(ApiError::internal)?;
    check_limits(app, &plan)?;
    app.executor
        .begin(plan, overrides, trigger)
        .map_err(|e| ApiError::bad_request("variables", format!("{e:#}")))
}

fn check_limits(app: &AppState, plan: &Plan) -> ApiResult<()> {
    let in_progress = app
        .state
        .in_progress(&plan.name)
        .map_err(ApiError::internal)?;
    if in_progress >= plan.max_executions {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "pipeline `{}` already has {in_progress} executions in progress (max-executions = {}); try again later",
                plan.name, plan.max_executions
            ),
        ));
    }
    let waiting = app
        .executor
        .waiting(&plan.name)
        .map_err(ApiError::internal)?;
    if waiting >= plan.queue_depth {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "pipeline `{}` already has {waiting} executions waiting at stage boundaries (queue-depth = {}); try again later",
                plan.name, plan.queue_depth
            ),
        ));
    }
    Ok(())
}

#[utoipa::path(
    post,
    path = "/executions/{id}/stop",
    tag = "executions",
    summary = "Stop a running execution: finish (running actions end) or abandon",
    description = "Requires role operator.",
    params(("id" = String, Path, description = "Execution id, a unique prefix of one, or `latest`")),
    request_body(content = Option<StopRequest>),
    responses((status = 202, description = "Stopping", body = Stopping)),
)]
async fn stop_execution(
    State(app): State<AppState>,
    caller: Caller,
    UrlPath(id): UrlPath<String>,
    JsonBody(request): JsonBody<StopRequest>,
) -> ApiResult<(StatusCode, Json<Stopping>)> {
    sluice_store::off_workers(move || {
        let execution = visible_execution(&app, &caller, &id)?;
        caller.require(Role::Operator, Some(&execution.pipeline))?;
        let reason = request
            .reason
            .unwrap_or_else(|| format!("requested by {}", caller.id));
        let stopped_here = app
            .executor
            .stop(&execution.id, request.mode, &reason)
            .map_err(ApiError::internal)?;
        // Another server runs it: its lease loop applies the request (within a
        // third of its lease).
        let asked_holder = !stopped_here && {
            let forwarded = StopRequest {
                mode: request.mode,
                reason: Some(reason),
            };
            let forwarded = serde_json::to_string(&forwarded).map_err(ApiError::internal)?;
            (app.state)
                .request_stop(&execution.id, &forwarded)
                .map_err(ApiError::internal)?
        };
        if !stopped_here && !asked_holder {
            return Err(conflict(format!(
                "execution {id} is {}, not running",
                execution.status
            )));
        }
        Ok((
            StatusCode::ACCEPTED,
            Json(Stopping {
                id: execution.id,
                status: Status::Stopping,
            }),
        ))
    })
    .await
}

#[utoipa::path(
    post,
    path = "/executions/{id}/approvals/{action}",
    tag = "approvals",
    summary = "Approve or reject a manual approval (role per the approval's approvers)",
    description = "Requires role operator.",
    params(("id" = String, Path, description = "Execution id, a unique prefix of one, or `latest`"), ("action" = String, Path, description = "The approval action")),
    request_body(content = DecisionRequest),
    responses((status = 200, description = "Decided", body = Decided)),
)]
async fn decide_approval(
    State(app): State<AppState>,
    caller: Caller,
    UrlPath((id, action)): UrlPath<(String, String)>,
    JsonBody(request): JsonBody<DecisionRequest>,
) -> ApiResult<Json<Decided>> {
    sluice_store::off_workers(move || {
    let execution = visible_execution(&app, &caller, &id)?;
    let decision = required("decision", request.decision)?;
    let token = required("token", request.token)?;
    let approve = decision == sluice_api::Decision::Approve;
    let approval = app
        .state
        .approval(&execution.id, &action)
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("execution {id} has no approval `{action}`")))?;
    let role = Role::from_name(&approval.approvers).unwrap_or(Role::Admin);
    caller.require(role, Some(&execution.pipeline))?;
    if approval.token != token {
        return Err(ApiError::bad_request(
            "token",
            "the token does not match this approval (it changes when the approval is asked again)",
        ));
    }
    let decided = app
        .state
        .decide_approval(
            &execution.id,
            &action,
            &sluice_store::state::Decision {
                token: &token,
                approve,
                by: &caller.id,
                comment: &request.comment,
                now_ms: now_ms(),
            },
        )
        .map_err(ApiError::internal)?;
    if !decided {
        return Err(conflict(format!(
            "approval `{action}` is already {}",
            approval.status
        )));
    }
    app.executor.approvals_changed();
    let status = if approve {
        ApprovalStatus::Approved
    } else {
        ApprovalStatus::Rejected
    };
    Ok(Json(Decided {
        execution: execution.id,
        action,
        status,
        by: caller.id,
    }))
    })
    .await
}

/// A field a request may not leave out.
fn required<T>(field: &str, value: Option<T>) -> ApiResult<T> {
    value.ok_or_else(|| ApiError::bad_request(field, format!("`{field}` is required")))
}

#[utoipa::path(
    put,
    path = "/pipelines/{name}/stages/{stage}/transition",
    tag = "pipelines",
    summary = "Enable or disable (with a reason) the transition into a stage",
    description = "Requires role operator.",
    params(("name" = String, Path, description = "Pipeline name"), ("stage" = String, Path, description = "Stage name")),
    request_body(content = TransitionRequest),
    responses((status = 200, description = "The transition", body = Transition)),
)]
async fn set_transition(
    State(app): State<AppState>,
    caller: Caller,
    UrlPath((name, stage)): UrlPath<(String, String)>,
    JsonBody(request): JsonBody<TransitionRequest>,
) -> ApiResult<Json<Transition>> {
    sluice_store::off_workers(move || {
        caller.require(Role::Operator, Some(&name))?;
        let enabled = required("enabled", request.enabled)?;
        let record = stored_pipeline(&app, &name, None)?;
        let plan = plan_from_source(&app, &name, &record.source)?;
        if !plan.stages.iter().any(|s| s.name == stage) {
            return Err(ApiError::not_found(format!(
                "pipeline `{name}` has no stage `{stage}`"
            )));
        }
        let disabled = match (enabled, request.reason) {
            (true, _) => None,
            (false, Some(reason)) if !reason.trim().is_empty() => Some(reason),
            (false, _) => {
                return Err(ApiError::bad_request(
                    "reason",
                    "disabling a transition needs a reason",
                ));
            }
        };
        app.state
            .set_transition(&name, &stage, disabled.as_deref(), &caller.id, now_ms())
            .map_err(ApiError::internal)?;
        app.executor.set_transition(&name, &stage, disabled.clone());
        Ok(Json(Transition {
            pipeline: name,
            stage,
            enabled: disabled.is_none(),
            reason: disabled,
        }))
    })
    .await
}

/// Per stage: its transition, the latest execution that entered it and that
/// execution's actions there (status, summary, percent, error).
#[utoipa::path(
    get,
    path = "/pipelines/{name}/state",
    tag = "pipelines",
    summary = "Per stage: transition, current execution, actions with progress and approval tokens",
    description = "Requires role viewer.",
    params(("name" = String, Path, description = "Pipeline name")),
    responses((status = 200, description = "The state per stage", body = PipelineState)),
)]
async fn pipeline_state(
    State(app): State<AppState>,
    caller: Caller,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<Json<PipelineState>> {
    sluice_store::off_workers(move || {
        caller.require(Role::Viewer, Some(&name))?;
        let record = stored_pipeline(&app, &name, None)?;
        let plan = plan_from_source(&app, &name, &record.source)?;
        let disabled: Vec<(String, String, String)> = app
            .state
            .disabled_transitions()
            .map_err(ApiError::internal)?;
        let recent = ExecutionFilter {
            pipeline: Some(&name),
            status: None,
            limit: 50,
            offset: 0,
        };
        let executions = app
            .state
            .list_executions(&recent)
            .map_err(ApiError::internal)?;
        let mut stages = Vec::new();
        for stage in &plan.stages {
            let transition = disabled
                .iter()
                .find(|(p, s, _)| *p == name && *s == stage.name)
                .map(|(_, _, r)| r.clone());
            let (current, skipped) = current_run(&app, &executions, &stage.name)?;
            stages.push(StageState {
                stage: stage.name.clone(),
                transition: TransitionState {
                    enabled: transition.is_none(),
                    reason: transition,
                },
                actions: sluice_api::views::planned_actions(stage),
                conditions: sluice_api::views::stage_conditions(stage),
                current,
                skipped,
            });
        }
        Ok(Json(PipelineState {
            pipeline: name,
            version: record.version,
            execution_mode: plan.execution_mode,
            variables: plan.variables.clone(),
            stages,
        }))
    })
    .await
}

/// The newest of `executions` (newest first) that ran `stage`, with its
/// actions; and the newest that skipped it, if that one is newer.
fn current_run(
    app: &AppState,
    executions: &[ExecutionRecord],
    stage: &str,
) -> ApiResult<(Option<CurrentRun>, Option<SkippedRun>)> {
    let mut skipped = None;
    for execution in executions {
        let runs = app
            .state
            .stages(&execution.id)
            .map_err(ApiError::internal)?;
        let Some(run) = runs.iter().find(|r| r.stage == stage) else {
            continue;
        };
        if run.status == Status::Skipped {
            skipped.get_or_insert_with(|| SkippedRun {
                execution: execution.id.clone(),
                reason: run.error.clone(),
            });
            continue;
        }
        let actions = app
            .state
            .actions(&execution.id)
            .map_err(ApiError::internal)?;
        let actions = actions
            .into_iter()
            .filter(|a| a.stage == stage)
            .map(|a| ActionState {
                approval: approval_state(app, &execution.id, &a.action),
                action: a.action,
                status: a.status,
                started_ms: a.started_ms,
                ended_ms: a.ended_ms,
                attempts: a.attempts,
                summary: a.summary,
                error: a.error,
                percent: a.percent,
                progress: a.progress,
            })
            .collect();
        let current = CurrentRun {
            execution: execution.id.clone(),
            status: run.status,
            actions,
        };
        return Ok((Some(current), skipped));
    }
    Ok((None, skipped))
}

/// The approval an action asks (or asked) for, if it is an approval action.
fn approval_state(app: &AppState, execution: &str, action: &str) -> Option<ApprovalState> {
    let approval = app.state.approval(execution, action).ok().flatten()?;
    Some(ApprovalState {
        token: approval.token,
        status: approval.status,
        approvers: approval.approvers,
        message: approval.message,
        expires_ms: approval.expires_ms,
        decided_by: approval.decided_by,
        comment: approval.comment,
    })
}

/// `POST /webhooks/{name}`: a GitHub-style delivery, authenticated by its
/// X-Hub-Signature-256 only (over `timestamp.body` when X-Sluice-Timestamp is
/// sent, which must then be within `--webhook-max-age`). The execution it
/// starts is recorded before the answer (202); a delivery the filters reject,
/// a `ping`, or a repeated X-GitHub-Delivery id gets 200.
#[utoipa::path(
    post,
    path = "/webhooks/{name}",
    tag = "webhooks",
    summary = "GitHub-style push/pull_request/ping delivery (up to 25 MiB)",
    description = "Authenticated by X-Hub-Signature-256 only, not by a token.",
    params(("name" = String, Path, description = "Pipeline name"), ("X-GitHub-Event" = String, Header, description = "push, pull_request or ping"), ("X-Hub-Signature-256" = String, Header, description = "sha256=<HMAC-SHA256 of the body, or of `<X-Sluice-Timestamp>.<body>`>"), ("X-GitHub-Delivery" = Option<String>, Header, description = "Delivery id; a repeated one starts nothing"), ("X-Sluice-Timestamp" = Option<String>, Header, description = "Unix seconds, signed with the body; must be within --webhook-max-age")),
    request_body(content = Object, description = "The provider's JSON payload"),
    responses((status = 200, description = "A ping (`pong`), a repeated delivery (`duplicate`, `id`) or a delivery the filters reject (`ignored`)", body = WebhookAnswer), (status = 202, description = "An execution started", body = WebhookAnswer)),
    security(()),
)]
async fn webhook(
    State(app): State<AppState>,
    UrlPath(name): UrlPath<String>,
    headers: axum::http::HeaderMap,
    RawBody(body): RawBody,
) -> ApiResult<(StatusCode, Json<WebhookAnswer>)> {
    sluice_store::off_workers(move || {
        let record = stored_pipeline(&app, &name, None)?;
        let plan = Arc::new(plan_from_source(&app, &name, &record.source)?);
        let trigger = plan.triggers.webhook.clone().ok_or_else(|| {
            ApiError::not_found(format!("pipeline `{name}` has no [triggers.webhook]"))
        })?;
        let key = app.executor.secret(&trigger.secret).ok_or_else(|| {
            ApiError::internal(format!(
                "webhook secret `{}` has no value on this host",
                trigger.secret
            ))
        })?;
        let header = |name: &str| headers.get(name).and_then(|h| h.to_str().ok());
        sluice_core::triggers::verify_delivery(
            key.as_bytes(),
            &body,
            header("x-hub-signature-256"),
            header(sluice_core::triggers::TIMESTAMP_HEADER),
            app.limits.webhook_max_age,
        )
        .map_err(|why| ApiError::unauthorized(format!("webhook rejected: {why}")))?;
        let event = header("x-github-event").ok_or_else(|| {
            ApiError::bad_request("X-GitHub-Event", "missing X-GitHub-Event header")
        })?;
        if event == "ping" {
            return Ok((
                StatusCode::OK,
                Json(WebhookAnswer::Pong {
                    pong: true,
                    pipeline: name,
                }),
            ));
        }
        let Some(delivery_id) = header("x-github-delivery") else {
            return start_delivery(&app, &name, &record, plan, &trigger, event, &body);
        };
        if let Some(first) = app
            .state
            .claim_delivery(&name, delivery_id, now_ms())
            .map_err(ApiError::internal)?
        {
            return Ok((
                StatusCode::OK,
                Json(WebhookAnswer::Duplicate {
                    duplicate: delivery_id.to_string(),
                    id: first,
                    pipeline: name,
                }),
            ));
        }
        let answer = start_delivery(&app, &name, &record, plan, &trigger, event, &body);
        let stored = match &answer {
            Ok((_, Json(WebhookAnswer::Started { id, .. }))) => {
                app.state.set_delivery_execution(&name, delivery_id, id)
            }
            Ok(_) => Ok(()),
            // Not handled: the sender's redelivery should be tried afresh.
            Err(_) => app.state.release_delivery(&name, delivery_id),
        };
        stored.map_err(ApiError::internal)?;
        answer
    })
    .await
}

/// Start the execution a verified delivery asks for, unless the filters or
/// the pipeline's limits refuse it.
fn start_delivery(
    app: &AppState,
    name: &str,
    record: &PipelineRecord,
    plan: Arc<Plan>,
    trigger: &sluice_core::triggers::WebhookTrigger,
    event: &str,
    body: &[u8],
) -> ApiResult<(StatusCode, Json<WebhookAnswer>)> {
    let delivery = sluice_core::triggers::parse_delivery(event, body)
        .map_err(|why| ApiError::bad_request("body", why))?;
    if let Err(why) = trigger.accepts(&delivery) {
        return Ok((
            StatusCode::OK,
            Json(WebhookAnswer::Ignored { ignored: why }),
        ));
    }
    let started = admit(app, plan, &BTreeMap::new(), delivery.variables())?;
    let id = super::launch(app, started, record.version);
    Ok((
        StatusCode::ACCEPTED,
        Json(WebhookAnswer::Started {
            id,
            pipeline: name.to_string(),
            revision: delivery.revision,
        }),
    ))
}

/// Query of `GET /executions`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    pipeline: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
    offset: Option<usize>,
}

const STATUSES: [&str; 6] = [
    "InProgress",
    "Succeeded",
    "Failed",
    "Superseded",
    "Stopping",
    "Stopped",
];

#[utoipa::path(
    get,
    path = "/executions",
    tag = "executions",
    summary = "List executions, newest first",
    description = "Requires role viewer.",
    params(ListQuery),
    responses((status = 200, description = "A page of executions", body = ExecutionPage)),
)]
async fn list_executions(
    State(app): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<ListQuery>,
) -> ApiResult<Json<ExecutionPage>> {
    sluice_store::off_workers(move || {
        caller.require(Role::Viewer, query.pipeline.as_deref())?;
        if let Some(status) = &query.status
            && !STATUSES.contains(&status.as_str())
        {
            return Err(ApiError::bad_request(
                "status",
                format!("unknown status `{status}`; use one of {STATUSES:?}"),
            ));
        }
        let limit = query.limit.unwrap_or(50);
        if !(1..=500).contains(&limit) {
            return Err(ApiError::bad_request(
                "limit",
                "limit must be between 1 and 500",
            ));
        }
        let filter = ExecutionFilter {
            pipeline: query.pipeline.as_deref(),
            status: query.status.as_deref(),
            limit,
            offset: query.offset.unwrap_or(0),
        };
        let executions = app
            .state
            .list_executions(&filter)
            .map_err(ApiError::internal)?;
        let visible: Vec<&ExecutionRecord> = executions
            .iter()
            .filter(|e| caller.may_see(&e.pipeline))
            .collect();
        Ok(Json(sluice_api::views::execution_list(
            &visible,
            limit,
            filter.offset,
        )))
    })
    .await
}

/// The execution named by `id`: a full id, a unique prefix, or `latest` (the
/// newest execution this caller may see), as the local CLI accepts them.
fn visible_execution(app: &AppState, caller: &Caller, id: &str) -> ApiResult<ExecutionRecord> {
    let found = if id == "latest" {
        latest_visible(app, caller)?
    } else {
        app.state
            .execution(id)
            .map_err(|e| ApiError::bad_request("id", format!("{e:#}")))?
    };
    let execution = found.ok_or_else(|| ApiError::not_found(format!("no execution `{id}`")))?;
    caller.require(Role::Viewer, Some(&execution.pipeline))?;
    Ok(execution)
}

/// The newest execution of a pipeline the caller may see.
fn latest_visible(app: &AppState, caller: &Caller) -> ApiResult<Option<ExecutionRecord>> {
    const PAGE: usize = 200;
    for page in 0.. {
        let filter = ExecutionFilter {
            pipeline: None,
            status: None,
            limit: PAGE,
            offset: page * PAGE,
        };
        let executions = app
            .state
            .list_executions(&filter)
            .map_err(ApiError::internal)?;
        let done = executions.len() < PAGE;
        if let Some(found) = executions.into_iter().find(|e| caller.may_see(&e.pipeline)) {
            return Ok(Some(found));
        }
        if done {
            break;
        }
    }
    Ok(None)
}

#[utoipa::path(
    get,
    path = "/executions/{id}",
    tag = "executions",
    summary = "An execution: stages, actions with resolved configuration, artifacts, variables",
    description = "Requires role viewer.",
    params(("id" = String, Path, description = "Execution id, a unique prefix of one, or `latest`")),
    responses((status = 200, description = "The execution", body = ExecutionDetail)),
)]
async fn get_execution(
    State(app): State<AppState>,
    caller: Caller,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<Json<ExecutionDetail>> {
    sluice_store::off_workers(move || {
        let execution = visible_execution(&app, &caller, &id)?;
        let mut document = sluice_api::views::execution(app.state.as_ref(), &execution)
            .map_err(ApiError::internal)?;
        if let Some(version) = execution.pipeline_version
            && let Some(record) = (app.state)
                .pipeline(&execution.pipeline, Some(version))
                .map_err(ApiError::internal)?
            && let Some(plan) = app.plans.get(&app, &record)
        {
            document.inputs = sluice_api::views::action_inputs(&plan);
        }
        Ok(Json(document))
    })
    .await
}

#[utoipa::path(
    get,
    path = "/whoami",
    tag = "access",
    summary = "The caller's token: id, role and pipeline scope",
    description = "Requires any valid token.",
    responses((status = 200, description = "The token", body = Whoami)),
)]
async fn whoami(caller: Caller) -> Json<Whoami> {
    Json(Whoami {
        token: caller.id.clone(),
        role: caller.role().name().to_string(),
        pipelines: caller.scope().unwrap_or_default().to_vec(),
    })
}

#[utoipa::path(
    get,
    path = "/plugins",
    tag = "plugins",
    summary = "The installed plugins: versions, component digests and the capabilities each may request",
    description = "Requires role viewer.",
    responses((status = 200, description = "The plugins", body = PluginList)),
)]
async fn list_plugins(State(app): State<AppState>, caller: Caller) -> ApiResult<Json<PluginList>> {
    caller.require(Role::Viewer, None)?;
    let registry = app.registry.clone();
    let installed = tokio::task::spawn_blocking(move || registry.list())
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let plugins = installed
        .into_iter()
        .map(|plugin| {
            let manifest = plugin.manifest;
            let granted = manifest.capabilities;
            PluginInfo {
                name: manifest.name,
                version: manifest.version.to_string(),
                world: manifest.world,
                description: manifest.description,
                sha256: manifest.sha256,
                capabilities: PluginCapabilities {
                    secrets: granted.secrets,
                    hosts: granted.hosts,
                    commands: granted.commands,
                    mounts: granted.mounts,
                    caches: granted.caches,
                },
            }
        })
        .collect();
    Ok(Json(PluginList { plugins }))
}

#[utoipa::path(
    post,
    path = "/pipelines/{name}/stages/{stage}/rollback",
    tag = "executions",
    summary = "Roll a stage back: run it again with an earlier execution's artifacts and variables",
    description = "Requires role operator. Starts an execution of type rollback (trigger kind `rollback`, event the target's id) that runs only this stage.",
    params(("name" = String, Path, description = "Pipeline name"), ("stage" = String, Path, description = "Stage name")),
    request_body(content = Option<RollbackRequest>),
    responses((status = 202, description = "Rolling back: the new execution's id", body = Started)),
)]
async fn rollback_stage(
    State(app): State<AppState>,
    caller: Caller,
    UrlPath((name, stage)): UrlPath<(String, String)>,
    JsonBody(request): JsonBody<RollbackRequest>,
) -> ApiResult<(StatusCode, Json<Started>)> {
    sluice_store::off_workers(move || {
        caller.require(Role::Operator, Some(&name))?;
        let record = stored_pipeline(&app, &name, None)?;
        let plan = Arc::new(plan_from_source(&app, &name, &record.source)?);
        if !plan.stages.iter().any(|s| s.name == stage) {
            return Err(ApiError::not_found(format!(
                "pipeline `{name}` has no stage `{stage}`"
            )));
        }
        let target = match &request.execution {
            Some(id) => {
                let target = visible_execution(&app, &caller, id)?;
                if target.pipeline != name {
                    return Err(conflict(format!(
                        "execution {} is of pipeline `{}`, not `{name}`",
                        target.id, target.pipeline
                    )));
                }
                if let Some(refusal) =
                    rollback_refusal(&app, &plan, &stage, &target, record.version)?
                {
                    return Err(conflict(refusal));
                }
                target
            }
            // The latest success is what runs now: go back to the one before.
            None => earlier_success(&app, &plan, &stage, record.version, 1)?,
        };
        let id = start_rollback(&app, plan, &target, &stage, record.version, None)?
            .ok_or_else(|| ApiError::internal("the rollback was not started"))?;
        Ok(accepted(id, name, record.version))
    })
    .await
}

#[utoipa::path(
    post,
    path = "/executions/{id}/stages/{stage}/conditions/{condition}/override",
    tag = "executions",
    summary = "Override the condition that failed a stage: run the stage again as if its rules had passed",
    description = "Requires role operator. Only the latest execution, failed in this stage by its `before-entry` or `on-success` condition. The audit log records who.",
    params(("id" = String, Path, description = "Execution id, a unique prefix of one, or `latest`"), ("stage" = String, Path, description = "Stage name"), ("condition" = String, Path, description = "`before-entry` or `on-success`")),
    responses((status = 202, description = "Retrying the stage with the condition overridden", body = RetryStarted)),
)]
async fn override_condition(
    State(app): State<AppState>,
    caller: Caller,
    UrlPath((id, stage, condition)): UrlPath<(String, String, String)>,
) -> ApiResult<(StatusCode, Json<RetryStarted>)> {
    sluice_store::off_workers(move || {
    let execution = visible_execution(&app, &caller, &id)?;
    caller.require(Role::Operator, Some(&execution.pipeline))?;
    let when = match condition.as_str() {
        "before-entry" => When::BeforeEntry,
        "on-success" => When::OnSuccess,
        _ => {
            return Err(ApiError::bad_request(
                "condition",
                format!(
                    "`{condition}` cannot be overridden: only before-entry and on-success conditions fail a stage"
                ),
            ));
        }
    };
    let stages = (app.state.stages(&execution.id)).map_err(ApiError::internal)?;
    let failed_by_it = stages.iter().any(|s| {
        s.stage == stage
            && s.status == Status::Failed
            && s.error
                .as_deref()
                .is_some_and(|e| e.starts_with(&format!("{condition} condition not met")))
    });
    if !failed_by_it {
        return Err(conflict(format!(
            "stage `{stage}` of execution {} did not fail by its {condition} condition",
            execution.id
        )));
    }
    latest_failed(&app, &execution)?;
    let plan = super::resumable_plan(&app, &execution).map_err(conflict)?;
    let started = app
        .executor
        .reopen_for_retry(
            plan,
            &execution.id,
            &stage,
            false,
            Some((when, caller.id.as_str())),
        )
        .map_err(reopen_refused)?;
    super::run_to_end(&app, started);
    Ok((
        StatusCode::ACCEPTED,
        Json(RetryStarted {
            id: execution.id,
            stage,
            mode: sluice_api::RetryScope::Failed,
        }),
    ))
    })
    .await
}

/// Refuse unless `execution` failed and is its pipeline's latest.
fn latest_failed(app: &AppState, execution: &ExecutionRecord) -> ApiResult<()> {
    if execution.status != Status::Failed {
        return Err(conflict(format!(
            "execution {} is {}; only a failed execution can be retried",
            execution.id, execution.status
        )));
    }
    let latest = ExecutionFilter {
        pipeline: Some(&execution.pipeline),
        status: None,
        limit: 1,
        offset: 0,
    };
    let newest = app
        .state
        .list_executions(&latest)
        .map_err(ApiError::internal)?;
    if newest.first().map(|e| e.id.as_str()) != Some(execution.id.as_str()) {
        return Err(conflict(format!(
            "only the latest execution of `{}` can be retried",
            execution.pipeline
        )));
    }
    Ok(())
}

/// Start a rollback of `stage` to `target` (checked), under the limits a
/// start is; `asked_by` the execution whose condition asked for it, if one
/// did (`None` back: another process started it).
fn start_rollback(
    app: &AppState,
    plan: Arc<Plan>,
    target: &ExecutionRecord,
    stage: &str,
    version: i64,
    asked_by: Option<&str>,
) -> ApiResult<Option<String>> {
    let _admission = app.admission.lock().unwrap_or_else(|e| e.into_inner());
    let _across_servers = app
        .state
        .hold_admission(&plan.name)
        .map_err(ApiError::internal)?;
    check_limits(app, &plan)?;
    let started = app
        .executor
        .begin_rollback(plan, &target.id, stage, asked_by)
        .map_err(ApiError::internal)?;
    let Some(started) = started else {
        return Ok(None);
    };
    Ok(Some(super::launch(app, started, version)))
}

/// After execution `id` failed because a condition of `stage` asked for a
/// rollback (the ask is stored with its end): roll the stage back to the
/// latest execution that succeeded in it under the current version. The new
/// execution's id; `None` when another process started it. A rollback that
/// cannot start is asked no more.
pub(super) fn roll_back_after(app: &AppState, id: &str, stage: &str) -> ApiResult<Option<String>> {
    let started = (|| {
        let execution = (app.state.execution(id))
            .map_err(ApiError::internal)?
            .ok_or_else(|| ApiError::not_found(format!("no execution {id}")))?;
        let record = stored_pipeline(app, &execution.pipeline, None)?;
        let plan = Arc::new(plan_from_source(app, &record.name, &record.source)?);
        let target = earlier_success(app, &plan, stage, record.version, 0)?;
        start_rollback(app, plan, &target, stage, record.version, Some(id))
    })();
    // A refusal (no earlier success, limits) is final: the ask is dropped. A
    // failure of the store may pass, so the ask stays for the next lease-loop
    // turn to try again (`roll_back_what_was_asked`).
    if let Err(refused) = &started
        && !refused.status.is_server_error()
        && let Err(e) = app.state.drop_rollback(id)
    {
        tracing::warn!(execution = %id, "forgetting a rollback that cannot start: {e:#}");
    }
    started
}

/// Why `target` cannot be rolled back to in `stage`, if it cannot.
fn rollback_refusal(
    app: &AppState,
    plan: &Plan,
    stage: &str,
    target: &ExecutionRecord,
    version: i64,
) -> ApiResult<Option<String>> {
    let stages = app.state.stages(&target.id).map_err(ApiError::internal)?;
    let status = stages.iter().find(|s| s.stage == stage).map(|s| s.status);
    Ok(app
        .executor
        .rollback_refusal(plan, stage, target, status, version))
}

/// A rollback target: the newest execution that may be rolled back to in
/// `stage`, after passing over `newer` such executions.
fn earlier_success(
    app: &AppState,
    plan: &Plan,
    stage: &str,
    version: i64,
    newer: usize,
) -> ApiResult<ExecutionRecord> {
    let recent = ExecutionFilter {
        pipeline: Some(&plan.name),
        status: None,
        limit: 200,
        offset: 0,
    };
    let executions = app
        .state
        .list_executions(&recent)
        .map_err(ApiError::internal)?;
    let mut eligible = Vec::new();
    let mut refusal = None;
    for execution in executions {
        match rollback_refusal(app, plan, stage, &execution, version)? {
            None => eligible.push(execution),
            Some(why) if eligible.is_empty() => refusal = refusal.or(Some(why)),
            Some(_) => {}
        }
        if eligible.len() == newer + 1 {
            return Ok(eligible.swap_remove(newer));
        }
    }
    let why = match (eligible.len(), refusal) {
        (n, _) if n > 0 => format!(
            "only one execution (the latest, {}) succeeded in stage `{stage}` under version {version}: nothing earlier to roll back to",
            eligible[0].id
        ),
        (_, Some(why)) if plan.stages.first().is_some_and(|s| s.name == stage) => why,
        _ => format!("no execution succeeded in stage `{stage}` under version {version}"),
    };
    Err(conflict(why))
}

/// The 202 answer to a request that started execution `id` of version
/// `version` of pipeline `pipeline`.
fn accepted(id: String, pipeline: String, version: i64) -> (StatusCode, Json<Started>) {
    let started = Started {
        id,
        pipeline,
        version,
    };
    (StatusCode::ACCEPTED, Json(started))
}

/// Why reopening an execution for a retry failed: 409 when it runs already
/// (a retry or an override through another server was first), else 500.
fn reopen_refused(error: anyhow::Error) -> ApiError {
    match error.downcast_ref::<sluice_store::state::AlreadyRunning>() {
        Some(running) => conflict(running.to_string()),
        None => ApiError::internal(error),
    }
}

fn conflict(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, message)
}

#[utoipa::path(
    post,
    path = "/executions/{id}/stages/{stage}/retry",
    tag = "executions",
    summary = "Retry a failed stage of the latest execution (failed or all actions)",
    description = "Requires role operator.",
    params(("id" = String, Path, description = "Execution id, a unique prefix of one, or `latest`"), ("stage" = String, Path, description = "Stage name")),
    request_body(content = Option<RetryRequest>),
    responses((status = 202, description = "Retrying", body = RetryStarted)),
)]
async fn retry_stage(
    State(app): State<AppState>,
    caller: Caller,
    UrlPath((id, stage)): UrlPath<(String, String)>,
    JsonBody(request): JsonBody<RetryRequest>,
) -> ApiResult<(StatusCode, Json<RetryStarted>)> {
    sluice_store::off_workers(move || {
        let execution = visible_execution(&app, &caller, &id)?;
        caller.require(Role::Operator, Some(&execution.pipeline))?;
        let all = request.mode == sluice_api::RetryScope::All;
        latest_failed(&app, &execution)?;
        let stages = app
            .state
            .stages(&execution.id)
            .map_err(ApiError::internal)?;
        match stages.iter().find(|s| s.stage == stage) {
            Some(record) if record.status == Status::Failed => {}
            Some(record) => {
                return Err(conflict(format!(
                    "stage `{stage}` is {}; only a failed stage can be retried",
                    record.status
                )));
            }
            None => {
                return Err(ApiError::not_found(format!(
                    "execution {id} has no stage `{stage}` that ran"
                )));
            }
        }
        let plan = super::resumable_plan(&app, &execution).map_err(conflict)?;
        let started = app
            .executor
            .reopen_for_retry(plan, &execution.id, &stage, all, None)
            .map_err(reopen_refused)?;
        super::run_to_end(&app, started);
        Ok((
            StatusCode::ACCEPTED,
            Json(RetryStarted {
                id: execution.id,
                stage,
                mode: request.mode,
            }),
        ))
    })
    .await
}

/// Query of `GET /executions/{id}/logs`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    action: Option<String>,
    /// Only lines stored after the line with this id, in storage order (for following).
    after: Option<i64>,
}

/// Most lines one `?after=` page returns.
const LOG_PAGE: usize = 5000;

#[utoipa::path(
    get,
    path = "/executions/{id}/logs",
    tag = "executions",
    summary = "Logs of an execution (masked) and its status; ?after=<line id> follows it",
    description = "Requires role viewer.",
    params(("id" = String, Path, description = "Execution id, a unique prefix of one, or `latest`"), LogsQuery),
    responses((status = 200, description = "Log lines", body = LogPage)),
)]
async fn get_logs(
    State(app): State<AppState>,
    caller: Caller,
    UrlPath(id): UrlPath<String>,
    QueryParams(query): QueryParams<LogsQuery>,
) -> ApiResult<Json<LogPage>> {
    sluice_store::off_workers(move || {
        // The status is read before the lines: when it is final, every line is there.
        let execution = visible_execution(&app, &caller, &id)?;
        let action = query.action.as_deref();
        let lines = match query.after {
            Some(after) => app.state.logs_after(&execution.id, action, after, LOG_PAGE),
            None => app.state.logs(&execution.id, action),
        }
        .map_err(ApiError::internal)?;
        Ok(Json(sluice_api::views::logs(
            &execution.id,
            execution.status,
            &lines,
        )))
    })
    .await
}

/// Query of `GET /executions/{id}/logs/download`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct LogDownloadQuery {
    /// Only this action's lines.
    action: Option<String>,
}

#[utoipa::path(
    get,
    path = "/executions/{id}/logs/download",
    tag = "executions",
    summary = "Logs of an execution (masked) as a text file to save: one line each, with its time, action, attempt and stream",
    description = "Requires role viewer. The lines are as stored (colour escapes included), in storage order; the file is named after the execution and the action.",
    params(("id" = String, Path, description = "Execution id, a unique prefix of one, or `latest`"), LogDownloadQuery),
    responses((status = 200, description = "The log, `text/plain` as an attachment", body = String, content_type = "text/plain")),
)]
async fn download_logs(
    State(app): State<AppState>,
    caller: Caller,
    UrlPath(id): UrlPath<String>,
    QueryParams(query): QueryParams<LogDownloadQuery>,
) -> ApiResult<axum::response::Response> {
    sluice_store::off_workers(move || {
        let execution = visible_execution(&app, &caller, &id)?;
        let action = query.action.as_deref();
        let lines = (app.state.logs(&execution.id, action)).map_err(ApiError::internal)?;
        let file = log_file_name(&execution.id, action);
        axum::response::Response::builder()
            .header(
                axum::http::header::CONTENT_TYPE,
                "text/plain; charset=utf-8",
            )
            .header(
                axum::http::header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file}\""),
            )
            .body(axum::body::Body::from(log_text(&lines)))
            .map_err(ApiError::internal)
    })
    .await
}

/// `<execution>[-<action>].log`, with anything but letters, digits, `.`,
/// `_` and `-` replaced, so the name is safe in a header and on any disk.
fn log_file_name(execution: &str, action: Option<&str>) -> String {
    let name = match action {
        Some(action) => format!("{execution}-{action}.log"),
        None => format!("{execution}.log"),
    };
    name.chars()
        .map(|c| match c.is_ascii_alphanumeric() || "._-".contains(c) {
            true => c,
            false => '_',
        })
        .collect()
}

/// Stored log lines as a text file: `<time> [<action> #<attempt>] <stream> <line>`.
fn log_text(lines: &[sluice_store::state::LogRecord]) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    for line in lines {
        let time = chrono::DateTime::from_timestamp_millis(line.ts_ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_else(|| line.ts_ms.to_string());
        let _ = writeln!(
            text,
            "{time} [{} #{}] {:<7} {}",
            line.action, line.attempt, line.stream, line.line
        );
    }
    text
}

/// The output artifacts of a visible execution.
fn execution_artifacts(
    app: &AppState,
    execution: &ExecutionRecord,
) -> ApiResult<Vec<sluice_api::views::ArtifactEntry>> {
    let actions = app
        .state
        .actions(&execution.id)
        .map_err(ApiError::internal)?;
    Ok(sluice_api::views::artifact_entries(&actions))
}

#[utoipa::path(
    get,
    path = "/executions/{id}/artifacts",
    tag = "executions",
    summary = "Output artifacts of an execution: name, producing action, digest, files, bytes",
    description = "Requires role viewer.",
    params(("id" = String, Path, description = "Execution id, a unique prefix of one, or `latest`")),
    responses((status = 200, description = "The artifacts", body = ArtifactList)),
)]
async fn list_artifacts(
    State(app): State<AppState>,
    caller: Caller,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<Json<ArtifactList>> {
    sluice_store::off_workers(move || {
        let execution = visible_execution(&app, &caller, &id)?;
        let entries = execution_artifacts(&app, &execution)?;
        Ok(Json(sluice_api::views::artifacts(&execution.id, &entries)))
    })
    .await
}

/// `GET /executions/{id}/artifacts/{name}`: the artifact's tree as a tar
/// stream. Its digest is checked first; a corrupt artifact is refused (500,
/// naming both digests) rather than served under its recorded digest.
#[utoipa::path(
    get,
    path = "/executions/{id}/artifacts/{name}",
    tag = "executions",
    summary = "One artifact's tree as a tar stream (files, executable bits, symlinks); its digest is verified first",
    description = "Requires role viewer.",
    params(("id" = String, Path, description = "Execution id, a unique prefix of one, or `latest`"), ("name" = String, Path, description = "Artifact name")),
    responses((status = 200, description = "The tree as a tar archive; X-Sluice-Digest names its blake3 digest", content_type = "application/x-tar"), (status = 500, description = "The stored artifact no longer matches its digest")),
)]
async fn get_artifact(
    State(app): State<AppState>,
    caller: Caller,
    UrlPath((id, name)): UrlPath<(String, String)>,
) -> ApiResult<axum::response::Response> {
    let looking = app.clone();
    let (execution, entry) = sluice_store::off_workers(move || {
        let execution = visible_execution(&looking, &caller, &id)?;
        let entry = execution_artifacts(&looking, &execution)?
            .into_iter()
            .find(|a| a.name == name)
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "execution {} has no artifact `{name}`",
                    execution.id
                ))
            })?;
        Ok::<_, ApiError>((execution, entry))
    })
    .await?;
    let name = entry.name.clone();
    if let Err(e) = app.executor.fetch_artifact(&entry.digest).await {
        tracing::warn!("fetching artifact {}: {e:#}", entry.digest);
    }
    let store = app.executor.artifacts().clone();
    if !store.contains(&entry.digest) {
        return Err(ApiError::not_found(format!(
            "artifact `{name}` of execution {} is no longer in the artifact store",
            execution.id
        )));
    }
    let (digest, label) = (entry.digest.clone(), entry.name.clone());
    let path = tokio::task::spawn_blocking(move || {
        sluice_store::export::verified_path(&store, &label, &digest)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
    let body = tar_body(path);
    axum::response::Response::builder()
        .header(axum::http::header::CONTENT_TYPE, "application/x-tar")
        .header("X-Sluice-Digest", format!("blake3:{}", entry.digest))
        .body(body)
        .map_err(ApiError::internal)
}

/// Pack `dir` on a blocking thread, streaming the tar to the response as it
/// is written (memory stays flat whatever the artifact's size). A failure
/// midway ends the body with an error, so the client sees a broken download
/// rather than a short, valid-looking one.
fn tar_body(dir: std::path::PathBuf) -> axum::body::Body {
    let (sender, receiver) = tokio::sync::mpsc::channel::<std::io::Result<axum::body::Bytes>>(8);
    tokio::task::spawn_blocking(move || {
        let writer = ChannelWriter(sender.clone());
        let out = std::io::BufWriter::with_capacity(64 * 1024, writer);
        if let Err(e) = sluice_store::export::pack(&dir, out) {
            tracing::warn!("streaming artifact {} failed: {e:#}", dir.display());
            let _ = sender.blocking_send(Err(std::io::Error::other(format!("{e:#}"))));
        }
    });
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        let chunk = receiver.recv().await?;
        Some((chunk, receiver))
    });
    axum::body::Body::from_stream(stream)
}

/// `Write` into the response body's channel (from a blocking thread).
struct ChannelWriter(tokio::sync::mpsc::Sender<std::io::Result<axum::body::Bytes>>);

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Ok(axum::body::Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Send `sender` every stored event after `after` that is `wanted`, in order,
/// then each new one as `live` says there is more, until the client leaves.
///
/// The store is the stream: a broadcast only says that there is more. Events
/// are numbered under the store's lock but broadcast after it, so they can
/// arrive out of order (or, for a slow subscriber, not at all); reading
/// everything after the last one sent never skips or repeats one.
async fn follow_events(
    state: Arc<dyn sluice_store::state::Store>,
    mut live: tokio::sync::broadcast::Receiver<EventRecord>,
    after: i64,
    wanted: impl Fn(&EventRecord) -> bool,
    sender: tokio::sync::mpsc::Sender<EventRecord>,
) {
    use tokio::sync::broadcast::error::RecvError;
    let mut last = after;
    let signals = state.signals();
    loop {
        // Registered before the read: an event stored in between still wakes us.
        let elsewhere = signals.events().notified();
        tokio::pin!(elsewhere);
        elsewhere.as_mut().enable();
        let store = state.clone();
        let Ok(events) =
            sluice_store::off_workers(move || store.events_after(last, EVENT_PAGE)).await
        else {
            return;
        };
        let full_page = events.len() == EVENT_PAGE;
        for event in events {
            last = event.seq;
            if wanted(&event) && sender.send(event).await.is_err() {
                return;
            }
        }
        if full_page {
            continue;
        }
        // This process's events wake the stream at once, and so do other
        // servers' on PostgreSQL (NOTIFY); the look is the safety net, and
        // how SQLite sees another process's events.
        tokio::select! {
            received = live.recv() => if let Err(RecvError::Closed) = received {
                return;
            },
            () = &mut elsewhere => {}
            () = tokio::time::sleep(STORE_LOOK) => {}
        }
    }
}

/// How often an idle event stream reads the store for events other processes
/// (servers on the same database) recorded, when nothing told it sooner.
const STORE_LOOK: std::time::Duration = std::time::Duration::from_secs(1);

/// Most events read from the store at once for one event stream.
const EVENT_PAGE: usize = 1000;

/// Query of `GET /events`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    /// Only this pipeline.
    pipeline: Option<String>,
    /// Only this execution.
    execution: Option<String>,
    /// Replay events after this sequence number (as the Last-Event-ID header does).
    after: Option<i64>,
}

/// `GET /events`: Server-Sent Events of state changes. Reconnect with
/// `Last-Event-ID` (or `?after=`) to get everything missed: delivery is at
/// least once. Without either, the stream starts now.
#[utoipa::path(
    get,
    path = "/events",
    tag = "events",
    summary = "Server-Sent Events of state changes; resume with Last-Event-ID or ?after=",
    description = "Requires role viewer.",
    params(EventsQuery, ("Last-Event-ID" = Option<String>, Header, description = "Replay events after this sequence number")),
    responses((status = 200, description = "An event stream", content_type = "text/event-stream")),
)]
async fn stream_events(
    State(app): State<AppState>,
    caller: Caller,
    headers: axum::http::HeaderMap,
    QueryParams(query): QueryParams<EventsQuery>,
) -> ApiResult<
    axum::response::sse::Sse<
        impl futures::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
    >,
> {
    caller.require(Role::Viewer, query.pipeline.as_deref())?;
    let header = headers.get("last-event-id").and_then(|h| h.to_str().ok());
    let after = match (query.after, header) {
        (Some(after), _) => after,
        (None, Some(id)) => id.trim().parse().map_err(|_| {
            ApiError::bad_request("Last-Event-ID", format!("`{id}` is not an event id"))
        })?,
        (None, None) => {
            let state = app.state.clone();
            (sluice_store::off_workers(move || state.last_event_seq()).await)
                .map_err(ApiError::internal)?
        }
    };
    // Subscribe before reading the backlog, so nothing falls between the two.
    let live = app.executor.subscribe_events();
    let (sender, receiver) = tokio::sync::mpsc::channel(256);
    let wanted = move |e: &EventRecord| {
        caller.may_see(&e.pipeline)
            && query.pipeline.as_ref().is_none_or(|p| *p == e.pipeline)
            && query.execution.as_ref().is_none_or(|x| *x == e.execution)
    };
    tokio::spawn(follow_events(
        app.state.clone(),
        live,
        after,
        wanted,
        sender,
    ));
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        let event = receiver.recv().await?;
        let sse = axum::response::sse::Event::default()
            .id(event.seq.to_string())
            .event(format!("{}.{}", event.kind, event.state))
            .json_data(&event)
            .unwrap_or_default();
        Some((Ok(sse), receiver))
    });
    Ok(axum::response::sse::Sse::new(stream).keep_alive(axum::response::sse::KeepAlive::default()))
}

/// Query of `GET /audit`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    after: Option<i64>,
    limit: Option<usize>,
}

#[utoipa::path(
    get,
    path = "/audit",
    tag = "audit",
    summary = "The audit log of mutating calls and token management; an admin token scoped to pipelines reads only those pipelines' entries",
    description = "Requires role admin.",
    params(AuditQuery),
    responses((status = 200, description = "Audit entries", body = AuditPage)),
)]
async fn get_audit(
    State(app): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<AuditQuery>,
) -> ApiResult<Json<AuditPage>> {
    sluice_store::off_workers(move || {
        caller.require(Role::Admin, None)?;
        // A scoped admin reads its pipelines' entries only, not global ones.
        let entries = app
            .state
            .audit_log(
                query.after.unwrap_or(0),
                query.limit.unwrap_or(500).min(5000),
                caller.scope(),
            )
            .map_err(ApiError::internal)?;
        Ok(Json(AuditPage { entries }))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_store::state::prelude::*;

    fn event(execution: &str) -> EventRecord {
        EventRecord {
            seq: 0,
            ts_ms: 0,
            execution: execution.into(),
            pipeline: "p".into(),
            kind: "action".into(),
            name: "a".into(),
            state: "STARTED".into(),
            detail: String::new(),
        }
    }

    #[tokio::test]
    async fn a_follower_sends_what_was_stored_in_order_whatever_the_broadcast_says() {
        let dir = tempfile::tempdir().unwrap();
        let state =
            Arc::new(sluice_store::state::SqliteStore::open(&dir.path().join("s.db")).unwrap());
        let before = state.append_event(event("old")).unwrap().seq;
        let (broadcast, live) = tokio::sync::broadcast::channel(4);
        let (sender, mut received) = tokio::sync::mpsc::channel(16);
        tokio::spawn(follow_events(state.clone(), live, before, |_| true, sender));
        // Two events stored concurrently; only the later one's broadcast
        // arrives (the other is still on its way, or was lost to lag).
        let first = state.append_event(event("x")).unwrap();
        let second = state.append_event(event("y")).unwrap();
        broadcast.send(second.clone()).unwrap();
        let got = [
            received.recv().await.unwrap(),
            received.recv().await.unwrap(),
        ];
        assert_eq!([got[0].seq, got[1].seq], [first.seq, second.seq]);
        // The late broadcast of the first repeats nothing.
        broadcast.send(first).unwrap();
        let third = state.append_event(event("z")).unwrap();
        broadcast.send(third.clone()).unwrap();
        assert_eq!(received.recv().await.unwrap().seq, third.seq);
    }
}
