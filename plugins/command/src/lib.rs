//! `command`: run an allow-listed native command in the workspace and collect
//! its outputs by glob. See the README for the configuration.

mod collect;
mod spec;

use sluice_sdk::{Context, Failure, Outcome, fs::copy_dir_all};
use std::time::Duration;

/// How many trailing output lines a failure message carries.
const TAIL_LINES: usize = 20;

fn run(ctx: &Context) -> Result<Outcome, Failure> {
    let outputs = output_specs(ctx)?;
    let command = build_command(ctx)?;
    stage_inputs(ctx)?;

    ctx.progress(20, "running command");
    let run_line = ctx.require("run")?;
    let out = command.run()?;
    let exit = out
        .exit_code
        .map_or_else(|| "signal".to_string(), |c| c.to_string());
    let mut outcome = Outcome::new("").variable("exit_code", &exit);
    for (k, v) in spec::set_variables(&out.stdout) {
        outcome.set_variable(k, v);
    }
    if !out.success() {
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
        return Err(Failure::job(format!(
            "`{run_line}` {why}\n{}",
            spec::tail(text, TAIL_LINES)
        )));
    }

    ctx.progress(90, "collecting outputs");
    let (files, bytes) = collect_outputs(ctx, &outputs)?;
    outcome.summary = format!(
        "`{run_line}` succeeded; collected {files} file(s), {bytes} byte(s) into {} output(s)",
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

/// The native command described by `run`, `env`, `secret-env`, `cwd`, `timeout`.
fn build_command(ctx: &Context) -> Result<sluice_sdk::Command, Failure> {
    let words = spec::shell_split(ctx.require("run")?)
        .map_err(|e| Failure::config(format!("`run`: {e}")))?;
    let (program, args) = words
        .split_first()
        .ok_or_else(|| Failure::config("`run` is empty"))?;
    let mut cmd = ctx.command(program.as_str()).args(args.iter().cloned());
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
        0 => Ok(cmd),
        secs => Ok(cmd.timeout(Duration::from_secs(secs))),
    }
}

/// Merge every input artifact into the workspace root, in order.
fn stage_inputs(ctx: &Context) -> Result<(), Failure> {
    for (i, input) in ctx.inputs().iter().enumerate() {
        let stats = copy_dir_all(ctx.input_dir(input), ctx.workspace())
            .map_err(|e| Failure::job(format!("copying input `{input}` to the workspace: {e}")))?;
        ctx.info(format!(
            "input `{input}`: {} file(s), {} byte(s)",
            stats.files, stats.bytes
        ));
        if stats.symlinks_skipped > 0 {
            ctx.warn(format!(
                "input `{input}`: skipped {} symlink(s)",
                stats.symlinks_skipped
            ));
        }
        let pct = 5 + 10 * (i + 1) / ctx.inputs().len();
        ctx.progress(pct as u8, format!("staged input `{input}`"));
    }
    Ok(())
}

/// Copy matching workspace files into each output; every output needs a file.
fn collect_outputs(ctx: &Context, specs: &[spec::OutputSpec]) -> Result<(usize, u64), Failure> {
    if specs.is_empty() {
        return Ok((0, 0));
    }
    let ws = ctx.workspace();
    let files = collect::files_under(&ws)?;
    let (mut total_files, mut total_bytes) = (0, 0);
    for spec in specs {
        let picked = collect::select(spec, &files);
        if picked.is_empty() {
            return Err(Failure::job(format!(
                "output `{}`: no file in the workspace matches {}",
                spec.artifact,
                spec.patterns.join(", ")
            )));
        }
        let bytes = collect::copy_files(&ws, &ctx.output_dir(&spec.artifact), &picked)?;
        ctx.info(format!(
            "output `{}`: {} file(s), {bytes} byte(s)",
            spec.artifact,
            picked.len()
        ));
        total_files += picked.len();
        total_bytes += bytes;
    }
    Ok((total_files, total_bytes))
}

sluice_sdk::export_action!(run);
