//! `events [--after ID] [--follow] [--type T]...`: the change feed, NDJSON on stdout, one
//! payload per line (the same JSON as delivery), ascending `event_id`. A consumer resumes
//! with `--after` the last id it processed; ids are never reused.
//!
//! `--follow` then waits for new events. Between reads it asks SQLite's
//! `PRAGMA data_version`, which changes only when another connection commits: a check
//! that costs no table read, so waiting is cheap without being a busy poll. The interval
//! starts at 50 ms after news and backs off to 1 s while nothing happens, so a new event
//! shows up within about a second even on an idle ledger. SIGTERM/SIGINT or a closed
//! stdout end it with status 0.

use std::io::Write;
use std::time::Duration;

use super::{CommandError, output_error};
use crate::config::Settings;
use crate::ledger::{EVENT_TYPES, Ledger};

/// Events read per query.
const PAGE: u32 = 500;
const FIRST_WAIT: Duration = Duration::from_millis(50);
const MAX_WAIT: Duration = Duration::from_secs(1);

/// What `events` was asked for.
#[derive(Debug, Clone, Default)]
pub(crate) struct FeedArgs {
    pub(crate) after: i64,
    pub(crate) follow: bool,
    pub(crate) types: Vec<String>,
}

/// An event type as the feed names it.
pub(crate) fn parse_type(s: &str) -> Result<String, String> {
    if EVENT_TYPES.contains(&s) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "unknown event type; known: {}",
            EVENT_TYPES.join(", ")
        ))
    }
}

/// Writes the events after `args.after`; with `follow`, keeps going until a signal or a
/// closed stdout.
pub(crate) fn run(
    settings: &Settings,
    args: &FeedArgs,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let db = &settings.database;
    let ledger = Ledger::open_if_exists(&db.path, db.busy_timeout)?;
    let mut after = args.after;
    if !write_page_all(&ledger, args, &mut after, out)? || !args.follow {
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CommandError::Fatal(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async {
        let stop = crate::shutdown::on_signal();
        let mut wait = FIRST_WAIT;
        let mut seen = data_version(&ledger)?;
        loop {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stop.cancelled() => return Ok(()),
            }
            let now = data_version(&ledger)?;
            if now == seen {
                wait = (wait * 2).min(MAX_WAIT);
                continue;
            }
            seen = now;
            wait = FIRST_WAIT;
            if !write_page_all(&ledger, args, &mut after, out)? {
                return Ok(());
            }
        }
    })
}

fn data_version(ledger: &Ledger) -> Result<i64, CommandError> {
    Ok(ledger.data_version()?)
}

/// Writes every event after `*after`, page by page, advancing it. `false` when stdout
/// was closed (the reader is gone: stop quietly).
fn write_page_all(
    ledger: &Ledger,
    args: &FeedArgs,
    after: &mut i64,
    out: &mut dyn Write,
) -> Result<bool, CommandError> {
    loop {
        let page = ledger.feed(*after, &args.types, PAGE)?;
        let Some(last) = page.last() else {
            return Ok(true);
        };
        *after = last.event_id;
        let written = (|| {
            for e in &page {
                out.write_all(e.payload.as_bytes())?;
                out.write_all(b"\n")?;
            }
            out.flush()
        })();
        if let Err(e) = written {
            return match output_error(e) {
                Some(err) => Err(err),
                None => Ok(false),
            };
        }
        if page.len() < PAGE as usize {
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that went away.
    struct Closed;

    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_stdout_ends_the_feed_quietly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        let ledger = Ledger::open(&path, Duration::from_secs(1)).unwrap();
        // The operator's window: a connection of its own on the file.
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch(
                "INSERT INTO charges (charge_id, store_id, requested_amount) VALUES ('c', 's', 1);
                 INSERT INTO charge_events (charge_id, at, kind, to_state) VALUES ('c', 't', 'transition', 'awaiting');",
            )
            .unwrap();
        let mut after = 0;
        let r = write_page_all(&ledger, &FeedArgs::default(), &mut after, &mut Closed);
        assert!(matches!(r, Ok(false)), "{r:?}");
        let mut out = Vec::new();
        let mut after = 0;
        assert!(write_page_all(&ledger, &FeedArgs::default(), &mut after, &mut out).unwrap());
        assert_eq!(after, 1);
        assert!(
            String::from_utf8(out)
                .unwrap()
                .starts_with(r#"{"type":"charge.awaiting""#)
        );
    }
}
