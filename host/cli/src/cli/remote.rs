//! Client verbs against a running `sluice serve` (`--server URL --token T`).
//! They mirror the API one to one; `--output json` prints the API's JSON.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};

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

    /// One API call; non-2xx answers become errors carrying the server's message.
    fn call(&self, method: &str, path: &str, body: Option<String>) -> anyhow::Result<Value> {
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
                Ok(if text.trim().is_empty() {
                    Value::Null
                } else {
                    serde_json::from_str(&text)?
                })
            }
            Err(ureq::Error::Status(code, response)) => {
                let body: Value = response.into_json().unwrap_or(Value::Null);
                let message = body["error"].as_str().unwrap_or("no details").to_string();
                let field = body["field"]
                    .as_str()
                    .map(|f| format!(" (field `{f}`)"))
                    .unwrap_or_default();
                anyhow::bail!("{method} {url} → {code}: {message}{field}")
            }
            Err(e) => Err(e).with_context(|| format!("cannot reach {}", self.base)),
        }
    }

    /// A GET of `path` (below `/api/v1`), as JSON.
    pub(super) fn get_json(&self, path: &str) -> anyhow::Result<Value> {
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
                let body: Value = response.into_json().unwrap_or(Value::Null);
                let message = body["error"].as_str().unwrap_or("no details");
                anyhow::bail!("GET {url} → {code}: {message}")
            }
            Err(e) => Err(e).with_context(|| format!("cannot reach {}", self.base)),
        }
    }

    /// The full id of an execution named by id, unique prefix or `latest`.
    fn resolve(&self, id: &str) -> anyhow::Result<String> {
        let answer = self.call("GET", &format!("/executions/{}", segment(id)?), None)?;
        Ok(answer["execution"]["id"].as_str().unwrap_or(id).to_string())
    }

    fn print(&self, value: &Value, text: impl FnOnce(&Value)) {
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
                let answer = self.call("PUT", &path, Some(source))?;
                self.print(&answer, |a| {
                    println!("registered {} version {}", a["name"], a["version"])
                });
            }
            PipelinesCommand::List => {
                let answer = self.call("GET", "/pipelines", None)?;
                self.print(&answer, |a| {
                    for p in a["pipelines"].as_array().into_iter().flatten() {
                        println!("{:<24} v{}", p["name"].as_str().unwrap_or(""), p["version"]);
                    }
                });
            }
            PipelinesCommand::Get { name, version } => {
                let pipeline = segment(&name)?;
                let path = match version {
                    Some(v) => format!("/pipelines/{pipeline}/versions/{v}"),
                    None => format!("/pipelines/{pipeline}"),
                };
                let answer = self.call("GET", &path, None)?;
                self.print(&answer, |a| {
                    print!(
                        "# {} version {}\n{}",
                        name,
                        a["version"],
                        a["source"].as_str().unwrap_or("")
                    )
                });
            }
            PipelinesCommand::State { name } => {
                let path = format!("/pipelines/{}/state", segment(&name)?);
                let answer = self.call("GET", &path, None)?;
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
                let answer = self.call("PUT", &path, Some(to_json(&body)?))?;
                self.print(&answer, |a| {
                    println!("{name}/{stage}: transition enabled = {}", a["enabled"])
                });
            }
            PipelinesCommand::Delete { name } => {
                self.call("DELETE", &format!("/pipelines/{}", segment(&name)?), None)?;
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
        let answer = self.call("POST", &path, Some(to_json(&body)?))?;
        self.print(&answer, |a| println!("{}", a["id"].as_str().unwrap_or("")));
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
        let answer = self.call("GET", &path, None)?;
        self.print(&answer, |a| {
            for e in a["executions"].as_array().into_iter().flatten() {
                println!(
                    "{}  {:<16} {:<4} {:<11} {}",
                    e["id"].as_str().unwrap_or(""),
                    e["pipeline"].as_str().unwrap_or(""),
                    sluice_api::views::version_label(&e["pipeline_version"]),
                    e["status"].as_str().unwrap_or(""),
                    super::report::escape_controls(e["error"].as_str().unwrap_or(""))
                );
            }
        });
        Ok(ExitCode::SUCCESS)
    }

    /// `sluice executions show ID` against the server.
    pub fn show_execution(&self, id: &str) -> anyhow::Result<ExitCode> {
        let answer = self.call("GET", &format!("/executions/{}", segment(id)?), None)?;
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
        let answer = self.call("GET", &path, None)?;
        self.print(&answer, print_log_lines);
        Ok(ExitCode::SUCCESS)
    }

    /// Page through `?after=` until the execution has ended and no line is left.
    fn follow_logs(&self, id: &str, query: &str) -> anyhow::Result<ExitCode> {
        let mut after = 0;
        let execution = segment(id)?;
        loop {
            let path = format!("/executions/{execution}/logs?after={after}&{query}");
            let answer = self.call("GET", &path, None)?;
            let lines = answer["lines"].as_array().cloned().unwrap_or_default();
            for line in &lines {
                if self.json {
                    println!("{line}");
                } else {
                    print_log_line(line);
                }
                after = line["id"].as_i64().unwrap_or(after);
            }
            let status = answer["status"].as_str().unwrap_or("");
            if lines.is_empty() && !super::history::is_running(status) {
                eprintln!("execution {id}: {status}");
                return Ok(ExitCode::SUCCESS);
            }
            if lines.is_empty() {
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
        let answer = self.call("POST", &path, Some(to_json(&body)?))?;
        self.print(&answer, |a| {
            println!(
                "{} {action} of {}",
                a["status"].as_str().unwrap_or(""),
                a["execution"].as_str().unwrap_or(id)
            )
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
        let answer = self.call("POST", &path, Some(to_json(&body)?))?;
        self.print(&answer, |a| {
            println!("stopping {} ({name})", a["id"].as_str().unwrap_or(id))
        });
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
        let answer = self.call("POST", &path, Some(to_json(&body)?))?;
        self.print(&answer, |a| {
            println!(
                "retrying stage {stage} of {}",
                a["id"].as_str().unwrap_or(id)
            )
        });
        Ok(ExitCode::SUCCESS)
    }

    /// `sluice audit`.
    pub fn audit(&self) -> anyhow::Result<ExitCode> {
        let answer = self.call("GET", "/audit", None)?;
        self.print(&answer, |a| {
            for e in a["entries"].as_array().into_iter().flatten() {
                println!(
                    "{} {:<18} {:<48} {}",
                    e["ts_ms"],
                    e["actor"].as_str().unwrap_or(""),
                    e["action"].as_str().unwrap_or(""),
                    e["result"].as_str().unwrap_or("")
                );
            }
        });
        Ok(ExitCode::SUCCESS)
    }

    /// `sluice watch ID`: print the execution's state changes as the server
    /// streams them (`GET /events?execution=ID`, Server-Sent Events) until it
    /// ends; exit 0 if it succeeded, 1 if not.
    pub fn watch(&self, id: &str) -> anyhow::Result<ExitCode> {
        let execution = |id: &str| self.call("GET", &format!("/executions/{}", segment(id)?), None);
        // The stream filters on the full id; the argument may be a prefix or
        // `latest`, resolved once so that a newer execution cannot take over.
        let id = self.resolve(id)?;
        // Subscribe before reading the current state, so no change falls between.
        let mut stream = self.events(&id, None)?;
        let mut current = execution(&id)?;
        for action in current["actions"].as_array().into_iter().flatten() {
            let record = json!({
                "kind": "action",
                "name": action["action"],
                "state": action["status"],
                "detail": action["error"].as_str().or(action["summary"].as_str()).unwrap_or(""),
            });
            self.print_event(&record);
        }
        let mut last_seq = None;
        while !is_final(&current) {
            match stream.next_event()? {
                Some(event) => {
                    last_seq = event["seq"].as_i64().or(last_seq);
                    self.print_event(&event);
                    // The execution's own transitions are recorded after its status.
                    if event["kind"] == "pipeline" {
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
                let body: Value = response.into_json().unwrap_or(Value::Null);
                let message = body["error"].as_str().unwrap_or("no details");
                anyhow::bail!("GET {url} → {code}: {message}")
            }
            Err(e) => Err(e).with_context(|| format!("cannot reach {}", self.base)),
        }
    }

    fn print_event(&self, event: &Value) {
        if self.json {
            println!("{event}");
            return;
        }
        let detail = event["detail"].as_str().unwrap_or("");
        println!(
            "{:<8} {:<16} {:<11} {}",
            event["kind"].as_str().unwrap_or(""),
            super::report::escape_controls(event["name"].as_str().unwrap_or("")),
            event["state"].as_str().unwrap_or(""),
            super::report::escape_block(detail, "    ")
        );
    }

    /// The final line of `watch`, and its exit code.
    fn watch_ended(&self, id: &str, execution: &Value) -> ExitCode {
        let status = execution["execution"]["status"].as_str().unwrap_or("");
        if !self.json {
            println!("execution {id}: {status}");
        }
        if status == "Succeeded" {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }
    }
}

/// Whether an execution document (`GET /executions/{id}`) is in a final state.
fn is_final(execution: &Value) -> bool {
    !super::history::is_running(execution["execution"]["status"].as_str().unwrap_or(""))
}

/// A Server-Sent Events stream, read line by line as it arrives.
struct EventStream {
    reader: std::io::BufReader<Box<dyn std::io::Read + Send + Sync + 'static>>,
}

impl EventStream {
    /// The next event's `data:` as JSON; `None` when the server closed the stream.
    fn next_event(&mut self) -> anyhow::Result<Option<Value>> {
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

fn print_log_lines(answer: &Value) {
    for line in answer["lines"].as_array().into_iter().flatten() {
        print_log_line(line);
    }
}

fn print_log_line(line: &Value) {
    super::history::print_log_line(
        line["action"].as_str().unwrap_or(""),
        &line["attempt"],
        line["stream"].as_str().unwrap_or(""),
        line["line"].as_str().unwrap_or(""),
    );
}

fn print_execution(answer: &Value) {
    let e = &answer["execution"];
    println!(
        "Execution {} of {} {}: {}",
        e["id"].as_str().unwrap_or(""),
        e["pipeline"].as_str().unwrap_or(""),
        sluice_api::views::version_label(&e["pipeline_version"]),
        e["status"].as_str().unwrap_or("")
    );
    if let Some(error) = e["error"].as_str() {
        println!("  error: {}", super::report::escape_block(error, "    "));
    }
    for a in answer["actions"].as_array().into_iter().flatten() {
        let detail = a["error"].as_str().or(a["summary"].as_str()).unwrap_or("");
        let detail = super::report::escape_block(detail, "    ");
        println!(
            "  {:<10} {:<16} {:<11} {detail}",
            a["stage"].as_str().unwrap_or(""),
            a["action"].as_str().unwrap_or(""),
            a["status"].as_str().unwrap_or("")
        );
    }
}

fn print_state(answer: &Value) {
    for stage in answer["stages"].as_array().into_iter().flatten() {
        let transition = match stage["transition"]["reason"].as_str() {
            Some(reason) => format!(" (transition disabled: {reason})"),
            None => String::new(),
        };
        let current = &stage["current"];
        println!(
            "{}{transition}: {} {}",
            stage["stage"].as_str().unwrap_or(""),
            current["execution"].as_str().unwrap_or("-"),
            current["status"].as_str().unwrap_or("")
        );
        for action in current["actions"].as_array().into_iter().flatten() {
            let percent = action["percent"]
                .as_u64()
                .map(|p| format!(" {p}%"))
                .unwrap_or_default();
            let approval = match action["approval"]["status"].as_str() {
                Some("pending") => format!(
                    " approval pending, token {}",
                    action["approval"]["token"].as_str().unwrap_or("")
                ),
                Some(status) => format!(" approval {status}"),
                None => String::new(),
            };
            println!(
                "  {:<16} {:<11}{percent}{approval}",
                action["action"].as_str().unwrap_or(""),
                action["status"].as_str().unwrap_or("")
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
