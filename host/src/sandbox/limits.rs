//! Limits capability: memory, CPU time, wall-clock time, log volume, and the
//! quotas on what an action leaves behind (summary, variables, output files)
//! and on the handles it may hold open.
//!
//! Each limit that stops an action is reported by name ([`LimitHit`]), so a user
//! reads "memory limit of 64.0 MiB exceeded", not "wasm trap: unreachable".

use std::time::Duration;

use wasmtime::ResourceLimiter;

/// How long one epoch tick lasts. CPU budgets are counted in ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

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
/// cgroup can be made this default is not enforced (see [`super::memory`]).
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

/// Memory limiter that remembers whether it refused anything, so a later trap
/// (Rust guests abort when allocation fails) can be blamed on the limit.
pub struct MemoryLimiter {
    max_bytes: usize,
    /// Set once a memory growth was refused.
    pub hit: bool,
}

impl MemoryLimiter {
    /// A limiter allowing `max_bytes` per linear memory.
    pub fn new(max_bytes: u64) -> Self {
        Self {
            max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
            hit: false,
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; a million is far beyond real guests.
        Ok(desired <= 1_000_000)
    }
}

/// CPU budget counted in epoch ticks that elapse while WebAssembly runs.
pub struct CpuBudget {
    limit: Duration,
    remaining_ticks: u64,
    /// Set once the budget ran out.
    pub hit: bool,
}

impl CpuBudget {
    /// A budget of `limit` CPU time.
    pub fn new(limit: Duration) -> Self {
        let ticks = (limit.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64;
        Self {
            limit,
            remaining_ticks: ticks,
            hit: false,
        }
    }

    /// Spend one tick; `Err` once the budget is exhausted.
    pub fn spend_tick(&mut self) -> Result<(), LimitHit> {
        if self.remaining_ticks == 0 {
            self.hit = true;
            return Err(LimitHit::Cpu(self.limit));
        }
        self.remaining_ticks -= 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_growth_past_the_limit_is_refused_and_remembered() {
        let mut limiter = MemoryLimiter::new(1 << 20);
        assert!(limiter.memory_growing(0, 1 << 19, None).unwrap());
        assert!(!limiter.hit);
        assert!(!limiter.memory_growing(0, 2 << 20, None).unwrap());
        assert!(limiter.hit);
    }

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

    #[test]
    fn cpu_budget_runs_out_after_its_ticks() {
        let mut budget = CpuBudget::new(EPOCH_TICK * 3);
        for _ in 0..3 {
            budget.spend_tick().unwrap();
        }
        assert_eq!(budget.spend_tick(), Err(LimitHit::Cpu(EPOCH_TICK * 3)));
        assert!(budget.hit);
    }
}
