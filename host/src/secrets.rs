//! Where secret values come from, and how they are kept out of every stored byte.
//!
//! Values are read from the host environment (`SLUICE_SECRET_<NAME>`) or from a
//! TOML secrets file (`NAME = "value"`). Only the names a pipeline grants to an
//! action are ever handed to that action's sandbox.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::Context as _;
use base64::Engine as _;

/// Prefix of environment variables that supply secret values.
pub const ENV_PREFIX: &str = "SLUICE_SECRET_";

/// Replacement text for a masked secret.
pub const MASK: &str = "***";

/// Encoded forms shorter than this are not masked: too many false positives.
const MIN_ENCODED_LEN: usize = 4;

/// The secret values known to this host, by name.
#[derive(Clone, Default)]
pub struct SecretSource {
    values: HashMap<String, String>,
}

impl SecretSource {
    /// Secrets from `SLUICE_SECRET_*` environment variables, then from `file` if
    /// given (the file wins on conflicts).
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut values: HashMap<String, String> = std::env::vars()
            .filter_map(|(k, v)| k.strip_prefix(ENV_PREFIX).map(|name| (name.to_string(), v)))
            .collect();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading secrets file {}", path.display()))?;
            let table: BTreeMap<String, String> = toml::from_str(&text)
                .with_context(|| format!("parsing secrets file {}", path.display()))?;
            values.extend(table);
        }
        Ok(Self { values })
    }

    /// A source holding exactly these values (used by tests and embedders).
    pub fn from_map(values: HashMap<String, String>) -> Self {
        Self { values }
    }

    /// The granted subset: each granted name with its value, when the host has one.
    pub fn granted(&self, names: &[String]) -> HashMap<String, String> {
        names
            .iter()
            .filter_map(|n| self.values.get(n).map(|v| (n.clone(), v.clone())))
            .collect()
    }
}

/// Replaces secret values, and their common encodings, with [`MASK`].
///
/// Masking only the literal value is how encoded secrets leaked in the tj-actions
/// compromise, so base64 (standard and URL-safe, at every byte alignment), hex and
/// URL-encoded forms are masked as well.
#[derive(Clone, Default, Debug)]
pub struct Masker {
    needles: Vec<String>,
}

impl Masker {
    /// A masker for these secret values.
    pub fn new<'a>(values: impl IntoIterator<Item = &'a String>) -> Self {
        let mut needles: Vec<String> = values
            .into_iter()
            .filter(|v| !v.is_empty())
            .flat_map(|v| encoded_forms(v))
            .collect();
        // Longest first, so a value is masked before any shorter form inside it.
        needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
        needles.dedup();
        Self { needles }
    }

    /// The text with every known form of every secret replaced.
    pub fn mask(&self, text: &str) -> String {
        let mut masked = text.to_string();
        for needle in &self.needles {
            if masked.contains(needle.as_str()) {
                masked = masked.replace(needle.as_str(), MASK);
            }
        }
        masked
    }

    /// Whether there is nothing to mask.
    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }
}

/// The literal value and the encodings a leaking plugin would most likely use.
fn encoded_forms(secret: &str) -> Vec<String> {
    let bytes = secret.as_bytes();
    let mut forms = vec![secret.to_string()];
    let url = percent_encoding::utf8_percent_encode(secret, percent_encoding::NON_ALPHANUMERIC)
        .to_string();
    forms.push(url);
    forms.push(hex::encode(bytes));
    forms.push(hex::encode_upper(bytes));
    for engine in [
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ] {
        for offset in 0..3 {
            forms.push(base64_core(engine, bytes, offset));
        }
    }
    forms.retain(|f| f == secret || f.len() >= MIN_ENCODED_LEN);
    forms
}

/// The base64 characters that encode only `bytes`, when `bytes` starts `offset`
/// bytes into a longer stream: characters mixing in neighbouring bytes are dropped.
fn base64_core(engine: &base64::engine::GeneralPurpose, bytes: &[u8], offset: usize) -> String {
    let mut padded = vec![0u8; offset];
    padded.extend_from_slice(bytes);
    let encoded = engine.encode(&padded);
    let skip = (offset * 8).div_ceil(6);
    let total_bits = padded.len() * 8;
    let keep_until = total_bits / 6; // a trailing partial character mixes in what follows
    encoded
        .get(skip..keep_until.min(encoded.len()))
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masker(secret: &str) -> Masker {
        Masker::new([&secret.to_string()])
    }

    #[test]
    fn literal_and_encoded_forms_are_masked() {
        let secret = "hunter2-very-secret";
        let m = masker(secret);
        let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
        let url_form = "hunter2%2Dvery%2Dsecret";
        for leak in [
            secret.to_string(),
            b64,
            hex::encode(secret),
            url_form.to_string(),
        ] {
            let line = format!("token={leak};");
            let masked = m.mask(&line);
            assert!(!masked.contains(&leak), "{leak} survived in {masked}");
            assert!(masked.contains(MASK));
        }
    }

    #[test]
    fn base64_is_masked_at_every_alignment() {
        let secret = "s3cr3t-value-42";
        let m = masker(secret);
        for prefix in ["", "a", "ab", "abc"] {
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("{prefix}{secret}tail"));
            let masked = m.mask(&encoded);
            assert!(
                masked.contains(MASK),
                "prefix {prefix:?}: {encoded} not masked"
            );
        }
    }

    #[test]
    fn ungranted_names_are_not_handed_out() {
        let source = SecretSource::from_map(HashMap::from([
            ("A".to_string(), "1".to_string()),
            ("B".to_string(), "2".to_string()),
        ]));
        let granted = source.granted(&["A".to_string()]);
        assert_eq!(granted.len(), 1);
        assert_eq!(granted["A"], "1");
    }
}
