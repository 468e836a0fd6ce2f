//! [`Context`]: what the action was told, and its window onto the host.

use crate::bindings::sluice::action::{log, secrets};
use crate::{Command, Failure};
use std::path::PathBuf;

/// Everything an action knows about its invocation, plus logging, secrets and
/// commands.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pipeline: String,
    stage: String,
    action: String,
    execution_id: String,
    attempt: u32,
    config: Vec<(String, String)>,
    inputs: Vec<String>,
    outputs: Vec<String>,
    mounts: Vec<String>,
    continuation: Option<String>,
}

impl Context {
    /// Build a context from the WIT invocation record.
    #[doc(hidden)]
    pub fn from_invocation(inv: crate::bindings::Invocation) -> Self {
        Self {
            pipeline: inv.pipeline,
            stage: inv.stage,
            action: inv.action,
            execution_id: inv.execution_id,
            attempt: inv.attempt,
            config: inv.config,
            inputs: inv.inputs,
            outputs: inv.outputs,
            mounts: inv.mounts,
            continuation: inv.continuation,
        }
    }

    /// A context that holds only a configuration (a rule's `evaluate`).
    #[doc(hidden)]
    pub fn from_config(config: Vec<(String, String)>) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// The token a previous round passed to [`Outcome::resume_later`](crate::Outcome::resume_later);
    /// `None` on the first call.
    pub fn continuation(&self) -> Option<&str> {
        self.continuation.as_deref()
    }

    /// Name of the pipeline.
    pub fn pipeline(&self) -> &str {
        &self.pipeline
    }

    /// Name of the stage that holds this action.
    pub fn stage(&self) -> &str {
        &self.stage
    }

    /// Name of this action in the pipeline.
    pub fn action(&self) -> &str {
        &self.action
    }

    /// Unique id of the pipeline execution.
    pub fn execution_id(&self) -> &str {
        &self.execution_id
    }

    /// Which attempt this is, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The resolved configuration value for `key`, if set.
    pub fn config(&self, key: &str) -> Option<&str> {
        // The last entry wins, as when a later line of a file overrides an earlier one.
        self.config
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// All configuration entries, in the order the pipeline file wrote them.
    pub fn config_entries(&self) -> &[(String, String)] {
        &self.config
    }

    /// The value for `key`, or a `configuration-error` naming the key.
    pub fn require(&self, key: &str) -> Result<&str, Failure> {
        match self.config(key) {
            Some(v) if !v.trim().is_empty() => Ok(v),
            _ => Err(Failure::config(format!(
                "missing required configuration `{key}`"
            ))),
        }
    }

    /// The value for `key`, or `default` when unset.
    pub fn config_or<'a>(&'a self, key: &str, default: &'a str) -> &'a str {
        self.config(key).unwrap_or(default)
    }

    /// `key` as an unsigned integer, or `default` when unset.
    pub fn config_u64(&self, key: &str, default: u64) -> Result<u64, Failure> {
        match self.config(key).map(str::trim) {
            None | Some("") => Ok(default),
            Some(v) => v.parse().map_err(|_| {
                Failure::config(format!(
                    "configuration `{key}` must be a non-negative integer, got `{v}`"
                ))
            }),
        }
    }

    /// `key` as a boolean (`true/false`, `yes/no`, `1/0`, `on/off`), or `default`.
    pub fn config_bool(&self, key: &str, default: bool) -> Result<bool, Failure> {
        match self
            .config(key)
            .map(|v| v.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("") => Ok(default),
            Some("true" | "yes" | "1" | "on") => Ok(true),
            Some("false" | "no" | "0" | "off") => Ok(false),
            Some(v) => Err(Failure::config(format!(
                "configuration `{key}` must be true or false, got `{v}`"
            ))),
        }
    }

    /// Input artifact names; each is at [`Context::input_dir`].
    pub fn inputs(&self) -> &[String] {
        &self.inputs
    }

    /// Output artifact names; each is at [`Context::output_dir`].
    pub fn outputs(&self) -> &[String] {
        &self.outputs
    }

    /// Granted host mounts; each is at [`Context::mount_dir`].
    pub fn mounts(&self) -> &[String] {
        &self.mounts
    }

    /// `/in/<name>`: an input artifact, read-only.
    pub fn input_dir(&self, name: &str) -> PathBuf {
        PathBuf::from("/in").join(name)
    }

    /// `/out/<name>`: an output artifact, initially empty.
    pub fn output_dir(&self, name: &str) -> PathBuf {
        PathBuf::from("/out").join(name)
    }

    /// `/mnt/<name>`: a granted host directory.
    pub fn mount_dir(&self, name: &str) -> PathBuf {
        PathBuf::from("/mnt").join(name)
    }

    /// `/workspace`: writable scratch space, where native commands run.
    pub fn workspace(&self) -> PathBuf {
        PathBuf::from("/workspace")
    }

    /// The granted secret `name`, or a `permission-error`.
    ///
    /// Asking for a secret that was not granted fails the action even if the error
    /// is handled, so only ask for secrets the configuration names.
    pub fn secret(&self, name: &str) -> Result<String, Failure> {
        secrets::get(name).map_err(Failure::permission)
    }

    /// Log at trace level.
    pub fn trace(&self, msg: impl AsRef<str>) {
        log::write(log::Level::Trace, msg.as_ref());
    }

    /// Log at debug level.
    pub fn debug(&self, msg: impl AsRef<str>) {
        log::write(log::Level::Debug, msg.as_ref());
    }

    /// Log at info level.
    pub fn info(&self, msg: impl AsRef<str>) {
        log::write(log::Level::Info, msg.as_ref());
    }

    /// Log at warn level.
    pub fn warn(&self, msg: impl AsRef<str>) {
        log::write(log::Level::Warn, msg.as_ref());
    }

    /// Log at error level.
    pub fn error(&self, msg: impl AsRef<str>) {
        log::write(log::Level::Error, msg.as_ref());
    }

    /// Report progress (`pct` is clamped to 100) with a short message.
    pub fn progress(&self, pct: u8, msg: impl AsRef<str>) {
        log::progress(pct.min(100), msg.as_ref());
    }

    /// Start building a native command running `program` (which must be granted).
    pub fn command(&self, program: impl Into<String>) -> Command {
        Command::new(program)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FailureKind;

    fn ctx(config: &[(&str, &str)]) -> Context {
        Context {
            config: config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Context::default()
        }
    }

    #[test]
    fn typed_config() {
        let c = ctx(&[("n", "7"), ("b", "yes"), ("bad", "x"), ("n", "8")]);
        assert_eq!(c.config_u64("n", 1), Ok(8));
        assert_eq!(c.config_u64("missing", 1), Ok(1));
        assert_eq!(c.config_bool("b", false), Ok(true));
        assert_eq!(
            c.config_bool("bad", false).unwrap_err().kind,
            FailureKind::ConfigurationError
        );
        assert_eq!(c.config_or("missing", "d"), "d");
        let err = c.require("missing").unwrap_err();
        assert!(err.message.contains("`missing`"));
    }

    #[test]
    fn sandbox_paths() {
        let c = ctx(&[]);
        assert_eq!(c.input_dir("src"), PathBuf::from("/in/src"));
        assert_eq!(c.output_dir("dist"), PathBuf::from("/out/dist"));
        assert_eq!(c.mount_dir("repo"), PathBuf::from("/mnt/repo"));
        assert_eq!(c.workspace(), PathBuf::from("/workspace"));
    }
}
