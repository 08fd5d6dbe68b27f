//! Discovery against the fake UnivaPay: the sweep finds exactly the konbini charges the
//! ledger lacks (across pages and stores), never cards, never twice, nothing older than
//! the lookback; it survives a crash and a ledger failure mid-sweep; every misbehaving
//! listing ends it in bounded time and requests with nothing unverified registered; with
//! discovery off it sends no list, history or token request at all. Also the webhook
//! hook, enrichment, the shop's late INSERT, and the `[discovery]` config errors.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use konbini_reconciler::discovery::{self, SETTLE, SweepReport, Unknown};
use konbini_reconciler::domain::{ChargeId, StoreId};
use konbini_reconciler::ledger::{SweepOutcome, Trigger};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use univapay_sim::{CounterSnapshot, DiscoveryFaults, Population, Reply, SimCharge, SimToken};

use crate::config::TestConfig;
use crate::helpers::{STORE, TestApp, hold_lock, wait_until};

/// `[discovery]` on for these stores, every other key at its default.
pub(crate) fn discovery_on(stores: &[String]) -> impl FnOnce(&mut TestConfig) {
    let stores = stores.to_vec();
    move |c| {
        *c = c
            .clone()
            .set("discovery.enabled", true)
            .set("discovery.stores", stores);
    }
}

pub(crate) async fn app_with_discovery(stores: &[String]) -> TestApp {
    TestApp::spawn_with(discovery_on(stores)).await
}

pub(crate) async fn sweep(app: &TestApp) -> SweepReport {
    tokio::time::timeout(
        Duration::from_secs(60),
        discovery::sweep(
            &app.reconciler,
            &hold_lock(&app.reconciler),
            Trigger::Once,
            &CancellationToken::new(),
        ),
    )
    .await
    .expect("a sweep ends in bounded time")
    .expect("ledger")
    .expect("discovery is on")
}

/// Moves the test clock, and the simulator's along with it, past the settling delay:
/// everything created so far is listed.
pub(crate) fn settle(app: &TestApp) {
    both_clocks(app, SETTLE + Duration::from_secs(60));
}

/// Moves both clocks past `discovery.interval`.
pub(crate) fn next_interval(app: &TestApp) {
    both_clocks(app, Duration::from_secs(11 * 60));
}

pub(crate) fn both_clocks(app: &TestApp, d: Duration) {
    app.clock.advance(d);
    app.sim.advance(d);
}

pub(crate) fn discovered(app: &TestApp) -> BTreeSet<String> {
    ids(
        app,
        "SELECT charge_id FROM charges WHERE origin = 'discovered'",
    )
}

pub(crate) fn ids(app: &TestApp, sql: &str) -> BTreeSet<String> {
    let db = app.db();
    let mut stmt = db.prepare(sql).unwrap();
    stmt.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

pub(crate) fn skips(app: &TestApp, reason: &str) -> BTreeSet<String> {
    let db = app.db();
    let mut stmt = db
        .prepare("SELECT charge_id FROM discovery_skips WHERE reason = ?1")
        .unwrap();
    stmt.query_map([reason], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Requests the discovery routes saw: (history pages, charge list pages, charge GETs,
/// token GETs).
fn discovery_requests(c: &CounterSnapshot) -> (u64, u64, u64, u64) {
    (c.history_lists, c.charge_lists, c.requests, c.token_gets)
}

/// A seeded population with cards, a share of its konbini charges registered the way a
/// shop does; returns the population and the konbini charges left out.
fn seed_and_register_most(
    app: &TestApp,
    count: u64,
    forget_every: u64,
) -> (Population, BTreeSet<String>) {
    let pop = app.sim.seed(Population::new(count, 11).with_cards(25));
    let db = app.db();
    let mut missing = BTreeSet::new();
    for i in 0..pop.count {
        let p = pop.plan(i);
        if p.is_card() {
            continue;
        }
        if i % forget_every == 0 {
            missing.insert(p.id.clone());
        } else {
            db.execute(
                "INSERT INTO charges (charge_id, store_id, requested_amount) VALUES (?1, ?2, ?3)",
                rusqlite::params![p.id, p.store_id, p.amount],
            )
            .unwrap();
        }
    }
    (pop, missing)
}

/// A konbini charge made through the simulator's control API, created `age` ago.
pub(crate) fn konbini_created_ago(
    app: &TestApp,
    store: &str,
    amount: i64,
    brand: &str,
    age: Duration,
) -> SimCharge {
    let c = app.sim.create_konbini_charge(store, amount, brand);
    let at =
        c.created_on.parse::<DateTime<Utc>>().unwrap() - chrono::Duration::from_std(age).unwrap();
    app.sim.update(&c.id, |mut c| {
        c.created_on = at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        c
    });
    app.sim.charge(&c.id).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finds_exactly_the_missing_konbini_charges_across_pages_and_stores() {
    let stores: Vec<String> = (0..3).map(Population::store_id).collect();
    let app = app_with_discovery(&stores).await;
    let (pop, missing) = seed_and_register_most(&app, 900, 4);
    let cards = (0..pop.count).filter(|&i| pop.is_card(i)).count();
    assert!(
        cards > 50 && missing.len() > 150,
        "{cards} cards, {} missing",
        missing.len()
    );
    settle(&app);
    let before = app.sim.counters();

    let r = sweep(&app).await;
    assert_eq!(r.outcome, SweepOutcome::Ok, "{r:?}");
    assert_eq!(
        discovered(&app),
        missing,
        "exactly the konbini charges the ledger lacked"
    );
    assert_eq!(r.counts.discovered, missing.len() as u64);
    assert_eq!(r.stores, 3);
    assert!(r.counts.pages >= 6, "several pages per store: {r:?}");

    // One charge GET and one token GET per missing charge; the history pages (filtered
    // to konbini) cost nothing per card or registered charge.
    let after = app.sim.counters();
    let (history, lists, gets, tokens) = discovery_requests(&after);
    let (h0, l0, g0, t0) = discovery_requests(&before);
    let konbini = pop.count as usize - cards;
    assert_eq!(history - h0, r.counts.pages);
    assert!(
        history - h0 <= (konbini as u64).div_ceil(100) + 3,
        "{history}"
    );
    assert_eq!(lists - l0, 0);
    assert_eq!(gets - g0, missing.len() as u64);
    assert_eq!(tokens - t0, missing.len() as u64);
    assert_eq!(
        r.counts.requests,
        (history - h0) + (gets - g0) + (tokens - t0)
    );

    // Registered as UnivaPay has them, with brand and deadline from the token, one
    // `discovered` event each, due at once.
    for id in missing.iter().take(40) {
        let p = pop.plan(pop.index_of(id).unwrap());
        let (store, amount, currency, konbini, expires, next): (String, i64, String, String, String, String) = app
            .db()
            .query_row(
                "SELECT store_id, requested_amount, requested_currency, konbini, expires_at, next_check_at
                 FROM charges WHERE charge_id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
            )
            .unwrap();
        assert_eq!(
            (store.as_str(), amount, currency.as_str()),
            (p.store_id.as_str(), p.amount, "JPY")
        );
        assert_eq!(konbini, p.chain);
        // The seeded tokens give a 7-day period and no time shift: the deadline is the end
        // (23:59:59 JST, 14:59:59Z) of the Japanese calendar day that creation plus 7 days
        // falls on, so it lies within a day after that instant and ends at 14:59:59Z. The
        // literal days are checked in `the_deadline_is_the_one_the_token_implies...`.
        assert_eq!(p.expiry, Duration::from_secs(7 * 86_400));
        let expires_at: DateTime<Utc> = expires.parse().unwrap();
        let due = p.created + chrono::Duration::days(7);
        assert!(
            due <= expires_at && expires_at < due + chrono::Duration::days(1),
            "{id}: {expires} for {due}"
        );
        assert!(expires.ends_with("T14:59:59.000Z"), "{id}: {expires}");
        assert!(
            next <= konbini_reconciler::ledger::ts(konbini_reconciler::reconcile::Clock::now(
                &*app.clock
            )),
            "due at once"
        );
        assert_eq!(app.event_kinds(id), ["discovered"]);
    }

    // Then reconciled like any other.
    let pass = app.pass().await;
    assert_eq!(pass.counts.checked as usize, konbini, "{pass:?}");
    let still_pending =
        app.count("SELECT count(*) FROM charges WHERE origin = 'discovered' AND state = 'pending'");
    assert_eq!(still_pending, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_twice_and_the_next_sweep_reads_only_what_is_new() {
    let app = app_with_discovery(&[STORE.to_owned()]).await;
    let (_, missing) = seed_and_register_most(&app, 300, 3);
    let missing: BTreeSet<String> = missing
        .into_iter()
        .filter(|id| app.sim.charge(id).unwrap().store_id == STORE)
        .collect();
    settle(&app);
    let first = sweep(&app).await;
    assert_eq!(first.counts.discovered, missing.len() as u64);

    next_interval(&app);
    let before = app.sim.counters();
    let second = sweep(&app).await;
    let after = app.sim.counters();
    assert_eq!(second.outcome, SweepOutcome::Ok);
    assert_eq!(second.counts.discovered, 0);
    assert_eq!(discovered(&app), missing);
    assert_eq!(after.requests, before.requests, "no charge GET");
    assert_eq!(after.token_gets, before.token_gets, "no token GET");
    assert_eq!(
        after.history_lists - before.history_lists,
        1,
        "one page from the watermark"
    );
    let events = app.count("SELECT count(*) FROM charge_events WHERE kind = 'discovered'");
    assert_eq!(events as usize, missing.len());

    // A charge created since is found by the next sweep, alone.
    let late = app.sim.create_konbini_charge(STORE, 4321, "lawson");
    settle(&app);
    next_interval(&app);
    let third = sweep(&app).await;
    assert_eq!(third.counts.discovered, 1);
    assert!(discovered(&app).contains(&late.id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skips_cards_and_charges_older_than_the_lookback() {
    let app = TestApp::spawn_with(|c| {
        discovery_on(&[STORE.to_owned()])(c);
        *c = c.clone().set("discovery.lookback", "10d");
    })
    .await;
    let old = konbini_created_ago(
        &app,
        STORE,
        700,
        "family_mart",
        Duration::from_secs(11 * 86_400),
    );
    let recent = konbini_created_ago(
        &app,
        STORE,
        800,
        "seven_eleven",
        Duration::from_secs(9 * 86_400),
    );
    let card = app.sim.create_card_charge(STORE, 900);
    let fresh = app.sim.create_konbini_charge(STORE, 1000, "pay_easy");
    settle(&app);

    let r = sweep(&app).await;
    assert_eq!(r.outcome, SweepOutcome::Ok, "{r:?}");
    assert_eq!(
        discovered(&app),
        BTreeSet::from([recent.id.clone(), fresh.id.clone()])
    );
    for never in [&old.id, &card.id] {
        assert_eq!(app.sim.requests_for(never), 0, "no request about {never}");
    }
    // The Pay-easy charge shows its collection-agency number to support staff.
    let number: Option<String> = app
        .db()
        .query_row(
            "SELECT collection_number FROM open_charges WHERE charge_id = ?1",
            [&fresh.id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(number.as_deref(), Some("58091"));
}

/// Moves the test clock to `at` exactly and the simulator's clock to within the test's
/// run time of it, so that creation times and deadlines can be written out literally.
pub(crate) fn clocks_at(app: &TestApp, at: &str) {
    let at: DateTime<Utc> = at.parse().unwrap();
    let now = konbini_reconciler::reconcile::Clock::now(app.clock.as_ref());
    app.clock.advance((at - now).to_std().unwrap());
    // The simulator's clock started at the real time and runs with it.
    app.sim.advance((at - Utc::now()).to_std().unwrap());
}

/// Sets a charge's `created_on` at the simulator.
fn created_on(app: &TestApp, id: &str, at: &str) {
    app.sim.update(id, |mut c| {
        c.created_on = at.to_owned();
        c
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_is_the_one_the_token_implies_and_unknown_stays_null() {
    let app = app_with_discovery(&[STORE.to_owned()]).await;
    clocks_at(&app, "2099-06-01T12:00:00Z");
    // A token with a period and a time shift, one with a period only, one with neither.
    let mut shifted = SimToken::konbini("tok-shifted", STORE, "lawson")
        .with_expiration_period(Duration::from_secs(3 * 86_400));
    shifted.data["expiration_time_shift"] = json!("09:00:00.000+09:00");
    let plain = SimToken::konbini("tok-plain", STORE, "mini_stop")
        .with_expiration_period(Duration::from_secs(5 * 86_400));
    let default = SimToken::konbini("tok-default", STORE, "daily_yamazaki");
    // Every charge created 2099-05-28T16:00:00Z, which is 2099-05-29 01:00 in Japan
    // (UTC+9). UnivaPay's rule: the deadline is the Japanese calendar day that creation
    // plus `expiration_period` falls on, ending at 23:59:59 JST, or at the time of day
    // `expiration_time_shift` gives; no period: the store's default, which the API does
    // not tell (NULL).
    // - 3 days: 2099-06-01 01:00 JST, shifted to 09:00 JST that day = 2099-06-01T00:00:00Z.
    // - 5 days: 2099-06-03 01:00 JST, that day's 23:59:59 JST = 2099-06-03T14:59:59Z.
    let want = [
        Some("2099-06-01T00:00:00.000Z"),
        Some("2099-06-03T14:59:59.000Z"),
        None,
    ];
    let mut made = vec![];
    for t in [shifted, plain, default] {
        app.sim.insert_token(t.clone());
        let c = app
            .sim
            .create_charge(&t.id, 1200, "JPY", json!({}))
            .unwrap();
        created_on(&app, &c.id, "2099-05-28T16:00:00.000000Z");
        made.push(c);
    }
    settle(&app);
    assert_eq!(sweep(&app).await.counts.discovered, 3);
    for (c, want) in made.iter().zip(want) {
        let expires: Option<String> = app
            .db()
            .query_row(
                "SELECT expires_at FROM charges WHERE charge_id = ?1",
                [&c.id],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(expires.as_deref(), want, "{}", c.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_failure_mid_sweep_loses_and_duplicates_nothing() {
    let app = app_with_discovery(&[STORE.to_owned()]).await;
    let made: Vec<SimCharge> = (0..250)
        .map(|i| {
            app.sim
                .create_konbini_charge(STORE, 500 + i, "seven_eleven")
        })
        .collect();
    let all: BTreeSet<String> = made.iter().map(|c| c.id.clone()).collect();
    settle(&app);
    // One charge cannot be inserted: its page's commit fails.
    let victim = &made[200].id;
    app.db()
        .execute_batch(&format!(
            "CREATE TRIGGER fail_once BEFORE INSERT ON charges WHEN NEW.charge_id = '{victim}'
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END;"
        ))
        .unwrap();
    let err = discovery::sweep(
        &app.reconciler,
        &hold_lock(&app.reconciler),
        Trigger::Once,
        &CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("injected failure"), "{err}");
    let first = discovered(&app);
    assert!(
        !first.contains(victim) && first.len() >= 100,
        "committed pages stand: {}",
        first.len()
    );
    let row: (String, String) = app
        .db()
        .query_row("SELECT outcome, detail FROM discovery_sweeps", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(row.0, "failed");
    assert!(row.1.contains("injected failure"), "{row:?}");

    app.db().execute_batch("DROP TRIGGER fail_once").unwrap();
    let before = app.sim.counters();
    let r = sweep(&app).await;
    assert_eq!(r.outcome, SweepOutcome::Ok);
    assert_eq!(discovered(&app), all);
    let rest = (all.len() - first.len()) as u64;
    assert_eq!(r.counts.discovered, rest);
    assert_eq!(
        app.sim.counters().requests - before.requests,
        rest,
        "only the lost page again"
    );
    let events = app.count("SELECT count(*) FROM charge_events WHERE kind = 'discovered'");
    assert_eq!(events, 250, "one event each, none twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_sweep_loses_and_duplicates_nothing() {
    let app = TestApp::spawn_with(|c| {
        discovery_on(&[STORE.to_owned()])(c);
        c.api.concurrency = Some(1);
    })
    .await;
    let (pop, missing) = seed_and_register_most(&app, 900, 2);
    // The real binary runs on the real clock: only charges settled by then are listed.
    let settled = pop.epoch - chrono::Duration::from_std(SETTLE).unwrap();
    let expect: BTreeSet<String> = missing
        .iter()
        .filter(|id| {
            let p = pop.plan(pop.index_of(id).unwrap());
            p.store_id == STORE && p.created < settled
        })
        .cloned()
        .collect();
    assert!(expect.len() > 60, "{}", expect.len());
    app.sim.configure(|c| c.latency = Duration::from_millis(15));

    let running = app.command().once().spawn();
    wait_until(Duration::from_secs(60), "some charges discovered", || {
        app.count("SELECT count(*) FROM charges WHERE origin = 'discovered'") >= 10
    })
    .await;
    let killed = running.kill();
    assert_eq!(
        killed.code(),
        None,
        "killed, not finished: {}",
        killed.stderr()
    );
    let partial = discovered(&app);
    assert!(partial.len() < expect.len(), "killed mid-sweep");

    app.sim.configure(|c| c.latency = Duration::ZERO);
    let rerun = app.command().once().run();
    assert!(matches!(rerun.code(), Some(0 | 2)), "{:?}", rerun.code());
    let found = discovered(&app);
    assert!(
        found.is_superset(&expect),
        "missing {:?}",
        expect.difference(&found).collect::<Vec<_>>()
    );
    assert!(
        found.iter().all(|id| missing.contains(id)),
        "only missing konbini charges"
    );
    let events = app.count("SELECT count(*) FROM charge_events WHERE kind = 'discovered'");
    assert_eq!(events as usize, found.len(), "one event each");
    let outcomes = ids(&app, "SELECT outcome FROM discovery_sweeps");
    assert_eq!(
        outcomes,
        BTreeSet::from(["interrupted".to_owned(), "ok".to_owned()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_makes_no_list_history_or_token_request() {
    for edit in [
        Box::new(|_: &mut TestConfig| {}) as Box<dyn FnOnce(&mut TestConfig)>,
        Box::new(|c: &mut TestConfig| {
            *c = c
                .clone()
                .set("discovery.enabled", false)
                .set("discovery.stores", vec![STORE.to_owned()]);
        }),
    ] {
        let app = TestApp::spawn_with(edit).await;
        seed_and_register_most(&app, 100, 3);
        app.command().once().run().assert_code(0);
        let c = app.sim.counters();
        assert!(c.requests > 0, "the pass ran");
        assert_eq!((c.history_lists, c.charge_lists, c.token_gets), (0, 0, 0));
        assert_eq!(app.count("SELECT count(*) FROM discovery_sweeps"), 0);
        assert_eq!(
            discovery::register_unknown(
                &app.reconciler,
                &StoreId::parse(STORE).unwrap(),
                &ChargeId::parse("whatever").unwrap()
            )
            .await
            .unwrap(),
            Unknown::NotWatched
        );
        assert_eq!(app.sim.counters().api_requests, c.api_requests);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_the_daemon_sends_no_list_history_or_token_request_either() {
    let app = TestApp::spawn_with(|c| {
        c.schedule.cron = Some("* * * * * *".into());
    })
    .await;
    seed_and_register_most(&app, 60, 3);
    let stop = CancellationToken::new();
    let reconciler = konbini_reconciler::reconcile::Reconciler::new(app.settings.clone()).unwrap();
    let handle = tokio::spawn(konbini_reconciler::daemon::run(
        reconciler,
        konbini_reconciler::notify::Notifier::disabled(),
        stop.clone(),
    ));
    wait_until(Duration::from_secs(10), "two passes", || {
        app.count("SELECT count(*) FROM runs WHERE outcome = 'ok'") >= 2
    })
    .await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .expect("stops")
        .unwrap()
        .expect("clean stop");
    let c = app.sim.counters();
    assert!(c.requests > 0, "the passes ran");
    assert_eq!((c.history_lists, c.charge_lists, c.token_gets), (0, 0, 0));
    assert_eq!(app.count("SELECT count(*) FROM discovery_sweeps"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_sweeps_when_due_and_not_again_within_the_interval() {
    let app = app_with_discovery(&[STORE.to_owned()]).await;
    let (pop, missing) = seed_and_register_most(&app, 200, 3);
    let settled = pop.epoch - chrono::Duration::from_std(SETTLE).unwrap();
    let expect: BTreeSet<String> = missing
        .into_iter()
        .filter(|id| {
            let p = pop.plan(pop.index_of(id).unwrap());
            p.store_id == STORE && p.created < settled
        })
        .collect();
    let out = app.command().once().run();
    out.assert_code(0);
    // The pass after the sweep checked the discovered charges too.
    assert!(out.stdout().contains("checked"), "{}", out.stdout());
    assert!(discovered(&app).is_superset(&expect));
    for id in &expect {
        assert_ne!(
            app.row(id).state,
            "pending",
            "{id} checked by the same --once"
        );
    }
    let pages = app.sim.counters().history_lists;
    app.command().once().run().assert_code(0);
    assert_eq!(app.sim.counters().history_lists, pages, "not due again yet");
    assert_eq!(app.count("SELECT count(*) FROM discovery_sweeps"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_exits_1_when_the_sweep_meets_refused_credentials() {
    let app = app_with_discovery(&[STORE.to_owned()]).await;
    let out = app
        .command()
        .once()
        .env("UNIVAPAY_SECRET", "wrong-secret")
        .run();
    let line = out.assert_fatal(&["discovery sweep", "credentials rejected"]);
    assert!(!line.contains("wrong-secret"), "{line}");
    assert_eq!(
        app.count("SELECT count(*) FROM runs"),
        0,
        "no pass after it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_sweeps_on_its_interval() {
    let app = TestApp::spawn_with(|c| {
        discovery_on(&[STORE.to_owned()])(c);
        *c = c.clone().set("discovery.interval", "1s");
        c.schedule.cron = Some("* * * * * *".into());
        c.schedule.run_on_start = Some(false);
    })
    .await;
    let forgotten =
        konbini_created_ago(&app, STORE, 2500, "seven_eleven", Duration::from_secs(3600));
    app.sim.issue(&forgotten.id).unwrap();
    let stop = CancellationToken::new();
    let reconciler = konbini_reconciler::reconcile::Reconciler::new(app.settings.clone()).unwrap();
    let handle = tokio::spawn(konbini_reconciler::daemon::run(
        reconciler,
        konbini_reconciler::notify::Notifier::disabled(),
        stop.clone(),
    ));
    // A limit, not a timing claim: on a loaded machine the first sweeps can take a while.
    wait_until(
        Duration::from_secs(60),
        "discovered, then checked by a pass",
        || {
            app.count("SELECT count(*) FROM discovery_sweeps WHERE outcome = 'ok'") >= 2
                && app.count(&format!(
                    "SELECT count(*) FROM charges WHERE charge_id = '{}' AND state = 'awaiting'",
                    forgotten.id
                )) == 1
        },
    )
    .await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .expect("stops")
        .unwrap()
        .expect("clean stop");
    assert_eq!(
        app.event_kinds(&forgotten.id)[..2],
        ["discovered", "transition"]
    );
    assert_eq!(
        app.count("SELECT count(*) FROM discovery_sweeps WHERE outcome = 'running'"),
        0
    );
}

// ---- misbehaving listings and tokens -----------------------------------------------------

/// 180 konbini charges (and cards) in the first store, a third registered; the sweep
/// under `faults`. Returns the report, the missing ones and the requests it cost.
async fn sweep_under(faults: DiscoveryFaults) -> (TestApp, SweepReport, BTreeSet<String>, u64) {
    let app = app_with_discovery(&[STORE.to_owned()]).await;
    let pop = app.sim.seed(Population {
        stores: 1,
        ..Population::new(240, 5).with_cards(30)
    });
    let db = app.db();
    let mut missing = BTreeSet::new();
    for i in (0..pop.count).filter(|&i| !pop.is_card(i)) {
        let p = pop.plan(i);
        if i % 3 == 0 {
            db.execute(
                "INSERT INTO charges (charge_id, store_id, requested_amount) VALUES (?1, ?2, ?3)",
                rusqlite::params![p.id, p.store_id, p.amount],
            )
            .unwrap();
        } else {
            missing.insert(p.id);
        }
    }
    settle(&app);
    app.sim.configure(|c| c.discovery_faults = faults);
    let before = app.sim.counters().api_requests;
    let r = sweep(&app).await;
    let cost = app.sim.counters().api_requests - before;
    assert_eq!(cost, r.counts.requests, "every request counted");
    assert_registered_are_verified(&app);
    (app, r, missing, cost)
}

/// Every discovered charge is a konbini charge of the simulator, registered with what
/// UnivaPay says it asked for.
fn assert_registered_are_verified(app: &TestApp) {
    for id in discovered(app) {
        let c = app.sim.charge(&id).expect("a charge the simulator has");
        let t = app.sim.token(&c.token_id()).expect("its token");
        assert_eq!(t.payment_type, "konbini", "{id}");
        let (amount, currency): (i64, String) = app
            .db()
            .query_row(
                "SELECT requested_amount, requested_currency FROM charges WHERE charge_id = ?1",
                [&id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(
            (amount, currency),
            (c.requested_amount, c.requested_currency)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_items_are_looked_at_once() {
    let (app, r, missing, cost) = sweep_under(DiscoveryFaults {
        repeat_items: true,
        ..DiscoveryFaults::default()
    })
    .await;
    assert_eq!(r.outcome, SweepOutcome::Ok, "{r:?}");
    assert_eq!(discovered(&app), missing);
    assert!(r.repeats > 0, "{r:?}");
    assert_eq!(cost, r.counts.pages + 2 * missing.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_cursor_ends_the_listing_and_later_sweeps_go_on() {
    let (app, r, missing, cost) = sweep_under(DiscoveryFaults {
        looping_cursor: true,
        ..DiscoveryFaults::default()
    })
    .await;
    assert_eq!(r.outcome, SweepOutcome::Partial, "{r:?}");
    assert!(
        r.detail.as_deref().unwrap().contains("repeated only items"),
        "{r:?}"
    );
    assert_eq!(r.counts.pages, 2);
    let first = discovered(&app);
    assert_eq!(first.len(), r.counts.discovered as usize);
    assert!(!first.is_empty() && first.len() < missing.len());
    assert_eq!(cost, 2 + 2 * first.len() as u64);
    // The watermark moved past the first page: each sweep gets further, to the end.
    for _ in 0..10 {
        next_interval(&app);
        sweep(&app).await;
        assert_registered_are_verified(&app);
    }
    assert_eq!(discovered(&app), missing);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_page_that_claims_more_ends_the_sweep() {
    let (app, r, _, cost) = sweep_under(DiscoveryFaults {
        empty_has_more: true,
        ..DiscoveryFaults::default()
    })
    .await;
    assert_eq!(r.outcome, SweepOutcome::Partial, "{r:?}");
    assert!(
        r.detail
            .as_deref()
            .unwrap()
            .contains("without items said has_more"),
        "{r:?}"
    );
    // The history's one page, and one page of the charge list to see whether it holds
    // charges the history did not show (it misbehaves alike here: no fallback).
    assert_eq!(cost, 2);
    assert!(discovered(&app).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_without_ids_are_counted_and_skipped() {
    let (app, r, missing, cost) = sweep_under(DiscoveryFaults {
        items_without_ids: true,
        ..DiscoveryFaults::default()
    })
    .await;
    assert_eq!(r.outcome, SweepOutcome::Ok, "{r:?}");
    assert!(r.without_id > 0, "{r:?}");
    let found = discovered(&app);
    assert!(found.is_subset(&missing));
    assert!(
        found.len() < missing.len(),
        "the rows without ids were not guessed at"
    );
    assert_eq!(cost, r.counts.pages + 2 * found.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_ten_thousand_items_is_refused() {
    let (app, r, _, cost) = sweep_under(DiscoveryFaults {
        huge_page: Some(10_000),
        ..DiscoveryFaults::default()
    })
    .await;
    assert_eq!(r.outcome, SweepOutcome::Partial, "{r:?}");
    assert_eq!(cost, 1, "one page, nothing verified from it");
    assert!(discovered(&app).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_payment_types_are_skipped_and_recorded() {
    let (app, r, missing, cost) = sweep_under(DiscoveryFaults {
        unknown_payment_type: true,
        ..DiscoveryFaults::default()
    })
    .await;
    assert_eq!(r.outcome, SweepOutcome::Ok, "{r:?}");
    let skipped = skips(&app, "unknown_payment_type");
    assert!(!skipped.is_empty());
    assert_eq!(
        r.skipped.get("unknown_payment_type").copied(),
        Some(skipped.len() as u64)
    );
    let found = discovered(&app);
    assert!(found.is_disjoint(&skipped));
    assert_eq!(
        found.union(&skipped).cloned().collect::<BTreeSet<_>>(),
        missing
    );
    for id in &skipped {
        assert_eq!(app.sim.requests_for(id), 0, "no request for {id}");
    }
    assert_eq!(cost, r.counts.pages + 2 * found.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_is_not_found_is_skipped_and_recorded() {
    let (app, r, missing, cost) = sweep_under(DiscoveryFaults {
        token_not_found: 0.4,
        ..DiscoveryFaults::default()
    })
    .await;
    assert_eq!(r.outcome, SweepOutcome::Ok, "{r:?}");
    let skipped = skips(&app, "token_not_found");
    assert!(!skipped.is_empty());
    let found = discovered(&app);
    assert_eq!(
        found.union(&skipped).cloned().collect::<BTreeSet<_>>(),
        missing
    );
    assert!(found.is_disjoint(&skipped));
    assert_eq!(cost, r.counts.pages + 2 * missing.len() as u64);
    // Recorded for good: the next sweep asks nothing about them again.
    next_interval(&app);
    let before = app.sim.counters();
    sweep(&app).await;
    assert_eq!(app.sim.counters().token_gets, before.token_gets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_about_another_charge_or_a_lost_charge_are_not_registered() {
    let app = app_with_discovery(&[STORE.to_owned()]).await;
    let wrong = app.sim.create_konbini_charge(STORE, 100, "lawson");
    let gone = app.sim.create_konbini_charge(STORE, 200, "lawson");
    let good = app.sim.create_konbini_charge(STORE, 300, "lawson");
    app.sim.push_reply(
        &wrong.id,
        Reply::Json(SimCharge::new("someone-else", STORE, 100).to_json()),
    );
    app.sim.push_reply(
        &gone.id,
        Reply::Raw {
            status: 404,
            body: String::new(),
        },
    );
    settle(&app);
    let r = sweep(&app).await;
    assert_eq!(r.outcome, SweepOutcome::Ok, "{r:?}");
    assert_eq!(discovered(&app), BTreeSet::from([good.id.clone()]));
    assert_eq!(
        skips(&app, "unverified"),
        BTreeSet::from([wrong.id.clone()])
    );
    assert_eq!(
        skips(&app, "charge_not_found"),
        BTreeSet::from([gone.id.clone()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_holds_the_watermark_until_it_is_retried() {
    let app = app_with_discovery(&[STORE.to_owned()]).await;
    let first = app.sim.create_konbini_charge(STORE, 100, "lawson");
    let flaky = app.sim.create_konbini_charge(STORE, 200, "lawson");
    let after = app.sim.create_konbini_charge(STORE, 300, "lawson");
    app.sim.push_reply(
        &flaky.id,
        Reply::Raw {
            status: 503,
            body: String::new(),
        },
    );
    settle(&app);
    let r = sweep(&app).await;
    assert_eq!(r.outcome, SweepOutcome::Partial, "{r:?}");
    assert_eq!(discovered(&app), BTreeSet::from([first.id.clone()]));
    assert_eq!(skips(&app, "retrying"), BTreeSet::from([flaky.id.clone()]));

    next_interval(&app);
    let r = sweep(&app).await;
    assert_eq!(r.outcome, SweepOutcome::Ok, "{r:?}");
    assert_eq!(
        discovered(&app),
        BTreeSet::from([first.id, flaky.id.clone(), after.id])
    );
    assert!(skips(&app, "retrying").is_empty());
    assert_eq!(app.sim.requests_for(&flaky.id), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_that_keeps_failing_is_given_up_after_five_sweeps() {
    let app = app_with_discovery(&[STORE.to_owned()]).await;
    let stuck = app.sim.create_konbini_charge(STORE, 100, "lawson");
    let behind = app.sim.create_konbini_charge(STORE, 200, "lawson");
    for _ in 0..10 {
        app.sim.push_reply(
            &stuck.id,
            Reply::Raw {
                status: 500,
                body: String::new(),
            },
        );
    }
    settle(&app);
    for _ in 0..5 {
        sweep(&app).await;
        next_interval(&app);
    }
    assert_eq!(
        skips(&app, "unreachable"),
        BTreeSet::from([stuck.id.clone()])
    );
    sweep(&app).await;
    assert_eq!(discovered(&app), BTreeSet::from([behind.id]));
    assert_eq!(app.sim.requests_for(&stuck.id), 5);
}

// ---- the webhook hook, enrichment, the shop's late INSERT ----------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_unknown_verifies_before_registering() {
    let app = app_with_discovery(&[STORE.to_owned()]).await;
    let store = StoreId::parse(STORE).unwrap();
    let konbini = app.sim.create_konbini_charge(STORE, 1500, "family_mart");
    let card = app.sim.create_card_charge(STORE, 2500);
    let id = |c: &SimCharge| ChargeId::parse(c.id.clone()).unwrap();

    let got = discovery::register_unknown(&app.reconciler, &store, &id(&konbini))
        .await
        .unwrap();
    assert_eq!(got, Unknown::Registered);
    let events = app.events(&konbini.id);
    assert_eq!(events.len(), 1);
    assert!(
        events[0].detail.as_deref().unwrap().contains("webhook"),
        "{events:?}"
    );
    assert_eq!(
        discovery::register_unknown(&app.reconciler, &store, &id(&konbini))
            .await
            .unwrap(),
        Unknown::AlreadyKnown
    );
    assert_eq!(
        discovery::register_unknown(&app.reconciler, &store, &id(&card))
            .await
            .unwrap(),
        Unknown::Skipped(konbini_reconciler::ledger::SkipReason::NotKonbini)
    );
    let before = app.sim.counters();
    assert_eq!(
        discovery::register_unknown(&app.reconciler, &store, &id(&card))
            .await
            .unwrap(),
        Unknown::AlreadyKnown,
        "a card asked about once is not asked about again"
    );
    let other = StoreId::parse(Population::store_id(2)).unwrap();
    assert_eq!(
        discovery::register_unknown(&app.reconciler, &other, &id(&card))
            .await
            .unwrap(),
        Unknown::NotWatched
    );
    assert_eq!(app.sim.counters().api_requests, before.api_requests);
    assert_eq!(app.sim.requests_for(&card.id), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrichment_fills_brand_and_deadline_of_registered_charges_once() {
    let app = TestApp::spawn_with(|c| {
        discovery_on(&[STORE.to_owned()])(c);
        *c = c.clone().set("discovery.enrich", true);
    })
    .await;
    clocks_at(&app, "2099-03-03T00:00:00Z");
    let t = SimToken::konbini("tok-enrich", STORE, "pay_easy")
        .with_expiration_period(Duration::from_secs(7 * 86_400));
    app.sim.insert_token(t.clone());
    let c = app
        .sim
        .create_charge(&t.id, 3000, "JPY", json!({}))
        .unwrap();
    created_on(&app, &c.id, "2099-03-01T15:30:00.000000Z");
    app.register(&c.id, 3000);
    let own_deadline = app.sim.create_konbini_charge(STORE, 100, "lawson");
    app.register(&own_deadline.id, 100);
    app.db()
        .execute(
            "UPDATE charges SET expires_at = '2030-01-01T00:00:00Z' WHERE charge_id = ?1",
            [&own_deadline.id],
        )
        .unwrap();
    let card = app.sim.create_card_charge(STORE, 100);
    app.register(&card.id, 100);
    settle(&app);

    let r = sweep(&app).await;
    assert_eq!(r.counts.discovered, 0, "all registered");
    assert_eq!(r.counts.enriched, 2, "{r:?}");
    let (konbini, expires): (String, String) = app
        .db()
        .query_row(
            "SELECT konbini, expires_at FROM charges WHERE charge_id = ?1",
            [&c.id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(konbini, "pay_easy");
    // Created 2099-03-01T15:30:00Z = 2099-03-02 00:30 JST; plus 7 days is 2099-03-09 in
    // Japan, which ends at 23:59:59 JST = 14:59:59Z.
    assert_eq!(expires, "2099-03-09T14:59:59.000Z");
    let (konbini, expires): (String, String) = app
        .db()
        .query_row(
            "SELECT konbini, expires_at FROM charges WHERE charge_id = ?1",
            [&own_deadline.id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        (konbini.as_str(), expires.as_str()),
        ("lawson", "2030-01-01T00:00:00.000Z"),
        "the shop's deadline stands"
    );
    let card_brand: Option<String> = app
        .db()
        .query_row(
            "SELECT konbini FROM charges WHERE charge_id = ?1",
            [&card.id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(card_brand, None);

    next_interval(&app);
    let before = app.sim.counters();
    sweep(&app).await;
    assert_eq!(
        app.sim.counters().token_gets,
        before.token_gets,
        "looked up once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrichment_is_off_by_default() {
    let app = app_with_discovery(&[STORE.to_owned()]).await;
    let c = app.sim.create_konbini_charge(STORE, 3000, "pay_easy");
    app.register(&c.id, 3000);
    settle(&app);
    let r = sweep(&app).await;
    assert_eq!(r.counts.enriched, 0);
    assert_eq!(app.sim.counters().token_gets, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shop_that_registers_a_discovered_charge_late_is_not_refused() {
    let app = app_with_discovery(&[STORE.to_owned()]).await;
    let c = app.sim.create_konbini_charge(STORE, 1800, "seven_eleven");
    settle(&app);
    sweep(&app).await;
    assert_eq!(discovered(&app).len(), 1);
    // The shop's own plain INSERT, after its crash: accepted, nothing duplicated.
    app.register(&c.id, 1800);
    assert_eq!(app.event_kinds(&c.id), ["discovered", "registered"]);
    let e = app
        .db()
        .execute(
            "INSERT INTO charges (charge_id, store_id, requested_amount) VALUES (?1, ?2, 1700)",
            rusqlite::params![c.id, STORE],
        )
        .unwrap_err();
    assert!(e.to_string().contains("discovered at UnivaPay"), "{e}");
}

// ---- config ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_discovery_config_is_exit_1_naming_the_key() {
    let app = TestApp::spawn().await;
    for (edit, key) in [
        (
            Box::new(|c: TestConfig| c.set("discovery.stores", vec!["good-store", "bad store/.."]))
                as Box<dyn Fn(TestConfig) -> TestConfig>,
            "discovery.stores",
        ),
        (
            Box::new(|c: TestConfig| c.set("discovery.interval", "0s")),
            "discovery.interval",
        ),
        (
            Box::new(|c: TestConfig| c.set("discovery.lookback", "401d")),
            "discovery.lookback",
        ),
        (
            Box::new(|c: TestConfig| c.set("discovery.overlap", "401d")),
            "discovery.overlap",
        ),
        (
            Box::new(|c: TestConfig| c.set("discovery.stores", Vec::<String>::new())),
            "discovery.stores",
        ),
    ] {
        let config = edit(
            app.config
                .clone()
                .set("discovery.enabled", true)
                .set("discovery.stores", vec![STORE]),
        );
        let path = app.dir.path().join("bad.toml");
        config.write(&path);
        let mut cmd = crate::util::TestCommand::new(app.dir.path());
        let out = cmd.config(&path).once().run();
        out.assert_fatal(&[key]);
    }
    assert_eq!(app.sim.counters().api_requests, 0);
}

// ---- the charge list fallback, and pacing ---------------------------------------------------

/// A proxy in front of the simulator for credentials that cannot read the transaction
/// history: `/transaction_history` answers 404, every other GET is passed on (with its
/// rate-limit headers). Returns its base URL.
async fn without_history(upstream: String) -> String {
    let rule: crate::proxy::Rule = std::sync::Arc::new(|path: &str| {
        if path.contains("/transaction_history") {
            crate::proxy::Verdict::Answer(
                404,
                r#"{"status":"error","code":"NOT_FOUND","errors":[]}"#.to_owned(),
            )
        } else {
            crate::proxy::Verdict::Forward(path.to_owned())
        }
    });
    crate::proxy::start(upstream, rule).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_history_the_charge_list_and_tokens_decide() {
    let mut app = app_with_discovery(&[STORE.to_owned()]).await;
    let pop = app.sim.seed(Population {
        stores: 1,
        ..Population::new(300, 9).with_cards(40)
    });
    let db = app.db();
    let (mut missing, mut cards) = (BTreeSet::new(), 0u64);
    for i in 0..pop.count {
        let p = pop.plan(i);
        if p.is_card() {
            cards += 1;
        } else if i % 2 == 0 {
            missing.insert(p.id);
        } else {
            db.execute(
                "INSERT INTO charges (charge_id, store_id, requested_amount) VALUES (?1, ?2, ?3)",
                rusqlite::params![p.id, p.store_id, p.amount],
            )
            .unwrap();
        }
    }
    let proxy = without_history(app.sim.base_url()).await;
    app.reconfigure(|c| c.api.base_url = Some(proxy));
    settle(&app);
    let r = sweep(&app).await;
    assert_eq!(r.outcome, SweepOutcome::Ok, "{r:?}");
    assert_eq!(discovered(&app), missing);
    let c = app.sim.counters();
    assert_eq!(c.history_lists, 0);
    assert_eq!(c.charge_lists, r.counts.pages);
    assert_eq!(
        r.counts.requests,
        1 + c.charge_lists + c.token_gets + c.requests,
        "one history page refused, then the list"
    );
    // Each unknown charge's token once; a card costs that one request, a konbini charge
    // its charge GET besides.
    assert_eq!(c.token_gets, cards + missing.len() as u64);
    assert_eq!(c.requests, missing.len() as u64);
    assert_eq!(skips(&app, "not_konbini").len() as u64, cards);
    assert!(cards > 20, "{cards}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_is_paced_by_the_rate_limit_like_a_pass() {
    let app = app_with_discovery(&[STORE.to_owned()]).await;
    app.sim
        .configure(|c| c.rate_limit = Some(univapay_sim::RateLimitConfig::new(10, 3000)));
    for i in 0..40 {
        app.sim.create_konbini_charge(STORE, 100 + i, "lawson");
    }
    settle(&app);
    let r = sweep(&app).await;
    assert_eq!(r.outcome, SweepOutcome::Ok, "{r:?}");
    assert_eq!(r.counts.discovered, 40);
    let c = app.sim.counters();
    assert_eq!(
        c.api_rate_limited, 0,
        "the pacer kept every route inside its bucket"
    );
}
