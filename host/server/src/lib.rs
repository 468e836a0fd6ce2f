//! `sluice serve`: the JSON HTTP API over the same executor, state and artifact
//! stores as `sluice run`.
//!
//! Every `/api/v1` request passes through one middleware that resolves its bearer
//! token and, for mutating methods, appends (who, what, when, result) to the
//! audit log once the response is known, with the pipeline it concerns.
//!
//! Connections are served by hyper directly (not `axum::serve`) for the knobs
//! slow clients need: a header read timeout, a body read timeout and a cap on
//! concurrent connections. Every error answer is JSON.

#![deny(missing_docs)]

pub mod auth;
pub mod console;
pub mod engine;
mod extract;
mod handlers;
mod openapi;
mod plans;
mod rollback_retries;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{OriginalUri, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use auth::Caller;
pub use engine::{Begun, Engine, Reopened};
use sluice_core::metrics::{Histogram, escape_label_value};
use sluice_core::pipeline::Plan;
use sluice_core::plugin::Registry;
use sluice_core::units::now_ms;
use sluice_store::off_workers;
use sluice_store::state::Store;
use sluice_store::state::{ExecutionRecord, Owner};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    state: Arc<dyn Store>,
    registry: Registry,
    executor: Arc<dyn Engine>,
    /// Relative host paths in registered pipelines resolve against this.
    pipelines_root: PathBuf,
    /// Durations of finished actions (fed by the executor's events).
    action_durations: Arc<Histogram>,
    /// Timeouts, caps and windows of `sluice serve`.
    limits: Limits,
    /// Registered versions' plans for the background loops.
    plans: Arc<plans::PlanCache>,
    /// Held from the limit check to the recorded start of an execution.
    admission: Arc<std::sync::Mutex<()>>,
    /// This server as the holder of executions' leases.
    lease: Owner,
    /// Asked rollbacks that failed to start here, and when to try each again.
    rollback_retries: Arc<rollback_retries::RollbackRetries>,
}

/// Most bytes a request body may have, except webhook deliveries (axum's default).
pub const API_BODY_LIMIT: usize = 2 * 1024 * 1024;
/// Most bytes a webhook delivery may have: GitHub caps payloads at 25 MB.
pub const WEBHOOK_BODY_LIMIT: usize = 25 * 1024 * 1024;

/// What `sluice serve` allows slow or many clients, and old webhook deliveries.
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct Limits {
    /// Close a connection whose request headers are not complete this long
    /// after it opened (or after its previous response, when kept alive).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,
    /// Answer 408 and close the connection when a request body sends nothing
    /// for this long.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub body_timeout: Duration,
    /// Serve at most this many connections at once; more wait to be accepted
    /// until one closes.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Refuse a webhook delivery whose signed timestamp (X-Sluice-Timestamp)
    /// is further than this from now.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub webhook_max_age: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 512,
            webhook_max_age: Duration::from_secs(300),
        }
    }
}

impl AppState {
    /// Shared state for the handlers.
    pub fn new(
        state: Arc<dyn Store>,
        registry: Registry,
        executor: Arc<dyn Engine>,
        pipelines_root: PathBuf,
        action_durations: Arc<Histogram>,
    ) -> Self {
        Self {
            state,
            registry,
            executor,
            pipelines_root,
            action_durations,
            limits: Limits::default(),
            plans: Arc::default(),
            admission: Arc::default(),
            rollback_retries: Arc::default(),
            lease: Owner {
                id: format!("serve-{}", uuid::Uuid::new_v4().simple()),
                lease_ms: 30_000,
            },
        }
    }

    /// The same, holding executions' leases as `owner`.
    pub fn with_lease(mut self, owner: Owner) -> Self {
        self.lease = owner;
        self
    }

    /// The same, with these limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
}

/// The router: `/api/v1/...`, `/openapi.json`, `/health`, `/metrics` and
/// the web console (`/`, `/console/...`).
pub fn router(app: AppState) -> Router {
    let (api, api_document) = handlers::routes().split_for_parts();
    // Serialized once: the document cannot change while the server runs.
    let document = axum::body::Bytes::from(
        serde_json::to_vec(&openapi::document(api_document)).unwrap_or_default(),
    );
    let api =
        api.method_not_allowed_fallback(wrong_method)
            .layer(axum::middleware::from_fn_with_state(
                app.clone(),
                authenticate_and_audit,
            ));
    Router::new()
        .nest("/api/v1", api)
        .route(
            "/openapi.json",
            get(move || {
                let json = [(header::CONTENT_TYPE, "application/json")];
                std::future::ready((json, document.clone()))
            }),
        )
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(console::routes())
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(axum::middleware::from_fn_with_state(app.clone(), read_body))
        .layer(axum::middleware::from_fn(json_errors))
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(log_response)
                .on_failure(()),
        )
        .with_state(app)
}

/// `GET /health`: `ok` while the server answers.
#[utoipa::path(get, path = "/health", tag = "server", security(()), responses((status = 200, description = "`ok`", content_type = "text/plain")))]
async fn health() -> &'static str {
    "ok"
}

/// The span of one request: its method and path only. The query string and
/// the headers stay out of logs: they may carry tokens.
fn request_span(request: &Request) -> tracing::Span {
    tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path()
    )
}

/// One event per answered request, in its span: status and latency (until
/// the response head; a stream such as SSE may go on after it). Server
/// errors at error level, so they stand out.
fn log_response(response: &Response, latency: Duration, _span: &tracing::Span) {
    let status = response.status().as_u16();
    let latency_ms = latency.as_micros() as f64 / 1000.0;
    if response.status().is_server_error() {
        tracing::error!(status, latency_ms, "answered");
    } else {
        tracing::info!(status, latency_ms, "answered");
    }
}

/// 404 for a path no route serves, naming it.
async fn no_route(method: Method, OriginalUri(uri): OriginalUri) -> ApiError {
    ApiError::not_found(format!(
        "no route {method} {}; the API is described at /openapi.json",
        uri.path()
    ))
}

/// 405 for a method a route does not take (axum adds the `Allow` header).
async fn wrong_method(method: Method, OriginalUri(uri): OriginalUri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} does not take {method}; the Allow header lists the methods it takes",
            uri.path()
        ),
    )
}

/// Read the whole request body before routing, with a per-route size limit
/// (413) and a timeout between chunks (408, and the connection closes), so a
/// client that stops sending mid-body does not hold its connection forever.
async fn read_body(State(app): State<AppState>, request: Request, next: Next) -> Response {
    use http_body_util::BodyExt as _;
    let limit = if request.uri().path().starts_with("/api/v1/webhooks/") {
        WEBHOOK_BODY_LIMIT
    } else {
        API_BODY_LIMIT
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return closing(too_large(limit));
    }
    let (parts, mut body) = request.into_parts();
    let mut collected = Vec::new();
    loop {
        let frame = match tokio::time::timeout(app.limits.body_timeout, body.frame()).await {
            Err(_) => {
                return closing(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the request body sent nothing for {}; closing the connection",
                        humantime::format_duration(app.limits.body_timeout)
                    ),
                ));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return closing(ApiError::bad_request(
                    "body",
                    format!("reading the request body failed: {e}"),
                ));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            if collected.len() + data.len() > limit {
                return closing(too_large(limit));
            }
            collected.extend_from_slice(&data);
        }
    }
    next.run(Request::from_parts(parts, Body::from(collected)))
        .await
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "the request body is larger than this route's limit of {} MiB",
            limit / (1024 * 1024)
        ),
    )
    .limit_bytes(limit as u64)
}

/// An error answer after which the connection closes (its request was not
/// read to the end).
fn closing(error: ApiError) -> Response {
    let mut response = error.into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Make every error answer JSON, as a net under the handlers, fallbacks and
/// extractors (which answer with [`ApiError`] themselves) for anything axum
/// or a layer may still write as text: `{"error": "..."}`.
async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    // The console's own pages (sign-in refused) stay HTML.
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/html"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = match text.is_empty() {
        true => status.canonical_reason().unwrap_or("error").to_lowercase(),
        false => text,
    };
    let mut json = ApiError::new(status, message).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            json.headers_mut().insert(name, value.clone());
        }
    }
    json
}

/// Record which pipeline version a begun execution runs, then run it to its end
/// on its own task. Returns the execution id.
///
/// The execution is recorded already: it runs even when its version cannot
/// be recorded (a failing store), rather than stay InProgress with nothing
/// running it. Only a resume after a restart, which needs the version, is lost.
pub(crate) fn launch(app: &AppState, started: Begun, version: i64) -> String {
    let id = started.id.clone();
    if let Err(e) = app.state.set_execution_version(&id, version) {
        tracing::error!(execution = %id, "recording its pipeline version failed (it runs, but a restart cannot resume it): {e:#}");
    }
    run_to_end(app, started);
    id
}

/// Run a begun (or reopened) execution to its end on its own task; then
/// start the rollback a stage condition asked for, if one did.
pub(crate) fn run_to_end(app: &AppState, started: Begun) {
    let app = app.clone();
    tokio::spawn(async move {
        let id = started.id.clone();
        match started.run.await {
            Ok(None) => {}
            Ok(Some(stage)) => roll_back_as_asked(&app, id, stage).await,
            Err(e) => tracing::error!("execution failed internally: {e:#}"),
        }
    });
}

/// Start the rollback of `stage` that execution `id` asked for when it ended.
/// A refusal drops the ask; a failure of the store keeps it, to be tried
/// again later ([`rollback_retries`]).
async fn roll_back_as_asked(app: &AppState, id: String, stage: String) {
    let asked = app.clone();
    let (asked_by, asked_stage) = (id.clone(), stage.clone());
    let started = off_workers(move || handlers::roll_back_after(&asked, &asked_by, &asked_stage));
    let retries = &app.rollback_retries;
    match started.await {
        Ok(Some(rollback)) => {
            retries.forget(&id);
            tracing::info!(execution = %id, stage, rollback, "rolling back as a condition asked")
        }
        Ok(None) => {
            retries.forget(&id);
            tracing::info!(execution = %id, stage, "another server started the rollback")
        }
        Err(e) if e.status.is_server_error() => {
            match retries.failed(&id, std::time::Instant::now()) {
                rollback_retries::AfterFailure::TryAgainAfter(wait) => tracing::warn!(
                    execution = %id, stage,
                    "the rollback a condition asked for could not start ({}); tried again in {} unless the failed start took the ask (then it shows as a failed rollback)",
                    e.body.error, humantime::format_duration(wait)
                ),
                rollback_retries::AfterFailure::GiveUp => {
                    tracing::error!(
                        execution = %id, stage,
                        "the rollback a condition asked for could not start after {} tries; giving it up: {}",
                        rollback_retries::RollbackRetries::MAX_TRIES, e.body.error
                    );
                    let (state, dropped) = (app.state.clone(), id.clone());
                    match off_workers(move || state.drop_rollback(&dropped)).await {
                        Ok(()) => retries.forget(&id),
                        Err(e) => tracing::warn!("forgetting a rollback that cannot start: {e:#}"),
                    }
                }
            }
        }
        Err(e) => {
            retries.forget(&id);
            tracing::warn!(execution = %id, stage, "the rollback a condition asked for could not start: {}", e.body.error)
        }
    }
}

/// Start the rollbacks that executions asked for when they ended and that no
/// process started (the one that ended them died first, or the store failed
/// it), each when its retry is due.
async fn roll_back_what_was_asked(app: &AppState) {
    let state = app.state.clone();
    let pending = match off_workers(move || state.pending_rollbacks()).await {
        Ok(pending) => pending,
        Err(e) => return tracing::warn!("reading the rollbacks asked for: {e:#}"),
    };
    let ids: Vec<&str> = pending.iter().map(|(id, _)| id.as_str()).collect();
    app.rollback_retries.keep_only(&ids);
    for (id, stage) in pending {
        if app.rollback_retries.is_due(&id, std::time::Instant::now()) {
            roll_back_as_asked(app, id, stage).await;
        }
    }
}

/// Look for asked rollbacks as often as the lease loop turns, from start-up
/// on, on a task of its own so that a slow start never delays a renewal.
async fn run_asked_rollbacks(app: AppState) {
    loop {
        roll_back_what_was_asked(&app).await;
        tokio::time::sleep(renewal_interval(&app.lease)).await;
    }
}

/// Resume what a previous server process left InProgress, then serve until the
/// process is stopped. `listening` is told the bound address (the port may
/// have been 0) once connections are accepted.
pub async fn serve(
    app: AppState,
    listen: SocketAddr,
    drain: Duration,
    listening: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let starting = app.clone();
    off_workers(move || -> anyhow::Result<()> {
        let transitions = starting.state.disabled_transitions()?;
        starting.executor.sync_transitions(transitions);
        starting.state.lease_as(starting.lease.clone());
        take_over(&starting, true)
    })
    .await?;
    tokio::spawn(run_leases(app.clone()));
    tokio::spawn(run_asked_rollbacks(app.clone()));
    tokio::spawn(run_cron(app.clone()));
    tokio::spawn(run_polls(app.clone()));
    tokio::spawn(run_notifications(app.clone()));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let address = listener.local_addr()?;
    tracing::info!(%address, "listening");
    listening(address);
    let (stop_accepting, stopped) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(accept_connections(
        listener,
        router(app.clone()),
        app.limits,
        stopped,
    ));
    let signal = termination_signal().await?;
    let _ = stop_accepting.send(true);
    drain_executions(&app, signal, drain).await;
    // Open streams (SSE) would hold a graceful shutdown forever: stop here.
    server.abort();
    Ok(())
}

/// Accept and serve connections until `stop` turns true, then let each open
/// connection finish its current request and close. At most
/// `max_connections` are served at once: beyond that, the next connection
/// waits in the listen backlog until one closes.
async fn accept_connections(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: Limits,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections as usize));
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
            _ = stop.changed() => return,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, or the peer left: retry shortly.
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            let connection =
                builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = stop.changed() => {}
            }
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        });
    }
}

/// Wait for SIGTERM or SIGINT; returns its name.
async fn termination_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    })
}

/// Let running executions finish for up to `drain`. What is still running
/// after that stays InProgress in the state store and is resumed by the next
/// start; its native commands die with this process.
async fn drain_executions(app: &AppState, signal: &str, drain: Duration) {
    let running = app.executor.running_executions();
    tracing::warn!(
        "{signal}: no longer accepting requests; waiting up to {} for {running} running execution(s)",
        humantime::format_duration(drain)
    );
    let drained = tokio::time::timeout(drain, async {
        while app.executor.running_executions() > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "{} execution(s) still running after the drain timeout; they resume at the next start",
            app.executor.running_executions()
        );
    }
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "server", summary = "Prometheus metrics", security(()), responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
async fn metrics(State(app): State<AppState>) -> Result<String, ApiError> {
    let mut out = String::from(
        "# HELP sluice_executions Executions recorded, by status.\n# TYPE sluice_executions gauge\n",
    );
    for (status, count) in app.state.execution_counts().map_err(ApiError::internal)? {
        out.push_str(&format!(
            "sluice_executions{{status=\"{}\"}} {count}\n",
            escape_label_value(&status)
        ));
    }
    out.push_str("# HELP sluice_queue_depth Executions waiting at stage boundaries, by pipeline.\n# TYPE sluice_queue_depth gauge\n");
    for pipeline in app.state.pipelines().map_err(ApiError::internal)? {
        let waiting = (app.executor)
            .waiting(&pipeline.name)
            .map_err(ApiError::internal)?;
        out.push_str(&format!(
            "sluice_queue_depth{{pipeline=\"{}\"}} {waiting}\n",
            escape_label_value(&pipeline.name)
        ));
    }
    app.action_durations.render(
        "sluice_action_duration_seconds",
        "Wall time of finished actions, retries included.",
        &mut out,
    );
    app.executor.instantiations().render(
        "sluice_plugin_instantiation_seconds",
        "Time to instantiate a plugin for one invocation.",
        &mut out,
    );
    Ok(out)
}

/// Start executions of registered pipelines whose cron schedules come due.
/// Schedules are UTC; fires missed while the server was down are not caught up.
async fn run_cron(app: AppState) {
    let mut schedules: HashMap<(String, i64), Vec<(String, cron::Schedule)>> = HashMap::new();
    let state = app.state.clone();
    let started_ms = off_workers(move || state.clock_ms()).await;
    let mut last_check =
        chrono::DateTime::from_timestamp_millis(started_ms).unwrap_or_else(chrono::Utc::now);
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        // Ticks come due by the store's clock, so a server whose own clock
        // runs ahead does not fire them early.
        let state = app.state.clone();
        let read = off_workers(move || anyhow::Ok((state.pipelines()?, state.clock_ms()))).await;
        let (pipelines, now) = match read {
            Ok((pipelines, now_ms)) => (
                pipelines,
                chrono::DateTime::from_timestamp_millis(now_ms).unwrap_or_else(chrono::Utc::now),
            ),
            Err(e) => {
                tracing::error!("cron: reading pipelines failed: {e:#}");
                continue;
            }
        };
        for record in pipelines {
            let key = (record.name.clone(), record.version);
            let due: Vec<(String, i64)> = schedules
                .entry(key)
                .or_insert_with(|| cron_schedules(&app, &record))
                .iter()
                .filter_map(|(expression, schedule)| {
                    let next = schedule.after(&last_check).next()?;
                    (next <= now).then(|| (expression.clone(), next.timestamp_millis()))
                })
                .collect();
            for (expression, due_ms) in due {
                let (app, record) = (app.clone(), record.clone());
                off_workers(move || fire_cron(&app, &record, &expression, due_ms)).await;
            }
        }
        last_check = now;
    }
}

/// Poll each registered pipeline's source action (`[triggers] poll`) on its
/// interval; a new revision starts an execution with `#{trigger.revision}`.
async fn run_polls(app: AppState) {
    let mut next_due: HashMap<String, std::time::Instant> = HashMap::new();
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        let state = app.state.clone();
        let Ok(pipelines) = off_workers(move || state.pipelines()).await else {
            continue;
        };
        for record in pipelines {
            let Some(plan) = app.plans.get(&app, &record) else {
                continue;
            };
            let Some((action, interval)) = plan.triggers.poll.clone() else {
                continue;
            };
            let now = std::time::Instant::now();
            if next_due.get(&record.name).is_some_and(|due| *due > now) {
                continue;
            }
            next_due.insert(record.name.clone(), now + interval);
            if let Err(e) = poll_once(&app, &record, plan, &action).await {
                tracing::warn!("poll of {}/{action}: {e:#}", record.name);
            }
        }
    }
}

/// Hand stored events, in order, to each pipeline's `[notifications]` action.
/// The cursor only moves past an event once it was delivered (or not wanted),
/// so delivery is at least once, across restarts too.
async fn run_notifications(app: AppState) {
    let mut backoff = std::time::Duration::from_millis(300);
    loop {
        tokio::time::sleep(backoff).await;
        // One server delivers at a time (the others stand by), so an event
        // reaches its target once; a server that takes over goes on from the
        // shared cursor.
        let state = app.state.clone();
        let owner = app.lease.clone();
        let held = off_workers(move || {
            let now = state.clock_ms();
            state.hold_notifier(&owner.id, now, now + owner.lease_ms)
        })
        .await;
        match held {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!("claiming notification delivery failed: {e:#}");
                continue;
            }
        }
        let state = app.state.clone();
        let Ok(events) = off_workers(move || state.events_after(state.notify_cursor()?, 100)).await
        else {
            continue;
        };
        backoff = std::time::Duration::from_millis(300);
        for event in events {
            let plan = match app.state.pipeline(&event.pipeline, None) {
                Ok(Some(record)) => app.plans.get(&app, &record),
                _ => None,
            };
            let wanted = plan
                .as_ref()
                .and_then(|p| p.notifications.as_ref())
                .is_some_and(|n| n.wants(&event.kind, &event.state));
            if let (true, Some(plan)) = (wanted, plan)
                && let Err(e) = app.executor.notify(plan, &event).await
            {
                tracing::warn!("notifying event {} failed, will retry: {e:#}", event.seq);
                backoff = std::time::Duration::from_secs(2);
                break;
            }
            if app.state.set_notify_cursor(event.seq).is_err() {
                break;
            }
        }
    }
}

async fn poll_once(
    app: &AppState,
    record: &sluice_store::state::PipelineRecord,
    plan: Arc<Plan>,
    action: &str,
) -> anyhow::Result<()> {
    let (state, name, polled) = (app.state.clone(), record.name.clone(), action.to_string());
    let last = off_workers(move || state.poll_revision(&name, &polled)).await?;
    let revisions = app
        .executor
        .poll(plan.clone(), action, last.clone())
        .await?;
    let Some(newest) = revisions.last().cloned() else {
        return Ok(());
    };
    let (app, record, action) = (app.clone(), record.clone(), action.to_string());
    off_workers(move || start_polled(&app, &record, plan, &action, last, &newest)).await
}

/// Claim revision `newest` of `action` (it was `last`) and start an
/// execution of it.
fn start_polled(
    app: &AppState,
    record: &sluice_store::state::PipelineRecord,
    plan: Arc<Plan>,
    action: &str,
    last: Option<String>,
    newest: &str,
) -> anyhow::Result<()> {
    let trigger = std::collections::BTreeMap::from([
        ("kind".to_string(), "poll".to_string()),
        ("event".to_string(), action.to_string()),
        ("revision".to_string(), newest.to_string()),
    ]);
    // Claimed before the start, as a cron fire is: of the servers polling
    // this source, the one whose swap succeeds starts the execution. A start
    // that is refused (max-executions) gives the revision back for the next
    // poll; a crash in between loses that start (at most once, like cron).
    let state = &app.state;
    let name = &record.name;
    if !state.swap_poll_revision(name, action, last.as_deref(), Some(newest), now_ms())? {
        return Ok(());
    }
    match handlers::admit(app, plan, &Default::default(), trigger) {
        Ok(started) => {
            launch(app, started, record.version);
            Ok(())
        }
        Err(e) => {
            state.swap_poll_revision(name, action, Some(newest), last.as_deref(), now_ms())?;
            Err(anyhow::anyhow!("{e}"))
        }
    }
}

fn cron_schedules(
    app: &AppState,
    record: &sluice_store::state::PipelineRecord,
) -> Vec<(String, cron::Schedule)> {
    let Some(plan) = app.plans.get(app, record) else {
        return Vec::new();
    };
    plan.triggers
        .cron
        .iter()
        .filter_map(|e| {
            sluice_core::triggers::parse_cron(e)
                .ok()
                .map(|s| (e.clone(), s))
        })
        .collect()
}

/// Claim a cron fire (servers sharing the database all see it: one claims
/// it) and start its execution.
fn fire_cron(
    app: &AppState,
    record: &sluice_store::state::PipelineRecord,
    expression: &str,
    due_ms: i64,
) {
    match app.state.claim_cron_fire(&record.name, expression, due_ms) {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            tracing::warn!("cron: claiming a fire of {} failed: {e:#}", record.name);
            return;
        }
    }
    if let Err(e) = start_scheduled(app, record, expression, due_ms) {
        tracing::warn!("cron: {} not started: {e:#}", record.name);
    }
}

fn start_scheduled(
    app: &AppState,
    record: &sluice_store::state::PipelineRecord,
    expression: &str,
    due_ms: i64,
) -> anyhow::Result<()> {
    let plan = plans::parse_registered(app, &record.name, &record.source)
        .map_err(|d| anyhow::anyhow!("{d}"))?;
    let scheduled = chrono::DateTime::from_timestamp_millis(due_ms)
        .map(|due| due.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default();
    let trigger = std::collections::BTreeMap::from([
        ("kind".to_string(), "cron".to_string()),
        ("event".to_string(), expression.to_string()),
        ("scheduled".to_string(), scheduled),
    ]);
    let started = handlers::admit(app, Arc::new(plan), &Default::default(), trigger)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    launch(app, started, record.version);
    Ok(())
}

/// Take over the InProgress executions no live process holds (their holder
/// died: its lease ran out), and with `own` those this server's id holds (its
/// previous life), and continue each, or fail it with the reason it cannot.
/// Two servers racing for one execution: the lease goes to one.
fn take_over(app: &AppState, own: bool) -> anyhow::Result<()> {
    let owner = &app.lease;
    let now = app.state.clock_ms();
    for id in app.state.unleased_executions(&owner.id, now, own)? {
        let until = now.saturating_add(owner.lease_ms);
        if !app.state.claim_execution(&id, &owner.id, now, until)? {
            continue;
        }
        if let Some(execution) = app.state.execution(&id)? {
            resume(app, &execution)?;
        }
    }
    Ok(())
}

/// Renew this server's leases every third of their length, and take over
/// executions whose holder stopped renewing.
async fn run_leases(app: AppState) {
    loop {
        tokio::time::sleep(renewal_interval(&app.lease)).await;
        let looking = app.clone();
        off_workers(move || look_after_leases(&looking)).await;
    }
}

/// One round of [`run_leases`] (store calls: run off the tokio threads).
fn look_after_leases(app: &AppState) {
    renew(app.state.as_ref(), &app.lease);
    let_go_of_lost(app);
    apply_stop_requests(app);
    // Another server may have disabled or enabled a transition.
    match app.state.disabled_transitions() {
        Ok(all) => app.executor.sync_transitions(all),
        Err(e) => tracing::error!("reading transitions failed: {e:#}"),
    }
    if let Err(e) = take_over(app, false) {
        tracing::error!("taking over executions failed: {e:#}");
    }
}

/// Stop running here what another server took over while this one could not
/// renew (it was paused, or cut off from the database): its actions'
/// commands would otherwise run on next to the new holder's.
fn let_go_of_lost(app: &AppState) {
    for id in app.executor.running_ids() {
        match app.state.lease_holder(&id) {
            Ok(Some(holder)) if holder != app.lease.id => {
                tracing::warn!(execution = %id, holder, "lost the lease: abandoning it here");
                app.executor
                    .let_go(&id, &format!("the lease went to {holder}"));
            }
            Ok(_) => {}
            Err(e) => tracing::error!("looking up the lease of {id} failed: {e:#}"),
        }
    }
}

/// Stop the executions this server holds that someone asked to stop through
/// another server (see `handlers::stop_execution`).
fn apply_stop_requests(app: &AppState) {
    let requests = match app.state.stop_requests(&app.lease.id) {
        Ok(requests) => requests,
        Err(e) => {
            tracing::error!("reading stop requests failed: {e:#}");
            return;
        }
    };
    for (id, request) in requests {
        let request: sluice_api::StopRequest = match serde_json::from_str(&request) {
            Ok(request) => request,
            Err(e) => {
                tracing::error!(execution = %id, "an unreadable stop request: {e}");
                continue;
            }
        };
        let reason = request.reason.unwrap_or_default();
        if let Err(e) = app.executor.stop(&id, request.mode, &reason) {
            tracing::error!(execution = %id, "stopping as asked failed: {e:#}");
        }
    }
}

/// Keep `owner`'s leases (a `sluice run` holding its one execution) until the
/// task is dropped with its runtime.
pub async fn renew_leases_while_running(state: Arc<dyn Store>, owner: Owner) {
    loop {
        tokio::time::sleep(renewal_interval(&owner)).await;
        let (state, owner) = (state.clone(), owner.clone());
        off_workers(move || renew(state.as_ref(), &owner)).await;
    }
}

/// A third of the lease: two renewals may fail before it runs out.
fn renewal_interval(owner: &Owner) -> Duration {
    Duration::from_millis(u64::try_from(owner.lease_ms / 3).unwrap_or(1).max(50))
}

/// Extend every lease `owner` holds by its full length from now.
fn renew(state: &dyn Store, owner: &Owner) {
    let until = state.clock_ms().saturating_add(owner.lease_ms);
    if let Err(e) = state.renew_leases(&owner.id, until) {
        tracing::error!("renewing execution leases failed: {e:#}");
    }
}

/// Continue an interrupted execution, or fail it with the reason it cannot.
fn resume(app: &AppState, execution: &ExecutionRecord) -> anyhow::Result<()> {
    let reopened = resumable_plan(app, execution).and_then(|plan| {
        app.executor
            .reopen(plan, &execution.id)
            .map_err(|e| format!("interrupted, and resuming failed: {e:#}"))
    });
    match reopened {
        Ok(Reopened::Resume(started)) => {
            tracing::info!(
                execution = %execution.id,
                pipeline = %execution.pipeline,
                "resuming an interrupted execution"
            );
            run_to_end(app, started);
        }
        Ok(Reopened::Failed(reason)) => {
            tracing::warn!(execution = %execution.id, "failed on restart: {reason}")
        }
        Err(reason) => {
            tracing::warn!(execution = %execution.id, "failed on restart: {reason}");
            app.state.fail_execution(&execution.id, &reason, now_ms())?;
        }
    }
    Ok(())
}

/// The plan an interrupted execution ran: its registered pipeline version.
pub(crate) fn resumable_plan(
    app: &AppState,
    execution: &ExecutionRecord,
) -> Result<Arc<Plan>, String> {
    let version = execution
        .pipeline_version
        .ok_or("interrupted: it was started by `sluice run`, which does not resume")?;
    let record = app
        .state
        .pipeline(&execution.pipeline, Some(version))
        .map_err(|e| format!("interrupted: {e:#}"))?
        .ok_or_else(|| {
            format!(
                "interrupted: pipeline {} version {version} is no longer registered",
                execution.pipeline
            )
        })?;
    plans::parse_registered(app, &execution.pipeline, &record.source)
        .map(Arc::new)
        .map_err(|d| format!("interrupted, and its pipeline no longer validates: {d}"))
}

async fn authenticate_and_audit(
    State(app): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let header = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string);
    let mutating = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    // A refused token (unknown, expired, revoked) is answered here, and its
    // mutating attempts are audited too. Without a bearer header, the
    // console's session cookie authorizes the request.
    let cookie = console::session_secret(request.headers()).filter(|_| header.is_none());
    let resolved = {
        let (app, headers, header) = (app.clone(), request.headers().clone(), header.clone());
        off_workers(move || match cookie {
            Some(secret) => console::cookie_caller(&app, &secret, &headers, mutating).map(Some),
            None => Caller::from_header(app.state.as_ref(), header.as_deref()),
        })
        .await
    };
    // Inside the nested router the path lacks `/api/v1`; log the one called.
    let path = request
        .extensions()
        .get::<axum::extract::OriginalUri>()
        .map(|uri| uri.path().to_string())
        .unwrap_or_else(|| request.uri().path().to_string());
    let target = request
        .uri()
        .path()
        .split('/')
        .nth(2)
        .unwrap_or("")
        .to_string();
    let action = format!("{} {path}", request.method());
    let actor = match (&resolved, path.contains("/webhooks/")) {
        (Ok(Some(caller)), _) => caller.id.clone(),
        (Err(_), _) => "refused-token".to_string(),
        (Ok(None), true) => "webhook".to_string(),
        (Ok(None), false) => "anonymous".to_string(),
    };
    let pipeline = match mutating {
        true => audited_pipeline(&app, request.uri().path()),
        false => None,
    };
    let response = match resolved {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(error) => error.into_response(),
    };
    if mutating {
        let entry = sluice_store::state::AuditRecord {
            seq: 0,
            ts_ms: now_ms(),
            actor,
            action,
            target,
            result: response.status().as_u16().to_string(),
            pipeline,
        };
        let state = app.state.clone();
        if let Err(e) = off_workers(move || state.audit(&entry)).await {
            tracing::error!("writing the audit log failed: {e:#}");
            return ApiError::internal(e).into_response();
        }
    }
    response
}

/// The pipeline a request (path inside `/api/v1`) concerns, for the audit
/// log's scope: named in the path, or the pipeline of the named execution.
fn audited_pipeline(app: &AppState, path: &str) -> Option<String> {
    let mut segments = path.trim_start_matches('/').split('/');
    match (segments.next(), segments.next()) {
        (Some("pipelines" | "webhooks"), Some(name)) if !name.is_empty() => Some(name.to_string()),
        (Some("executions"), Some(id)) => app
            .state
            .execution(id)
            .ok()
            .flatten()
            .map(|execution| execution.pipeline),
        _ => None,
    }
}

/// An error answer: a status and a JSON body naming the problem (and the field,
/// when one request field is at fault).
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    /// Boxed: errors travel in every handler's `Result`, which stays small.
    body: Box<ErrorBody>,
}

pub use sluice_api::ErrorBody;

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            body: Box::new(ErrorBody {
                error: message.into(),
                ..ErrorBody::default()
            }),
        }
    }

    /// 400, naming the field at fault.
    pub fn bad_request(field: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message).field(field)
    }

    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 500; the detail goes to the server log, not to the caller.
    pub fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!("internal error: {error}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error; see the server log",
        )
    }

    /// Name the request field, parameter or part at fault.
    pub fn field(mut self, field: &str) -> Self {
        self.body.field = Some(field.to_string());
        self
    }

    /// Say why a token was refused.
    pub fn reason(mut self, reason: &str) -> Self {
        self.body.reason = Some(reason.to_string());
        self
    }

    /// Name the body limit that was exceeded.
    pub fn limit_bytes(mut self, limit: u64) -> Self {
        self.body.limit_bytes = Some(limit);
        self
    }

    /// Attach pipeline validation errors.
    pub fn diagnostics(mut self, diagnostics: Vec<sluice_api::Located>) -> Self {
        self.body.diagnostics = Some(diagnostics);
        self
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.body.error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(*self.body)).into_response()
    }
}
