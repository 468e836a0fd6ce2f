//! Live output: `sluice run` shows what actions print while they run,
//! `sluice logs -f` follows a running execution (locally and through the
//! server), and `sluice watch` follows one through the server's event stream.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Workspace, action, text};
use crate::server::{Server, token, wait_for_end};

/// One action that prints a line, waits, then prints another.
const SPEAKER: &str = r#"
[pipeline]
name = "live"
[[stages]]
name = "Talk"
[[stages.actions]]
name = "speak"
plugin = "command@0.1"
config = { run = "sh -c 'echo first-line; sleep 3; echo second'" }
grants = { commands = ["sh"] }
"#;

/// How `sluice run` shows the two lines.
const FIRST: &str = "│   [speak] first-line";
const SECOND: &str = "│   [speak] second";

/// Generous bound on any wait, so a broken build fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(120);

/// A `sluice` process whose stdout is read line by line as it is printed.
struct Live {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Live {
    fn spawn(workspace: &Workspace, args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .current_dir(workspace.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_remove("SLUICE_DATA_DIR")
            .env_remove("SLUICE_PLUGINS")
            .env_remove("SLUICE_LOG")
            .envs(workspace.envs())
            .arg("--data-dir")
            .arg(workspace.path(".sluice"))
            .arg("--plugins")
            .arg(workspace.registry())
            .args(args)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        Live {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Read lines until one satisfies `wanted`; panics on end of output or timeout.
    fn until(&mut self, what: &str, wanted: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = wanted(&line);
                    self.seen.push(line);
                    if found {
                        return;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no {what} yet:\n{}", self.seen.join("\n"))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("output ended before {what}:\n{}", self.seen.join("\n"))
                }
            }
        }
    }

    /// Read the rest of the output and wait for the process to exit by itself.
    fn finish(mut self) -> (std::process::ExitStatus, Vec<String>, String) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!("did not end by itself:\n{}", self.seen.join("\n"));
                }
            }
        }
        let status = self.child.wait().unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(self.child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        (status, std::mem::take(&mut self.seen), stderr)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn position(lines: &[String], wanted: impl Fn(&str) -> bool) -> Option<usize> {
    lines.iter().position(|l| wanted(l))
}

/// The status of action `speak` in the latest local execution.
fn speak_status(workspace: &Workspace) -> String {
    let execution = workspace.latest_execution();
    action(&execution, "speak")["status"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn run_shows_output_while_the_action_runs_and_logs_follow_it() {
    let workspace = Workspace::new();
    workspace.write("live.toml", SPEAKER);
    let mut run = Live::spawn(&workspace, &["run", "live.toml"]);
    run.until("first line", |l| l == FIRST);
    assert!(
        !run.seen
            .iter()
            .any(|l| l == SECOND || l.starts_with("Execution ")),
        "{:#?}",
        run.seen
    );
    // The line was shown while the action was still running, not replayed at its end.
    assert_eq!(speak_status(&workspace), "InProgress");

    // `logs -f` prints what is stored so far, then follows until the end.
    let mut follow = Live::spawn(&workspace, &["logs", "-f", "latest", "speak"]);
    follow.until("first line", |l| l.ends_with("process first-line"));
    assert_eq!(
        speak_status(&workspace),
        "InProgress",
        "logs -f showed the line while the action ran"
    );
    let (status, followed, stderr) = follow.finish();
    assert!(status.success(), "{followed:#?}\n{stderr}");
    let first = position(&followed, |l| l.ends_with("process first-line")).unwrap();
    let second = position(&followed, |l| l.ends_with("process second"));
    assert!(
        second.is_some_and(|s| s > first),
        "logs -f must print `second` after `first-line`: {followed:#?}"
    );
    assert!(stderr.contains(": Succeeded"), "{stderr}");

    let (status, printed, stderr) = run.finish();
    assert!(status.success(), "{printed:#?}\n{stderr}");
    let second = position(&printed, |l| l == SECOND).expect("second line shown");
    let summary = position(&printed, |l| l.starts_with("Execution ")).unwrap();
    assert!(second < summary, "{printed:#?}");
}

#[test]
fn quiet_hides_action_output_but_not_stages_and_actions() {
    let workspace = Workspace::new();
    workspace.write(
        "say.toml",
        r#"
[pipeline]
name = "say"
[[stages]]
name = "Talk"
[[stages.actions]]
name = "say"
plugin = "command@0.1"
config = { run = "echo hello-from-say" }
grants = { commands = ["echo"] }
"#,
    );
    let loud = workspace.sluice(&["run", "say.toml"]);
    assert!(loud.status.success(), "{}", text(&loud));
    let loud = String::from_utf8_lossy(&loud.stdout).into_owned();
    assert!(loud.contains("│   [say] hello-from-say"), "{loud}");

    let quiet = workspace.sluice(&["run", "--quiet", "say.toml"]);
    assert!(quiet.status.success(), "{}", text(&quiet));
    let quiet = String::from_utf8_lossy(&quiet.stdout).into_owned();
    assert!(!quiet.contains("[say]"), "{quiet}");
    for kept in ["┌ stage Talk", "│ ▶ say", "│ ✓ say Succeeded"] {
        assert!(quiet.contains(kept), "`{kept}` missing:\n{quiet}");
    }
}

#[test]
fn logs_follow_and_watch_work_through_the_server() {
    let workspace = Workspace::new();
    let admin = token(&workspace, &["--role", "admin"]);
    let server = Server::start(&workspace);
    let (status, body) = server.call("PUT", "/api/v1/pipelines/live", Some(&admin), Some(SPEAKER));
    assert_eq!(status, 201, "{body}");
    let (status, started) = server.call(
        "POST",
        "/api/v1/pipelines/live/executions",
        Some(&admin),
        None,
    );
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_str().unwrap().to_string();
    let url = format!("http://{}", server.addr);
    let remote = |args: &[&str]| {
        let mut full = vec!["--server", url.as_str(), "--token", admin.as_str()];
        full.extend_from_slice(args);
        Live::spawn(&workspace, &full)
    };
    let mut watch = remote(&["watch", &id]);
    let mut follow = remote(&["logs", "-f", &id]);
    follow.until("first line", |l| l.ends_with("process first-line"));
    let (_, execution) = server.call(
        "GET",
        &format!("/api/v1/executions/{id}"),
        Some(&admin),
        None,
    );
    assert_eq!(
        action(&execution, "speak")["status"],
        "InProgress",
        "logs -f showed the line while the action ran"
    );
    watch.until("the running action", |l| l.contains("speak"));

    let (status, followed, stderr) = follow.finish();
    assert!(status.success(), "{followed:#?}\n{stderr}");
    assert!(
        position(&followed, |l| l.ends_with("process second")).is_some(),
        "{followed:#?}"
    );
    let (status, watched, stderr) = watch.finish();
    assert!(status.success(), "{watched:#?}\n{stderr}");
    // Each state change arrives as an event, in order, and the end is reported.
    let succeeded = |kind: &'static str, name: &'static str| {
        move |l: &str| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words.starts_with(&[kind, name, "SUCCEEDED"])
        }
    };
    let action_done = position(&watched, succeeded("action", "speak"));
    let stage_done = position(&watched, succeeded("stage", "Talk"));
    let pipeline_done = position(&watched, succeeded("pipeline", "live"));
    assert!(
        action_done < stage_done && stage_done < pipeline_done && action_done.is_some(),
        "{watched:#?}"
    );
    assert_eq!(
        watched.last().map(String::as_str),
        Some(format!("execution {id}: Succeeded").as_str())
    );
    let done: Value = wait_for_end(&server, &admin, &id);
    assert_eq!(done["execution"]["status"], "Succeeded");
}
