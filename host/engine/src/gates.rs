//! Stage gates: where executions wait at a stage boundary.
//!
//! A gate enforces the pipeline's execution mode (CodePipeline's semantics):
//! - `queued`: one execution in the stage at a time, the others wait in arrival
//!   order;
//! - `superseded`: one at a time, and a newer execution arriving at the boundary
//!   replaces an older one still waiting there (the older ends as Superseded);
//! - `parallel`: no waiting.
//!
//! A disabled transition into the stage holds every execution at the boundary
//! until it is enabled again, in every mode.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use sluice_core::pipeline::ExecutionMode;

/// All gates of this process, by (pipeline, stage).
#[derive(Default)]
pub struct StageGates {
    gates: Mutex<HashMap<(String, String), Arc<Gate>>>,
}

impl StageGates {
    /// The gate into `stage` of `pipeline` (created on first use).
    pub fn gate(&self, pipeline: &str, stage: &str, mode: ExecutionMode) -> Arc<Gate> {
        let mut gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        let gate = gates
            .entry((pipeline.to_string(), stage.to_string()))
            .or_insert_with(|| Arc::new(Gate::default()));
        gate.set_mode(mode);
        gate.clone()
    }

    /// Executions waiting at any gate of `pipeline`.
    pub fn waiting(&self, pipeline: &str) -> usize {
        let gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        gates
            .iter()
            .filter(|((p, _), _)| p == pipeline)
            .map(|(_, g)| g.waiting())
            .sum()
    }
}

#[derive(Default)]
struct GateState {
    mode: ExecutionMode,
    running: usize,
    waiting: VecDeque<String>,
    superseded: Vec<String>,
    disabled: Option<String>,
}

/// One stage boundary.
#[derive(Default)]
pub struct Gate {
    state: Mutex<GateState>,
    changed: Notify,
}

/// How waiting at a gate ended.
pub enum Entry {
    /// The execution is in the stage until the pass is dropped.
    Entered(GatePass),
    /// A newer execution replaced this one while it waited.
    Superseded,
}

/// Holds a place in a stage; leaving the stage is dropping it.
pub struct GatePass(Arc<Gate>);

impl Drop for GatePass {
    fn drop(&mut self) {
        self.0.lock().running -= 1;
        self.0.changed.notify_waiters();
    }
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_mode(&self, mode: ExecutionMode) {
        self.lock().mode = mode;
    }

    /// Executions waiting here.
    pub fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }

    /// Enable (None) or disable (Some(reason)) the transition into this stage.
    pub fn set_disabled(&self, reason: Option<String>) {
        self.lock().disabled = reason;
        self.changed.notify_waiters();
    }

    /// Wait until execution `id` may enter the stage.
    pub async fn enter(self: &Arc<Self>, id: &str) -> Entry {
        self.join(id);
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(entry) = self.try_enter(id) {
                return entry;
            }
            notified.await;
        }
    }

    /// Take a place in line without waiting yet. The executor joins the first
    /// stage's gate when an execution is started, so executions queue in the
    /// order they were started, not in the order their tasks happen to run.
    /// Joining again (or after being superseded) changes nothing.
    pub fn join(&self, id: &str) {
        {
            let mut state = self.lock();
            let known = state
                .waiting
                .iter()
                .chain(&state.superseded)
                .any(|w| w == id);
            if known {
                return;
            }
            if state.mode == ExecutionMode::Superseded {
                let older: Vec<String> = state.waiting.drain(..).collect();
                state.superseded.extend(older);
            }
            state.waiting.push_back(id.to_string());
        }
        self.changed.notify_waiters();
    }

    /// Leave the queue without entering (the execution was stopped while
    /// waiting, or ended before it reached the gate). Idempotent.
    pub fn withdraw(&self, id: &str) {
        let mut state = self.lock();
        state.waiting.retain(|w| w != id);
        state.superseded.retain(|w| w != id);
        drop(state);
        self.changed.notify_waiters();
    }

    fn try_enter(self: &Arc<Self>, id: &str) -> Option<Entry> {
        let mut state = self.lock();
        if let Some(position) = state.superseded.iter().position(|s| s == id) {
            state.superseded.remove(position);
            return Some(Entry::Superseded);
        }
        let first_in_line = state.waiting.front().map(String::as_str) == Some(id);
        let free = match state.mode {
            ExecutionMode::Parallel => true,
            ExecutionMode::Queued | ExecutionMode::Superseded => {
                state.running == 0 && first_in_line
            }
        };
        if state.disabled.is_some() || !free {
            return None;
        }
        state.waiting.retain(|w| w != id);
        state.running += 1;
        Some(Entry::Entered(GatePass(self.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    #[tokio::test]
    async fn queued_executions_enter_in_the_order_they_joined_not_called_enter() {
        let gates = StageGates::default();
        let gate = gates.gate("p", "s", ExecutionMode::Queued);
        for id in ["a", "b", "c"] {
            gate.join(id);
        }
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // Their tasks reach `enter` in reverse order, as under load they may.
        for id in ["c", "b", "a"] {
            let (gate, order) = (gate.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let Entry::Entered(pass) = gate.enter(id).await else {
                    panic!("{id} should enter")
                };
                order.lock().unwrap().push(id);
                settle().await;
                drop(pass);
            }));
            settle().await;
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["a", "b", "c"]);
    }

    #[tokio::test]
    async fn superseded_replaces_the_older_waiting_execution() {
        let gates = StageGates::default();
        let gate = gates.gate("p", "s", ExecutionMode::Superseded);
        let Entry::Entered(first) = gate.enter("a").await else {
            panic!("a should enter")
        };
        let (g2, g3) = (gate.clone(), gate.clone());
        let b = tokio::spawn(async move { matches!(g2.enter("b").await, Entry::Superseded) });
        settle().await;
        let c = tokio::spawn(async move { matches!(g3.enter("c").await, Entry::Entered(_)) });
        settle().await;
        assert!(b.await.unwrap(), "b was superseded by c");
        drop(first);
        assert!(c.await.unwrap(), "c entered once a left");
    }

    #[tokio::test]
    async fn queued_admits_in_arrival_order_and_disabled_holds_everyone() {
        let gates = StageGates::default();
        let gate = gates.gate("p", "s", ExecutionMode::Queued);
        gate.set_disabled(Some("freeze".into()));
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for id in ["a", "b", "c"] {
            let (gate, order) = (gate.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                if let Entry::Entered(pass) = gate.enter(id).await {
                    order.lock().unwrap().push(id);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    drop(pass);
                }
            }));
            settle().await;
        }
        assert!(
            order.lock().unwrap().is_empty(),
            "a disabled transition holds everyone"
        );
        assert_eq!(gates.waiting("p"), 3);
        gate.set_disabled(None);
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["a", "b", "c"]);
    }
}
