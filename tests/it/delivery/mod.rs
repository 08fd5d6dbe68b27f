//! Events out, through the real binary: the shop's order reference and paid time in the
//! ledger and `export`, the `events` feed, signed delivery to `[[delivery]]` endpoints
//! (verified by the maintained `standardwebhooks` crate), `deliveries` and its replay and
//! test, an endpoint that is down beside one that is up, and the ledger file swapped
//! under the delivery job.

mod day;
mod outage;
mod receiver;
mod reopen;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use toml::Value;
use univapay_sim::SimCharge;

use crate::helpers::{STORE, TestApp};
pub use receiver::Receiver;

pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const OTHER_SECRET: &str = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

/// A `[[delivery]]` table.
pub fn endpoint(name: &str, url: &str, secret: &str) -> Value {
    let mut t = toml::Table::new();
    t.insert("name".into(), name.into());
    t.insert("url".into(), url.into());
    t.insert("secret".into(), secret.into());
    t.insert("timeout".into(), "2s".into());
    Value::Table(t)
}

/// A test app whose config has these endpoints.
pub async fn app_with(endpoints: Vec<Value>) -> TestApp {
    let mut app = TestApp::spawn().await;
    app.reconfigure(|c| {
        *c = c
            .clone()
            .set("delivery", Value::Array(endpoints))
            .set("schedule.drain_timeout", "3s");
    });
    app
}

/// A charge at the fake UnivaPay with the shop's order id in its metadata, registered.
pub fn order(app: &TestApp, charge_id: &str, orderid: &str) -> SimCharge {
    app.register(charge_id, 100);
    let mut c = SimCharge::new(charge_id, STORE, 100);
    c.metadata = json!({"orderid": orderid});
    app.sim.upsert(c.clone());
    c
}

/// The events `shop` took (the requests it answered `status`): their ids by charge in
/// arrival order, and all of them sorted. Each delivery's `webhook-id` must name its event.
pub fn taken(shop: &Receiver, status: u16) -> (BTreeMap<String, Vec<i64>>, Vec<i64>) {
    let mut per_charge: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut delivered = Vec::new();
    for r in shop.received().iter().filter(|r| r.answered == status) {
        let body = r.json();
        let id = body["data"]["event_id"].as_i64().unwrap();
        assert_eq!(r.header("webhook-id"), format!("evt_{id}"));
        per_charge
            .entry(body["data"]["charge_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(id);
        delivered.push(id);
    }
    delivered.sort();
    (per_charge, delivered)
}

/// Every event the ledger holds a payload for, ascending.
pub fn event_ids(app: &TestApp) -> Vec<i64> {
    app.db()
        .prepare("SELECT event_id FROM event_payloads ORDER BY event_id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn one_line(s: &str) -> String {
    s.lines().collect::<Vec<_>>().join(" | ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_order_reaches_the_shop_signed_and_in_its_own_words() {
    let shop = Receiver::start(200).await;
    let app = app_with(vec![endpoint("shop", &shop.url(), SECRET)]).await;
    let c = order(&app, "ch_1", "12345");
    app.sim
        .upsert(c.awaiting("20020-123456789012", None).paid());

    let once = app.command().once().run();
    assert_eq!(once.code(), Some(0), "{}", one_line(&once.stderr()));

    let got = shop.received();
    assert_eq!(got.len(), 1, "{got:?}");
    let d = &got[0];
    d.verify(SECRET)
        .expect("a valid Standard Webhooks signature");
    assert_eq!(d.header("content-type"), "application/json");
    let body = d.json();
    assert_eq!(body["type"], "charge.paid");
    let data = &body["data"];
    assert_eq!(d.header("webhook-id"), format!("evt_{}", data["event_id"]));
    assert_eq!(data["order_ref"], "12345");
    assert_eq!(data["charge_id"], "ch_1");
    assert_eq!(data["state"], "successful");
    assert_eq!(data["charged_amount"], 100);
    assert_eq!(data["amount_mismatch"], false);
    assert_eq!(data["payment_number"], "20020-123456789012");
    assert_eq!(data["metadata"]["orderid"], "12345");
    // Another secret does not verify it.
    assert!(d.verify(OTHER_SECRET).is_err());

    // The ledger, in the shop's words.
    let (order_ref, paid_at, metadata): (String, String, String) = app
        .db()
        .query_row(
            "SELECT order_ref, paid_at, metadata FROM charges WHERE charge_id = 'ch_1'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(order_ref, "12345");
    assert_eq!(paid_at, data["at"].as_str().unwrap());
    assert!(metadata.contains(r#""orderid":"12345""#), "{metadata}");
    assert_eq!(
        app.count("SELECT count(*) FROM deliveries WHERE delivered_at IS NULL"),
        0
    );

    // The feed carries the same bytes.
    let feed = app.command().arg("events").run();
    assert_eq!(feed.code(), Some(0), "{}", feed.stderr());
    assert_eq!(feed.stdout().lines().last(), Some(d.body.as_str()));
    let paid_only = app
        .command()
        .args(["events", "--type", "charge.paid"])
        .run();
    assert_eq!(
        paid_only.stdout().lines().collect::<Vec<_>>(),
        [d.body.as_str()]
    );
    let id = data["event_id"].as_i64().unwrap();
    let after = app
        .command()
        .args(["events", "--after", &id.to_string()])
        .run();
    assert_eq!(after.stdout(), "");

    // export gains the columns.
    let csv = app.command().arg("export").run().stdout();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let row: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| row[header.iter().position(|h| *h == name).unwrap()];
    assert_eq!(col("order_ref"), "12345");
    assert_eq!(col("paid_at"), paid_at);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_never_holds_up_a_live_one_and_replay_sends_again() {
    let live = Receiver::start(204).await;
    let dead = Receiver::start(503).await;
    let app = app_with(vec![
        endpoint("live", &live.url(), SECRET),
        endpoint("dead", &dead.url(), OTHER_SECRET),
    ])
    .await;
    let c = order(&app, "ch_2", "A-7");
    app.sim.upsert(c.awaiting("1111-2222", None));
    let started = std::time::Instant::now();
    let once = app.command().once().run();
    assert_eq!(once.code(), Some(0), "{}", one_line(&once.stderr()));
    // The drain is bounded by schedule.drain_timeout (3 s), not the 5 s retry.
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(live.received().len(), 1);
    assert_eq!(dead.received().len(), 1);
    let first = &dead.received()[0];
    first.verify(OTHER_SECRET).unwrap();

    let listed = app.command().args(["deliveries", "--json"]).run();
    assert_eq!(listed.code(), Some(0), "{}", listed.stderr());
    let v: serde_json::Value = serde_json::from_str(&listed.stdout()).unwrap();
    let by = |name: &str| {
        v["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["endpoint"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(by("live")["pending"], 0);
    assert_eq!(by("dead")["pending"], 1);
    assert!(
        by("dead")["last_error"].as_str().unwrap().contains("503"),
        "{v}"
    );
    let text = app.command().arg("deliveries").run().stdout();
    assert!(text.contains("dead: pending 1"), "{text}");

    // Back up: a replay sends it again, re-signed, with the same webhook-id and body.
    dead.answer(200, None);
    let id = first.json()["data"]["event_id"].as_i64().unwrap();
    let replay = app
        .command()
        .args([
            "deliveries",
            "replay",
            "--event",
            &id.to_string(),
            "--endpoint",
            "dead",
        ])
        .run();
    assert_eq!(replay.code(), Some(0), "{}", one_line(&replay.stderr()));
    let again = dead.received();
    assert_eq!(again.len(), 2);
    again[1].verify(OTHER_SECRET).unwrap();
    assert_eq!(again[1].header("webhook-id"), first.header("webhook-id"));
    assert_eq!(again[1].body, first.body);
    assert_eq!(
        live.received().len(),
        1,
        "the live endpoint was not replayed to"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM deliveries WHERE delivered_at IS NULL"),
        0
    );

    // Everything since a time, to one endpoint.
    let since = app
        .command()
        .args([
            "deliveries",
            "replay",
            "--since",
            "2000-01-01T00:00:00Z",
            "--endpoint",
            "live",
        ])
        .run();
    assert_eq!(since.code(), Some(0), "{}", one_line(&since.stderr()));
    assert!(
        since.stdout().starts_with("1 deliveries due now"),
        "{}",
        since.stdout()
    );
    let live_again = live.received();
    assert_eq!(live_again.len(), 2);
    assert_eq!(
        live_again[1].header("webhook-id"),
        live_again[0].header("webhook-id")
    );
    assert_eq!(dead.received().len(), 2, "only the named endpoint");

    let unknown = app
        .command()
        .args(["deliveries", "replay", "--event", "1", "--endpoint", "nope"])
        .run();
    assert_eq!(unknown.code(), Some(1));
    assert!(
        unknown.stderr().contains("\"nope\""),
        "{}",
        unknown.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_test_says_whether_the_endpoint_takes_it() {
    let shop = Receiver::start(200).await;
    let app = app_with(vec![endpoint("shop", &shop.url(), SECRET)]).await;
    let ok = app.command().args(["deliveries", "test"]).run();
    assert_eq!(ok.code(), Some(0), "{}", ok.stderr());
    let got = shop.received();
    assert_eq!(got.len(), 1);
    got[0].verify(SECRET).unwrap();
    assert_eq!(got[0].json()["type"], "test");

    shop.answer(500, None);
    let bad = app
        .command()
        .args(["deliveries", "test", "--endpoint", "shop"])
        .run();
    assert_eq!(bad.code(), Some(1));
    assert_eq!(bad.stderr().lines().count(), 1, "{}", bad.stderr());
    assert!(bad.stderr().contains("shop"), "{}", bad.stderr());
    assert!(!bad.stderr().contains("MfKQ9r8") && !bad.stdout().contains("MfKQ9r8"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_order_reference_is_kept_and_a_change_is_one_event() {
    let app = app_with(vec![]).await;
    let reg = app
        .command()
        .args(["register", "ch_3", STORE, "100", "--order", "A1"])
        .run();
    assert_eq!(reg.code(), Some(0), "{}", reg.stderr());
    let mut c = SimCharge::new("ch_3", STORE, 100);
    c.metadata = json!({"orderid": "12345"});
    app.sim.upsert(c);
    for _ in 0..2 {
        app.db()
            .execute(
                "UPDATE charges SET next_check_at = '2000-01-01T00:00:00.000Z'",
                [],
            )
            .unwrap();
        let once = app.command().once().run();
        assert_eq!(once.code(), Some(0), "{}", one_line(&once.stderr()));
    }
    let kept: String = app
        .db()
        .query_row("SELECT order_ref FROM charges", [], |r| r.get(0))
        .unwrap();
    assert_eq!(kept, "A1");
    assert_eq!(
        app.count("SELECT count(*) FROM charge_events WHERE kind = 'order_ref_changed'"),
        1
    );
    let detail: String = app
        .db()
        .query_row(
            "SELECT detail FROM charge_events WHERE kind = 'order_ref_changed'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        detail,
        r#"order reference changed from "A1" to "12345"; the first is kept"#
    );
    // Registering again with another reference is a conflict.
    let again = app
        .command()
        .args(["register", "ch_3", STORE, "100", "--order", "B2"])
        .run();
    assert_eq!(again.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_follow_prints_new_events_and_ends_on_sigterm() {
    let app = app_with(vec![]).await;
    let c = order(&app, "ch_4", "777");
    let mut follow = app.command().args(["events", "--follow"]).spawn();
    app.sim.upsert(c.awaiting("3333-4444", None));
    let once = app.command().once().run();
    assert_eq!(once.code(), Some(0), "{}", one_line(&once.stderr()));
    // The follower polls at most a second apart; give it a little more.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    follow.signal(libc::SIGTERM);
    let done = follow.finish(Duration::from_secs(10)).await;
    assert_eq!(done.code(), Some(0), "{}", done.stderr());
    let lines: Vec<serde_json::Value> = done
        .stdout()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{}", done.stdout());
    assert_eq!(lines[0]["type"], "charge.awaiting");
    assert_eq!(lines[0]["data"]["order_ref"], "777");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_delivers_a_payment_moments_after_the_pass_sees_it() {
    let shop = Receiver::start(200).await;
    let mut app = app_with(vec![endpoint("shop", &shop.url(), SECRET)]).await;
    app.reconfigure(|c| {
        c.schedule.cron = Some("* * * * * *".into());
        c.schedule.run_on_start = Some(true);
    });
    let c = order(&app, "ch_5", "12345").awaiting("20020-1", None);
    app.sim.upsert(c.clone());
    let mut daemon = app.command().spawn();
    crate::helpers::wait_until(Duration::from_secs(15), "the awaiting event", || {
        shop.received().len() == 1
    })
    .await;
    app.sim.upsert(c.paid());
    app.db()
        .execute(
            "UPDATE charges SET next_check_at = '2000-01-01T00:00:00.000Z'",
            [],
        )
        .unwrap();
    crate::helpers::wait_until(Duration::from_secs(15), "the paid event", || {
        shop.received().len() == 2
    })
    .await;
    daemon.signal(libc::SIGTERM);
    let done = daemon.finish(Duration::from_secs(20)).await;
    assert_eq!(done.code(), Some(0), "{}", one_line(&done.stderr()));
    let got = shop.received();
    let types: Vec<String> = got
        .iter()
        .map(|r| {
            r.verify(SECRET).unwrap();
            r.json()["type"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(types, ["charge.awaiting", "charge.paid"]);
    assert_eq!(got[1].json()["data"]["order_ref"], "12345");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_too_large_is_not_stored_and_said_once() {
    let app = app_with(vec![]).await;
    app.register("ch_6", 100);
    let mut c = SimCharge::new("ch_6", STORE, 100);
    c.metadata = json!({"orderid": "9", "note": "x".repeat(5000)});
    app.sim.upsert(c);
    for _ in 0..2 {
        app.db()
            .execute(
                "UPDATE charges SET next_check_at = '2000-01-01T00:00:00.000Z'",
                [],
            )
            .unwrap();
        let once = app.command().once().run();
        assert_eq!(once.code(), Some(0), "{}", one_line(&once.stderr()));
    }
    let (metadata, order_ref): (Option<String>, Option<String>) = app
        .db()
        .query_row("SELECT metadata, order_ref FROM charges", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(metadata, None);
    // The order reference is still taken from it.
    assert_eq!(order_ref.as_deref(), Some("9"));
    assert_eq!(
        app.count("SELECT count(*) FROM charge_events WHERE kind = 'error' AND detail LIKE 'metadata not stored: %'"),
        1
    );
}
