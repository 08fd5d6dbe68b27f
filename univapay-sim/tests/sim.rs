//! The simulator's own behaviour over real HTTP on 127.0.0.1: auth, the konbini lifecycle
//! on simulated time, the bucket and its headers, latency, injected faults, counters, and
//! the standalone binary.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use univapay_sim::{
    CounterSnapshot, Credentials, Faults, Outcome, Population, RateLimitConfig, RunningSim, Sim,
    SimCharge, SimConfig,
};

const STORE: &str = "11ef0000-0000-0000-0000-000000000001";

fn auth() -> String {
    let c = Credentials::default();
    format!("Bearer {}.{}", c.secret, c.app_token)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

async fn get(sim: &RunningSim, store: &str, id: &str) -> reqwest::Response {
    client()
        .get(format!("{}/stores/{store}/charges/{id}", sim.base_url()))
        .header("Authorization", auth())
        .send()
        .await
        .unwrap()
}

fn header(r: &reqwest::Response, name: &str) -> Option<u64> {
    r.headers().get(name)?.to_str().ok()?.parse().ok()
}

async fn start(config: SimConfig) -> RunningSim {
    Sim::start_with(Credentials::default(), config)
        .await
        .unwrap()
}

#[tokio::test]
async fn checks_the_authorization_header_like_univapay() {
    let sim = Sim::start(Credentials::default()).await.unwrap();
    sim.upsert(SimCharge::new("c1", STORE, 500));
    let url = format!("{}/stores/{STORE}/charges/c1", sim.base_url());
    let r = client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(header(&r, "x-remaining-requests-route").is_some());
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "AUTH_HEADER_MISSING");
    assert_eq!(body["status"], "error");
    let r = client()
        .get(&url)
        .header("Authorization", "Bearer sim-secret.wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "INVALID_CREDENTIALS"
    );
    let r = get(&sim, STORE, "c1").await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["id"], "c1");
    assert_eq!(body["requested_amount"], 500);
    assert_eq!(body["requested_currency"], "JPY");
    assert_eq!(body["charged_amount"], Value::Null);
    assert_eq!(sim.counters().unauthorized, 2);
    assert_eq!(sim.counters().ok, 1);
    // Another store's path does not find it.
    assert_eq!(get(&sim, "other-store", "c1").await.status(), 404);
}

#[tokio::test]
async fn seeded_charges_live_on_simulated_time() {
    let sim = Sim::start(Credentials::default()).await.unwrap();
    sim.clock().set_scale(0.0);
    let mut p = Population::new(300, 11);
    p.spread = Duration::ZERO;
    let p = sim.seed(p);
    // Seeded "just now": every charge is pending, with no payment number yet.
    for i in [0, 150, 299] {
        let plan = p.plan(i);
        let body: Value = get(&sim, &plan.store_id, &plan.id)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(body["status"], "pending", "{body}");
        assert_eq!(body["requested_amount"], plan.amount);
        assert!(body["metadata"]["internal_convenience_payment_number"].is_null());
    }
    sim.advance(Duration::from_secs(60));
    let plan = p.plan(7);
    let body: Value = get(&sim, &plan.store_id, &plan.id)
        .await
        .json()
        .await
        .unwrap();
    if plan.final_at > p.epoch + chrono::Duration::seconds(60) {
        assert_eq!(body["status"], "awaiting");
    }
    assert_eq!(
        body["metadata"]["internal_convenience_payment_number"],
        plan.payment_number.as_str()
    );
    // Past every deadline, every charge is final, as its plan says.
    sim.advance(p.expiry + Duration::from_secs(1));
    let mut seen = std::collections::HashSet::new();
    for i in 0..p.count {
        let plan = p.plan(i);
        let body: Value = get(&sim, &plan.store_id, &plan.id)
            .await
            .json()
            .await
            .unwrap();
        let status = body["status"].as_str().unwrap().to_owned();
        match plan.outcome {
            Outcome::Paid => {
                assert_eq!(status, "successful");
                assert_eq!(body["charged_amount"], plan.amount);
            }
            Outcome::Underpaid => assert!(body["charged_amount"].as_i64() < Some(plan.amount)),
            Outcome::ForeignCurrency => assert_eq!(body["charged_currency"], "USD"),
            Outcome::Expired => {
                assert_eq!(status, "failed");
                assert_eq!(body["error"]["code"], 323);
            }
            Outcome::Canceled => assert_eq!(status, "canceled"),
        }
        seen.insert(status);
    }
    assert!(seen.len() >= 3, "a mix of endings: {seen:?}");
    // Unknown ids of the population's shape are 404, and a removed one too.
    assert_eq!(get(&sim, STORE, &p.charge_id(300)).await.status(), 404);
    let plan = p.plan(3);
    sim.remove(&plan.id);
    assert_eq!(get(&sim, &plan.store_id, &plan.id).await.status(), 404);
}

#[tokio::test]
async fn bucket_headers_and_429_with_an_empty_body() {
    let sim = start(SimConfig {
        rate_limit: Some(RateLimitConfig::new(3, 60)),
        ..SimConfig::default()
    })
    .await;
    for i in 0..4 {
        sim.upsert(SimCharge::new(format!("c{i}"), STORE, 100));
    }
    let mut remaining = vec![];
    for i in 0..3 {
        let r = get(&sim, STORE, &format!("c{i}")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-requests-per-minute-route"), Some(60));
        assert_eq!(header(&r, "x-requests-per-minute-exact"), Some(60));
        assert_eq!(header(&r, "x-remaining-requests-exact"), Some(2));
        remaining.push(header(&r, "x-remaining-requests-route").unwrap());
    }
    assert_eq!(remaining, [2, 1, 0]);
    let r = get(&sim, STORE, "c3").await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "x-remaining-requests-route"), Some(0));
    assert!(
        r.headers().get("retry-after").is_none(),
        "undocumented: off by default"
    );
    assert_eq!(r.bytes().await.unwrap().len(), 0, "empty body");
    assert_eq!(sim.counters().rate_limited, 1);
    // 60/min is one token a second: slow enough that a loaded machine does not refill
    // the bucket between the requests above.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(&sim, STORE, "c3").await.status(), 200);

    sim.configure(|c| {
        c.rate_limit = Some(RateLimitConfig {
            retry_after: true,
            ..RateLimitConfig::new(1, 6)
        })
    });
    assert_eq!(get(&sim, STORE, "c0").await.status(), 200);
    let r = get(&sim, STORE, "c1").await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "retry-after"), Some(10), "6/min: one every 10 s");
}

#[tokio::test]
async fn the_exact_url_has_its_own_bucket() {
    let sim = start(SimConfig {
        rate_limit: Some(RateLimitConfig {
            exact: univapay_sim::Limit::new(2, 60),
            ..RateLimitConfig::new(100, 6000)
        }),
        ..SimConfig::default()
    })
    .await;
    sim.upsert(SimCharge::new("a", STORE, 1));
    sim.upsert(SimCharge::new("b", STORE, 1));
    assert_eq!(get(&sim, STORE, "a").await.status(), 200);
    let r = get(&sim, STORE, "a").await;
    assert_eq!(header(&r, "x-remaining-requests-exact"), Some(0));
    assert_eq!(header(&r, "x-remaining-requests-route"), Some(98));
    assert_eq!(get(&sim, STORE, "a").await.status(), 429);
    assert_eq!(get(&sim, STORE, "b").await.status(), 200);
}

#[tokio::test]
async fn no_rate_limit_means_no_headers() {
    let sim = start(SimConfig {
        rate_limit: None,
        ..SimConfig::default()
    })
    .await;
    sim.upsert(SimCharge::new("a", STORE, 1));
    for _ in 0..5 {
        let r = get(&sim, STORE, "a").await;
        assert_eq!(r.status(), 200);
        assert!(r.headers().get("x-remaining-requests-route").is_none());
    }
}

#[tokio::test]
async fn latency_is_added() {
    let sim = start(SimConfig {
        latency: Duration::from_millis(120),
        ..SimConfig::default()
    })
    .await;
    sim.upsert(SimCharge::new("a", STORE, 1));
    let t = Instant::now();
    assert_eq!(get(&sim, STORE, "a").await.status(), 200);
    assert!(
        t.elapsed() >= Duration::from_millis(120),
        "{:?}",
        t.elapsed()
    );
    let served = sim.counters().latency_micros;
    assert!(
        (120_000..1_000_000).contains(&served),
        "the latency served is counted: {served}"
    );
}

#[tokio::test]
async fn faults_are_injected_at_their_rate() {
    let sim = Sim::start(Credentials::default()).await.unwrap();
    sim.upsert(SimCharge::new("a", STORE, 1));
    let all = |f: fn(&mut Faults)| {
        let mut faults = Faults::default();
        f(&mut faults);
        sim.configure(|c| c.faults = faults);
    };

    all(|f| f.server_error = 1.0);
    for _ in 0..8 {
        let r = get(&sim, STORE, "a").await;
        assert!(
            [500, 502, 503, 504].contains(&r.status().as_u16()),
            "{}",
            r.status()
        );
        assert!(header(&r, "x-remaining-requests-route").is_some());
    }

    all(|f| f.malformed = 1.0);
    for _ in 0..5 {
        let r = get(&sim, STORE, "a").await;
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        let parsed: Option<Value> = serde_json::from_str(&text).ok();
        assert!(
            parsed.is_none_or(|v| !v["status"].is_string()),
            "not a usable charge: {text}"
        );
    }

    all(|f| f.reset = 1.0);
    let cut = client()
        .get(format!("{}/stores/{STORE}/charges/a", sim.base_url()))
        .header("Authorization", auth())
        .send()
        .await;
    // Cut before or after the headers arrive, never a whole answer.
    match cut {
        Ok(r) => assert!(r.bytes().await.is_err(), "body cut short"),
        Err(e) => assert!(!e.is_timeout(), "{e}"),
    }

    all(|f| {
        f.slow = 1.0;
        f.slow_delay = Duration::from_secs(3);
    });
    let slow = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap()
        .get(format!("{}/stores/{STORE}/charges/a", sim.base_url()))
        .header("Authorization", auth())
        .send()
        .await;
    assert!(slow.unwrap_err().is_timeout());

    // A 30 % rate gives roughly 30 % over many requests, and the rest are normal.
    all(|f| f.server_error = 0.3);
    let before = sim.counters();
    for _ in 0..400 {
        get(&sim, STORE, "a").await;
    }
    let after = sim.counters();
    let errors = after.server_errors - before.server_errors;
    assert!((70..=170).contains(&errors), "{errors} of 400");
    assert_eq!(after.ok - before.ok, 400 - errors);
    assert_eq!(after.malformed, 5);
    assert_eq!(after.resets, 1);
    assert_eq!(after.slow, 1);
}

#[tokio::test]
async fn counters_are_served_as_json() {
    let sim = Sim::start(Credentials::default()).await.unwrap();
    sim.upsert(SimCharge::new("a", STORE, 1));
    get(&sim, STORE, "a").await;
    get(&sim, STORE, "nope").await;
    let c: CounterSnapshot = client()
        .get(format!("{}/_sim/counters", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!((c.requests, c.ok, c.not_found), (2, 1, 1));
}

#[test]
fn the_binary_serves_a_seeded_population_and_reports_counters() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_univapay-sim"))
        .args([
            "--charges",
            "50",
            "--seed",
            "5",
            "--rate-per-minute",
            "60",
            "--burst",
            "2",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let base = line
        .trim()
        .strip_prefix("univapay-sim listening on ")
        .unwrap_or_else(|| panic!("{line}"))
        .to_owned();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let p = Population::new(50, 5);
    let statuses: Vec<u16> = rt.block_on(async {
        let mut v = vec![];
        for i in 0..3 {
            let plan = p.plan(i);
            let r = client()
                .get(format!(
                    "{base}/stores/{}/charges/{}",
                    plan.store_id, plan.id
                ))
                .header("Authorization", auth())
                .send()
                .await
                .unwrap();
            v.push(r.status().as_u16());
        }
        v
    });
    assert_eq!(statuses, [200, 200, 429]);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert!(child.wait().unwrap().success());
    let c: CounterSnapshot = serde_json::from_str(rest.trim()).unwrap();
    assert_eq!((c.requests, c.ok, c.rate_limited), (3, 2, 1));
}

#[test]
fn print_inserts_registers_the_population_it_would_serve() {
    let out = Command::new(env!("CARGO_BIN_EXE_univapay-sim"))
        .args([
            "--charges",
            "3",
            "--seed",
            "7",
            "--stores",
            "2",
            "--print-inserts",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.first(), Some(&"BEGIN;"));
    assert_eq!(lines.last(), Some(&"COMMIT;"));
    let mut p = Population::new(3, 7);
    p.stores = 2;
    for i in 0..3 {
        let c = p.plan(i);
        let insert = format!(
            "INSERT INTO charges (charge_id, store_id, requested_amount) VALUES ('{}', '{}', {});",
            c.id, c.store_id, c.amount
        );
        assert_eq!(lines[1 + i as usize], insert);
    }
    assert_eq!(lines.len(), 5);
}

#[test]
fn print_inserts_leaves_card_charges_out() {
    let out = Command::new(env!("CARGO_BIN_EXE_univapay-sim"))
        .args([
            "--charges",
            "200",
            "--seed",
            "7",
            "--cards",
            "50",
            "--print-inserts",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let p = Population::new(200, 7).with_cards(50);
    let konbini: Vec<_> = (0..200)
        .map(|i| p.plan(i))
        .filter(|c| !c.is_card())
        .collect();
    assert!(
        konbini.len() < 190 && konbini.len() > 100,
        "{}",
        konbini.len()
    );
    assert_eq!(text.lines().count(), konbini.len() + 2);
    for c in konbini {
        assert!(text.contains(&format!("'{}'", c.id)));
    }
}
