//! `konbini-bench delivery [--quick]`: delivery to a healthy local endpoint, through the
//! library's delivery job (the same code the daemon and `--once` run).
//!
//! - throughput: 10,000 events (5,000 charges, each awaiting then paid) written at once,
//!   then drained to one endpoint at the default concurrency; events/s, and whether every
//!   charge's events arrived in order;
//! - latency: with the daemon's delivery loop running, single transitions committed one
//!   at a time; from the commit to the endpoint's receipt, p50 and p95.
//!
//! The endpoint is a local axum server that answers 204 at once. A tool that prints
//! figures, not a test.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use konbini_reconciler::Settings;
use konbini_reconciler::delivery::worker;
use rusqlite::Connection;
use tokio_util::sync::CancellationToken;

/// Receipts by webhook-id, in arrival order.
#[derive(Default)]
struct Receipts {
    order: Vec<(i64, Instant)>,
}

async fn hook(State(r): State<Arc<Mutex<Receipts>>>, headers: HeaderMap) -> StatusCode {
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("evt_"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1);
    r.lock().unwrap().order.push((id, Instant::now()));
    StatusCode::NO_CONTENT
}

fn settings(dir: &Path, url: &str) -> Settings {
    let text = format!(
        "[api]\napp_token = \"a.b.c\"\nsecret = \"bench\"\n[database]\npath = \"{}\"\n\
         [schedule]\ndrain_timeout = \"10m\"\n\
         [[delivery]]\nname = \"shop\"\nurl = \"{url}\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n",
        dir.join("bench.db").display()
    );
    Settings::from_toml(&text, &dir.join("config.toml"), &[("UNUSED", "")]).expect("config")
}

/// Charges `from..to`, each with the given transitions, in one transaction.
fn write_events(db: &Path, from: usize, to: usize, states: &[&str]) {
    let mut c = Connection::open(db).unwrap();
    let tx = c.transaction().unwrap();
    for i in from..to {
        tx.execute(
            "INSERT INTO charges (charge_id, store_id, requested_amount, order_ref) VALUES (?1, 's', 100, ?2)",
            rusqlite::params![format!("ch_{i}"), format!("order-{i}")],
        )
        .unwrap();
        let mut from_state = "pending";
        for to_state in states {
            tx.execute(
                "INSERT INTO charge_events (charge_id, at, kind, from_state, to_state)
                 VALUES (?1, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), 'transition', ?2, ?3)",
                rusqlite::params![format!("ch_{i}"), from_state, to_state],
            )
            .unwrap();
            from_state = to_state;
        }
    }
    tx.commit().unwrap();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub fn main(args: &[String]) {
    let quick = args.iter().any(|a| a == "--quick");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(quick));
}

async fn run(quick: bool) {
    let receipts = Arc::new(Mutex::new(Receipts::default()));
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(receipts.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path(), &url);
    worker::sync(&settings, true).await.unwrap();
    let db = settings.database.path.clone();

    // Throughput.
    let charges = if quick { 500 } else { 5_000 };
    write_events(&db, 0, charges, &["awaiting", "successful"]);
    let started = Instant::now();
    let drained = worker::drain(&settings, Duration::from_secs(600))
        .await
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    let order = std::mem::take(&mut receipts.lock().unwrap().order);
    let mut last: HashMap<i64, i64> = HashMap::new();
    let conn = Connection::open(&db).unwrap();
    let charge_of: HashMap<i64, String> = conn
        .prepare("SELECT event_id, charge_id FROM event_payloads")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut out_of_order = 0;
    let mut by_charge: HashMap<&str, i64> = HashMap::new();
    for (id, _) in &order {
        let charge = charge_of[id].as_str();
        if by_charge.get(charge).is_some_and(|prev| prev > id) {
            out_of_order += 1;
        }
        by_charge.insert(charge, *id);
        *last.entry(*id).or_default() += 1;
    }
    println!(
        "throughput: {} events to one endpoint in {secs:.2} s = {:.0} events/s (delivered {}, failed {}, {} received, {} out of order per charge)",
        charges * 2,
        (charges * 2) as f64 / secs,
        drained.delivered,
        drained.failed,
        order.len(),
        out_of_order
    );

    // Latency: commit -> receipt, with the daemon's loop running.
    let stop = CancellationToken::new();
    let job = tokio::spawn(worker::run(settings.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let samples = if quick { 20 } else { 200 };
    let mut latencies = Vec::with_capacity(samples);
    for n in 0..samples {
        let i = charges + n;
        let committed = Instant::now();
        write_events(&db, i, i + 1, &["successful"]);
        let id: i64 = conn
            .query_row(
                "SELECT max(event_id) FROM event_payloads WHERE charge_id = ?1",
                [format!("ch_{i}")],
                |r| r.get(0),
            )
            .unwrap();
        let arrived = loop {
            if let Some((_, at)) = receipts
                .lock()
                .unwrap()
                .order
                .iter()
                .find(|(e, _)| *e == id)
            {
                break *at;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        latencies.push(arrived.saturating_duration_since(committed));
        // Commits arrive at random moments relative to the loop's polls.
        tokio::time::sleep(Duration::from_millis(rand::random_range(5..60))).await;
    }
    stop.cancel();
    let _ = job.await;
    latencies.sort();
    println!(
        "latency: transition committed -> delivered, {samples} samples: p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms",
        percentile(&latencies, 0.5).as_secs_f64() * 1000.0,
        percentile(&latencies, 0.95).as_secs_f64() * 1000.0,
        latencies.last().unwrap().as_secs_f64() * 1000.0
    );
}
