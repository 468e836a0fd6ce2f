//! Process capability: `sluice:action/process`.
//!
//! Runs a native command when its program resolves to a file on the action's
//! allow-list. Every command goes through the launcher
//! ([`super::launcher`]): its own PID, mount and (unless the action has
//! network) network namespaces, a private `/proc`, resource limits, and death
//! with the host. Its environment is built here, from nothing: `HOME` and
//! `TMPDIR` inside the workspace, the host variables the action's
//! `grants.env` names, what the call passes, and granted secrets. Loader
//! variables (`LD_*`, `DYLD_*`, ...) are dropped unless `grants.env` names them.
//! Output is captured, capped and masked.

use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::SandboxState;
use super::bindings::sluice::action::process::{Command, CommandOutput, Host, ProcessError};
use super::identity::{self, CommandUser};
use super::launcher::{LAUNCHER_ARG, LaunchSpec, SETUP_FAILED};
use super::log::{LogSink, LogStream};

/// Most bytes of each stream handed back to the guest (the log keeps its own cap).
const RETURNED_OUTPUT_CAP: usize = 1 << 20;

/// Variables that change how the dynamic loader or libc load code; dropped
/// unless a grant names them.
const LOADER_VARIABLES: &[&str] = &[
    "GCONV_PATH",
    "GETCONF_DIR",
    "HOSTALIASES",
    "LOCALDOMAIN",
    "LOCPATH",
    "MALLOC_TRACE",
    "NLSPATH",
    "RESOLV_HOST_CONF",
    "RES_OPTIONS",
    "TZDIR",
];

/// What one action's commands may run, and with what.
#[derive(Clone, Debug, Default)]
pub struct ProcessGrant {
    /// Granted programs: names looked up on the host's PATH, absolute paths,
    /// or `./relative` paths of the build's own scripts in the workspace.
    pub commands: Vec<String>,
    /// Host environment variables the commands inherit (`PATH`, `RUSTUP_HOME`...).
    pub env: Vec<String>,
    /// Whether the action was granted network (hosts): commands then share the
    /// host's network; otherwise they only have their own loopback.
    pub network: bool,
    /// What commands may read (and execute): inputs, read-only mounts and the
    /// toolchain directories of `grants.toolchains`.
    pub read_only: Vec<PathBuf>,
    /// Where commands may also write: workspace, outputs, caches, read-write mounts.
    pub read_write: Vec<PathBuf>,
    /// The part of `read_write` the command user is handed before each
    /// command: workspace, outputs and caches (never a read-write mount).
    pub owned: Vec<PathBuf>,
    /// Keep the host's uid even when it is root (`grants.run-as-root`).
    pub run_as_root: bool,
    /// Memory limit of each command and what it starts (`limits.command-memory`).
    pub memory: Option<u64>,
}

/// What one action may run, and where.
pub struct ProcessCapability {
    grant: ProcessGrant,
    workspace: PathBuf,
    default_timeout: Duration,
    /// Taken at the action's first command, released with the capability.
    user: Option<CommandUser>,
}

impl ProcessCapability {
    /// Build from the action's grant.
    pub fn from_grant(grant: ProcessGrant, workspace: PathBuf, default_timeout: Duration) -> Self {
        Self {
            grant,
            workspace,
            default_timeout,
            user: None,
        }
    }

    /// The uid this action's commands run as, handed its directories; `None`
    /// when they keep the host's (a host that is not root, `run-as-root`).
    async fn command_user(&mut self) -> Result<Option<u32>, ProcessError> {
        if self.user.is_none() {
            self.user = CommandUser::for_action(self.grant.run_as_root);
        }
        let Some(uid) = self.user.as_ref().map(CommandUser::uid) else {
            return Ok(None);
        };
        let owned = self.grant.owned.clone();
        tokio::task::spawn_blocking(move || identity::hand_over(uid, &owned))
            .await
            .map_err(|e| ProcessError::SpawnFailed(e.to_string()))?
            .map_err(|e| {
                ProcessError::SpawnFailed(format!("handing the workspace to uid {uid}: {e}"))
            })?;
        Ok(Some(uid))
    }

    /// The canonical file `program` names, if the allow-list grants that file.
    /// Names are compared by the file they resolve to, never by spelling, so a
    /// link in the workspace named like a granted program runs nothing.
    fn resolve_allowed(&self, program: &str, cwd: &Path) -> Result<PathBuf, String> {
        let not_allowed = || {
            format!(
                "command `{program}` is not in this action's allow-list (grants.commands = {:?})",
                self.grant.commands
            )
        };
        if is_workspace_path(program) {
            // A build's own script: only the exact relative path granted.
            let wanted = normalize_relative(program);
            if !self
                .grant
                .commands
                .iter()
                .any(|g| normalize_relative(g) == wanted)
            {
                return Err(not_allowed());
            }
            return self.workspace_file(cwd, program);
        }
        let resolved = resolve_on_host(program)
            .ok_or_else(|| format!("program `{program}` was not found on the host's PATH"))?;
        // Same name *and* same file: multi-call binaries (rustup's proxies,
        // busybox) pick their behaviour from the name they are run by.
        let granted = self
            .grant
            .commands
            .iter()
            .filter(|g| !is_workspace_path(g) && file_name(g) == file_name(program))
            .filter_map(|g| resolve_on_host(g))
            .any(|g| g == resolved);
        if granted {
            Ok(resolved)
        } else {
            Err(not_allowed())
        }
    }

    /// A granted script inside the workspace, canonical and still inside it.
    fn workspace_file(&self, cwd: &Path, program: &str) -> Result<PathBuf, String> {
        let workspace = self.workspace.canonicalize().map_err(|e| e.to_string())?;
        let path = cwd
            .join(program)
            .canonicalize()
            .map_err(|e| format!("`{program}`: {e}"))?;
        if !path.starts_with(&workspace) || !is_executable(&path) {
            return Err(format!(
                "`{program}` is not an executable file inside the workspace"
            ));
        }
        Ok(path)
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

    /// The command's environment, from nothing: defaults, inherited grants,
    /// the call's variables; loader variables only when granted by name.
    fn environment(&self, requested: Vec<(String, String)>) -> Vec<(String, String)> {
        let tmp = self.workspace.join(".tmp");
        let _ = std::fs::create_dir_all(&tmp);
        let mut env: Vec<(String, String)> = vec![
            ("HOME".into(), self.workspace.display().to_string()),
            ("TMPDIR".into(), tmp.display().to_string()),
        ];
        for name in &self.grant.env {
            if let Some(value) = std::env::var_os(name) {
                env.push((name.clone(), value.to_string_lossy().into_owned()));
            }
        }
        env.extend(requested);
        env.retain(|(name, _)| !is_loader_variable(name) || self.grant.env.contains(name));
        // Later entries win, as in a shell.
        let mut seen = std::collections::HashSet::new();
        let mut unique: Vec<_> = env
            .into_iter()
            .rev()
            .filter(|(k, _)| seen.insert(k.clone()))
            .collect();
        unique.reverse();
        unique
    }
}

fn file_name(program: &str) -> &str {
    program.rsplit('/').next().unwrap_or(program)
}

/// Whether native commands run in the sandbox: only `SLUICE_NATIVE_SANDBOX=off`
/// on the host turns it off, and then every command says so in its log.
fn native_sandbox_enabled() -> bool {
    !std::env::var("SLUICE_NATIVE_SANDBOX").is_ok_and(|v| v.trim().eq_ignore_ascii_case("off"))
}

/// Whether the dynamic loader or libc would load code because of `name`.
fn is_loader_variable(name: &str) -> bool {
    name.starts_with("LD_") || name.starts_with("DYLD_") || LOADER_VARIABLES.contains(&name)
}

/// `./x` or `dir/x`: a path in the workspace rather than a host program.
fn is_workspace_path(program: &str) -> bool {
    program.contains('/') && !program.starts_with('/')
}

fn normalize_relative(path: &str) -> PathBuf {
    Path::new(path)
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

/// `program` on the host's PATH (or as an absolute path), as a canonical file.
fn resolve_on_host(program: &str) -> Option<PathBuf> {
    if program.starts_with('/') {
        let path = Path::new(program).canonicalize().ok()?;
        return is_executable(&path).then_some(path);
    }
    if program.contains('/') || program.is_empty() {
        return None;
    }
    let search_path = std::env::var_os("PATH")?;
    std::env::split_paths(&search_path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
        .and_then(|found| found.canonicalize().ok())
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
        let cwd = match self.process.working_dir(&command.cwd) {
            Ok(dir) => dir,
            Err(message) => return Ok(Err(ProcessError::Invalid(message))),
        };
        let program = match self.process.resolve_allowed(&command.program, &cwd) {
            Ok(program) => program,
            Err(message) if message.contains("allow-list") => {
                self.denials
                    .record(&self.log, format!("permission denied: {message}"));
                return Ok(Err(ProcessError::NotAllowed(message)));
            }
            Err(message) => return Ok(Err(ProcessError::SpawnFailed(message))),
        };
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
        let timeout = match command.timeout_ms {
            0 => self.process.default_timeout,
            ms => Duration::from_millis(ms),
        };
        let sandboxed = native_sandbox_enabled();
        if !sandboxed {
            self.log.line(
                LogStream::Host,
                "warning: the native sandbox is OFF (SLUICE_NATIVE_SANDBOX=off): this command runs unconfined as the host user",
            );
        }
        let env = self.process.environment(env);
        let user = match sandboxed {
            true => match self.process.command_user().await {
                Ok(user) => user,
                Err(error) => return Ok(Err(error)),
            },
            false => None,
        };
        let spec = LaunchSpec {
            program,
            argv0: command.program.clone(),
            args: command.args,
            cwd,
            env,
            host_pid: std::process::id(),
            share_network: self.process.grant.network,
            max_processes: 4096,
            max_open_files: 4096,
            max_memory: self
                .process
                .grant
                .memory
                .unwrap_or(super::limits::DEFAULT_COMMAND_MEMORY),
            max_memory_set: self.process.grant.memory.is_some(),
            read_only: self.process.grant.read_only.clone(),
            read_write: self.process.grant.read_write.clone(),
            user,
            sandboxed,
        };
        Ok(spawn_and_capture(spec, timeout, self.log.clone()).await)
    }
}

async fn spawn_and_capture(
    spec: LaunchSpec,
    timeout: Duration,
    log: LogSink,
) -> Result<CommandOutput, ProcessError> {
    let launcher = std::env::current_exe()
        .map_err(|e| ProcessError::SpawnFailed(format!("finding the sluice launcher: {e}")))?;
    let mut command = tokio::process::Command::new(&launcher);
    command
        .arg(LAUNCHER_ARG)
        .current_dir(&spec.cwd)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: only async-signal-safe libc calls run between fork and exec.
    unsafe {
        command.pre_exec(detach_child);
    }
    log.line(
        LogStream::Host,
        &format!("$ {} {}", spec.program.display(), spec.args.join(" ")),
    );
    let mut child = command
        .spawn()
        .map_err(|e| ProcessError::SpawnFailed(format!("{}: {e}", launcher.display())))?;
    // Whatever happens next (exit, timeout, the action being dropped), the
    // launcher dies, and its namespace with everything the command started.
    let group = ProcessGroup(child.id());
    send_spec(&mut child, &spec).await?;
    let stdout = capture(child.stdout.take(), log.clone(), LogStream::Process);
    let stderr = capture(child.stderr.take(), log.clone(), LogStream::ProcessErr);
    let (exit_code, timed_out) = match tokio::time::timeout(timeout, child.wait()).await {
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
                    humantime::format_duration(timeout)
                ),
            );
            (None, true)
        }
    };
    group.kill();
    let masker = log.masker();
    let (stdout, stderr) = (masker.mask(&stdout.await), masker.mask(&stderr.await));
    if exit_code == Some(SETUP_FAILED) && stderr.starts_with("sluice sandbox:") {
        return Err(ProcessError::SpawnFailed(stderr.trim().to_string()));
    }
    Ok(CommandOutput {
        exit_code,
        stdout,
        stderr,
        timed_out,
    })
}

async fn send_spec(
    child: &mut tokio::process::Child,
    spec: &LaunchSpec,
) -> Result<(), ProcessError> {
    let json = serde_json::to_vec(spec)
        .map_err(|e| ProcessError::SpawnFailed(format!("encoding the launch spec: {e}")))?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| ProcessError::SpawnFailed("the launcher has no stdin".into()))?;
    stdin
        .write_all(&json)
        .await
        .map_err(|e| ProcessError::SpawnFailed(format!("starting the launcher: {e}")))?;
    Ok(()) // dropping stdin closes it: the launcher reads to the end
}

/// Runs in the child between fork and exec: its own process group, and death
/// when the host dies (the launcher passes that on to the namespace).
fn detach_child() -> std::io::Result<()> {
    // SAFETY: setsid and prctl are async-signal-safe.
    unsafe {
        libc::setsid();
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The launcher's process group (setsid made its pid the group id); killed
/// when dropped. Killing the launcher kills the command's whole namespace.
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

    fn capability(commands: &[&str], workspace: &Path) -> ProcessCapability {
        let grant = ProcessGrant {
            commands: commands.iter().map(|c| c.to_string()).collect(),
            env: vec!["PATH".into(), "LD_LIBRARY_PATH".into()],
            ..ProcessGrant::default()
        };
        ProcessCapability::from_grant(grant, workspace.to_path_buf(), Duration::from_secs(1))
    }

    #[test]
    fn allow_list_matches_the_resolved_file_not_the_name() {
        let temp = tempfile::tempdir().unwrap();
        let cap = capability(&["sh"], temp.path());
        assert!(cap.resolve_allowed("sh", temp.path()).is_ok());
        let sh = resolve_on_host("sh").unwrap();
        assert!(cap.resolve_allowed("/bin/sh", temp.path()).is_ok());
        // The file `sh` links to, by its own name, was not granted.
        if sh.file_name().unwrap() != "sh" {
            assert!(
                cap.resolve_allowed(sh.to_str().unwrap(), temp.path())
                    .is_err()
            );
        }
        assert!(cap.resolve_allowed("true", temp.path()).is_err());
        // Another name for the same file is not the granted program.
        let dash = temp.path().join("bin");
        std::fs::create_dir_all(&dash).unwrap();
        std::os::unix::fs::symlink(&sh, dash.join("other-name")).unwrap();
        assert!(
            cap.resolve_allowed(dash.join("other-name").to_str().unwrap(), temp.path())
                .is_err()
        );
        // A link the guest made in its workspace, named like a granted program.
        std::os::unix::fs::symlink(resolve_on_host("true").unwrap(), temp.path().join("sh"))
            .unwrap();
        assert!(cap.resolve_allowed("./sh", temp.path()).is_err());
    }

    #[test]
    fn workspace_scripts_need_their_exact_path_granted() {
        use std::os::unix::fs::PermissionsExt;
        let temp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(temp.path().join("ci")).unwrap();
        let script = temp.path().join("ci/build.sh");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cap = capability(&["./ci/build.sh"], temp.path());
        assert!(cap.resolve_allowed("ci/build.sh", temp.path()).is_ok());
        assert!(cap.resolve_allowed("./ci/build.sh", temp.path()).is_ok());
        assert!(
            cap.resolve_allowed("ci/../ci/build.sh", temp.path())
                .is_err()
        );
        // The same path as a symlink leaving the workspace is refused.
        std::fs::remove_file(&script).unwrap();
        std::os::unix::fs::symlink(resolve_on_host("true").unwrap(), &script).unwrap();
        assert!(cap.resolve_allowed("./ci/build.sh", temp.path()).is_err());
    }

    #[test]
    fn environment_starts_empty_and_drops_loader_variables() {
        let temp = tempfile::tempdir().unwrap();
        let grant = ProcessGrant {
            env: vec!["PATH".into()],
            ..ProcessGrant::default()
        };
        let cap = ProcessCapability::from_grant(grant, temp.path().into(), Duration::from_secs(1));
        let env = cap.environment(vec![
            ("LD_PRELOAD".into(), "/tmp/evil.so".into()),
            ("GCONV_PATH".into(), "/tmp".into()),
            ("FOO".into(), "bar".into()),
        ]);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("HOME"), Some(temp.path().display().to_string()));
        assert_eq!(get("FOO").as_deref(), Some("bar"));
        assert_eq!(get("LD_PRELOAD"), None);
        assert_eq!(get("GCONV_PATH"), None);
        assert_eq!(get("PATH"), std::env::var("PATH").ok());
    }

    #[test]
    fn working_dir_cannot_leave_the_workspace() {
        let cap = capability(&[], Path::new("/ws"));
        assert_eq!(cap.working_dir("src").unwrap(), PathBuf::from("/ws/src"));
        assert!(cap.working_dir("../etc").is_err());
        assert!(cap.working_dir("/etc").is_err());
    }
}
