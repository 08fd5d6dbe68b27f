//! Discovery against listings that do not come oldest first, and rows that become
//! visible late: a server that ignores `cursor_direction=asc` (history or charge list)
//! loses no charge across a failed page or the per-sweep verification limit, and a row
//! listed well after its `created_on` is still found (the overlap window). Also the age a
//! discovered charge is checked at.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use konbini_reconciler::discovery::MAX_VERIFIED_PER_SWEEP;
use konbini_reconciler::ledger::SweepOutcome;
use univapay_sim::Population;

use crate::discovery::sweep::{
    app_with_discovery, discovered, konbini_created_ago, next_interval, settle, sweep,
};
use crate::helpers::{STORE, TestApp};
use crate::proxy::{self, Rule, Verdict, newest_first};

/// `count` konbini charges of [`STORE`], created over the last three days, none
/// registered; returns their ids.
fn seed(app: &TestApp, count: u64, seed: u64) -> BTreeSet<String> {
    let pop = app.sim.seed(Population {
        stores: 1,
        ..Population::new(count, seed)
    });
    (0..pop.count).map(|i| pop.charge_id(i)).collect()
}

/// Every listing newest first; the `fail_at`-th request of `route` (counted from 1)
/// answers 503, once.
fn newest_first_failing(route: &'static str, fail_at: Option<u64>) -> Rule {
    let seen = AtomicU64::new(0);
    Arc::new(move |path: &str| {
        if path.contains(route) {
            let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
            if Some(n) == fail_at {
                return Verdict::Answer(503, String::new());
            }
        }
        Verdict::Forward(newest_first(path))
    })
}

async fn behind(app: &mut TestApp, rule: Rule) {
    let url = proxy::start(app.sim.base_url(), rule).await;
    app.reconfigure(|c| c.api.base_url = Some(url));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newest_first_history_with_a_503_on_page_two_loses_nothing_nor_a_late_row() {
    let mut app = app_with_discovery(&[STORE.to_owned()]).await;
    let all = seed(&app, 250, 21);
    behind(
        &mut app,
        newest_first_failing("/transaction_history", Some(2)),
    )
    .await;
    settle(&app);
    let first = sweep(&app).await;
    assert_eq!(first.outcome, SweepOutcome::Partial, "{first:?}");
    assert_eq!(
        discovered(&app).len(),
        100,
        "the newest page only, before the 503"
    );
    next_interval(&app);
    // Meanwhile a charge created 40 minutes ago shows up in the history.
    let late = konbini_created_ago(&app, STORE, 900, "lawson", Duration::from_secs(40 * 60));
    let second = sweep(&app).await;
    assert_eq!(second.outcome, SweepOutcome::Ok, "{second:?}");
    let mut want = all;
    want.insert(late.id);
    assert_eq!(
        discovered(&app),
        want,
        "none of the 150 older ones lost, nor the late one"
    );
    // The first page's charges were known by then: no second charge GET for them.
    assert_eq!(second.counts.discovered, 151);
    assert_eq!(app.sim.counters().requests, 251);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newest_first_charge_list_with_a_503_on_page_two_loses_nothing() {
    let mut app = app_with_discovery(&[STORE.to_owned()]).await;
    let all = seed(&app, 250, 22);
    // No history for these credentials: the charge list, newest first, 503 on its page 2.
    let seen = AtomicU64::new(0);
    let rule: Rule = Arc::new(move |path: &str| {
        if path.contains("/transaction_history") {
            return Verdict::Answer(404, r#"{"status":"error","code":"NOT_FOUND"}"#.into());
        }
        if path.contains("/charges?") && seen.fetch_add(1, Ordering::SeqCst) == 1 {
            return Verdict::Answer(503, String::new());
        }
        Verdict::Forward(newest_first(path))
    });
    behind(&mut app, rule).await;
    settle(&app);
    let first = sweep(&app).await;
    assert_eq!(first.outcome, SweepOutcome::Partial, "{first:?}");
    assert_eq!(discovered(&app).len(), 100);
    next_interval(&app);
    let second = sweep(&app).await;
    assert_eq!(second.outcome, SweepOutcome::Ok, "{second:?}");
    assert_eq!(discovered(&app), all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newest_first_history_past_the_verification_limit_loses_nothing() {
    let mut app = app_with_discovery(&[STORE.to_owned()]).await;
    let all = seed(&app, 1_200, 23);
    assert_eq!(MAX_VERIFIED_PER_SWEEP, 1_000);
    behind(&mut app, newest_first_failing("/transaction_history", None)).await;
    settle(&app);
    let first = sweep(&app).await;
    assert_eq!(first.outcome, SweepOutcome::Partial, "{first:?}");
    assert_eq!(first.counts.discovered, 1_000);
    next_interval(&app);
    let second = sweep(&app).await;
    assert_eq!(second.outcome, SweepOutcome::Ok, "{second:?}");
    assert_eq!(second.counts.discovered, 200);
    assert_eq!(discovered(&app), all, "none of the 200 oldest lost");
    assert_eq!(
        app.sim.counters().requests,
        1_200,
        "one charge GET each over both sweeps"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_listed_long_after_its_creation_is_found() {
    let app = app_with_discovery(&[STORE.to_owned()]).await;
    let early = app.sim.create_konbini_charge(STORE, 1_000, "lawson");
    settle(&app);
    assert_eq!(sweep(&app).await.counts.discovered, 1);
    next_interval(&app);
    // UnivaPay lists this one only now, though it was created 40 minutes ago: before the
    // last sweep's watermark, inside the default overlap of an hour.
    let late = konbini_created_ago(
        &app,
        STORE,
        2_000,
        "family_mart",
        Duration::from_secs(40 * 60),
    );
    let r = sweep(&app).await;
    assert_eq!(r.outcome, SweepOutcome::Ok, "{r:?}");
    assert_eq!(r.counts.discovered, 1);
    assert_eq!(
        discovered(&app),
        BTreeSet::from([early.id.clone(), late.id.clone()])
    );
    // What the overlap listed again cost no charge GET: one each.
    assert_eq!(app.sim.requests_for(&early.id), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discovered_charge_is_checked_at_the_pace_of_its_real_age() {
    let app = app_with_discovery(&[STORE.to_owned()]).await;
    // Created three days before the test clock's now at UnivaPay.
    let now: DateTime<Utc> = konbini_reconciler::reconcile::Clock::now(app.clock.as_ref());
    let c = app.sim.create_konbini_charge(STORE, 1_500, "seven_eleven");
    let created = now - chrono::Duration::days(3);
    app.sim.update(&c.id, |mut s| {
        s.created_on = created.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        s
    });
    settle(&app);
    sweep(&app).await;
    let created_at: String = app
        .db()
        .query_row(
            "SELECT created_at FROM charges WHERE charge_id = ?1",
            [&c.id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        created_at,
        created.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "UnivaPay's created_on, not the discovery time"
    );
    let checked_at = konbini_reconciler::reconcile::Clock::now(app.clock.as_ref());
    app.pass().await;
    let next: DateTime<Utc> = app.row(&c.id).next_check_at.unwrap().parse().unwrap();
    // The default schedule: every 10 minutes for the first 2 days, then every 3 hours;
    // a charge 3 days old is due 3 hours on, at most 2 minutes plus a fifth of 3 hours
    // (36 minutes) early: between 2 h 22 min and 3 h after the check.
    let (earliest, latest) = (
        checked_at + chrono::Duration::minutes(142),
        checked_at + chrono::Duration::minutes(180),
    );
    assert!(
        earliest <= next && next <= latest,
        "next check {next}, checked at {checked_at}"
    );
}
