//! Triggers: what starts executions besides people. Webhooks (GitHub-style push
//! and pull-request payloads signed with HMAC-SHA256) and cron schedules.
//!
//! Filters use glob semantics where `*` stays within one path level and `**`
//! crosses levels, for branches (`release/*`), tags (`v*`) and paths (`src/**`).

use std::collections::BTreeMap;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A validated webhook trigger.
#[derive(Clone, Debug)]
pub struct WebhookTrigger {
    /// Host secret holding the HMAC key.
    pub secret: String,
    /// Accepted events.
    pub events: Vec<String>,
    branches: Filter,
    tags: Filter,
    paths: Filter,
}

/// Globs, and whether any were given (an empty filter accepts everything).
#[derive(Clone, Debug)]
struct Filter {
    set: GlobSet,
    patterns: Vec<String>,
}

impl Filter {
    fn new(patterns: &[String]) -> Result<Self, String> {
        let mut builder = GlobSetBuilder::new();
        for pattern in patterns {
            builder.add(glob(pattern)?);
        }
        let set = builder.build().map_err(|e| e.to_string())?;
        Ok(Self {
            set,
            patterns: patterns.to_vec(),
        })
    }

    fn accepts(&self, value: &str) -> bool {
        self.patterns.is_empty() || self.set.is_match(value)
    }
}

/// `*` within a level, `**` across levels.
fn glob(pattern: &str) -> Result<Glob, String> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| format!("invalid glob `{pattern}`: {e}"))
}

/// What a webhook delivery says happened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delivery {
    /// `push` or `pull_request`.
    pub event: String,
    /// The pushed branch, or the pull request's base branch.
    pub branch: Option<String>,
    /// The pushed tag.
    pub tag: Option<String>,
    /// The commit to build.
    pub revision: String,
    /// Paths the push changed (empty for pull requests: their payload lacks them).
    pub paths: Vec<String>,
}

impl Delivery {
    /// The `#{trigger.*}` variables of an execution this delivery starts.
    pub fn variables(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("kind".to_string(), "webhook".to_string()),
            ("event".to_string(), self.event.clone()),
            ("revision".to_string(), self.revision.clone()),
            (
                "branch".to_string(),
                self.branch.clone().unwrap_or_default(),
            ),
            ("tag".to_string(), self.tag.clone().unwrap_or_default()),
        ])
    }
}

impl WebhookTrigger {
    /// Build from the pipeline file's declaration.
    pub fn new(
        secret: &str,
        events: &[String],
        branches: &[String],
        tags: &[String],
        paths: &[String],
    ) -> Result<Self, String> {
        let events = if events.is_empty() {
            vec!["push".into(), "pull_request".into()]
        } else {
            events.to_vec()
        };
        if let Some(unknown) = events
            .iter()
            .find(|e| !["push", "pull_request"].contains(&e.as_str()))
        {
            return Err(format!(
                "unknown webhook event `{unknown}`; use push or pull_request"
            ));
        }
        Ok(Self {
            secret: secret.to_string(),
            events,
            branches: Filter::new(branches)?,
            tags: Filter::new(tags)?,
            paths: Filter::new(paths)?,
        })
    }

    /// `Ok` when the delivery should start an execution, else why not.
    pub fn accepts(&self, delivery: &Delivery) -> Result<(), String> {
        if !self.events.contains(&delivery.event) {
            return Err(format!(
                "event `{}` is not one of {:?}",
                delivery.event, self.events
            ));
        }
        match (&delivery.branch, &delivery.tag) {
            (Some(branch), _) if !self.branches.accepts(branch) => {
                return Err(format!(
                    "branch `{branch}` matches none of {:?}",
                    self.branches.patterns
                ));
            }
            (_, Some(tag)) if !self.tags.accepts(tag) => {
                return Err(format!(
                    "tag `{tag}` matches none of {:?}",
                    self.tags.patterns
                ));
            }
            _ => {}
        }
        if delivery.event == "push"
            && !self.paths.patterns.is_empty()
            && !delivery.paths.iter().any(|p| self.paths.accepts(p))
        {
            return Err(format!("no changed path matches {:?}", self.paths.patterns));
        }
        Ok(())
    }
}

/// The header of the timestamped signing scheme: Unix seconds when the
/// delivery was signed. With it, X-Hub-Signature-256 is the HMAC-SHA256 of
/// `<timestamp>.<body>`, so an old delivery cannot be replayed with a fresh
/// timestamp.
pub const TIMESTAMP_HEADER: &str = "x-sluice-timestamp";

/// Check `X-Hub-Signature-256: sha256=<hex>` against HMAC-SHA256(key, body), in
/// constant time.
pub fn verify_signature(key: &[u8], body: &[u8], header: Option<&str>) -> Result<(), String> {
    verify_mac(key, &[body], header)
}

/// Verify a delivery: GitHub's plain scheme (HMAC of the body) without a
/// timestamp header; with `X-Sluice-Timestamp: <unix seconds>`, the HMAC of
/// `<timestamp>.<body>`, and the timestamp no further than `max_age` from now
/// (either way: a clock far ahead is refused too).
pub fn verify_delivery(
    key: &[u8],
    body: &[u8],
    signature: Option<&str>,
    timestamp: Option<&str>,
    max_age: std::time::Duration,
) -> Result<(), String> {
    let Some(timestamp) = timestamp else {
        return verify_signature(key, body, signature);
    };
    let signed_at: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| format!("X-Sluice-Timestamp `{timestamp}` is not Unix seconds"))?;
    verify_mac(key, &[timestamp.trim().as_bytes(), b".", body], signature)?;
    let now = chrono::Utc::now().timestamp();
    let age = now.saturating_sub(signed_at);
    if age.unsigned_abs() > max_age.as_secs() {
        let when = match age > 0 {
            true => format!("{age}s old"),
            false => format!("{}s in the future", -age),
        };
        return Err(format!(
            "delivery signed at {signed_at} is {when}; the window is {} (--webhook-max-age)",
            humantime::format_duration(max_age)
        ));
    }
    Ok(())
}

fn verify_mac(key: &[u8], parts: &[&[u8]], header: Option<&str>) -> Result<(), String> {
    let header = header.ok_or("missing X-Hub-Signature-256 header")?;
    let hex_digest = header
        .strip_prefix("sha256=")
        .ok_or("X-Hub-Signature-256 must start with sha256=")?;
    let expected = hex::decode(hex_digest.trim()).map_err(|_| "X-Hub-Signature-256 is not hex")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(key).map_err(|e| e.to_string())?;
    for part in parts {
        mac.update(part);
    }
    mac.verify_slice(&expected)
        .map_err(|_| "signature mismatch".to_string())
}

/// Read a GitHub-style `push` or `pull_request` payload.
pub fn parse_delivery(event: &str, body: &[u8]) -> Result<Delivery, String> {
    let payload: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("payload is not JSON: {e}"))?;
    match event {
        "push" => {
            let reference = payload["ref"].as_str().ok_or("push payload has no `ref`")?;
            let (branch, tag) = match (
                reference.strip_prefix("refs/heads/"),
                reference.strip_prefix("refs/tags/"),
            ) {
                (Some(branch), _) => (Some(branch.to_string()), None),
                (_, Some(tag)) => (None, Some(tag.to_string())),
                _ => return Err(format!("unknown ref `{reference}`")),
            };
            let mut paths: Vec<String> = Vec::new();
            for commit in payload["commits"].as_array().into_iter().flatten() {
                for key in ["added", "modified", "removed"] {
                    paths.extend(
                        commit[key]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|p| p.as_str().map(String::from)),
                    );
                }
            }
            paths.sort();
            paths.dedup();
            let revision = payload["after"].as_str().unwrap_or_default().to_string();
            Ok(Delivery {
                event: event.into(),
                branch,
                tag,
                revision,
                paths,
            })
        }
        "pull_request" => {
            let pr = &payload["pull_request"];
            let branch = pr["base"]["ref"]
                .as_str()
                .ok_or("pull_request payload has no base.ref")?;
            let revision = pr["head"]["sha"].as_str().unwrap_or_default().to_string();
            Ok(Delivery {
                event: event.into(),
                branch: Some(branch.into()),
                tag: None,
                revision,
                paths: Vec::new(),
            })
        }
        other => Err(format!(
            "event `{other}` is not handled; send push, pull_request or ping"
        )),
    }
}

/// Check a cron expression (`sec min hour day month weekday [year]`, UTC).
pub fn parse_cron(expression: &str) -> Result<cron::Schedule, String> {
    expression
        .parse::<cron::Schedule>()
        .map_err(|e| format!("invalid cron schedule `{expression}` ({e}); write `sec min hour day month weekday`, e.g. `0 */5 * * * *`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(key: &str, body: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
        mac.update(body.as_bytes());
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn signatures_are_checked() {
        let header = sign("k", "body");
        assert!(verify_signature(b"k", b"body", Some(&header)).is_ok());
        assert!(verify_signature(b"other", b"body", Some(&header)).is_err());
        assert!(verify_signature(b"k", b"tampered", Some(&header)).is_err());
        assert!(verify_signature(b"k", b"body", None).is_err());
    }

    #[test]
    fn timestamped_signatures_cover_the_timestamp_and_keep_a_window() {
        let window = std::time::Duration::from_secs(300);
        let now = chrono::Utc::now().timestamp().to_string();
        let signed = sign("k", &format!("{now}.body"));
        assert!(verify_delivery(b"k", b"body", Some(&signed), Some(&now), window).is_ok());
        let plain = sign("k", "body");
        assert!(
            verify_delivery(b"k", b"body", Some(&plain), Some(&now), window).is_err(),
            "a plain signature does not cover the timestamp"
        );
        assert!(verify_delivery(b"k", b"body", Some(&plain), None, window).is_ok());
        let old = (chrono::Utc::now().timestamp() - 301).to_string();
        let signed_old = sign("k", &format!("{old}.body"));
        let refused =
            verify_delivery(b"k", b"body", Some(&signed_old), Some(&old), window).unwrap_err();
        assert!(refused.contains("301s old"), "{refused}");
    }

    #[test]
    fn one_star_stays_in_a_level_two_cross_levels() {
        let trigger = WebhookTrigger::new(
            "s",
            &[],
            &["release/*".into()],
            &[],
            &["src/**".into(), "*.toml".into()],
        )
        .unwrap();
        let push = |branch: &str, paths: &[&str]| Delivery {
            event: "push".into(),
            branch: Some(branch.into()),
            paths: paths.iter().map(|p| p.to_string()).collect(),
            ..Default::default()
        };
        assert!(
            trigger
                .accepts(&push("release/1.0", &["src/a/b.rs"]))
                .is_ok()
        );
        assert!(
            trigger
                .accepts(&push("release/1.0/hotfix", &["src/a.rs"]))
                .is_err()
        );
        assert!(
            trigger
                .accepts(&push("release/1.0", &["Cargo.toml"]))
                .is_ok()
        );
        assert!(
            trigger
                .accepts(&push("release/1.0", &["docs/Cargo.toml"]))
                .is_err()
        );
        assert!(trigger.accepts(&push("main", &["src/a.rs"])).is_err());
    }

    #[test]
    fn push_payloads_give_branch_tag_revision_and_paths() {
        let body = r#"{"ref":"refs/heads/main","after":"abc","commits":[{"added":["a"],"modified":["b"],"removed":[]},{"modified":["a"]}]}"#;
        let delivery = parse_delivery("push", body.as_bytes()).unwrap();
        assert_eq!(delivery.branch.as_deref(), Some("main"));
        assert_eq!(delivery.revision, "abc");
        assert_eq!(delivery.paths, ["a", "b"]);
        let tag = parse_delivery("push", br#"{"ref":"refs/tags/v1.2","after":"d"}"#).unwrap();
        assert_eq!(tag.tag.as_deref(), Some("v1.2"));
        assert!(parse_delivery("issues", b"{}").is_err());
    }

    #[test]
    fn cron_expressions_are_validated() {
        assert!(parse_cron("0 */5 * * * *").is_ok());
        assert!(parse_cron("every tuesday").is_err());
    }
}
