//! An endpoint down for a simulated day, then back: the delivery job driven step by step
//! on a controlled clock (no sleeping through the retry schedule), with passes going on
//! meanwhile. Everything arrives, each event once with a 2xx, in order per charge.

use std::time::Duration;

use chrono::{DateTime, Utc};
use konbini_reconciler::delivery::Endpoint;
use konbini_reconciler::delivery::worker::sync;
use konbini_reconciler::reconcile::Clock;

use super::{Receiver, SECRET, app_with, endpoint, event_ids, order, taken};
use crate::helpers::TestApp;

const DAY: Duration = Duration::from_secs(86_400);

/// Steps the endpoint at the times it asks for until `until` or until nothing is
/// pending; returns the time reached.
async fn step_until(ep: &Endpoint, mut now: DateTime<Utc>, until: DateTime<Utc>) -> DateTime<Utc> {
    for _ in 0..10_000 {
        let r = ep.step(now).await.unwrap();
        let Some(next) = r.next_due else { return now };
        if r.attempted() == 0 {
            if next > until {
                return now;
            }
            now = next.max(now);
        }
    }
    panic!("the endpoint never settled");
}

fn pay(app: &TestApp, id: &str) {
    let c = app.sim.charges().into_iter().find(|c| c.id == id).unwrap();
    app.sim.upsert(c.paid());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_down_for_a_day_gets_everything_in_order_once_it_returns() {
    let shop = Receiver::start(503).await;
    let app = app_with(vec![endpoint("shop", &shop.url(), SECRET)]).await;
    sync(&app.settings, true).await.unwrap();
    for i in 0..4 {
        let c = order(&app, &format!("ch_d{i}"), &format!("{i}"));
        app.sim.upsert(c.awaiting(&format!("1000-{i}"), None));
    }
    assert_eq!(app.pass().await.counts.transitions, 4);
    let ep = Endpoint::open(app.settings.delivery[0].clone(), &app.settings)
        .await
        .unwrap();
    let start = app.clock.now();
    let mut now = step_until(&ep, start, start + chrono::Duration::hours(6)).await;

    // Meanwhile the charges are paid and a new one appears: passes go on as usual.
    for i in 0..4 {
        pay(&app, &format!("ch_d{i}"));
    }
    let late = order(&app, "ch_late", "late");
    app.sim.upsert(late.awaiting("2000-1", None).paid());
    app.clock.advance(Duration::from_secs(6 * 3600));
    let pass = app.pass().await;
    assert_eq!((pass.counts.checked, pass.counts.transitions), (5, 5));
    now = step_until(
        &ep,
        now.max(app.clock.now()),
        start + chrono::Duration::from_std(DAY).unwrap(),
    )
    .await;

    let down = shop.received();
    assert!(down.iter().all(|r| r.answered == 503));
    // Only the oldest event of each charge was tried while it failed: the paid events
    // waited behind their awaiting ones. The first step found the endpoint down; from
    // then on it was probed with its oldest pending delivery alone, so the late charge's
    // event was never tried.
    let tried: std::collections::BTreeSet<String> = down
        .iter()
        .map(|r| r.header("webhook-id").to_owned())
        .collect();
    assert_eq!(tried.len(), 4, "{tried:?}");
    // One probe every 30 s for a day, not more.
    assert!(
        down.len() > 4 + 2000 && down.len() <= 4 + 2 * 2880,
        "{} attempts",
        down.len()
    );

    // Back: the probe's 2xx makes everything due, sent at once, in order per charge.
    shop.answer(200, None);
    let back = now + chrono::Duration::hours(13);
    step_until(&ep, now, back).await;
    assert_eq!(
        app.count("SELECT count(*) FROM deliveries WHERE delivered_at IS NULL"),
        0
    );

    let verifier = standardwebhooks::Webhook::new(SECRET).unwrap();
    for r in shop.received().iter().filter(|r| r.answered == 200) {
        let ts: i64 = r.header("webhook-timestamp").parse().unwrap();
        let want = verifier
            .sign(r.header("webhook-id"), ts, r.body.as_bytes())
            .unwrap();
        assert_eq!(r.header("webhook-signature"), want);
    }
    let (per_charge, delivered) = taken(&shop, 200);
    let all = event_ids(&app);
    // 4 awaiting and 4 paid, and the late charge seen paid at once.
    assert_eq!(all.len(), 9);
    assert_eq!(delivered, all, "each event delivered exactly once");
    for (charge, ids) in &per_charge {
        assert_eq!(
            ids.len(),
            if charge == "ch_late" { 1 } else { 2 },
            "{charge}"
        );
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{charge}: {ids:?}");
    }
}
