//! The README's example pipeline, end to end.

use crate::harness::{Workspace, action, root, text};

fn copy_example(workspace: &Workspace) -> std::path::PathBuf {
    let source = root().join("examples").join("hello");
    let target = workspace.path("hello");
    copy_tree(&source, &target);
    // A fresh deploy target, not the checkout's.
    std::fs::remove_dir_all(target.join("deploy")).ok();
    std::fs::create_dir_all(target.join("deploy")).unwrap();
    target.join("pipeline.toml")
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == ".sluice" {
            continue;
        }
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            copy_tree(&entry.path(), &to.join(&name));
        } else if kind.is_file() {
            std::fs::copy(entry.path(), to.join(&name)).unwrap();
        }
    }
}

#[test]
fn example_pipeline_runs_source_build_test_deploy() {
    let workspace = Workspace::new();
    let pipeline = copy_example(&workspace);
    let output = workspace.sluice(&["run", pipeline.to_str().unwrap()]);
    let printed = text(&output);
    assert!(output.status.success(), "{printed}");
    for stage in ["Source", "Build", "Test", "Deploy"] {
        assert!(
            printed.contains(&format!("stage {stage} Succeeded")),
            "{stage} missing:\n{printed}"
        );
    }
    assert!(
        printed.contains("Artifacts:") && printed.contains("blake3:"),
        "{printed}"
    );
    assert!(
        printed.contains("passed=3"),
        "junit-gate variables missing:\n{printed}"
    );

    let page = workspace.path("hello/deploy/current/dist/index.html");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        html.contains("Hello from Sluice") && html.contains("staging"),
        "{html}"
    );

    let execution = workspace.latest_execution();
    assert_eq!(execution["execution"]["status"], "Succeeded");
    let compile = action(&execution, "compile");
    let env = compile["resolved_config"]
        .as_array()
        .unwrap()
        .iter()
        .find(|pair| pair[0] == "env")
        .unwrap();
    assert_eq!(env[1], "GREETING=Hello from Sluice,ENVIRONMENT=staging");
    assert_eq!(compile["outputs"][0]["name"], "site");
    assert_eq!(compile["outputs"][0]["digest"].as_str().unwrap().len(), 64);
}

#[test]
fn variable_overrides_reach_the_deployed_site_and_history_is_kept() {
    let workspace = Workspace::new();
    let pipeline = copy_example(&workspace);
    let pipeline = pipeline.to_str().unwrap();
    let first = workspace.sluice(&["run", pipeline]);
    assert!(first.status.success(), "{}", text(&first));
    let second = workspace.sluice(&[
        "run",
        pipeline,
        "--var",
        "environment=production",
        "--var",
        "greeting=Howdy",
    ]);
    assert!(second.status.success(), "{}", text(&second));

    let html =
        std::fs::read_to_string(workspace.path("hello/deploy/current/dist/index.html")).unwrap();
    assert!(
        html.contains("Howdy") && html.contains("production"),
        "{html}"
    );
    let releases = std::fs::read_dir(workspace.path("hello/deploy/releases"))
        .unwrap()
        .count();
    assert_eq!(releases, 2);

    let list = workspace.sluice(&["executions", "list"]);
    let listed = String::from_utf8_lossy(&list.stdout);
    assert_eq!(
        listed.lines().filter(|l| l.contains("Succeeded")).count(),
        2,
        "{listed}"
    );
    let logs = workspace.sluice(&["logs", "latest", "compile"]);
    let logs = String::from_utf8_lossy(&logs.stdout);
    assert!(logs.contains("built 2 files"), "{logs}");

    let unknown = workspace.sluice(&["run", pipeline, "--var", "colour=blue"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        text(&unknown).contains("variable `colour` is not declared"),
        "{}",
        text(&unknown)
    );
}

#[test]
fn the_service_example_of_the_readme_validates() {
    let workspace = Workspace::new();
    let pipeline = copy_example(&workspace).with_file_name("service.toml");
    let output = workspace.sluice(&["validate", pipeline.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output));
}
