//! Modes that try to get a secret out through a channel the host might not mask:
//! an artifact read by an action that was never granted the secret, variable
//! names, encodings in other letter cases, and a continuation token.

use std::fmt::Write as _;

use crate::sluice::action::continuation;
use crate::sluice::action::log::{self, Level};
use crate::sluice::action::secrets;
use crate::sluice::action::types::{FailureKind, Outcome};
use crate::{Failure, Inv, outcome};

/// File the secret is planted in, inside the first output (then input).
const LEAK_FILE: &str = "leak.txt";

/// `secret-to-artifact`: read the granted `secret` and write it into the first
/// output, for a later action that was not granted it.
pub fn to_artifact(inv: &Inv) -> Result<Outcome, Failure> {
    let value = granted(inv)?;
    let output = inv
        .0
        .outputs
        .first()
        .ok_or_else(|| config("needs an output"))?;
    std::fs::write(format!("/out/{output}/{LEAK_FILE}"), &value)
        .map_err(|e| config(format!("writing the leak: {e}")))?;
    Ok(outcome("planted".to_string()))
}

/// `launder-secret`: read what `secret-to-artifact` planted and push it through
/// every channel: log, stdout, stderr, progress, a variable's name and value,
/// the summary; literally and lower-case percent- and upper-case hex-encoded.
pub fn launder(inv: &Inv) -> Result<Outcome, Failure> {
    let path = format!("{}/{LEAK_FILE}", inv.first_input_dir());
    let value =
        std::fs::read_to_string(&path).map_err(|e| config(format!("reading {path}: {e}")))?;
    let (percent, hex) = (percent_lower(&value), hex_upper(&value));
    log::write(Level::Warn, &format!("hostile: laundered {value}"));
    log::progress(50, &format!("laundering {value}"));
    println!("hostile: percent {percent}");
    eprintln!("hostile: hex {hex}");
    Ok(Outcome {
        summary: format!("laundered {value} / {percent} / {hex}"),
        variables: vec![
            (value.clone(), value.clone()),
            ("percent".to_string(), percent),
            ("hex".to_string(), hex),
        ],
    })
}

/// `continue-with-secret`: carry the granted `secret` in a continuation token
/// (waiting `delay-ms`, default 3000), and check it comes back intact.
pub fn continue_with(inv: &Inv) -> Result<Outcome, Failure> {
    let value = granted(inv)?;
    match &inv.0.continuation {
        None => {
            let delay = inv.config("delay-ms").and_then(|d| d.parse().ok());
            continuation::resume_later(&value, delay.unwrap_or(3000));
            Ok(outcome("waiting with the secret in the token".to_string()))
        }
        Some(token) if *token == value => Ok(outcome("the token came back intact".to_string())),
        Some(_) => Err(Failure {
            kind: FailureKind::JobFailed,
            message: "the token came back changed".to_string(),
        }),
    }
}

fn granted(inv: &Inv) -> Result<String, Failure> {
    let name = inv.config("secret").unwrap_or("");
    secrets::get(name).map_err(config)
}

fn config(message: impl Into<String>) -> Failure {
    Failure {
        kind: FailureKind::ConfigurationError,
        message: message.into(),
    }
}

/// Every byte but letters and digits as `%xx`, lower-case hex.
fn percent_lower(value: &str) -> String {
    value.bytes().fold(String::new(), |mut out, b| {
        if b.is_ascii_alphanumeric() {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02x}");
        }
        out
    })
}

fn hex_upper(value: &str) -> String {
    value.bytes().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02X}");
        out
    })
}
