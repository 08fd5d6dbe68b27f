//! Kill -9 with deliveries in flight: the real binary (`--once`, passes then delivery to a
//! slow local endpoint) is SIGKILLed at random instants while charges move through their
//! states; then clean runs finish the job. Checked at the end:
//! - every event of the five types has its payload and its delivery row, delivered;
//! - the endpoint received every event at least once with a 2xx (no event lost);
//! - a webhook-id received more than once always carried the same body (a duplicate is
//!   only ever a resend of the same event);
//! - per charge, events were first received in ascending event order;
//! - every signature verifies with the maintained `standardwebhooks` crate.
//!
//! `DELIVERY_CRASH_TRIALS` and `DELIVERY_CRASH_CHARGES` make a longer run; a failure
//! prints its seed, and `DELIVERY_CRASH_SEED=<seed>` replays it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rusqlite::Connection;
use univapay_sim::{Credentials, Sim, SimCharge};

#[allow(dead_code)]
#[path = "it/config.rs"]
mod config;
#[allow(dead_code)]
#[path = "it/delivery/receiver.rs"]
mod receiver;
#[allow(dead_code)]
#[path = "it/util.rs"]
mod util;

use config::TestConfig;
use receiver::Receiver;
use util::TestCommand;

const STORE: &str = "store-crash";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn write_config(dir: &Path, base_url: &str, db: &Path, hook: &str) -> PathBuf {
    let mut endpoint = toml::Table::new();
    endpoint.insert("name".into(), "shop".into());
    endpoint.insert("url".into(), hook.into());
    endpoint.insert("secret".into(), SECRET.into());
    endpoint.insert("timeout".into(), "2s".into());
    let config = TestConfig::new(base_url, &Credentials::default(), db)
        .with(|c| {
            c.api.timeout = Some(Duration::from_secs(5));
            c.reconcile.recheck_interval = Some(Duration::from_millis(1));
            c.reconcile.retry_backoff = Some(Duration::from_millis(1));
            c.reconcile.retry_backoff_max = Some(Duration::from_millis(2));
            c.schedule.lock_wait = Some(Duration::from_secs(10));
            c.schedule.drain_timeout = Some(Duration::from_secs(20));
        })
        .set(
            "delivery",
            toml::Value::Array(vec![toml::Value::Table(endpoint)]),
        );
    let path = dir.join("config.toml");
    config.write(&path);
    path
}

fn once(config: &Path) -> TestCommand {
    let mut cmd = TestCommand::new(config.parent().unwrap());
    cmd.config(config).once().env("RUST_LOG", "off");
    cmd
}

fn next(c: SimCharge) -> Option<SimCharge> {
    match c.status.as_str() {
        "pending" => Some(c.awaiting("1234-5678", None)),
        "awaiting" => Some(if c.id.ends_with('7') {
            c.expired()
        } else {
            c.paid()
        }),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_with_deliveries_in_flight_loses_none() {
    let seed = env_num("DELIVERY_CRASH_SEED", rand::random::<u32>() as u64);
    let trials = env_num("DELIVERY_CRASH_TRIALS", 8);
    let charges = env_num("DELIVERY_CRASH_CHARGES", 60) as usize;
    println!(
        "delivery crash: seed {seed}, {trials} trials, {charges} charges (DELIVERY_CRASH_SEED={seed} replays)"
    );
    let mut rng = StdRng::seed_from_u64(seed);

    let sim = Sim::start(Credentials::default()).await.unwrap();
    let shop = Receiver::start(200).await;
    // Slow enough that a kill often lands while deliveries are in flight.
    shop.slow(Duration::from_millis(30));
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let config = write_config(dir.path(), &sim.base_url(), &db, &shop.url());
    for i in 0..charges {
        let id = format!("ch_{i}");
        let mut cmd = TestCommand::new(dir.path());
        let reg = cmd
            .config(&config)
            .args([
                "register",
                &id,
                STORE,
                "100",
                "--order",
                &format!("order-{i}"),
            ])
            .run();
        assert_eq!(reg.code(), Some(0), "{}", reg.stderr());
        sim.upsert(SimCharge::new(&id, STORE, 100));
        if i == 0 {
            // Registering through the binary once creates the ledger; the rest are
            // plain INSERTs, as a shop's code does.
            break;
        }
    }
    let conn = Connection::open(&db).unwrap();
    for i in 1..charges {
        conn.execute(
            "INSERT INTO charges (charge_id, store_id, requested_amount) VALUES (?1, ?2, 100)",
            rusqlite::params![format!("ch_{i}"), STORE],
        )
        .unwrap();
        sim.upsert(SimCharge::new(format!("ch_{i}"), STORE, 100));
    }

    let mut killed = 0;
    for _ in 0..trials {
        for c in sim.charges() {
            if rng.random_bool(0.5)
                && let Some(n) = next(c)
            {
                sim.upsert(n);
            }
        }
        let after = Duration::from_millis(rng.random_range(50..1500));
        let mut child = once(&config).spawn();
        let started = Instant::now();
        tokio::task::block_in_place(|| {
            while !child.has_exited() && started.elapsed() < after {
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        if !child.has_exited() {
            child.kill();
            killed += 1;
        }
    }
    // Everything final now, then clean runs until nothing is pending (a delivery taken
    // by a killed run falls due after its lease: 2 s timeout + 5 s).
    for c in sim.charges() {
        let mut c = c;
        while let Some(n) = next(c.clone()) {
            c = n;
        }
        sim.upsert(c);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = tokio::task::block_in_place(|| once(&config).run());
        assert!(
            matches!(out.code(), Some(0) | Some(2)),
            "seed {seed}: {}",
            out.stderr()
        );
        let pending: i64 = conn
            .query_row(
                "SELECT count(*) FROM deliveries WHERE delivered_at IS NULL",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let open: i64 = conn
            .query_row(
                "SELECT count(*) FROM charges WHERE state IN ('pending', 'awaiting')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        if pending == 0 && open == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: {pending} deliveries still pending"
        );
    }
    println!("killed {killed} of {trials} runs");

    // Every event of the five types has a payload and was delivered.
    let typed: i64 = conn
        .query_row(
            "SELECT count(*) FROM charge_events WHERE kind IN ('transition', 'mismatch', 'discovered')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let ids: Vec<(i64, String)> = conn
        .prepare("SELECT event_id, charge_id FROM event_payloads ORDER BY event_id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(ids.len() as i64, typed, "seed {seed}");
    let finals: i64 = conn
        .query_row(
            "SELECT count(DISTINCT charge_id) FROM event_payloads WHERE type IN ('charge.paid', 'charge.failed')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        finals as usize, charges,
        "seed {seed}: every charge's final event"
    );

    let verifier = standardwebhooks::Webhook::new(SECRET).unwrap();
    let mut bodies: BTreeMap<String, String> = BTreeMap::new();
    let mut first_seen: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for r in shop.received() {
        let ts: i64 = r.header("webhook-timestamp").parse().unwrap();
        assert_eq!(
            r.header("webhook-signature"),
            verifier
                .sign(r.header("webhook-id"), ts, r.body.as_bytes())
                .unwrap()
        );
        let id = r.header("webhook-id").to_owned();
        if let Some(b) = bodies.get(&id) {
            assert_eq!(b, &r.body, "seed {seed}: {id} resent with another body");
            continue;
        }
        bodies.insert(id, r.body.clone());
        let body = r.json();
        first_seen
            .entry(body["data"]["charge_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(body["data"]["event_id"].as_i64().unwrap());
    }
    println!(
        "{} requests for {} events (resends after kills: {})",
        shop.received().len(),
        bodies.len(),
        shop.received().len() - bodies.len()
    );
    let want: BTreeSet<String> = ids.iter().map(|(id, _)| format!("evt_{id}")).collect();
    let got: BTreeSet<String> = bodies.keys().cloned().collect();
    assert_eq!(got, want, "seed {seed}: every event received");
    for (charge, seq) in &first_seen {
        assert!(
            seq.windows(2).all(|w| w[0] < w[1]),
            "seed {seed}: {charge} out of order: {seq:?}"
        );
    }
}
