//! What `sluice run` prints: live progress while it runs, a summary at the end.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use crate::executor::{Event, EventSink};
use crate::state::{StateStore, Status};
use crate::units::{format_bytes, format_duration};

/// An event sink that prints one line per event to stdout.
pub fn live_printer() -> EventSink {
    Arc::new(|event| {
        let line = describe(&event);
        // A closed stdout must not take the execution down with it.
        let _ = writeln!(std::io::stdout().lock(), "{line}");
    })
}

fn mark(status: Status) -> &'static str {
    match status {
        Status::Succeeded => "✓",
        Status::Failed => "✗",
        Status::InProgress => "▶",
        Status::Skipped | Status::Superseded => "-",
        Status::Stopping | Status::Stopped | Status::Abandoned => "■",
    }
}

fn describe(event: &Event) -> String {
    match event {
        Event::ExecutionStarted { id, pipeline } => {
            format!("▶ pipeline {pipeline}: execution {id}")
        }
        Event::StageStarted { stage } => format!("┌ stage {stage}"),
        Event::StageFinished {
            stage,
            status,
            duration,
        } => {
            format!(
                "└ {} stage {stage} {} in {}",
                mark(*status),
                status.name(),
                format_duration(*duration)
            )
        }
        Event::StageSkipped { stage } => {
            format!("- stage {stage} skipped (an earlier stage failed)")
        }
        Event::ActionStarted {
            action,
            plugin,
            attempt,
            ..
        } => match attempt {
            1 => format!("│ ▶ {action} ({plugin})"),
            n => format!("│ ▶ {action} ({plugin}) attempt {n}"),
        },
        Event::ActionProgress {
            action,
            percent,
            message,
        } => format!("│   {action} {percent:>3}% {message}"),
        Event::ActionRetrying {
            action,
            attempt,
            error,
            wait,
        } => {
            format!(
                "│ ↻ {action} attempt {attempt} failed: {error}; retrying in {}",
                humantime::format_duration(round(*wait))
            )
        }
        Event::ActionFinished {
            action,
            status,
            duration,
            detail,
        } => {
            format!(
                "│ {} {action} {} in {} — {detail}",
                mark(*status),
                status.name(),
                format_duration(*duration)
            )
        }
    }
}

fn round(duration: Duration) -> Duration {
    Duration::from_millis(duration.as_millis() as u64)
}

fn span(started_ms: i64, ended_ms: Option<i64>) -> String {
    ended_ms
        .map(|end| format_duration(Duration::from_millis((end - started_ms).max(0) as u64)))
        .unwrap_or_else(|| "-".to_string())
}

/// Print the end-of-run summary of an execution from the state store.
pub fn summary(state: &StateStore, id: &str) -> anyhow::Result<()> {
    let execution = state
        .execution(id)?
        .ok_or_else(|| anyhow::anyhow!("execution {id} not found"))?;
    println!();
    println!(
        "Execution {} of {}: {} in {}",
        execution.id,
        execution.pipeline,
        execution.status,
        span(execution.started_ms, execution.ended_ms)
    );
    print_details(state, id)?;
    if let Some(error) = &execution.error {
        println!("\nFailed: {error}");
        println!("Logs: sluice logs {} [action]", execution.id);
    }
    Ok(())
}

/// Stages, actions, artifacts and variables of an execution.
pub fn print_details(state: &StateStore, id: &str) -> anyhow::Result<()> {
    let actions = state.actions(id)?;
    for stage in state.stages(id)? {
        println!(
            "  {:<10} {:<11} {}",
            stage.stage,
            stage.status,
            span(stage.started_ms, stage.ended_ms)
        );
        for action in actions.iter().filter(|a| a.stage == stage.stage) {
            let attempts = if action.attempts > 1 {
                format!(" ({} attempts)", action.attempts)
            } else {
                String::new()
            };
            println!(
                "    {:<16} {:<11} {:>8}  {}{attempts}",
                action.action,
                action.status,
                span(action.started_ms, action.ended_ms),
                action.plugin
            );
            let detail = action
                .error
                .as_deref()
                .or(action.summary.as_deref())
                .unwrap_or("");
            if !detail.is_empty() {
                println!("      {detail}");
            }
        }
    }
    let outputs: Vec<_> = actions
        .iter()
        .flat_map(|a| a.outputs.iter().map(move |o| (a, o)))
        .collect();
    if !outputs.is_empty() {
        println!("  Artifacts:");
        for (action, output) in outputs {
            println!(
                "    {:<16} blake3:{}  {} files, {}  (from {})",
                output.name,
                &output.digest[..16.min(output.digest.len())],
                output.files,
                format_bytes(output.bytes),
                action.action
            );
        }
    }
    let with_variables: Vec<_> = actions.iter().filter(|a| !a.variables.is_empty()).collect();
    if !with_variables.is_empty() {
        println!("  Variables:");
        for action in with_variables {
            let pairs: Vec<String> = action
                .variables
                .iter()
                .map(|(k, v)| format!("{k}={}", one_line(v)))
                .collect();
            println!("    {:<16} {}", action.action, pairs.join("  "));
        }
    }
    Ok(())
}

fn one_line(value: &str) -> String {
    let flat = value.replace('\n', "⏎");
    if flat.chars().count() > 60 {
        format!("{}…", flat.chars().take(60).collect::<String>())
    } else {
        flat
    }
}
