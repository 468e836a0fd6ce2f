//! Stage conditions (CodePipeline's): rules checked before a stage is entered
//! (`before-entry`), after it succeeded (`on-success`) and after it failed
//! (`on-failure`). Every rule of a condition must pass; the condition's
//! `result` says what happens when one does not (or, on failure, when all do).
//!
//! ```toml
//! [[stages]]
//! name = "Deploy"
//! before-entry = { result = "skip", rules = [
//!   { name = "main-only", provider = "variable-check", variable = "#{source.branch}", operator = "eq", value = "main" },
//!   { name = "office-hours", provider = "deployment-window", cron = "* * 9-17 * * Mon-Fri", time-zone = "Europe/Paris" },
//! ] }
//! on-failure = { result = "retry" }
//! ```

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, Timelike, Utc};
use serde::Deserialize;
use toml::Spanned;

use super::vars;

/// Most rules in one condition.
pub const MAX_RULES: usize = 5;

/// A condition as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionDecl {
    /// What happens: see [`ConditionResult`]; the default is the first one
    /// the condition allows.
    pub result: Option<Spanned<String>>,
    /// Up to [`MAX_RULES`] rules; all must pass.
    #[serde(default)]
    pub rules: Vec<Spanned<RuleDecl>>,
}

/// A rule as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDecl {
    /// Unique in its condition; names the rule in events and errors.
    pub name: Spanned<String>,
    /// `variable-check` or `deployment-window`.
    pub provider: Spanned<String>,
    /// variable-check: the text to check, with `#{namespace.key}` references.
    pub variable: Option<Spanned<String>>,
    /// variable-check: `eq`, `ne`, `contains` or `matches` (a regular expression).
    pub operator: Option<Spanned<String>>,
    /// variable-check: what to compare with.
    pub value: Option<Spanned<String>>,
    /// deployment-window: when deploying is allowed, as a cron expression
    /// (`sec min hour day month weekday [year]`) matched at the minute.
    pub cron: Option<Spanned<String>>,
    /// deployment-window: the IANA time zone of `cron` (default UTC).
    #[serde(rename = "time-zone", alias = "time_zone")]
    pub time_zone: Option<Spanned<String>>,
    /// plugin: `name@version-requirement` of a plugin of world `rule`.
    pub plugin: Option<Spanned<String>>,
    /// plugin: its configuration, as an action's (references allowed).
    #[serde(default)]
    pub config: BTreeMap<String, Spanned<toml::Value>>,
    /// plugin: capabilities granted to it, as an action's.
    pub grants: Option<Spanned<super::model::GrantsDecl>>,
    /// plugin: wall-clock timeout of one evaluation, e.g. `30s`.
    pub timeout: Option<Spanned<String>>,
}

/// When a condition is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    /// After the execution entered the stage, before its first action.
    BeforeEntry,
    /// After every action of the stage succeeded.
    OnSuccess,
    /// After the stage failed.
    OnFailure,
}

impl When {
    /// The key it is written under.
    pub fn key(self) -> &'static str {
        match self {
            When::BeforeEntry => "before-entry",
            When::OnSuccess => "on-success",
            When::OnFailure => "on-failure",
        }
    }

    /// The results this condition may have, the default first.
    fn results(self) -> &'static [ConditionResult] {
        match self {
            When::BeforeEntry => &[ConditionResult::Fail, ConditionResult::Skip],
            When::OnSuccess => &[ConditionResult::Fail, ConditionResult::Rollback],
            When::OnFailure => &[ConditionResult::Retry, ConditionResult::Rollback],
        }
    }
}

/// What a condition does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionResult {
    /// A rule did not pass: the stage fails (and the execution with it).
    Fail,
    /// before-entry, a rule did not pass: the stage is skipped, the
    /// execution goes on with the next one.
    Skip,
    /// on-failure, every rule passed: the stage runs again, once.
    Retry,
    /// on-success, a rule did not pass, or on-failure, every rule passed:
    /// the stage fails, and a server starts a rollback of it to the latest
    /// execution that succeeded in it under the current version.
    Rollback,
}

impl ConditionResult {
    /// The name it is written as.
    pub fn name(self) -> &'static str {
        match self {
            ConditionResult::Fail => "fail",
            ConditionResult::Skip => "skip",
            ConditionResult::Retry => "retry",
            ConditionResult::Rollback => "rollback",
        }
    }
}

/// A validated condition.
#[derive(Clone, Debug)]
pub struct Condition {
    /// What happens.
    pub result: ConditionResult,
    /// All must pass.
    pub rules: Vec<Rule>,
}

/// A stage's conditions.
#[derive(Clone, Debug, Default)]
pub struct StageConditions {
    /// Checked after entering.
    pub before_entry: Option<Condition>,
    /// Checked after success.
    pub on_success: Option<Condition>,
    /// Checked after failure.
    pub on_failure: Option<Condition>,
}

impl StageConditions {
    /// The condition checked `when`, if any.
    pub fn get(&self, when: When) -> Option<&Condition> {
        match when {
            When::BeforeEntry => self.before_entry.as_ref(),
            When::OnSuccess => self.on_success.as_ref(),
            When::OnFailure => self.on_failure.as_ref(),
        }
    }
}

/// A validated rule.
#[derive(Clone, Debug)]
pub struct Rule {
    /// Its name.
    pub name: String,
    /// What it checks.
    pub check: RuleCheck,
}

/// What a rule checks.
#[derive(Clone, Debug)]
pub enum RuleCheck {
    /// A text (with variable references) against a value.
    VariableCheck {
        /// The text, resolved when the rule is evaluated.
        variable: String,
        /// How to compare.
        operator: Operator,
        /// With what.
        value: String,
    },
    /// A rule plugin's `evaluate`, run as an action of its own (its plugin,
    /// configuration, grants and limits validated as an action's).
    Plugin(Box<super::ActionPlan>),
    /// Whether now falls in a cron window.
    DeploymentWindow {
        /// As written, for the verdict.
        expression: String,
        /// Parsed.
        schedule: Box<cron::Schedule>,
        /// Its time zone.
        time_zone: chrono_tz::Tz,
    },
}

/// variable-check's comparison.
#[derive(Clone, Debug)]
pub enum Operator {
    /// Equal.
    Eq,
    /// Not equal.
    Ne,
    /// Contains.
    Contains,
    /// Matches a regular expression (anywhere; anchor it with `^…$`).
    Matches(regex::Regex),
}

/// One rule's evaluation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The rule.
    pub rule: String,
    /// Whether it passed.
    pub passed: bool,
    /// What was found, for people.
    pub detail: String,
}

impl Rule {
    /// Evaluate the rule at `now`; `resolve` replaces variable references
    /// (an unresolvable one fails the rule, naming it).
    pub fn evaluate(
        &self,
        now: DateTime<Utc>,
        resolve: impl Fn(&str) -> Result<String, String>,
    ) -> Verdict {
        let (passed, detail) = match &self.check {
            RuleCheck::VariableCheck {
                variable,
                operator,
                value,
            } => match resolve(variable) {
                Ok(found) => compare(&found, operator, value),
                Err(e) => (false, e),
            },
            RuleCheck::DeploymentWindow {
                expression,
                schedule,
                time_zone,
            } => in_window(now, expression, schedule, *time_zone),
            // The executor runs rule plugins in the sandbox; nothing else may.
            RuleCheck::Plugin(_) => (
                false,
                "a rule plugin is evaluated by the executor, not here".to_string(),
            ),
        };
        Verdict {
            rule: self.name.clone(),
            passed,
            detail,
        }
    }
}

fn compare(found: &str, operator: &Operator, value: &str) -> (bool, String) {
    let (passed, verb) = match operator {
        Operator::Eq => (found == value, "equals"),
        Operator::Ne => (found != value, "differs from"),
        Operator::Contains => (found.contains(value), "contains"),
        Operator::Matches(pattern) => (pattern.is_match(found), "matches"),
    };
    let not = if passed { "" } else { "not: " };
    let found = quoted(found);
    (passed, format!("{not}`{found}` {verb} `{value}`"))
}

/// Most characters of a checked text a verdict quotes: the verdict is stored
/// with every evaluation and shown, and a variable may be megabytes long.
const MOST_QUOTED: usize = 200;

/// `text`, cut to [`MOST_QUOTED`] characters with its length said when longer.
fn quoted(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(MOST_QUOTED) {
        None => text.into(),
        Some((end, _)) => format!("{}… ({} bytes)", &text[..end], text.len()).into(),
    }
}

/// Whether the minute of `now`, in `zone`, is one the schedule fires in.
fn in_window(
    now: DateTime<Utc>,
    expression: &str,
    schedule: &cron::Schedule,
    zone: chrono_tz::Tz,
) -> (bool, String) {
    let local = now.with_timezone(&zone);
    let minute = local
        .with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .unwrap_or(local);
    let just_before = minute - chrono::Duration::seconds(1);
    let next = schedule.after(&just_before).next();
    let passed = next.is_some_and(|t| t < minute + chrono::Duration::minutes(1));
    let at = local.format("%Y-%m-%d %H:%M %Z");
    let detail = match (passed, next) {
        (true, _) => format!("{at} is inside `{expression}`"),
        (false, Some(next)) => format!(
            "not: {at} is outside `{expression}` (next window {})",
            next.format("%Y-%m-%d %H:%M %Z")
        ),
        (false, None) => format!("not: `{expression}` never opens again"),
    };
    (passed, detail)
}

/// What the validator knows that a condition's rules need.
pub trait RuleScope {
    /// Whether `namespace.key` may be referred to from this condition.
    fn check_reference(&mut self, reference: &vars::VarRef) -> Result<(), String>;

    /// A `plugin` rule as an action of its own: its plugin resolved (world
    /// `rule`), configuration and grants checked. `None` when it is not
    /// valid; the scope has reported why.
    fn plugin_rule(&mut self, rule: &RuleDecl) -> Option<super::ActionPlan>;
}

/// A rule scope as a borrowed trait object.
pub type ReferenceCheck<'a> = &'a mut dyn RuleScope;

/// Validate a condition written under `when`; errors are (byte offset,
/// message).
pub fn validate(
    when: When,
    decl: &Spanned<ConditionDecl>,
    check_reference: ReferenceCheck<'_>,
) -> Result<Condition, Vec<(usize, String)>> {
    let mut errors = Vec::new();
    let body = decl.get_ref();
    let allowed = when.results();
    let result = match &body.result {
        None => allowed[0],
        Some(written) => match allowed.iter().find(|r| r.name() == written.get_ref()) {
            Some(result) => *result,
            None => {
                let names: Vec<_> = allowed.iter().map(|r| r.name()).collect();
                errors.push((
                    written.span().start,
                    format!(
                        "`{}` result `{}` is not one of {names:?}",
                        when.key(),
                        written.get_ref()
                    ),
                ));
                allowed[0]
            }
        },
    };
    if body.rules.len() > MAX_RULES {
        errors.push((
            body.rules[MAX_RULES].span().start,
            format!(
                "`{}` has {} rules; a condition has at most {MAX_RULES}",
                when.key(),
                body.rules.len()
            ),
        ));
    }
    if when != When::OnFailure && body.rules.is_empty() {
        errors.push((
            decl.span().start,
            format!("`{}` has no rules; add at least one", when.key()),
        ));
    }
    let mut rules: Vec<Rule> = Vec::new();
    for rule in &body.rules {
        let name = rule.get_ref().name.get_ref();
        if rules.iter().any(|r| &r.name == name) {
            let at = rule.get_ref().name.span().start;
            errors.push((
                at,
                format!("duplicate rule name `{name}` in `{}`", when.key()),
            ));
        }
        match validate_rule(rule, check_reference) {
            Ok(check) => rules.push(Rule {
                name: name.clone(),
                check,
            }),
            Err(e) => errors.extend(e),
        }
    }
    if errors.is_empty() {
        Ok(Condition { result, rules })
    } else {
        Err(errors)
    }
}

fn validate_rule(
    rule: &Spanned<RuleDecl>,
    check_reference: ReferenceCheck<'_>,
) -> Result<RuleCheck, Vec<(usize, String)>> {
    let decl = rule.get_ref();
    let name = decl.name.get_ref();
    let at = rule.span().start;
    let missing = |key: &str| (at, format!("rule `{name}` needs `{key}`"));
    let unused = |key: &str, value: bool| {
        value.then(|| {
            (
                at,
                format!("rule `{name}`: `{key}` belongs to another provider"),
            )
        })
    };
    let mut errors = Vec::new();
    if decl.provider.get_ref() != "plugin" {
        for (key, present) in [
            ("plugin", decl.plugin.is_some()),
            ("config", !decl.config.is_empty()),
            ("grants", decl.grants.is_some()),
            ("timeout", decl.timeout.is_some()),
        ] {
            errors.extend(unused(key, present));
        }
    }
    match decl.provider.get_ref().as_str() {
        "variable-check" => {
            errors.extend(unused("cron", decl.cron.is_some()));
            errors.extend(unused("time-zone", decl.time_zone.is_some()));
            let (Some(variable), Some(operator), Some(value)) =
                (&decl.variable, &decl.operator, &decl.value)
            else {
                let absent = [
                    ("variable", decl.variable.is_none()),
                    ("operator", decl.operator.is_none()),
                    ("value", decl.value.is_none()),
                ];
                errors.extend(absent.iter().filter(|(_, a)| *a).map(|(k, _)| missing(k)));
                return Err(errors);
            };
            match vars::references(variable.get_ref()) {
                Ok(refs) => {
                    for reference in refs {
                        if let Err(message) = check_reference.check_reference(&reference) {
                            errors.push((variable.span().start, message));
                        }
                    }
                }
                Err(message) => errors.push((variable.span().start, message)),
            }
            let operator = match operator.get_ref().as_str() {
                "eq" => Operator::Eq,
                "ne" => Operator::Ne,
                "contains" => Operator::Contains,
                "matches" => match regex::Regex::new(value.get_ref()) {
                    Ok(pattern) => Operator::Matches(pattern),
                    Err(e) => {
                        errors.push((
                            value.span().start,
                            format!("rule `{name}`: invalid regular expression: {e}"),
                        ));
                        Operator::Eq
                    }
                },
                other => {
                    errors.push((
                        operator.span().start,
                        format!("rule `{name}`: operator `{other}` is not one of eq, ne, contains, matches"),
                    ));
                    Operator::Eq
                }
            };
            if !errors.is_empty() {
                return Err(errors);
            }
            Ok(RuleCheck::VariableCheck {
                variable: variable.get_ref().clone(),
                operator,
                value: value.get_ref().clone(),
            })
        }
        "deployment-window" => {
            for (key, present) in [
                ("variable", decl.variable.is_some()),
                ("operator", decl.operator.is_some()),
                ("value", decl.value.is_some()),
            ] {
                errors.extend(unused(key, present));
            }
            let Some(cron) = &decl.cron else {
                errors.push(missing("cron"));
                return Err(errors);
            };
            let schedule = crate::triggers::parse_cron(cron.get_ref())
                .map_err(|e| errors.push((cron.span().start, e)))
                .ok();
            let time_zone = match &decl.time_zone {
                None => Some(chrono_tz::UTC),
                Some(zone) => chrono_tz::Tz::from_str(zone.get_ref())
                    .map_err(|_| {
                        errors.push((
                            zone.span().start,
                            format!("unknown time zone `{}`; write an IANA name such as `Europe/Paris` or `UTC`", zone.get_ref()),
                        ))
                    })
                    .ok(),
            };
            match (schedule, time_zone) {
                (Some(schedule), Some(time_zone)) if errors.is_empty() => {
                    Ok(RuleCheck::DeploymentWindow {
                        expression: cron.get_ref().clone(),
                        schedule: Box::new(schedule),
                        time_zone,
                    })
                }
                _ => Err(errors),
            }
        }
        "plugin" => {
            for (key, present) in [
                ("variable", decl.variable.is_some()),
                ("operator", decl.operator.is_some()),
                ("value", decl.value.is_some()),
                ("cron", decl.cron.is_some()),
                ("time-zone", decl.time_zone.is_some()),
            ] {
                errors.extend(unused(key, present));
            }
            if decl.plugin.is_none() {
                errors.push(missing("plugin"));
            }
            if !errors.is_empty() {
                return Err(errors);
            }
            // An invalid plugin rule has been reported by the scope.
            let action = check_reference.plugin_rule(decl).ok_or_else(Vec::new)?;
            Ok(RuleCheck::Plugin(Box::new(action)))
        }
        other => Err(vec![(
            decl.provider.span().start,
            format!(
                "rule `{name}`: unknown provider `{other}`; use variable-check, deployment-window or plugin"
            ),
        )]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn window(expression: &str, zone: chrono_tz::Tz) -> Rule {
        Rule {
            name: "w".into(),
            check: RuleCheck::DeploymentWindow {
                expression: expression.into(),
                schedule: Box::new(crate::triggers::parse_cron(expression).unwrap()),
                time_zone: zone,
            },
        }
    }

    #[test]
    fn a_deployment_window_is_matched_at_the_minute_in_its_time_zone() {
        // 08:30:45 UTC is 09:30:45 in Paris in winter.
        let now = Utc.with_ymd_and_hms(2026, 1, 14, 8, 30, 45).unwrap();
        let office = window("* * 9-17 * * Mon-Fri", chrono_tz::Europe::Paris);
        assert!(office.evaluate(now, |_| unreachable!()).passed);
        let in_utc = window("* * 9-17 * * Mon-Fri", chrono_tz::UTC);
        let verdict = in_utc.evaluate(now, |_| unreachable!());
        assert!(!verdict.passed, "{verdict:?}");
        assert!(
            verdict.detail.contains("next window 2026-01-14 09:00"),
            "{verdict:?}"
        );
        // A window of one minute, given at second 0, covers the whole minute.
        assert!(
            window("0 30 8 * * *", chrono_tz::UTC)
                .evaluate(now, |_| unreachable!())
                .passed
        );
    }

    #[test]
    fn a_huge_checked_text_is_quoted_in_part() {
        let rule = Rule {
            name: "v".into(),
            check: RuleCheck::VariableCheck {
                variable: "#{variables.big}".into(),
                operator: Operator::Contains,
                value: "needle".into(),
            },
        };
        let big = "é".repeat(1 << 20);
        let verdict = rule.evaluate(Utc::now(), |_| Ok(big.clone()));
        assert!(!verdict.passed);
        assert!(
            verdict.detail.len() < 1000,
            "{} bytes",
            verdict.detail.len()
        );
        assert!(
            verdict.detail.contains("… (2097152 bytes)"),
            "{}",
            &verdict.detail[..300]
        );
    }

    #[test]
    fn a_variable_check_compares_the_resolved_text() {
        let rule = |operator, value: &str| Rule {
            name: "v".into(),
            check: RuleCheck::VariableCheck {
                variable: "#{source.branch}".into(),
                operator,
                value: value.into(),
            },
        };
        let now = Utc::now();
        let main = |_: &str| Ok("main".to_string());
        assert!(rule(Operator::Eq, "main").evaluate(now, main).passed);
        assert!(!rule(Operator::Ne, "main").evaluate(now, main).passed);
        assert!(rule(Operator::Contains, "ai").evaluate(now, main).passed);
        let pattern = Operator::Matches(regex::Regex::new("^ma").unwrap());
        assert!(rule(pattern, "^ma").evaluate(now, main).passed);
        let missing = |_: &str| Err("`#{source.branch}` has no value".to_string());
        let verdict = rule(Operator::Eq, "main").evaluate(now, missing);
        assert_eq!(
            (verdict.passed, verdict.detail.as_str()),
            (false, "`#{source.branch}` has no value")
        );
    }
}
