//! A test-only Sluice action that misbehaves on purpose.
//!
//! It is generated straight from `wit/action.wit` with `wit_bindgen::generate!`
//! (no SDK), which also proves that a raw wit-bindgen component is a valid action.
//! The config key `mode` picks what it attempts; see README.md.
//!
//! For escape and permission modes a forbidden operation that *succeeds* returns
//! `ok` with summary `ESCAPED: <first 200 bytes>`, and one that is denied returns
//! a `permission-error` failure `<operation> denied: <error text>`.

wit_bindgen::generate!({
    world: "action",
    path: "../../../wit",
});

use std::io::Write as _;

#[path = "secrets.rs"]
mod secrets_modes;

use sluice::action::log::{self, Level};
use sluice::action::process::{self, Command, ProcessError};
use sluice::action::secrets;
use sluice::action::types::FailureKind;

/// How much of a breach is quoted in the `ESCAPED:` summary.
const QUOTE_BYTES: usize = 200;
/// Size of one memory-bomb allocation.
const CHUNK: usize = 16 << 20;
/// Size of one log-flood line.
const LINE: usize = 64 << 10;

struct Hostile;

impl Guest for Hostile {
    fn run(invocation: Invocation) -> Result<Outcome, Failure> {
        let inv = Inv(&invocation);
        let mode = inv.config("mode").unwrap_or("");
        log::write(Level::Info, &format!("hostile: mode {mode:?}"));
        match mode {
            "escape-dotdot" => escape_dotdot(&inv),
            "escape-absolute" => read_attempt("read /etc/passwd", &["/etc/passwd".to_string()]),
            "escape-symlink" => {
                let link = inv.config("link").unwrap_or("link");
                let path = format!("{}/{link}", inv.first_input_dir());
                read_attempt(&format!("read symlink {path}"), &[path])
            }
            "write-input" => write_input(&inv),
            "secret-ungranted" => secret_ungranted(&inv),
            "http-ungranted" => http_ungranted(&inv),
            "command-not-allowed" => command_not_allowed(&inv),
            "infinite-loop" => infinite_loop(),
            "memory-bomb" => memory_bomb(),
            "plant-residue" => plant_residue(&inv),
            "seek-residue" => seek_residue(&inv),
            "log-flood" => log_flood(&inv),
            "noop" => Ok(outcome("noop".to_string())),
            "plant-symlink" => plant_symlink(&inv),
            "panic" => panic_loudly(&inv),
            "terminal-escape" => terminal_escape(&inv),
            "cache-count" => cache_count(&inv),
            "secret-to-artifact" => secrets_modes::to_artifact(&inv),
            "launder-secret" => secrets_modes::launder(&inv),
            "continue-with-secret" => secrets_modes::continue_with(&inv),
            "big-summary" => big_summary(&inv),
            "many-variables" => many_variables(&inv),
            "many-files" => many_files(&inv),
            "big-file" => big_file(&inv),
            "open-files" => open_files(&inv),
            "stack-overflow" => stack_overflow(&inv),
            "mount-symlink" => mount_symlink(&inv),
            "link-then-command" => link_then_command(&inv),
            other => Err(Failure {
                kind: FailureKind::ConfigurationError,
                message: format!("unknown mode {other:?}"),
            }),
        }
    }
}

export!(Hostile);

/// Convenience accessors over the invocation.
struct Inv<'a>(&'a Invocation);

impl Inv<'_> {
    /// The value for `key`; the last entry wins, as in the SDK.
    fn config(&self, key: &str) -> Option<&str> {
        self.0
            .config
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `/in/<first input>`, or `/in` when the action has no input.
    fn first_input_dir(&self) -> String {
        match self.0.inputs.first() {
            Some(name) => format!("/in/{name}"),
            None => "/in".to_string(),
        }
    }
}

fn outcome(summary: String) -> Outcome {
    Outcome {
        summary,
        variables: Vec::new(),
    }
}

/// The forbidden operation worked: report the breach.
fn escaped(data: &[u8]) -> Result<Outcome, Failure> {
    let quoted = String::from_utf8_lossy(&data[..data.len().min(QUOTE_BYTES)]).into_owned();
    log::write(Level::Error, &format!("hostile: ESCAPED: {quoted}"));
    Ok(outcome(format!("ESCAPED: {quoted}")))
}

/// The forbidden operation was refused.
fn denied(operation: &str, error: impl std::fmt::Display) -> Failure {
    let message = format!("{operation} denied: {error}");
    log::write(Level::Info, &format!("hostile: {message}"));
    Failure {
        kind: FailureKind::PermissionError,
        message,
    }
}

/// Try to read each path; the first that can be read is a breach.
fn read_attempt(operation: &str, paths: &[String]) -> Result<Outcome, Failure> {
    let mut errors = Vec::new();
    for path in paths {
        match std::fs::read(path) {
            Ok(data) => {
                log::write(
                    Level::Error,
                    &format!("hostile: read {path} ({} bytes)", data.len()),
                );
                return escaped(&data);
            }
            Err(e) => errors.push(format!("{path}: {e}")),
        }
    }
    Err(denied(operation, errors.join("; ")))
}

fn escape_dotdot(inv: &Inv) -> Result<Outcome, Failure> {
    let paths = [
        format!("{}/../../../../etc/passwd", inv.first_input_dir()),
        "../../etc/passwd".to_string(),
    ];
    read_attempt("read ../etc/passwd", &paths)
}

fn write_input(inv: &Inv) -> Result<Outcome, Failure> {
    let file = inv.config("file").unwrap_or("hostile.txt");
    let path = format!("{}/{file}", inv.first_input_dir());
    let operation = format!("write {path}");
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .and_then(|mut f| {
            f.write_all(b"hostile was here\n")?;
            f.flush()
        });
    match result {
        Ok(()) => escaped(format!("wrote {path}").as_bytes()),
        Err(e) => Err(denied(&operation, e)),
    }
}

fn secret_ungranted(inv: &Inv) -> Result<Outcome, Failure> {
    let name = inv.config("secret").unwrap_or("");
    let operation = format!("secrets.get({name:?})");
    match secrets::get(name) {
        Ok(value) => {
            // Logged on purpose: the host must mask it (and should never have given it).
            log::write(Level::Warn, &format!("hostile: secret {name} = {value}"));
            escaped(value.as_bytes())
        }
        Err(e) => Err(denied(&operation, e)),
    }
}

fn command_not_allowed(inv: &Inv) -> Result<Outcome, Failure> {
    let program = inv.config("program").unwrap_or("curl");
    let args: Vec<String> = inv
        .config("args")
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let operation = format!("process.run({program:?})");
    let command = Command {
        program: program.to_string(),
        args,
        cwd: String::new(),
        env: Vec::new(),
        secret_env: Vec::new(),
        timeout_ms: 0,
    };
    match process::run(&command) {
        Ok(output) => {
            let mut data = format!("ran {program}, exit {:?}: ", output.exit_code).into_bytes();
            data.extend_from_slice(output.stdout.as_bytes());
            escaped(&data)
        }
        Err(ProcessError::NotAllowed(e)) => Err(denied(&operation, format!("not allowed: {e}"))),
        Err(ProcessError::Invalid(e)) => Err(denied(&operation, format!("invalid: {e}"))),
        Err(ProcessError::SpawnFailed(e)) => Err(denied(&operation, format!("spawn failed: {e}"))),
    }
}

fn http_ungranted(inv: &Inv) -> Result<Outcome, Failure> {
    let url = inv.config("url").unwrap_or("");
    let operation = format!("HTTP GET {url}");
    match http_get(url) {
        Ok(data) => escaped(&data),
        Err(e) => Err(denied(&operation, e)),
    }
}

/// A minimal wasi:http GET; returns `HTTP <status>: <start of body>`.
fn http_get(url: &str) -> Result<Vec<u8>, String> {
    use wasi::http::outgoing_handler;
    use wasi::http::types::{Fields, Method, OutgoingRequest, Scheme};
    use wasi::io::streams::StreamError;

    let (scheme, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else {
        return Err(format!("unsupported URL {url:?}"));
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('/') => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };

    let request = OutgoingRequest::new(Fields::new());
    request
        .set_method(&Method::Get)
        .map_err(|()| "invalid method".to_string())?;
    request
        .set_scheme(Some(&scheme))
        .map_err(|()| "invalid scheme".to_string())?;
    request
        .set_authority(Some(authority))
        .map_err(|()| format!("invalid authority {authority:?}"))?;
    request
        .set_path_with_query(Some(&path))
        .map_err(|()| format!("invalid path {path:?}"))?;

    let future = outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))?;
    future.subscribe().block();
    let response = future
        .get()
        .ok_or_else(|| "no response".to_string())?
        .map_err(|()| "response already taken".to_string())?
        .map_err(|e| format!("{e:?}"))?;

    let mut data = format!("HTTP {}: ", response.status()).into_bytes();
    let body = response
        .consume()
        .map_err(|()| "response body unavailable".to_string())?;
    {
        let stream = body
            .stream()
            .map_err(|()| "response stream unavailable".to_string())?;
        while data.len() < QUOTE_BYTES {
            match stream.blocking_read(QUOTE_BYTES as u64) {
                Ok(chunk) => data.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(e)) => {
                    return Err(format!("reading body: {}", e.to_debug_string()));
                }
            }
        }
    }
    drop(body);
    drop(response);
    Ok(data)
}

fn infinite_loop() -> ! {
    log::write(Level::Info, "hostile: spinning forever");
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

/// Key applied to a planted marker, so that the marker as planted exists in
/// linear memory only where `plant-residue` wrote it (never in the config).
const RESIDUE_KEY: u8 = 0x5a;

/// Fill `kib` KiB of heap with the config's `marker` (each
/// byte XORed with [`RESIDUE_KEY`]) and end without freeing it: what a
/// previous action leaves in its instance's memory.
fn plant_residue(inv: &Inv) -> Result<Outcome, Failure> {
    let marker: Vec<u8> = inv
        .config("marker")
        .unwrap_or("residue")
        .bytes()
        .map(|b| b ^ RESIDUE_KEY)
        .collect();
    let kib: usize = inv.config("kib").and_then(|k| k.parse().ok()).unwrap_or(64);
    let planted: Vec<u8> = marker.iter().copied().cycle().take(kib << 10).collect();
    std::hint::black_box(&planted);
    std::mem::forget(planted);
    Ok(outcome(format!("planted {kib} KiB")))
}

/// Scan the whole of this instance's linear memory for the config's `marker`
/// as `plant-residue` wrote it; finding it is a breach.
fn seek_residue(inv: &Inv) -> Result<Outcome, Failure> {
    if inv.config("plant-first") == Some("true") {
        // The control: the scan must find what this very instance planted.
        plant_residue(inv)?;
    }
    let marker = inv
        .config("marker")
        .unwrap_or("residue")
        .as_bytes()
        .to_vec();
    // Grow memory (without writing to it) to `grow-to-kib`, so the scan also
    // covers pages a previous instance of this slot grew into.
    #[cfg(target_arch = "wasm32")]
    {
        let wanted: usize = inv
            .config("grow-to-kib")
            .and_then(|k| k.parse().ok())
            .unwrap_or(0);
        let pages = core::arch::wasm32::memory_size(0);
        let missing = (wanted << 10).div_ceil(65536).saturating_sub(pages);
        if missing > 0 {
            core::arch::wasm32::memory_grow(0, missing);
        }
    }
    #[cfg(target_arch = "wasm32")]
    let size = core::arch::wasm32::memory_size(0) * 65536;
    // Built for the host only to be type-checked: there is no instance there.
    #[cfg(not(target_arch = "wasm32"))]
    let size: usize = 0;
    let read = |address: usize| -> u8 {
        // SAFETY: every address below memory_size is readable in wasm32.
        unsafe { core::ptr::read_volatile(address as *const u8) }
    };
    // From 8: address 0 is never handed out, and not worth a null read.
    let found = (8..size.saturating_sub(marker.len())).find(|&at| {
        marker
            .iter()
            .enumerate()
            .all(|(i, m)| read(at + i) ^ RESIDUE_KEY == *m)
    });
    match found {
        Some(at) => escaped(format!("a previous action's memory at {at:#x}").as_bytes()),
        None => Ok(outcome(format!(
            "no residue in {} KiB of memory",
            size >> 10
        ))),
    }
}

fn memory_bomb() -> Result<Outcome, Failure> {
    log::write(
        Level::Info,
        "hostile: allocating 16 MiB chunks until something gives",
    );
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        // An allocation failure aborts (traps): the action can never look successful.
        let mut chunk = vec![0u8; CHUNK];
        for i in (0..CHUNK).step_by(4096) {
            chunk[i] = 1;
        }
        hoard.push(std::hint::black_box(chunk));
        if hoard.len().is_multiple_of(16) {
            log::write(
                Level::Info,
                &format!("hostile: holding {} MiB", hoard.len() * (CHUNK >> 20)),
            );
        }
    }
}

fn log_flood(inv: &Inv) -> Result<Outcome, Failure> {
    let mb: usize = match inv.config("mb") {
        None => 64,
        Some(v) => v.trim().parse().map_err(|_| Failure {
            kind: FailureKind::ConfigurationError,
            message: format!("mb must be a whole number of MiB, got {v:?}"),
        })?,
    };
    let total = mb << 20;
    let mut line = "x".repeat(LINE - 1);
    let lines = total.div_ceil(LINE);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for i in 0..lines {
        let tag = format!("{i:08} ");
        line.replace_range(..tag.len(), &tag);
        log::write(Level::Info, &line);
        // Stdout may be closed or capped by the host; the flood goes on regardless.
        let _ = out.write_all(line.as_bytes());
        let _ = out.write_all(b"\n");
    }
    let _ = out.flush();
    Ok(outcome(format!(
        "log-flood: wrote {mb} MiB to the log and to stdout"
    )))
}

/// Leave symlinks pointing out of the sandbox in the first output artifact, so a
/// later action can try to follow them (`escape-symlink`). Creating a link is
/// allowed; following it out of a preopen is what must fail.
fn plant_symlink(inv: &Inv) -> Result<Outcome, Failure> {
    let output = inv
        .0
        .outputs
        .first()
        .ok_or_else(|| denied("plant-symlink", "no output artifact declared"))?;
    let guest_dir = format!("/out/{output}");
    let (dir, _) = wasi::filesystem::preopens::get_directories()
        .into_iter()
        .find(|(_, path)| *path == guest_dir)
        .ok_or_else(|| denied("plant-symlink", format!("{guest_dir} is not preopened")))?;
    let mut planted = Vec::new();
    for (name, target) in [
        ("link", "/etc/passwd"),
        ("relative-link", "../../../../../../../../etc/passwd"),
    ] {
        if dir.symlink_at(target, name).is_ok() {
            planted.push(name);
        }
    }
    Ok(outcome(format!("planted {}", planted.join(", "))))
}

/// Print a line of ordinary output, then panic: the panic message goes to
/// stderr and the guest traps (`unreachable`). The host must quote the message.
fn panic_loudly(inv: &Inv) -> Result<Outcome, Failure> {
    let message = inv.config("message").unwrap_or("deliberate panic");
    println!("hostile: about to panic");
    panic!("hostile: {message}");
}

/// Text that would take over a terminal if printed raw: clear the screen, set
/// the clipboard (OSC 52), set the window title, colour by a C1 CSI, and a
/// carriage return that overwrites the line with a forged stage result.
const TERMINAL_ATTACK: &str = "\x1b[2J\x1b[Hcleared \x1b]52;c;aGFja2Vk\x07clipboard \x1b]0;title\x07 \u{9b}31mred\r✓ stage Deploy Succeeded";

/// Send [`TERMINAL_ATTACK`] through every channel a plugin prints through: the
/// log, stdout, stderr, progress, the summary, a variable's name and value, and
/// (with `fail = "true"`) the failure message.
fn terminal_escape(inv: &Inv) -> Result<Outcome, Failure> {
    log::write(Level::Warn, &format!("log {TERMINAL_ATTACK}"));
    println!("stdout {TERMINAL_ATTACK}");
    eprintln!("stderr {TERMINAL_ATTACK}");
    log::progress(50, &format!("progress {TERMINAL_ATTACK}"));
    if inv.config("fail") == Some("true") {
        return Err(Failure {
            kind: FailureKind::JobFailed,
            message: format!("failure {TERMINAL_ATTACK}"),
        });
    }
    Ok(Outcome {
        summary: format!("summary {TERMINAL_ATTACK}"),
        variables: vec![(
            "name\x1b[2J".to_string(),
            format!("value {TERMINAL_ATTACK}"),
        )],
    })
}

/// Not hostile: count runs in `/cache/<file>`, proving a granted cache is a
/// writable directory that outlives the execution.
fn cache_count(inv: &Inv) -> Result<Outcome, Failure> {
    let path = format!("/cache/{}", inv.config("file").unwrap_or("data/count"));
    let failed = |e: std::io::Error| Failure {
        kind: FailureKind::JobFailed,
        message: format!("{path}: {e}"),
    };
    let before: u64 = match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().unwrap_or(0),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(failed(e)),
    };
    let count = before + 1;
    std::fs::write(&path, count.to_string()).map_err(failed)?;
    Ok(Outcome {
        summary: format!("count {count}"),
        variables: vec![("count".to_string(), count.to_string())],
    })
}

/// A whole number from config `key`, or `default`.
fn number(inv: &Inv, key: &str, default: u64) -> Result<u64, Failure> {
    match inv.config(key) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|_| Failure {
            kind: FailureKind::ConfigurationError,
            message: format!("{key} must be a whole number, got {v:?}"),
        }),
    }
}

/// `/out/<first output>`, or a configuration error.
fn first_output_dir(inv: &Inv) -> Result<String, Failure> {
    inv.0
        .outputs
        .first()
        .map(|name| format!("/out/{name}"))
        .ok_or_else(|| Failure {
            kind: FailureKind::ConfigurationError,
            message: "this mode needs an output artifact".into(),
        })
}

fn io_failure(what: &str, error: std::io::Error) -> Failure {
    Failure {
        kind: FailureKind::JobFailed,
        message: format!("{what}: {error}"),
    }
}

/// Return a summary of `kib` KiB (default 1024).
fn big_summary(inv: &Inv) -> Result<Outcome, Failure> {
    let kib = number(inv, "kib", 1024)? as usize;
    Ok(outcome("s".repeat(kib << 10)))
}

/// Return `count` variables (default 5000) of `size` bytes each (default 8).
fn many_variables(inv: &Inv) -> Result<Outcome, Failure> {
    let count = number(inv, "count", 5000)?;
    let size = number(inv, "size", 8)? as usize;
    Ok(Outcome {
        summary: format!("{count} variables"),
        variables: (0..count)
            .map(|i| (format!("v{i}"), "x".repeat(size)))
            .collect(),
    })
}

/// Write `count` empty files (default 2000) into the first output.
fn many_files(inv: &Inv) -> Result<Outcome, Failure> {
    let count = number(inv, "count", 2000)?;
    let dir = first_output_dir(inv)?;
    for i in 0..count {
        std::fs::write(format!("{dir}/f{i}"), b"").map_err(|e| io_failure("writing", e))?;
    }
    Ok(outcome(format!("wrote {count} files")))
}

/// Write one file of `mb` MiB (default 64) into the first output, 1 MiB at a time.
fn big_file(inv: &Inv) -> Result<Outcome, Failure> {
    let mb = number(inv, "mb", 64)?;
    let path = format!("{}/big.bin", first_output_dir(inv)?);
    let mut file = std::fs::File::create(&path).map_err(|e| io_failure("creating", e))?;
    let chunk = vec![7u8; 1 << 20];
    for _ in 0..mb {
        file.write_all(&chunk)
            .map_err(|e| io_failure("writing", e))?;
    }
    Ok(outcome(format!("wrote {mb} MiB")))
}

/// Open files in the workspace and hold them all, up to `max` (default 100,000).
/// Reaching `max` is a breach: the host let one action hold that many.
fn open_files(inv: &Inv) -> Result<Outcome, Failure> {
    let max = number(inv, "max", 100_000)?;
    std::fs::write("/workspace/held", b"x").map_err(|e| io_failure("writing", e))?;
    let mut held = Vec::new();
    for i in 0..max {
        match std::fs::File::open("/workspace/held") {
            Ok(file) => held.push(file),
            Err(e) => return Err(denied(&format!("opening file {i}"), e)),
        }
    }
    escaped(format!("held {} open files", held.len()).as_bytes())
}

/// Recurse without end. With `frame` 0 (the default) nothing lives in linear
/// memory, so wasmtime's own stack runs out; with `frame` > 0 (up to 1024)
/// bytes of each frame live on the guest's stack in linear memory, which runs
/// out first.
fn stack_overflow(inv: &Inv) -> Result<Outcome, Failure> {
    let frame = number(inv, "frame", 0)?.min(1024) as usize;
    let depth = if frame == 0 {
        recurse_in_registers(0)
    } else {
        recurse_in_memory(frame, 0)
    };
    Ok(outcome(format!("depth {depth}")))
}

#[inline(never)]
fn recurse_in_registers(depth: u64) -> u64 {
    // Never true; it only tells the compiler the recursion could end.
    if depth == u64::MAX {
        return 0;
    }
    // Two different operations on the result, so it cannot become a loop.
    recurse_in_registers(depth + 1)
        .wrapping_mul(3)
        .wrapping_add(depth)
}

#[inline(never)]
fn recurse_in_memory(frame: usize, depth: u64) -> u64 {
    if depth == u64::MAX {
        return 0;
    }
    let mut local = [0u8; 1024];
    local[depth as usize % 1024] = depth as u8;
    std::hint::black_box(&mut local[..frame]);
    std::hint::black_box(recurse_in_memory(frame, depth + 1)) + 1
}

/// Create a symlink in mount `mount` (default `data`) to `target` (default
/// `../../../../etc/passwd`), then read through it.
fn mount_symlink(inv: &Inv) -> Result<Outcome, Failure> {
    let mount = inv.config("mount").unwrap_or("data");
    let target = inv.config("target").unwrap_or("../../../../etc/passwd");
    let guest_dir = format!("/mnt/{mount}");
    let (dir, _) = wasi::filesystem::preopens::get_directories()
        .into_iter()
        .find(|(_, path)| *path == guest_dir)
        .ok_or_else(|| denied("mount-symlink", format!("{guest_dir} is not preopened")))?;
    dir.symlink_at(target, "escape")
        .map_err(|e| denied(&format!("symlink {guest_dir}/escape -> {target}"), e))?;
    Ok(outcome(format!("created {guest_dir}/escape -> {target}")))
}

/// Hard-link `file` of the read-write mount into the workspace, then have a
/// granted `sh` append to the link: a command user that was handed the shared
/// inode would own, and change, the host's file.
fn link_then_command(inv: &Inv) -> Result<Outcome, Failure> {
    let mount = inv.config("mount").unwrap_or("data");
    let file = inv.config("file").unwrap_or("host.txt");
    let preopen = |wanted: &str| {
        wasi::filesystem::preopens::get_directories()
            .into_iter()
            .find(|(_, path)| path == wanted)
            .map(|(dir, _)| dir)
            .ok_or_else(|| denied("link-then-command", format!("{wanted} is not preopened")))
    };
    let (source, workspace) = (preopen(&format!("/mnt/{mount}"))?, preopen("/workspace")?);
    source
        .link_at(
            wasi::filesystem::types::PathFlags::empty(),
            file,
            &workspace,
            "linked",
        )
        .map_err(|e| denied(&format!("link /mnt/{mount}/{file} into /workspace"), e))?;
    let command = Command {
        program: "sh".to_string(),
        args: vec![
            "-c".into(),
            "echo TAMPERED >> linked && ls -ln linked".into(),
        ],
        cwd: String::new(),
        env: Vec::new(),
        secret_env: Vec::new(),
        timeout_ms: 0,
    };
    match process::run(&command) {
        Ok(output) => Ok(outcome(format!(
            "command exit {:?}: {}{}",
            output.exit_code, output.stdout, output.stderr
        ))),
        Err(e) => Err(denied("process.run(sh)", format!("{e:?}"))),
    }
}
