//! Part 2 of `konbini-bench outage`: an endpoint down for a simulated day, then back,
//! through the library's delivery job ([`Endpoint::step`], the unit the daemon's loop
//! repeats) on a controlled clock: each step is given the simulated time, and the next
//! step is taken at the time the previous one says the next delivery falls due, so the
//! retry schedule's hours pass in seconds.
//!
//! Every simulated hour of the outage new charges get their `charge.awaiting` event and
//! those of two hours before their `charge.paid` (a charge's paid event waits behind its
//! awaiting one). The receiver answers 503 for 24 hours, then 204. Counted at the end:
//! events never accepted (lost), events accepted out of order within their charge, and how
//! long (simulated) and how many steps the backlog took to drain once the endpoint was
//! back.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use chrono::{DateTime, Duration, Utc};
use konbini_reconciler::Settings;
use konbini_reconciler::delivery::{Endpoint, worker};
use rusqlite::Connection;

/// Hours the endpoint is down.
const DOWN_HOURS: i64 = 24;
/// A charge's paid event comes this many hours after its awaiting one.
const PAID_AFTER_HOURS: i64 = 2;
/// Steps after which the run is abandoned (a bug, not a slow machine).
const MAX_STEPS: usize = 200_000;

/// The receiver: what it answers now, and what it was sent (event id, answer), in
/// arrival order.
#[derive(Default)]
struct Shop {
    status: AtomicU16,
    received: Mutex<Vec<(i64, u16)>>,
}

async fn hook(State(shop): State<Arc<Shop>>, headers: HeaderMap) -> StatusCode {
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("evt_"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1);
    let status = shop.status.load(Ordering::SeqCst);
    if let Ok(mut r) = shop.received.lock() {
        r.push((id, status));
    }
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Where the simulated clock is, and how many steps it took.
struct Clock {
    now: DateTime<Utc>,
    steps: usize,
}

/// Steps `ep` at the times it asks for, up to `until` or until nothing is pending.
/// Returns the time of the last step that delivered something, if one did.
async fn step_until(
    ep: &Endpoint,
    clock: &mut Clock,
    until: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, String> {
    let mut last_delivery = None;
    loop {
        clock.steps += 1;
        if clock.steps > MAX_STEPS {
            return Err(format!("the endpoint did not settle in {MAX_STEPS} steps"));
        }
        let r = ep.step(clock.now).await.map_err(|e| e.to_string())?;
        if r.delivered() > 0 {
            last_delivery = Some(clock.now);
        }
        let Some(next) = r.next_due else {
            return Ok(last_delivery);
        };
        if r.attempted() == 0 {
            if next > until {
                return Ok(last_delivery);
            }
            clock.now = next.max(clock.now);
        }
    }
}

/// Charges `from..to` with their awaiting event, at simulated time `at`.
fn awaiting(db: &Path, from: usize, to: usize, at: DateTime<Utc>) -> Result<(), String> {
    events(db, from, to, at, true)
}

/// `charge.awaiting` for new charges (`new`), or `charge.paid` for existing ones.
fn events(db: &Path, from: usize, to: usize, at: DateTime<Utc>, new: bool) -> Result<(), String> {
    let mut c = Connection::open(db).map_err(|e| e.to_string())?;
    let tx = c.transaction().map_err(|e| e.to_string())?;
    let at = konbini_reconciler::ledger::ts(at);
    for i in from..to {
        let id = format!("ch_{i}");
        let (from_state, to_state) = if new {
            tx.execute(
                "INSERT INTO charges (charge_id, store_id, requested_amount, state, order_ref)
                 VALUES (?1, 's', 100, 'awaiting', ?2)",
                rusqlite::params![id, format!("order-{i}")],
            )
            .map_err(|e| e.to_string())?;
            ("pending", "awaiting")
        } else {
            tx.execute(
                "UPDATE charges SET state = 'successful', next_check_at = NULL WHERE charge_id = ?1",
                [&id],
            )
            .map_err(|e| e.to_string())?;
            ("awaiting", "successful")
        };
        tx.execute(
            "INSERT INTO charge_events (charge_id, at, kind, from_state, to_state)
             VALUES (?1, ?2, 'transition', ?3, ?4)",
            rusqlite::params![id, at, from_state, to_state],
        )
        .map_err(|e| e.to_string())?;
    }
    tx.commit().map_err(|e| e.to_string())
}

fn settings(dir: &Path, url: &str) -> Result<Settings, String> {
    let text = format!(
        "[api]\napp_token = \"a.b.c\"\nsecret = \"bench\"\n[database]\npath = \"{}\"\n\
         [[delivery]]\nname = \"shop\"\nurl = \"{url}\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n",
        dir.join("day.db").display()
    );
    Settings::from_toml(&text, &dir.join("config.toml"), &[("UNUSED", "")])
        .map_err(|e| format!("config: {e}"))
}

pub fn run(quick: bool) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(simulate(if quick { 20 } else { 100 }))
}

/// What the day came to.
struct Outcome {
    events: usize,
    charges: usize,
    down_attempts: usize,
    down_steps: usize,
    down_wall: std::time::Duration,
    drain: Option<Duration>,
    drain_steps: usize,
    drain_wall: std::time::Duration,
    lost: usize,
    duplicates: usize,
    out_of_order: usize,
}

async fn simulate(per_hour: usize) -> Result<(), String> {
    let shop = Arc::new(Shop::default());
    shop.status.store(503, Ordering::SeqCst);
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(shop.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let url = format!(
        "http://{}/hook",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let settings = settings(dir.path(), &url)?;
    worker::sync(&settings, true)
        .await
        .map_err(|e| e.to_string())?;
    let ep = Endpoint::open(settings.delivery[0].clone(), &settings)
        .await
        .map_err(|e| e.to_string())?;
    let db = settings.database.path.clone();
    println!(
        "\n== outage, part 2: an endpoint down for a simulated day ({per_hour} new charges an hour, \
         paid {PAID_AFTER_HOURS} h later; the library's delivery job on a controlled clock)"
    );
    let o = the_day(&ep, &shop, &db, per_hour).await?;
    print_outcome(&o);
    Ok(())
}

/// The outage and the return; then the count.
async fn the_day(
    ep: &Endpoint,
    shop: &Shop,
    db: &Path,
    per_hour: usize,
) -> Result<Outcome, String> {
    // Simulated time starts at the real time, so rows the outbox trigger makes due "now"
    // by the database's clock are due at the simulated time too.
    let start = Utc::now();
    let mut clock = Clock {
        now: start,
        steps: 0,
    };
    let wall = Instant::now();
    for h in 0..DOWN_HOURS {
        let at = start + Duration::hours(h);
        clock.now = clock.now.max(at);
        let first = h as usize * per_hour;
        awaiting(db, first, first + per_hour, at)?;
        if h >= PAID_AFTER_HOURS {
            let paid = (h - PAID_AFTER_HOURS) as usize * per_hour;
            events(db, paid, paid + per_hour, at, false)?;
        }
        step_until(ep, &mut clock, start + Duration::hours(h + 1)).await?;
    }
    let down_attempts = shop.received.lock().map(|r| r.len()).unwrap_or(0);
    let (down_steps, down_wall) = (clock.steps, wall.elapsed());

    let back = start + Duration::hours(DOWN_HOURS);
    shop.status.store(204, Ordering::SeqCst);
    clock.now = clock.now.max(back);
    clock.steps = 0;
    let wall = Instant::now();
    let last = step_until(ep, &mut clock, back + Duration::days(2)).await?;
    let received = shop.received.lock().map(|r| r.clone()).unwrap_or_default();
    let (lost, duplicates, out_of_order, events, charges) = count(db, &received)?;
    Ok(Outcome {
        events,
        charges,
        down_attempts,
        down_steps,
        down_wall,
        drain: last.map(|t| t - back),
        drain_steps: clock.steps,
        drain_wall: wall.elapsed(),
        lost,
        duplicates,
        out_of_order,
    })
}

/// (lost, duplicates, out of order within a charge, events, charges), from what the shop
/// accepted (answered 2xx) against the ledger's events.
fn count(
    db: &Path,
    received: &[(i64, u16)],
) -> Result<(usize, usize, usize, usize, usize), String> {
    let c = Connection::open(db).map_err(|e| e.to_string())?;
    let charge_of: HashMap<i64, String> = c
        .prepare("SELECT event_id, charge_id FROM event_payloads")
        .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .map_err(|e| e.to_string())?;
    let mut accepted = HashSet::new();
    let mut duplicates = 0;
    let mut out_of_order = 0;
    let mut last: HashMap<&str, i64> = HashMap::new();
    for (id, _) in received.iter().filter(|(_, s)| (200..300).contains(s)) {
        if !accepted.insert(*id) {
            duplicates += 1;
        }
        let Some(charge) = charge_of.get(id) else {
            continue;
        };
        if last.get(charge.as_str()).is_some_and(|prev| prev > id) {
            out_of_order += 1;
        }
        last.insert(charge, *id);
    }
    let lost = charge_of.keys().filter(|id| !accepted.contains(id)).count();
    let charges: HashSet<&String> = charge_of.values().collect();
    Ok((
        lost,
        duplicates,
        out_of_order,
        charge_of.len(),
        charges.len(),
    ))
}

fn print_outcome(o: &Outcome) {
    let hours = |d: Duration| d.num_seconds() as f64 / 3600.0;
    println!(
        "  down {DOWN_HOURS} h: {} events of {} charges written; {} attempts answered 503 \
         in {} steps ({:.1} s of wall time)",
        o.events,
        o.charges,
        o.down_attempts,
        o.down_steps,
        o.down_wall.as_secs_f64()
    );
    println!(
        "  back: backlog drained {} after the endpoint returned, in {} steps ({:.1} s of wall time)",
        o.drain
            .map(|d| if d < Duration::hours(1) {
                format!("{} s (simulated)", d.num_seconds())
            } else {
                format!("{:.1} h (simulated)", hours(d))
            })
            .unwrap_or_else(|| "never".into()),
        o.drain_steps,
        o.drain_wall.as_secs_f64()
    );
    println!(
        "  lost {} (events never accepted), out of order within a charge {}, accepted twice {}",
        o.lost, o.out_of_order, o.duplicates
    );
}
