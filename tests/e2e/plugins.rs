//! The plugin registry: digest pinning, consent, versions side by side.

use std::path::PathBuf;

use crate::harness::{Workspace, packaged_plugins, text};

/// Copy a packaged plugin, rewriting its manifest with `edit`.
fn variant(
    workspace: &Workspace,
    plugin: &str,
    name: &str,
    edit: impl Fn(String) -> String,
) -> PathBuf {
    let source = packaged_plugins().join(plugin);
    let target = workspace.path(name);
    std::fs::create_dir_all(&target).unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), target.join(entry.file_name())).unwrap();
    }
    let manifest = std::fs::read_to_string(target.join("plugin.toml")).unwrap();
    std::fs::write(target.join("plugin.toml"), edit(manifest)).unwrap();
    target
}

#[test]
fn install_rejects_a_component_that_does_not_match_its_digest() {
    let workspace = Workspace::with_private_registry();
    let tampered = variant(&workspace, "http", "tampered", |m| m.clone());
    std::fs::OpenOptions::new()
        .append(true)
        .open(tampered.join("http.wasm"))
        .unwrap()
        .write_all_compat(b"evil");
    let output = workspace.sluice(&["plugin", "install", "tampered", "--yes"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output).contains("digest mismatch"),
        "{}",
        text(&output)
    );
}

#[test]
fn install_needs_consent_unless_yes_is_given() {
    let workspace = Workspace::with_private_registry();
    let http = packaged_plugins().join("http");
    let output = workspace.sluice(&["plugin", "install", http.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let printed = text(&output);
    assert!(
        printed.contains("outbound HTTP: any the pipeline grants"),
        "capabilities must be shown:\n{printed}"
    );
    assert!(printed.contains("needs consent"), "{printed}");
    let listed = workspace.sluice(&["plugin", "list"]);
    assert!(
        !String::from_utf8_lossy(&listed.stdout).contains("http"),
        "nothing may be installed without consent"
    );
}

#[test]
fn versions_live_side_by_side_and_pipelines_pick_by_requirement() {
    let workspace = Workspace::with_private_registry();
    let v1 = packaged_plugins().join("dir-source");
    let v2 = variant(&workspace, "dir-source", "dir-source-v2", |m| {
        m.replace("version = \"0.1.0\"", "version = \"0.2.0\"")
            .replace("hosts = []", "hosts = [\"*.example.com\"]")
    });
    let first = workspace.sluice(&["plugin", "install", v1.to_str().unwrap(), "--yes"]);
    assert!(first.status.success(), "{}", text(&first));
    let upgrade = workspace.sluice(&["plugin", "install", v2.to_str().unwrap(), "--yes"]);
    assert!(upgrade.status.success(), "{}", text(&upgrade));
    let printed = text(&upgrade);
    assert!(
        printed.contains("upgrades dir-source@0.1.0")
            && printed.contains("+ outbound HTTP *.example.com"),
        "{printed}"
    );

    let listed =
        String::from_utf8_lossy(&workspace.sluice(&["plugin", "list"]).stdout).into_owned();
    assert!(
        listed.contains("0.1.0") && listed.contains("0.2.0"),
        "{listed}"
    );
    let inspected = text(&workspace.sluice(&["plugin", "inspect", "dir-source@0.1"]));
    assert!(
        inspected.contains("dir-source@0.1.0")
            && inspected.contains("path")
            && inspected.contains("required"),
        "{inspected}"
    );

    std::fs::create_dir_all(workspace.path("src")).unwrap();
    std::fs::write(workspace.path("src/file.txt"), "content").unwrap();
    for (requirement, expected) in [
        ("0.1", "dir-source@0.1.0"),
        ("0.2", "dir-source@0.2.0"),
        ("*", "dir-source@0.2.0"),
    ] {
        workspace.write(
            "pipeline.toml",
            &format!(
                r#"
[pipeline]
name = "versions"
[[stages]]
name = "Source"
[[stages.actions]]
name = "snap"
plugin = "dir-source@{requirement}"
outputs = ["src"]
config = {{ path = "src" }}
grants = {{ mounts = {{ src = {{ host = "src" }} }} }}
"#
            ),
        );
        let run = workspace.sluice(&["run", "pipeline.toml"]);
        assert!(run.status.success(), "{}", text(&run));
        assert!(
            text(&run).contains(expected),
            "`@{requirement}` should run {expected}:\n{}",
            text(&run)
        );
    }

    let removed = workspace.sluice(&["plugin", "remove", "dir-source@0.2.0"]);
    assert!(removed.status.success(), "{}", text(&removed));
    workspace.write(
        "pipeline.toml",
        &std::fs::read_to_string(workspace.path("pipeline.toml"))
            .unwrap()
            .replace("@*", "@0.2"),
    );
    let invalid = workspace.sluice(&["validate", "pipeline.toml"]);
    assert_eq!(invalid.status.code(), Some(2));
    assert!(
        text(&invalid).contains("installed versions: 0.1.0"),
        "{}",
        text(&invalid)
    );
}

trait WriteCompat {
    fn write_all_compat(&mut self, bytes: &[u8]);
}

impl WriteCompat for std::fs::File {
    fn write_all_compat(&mut self, bytes: &[u8]) {
        std::io::Write::write_all(self, bytes).unwrap();
    }
}
