//! Outbound HTTP capability: wasi:http, only to granted hosts.
//!
//! The check sits in the `send_request` hook, the one place every guest request
//! passes through (the same place Spin enforces `allowed_outbound_hosts`).
//!
//! The same hook fills *secret handles*: a header value may hold
//! `{{sluice-secret:NAME}}`, which the host replaces with the value of the
//! granted secret `NAME` after the host check, so the guest sends a secret it
//! never holds (as `process` does with `secret-env`). Naming a secret that is
//! not granted is a capability denial.

use http_body_util::BodyExt;
use wasmtime_wasi_http::{WasiBody, WasiHttpHooks};

use super::Denials;
use super::log::{LogSink, LogStream};
use super::secrets::{SecretError, SecretsCapability};

/// Opens a secret handle in a header value: `{{sluice-secret:NAME}}`.
pub const SECRET_HANDLE_OPEN: &str = "{{sluice-secret:";
/// Closes a secret handle.
pub const SECRET_HANDLE_CLOSE: &str = "}}";

/// Decides which hosts an action may call, and fills secret handles.
pub struct HttpCapability {
    allowed: Vec<String>,
    secrets: SecretsCapability,
    denials: Denials,
    log: LogSink,
}

impl HttpCapability {
    /// Build from the granted host patterns (`host`, `host:port`, `*.domain` or
    /// `*`) and the secrets header handles may name.
    pub fn from_grant(
        allowed: &[String],
        secrets: SecretsCapability,
        denials: Denials,
        log: LogSink,
    ) -> Self {
        Self {
            allowed: allowed.to_vec(),
            secrets,
            denials,
            log,
        }
    }

    /// Replace every secret handle in the request's header values. A handle
    /// naming an ungranted secret is recorded as a denial.
    fn fill_secret_handles(&self, headers: &mut http::HeaderMap) -> Result<(), HandleError> {
        for (name, value) in headers.iter_mut() {
            let Ok(text) = value.to_str() else { continue };
            if !text.contains(SECRET_HANDLE_OPEN) {
                continue;
            }
            let filled = fill_handles(text, |secret| self.secrets.value(secret))
                .map_err(|e| HandleError::from_secret(e, name))?;
            let mut filled = http::HeaderValue::from_str(&filled).map_err(|_| {
                HandleError::Invalid(format!(
                    "header `{name}`: a secret it names holds characters a header value cannot"
                ))
            })?;
            // Kept out of any debug output of the request.
            filled.set_sensitive(true);
            *value = filled;
        }
        Ok(())
    }

    /// Whether `host` (with `port`) matches a granted pattern.
    pub fn allows(&self, host: &str, port: u16) -> bool {
        self.allowed.iter().any(|p| host_matches(p, host, port))
    }
}

/// Why a request's secret handles could not be filled.
enum HandleError {
    /// The secret is not granted: a capability denial.
    Denied(String),
    /// Anything else: no value on the host, a malformed handle, a value that is
    /// not a valid header value.
    Invalid(String),
}

impl HandleError {
    fn from_secret(error: SecretError, header: &http::HeaderName) -> Self {
        match error {
            e @ SecretError::NotGranted(_) => Self::Denied(format!(
                "permission denied: {e} (named in HTTP header `{header}`)"
            )),
            e => Self::Invalid(format!("HTTP header `{header}`: {e}")),
        }
    }
}

/// `text` with each `{{sluice-secret:NAME}}` replaced by `value(NAME)`.
fn fill_handles<'a>(
    text: &str,
    value: impl Fn(&str) -> Result<&'a str, SecretError>,
) -> Result<String, SecretError> {
    let mut filled = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(SECRET_HANDLE_OPEN) {
        filled.push_str(&rest[..start]);
        let after = &rest[start + SECRET_HANDLE_OPEN.len()..];
        let Some(end) = after.find(SECRET_HANDLE_CLOSE) else {
            // An unterminated handle names nothing: sent as it is.
            filled.push_str(&rest[start..]);
            return Ok(filled);
        };
        filled.push_str(value(after[..end].trim())?);
        rest = &after[end + SECRET_HANDLE_CLOSE.len()..];
    }
    filled.push_str(rest);
    Ok(filled)
}

/// Whether one grant pattern covers `host:port`.
pub fn host_matches(pattern: &str, host: &str, port: u16) -> bool {
    if pattern == "*" {
        return true;
    }
    let (pattern_host, pattern_port) = match pattern.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, Some(p)),
        _ => (pattern, None),
    };
    if let Some(p) = pattern_port
        && p != "*"
        && p.parse::<u16>().ok() != Some(port)
    {
        return false;
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let pattern_host = pattern_host.trim_start_matches('[').trim_end_matches(']');
    match pattern_host.strip_prefix("*.") {
        Some(domain) => host.len() > domain.len() && host.ends_with(&format!(".{domain}")),
        None => host.eq_ignore_ascii_case(pattern_host),
    }
}

type SendResult = wasmtime_wasi_http::Result<(
    http::Response<WasiBody>,
    Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
)>;

impl WasiHttpHooks for HttpCapability {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let uri = request.uri();
        let host = uri.host().unwrap_or_default().to_string();
        let default_port = if uri.scheme() == Some(&http::uri::Scheme::HTTPS) {
            443
        } else {
            80
        };
        let port = uri.port_u16().unwrap_or(default_port);
        if !self.allows(&host, port) {
            self.denials.record(
                &self.log,
                format!("permission denied: outbound HTTP to `{host}:{port}` is not granted to this action"),
            );
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        match self.fill_secret_handles(request.headers_mut()) {
            Ok(()) => {}
            Err(HandleError::Denied(message)) => {
                self.denials.record(&self.log, message);
                return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
            }
            Err(HandleError::Invalid(message)) => {
                self.log.line(LogStream::Host, &message);
                let error = wasmtime_wasi_http::Error::InternalError(Some(message));
                return Box::new(async { Err(error) });
            }
        }
        Box::new(async move {
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{SecretError, fill_handles, host_matches};

    #[test]
    fn secret_handles_are_filled_in_place() {
        let value = |name: &str| match name {
            "TOKEN" => Ok("s3cr3t"),
            other => Err(SecretError::NotGranted(other.to_string())),
        };
        let filled = fill_handles("Bearer {{sluice-secret:TOKEN}}", value).unwrap();
        assert_eq!(filled, "Bearer s3cr3t");
        let twice = fill_handles("{{sluice-secret:TOKEN}}:{{sluice-secret: TOKEN }}", value);
        assert_eq!(twice.unwrap(), "s3cr3t:s3cr3t");
        assert_eq!(fill_handles("plain", value).unwrap(), "plain");
        let open = fill_handles("x {{sluice-secret:TOKEN", value).unwrap();
        assert_eq!(open, "x {{sluice-secret:TOKEN");
        assert!(matches!(
            fill_handles("{{sluice-secret:OTHER}}", value),
            Err(SecretError::NotGranted(name)) if name == "OTHER"
        ));
    }

    #[test]
    fn patterns_match_hosts_ports_and_subdomains() {
        assert!(host_matches("127.0.0.1", "127.0.0.1", 8080));
        assert!(host_matches("127.0.0.1:8080", "127.0.0.1", 8080));
        assert!(!host_matches("127.0.0.1:8080", "127.0.0.1", 9090));
        assert!(host_matches("*.example.com", "api.example.com", 443));
        assert!(!host_matches("*.example.com", "example.com", 443));
        assert!(!host_matches("example.com", "evil-example.com", 443));
        assert!(host_matches("*", "anything", 1));
    }
}
