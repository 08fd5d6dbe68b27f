//! The one-command demo: `cargo run --release --example demo`.
//!
//! Starts the UnivaPay simulator in this process on 127.0.0.1 with a thousand konbini
//! charges, registers them in `demo.db` in the working directory (made afresh each run)
//! the way a shop would, and runs the real reconciliation pass twice: once "today", and
//! once a week later in simulated time, when every payment deadline has passed. After
//! each pass it prints what the ledger says. Between the two, a customer pays at the
//! konbini and the simulator's webhook reaches the reconciler's listener, which checks
//! that charge at once. No config file and no credentials needed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use konbini_reconciler::Settings;
use konbini_reconciler::ledger::{Ledger, Trigger};
use konbini_reconciler::reconcile::{Clock, PassReport, Reconciler};
use rusqlite::Connection;
use tokio_util::sync::CancellationToken;
use univapay_sim::{Credentials, Population, RateLimitConfig, Sim, SimConfig, WebhookTarget};

const DB: &str = "demo.db";
/// The `Authorization` value the simulator sends with its webhooks.
const WEBHOOK_TOKEN: &str = "Bearer demo-webhook-token-0123456789";
const CHARGES: u64 = 1000;

/// The reconciler reads the simulator's clock, so "a week later" is a jump, not a wait.
struct SimTime(Sim);

impl Clock for SimTime {
    fn now(&self) -> DateTime<Utc> {
        self.0.clock().now()
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let db = PathBuf::from(DB);
    for suffix in ["", "-wal", "-shm"] {
        let f = PathBuf::from(format!("{DB}{suffix}"));
        if f.exists() {
            std::fs::remove_file(&f)?;
        }
    }

    // A UnivaPay with a realistic feel: a few ms per answer, and a rate limit the
    // reconciler has to pace itself by.
    let creds = Credentials::default();
    let sim = Sim::start_with(
        creds.clone(),
        SimConfig {
            latency: Duration::from_millis(3),
            latency_jitter: Duration::from_millis(10),
            rate_limit: Some(RateLimitConfig::new(200, 30_000)),
            ..SimConfig::default()
        },
    )
    .await?;
    let population = sim.seed(Population::new(CHARGES, 2026));

    let config = format!(
        "[api]\nbase_url = \"{}\"\napp_token = \"{}\"\nsecret = \"{}\"\ntimeout = \"5s\"\nconcurrency = 16\n\
         [database]\npath = \"{DB}\"\n[webhook]\nauth_token = \"{WEBHOOK_TOKEN}\"\n",
        sim.base_url(),
        creds.app_token,
        creds.secret,
    );
    let no_env: [(&str, &str); 0] = [];
    let settings = Arc::new(Settings::from_toml(
        &config,
        Path::new("(demo settings)"),
        &no_env,
    )?);
    let reconciler = Reconciler::with_clock(settings.clone(), Arc::new(SimTime(sim.sim.clone())))?;
    reconciler.prepare_ledger().await?;

    println!(
        "UnivaPay simulator on {} with {CHARGES} konbini charges \
         (rate limit: burst of 200, then 30000 per minute).",
        sim.base_url()
    );
    register(&db, &population)?;
    println!("Registered {CHARGES} charges in {DB} (one plain INSERT each).\n");
    // Registered "now" by the database's clock; a moment later they are all due.
    sim.advance(Duration::from_secs(1));

    let first = pass(&reconciler, "Pass 1, today").await?;
    print_states(&db)?;
    print_payment_numbers(&db)?;
    webhook(&reconciler, &sim, &db).await?;

    sim.advance(Duration::from_secs(8 * 24 * 3600));
    let second = pass(
        &reconciler,
        "Pass 2, eight days later (every deadline has passed)",
    )
    .await?;
    print_states(&db)?;
    print_mismatches(&db)?;

    let c = sim.counters();
    println!(
        "\nThe simulator answered {} requests: {} with 429 (rate limited), {} not found.",
        c.requests, c.rate_limited, c.not_found
    );
    println!(
        "Flagged mismatches: {} in pass 1, {} in pass 2 (the CLI's --once would exit 2 for these).",
        first.counts.mismatches, second.counts.mismatches
    );
    println!("\nLook inside:");
    println!(
        "  sqlite3 {DB} \"SELECT state, provider_status, count(*) FROM charges GROUP BY 1, 2\""
    );
    println!("  sqlite3 {DB} \"SELECT * FROM mismatched_charges\"");
    println!("  sqlite3 {DB} \"SELECT * FROM runs\"");
    Ok(())
}

/// A customer pays one awaiting charge; UnivaPay (the simulator) sends `charge_finished` to
/// the reconciler's webhook listener, which checks that charge at once.
async fn webhook(reconciler: &Reconciler, sim: &Sim, db: &Path) -> anyhow::Result<()> {
    use konbini_reconciler::webhook::{self, Health, Hooks, Listener};
    let settings = reconciler.settings().webhook.clone();
    let settings = settings.ok_or_else(|| anyhow::anyhow!("no [webhook] in the demo config"))?;
    let listener = Listener::from_std(std::net::TcpListener::bind("127.0.0.1:0")?)?;
    let url = format!("http://{}{}", listener.local_addr(), settings.path);
    let stop = CancellationToken::new();
    let serving = webhook::serve(
        listener,
        &settings,
        reconciler.clone(),
        Hooks::default(),
        Health::new(),
        stop.clone(),
    )?;
    sim.configure(|c| c.webhook = Some(WebhookTarget::new(url.clone(), WEBHOOK_TOKEN)));

    let conn = Connection::open(db)?;
    let id: String = conn.query_row(
        "SELECT charge_id FROM charges WHERE state = 'awaiting' ORDER BY charge_id LIMIT 1",
        [],
        |r| r.get(0),
    )?;
    println!("== A webhook");
    println!(
        "  The customer of {id} pays at the konbini; UnivaPay posts charge_finished to {url}."
    );
    let paid = std::time::Instant::now();
    sim.pay(&id)?;
    let state = |conn: &Connection| -> rusqlite::Result<String> {
        conn.query_row(
            "SELECT state FROM charges WHERE charge_id = ?1",
            [&id],
            |r| r.get(0),
        )
    };
    while state(&conn)? != "successful" {
        anyhow::ensure!(
            paid.elapsed() < Duration::from_secs(10),
            "the webhook was not followed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "  {:.0} ms later the ledger says successful, confirmed by a charge GET (the body is only a hint):",
        paid.elapsed().as_secs_f64() * 1000.0
    );
    let mut stmt = conn.prepare(
        "SELECT kind, coalesce(from_state || ' -> ' || to_state, detail, '') FROM charge_events
         WHERE charge_id = ?1 ORDER BY id",
    )?;
    for row in stmt.query_map([&id], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })? {
        let (kind, what) = row?;
        println!("    {kind:<11} {what}");
    }
    let run: i64 = conn.query_row(
        "SELECT max(id) FROM runs WHERE trigger = 'webhook'",
        [],
        |r| r.get(0),
    )?;
    println!("  The check is runs row {run}, trigger webhook.\n");
    // Later payments and deadlines are left to the next pass.
    sim.configure(|c| c.webhook = None);
    stop.cancel();
    serving.stopped(Duration::from_secs(5)).await;
    Ok(())
}

/// What a shop's own code does: insert each charge it created, in one transaction.
fn register(db: &Path, population: &Population) -> anyhow::Result<()> {
    let ledger = Ledger::open(db, Duration::from_secs(5))?;
    drop(ledger);
    let mut conn = Connection::open(db)?;
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare(
            "INSERT INTO charges (charge_id, store_id, requested_amount) VALUES (?1, ?2, ?3)",
        )?;
        for i in 0..population.count {
            let p = population.plan(i);
            insert.execute(rusqlite::params![p.id, p.store_id, p.amount])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// The pass lock, which a pass takes as proof that no other pass runs.
fn hold_lock(reconciler: &Reconciler) -> anyhow::Result<konbini_reconciler::lock::PassGuard> {
    let lock =
        konbini_reconciler::lock::PassLock::for_database(&reconciler.settings().database.path);
    lock.try_acquire()?
        .map_err(|_| anyhow::anyhow!("the demo's ledger is locked by another process"))
}

async fn pass(reconciler: &Reconciler, title: &str) -> anyhow::Result<PassReport> {
    let report = reconciler
        .run_pass(
            &hold_lock(reconciler)?,
            Trigger::Once,
            CancellationToken::new(),
        )
        .await?;
    println!("== {title}");
    println!("{}", report.summary_line());
    Ok(report)
}

fn print_states(db: &Path) -> anyhow::Result<()> {
    let conn = Connection::open(db)?;
    let mut stmt = conn.prepare(
        "SELECT state, coalesce(provider_status, '-'), count(*), sum(requested_amount)
         FROM charges GROUP BY 1, 2
         ORDER BY CASE state WHEN 'pending' THEN 0 WHEN 'awaiting' THEN 1
                             WHEN 'successful' THEN 2 ELSE 3 END, 2",
    )?;
    println!(
        "  {:<11} {:<16} {:>7} {:>12}",
        "state", "UnivaPay status", "charges", "yen"
    );
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })?;
    for row in rows {
        let (state, status, n, yen) = row?;
        println!("  {state:<11} {status:<16} {n:>7} {yen:>12}");
    }
    println!();
    Ok(())
}

fn print_payment_numbers(db: &Path) -> anyhow::Result<()> {
    let conn = Connection::open(db)?;
    let mut stmt = conn.prepare(
        "SELECT charge_id, requested_amount, payment_number, coalesce(payment_url, '')
         FROM charges WHERE state = 'awaiting' AND payment_number IS NOT NULL
         ORDER BY payment_url IS NULL, charge_id LIMIT 5",
    )?;
    println!("  Waiting to be paid at the konbini (a few of them):");
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
        ))
    })?;
    for row in rows {
        let (id, amount, number, url) = row?;
        println!("  {id}  {amount:>6} yen  payment number {number}  {url}");
    }
    println!();
    Ok(())
}

fn print_mismatches(db: &Path) -> anyhow::Result<()> {
    let conn = Connection::open(db)?;
    let total: i64 = conn.query_row("SELECT count(*) FROM mismatched_charges", [], |r| r.get(0))?;
    println!("  Amount mismatches ({total}), paid but not what was asked for:");
    let mut stmt = conn.prepare(
        "SELECT charge_id, mismatch_detail FROM mismatched_charges ORDER BY charge_id LIMIT 8",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    for row in rows {
        let (id, detail) = row?;
        println!("  {id}  {detail}");
    }
    if total > 8 {
        println!("  ... and {} more", total - 8);
    }
    Ok(())
}
