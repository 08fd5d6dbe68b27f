//! Logging setup: tracing to stderr, filtered by `RUST_LOG`, as text (no colours unless
//! stderr is a terminal, so journald gets clean lines) or as JSON for log shippers.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Quiet by default: our own info lines (transitions, pass summaries), others' warnings.
pub const DEFAULT_FILTER: &str = "warn,konbini_reconciler=info";

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
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
