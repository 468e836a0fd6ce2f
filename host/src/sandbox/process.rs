//! Process capability: `sluice:action/process`.
//!
//! Runs a native command when its program is on the action's allow-list. The
//! command is *confined*, not sandboxed: it starts in the action's workspace with an
//! empty environment (plus what the call passes and granted secrets), in its own
//! process group, under rlimits and a timeout, and its output is captured, capped
//! and masked. It still runs as the host user.

use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use super::SandboxState;
use super::bindings::sluice::action::process::{Command, CommandOutput, Host, ProcessError};
use super::log::{LogSink, LogStream};

/// Most bytes of each stream handed back to the guest (the log keeps its own cap).
const RETURNED_OUTPUT_CAP: usize = 1 << 20;

/// What one action may run, and where.
pub struct ProcessCapability {
    allowed: Vec<String>,
    workspace: PathBuf,
    default_timeout: Duration,
}

impl ProcessCapability {
    /// Build from the granted program names.
    pub fn from_grant(allowed: &[String], workspace: PathBuf, default_timeout: Duration) -> Self {
        Self {
            allowed: allowed.to_vec(),
            workspace,
            default_timeout,
        }
    }

    fn allows(&self, program: &str) -> bool {
        let name = Path::new(program)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(program);
        self.allowed.iter().any(|a| a == name)
    }

    fn working_dir(&self, cwd: &str) -> Result<PathBuf, String> {
        let relative = Path::new(cwd);
        let escapes = relative
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
        if escapes {
            return Err(format!(
                "cwd `{cwd}` must be a relative path inside /workspace"
            ));
        }
        Ok(self.workspace.join(relative))
    }
}

/// Find `program` on the host's PATH (or take it as a path when it has a slash).
fn resolve_program(program: &str, cwd: &Path) -> Option<PathBuf> {
    if program.contains('/') {
        let path = cwd.join(program);
        return path.is_file().then_some(path);
    }
    let search_path = std::env::var_os("PATH")?;
    std::env::split_paths(&search_path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

impl Host for SandboxState {
    async fn run(
        &mut self,
        command: Command,
    ) -> wasmtime::Result<Result<CommandOutput, ProcessError>> {
        if !self.process.allows(&command.program) {
            let message = format!(
                "command `{}` is not in this action's allow-list (grants.commands = {:?})",
                command.program, self.process.allowed
            );
            self.denials
                .record(&self.log, format!("permission denied: {message}"));
            return Ok(Err(ProcessError::NotAllowed(message)));
        }
        let mut env = command.env.clone();
        for (variable, secret) in &command.secret_env {
            match self.secrets.value(secret) {
                Ok(value) => env.push((variable.clone(), value.to_string())),
                Err(err) => {
                    self.denials
                        .record(&self.log, format!("permission denied: {err}"));
                    return Ok(Err(ProcessError::NotAllowed(err.to_string())));
                }
            }
        }
        let cwd = match self.process.working_dir(&command.cwd) {
            Ok(dir) => dir,
            Err(message) => return Ok(Err(ProcessError::Invalid(message))),
        };
        let Some(program) = resolve_program(&command.program, &cwd) else {
            return Ok(Err(ProcessError::SpawnFailed(format!(
                "program `{}` was not found on the host",
                command.program
            ))));
        };
        let timeout = match command.timeout_ms {
            0 => self.process.default_timeout,
            ms => Duration::from_millis(ms),
        };
        let spec = Spawn {
            program,
            args: command.args,
            cwd,
            env,
            timeout,
        };
        Ok(spawn_and_capture(spec, self.log.clone()).await)
    }
}

struct Spawn {
    program: PathBuf,
    args: Vec<String>,
    cwd: PathBuf,
    env: Vec<(String, String)>,
    timeout: Duration,
}

async fn spawn_and_capture(spec: Spawn, log: LogSink) -> Result<CommandOutput, ProcessError> {
    let mut command = tokio::process::Command::new(&spec.program);
    command
        .args(&spec.args)
        .current_dir(&spec.cwd)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: only async-signal-safe libc calls run between fork and exec.
    unsafe {
        command.pre_exec(confine_child);
    }
    log.line(
        LogStream::Host,
        &format!("$ {} {}", spec.program.display(), spec.args.join(" ")),
    );
    let mut child = command
        .spawn()
        .map_err(|e| ProcessError::SpawnFailed(format!("{}: {e}", spec.program.display())))?;
    // Whatever happens next (exit, timeout, the action being dropped), nothing
    // the command started may outlive it.
    let group = ProcessGroup(child.id());
    let stdout = capture(child.stdout.take(), log.clone(), LogStream::Process);
    let stderr = capture(child.stderr.take(), log.clone(), LogStream::ProcessErr);
    let (exit_code, timed_out) = match tokio::time::timeout(spec.timeout, child.wait()).await {
        Ok(status) => {
            let status =
                status.map_err(|e| ProcessError::SpawnFailed(format!("waiting for child: {e}")))?;
            (status.code(), false)
        }
        Err(_) => {
            group.kill();
            let _ = child.wait().await;
            log.line(
                LogStream::Host,
                &format!(
                    "command killed after its timeout of {}",
                    humantime::format_duration(spec.timeout)
                ),
            );
            (None, true)
        }
    };
    // Background processes left behind would also hold the output pipes open.
    group.kill();
    let masker = log.masker();
    Ok(CommandOutput {
        exit_code,
        stdout: masker.mask(&stdout.await),
        stderr: masker.mask(&stderr.await),
        timed_out,
    })
}

/// Runs in the child between fork and exec: own process group, no core dumps,
/// bounded file sizes and descriptors.
fn confine_child() -> std::io::Result<()> {
    fn limit(resource: libc::__rlimit_resource_t, value: libc::rlim_t) {
        let rlimit = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // SAFETY: setrlimit with a valid pointer; failure only leaves the default.
        unsafe {
            libc::setrlimit(resource, &rlimit);
        }
    }
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        libc::setsid();
    }
    limit(libc::RLIMIT_CORE, 0);
    limit(libc::RLIMIT_FSIZE, 8 << 30);
    limit(libc::RLIMIT_NOFILE, 4096);
    Ok(())
}

/// The command's process group (setsid made its pid the group id); killed when
/// dropped.
struct ProcessGroup(Option<u32>);

impl ProcessGroup {
    fn kill(&self) {
        if let Some(pid) = self.0.and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: signalling the child's own process group only.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Copy a child stream into the log as it arrives, keeping a capped copy.
fn capture(
    stream: Option<impl AsyncRead + Unpin + Send + 'static>,
    log: LogSink,
    kind: LogStream,
) -> impl Future<Output = String> {
    let kept = Arc::new(Mutex::new(Vec::new()));
    let task = tokio::spawn({
        let kept = kept.clone();
        async move {
            let Some(mut stream) = stream else { return };
            let mut chunk = vec![0u8; 16 * 1024];
            while let Ok(n) = stream.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                log.bytes(kind, &chunk[..n]);
                let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
                let room = RETURNED_OUTPUT_CAP.saturating_sub(kept.len());
                kept.extend_from_slice(&chunk[..n.min(room)]);
            }
        }
    });
    async move {
        let _ = task.await;
        let kept = kept.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&kept).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_matches_by_program_file_name() {
        let cap = ProcessCapability::from_grant(
            &["sh".to_string()],
            PathBuf::from("/tmp"),
            Duration::from_secs(1),
        );
        assert!(cap.allows("sh"));
        assert!(cap.allows("/bin/sh"));
        assert!(!cap.allows("curl"));
    }

    #[test]
    fn working_dir_cannot_leave_the_workspace() {
        let cap = ProcessCapability::from_grant(&[], PathBuf::from("/ws"), Duration::from_secs(1));
        assert_eq!(cap.working_dir("src").unwrap(), PathBuf::from("/ws/src"));
        assert!(cap.working_dir("../etc").is_err());
        assert!(cap.working_dir("/etc").is_err());
    }
}
