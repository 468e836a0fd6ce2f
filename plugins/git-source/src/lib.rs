//! `git-source`: clone a branch into the first output artifact with the host's
//! `git` (granted through the process capability), and answer polls with the
//! branch's new head commit.

use sluice_sdk::{Context, Failure, Outcome};

/// Git refuses a repository owned by another user ("dubious ownership"), and
/// on a root host the command runs as a user of its own while the repository
/// belongs to its owner. The check protects a user from a hostile repository's
/// hooks; here the command is already confined by the sandbox, and the
/// repository was granted read-only by the pipeline.
const TRUST_GRANTED_REPOSITORY: [&str; 2] = ["-c", "safe.directory=*"];

/// The same for the `upload-pack` that serves a clone or `ls-remote` from a
/// local path: git clears `-c` settings from its environment.
const TRUSTING_UPLOAD_PACK: &str = "--upload-pack=git -c safe.directory=* upload-pack";

fn run(ctx: &Context) -> Result<Outcome, Failure> {
    let repo = ctx.require("repo")?;
    let branch = ctx.config_or("branch", "main");
    let output = ctx
        .outputs()
        .first()
        .ok_or_else(|| Failure::config("git-source needs an output artifact"))?;
    ctx.progress(10, format!("cloning {branch}"));
    git(
        ctx,
        &[
            "clone",
            "--quiet",
            TRUSTING_UPLOAD_PACK,
            "--branch",
            branch,
            repo,
            "checkout",
        ],
        "",
    )?;
    let revision = ctx.config("revision").unwrap_or("").trim();
    if !revision.is_empty() {
        git(
            ctx,
            &["checkout", "--quiet", "--detach", revision],
            "checkout",
        )
        .map_err(|e| Failure::revision(format!("revision {revision}: {}", e.message)))?;
    }
    let head = git(ctx, &["rev-parse", "HEAD"], "checkout")?
        .trim()
        .to_string();
    let _ = std::fs::remove_dir_all(ctx.workspace().join("checkout/.git"));
    ctx.progress(70, "copying the tree");
    let stats = sluice_sdk::fs::copy_tree(
        ctx.workspace().join("checkout"),
        ctx.output_dir(output),
        &[],
    )
    .map_err(Failure::job)?;
    Ok(
        Outcome::new(format!("{branch} at {head}: {} file(s)", stats.files))
            .variable("revision", &head)
            .variable("branch", branch),
    )
}

/// New head of the branch, if it moved since `last`.
fn check(config: &[(String, String)], last: Option<&str>) -> Result<Vec<String>, Failure> {
    let get = |key: &str| {
        config
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let repo = get("repo").ok_or_else(|| Failure::config("missing required config `repo`"))?;
    let branch = get("branch").unwrap_or("main");
    let reference = format!("refs/heads/{branch}");
    let output = sluice_sdk::Command::new("git")
        .args(TRUST_GRANTED_REPOSITORY)
        .args(["ls-remote", TRUSTING_UPLOAD_PACK, repo, reference.as_str()])
        .run()?;
    if !output.success() {
        return Err(Failure::revision(format!(
            "git ls-remote {repo}: {}",
            output.stderr.trim()
        )));
    }
    let head = output
        .stdout
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    if head.is_empty() {
        return Err(Failure::revision(format!("{repo} has no branch {branch}")));
    }
    Ok(if last == Some(head.as_str()) {
        Vec::new()
    } else {
        vec![head]
    })
}

/// Run git in the workspace (or a directory below it); its stdout on success.
fn git(ctx: &Context, args: &[&str], cwd: &str) -> Result<String, Failure> {
    let output = ctx
        .command("git")
        .args(TRUST_GRANTED_REPOSITORY)
        .args(args.iter().copied())
        .cwd(cwd)
        .run()?;
    if output.success() {
        Ok(output.stdout)
    } else {
        Err(Failure::job(format!(
            "git {}: {}",
            args.join(" "),
            output.stderr.trim()
        )))
    }
}

sluice_sdk::export_source!(run, check);
