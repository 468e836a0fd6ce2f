//! The web console at `/`: a page and a script, embedded in the binary, that
//! use the same `/api/v1` as the CLI.
//!
//! Sign-in takes an API token and keeps it in a session cookie that scripts
//! cannot read (HttpOnly) and that other sites' requests do not carry
//! (SameSite=Strict). Every request the console makes is authorized by that
//! token exactly as a bearer header would be, so roles, scopes, revocation
//! and the audit log apply unchanged. A mutation authorized by the cookie
//! must also carry `X-Sluice-CSRF`, a value derived from the token that only
//! the console page is given: a forged cross-site form cannot set a header.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sha2::Digest as _;
use subtle::ConstantTimeEq as _;

use super::auth::Caller;
use super::{ApiError, AppState};

/// The cookie that holds the signed-in token's secret.
pub const SESSION_COOKIE: &str = "sluice_session";

/// The header a console mutation carries (see the module doc).
pub const CSRF_HEADER: &str = "x-sluice-csrf";

const INDEX: &str = include_str!("assets/index.html");
const SIGN_IN: &str = include_str!("assets/signin.html");

/// What the pages may load: only this server's own script, styles and
/// images; no inline script, no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// `/`, the sign-in and sign-out forms, and the assets under `/console/`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(page))
        .route("/console/sign-in", post(sign_in))
        .route("/console/sign-out", post(sign_out))
        .route("/console/{asset}", get(asset))
}

/// The token secret in the session cookie of `headers`, if any.
pub fn session_secret(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == SESSION_COOKIE && !value.is_empty()).then(|| value.to_string())
        })
}

/// The CSRF value of a session: derived from its secret, so it needs no
/// storage, and useless without the cookie it belongs to.
fn csrf_value(secret: &str) -> String {
    hex::encode(sha2::Sha256::digest(format!(
        "sluice-console-csrf\0{secret}"
    )))
}

fn csrf_matches(secret: &str, offered: Option<&str>) -> bool {
    offered
        .is_some_and(|offered| bool::from(offered.as_bytes().ct_eq(csrf_value(secret).as_bytes())))
}

/// The caller a request authorized by the session cookie acts as. A
/// mutation without the session's CSRF header is refused (403).
pub fn cookie_caller(
    app: &AppState,
    secret: &str,
    headers: &HeaderMap,
    mutating: bool,
) -> Result<Caller, ApiError> {
    let offered = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
    if mutating && !csrf_matches(secret, offered) {
        return Err(ApiError::forbidden(format!(
            "a request signed in by the console's cookie that changes something must carry the {CSRF_HEADER} header of its page"
        ))
        .reason("csrf"));
    }
    Caller::from_secret(app.state.as_ref(), secret)
}

/// `GET /`: the console for a signed-in browser, the sign-in form otherwise
/// (with why, when the cookie's token no longer works, and the cookie cleared).
async fn page(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let Some(secret) = session_secret(&headers) else {
        return html(StatusCode::OK, sign_in_page(None));
    };
    let (state, offered) = (app.state.clone(), secret.clone());
    match sluice_store::off_workers(move || Caller::from_secret(state.as_ref(), &offered)).await {
        Ok(_) => html(
            StatusCode::OK,
            INDEX.replace("{{csrf}}", &csrf_value(&secret)),
        ),
        Err(refused) => {
            let mut response = html(StatusCode::OK, sign_in_page(Some(&refused.body.error)));
            set_cookie(&mut response, &clear_cookie(&headers));
            response
        }
    }
}

/// `POST /console/sign-in` (form field `token`): check the token, keep it in
/// the session cookie and go to the console; the form again with why not.
async fn sign_in(State(app): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(refused) = cross_origin_refusal(&headers) {
        return refused;
    }
    let token = form_field(&body, "token").unwrap_or_default();
    let token = token.trim().to_string();
    if token.is_empty() {
        return html(
            StatusCode::BAD_REQUEST,
            sign_in_page(Some("Paste an API token.")),
        );
    }
    let (state, offered) = (app.state.clone(), token.clone());
    match sluice_store::off_workers(move || Caller::from_secret(state.as_ref(), &offered)).await {
        Ok(caller) => {
            tracing::info!(token = %caller.id, "signed in to the console");
            let mut response = redirect_home();
            set_cookie(&mut response, &session_cookie(&token, &headers));
            response
        }
        Err(refused) => html(
            StatusCode::UNAUTHORIZED,
            sign_in_page(Some(&refused.body.error)),
        ),
    }
}

/// `POST /console/sign-out` (form field `csrf`): forget the cookie.
async fn sign_out(headers: HeaderMap, body: Bytes) -> Response {
    if let Some(refused) = cross_origin_refusal(&headers) {
        return refused;
    }
    let offered = form_field(&body, "csrf");
    if let Some(secret) = session_secret(&headers)
        && !csrf_matches(&secret, offered.as_deref())
    {
        return ApiError::forbidden("sign-out needs the csrf field of the console page")
            .reason("csrf")
            .into_response();
    }
    let mut response = redirect_home();
    set_cookie(&mut response, &clear_cookie(&headers));
    response
}

/// `GET /console/{asset}`: the script, the styles and the icon.
async fn asset(super::extract::UrlPath(name): super::extract::UrlPath<String>) -> Response {
    let Some((_, content_type, embedded)) = ASSETS.iter().find(|(file, ..)| *file == name) else {
        return ApiError::not_found(format!("no console asset `{name}`")).into_response();
    };
    let body = asset_override(&name).unwrap_or(Bytes::from_static(embedded));
    let mut response = ([(header::CONTENT_TYPE, *content_type)], body).into_response();
    secure_headers(response.headers_mut());
    response
}

/// The files under `/console/`: name, content type, embedded bytes.
const ASSETS: [(&str, &str, &[u8]); 3] = [
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("assets/app.css"),
    ),
    (
        "icon.svg",
        "image/svg+xml",
        include_bytes!("assets/icon.svg"),
    ),
];

/// Debug builds read `SLUICE_CONSOLE_ASSETS/<name>` instead of the embedded
/// asset when that is set, to work on the console without rebuilding.
fn asset_override(name: &str) -> Option<Bytes> {
    if !cfg!(debug_assertions) {
        return None;
    }
    let dir = std::env::var_os("SLUICE_CONSOLE_ASSETS")?;
    std::fs::read(std::path::Path::new(&dir).join(name))
        .ok()
        .map(Bytes::from)
}

fn sign_in_page(error: Option<&str>) -> String {
    let error = error
        .map(|e| format!(r#"<p class="error-box" role="alert">{}</p>"#, escape(e)))
        .unwrap_or_default();
    SIGN_IN.replace("{{error}}", &error)
}

fn html(status: StatusCode, body: String) -> Response {
    let mut response = (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response();
    secure_headers(response.headers_mut());
    response
}

fn secure_headers(headers: &mut HeaderMap) {
    let pairs = [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ];
    for (name, value) in pairs {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-cache"));
}

fn redirect_home() -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response()
}

/// A session cookie: no Max-Age, so it ends with the browser session.
/// `Secure` when a TLS-terminating proxy says the browser used https.
fn session_cookie(secret: &str, headers: &HeaderMap) -> String {
    format!(
        "{SESSION_COOKIE}={secret}; Path=/; HttpOnly; SameSite=Strict{}",
        secure_attribute(headers)
    )
}

fn clear_cookie(headers: &HeaderMap) -> String {
    format!(
        "{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        secure_attribute(headers)
    )
}

fn secure_attribute(headers: &HeaderMap) -> &'static str {
    let https = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"));
    if https { "; Secure" } else { "" }
}

fn set_cookie(response: &mut Response, cookie: &str) {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

/// The refusal of a form posted from another site (`Origin` naming another
/// host): SameSite keeps the cookie off such requests, but sign-in sets one.
fn cross_origin_refusal(headers: &HeaderMap) -> Option<Response> {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok())?;
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin.split_once("://").map(|(_, rest)| rest).unwrap_or("");
    if !host.is_empty() && origin_host.eq_ignore_ascii_case(host) {
        return None;
    }
    let refusal = ApiError::forbidden(format!(
        "a console form was posted from another origin ({origin})"
    ));
    Some(refusal.reason("origin").into_response())
}

fn form_field(body: &[u8], name: &str) -> Option<String> {
    form_urlencoded::parse(body)
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// Text as HTML character data.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn the_session_cookie_is_found_among_others_and_only_by_its_exact_name() {
        let found = session_secret(&headers(&[(
            "cookie",
            "theme=dark; xsluice_session=no; sluice_session=sec; other=1",
        )]));
        assert_eq!(found.as_deref(), Some("sec"));
        assert_eq!(
            session_secret(&headers(&[("cookie", "sluice_session=")])),
            None
        );
        assert_eq!(session_secret(&headers(&[])), None);
    }

    #[test]
    fn csrf_values_belong_to_one_session() {
        let value = csrf_value("secret-a");
        assert!(csrf_matches("secret-a", Some(&value)));
        assert!(!csrf_matches("secret-b", Some(&value)));
        assert!(!csrf_matches("secret-a", None));
        assert!(!csrf_matches("secret-a", Some("")));
    }

    #[test]
    fn cookies_are_http_only_and_same_site_strict_and_secure_behind_https() {
        let plain = session_cookie("s", &headers(&[]));
        assert!(plain.contains("HttpOnly") && plain.contains("SameSite=Strict"));
        assert!(!plain.contains("Secure") && !plain.contains("Max-Age"));
        let proxied = session_cookie("s", &headers(&[("x-forwarded-proto", "https")]));
        assert!(proxied.ends_with("; Secure"));
        assert!(clear_cookie(&headers(&[])).contains("Max-Age=0"));
    }

    #[test]
    fn forms_from_another_origin_are_refused() {
        let local = [("host", "127.0.0.1:8700")];
        assert!(cross_origin_refusal(&headers(&local)).is_none());
        let same = headers(&[local[0], ("origin", "http://127.0.0.1:8700")]);
        assert!(cross_origin_refusal(&same).is_none());
        assert!(
            cross_origin_refusal(&headers(&[local[0], ("origin", "https://evil.example")]))
                .is_some()
        );
        assert!(cross_origin_refusal(&headers(&[local[0], ("origin", "null")])).is_some());
    }

    #[test]
    fn sign_in_errors_are_escaped() {
        let page = sign_in_page(Some("<script>alert(1)</script> & \"x\""));
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;x&quot;"));
        assert!(!page.contains("<script>alert"));
    }
}
