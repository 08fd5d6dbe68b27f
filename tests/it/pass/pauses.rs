//! A pause UnivaPay asked for (`runs.resume_at`) binds every job of every process before
//! its first request: the pass, the discovery sweep (its listings, charge and token GETs),
//! a webhook's unknown charge, in `--once` and in a daemon started into the pause.

use std::time::Duration;

use chrono::Utc;
use konbini_reconciler::discovery::{self, Unknown};
use konbini_reconciler::domain::{ChargeId, StoreId};
use univapay_sim::Population;

use crate::config::TestConfig;
use crate::helpers::{STORE, TestApp};

/// Discovery on for the test store, every other key at its default.
fn discovery_on(c: &mut TestConfig) {
    *c = c
        .clone()
        .set("discovery.enabled", true)
        .set("discovery.stores", vec![STORE.to_owned()]);
}

/// A population of konbini charges of which the ledger knows every other one, so that a
/// sweep would have work to do (and requests to send).
fn seed(app: &TestApp) {
    let pop = app.sim.seed(Population::new(40, 7));
    let db = app.db();
    for i in (0..pop.count).step_by(2) {
        let p = pop.plan(i);
        db.execute(
            "INSERT INTO charges (charge_id, store_id, requested_amount) VALUES (?1, ?2, ?3)",
            rusqlite::params![p.id, p.store_id, p.amount],
        )
        .unwrap();
    }
}

/// A finished run that recorded a pause until an hour from now (wall clock: the binary's).
fn record_pause_for_an_hour(app: &TestApp) {
    let now = Utc::now();
    let resume = konbini_reconciler::ledger::ts(now + chrono::Duration::hours(1));
    let at = konbini_reconciler::ledger::ts(now);
    app.db()
        .execute(
            "INSERT INTO runs (trigger, started_at, finished_at, outcome, detail, resume_at)
             VALUES ('schedule', ?1, ?1, 'rate_limited', 'UnivaPay asked for a pause', ?2)",
            rusqlite::params![at, resume],
        )
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn once_sends_nothing_to_univapay_during_a_recorded_pause() {
    let app = TestApp::spawn_with(discovery_on).await;
    seed(&app);
    record_pause_for_an_hour(&app);
    let before = app.sim.counters();
    let r = app.command().once().run();
    r.assert_code(4);
    assert!(
        r.stderr().contains("no request before then"),
        "{}",
        r.stderr()
    );
    let after = app.sim.counters();
    assert_eq!(
        after.api_requests - before.api_requests,
        0,
        "requests during the pause: {after:?}"
    );
    assert_eq!(
        (after.history_lists, after.charge_lists, after.token_gets),
        (0, 0, 0)
    );
    assert_eq!(app.count("SELECT count(*) FROM discovery_sweeps"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_started_into_a_recorded_pause_sends_nothing() {
    let app = TestApp::spawn_with(|c| {
        discovery_on(c);
        c.schedule.cron = Some("* * * * * *".into());
        c.schedule.run_on_start = Some(true);
    })
    .await;
    seed(&app);
    record_pause_for_an_hour(&app);
    let before = app.sim.counters();
    let mut daemon = app.command().spawn();
    // Real time, on purpose: the daemon runs on the wall clock; every second is a tick.
    crate::helpers::wait_until(
        Duration::from_secs(20),
        "three passes into the pause",
        || app.count("SELECT count(*) FROM runs WHERE outcome = 'rate_limited'") >= 4,
    )
    .await;
    daemon.signal(libc::SIGTERM);
    let done = daemon.finish(Duration::from_secs(20)).await;
    done.assert_code(0);
    let after = app.sim.counters();
    assert_eq!(
        after.api_requests - before.api_requests,
        0,
        "requests during the pause: {after:?}; log: {}",
        done.stderr()
    );
    assert_eq!(app.count("SELECT count(*) FROM discovery_sweeps"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_unknown_charge_waits_for_a_recorded_pause() {
    let app = TestApp::spawn_with(discovery_on).await;
    record_pause_for_an_hour(&app);
    let before = app.sim.counters();
    let got = discovery::register_unknown(
        &app.reconciler,
        &StoreId::parse(STORE).unwrap(),
        &ChargeId::parse("not-yet-known").unwrap(),
    )
    .await
    .unwrap();
    assert!(
        matches!(&got, Unknown::Failed(why) if why.contains("no request before then")),
        "{got:?}"
    );
    assert_eq!(app.sim.counters().api_requests, before.api_requests);
}
