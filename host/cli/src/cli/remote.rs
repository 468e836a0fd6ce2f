//! Client verbs against a running `sluice serve` (`--server URL --token T`).
//! They mirror the API one to one; `--output json` prints the API's JSON.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::de::DeserializeOwned;
use serde_json::json;
use sluice_api::{
    ApprovalStatus, AuditPage, Decided, ErrorBody, ExecutionDetail, ExecutionPage, LogPage,
    PipelineList, PipelineState, Registered, RetryStarted, Started, Stopping, Transition,
};
use sluice_store::state::{EventRecord, LogRecord, PipelineRecord, Status};

/// What a URL path segment or query value keeps as it is: RFC 3986's
/// unreserved characters. Everything else is percent-encoded.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `value` (a name or id) as one URL path segment, so it cannot add segments,
/// a query or a fragment. Empty, `.` and `..` are refused: URL parsing would
/// drop or climb over them, and no pipeline, execution or stage is named so.
pub(super) fn segment(value: &str) -> anyhow::Result<String> {
    anyhow::ensure!(
        !matches!(value, "" | "." | ".."),
        "`{value}` cannot be sent as a name in a URL path"
    );
    Ok(utf8_percent_encode(value, UNRESERVED).to_string())
}

/// `value` as a query string value.
fn query_value(value: &str) -> String {
    utf8_percent_encode(value, UNRESERVED).to_string()
}

/// A connection to the API.
pub struct Client {
    base: String,
    token: Option<String>,
    json: bool,
}

/// Registered-pipeline commands.
#[derive(Subcommand)]
pub enum PipelinesCommand {
    /// Register a pipeline file as a new version (admin).
    Put {
        /// The pipeline file.
        file: PathBuf,
    },
    /// List registered pipelines.
    List,
    /// Show a pipeline's latest (or given) version.
    Get {
        /// Pipeline name.
        name: String,
        /// A specific version.
        #[arg(long)]
        version: Option<i64>,
    },
    /// Per stage: transition, current execution, actions with progress and
    /// approval tokens.
    State {
        /// Pipeline name.
        name: String,
    },
    /// Disable (with a reason) or enable the transition into a stage (operator).
    Transition {
        /// Pipeline name.
        name: String,
        /// Stage name.
        stage: String,
        /// Disable with this reason; enable when absent.
        #[arg(long)]
        disable: Option<String>,
    },
    /// Delete a pipeline; its history stays (admin).
    Delete {
        /// Pipeline name.
        name: String,
    },
}

impl Client {
    /// A client for `server` (e.g. `http://127.0.0.1:8700`).
    pub fn new(server: &str, token: Option<String>, json: bool) -> Self {
        Self {
            base: server.trim_end_matches('/').to_string(),
            token,
            json,
        }
    }

    /// One API call, its answer read as the API's type for it; non-2xx answers
    /// become errors carrying the server's message.
    fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> anyhow::Result<T> {
        let url = format!("{}/api/v1{path}", self.base);
        let mut request = ureq::request(method, &url).timeout(Duration::from_secs(30));
        if let Some(token) = &self.token {
            request = request.set("Authorization", &format!("Bearer {token}"));
        }
        let result = match body {
            Some(body) => request.send_string(&body),
            None => request.call(),
        };
        match result {
            Ok(response) => {
                let text = response.into_string()?;
                // An empty answer (204) reads as JSON null, e.g. into `()`.
                let text = if text.trim().is_empty() {
                    "null"
                } else {
                    &text
                };
                serde_json::from_str(text)
                    .with_context(|| format!("{method} {url}: an answer this client cannot read"))
            }
            Err(ureq::Error::Status(code, response)) => {
                let body = error_body(response);
                let field = body
                    .field
                    .map(|f| format!(" (field `{f}`)"))
                    .unwrap_or_default();
                anyhow::bail!("{method} {url} → {code}: {}{field}", body.error)
            }
            Err(e) => Err(e).with_context(|| format!("cannot reach {}", self.base)),
        }
    }

    /// A GET of `path` (below `/api/v1`), as JSON.
    pub(super) fn get_json<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.call("GET", path, None)
    }

    /// A GET of `path` (below `/api/v1`) whose body is streamed, not parsed
    /// (an artifact's tar). No overall deadline: a large artifact takes time;
    /// only a stalled connection times out.
    pub(super) fn download(&self, path: &str) -> anyhow::Result<impl std::io::Read + use<>> {
        let url = format!("{}/api/v1{path}", self.base);
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(30))
            .timeout_read(Duration::from_secs(120))
            .build();
        let mut request = agent.get(&url);
        if let Some(token) = &self.token {
            request = request.set("Authorization", &format!("Bearer {token}"));
        }
        match request.call() {
            Ok(response) => Ok(response.into_reader()),
            Err(ureq::Error::Status(code, response)) => {
                anyhow::bail!("GET {url} → {code}: {}", error_body(response).error)
            }
            Err(e) => Err(e).with_context(|| format!("cannot reach {}", self.base)),
        }
    }

    /// The full id of an execution named by id, unique prefix or `latest`.
    fn resolve(&self, id: &str) -> anyhow::Result<String> {
        let answer: ExecutionDetail =
            self.call("GET", &format!("/executions/{}", segment(id)?), None)?;
        Ok(answer.execution.id)
    }

    fn print<T: serde::Serialize>(&self, value: &T, text: impl FnOnce(&T)) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(value).unwrap_or_default()
            );
        } else {
            text(value);
        }
    }

    /// `sluice pipelines ...`.
    pub fn pipelines(&self, command: PipelinesCommand) -> anyhow::Result<ExitCode> {
        match command {
            PipelinesCommand::Put { file } => {
                let source = std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
                let name = pipeline_name(&source)
                    .with_context(|| format!("{}: no [pipeline] name", file.display()))?;
                sluice_core::pipeline::check_name(&name)
                    .map_err(|why| anyhow::anyhow!("{}: {why}", file.display()))?;
                let path = format!("/pipelines/{}", segment(&name)?);
                let answer: Registered = self.call("PUT", &path, Some(source))?;
                self.print(&answer, |a| {
                    println!("registered {:?} version {}", a.name, a.version)
                });
            }
            PipelinesCommand::List => {
                let answer: PipelineList = self.call("GET", "/pipelines", None)?;
                self.print(&answer, |a| {
                    for p in &a.pipelines {
                        println!("{:<24} v{}", p.name, p.version);
                    }
                });
            }
            PipelinesCommand::Get { name, version } => {
                let pipeline = segment(&name)?;
                let path = match version {
                    Some(v) => format!("/pipelines/{pipeline}/versions/{v}"),
                    None => format!("/pipelines/{pipeline}"),
                };
                let answer: PipelineRecord = self.call("GET", &path, None)?;
                self.print(&answer, |a| {
                    print!("# {} version {}\n{}", name, a.version, a.source)
                });
            }
            PipelinesCommand::State { name } => {
                let path = format!("/pipelines/{}/state", segment(&name)?);
                let answer: PipelineState = self.call("GET", &path, None)?;
                self.print(&answer, print_state);
            }
            PipelinesCommand::Transition {
                name,
                stage,
                disable,
            } => {
                let body = sluice_api::TransitionRequest {
                    enabled: Some(disable.is_none()),
                    reason: disable.clone(),
                };
                let path = format!(
                    "/pipelines/{}/stages/{}/transition",
                    segment(&name)?,
                    segment(&stage)?
                );
                let answer: Transition = self.call("PUT", &path, Some(to_json(&body)?))?;
                self.print(&answer, |a| {
                    println!("{name}/{stage}: transition enabled = {}", a.enabled)
                });
            }
            PipelinesCommand::Delete { name } => {
                self.call::<()>("DELETE", &format!("/pipelines/{}", segment(&name)?), None)?;
                self.print(&json!({ "deleted": name }), |_| println!("deleted {name}"));
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    /// `sluice start NAME --var K=V`.
    pub fn start(
        &self,
        name: &str,
        variables: BTreeMap<String, String>,
    ) -> anyhow::Result<ExitCode> {
        let body = sluice_api::StartRequest {
            variables,
            revision: None,
        };
        let path = format!("/pipelines/{}/executions", segment(name)?);
        let answer: Started = self.call("POST", &path, Some(to_json(&body)?))?;
        self.print(&answer, |a| println!("{}", a.id));
        Ok(ExitCode::SUCCESS)
    }

    /// `sluice executions list` against the server.
    pub fn list_executions(
        &self,
        pipeline: Option<&str>,
        limit: usize,
    ) -> anyhow::Result<ExitCode> {
        let mut path = format!("/executions?limit={limit}");
        if let Some(pipeline) = pipeline {
            path.push_str(&format!("&pipeline={}", query_value(pipeline)));
        }
        let answer: ExecutionPage = self.call("GET", &path, None)?;
        self.print(&answer, |a| {
            for e in &a.executions {
                println!(
                    "{}  {:<16} {:<4} {:<11} {}",
                    e.id,
                    e.pipeline,
                    sluice_api::views::version_label(e.pipeline_version),
                    e.status,
                    super::report::escape_controls(e.error.as_deref().unwrap_or(""))
                );
            }
        });
        Ok(ExitCode::SUCCESS)
    }

    /// `sluice executions show ID` against the server.
    pub fn show_execution(&self, id: &str) -> anyhow::Result<ExitCode> {
        let answer: ExecutionDetail =
            self.call("GET", &format!("/executions/{}", segment(id)?), None)?;
        self.print(&answer, print_execution);
        Ok(ExitCode::SUCCESS)
    }

    /// `sluice logs ID [ACTION] [-f]` against the server.
    pub fn logs(&self, id: &str, action: Option<&str>, follow: bool) -> anyhow::Result<ExitCode> {
        let query = action
            .map(|a| format!("action={}", query_value(a)))
            .unwrap_or_default();
        if follow {
            return self.follow_logs(id, &query);
        }
        let path = format!("/executions/{}/logs?{query}", segment(id)?);
        let answer: LogPage = self.call("GET", &path, None)?;
        self.print(&answer, print_log_lines);
        Ok(ExitCode::SUCCESS)
    }

    /// Page through `?after=` until the execution has ended and no line is left.
    fn follow_logs(&self, id: &str, query: &str) -> anyhow::Result<ExitCode> {
        let mut after = 0;
        let execution = segment(id)?;
        loop {
            let path = format!("/executions/{execution}/logs?after={after}&{query}");
            let answer: LogPage = self.call("GET", &path, None)?;
            for line in &answer.lines {
                if self.json {
                    println!("{}", serde_json::to_string(line)?);
                } else {
                    print_log_line(line);
                }
                after = line.id;
            }
            let status = answer.status;
            if answer.lines.is_empty() && status.is_final() {
                eprintln!("execution {id}: {status}");
                return Ok(ExitCode::SUCCESS);
            }
            if answer.lines.is_empty() {
                std::thread::sleep(super::history::FOLLOW_POLL);
            }
        }
    }

    /// `sluice approve` against the server.
    pub fn approve(
        &self,
        id: &str,
        action: &str,
        token: &str,
        approve: bool,
        comment: &str,
    ) -> anyhow::Result<ExitCode> {
        let body = sluice_api::DecisionRequest {
            decision: Some(match approve {
                true => sluice_api::Decision::Approve,
                false => sluice_api::Decision::Reject,
            }),
            token: Some(token.to_string()),
            comment: comment.to_string(),
        };
        let path = format!(
            "/executions/{}/approvals/{}",
            segment(id)?,
            segment(action)?
        );
        let answer: Decided = self.call("POST", &path, Some(to_json(&body)?))?;
        self.print(&answer, |a| {
            println!("{} {action} of {}", a.status, a.execution)
        });
        Ok(ExitCode::SUCCESS)
    }

    /// `sluice stop`.
    pub fn stop(
        &self,
        id: &str,
        abandon: bool,
        reason: Option<String>,
    ) -> anyhow::Result<ExitCode> {
        let (mode, name) = match abandon {
            true => (sluice_api::StopMode::Abandon, "abandon"),
            false => (sluice_api::StopMode::Finish, "finish"),
        };
        let body = sluice_api::StopRequest { mode, reason };
        let path = format!("/executions/{}/stop", segment(id)?);
        let answer: Stopping = self.call("POST", &path, Some(to_json(&body)?))?;
        self.print(&answer, |a| println!("stopping {} ({name})", a.id));
        Ok(ExitCode::SUCCESS)
    }

    /// `sluice retry`.
    pub fn retry(&self, id: &str, stage: &str, all: bool) -> anyhow::Result<ExitCode> {
        let body = sluice_api::RetryRequest {
            mode: match all {
                true => sluice_api::RetryScope::All,
                false => sluice_api::RetryScope::Failed,
            },
        };
        let path = format!(
            "/executions/{}/stages/{}/retry",
            segment(id)?,
            segment(stage)?
        );
        let answer: RetryStarted = self.call("POST", &path, Some(to_json(&body)?))?;
        self.print(&answer, |a| println!("retrying stage {stage} of {}", a.id));
        Ok(ExitCode::SUCCESS)
    }

    /// `sluice rollback`.
    pub fn rollback(
        &self,
        pipeline: &str,
        stage: &str,
        to: Option<String>,
    ) -> anyhow::Result<ExitCode> {
        let body = sluice_api::RollbackRequest { execution: to };
        let path = format!(
            "/pipelines/{}/stages/{}/rollback",
            segment(pipeline)?,
            segment(stage)?
        );
        let answer: Started = self.call("POST", &path, Some(to_json(&body)?))?;
        self.print(&answer, |a| {
            println!(
                "rolling back stage {stage} of {pipeline}: execution {}",
                a.id
            )
        });
        Ok(ExitCode::SUCCESS)
    }

    /// `sluice audit`.
    pub fn audit(&self) -> anyhow::Result<ExitCode> {
        let answer: AuditPage = self.call("GET", "/audit", None)?;
        self.print(&answer, |a| {
            for e in &a.entries {
                println!("{} {:<18} {:<48} {}", e.ts_ms, e.actor, e.action, e.result);
            }
        });
        Ok(ExitCode::SUCCESS)
    }

    /// `sluice watch ID`: print the execution's state changes as the server
    /// streams them (`GET /events?execution=ID`, Server-Sent Events) until it
    /// ends; exit 0 if it succeeded, 1 if not.
    pub fn watch(&self, id: &str) -> anyhow::Result<ExitCode> {
        let execution = |id: &str| -> anyhow::Result<ExecutionDetail> {
            self.call("GET", &format!("/executions/{}", segment(id)?), None)
        };
        // The stream filters on the full id; the argument may be a prefix or
        // `latest`, resolved once so that a newer execution cannot take over.
        let id = self.resolve(id)?;
        // Subscribe before reading the current state, so no change falls between.
        let mut stream = self.events(&id, None)?;
        let mut current = execution(&id)?;
        for action in &current.actions {
            // What happened before the subscription, in the shape of an event.
            let record = EventRecord {
                seq: 0,
                ts_ms: action.ended_ms.unwrap_or(action.started_ms),
                execution: current.execution.id.clone(),
                pipeline: current.execution.pipeline.clone(),
                kind: "action".into(),
                name: action.action.clone(),
                state: action.status.to_string(),
                detail: action
                    .error
                    .clone()
                    .or(action.summary.clone())
                    .unwrap_or_default(),
            };
            self.print_event(&record);
        }
        let mut last_seq = None;
        while !current.execution.status.is_final() {
            match stream.next_event()? {
                Some(event) => {
                    last_seq = Some(event.seq);
                    self.print_event(&event);
                    // The execution's own transitions are recorded after its status.
                    if event.kind == "pipeline" {
                        current = execution(&id)?;
                    }
                }
                // The server closed the stream (it restarted, or this client lagged):
                // pick up where it stopped, then make sure it did not end meanwhile.
                None => {
                    std::thread::sleep(Duration::from_millis(300));
                    stream = self.events(&id, last_seq)?;
                    current = execution(&id)?;
                }
            }
        }
        Ok(self.watch_ended(&id, &current))
    }

    /// Open `GET /events?execution=ID` (from `after` when resuming).
    fn events(&self, id: &str, after: Option<i64>) -> anyhow::Result<EventStream> {
        let mut url = format!("{}/api/v1/events?execution={}", self.base, query_value(id));
        if let Some(after) = after {
            url.push_str(&format!("&after={after}"));
        }
        // No overall deadline: the stream lasts as long as the execution. The
        // server sends a keep-alive comment every 15 s, so a silent minute means
        // the connection is dead.
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(30))
            .timeout_read(Duration::from_secs(60))
            .build();
        let mut request = agent.get(&url).set("Accept", "text/event-stream");
        if let Some(token) = &self.token {
            request = request.set("Authorization", &format!("Bearer {token}"));
        }
        match request.call() {
            Ok(response) => Ok(EventStream {
                reader: std::io::BufReader::new(response.into_reader()),
            }),
            Err(ureq::Error::Status(code, response)) => {
                anyhow::bail!("GET {url} → {code}: {}", error_body(response).error)
            }
            Err(e) => Err(e).with_context(|| format!("cannot reach {}", self.base)),
        }
    }

    fn print_event(&self, event: &EventRecord) {
        if self.json {
            println!("{}", serde_json::to_string(event).unwrap_or_default());
            return;
        }
        println!(
            "{:<8} {:<16} {:<11} {}",
            event.kind,
            super::report::escape_controls(&event.name),
            event.state,
            super::report::escape_block(&event.detail, "    ")
        );
    }

    /// The final line of `watch`, and its exit code.
    fn watch_ended(&self, id: &str, execution: &ExecutionDetail) -> ExitCode {
        let status = execution.execution.status;
        if !self.json {
            println!("execution {id}: {status}");
        }
        if status == Status::Succeeded {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }
    }
}

/// An error answer's body; one that is not the API's error JSON still gives a message.
fn error_body(response: ureq::Response) -> ErrorBody {
    let text = response.into_string().unwrap_or_default();
    serde_json::from_str(&text).unwrap_or_else(|_| ErrorBody {
        error: if text.trim().is_empty() {
            "no details".to_string()
        } else {
            text
        },
        ..ErrorBody::default()
    })
}

/// A Server-Sent Events stream, read line by line as it arrives.
struct EventStream {
    reader: std::io::BufReader<Box<dyn std::io::Read + Send + Sync + 'static>>,
}

impl EventStream {
    /// The next event's `data:`; `None` when the server closed the stream.
    fn next_event(&mut self) -> anyhow::Result<Option<EventRecord>> {
        use std::io::BufRead as _;
        let mut data = String::new();
        loop {
            let mut line = String::new();
            if self
                .reader
                .read_line(&mut line)
                .context("reading the event stream")?
                == 0
            {
                return Ok(None);
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if let Some(value) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(value.strip_prefix(' ').unwrap_or(value));
            } else if line.is_empty() && !data.is_empty() {
                // A blank line ends an event; comments (keep-alives) carry no data.
                return Ok(Some(serde_json::from_str(&data).with_context(|| {
                    format!("the server sent an event that is not JSON: {data}")
                })?));
            }
        }
    }
}

fn print_log_lines(answer: &LogPage) {
    for line in &answer.lines {
        print_log_line(line);
    }
}

fn print_log_line(line: &LogRecord) {
    super::history::print_log_line(&line.action, line.attempt, &line.stream, &line.line);
}

fn print_execution(answer: &ExecutionDetail) {
    let e = &answer.execution;
    println!(
        "Execution {} of {} {}: {}",
        e.id,
        e.pipeline,
        sluice_api::views::version_label(e.pipeline_version),
        e.status
    );
    if let Some(error) = &e.error {
        println!("  error: {}", super::report::escape_block(error, "    "));
    }
    for a in &answer.actions {
        let detail = a
            .error
            .as_ref()
            .or(a.summary.as_ref())
            .map_or("", |d| d.as_str());
        let detail = super::report::escape_block(detail, "    ");
        println!(
            "  {:<10} {:<16} {:<11} {detail}",
            a.stage,
            a.action,
            a.status.to_string()
        );
    }
}

fn print_state(answer: &PipelineState) {
    for stage in &answer.stages {
        let transition = match &stage.transition.reason {
            Some(reason) => format!(" (transition disabled: {reason})"),
            None => String::new(),
        };
        let (execution, status) = match &stage.current {
            Some(current) => (current.execution.as_str(), current.status.to_string()),
            None => ("-", String::new()),
        };
        println!("{}{transition}: {execution} {status}", stage.stage);
        for action in stage.current.iter().flat_map(|c| &c.actions) {
            let percent = action.percent.map(|p| format!(" {p}%")).unwrap_or_default();
            let approval = match &action.approval {
                Some(a) if a.status == ApprovalStatus::Pending => {
                    format!(" approval pending, token {}", a.token)
                }
                Some(a) => format!(" approval {}", a.status),
                None => String::new(),
            };
            println!(
                "  {:<16} {:<11}{percent}{approval}",
                action.action,
                action.status.to_string()
            );
        }
    }
}

/// The `[pipeline] name` of a pipeline file, without validating the rest.
fn pipeline_name(source: &str) -> Option<String> {
    let table: toml::Table = toml::from_str(source).ok()?;
    Some(table.get("pipeline")?.get("name")?.as_str()?.to_string())
}

/// A request body as the API reads it.
fn to_json(body: &impl serde::Serialize) -> anyhow::Result<String> {
    Ok(serde_json::to_string(body)?)
}
