//! The public listener hardened, through the real daemon: `/metrics` off the webhook port
//! unless a bearer token is set, its own listener, served from memory; hints coalesced in
//! the ledger; a small budget for charges the ledger lacks; any event naming a charge is a
//! hint; duplicated keys refused; idle connections make room.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::net::TcpStream;
use univapay_sim::SimCharge;

use super::http::{Daemon, NEVER, PATH, TOKEN, free_port, get, post, send};
use crate::config::TestConfig;
use crate::helpers::{STORE, TestApp, wait_until};
use crate::util::TestCommand;

const METRICS_TOKEN: &str = "metrics-0123456789abcdef";
async fn app(edit: impl FnOnce(TestConfig) -> TestConfig) -> (TestApp, SocketAddr) {
    let addr = free_port();
    let app = TestApp::spawn_with(|c| {
        c.schedule.cron = Some(NEVER.into());
        c.schedule.run_on_start = Some(false);
        c.schedule.drain_timeout = Some(Duration::from_secs(2));
        let t = std::mem::take(c)
            .set("webhook.auth_token", TOKEN)
            .set("webhook.listen", addr.to_string());
        *c = edit(t);
    })
    .await;
    (app, addr)
}

fn forged(event: &str, id: &str) -> String {
    json!({"event": event, "data": {"id": id, "store_id": STORE, "status": "successful"}})
        .to_string()
}

/// A charge `awaiting` at UnivaPay and in the ledger.
async fn awaiting(app: &TestApp, id: &str) {
    app.create(id, 1500);
    app.sim.update(id, |c| c.awaiting("7012-3456", None));
    app.pass().await;
    assert_eq!(app.row(id).state, "awaiting");
}

fn webhook_details(app: &TestApp, id: &str) -> Vec<String> {
    app.events(id)
        .into_iter()
        .filter(|e| e.kind == "webhook")
        .map(|e| e.detail.unwrap_or_default())
        .collect()
}

/// The value of one sample line (`name{labels} value`) in a Prometheus text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

// ---- /metrics --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_not_on_the_webhook_port_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let textfile = dir.path().join("k.prom");
    let (app, addr) = app(|c| c.set("metrics.textfile", textfile.display().to_string())).await;
    let daemon = Daemon::start(&app, addr).await;
    let r = send(addr, get("/metrics", None)).await;
    assert_eq!(r.status, 404, "{r:?}");
    assert!(!r.body.contains("konbini_"), "{}", r.body);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_on_the_webhook_port_ask_for_the_bearer_token() {
    let (app, addr) = app(|c| c.set("metrics.auth_token", METRICS_TOKEN)).await;
    app.register("c1", 700);
    let daemon = Daemon::start(&app, addr).await;
    let none = send(addr, get("/metrics", None)).await;
    assert_eq!(none.status, 401, "{none:?}");
    assert!(
        none.head.contains("www-authenticate: Bearer"),
        "{}",
        none.head
    );
    for wrong in [
        METRICS_TOKEN.to_owned(),
        format!("Bearer {METRICS_TOKEN}x"),
        format!("bearer {METRICS_TOKEN}"),
        TOKEN.to_owned(),
    ] {
        let r = send(addr, get("/metrics", Some(&wrong))).await;
        assert_eq!(r.status, 401, "{wrong}: {r:?}");
    }
    let bearer = format!("Bearer {METRICS_TOKEN}");
    let mut ok = send(addr, get("/metrics", Some(&bearer))).await;
    for _ in 0..100 {
        if ok.status != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        ok = send(addr, get("/metrics", Some(&bearer))).await;
    }
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(
        sample(&ok.body, "konbini_charges{state=\"pending\"}"),
        Some(1.0),
        "{}",
        ok.body
    );
    let out = daemon.stop().await;
    assert!(
        !out.stderr().contains(METRICS_TOKEN),
        "the token is never logged"
    );
}

/// `metrics.listen` serves `/metrics` on its own address, from memory: 200 concurrent
/// scrapers for a while cost at most the refreshes of the clock (one every 5 s), and the
/// figures change only with a refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_listener_serves_a_cached_snapshot() {
    let metrics = free_port();
    let port_only = format!(":{}", metrics.port());
    let (app, addr) = app(|c| c.set("metrics.listen", port_only)).await;
    app.register("c1", 700);
    let daemon = Daemon::start(&app, addr).await;
    assert_eq!(send(addr, get("/metrics", None)).await.status, 404);
    let first = loop {
        let r = send(metrics, get("/metrics", None)).await;
        if r.status == 200 {
            break r;
        }
        assert_eq!(r.status, 503, "{r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let refreshes = |t: &str| sample(t, "konbini_metrics_refreshes_total{result=\"ok\"}");
    let before = refreshes(&first.body).expect("the refresh counter");
    assert_eq!(send(metrics, get("/healthz", None)).await.status, 404);
    assert_eq!(send(metrics, get("/other", None)).await.status, 404);

    // A charge registered now shows only after a refresh: scrapes read no ledger.
    app.register("c2", 800);
    let started = Instant::now();
    let scrapers = (0..200).map(|_| async move {
        let mut seen = Vec::new();
        while started.elapsed() < Duration::from_secs(2) {
            let r = send(metrics, get("/metrics", None)).await;
            assert_eq!(r.status, 200);
            seen.push((
                refreshes(&r.body),
                sample(&r.body, "konbini_charges{state=\"pending\"}"),
            ));
        }
        seen
    });
    let seen: Vec<_> = futures::future::join_all(scrapers)
        .await
        .into_iter()
        .flatten()
        .collect();
    let elapsed = started.elapsed().as_secs_f64();
    assert!(seen.len() >= 200, "{} scrapes", seen.len());
    let most = seen.iter().filter_map(|s| s.0).fold(0.0, f64::max);
    assert!(
        most - before <= (elapsed / 5.0).ceil() + 1.0,
        "{} scrapes in {elapsed:.1} s made {} refreshes",
        seen.len(),
        most - before
    );
    for (r, pending) in &seen {
        if *r == Some(before) {
            assert_eq!(*pending, Some(1.0), "same refresh, same figures");
        }
    }
    daemon.stop().await;
}

#[tokio::test]
async fn metrics_keys_are_checked_at_start() {
    let (app, _) = app(|c| c).await;
    let run = |c: TestConfig| {
        let path = app.dir.path().join("bad.toml");
        c.write(&path);
        let mut cmd = TestCommand::new(app.dir.path());
        cmd.config(&path);
        cmd.run()
    };
    run(app.config.clone().set("metrics.listen", "somewhere"))
        .assert_fatal(&["metrics.listen", "somewhere"]);
    let line = run(app.config.clone().set("metrics.auth_token", "short-one"))
        .assert_fatal(&["metrics.auth_token", "at least 16"]);
    assert!(!line.contains("short-one"));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let at = taken.local_addr().unwrap().to_string();
    run(app.config.clone().set("metrics.listen", at.as_str())).assert_fatal(&[
        "metrics.listen",
        &at,
        "cannot listen",
    ]);
}

// ---- hints in the ledger ---------------------------------------------------------------

/// A flood of hints for one charge: one `webhook` row per GET, naming how many hints it
/// served. (The probe's figure, 1,000 hints/s for 20 s, is measured by hand; this runs a
/// few seconds of it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_hints_for_one_charge_adds_a_row_per_get() {
    let (app, addr) = app(|c| c).await;
    awaiting(&app, "flood").await;
    let daemon = Daemon::start(&app, addr).await;
    let gets = app.sim.requests_for("flood");
    let hint = forged("charge_updated", "flood");
    let started = Instant::now();
    let senders = (0..16).map(|_| {
        let hint = hint.clone();
        async move {
            let mut ok = 0u64;
            while started.elapsed() < Duration::from_secs(4) {
                if send(addr, post(PATH, Some(TOKEN.as_bytes()), hint.as_bytes()))
                    .await
                    .status
                    == 200
                {
                    ok += 1;
                }
            }
            ok
        }
    });
    let sent: u64 = futures::future::join_all(senders).await.iter().sum();
    let secs = started.elapsed().as_secs_f64();
    assert!(sent >= 500, "only {sent} hints in {secs:.1} s");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let rows = webhook_details(&app, "flood");
    let gets = app.sim.requests_for("flood") - gets;
    assert!(
        rows.len() as f64 <= secs + 3.0,
        "{sent} hints in {secs:.1} s: {} rows",
        rows.len()
    );
    assert_eq!(rows.len() as u64, gets, "one row per GET: {rows:?}");
    let counted: u64 = rows
        .iter()
        .map(|d| {
            let n = d.strip_prefix("charge_updated x").expect(d);
            n.parse::<u64>().unwrap()
        })
        .sum();
    assert_eq!(counted, sent, "every hint is counted in a row");
    daemon.stop().await;
}

/// Hints for a final charge cost no GET and at most one row a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_for_a_final_charge_write_one_row_a_minute() {
    let (app, addr) = app(|c| c).await;
    app.create("done", 500);
    app.sim.update("done", SimCharge::paid);
    app.pass().await;
    let daemon = Daemon::start(&app, addr).await;
    let requests = app.sim.counters().requests;
    for _ in 0..50 {
        assert_eq!(
            daemon.hook(&forged("charge_finished", "done")).await.status,
            200
        );
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let rows = webhook_details(&app, "done");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0].starts_with("charge_finished x"), "{rows:?}");
    assert_eq!(app.sim.counters().requests, requests, "no GET");
    daemon.stop().await;
}

/// `cancel_finished` names its charge in `data.charge_id`: a hint like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_finished_is_a_hint() {
    let (app, addr) = app(|c| c).await;
    awaiting(&app, "cx").await;
    let daemon = Daemon::start(&app, addr).await;
    app.sim.cancel("cx").unwrap();
    let body = json!({"event": "cancel_finished", "data": {
        "id": "11ef0000-cancel-0001", "charge_id": "cx", "store_id": STORE,
        "status": "successful"}})
    .to_string();
    let sent = Instant::now();
    assert_eq!(daemon.hook(&body).await.status, 200);
    wait_until(Duration::from_secs(3), "the charge is failed", || {
        app.row("cx").state == "failed"
    })
    .await;
    assert!(sent.elapsed() < Duration::from_secs(3));
    assert_eq!(app.row("cx").provider_status.as_deref(), Some("canceled"));
    assert_eq!(webhook_details(&app, "cx"), ["cancel_finished x1"]);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicated_charge_id_key_is_refused() {
    let (app, addr) = app(|c| c).await;
    awaiting(&app, "d1").await;
    awaiting(&app, "d2").await;
    let daemon = Daemon::start(&app, addr).await;
    let requests = app.sim.counters().requests;
    for body in [
        format!(
            r#"{{"event":"charge_updated","data":{{"id":"d1","id":"d2","store_id":"{STORE}"}}}}"#
        ),
        format!(
            r#"{{"event":"cancel_finished","data":{{"charge_id":"d1","charge_id":"d2","store_id":"{STORE}"}}}}"#
        ),
        format!(
            r#"{{"event":"charge_updated","data":{{"id":"d1","store_id":"{STORE}","store_id":"x"}}}}"#
        ),
    ] {
        let r = daemon.hook(&body).await;
        assert_eq!(r.status, 400, "{body}: {r:?}");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(app.sim.counters().requests, requests, "no GET");
    assert!(webhook_details(&app, "d1").is_empty());
    assert!(webhook_details(&app, "d2").is_empty());
    daemon.stop().await;
}

// ---- charges the ledger lacks -----------------------------------------------------------

/// Thousands of distinct unknown ids cost a bounded number of GETs (a small bucket of
/// their own), repeats of one cost nothing, and the ledger's own charges are checked as
/// usual meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_charges_have_a_small_budget_of_their_own() {
    let (app, addr) = app(|c| {
        c.set("discovery.stores", vec![STORE])
            .set("discovery.interval", "1h")
    })
    .await;
    awaiting(&app, "mine").await;
    let daemon = Daemon::start(&app, addr).await;
    // Let the start-up sweep finish first.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // One unknown id alone, while the bucket is full: it is verified (found absent) and
    // remembered, which the end of the test relies on. In the flood, which of the first
    // ids of eight senders win the burst is a race.
    let before = app.sim.counters().not_found;
    let r = send(
        addr,
        post(
            PATH,
            Some(TOKEN.as_bytes()),
            forged("charge_updated", "unk-first").as_bytes(),
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    wait_until(
        Duration::from_secs(3),
        "the lone unknown id verified",
        || app.sim.counters().not_found > before,
    )
    .await;
    let not_found = app.sim.counters().not_found;
    let started = Instant::now();
    let flood = (0..8).map(|t| async move {
        let mut n = 0;
        while started.elapsed() < Duration::from_secs(4) {
            let id = format!("unk-{t}-{n}");
            let r = send(
                addr,
                post(
                    PATH,
                    Some(TOKEN.as_bytes()),
                    forged("charge_updated", &id).as_bytes(),
                ),
            )
            .await;
            assert_eq!(r.status, 200);
            n += 1;
        }
        n
    });
    let own = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        app.sim.update("mine", SimCharge::paid);
        let sent = Instant::now();
        let r = send(
            addr,
            post(
                PATH,
                Some(TOKEN.as_bytes()),
                forged("charge_finished", "mine").as_bytes(),
            ),
        )
        .await;
        assert_eq!(r.status, 200);
        wait_until(
            Duration::from_secs(3),
            "the ledger's charge checked",
            || app.row("mine").state == "successful",
        )
        .await;
        sent.elapsed()
    };
    let (counts, took) = tokio::join!(futures::future::join_all(flood), own);
    let unknown: u64 = counts.iter().sum();
    let secs = started.elapsed().as_secs_f64();
    assert!(unknown >= 1000, "only {unknown} unknown ids in {secs:.1} s");
    assert!(took < Duration::from_secs(3), "{took:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let gets = app.sim.counters().not_found - not_found;
    // 0.5 a second in bursts of 5 at the default budget share.
    let bound = 5.0 + 0.5 * (secs + 0.5) + 1.0;
    assert!(
        gets as f64 <= bound,
        "{unknown} unknown ids in {secs:.1} s: {gets} GETs (bound {bound:.1})"
    );
    assert!(gets >= 1, "some are verified");
    // The same unknown id again, many times: no more GETs (found absent already).
    let again = app.sim.counters().not_found;
    for _ in 0..20 {
        send(
            addr,
            post(
                PATH,
                Some(TOKEN.as_bytes()),
                forged("charge_updated", "unk-first").as_bytes(),
            ),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.sim.counters().not_found, again);
    daemon.stop().await;
}

// ---- connections -----------------------------------------------------------------------

/// A thousand clients that connect and send nothing do not keep UnivaPay out: its
/// webhook is answered within about a second (it gives up after 3 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_do_not_delay_a_real_webhook() {
    let (app, addr) = app(|c| c).await;
    awaiting(&app, "c1").await;
    let daemon = Daemon::start(&app, addr).await;
    let attempts = (0..1000).map(|_| async move {
        tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(addr))
            .await
            .ok()
            .and_then(Result::ok)
    });
    let held: Vec<TcpStream> = futures::future::join_all(attempts)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert!(held.len() >= 300, "only {} idle connections", held.len());
    let mut worst = Duration::ZERO;
    for _ in 0..3 {
        let sent = Instant::now();
        let r = daemon.hook(&forged("charge_updated", "c1")).await;
        assert_eq!(r.status, 200, "{r:?}");
        worst = worst.max(sent.elapsed());
    }
    assert!(
        worst < Duration::from_millis(1200),
        "{} idle connections delayed a webhook {worst:?}",
        held.len()
    );
    drop(held);
    daemon.stop().await;
}
