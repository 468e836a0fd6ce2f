//! Pipeline files: parsing, validation against the plugin registry, and the
//! validated [`Plan`] the executor runs.

pub mod caches;
pub mod conditions;
pub mod limits;
pub mod model;
mod validate;
pub mod vars;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use self::limits::Limits;
use crate::plugin::{InstalledPlugin, Registry};

/// One problem in a pipeline file, with its location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// The pipeline file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// What is wrong, and where possible how to fix it.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: error: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// Every problem found in a pipeline file.
#[derive(Debug, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, diagnostic) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

/// A source file and the means to turn byte offsets into line and column.
pub struct SourceFile {
    path: PathBuf,
    text: String,
}

impl SourceFile {
    /// Wrap a file's text.
    pub fn new(path: &Path, text: String) -> Self {
        Self {
            path: path.to_path_buf(),
            text,
        }
    }

    /// A diagnostic at byte `offset`.
    pub fn at(&self, offset: usize, message: impl Into<String>) -> Diagnostic {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let column = before[line_start..].chars().count() + 1;
        Diagnostic {
            file: self.path.clone(),
            line,
            column,
            message: message.into(),
        }
    }
}

/// How executions of one pipeline share its stages (used by `sluice serve`).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionMode {
    /// A newer waiting execution replaces an older waiting one.
    #[default]
    Superseded,
    /// One at a time, in arrival order.
    Queued,
    /// Independent.
    Parallel,
}

/// A validated pipeline, ready to run.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Pipeline name.
    pub name: String,
    /// The file it came from.
    pub file: PathBuf,
    /// Execution mode.
    pub execution_mode: ExecutionMode,
    /// Most executions in progress at once.
    pub max_executions: usize,
    /// Most executions waiting at stage boundaries.
    pub queue_depth: usize,
    /// What starts executions besides people.
    pub triggers: Triggers,
    /// Where state-change events are delivered.
    pub notifications: Option<Notifications>,
    /// Pipeline variables and their defaults.
    pub variables: BTreeMap<String, Option<String>>,
    /// Declared caches: name → max-size in bytes.
    pub caches: BTreeMap<String, u64>,
    /// Stages, in order.
    pub stages: Vec<StagePlan>,
    /// The text it was parsed from (a worker on another machine parses it
    /// again against its own registry); empty for plans built in code.
    pub source: std::sync::Arc<str>,
}

/// A pipeline's triggers.
#[derive(Clone, Debug, Default)]
pub struct Triggers {
    /// The webhook, if any.
    pub webhook: Option<crate::triggers::WebhookTrigger>,
    /// Cron schedules, as written.
    pub cron: Vec<String>,
    /// The source action to poll, and how often.
    pub poll: Option<(String, Duration)>,
}

/// Event delivery to a plugin.
#[derive(Clone, Debug)]
pub struct Notifications {
    /// Accepted `kind.STATE` names; empty or `*` for all.
    pub events: Vec<String>,
    /// The delivering action.
    pub action: ActionPlan,
}

impl Notifications {
    /// Whether an event of `kind` in `state` is delivered.
    pub fn wants(&self, kind: &str, state: &str) -> bool {
        self.events.is_empty()
            || self
                .events
                .iter()
                .any(|e| e == "*" || *e == format!("{kind}.{state}"))
    }
}

/// Keys of the `event` namespace, usable in `[notifications]` configuration.
pub const EVENT_KEYS: [&str; 6] = ["kind", "name", "state", "detail", "execution", "pipeline"];

/// Keys of the built-in `trigger` namespace: what started the execution
/// (`scheduled`: the RFC 3339 time a cron fire was due).
pub const TRIGGER_KEYS: [&str; 6] = ["kind", "event", "revision", "branch", "tag", "scheduled"];

/// A validated stage.
#[derive(Clone, Debug)]
pub struct StagePlan {
    /// Stage name.
    pub name: String,
    /// Actions, sorted by run order.
    pub actions: Vec<ActionPlan>,
    /// Its before-entry, on-success and on-failure conditions.
    pub conditions: conditions::StageConditions,
}

impl StagePlan {
    /// Actions grouped by run order, lowest first; each group runs in parallel.
    pub fn groups(&self) -> Vec<Vec<&ActionPlan>> {
        let mut groups: BTreeMap<u32, Vec<&ActionPlan>> = BTreeMap::new();
        for action in &self.actions {
            groups.entry(action.run_order).or_default().push(action);
        }
        groups.into_values().collect()
    }
}

/// A validated action.
#[derive(Clone, Debug)]
pub struct ActionPlan {
    /// Action name, unique in the pipeline.
    pub name: String,
    /// Its stage's name.
    pub stage: String,
    /// Run order within the stage.
    pub run_order: u32,
    /// What runs: an installed plugin, or a host-native approval.
    pub kind: ActionKind,
    /// Input artifact names.
    pub inputs: Vec<String>,
    /// Output artifact names.
    pub outputs: Vec<String>,
    /// Namespace for its output variables.
    pub namespace: Option<String>,
    /// Configuration with references still unresolved.
    pub config: Vec<(String, String)>,
    /// Granted capabilities.
    pub grants: Grants,
    /// Resource limits (the timeout included).
    pub limits: Limits,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// What a restarted server does if this action was running.
    pub on_restart: OnRestart,
}

/// What an action runs.
#[derive(Clone, Debug)]
pub enum ActionKind {
    /// A sandboxed plugin.
    Plugin(Box<InstalledPlugin>),
    /// A manual approval, decided by people through the API (`plugin = "approval"`).
    Approval(ApprovalPolicy),
}

/// Who may decide a manual approval, and for how long it waits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApprovalPolicy {
    /// Least role that may approve or reject: `viewer`, `operator` or `admin`.
    pub approvers: String,
    /// How long it waits before failing the stage (default 7 days).
    pub timeout: Duration,
    /// What the approvers are asked.
    pub message: String,
}

/// The plugin name that selects a host-native manual approval.
pub const APPROVAL: &str = "approval";

impl ActionPlan {
    /// `name@version` of the plugin, or `approval`.
    pub fn provider(&self) -> String {
        match &self.kind {
            ActionKind::Plugin(plugin) => plugin.id(),
            ActionKind::Approval(_) => APPROVAL.to_string(),
        }
    }
}

/// What a restarted server does with an action that was running when it stopped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnRestart {
    /// Run it again (actions should be idempotent; most deploys are).
    #[default]
    Rerun,
    /// Fail it, and so its stage and execution: for actions that must not run twice.
    Fail,
}

/// A host directory granted to an action as a mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// Mount name: the guest sees it at `/mnt/<name>`.
    pub name: String,
    /// Directory on the host.
    pub host: PathBuf,
    /// Read-write (`rw`) or read-only (`ro`).
    pub writable: bool,
}

/// Capabilities granted to one action.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grants {
    /// Secret names.
    pub secrets: Vec<String>,
    /// Outbound HTTP host patterns.
    pub hosts: Vec<String>,
    /// Program names.
    pub commands: Vec<String>,
    /// Host environment variables native commands inherit.
    pub env: Vec<String>,
    /// Absolute host directories native commands may read and execute.
    pub toolchains: Vec<PathBuf>,
    /// Host directories, paths made absolute.
    pub mounts: Vec<Mount>,
    /// Names of the pipeline caches this action may use.
    pub caches: Vec<String>,
    /// Native commands keep the host's uid even when it is root.
    pub run_as_root: bool,
}

/// When to try a failed action again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, the first included (1 = no retry).
    pub attempts: u32,
    /// Wait before the second attempt; doubles each time after.
    pub backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 1,
            backoff: Duration::from_secs(1),
        }
    }
}

/// Most characters a pipeline name may have.
pub const MAX_NAME_CHARS: usize = 100;

/// Check a pipeline name: 1 to [`MAX_NAME_CHARS`] ASCII letters, digits, `-`,
/// `_` and `.`, and not `.` or `..`. A name becomes a URL path segment, a
/// directory name (its caches) and a metrics label, so nothing else may pass.
/// The error says what is wrong, quoting the name with controls escaped and
/// a long name shortened.
pub fn check_name(name: &str) -> Result<(), String> {
    let problem = if name.is_empty() {
        "the pipeline name is empty".to_string()
    } else if let Some(bad) = name.chars().find(|c| !is_name_char(*c)) {
        format!("pipeline name {} contains {bad:?}", quoted_name(name))
    } else if name.len() > MAX_NAME_CHARS {
        format!(
            "pipeline name {} is {} characters long",
            quoted_name(name),
            name.len()
        )
    } else if name == "." || name == ".." {
        format!("pipeline name `{name}` is not allowed")
    } else {
        return Ok(());
    };
    Err(format!(
        "{problem}; use 1 to {MAX_NAME_CHARS} ASCII letters, digits, `-`, `_` and `.` (not `.` or `..`)"
    ))
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// A name for an error message: controls escaped, at most 40 characters shown.
fn quoted_name(name: &str) -> String {
    const SHOWN: usize = 40;
    let escaped: String = name
        .chars()
        .take(SHOWN)
        .flat_map(char::escape_debug)
        .collect();
    match name.chars().count() > SHOWN {
        true => format!("`{escaped}…`"),
        false => format!("`{escaped}`"),
    }
}

/// Read, parse and validate a pipeline file against the installed plugins.
/// Relative host paths (mounts) are resolved against the file's directory.
pub fn load(path: &Path, registry: &Registry) -> Result<Plan, Diagnostics> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Diagnostics(vec![Diagnostic {
            file: path.to_path_buf(),
            line: 1,
            column: 1,
            message: format!("cannot read the pipeline file: {e}"),
        }])
    })?;
    let base_dir = path
        .canonicalize()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    parse(path, text, registry, &base_dir)
}

/// Parse and validate pipeline text; `file` names it in diagnostics and
/// relative host paths are resolved against `base_dir`.
pub fn parse(
    file: &Path,
    text: String,
    registry: &Registry,
    base_dir: &Path,
) -> Result<Plan, Diagnostics> {
    let source = SourceFile::new(file, text);
    let parsed: model::PipelineFile = toml::from_str(&source.text).map_err(|e| {
        let offset = e.span().map(|s| s.start).unwrap_or(0);
        Diagnostics(vec![source.at(offset, e.message().trim().to_string())])
    })?;
    let mut plan = validate::validate(&source, &parsed, registry, base_dir)?;
    plan.source = source.text.as_str().into();
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIPELINE: &str = r##"[pipeline]
name = "fuzz"
[variables]
v = { default = "x" }
[[stages]]
name = "A"
[[stages.actions]]
name = "a"
plugin = "command@0.1"
outputs = ["o"]
namespace = "n"
config = { run = "echo #{variables.v}", outputs = "o=**" }
grants = { commands = ["echo"], mounts = { m = { host = ".", mode = "rw" } } }
retry = { attempts = 2, backoff = "1s" }
limits = { memory = "64MiB" }
[[stages]]
name = "B"
[[stages.actions]]
name = "b"
plugin = "x"
inputs = ["o"]
config = { k = "#{n.key}" }
"##;

    /// A tiny deterministic generator, so failures reproduce.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self, bound: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % bound as u64) as usize
        }
    }

    fn mutate(text: &str, rng: &mut XorShift) -> String {
        const PIECES: [&str; 14] = [
            "[",
            "]",
            "{",
            "}",
            "=",
            "\"",
            "#{",
            "\n",
            ",",
            "@",
            "é",
            "0",
            "[[stages]]",
            ".",
        ];
        let mut chars: Vec<char> = text.chars().collect();
        for _ in 0..1 + rng.next(4) {
            let at = rng.next(chars.len() + 1);
            match rng.next(3) {
                0 if at < chars.len() => {
                    chars.remove(at);
                }
                _ => {
                    let piece = PIECES[rng.next(PIECES.len())];
                    for (i, c) in piece.chars().enumerate() {
                        chars.insert((at + i).min(chars.len()), c);
                    }
                }
            }
        }
        chars.into_iter().collect()
    }

    #[test]
    fn pipeline_names_are_short_plain_path_segments() {
        let longest = "x".repeat(MAX_NAME_CHARS);
        for good in ["a", "hello", "my-app_2.0", "..a", "a..", &longest] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        let long = "x".repeat(10_000);
        for (bad, why) in [
            ("", "is empty"),
            (".", "`.` is not allowed"),
            ("..", "`..` is not allowed"),
            ("../../etc/passwd", "contains '/'"),
            ("/", "contains '/'"),
            ("a\0b", r"contains '\0'"),
            ("my pipeline", "contains ' '"),
            ("café", "contains 'é'"),
            ("a\nb", r"`a\nb` contains '\n'"),
            (&long[..101], "is 101 characters long"),
            (&long, "is 10000 characters long"),
        ] {
            let error = check_name(bad).expect_err(bad);
            assert!(error.contains(why), "{bad:?}: {error}");
            assert!(error.len() < 300, "the name is shortened: {error}");
        }
    }

    #[test]
    fn mangled_pipelines_give_located_errors_never_panics() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(&dir.path().join("plugins")).unwrap();
        let file = dir.path().join("pipeline.toml");
        let mut rng = XorShift(0x5eed_1234_abcd);
        for _ in 0..3000 {
            let text = mutate(PIPELINE, &mut rng);
            std::fs::write(&file, &text).unwrap();
            let diagnostics = load(&file, &registry).expect_err("no plugin is installed");
            for d in &diagnostics.0 {
                assert!(
                    d.line >= 1 && d.line <= text.lines().count().max(1) + 1,
                    "{d} in\n{text}"
                );
                assert!(!d.message.is_empty());
            }
        }
    }
}
