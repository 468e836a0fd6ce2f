//! Shared fixtures: guest components built from source once per test run,
//! installed once into a shared registry, and a scratch data directory per test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

#[path = "../../xtask/src/guests.rs"]
mod guests;

/// The workspace root.
pub fn root() -> PathBuf {
    // This test belongs to the `sluice` binary's crate, `host/cli`.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf()
}

/// Guest plugins packaged from current source (cargo rebuilds what changed, so
/// a test never runs a stale component).
pub fn packaged_plugins() -> &'static Path {
    static PACKAGED: OnceLock<PathBuf> = OnceLock::new();
    PACKAGED.get_or_init(|| {
        let out = root().join("target").join("e2e-plugins");
        if let Err(e) = guests::build_and_package(&root(), &out) {
            panic!("building guest plugins failed: {e}\n(is the wasm32-wasip2 target installed? `cargo xtask test` installs it)");
        }
        out
    })
}

/// A registry with every packaged plugin installed, shared by all tests.
pub fn shared_registry() -> &'static Path {
    static REGISTRY: OnceLock<PathBuf> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let registry = root().join("target").join("e2e-registry");
        std::fs::remove_dir_all(&registry).ok();
        let scratch = tempfile::tempdir().unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("--data-dir")
            .arg(scratch.path())
            .arg("--plugins")
            .arg(&registry)
            .args(["plugin", "install", "--yes"])
            .arg(packaged_plugins())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "installing plugins failed:\n{}",
            text(&output)
        );
        registry
    })
}

/// Everything a finished `sluice` command printed.
pub fn text(output: &Output) -> String {
    format!(
        "--- exit: {:?}\n--- stdout:\n{}\n--- stderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// One test's world: a data directory and a place for pipeline files.
pub struct Workspace {
    pub dir: tempfile::TempDir,
    registry: PathBuf,
    env: Vec<(String, String)>,
}

impl Workspace {
    /// A fresh workspace using the shared plugin registry.
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            registry: shared_registry().to_path_buf(),
            env: Vec::new(),
        }
    }

    /// A fresh workspace with an empty registry of its own (at `registry/`).
    pub fn with_private_registry() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let registry = dir.path().join("registry");
        Self {
            dir,
            registry,
            env: Vec::new(),
        }
    }

    /// Environment variables set with [`Workspace::env`].
    pub fn envs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.env.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// This workspace's plugin registry.
    pub fn registry(&self) -> &Path {
        &self.registry
    }

    /// Path inside the workspace.
    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// Write a file (parents created) and return its path.
    pub fn write(&self, relative: &str, content: &str) -> PathBuf {
        let path = self.path(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        path
    }

    /// Set an environment variable for every later command (e.g. a secret).
    pub fn env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_string(), value.to_string()));
    }

    /// Run `sluice` with this workspace's data directory and registry. Stdin is
    /// not a terminal, as in CI.
    pub fn sluice(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// `sluice` with this workspace's data directory and registry, not yet
    /// started (for tests that signal it or read it while it runs).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
        command
            .current_dir(self.dir.path())
            .stdin(std::process::Stdio::null())
            .env_remove("SLUICE_DATA_DIR")
            .env_remove("SLUICE_PLUGINS")
            .env_remove("SLUICE_LOG")
            .env_remove("RUST_LOG")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .arg("--data-dir")
            .arg(self.path(".sluice"))
            .arg("--plugins")
            .arg(&self.registry)
            .args(args);
        command
    }

    /// Write `pipeline.toml` and run it.
    pub fn run_pipeline(&self, pipeline: &str) -> Output {
        self.write("pipeline.toml", pipeline);
        self.sluice(&["run", "pipeline.toml"])
    }

    /// `executions show latest --json`, parsed.
    pub fn latest_execution(&self) -> serde_json::Value {
        let output = self.sluice(&["executions", "show", "latest", "--json"]);
        assert!(output.status.success(), "{}", text(&output));
        serde_json::from_slice(&output.stdout).unwrap()
    }

    /// All stored log text of the latest execution.
    pub fn latest_logs(&self) -> String {
        let output = self.sluice(&["logs", "latest"]);
        assert!(output.status.success(), "{}", text(&output));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

/// The JSON record of one action in an execution document.
pub fn action<'a>(execution: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    execution["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["action"] == name)
        .unwrap_or_else(|| panic!("no action {name} in {execution:#}"))
}

/// A one-stage pipeline running the hostile plugin with `config` (the inside of
/// an inline table), plus `extra` TOML lines for the action.
pub fn hostile_pipeline(config: &str, extra: &str) -> String {
    format!(
        r#"
[pipeline]
name = "hostile"

[[stages]]
name = "Attack"
[[stages.actions]]
name = "attack"
plugin = "hostile@0.1"
config = {{ {config} }}
{extra}
"#
    )
}

/// Poll `done` for up to `seconds` (a bound on waiting, not a timing assertion).
pub fn eventually(seconds: u64, mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while std::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    done()
}

/// A PostgreSQL schema of its own on the test database, dropped when the test
/// ends: `url` makes `sluice --database` use it. The database is
/// `SLUICE_TEST_POSTGRES`, or the local server this project's machines (and
/// CI) run: trust auth, database `test`.
pub struct PostgresSchema {
    /// `--database` for this schema.
    pub url: String,
    name: String,
}

impl PostgresSchema {
    pub fn new() -> PostgresSchema {
        let name = format!("sluice_e2e_{}", uuid::Uuid::new_v4().simple());
        postgres_admin(&format!("CREATE SCHEMA {name}"));
        let url = format!("{}?options=-csearch_path%3D{name}", test_database());
        PostgresSchema { url, name }
    }
}

impl PostgresSchema {
    /// Rows of `table` in this schema.
    pub fn count(&self, table: &str) -> i64 {
        let mut client = postgres::Client::connect(&test_database(), postgres::NoTls).unwrap();
        let sql = format!("SELECT COUNT(*) FROM {}.{table}", self.name);
        client.query_one(&sql, &[]).unwrap().get(0)
    }
}

impl PostgresSchema {
    /// The rows of a query in this schema.
    pub fn rows(
        &self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Vec<postgres::Row> {
        let mut client = postgres::Client::connect(&self.url, postgres::NoTls).unwrap();
        client.query(sql, params).unwrap()
    }
}

impl Drop for PostgresSchema {
    fn drop(&mut self) {
        postgres_admin(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
    }
}

fn test_database() -> String {
    std::env::var("SLUICE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

fn postgres_admin(sql: &str) {
    let mut client = postgres::Client::connect(&test_database(), postgres::NoTls)
        .unwrap_or_else(|e| panic!("PostgreSQL at {}: {e}", test_database()));
    client.batch_execute(sql).unwrap();
}

/// An S3-compatible server for one test: moto's server mode (`pip install
/// 'moto[server]'`, which `.ci/run` does) on a free port of 127.0.0.1, with
/// one empty bucket. Stopped when dropped.
pub struct S3Bucket {
    child: std::process::Child,
    port: u16,
}

impl S3Bucket {
    pub fn start() -> S3Bucket {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting moto's server (pip install 'moto[server]'): {e}"));
        let bucket = S3Bucket { child, port };
        let ready = eventually(30, || {
            bucket.request("PUT", "/sluice").is_some_and(|s| s == 200)
        });
        assert!(
            ready,
            "moto_server did not create the bucket on port {port}"
        );
        bucket
    }

    /// One request without a body; the status, if the server answered.
    fn request(&self, method: &str, path: &str) -> Option<u16> {
        use std::io::{Read as _, Write as _};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        response.split_whitespace().nth(1)?.parse().ok()
    }

    /// The environment that points `sluice --artifacts` at the bucket.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("SLUICE_ARTIFACTS", "s3://sluice/e2e".to_string()),
            (
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("AWS_ALLOW_HTTP", "true".to_string()),
            ("AWS_ACCESS_KEY_ID", "test".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "test".to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

impl Drop for S3Bucket {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
