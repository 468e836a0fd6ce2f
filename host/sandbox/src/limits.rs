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

pub use sluice_core::pipeline::limits::{DEFAULT_COMMAND_MEMORY, LimitHit, Limits};

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
    fn cpu_budget_runs_out_after_its_ticks() {
        let mut budget = CpuBudget::new(EPOCH_TICK * 3);
        for _ in 0..3 {
            budget.spend_tick().unwrap();
        }
        assert_eq!(budget.spend_tick(), Err(LimitHit::Cpu(EPOCH_TICK * 3)));
        assert!(budget.hit);
    }
}
