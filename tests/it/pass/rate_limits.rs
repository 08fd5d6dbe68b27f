//! Nothing may stall: whatever rate-limit headers arrive, a pass makes progress or ends
//! within a bounded time; a pause longer than a pass waits ends it as `rate_limited` with
//! `runs.resume_at`, which the next pass (in any process) respects; and the daemon's
//! watchdog keep-alives stop when a pass stops making progress.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use konbini_reconciler::ledger::{Outcome, Trigger};
use konbini_reconciler::notify::Notifier;
use konbini_reconciler::reconcile::{Clock, PassReport, Reconciler};
use tokio_util::sync::CancellationToken;
use univapay_sim::Reply;

use crate::helpers::{TestApp, hold_lock, last_resume_at, run_within, wait_until};

/// `n` pending charges `c0`, `c1`, ... at the fake and in the ledger.
fn charges(app: &TestApp, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let id = format!("c{i}");
            app.create(&id, 100);
            id
        })
        .collect()
}

/// A pass that must end within `limit`: the faults here used to make it wait forever.
async fn pass_within(app: &TestApp, limit: Duration) -> PassReport {
    tokio::time::timeout(limit, app.pass())
        .await
        .unwrap_or_else(|_| panic!("the pass did not end within {limit:?}: the pacer stalled"))
}

/// A scripted answer: the charge as the fake has it, with these headers only.
fn with_headers(app: &TestApp, id: &str, status: u16, headers: &[(&str, &str)]) -> Reply {
    let body = if status == 200 {
        app.sim.charge(id).unwrap().to_json().to_string()
    } else {
        String::new()
    };
    Reply::WithHeaders {
        status,
        body,
        headers: headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

/// A WAF or CDN in front of the API answers the very first request 429 with no headers
/// at all. This used to stop every request for good.
#[tokio::test(flavor = "multi_thread")]
async fn a_429_without_headers_before_any_answer_had_them_does_not_stall() {
    let app = TestApp::spawn().await;
    app.sim.configure(|c| c.rate_limit = None);
    let ids = charges(&app, 5);
    app.sim
        .push_reply(&ids[0], with_headers(&app, &ids[0], 429, &[]));
    let r = pass_within(&app, Duration::from_secs(20)).await;
    assert_eq!(r.outcome, Outcome::Ok, "{:?}", r.detail);
    assert_eq!(r.counts.checked, 5);
    assert_eq!(r.counts.errors, 1, "only the charge that met the 429");
    assert!(app.row("c0").last_error.unwrap().contains("429"));
}

/// Header combinations a proxy may send: what remains without a refill rate, a refill
/// rate of 0, absurd and contradictory values. Each used to stall the pacer or must not.
#[tokio::test(flavor = "multi_thread")]
async fn odd_rate_limit_headers_never_stall_a_pass() {
    let cases: [&[(&str, &str)]; 5] = [
        &[("X-Remaining-Requests-Route", "0")],
        &[
            ("X-Remaining-Requests-Route", "1"),
            ("X-Requests-Per-Minute-Route", "0"),
        ],
        &[
            ("X-Remaining-Requests-Route", "18446744073709551615"),
            ("X-Requests-Per-Minute-Route", "18446744073709551615"),
        ],
        &[
            ("X-Remaining-Requests-Route", "-5"),
            ("X-Requests-Per-Minute-Route", "lots"),
        ],
        &[
            ("X-Remaining-Requests-Exact", "0"),
            ("X-Requests-Per-Minute-Exact", "0"),
        ],
    ];
    for headers in cases {
        let app = TestApp::spawn().await;
        app.sim.configure(|c| c.rate_limit = None);
        let ids = charges(&app, 3);
        for id in &ids {
            app.sim.push_reply(id, with_headers(&app, id, 200, headers));
        }
        let r = pass_within(&app, Duration::from_secs(20)).await;
        assert_eq!(r.outcome, Outcome::Ok, "{headers:?}: {:?}", r.detail);
        assert_eq!(r.counts.checked, 3, "{headers:?}");
        assert_eq!(r.counts.errors, 0, "{headers:?}");
    }
}

/// Charges never touched by a pass: no check, no event.
fn assert_untouched(app: &TestApp, id: &str) {
    let row = app.row(id);
    assert_eq!(row.last_checked_at, None, "{id}");
    assert!(app.events(id).is_empty(), "{id}");
    assert!(row.next_check_at.is_some(), "{id} stays due");
}

fn resume_at(app: &TestApp) -> DateTime<Utc> {
    let at = last_resume_at(app).expect("runs.resume_at");
    DateTime::parse_from_rfc3339(&at).unwrap().to_utc()
}

/// A reconciler on the test's database and clock with its own client, as another
/// process would have.
fn another_process(app: &TestApp) -> Reconciler {
    Reconciler::with_clock(app.settings.clone(), app.clock.clone()).unwrap()
}

async fn pass_of(rec: &Reconciler) -> PassReport {
    rec.run_pass(&hold_lock(rec), Trigger::Once, CancellationToken::new())
        .await
        .unwrap()
}

/// A `Retry-After` of an hour (or an HTTP date hours away) is not slept through while
/// holding the pass lock: the pass ends early, leaves the rest due, and records until
/// when nothing may be sent; the next pass, of this process or another, sends nothing
/// before then.
#[tokio::test(flavor = "multi_thread")]
async fn a_long_retry_after_ends_the_pass_and_the_next_respects_it() {
    let far = (Utc::now() + chrono::Duration::hours(5)).to_rfc2822();
    for retry_after in ["3600", far.as_str()] {
        let app = TestApp::spawn_with(|c| c.api.concurrency = Some(1)).await;
        let ids = charges(&app, 5);
        app.sim.push_reply(
            &ids[0],
            with_headers(&app, &ids[0], 429, &[("Retry-After", retry_after)]),
        );
        let started = Instant::now();
        let r = pass_within(&app, Duration::from_secs(10)).await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "not slept through"
        );
        assert_eq!(r.outcome, Outcome::RateLimited, "{retry_after}");
        assert!(!r.outcome.is_failure());
        let detail = r.detail.unwrap();
        assert!(
            detail.contains("pause of") && detail.contains("resume_at"),
            "{detail}"
        );
        assert_eq!(r.counts.checked, 1, "only the charge that met the 429");
        for id in &ids[1..] {
            assert_untouched(&app, id);
        }
        // Capped at an hour, counted from the pass's clock.
        let resume = resume_at(&app);
        let ahead = resume - app.clock.now();
        assert!(
            ahead > chrono::Duration::minutes(59) && ahead <= chrono::Duration::hours(1),
            "{ahead}"
        );
        assert_eq!(
            r.resume_at.map(konbini_reconciler::ledger::ts),
            Some(konbini_reconciler::ledger::ts(resume))
        );
        assert_eq!(app.last_run().outcome, "rate_limited");

        // This process again, and another one: nothing is sent.
        let asked = app.sim.counters().requests;
        for rec in [&app.reconciler, &another_process(&app)] {
            let r = pass_of(rec).await;
            assert_eq!(r.outcome, Outcome::RateLimited);
            assert_eq!(r.counts.checked, 0);
            assert!(r.detail.unwrap().contains("until"));
            assert_eq!(
                app.sim.counters().requests,
                asked,
                "no request before resume_at"
            );
            assert_eq!(resume_at(&app), resume, "the pause is carried forward");
        }
        // Once the pause is over, a new process checks everything.
        app.clock.advance(Duration::from_secs(3601));
        let r = pass_of(&another_process(&app)).await;
        assert_eq!(r.outcome, Outcome::Ok, "{:?}", r.detail);
        assert_eq!(r.counts.checked, 5);
    }
}

/// Backoff after 429s in a row (no `Retry-After`, no headers) grows past what a pass
/// waits: the pass ends instead of creeping on at one request a minute.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_of_429s_ends_the_pass_within_a_bound() {
    let app = TestApp::spawn_with(|c| {
        c.api.concurrency = Some(1);
        c.schedule.drain_timeout = Some(Duration::from_secs(2));
    })
    .await;
    app.sim.configure(|c| c.rate_limit = None);
    let ids = charges(&app, 20);
    for id in &ids {
        app.sim.push_reply(id, with_headers(&app, id, 429, &[]));
    }
    let started = Instant::now();
    let r = pass_within(&app, Duration::from_secs(30)).await;
    assert_eq!(r.outcome, Outcome::RateLimited, "{:?}", r.detail);
    // Backoffs of at most 1 + 2 s are waited; the next (2-4 s, or 4-8 s) is not.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(
        r.counts.checked >= 2 && r.counts.checked < 20,
        "{:?}",
        r.counts
    );
    assert!(last_resume_at(&app).is_some(), "resume_at recorded");
}

/// A pause that is nearly over when the next pass starts is waited out, not skipped.
#[tokio::test(flavor = "multi_thread")]
async fn a_short_rest_of_a_recorded_pause_is_waited_out() {
    let app = TestApp::spawn().await;
    charges(&app, 2);
    let r = app.pass().await;
    assert_eq!(r.outcome, Outcome::Ok);
    app.after_recheck();
    let resume = app.clock.now() + chrono::Duration::seconds(2);
    app.db()
        .execute(
            "UPDATE runs SET resume_at = ?1",
            [resume.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)],
        )
        .unwrap();
    let started = Instant::now();
    let r = pass_of(&another_process(&app)).await;
    assert_eq!(r.outcome, Outcome::Ok);
    assert_eq!(r.counts.checked, 2);
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );
}

/// The binary: exit status 4 for a pass ended by a long pause, one line on stderr, and a
/// second `--once` sends nothing and ends at once with 4 again. An operator who knows
/// better clears the pause with one UPDATE.
#[tokio::test(flavor = "multi_thread")]
async fn once_exits_4_when_rate_limited_and_the_next_once_waits_for_resume_at() {
    let app = TestApp::spawn_with(|c| c.api.concurrency = Some(1)).await;
    let ids = charges(&app, 3);
    app.sim.push_reply(
        &ids[0],
        with_headers(&app, &ids[0], 429, &[("Retry-After", "3600")]),
    );
    let out = run_within(app.command().once(), Duration::from_secs(20)).await;
    out.assert_code(4);
    assert!(out.stdout().contains("rate_limited"), "{}", out.stdout());
    assert!(
        out.stderr().contains("pause of 1h") && out.stderr().contains("drain_timeout"),
        "{}",
        out.stderr()
    );
    let asked = app.sim.counters().requests;
    let started = Instant::now();
    let out = run_within(app.command().once(), Duration::from_secs(20)).await;
    out.assert_code(4);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        app.sim.counters().requests,
        asked,
        "nothing sent before resume_at"
    );
    assert_untouched(&app, &ids[1]);

    app.db()
        .execute("UPDATE runs SET resume_at = NULL", [])
        .unwrap();
    let out = run_within(app.command().once(), Duration::from_secs(20)).await;
    out.assert_code(0);
    assert_eq!(app.row(&ids[1]).state, "pending");
    assert!(app.row(&ids[1]).last_checked_at.is_some());
}

/// A new amount mismatch outranks the rate limit in the exit status: it is news.
#[tokio::test(flavor = "multi_thread")]
async fn a_mismatch_in_a_rate_limited_pass_still_exits_2() {
    let app = TestApp::spawn_with(|c| c.api.concurrency = Some(1)).await;
    app.create("a-mismatch", 100);
    app.sim.update("a-mismatch", |c| c.paid_with(90, "JPY"));
    app.create("b-limited", 100);
    app.create("c-later", 100);
    app.sim.push_reply(
        "b-limited",
        with_headers(&app, "b-limited", 429, &[("Retry-After", "3600")]),
    );
    let out = run_within(app.command().once(), Duration::from_secs(20)).await;
    out.assert_code(2);
    assert_eq!(app.last_run().outcome, "rate_limited");
}

/// A clock that blocks its caller while `wedged` is set: a pass stuck on something that
/// never comes, while the rest of the runtime runs on.
struct WedgeClock {
    wedged: Arc<AtomicBool>,
}

/// Lets a wedged pass go when dropped, so that a failing test ends instead of hanging in
/// the runtime's shutdown.
struct Unwedge(Arc<AtomicBool>);

impl Drop for Unwedge {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

impl Clock for WedgeClock {
    fn now(&self) -> DateTime<Utc> {
        if self.wedged.load(Ordering::Relaxed) {
            tokio::task::block_in_place(|| {
                while self.wedged.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(10));
                }
            });
        }
        Utc::now()
    }
}

/// Collects keep-alives for `d`, as they come: when each arrived (since `started`) is what
/// the test is about.
async fn gather_pings(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    pings: &mut Vec<Duration>,
    started: Instant,
    d: Duration,
) {
    let until = Instant::now() + d;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
        while let Ok(m) = rx.try_recv() {
            if m == "WATCHDOG=1" {
                pings.push(started.elapsed());
            }
        }
    }
}

/// Watchdog keep-alives mean "passes are making progress": a pass that finishes no
/// check for the stall limit stops them (so systemd's WatchdogSec= restarts the
/// process), and they resume when it moves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stuck_pass_stops_the_watchdog_keep_alives() {
    let mut app = TestApp::spawn().await;
    app.reconfigure(|c| {
        c.api.timeout = Some(Duration::from_millis(500));
        c.database.busy_timeout = Some(Duration::from_millis(100));
        c.schedule.cron = Some("0 0 0 1 1 *".to_owned());
        c.schedule.run_on_start = Some(true);
        c.schedule.drain_timeout = Some(Duration::from_millis(500));
    });
    let limit = konbini_reconciler::daemon::stall_limit(&app.settings);
    assert_eq!(limit, Duration::from_millis(2400));
    app.create("a", 100);
    let wedged = Arc::new(AtomicBool::new(true));
    let _unwedge = Unwedge(wedged.clone());
    let clock = Arc::new(WedgeClock {
        wedged: wedged.clone(),
    });
    let reconciler = Reconciler::with_clock(app.settings.clone(), clock).unwrap();
    let (notifier, mut rx) = Notifier::channel(Some(Duration::from_millis(100)));
    let stop = CancellationToken::new();
    let daemon = tokio::spawn(konbini_reconciler::daemon::run(
        reconciler,
        notifier,
        stop.clone(),
    ));
    let started = Instant::now();
    let mut pings: Vec<Duration> = Vec::new();
    // The first keep-alive goes when the watchdog starts, just before the pass; times are
    // measured from it, so a slow start-up does not count against the limit.
    while pings.is_empty() {
        gather_pings(&mut rx, &mut pings, started, Duration::from_millis(20)).await;
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no keep-alive at all"
        );
    }
    let wait = limit + Duration::from_millis(1500);
    gather_pings(&mut rx, &mut pings, started, wait).await;
    let (first, last) = (pings[0], *pings.last().unwrap());
    assert!(
        last - first < limit + Duration::from_millis(700),
        "keep-alives went on while the pass was stuck: {:?} after the first, limit {limit:?}",
        last - first
    );
    assert!(
        started.elapsed() - last > Duration::from_millis(500),
        "keep-alives still coming: {pings:?}"
    );
    assert!(app.row("a").last_checked_at.is_none(), "the pass is stuck");

    wedged.store(false, Ordering::Relaxed);
    wait_until(Duration::from_secs(10), "the pass moves on", || {
        app.row("a").last_checked_at.is_some()
    })
    .await;
    let before = pings.len();
    gather_pings(&mut rx, &mut pings, started, Duration::from_millis(500)).await;
    assert!(pings.len() > before, "keep-alives resumed");
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), daemon)
        .await
        .expect("daemon stops")
        .unwrap()
        .expect("clean stop");
}
