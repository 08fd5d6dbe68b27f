//! The second hardening round: each module is one class of fault that used to stall,
//! bloat, hide or lie, tested against the pass with the fake UnivaPay or against the real
//! binary (launched through [`crate::util::TestCommand`]).
//!
//! - `stall`: the pacer never waits on what cannot come; long pauses end the pass as
//!   `rate_limited` and the next pass respects them; the watchdog means progress.
//! - `text`: provider text is stored and logged bounded and clean; payment details are
//!   checked and their changes recorded; a payment without an amount is a mismatch.
//! - `wall`: a pass of nothing but 404s is an alarm and gives no charge up.
//! - `operators`: the pass lock keyed on the real file, database paths that are not
//!   files, bounded config and secret files, hand-written `next_check_at`.

mod operators;
mod stall;
mod text;
mod wall;

use std::path::Path;
use std::time::Duration;

use crate::helpers::TestApp;
use crate::util::{BIN_NAME, Finished, TestCommand};

/// Runs `cmd` to its end, failing the test if that takes longer than `limit`: the faults
/// tested here used to make the program wait forever, so the bound is part of what is
/// tested (tighter than [`crate::util::RUN_LIMIT`]).
pub async fn run_within(cmd: &mut TestCommand, limit: Duration) -> Finished {
    cmd.spawn().finish(limit).await
}

/// Exit 1 and exactly one line of the program's own on stderr (log lines aside), the
/// fatal one; returns it.
pub fn one_fatal_line(out: &Finished) -> String {
    let line = out.assert_fatal(&[]);
    let err = out.stderr();
    let own: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with(&format!("{BIN_NAME}: ")))
        .collect();
    assert_eq!(own, [line.as_str()], "one line expected: {err}");
    line
}

/// Rewrites the test's config file with the database at `db`, the rest as the test's
/// config has it (file only: the test's settings and reconciler stay on the old path).
pub fn write_config_with_database(app: &TestApp, db: &Path) {
    app.config
        .clone()
        .with(|c| c.database.path = Some(db.to_owned()))
        .write(&app.config_path);
}

/// `runs.resume_at` of the latest run (a column [`crate::helpers::RunRow`] lacks).
pub fn last_resume_at(app: &TestApp) -> Option<String> {
    app.db()
        .query_row(
            "SELECT resume_at FROM runs ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

/// Makes every open charge due now by the database's own (real) clock, for a run of the
/// binary after passes on the test's manual clock.
pub fn make_due(app: &TestApp) {
    app.db()
        .execute(
            "UPDATE charges SET next_check_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 second')
             WHERE next_check_at IS NOT NULL",
            [],
        )
        .unwrap();
}
