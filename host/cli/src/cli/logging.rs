//! Where the process's own log lines go: stderr, filtered by `SLUICE_LOG`
//! (and, for `sluice serve`, `RUST_LOG`), as text or JSON lines.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// How `sluice serve` writes its log lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line per event for people, with the spans it happened in.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `fields`, `target`,
    /// `span` and `spans` with their fields), for log collectors.
    Json,
}

/// What one command logs by default, and which variables may override it.
pub struct LogSettings {
    /// The filter when no variable sets one (`EnvFilter` directives).
    pub default_filter: &'static str,
    /// Variables read in order; the first one set wins.
    pub variables: &'static [&'static str],
    /// Text or JSON lines.
    pub format: LogFormat,
}

impl LogSettings {
    /// Local commands: warnings only, unless `SLUICE_LOG` says otherwise.
    /// `RUST_LOG` is not read: a developer's global setting would flood
    /// `sluice run` with the logs of every dependency.
    pub fn command() -> Self {
        Self {
            default_filter: "warn",
            variables: &["SLUICE_LOG"],
            format: LogFormat::Text,
        }
    }

    /// `sluice serve`: a service's log, so requests and state changes at info.
    pub fn serve(format: LogFormat) -> Self {
        Self {
            default_filter: "warn,sluice=info",
            variables: &["SLUICE_LOG", "RUST_LOG"],
            format,
        }
    }
}

/// Install the global subscriber writing to stderr. A variable that does not
/// parse as a filter is reported (as a log line) and the default is used.
pub fn init(settings: &LogSettings) {
    let mut rejected = None;
    let mut filter = None;
    for variable in settings.variables {
        let Ok(value) = std::env::var(variable) else {
            continue;
        };
        if value.trim().is_empty() {
            continue;
        }
        match EnvFilter::try_new(&value) {
            Ok(parsed) => {
                filter = Some(parsed);
                break;
            }
            Err(e) => {
                rejected = Some(format!("ignoring {variable}={value:?}: {e}"));
                break;
            }
        }
    }
    let filter = filter.unwrap_or_else(|| EnvFilter::new(settings.default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match settings.format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
    if let Some(complaint) = rejected {
        tracing::warn!("{complaint}");
    }
}
