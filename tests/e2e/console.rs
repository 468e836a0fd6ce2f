//! The web console served by `sluice serve`: a real Chromium signs in, runs
//! pipelines and decides approvals; and the session cookie is attacked over
//! plain HTTP (cross-site forms, CSRF, revoked tokens).

use serde_json::Value;

use crate::browser::Browser;
use crate::harness::Workspace;
use crate::server::{Server, token, wait_for_end};

/// WebDriver key codes.
const TAB: &str = "\u{E004}";
const ENTER: &str = "\u{E007}";
const ESCAPE: &str = "\u{E00C}";

/// Build (coloured output) → Approve (its message names a variable) → Deploy.
const SHIP: &str = r##"
[pipeline]
name = "ship"

[variables]
environment = { default = "staging" }

[[stages]]
name = "Build"
[[stages.actions]]
name = "compile"
plugin = "command@0.1"
config = { run = "printf '\\033[32mcompiled for #{variables.environment}\\033[0m\\n'" }
grants = { commands = ["printf"] }

[[stages]]
name = "Approve"
[[stages.actions]]
name = "sign-off"
plugin = "approval"
config = { approvers = "operator", message = "Ship to #{variables.environment}?" }

[[stages]]
name = "Deploy"
[[stages.actions]]
name = "release"
plugin = "command@0.1"
config = { run = "echo released to #{variables.environment}" }
grants = { commands = ["echo"] }
"##;

/// Deploy runs only for `branch = main` (a before-entry condition skips it otherwise).
const GATED: &str = r##"
[pipeline]
name = "gated"

[variables]
branch = { default = "main" }
release = { default = "r1" }

[[stages]]
name = "Build"
[[stages.actions]]
name = "compile"
plugin = "command@0.1"
config = { run = "echo built #{variables.release}" }
grants = { commands = ["echo"] }

[[stages]]
name = "Deploy"
[stages.before-entry]
result = "skip"
[[stages.before-entry.rules]]
name = "main-only"
provider = "variable-check"
variable = "#{variables.branch}"
operator = "eq"
value = "main"
[[stages.actions]]
name = "release"
plugin = "command@0.1"
config = { run = "echo deployed #{variables.release}" }
grants = { commands = ["echo"] }
"##;

fn register(server: &Server, admin: &str, name: &str, source: &str) {
    let (status, body) = server.call(
        "PUT",
        &format!("/api/v1/pipelines/{name}"),
        Some(admin),
        Some(source),
    );
    assert_eq!(status, 201, "{body}");
}

/// Start `pipeline` with variables through the API and wait for its end.
fn run_to_end(server: &Server, admin: &str, pipeline: &str, variables: &str) -> Value {
    let (status, started) = server.call(
        "POST",
        &format!("/api/v1/pipelines/{pipeline}/executions"),
        Some(admin),
        Some(&format!(r#"{{"variables": {variables}}}"#)),
    );
    assert_eq!(status, 202, "{started}");
    wait_for_end(server, admin, started["id"].as_str().unwrap())
}

/// Sign in through the form, as a user pasting their token.
fn sign_in(browser: &Browser, server: &Server, secret: &str) {
    browser.goto(&format!("http://{}/", server.addr));
    browser.wait_until(
        "the sign-in form",
        "return !!document.querySelector('#token')",
    );
    browser.fill("#token", secret);
    browser.click("form button[type=submit]");
    browser.wait_until(
        "the pipelines list",
        "return !!document.querySelector('#pipeline-list .pcard, #pipeline-list .empty')",
    );
}

/// A script: whether `stage`'s card shows `status`.
fn stage_shows(stage: &str, status: &str) -> String {
    format!(
        "return document.querySelector('[data-stage={stage}] header .pill')?.textContent === '{status}'"
    )
}

#[test]
fn the_console_signs_in_watches_a_pipeline_reach_its_approval_live_and_approves_it() {
    let workspace = Workspace::new();
    let server = Server::start(&workspace);
    let admin = token(&workspace, &["--role", "admin"]);
    let operator = token(&workspace, &["--role", "operator"]);
    register(&server, &admin, "ship", SHIP);
    let browser = Browser::start(1400, 900);
    sign_in(&browser, &server, &operator);

    // The token is in neither the URL nor anything a script can read.
    let location = browser.script("return location.href + document.cookie");
    assert!(
        !location.as_str().unwrap().contains(&operator),
        "{location}"
    );
    assert!(browser.text("#who").contains("operator"));
    assert_eq!(
        browser.script("return document.getElementById('nav-audit').hidden"),
        true,
        "the audit view is for admins"
    );

    browser.click("[data-pipeline=ship] h2 a");
    browser.wait_until(
        "the stage graph",
        "return document.querySelectorAll('.stage').length === 3",
    );
    browser.script("window.sameDocument = true; return true");

    // The keyboard alone reaches Start, opens its dialog and closes it.
    let mut reached = false;
    for _ in 0..40 {
        browser.press(&[TAB]);
        let focused = browser.script("return document.activeElement.getAttribute('data-key')");
        if focused == "start" {
            reached = true;
            break;
        }
    }
    assert!(reached, "Tab never reached the Start button");
    browser.press(&[ENTER]);
    browser.wait_until(
        "the start dialog, by keyboard",
        "return !!document.querySelector('dialog[open]')",
    );
    browser.press(&[ESCAPE]);
    browser.wait_until(
        "the dialog to close on Escape",
        "return !document.querySelector('dialog[open]')",
    );

    browser.click("[data-key=start]");
    browser.wait_until(
        "the start dialog",
        "return !!document.querySelector('dialog[open] #var-environment')",
    );
    browser.fill("#var-environment", "production");
    browser.click("dialog button[value=start]");

    // Live: the approval appears without a reload.
    browser.wait_until(
        "the approval, live",
        "return document.querySelector('[data-action=sign-off] .pill')?.textContent === 'Waiting for approval'",
    );
    assert_eq!(
        browser.script("return window.sameDocument === true"),
        true,
        "the page reloaded"
    );
    assert_eq!(browser.text("[data-stage=Build] header .pill"), "Succeeded");
    assert!(
        browser
            .text("[data-action=sign-off] .approval-box")
            .contains("Ship to production?"),
        "the approval asks with its variables resolved"
    );
    browser.screenshot("pipeline-waiting-for-approval");

    browser.click("[data-key=approve-sign-off]");
    browser.wait_until(
        "the approval dialog",
        "return !!document.querySelector('dialog[open] textarea')",
    );
    browser.fill("#approval-comment", "looks good");
    browser.click("dialog button[value=approve]");
    browser.wait_until(
        "Deploy to succeed, live",
        &stage_shows("Deploy", "Succeeded"),
    );
    assert_eq!(
        browser.script("return window.sameDocument === true"),
        true,
        "the page reloaded"
    );
    browser.screenshot("pipeline");

    // Recorded as the operator's decision, with the comment.
    let (_, state) = server.call("GET", "/api/v1/pipelines/ship/state", Some(&admin), None);
    let approval = &state["stages"][1]["current"]["actions"][0]["approval"];
    assert_eq!(approval["status"], "approved", "{state}");
    assert_eq!(approval["comment"], "looks good");
    let operator_id = browser.text("#who").split(' ').next().unwrap().to_string();
    assert_eq!(approval["decided_by"], operator_id.as_str());

    // The execution view: timeline, resolved configuration, the coloured log.
    browser.click("[data-stage=Deploy] a.exec");
    browser.wait_until(
        "the execution view",
        "return !!document.querySelector('#act-Build-compile')",
    );
    assert!(browser.text(".timeline").contains("release"));
    browser.click("#act-Build-compile summary");
    browser.wait_until(
        "the log, in colour",
        "return document.querySelector('#act-Build-compile .log .ansi-32')?.textContent",
    );
    let pane = browser.text("#act-Build-compile");
    assert!(pane.contains("compiled for production"), "{pane}");
    assert!(
        !pane.contains("\u{1b}["),
        "escape codes are rendered, not shown: {pane}"
    );
    browser.screenshot("execution");
}

#[test]
fn the_console_shows_a_stage_skipped_by_its_condition_rolls_deploy_back_and_hides_buttons_from_viewers()
 {
    let workspace = Workspace::new();
    let server = Server::start(&workspace);
    let admin = token(&workspace, &["--role", "admin"]);
    let operator = token(&workspace, &["--role", "operator"]);
    let viewer = token(&workspace, &["--role", "viewer"]);
    register(&server, &admin, "gated", GATED);
    let first = run_to_end(&server, &admin, "gated", r#"{"release": "r1"}"#);
    run_to_end(&server, &admin, "gated", r#"{"release": "r2"}"#);
    let skipping = run_to_end(
        &server,
        &admin,
        "gated",
        r#"{"branch": "feature/x", "release": "r3"}"#,
    );
    let first = first["execution"]["id"].as_str().unwrap().to_string();
    let skipping = skipping["execution"]["id"].as_str().unwrap().to_string();

    let browser = Browser::start(1280, 900);
    sign_in(&browser, &server, &operator);
    browser.goto(&format!("http://{}/#/pipelines/gated", server.addr));
    browser.wait_until(
        "the stage graph",
        "return document.querySelectorAll('.stage').length === 2",
    );
    assert_eq!(browser.text("[data-stage=Deploy] header .pill"), "Skipped");
    let reason = browser.text("[data-stage=Deploy] .skip-reason");
    assert!(reason.contains("main-only"), "{reason}");
    browser.screenshot("pipeline-skipped-stage");

    // The skipping execution lists the rule that failed.
    browser.click("[data-stage=Deploy] a.exec");
    browser.wait_until(
        "the rule evaluations",
        "return !!document.querySelector('main table')",
    );
    let rules = browser.text("main table");
    assert!(
        rules.contains("main-only") && rules.contains("Failed"),
        "{rules}"
    );
    assert!(browser.text("h1").contains(&skipping[..8]));

    // Roll Deploy back to the first execution.
    browser.goto(&format!("http://{}/#/pipelines/gated", server.addr));
    browser.wait_until(
        "the stage graph",
        "return !!document.querySelector('[data-key=rollback-Deploy]')",
    );
    browser.click("[data-key=rollback-Deploy]");
    browser.wait_until(
        "the rollback dialog",
        "return !!document.querySelector('dialog[open] #rollback-target')",
    );
    browser.fill("#rollback-target", &first[..8]);
    browser.click("dialog button[value=rollback]");
    let rollback = browser.wait_until(
        "the rollback to succeed, live",
        "const s = document.querySelector('[data-stage=Deploy]'); return s.querySelector('header .pill').textContent === 'Succeeded' && s.querySelector('a.exec').getAttribute('href')",
    );
    let rollback = rollback
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    assert_ne!(rollback, first);
    let (_, detail) = server.call(
        "GET",
        &format!("/api/v1/executions/{rollback}"),
        Some(&admin),
        None,
    );
    assert_eq!(
        detail["execution"]["trigger"]["kind"], "rollback",
        "{detail}"
    );
    let deployed = detail["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["action"] == "release")
        .unwrap();
    assert!(
        deployed["resolved_config"]
            .to_string()
            .contains("deployed r1"),
        "the rollback deploys the first execution's release: {deployed}"
    );

    // A viewer sees the same pipeline without a single button that changes it.
    browser.click(".who button");
    browser.wait_until(
        "the sign-in form",
        "return !!document.querySelector('#token')",
    );
    sign_in(&browser, &server, &viewer);
    browser.goto(&format!("http://{}/#/pipelines/gated", server.addr));
    browser.wait_until(
        "the stage graph",
        "return document.querySelectorAll('.stage').length === 2",
    );
    let buttons = browser
        .script("return [...document.querySelectorAll('main button')].map(b => b.textContent)");
    assert_eq!(buttons, serde_json::json!([]), "a viewer gets no buttons");
    browser.screenshot("pipeline-as-viewer");
}

/// Markup from a plugin, a log line, a variable or an approval message is
/// shown as text: the console never turns what it is sent into elements.
const HOSTILE_TEXT: &str = r##"
[pipeline]
name = "markup"

[variables]
note = { default = "<img src=x onerror=window.pwned=1>" }

[[stages]]
name = "Build"
[[stages.actions]]
name = "shout"
plugin = "command@0.1"
config = { run = "echo <script>window.pwned=2</script><img src=x onerror=window.pwned=3>" }
grants = { commands = ["echo"] }

[[stages]]
name = "Approve"
[[stages.actions]]
name = "sign-off"
plugin = "approval"
config = { approvers = "operator", message = "Ship #{variables.note}?" }
"##;

#[test]
fn markup_in_summaries_logs_variables_and_approvals_is_shown_as_text() {
    let workspace = Workspace::new();
    let server = Server::start(&workspace);
    let admin = token(&workspace, &["--role", "admin"]);
    register(&server, &admin, "markup", HOSTILE_TEXT);
    let path = "/api/v1/pipelines/markup/executions";
    let (status, started) = server.call("POST", path, Some(&admin), Some("{}"));
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_str().unwrap().to_string();

    let browser = Browser::start(1280, 900);
    sign_in(&browser, &server, &admin);
    browser.goto(&format!("http://{}/#/pipelines/markup", server.addr));
    browser.wait_until(
        "the approval",
        "return document.querySelector('[data-action=sign-off] .approval-box')?.textContent.includes('onerror')",
    );
    browser.goto(&format!("http://{}/#/executions/{id}", server.addr));
    browser.wait_until(
        "the execution view",
        "return !!document.querySelector('#act-Build-shout')",
    );
    browser.click("#act-Build-shout summary");
    browser.wait_until(
        "the log",
        "return document.querySelector('#act-Build-shout .log')?.textContent.includes('<script>')",
    );
    let page = browser.text("main");
    assert!(
        page.contains("<img src=x onerror=window.pwned=1>"),
        "the variable, as text: {page}"
    );
    let injected = browser.script(
        "return [window.pwned === undefined, document.querySelectorAll('main img, main script').length]",
    );
    assert_eq!(
        injected,
        serde_json::json!([true, 0]),
        "markup became elements"
    );
}

/// An action that prints three lines, one of them a warning (spelled so that
/// only that line, not the command the log also shows, holds `warn-ing`).
const CHATTY: &str = r##"
[pipeline]
name = "chatty"

[[stages]]
name = "Build"
[[stages.actions]]
name = "talk"
plugin = "command@0.1"
config = { run = "sh -c 'w=warn; echo compiling sluice; echo $w-ing: unused variable; echo Finished release'" }
grants = { commands = ["sh"] }
"##;

/// An action's log is searched where it is shown (the lines without the
/// text hidden, a count of those with it), and downloaded as a text file
/// that holds every stored line, in order.
#[test]
fn an_actions_log_is_searched_in_place_and_downloaded_as_text() {
    let workspace = Workspace::new();
    let server = Server::start(&workspace);
    let admin = token(&workspace, &["--role", "admin"]);
    register(&server, &admin, "chatty", CHATTY);
    let done = run_to_end(&server, &admin, "chatty", "{}");
    assert_eq!(done["execution"]["status"], "Succeeded", "{done:#}");
    let id = done["execution"]["id"].as_str().unwrap().to_string();

    let path = format!("/api/v1/executions/{id}/logs/download?action=talk");
    let bearer = format!("Bearer {admin}");
    let (status, head, file) = server.exchange("GET", &path, &[("Authorization", &bearer)], None);
    assert_eq!(status, 200, "{head}\n{file}");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("content-type: text/plain"), "{head}");
    assert!(
        head.contains(&format!(
            "content-disposition: attachment; filename=\"{id}-talk.log\""
        )),
        "{head}"
    );
    // A native command's output is stream `process`; the plugin's own and
    // the host's notes come with it.
    let said: Vec<&str> = file.lines().filter(|l| l.contains("] process ")).collect();
    assert_eq!(said.len(), 3, "{file}");
    for (line, text) in said.iter().zip([
        "compiling sluice",
        "warn-ing: unused variable",
        "Finished release",
    ]) {
        assert!(
            line.contains("[talk #1] process") && line.ends_with(text),
            "{file}"
        );
    }
    let stored = file.lines().count();

    let browser = Browser::start(1280, 900);
    sign_in(&browser, &server, &admin);
    browser.goto(&format!("http://{}/#/executions/{id}", server.addr));
    browser.wait_until(
        "the execution view",
        "return !!document.querySelector('#act-Build-talk')",
    );
    browser.click("#act-Build-talk summary");
    browser.wait_until(
        "every line of the log",
        &format!(
            "return document.querySelectorAll('#act-Build-talk .log .line').length === {stored}"
        ),
    );
    browser.fill("#act-Build-talk .log-search", "WARN-ING");
    let shown = browser.wait_until(
        "the search to hide the other lines",
        &format!(
            "const pane = document.querySelector('#act-Build-talk');
             const shown = [...pane.querySelectorAll('.log .line')].filter((l) => !l.hidden);
             return pane.querySelector('.log-matches').textContent === '1 of {stored} lines'
               && shown.map((l) => l.textContent)"
        ),
    );
    let shown = shown.as_array().unwrap();
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert!(
        shown[0]
            .as_str()
            .unwrap()
            .ends_with("warn-ing: unused variable"),
        "{shown:?}"
    );

    let link = browser.script(
        "const a = document.querySelector('#act-Build-talk .log-download'); return [a.getAttribute('href'), a.hasAttribute('download')]",
    );
    assert_eq!(link, serde_json::json!([path, true]));
    // The link, followed with the console's session cookie, gives the file.
    browser.script(&format!(
        "fetch('{path}').then((r) => r.text()).then((t) => {{ window.downloaded = t; }}); return null"
    ));
    let downloaded = browser.wait_until(
        "the download",
        "return window.downloaded !== undefined && window.downloaded",
    );
    assert_eq!(downloaded.as_str(), Some(file.as_str()));
}

/// The session cookie attacked over plain HTTP.
#[test]
fn console_sessions_are_http_only_cookies_and_changes_need_the_pages_csrf_value() {
    let workspace = Workspace::new();
    let server = Server::start(&workspace);
    let admin = token(&workspace, &["--role", "admin"]);
    let operator = token(&workspace, &["--role", "operator"]);
    register(&server, &admin, "gated", GATED);
    let origin = format!("http://{}", server.addr);
    let form = [("Content-Type", "application/x-www-form-urlencoded")];

    // A wrong token gets the form again, saying why; no cookie.
    let (status, head, page) =
        server.exchange("POST", "/console/sign-in", &form, Some("token=sluice_nope"));
    assert_eq!(status, 401, "{head}");
    assert!(
        page.contains("unknown bearer token") && !head.contains("Set-Cookie"),
        "{page}"
    );

    // A form posted from another site is refused, token or not.
    let cross = [form[0], ("Origin", "https://evil.example")];
    let (status, head, _) = server.exchange(
        "POST",
        "/console/sign-in",
        &cross,
        Some(&format!("token={operator}")),
    );
    assert_eq!(status, 403, "{head}");

    // Signing in sets an HttpOnly, SameSite=Strict session cookie.
    let same = [form[0], ("Origin", origin.as_str())];
    let (status, head, _) = server.exchange(
        "POST",
        "/console/sign-in",
        &same,
        Some(&format!("token={operator}")),
    );
    assert_eq!(status, 303, "{head}");
    let cookie_line = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no cookie: {head}"));
    assert!(
        cookie_line.contains("HttpOnly") && cookie_line.contains("SameSite=Strict"),
        "{cookie_line}"
    );
    let cookie = format!("sluice_session={operator}");
    let signed_in = [("Cookie", cookie.as_str())];

    // The page carries the CSRF value; the cookie alone reads the API.
    let (status, head, page) = server.exchange("GET", "/", &signed_in, None);
    assert_eq!(status, 200);
    let lower = head.to_ascii_lowercase();
    assert!(
        lower.contains("content-security-policy: default-src 'self'"),
        "{head}"
    );
    let csrf = page
        .split(r#"name="sluice-csrf" content=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_string();
    assert_eq!(csrf.len(), 64, "{page}");
    let (status, _, whoami) = server.exchange("GET", "/api/v1/whoami", &signed_in, None);
    assert_eq!(status, 200);
    assert!(whoami.contains(r#""role":"operator""#), "{whoami}");

    // A change with the cookie but without the page's value is refused and
    // audited; so is one with another session's value.
    let start = "/api/v1/pipelines/gated/executions";
    let (status, _, refused) = server.exchange("POST", start, &signed_in, Some("{}"));
    assert_eq!(status, 403, "{refused}");
    assert!(refused.contains(r#""reason":"csrf""#), "{refused}");
    let (_, _, admin_page) = server.exchange(
        "GET",
        "/",
        &[("Cookie", &format!("sluice_session={admin}"))],
        None,
    );
    let admin_csrf = admin_page
        .split(r#"content=""#)
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let foreign = [signed_in[0], ("X-Sluice-CSRF", admin_csrf)];
    assert_eq!(server.exchange("POST", start, &foreign, Some("{}")).0, 403);
    let proper = [signed_in[0], ("X-Sluice-CSRF", csrf.as_str())];
    let (status, _, started) = server.exchange("POST", start, &proper, Some("{}"));
    assert_eq!(status, 202, "{started}");
    let (_, audit) = server.call("GET", "/api/v1/audit", Some(&admin), None);
    let results: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == format!("POST {start}"))
        .map(|e| e["result"].as_str().unwrap())
        .collect();
    assert_eq!(results, ["403", "403", "202"], "{audit}");

    // Sign-out needs the value too, and clears the cookie.
    let (status, _, _) = server.exchange(
        "POST",
        "/console/sign-out",
        &[form[0], signed_in[0]],
        Some("csrf=wrong"),
    );
    assert_eq!(status, 403);
    let body = format!("csrf={csrf}");
    let (status, head, _) = server.exchange(
        "POST",
        "/console/sign-out",
        &[form[0], signed_in[0]],
        Some(&body),
    );
    assert_eq!(status, 303);
    assert!(head.contains("Max-Age=0"), "{head}");

    // A revoked token's cookie stops working at once.
    let id = whoami
        .split(r#""token":""#)
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    assert!(workspace.sluice(&["token", "revoke", id]).status.success());
    let (status, _, _) = server.exchange("GET", "/api/v1/whoami", &signed_in, None);
    assert_eq!(status, 401);
    let (_, head, page) = server.exchange("GET", "/", &signed_in, None);
    assert!(
        page.contains("was revoked") && head.contains("Max-Age=0"),
        "{page}"
    );
}
