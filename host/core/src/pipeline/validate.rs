//! Validation of a parsed pipeline file into a [`Plan`], collecting every problem
//! with its location instead of stopping at the first.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::Mount;
use super::conditions::{self, StageConditions, When};
use super::limits::{Limits, MAX_MEMORY_BYTES};
use super::model::{ActionDecl, GrantsDecl, PipelineFile, PollDecl, StageDecl};
use super::vars;
use super::{
    APPROVAL, ActionKind, ActionPlan, ApprovalPolicy, Diagnostic, Diagnostics, EVENT_KEYS,
    ExecutionMode, Grants, Notifications, OnRestart, Plan, RetryPolicy, SourceFile, StagePlan,
    TRIGGER_KEYS, Triggers,
};
use crate::plugin::{InstalledPlugin, Manifest, PluginRef, Registry};

use crate::units::{parse_bytes, parse_duration};

/// Namespaces that actions may not claim.
const RESERVED_NAMESPACES: [&str; 4] = ["variables", "execution", "trigger", "cache"];
/// The smallest `limits.open-files` accepted: a guest needs some handles to start.
const MIN_OPEN_FILES: u64 = 16;
/// Keys of the built-in `execution` namespace.
const EXECUTION_KEYS: [&str; 2] = ["id", "pipeline"];

/// Where an action sits: stage index, then run order. Smaller runs earlier.
type Position = (usize, u32);

struct Producer {
    position: Position,
    action: String,
}

struct Validator<'a> {
    source: &'a SourceFile,
    registry: &'a Registry,
    base_dir: &'a Path,
    errors: Vec<Diagnostic>,
    artifacts: HashMap<String, Producer>,
    namespaces: HashMap<String, Producer>,
    /// Validating `[notifications]`: `#{event.*}` is allowed.
    in_notifications: bool,
}

pub(super) fn validate(
    source: &SourceFile,
    file: &PipelineFile,
    registry: &Registry,
    base_dir: &Path,
) -> Result<Plan, Diagnostics> {
    let mut validator = Validator {
        source,
        registry,
        base_dir,
        errors: Vec::new(),
        artifacts: HashMap::new(),
        namespaces: HashMap::new(),
        in_notifications: false,
    };
    let plan = validator.pipeline(file);
    if validator.errors.is_empty() {
        Ok(plan)
    } else {
        validator.errors.sort_by_key(|d| (d.line, d.column));
        Err(Diagnostics(validator.errors))
    }
}

impl Validator<'_> {
    fn error<T>(&mut self, spanned: &Spanned<T>, message: impl Into<String>) {
        let diagnostic = self.source.at(spanned.span().start, message);
        self.errors.push(diagnostic);
    }

    fn pipeline(&mut self, file: &PipelineFile) -> Plan {
        if let Err(message) = super::check_name(file.pipeline.name.get_ref()) {
            self.error(&file.pipeline.name, message);
        }
        let execution_mode = self.execution_mode(file);
        if file.stages.is_empty() {
            self.error(
                &file.pipeline.name,
                "the pipeline has no stages; add a [[stages]] table",
            );
        }
        self.collect_producers(file);
        let caches = self.caches(file);
        let mut stage_names = HashSet::new();
        let mut action_names = HashSet::new();
        let mut stages = Vec::new();
        for (index, stage) in file.stages.iter().enumerate() {
            if !stage_names.insert(stage.name.get_ref().clone()) {
                self.error(
                    &stage.name,
                    format!("duplicate stage name `{}`", stage.name.get_ref()),
                );
            }
            if stage.actions.is_empty() {
                self.error(
                    &stage.name,
                    format!("stage `{}` has no actions", stage.name.get_ref()),
                );
            }
            let mut actions = Vec::new();
            for action in &stage.actions {
                if !action_names.insert(action.name.get_ref().clone()) {
                    let name = action.name.get_ref();
                    self.error(
                        &action.name,
                        format!(
                            "duplicate action name `{name}`; action names are unique in a pipeline"
                        ),
                    );
                }
                let position = (index, run_order(action));
                if let Some(plan) = self.action(file, stage.name.get_ref(), position, action) {
                    actions.push(plan);
                }
            }
            actions.sort_by_key(|a| a.run_order);
            let conditions = self.conditions(file, stage, index);
            stages.push(StagePlan {
                name: stage.name.get_ref().clone(),
                actions,
                conditions,
            });
        }
        self.check_unused_caches(file);
        Plan {
            name: file.pipeline.name.get_ref().clone(),
            file: self.source.path.clone(),
            source: "".into(),
            execution_mode,
            triggers: self.triggers(file),
            notifications: self.notifications(file),
            max_executions: limit(&file.pipeline.max_executions, 20),
            queue_depth: limit(&file.pipeline.queue_depth, 10),
            variables: file
                .variables
                .iter()
                .map(|(name, decl)| (name.clone(), decl.get_ref().default.clone()))
                .collect(),
            caches,
            stages,
        }
    }

    fn triggers(&mut self, file: &PipelineFile) -> Triggers {
        let Some(decl) = &file.triggers else {
            return Triggers::default();
        };
        let webhook = decl.webhook.as_ref().and_then(|w| {
            let d = w.get_ref();
            crate::triggers::WebhookTrigger::new(
                &d.secret,
                &d.events,
                &d.branches,
                &d.tags,
                &d.paths,
            )
            .map_err(|message| self.error(w, message))
            .ok()
        });
        for expression in &decl.cron {
            if let Err(message) = crate::triggers::parse_cron(expression.get_ref()) {
                self.error(expression, message);
            }
        }
        let poll = decl.poll.as_ref().and_then(|poll| self.poll(file, poll));
        Triggers {
            webhook,
            cron: decl.cron.iter().map(|c| c.get_ref().clone()).collect(),
            poll,
        }
    }

    /// An action names a plugin of world `action` or `source`; a rule, one
    /// of world `rule`.
    fn check_world(
        &mut self,
        action: &ActionDecl,
        manifest: &Manifest,
        wanted: PluginWorld,
    ) -> bool {
        let is_rule = manifest.world == "rule";
        let message = match wanted {
            PluginWorld::Action if is_rule => format!(
                "{} is a rule plugin (world `rule`): use it in a stage condition, as a rule with provider = \"plugin\"",
                manifest.id()
            ),
            PluginWorld::Rule if !is_rule => format!(
                "rule `{}`: {} implements world `{}`, not `rule` (a rule plugin exports `evaluate`)",
                action.name.get_ref(),
                manifest.id(),
                manifest.world
            ),
            _ => return true,
        };
        self.error(&action.plugin, message);
        false
    }

    fn check_polled_world(
        &mut self,
        file: &PipelineFile,
        action: &ActionDecl,
        manifest: &Manifest,
    ) {
        let polled = file
            .triggers
            .as_ref()
            .and_then(|t| t.poll.as_ref())
            .is_some_and(|p| p.get_ref().action == *action.name.get_ref());
        if polled && manifest.world != "source" {
            let message = format!(
                "action `{}` is polled ([triggers] poll) but {} implements world `{}`, not `source`",
                action.name.get_ref(),
                manifest.id(),
                manifest.world
            );
            self.error(&action.plugin, message);
        }
    }

    /// `[notifications]`: its action is validated like any other, without inputs
    /// and with `#{event.*}` references allowed.
    fn notifications(&mut self, file: &PipelineFile) -> Option<Notifications> {
        let decl = file.notifications.as_ref()?;
        if let Some(input) = decl.action.inputs.first() {
            self.error(input, "a notification action takes no input artifacts");
        }
        self.in_notifications = true;
        let action = self.action(file, "notifications", (0, 0), &decl.action);
        self.in_notifications = false;
        Some(Notifications {
            events: decl.events.clone(),
            action: action?,
        })
    }

    /// `[triggers] poll`: the action must exist; its plugin's world is checked
    /// when the action itself is validated.
    fn poll(
        &mut self,
        file: &PipelineFile,
        poll: &Spanned<PollDecl>,
    ) -> Option<(String, Duration)> {
        let inner = poll.get_ref();
        let interval = match inner.interval.as_deref().map(parse_duration) {
            None => Duration::from_secs(60),
            Some(Ok(interval)) => interval,
            Some(Err(message)) => {
                self.error(poll, message);
                return None;
            }
        };
        let exists = file
            .stages
            .iter()
            .flat_map(|s| &s.actions)
            .any(|a| *a.name.get_ref() == inner.action);
        if !exists {
            self.error(
                poll,
                format!(
                    "poll names action `{}`, which this pipeline does not have",
                    inner.action
                ),
            );
            return None;
        }
        Some((inner.action.clone(), interval))
    }

    fn execution_mode(&mut self, file: &PipelineFile) -> ExecutionMode {
        let Some(mode) = &file.pipeline.execution_mode else {
            return ExecutionMode::default();
        };
        match mode.get_ref().as_str() {
            "superseded" => ExecutionMode::Superseded,
            "queued" => ExecutionMode::Queued,
            "parallel" => ExecutionMode::Parallel,
            other => {
                self.error(
                    mode,
                    format!("unknown execution-mode `{other}`; use superseded, queued or parallel"),
                );
                ExecutionMode::default()
            }
        }
    }

    /// First pass: who produces each artifact and owns each namespace.
    fn collect_producers(&mut self, file: &PipelineFile) {
        for (index, stage) in file.stages.iter().enumerate() {
            for action in &stage.actions {
                let position = (index, run_order(action));
                for output in &action.outputs {
                    let name = output.get_ref();
                    if let Some(first) = self.artifacts.get(name) {
                        let message = format!(
                            "artifact `{name}` is already produced by action `{}`; output names are unique in a pipeline",
                            first.action
                        );
                        self.error(output, message);
                        continue;
                    }
                    let producer = Producer {
                        position,
                        action: action.name.get_ref().clone(),
                    };
                    self.artifacts.insert(name.clone(), producer);
                }
                if let Some(namespace) = &action.namespace {
                    self.claim_namespace(namespace, position, action.name.get_ref());
                }
            }
        }
    }

    fn claim_namespace(&mut self, namespace: &Spanned<String>, position: Position, action: &str) {
        let name = namespace.get_ref();
        if RESERVED_NAMESPACES.contains(&name.as_str()) {
            self.error(namespace, format!("namespace `{name}` is reserved"));
        } else if let Some(first) = self.namespaces.get(name) {
            let message = format!(
                "namespace `{name}` is already used by action `{}`",
                first.action
            );
            self.error(namespace, message);
        } else {
            let producer = Producer {
                position,
                action: action.to_string(),
            };
            self.namespaces.insert(name.clone(), producer);
        }
    }

    fn action(
        &mut self,
        file: &PipelineFile,
        stage: &str,
        position: Position,
        action: &ActionDecl,
    ) -> Option<ActionPlan> {
        self.action_of_world(file, stage, position, action, PluginWorld::Action)
    }

    /// An action, or a rule plugin validated as one (`world` says which
    /// plugins it may name).
    fn action_of_world(
        &mut self,
        file: &PipelineFile,
        stage: &str,
        position: Position,
        action: &ActionDecl,
        world: PluginWorld,
    ) -> Option<ActionPlan> {
        self.check_inputs(action, position);
        let config = self.config(file, action, position);
        let (kind, grants) = if action.plugin.get_ref() == APPROVAL && world == PluginWorld::Action
        {
            (
                ActionKind::Approval(self.approval(action, &config)),
                Grants::default(),
            )
        } else {
            let plugin = self.plugin(action)?;
            // A plugin of the wrong world says only that: its configuration
            // and grants would be checked against the wrong contract.
            if !self.check_world(action, &plugin.manifest, world) {
                return None;
            }
            self.check_polled_world(file, action, &plugin.manifest);
            self.check_config_schema(action, &plugin.manifest, &config);
            let mut grants = self.grants(action, &plugin.manifest);
            grants.caches = self.cache_grants(file, action, &plugin.manifest);
            (ActionKind::Plugin(Box::new(plugin)), grants)
        };
        let limits = self.limits(action);
        let retry = self.retry(action);
        let on_restart = self.on_restart(action);
        Some(ActionPlan {
            name: action.name.get_ref().clone(),
            stage: stage.to_string(),
            run_order: position.1,
            kind,
            inputs: action.inputs.iter().map(|i| i.get_ref().clone()).collect(),
            outputs: action.outputs.iter().map(|o| o.get_ref().clone()).collect(),
            namespace: action.namespace.as_ref().map(|n| n.get_ref().clone()),
            config: config.into_iter().map(|(k, (_, v))| (k, v)).collect(),
            grants,
            limits,
            retry,
            on_restart,
        })
    }

    /// A host-native approval: config `approvers`, `timeout`, `message`; no
    /// outputs or grants.
    fn approval(
        &mut self,
        action: &ActionDecl,
        config: &BTreeMap<String, (usize, String)>,
    ) -> ApprovalPolicy {
        let mut policy = ApprovalPolicy {
            approvers: "operator".into(),
            timeout: Duration::from_secs(7 * 24 * 3600),
            message: format!("approve `{}`?", action.name.get_ref()),
        };
        for (key, (offset, value)) in config {
            let problem = match key.as_str() {
                "approvers" if ["viewer", "operator", "admin"].contains(&value.as_str()) => {
                    policy.approvers = value.clone();
                    continue;
                }
                "approvers" => format!(
                    "approvers `{value}`: use viewer, operator or admin (the least role that may decide)"
                ),
                "timeout" => match parse_duration(value) {
                    Ok(timeout) => {
                        policy.timeout = timeout;
                        continue;
                    }
                    Err(message) => message,
                },
                "message" => {
                    policy.message = value.clone();
                    continue;
                }
                other => format!(
                    "unknown config key `{other}` for an approval; it accepts: approvers, message, timeout"
                ),
            };
            let diagnostic = self.source.at(*offset, problem);
            self.errors.push(diagnostic);
        }
        if let Some(output) = action.outputs.first() {
            self.error(output, "an approval produces no artifacts");
        }
        if let Some(grants) = &action.grants {
            self.error(grants, "an approval runs no plugin, so it takes no grants");
        }
        policy
    }

    fn plugin(&mut self, action: &ActionDecl) -> Option<InstalledPlugin> {
        let reference = match PluginRef::parse(action.plugin.get_ref()) {
            Ok(reference) => reference,
            Err(message) => {
                self.error(&action.plugin, message);
                return None;
            }
        };
        match self.registry.resolve(&reference) {
            Ok(Ok(plugin)) => Some(plugin),
            Ok(Err(unresolved)) => {
                self.error(
                    &action.plugin,
                    format!("{unresolved}; install it with `sluice plugin install <dir>`"),
                );
                None
            }
            Err(e) => {
                self.error(
                    &action.plugin,
                    format!("cannot read the plugin registry: {e:#}"),
                );
                None
            }
        }
    }

    fn check_inputs(&mut self, action: &ActionDecl, position: Position) {
        for input in &action.inputs {
            let name = input.get_ref();
            let message = match self.artifacts.get(name) {
                None => format!("input artifact `{name}` is not produced by any action"),
                Some(producer) if producer.position >= position => format!(
                    "input artifact `{name}` is produced by action `{}`, which does not run before this one (an input must come from an earlier stage or a lower run-order)",
                    producer.action
                ),
                Some(_) => continue,
            };
            self.error(input, message);
        }
    }

    /// Config values as strings, references checked; keyed by name with spans.
    fn config(
        &mut self,
        file: &PipelineFile,
        action: &ActionDecl,
        position: Position,
    ) -> BTreeMap<String, (usize, String)> {
        let mut config = BTreeMap::new();
        for (key, value) in &action.config {
            let text = match value.get_ref() {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                _ => {
                    self.error(
                        value,
                        format!("config `{key}` must be a string, number or boolean"),
                    );
                    continue;
                }
            };
            self.check_references(file, action, value, &text, position);
            config.insert(key.clone(), (value.span().start, text));
        }
        config
    }

    /// A stage's conditions. A before-entry rule may refer to what earlier
    /// stages produced; on-success and on-failure rules to the stage's own
    /// actions' variables too.
    fn conditions(
        &mut self,
        file: &PipelineFile,
        stage: &StageDecl,
        index: usize,
    ) -> StageConditions {
        let mut conditions = StageConditions::default();
        let written = [
            (When::BeforeEntry, &stage.before_entry),
            (When::OnSuccess, &stage.on_success),
            (When::OnFailure, &stage.on_failure),
        ];
        for (when, decl) in written {
            let Some(decl) = decl else { continue };
            let visible_before: Position = match when {
                When::BeforeEntry => (index, 0),
                When::OnSuccess | When::OnFailure => (index + 1, 0),
            };
            let mut scope = ConditionScope {
                validator: self,
                file,
                stage: stage.name.get_ref(),
                before: visible_before,
            };
            let validated = conditions::validate(when, decl, &mut scope);
            match validated {
                Ok(condition) => match when {
                    When::BeforeEntry => conditions.before_entry = Some(condition),
                    When::OnSuccess => conditions.on_success = Some(condition),
                    When::OnFailure => conditions.on_failure = Some(condition),
                },
                Err(errors) => {
                    for (offset, message) in errors {
                        let diagnostic = self.source.at(offset, message);
                        self.errors.push(diagnostic);
                    }
                }
            }
        }
        conditions
    }

    /// Whether a rule may refer to `reference`: a declared pipeline variable,
    /// a built-in, or the namespace of an action that runs before `before`.
    fn condition_reference(
        &self,
        file: &PipelineFile,
        reference: &vars::VarRef,
        before: Position,
    ) -> Result<(), String> {
        let name = reference.name();
        match reference.namespace.as_str() {
            "variables" if file.variables.contains_key(&reference.key) => Ok(()),
            "execution" if EXECUTION_KEYS.contains(&reference.key.as_str()) => Ok(()),
            "trigger" if TRIGGER_KEYS.contains(&reference.key.as_str()) => Ok(()),
            "variables" | "execution" | "trigger" | "cache" | "event" => {
                Err(format!("`#{{{name}}}` cannot be checked by a rule"))
            }
            namespace => match self.namespaces.get(namespace) {
                Some(producer) if producer.position < before => Ok(()),
                Some(producer) => Err(format!(
                    "`#{{{name}}}` refers to namespace `{namespace}` of action `{}`, which has not run when this rule is checked",
                    producer.action
                )),
                None => Err(format!(
                    "`#{{{name}}}` refers to namespace `{namespace}`, which no action declares"
                )),
            },
        }
    }

    fn check_references(
        &mut self,
        file: &PipelineFile,
        action: &ActionDecl,
        at: &Spanned<toml::Value>,
        text: &str,
        position: Position,
    ) {
        let refs = match vars::references(text) {
            Ok(refs) => refs,
            Err(message) => return self.error(at, message),
        };
        for reference in refs {
            let message = match reference.namespace.as_str() {
                "variables" if file.variables.contains_key(&reference.key) => continue,
                "variables" => format!(
                    "`#{{{}}}` refers to an undeclared pipeline variable; declare it under [variables]",
                    reference.name()
                ),
                "execution" if EXECUTION_KEYS.contains(&reference.key.as_str()) => continue,
                "cache" => match cache_reference(file, action, &reference.key) {
                    Some(message) => message,
                    None => continue,
                },
                "trigger" if TRIGGER_KEYS.contains(&reference.key.as_str()) => continue,
                "event"
                    if self.in_notifications && EVENT_KEYS.contains(&reference.key.as_str()) =>
                {
                    continue;
                }
                "trigger" => format!(
                    "`#{{{}}}` is not a trigger variable; use one of {TRIGGER_KEYS:?}",
                    reference.name()
                ),
                "execution" => format!(
                    "`#{{{}}}` is not a built-in; use #{{execution.id}} or #{{execution.pipeline}}",
                    reference.name()
                ),
                namespace => match self.namespaces.get(namespace) {
                    Some(producer) if producer.position < position => continue,
                    Some(producer) => format!(
                        "`#{{{}}}` refers to namespace `{namespace}` of action `{}`, which does not run before this one",
                        reference.name(),
                        producer.action
                    ),
                    None => format!(
                        "`#{{{}}}` refers to namespace `{namespace}`, which no action declares",
                        reference.name()
                    ),
                },
            };
            self.error(at, message);
        }
    }

    fn check_config_schema(
        &mut self,
        action: &ActionDecl,
        manifest: &Manifest,
        config: &BTreeMap<String, (usize, String)>,
    ) {
        for (key, (offset, value)) in config {
            let diagnostic = match manifest.config.get(key) {
                None => {
                    let known: Vec<&str> = manifest.config.keys().map(String::as_str).collect();
                    format!(
                        "unknown config key `{key}` for plugin {}; it accepts: {}",
                        manifest.id(),
                        known.join(", ")
                    )
                }
                Some(schema) if !value.contains("#{") && !schema.kind.accepts(value) => {
                    format!(
                        "config `{key}` must be {} {}, not `{value}`",
                        article(schema.kind.name()),
                        schema.kind.name()
                    )
                }
                Some(_) => continue,
            };
            let diagnostic = self.source.at(*offset, diagnostic);
            self.errors.push(diagnostic);
        }
        for (key, schema) in &manifest.config {
            if schema.required && !config.contains_key(key) {
                let message = format!(
                    "missing required config `{key}` for plugin {} ({})",
                    manifest.id(),
                    schema.description
                );
                self.error(&action.name, message);
            }
        }
    }

    fn grants(&mut self, action: &ActionDecl, manifest: &Manifest) -> Grants {
        let Some(decl) = &action.grants else {
            return Grants::default();
        };
        let caps = &manifest.capabilities;
        let id = manifest.id();
        let decl: &GrantsDecl = decl.get_ref();
        for secret in decl
            .secrets
            .iter()
            .filter(|s| !caps.allows_secret(s.get_ref()))
        {
            self.error(
                secret,
                format!(
                    "grant of secret `{}` exceeds the manifest of {id}, which allows secrets: {:?}",
                    secret.get_ref(),
                    caps.secrets
                ),
            );
        }
        for host in decl.hosts.iter().filter(|h| !caps.allows_host(h.get_ref())) {
            self.error(host, format!("grant of outbound HTTP to `{}` exceeds the manifest of {id}, which allows hosts: {:?}", host.get_ref(), caps.hosts));
        }
        for command in decl
            .commands
            .iter()
            .filter(|c| !caps.allows_command(c.get_ref()))
        {
            self.error(command, format!("grant of command `{}` exceeds the manifest of {id}, which allows commands: {:?}", command.get_ref(), caps.commands));
        }
        self.check_env_grants(decl);
        let mounts = self.mounts(decl, manifest);
        let strings = |list: &[Spanned<String>]| list.iter().map(|s| s.get_ref().clone()).collect();
        Grants {
            secrets: strings(&decl.secrets),
            hosts: strings(&decl.hosts),
            commands: strings(&decl.commands),
            env: strings(&decl.env),
            toolchains: decl
                .toolchains
                .iter()
                .map(|t| PathBuf::from(t.get_ref()))
                .collect(),
            mounts,
            run_as_root: decl.run_as_root.as_ref().is_some_and(|r| *r.get_ref()),
            ..Grants::default()
        }
    }

    /// `grants.env` names host variables for native commands: valid names, and
    /// only where commands are granted (otherwise nothing would inherit them).
    fn check_env_grants(&mut self, decl: &GrantsDecl) {
        for name in &decl.env {
            let text = name.get_ref();
            let valid = text
                .chars()
                .enumerate()
                .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
            if text.is_empty() || !valid {
                self.error(
                    name,
                    format!("grants.env: `{text}` is not an environment variable name"),
                );
            } else if decl.commands.is_empty() {
                self.error(name, format!("grants.env: `{text}` is granted but no command is (grants.commands is empty)"));
            }
        }
        if let Some(root) = &decl.run_as_root
            && decl.commands.is_empty()
        {
            self.error(
                root,
                "grants.run-as-root is granted but no command is (grants.commands is empty)"
                    .to_string(),
            );
        }
        for dir in &decl.toolchains {
            let path = Path::new(dir.get_ref());
            if !path.is_absolute() {
                self.error(
                    dir,
                    format!(
                        "grants.toolchains: `{}` must be an absolute host path",
                        dir.get_ref()
                    ),
                );
            } else if !path.is_dir() {
                self.error(
                    dir,
                    format!(
                        "grants.toolchains: `{}` is not a directory on this host",
                        dir.get_ref()
                    ),
                );
            } else if decl.commands.is_empty() {
                self.error(dir, format!("grants.toolchains: `{}` is granted but no command is (grants.commands is empty)", dir.get_ref()));
            }
        }
    }

    /// `[caches]`: names usable as a directory and a `#{cache.<name>}` key, sizes
    /// parsed (default [`super::caches::DEFAULT_MAX_BYTES`]).
    fn caches(&mut self, file: &PipelineFile) -> BTreeMap<String, u64> {
        let mut caches = BTreeMap::new();
        for (name, decl) in &file.caches {
            if !super::caches::is_cache_name(name) {
                let message = format!("cache name `{name}` must be letters, digits, - or _");
                self.error(decl, message);
                continue;
            }
            let max = match &decl.get_ref().max_size {
                None => super::caches::DEFAULT_MAX_BYTES,
                Some(size) => match parse_bytes(size.get_ref()) {
                    Ok(0) => {
                        self.error(size, format!("cache `{name}`: max-size must be above 0"));
                        continue;
                    }
                    Ok(bytes) => bytes,
                    Err(message) => {
                        self.error(size, format!("cache `{name}`: {message}"));
                        continue;
                    }
                },
            };
            caches.insert(name.clone(), max);
        }
        caches
    }

    /// A declared cache that no action is granted is an error rather than a
    /// warning: it is almost always a misspelt grant, and this way it is caught.
    fn check_unused_caches(&mut self, file: &PipelineFile) {
        let used: HashSet<&String> = file
            .stages
            .iter()
            .flat_map(|s| &s.actions)
            .filter_map(|a| a.grants.as_ref())
            .flat_map(|g| &g.get_ref().caches)
            .map(|c| c.get_ref())
            .collect();
        for (name, decl) in &file.caches {
            if !used.contains(name) {
                let message = format!(
                    "cache `{name}` is declared but no action is granted it; add `caches = [\"{name}\"]` to an action's grants, or remove it"
                );
                self.error(decl, message);
            }
        }
    }

    /// `grants.caches`: each declared under `[caches]` and within the manifest.
    fn cache_grants(
        &mut self,
        file: &PipelineFile,
        action: &ActionDecl,
        manifest: &Manifest,
    ) -> Vec<String> {
        let Some(grants) = &action.grants else {
            return Vec::new();
        };
        let mut granted = Vec::new();
        for cache in &grants.get_ref().caches {
            let name = cache.get_ref();
            let problem = if self.in_notifications {
                "a notification action cannot use caches (it runs outside any execution)"
                    .to_string()
            } else if !file.caches.contains_key(name) {
                format!(
                    "cache `{name}` is not declared; declare it under [caches], e.g. `{name} = {{ max-size = \"2GiB\" }}`"
                )
            } else if !manifest.capabilities.caches {
                format!(
                    "grant of cache `{name}` exceeds the manifest of {}, which allows no caches",
                    manifest.id()
                )
            } else {
                if !granted.contains(name) {
                    granted.push(name.clone());
                }
                continue;
            };
            self.error(cache, problem);
        }
        granted
    }

    fn mounts(&mut self, decl: &GrantsDecl, manifest: &Manifest) -> Vec<Mount> {
        let mut mounts = Vec::new();
        for (name, mount) in &decl.mounts {
            if !manifest.capabilities.mounts {
                self.error(mount, format!("grant of mount `{name}` exceeds the manifest of {}, which allows no host mounts", manifest.id()));
                continue;
            }
            let writable = match mount.get_ref().mode.as_deref() {
                None | Some("ro") => false,
                Some("rw") => true,
                Some(other) => {
                    self.error(
                        mount,
                        format!("mount `{name}` has mode `{other}`; use `ro` or `rw`"),
                    );
                    continue;
                }
            };
            let host = self.base_dir.join(&mount.get_ref().host);
            if !host.is_dir() {
                self.error(
                    mount,
                    format!(
                        "mount `{name}`: host directory {} does not exist",
                        host.display()
                    ),
                );
                continue;
            }
            mounts.push(Mount {
                name: name.clone(),
                host,
                writable,
            });
        }
        mounts
    }

    fn limits(&mut self, action: &ActionDecl) -> Limits {
        let mut limits = Limits::default();
        if let Some(timeout) = &action.timeout {
            match parse_duration(timeout.get_ref()) {
                Ok(duration) => {
                    limits.timeout = duration;
                    limits.cpu = duration;
                }
                Err(message) => self.error(timeout, message),
            }
        }
        let Some(decl) = &action.limits else {
            return limits;
        };
        let inner = decl.get_ref();
        let mut apply = |result: Option<Result<(), String>>| {
            if let Some(Err(message)) = result {
                self.error(decl, message);
            }
        };
        apply(inner.memory.as_deref().map(|m| {
            parse_bytes(m).and_then(|bytes| match bytes {
                b if b > MAX_MEMORY_BYTES => Err(format!(
                    "memory limit `{m}` is above this host's maximum of {}",
                    crate::units::format_bytes(MAX_MEMORY_BYTES)
                )),
                b => {
                    limits.memory_bytes = b;
                    Ok(())
                }
            })
        }));
        apply(
            inner
                .log
                .as_deref()
                .map(|l| parse_bytes(l).map(|b| limits.log_bytes = b)),
        );
        apply(
            inner
                .cpu
                .as_deref()
                .map(|c| parse_duration(c).map(|d| limits.cpu = d)),
        );
        let size = |name: &str, text: &Option<String>, into: &mut u64| {
            text.as_deref().map(|t| {
                parse_bytes(t)
                    .map_err(|e| format!("limit `{name}`: {e}"))
                    .map(|b| *into = b)
            })
        };
        apply(size("summary", &inner.summary, &mut limits.summary_bytes));
        apply(size(
            "variables-size",
            &inner.variables_size,
            &mut limits.variables_bytes,
        ));
        apply(size(
            "output-size",
            &inner.output_size,
            &mut limits.output_bytes,
        ));
        apply(inner.command_memory.as_deref().map(|m| {
            parse_bytes(m)
                .map_err(|e| format!("limit `command-memory`: {e}"))
                .map(|b| limits.command_memory = Some(b))
        }));
        limits.variables = inner.variables.unwrap_or(limits.variables);
        limits.output_files = inner.output_files.unwrap_or(limits.output_files);
        apply(inner.open_files.map(|n| match n {
            // The guest's own stdio and preopens need a few handles to start at all.
            0..MIN_OPEN_FILES => Err(format!(
                "limit `open-files` must be at least {MIN_OPEN_FILES}, not {n}"
            )),
            n => {
                limits.open_files = n;
                Ok(())
            }
        }));
        limits
    }

    fn on_restart(&mut self, action: &ActionDecl) -> OnRestart {
        match action
            .on_restart
            .as_ref()
            .map(|p| (p, p.get_ref().as_str()))
        {
            None | Some((_, "rerun")) => OnRestart::Rerun,
            Some((_, "fail")) => OnRestart::Fail,
            Some((policy, other)) => {
                self.error(
                    policy,
                    format!("unknown on-restart `{other}`; use rerun or fail"),
                );
                OnRestart::Rerun
            }
        }
    }

    fn retry(&mut self, action: &ActionDecl) -> RetryPolicy {
        let Some(decl) = &action.retry else {
            return RetryPolicy::default();
        };
        let inner = decl.get_ref();
        let mut policy = RetryPolicy {
            attempts: inner.attempts,
            ..RetryPolicy::default()
        };
        if inner.attempts == 0 {
            self.error(
                decl,
                "retry attempts counts the first attempt too; it must be at least 1",
            );
        }
        if let Some(backoff) = &inner.backoff {
            match parse_duration(backoff) {
                Ok(duration) => policy.backoff = duration,
                Err(message) => self.error(decl, message),
            }
        }
        policy
    }
}

fn limit(value: &Option<Spanned<u32>>, default: usize) -> usize {
    value
        .as_ref()
        .map(|v| *v.get_ref() as usize)
        .unwrap_or(default)
}

fn run_order(action: &ActionDecl) -> u32 {
    action.run_order.as_ref().map(|r| *r.get_ref()).unwrap_or(1)
}

/// Why `#{cache.<name>}` may not be used by `action`, if it may not.
fn cache_reference(file: &PipelineFile, action: &ActionDecl, name: &str) -> Option<String> {
    let granted = action
        .grants
        .as_ref()
        .is_some_and(|g| g.get_ref().caches.iter().any(|c| c.get_ref() == name));
    if !file.caches.contains_key(name) {
        Some(format!(
            "`#{{cache.{name}}}` refers to cache `{name}`, which [caches] does not declare"
        ))
    } else if !granted {
        Some(format!(
            "`#{{cache.{name}}}` refers to cache `{name}`, which is not granted to this action; add `caches = [\"{name}\"]` to its grants"
        ))
    } else {
        None
    }
}

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// Which plugins a declaration may name.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PluginWorld {
    /// A stage action or the notification action: world `action` or `source`.
    Action,
    /// A stage condition's `plugin` rule: world `rule`.
    Rule,
}

/// The validator as seen from one stage condition's rules.
struct ConditionScope<'v, 'a, 'f> {
    validator: &'v mut Validator<'a>,
    file: &'f PipelineFile,
    stage: &'f str,
    /// Rules see what runs before this position.
    before: Position,
}

impl conditions::RuleScope for ConditionScope<'_, '_, '_> {
    fn check_reference(&mut self, reference: &vars::VarRef) -> Result<(), String> {
        self.validator
            .condition_reference(self.file, reference, self.before)
    }

    fn plugin_rule(&mut self, rule: &conditions::RuleDecl) -> Option<ActionPlan> {
        let plugin = rule.plugin.clone()?;
        if let Some(grants) = &rule.grants
            && (!grants.get_ref().mounts.is_empty() || !grants.get_ref().caches.is_empty())
        {
            let message = format!(
                "rule `{}`: a rule plugin is granted no mounts or caches (only hosts, secrets and commands)",
                rule.name.get_ref()
            );
            self.validator.error(grants, message);
            return None;
        }
        // A rule plugin is validated exactly as an action with no inputs,
        // outputs or namespace: plugin, configuration schema, references,
        // grants within its manifest, timeout.
        let decl = ActionDecl {
            name: rule.name.clone(),
            plugin,
            run_order: None,
            inputs: Vec::new(),
            outputs: Vec::new(),
            namespace: None,
            config: rule.config.clone(),
            grants: rule.grants.clone(),
            timeout: rule.timeout.clone(),
            retry: None,
            limits: None,
            on_restart: None,
        };
        let errors_before = self.validator.errors.len();
        let action = self.validator.action_of_world(
            self.file,
            self.stage,
            self.before,
            &decl,
            PluginWorld::Rule,
        )?;
        (self.validator.errors.len() == errors_before).then_some(action)
    }
}
