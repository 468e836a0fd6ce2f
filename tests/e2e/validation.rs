//! `sluice validate` (and every other command) rejects bad pipelines with the
//! file, line and column of the problem.

use crate::harness::{Workspace, text};

const VALID: &str = r#"[pipeline]
name = "checks"

[variables]
who = { default = "world" }

[[stages]]
name = "Source"
[[stages.actions]]
name = "make"
plugin = "command@0.1"
outputs = ["stuff"]
namespace = "make"
config = { run = "sh -c 'mkdir -p out && echo hi > out/a.txt'", outputs = "stuff=out/**" }
grants = { commands = ["sh"] }

[[stages]]
name = "Use"
[[stages.actions]]
name = "use"
plugin = "command@0.1"
inputs = ["stuff"]
config = { run = "sh -c 'echo #{variables.who} #{make.exit_code}'" }
grants = { commands = ["sh"] }
"#;

/// Validate `pipeline` and return (exit code, stderr).
fn validate(pipeline: &str) -> (Option<i32>, String) {
    let workspace = Workspace::new();
    workspace.write("pipeline.toml", pipeline);
    let output = workspace.sluice(&["validate", "pipeline.toml"]);
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Assert the pipeline is rejected at `line:column` with `message` in the error.
fn rejected_at(pipeline: &str, line: usize, column: usize, message: &str) {
    let (code, stderr) = validate(pipeline);
    assert_eq!(code, Some(2), "expected rejection:\n{stderr}");
    let location = format!("pipeline.toml:{line}:{column}: error:");
    let hit = stderr
        .lines()
        .any(|l| l.contains(&location) && l.contains(message));
    assert!(hit, "expected `{location} …{message}…` in:\n{stderr}");
}

#[test]
fn the_base_pipeline_is_valid() {
    let workspace = Workspace::new();
    workspace.write("pipeline.toml", VALID);
    let output = workspace.sluice(&["validate", "pipeline.toml"]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("is valid (2 stages, 2 actions)"));
}

#[test]
fn malformed_toml_names_line_and_column() {
    let broken = VALID.replace(r#"name = "make""#, r#"name = "make"#);
    rejected_at(&broken, 10, 13, "invalid basic string");
}

#[test]
fn unknown_plugin_and_unknown_version() {
    rejected_at(
        &VALID.replacen("command@0.1", "nosuch@1", 1),
        11,
        10,
        "unknown plugin `nosuch`",
    );
    rejected_at(
        &VALID.replacen("command@0.1", "command@9", 1),
        11,
        10,
        "no installed version of `command` matches `^9`",
    );
}

#[test]
fn input_not_produced_earlier() {
    rejected_at(
        &VALID.replace(r#"inputs = ["stuff"]"#, r#"inputs = ["nothing"]"#),
        22,
        11,
        "input artifact `nothing` is not produced by any action",
    );
    // Produced, but in the same run-order group: not earlier.
    let same_group = VALID.replace("[[stages]]\nname = \"Use\"\n", "");
    rejected_at(&same_group, 20, 11, "does not run before this one");
}

#[test]
fn output_produced_twice() {
    let twice = VALID.replace(
        r#"inputs = ["stuff"]"#,
        "inputs = [\"stuff\"]\noutputs = [\"stuff\"]",
    );
    rejected_at(
        &twice,
        23,
        12,
        "artifact `stuff` is already produced by action `make`",
    );
}

#[test]
fn dangling_variable_references() {
    rejected_at(
        &VALID.replace("#{variables.who}", "#{variables.whom}"),
        23,
        18,
        "undeclared pipeline variable",
    );
    rejected_at(
        &VALID.replace("#{make.exit_code}", "#{nope.exit_code}"),
        23,
        18,
        "namespace `nope`, which no action declares",
    );
}

#[test]
fn grant_beyond_the_plugin_manifest() {
    // dir-source's manifest allows no hosts (command's allows any, narrowed here).
    let grant = VALID
        .replacen(
            r#"plugin = "command@0.1""#,
            r#"plugin = "dir-source@0.1""#,
            1,
        )
        .replacen(
            r#"grants = { commands = ["sh"] }"#,
            r#"grants = { commands = ["sh"], hosts = ["example.com"] }"#,
            1,
        );
    rejected_at(
        &grant,
        15,
        40,
        "grant of outbound HTTP to `example.com` exceeds the manifest of dir-source@0.1.0",
    );
    let mount = VALID.replacen(
        r#"grants = { commands = ["sh"] }"#,
        r#"grants = { mounts = { m = { host = "." } } }"#,
        1,
    );
    rejected_at(&mount, 15, 27, "which allows no host mounts");
}

#[test]
fn command_grants_without_a_command() {
    let root = VALID.replacen(
        r#"grants = { commands = ["sh"] }"#,
        r#"grants = { run-as-root = true }"#,
        1,
    );
    rejected_at(
        &root,
        15,
        26,
        "grants.run-as-root is granted but no command is",
    );
    let typo = VALID.replacen(
        r#"grants = { commands = ["sh"] }"#,
        r#"grants = { commands = ["sh"], run-as-root = "yes" }"#,
        1,
    );
    rejected_at(&typo, 15, 45, "invalid type");
}

#[test]
fn missing_and_unknown_config_keys() {
    let missing = VALID
        .replace(
            "plugin = \"command@0.1\"\ninputs = [\"stuff\"]",
            "plugin = \"deploy-dir@0.1\"\ninputs = [\"stuff\"]",
        )
        .replace(
            "config = { run = \"sh -c 'echo #{variables.who} #{make.exit_code}'\" }\ngrants = { commands = [\"sh\"] }",
            "config = {}",
        );
    rejected_at(&missing, 20, 8, "missing required config `target`");
    let unknown = VALID.replace(
        r#"outputs = "stuff=out/**" }"#,
        r#"outputs = "stuff=out/**", colour = "red" }"#,
    );
    rejected_at(&unknown, 14, 100, "unknown config key `colour`");
    let mistyped = VALID.replace(
        r#"outputs = "stuff=out/**" }"#,
        r#"outputs = "stuff=out/**", timeout = "soon" }"#,
    );
    rejected_at(&mistyped, 14, 101, "config `timeout` must be an integer");
}

#[test]
fn duplicate_names() {
    rejected_at(
        &VALID.replace(r#"name = "Use""#, r#"name = "Source""#),
        18,
        8,
        "duplicate stage name `Source`",
    );
    rejected_at(
        &VALID.replace(r#"name = "use""#, r#"name = "make""#),
        20,
        8,
        "duplicate action name `make`",
    );
}

#[test]
fn run_refuses_an_invalid_pipeline_too() {
    let workspace = Workspace::new();
    workspace.write(
        "pipeline.toml",
        &VALID.replacen("command@0.1", "nosuch@1", 1),
    );
    let output = workspace.sluice(&["run", "pipeline.toml"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output).contains("pipeline.toml:11:10: error: unknown plugin `nosuch`"),
        "{}",
        text(&output)
    );
}

#[test]
fn pipeline_names_are_plain_and_short() {
    let named = |name: &str| VALID.replacen(r#"name = "checks""#, &format!("name = {name}"), 1);
    let long = format!("\"{}\"", "x".repeat(10_000));
    for (name, message) in [
        (
            r#""../../etc/passwd""#,
            "pipeline name `../../etc/passwd` contains '/'",
        ),
        (r#""/""#, "pipeline name `/` contains '/'"),
        (r#""a\u0000b""#, r"pipeline name `a\0b` contains '\0'"),
        (r#""..""#, "pipeline name `..` is not allowed"),
        (r#""""#, "the pipeline name is empty"),
        (&long, "is 10000 characters long"),
    ] {
        rejected_at(&named(name), 2, 8, message);
    }
    let (code, stderr) = validate(&named(r#""..""#));
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("use 1 to 100 ASCII letters, digits, `-`, `_` and `.`"),
        "{stderr}"
    );
    let (code, stderr) = validate(&named(r#""my-app_2.0""#));
    assert_eq!(code, Some(0), "{stderr}");

    // `run` refuses it before anything runs; `pipelines put` before sending it.
    let workspace = Workspace::new();
    workspace.write("pipeline.toml", &named(r#""../../etc/passwd""#));
    let output = workspace.sluice(&["run", "pipeline.toml"]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        text(&output).contains("pipeline.toml:2:8: error: pipeline name `../../etc/passwd`"),
        "{}",
        text(&output)
    );
    assert!(!workspace.path(".sluice/state.db").exists(), "nothing ran");
    let output = workspace.sluice(&[
        "--server",
        "http://127.0.0.1:9",
        "pipelines",
        "put",
        "pipeline.toml",
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        text(&output).contains("pipeline.toml: pipeline name `../../etc/passwd` contains '/'"),
        "{}",
        text(&output)
    );
}

#[test]
fn stage_conditions_are_checked_with_the_line_and_column_of_each_problem() {
    let conditions = r##"name = "Use"
before-entry = { result = "rollback", rules = [{ name = "late", provider = "variable-check", variable = "#{late.x}", operator = "like", value = "a" }, { name = "w", provider = "deployment-window", cron = "* * 9-17 * * Mon-Fri", time-zone = "Mars/Olympus" }] }
"##;
    let pipeline = VALID.replace("name = \"Use\"\n", conditions);
    rejected_at(
        &pipeline,
        19,
        27,
        "`before-entry` result `rollback` is not one of [\"fail\", \"skip\"]",
    );
    rejected_at(
        &pipeline,
        19,
        105,
        "`#{late.x}` refers to namespace `late`, which no action declares",
    );
    rejected_at(
        &pipeline,
        19,
        129,
        "operator `like` is not one of eq, ne, contains, matches",
    );
    rejected_at(&pipeline, 19, 241, "unknown time zone `Mars/Olympus`");

    let six = (0..6)
        .map(|i| format!("{{ name = \"r{i}\", provider = \"variable-check\", variable = \"#{{make.exit_code}}\", operator = \"eq\", value = \"0\" }}"))
        .collect::<Vec<_>>()
        .join(", ");
    let pipeline = VALID.replace(
        "name = \"Use\"\n",
        &format!("name = \"Use\"\non-success = {{ rules = [{six}] }}\n"),
    );
    let (code, stderr) = validate(&pipeline);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("`on-success` has 6 rules; a condition has at most 5"),
        "{stderr}"
    );

    let fine = VALID.replace(
        "name = \"Use\"\n",
        "name = \"Use\"\nbefore-entry = { result = \"skip\", rules = [{ name = \"ok\", provider = \"variable-check\", variable = \"#{make.exit_code}\", operator = \"matches\", value = \"^0$\" }] }\non-failure = { result = \"retry\" }\n",
    );
    let (code, stderr) = validate(&fine);
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn rule_plugins_are_checked_as_actions_are_and_kept_apart_from_actions() {
    let line = r##"on-success = { rules = [{ name = "up", provider = "plugin", plugin = "http-check@0.1", config = { url = "http://127.0.0.1:1/#{nope.x}", contain = "ok" }, grants = { hosts = ["127.0.0.1:1"], commands = ["sh"] } }, { name = "act", provider = "plugin", plugin = "command@0.1", config = { run = "true" } }, { name = "bare", provider = "plugin" }] }"##;
    let pipeline = VALID.replace("name = \"Use\"\n", &format!("name = \"Use\"\n{line}\n"));
    let column = |needle: &str| line.find(needle).unwrap() + 1;
    rejected_at(
        &pipeline,
        19,
        column("\"http://"),
        "`#{nope.x}` refers to namespace `nope`, which no action declares",
    );
    rejected_at(
        &pipeline,
        19,
        column("\"ok\""),
        "unknown config key `contain` for plugin http-check@0.1.0",
    );
    rejected_at(
        &pipeline,
        19,
        column("\"sh\""),
        "grant of command `sh` exceeds the manifest of http-check@0.1.0",
    );
    rejected_at(
        &pipeline,
        19,
        column("\"command@0.1\""),
        "rule `act`: command@0.1.0 implements world `action`, not `rule`",
    );
    rejected_at(
        &pipeline,
        19,
        column("{ name = \"bare\""),
        "rule `bare` needs `plugin`",
    );

    // A rule plugin is no action.
    let misused = VALID.replace(
        "name = \"use\"\nplugin = \"command@0.1\"",
        "name = \"use\"\nplugin = \"http-check@0.1\"",
    );
    rejected_at(
        &misused,
        21,
        10,
        "http-check@0.1.0 is a rule plugin (world `rule`): use it in a stage condition",
    );
    let (_, stderr) = validate(&misused);
    assert_eq!(
        stderr.lines().count(),
        1,
        "one error, not its config's: {stderr}"
    );
}
