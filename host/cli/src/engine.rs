//! The server's [`Engine`], in this process: the executor running actions in
//! the local sandbox. `sluice serve` hands it to the server, which sees only
//! the trait (so `sluice-server` builds without wasmtime).

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use sluice_api::StopMode;
use sluice_core::metrics::Histogram;
use sluice_core::pipeline::Plan;
use sluice_core::pipeline::conditions::When;
use sluice_engine::executor::{self, Executor, Started};
use sluice_server::{Begun, Engine, Reopened};
use sluice_store::artifact::ArtifactStore;
use sluice_store::state::{EventRecord, ExecutionRecord, Status};

/// The executor of this process, behind the server's [`Engine`] trait.
pub struct LocalEngine(pub Arc<Executor>);

impl LocalEngine {
    /// The begun execution, with the future that runs it to its end.
    fn begun(&self, started: Started) -> Begun {
        let executor = self.0.clone();
        Begun {
            id: started.id().to_string(),
            run: async move { executor.complete(started).await.map(|r| r.rollback) }.boxed(),
        }
    }
}

impl Engine for LocalEngine {
    fn begin(
        &self,
        plan: Arc<Plan>,
        overrides: &BTreeMap<String, String>,
        trigger: BTreeMap<String, String>,
    ) -> anyhow::Result<Begun> {
        let started = self.0.begin_triggered(plan, overrides, trigger)?;
        Ok(self.begun(started))
    }

    fn reopen(&self, plan: Arc<Plan>, id: &str) -> anyhow::Result<Reopened> {
        Ok(match self.0.reopen(plan, id)? {
            executor::Reopened::Resume(started) => Reopened::Resume(self.begun(started)),
            executor::Reopened::Failed(reason) => Reopened::Failed(reason),
        })
    }

    fn reopen_for_retry(
        &self,
        plan: Arc<Plan>,
        id: &str,
        stage: &str,
        all: bool,
        overriding: Option<(When, &str)>,
    ) -> anyhow::Result<Begun> {
        let overriding = overriding.map(|(condition, by)| executor::Overriding { condition, by });
        let started = self.0.reopen_for_retry(plan, id, stage, all, overriding)?;
        Ok(self.begun(started))
    }

    fn begin_rollback(
        &self,
        plan: Arc<Plan>,
        target: &str,
        stage: &str,
        asked_by: Option<&str>,
    ) -> anyhow::Result<Option<Begun>> {
        let started = self.0.begin_rollback(plan, target, stage, asked_by)?;
        Ok(started.map(|started| self.begun(started)))
    }

    fn rollback_refusal(
        &self,
        plan: &Plan,
        stage: &str,
        target: &ExecutionRecord,
        stage_status: Option<Status>,
        current_version: i64,
    ) -> Option<String> {
        let position = plan.stages.iter().position(|s| s.name == stage)?;
        executor::machine::rollback_refusal(position, stage, target, stage_status, current_version)
    }

    fn stop(&self, id: &str, mode: StopMode, reason: &str) -> anyhow::Result<bool> {
        let mode = match mode {
            StopMode::Finish => executor::StopMode::Finish,
            StopMode::Abandon => executor::StopMode::Abandon,
        };
        self.0.stop(id, mode, reason)
    }

    fn running_executions(&self) -> usize {
        self.0.running_executions()
    }

    fn waiting(&self, pipeline: &str) -> anyhow::Result<usize> {
        self.0.gates().waiting(pipeline)
    }

    fn set_transition(&self, pipeline: &str, stage: &str, disabled: Option<String>) {
        self.0.gates().set_disabled(pipeline, stage, disabled);
    }

    fn sync_transitions(&self, all: Vec<(String, String, String)>) {
        self.0.gates().set_all_disabled(all);
    }

    fn approvals_changed(&self) {
        self.0.approvals_changed()
    }

    fn subscribe_events(&self) -> tokio::sync::broadcast::Receiver<EventRecord> {
        self.0.subscribe_events()
    }

    fn poll<'a>(
        &'a self,
        plan: Arc<Plan>,
        action: &'a str,
        last: Option<String>,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        self.0.poll(plan, action, last).boxed()
    }

    fn notify<'a>(
        &'a self,
        plan: Arc<Plan>,
        event: &'a EventRecord,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        self.0.notify(plan, event).boxed()
    }

    fn running_ids(&self) -> Vec<String> {
        self.0.running_ids()
    }

    fn let_go(&self, id: &str, reason: &str) -> bool {
        self.0.let_go(id, reason)
    }

    fn artifacts(&self) -> &ArtifactStore {
        self.0.artifacts()
    }

    fn fetch_artifact<'a>(&'a self, digest: &'a str) -> BoxFuture<'a, anyhow::Result<()>> {
        self.0.fetch_artifact(digest).boxed()
    }

    fn secret(&self, name: &str) -> Option<String> {
        self.0.secrets().granted(&[name.to_string()]).remove(name)
    }

    fn instantiations(&self) -> &Histogram {
        &self.0.runtime().instantiations
    }
}
