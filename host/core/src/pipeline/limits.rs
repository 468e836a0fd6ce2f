//! The resource limits and quotas of an action, as a pipeline's `limits`
//! table sets them, and the error that names the one an action hit. Plain
//! data: the sandbox enforces them (`sluice_sandbox::limits`).

use std::time::Duration;

/// The largest linear memory any action may have (its `limits.memory` is capped here).
pub const MAX_MEMORY_BYTES: u64 = 1 << 30;

/// The resource limits of one action invocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Maximum linear memory of any one memory, in bytes.
    pub memory_bytes: u64,
    /// Maximum time spent executing WebAssembly (host calls do not count).
    pub cpu: Duration,
    /// Maximum wall-clock time of the whole invocation, host calls included.
    pub timeout: Duration,
    /// Maximum bytes of log text kept.
    pub log_bytes: u64,
    /// Maximum bytes of the summary an action returns.
    pub summary_bytes: u64,
    /// Maximum number of output variables.
    pub variables: u64,
    /// Maximum total bytes of output variables (names and values).
    pub variables_bytes: u64,
    /// Maximum number of entries (files, directories, links) across all outputs.
    pub output_files: u64,
    /// Maximum total bytes of the regular files across all outputs.
    pub output_bytes: u64,
    /// Maximum WASI handles (open files, directories, streams) held at once.
    pub open_files: u64,
    /// Memory limit of each native command and everything it starts, if the
    /// action set one; [`DEFAULT_COMMAND_MEMORY`] otherwise.
    pub command_memory: Option<u64>,
}

/// `limits.command-memory` when an action sets none: room for a parallel
/// `cargo build` or webpack, not for a fork bomb of allocations. Where no
/// cgroup can be made this default is not enforced (see the sandbox's `memory` module).
pub const DEFAULT_COMMAND_MEMORY: u64 = 8 << 30;

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 256 << 20,
            cpu: Duration::from_secs(600),
            timeout: Duration::from_secs(600),
            log_bytes: 4 << 20,
            summary_bytes: 64 << 10,
            variables: 1000,
            variables_bytes: 1 << 20,
            output_files: 100_000,
            output_bytes: 10 << 30,
            open_files: 1024,
            command_memory: None,
        }
    }
}

impl Limits {
    /// Refuse a summary or a set of variables larger than the limits allow.
    pub fn check_outcome(
        &self,
        summary: &str,
        variables: &[(String, String)],
    ) -> Result<(), LimitHit> {
        let bytes = crate::units::format_bytes;
        if summary.len() as u64 > self.summary_bytes {
            return Err(LimitHit::quota(
                "summary",
                bytes(self.summary_bytes),
                format!("the summary is {}", bytes(summary.len() as u64)),
            ));
        }
        if variables.len() as u64 > self.variables {
            return Err(LimitHit::quota(
                "variables",
                self.variables.to_string(),
                format!("the action set {} output variables", variables.len()),
            ));
        }
        let total: u64 = variables
            .iter()
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum();
        if total > self.variables_bytes {
            return Err(LimitHit::quota(
                "variables-size",
                bytes(self.variables_bytes),
                format!("the output variables take {}", bytes(total)),
            ));
        }
        Ok(())
    }
}

/// A limit that stopped an action.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitHit {
    /// The guest tried to grow memory past its limit.
    #[error("memory limit of {} exceeded", crate::units::format_bytes(*.0))]
    Memory(u64),
    /// The guest executed WebAssembly for longer than its CPU budget.
    #[error("CPU time limit of {} exceeded", humantime::format_duration(*.0))]
    Cpu(Duration),
    /// The invocation took longer than its wall-clock timeout.
    #[error("timeout of {} exceeded", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// A quota on what the action produced or held (summary, variables,
    /// output files, open handles), named as in the `limits` table.
    #[error("limit {name} ({limit}) exceeded: {detail}")]
    Quota {
        /// The key in `limits`, e.g. `summary`.
        name: &'static str,
        /// The limit, as a person reads it (`64.0 KiB`, `1000`).
        limit: String,
        /// What the action did.
        detail: String,
    },
}

impl LimitHit {
    /// A quota named `name` with `limit`, exceeded as `detail` says.
    pub fn quota(name: &'static str, limit: String, detail: String) -> Self {
        LimitHit::Quota {
            name,
            limit,
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_summaries_and_variables_are_named() {
        let limits = Limits {
            summary_bytes: 4,
            variables: 2,
            variables_bytes: 10,
            ..Limits::default()
        };
        let vars = |n: usize, size: usize| -> Vec<(String, String)> {
            (0..n).map(|i| (i.to_string(), "v".repeat(size))).collect()
        };
        assert!(limits.check_outcome("1234", &vars(2, 4)).is_ok());
        let hit = limits.check_outcome("12345", &[]).unwrap_err();
        assert_eq!(
            hit.to_string(),
            "limit summary (4 B) exceeded: the summary is 5 B"
        );
        let hit = limits.check_outcome("", &vars(3, 0)).unwrap_err();
        assert!(hit.to_string().starts_with("limit variables (2) exceeded"));
        let hit = limits.check_outcome("", &vars(2, 5)).unwrap_err();
        assert!(hit.to_string().starts_with("limit variables-size (10 B)"));
    }
}
