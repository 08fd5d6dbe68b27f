//! Pacing end to end: real passes against the simulator's token bucket. (The algorithm
//! itself is tested with paused time in `univapay::pacer`.)

use std::time::{Duration, Instant};

use univapay_sim::{RateLimitConfig, Reply};

use crate::helpers::TestApp;

fn limit(burst: u32, per_minute: u32) -> Option<RateLimitConfig> {
    Some(RateLimitConfig::new(burst, per_minute))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pass_against_a_small_bucket_meets_no_429() {
    // The whole budget is ours here (no one else spends it): the timing below is the
    // bucket's.
    let app = TestApp::spawn_with(|c| {
        c.api.concurrency = Some(8);
        *c = std::mem::take(c).set("api.budget_share", 1.0);
    })
    .await;
    app.sim.configure(|c| c.rate_limit = limit(5, 1200));
    for i in 0..60 {
        app.create(&format!("c{i:02}"), 100);
    }
    // Registering 60 charges can take longer than the clock's one-second lead on a loaded
    // machine; the last ones would then not be due yet.
    app.clock.advance(Duration::from_secs(60));
    let started = Instant::now();
    let r = app.pass().await;
    let elapsed = started.elapsed();
    assert_eq!(r.counts.checked, 60);
    assert_eq!(r.counts.errors, 0);
    let c = app.sim.counters();
    assert_eq!(c.rate_limited, 0, "{c:?}");
    assert_eq!(c.requests, 60);
    // 20 per second after the burst of 5: about 2.75 s, and not much more.
    assert!(elapsed >= Duration::from_millis(2500), "{elapsed:?}");
    assert!(elapsed <= Duration::from_millis(4500), "{elapsed:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forced_429_with_retry_after_pauses_the_whole_client() {
    let app = TestApp::spawn_with(|c| c.api.concurrency = Some(1)).await;
    for id in ["a", "b", "c"] {
        app.create(id, 100);
    }
    app.sim.push_reply(
        "a",
        Reply::WithHeaders {
            status: 429,
            body: String::new(),
            headers: vec![("Retry-After".into(), "2".into())],
        },
    );
    let started = Instant::now();
    let r = app.pass().await;
    let elapsed = started.elapsed();
    assert_eq!(r.counts.checked, 3);
    assert!(
        elapsed >= Duration::from_secs(2),
        "b and c waited out Retry-After: {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    let row = app.row("a");
    assert_eq!(row.state, "pending");
    assert!(row.last_error.unwrap().contains("429"));
    assert!(app.row("b").last_error.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bucket_drained_by_someone_else_costs_one_429_then_paces() {
    let app = TestApp::spawn_with(|c| c.api.concurrency = Some(8)).await;
    app.sim.configure(|c| {
        c.rate_limit = Some(RateLimitConfig {
            retry_after: true,
            ..RateLimitConfig::new(3, 600)
        })
    });
    for i in 0..8 {
        app.create(&format!("c{i}"), 100);
    }
    // Another program with the same credentials empties the bucket first.
    let http = reqwest::Client::new();
    let creds = univapay_sim::Credentials::default();
    for _ in 0..3 {
        let s = http
            .get(format!(
                "{}/stores/{}/charges/c0",
                app.sim.base_url(),
                crate::helpers::STORE
            ))
            .header(
                "Authorization",
                format!("Bearer {}.{}", creds.secret, creds.app_token),
            )
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(s, 200);
    }
    let before = app.sim.counters().rate_limited;
    let r = app.pass().await;
    assert_eq!(r.counts.checked, 8);
    assert_eq!(
        app.sim.counters().rate_limited - before,
        1,
        "the first 429 paused everything, and the pacer kept within the refill after"
    );
    assert_eq!(r.counts.errors, 1, "only the charge that met the 429");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_configured_cap_holds_below_what_the_server_allows() {
    let app = TestApp::spawn_with(|c| {
        c.api.concurrency = Some(8);
        c.api.max_requests_per_minute = Some(600);
    })
    .await;
    for i in 0..11 {
        app.create(&format!("c{i:02}"), 100);
    }
    let started = Instant::now();
    let r = app.pass().await;
    assert_eq!(r.counts.checked, 11);
    // One every 100 ms: the eleventh goes a second after the first.
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(app.sim.counters().rate_limited, 0);
}
