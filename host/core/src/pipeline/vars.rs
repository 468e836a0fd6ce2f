//! `#{namespace.key}` variable references in configuration values.

/// One reference found in a text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VarRef {
    /// `variables`, `execution`, or an action's namespace.
    pub namespace: String,
    /// The key within the namespace.
    pub key: String,
    /// Byte offset of `#{` in the text.
    pub start: usize,
    /// Byte offset just past `}`.
    pub end: usize,
}

impl VarRef {
    /// `namespace.key`.
    pub fn name(&self) -> String {
        format!("{}.{}", self.namespace, self.key)
    }
}

/// Every reference in `text`, or an error describing a malformed one.
pub fn references(text: &str) -> Result<Vec<VarRef>, String> {
    let mut found = Vec::new();
    let mut rest = 0;
    while let Some(offset) = text[rest..].find("#{") {
        let start = rest + offset;
        let close = text[start..]
            .find('}')
            .ok_or_else(|| format!("unterminated variable reference `{}`", &text[start..]))?;
        let end = start + close + 1;
        let inner = text[start + 2..end - 1].trim();
        let (namespace, key) = inner
            .split_once('.')
            .filter(|(ns, key)| is_identifier(ns) && is_identifier(key))
            .ok_or_else(|| {
                format!("malformed variable reference `#{{{inner}}}`; write `#{{namespace.key}}`")
            })?;
        found.push(VarRef {
            namespace: namespace.to_string(),
            key: key.to_string(),
            start,
            end,
        });
        rest = end;
    }
    Ok(found)
}

fn is_identifier(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Replace every reference using `lookup`; the error names the first reference
/// without a value.
pub fn resolve(
    text: &str,
    lookup: impl Fn(&str, &str) -> Option<String>,
) -> Result<String, String> {
    let refs = references(text)?;
    let mut resolved = String::with_capacity(text.len());
    let mut copied = 0;
    for reference in refs {
        let value = lookup(&reference.namespace, &reference.key)
            .ok_or_else(|| format!("variable `#{{{}}}` has no value", reference.name()))?;
        resolved.push_str(&text[copied..reference.start]);
        resolved.push_str(&value);
        copied = reference.end;
    }
    resolved.push_str(&text[copied..]);
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_found_with_their_positions() {
        let refs = references("v#{src.rev}-#{execution.id}").unwrap();
        assert_eq!(refs.len(), 2);
        assert_eq!(refs[0].name(), "src.rev");
        assert_eq!((refs[0].start, refs[0].end), (1, 11));
        assert!(references("#{oops").is_err());
        assert!(references("#{nodot}").is_err());
    }

    #[test]
    fn resolution_replaces_every_reference() {
        let text = resolve("#{a.b}/#{a.c}", |_, key| Some(key.to_uppercase())).unwrap();
        assert_eq!(text, "B/C");
        let err = resolve("#{a.missing}", |_, _| None).unwrap_err();
        assert!(err.contains("a.missing"));
    }
}
