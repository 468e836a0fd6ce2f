//! Sluice action `http`: make one HTTP request and check its status.
//!
//! See README.md for the configuration. Secret values never enter this action:
//! secret headers carry a handle the host fills in as the request is sent.

mod parse;

use parse::{
    ExpectStatus, body_preview, check_url, parse_headers, parse_method, parse_secret_headers,
};
use sluice_sdk::{Context, Failure, Outcome};

/// How much of the response body the `body` variable keeps.
const BODY_VARIABLE_BYTES: usize = 4096;

fn run(ctx: &Context) -> Result<Outcome, Failure> {
    let url = ctx.require("url")?.trim();
    check_url(url).map_err(Failure::config)?;
    let method = parse_method(ctx.config_or("method", "GET")).map_err(Failure::config)?;
    let expect =
        ExpectStatus::parse(ctx.config_or("expect-status", "2xx")).map_err(Failure::config)?;
    let mut headers = parse_headers(ctx.config_or("headers", "")).map_err(Failure::config)?;
    let secret_headers =
        parse_secret_headers(ctx.config_or("secret-headers", "")).map_err(Failure::config)?;
    let body = ctx.config("body").map(str::as_bytes);

    for sh in &secret_headers {
        let handle = sluice_sdk::http::secret_handle(&sh.secret);
        headers.push((sh.header.clone(), format!("{}{handle}", sh.prefix)));
    }

    let names: Vec<&str> = headers.iter().map(|(name, _)| name.as_str()).collect();
    ctx.info(format!(
        "{method} {url}{}{}",
        if names.is_empty() {
            String::new()
        } else {
            format!(" with headers {}", names.join(", "))
        },
        match body {
            Some(b) => format!(" and a {}-byte body", b.len()),
            None => String::new(),
        },
    ));

    let response = sluice_sdk::http::request(&method, url, &headers, body)?;
    let status = response.status;
    ctx.info(format!(
        "HTTP {status} ({} bytes) from {method} {url}",
        response.body.len()
    ));
    if !expect.matches(status) {
        return Err(Failure::job(format!(
            "{method} {url} returned HTTP {status}, expected {expect}"
        )));
    }
    Ok(Outcome::new(format!("{method} {url}: HTTP {status}"))
        .variable("status", status)
        .variable("body", body_preview(&response.body, BODY_VARIABLE_BYTES)))
}

sluice_sdk::export_action!(run);
