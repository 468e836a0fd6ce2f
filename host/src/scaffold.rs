//! `sluice plugin new`: a plugin directory that builds and installs as it stands.
//!
//! The templates live in `sdk/<language>/template/` and are compiled into the
//! binary, so what the tests scaffold and build is exactly what users get.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// Languages a plugin can be scaffolded in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Language {
    /// Rust with `sluice-sdk`, built with cargo for wasm32-wasip2.
    Rust,
    /// Python, built with componentize-py.
    Python,
    /// JavaScript, built with jco / componentize-js.
    Js,
}

/// One template file: path in the new plugin, content, executable?
type Template = (&'static str, &'static str, bool);

const RUST: &[Template] = &[
    (
        "Cargo.toml",
        include_str!("../../sdk/rust/template/Cargo.toml.in"),
        false,
    ),
    (
        "src/lib.rs",
        include_str!("../../sdk/rust/template/src/lib.rs"),
        false,
    ),
    (
        "plugin.toml",
        include_str!("../../sdk/rust/template/plugin.toml"),
        false,
    ),
    (
        "build.sh",
        include_str!("../../sdk/rust/template/build.sh"),
        true,
    ),
];

const PYTHON: &[Template] = &[
    (
        "app.py",
        include_str!("../../sdk/python/template/app.py"),
        false,
    ),
    (
        "plugin.toml",
        include_str!("../../sdk/python/template/plugin.toml"),
        false,
    ),
    (
        "build.sh",
        include_str!("../../sdk/python/scaffold-build.sh"),
        true,
    ),
];

const JS: &[Template] = &[
    (
        "app.js",
        include_str!("../../sdk/js/template/app.js"),
        false,
    ),
    (
        "plugin.toml",
        include_str!("../../sdk/js/template/plugin.toml"),
        false,
    ),
    (
        "build.sh",
        include_str!("../../sdk/js/scaffold-build.sh"),
        true,
    ),
];

/// Where the SDK of this source tree is (overridable with `--sdk`).
pub fn default_sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("sdk")
}

/// Write a new plugin named `name` into `dir`; returns the files written.
pub fn scaffold(
    name: &str,
    language: Language,
    dir: &Path,
    sdk: &Path,
) -> anyhow::Result<Vec<PathBuf>> {
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    anyhow::ensure!(
        valid,
        "plugin name `{name}` must be lower-case letters, digits and -"
    );
    anyhow::ensure!(
        !dir.exists(),
        "{} already exists; pick a new directory",
        dir.display()
    );
    let sdk = sdk.canonicalize().with_context(|| {
        format!(
            "the SDK directory {} does not exist (use --sdk)",
            sdk.display()
        )
    })?;
    let templates = match language {
        Language::Rust => RUST,
        Language::Python => PYTHON,
        Language::Js => JS,
    };
    let crate_name = format!("{name}-plugin");
    let substitutions = [
        ("{{name}}", name.to_string()),
        ("{{crate}}", crate_name.clone()),
        ("{{crate_file}}", crate_name.replace('-', "_")),
        (
            "{{sdk}}",
            sdk.join(sdk_subdir(language)).display().to_string(),
        ),
        // The Python and JS templates are real plugins named hello-*.
        ("hello-python", name.to_string()),
        ("hello-js", name.to_string()),
    ];
    let mut written = Vec::new();
    for (relative, template, executable) in templates {
        let path = dir.join(relative);
        let content = substitutions
            .iter()
            .fold(template.to_string(), |text, (from, to)| {
                text.replace(from, to)
            });
        std::fs::create_dir_all(path.parent().context("template path")?)?;
        std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
        if *executable {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        }
        written.push(path);
    }
    Ok(written)
}

fn sdk_subdir(language: Language) -> &'static str {
    match language {
        Language::Rust => "rust",
        Language::Python => "python",
        Language::Js => "js",
    }
}
