//! Native commands under supervision: faithful artifacts between actions,
//! Ctrl-C on `sluice run`, `kill -9` of `sluice serve`, and what a sandboxed
//! command can see.

use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::execution::processes_with;

/// Host `sleep` processes whose arguments contain `marker` (the shell that
/// started them has it in its command line too, so it is left out).
fn sleeps(marker: &str) -> usize {
    processes_with(marker)
        .iter()
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            cmdline.starts_with(b"sleep\0")
        })
        .count()
}
use crate::harness::{Workspace, action, eventually, text};
use crate::server::{Server, token, wait_for_end};

const BUILD_TEST_DEPLOY: &str = r#"
[pipeline]
name = "faithful"
[[stages]]
name = "Build"
[[stages.actions]]
name = "build"
plugin = "command@0.1"
outputs = ["app"]
config = { script = """
mkdir -p bin lib
printf '#!/bin/sh\necho hello from tool\n' > bin/tool
chmod 755 bin/tool
ln -s ../bin/tool lib/tool-link
""", outputs = "app=bin/**,app=lib/**" }
grants = { commands = ["sh"] }

[[stages]]
name = "Test"
[[stages.actions]]
name = "test"
plugin = "command@0.1"
inputs = ["app"]
config = { script = "./bin/tool && ./lib/tool-link" }
grants = { commands = ["sh"] }

[[stages]]
name = "Deploy"
[[stages.actions]]
name = "deploy"
plugin = "deploy-dir@0.1"
inputs = ["app"]
config = { target = "site" }
grants = { mounts = { site = { host = "deploy", mode = "rw" } } }
"#;

#[test]
fn executables_and_inside_symlinks_survive_from_build_to_deploy() {
    let workspace = Workspace::new();
    std::fs::create_dir_all(workspace.path("deploy")).unwrap();
    let output = workspace.run_pipeline(BUILD_TEST_DEPLOY);
    assert!(output.status.success(), "{}", text(&output));
    let logs = workspace.latest_logs();
    assert_eq!(logs.matches("process hello from tool").count(), 2, "{logs}");
    let current = workspace.path("deploy/current");
    let mode = std::fs::metadata(current.join("bin/tool"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o111,
        0o111,
        "deployed tool lost its executable bit: {mode:o}"
    );
    let link = std::fs::read_link(current.join("lib/tool-link")).unwrap();
    assert_eq!(link, std::path::Path::new("../bin/tool"));
    // Running the deployed file works too.
    let ran = Command::new(current.join("lib/tool-link"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&ran.stdout), "hello from tool\n");
}

#[test]
fn an_output_with_an_escaping_symlink_is_refused_with_its_path() {
    let workspace = Workspace::new();
    let output = workspace.run_pipeline(
        r#"
[pipeline]
name = "escaping"
[[stages]]
name = "Build"
[[stages.actions]]
name = "build"
plugin = "command@0.1"
outputs = ["app"]
config = { script = "mkdir -p dist && echo ok > dist/index.html && ln -s ../../../etc/passwd dist/passwd", outputs = "app=dist/**" }
grants = { commands = ["sh"] }
"#,
    );
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let error = action(&workspace.latest_execution(), "build")["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        error.contains("dist/passwd") && error.contains("points outside"),
        "{error}"
    );
    assert!(!text(&output).contains("root:x:0:0"));
}

const LONG_COMMAND: &str = r#"
[pipeline]
name = "long"
[[stages]]
name = "Work"
[[stages.actions]]
name = "work"
plugin = "command@0.1"
config = { script = "sleep MARKER & sleep MARKER; echo finished" }
grants = { commands = ["sh"] }
"#;

#[test]
fn ctrl_c_stops_the_run_records_stopped_and_leaves_no_process() {
    let workspace = Workspace::new();
    workspace.write("pipeline.toml", &LONG_COMMAND.replace("MARKER", "300.5521"));
    let mut child = workspace
        .command(&["run", "pipeline.toml"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        eventually(60, || sleeps("300.5521") == 2),
        "the command never started"
    );
    // SAFETY: signalling the child we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("SIGINT: stopping execution"), "{stderr}");
    assert!(
        eventually(5, || processes_with("300.5521").is_empty()),
        "left behind: {:?}",
        processes_with("300.5521")
    );
    let execution = workspace.latest_execution();
    assert_eq!(execution["execution"]["status"], "Stopped", "{execution:#}");
    assert_eq!(action(&execution, "work")["status"], "Abandoned");
    let id = execution["execution"]["id"].as_str().unwrap();
    let left: Vec<_> = std::fs::read_dir(workspace.path(".sluice/work"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(id))
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A server running LONG_COMMAND (with `marker` as its sleeps' argument),
/// once the command is running: (workspace, admin token, server, execution id).
fn long_command_on_a_server(marker: &str) -> (Workspace, String, Server, String) {
    let workspace = Workspace::new();
    let admin = token(&workspace, &["--role", "admin"]);
    let server = Server::start(&workspace);
    let pipeline = LONG_COMMAND.replace("MARKER", marker);
    let put = server.call(
        "PUT",
        "/api/v1/pipelines/long",
        Some(&admin),
        Some(&pipeline),
    );
    assert_eq!(put.0, 201, "{:?}", put.1);
    let (_, started) = server.call(
        "POST",
        "/api/v1/pipelines/long/executions",
        Some(&admin),
        None,
    );
    let id = started["id"].as_str().unwrap().to_string();
    assert!(
        eventually(60, || sleeps(marker) > 0),
        "the command never started"
    );
    (workspace, admin, server, id)
}

#[test]
fn a_killed_server_never_runs_two_copies_of_an_action() {
    let (workspace, admin, mut server, id) = long_command_on_a_server("3.5531");
    server.kill9();
    // The command dies with its host: nothing is left for a restart to race.
    assert!(
        eventually(5, || processes_with("3.5531").is_empty()),
        "survived kill -9 of the server: {:?}",
        processes_with("3.5531")
    );
    let server = Server::start(&workspace);
    let mut most = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // Each copy of the action runs two sleeps; two copies would show four.
        most = most.max(sleeps("3.5531"));
        let (_, body) = server.call(
            "GET",
            &format!("/api/v1/executions/{id}"),
            Some(&admin),
            None,
        );
        if body["execution"]["status"] != "InProgress" || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        most <= 2,
        "{most} sleeps alive at once: two copies overlapped"
    );
    let done = wait_for_end(&server, &admin, &id);
    assert_eq!(done["execution"]["status"], "Succeeded", "{done:#}");
}

#[test]
fn a_granted_shell_sees_no_host_process_no_host_environment_and_no_host_port() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let mut workspace = Workspace::new();
    workspace.env("SLUICE_SECRET_NEVER_GRANTED", "sealed-value-5531");
    let output = workspace.run_pipeline(&format!(
        r#"
[pipeline]
name = "peek"
[[stages]]
name = "Peek"
[[stages.actions]]
name = "peek"
plugin = "command@0.1"
config = {{ script = """
echo processes=$(ls /proc | grep -c '^[0-9]')
cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' | grep SLUICE || echo no-sluice-env
(echo hi > /dev/tcp/127.0.0.1/{port}) 2>/dev/null && echo CONNECTED || echo REFUSED
""", shell = "bash" }}
grants = {{ commands = ["bash"] }}
"#
    ));
    assert!(output.status.success(), "{}", text(&output));
    let logs = workspace.latest_logs();
    assert!(!logs.contains("sealed-value-5531"), "{logs}");
    let processes: usize = logs
        .lines()
        .find_map(|l| l.split("processes=").nth(1)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no process count in {logs}"));
    assert!(
        processes <= 6,
        "the command saw {processes} processes:\n{logs}"
    );
    assert!(
        logs.contains("process REFUSED") && !logs.contains("process CONNECTED"),
        "{logs}"
    );
    assert!(
        listener.accept().is_err(),
        "the command reached a host port"
    );
}

#[test]
fn a_granted_shell_cannot_read_secrets_state_or_a_parallel_actions_workspace() {
    let workspace = Workspace::new();
    let data = workspace.path(".sluice");
    let outside = workspace.path("outside.txt");
    let output = workspace.run_pipeline(&format!(
        r#"
[pipeline]
name = "confined"
[[stages]]
name = "Both"
[[stages.actions]]
name = "victim"
plugin = "command@0.1"
config = {{ script = "echo victim-data-8841 > secret.txt; sleep 3" }}
grants = {{ commands = ["sh"] }}
[[stages.actions]]
name = "peek"
plugin = "command@0.1"
config = {{ script = """
sleep 1
try() {{ if "$@" > /dev/null 2>&1; then echo "ALLOWED: $*"; else echo "denied: $*"; fi; }}
try cat /etc/shadow
try cat {data}/state.db
try ls {data}/work
try find {data}/work -name secret.txt
try ls /root
try sh -c 'echo escaped > {outside}'
try sh -c 'echo fine > own-file.txt'
grep CapEff /proc/self/status
grep 'Max processes' /proc/self/limits
cat {data}/work/*/secret.txt 2>/dev/null || true
""" }}
grants = {{ commands = ["sh"] }}
"#,
        data = data.display(),
        outside = outside.display(),
    ));
    assert!(output.status.success(), "{}", text(&output));
    let logs = workspace.latest_logs();
    let allowed: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("process ALLOWED"))
        .collect();
    assert_eq!(
        allowed.len(),
        1,
        "only its own workspace is writable:\n{logs}"
    );
    assert!(allowed[0].contains("own-file.txt"), "{logs}");
    assert_eq!(logs.matches("process denied:").count(), 6, "{logs}");
    assert!(!logs.contains("process victim-data-8841"), "{logs}");
    assert!(!outside.exists());
    // Root without root's powers: no capability, and a process limit that holds.
    assert!(logs.contains("process CapEff:\t0000000000000000"), "{logs}");
    let limit = logs
        .lines()
        .find(|l| l.contains("process Max processes"))
        .unwrap_or("");
    assert_eq!(limit.matches("4096").count(), 2, "{logs}");
}

#[test]
fn sigterm_drains_running_executions_before_the_server_exits() {
    let (workspace, admin, mut server, id) = long_command_on_a_server("2.5541");
    assert_eq!(server.signal_and_wait(libc::SIGTERM), Some(0));
    let server = Server::start(&workspace);
    let (_, body) = server.call(
        "GET",
        &format!("/api/v1/executions/{id}"),
        Some(&admin),
        None,
    );
    assert_eq!(
        body["execution"]["status"], "Succeeded",
        "drained, not resumed: {body:#}"
    );
    assert_eq!(action(&body, "work")["attempts"], 1, "{body:#}");
}

#[test]
fn collect_on_failure_keeps_the_failing_tests_reports_with_the_failed_action() {
    let workspace = Workspace::new();
    let output = workspace.run_pipeline(
        r#"
[pipeline]
name = "reports"
[[stages]]
name = "Test"
[[stages.actions]]
name = "test"
plugin = "command@0.1"
outputs = ["reports"]
config = { script = """
mkdir -p reports
echo '<testsuite tests="1" failures="1"><testcase name="adds"><failure/></testcase></testsuite>' > reports/junit.xml
exit 3
""", outputs = "reports=reports/*.xml", collect-on-failure = true }
grants = { commands = ["sh"] }
"#,
    );
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let test = action(&workspace.latest_execution(), "test").clone();
    assert_eq!(test["status"], "Failed");
    assert!(
        test["error"].as_str().unwrap().contains("exited with 3"),
        "{test:#}"
    );
    let outputs = test["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 1, "{test:#}");
    assert_eq!(outputs[0]["name"], "reports");
    assert_eq!(outputs[0]["files"], 1);
}

#[test]
fn an_action_granted_only_true_cannot_run_another_program_by_a_path_trick() {
    let workspace = Workspace::new();
    // Stage one (granted sh) leaves a copy of the shell named `true`, and a
    // link to it, in an artifact; stage two is granted only `true`.
    let pipeline = |run: &str| {
        format!(
            r#"
[pipeline]
name = "tricks"
[[stages]]
name = "Plant"
[[stages.actions]]
name = "plant"
plugin = "command@0.1"
outputs = ["tools"]
config = {{ script = "mkdir -p bin && cp /bin/sh bin/true && ln -s true bin/link", outputs = "tools=bin/**" }}
grants = {{ commands = ["sh"] }}
[[stages]]
name = "Trick"
[[stages.actions]]
name = "trick"
plugin = "command@0.1"
inputs = ["tools"]
config = {{ run = "{run}" }}
grants = {{ commands = ["true"] }}
"#
        )
    };
    for trick in [
        "./bin/true -c 'echo pwned'",
        "bin/link -c 'echo pwned'",
        "/bin/sh -c 'echo pwned'",
        "/proc/self/root/bin/sh -c 'echo pwned'",
    ] {
        let output = workspace.run_pipeline(&pipeline(trick));
        assert_eq!(output.status.code(), Some(1), "{trick}: {}", text(&output));
        let error = action(&workspace.latest_execution(), "trick")["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(error.contains("allow-list"), "{trick}: {error}");
        assert!(
            !workspace.latest_logs().contains("process pwned"),
            "{trick}"
        );
    }
    // The granted program itself still runs.
    let output = workspace.run_pipeline(&pipeline("true"));
    assert!(output.status.success(), "{}", text(&output));
}

#[test]
fn a_command_over_its_memory_limit_is_killed_and_the_limit_named() {
    let workspace = Workspace::new();
    let pipeline = |limit: &str| {
        format!(
            r#"
[pipeline]
name = "hungry"
[[stages]]
name = "Eat"
[[stages.actions]]
name = "eat"
plugin = "command@0.1"
config = {{ run = "dd if=/dev/zero of=/dev/null bs=256M count=1" }}
grants = {{ commands = ["dd"] }}
limits = {{ command-memory = "{limit}" }}
"#
        )
    };
    let output = workspace.run_pipeline(&pipeline("64MiB"));
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let error = action(&workspace.latest_execution(), "eat")["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("command-memory") || error.contains("memory exhausted"),
        "the memory limit must be named: {error}"
    );
    // The same command fits under a larger limit.
    let output = workspace.run_pipeline(&pipeline("1GiB"));
    assert!(output.status.success(), "{}", text(&output));
}

/// Whether the tests run as root (as CI does): only then do commands drop to
/// a command user.
fn running_as_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn a_root_host_runs_each_actions_commands_as_a_user_of_its_own() {
    if !running_as_root() {
        eprintln!("skipped: commands keep the host's uid when it is not root");
        return;
    }
    let workspace = Workspace::new();
    // A toolchain inside a directory closed to others, like one under /root.
    let closed = workspace.path("closed");
    std::fs::create_dir_all(closed.join("tool/bin")).unwrap();
    std::fs::write(closed.join("secret.txt"), "closed-secret-2291").unwrap();
    let tool = closed.join("tool/bin/hello-tool");
    std::fs::write(&tool, "#!/bin/sh\necho hello from the closed toolchain\n").unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
    let who = r#"echo "ACTION uid=$(id -u) name=$(id -un) groups=$(id -G)""#;
    let output = workspace.run_pipeline(&format!(
        r#"
[pipeline]
name = "users"
[[stages]]
name = "Build"
[[stages.actions]]
name = "a"
plugin = "command@0.1"
outputs = ["private"]
config = {{ script = """
{who_a}
umask 077
echo only-mine > private.txt
sleep 1
""", outputs = "private=private.txt" }}
grants = {{ commands = ["sh"] }}
[[stages.actions]]
name = "b"
plugin = "command@0.1"
config = {{ script = """
{who_b}
{tool}
cat {closed}/secret.txt || echo secret-denied
sleep 1
""" }}
grants = {{ commands = ["sh"], toolchains = ["{toolchain}"] }}

[[stages]]
name = "Use"
[[stages.actions]]
name = "reader"
plugin = "command@0.1"
inputs = ["private"]
config = {{ script = "{who_c}; cat private.txt" }}
grants = {{ commands = ["sh"] }}
[[stages.actions]]
name = "root"
plugin = "command@0.1"
config = {{ script = "{who_d}" }}
grants = {{ commands = ["sh"], run-as-root = true }}
"#,
        who_a = who.replace("ACTION", "A"),
        who_b = who.replace("ACTION", "B"),
        who_c = who.replace("ACTION", "C").replace('"', "\\\""),
        who_d = who.replace("ACTION", "D").replace('"', "\\\""),
        tool = tool.display(),
        closed = closed.display(),
        toolchain = closed.join("tool").display(),
    ));
    assert!(output.status.success(), "{}", text(&output));
    let logs = workspace.latest_logs();
    let uid_of = |who: &str| -> u32 {
        logs.lines()
            .find_map(|l| l.split(&format!("process {who} uid=")).nth(1))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no uid for {who} in {logs}"))
    };
    let (a, b, c) = (uid_of("A"), uid_of("B"), uid_of("C"));
    assert!(
        a >= 1_900_000_001 && b >= 1_900_000_001 && c >= 1_900_000_001,
        "{logs}"
    );
    assert_ne!(a, b, "two parallel actions shared a uid:\n{logs}");
    assert_eq!(uid_of("D"), 0, "run-as-root kept root:\n{logs}");
    // The user database names the command user, in the shared sandbox group.
    assert!(
        logs.contains(&format!("A uid={a} name=sluice groups={a} 1900000000")),
        "{logs}"
    );
    // The granted toolchain runs; the rest of its closed parent stays closed.
    assert!(logs.contains("hello from the closed toolchain"), "{logs}");
    assert!(
        logs.contains("secret-denied") && !logs.contains("closed-secret-2291"),
        "{logs}"
    );
    // What one command user wrote privately, another action reads from the store.
    assert!(logs.contains("process only-mine"), "{logs}");
}

#[test]
fn a_hard_link_into_the_workspace_never_hands_the_hosts_file_to_a_command() {
    use std::os::unix::fs::MetadataExt as _;
    if !running_as_root() {
        eprintln!("skipped: commands keep the host's uid when it is not root");
        return;
    }
    let workspace = Workspace::new();
    let host_file = workspace.write("data/host.txt", "original\n");
    let pipeline = crate::harness::hostile_pipeline(
        r#"mode = "link-then-command""#,
        r#"grants = { commands = ["sh"], mounts = { data = { host = "data", mode = "rw" } } }"#,
    );
    let output = workspace.run_pipeline(&pipeline);
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(std::fs::read_to_string(&host_file).unwrap(), "original\n");
    let metadata = std::fs::metadata(&host_file).unwrap();
    assert_eq!(
        (metadata.uid(), metadata.gid()),
        (0, 0),
        "the host's file changed owner"
    );
}

#[test]
fn a_relative_data_directory_and_pipeline_path_work_for_native_commands() {
    let workspace = Workspace::new();
    workspace.write(
        "ci/pipeline.toml",
        r#"
[pipeline]
name = "relative"
[[stages]]
name = "Build"
[[stages.actions]]
name = "build"
plugin = "command@0.1"
config = { script = "echo in-workspace > built.txt && cat built.txt" }
grants = { commands = ["sh"] }
"#,
    );
    // `.sluice` and `ci/pipeline.toml` as a user types them, from the directory.
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .current_dir(workspace.path(""))
        .env_remove("SLUICE_DATA_DIR")
        .env_remove("SLUICE_PLUGINS")
        .args(["--data-dir", ".sluice", "--plugins"])
        .arg(workspace.registry())
        .args(["run", "ci/pipeline.toml"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    assert!(workspace.latest_logs().contains("process in-workspace"));
}
