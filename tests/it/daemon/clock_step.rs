//! A step of the wall clock (only CLOCK_REALTIME, as an NTP step or a VM resume moves it)
//! does not stop the schedule: the real binary under libfaketime, its wall clock stepped
//! back ten minutes, then three days ahead and back again, keeps running passes, and no
//! charge is left scheduled days ahead. Skipped, with a message, where libfaketime is not
//! installed (`apt-get install faketime`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;

use crate::helpers::{TestApp, wait_until};

fn libfaketime() -> Option<PathBuf> {
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
        "/usr/local/lib/faketime/libfaketime.so.1",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

fn set_offset(file: &Path, offset: &str) {
    std::fs::write(file, format!("{offset}\n")).unwrap();
}

fn passes(app: &TestApp) -> i64 {
    app.count("SELECT count(*) FROM runs WHERE trigger = 'schedule'")
}

/// Waits for `n` more scheduled passes than now, within `limit`.
async fn more_passes(app: &TestApp, n: i64, limit: Duration, what: &str) {
    let from = passes(app);
    wait_until(limit, what, || passes(app) >= from + n).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_schedule_keeps_firing_across_wall_clock_steps_both_ways() {
    let Some(lib) = libfaketime() else {
        println!("libfaketime not installed (apt-get install faketime); clock step test skipped");
        return;
    };
    let app = TestApp::spawn_with(|c| {
        c.schedule.cron = Some("* * * * * *".into());
        c.schedule.run_on_start = Some(false);
        c.reconcile.recheck_interval = Some(Duration::from_secs(1));
    })
    .await;
    app.create("open", 900);
    app.sim.update("open", |c| c.awaiting("7012-3456", None));
    let offset = app.dir.path().join("faketime");
    set_offset(&offset, "+0");
    let mut daemon = app
        .command()
        .env("LD_PRELOAD", &lib)
        .env("FAKETIME_TIMESTAMP_FILE", &offset)
        .env("FAKETIME_NO_CACHE", "1")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .spawn();
    more_passes(&app, 2, Duration::from_secs(20), "passes before any step").await;

    set_offset(&offset, "-10m");
    more_passes(
        &app,
        3,
        Duration::from_secs(20),
        "passes after a step back of 10 min",
    )
    .await;

    set_offset(&offset, "+3d");
    more_passes(
        &app,
        3,
        Duration::from_secs(20),
        "passes after a step ahead of 3 days",
    )
    .await;
    set_offset(&offset, "+0");
    more_passes(
        &app,
        3,
        Duration::from_secs(20),
        "passes after stepping back from 3 days ahead",
    )
    .await;

    daemon.signal(libc::SIGTERM);
    let done = daemon.finish(Duration::from_secs(20)).await;
    done.assert_code(0);
    assert!(
        done.stderr().contains("the wall clock stepped"),
        "{}",
        done.stderr()
    );
    let next: String = app
        .db()
        .query_row(
            "SELECT next_check_at FROM charges WHERE charge_id = 'open'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let latest = konbini_reconciler::ledger::ts(Utc::now() + chrono::Duration::hours(1));
    assert!(next < latest, "left scheduled days ahead: {next}");
}
