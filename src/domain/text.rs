//! Text that came from outside (UnivaPay's answers, SQLite messages, clap) made fit to
//! store and log: one line, bounded, no control characters.

/// Collapses every run of whitespace (newlines included) into one space, so an error that
/// ends up in a log line or systemd's `STATUS=` stays on one line.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
