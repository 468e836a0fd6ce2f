//! `plugin.toml`: what a plugin is, what it accepts, and the most it may be granted.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// A parsed plugin manifest.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Plugin name, as pipelines refer to it.
    pub name: String,
    /// Semantic version.
    pub version: semver::Version,
    /// WIT world the component implements (`action`).
    pub world: String,
    /// Component file name, beside the manifest.
    pub component: String,
    /// Hex sha256 of the component file; installation verifies it.
    pub sha256: Option<String>,
    /// One line for people.
    #[serde(default)]
    pub description: String,
    /// Source language of the component (`rust`, `python`, `js`...); informational.
    #[serde(default)]
    pub language: Option<String>,
    /// Action categories: source, build, test, deploy, approval, invoke.
    #[serde(default)]
    pub categories: Vec<String>,
    /// Configuration keys the plugin accepts.
    #[serde(default)]
    pub config: BTreeMap<String, ConfigKey>,
    /// The most a pipeline may grant this plugin.
    #[serde(default)]
    pub capabilities: Capabilities,
}

/// One configuration key of a plugin.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConfigKey {
    /// Value type.
    #[serde(rename = "type", default)]
    pub kind: ConfigType,
    /// Whether the pipeline must set it.
    #[serde(default)]
    pub required: bool,
    /// Whether the value is sensitive (never shown by `plugin inspect` examples).
    #[serde(default)]
    pub secret: bool,
    /// What it means.
    #[serde(default)]
    pub description: String,
}

/// The type of a configuration value.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ConfigType {
    /// Any text.
    #[default]
    String,
    /// A whole number.
    Integer,
    /// `true` or `false`.
    Boolean,
}

impl ConfigType {
    /// Whether a literal value has this type.
    pub fn accepts(self, value: &str) -> bool {
        match self {
            ConfigType::String => true,
            ConfigType::Integer => value.trim().parse::<i64>().is_ok(),
            ConfigType::Boolean => matches!(value.trim(), "true" | "false"),
        }
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            ConfigType::String => "string",
            ConfigType::Integer => "integer",
            ConfigType::Boolean => "boolean",
        }
    }
}

/// Capabilities a plugin may ever be granted. `"*"` in a list means any.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Secret names.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Outbound HTTP host patterns.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Program names for the process capability.
    #[serde(default)]
    pub commands: Vec<String>,
    /// Whether host directories may be mounted.
    #[serde(default)]
    pub mounts: bool,
    /// Whether the pipeline's caches (`/cache/<name>`, `#{cache.<name>}`) may be granted.
    #[serde(default)]
    pub caches: bool,
}

impl Capabilities {
    /// Whether a secret name is within the manifest.
    pub fn allows_secret(&self, name: &str) -> bool {
        covers(&self.secrets, name)
    }

    /// Whether a program is within the manifest.
    pub fn allows_command(&self, program: &str) -> bool {
        covers(&self.commands, program)
    }

    /// Whether a granted host pattern is within the manifest's patterns.
    pub fn allows_host(&self, pattern: &str) -> bool {
        self.hosts.iter().any(|allowed| {
            allowed == "*"
                || allowed.eq_ignore_ascii_case(pattern)
                || pattern_within(allowed, pattern)
        })
    }

    /// One line per capability, for install prompts and `plugin inspect`.
    pub fn describe(&self) -> Vec<String> {
        let list = |items: &[String]| {
            if items.is_empty() {
                "none".to_string()
            } else if items.iter().any(|i| i == "*") {
                "any the pipeline grants".to_string()
            } else {
                items.join(", ")
            }
        };
        vec![
            format!("secrets:       {}", list(&self.secrets)),
            format!("outbound HTTP: {}", list(&self.hosts)),
            format!("commands:      {}", list(&self.commands)),
            format!("host mounts:   {}", if self.mounts { "yes" } else { "no" }),
            format!("caches:        {}", if self.caches { "yes" } else { "no" }),
        ]
    }

    /// What `newer` may do that `self` may not, one line each.
    pub fn widened_by(&self, newer: &Capabilities) -> Vec<String> {
        let mut added = Vec::new();
        for s in newer.secrets.iter().filter(|s| !self.secrets.contains(s)) {
            added.push(format!("+ secret {s}"));
        }
        for h in newer.hosts.iter().filter(|h| !self.hosts.contains(h)) {
            added.push(format!("+ outbound HTTP {h}"));
        }
        for c in newer.commands.iter().filter(|c| !self.commands.contains(c)) {
            added.push(format!("+ command {c}"));
        }
        if newer.mounts && !self.mounts {
            added.push("+ host mounts".to_string());
        }
        if newer.caches && !self.caches {
            added.push("+ caches".to_string());
        }
        added
    }
}

fn covers(list: &[String], item: &str) -> bool {
    list.iter().any(|allowed| allowed == "*" || allowed == item)
}

/// Whether a `*.domain` manifest pattern covers a granted host pattern.
fn pattern_within(allowed: &str, granted: &str) -> bool {
    match allowed.strip_prefix("*.") {
        Some(domain) => granted
            .split(':')
            .next()
            .is_some_and(|host| host.ends_with(&format!(".{domain}"))),
        None => false,
    }
}

impl Manifest {
    /// Read and parse `plugin.toml` in `dir`.
    pub fn read(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("plugin.toml");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let manifest: Manifest =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        manifest
            .check()
            .with_context(|| format!("in {}", path.display()))?;
        Ok(manifest)
    }

    fn check(&self) -> anyhow::Result<()> {
        let valid_name = !self.name.is_empty()
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        anyhow::ensure!(
            valid_name,
            "plugin name `{}` must be letters, digits, - or _",
            self.name
        );
        anyhow::ensure!(
            ["action", "source", "rule"].contains(&self.world.as_str()),
            "world `{}` is not supported; this host runs worlds `action`, `source` and `rule`",
            self.world
        );
        let plain_file = Path::new(&self.component)
            .file_name()
            .map(|f| f.to_os_string())
            == Some(self.component.clone().into());
        anyhow::ensure!(
            plain_file,
            "component `{}` must be a file name beside plugin.toml",
            self.component
        );
        Ok(())
    }

    /// `name@version`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_checks_honour_wildcards() {
        let caps = Capabilities {
            secrets: vec!["TOKEN".into()],
            hosts: vec!["*.example.com".into()],
            commands: vec!["*".into()],
            mounts: false,
            caches: false,
        };
        assert!(caps.allows_secret("TOKEN"));
        assert!(!caps.allows_secret("OTHER"));
        assert!(caps.allows_command("anything"));
        assert!(caps.allows_host("api.example.com:443"));
        assert!(!caps.allows_host("evil.com"));
    }

    #[test]
    fn widening_lists_only_new_capabilities() {
        let old = Capabilities {
            hosts: vec!["a.com".into()],
            ..Default::default()
        };
        let new = Capabilities {
            hosts: vec!["a.com".into(), "b.com".into()],
            mounts: true,
            ..Default::default()
        };
        assert_eq!(
            old.widened_by(&new),
            vec!["+ outbound HTTP b.com", "+ host mounts"]
        );
    }
}
