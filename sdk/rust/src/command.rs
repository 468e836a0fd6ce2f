//! Native commands, run by the host if the program is allow-listed.

use crate::Failure;
use crate::bindings::sluice::action::process;
use std::time::Duration;

/// A native command to run in `/workspace` on the host. Build it with
/// [`Context::command`](crate::Context::command), then call [`Command::run`].
#[derive(Debug, Clone, Default)]
pub struct Command {
    program: String,
    args: Vec<String>,
    cwd: String,
    env: Vec<(String, String)>,
    secret_env: Vec<(String, String)>,
    timeout: Option<Duration>,
}

impl Command {
    /// A command running `program` (a name on the host's PATH or an absolute path).
    pub fn new(program: impl Into<String>) -> Self {
        Self {
            program: program.into(),
            ..Self::default()
        }
    }

    /// Append one argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Append several arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Working directory relative to `/workspace` (default: `/workspace` itself).
    pub fn cwd(mut self, dir: impl Into<String>) -> Self {
        self.cwd = dir.into();
        self
    }

    /// Set an environment variable; nothing is inherited otherwise.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Set the variable `var` to the granted secret `secret_name`. The host fills it
    /// in, so the secret's value never enters the sandbox.
    pub fn secret_env(mut self, var: impl Into<String>, secret_name: impl Into<String>) -> Self {
        self.secret_env.push((var.into(), secret_name.into()));
        self
    }

    /// Kill the command after `timeout` (default: the action's own timeout).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Run the command to completion. A non-zero exit is *not* an error here: check
    /// [`CommandOutput::success`]. Errors are commands that could not run at all.
    pub fn run(&self) -> Result<CommandOutput, Failure> {
        let request = process::Command {
            program: self.program.clone(),
            args: self.args.clone(),
            cwd: self.cwd.clone(),
            env: self.env.clone(),
            secret_env: self.secret_env.clone(),
            // 0 means "the action's timeout", so round a tiny explicit timeout up to 1ms.
            timeout_ms: self.timeout.map_or(0, |t| {
                u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1)
            }),
        };
        let program = &self.program;
        match process::run(&request) {
            Ok(out) => Ok(CommandOutput {
                exit_code: out.exit_code,
                stdout: out.stdout,
                stderr: out.stderr,
                timed_out: out.timed_out,
            }),
            Err(process::ProcessError::NotAllowed(m)) => Err(Failure::permission(format!(
                "command `{program}` is not granted: {m}"
            ))),
            Err(process::ProcessError::Invalid(m)) => Err(Failure::config(format!(
                "command `{program}` is invalid: {m}"
            ))),
            Err(process::ProcessError::SpawnFailed(m)) => Err(Failure::job(format!(
                "command `{program}` could not start: {m}"
            ))),
        }
    }
}

/// What a finished command produced (masked and capped by the host).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandOutput {
    /// Exit code, or `None` when killed by a signal.
    pub exit_code: Option<i32>,
    /// Captured standard output.
    pub stdout: String,
    /// Captured standard error.
    pub stderr: String,
    /// Whether it was killed for running out of time.
    pub timed_out: bool,
}

impl CommandOutput {
    /// Whether the command exited with code 0 in time.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out
    }
}
