//! Logging setup: tracing to stderr, filtered by `RUST_LOG`, as text (no colours unless
//! stderr is a terminal, so journald gets clean lines) or as JSON for log shippers.

use std::cell::RefCell;
use std::io::{IsTerminal, Write};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::LogFormat;

/// Quiet by default: our own info lines (transitions, pass summaries), others' warnings.
pub(crate) const DEFAULT_FILTER: &str = "warn,konbini_reconciler=info";

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
pub(crate) fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Stderr)
        .with_target(false);
    let _ = match format {
        // journald stamps every line itself; a second timestamp only adds noise.
        LogFormat::Text if under_journald() => builder.with_ansi(false).without_time().try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

thread_local! {
    /// Lines logged by this thread inside [`batched`], not yet written.
    static BATCH: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
}

/// Runs `f`, collecting the lines this thread logs meanwhile and writing them to stderr
/// with one `write` when it returns. The pass's writer thread logs a line per committed
/// change, and a system call per line cost more CPU than the rest of the logging; a
/// group's lines are written right after its commit, so nothing waits long in the buffer.
pub(crate) fn batched<T>(f: impl FnOnce() -> T) -> T {
    BATCH.with(|b| *b.borrow_mut() = Some(Vec::new()));
    let out = f();
    if let Some(buf) = BATCH.with(|b| b.borrow_mut().take())
        && !buf.is_empty()
    {
        let _ = std::io::stderr().write_all(&buf);
    }
    out
}

/// stderr, through this thread's batch when there is one. (tracing-subscriber formats
/// each event whole and hands it over in one `write_all`.)
struct Stderr;

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = StderrLine;
    fn make_writer(&'a self) -> StderrLine {
        StderrLine
    }
}

struct StderrLine;

impl Write for StderrLine {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let batched = BATCH.with(|b| match b.borrow_mut().as_mut() {
            Some(buf) => {
                buf.extend_from_slice(data);
                true
            }
            None => false,
        });
        if batched {
            Ok(data.len())
        } else {
            std::io::stderr().write(data)
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// True when stderr is connected to the journal: systemd sets `JOURNAL_STREAM` to the
/// device and inode of that stream, so compare them with stderr's own.
fn under_journald() -> bool {
    stream_matches(
        std::env::var("JOURNAL_STREAM").ok().as_deref(),
        std::path::Path::new("/proc/self/fd/2"),
    )
}

/// Whether `journal_stream` (`DEVICE:INODE`) names the file behind `fd_path`.
#[cfg(unix)]
fn stream_matches(journal_stream: Option<&str>, fd_path: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some((dev, ino)) = journal_stream.and_then(|v| v.split_once(':')) else {
        return false;
    };
    let Ok(meta) = std::fs::metadata(fd_path) else {
        return false;
    };
    dev.parse::<u64>().is_ok_and(|d| d == meta.dev())
        && ino.parse::<u64>().is_ok_and(|i| i == meta.ino())
}

#[cfg(not(unix))]
fn stream_matches(_: Option<&str>, _: &std::path::Path) -> bool {
    false
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::stream_matches;

    #[test]
    fn journal_stream_must_name_this_very_file() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let meta = file.as_file().metadata().unwrap();
        let exact = format!("{}:{}", meta.dev(), meta.ino());
        assert!(stream_matches(Some(&exact), file.path()));
        let other = format!("{}:{}", meta.dev(), meta.ino() + 1);
        assert!(!stream_matches(Some(&other), file.path()));
        assert!(!stream_matches(None, file.path()));
        assert!(!stream_matches(Some("garbage"), file.path()));
    }
}
