//! The foreground helper: the shop's own charge GETs, sharing the route bucket.

mod common;

use std::time::{Duration, Instant};

use common::*;
use univapay_sim::{Credentials, Foreground, ForegroundConfig, RateLimitConfig, SimConfig};

#[tokio::test]
async fn overspending_a_small_bucket_is_counted_as_429s() {
    // A burst of 5, then one request a second: 30 requests in about 0.3 s mostly meet an
    // empty bucket.
    let sim = start_still(SimConfig {
        rate_limit: Some(RateLimitConfig::new(5, 60)),
        ..SimConfig::default()
    })
    .await;
    let ids: Vec<String> = (0..3)
        .map(|_| sim.create_konbini_charge(STORE, 100, "lawson").id)
        .collect();
    let mut cfg = ForegroundConfig::new(sim.base_url(), &Credentials::default(), STORE, ids, 6000);
    cfg.max_requests = 30;
    let started = Instant::now();
    let stats = Foreground::spawn_with(cfg).finished().await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(stats.sent, 30);
    assert_eq!(stats.ok + stats.rate_limited, 30, "{stats:?}");
    assert!((5..=6).contains(&stats.ok), "{stats:?}");
    assert_eq!(stats.last_remaining_route, Some(0));
    assert_eq!((stats.errors, stats.other_status), (0, 0));
    let c = sim.counters();
    assert_eq!((c.requests, c.rate_limited), (30, stats.rate_limited));
}

#[tokio::test]
async fn stopping_waits_for_answers_and_sends_nothing_more() {
    let sim = start_still(SimConfig::default()).await;
    let id = sim.create_konbini_charge(STORE, 100, "lawson").id;
    let fg = Foreground::spawn(
        sim.base_url(),
        &Credentials::default(),
        STORE,
        vec![id],
        1200,
    );
    tokio::time::sleep(Duration::from_millis(220)).await;
    let stats = fg.stop().await;
    // About five ticks (one every 50 ms); a loaded machine may skip some.
    assert!((1..=7).contains(&stats.sent), "{stats:?}");
    assert_eq!(stats.ok, stats.sent);
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(sim.counters().requests, stats.sent);
}

#[tokio::test]
async fn it_is_bounded_in_time() {
    let sim = start_still(SimConfig::default()).await;
    let id = sim.create_konbini_charge(STORE, 100, "lawson").id;
    let mut cfg = ForegroundConfig::new(
        sim.base_url(),
        &Credentials::default(),
        STORE,
        vec![id],
        600,
    );
    cfg.max_duration = Duration::from_millis(250);
    let stats = Foreground::spawn_with(cfg).finished().await;
    // Ticks at 0, 100 and 200 ms, then the bound.
    assert!((1..=4).contains(&stats.sent), "{stats:?}");
    // Wrong credentials are answered, and counted as other statuses.
    let wrong = Credentials {
        secret: "nope".into(),
        ..Credentials::default()
    };
    let mut cfg = ForegroundConfig::new(sim.base_url(), &wrong, STORE, vec!["x".into()], 6000);
    cfg.max_requests = 3;
    let stats = Foreground::spawn_with(cfg).finished().await;
    assert_eq!((stats.sent, stats.other_status), (3, 3));
}
