//! Sluice rule `http-check`: a stage condition's health check. It GETs a URL
//! through wasi:http (the host must be granted) and passes when the status is
//! an expected one and the body holds the expected text.

// The URL, status and secret-header rules are the `http` action's, shared
// rather than copied.
#[allow(dead_code)]
#[path = "../../http/src/parse.rs"]
mod parse;

use parse::{ExpectStatus, body_preview, check_url, parse_secret_headers};
use sluice_sdk::{Context, Failure, Verdict};

/// How much of an unexpected body the verdict quotes.
const QUOTED_BODY_BYTES: usize = 200;

fn evaluate(ctx: &Context) -> Result<Verdict, Failure> {
    let url = ctx.require("url")?.trim();
    check_url(url).map_err(Failure::config)?;
    let expect =
        ExpectStatus::parse(ctx.config_or("expect-status", "2xx")).map_err(Failure::config)?;
    let wanted_text = ctx.config("contains").filter(|t| !t.is_empty());
    let headers: Vec<(String, String)> = parse_secret_headers(ctx.config_or("secret-headers", ""))
        .map_err(Failure::config)?
        .into_iter()
        .map(|sh| {
            let handle = sluice_sdk::http::secret_handle(&sh.secret);
            (sh.header, format!("{}{handle}", sh.prefix))
        })
        .collect();
    let response = sluice_sdk::http::request("GET", url, &headers, None)?;
    let status = response.status;
    ctx.info(format!(
        "GET {url}: HTTP {status}, {} bytes",
        response.body.len()
    ));
    if !expect.matches(status) {
        return Ok(Verdict::fail(format!(
            "GET {url} answered HTTP {status}, expected {expect}"
        )));
    }
    let body = String::from_utf8_lossy(&response.body);
    match wanted_text {
        Some(text) if !body.contains(text) => Ok(Verdict::fail(format!(
            "GET {url} answered HTTP {status} without `{text}` in its body (it starts: {})",
            body_preview(&response.body, QUOTED_BODY_BYTES)
        ))),
        Some(text) => Ok(Verdict::pass(format!(
            "GET {url} answered HTTP {status} with `{text}`"
        ))),
        None => Ok(Verdict::pass(format!("GET {url} answered HTTP {status}"))),
    }
}

sluice_sdk::export_rule!(evaluate);
