//! What `run` returns: an [`Outcome`] or a [`Failure`].

use crate::bindings::sluice::action::types as wit;
use std::fmt;

/// A successful result: a one-line summary and output variables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// One line for people: what the action did.
    pub summary: String,
    /// Output variables, readable by later actions as `#{namespace.key}`.
    pub variables: Vec<(String, String)>,
    /// Set by [`Outcome::resume_later`]: call again with this token after the delay.
    pub continuation: Option<(String, std::time::Duration)>,
}

impl Outcome {
    /// An outcome with `summary` and no variables.
    pub fn new(summary: impl Into<String>) -> Self {
        Self {
            summary: summary.into(),
            variables: Vec::new(),
            continuation: None,
        }
    }

    /// Not done yet: ask Sluice to call `run` again after `delay` with
    /// [`Context::continuation`](crate::Context::continuation) = `token`. The
    /// summary is shown meanwhile; no sandbox is held while waiting.
    pub fn resume_later(mut self, token: impl Into<String>, delay: std::time::Duration) -> Self {
        self.continuation = Some((token.into(), delay));
        self
    }

    /// Add the output variable `key` (builder style).
    pub fn variable(mut self, key: impl Into<String>, value: impl ToString) -> Self {
        self.set_variable(key, value);
        self
    }

    /// Add or replace the output variable `key` in place.
    pub fn set_variable(&mut self, key: impl Into<String>, value: impl ToString) {
        let key = key.into();
        let value = value.to_string();
        // Replace rather than duplicate so the host never sees two values for a key.
        match self.variables.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.variables.push((key, value)),
        }
    }

    pub(crate) fn into_wit(self) -> wit::Outcome {
        if let Some((token, delay)) = &self.continuation {
            let millis = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
            crate::bindings::sluice::action::continuation::resume_later(token, millis);
        }
        wit::Outcome {
            summary: self.summary,
            variables: self.variables,
        }
    }
}

/// Why an action failed; mirrors the WIT `failure-kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The job itself failed: a build broke, a test failed.
    JobFailed,
    /// The configuration is missing or wrong; retrying will not help.
    ConfigurationError,
    /// A capability the action needs was not granted.
    PermissionError,
    /// A source revision could not be fetched.
    RevisionUnavailable,
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::JobFailed => "job-failed",
            Self::ConfigurationError => "configuration-error",
            Self::PermissionError => "permission-error",
            Self::RevisionUnavailable => "revision-unavailable",
        })
    }
}

/// A failed result: its kind and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What kind of failure this is.
    pub kind: FailureKind,
    /// What went wrong.
    pub message: String,
}

impl Failure {
    /// A failure of `kind` with `message`.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// The job itself failed (`job-failed`).
    pub fn job(message: impl Into<String>) -> Self {
        Self::new(FailureKind::JobFailed, message)
    }

    /// The configuration is missing or wrong (`configuration-error`).
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(FailureKind::ConfigurationError, message)
    }

    /// A needed capability was not granted (`permission-error`).
    pub fn permission(message: impl Into<String>) -> Self {
        Self::new(FailureKind::PermissionError, message)
    }

    /// A source revision could not be fetched (`revision-unavailable`).
    pub fn revision(message: impl Into<String>) -> Self {
        Self::new(FailureKind::RevisionUnavailable, message)
    }

    /// Prefix the message with what was being done, keeping the kind.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }

    #[doc(hidden)]
    pub fn into_wit(self) -> wit::Failure {
        let kind = match self.kind {
            FailureKind::JobFailed => wit::FailureKind::JobFailed,
            FailureKind::ConfigurationError => wit::FailureKind::ConfigurationError,
            FailureKind::PermissionError => wit::FailureKind::PermissionError,
            FailureKind::RevisionUnavailable => wit::FailureKind::RevisionUnavailable,
        };
        wit::Failure {
            kind,
            message: self.message,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for Failure {}

/// I/O errors inside the sandbox are the job's problem, so `?` on them gives
/// `job-failed`.
impl From<std::io::Error> for Failure {
    fn from(err: std::io::Error) -> Self {
        Self::job(err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_replace_existing_keys() {
        let o = Outcome::new("s")
            .variable("a", 1)
            .variable("b", "x")
            .variable("a", 2);
        assert_eq!(
            o.variables,
            vec![("a".into(), "2".into()), ("b".into(), "x".into())]
        );
    }

    #[test]
    fn io_errors_are_job_failures() {
        let f: Failure = std::io::Error::other("disk").into();
        assert_eq!(f.kind, FailureKind::JobFailed);
        assert_eq!(f.to_string(), "job-failed: disk");
    }
}

/// What a rule found (world `rule`): whether it passed, and why, for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the rule passed.
    pub passed: bool,
    /// What was found, recorded and shown with the result.
    pub detail: String,
}

impl Verdict {
    /// The rule passed.
    pub fn pass(detail: impl Into<String>) -> Self {
        Self {
            passed: true,
            detail: detail.into(),
        }
    }

    /// The rule did not pass.
    pub fn fail(detail: impl Into<String>) -> Self {
        Self {
            passed: false,
            detail: detail.into(),
        }
    }

    /// Convert to the WIT type.
    #[doc(hidden)]
    pub fn into_wit(self) -> wit::Verdict {
        wit::Verdict {
            passed: self.passed,
            detail: self.detail,
        }
    }
}
