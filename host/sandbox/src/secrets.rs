//! Secrets capability: `sluice:action/secrets`.
//!
//! The sandbox holds only the secrets granted to this action. Asking for any other
//! name is a capability denial: it fails the action, whatever the guest does next.

use std::collections::HashMap;

use super::SandboxState;
use super::bindings::sluice::action::secrets::Host;

/// The secrets one action may read, by name.
#[derive(Clone, Default)]
pub struct SecretsCapability {
    granted: HashMap<String, String>,
    granted_names: Vec<String>,
}

impl SecretsCapability {
    /// Build from the granted names and the values the host holds for them.
    pub fn from_grant(granted_names: &[String], values: HashMap<String, String>) -> Self {
        Self {
            granted: values,
            granted_names: granted_names.to_vec(),
        }
    }

    /// The value of a granted secret.
    pub fn value(&self, name: &str) -> Result<&str, SecretError> {
        if !self.granted_names.iter().any(|n| n == name) {
            return Err(SecretError::NotGranted(name.to_string()));
        }
        self.granted
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| SecretError::NoValue(name.to_string()))
    }
}

/// Why a secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The pipeline does not grant this secret to the action.
    #[error("secret `{0}` is not granted to this action")]
    NotGranted(String),
    /// Granted, but the host has no value for it.
    #[error(
        "secret `{0}` is granted but has no value on this host (set {prefix}{0} or use --secrets FILE)",
        prefix = sluice_store::secrets::ENV_PREFIX
    )]
    NoValue(String),
}

impl Host for SandboxState {
    async fn get(&mut self, name: String) -> wasmtime::Result<Result<String, String>> {
        match self.secrets.value(&name) {
            Ok(value) => {
                // Said in the log, so a reader knows the guest held the value
                // (header handles and `secret-env` never hand it over).
                let note = format!("secret `{name}` handed to the action (secrets.get)");
                self.log.line(super::log::LogStream::Host, &note);
                Ok(Ok(value.to_string()))
            }
            Err(err @ SecretError::NotGranted(_)) => {
                self.denials
                    .record(&self.log, format!("permission denied: {err}"));
                Ok(Err(err.to_string()))
            }
            Err(err) => Ok(Err(err.to_string())),
        }
    }
}
