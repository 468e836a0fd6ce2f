//! Outbound HTTP over `wasi:http/outgoing-handler`. Only hosts granted to the
//! action are reachable; others fail with a `permission-error`.
//!
//! To send a secret in a header without ever holding its value, put a
//! [`secret_handle`] in the header value: the host replaces it with the granted
//! secret's value after the request leaves the guest. Naming a secret that is
//! not granted to the action fails the request and the action.

use crate::Failure;
use wasi::http::outgoing_handler;
use wasi::http::types::{
    ErrorCode, Fields, IncomingBody, IncomingResponse, Method, OutgoingBody, OutgoingRequest,
    Scheme,
};
use wasi::io::streams::StreamError;

/// A placeholder for the granted secret `name` in a header value (for example
/// `format!("Bearer {}", secret_handle("TOKEN"))`): the host fills in the value
/// as the request is sent, so the action never reads it (`secrets.get` is not
/// called) and cannot log or store it. Only header values are filled.
pub fn secret_handle(name: &str) -> String {
    format!("{{{{sluice-secret:{name}}}}}")
}

/// A complete HTTP response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Response headers, in order; values that are not UTF-8 are lossily decoded.
    pub headers: Vec<(String, String)>,
    /// The whole body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text, lossily decoded.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Send one request and read the whole response. Any status is `Ok`; errors are
/// requests that got no response. A host that was not granted gives a
/// `permission-error`.
pub fn request(
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: Option<&[u8]>,
) -> Result<HttpResponse, Failure> {
    let target = Target::parse(url)?;
    let fields: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    let fields =
        Fields::from_list(&fields).map_err(|e| Failure::config(format!("bad header: {e:?}")))?;
    let req = OutgoingRequest::new(fields);
    let setup = req
        .set_method(&parse_method(method))
        .and_then(|()| req.set_scheme(Some(&target.scheme)))
        .and_then(|()| req.set_authority(Some(&target.authority)))
        .and_then(|()| req.set_path_with_query(Some(&target.path)));
    setup.map_err(|()| Failure::config(format!("invalid request {method} {url}")))?;
    let out_body = req
        .body()
        .map_err(|()| Failure::job("request body already taken"))?;
    // Send first, then stream the body, so a large body cannot fill the pipe before
    // anyone reads it.
    let pending = outgoing_handler::handle(req, None).map_err(|e| error(url, e))?;
    write_body(out_body, body.unwrap_or_default())?;
    pending.subscribe().block();
    let response = match pending.get() {
        Some(Ok(Ok(resp))) => resp,
        Some(Ok(Err(e))) => return Err(error(url, e)),
        Some(Err(())) | None => return Err(Failure::job(format!("{url}: response lost"))),
    };
    read_response(url, response)
}

/// Write all of `bytes` to the request body and finish it.
fn write_body(body: OutgoingBody, bytes: &[u8]) -> Result<(), Failure> {
    let stream = body
        .write()
        .map_err(|()| Failure::job("request body stream unavailable"))?;
    // `blocking_write_and_flush` accepts at most 4096 bytes per call.
    for chunk in bytes.chunks(4096) {
        stream
            .blocking_write_and_flush(chunk)
            .map_err(|e| Failure::job(format!("writing request body: {}", stream_error(e))))?;
    }
    drop(stream);
    OutgoingBody::finish(body, None).map_err(|e| Failure::job(format!("{e:?}")))
}

fn read_response(url: &str, resp: IncomingResponse) -> Result<HttpResponse, Failure> {
    let status = resp.status();
    let headers = resp
        .headers()
        .entries()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect();
    let incoming = resp
        .consume()
        .map_err(|()| Failure::job("response body already taken"))?;
    let stream = incoming
        .stream()
        .map_err(|()| Failure::job("response body stream unavailable"))?;
    let mut body = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => body.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(e) => {
                return Err(Failure::job(format!(
                    "{url}: reading body: {}",
                    stream_error(e)
                )));
            }
        }
    }
    // The stream is a child of the body and must go first.
    drop(stream);
    drop(IncomingBody::finish(incoming));
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn stream_error(e: StreamError) -> String {
    match e {
        StreamError::Closed => "stream closed".into(),
        StreamError::LastOperationFailed(err) => err.to_debug_string(),
    }
}

/// Map a transport error, singling out the host refusing the destination.
fn error(url: &str, e: ErrorCode) -> Failure {
    match e {
        ErrorCode::HttpRequestDenied => Failure::permission(format!(
            "{url}: host is not granted to this action (add it to grants.hosts)"
        )),
        other => Failure::job(format!("{url}: {other:?}")),
    }
}

fn parse_method(method: &str) -> Method {
    match method.to_ascii_uppercase().as_str() {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "CONNECT" => Method::Connect,
        "OPTIONS" => Method::Options,
        "TRACE" => Method::Trace,
        "PATCH" => Method::Patch,
        other => Method::Other(other.to_string()),
    }
}

/// The parts of an absolute `http(s)://` URL that wasi:http wants separately.
#[derive(Debug)]
struct Target {
    scheme: Scheme,
    authority: String,
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Self, Failure> {
        let bad = || Failure::config(format!("invalid URL `{url}`: expected http(s)://host/path"));
        let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return Err(bad()),
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        if authority.is_empty() || authority.contains('@') {
            return Err(bad());
        }
        // The fragment never goes on the wire.
        let tail = tail.split('#').next().unwrap_or_default();
        let path = match tail {
            "" => "/".to_string(),
            t if t.starts_with('?') => format!("/{t}"),
            t => t.to_string(),
        };
        Ok(Self {
            scheme,
            authority: authority.to_string(),
            path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let t = Target::parse("https://example.com:8443/a/b?x=1#frag").unwrap();
        assert!(matches!(t.scheme, Scheme::Https));
        assert_eq!(t.authority, "example.com:8443");
        assert_eq!(t.path, "/a/b?x=1");
        assert_eq!(Target::parse("http://h").unwrap().path, "/");
        assert_eq!(Target::parse("http://h?q").unwrap().path, "/?q");
        assert!(Target::parse("ftp://h/").is_err());
        assert!(Target::parse("http://user@h/").is_err());
        assert!(Target::parse("nohost").is_err());
    }
}
