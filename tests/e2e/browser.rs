//! A real browser for the console tests: Debian's headless Chromium, driven
//! through chromedriver over the W3C WebDriver protocol (a few JSON calls,
//! made with ureq). `.ci/run` installs both packages.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::root;

/// The key under which WebDriver returns an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Longest wait for something to appear on the page: a bound, not a timing
/// assertion (a slow machine only makes the test slower).
const PATIENCE: Duration = Duration::from_secs(60);

/// One Chromium session with a fresh profile, closed when dropped.
pub(crate) struct Browser {
    driver: Child,
    base: String,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Start chromedriver and a headless Chromium with a window this size.
    pub(crate) fn start(width: u32, height: u32) -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is not installed: `.ci/run` installs Debian's chromium-driver");
        let base = format!("http://127.0.0.1:{port}");
        let ready = Instant::now();
        while ureq::get(&format!("{base}/status")).call().is_err() {
            assert!(ready.elapsed() < PATIENCE, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--user-data-dir={}", profile.path().display()),
            &format!("--window-size={width},{height}"),
        ];
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args}
        }}});
        let created = post(&format!("{base}/session"), &capabilities);
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {created}"))
            .to_string();
        Browser {
            driver,
            base,
            session,
            _profile: profile,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/session/{}{path}", self.base, self.session)
    }

    /// Load `url` (waits for the document to load).
    pub(crate) fn goto(&self, url: &str) {
        post(&self.url("/url"), &json!({ "url": url }));
    }

    fn element(&self, css: &str) -> String {
        let found = post(
            &self.url("/element"),
            &json!({"using": "css selector", "value": css}),
        );
        found["value"][ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element `{css}` on the page: {found}"))
            .to_string()
    }

    /// Click the element `css` selects, as a user would.
    pub(crate) fn click(&self, css: &str) {
        let id = self.element(css);
        post(&self.url(&format!("/element/{id}/click")), &json!({}));
    }

    /// Replace the text of the field `css` selects by typing `text`.
    pub(crate) fn fill(&self, css: &str, text: &str) {
        let id = self.element(css);
        post(&self.url(&format!("/element/{id}/clear")), &json!({}));
        post(
            &self.url(&format!("/element/{id}/value")),
            &json!({ "text": text }),
        );
    }

    /// Press keys, one after another, on whatever has the focus (WebDriver
    /// key codes: `\u{E004}` Tab, `\u{E007}` Enter, `\u{E00C}` Escape).
    pub(crate) fn press(&self, keys: &[&str]) {
        let strokes: Vec<Value> = keys
            .iter()
            .flat_map(|key| {
                [
                    json!({"type": "keyDown", "value": key}),
                    json!({"type": "keyUp", "value": key}),
                ]
            })
            .collect();
        let actions = json!({"actions": [{"type": "key", "id": "keyboard", "actions": strokes}]});
        post(&self.url("/actions"), &actions);
    }

    /// Run `script` (a function body: `return …`) in the page; its result.
    pub(crate) fn script(&self, script: &str) -> Value {
        post(
            &self.url("/execute/sync"),
            &json!({"script": script, "args": []}),
        )["value"]
            .take()
    }

    /// Wait until `script` returns something truthy; panics naming `what`,
    /// with the page's text and a screenshot, when it never does.
    pub(crate) fn wait_until(&self, what: &str, script: &str) -> Value {
        let started = Instant::now();
        loop {
            let value = self.script(script);
            let truthy = !matches!(&value, Value::Null | Value::Bool(false))
                && value != json!("")
                && value != json!(0);
            if truthy {
                return value;
            }
            if started.elapsed() > PATIENCE {
                let shot = self.screenshot(&format!("failed-{}", what.replace(' ', "-")));
                panic!(
                    "waited {PATIENCE:?} for {what}; the page says:\n{}\n(screenshot: {})",
                    self.script("return document.body.innerText"),
                    shot.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The text of the element `css` selects.
    pub(crate) fn text(&self, css: &str) -> String {
        let script = format!(
            "const e = document.querySelector({}); return e ? e.innerText : null",
            json!(css)
        );
        self.script(&script)
            .as_str()
            .unwrap_or_else(|| panic!("no element `{css}` on the page"))
            .to_string()
    }

    /// Save a screenshot as `target/console/<name>.png`; its path.
    pub(crate) fn screenshot(&self, name: &str) -> PathBuf {
        use base64::Engine as _;
        let taken = ureq::get(&self.url("/screenshot"))
            .call()
            .unwrap()
            .into_json::<Value>()
            .unwrap();
        let png = base64::engine::general_purpose::STANDARD
            .decode(taken["value"].as_str().unwrap())
            .unwrap();
        let dir = root().join("target").join("console");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = ureq::delete(&self.url("")).call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// POST JSON to chromedriver; its answer. WebDriver errors name what failed.
fn post(url: &str, body: &Value) -> Value {
    match ureq::post(url).send_json(body.clone()) {
        Ok(response) => response.into_json().unwrap(),
        Err(ureq::Error::Status(status, response)) => {
            panic!(
                "WebDriver {url} answered {status}: {}",
                response.into_string().unwrap_or_default()
            )
        }
        Err(e) => panic!("WebDriver {url}: {e}"),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
