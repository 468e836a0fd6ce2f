//! Pure parsing of the action's configuration; no host calls, so it is tested natively.

use std::fmt;

/// Whether `s` is a valid HTTP token (RFC 9110 `tchar`s): a header name or a method.
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// Whether `s` may be sent as a header value (no control characters but tab).
fn is_header_value(s: &str) -> bool {
    s.chars().all(|c| c == '\t' || !c.is_control())
}

/// The `method` config: trimmed and upper-cased; must be a token.
pub fn parse_method(raw: &str) -> Result<String, String> {
    let method = raw.trim().to_ascii_uppercase();
    if is_token(&method) {
        Ok(method)
    } else {
        Err(format!("method {raw:?} is not a valid HTTP method"))
    }
}

/// Checks that `url` is an absolute http(s) URL with a host.
pub fn check_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("url {url:?} must start with http:// or https://"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() {
        return Err(format!("url {url:?} has no host"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("url {url:?} contains whitespace"));
    }
    Ok(())
}

/// The `headers` config: `Name: value` entries separated by `;` or newlines.
/// Empty entries are ignored.
pub fn parse_headers(raw: &str) -> Result<Vec<(String, String)>, String> {
    let mut headers = Vec::new();
    for entry in raw.split([';', '\n', '\r']) {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let (name, value) = entry
            .split_once(':')
            .ok_or_else(|| format!("header {entry:?} is not of the form `Name: value`"))?;
        let (name, value) = (name.trim(), value.trim());
        if !is_token(name) {
            return Err(format!("header name {name:?} is not valid"));
        }
        if !is_header_value(value) {
            return Err(format!(
                "header {name} has a control character in its value"
            ));
        }
        headers.push((name.to_string(), value.to_string()));
    }
    Ok(headers)
}

/// One `secret-headers` entry: header `header` gets `prefix` + the value of `secret`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretHeader {
    pub header: String,
    /// Text before the secret's value, such as `"Bearer "`; usually empty.
    pub prefix: String,
    pub secret: String,
}

/// The `secret-headers` config: comma-separated `Header=SECRET` entries, where the
/// right side may carry a scheme before the secret name: `Authorization=Bearer TOKEN`.
pub fn parse_secret_headers(raw: &str) -> Result<Vec<SecretHeader>, String> {
    let mut out = Vec::new();
    for entry in raw.split([',', '\n', '\r']) {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let (header, target) = entry
            .split_once('=')
            .ok_or_else(|| format!("secret header {entry:?} is not of the form `Header=SECRET`"))?;
        let (header, target) = (header.trim(), target.trim());
        if !is_token(header) {
            return Err(format!("header name {header:?} is not valid"));
        }
        let (prefix, secret) = match target.rsplit_once(char::is_whitespace) {
            Some((scheme, secret)) => {
                let scheme = scheme.trim();
                if !is_token(scheme) {
                    return Err(format!(
                        "secret header {header}: {scheme:?} is not a valid scheme (such as `Bearer`)"
                    ));
                }
                (format!("{scheme} "), secret)
            }
            None => (String::new(), target),
        };
        if secret.is_empty() {
            return Err(format!("secret header {header} names no secret"));
        }
        out.push(SecretHeader {
            header: header.to_string(),
            prefix,
            secret: secret.to_string(),
        });
    }
    Ok(out)
}

/// One accepted range of statuses, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StatusRange {
    low: u16,
    high: u16,
}

/// The `expect-status` config: comma-separated `Nxx` classes, exact codes or
/// `low-high` ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectStatus {
    ranges: Vec<StatusRange>,
    text: String,
}

impl ExpectStatus {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut ranges = Vec::new();
        let mut parts = Vec::new();
        for item in raw.split(',') {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let lower = item.to_ascii_lowercase();
            let range = if let Some(class) = lower.strip_suffix("xx") {
                let digit = match class.as_bytes() {
                    [d @ b'1'..=b'5'] => u16::from(d - b'0'),
                    _ => return Err(format!("expect-status: {item:?} is not a class like 2xx")),
                };
                StatusRange {
                    low: digit * 100,
                    high: digit * 100 + 99,
                }
            } else if let Some((low, high)) = item.split_once('-') {
                let (low, high) = (parse_code(low)?, parse_code(high)?);
                if low > high {
                    return Err(format!("expect-status: range {item:?} is empty"));
                }
                StatusRange { low, high }
            } else {
                let code = parse_code(item)?;
                StatusRange {
                    low: code,
                    high: code,
                }
            };
            ranges.push(range);
            parts.push(lower);
        }
        if ranges.is_empty() {
            return Err("expect-status names no status".to_string());
        }
        Ok(Self {
            ranges,
            text: parts.join(","),
        })
    }

    pub fn matches(&self, status: u16) -> bool {
        self.ranges
            .iter()
            .any(|r| (r.low..=r.high).contains(&status))
    }
}

impl fmt::Display for ExpectStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn parse_code(s: &str) -> Result<u16, String> {
    let s = s.trim();
    match s.parse::<u16>() {
        Ok(code) if (100..=599).contains(&code) && s.len() == 3 => Ok(code),
        _ => Err(format!(
            "expect-status: {s:?} is not an HTTP status (100-599)"
        )),
    }
}

/// The first `max` bytes of `body` as text: cut at a character boundary when the
/// cut would split a UTF-8 sequence, with invalid bytes replaced.
pub fn body_preview(body: &[u8], max: usize) -> String {
    if body.len() <= max {
        return String::from_utf8_lossy(body).into_owned();
    }
    let mut cut = max;
    // Back off over continuation bytes (at most 3) so a multi-byte character is not split.
    while cut > 0 && max - cut < 3 && (body[cut] & 0b1100_0000) == 0b1000_0000 {
        cut -= 1;
    }
    if (body[cut] & 0b1100_0000) == 0b1000_0000 {
        cut = max; // not UTF-8 anyway: cut where asked
    }
    String::from_utf8_lossy(&body[..cut]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods() {
        assert_eq!(parse_method(" post ").unwrap(), "POST");
        assert_eq!(parse_method("purge").unwrap(), "PURGE");
        assert!(parse_method("").is_err());
        assert!(parse_method("GE T").is_err());
    }

    #[test]
    fn urls() {
        assert!(check_url("https://example.com").is_ok());
        assert!(check_url("http://127.0.0.1:8080/hook?x=1").is_ok());
        assert!(check_url("ftp://example.com").is_err());
        assert!(check_url("https://").is_err());
        assert!(check_url("https:///path").is_err());
        assert!(check_url("https://a b").is_err());
        assert!(check_url("example.com").is_err());
    }

    #[test]
    fn headers_split_on_semicolons_and_newlines() {
        let h = parse_headers(
            "Content-Type: application/json; X-Trace: a:b:c\nAccept:  text/plain  \r\n\n;",
        )
        .unwrap();
        assert_eq!(
            h,
            vec![
                ("Content-Type".into(), "application/json".into()),
                ("X-Trace".into(), "a:b:c".into()),
                ("Accept".into(), "text/plain".into()),
            ]
        );
        assert!(parse_headers("").unwrap().is_empty());
        assert!(parse_headers("  ;\n ").unwrap().is_empty());
        assert_eq!(
            parse_headers("X-Empty:").unwrap(),
            vec![("X-Empty".into(), String::new())]
        );
    }

    #[test]
    fn bad_headers() {
        assert!(parse_headers("NoColon").is_err());
        assert!(parse_headers("Bad Name: x").is_err());
        assert!(parse_headers(": x").is_err());
        assert!(parse_headers("X: a\u{7}b").is_err());
    }

    #[test]
    fn secret_headers() {
        let s = parse_secret_headers("X-Api-Key=API_KEY, Authorization=Bearer TOKEN").unwrap();
        assert_eq!(
            s,
            vec![
                SecretHeader {
                    header: "X-Api-Key".into(),
                    prefix: String::new(),
                    secret: "API_KEY".into(),
                },
                SecretHeader {
                    header: "Authorization".into(),
                    prefix: "Bearer ".into(),
                    secret: "TOKEN".into(),
                },
            ]
        );
        let s = parse_secret_headers(" Authorization = Token   gh_token ,").unwrap();
        assert_eq!(s[0].prefix, "Token ");
        assert_eq!(s[0].secret, "gh_token");
        assert!(parse_secret_headers("").unwrap().is_empty());
    }

    #[test]
    fn bad_secret_headers() {
        assert!(parse_secret_headers("Authorization").is_err());
        assert!(parse_secret_headers("Authorization=").is_err());
        assert!(parse_secret_headers("=TOKEN").is_err());
        assert!(parse_secret_headers("Bad Header=TOKEN").is_err());
        assert!(parse_secret_headers("Authorization=Bad:Scheme TOKEN").is_err());
    }

    #[test]
    fn expect_status() {
        let e = ExpectStatus::parse("2xx").unwrap();
        assert!(e.matches(200) && e.matches(204) && e.matches(299));
        assert!(!e.matches(199) && !e.matches(300) && !e.matches(404));
        assert_eq!(e.to_string(), "2xx");

        let e = ExpectStatus::parse("200, 201").unwrap();
        assert!(e.matches(200) && e.matches(201) && !e.matches(202));
        assert_eq!(e.to_string(), "200,201");

        let e = ExpectStatus::parse("2XX,404,300-302").unwrap();
        assert!(e.matches(250) && e.matches(404) && e.matches(301) && !e.matches(303));
        assert_eq!(e.to_string(), "2xx,404,300-302");
    }

    #[test]
    fn bad_expect_status() {
        for bad in [
            "", ",", "6xx", "xx", "20x", "abc", "99", "600", "0200", "302-301", "2xx,oops",
        ] {
            assert!(
                ExpectStatus::parse(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn body_previews() {
        assert_eq!(body_preview(b"hello", 4096), "hello");
        assert_eq!(body_preview(b"hello", 3), "hel");
        assert_eq!(body_preview(b"", 3), "");
        // "é" is two bytes: a cut inside it backs off to before it.
        assert_eq!(body_preview("aé".as_bytes(), 2), "a");
        // "€" is three bytes.
        assert_eq!(body_preview("ab€c".as_bytes(), 4), "ab");
        assert_eq!(body_preview("ab€c".as_bytes(), 5), "ab€");
        // Invalid bytes are replaced, not dropped.
        assert_eq!(body_preview(b"a\xffb", 4096), "a\u{fffd}b");
        // Continuation bytes that are not UTF-8 at all: cut where asked.
        let junk = [0x80u8; 10];
        assert_eq!(body_preview(&junk, 6).chars().count(), 6);
        let big = vec![b'x'; 10_000];
        assert_eq!(body_preview(&big, 4096).len(), 4096);
    }
}
