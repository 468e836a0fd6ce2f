//! Outbound HTTP capability: wasi:http, only to granted hosts.
//!
//! The check sits in the `send_request` hook, the one place every guest request
//! passes through (the same place Spin enforces `allowed_outbound_hosts`).

use http_body_util::BodyExt;
use wasmtime_wasi_http::{WasiBody, WasiHttpHooks};

use super::Denials;
use super::log::LogSink;

/// Decides which hosts an action may call.
pub struct HttpCapability {
    allowed: Vec<String>,
    denials: Denials,
    log: LogSink,
}

impl HttpCapability {
    /// Build from the granted host patterns: `host`, `host:port`, `*.domain` or `*`.
    pub fn from_grant(allowed: &[String], denials: Denials, log: LogSink) -> Self {
        Self {
            allowed: allowed.to_vec(),
            denials,
            log,
        }
    }

    /// Whether `host` (with `port`) matches a granted pattern.
    pub fn allows(&self, host: &str, port: u16) -> bool {
        self.allowed.iter().any(|p| host_matches(p, host, port))
    }
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
        request: http::Request<WasiBody>,
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
    use super::host_matches;

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
