//! The daemon driven through the library against the fake UnivaPay, on a per-second cron:
//! charges move, a slow API makes ticks skip instead of overlap, and shutdown mid-pass
//! drains within the deadline and leaves the ledger consistent. Shutdown is a cancelled
//! token here; the real signals are covered in `processes`.

use std::time::{Duration, Instant};

use konbini_reconciler::daemon::{self, Summary};
use konbini_reconciler::notify::Notifier;
use konbini_reconciler::reconcile::Reconciler;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use univapay_sim::{Reply, SimCharge};

use crate::helpers::{TestApp, assert_runs_never_overlapped, wait_until};

/// A tick every second.
const EVERY_SECOND: &str = "* * * * * *";

fn start(
    app: &TestApp,
) -> (
    CancellationToken,
    JoinHandle<Result<Summary, daemon::DaemonError>>,
) {
    let stop = CancellationToken::new();
    // The real clock: the daemon runs on wall-clock time, unlike the stepped test passes.
    let reconciler = Reconciler::new(app.settings.clone()).unwrap();
    let handle = tokio::spawn(daemon::run(reconciler, Notifier::disabled(), stop.clone()));
    (stop, handle)
}

async fn stop_within(
    limit: Duration,
    stop: CancellationToken,
    handle: JoinHandle<Result<Summary, daemon::DaemonError>>,
) -> (Summary, Duration) {
    let t = Instant::now();
    stop.cancel();
    let summary = tokio::time::timeout(limit, handle)
        .await
        .unwrap_or_else(|_| panic!("daemon still running {limit:?} after shutdown"))
        .unwrap()
        .expect("clean stop");
    (summary, t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charges_move_on_the_cron_schedule() {
    let app = TestApp::spawn_with(|c| {
        c.schedule.cron = Some(EVERY_SECOND.into());
        c.schedule.run_on_start = Some(false);
    })
    .await;
    app.create("paid", 1500);
    app.sim.update("paid", SimCharge::paid);
    app.create("waiting", 800);
    app.sim.update("waiting", |c| c.awaiting("7012-3456", None));

    let (stop, handle) = start(&app);
    wait_until(Duration::from_secs(4), "both charges moved", || {
        app.row("paid").state == "successful" && app.row("waiting").state == "awaiting"
    })
    .await;
    let (summary, _) = stop_within(Duration::from_secs(3), stop, handle).await;

    assert!(summary.passes >= 1, "{summary:?}");
    let runs = app.runs();
    assert_eq!(runs.len() as u64, summary.passes, "{runs:?}");
    assert!(
        runs.iter()
            .all(|r| r.trigger == "schedule" && r.outcome == "ok"),
        "{runs:?}"
    );
    assert_eq!(
        runs[0].checked, 2,
        "the first scheduled pass checked both: {runs:?}"
    );
    // Nothing was due again within the recheck interval, whatever the number of ticks.
    assert_eq!(app.sim.requests_for("paid"), 1);
    assert_eq!(app.sim.requests_for("waiting"), 1);
    assert_runs_never_overlapped(&runs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_api_makes_ticks_skip_instead_of_overlap() {
    let mut app = TestApp::spawn().await;
    // Slow answers are scripted below: the harness's 2 s timeout would race them.
    app.reconfigure(|c| {
        c.api.timeout = Some(Duration::from_secs(10));
        c.schedule.cron = Some(EVERY_SECOND.into());
        c.schedule.run_on_start = Some(true);
    });
    app.create("slow", 100);
    // The first pass is stuck on this answer across at least two ticks.
    app.sim
        .push_reply("slow", Reply::Delay(Duration::from_millis(2600)));

    let (stop, handle) = start(&app);
    wait_until(Duration::from_secs(6), "the slow check was written", || {
        app.row("slow").last_checked_at.is_some()
    })
    .await;
    // Let a tick after the slow pass start a pass of its own.
    wait_until(Duration::from_secs(4), "a second pass", || {
        app.runs().len() >= 2
    })
    .await;
    let (summary, _) = stop_within(Duration::from_secs(3), stop, handle).await;

    // An overlapping pass would have found "slow" still due and fetched it again.
    assert_eq!(app.sim.requests_for("slow"), 1, "{summary:?}");
    assert!(
        summary.skipped_running >= 1,
        "ticks during the 2.6 s pass were skipped: {summary:?}"
    );
    assert_eq!(
        summary.ticks,
        summary.passes + summary.skipped_running + summary.skipped_locked,
        "every tick either started a pass or was skipped: {summary:?}"
    );
    let runs = app.runs();
    assert_eq!(runs.len() as u64, summary.passes, "{runs:?}");
    assert_runs_never_overlapped(&runs);
    assert_eq!(runs[0].checked, 1, "{runs:?}");
    assert!(runs[1..].iter().all(|r| r.checked == 0), "{runs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_mid_pass_drains_within_the_deadline() {
    let mut app = TestApp::spawn().await;
    app.reconfigure(|c| {
        c.api.timeout = Some(Duration::from_secs(20));
        c.api.concurrency = Some(4);
        // Only the start-up pass: the next tick is at new year.
        c.schedule.cron = Some("0 0 0 1 1 *".into());
        c.schedule.run_on_start = Some(true);
        c.schedule.drain_timeout = Some(Duration::from_secs(1));
    });
    for id in ["q1", "q2", "q3"] {
        app.create(id, 500);
        app.sim.update(id, SimCharge::paid);
    }
    // Due last, so the quick ones are answered whatever the client's pacing lets through
    // while a request is outstanding.
    app.create("stuck", 100);
    app.sim
        .push_reply("stuck", Reply::Delay(Duration::from_secs(30)));
    let stuck_before = app.row("stuck");

    let (stop, handle) = start(&app);
    wait_until(Duration::from_secs(5), "the pass is mid-way", || {
        app.sim.requests_for("stuck") == 1 && app.row("q3").state == "successful"
    })
    .await;
    let (summary, took) = stop_within(Duration::from_secs(4), stop, handle).await;

    assert!(
        took < Duration::from_millis(2500),
        "drain_timeout is 1 s, took {took:?}"
    );
    assert_eq!(summary.passes, 1);
    let runs = app.runs();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].outcome, "interrupted", "{runs:?}");
    assert_eq!(
        runs[0].checked, 3,
        "the three quick checks were committed: {runs:?}"
    );
    assert!(
        runs[0].finished_at.is_some(),
        "the run was finished: {runs:?}"
    );
    // The abandoned check left its charge exactly as it was, and due.
    assert_eq!(app.row("stuck"), stuck_before);
    assert!(app.events("stuck").is_empty());
    for id in ["q1", "q2", "q3"] {
        assert_eq!(
            app.transitions(id),
            vec![("pending".to_owned(), "successful".to_owned())]
        );
    }
}
