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
//!
//! The line and who is inside live in the state store ([`GateStore`]), so the
//! modes and `queue-depth` hold across every server on one database. This
//! process is woken at once by changes made here and, on PostgreSQL, by a
//! place another process gave up or superseded (the store's signals); it
//! also looks again every [`LOOK_AGAIN`]. A parallel stage whose transition
//! is enabled costs no store call.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use sluice_core::pipeline::ExecutionMode;
use sluice_store::off_workers;
use sluice_store::state::{GateTry, Store};

/// How often an execution waiting at a gate looks at the store again, besides
/// the wake-ups (a transition enabled through another server, a lost
/// notification).
pub const LOOK_AGAIN: Duration = Duration::from_millis(250);

/// The gates of every pipeline, over the state store.
pub struct StageGates {
    store: Arc<dyn Store>,
    /// Disabled transitions, by (pipeline, stage): the reason.
    disabled: Mutex<HashMap<(String, String), String>>,
    /// Places this process took in line at parallel gates (only a disabled
    /// transition makes one), by (pipeline, stage, execution): given up on
    /// entering, so a parallel stage whose transition is enabled costs no
    /// store call.
    parallel_places: Mutex<HashSet<(String, String, String)>>,
    changed: Notify,
}

/// How waiting at a gate ended.
pub enum Entry {
    /// The execution is in the stage until the stage's end is recorded
    /// (which gives its place up in the same transaction).
    Entered,
    /// A newer execution replaced this one while it waited.
    Superseded,
}

/// The gate into one stage of one pipeline.
pub struct Gate<'a> {
    gates: &'a StageGates,
    pipeline: &'a str,
    stage: &'a str,
    mode: ExecutionMode,
}

impl StageGates {
    /// Gates over `store`, every transition enabled.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            disabled: Mutex::default(),
            parallel_places: Mutex::default(),
            changed: Notify::new(),
        }
    }

    /// The gate into `stage` of `pipeline`, under `mode`.
    pub fn gate<'a>(&'a self, pipeline: &'a str, stage: &'a str, mode: ExecutionMode) -> Gate<'a> {
        Gate {
            gates: self,
            pipeline,
            stage,
            mode,
        }
    }

    /// Executions waiting at any gate of `pipeline`, in every process.
    pub fn waiting(&self, pipeline: &str) -> anyhow::Result<usize> {
        self.store.gate_waiting(pipeline)
    }

    /// Enable (None) or disable (Some(reason)) the transition into `stage`.
    pub fn set_disabled(&self, pipeline: &str, stage: &str, reason: Option<String>) {
        let key = (pipeline.to_string(), stage.to_string());
        let mut disabled = self.disabled.lock().unwrap_or_else(|e| e.into_inner());
        match reason {
            Some(reason) => disabled.insert(key, reason),
            None => disabled.remove(&key),
        };
        drop(disabled);
        self.changed.notify_waiters();
    }

    /// Make the disabled transitions exactly `all` (pipeline, stage, reason),
    /// as the store holds them: another server may have changed them.
    pub fn set_all_disabled(&self, all: Vec<(String, String, String)>) {
        let all: HashMap<_, _> = all.into_iter().map(|(p, s, r)| ((p, s), r)).collect();
        let mut disabled = self.disabled.lock().unwrap_or_else(|e| e.into_inner());
        if *disabled != all {
            *disabled = all;
            drop(disabled);
            self.changed.notify_waiters();
        }
    }

    /// Something at a gate changed in this process (a stage or an execution
    /// ended): wake the executions waiting here.
    pub fn changed(&self) {
        self.changed.notify_waiters();
    }

    fn is_disabled(&self, pipeline: &str, stage: &str) -> bool {
        let disabled = self.disabled.lock().unwrap_or_else(|e| e.into_inner());
        disabled.contains_key(&(pipeline.to_string(), stage.to_string()))
    }
}

impl Gate<'_> {
    fn one_at_a_time(&self) -> bool {
        self.mode != ExecutionMode::Parallel
    }

    fn place(&self, id: &str) -> (String, String, String) {
        (self.pipeline.into(), self.stage.into(), id.into())
    }

    fn parallel_places(&self) -> std::sync::MutexGuard<'_, HashSet<(String, String, String)>> {
        (self.gates.parallel_places)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Whether entering needs a place in line in the store.
    fn keeps_a_line(&self) -> bool {
        self.one_at_a_time() || self.gates.is_disabled(self.pipeline, self.stage)
    }

    /// Take a place in line without waiting yet. The executor joins the first
    /// stage's gate when an execution is started, so executions queue in the
    /// order they were started, not in the order their tasks happen to run.
    /// Joining again (or after being superseded) changes nothing.
    pub fn join(&self, id: &str) -> anyhow::Result<()> {
        if !self.keeps_a_line() {
            return Ok(());
        }
        let supersede = self.mode == ExecutionMode::Superseded;
        (self.gates.store).join_gate(self.pipeline, self.stage, id, supersede)?;
        self.joined(id);
        Ok(())
    }

    /// [`Gate::join`], with the store's part on the blocking pool.
    async fn join_off_workers(&self, id: &str) -> anyhow::Result<()> {
        if !self.keeps_a_line() {
            return Ok(());
        }
        let supersede = self.mode == ExecutionMode::Superseded;
        let (store, place) = (self.gates.store.clone(), self.place(id));
        off_workers(move || store.join_gate(&place.0, &place.1, &place.2, supersede)).await?;
        self.joined(id);
        Ok(())
    }

    /// Note a place taken in the store's line.
    fn joined(&self, id: &str) {
        if !self.one_at_a_time() {
            self.parallel_places().insert(self.place(id));
        }
        self.gates.changed();
    }

    /// Wait until execution `id` may enter the stage. `on_wait` is told why,
    /// once, when it has to wait.
    pub async fn enter(&self, id: &str, on_wait: impl FnOnce(String)) -> anyhow::Result<Entry> {
        self.join_off_workers(id).await?;
        let mut on_wait = Some(on_wait);
        let signals = self.gates.store.signals();
        loop {
            // Registered before looking: a change in between still wakes us.
            let here = self.gates.changed.notified();
            let elsewhere = signals.gates().notified();
            tokio::pin!(here, elsewhere);
            here.as_mut().enable();
            elsewhere.as_mut().enable();
            if let Some(entry) = self.try_enter(id).await? {
                return Ok(entry);
            }
            if let Some(tell) = on_wait.take() {
                tell(self.why_waiting());
            }
            tokio::select! {
                () = here => {}
                () = elsewhere => {}
                () = tokio::time::sleep(LOOK_AGAIN) => {}
            }
        }
    }

    fn why_waiting(&self) -> String {
        let disabled = self
            .gates
            .disabled
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let key = (self.pipeline.to_string(), self.stage.to_string());
        match disabled.get(&key) {
            Some(reason) => format!("the transition is disabled: {reason}"),
            None => format!(
                "execution mode {}: another execution is in the stage or ahead in line",
                serde_json::to_value(self.mode)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            ),
        }
    }

    async fn try_enter(&self, id: &str) -> anyhow::Result<Option<Entry>> {
        if self.gates.is_disabled(self.pipeline, self.stage) {
            // Came to a parallel gate while it was enabled: take a place now,
            // to be counted in `queue-depth` (once: joining wakes waiters).
            let counted = self.parallel_places().contains(&self.place(id));
            if !self.one_at_a_time() && !counted {
                self.join_off_workers(id).await?;
            }
            return Ok(None);
        }
        if !self.one_at_a_time() {
            // A place taken while the transition was disabled is given up.
            if self.parallel_places().remove(&self.place(id)) {
                self.withdraw(id)?;
            }
            return Ok(Some(Entry::Entered));
        }
        let (store, place, alone) = (
            self.gates.store.clone(),
            self.place(id),
            self.one_at_a_time(),
        );
        let tried =
            off_workers(move || store.try_enter_gate(&place.0, &place.1, &place.2, alone)).await?;
        Ok(match tried {
            GateTry::Entered => Some(Entry::Entered),
            GateTry::Superseded => Some(Entry::Superseded),
            GateTry::Wait => None,
        })
    }

    /// Leave the line without entering (the execution was stopped while
    /// waiting). Idempotent.
    pub fn withdraw(&self, id: &str) -> anyhow::Result<()> {
        self.parallel_places().remove(&self.place(id));
        (self.gates.store).leave_gate_line(self.pipeline, self.stage, id)?;
        self.gates.changed();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::Duration;

    use sluice_store::state::{SqliteStore, Status};

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Arc<dyn Store>,
        gates: Arc<StageGates>,
    }

    impl Fixture {
        fn new(ids: &[&str]) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let store: Arc<dyn Store> =
                Arc::new(SqliteStore::open(&dir.path().join("state.db")).unwrap());
            let none = serde_json::json!({});
            for (i, id) in ids.iter().enumerate() {
                (store.start_execution(id, "p", Path::new("p.toml"), &none, &none, i as i64))
                    .unwrap();
            }
            let gates = Arc::new(StageGates::new(store.clone()));
            Self {
                _dir: dir,
                store,
                gates,
            }
        }

        /// Leave the stage as the executor does: record its end, then wake.
        fn leave(&self, id: &str) {
            (self.store)
                .finish_stage(id, "s", Status::Succeeded, None, 1, None)
                .unwrap();
            self.gates.changed();
        }

        fn enter_on_a_task(
            &self,
            id: &'static str,
            mode: ExecutionMode,
        ) -> tokio::task::JoinHandle<bool> {
            let gates = self.gates.clone();
            tokio::spawn(async move {
                let entry = gates.gate("p", "s", mode).enter(id, drop).await.unwrap();
                matches!(entry, Entry::Entered)
            })
        }
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(30)).await;
    }

    #[tokio::test]
    async fn queued_executions_enter_in_the_order_they_joined_not_called_enter() {
        let fixture = Fixture::new(&["a", "b", "c"]);
        let gate = fixture.gates.gate("p", "s", ExecutionMode::Queued);
        for id in ["a", "b", "c"] {
            gate.join(id).unwrap();
        }
        // Their tasks reach `enter` in reverse order, as under load they may.
        let tasks: Vec<_> = ["c", "b", "a"]
            .into_iter()
            .map(|id| (id, fixture.enter_on_a_task(id, ExecutionMode::Queued)))
            .collect();
        let mut order = Vec::new();
        for _ in 0..3 {
            settle().await;
            let inside: Vec<_> = tasks.iter().filter(|(_, t)| t.is_finished()).collect();
            assert_eq!(inside.len(), order.len() + 1, "one at a time");
            let newest = inside
                .iter()
                .map(|(id, _)| *id)
                .find(|id| !order.contains(id));
            order.push(newest.unwrap());
            fixture.leave(order.last().unwrap());
        }
        assert_eq!(order, ["a", "b", "c"]);
    }

    #[tokio::test]
    async fn superseded_replaces_the_older_waiting_execution() {
        let fixture = Fixture::new(&["a", "b", "c"]);
        let first = fixture.enter_on_a_task("a", ExecutionMode::Superseded);
        assert!(first.await.unwrap(), "a enters an empty stage");
        let b = fixture.enter_on_a_task("b", ExecutionMode::Superseded);
        settle().await;
        let c = fixture.enter_on_a_task("c", ExecutionMode::Superseded);
        settle().await;
        assert!(!b.await.unwrap(), "b was superseded by c");
        assert!(!c.is_finished(), "a is still inside");
        fixture.leave("a");
        assert!(c.await.unwrap(), "c entered once a left");
    }

    #[tokio::test]
    async fn a_disabled_transition_holds_everyone_and_counts_them_in_every_mode() {
        let fixture = Fixture::new(&["a", "b", "c"]);
        fixture.gates.set_disabled("p", "s", Some("freeze".into()));
        let tasks: Vec<_> = ["a", "b", "c"]
            .into_iter()
            .map(|id| fixture.enter_on_a_task(id, ExecutionMode::Parallel))
            .collect();
        settle().await;
        assert!(tasks.iter().all(|t| !t.is_finished()), "all held");
        assert_eq!(fixture.gates.waiting("p").unwrap(), 3);
        // Another server enabled it: this one learns through the store's list.
        fixture.gates.set_all_disabled(Vec::new());
        for task in tasks {
            assert!(task.await.unwrap());
        }
        assert_eq!(fixture.gates.waiting("p").unwrap(), 0);
    }

    #[tokio::test]
    async fn a_place_freed_by_another_process_is_found_without_a_wake_up() {
        let fixture = Fixture::new(&["a", "b"]);
        let gate = fixture.gates.gate("p", "s", ExecutionMode::Queued);
        assert!(matches!(
            gate.enter("a", drop).await.unwrap(),
            Entry::Entered
        ));
        let b = fixture.enter_on_a_task("b", ExecutionMode::Queued);
        settle().await;
        assert!(!b.is_finished());
        // As another process would: the store changes, nobody here is told.
        (fixture.store)
            .finish_stage("a", "s", Status::Succeeded, None, 1, None)
            .unwrap();
        assert!(b.await.unwrap(), "b looked again and entered");
    }
}
