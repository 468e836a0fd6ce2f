//! Log capability: `sluice:action/log`, plus the guest's stdout and stderr.
//!
//! Everything an action prints lands in one [`LogSink`]: split into lines, masked,
//! and capped at the action's log limit. Past the limit, output is dropped and one
//! marker line says so; the guest is never trapped for logging too much (a trap
//! would turn a noisy plugin into a failed deploy).

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

use super::SandboxState;
use super::bindings::sluice::action::log::{Host, Level};
use sluice_store::secrets::Masker;

/// Called with (percent, message) whenever the action reports progress.
pub type ProgressHook = Arc<dyn Fn(u8, &str) + Send + Sync>;

/// Called with (stream name, masked text) for every kept line as it is captured,
/// so output can be shown while the action runs.
pub type LineHook = Arc<dyn Fn(&'static str, &str) + Send + Sync>;

/// How many of the guest's last stdout/stderr lines a crash report quotes.
pub const CRASH_TAIL_LINES: usize = 15;
/// Raw bytes of each line kept for the crash report (the rest cannot be shown anyway).
const CRASH_LINE_KEEP: usize = 2048;
/// Characters of each line a crash report shows.
const CRASH_LINE_SHOW: usize = 300;

/// Where a log line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStream {
    /// The guest's standard output.
    Stdout,
    /// The guest's standard error.
    Stderr,
    /// A `log.write` call, with its level.
    Log(&'static str),
    /// Standard output of a native command run through the process capability.
    Process,
    /// Standard error of such a command.
    ProcessErr,
    /// A message from the host itself (limits, denials, retries).
    Host,
}

impl LogStream {
    /// The name stored with each line.
    pub fn name(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
            LogStream::Log(level) => level,
            LogStream::Process => "process",
            LogStream::ProcessErr => "process-err",
            LogStream::Host => "sluice",
        }
    }
}

pub use sluice_store::state::LogLine;

struct Buffer {
    lines: Vec<LogLine>,
    bytes: u64,
    limit: u64,
    dropped_bytes: u64,
    /// Unterminated last line of each byte stream, by stream name.
    partial: HashMap<&'static str, Vec<u8>>,
    /// The guest's last stdout/stderr lines, unmasked and shortened, kept even
    /// past the log limit: a crash report quotes them (masked) to say why.
    recent: VecDeque<(&'static str, String)>,
}

/// Kept lines waiting to be handed to the live hook once the buffer is unlocked.
type Shown = Vec<(&'static str, String)>;

/// A shared, bounded, masking collector of an action's log lines.
#[derive(Clone)]
pub struct LogSink {
    buffer: Arc<Mutex<Buffer>>,
    masker: Arc<Masker>,
    progress: Option<ProgressHook>,
    live: Option<LineHook>,
}

impl LogSink {
    /// A sink keeping at most `limit` bytes of masked text.
    pub fn new(limit: u64, masker: Arc<Masker>, progress: Option<ProgressHook>) -> Self {
        let buffer = Buffer {
            lines: Vec::new(),
            bytes: 0,
            limit,
            dropped_bytes: 0,
            partial: HashMap::new(),
            recent: VecDeque::new(),
        };
        Self {
            buffer: Arc::new(Mutex::new(buffer)),
            masker,
            progress,
            live: None,
        }
    }

    /// Also hand every kept line (masked) to `hook` as it is captured.
    pub fn with_live(mut self, hook: LineHook) -> Self {
        self.live = Some(hook);
        self
    }

    /// Record one line (it may contain newlines; each becomes its own line).
    pub fn line(&self, stream: LogStream, text: &str) {
        let mut shown = Shown::new();
        {
            let mut buffer = self.lock();
            for piece in text.split('\n') {
                self.push(&mut buffer, stream, piece, &mut shown);
            }
        }
        self.show(shown);
    }

    /// Record raw bytes from a stream, completing lines across calls.
    pub fn bytes(&self, stream: LogStream, data: &[u8]) {
        let mut shown = Shown::new();
        {
            let mut buffer = self.lock();
            let mut pending = buffer.partial.remove(stream.name()).unwrap_or_default();
            pending.extend_from_slice(data);
            let mut start = 0;
            while let Some(pos) = pending[start..].iter().position(|&b| b == b'\n') {
                let line = String::from_utf8_lossy(&pending[start..start + pos]).into_owned();
                self.push(&mut buffer, stream, &line, &mut shown);
                start += pos + 1;
            }
            let rest = pending.split_off(start);
            // An unterminated line longer than the limit would never be flushed otherwise.
            let rest = if rest.len() as u64 > buffer.limit {
                self.push(
                    &mut buffer,
                    stream,
                    &String::from_utf8_lossy(&rest),
                    &mut shown,
                );
                Vec::new()
            } else {
                rest
            };
            if !rest.is_empty() {
                buffer.partial.insert(stream.name(), rest);
            }
        }
        self.show(shown);
    }

    /// The complete lines captured since the last call (or since the start):
    /// they are handed over, so the caller can store them while the action runs.
    pub fn take_new(&self) -> Vec<LogLine> {
        std::mem::take(&mut self.lock().lines)
    }

    /// The guest's last lines of stdout and stderr (unterminated ones included),
    /// masked and shortened, oldest first, each prefixed by its stream: what a
    /// crash report quotes.
    pub fn crash_tail(&self) -> Vec<String> {
        let buffer = self.lock();
        let mut lines: Vec<(&str, String)> = buffer
            .recent
            .iter()
            .map(|(stream, text)| (*stream, text.clone()))
            .collect();
        for stream in [LogStream::Stdout, LogStream::Stderr] {
            if let Some(rest) = buffer.partial.get(stream.name()) {
                lines.push((stream.name(), String::from_utf8_lossy(rest).into_owned()));
            }
        }
        let skip = lines.len().saturating_sub(CRASH_TAIL_LINES);
        lines
            .into_iter()
            .skip(skip)
            .map(|(stream, text)| {
                let masked = self.masker.mask(&text);
                let mut shown: String = masked.chars().take(CRASH_LINE_SHOW).collect();
                if shown.len() < masked.len() {
                    shown.push('…');
                }
                format!("[{stream}] {shown}")
            })
            .collect()
    }

    /// Report progress to whoever is watching, and log it.
    pub fn progress(&self, percent: u8, message: &str) {
        let message = self.masker.mask(message);
        if let Some(hook) = &self.progress {
            hook(percent.min(100), &message);
        }
        self.line(LogStream::Log("progress"), &format!("{percent}% {message}"));
    }

    /// Flush partial lines and take everything captured so far.
    pub fn finish(&self) -> CapturedLog {
        let mut shown = Shown::new();
        let captured = {
            let mut buffer = self.lock();
            let mut partial: Vec<_> = buffer.partial.drain().collect();
            partial.sort();
            for (stream, rest) in partial {
                let text = String::from_utf8_lossy(&rest).into_owned();
                self.push_named(&mut buffer, stream, &text, &mut shown);
            }
            CapturedLog {
                lines: std::mem::take(&mut buffer.lines),
                dropped_bytes: buffer.dropped_bytes,
            }
        };
        self.show(shown);
        captured
    }

    /// The masker this sink applies (shared with the process capability).
    pub fn masker(&self) -> &Masker {
        &self.masker
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buffer> {
        // A poisoned log buffer still holds valid lines; keep using it.
        self.buffer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, buffer: &mut Buffer, stream: LogStream, text: &str, shown: &mut Shown) {
        if matches!(stream, LogStream::Stdout | LogStream::Stderr) {
            remember(buffer, stream.name(), text);
        }
        self.push_named(buffer, stream.name(), text, shown);
    }

    /// Hand kept lines to the live hook (outside the buffer's lock: the hook may
    /// block on a slow terminal, and the guest's other stream must not wait on it).
    fn show(&self, shown: Shown) {
        if let Some(hook) = &self.live {
            for (stream, text) in shown {
                hook(stream, &text);
            }
        }
    }

    fn push_named(&self, buffer: &mut Buffer, stream: &'static str, text: &str, shown: &mut Shown) {
        let size = text.len() as u64 + 1;
        if buffer.dropped_bytes > 0 || buffer.bytes + size > buffer.limit {
            if buffer.dropped_bytes == 0 {
                let text = format!(
                    "log limit of {} reached: further output of this action is dropped",
                    sluice_core::units::format_bytes(buffer.limit)
                );
                if self.live.is_some() {
                    shown.push((LogStream::Host.name(), text.clone()));
                }
                buffer.lines.push(LogLine {
                    timestamp_ms: now_ms(),
                    stream: LogStream::Host.name(),
                    text,
                });
            }
            buffer.dropped_bytes += size;
            return;
        }
        buffer.bytes += size;
        let text = self.masker.mask(text);
        // Progress is shown by its own event; showing its log line too would repeat it.
        if self.live.is_some() && stream != "progress" {
            shown.push((stream, text.clone()));
        }
        buffer.lines.push(LogLine {
            timestamp_ms: now_ms(),
            stream,
            text,
        });
    }
}

/// Keep `text` among the guest's last lines for a crash report.
fn remember(buffer: &mut Buffer, stream: &'static str, text: &str) {
    if text.trim().is_empty() {
        return;
    }
    let mut end = text.len().min(CRASH_LINE_KEEP);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    if buffer.recent.len() == CRASH_TAIL_LINES {
        buffer.recent.pop_front();
    }
    buffer.recent.push_back((stream, text[..end].to_string()));
}

/// What a sink captured.
#[derive(Debug, Default)]
pub struct CapturedLog {
    /// The kept, masked lines.
    pub lines: Vec<LogLine>,
    /// Bytes dropped after the log limit was reached (0 when within the limit).
    pub dropped_bytes: u64,
}

/// Milliseconds since the Unix epoch (kept here for the capabilities' callers).
pub use sluice_core::units::now_ms;

impl Host for SandboxState {
    async fn write(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let level = match level {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        };
        self.log.line(LogStream::Log(level), &message);
        Ok(())
    }

    async fn progress(&mut self, percent: u8, message: String) -> wasmtime::Result<()> {
        self.log.progress(percent, &message);
        Ok(())
    }
}

/// The guest's stdout or stderr, feeding a [`LogSink`].
pub struct GuestOutput {
    sink: LogSink,
    stream: LogStream,
}

impl GuestOutput {
    /// Route a guest stream into `sink`.
    pub fn new(sink: LogSink, stream: LogStream) -> Self {
        Self { sink, stream }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(GuestOutputWriter {
            sink: self.sink.clone(),
            stream: self.stream,
        })
    }
}

struct GuestOutputWriter {
    sink: LogSink,
    stream: LogStream,
}

impl AsyncWrite for GuestOutputWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        // Always accept everything: the sink drops what is over the limit.
        self.sink.bytes(self.stream, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_writes_are_joined_and_masked() {
        let masker = Masker::new([&"topsecret".to_string()]);
        let sink = LogSink::new(1 << 20, Arc::new(masker), None);
        sink.bytes(LogStream::Stdout, b"token=top");
        sink.bytes(LogStream::Stdout, b"secret\nnext");
        let log = sink.finish();
        let texts: Vec<_> = log.lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["token=***", "next"]);
    }

    #[test]
    fn the_live_hook_sees_each_completed_masked_line_at_once() {
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let record = seen.clone();
        let masker = Masker::new([&"topsecret".to_string()]);
        let sink = LogSink::new(1 << 20, Arc::new(masker), None).with_live(Arc::new(
            move |stream, text| record.lock().unwrap().push(format!("{stream}:{text}")),
        ));
        sink.bytes(LogStream::Process, b"first topsecret\nsec");
        assert_eq!(*seen.lock().unwrap(), ["process:first ***"]);
        sink.progress(50, "halfway");
        sink.bytes(LogStream::Process, b"ond");
        assert_eq!(
            seen.lock().unwrap().len(),
            1,
            "progress and partial lines wait"
        );
        sink.finish();
        assert_eq!(
            *seen.lock().unwrap(),
            ["process:first ***", "process:second"]
        );
    }

    #[test]
    fn new_lines_are_handed_over_once() {
        let sink = LogSink::new(1 << 20, Arc::new(Masker::default()), None);
        sink.line(LogStream::Log("info"), "one");
        sink.bytes(LogStream::Stdout, b"two\nthr");
        let texts = |lines: Vec<LogLine>| lines.into_iter().map(|l| l.text).collect::<Vec<_>>();
        assert_eq!(texts(sink.take_new()), ["one", "two"]);
        assert!(sink.take_new().is_empty());
        assert_eq!(texts(sink.finish().lines), ["thr"]);
    }

    #[test]
    fn the_crash_tail_quotes_the_last_guest_lines_masked_even_past_the_limit() {
        let masker = Masker::new([&"topsecret".to_string()]);
        let sink = LogSink::new(64, Arc::new(masker), None);
        for i in 0..20 {
            sink.bytes(LogStream::Stdout, format!("out {i}\n").as_bytes());
        }
        sink.line(LogStream::Log("info"), "not guest output");
        sink.bytes(LogStream::Stderr, b"panicked: key topsecret\nunterminated");
        let tail = sink.crash_tail();
        assert_eq!(tail.len(), CRASH_TAIL_LINES);
        assert_eq!(tail[0], "[stdout] out 7");
        assert_eq!(tail[13], "[stderr] panicked: key ***");
        assert_eq!(tail[14], "[stderr] unterminated");
    }

    #[test]
    fn output_past_the_limit_is_dropped_with_one_marker() {
        let sink = LogSink::new(100, Arc::new(Masker::default()), None);
        for _ in 0..50 {
            sink.line(LogStream::Log("info"), "0123456789");
        }
        let log = sink.finish();
        assert!(log.dropped_bytes > 0);
        let markers = log.lines.iter().filter(|l| l.stream == "sluice").count();
        assert_eq!(markers, 1);
        assert!(log.lines.last().unwrap().text.contains("log limit"));
    }
}
