//! What `sluice run` prints: live progress while it runs, a summary at the end.

use std::borrow::Cow;
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use sluice_core::units::{format_bytes, format_duration};
use sluice_engine::executor::{Event, EventSink};
use sluice_store::state::{Status, Store};

/// Most characters of one live output line shown by `sluice run` (all of it is stored).
const LIVE_LINE_CHARS: usize = 400;

/// An event sink that prints one line per event to stdout; `quiet` leaves out
/// the actions' own output lines (progress and stage lines stay).
pub fn live_printer(quiet: bool) -> EventSink {
    Arc::new(move |event| {
        if quiet && matches!(event, Event::ActionLog { .. }) {
            return;
        }
        let Some(line) = describe(&event) else {
            return;
        };
        // A closed stdout must not take the execution down with it.
        let _ = writeln!(std::io::stdout().lock(), "{line}");
    })
}

/// `text` safe to print to a terminal: control characters (ESC, CR, BEL, the
/// other C0 and C1 controls, DEL, and so every escape and OSC sequence) and
/// bidirectional overrides are shown escaped, as `\x1b` or `\u{202e}`, so guest
/// text cannot clear the screen, set the clipboard, or rewrite a line. Tabs stay.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if needs_escape(c) && (c as u32) < 0x80 => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if needs_escape(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Multi-line `text` (an error with a crash report) made safe to print: each
/// line escaped as by [`escape_controls`], continuation lines indented by
/// `indent`, so no line of guest text can pass for one of Sluice's own.
pub fn escape_block(text: &str, indent: &str) -> String {
    text.split('\n')
        .map(escape_controls)
        .collect::<Vec<_>>()
        .join(&format!("\n{indent}"))
}

fn needs_escape(c: char) -> bool {
    (c.is_control() && c != '\t')
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// One live output line: escaped, then capped with a marker saying how much was cut.
fn live_line(text: &str) -> String {
    let total = text.chars().count();
    if total <= LIVE_LINE_CHARS {
        return escape_controls(text).into_owned();
    }
    let kept: String = text.chars().take(LIVE_LINE_CHARS).collect();
    format!(
        "{}… [{} more characters; `sluice logs` has the whole line]",
        escape_controls(&kept),
        total - LIVE_LINE_CHARS
    )
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

/// The line shown for `event`; none for the execution's end (`sluice run`
/// prints a summary instead).
fn describe(event: &Event) -> Option<String> {
    let line = match event {
        Event::ExecutionStarted { id, pipeline } => {
            format!("▶ pipeline {pipeline}: execution {id}")
        }
        Event::ExecutionResumed { id, pipeline } => {
            format!("▶ pipeline {pipeline}: execution {id} resumed")
        }
        Event::ExecutionFinished { .. } => return None,
        Event::StageStarted { stage } => format!("┌ stage {stage}"),
        Event::StageFinished {
            stage,
            status,
            duration,
            ..
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
        Event::RuleEvaluated {
            stage,
            condition,
            rule,
            passed,
            detail,
        } => {
            let mark = if *passed { "✓" } else { "✗" };
            format!("│ {mark} {stage} {condition} rule {rule}: {detail}")
        }
        Event::RollbackAsked { stage } => format!(
            "↩ stage {stage}: a condition asked for a rollback (a server starts it; by hand: `sluice rollback`)"
        ),
        Event::StageWaiting { stage, reason } => {
            format!("… stage {stage}: waiting ({reason})")
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
        } => format!("│   {action} {percent:>3}% {}", live_line(message)),
        Event::ActionLog { action, text, .. } => format!("│   [{action}] {}", live_line(text)),
        Event::ActionRetrying {
            action,
            attempt,
            error,
            wait,
        } => {
            format!(
                "│ ↻ {action} attempt {attempt} failed: {}; retrying in {}",
                escape_block(error, "│     "),
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
                "│ {} {action} {} in {} — {}",
                mark(*status),
                status.name(),
                format_duration(*duration),
                escape_block(detail, "│     ")
            )
        }
    };
    Some(line)
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
pub fn summary(state: &dyn Store, id: &str) -> anyhow::Result<()> {
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
        println!("\nFailed: {}", escape_block(error, "  "));
        println!("Logs: sluice logs {} [action]", execution.id);
    }
    Ok(())
}

/// Stages, actions, artifacts and variables of an execution.
pub fn print_details(state: &dyn Store, id: &str) -> anyhow::Result<()> {
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
                println!("      {}", escape_block(detail, "        "));
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
                .map(|(k, v)| format!("{}={}", escape_controls(k), one_line(v)))
                .collect();
            println!("    {:<16} {}", action.action, pairs.join("  "));
        }
    }
    Ok(())
}

fn one_line(value: &str) -> String {
    let flat = value.replace('\n', "⏎");
    if flat.chars().count() > 60 {
        let kept: String = flat.chars().take(60).collect();
        format!("{}…", escape_controls(&kept))
    } else {
        escape_controls(&flat).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_tabs_kept() {
        let hostile =
            "a\tb\x1b[2J\x1b]52;c;aGk=\x07\r✓ stage Deploy Succeeded\u{9b}31m\u{202e}x\x7f";
        let shown = escape_controls(hostile);
        assert_eq!(
            shown,
            "a\tb\\x1b[2J\\x1b]52;c;aGk=\\x07\\r✓ stage Deploy Succeeded\\u{9b}31m\\u{202e}x\\x7f"
        );
        assert!(!shown.chars().any(|c| c.is_control() && c != '\t'));
        assert!(matches!(escape_controls("plain ✓ text"), Cow::Borrowed(_)));
    }

    #[test]
    fn blocks_keep_their_lines_indented_and_escaped() {
        assert_eq!(
            escape_block("crashed\n  [stderr] \x1b[31mboom", "    "),
            "crashed\n      [stderr] \\x1b[31mboom"
        );
    }

    #[test]
    fn long_live_lines_are_capped_with_a_marker() {
        let line = live_line(&"x".repeat(LIVE_LINE_CHARS + 25));
        assert!(line.starts_with(&"x".repeat(LIVE_LINE_CHARS)));
        assert!(line.ends_with("… [25 more characters; `sluice logs` has the whole line]"));
        assert_eq!(live_line("short"), "short");
    }
}
