//! Secrets stay sealed in every channel: masked for every action (granted or
//! not) in everything stored or printed, encrypted in continuation tokens, and
//! put into HTTP headers by the host without the guest ever holding them.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Workspace, action, text};

/// Has a slash, a colon and upper-case letters, so its encodings differ from it.
const LEAKY: &str = "Leak/Me:9f3Q-sealed";

/// Every form of `value` that must not appear anywhere: literal, percent- and
/// hex-encoded in both letter cases.
fn forms(value: &str) -> Vec<String> {
    let percent = |upper: bool| -> String {
        value
            .bytes()
            .map(|b| match (b.is_ascii_alphanumeric(), upper) {
                (true, _) => (b as char).to_string(),
                (false, true) => format!("%{b:02X}"),
                (false, false) => format!("%{b:02x}"),
            })
            .collect()
    };
    let hex: String = value.bytes().map(|b| format!("{b:02x}")).collect();
    vec![
        value.to_string(),
        percent(true),
        percent(false),
        hex.to_uppercase(),
        hex,
    ]
}

fn assert_sealed(what: &str, haystack: &str, value: &str) {
    for form in forms(value) {
        assert!(
            !haystack.contains(&form),
            "{what} holds the secret as {form:?}:\n{haystack}"
        );
    }
}

/// The raw bytes of the state database and its write-ahead log, lossily as text.
fn state_bytes(workspace: &Workspace) -> String {
    let mut all = Vec::new();
    for name in ["state.db", "state.db-wal"] {
        if let Ok(bytes) = std::fs::read(workspace.path(".sluice").join(name)) {
            all.extend(bytes);
        }
    }
    String::from_utf8_lossy(&all).into_owned()
}

/// Every stored event, as `kind name state detail` lines.
fn stored_events(workspace: &Workspace) -> String {
    let db = rusqlite::Connection::open(workspace.path(".sluice/state.db")).unwrap();
    let mut statement = db
        .prepare("SELECT kind, name, state, detail FROM events ORDER BY seq")
        .unwrap();
    let rows = statement
        .query_map([], |row| {
            Ok(format!(
                "{} {} {} {}",
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?
            ))
        })
        .unwrap();
    rows.map(Result::unwrap).collect::<Vec<_>>().join("\n")
}

const LAUNDERING: &str = r#"
[pipeline]
name = "laundering"

[[stages]]
name = "Plant"
[[stages.actions]]
name = "plant"
plugin = "hostile@0.1"
outputs = ["bait"]
config = { mode = "secret-to-artifact", secret = "LEAKY" }
grants = { secrets = ["LEAKY"] }

[[stages]]
name = "Launder"
[[stages.actions]]
name = "launder"
plugin = "hostile@0.1"
inputs = ["bait"]
namespace = "laundered"
config = { mode = "launder-secret" }
"#;

#[test]
fn a_secret_read_from_an_artifact_by_an_ungranted_action_is_masked_everywhere() {
    let mut workspace = Workspace::new();
    workspace.env("SLUICE_SECRET_LEAKY", LEAKY);
    let output = workspace.run_pipeline(LAUNDERING);
    let printed = text(&output);
    assert!(output.status.success(), "{printed}");
    assert_sealed("`sluice run` output", &printed, LEAKY);

    let execution = workspace.latest_execution();
    let launder = action(&execution, "launder");
    assert_eq!(launder["status"], "Succeeded", "{execution:#}");
    let variables = launder["variables"].to_string();
    assert!(variables.contains(r#"["***","***"]"#), "{variables}");
    assert!(
        launder["summary"]
            .as_str()
            .unwrap()
            .starts_with("laundered ***")
    );
    assert_sealed("executions show --json", &execution.to_string(), LEAKY);

    let logs = workspace.latest_logs();
    assert!(logs.contains("hostile: laundered ***"), "{logs}");
    assert!(
        logs.contains("secret `LEAKY` handed to the action (secrets.get)"),
        "{logs}"
    );
    assert!(logs.contains("hostile: percent ***"), "{logs}");
    assert!(logs.contains("hostile: hex ***"), "{logs}");
    assert_sealed("sluice logs", &logs, LEAKY);

    let events = stored_events(&workspace);
    assert!(events.contains("laundered ***"), "{events}");
    assert_sealed("the events table", &events, LEAKY);
    assert_sealed("the state database file", &state_bytes(&workspace), LEAKY);
}

const WAITING: &str = r#"
[pipeline]
name = "waiting"

[[stages]]
name = "Wait"
[[stages.actions]]
name = "waiter"
plugin = "hostile@0.1"
config = { mode = "continue-with-secret", secret = "LEAKY", delay-ms = 4000 }
grants = { secrets = ["LEAKY"] }
"#;

/// The stored continuation of `waiter`, once it waits between rounds.
fn stored_continuation(db: &Path) -> Option<String> {
    let db = rusqlite::Connection::open(db).ok()?;
    db.query_row(
        "SELECT continuation FROM action_runs WHERE action = 'waiter' AND continuation IS NOT NULL",
        [],
        |row| row.get(0),
    )
    .ok()
}

#[test]
fn a_continuation_token_holding_a_secret_is_encrypted_while_the_action_waits() {
    let mut workspace = Workspace::new();
    workspace.env("SLUICE_SECRET_LEAKY", LEAKY);
    workspace.write("pipeline.toml", WAITING);
    let run = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .current_dir(workspace.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("SLUICE_LOG")
        .envs(workspace.envs())
        .arg("--data-dir")
        .arg(workspace.path(".sluice"))
        .arg("--plugins")
        .arg(workspace.registry())
        .args(["run", "pipeline.toml"])
        .spawn()
        .unwrap();
    let db = workspace.path(".sluice/state.db");
    let deadline = Instant::now() + Duration::from_secs(60);
    let stored = loop {
        if let Some(token) = stored_continuation(&db) {
            break token;
        }
        assert!(Instant::now() < deadline, "the action never waited");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(stored.starts_with("sealed-v1:"), "{stored}");
    assert_sealed("the stored continuation", &stored, LEAKY);
    assert_sealed("the state database file", &state_bytes(&workspace), LEAKY);
    let key = workspace.path(".sluice/continuation.key");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", key.display());

    let output = run.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", text(&output));
    let execution = workspace.latest_execution();
    let waiter = action(&execution, "waiter");
    assert_eq!(
        waiter["summary"], "the token came back intact",
        "{execution:#}"
    );
}
