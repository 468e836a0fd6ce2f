//! Where secret values come from, and how they are kept out of every stored byte.
//!
//! Values are read from the host environment (`SLUICE_SECRET_<NAME>`) or from a
//! TOML secrets file (`NAME = "value"`). Only the names a pipeline grants to an
//! action are ever handed to that action's sandbox.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use aho_corasick::AhoCorasick;
use anyhow::Context as _;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};

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

    /// A masker for every value this host holds: what one action was granted
    /// can reach another through an artifact, so all of them are masked everywhere.
    pub fn masker(&self) -> Masker {
        Masker::new(self.values.values())
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
/// URL-encoded forms are masked as well. Hex and percent-encoded forms match in
/// any letter case (`%2f` and `%2F`, `deadbeef` and `DEADBEEF`); the literal
/// value and base64 match exactly, since their case carries information.
///
/// Matching is one pass over the text per case class (Aho-Corasick over every
/// form of every secret), and overlapping matches are merged, so one secret
/// inside or next to another cannot leave a fragment in clear.
#[derive(Clone, Default, Debug)]
pub struct Masker {
    exact: Option<AhoCorasick>,
    any_case: Option<AhoCorasick>,
}

impl Masker {
    /// A masker for these secret values.
    pub fn new<'a>(values: impl IntoIterator<Item = &'a String>) -> Self {
        let mut exact = Vec::new();
        let mut any_case = Vec::new();
        for value in values.into_iter().filter(|v| !v.is_empty()) {
            let forms = encoded_forms(value);
            exact.extend(forms.exact);
            any_case.extend(forms.any_case);
        }
        Self {
            exact: automaton(exact, false),
            any_case: automaton(any_case, true),
        }
    }

    /// The text with every known form of every secret replaced.
    pub fn mask(&self, text: &str) -> String {
        let mut spans: Vec<(usize, usize)> = [&self.exact, &self.any_case]
            .into_iter()
            .flatten()
            .flat_map(|ac| ac.find_overlapping_iter(text))
            .map(|m| (m.start(), m.end()))
            .collect();
        if spans.is_empty() {
            return text.to_string();
        }
        spans.sort_unstable();
        let mut masked = String::with_capacity(text.len());
        let mut copied = 0;
        let mut current: Option<(usize, usize)> = None;
        for (start, end) in spans {
            match &mut current {
                Some((_, cur_end)) if start <= *cur_end => *cur_end = (*cur_end).max(end),
                _ => {
                    if let Some((s, e)) = current.replace((start, end)) {
                        masked.push_str(&text[copied..s]);
                        masked.push_str(MASK);
                        copied = e;
                    }
                }
            }
        }
        if let Some((s, e)) = current {
            masked.push_str(&text[copied..s]);
            masked.push_str(MASK);
            copied = e;
        }
        masked.push_str(&text[copied..]);
        masked
    }

    /// Whether there is nothing to mask.
    pub fn is_empty(&self) -> bool {
        self.exact.is_none() && self.any_case.is_none()
    }
}

/// One automaton over `patterns`, or none when there are none (or, which would
/// only happen with millions of secrets, when it cannot be built).
fn automaton(mut patterns: Vec<String>, any_case: bool) -> Option<AhoCorasick> {
    patterns.sort();
    patterns.dedup();
    if patterns.is_empty() {
        return None;
    }
    AhoCorasick::builder()
        .ascii_case_insensitive(any_case)
        .build(&patterns)
        .map_err(|e| tracing::error!("building the secret masker failed: {e}"))
        .ok()
}

/// The forms of one secret, by how their letter case is matched.
struct Forms {
    exact: Vec<String>,
    any_case: Vec<String>,
}

/// The literal value and the encodings a leaking plugin would most likely use.
fn encoded_forms(secret: &str) -> Forms {
    let bytes = secret.as_bytes();
    let mut exact = vec![secret.to_string()];
    for engine in [
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ] {
        for offset in 0..3 {
            exact.push(base64_core(engine, bytes, offset));
        }
    }
    // Percent-encoding everything but letters and digits, and only what RFC 3986
    // reserves (what `encodeURIComponent` and Python's `quote` do).
    const RESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    let mut any_case = vec![
        percent_encoding::utf8_percent_encode(secret, percent_encoding::NON_ALPHANUMERIC)
            .to_string(),
        percent_encoding::utf8_percent_encode(secret, RESERVED).to_string(),
        hex::encode(bytes),
    ];
    exact.retain(|f| f == secret || f.len() >= MIN_ENCODED_LEN);
    any_case.retain(|f| f != secret && f.len() >= MIN_ENCODED_LEN);
    Forms { exact, any_case }
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

/// Prefix of a sealed token as stored: version, then base64 of nonce and ciphertext.
const SEALED_PREFIX: &str = "sealed-v1:";

/// Length of an XChaCha20 nonce: long enough to be drawn at random every time.
const NONCE_LEN: usize = 24;

/// Encrypts tokens that must be stored but may hold secrets (a continuation
/// token is whatever the guest chose to carry to its next round, a secret
/// included), with XChaCha20-Poly1305 and a key kept in a file of its own
/// (mode 0600) next to the state database.
///
/// The key is read or created on first use, so a data directory that never
/// stores a token never gets a key file.
pub struct TokenSealer {
    key_path: PathBuf,
    key: OnceLock<Result<Key, String>>,
}

impl TokenSealer {
    /// A sealer whose key lives at `key_path`.
    pub fn new(key_path: PathBuf) -> Self {
        Self {
            key_path,
            key: OnceLock::new(),
        }
    }

    /// `token` encrypted, as text to store.
    pub fn seal(&self, token: &str) -> anyhow::Result<String> {
        let cipher = XChaCha20Poly1305::new(self.key()?);
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = cipher
            .encrypt(&nonce, token.as_bytes())
            .map_err(|_| anyhow::anyhow!("encrypting a continuation token failed"))?;
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&sealed);
        let encoded = base64::engine::general_purpose::STANDARD.encode(blob);
        Ok(format!("{SEALED_PREFIX}{encoded}"))
    }

    /// The token `stored` holds. Text without the sealed prefix was stored by an
    /// older Sluice in clear, and is returned as it is.
    pub fn open(&self, stored: &str) -> anyhow::Result<String> {
        let Some(encoded) = stored.strip_prefix(SEALED_PREFIX) else {
            return Ok(stored.to_string());
        };
        let blob = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .context("a sealed continuation token is not valid base64")?;
        anyhow::ensure!(
            blob.len() > NONCE_LEN,
            "a sealed continuation token is truncated"
        );
        let (nonce, sealed) = blob.split_at(NONCE_LEN);
        let cipher = XChaCha20Poly1305::new(self.key()?);
        let plain = cipher.decrypt(XNonce::from_slice(nonce), sealed).map_err(|_| {
            anyhow::anyhow!(
                "a sealed continuation token does not decrypt with {} (was the key file replaced?)",
                self.key_path.display()
            )
        })?;
        String::from_utf8(plain).context("a sealed continuation token is not UTF-8")
    }

    fn key(&self) -> anyhow::Result<&Key> {
        self.key
            .get_or_init(|| load_or_create_key(&self.key_path).map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e}"))
    }
}

/// The key at `path`, created (0600, written whole before it appears) when
/// missing. Two processes creating it at once agree: the second one's link
/// fails and it reads the first one's key.
fn load_or_create_key(path: &Path) -> anyhow::Result<Key> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if !path.exists() {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let draft = dir.join(format!(".key-{}", uuid::Uuid::new_v4()));
        let key = XChaCha20Poly1305::generate_key(&mut OsRng);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&draft)
            .with_context(|| format!("creating {}", draft.display()))?;
        file.write_all(&key)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing {}", draft.display()))?;
        let linked = std::fs::hard_link(&draft, path);
        std::fs::remove_file(&draft).ok();
        if let Err(e) = linked
            && e.kind() != std::io::ErrorKind::AlreadyExists
        {
            return Err(e).with_context(|| format!("creating {}", path.display()));
        }
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    anyhow::ensure!(
        bytes.len() == 32,
        "{} is not a 32-byte key (delete it only if no action is waiting to continue)",
        path.display()
    );
    Ok(*Key::from_slice(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::prelude::*;

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
    fn hex_and_percent_forms_match_in_any_case() {
        let secret = "p@ss/word:Zq";
        let m = masker(secret);
        let hex_lower = hex::encode(secret);
        for leak in [
            "p%40ss%2Fword%3AZq".to_string(),
            "p%40ss%2fword%3aZq".to_string(),
            hex_lower.clone(),
            hex_lower.to_uppercase(),
            // Mixed case, as some encoders print it.
            format!("{}{}", &hex_lower[..6], hex_lower[6..].to_uppercase()),
        ] {
            let masked = m.mask(&format!("x={leak}&y=1"));
            assert_eq!(masked, "x=***&y=1", "{leak}");
        }
    }

    #[test]
    fn rfc3986_percent_encoding_keeps_unreserved_characters() {
        let m = masker("a-b.c_d~e/f");
        assert_eq!(m.mask("q=a-b.c_d~e%2ff"), "q=***");
        assert_eq!(m.mask("q=a%2Db%2Ec%5Fd%7Ee%2Ff"), "q=***");
    }

    #[test]
    fn the_literal_and_base64_stay_case_sensitive() {
        let secret = "CaseMatters-99";
        let m = masker(secret);
        let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
        // The last character mixes in what follows, so it (and padding) stays.
        assert!(m.mask(&b64).starts_with("***"), "{b64}");
        // A different base64 string (other case) is other bytes: not the secret.
        let other = b64.to_lowercase();
        assert_eq!(m.mask(&other), other);
    }

    #[test]
    fn overlapping_secrets_leave_no_fragment() {
        let m = Masker::new([&"abcdXYZ".to_string(), &"XYZefgh".to_string()]);
        assert_eq!(m.mask("<abcdXYZefgh>"), "<***>");
        assert_eq!(m.mask("abcdXYZ and XYZefgh"), "*** and ***");
        assert!(Masker::new([&String::new()]).is_empty());
        assert_eq!(Masker::default().mask("plain"), "plain");
    }

    #[test]
    fn every_host_secret_is_in_the_source_masker() {
        let source = SecretSource::from_map(HashMap::from([
            ("A".to_string(), "alpha-secret".to_string()),
            ("B".to_string(), "bravo-secret".to_string()),
        ]));
        let m = source.masker();
        assert_eq!(m.mask("alpha-secret bravo-secret"), "*** ***");
    }

    #[test]
    fn sealed_tokens_round_trip_and_hide_the_plaintext() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("continuation.key");
        let sealer = TokenSealer::new(key.clone());
        let sealed = sealer.seal("token with hunter2").unwrap();
        assert!(!sealed.contains("hunter2"));
        assert!(sealed.starts_with(SEALED_PREFIX));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Another process (a new sealer) reads the same key.
        let again = TokenSealer::new(key);
        assert_eq!(again.open(&sealed).unwrap(), "token with hunter2");
        assert_eq!(
            again.open("legacy clear token").unwrap(),
            "legacy clear token"
        );
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert!(again.open(&tampered).is_err());
    }

    #[test]
    fn the_state_store_masks_audit_rows_and_events() {
        let dir = tempfile::tempdir().unwrap();
        let state = crate::state::SqliteStore::open(&dir.path().join("state.db")).unwrap();
        let source = SecretSource::from_map(HashMap::from([(
            "K".to_string(),
            "audit-secret-77".to_string(),
        )]));
        state.mask_with(std::sync::Arc::new(source.masker()));
        state
            .audit(&crate::state::AuditRecord {
                seq: 0,
                ts_ms: 1,
                actor: "t1".into(),
                action: "GET /x?k=audit-secret-77".into(),
                target: "p".into(),
                result: "200".into(),
                pipeline: Some("p".into()),
            })
            .unwrap();
        let row = &state.audit_log(0, 10, None).unwrap()[0];
        assert_eq!(row.action, "GET /x?k=***");
        let event = crate::state::EventRecord {
            seq: 0,
            ts_ms: 1,
            execution: "e".into(),
            pipeline: "p".into(),
            kind: "action".into(),
            name: "a".into(),
            state: "FAILED".into(),
            detail: "token audit%2Dsecret%2d77".into(),
        };
        assert_eq!(state.append_event(event).unwrap().detail, "token ***");
        assert_eq!(state.events_after(0, 10).unwrap()[0].detail, "token ***");
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
