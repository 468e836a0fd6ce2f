//! `sluice executions …` and `sluice logs`: what happened, from the state store.

use std::process::ExitCode;

use clap::Subcommand;

use super::Paths;
use sluice_store::state::Store;

/// Execution history commands.
#[derive(Subcommand)]
pub enum ExecutionsCommand {
    /// List executions, newest first.
    List {
        /// Only this pipeline.
        #[arg(long)]
        pipeline: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one execution: stages, actions, resolved config, artifacts, variables.
    Show {
        /// Execution id (or a unique prefix, or `latest`).
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `sluice executions …` on the local data directory; `json` is `--output json`.
pub fn executions(
    command: ExecutionsCommand,
    paths: &Paths,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let state = paths.state()?;
    match command {
        ExecutionsCommand::List {
            pipeline,
            limit,
            json: json_flag,
        } => {
            let filter = sluice_store::state::ExecutionFilter {
                pipeline: pipeline.as_deref(),
                status: None,
                limit,
                offset: 0,
            };
            let executions = state.list_executions(&filter)?;
            if json || json_flag {
                let all: Vec<_> = executions.iter().collect();
                let document = sluice_api::views::execution_list(&all, limit, 0);
                println!("{}", serde_json::to_string_pretty(&document)?);
                return Ok(ExitCode::SUCCESS);
            }
            for e in executions {
                let duration = e
                    .ended_ms
                    .map(|end| format!("{}ms", end - e.started_ms))
                    .unwrap_or_else(|| "-".into());
                println!(
                    "{}  {:<16} {:<11} {:>9}  {}",
                    e.id,
                    e.pipeline,
                    e.status,
                    duration,
                    super::report::escape_controls(&e.error.unwrap_or_default())
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ExecutionsCommand::Show { id, json: flag } => show(state.as_ref(), &id, json || flag),
    }
}

/// The full id of an execution named by id, unique prefix or `latest`.
pub(super) fn resolve_id(state: &dyn Store, id: &str) -> anyhow::Result<String> {
    let found = if id == "latest" {
        state.latest_execution()?
    } else {
        state.execution(id)?.map(|e| e.id)
    };
    found.ok_or_else(|| anyhow::anyhow!("no execution `{id}` in this data directory"))
}

fn show(state: &dyn Store, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let id = resolve_id(state, id)?;
    let execution = state
        .execution(&id)?
        .ok_or_else(|| anyhow::anyhow!("execution vanished"))?;
    if json {
        let document = sluice_api::views::execution(state, &execution)?;
        println!("{}", serde_json::to_string_pretty(&document)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "Execution {} of {} ({}): {}",
        execution.id, execution.pipeline, execution.pipeline_file, execution.status
    );
    if let Some(error) = &execution.error {
        println!("  error: {}", super::report::escape_block(error, "    "));
    }
    println!("  variables: {}", execution.variables);
    super::report::print_details(state, &id)?;
    println!("  Resolved configuration:");
    for action in &state.actions(&id)? {
        let pairs: Vec<String> = action
            .resolved_config
            .iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect();
        println!("    {:<16} {}", action.action, pairs.join(" "));
    }
    Ok(ExitCode::SUCCESS)
}

/// `sluice logs ID [ACTION] [-f]` on the local data directory; `json` is `--output json`.
pub fn logs(
    paths: &Paths,
    execution: &str,
    action: Option<&str>,
    follow: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let state = paths.state()?;
    let id = resolve_id(state.as_ref(), execution)?;
    if follow {
        return follow_logs(state.as_ref(), &id, action);
    }
    // Read before the lines, as the server does: a final status means all lines.
    let status = state
        .execution(&id)?
        .map(|record| record.status)
        .ok_or_else(|| anyhow::anyhow!("execution {id} vanished"))?;
    let lines = state.logs(&id, action)?;
    if json {
        let document = sluice_api::views::logs(&id, status, &lines);
        println!("{}", serde_json::to_string_pretty(&document)?);
        return Ok(ExitCode::SUCCESS);
    }
    if lines.is_empty() {
        eprintln!(
            "no log lines for execution {id}{}",
            action.map(|a| format!(", action {a}")).unwrap_or_default()
        );
    }
    for line in lines {
        print_log_line(&line.action, line.attempt, &line.stream, &line.line);
    }
    Ok(ExitCode::SUCCESS)
}

/// One stored log line, as `sluice logs` prints it (guest text escaped).
pub fn print_log_line(action: &str, attempt: impl std::fmt::Display, stream: &str, text: &str) {
    println!(
        "[{action} #{attempt}] {stream:<7} {}",
        super::report::escape_controls(text)
    );
}

/// How often `sluice logs -f` looks for new lines.
pub const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// Print lines as the running execution stores them; return once it has ended
/// and every line is printed.
fn follow_logs(state: &dyn Store, id: &str, action: Option<&str>) -> anyhow::Result<ExitCode> {
    let mut after = 0;
    loop {
        // Read the status first: once it is final, every line is already stored.
        let status = state
            .execution(id)?
            .map(|e| e.status)
            .ok_or_else(|| anyhow::anyhow!("execution {id} vanished"))?;
        let lines = state.logs_after(id, action, after, 5000)?;
        for line in &lines {
            print_log_line(&line.action, line.attempt, &line.stream, &line.line);
            after = line.id;
        }
        if lines.is_empty() && status.is_final() {
            eprintln!("execution {id}: {status}");
            return Ok(ExitCode::SUCCESS);
        }
        if lines.is_empty() {
            std::thread::sleep(FOLLOW_POLL);
        }
    }
}
