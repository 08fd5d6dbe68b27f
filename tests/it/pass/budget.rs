//! The budget and the cadence end to end: the schedule by age, the deadline check, the
//! stretch when the open charges need more than the budget share, and a shop whose own
//! requests share the simulator's bucket with a reconciler working through a backlog.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use konbini_reconciler::ledger::ts;
use univapay_sim::{Credentials, RateLimitConfig, SimCharge};

use crate::helpers::{RunRow, STORE, TestApp};
use crate::util::{Finished, RUN_LIMIT};

/// Registers a charge created `age` before the test clock, with an optional deadline, and
/// creates it `awaiting` at the simulator.
fn register_aged(app: &TestApp, id: &str, age: Duration, expires_at: Option<DateTime<Utc>>) {
    let now = app.reconciler.now();
    let created = now - chrono::Duration::from_std(age).unwrap();
    app.db()
        .execute(
            "INSERT INTO charges (charge_id, store_id, requested_amount, created_at, next_check_at,
                                  expires_at)
             VALUES (?1, ?2, 100, ?3, ?4, ?5)",
            rusqlite::params![id, STORE, ts(created), ts(now), expires_at.map(ts)],
        )
        .unwrap();
    app.sim
        .upsert(SimCharge::new(id, STORE, 100).awaiting("12345678901", None));
}

fn next_check(app: &TestApp, id: &str) -> DateTime<Utc> {
    let s = app.row(id).next_check_at.expect("still due later");
    DateTime::parse_from_rfc3339(&s)
        .unwrap()
        .with_timezone(&Utc)
}

fn minutes(n: i64) -> chrono::Duration {
    chrono::Duration::minutes(n)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_default_schedule_checks_young_charges_often_and_old_ones_rarely() {
    let app = TestApp::spawn().await;
    register_aged(&app, "young", Duration::from_secs(3600), None);
    register_aged(&app, "old", Duration::from_secs(3 * 86_400), None);
    let r = app.pass().await;
    assert_eq!(r.counts.checked, 2);
    let now = app.reconciler.now();
    // Every 10 minutes for two days, every 3 hours after; early by two minutes and up to
    // a fifth more, never late.
    let young = next_check(&app, "young") - now;
    assert!(young >= minutes(6) && young <= minutes(8), "{young}");
    let old = next_check(&app, "old") - now;
    assert!(old >= minutes(142) && old <= minutes(178), "{old}");
}

#[tokio::test(flavor = "multi_thread")]
async fn recheck_interval_alone_keeps_the_flat_schedule() {
    let app = TestApp::spawn_with(|c| {
        c.reconcile.recheck_interval = Some(Duration::from_secs(5 * 60));
    })
    .await;
    register_aged(&app, "old", Duration::from_secs(3 * 86_400), None);
    app.pass().await;
    assert_eq!(
        app.row("old").next_check_at,
        Some(ts(app.reconciler.now() + minutes(5))),
        "exactly the interval, whatever the age"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unpaid_charge_is_found_failed_just_after_its_deadline() {
    let app = TestApp::spawn_with(|c| {
        *c = std::mem::take(c).set("reconcile.deadline_watch", "0s");
    })
    .await;
    let expires = app.reconciler.now() + minutes(30);
    register_aged(&app, "late", Duration::from_secs(3 * 86_400), Some(expires));
    app.pass().await;
    // The schedule says two hours; the deadline check comes first.
    assert_eq!(
        app.row("late").next_check_at,
        Some(ts(expires + minutes(5)))
    );
    app.sim.update("late", SimCharge::expired);
    app.clock.advance(Duration::from_secs(34 * 60));
    assert_eq!(
        app.pass().await.counts.checked,
        0,
        "not before expiry_grace"
    );
    app.clock.advance(Duration::from_secs(60));
    let r = app.pass().await;
    assert_eq!(r.counts.transitions, 1);
    assert_eq!(app.row("late").state, "failed");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_last_day_before_a_deadline_is_checked_at_the_young_pace() {
    let app = TestApp::spawn().await;
    let expires = app.reconciler.now() + chrono::Duration::hours(20);
    register_aged(
        &app,
        "last-day",
        Duration::from_secs(6 * 86_400),
        Some(expires),
    );
    register_aged(&app, "far", Duration::from_secs(3 * 86_400), None);
    app.pass().await;
    let now = app.reconciler.now();
    assert!(next_check(&app, "last-day") - now <= minutes(8));
    assert!(next_check(&app, "far") - now >= minutes(142));
}

#[tokio::test(flavor = "multi_thread")]
async fn more_demand_than_budget_stretches_every_interval_and_is_recorded() {
    // 60 requests a minute at most: the 600 young charges below need about 67.
    let app = TestApp::spawn_with(|c| c.api.max_requests_per_minute = Some(60)).await;
    let now = app.reconciler.now();
    {
        let mut db = app.db();
        let tx = db.transaction().unwrap();
        for i in 0..600 {
            tx.execute(
                "INSERT INTO charges (charge_id, store_id, requested_amount, created_at, next_check_at)
                 VALUES (?1, ?2, 100, ?3, ?4)",
                rusqlite::params![
                    format!("waiting{i}"),
                    STORE,
                    ts(now - minutes(30)),
                    ts(now + minutes(60))
                ],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    register_aged(&app, "young", Duration::from_secs(3600), None);
    register_aged(&app, "old-1", Duration::from_secs(3 * 86_400), None);
    register_aged(&app, "old-2", Duration::from_secs(3 * 86_400), None);
    let r = app.pass().await;
    assert_eq!(
        r.counts.checked, 3,
        "the urgent one first, then the rest: all"
    );
    assert_eq!(r.outcome.as_str(), "ok");
    // 601 young charges at 10 minutes on the 5-minute cron (every second pass) need 60.1
    // checks a minute, the two old ones next to none; the target is 0.9 * 60 = 54. That
    // takes a mean of 11.13 minutes: 22.6 % of the young checks at the third tick. A
    // check stretched to I minutes is due 0.8 I - 2 to I - 2 minutes later, so
    // (I - 12) / 0.2 I = 0.226: I = 12.569, a stretch of 1.2569.
    let run = app.last_run();
    assert_eq!(run.id, r.run_id);
    assert_eq!(run.due, Some(3));
    let stretch = run.stretch.expect("the stretch is recorded");
    assert!((stretch - 1.2569).abs() < 0.001, "{stretch}");
    assert!((app.reconciler.stretch() - stretch).abs() < 1e-9);
    let young = next_check(&app, "young") - now;
    assert!(
        young >= chrono::Duration::seconds(483) && young <= chrono::Duration::seconds(635),
        "10 minutes stretched 1.2569 times, less the jitter and the lead: {young}"
    );
}

/// One `--once` pass of the binary with the test's config, awaited without blocking the
/// runtime that serves the simulator (and the shop).
async fn konbini_once(app: &TestApp) -> Finished {
    app.command().once().spawn().finish(RUN_LIMIT).await
}

/// `n` young open charges `c0`, `c1`, ..., of which only `c0` is due (the rest in an
/// hour): a pass checks one charge, and plans for all `n`.
fn open_with_one_due(app: &TestApp, n: usize) {
    for i in 0..n {
        app.create(&format!("c{i}"), 100);
    }
    app.db()
        .execute(
            "UPDATE charges SET next_check_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+1 hour')
             WHERE charge_id <> 'c0'",
            [],
        )
        .unwrap();
}

/// The only run in the ledger: one `--once` pass records exactly one.
fn only_run(app: &TestApp) -> RunRow {
    let runs = app.runs();
    assert_eq!(runs.len(), 1, "{runs:?}");
    runs.into_iter().next().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_stretch_is_a_warning_with_the_numbers() {
    let app = TestApp::spawn_with(|c| c.api.max_requests_per_minute = Some(6)).await;
    open_with_one_due(&app, 60);
    let out = konbini_once(&app).await;
    out.assert_code(0);
    let err = out.stderr();
    let line = err
        .lines()
        .find(|l| l.contains("recheck intervals stretched"))
        .unwrap_or_else(|| panic!("no warning: {err}"));
    // 60 young charges at 10 minutes (every second pass) need 6 checks a minute; 6 a
    // minute is the ceiling, 0.9 of it the target: 2/9 of the checks must move to the
    // third tick, which takes a stretch of 1.2558 (see `stretch_to_fit_cases`).
    for needle in ["WARN", "needed_per_minute", "budget_per_minute", "stretch"] {
        assert!(line.contains(needle), "{needle}: {line}");
    }
    let stretch = only_run(&app).stretch.expect("the stretch is recorded");
    assert!((stretch - 1.2558).abs() < 0.001, "{stretch}");
}

/// A flat 5 minutes on the default 5-minute cron is every second pass (each check falls
/// due just after a tick), so 30 open charges need 3 checks a minute, not 6: within a
/// ceiling of 6 a minute (a target of 5.4), nothing is stretched or warned about.
#[tokio::test(flavor = "multi_thread")]
async fn a_flat_schedule_is_planned_at_the_pace_the_cron_gives_it() {
    let app = TestApp::spawn_with(|c| {
        c.api.max_requests_per_minute = Some(6);
        c.reconcile.recheck_interval = Some(Duration::from_secs(300));
    })
    .await;
    open_with_one_due(&app, 30);
    let out = konbini_once(&app).await;
    out.assert_code(0);
    let err = out.stderr();
    assert!(!err.contains("recheck intervals stretched"), "{err}");
    assert_eq!(only_run(&app).stretch, Some(1.0));
}

/// The shop's own page: three GETs at once every 200 ms (15 a second) on the charge
/// route, until `stop`. Returns (sent, refused with 429).
fn shop(base: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(u64, u64)> {
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let creds = Credentials::default();
        let auth = format!("Bearer {}.{}", creds.secret, creds.app_token);
        let refused = AtomicU64::new(0);
        let mut sent = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        while !stop.load(Ordering::SeqCst) {
            tick.tick().await;
            let page = (0..3).map(|k| {
                let url = format!("{base}/stores/{STORE}/charges/shop-{}", (sent + k) % 50);
                let req = http.get(url).header("Authorization", &auth).send();
                let refused = &refused;
                async move {
                    let status = req.await.expect("the simulator answers").status();
                    if status.as_u16() == 429 {
                        refused.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
            futures::future::join_all(page).await;
            sent += 3;
        }
        (sent, refused.load(Ordering::SeqCst))
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shop_sees_no_429_while_a_backlog_is_worked_off() {
    // Burst 20, 40 a second on the route. The reconciler's half: 20 a second and 10 of
    // the burst; the shop's 15 a second fit in the other half.
    let app = TestApp::spawn_with(|c| c.api.concurrency = Some(8)).await;
    app.sim.configure(|c| {
        c.rate_limit = Some(RateLimitConfig {
            exact: univapay_sim::Limit::new(1000, 60_000),
            ..RateLimitConfig::new(20, 2400)
        })
    });
    for i in 0..50 {
        app.sim
            .upsert(SimCharge::new(format!("shop-{i}"), STORE, 500));
    }
    for i in 0..100 {
        app.create(&format!("c{i:03}"), 100);
    }
    app.db()
        .execute(
            "UPDATE charges SET next_check_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 second')",
            [],
        )
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let shop = shop(app.sim.base_url(), stop.clone());
    // The shop is busy before the backlog arrives, as a shop is.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let out = konbini_once(&app).await;
    stop.store(true, Ordering::SeqCst);
    let (sent, refused) = shop.await.unwrap();
    out.assert_code(0);
    let err = out.stderr();
    assert_eq!(only_run(&app).checked, 100, "{err}");
    assert!(sent >= 60, "the shop kept asking during the pass: {sent}");
    assert_eq!(
        refused, 0,
        "the shop's requests met a 429 ({refused} of {sent})"
    );
    assert_eq!(
        app.sim.counters().rate_limited,
        0,
        "nor did the reconciler's"
    );
}
