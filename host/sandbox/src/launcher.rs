//! The native-command launcher: `sluice __sandbox-exec`, run by the process
//! capability for every native command.
//!
//! It runs as a fresh, single-threaded process (so that everything between
//! `fork` and `exec` is safe), reads its [`LaunchSpec`] from stdin, and then:
//!
//! 1. dies with the host (`PR_SET_PDEATHSIG`), so `kill -9` of `sluice` takes
//!    every command with it;
//! 2. enters new PID and mount namespaces (and a network namespace with only
//!    loopback unless the action was granted network), and forks an init that
//!    is PID 1 there. When that init ends, the kernel kills everything left in
//!    the namespace, `setsid` daemons included, so nothing outlives the action
//!    and no orphan holds the output pipes open;
//! 3. mounts a fresh `/proc` (the command sees only its own processes, never
//!    the host's `environ`), sets resource limits;
//! 4. when a root host drops root ([`super::identity`]), hides what the
//!    command user may not see and binds back what it was granted, so a
//!    toolchain under a closed `/root` stays reachable ([`super::mount_view`]);
//! 5. confines the filesystem with Landlock: read-write only the workspace,
//!    outputs, caches and read-write mounts; read-only the inputs, read-only
//!    mounts, granted toolchain directories and the system's (`/usr`, `/lib`,
//!    a few files of `/etc`...); nothing else (not the data directory, the
//!    state database, other actions' directories, `/root` or `/etc/shadow`);
//! 6. drops every capability, for good (bounding set, `SECBIT_NOROOT`), and
//!    becomes the command user; with `grants.run-as-root` a command run by a
//!    root host is root without root's powers (no mounts, no bypassing file
//!    modes, no raw sockets, and `RLIMIT_NPROC` applies);
//! 7. execs the command.
//!
//! Exit status: the command's code, `128 + signal` when it was killed, and
//! [`SETUP_FAILED`] with a message on stderr when the sandbox could not be set up.

use std::ffi::CString;
use std::io::Read as _;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::mount_view::{expose_only_granted, mount};

/// The hidden first argument that turns `sluice` into the launcher.
pub const LAUNCHER_ARG: &str = "__sandbox-exec";

/// Exit code of a launcher whose sandbox setup failed.
pub const SETUP_FAILED: i32 = 125;

/// What to run and how to confine it; sent on the launcher's stdin so that
/// secret environment values never appear in a command line.
#[derive(Debug, Serialize, Deserialize)]
pub struct LaunchSpec {
    /// The resolved program.
    pub program: PathBuf,
    /// `argv[0]`: the name the command was asked for.
    pub argv0: String,
    /// Arguments after `argv[0]`.
    pub args: Vec<String>,
    /// Working directory.
    pub cwd: PathBuf,
    /// The whole environment of the command.
    pub env: Vec<(String, String)>,
    /// The host's pid: the launcher refuses to run if its parent already died.
    pub host_pid: u32,
    /// No network namespace of its own (the action was granted hosts or network).
    pub share_network: bool,
    /// Most processes (RLIMIT_NPROC).
    pub max_processes: u64,
    /// Most open files (RLIMIT_NOFILE).
    pub max_open_files: u64,
    /// Most memory in bytes for the command and everything it starts
    /// (`limits.command-memory`; see [`super::memory`]).
    pub max_memory: u64,
    /// Whether the action set `max_memory` itself (rather than the default).
    pub max_memory_set: bool,
    /// Directories (or files) the command may read and execute.
    pub read_only: Vec<PathBuf>,
    /// Directories the command may read, write and execute in.
    pub read_write: Vec<PathBuf>,
    /// The command user's uid, when a root host drops root for the command
    /// ([`super::identity`]); `None` keeps the host's uid.
    pub user: Option<u32>,
    /// False only when the host is configured with `SLUICE_NATIVE_SANDBOX=off`:
    /// no namespaces and no Landlock, just limits and death with the host.
    pub sandboxed: bool,
}

/// What every command may read: the system's programs, libraries and the few
/// configuration files they need (never all of `/etc`: `/etc/shadow` lives there).
const SYSTEM_READ_ONLY: &[&str] = &[
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc/alternatives",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/resolv.conf",
    "/etc/gai.conf",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/protocols",
    "/etc/services",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/mime.types",
    "/etc/os-release",
    "/etc/debian_version",
    "/etc/login.defs",
    "/proc",
    "/sys/devices/system/cpu",
    "/sys/fs/cgroup",
    "/dev/urandom",
    "/dev/random",
];

/// Device files every command may write.
const SYSTEM_READ_WRITE: &[&str] = &["/dev/null", "/dev/zero", "/dev/full"];

/// Entry point of `sluice __sandbox-exec`; never returns.
pub fn main() -> ! {
    let code = match prepare() {
        Ok(spec) => run(&spec),
        Err(message) => {
            eprintln!("sluice sandbox: {message}");
            SETUP_FAILED
        }
    };
    std::process::exit(code)
}

fn prepare() -> Result<LaunchSpec, String> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| format!("reading the launch spec: {e}"))?;
    let spec: LaunchSpec =
        serde_json::from_str(&text).map_err(|e| format!("bad launch spec: {e}"))?;
    // The host died between spawning us and now: run nothing.
    if std::os::unix::process::parent_id() != spec.host_pid {
        return Err("the host is gone".into());
    }
    redirect_stdin_to_null()?;
    if !spec.sandboxed {
        return Ok(spec);
    }
    let mut flags = libc::CLONE_NEWPID | libc::CLONE_NEWNS;
    if !spec.share_network {
        flags |= libc::CLONE_NEWNET;
    }
    // SAFETY: geteuid/getegid cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if uid != 0 {
        // Without root, a user namespace grants the right to make the others.
        flags |= libc::CLONE_NEWUSER;
    }
    // SAFETY: unshare with plain flags; affects this process (and its children for NEWPID).
    check(
        unsafe { libc::unshare(flags) },
        "unshare(pid, mount, net namespaces)",
    )?;
    if uid != 0 {
        map_own_ids(uid, gid)?;
    }
    Ok(spec)
}

/// Inside a new user namespace, stay the same user (and nobody else).
fn map_own_ids(uid: libc::uid_t, gid: libc::gid_t) -> Result<(), String> {
    let write = |file: &str, text: String| {
        std::fs::write(file, text).map_err(|e| format!("writing {file}: {e}"))
    };
    write("/proc/self/setgroups", "deny".into())?;
    write("/proc/self/uid_map", format!("{uid} {uid} 1"))?;
    write("/proc/self/gid_map", format!("{gid} {gid} 1"))
}

/// Fork the namespace's init and relay its exit status.
fn run(spec: &LaunchSpec) -> i32 {
    let memory = match super::memory::MemoryLimit::apply(spec.max_memory, spec.max_memory_set) {
        Ok(limit) => limit,
        Err(message) => {
            eprintln!("sluice sandbox: limit command-memory: {message}");
            return SETUP_FAILED;
        }
    };
    // SAFETY: this process is single-threaded (a fresh exec of the binary).
    let code = match unsafe { libc::fork() } {
        -1 => fail("fork"),
        0 => std::process::exit(init(spec)),
        child => wait_for(child),
    };
    if memory.hit() {
        eprintln!(
            "sluice sandbox: limit command-memory ({}) exceeded: the command was killed",
            sluice_core::units::format_bytes(spec.max_memory)
        );
    }
    memory.release();
    code
}

/// PID 1 of the namespace: set it up, fork the command, reap everything, and
/// exit with the command's status (which kills whatever is left).
fn init(spec: &LaunchSpec) -> i32 {
    if let Err(message) = set_up_namespace(spec) {
        eprintln!("sluice sandbox: {message}");
        return SETUP_FAILED;
    }
    // SAFETY: still single-threaded.
    let command = match unsafe { libc::fork() } {
        -1 => return fail("fork"),
        0 => exec_command(spec),
        pid => pid,
    };
    reap_until(command)
}

fn set_up_namespace(spec: &LaunchSpec) -> Result<(), String> {
    // SAFETY: prctl with constant arguments.
    check(
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) },
        "prctl(PR_SET_PDEATHSIG)",
    )?;
    set_limits(spec);
    if !spec.sandboxed {
        return Ok(());
    }
    // Mounts made here must not propagate back to the host.
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )?;
    mount(
        Some("proc"),
        Path::new("/proc"),
        Some("proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )?;
    if !spec.share_network {
        bring_up_loopback()?;
    }
    if let Some(uid) = spec.user {
        let home = spec
            .env
            .iter()
            .find(|(k, _)| k == "HOME")
            .map_or("/", |(_, v)| v.as_str());
        expose_only_granted(&granted_paths(spec).collect::<Vec<_>>(), uid, home)?;
    }
    confine_filesystem(spec)
}

/// Landlock: everything not granted here is denied, whatever the file modes
/// say (it holds for root too). Mounts must be done before: a restricted
/// process can no longer change its mounts.
fn confine_filesystem(spec: &LaunchSpec) -> Result<(), String> {
    use landlock::{
        ABI, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
        path_beneath_rules,
    };
    let abi = ABI::V5;
    let read = AccessFs::from_read(abi);
    let all = AccessFs::from_all(abi);
    let (read_only, read_write) = (read_only_paths(spec), read_write_paths(spec));
    let status = Ruleset::default()
        .handle_access(all)
        .and_then(|r| r.create())
        .and_then(|r| r.add_rules(path_beneath_rules(read_only, read)))
        .and_then(|r| r.add_rules(path_beneath_rules(read_write, all)))
        .and_then(|r| r.restrict_self())
        .map_err(|e| format!("Landlock: {e}"))?;
    if status.ruleset == RulesetStatus::NotEnforced {
        return Err(
            "Landlock is not available on this kernel; native commands are refused \
             (set SLUICE_NATIVE_SANDBOX=off to run them unconfined, at your own risk)"
                .into(),
        );
    }
    Ok(())
}

fn read_only_paths(spec: &LaunchSpec) -> impl Iterator<Item = PathBuf> + '_ {
    SYSTEM_READ_ONLY
        .iter()
        .map(PathBuf::from)
        .chain(spec.read_only.iter().cloned())
}

fn read_write_paths(spec: &LaunchSpec) -> impl Iterator<Item = PathBuf> + '_ {
    SYSTEM_READ_WRITE
        .iter()
        .map(PathBuf::from)
        .chain(spec.read_write.iter().cloned())
}

/// Everything the command may reach, read-only or not.
fn granted_paths(spec: &LaunchSpec) -> impl Iterator<Item = PathBuf> + '_ {
    read_only_paths(spec).chain(read_write_paths(spec))
}

fn exec_command(spec: &LaunchSpec) -> ! {
    // SAFETY: setsid in the child; a new session keeps the terminal's signals away.
    unsafe {
        libc::setsid();
    }
    let error = exec(spec);
    eprintln!("sluice sandbox: {error}");
    std::process::exit(127)
}

fn exec(spec: &LaunchSpec) -> String {
    if let Err(e) = std::env::set_current_dir(&spec.cwd) {
        return format!("cd {}: {e}", spec.cwd.display());
    }
    if spec.sandboxed
        && let Err(e) = drop_capabilities(spec.user)
    {
        return format!("dropping capabilities: {e}");
    }
    let program = match CString::new(spec.program.as_os_str().as_bytes()) {
        Ok(p) => p,
        Err(_) => return "program path has a NUL byte".into(),
    };
    let argv: Vec<CString> = std::iter::once(spec.argv0.clone())
        .chain(spec.args.iter().cloned())
        .filter_map(|a| CString::new(a).ok())
        .collect();
    let envp: Vec<CString> = spec
        .env
        .iter()
        .filter_map(|(k, v)| CString::new(format!("{k}={v}")).ok())
        .collect();
    let argv_ptrs = null_terminated(&argv);
    let envp_ptrs = null_terminated(&envp);
    // SAFETY: NUL-terminated arrays of valid C strings that outlive the call.
    unsafe {
        libc::execve(program.as_ptr(), argv_ptrs.as_ptr(), envp_ptrs.as_ptr());
    }
    format!(
        "exec {}: {}",
        spec.program.display(),
        std::io::Error::last_os_error()
    )
}

/// Empty every capability set, empty the bounding set so that no exec can
/// bring one back, lock "root is not special" (`SECBIT_NOROOT`), and become
/// the command user if there is one.
fn drop_capabilities(user: Option<u32>) -> Result<(), std::io::Error> {
    use rustix::io::Errno;
    use rustix::thread::{
        CapabilitiesSecureBits as Bits, CapabilitySet, CapabilitySets,
        remove_capability_from_bounding_set,
    };
    for bit in 0..64 {
        match remove_capability_from_bounding_set(CapabilitySet::from_bits_retain(1 << bit)) {
            Ok(()) | Err(Errno::INVAL) => {} // past the kernel's last capability
            Err(e) => return Err(e.into()),
        }
    }
    rustix::thread::set_capabilities_secure_bits(
        Bits::NO_ROOT
            | Bits::NO_ROOT_LOCKED
            | Bits::NO_SETUID_FIXUP_LOCKED
            | Bits::KEEP_CAPS_LOCKED,
    )?;
    rustix::thread::clear_ambient_capability_set()?;
    if let Some(uid) = user {
        become_user(uid)?;
    }
    let none = CapabilitySet::empty();
    rustix::thread::set_capabilities(
        None,
        CapabilitySets {
            effective: none,
            permitted: none,
            inheritable: none,
        },
    )?;
    Ok(())
}

/// Groups first: once the uid changes, the right to change them is gone.
fn become_user(uid: u32) -> Result<(), std::io::Error> {
    let groups = [super::identity::SANDBOX_GROUP];
    // SAFETY: plain id syscalls; the process is single-threaded.
    let status = unsafe {
        if libc::setgroups(groups.len(), groups.as_ptr()) != 0
            || libc::setresgid(uid, uid, uid) != 0
        {
            -1
        } else {
            libc::setresuid(uid, uid, uid)
        }
    };
    match status {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// Reap every child until `command` exits; return its status as an exit code.
fn reap_until(command: libc::pid_t) -> i32 {
    loop {
        let mut status = 0;
        // SAFETY: waitpid on any child with a valid status pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid == command {
            return exit_code(status);
        }
        if pid == -1 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return SETUP_FAILED;
        }
    }
}

fn wait_for(child: libc::pid_t) -> i32 {
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child with a valid status pointer.
        let pid = unsafe { libc::waitpid(child, &mut status, 0) };
        if pid == child {
            return exit_code(status);
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return SETUP_FAILED;
        }
    }
}

fn exit_code(status: libc::c_int) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        SETUP_FAILED
    }
}

fn set_limits(spec: &LaunchSpec) {
    let limit = |resource, value: u64| {
        let rlimit = libc::rlimit {
            rlim_cur: value as libc::rlim_t,
            rlim_max: value as libc::rlim_t,
        };
        // SAFETY: setrlimit with a valid pointer; failure leaves the inherited limit.
        unsafe { libc::setrlimit(resource, &rlimit) };
    };
    limit(libc::RLIMIT_CORE, 0);
    limit(libc::RLIMIT_FSIZE, 8 << 30);
    limit(libc::RLIMIT_NOFILE, spec.max_open_files);
    limit(libc::RLIMIT_NPROC, spec.max_processes);
}

fn redirect_stdin_to_null() -> Result<(), String> {
    let null = std::fs::File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
    use std::os::fd::AsRawFd as _;
    // SAFETY: dup2 of a valid descriptor onto stdin.
    check(unsafe { libc::dup2(null.as_raw_fd(), 0) }, "dup2(stdin)")
}

/// A new network namespace starts with `lo` down; tests that serve on
/// 127.0.0.1 need it up.
fn bring_up_loopback() -> Result<(), String> {
    // SAFETY: a datagram socket only used for the interface ioctls below.
    let socket = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    check(socket, "socket")?;
    // SAFETY: an all-zero ifreq is valid; the name is copied within bounds.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS on a valid socket with a valid ifreq.
    let result = unsafe {
        if libc::ioctl(socket, libc::SIOCGIFFLAGS, &mut request) < 0 {
            -1
        } else {
            request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(socket, libc::SIOCSIFFLAGS, &request)
        }
    };
    // SAFETY: closing the socket we opened.
    unsafe { libc::close(socket) };
    check(result, "bringing up loopback")
}

fn check(result: libc::c_int, what: &str) -> Result<(), String> {
    if result < 0 {
        Err(format!("{what}: {}", std::io::Error::last_os_error()))
    } else {
        Ok(())
    }
}

fn fail(what: &str) -> i32 {
    eprintln!(
        "sluice sandbox: {what}: {}",
        std::io::Error::last_os_error()
    );
    SETUP_FAILED
}
