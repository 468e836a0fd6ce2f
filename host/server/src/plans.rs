//! Registered pipelines as plans: the one place the server turns a stored
//! pipeline's text into a [`Plan`], and the one cache of the results.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::AppState;
use sluice_core::pipeline::{Diagnostics, Plan};
use sluice_store::state::PipelineRecord;

/// Most cached plans; past it the cache starts over (versions pile up as
/// pipelines are re-registered, and a plan is cheap to parse again).
const MAX_CACHED: usize = 256;

/// Validate pipeline text registered (or about to be) as `name`, against the
/// plugins installed now. Errors name `<name>.toml` with line and column.
pub fn parse_registered(app: &AppState, name: &str, source: &str) -> Result<Plan, Diagnostics> {
    let label = PathBuf::from(format!("{name}.toml"));
    sluice_core::pipeline::parse(
        &label,
        source.to_string(),
        &app.registry,
        &app.pipelines_root,
    )
}

/// Plans of registered versions for the background loops (polls,
/// notifications), which consult them several times a second. A stored
/// version never changes, so a plan is kept by name and version. A version
/// that does not validate is not kept: installing the missing plugin fixes it
/// without registering the pipeline again. Requests and starts validate anew,
/// so that they see plugins installed since.
#[derive(Default)]
pub struct PlanCache {
    plans: Mutex<HashMap<(String, i64), Arc<Plan>>>,
}

impl PlanCache {
    /// The plan of `record`, parsed on first use; `None` if it does not validate.
    pub fn get(&self, app: &AppState, record: &PipelineRecord) -> Option<Arc<Plan>> {
        let key = (record.name.clone(), record.version);
        if let Some(plan) = self.lock().get(&key) {
            return Some(plan.clone());
        }
        let plan = Arc::new(parse_registered(app, &record.name, &record.source).ok()?);
        let mut plans = self.lock();
        if plans.len() >= MAX_CACHED {
            plans.clear();
        }
        plans.insert(key, plan.clone());
        Some(plan)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, i64), Arc<Plan>>> {
        self.plans.lock().unwrap_or_else(|e| e.into_inner())
    }
}
