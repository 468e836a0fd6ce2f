//! `sluice plugin new`: a plugin directory that builds and installs as it stands.
//!
//! The templates live in `sdk/<language>/template/` and are compiled into the
//! binary, so what the tests scaffold and build is exactly what users get. So
//! are the SDK files a plugin needs to build (the Rust crate, the Python and JS
//! build scripts and helper modules, the WIT): a scaffold never names an
//! absolute path, and it finds its SDK in one of three places, always by a path
//! relative to the plugin directory:
//!
//! - `--sdk <dir>`: that Sluice `sdk/` directory;
//! - inside a Sluice checkout: the checkout's `sdk/`;
//! - anywhere else: a copy written into `<plugin>/vendor/sluice/`, laid out as
//!   in the repository (`sdk/...` and `wit/...`), so the scripts' own relative
//!   paths hold there too.

use std::path::{Component, Path, PathBuf};

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

/// One embedded file: path (relative to the plugin, or to `vendor/sluice/`),
/// content, executable?
type File = (&'static str, &'static str, bool);

/// Embed a file of the repository under the same relative path.
macro_rules! repo_file {
    ($path:literal) => {
        ($path, include_str!(concat!("../../../", $path)), false)
    };
    ($path:literal, executable) => {
        ($path, include_str!(concat!("../../../", $path)), true)
    };
}

const RUST: &[File] = &[
    (
        "Cargo.toml",
        include_str!("../../../sdk/rust/template/Cargo.toml.in"),
        false,
    ),
    (
        "src/lib.rs",
        include_str!("../../../sdk/rust/template/src/lib.rs"),
        false,
    ),
    (
        "plugin.toml",
        include_str!("../../../sdk/rust/template/plugin.toml"),
        false,
    ),
    (
        "build.sh",
        include_str!("../../../sdk/rust/template/build.sh"),
        true,
    ),
];

const PYTHON: &[File] = &[
    (
        "app.py",
        include_str!("../../../sdk/python/template/app.py"),
        false,
    ),
    (
        "plugin.toml",
        include_str!("../../../sdk/python/template/plugin.toml"),
        false,
    ),
    (
        "build.sh",
        include_str!("../../../sdk/python/scaffold-build.sh"),
        true,
    ),
];

const JS: &[File] = &[
    (
        "app.js",
        include_str!("../../../sdk/js/template/app.js"),
        false,
    ),
    (
        "plugin.toml",
        include_str!("../../../sdk/js/template/plugin.toml"),
        false,
    ),
    (
        "build.sh",
        include_str!("../../../sdk/js/scaffold-build.sh"),
        true,
    ),
];

/// Every scaffold's `.gitignore`: build output stays out of version control.
const GITIGNORE: File = (".gitignore", "/dist/\n/target/\n", false);

/// The contract every language builds against.
const VENDOR_WIT: &[File] = &[repo_file!("wit/action.wit")];

/// `sdk/harness/try.sh` and what it needs, vendored for every language.
const VENDOR_HARNESS: &[File] = &[
    repo_file!("sdk/toolchain.sh"),
    repo_file!("sdk/js/tools.sh"),
    repo_file!("sdk/harness/try.sh", executable),
    repo_file!("sdk/harness/host.js"),
    repo_file!("sdk/harness/run.mjs"),
];

/// The `sluice-sdk` crate.
const VENDOR_RUST: &[File] = &[
    repo_file!("sdk/rust/Cargo.toml"),
    repo_file!("sdk/rust/README.md"),
    repo_file!("sdk/rust/src/lib.rs"),
    repo_file!("sdk/rust/src/command.rs"),
    repo_file!("sdk/rust/src/context.rs"),
    repo_file!("sdk/rust/src/fs.rs"),
    repo_file!("sdk/rust/src/http.rs"),
    repo_file!("sdk/rust/src/result.rs"),
];

/// The Python build script and helper module.
const VENDOR_PYTHON: &[File] = &[
    repo_file!("sdk/package.sh"),
    repo_file!("sdk/python/build.sh", executable),
    repo_file!("sdk/python/lib/sluice_sdk.py"),
];

/// The JS build script, helper module and the extra WIT of world `action-js`.
const VENDOR_JS: &[File] = &[
    repo_file!("sdk/package.sh"),
    repo_file!("sdk/js/build.sh", executable),
    repo_file!("sdk/js/preopen.mjs"),
    repo_file!("sdk/js/lib/sluice.js"),
    repo_file!("sdk/js/wit/action-js.wit"),
    repo_file!("sdk/js/wit/deps/clocks.wit"),
    repo_file!("sdk/js/wit/deps/filesystem.wit"),
    repo_file!("sdk/js/wit/deps/io.wit"),
];

/// Where vendored SDK files go inside a new plugin.
pub const VENDOR_DIR: &str = "vendor/sluice";

/// What `vendor/sluice/README.md` says.
const VENDOR_README: &str = "\
# Vendored Sluice SDK

`sluice plugin new` copied these files from Sluice {{version}}, laid out as in
the Sluice repository (`sdk/`, `wit/`), so that this plugin builds without a
Sluice checkout. To update them, scaffold a new plugin with a newer `sluice`
and copy its `vendor/sluice/` over this one.
";

/// Write a new plugin named `name` into `dir`; returns the files written.
///
/// `sdk`, when given, is a Sluice `sdk/` directory to depend on by a relative
/// path instead of the checkout `dir` is in or a vendored copy.
pub fn scaffold(
    name: &str,
    language: Language,
    dir: &Path,
    sdk: Option<&Path>,
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
    let sdk = match sdk {
        Some(sdk) => Some(
            sdk.canonicalize()
                .with_context(|| format!("the SDK directory {} does not exist", sdk.display()))?,
        ),
        None => None,
    };
    if let Some(sdk) = &sdk {
        let needed = sdk.join(sdk_subdir(language));
        anyhow::ensure!(
            needed.is_dir(),
            "{} is not a Sluice SDK directory: it has no {}/",
            sdk.display(),
            sdk_subdir(language)
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let plugin = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    let sdk = sdk.or_else(|| enclosing_checkout(&plugin).map(|repo| repo.join("sdk")));

    let mut written = Vec::new();
    let sdk_path = match sdk {
        Some(sdk) => relative_path(&plugin, &sdk),
        None => {
            written.extend(vendor(dir, language)?);
            PathBuf::from(VENDOR_DIR).join("sdk")
        }
    };
    let crate_name = format!("{name}-plugin");
    let substitutions = [
        ("{{name}}", name.to_string()),
        ("{{crate}}", crate_name.clone()),
        ("{{crate_file}}", crate_name.replace('-', "_")),
        (
            "{{sdk}}",
            sdk_path.join(sdk_subdir(language)).display().to_string(),
        ),
        // The Python and JS templates are real plugins named hello-*.
        ("hello-python", name.to_string()),
        ("hello-js", name.to_string()),
    ];
    let templates = match language {
        Language::Rust => RUST,
        Language::Python => PYTHON,
        Language::Js => JS,
    };
    for (relative, template, executable) in templates.iter().chain([&GITIGNORE]) {
        let content = substitutions
            .iter()
            .fold(template.to_string(), |text, (from, to)| {
                text.replace(from, to)
            });
        written.push(write(&dir.join(relative), &content, *executable)?);
    }
    Ok(written)
}

/// Copy the SDK files `language` needs into `<dir>/vendor/sluice/`.
fn vendor(dir: &Path, language: Language) -> anyhow::Result<Vec<PathBuf>> {
    let own = match language {
        Language::Rust => VENDOR_RUST,
        Language::Python => VENDOR_PYTHON,
        Language::Js => VENDOR_JS,
    };
    let root = dir.join(VENDOR_DIR);
    let readme = VENDOR_README.replace("{{version}}", env!("CARGO_PKG_VERSION"));
    let mut written = vec![write(&root.join("README.md"), &readme, false)?];
    for (relative, content, executable) in VENDOR_WIT.iter().chain(VENDOR_HARNESS).chain(own) {
        written.push(write(&root.join(relative), content, *executable)?);
    }
    Ok(written)
}

fn write(path: &Path, content: &str, executable: bool) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(path.parent().context("template path")?)?;
    std::fs::write(path, content).with_context(|| format!("writing {}", path.display()))?;
    if executable {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(path.to_path_buf())
}

/// The Sluice checkout holding `dir`, if any: the nearest ancestor with the
/// contract (`wit/action.wit`) and the SDK (`sdk/rust/Cargo.toml`).
fn enclosing_checkout(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .skip(1)
        .find(|a| a.join("wit/action.wit").is_file() && a.join("sdk/rust/Cargo.toml").is_file())
        .map(Path::to_path_buf)
}

/// `to` relative to `from`; both absolute and canonical.
fn relative_path(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<Component> = from.components().collect();
    let to: Vec<Component> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut path: PathBuf =
        std::iter::repeat_n(Component::ParentDir, from.len() - common).collect();
    path.extend(&to[common..]);
    if path.as_os_str().is_empty() {
        path.push(".");
    }
    path
}

fn sdk_subdir(language: Language) -> &'static str {
    match language {
        Language::Rust => "rust",
        Language::Python => "python",
        Language::Js => "js",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_climb_to_the_common_ancestor() {
        let rel = |a: &str, b: &str| relative_path(Path::new(a), Path::new(b));
        assert_eq!(rel("/r/target/x/p", "/r/sdk"), Path::new("../../../sdk"));
        assert_eq!(rel("/r/p", "/r/sdk"), Path::new("../sdk"));
        assert_eq!(rel("/r", "/r/sdk"), Path::new("sdk"));
        assert_eq!(rel("/r", "/r"), Path::new("."));
    }

    /// Files under `dir` (relative to the repository root), sorted.
    fn files_under(dir: &str, keep: impl Fn(&Path) -> bool) -> Vec<String> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .ancestors()
            .nth(2)
            .unwrap();
        let mut found = Vec::new();
        let mut stack = vec![root.join(dir)];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if keep(&path) {
                    let rel = path.strip_prefix(root).unwrap();
                    found.push(rel.to_string_lossy().into_owned());
                }
            }
        }
        found.sort();
        found
    }

    fn vendored(files: &[&[File]]) -> Vec<String> {
        let mut names: Vec<String> = files
            .iter()
            .flat_map(|f| f.iter().map(|(p, _, _)| p.to_string()))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// A file added to the SDK sources must be vendored too, or scaffolds
    /// outside the repository stop building.
    #[test]
    fn every_sdk_source_file_is_vendored() {
        let all = vendored(&[
            VENDOR_WIT,
            VENDOR_HARNESS,
            VENDOR_RUST,
            VENDOR_PYTHON,
            VENDOR_JS,
        ]);
        let missing: Vec<String> = [
            files_under("wit", |p| p.extension().is_some_and(|e| e == "wit")),
            files_under("sdk/rust/src", |_| true),
            files_under("sdk/python/lib", |p| {
                p.extension().is_some_and(|e| e == "py")
            }),
            files_under("sdk/js/lib", |_| true),
            files_under("sdk/js/wit", |_| true),
            files_under("sdk/harness", |_| true),
        ]
        .concat()
        .into_iter()
        .filter(|f| !all.contains(f))
        .collect();
        assert!(missing.is_empty(), "not vendored by scaffolds: {missing:?}");
    }

    #[test]
    fn a_scaffold_outside_a_checkout_vendors_its_sdk_and_names_it_relatively() {
        let tmp = tempfile::tempdir().unwrap();
        for language in [Language::Rust, Language::Python, Language::Js] {
            let dir = tmp.path().join(format!("{language:?}").to_lowercase());
            let files = scaffold("demo", language, &dir, None).unwrap();
            for file in &files {
                let text = std::fs::read_to_string(file).unwrap();
                assert!(
                    !text.contains(tmp.path().to_str().unwrap()),
                    "{} names an absolute path",
                    file.display()
                );
            }
            assert!(dir.join("vendor/sluice/wit/action.wit").is_file());
            let build = std::fs::read_to_string(match language {
                Language::Rust => dir.join("Cargo.toml"),
                _ => dir.join("build.sh"),
            })
            .unwrap();
            let sdk = format!("vendor/sluice/sdk/{}", sdk_subdir(language));
            assert!(build.contains(&sdk), "{build}");
        }
    }

    #[test]
    fn a_scaffold_inside_a_checkout_uses_its_sdk_by_a_relative_path() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path();
        std::fs::create_dir_all(repo.join("wit")).unwrap();
        std::fs::write(repo.join("wit/action.wit"), "").unwrap();
        std::fs::create_dir_all(repo.join("sdk/rust")).unwrap();
        std::fs::write(repo.join("sdk/rust/Cargo.toml"), "").unwrap();
        let dir = repo.join("work/demo");
        scaffold("demo", Language::Rust, &dir, None).unwrap();
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        assert!(
            manifest.contains(r#"sluice-sdk = { path = "../../sdk/rust" }"#),
            "{manifest}"
        );
        assert!(!dir.join("vendor").exists());
    }
}
