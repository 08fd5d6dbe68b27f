//! A wall of 404s (a wrong `base_url` path prefix, a maintenance page, the wrong account)
//! is an alarm, not a quiet give-up: its own outcome, exit 1 for `--once`, an error in
//! the daemon's log, and no charge's `not_found_limit` moves.

use std::time::Duration;

use konbini_reconciler::ledger::Outcome;

use crate::helpers::{TestApp, one_fatal_line, run_within, wait_until};

/// Registered here (in one transaction), unknown at the fake: every GET answers 404.
fn unknown(app: &TestApp, n: usize) -> Vec<String> {
    let mut db = app.db();
    let tx = db.transaction().unwrap();
    let ids: Vec<String> = (0..n).map(|i| format!("gone{i:03}")).collect();
    for id in &ids {
        tx.execute(
            "INSERT INTO charges (charge_id, store_id, requested_amount) VALUES (?1, ?2, 100)",
            [id.as_str(), crate::helpers::STORE],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    ids
}

fn assert_not_counted(app: &TestApp, ids: &[String]) {
    for id in ids {
        let row = app.row(id);
        assert_eq!(row.not_found_count, 0, "{id}");
        assert!(row.next_check_at.is_some(), "{id} still checked");
        assert!(
            row.last_error
                .as_deref()
                .unwrap_or("")
                .contains("not counted"),
            "{id}: {:?}",
            row.last_error
        );
        assert!(
            !app.events(id).iter().any(|e| e.kind == "gave_up"),
            "{id} given up"
        );
    }
    assert_eq!(app.count("SELECT count(*) FROM unchecked_charges"), 0);
}

/// Pass after pass of nothing but 404s: each is `not_found_wall`, and no charge is given
/// up, however many passes go by (the limit here is 2).
#[tokio::test(flavor = "multi_thread")]
async fn a_wall_of_404s_is_a_fault_that_gives_no_charge_up() {
    let app = TestApp::spawn_with(|c| c.reconcile.not_found_limit = Some(2)).await;
    let ids = unknown(&app, 5);
    for _ in 0..4 {
        let r = app.pass().await;
        assert_eq!(r.outcome, Outcome::NotFoundWall, "{:?}", r.detail);
        assert!(r.outcome.is_failure());
        assert_eq!(r.counts.checked, 5);
        let detail = r.detail.unwrap();
        assert!(
            detail.contains("every one of the 5") && detail.contains("api.base_url"),
            "{detail}"
        );
        assert_not_counted(&app, &ids);
        app.after_backoff();
    }
    assert_eq!(app.last_run().outcome, "not_found_wall");
}

/// More 404s than the writer holds back (so some are written before the pass knows):
/// none counts all the same.
#[tokio::test(flavor = "multi_thread")]
async fn a_wall_larger_than_what_is_held_back_counts_nothing_either() {
    let app = TestApp::spawn_with(|c| {
        c.api.concurrency = Some(16);
        c.reconcile.not_found_limit = Some(1);
    })
    .await;
    let ids = unknown(&app, 300);
    let r = app.pass().await;
    assert_eq!(r.outcome, Outcome::NotFoundWall);
    assert_eq!(r.counts.checked, 300);
    assert_not_counted(&app, &ids);
}

/// One charge UnivaPay does know, or fewer than three checks: not a wall, and the 404s
/// count as before (a charge really gone is still given up in the end).
#[tokio::test(flavor = "multi_thread")]
async fn not_found_beside_a_found_charge_or_too_few_still_counts() {
    let app = TestApp::spawn_with(|c| c.reconcile.not_found_limit = Some(2)).await;
    let ids = unknown(&app, 4);
    app.create("zz-known", 100);
    app.sim.update("zz-known", |c| c.awaiting("1234", None));
    let r = app.pass().await;
    assert_eq!(r.outcome, Outcome::Ok, "{:?}", r.detail);
    for id in &ids {
        assert_eq!(app.row(id).not_found_count, 1, "{id}");
    }
    app.after_backoff();
    app.pass().await;
    for id in &ids {
        assert!(app.row(id).next_check_at.is_none(), "{id} given up");
    }
    assert_eq!(app.count("SELECT count(*) FROM unchecked_charges"), 4);

    let app = TestApp::spawn().await;
    let ids = unknown(&app, 2);
    let r = app.pass().await;
    assert_eq!(
        r.outcome,
        Outcome::Ok,
        "two 404s are two charges, not a wall"
    );
    for id in &ids {
        assert_eq!(app.row(id).not_found_count, 1, "{id}");
    }
}

/// The binary: `--once` exits 1 with one line naming the fault.
#[tokio::test(flavor = "multi_thread")]
async fn once_exits_1_on_a_wall_of_404s() {
    let app = TestApp::spawn().await;
    let ids = unknown(&app, 3);
    let out = run_within(app.command().once(), Duration::from_secs(20)).await;
    let line = one_fatal_line(&out);
    assert!(
        line.contains("answered 404") && line.contains("api.base_url"),
        "{line}"
    );
    assert!(out.stdout().contains("not_found_wall"), "{}", out.stdout());
    assert_not_counted(&app, &ids);
}

/// The daemon logs the wall as an error and goes on.
#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_logs_a_wall_of_404s_as_an_error() {
    let mut app = TestApp::spawn().await;
    app.reconfigure(|c| {
        c.schedule.cron = Some("0 0 0 1 1 *".to_owned());
        c.schedule.run_on_start = Some(true);
    });
    unknown(&app, 3);
    let mut daemon = app.command().spawn();
    // Generous: the daemon's first pass on a loaded machine; the test is about its log.
    wait_until(Duration::from_secs(60), "a finished run", || {
        app.count("SELECT count(*) FROM runs WHERE outcome = 'not_found_wall'") == 1
    })
    .await;
    daemon.signal(libc::SIGTERM);
    let out = daemon.finish(Duration::from_secs(10)).await;
    out.assert_code(0);
    let log = out.stderr();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("not_found_wall") && l.contains("404")),
        "{log}"
    );
}
