//! `command`: run an allow-listed native command (or a multi-line script) in
//! the workspace and collect its outputs by glob. See the README for the
//! configuration.

mod spec;

use sluice_sdk::{Context, Failure, Outcome, fs::copy_tree};
use std::time::Duration;

/// How many trailing output lines a failure message carries.
const TAIL_LINES: usize = 20;

fn run(ctx: &Context) -> Result<Outcome, Failure> {
    let outputs = output_specs(ctx)?;
    let (command, shown) = build_command(ctx)?;
    stage_inputs(ctx)?;

    ctx.progress(20, format!("running {shown}"));
    let out = command.run()?;
    let exit = out
        .exit_code
        .map_or_else(|| "signal".to_string(), |c| c.to_string());
    let mut outcome = Outcome::new("").variable("exit_code", &exit);
    for (k, v) in spec::set_variables(&out.stdout) {
        outcome.set_variable(k, v);
    }
    let allow_failure = ctx.config_bool("allow-failure", false)?;
    if !out.success() && (out.timed_out || !allow_failure) {
        let why = if out.timed_out {
            "timed out".to_string()
        } else {
            format!("exited with {exit}")
        };
        let text = if out.stderr.trim().is_empty() {
            &out.stdout
        } else {
            &out.stderr
        };
        let mut message = format!("{shown} {why}\n{}", spec::tail(text, TAIL_LINES));
        if ctx.config_bool("collect-on-failure", false)? {
            // Failing tests' reports are what people need most; collect what exists.
            match collect_outputs(ctx, &outputs, false) {
                Ok((files, _)) => {
                    message.push_str(&format!("\n(collected {files} output file(s))"))
                }
                Err(e) => {
                    message.push_str(&format!("\n(collecting outputs failed: {})", e.message))
                }
            }
        }
        return Err(Failure::job(message));
    }

    ctx.progress(90, "collecting outputs");
    let (files, bytes) = collect_outputs(ctx, &outputs, true)?;
    let verdict = if out.success() {
        "succeeded".to_string()
    } else {
        format!("exited with {exit} (allowed)")
    };
    outcome.summary = format!(
        "{shown} {verdict}; collected {files} file(s), {bytes} byte(s) into {} output(s)",
        outputs.len()
    );
    Ok(outcome)
}

/// Parse `outputs` and check it against the declared output artifacts: each must
/// be fillable, and no glob may target an undeclared one.
fn output_specs(ctx: &Context) -> Result<Vec<spec::OutputSpec>, Failure> {
    let specs = spec::parse_outputs(ctx.config_or("outputs", ""))
        .map_err(|e| Failure::config(format!("`outputs`: {e}")))?;
    if let Some(s) = specs.iter().find(|s| !ctx.outputs().contains(&s.artifact)) {
        return Err(Failure::config(format!(
            "`outputs` names `{}`, which is not an output of this action",
            s.artifact
        )));
    }
    if let Some(o) = ctx
        .outputs()
        .iter()
        .find(|o| specs.iter().all(|s| s.artifact != **o))
    {
        return Err(Failure::config(format!(
            "output `{o}` has no glob in `outputs` (add `{o}=<glob>`)"
        )));
    }
    Ok(specs)
}

/// The native command described by `run` or `script`, with `env`,
/// `secret-env`, `cwd` and `timeout`; and how to name it in messages.
fn build_command(ctx: &Context) -> Result<(sluice_sdk::Command, String), Failure> {
    let (mut cmd, shown) = program(ctx)?;
    let env = spec::parse_env(ctx.config_or("env", ""))
        .map_err(|e| Failure::config(format!("`env`: {e}")))?;
    for (k, v) in env {
        cmd = cmd.env(k, v);
    }
    for name in spec::list(ctx.config_or("secret-env", "")) {
        cmd = cmd.secret_env(name, name);
    }
    if let Some(cwd) = ctx.config("cwd").map(str::trim).filter(|c| !c.is_empty()) {
        cmd = cmd.cwd(cwd);
    }
    match ctx.config_u64("timeout", 0)? {
        0 => Ok((cmd, shown)),
        secs => Ok((cmd.timeout(Duration::from_secs(secs)), shown)),
    }
}

/// `run` split shell-style, or `script` handed to the granted `shell` with
/// `-e` so that the first failing line fails the action.
fn program(ctx: &Context) -> Result<(sluice_sdk::Command, String), Failure> {
    let run = ctx.config("run").filter(|r| !r.trim().is_empty());
    let script = ctx.config("script").filter(|s| !s.trim().is_empty());
    match (run, script) {
        (Some(_), Some(_)) => Err(Failure::config("set either `run` or `script`, not both")),
        (None, None) => Err(Failure::config(
            "set `run` (one command) or `script` (several lines)",
        )),
        (Some(run), None) => {
            let words =
                spec::shell_split(run).map_err(|e| Failure::config(format!("`run`: {e}")))?;
            let (program, args) = words
                .split_first()
                .ok_or_else(|| Failure::config("`run` is empty"))?;
            let cmd = ctx.command(program.as_str()).args(args.iter().cloned());
            Ok((cmd, format!("`{run}`")))
        }
        (None, Some(script)) => {
            let shell = ctx.config_or("shell", "sh").trim();
            let cmd = ctx.command(shell).args(["-e", "-c", script]);
            let lines = script.trim().lines().count();
            Ok((cmd, format!("script ({lines} line(s), {shell} -e)")))
        }
    }
}

/// Merge every input artifact into the workspace root, in order. The host
/// copies, so executable bits and symlinks (`node_modules/.bin`) survive.
fn stage_inputs(ctx: &Context) -> Result<(), Failure> {
    for (i, input) in ctx.inputs().iter().enumerate() {
        let stats = copy_tree(ctx.input_dir(input), ctx.workspace(), &[])
            .map_err(|e| Failure::job(format!("copying input `{input}` to the workspace: {e}")))?;
        ctx.info(format!(
            "input `{input}`: {} file(s), {} byte(s), {} symlink(s)",
            stats.files, stats.bytes, stats.symlinks
        ));
        let pct = 5 + 10 * (i + 1) / ctx.inputs().len();
        ctx.progress(pct as u8, format!("staged input `{input}`"));
    }
    Ok(())
}

/// Copy matching workspace files into each output (on the host, keeping modes
/// and inside symlinks). With `every_output_needs_a_file`, an output that no
/// file matches fails the action.
fn collect_outputs(
    ctx: &Context,
    specs: &[spec::OutputSpec],
    every_output_needs_a_file: bool,
) -> Result<(u64, u64), Failure> {
    let (mut total_files, mut total_bytes) = (0, 0);
    for spec in specs {
        let globs: Vec<&str> = spec.patterns.iter().map(String::as_str).collect();
        let stats = copy_tree(ctx.workspace(), ctx.output_dir(&spec.artifact), &globs)
            .map_err(|e| Failure::job(format!("output `{}`: {e}", spec.artifact)))?;
        if stats.files + stats.symlinks == 0 && every_output_needs_a_file {
            return Err(Failure::job(format!(
                "output `{}`: no file in the workspace matches {}",
                spec.artifact,
                spec.patterns.join(", ")
            )));
        }
        ctx.info(format!(
            "output `{}`: {} file(s), {} byte(s), {} symlink(s)",
            spec.artifact, stats.files, stats.bytes, stats.symlinks
        ));
        total_files += stats.files;
        total_bytes += stats.bytes;
    }
    Ok((total_files, total_bytes))
}

sluice_sdk::export_action!(run);
