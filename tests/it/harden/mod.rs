//! The second hardening round: each module is one class of fault that used to stall,
//! bloat, hide or lie, tested against the pass with the fake UnivaPay or against the real
//! binary.
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

use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::process::Command;

use crate::helpers::TestApp;

/// The binary in the test's directory with a clean environment and no config argument.
pub fn bare(app: &TestApp) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_konbini-reconciler"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(app.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// `--once` with the test's config.
pub fn once(app: &TestApp) -> Command {
    let mut cmd = bare(app);
    cmd.arg("--config").arg(&app.config_path).arg("--once");
    cmd
}

/// Runs `cmd` to its end, failing the test if that takes longer than `limit` (the
/// faults tested here used to make the program wait forever).
pub async fn run(cmd: &mut Command, limit: Duration) -> Output {
    let child = cmd.spawn().expect("start konbini-reconciler");
    tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("still running after {limit:?}"))
        .unwrap()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Exactly one fatal line on stderr (log lines aside); returns it.
pub fn one_fatal_line(out: &Output) -> String {
    let err = stderr(out);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("konbini-reconciler: "))
        .collect();
    assert_eq!(lines.len(), 1, "one line expected: {err}");
    assert!(lines[0].starts_with("konbini-reconciler: error: "), "{err}");
    lines[0].to_owned()
}

/// Rewrites the test's config file with `extra` (as [`crate::helpers::config_text`]
/// takes it) and the database at `db`, keeping it private (it holds the test secret).
pub fn write_config(app: &TestApp, db: &std::path::Path, extra: &str) {
    let text = crate::helpers::config_text(&app.sim.base_url(), db, extra);
    write_private(&app.config_path, &text);
}

fn write_private(path: &std::path::Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

/// Rewrites the test's config (file and settings) with `extra`, the given per-request
/// timeout instead of the harness's 2 s, and `database` lines added to `[database]`.
pub fn configure(app: &mut TestApp, api_timeout: &str, database: &str, extra: &str) {
    let text = crate::helpers::config_text(&app.sim.base_url(), &app.db_path, extra);
    assert!(text.contains("timeout = \"2s\""), "harness config changed");
    let text = text
        .replacen(
            "timeout = \"2s\"",
            &format!("timeout = \"{api_timeout}\""),
            1,
        )
        .replacen("[database]\n", &format!("[database]\n{database}"), 1);
    write_private(&app.config_path, &text);
    app.settings = std::sync::Arc::new(
        konbini_reconciler::Settings::from_toml(&text, &app.config_path, &[("UNUSED", "")])
            .expect("test config"),
    );
}

/// Polls `cond` every 20 ms until it holds, failing the test after `limit`.
pub async fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out after {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The latest `runs` row: (outcome, checked, detail, resume_at).
pub fn last_run(app: &TestApp) -> (String, i64, Option<String>, Option<String>) {
    app.db()
        .query_row(
            "SELECT outcome, checked, detail, resume_at FROM runs ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap()
}

/// (kind, detail) of every event of a charge, in order.
pub fn events(app: &TestApp, charge_id: &str) -> Vec<(String, Option<String>)> {
    let db = app.db();
    let mut stmt = db
        .prepare("SELECT kind, detail FROM charge_events WHERE charge_id = ?1 ORDER BY id")
        .unwrap();
    stmt.query_map([charge_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
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
