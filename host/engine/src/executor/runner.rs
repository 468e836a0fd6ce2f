//! What the executor asks of whatever runs actions: [`ActionRunner`].
//!
//! The executor decides (through [`super::machine`]) and records; a runner
//! does the work: sandboxed attempts, approval waits, the sleeps between
//! attempts and rounds, and the one-off calls outside executions (polls and
//! notifications). [`super::SandboxRunner`] is the real one; the unit tests
//! drive the executor with a fake.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sluice_core::pipeline::{ActionPlan, ApprovalPolicy, Plan};
use sluice_core::plugin::InstalledPlugin;
use sluice_sandbox::{ActionOutcome, RuleVerdict};
use sluice_store::state::{AttemptClaim, EventRecord, OutputRecord};

/// One attempt (or continuation round) of a plugin action.
pub struct AttemptRequest<'a> {
    /// The execution it belongs to.
    pub execution: &'a str,
    /// The plan being run.
    pub plan: &'a Plan,
    /// The action.
    pub action: &'a ActionPlan,
    /// Its plugin.
    pub plugin: &'a InstalledPlugin,
    /// Its configuration, every reference resolved.
    pub config: &'a [(String, String)],
    /// Its input artifacts: (name, digest in the artifact store).
    pub inputs: Vec<(String, String)>,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// The token of the round to continue, if the action asked to be called again.
    pub continuation: Option<String>,
    /// The worker's claim it runs under (`None` in the executor's process):
    /// its log lines are refused once the claim is lost.
    pub claim: Option<AttemptClaim<'a>>,
}

/// A successful attempt.
#[derive(Clone, Debug)]
pub struct Attempted {
    /// What the action returned (summary, variables, maybe a continuation).
    pub outcome: ActionOutcome,
    /// Its outputs, ingested into the artifact store.
    pub outputs: Vec<OutputRecord>,
}

/// Why an attempt did not succeed.
#[derive(Clone, Debug)]
pub enum AttemptFailure {
    /// The plugin could not be loaded: nothing ran, and nothing is retried.
    NotLoaded(String),
    /// The attempt ran and failed.
    Failed {
        /// What went wrong (unmasked: the executor masks it).
        error: String,
        /// Whether trying again might help (a crash, a timeout, a job failure,
        /// not a denied capability or a quota).
        retryable: bool,
        /// Outputs a failed plugin left (with `collect-on-failure`), stored so
        /// they can be downloaded; `None` when it left nothing to keep.
        kept_outputs: Option<Vec<OutputRecord>>,
    },
}

/// Runs actions for the executor. Every method is I/O; none decides what
/// runs next.
pub trait ActionRunner: Send + Sync + 'static {
    /// One attempt in a fresh sandbox; outputs are ingested on success.
    fn attempt(
        &self,
        request: AttemptRequest<'_>,
    ) -> impl Future<Output = Result<Attempted, AttemptFailure>> + Send;

    /// Wait for people to approve or reject `action`, or for its timeout.
    /// `Err` says why it did not pass (rejected, timed out).
    fn approval(
        &self,
        execution: &str,
        action: &ActionPlan,
        policy: &ApprovalPolicy,
    ) -> impl Future<Output = Result<ActionOutcome, String>> + Send;

    /// Wait before the next attempt or round.
    fn sleep(&self, wait: Duration) -> impl Future<Output = ()> + Send;

    /// A source action's `check`: revisions newer than `last`, oldest first.
    fn poll(
        &self,
        plan: Arc<Plan>,
        action: &str,
        last: Option<String>,
    ) -> impl Future<Output = anyhow::Result<Vec<String>>> + Send;

    /// A rule plugin's `evaluate` (a stage condition's `plugin` rule, as the
    /// action `rule`, with its configuration resolved): whether it passed,
    /// and why. `Err` says why it could not be evaluated (the rule then does
    /// not pass).
    fn evaluate_rule(
        &self,
        plan: &Arc<Plan>,
        execution: &str,
        rule: &ActionPlan,
        config: Vec<(String, String)>,
    ) -> impl Future<Output = Result<RuleVerdict, String>> + Send;

    /// Deliver one stored event through the plan's `[notifications]` action.
    fn notify(
        &self,
        plan: Arc<Plan>,
        event: &EventRecord,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// A decision on some approval was recorded: waiting approvals look again.
    fn approvals_changed(&self);

    /// The execution ended: remove what its attempts left behind.
    fn execution_ended(&self, execution: &str);
}
