//! An endpoint that fails at once (answers 503, or refuses connections) for a while, on
//! a controlled clock: once it is down the delivery job sends it one delivery per probe
//! interval at most, not the whole due backlog as fast as it refuses; once a probe gets
//! a 2xx every waiting event goes at once, each once, in order per charge.

use std::net::SocketAddr;

use chrono::{DateTime, Duration, Utc};
use konbini_reconciler::delivery::Endpoint;
use konbini_reconciler::delivery::worker::sync;
use konbini_reconciler::reconcile::Clock;

use super::{Receiver, SECRET, app_with, endpoint, event_ids, order, taken};
use crate::helpers::TestApp;

const CHARGES: usize = 6;

/// `CHARGES` charges awaiting, then paid: two events each, the paid one behind the
/// awaiting one.
async fn backlog(app: &TestApp) {
    sync(&app.settings, true).await.unwrap();
    for i in 0..CHARGES {
        let c = order(app, &format!("ch_o{i}"), &format!("o{i}"));
        app.sim.upsert(c.awaiting(&format!("3000-{i}"), None));
    }
    assert_eq!(app.pass().await.counts.transitions, CHARGES as u64);
    for i in 0..CHARGES {
        let id = format!("ch_o{i}");
        let c = app.sim.charges().into_iter().find(|c| c.id == id).unwrap();
        app.sim.upsert(c.paid());
    }
    app.clock.advance(std::time::Duration::from_secs(3600));
    assert_eq!(app.pass().await.counts.transitions, CHARGES as u64);
}

/// Steps the endpoint as the daemon's loop does, at the times it asks for, until
/// `until`; returns the times of the steps that sent something.
async fn step_until(ep: &Endpoint, now: &mut DateTime<Utc>, until: DateTime<Utc>) -> Vec<i64> {
    let mut sent_at = Vec::new();
    for _ in 0..10_000 {
        let r = ep.step(*now).await.unwrap();
        if r.attempted() > 0 {
            sent_at.push(now.timestamp());
            continue;
        }
        match r.next_due {
            Some(next) if next <= until => *now = next.max(*now),
            _ => return sent_at,
        }
    }
    panic!("the endpoint never settled");
}

/// Attempts (`webhook-timestamp`, the step's simulated time) per probe interval.
fn busiest_interval(times: &[i64]) -> usize {
    times
        .iter()
        .map(|t| times.iter().filter(|u| **u >= *t && **u < t + 30).count())
        .max()
        .unwrap_or(0)
}

fn timestamps(shop: &Receiver) -> Vec<i64> {
    shop.received()
        .iter()
        .map(|r| r.header("webhook-timestamp").parse().unwrap())
        .collect()
}

/// Back: a few steps at the time it came back deliver everything, each once, in order
/// per charge.
async fn drains_at_once(app: &TestApp, ep: &Endpoint, shop: &Receiver, now: DateTime<Utc>) {
    let back = now;
    let mut steps = 0;
    let mut now = now;
    // The first step is the probe; then the backlog, `concurrency` heads of charges at once.
    while app.count("SELECT count(*) FROM deliveries WHERE delivered_at IS NULL") > 0 {
        steps += 1;
        assert!(steps <= 6, "still pending after {steps} steps");
        let r = ep.step(now).await.unwrap();
        if r.attempted() == 0 {
            now = r.next_due.expect("pending deliveries are due").max(now);
        }
    }
    assert!(
        now - back < Duration::seconds(31),
        "the backlog waited for its own retry times: {now} against {back}"
    );
    let (per_charge, delivered) = taken(shop, 204);
    let all = event_ids(app);
    assert_eq!(all.len(), 2 * CHARGES);
    assert_eq!(delivered, all, "each event delivered exactly once");
    assert_eq!(per_charge.len(), CHARGES);
    for (charge, ids) in &per_charge {
        assert_eq!(ids.len(), 2, "{charge}");
        assert!(ids[0] < ids[1], "{charge}: {ids:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_answering_503_is_probed_once_per_interval_and_drained_when_back() {
    let shop = Receiver::start(503).await;
    let app = app_with(vec![endpoint("shop", &shop.url(), SECRET)]).await;
    backlog(&app).await;
    let ep = Endpoint::open(app.settings.delivery[0].clone(), &app.settings)
        .await
        .unwrap();
    let start = app.clock.now();
    let mut now = start;
    step_until(&ep, &mut now, start + Duration::minutes(40)).await;

    let down = shop.received();
    assert!(down.iter().all(|r| r.answered == 503));
    let times = timestamps(&shop);
    // The first step tries each charge's head once and finds the endpoint down; from
    // then on one attempt per probe interval at most.
    let first: Vec<i64> = times
        .iter()
        .copied()
        .filter(|t| *t == start.timestamp())
        .collect();
    assert_eq!(first.len(), CHARGES, "{times:?}");
    let later: Vec<i64> = times
        .iter()
        .copied()
        .filter(|t| *t > start.timestamp())
        .collect();
    assert_eq!(busiest_interval(&later), 1, "{later:?}");
    // Probing goes on: about one every 30 s for 40 minutes.
    assert!(later.len() >= 70 && later.len() <= 80, "{}", later.len());
    // Only the probe (the oldest pending delivery) was tried again; the others were not.
    let tried_again: std::collections::BTreeSet<&str> = down
        .iter()
        .filter(|r| r.header("webhook-timestamp") != start.timestamp().to_string())
        .map(|r| r.header("webhook-id"))
        .collect();
    assert_eq!(tried_again.len(), 1, "{tried_again:?}");
    assert_eq!(
        app.count("SELECT count(*) FROM deliveries WHERE attempts > 1 AND delivered_at IS NULL"),
        1
    );
    assert_eq!(
        app.count("SELECT count(*) FROM deliveries WHERE attempts = 0"),
        CHARGES as i64,
        "the paid events waited behind their charges' awaiting ones"
    );

    // A Retry-After spaces the probes further (up to an hour).
    shop.answer(503, Some("600"));
    let before = timestamps(&shop).len();
    let from = now;
    step_until(&ep, &mut now, from + Duration::minutes(40)).await;
    let slow: Vec<i64> = timestamps(&shop)[before..].to_vec();
    assert!(slow.len() <= 5, "{slow:?}");
    assert!(slow.windows(2).all(|w| w[1] - w[0] >= 600), "{slow:?}");

    shop.answer(204, None);
    let probe = ep.step(now).await.unwrap().next_due.unwrap();
    drains_at_once(&app, &ep, &shop, probe.max(now)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_refusing_connections_is_probed_once_per_interval_and_drained_when_back() {
    // A port nobody listens on: connections are refused.
    let addr: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let url = format!("http://{addr}/hooks/konbini");
    let app = app_with(vec![endpoint("shop", &url, SECRET)]).await;
    backlog(&app).await;
    let ep = Endpoint::open(app.settings.delivery[0].clone(), &app.settings)
        .await
        .unwrap();
    let start = app.clock.now();
    let mut now = start;
    let sent_at = step_until(&ep, &mut now, start + Duration::minutes(20)).await;
    assert_eq!(sent_at[0], start.timestamp());
    assert_eq!(busiest_interval(&sent_at[1..]), 1, "{sent_at:?}");
    assert!(sent_at.len() <= 2 + 20 * 2, "{sent_at:?}");
    // 6 attempts in the first step, then one per probe.
    assert_eq!(
        app.count("SELECT coalesce(sum(attempts), 0) FROM deliveries"),
        CHARGES as i64 + sent_at.len() as i64 - 1
    );

    let shop = Receiver::start_at(addr, 204).await;
    drains_at_once(&app, &ep, &shop, now + Duration::seconds(30)).await;
}
