//! The one-command demo: `cargo run --release --example demo`.
//!
//! Follows the seed flow end to end against the UnivaPay simulator, started in this process
//! on 127.0.0.1 (no config file, no credentials):
//!
//! 1. a shop creates its charges through the API the way UnivaPay's seed document does:
//!    `POST /tokens` (konbini: customer name, phone, store brand, email, metadata), then
//!    `POST /charges` with an `Idempotency-Key` (reading `Idempotency-Status`); and a few
//!    card charges;
//! 2. it registers most of its konbini charges in `demo.db` (made afresh each run) with the
//!    plain `INSERT`, and "forgets" a few;
//! 3. a discovery sweep finds the forgotten ones (never the cards) and fills in brand and
//!    deadline of the registered ones;
//! 4. the first pass: payment numbers, and the Pay-easy collection number;
//! 5. customers pay (one of them the wrong amount), the merchant cancels one, and a week
//!    passes in simulated time;
//! 6. a webhook: a customer pays, the simulator posts `charge_finished` to the
//!    reconciler's listener, and the charge turns successful at once;
//! 7. the second pass: paid, expired, canceled, and the mismatch flagged.
//!
//! Each step is a function of its own, called in order from [`run`].

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use konbini_reconciler::Settings;
use konbini_reconciler::discovery;
use konbini_reconciler::ledger::Trigger;
use konbini_reconciler::reconcile::{Clock, PassReport, Reconciler};
use rusqlite::Connection;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use univapay_sim::{
    CHAINS, Credentials, RateLimitConfig, RunningSim, Sim, SimConfig, WebhookTarget,
};

const DB: &str = "demo.db";
/// Konbini charges the shop creates, and card charges besides.
const KONBINI: usize = 120;
const CARDS: usize = 12;
/// The `Authorization` value the simulator sends with its webhooks.
const WEBHOOK_TOKEN: &str = "Bearer demo-webhook-token-0123456789";
/// The Standard Webhooks secret the reconciler signs its deliveries to the shop with.
const SHOP_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The shop's own webhook endpoint on 127.0.0.1: verifies each delivery with the
/// `standardwebhooks` crate (as a shop would with its language's library) and prints the
/// order it says is paid. Returns its URL.
async fn shop_endpoint() -> anyhow::Result<String> {
    use axum::http::{HeaderMap, StatusCode};
    async fn hook(headers: HeaderMap, body: axum::body::Bytes) -> StatusCode {
        let verified =
            standardwebhooks::Webhook::new(SHOP_SECRET).and_then(|wh| wh.verify(&body, &headers));
        let event: Value = serde_json::from_slice(&body).unwrap_or_default();
        match verified {
            Ok(()) => {
                println!(
                    "  The shop's endpoint received {} (signature verified): order {} is paid, {} {}.",
                    event["type"].as_str().unwrap_or("?"),
                    event["data"]["order_ref"].as_str().unwrap_or("?"),
                    event["data"]["charged_amount"],
                    event["data"]["charged_currency"].as_str().unwrap_or("")
                );
                StatusCode::NO_CONTENT
            }
            Err(e) => {
                println!("  The shop's endpoint refused a delivery: {e}");
                StatusCode::BAD_REQUEST
            }
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hooks/konbini", listener.local_addr()?);
    let app = axum::Router::new().route("/hooks/konbini", axum::routing::post(hook));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

/// The reconciler reads the simulator's clock, so "a week later" is a jump, not a wait.
struct SimTime(Sim);

impl Clock for SimTime {
    fn now(&self) -> DateTime<Utc> {
        self.0.clock().now()
    }
}

/// A charge the shop created.
#[derive(Debug, Clone)]
struct Created {
    index: usize,
    id: String,
    store_id: String,
    amount: i64,
    /// `None` for a card charge.
    brand: Option<&'static str>,
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
    let db = fresh_database()?;
    let creds = Credentials::default();
    let sim = start_simulator(&creds).await?;
    let shop_hook = shop_endpoint().await?;
    let reconciler = reconciler_for(&sim, &creds, &shop_hook).await?;

    let created = create_charges_like_the_shop(&sim, &creds).await?;
    let forgotten = register_most(&db, &created)?;
    // Five minutes later: every charge has its payment number, and is settled enough
    // for a sweep to look at it.
    sim.advance(Duration::from_secs(5 * 60));

    discover(&reconciler, &db, &forgotten, &created).await?;
    let first = pass(&reconciler, "Pass 1: today").await?;
    print_states(&db)?;
    print_payment_numbers(&db)?;
    print_pay_easy(&db)?;

    webhook(&reconciler, &sim, &db).await?;
    customers_pay(&sim, &created)?;
    sim.advance(Duration::from_secs(8 * 24 * 3600));
    let second = pass(
        &reconciler,
        "The second pass, run 3 (run 2 was the webhook's check): eight days later, every deadline has passed",
    )
    .await?;
    print_states(&db)?;
    print_mismatches(&db)?;
    print_requests(&sim, &first, &second);
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
        reconciler.checker().clone(),
        Hooks::default(),
        Health::new(),
        stop.clone(),
    )?;
    sim.configure(|c| c.webhook = Some(WebhookTarget::new(url.clone(), WEBHOOK_TOKEN)));

    let conn = Connection::open(db)?;
    let id: String = conn.query_row(
        "SELECT charge_id FROM charges WHERE state = 'awaiting'
         ORDER BY order_ref IS NOT '12345', charge_id LIMIT 1",
        [],
        |r| r.get(0),
    )?;
    // The shop's systems learn of payments from here on: the delivery job, as the daemon
    // runs it.
    konbini_reconciler::delivery::worker::sync(reconciler.settings(), true).await?;
    let delivering = tokio::spawn(konbini_reconciler::delivery::run(
        reconciler.settings().clone(),
        stop.clone(),
    ));
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
    println!("  The check is runs row {run}, trigger webhook.");
    let delivered = |conn: &Connection| -> rusqlite::Result<i64> {
        conn.query_row(
            "SELECT count(*) FROM deliveries WHERE charge_id = ?1 AND delivered_at IS NOT NULL",
            [&id],
            |r| r.get(0),
        )
    };
    while delivered(&conn)? == 0 {
        anyhow::ensure!(
            paid.elapsed() < Duration::from_secs(10),
            "the payment was not delivered to the shop"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "  {:.0} ms after the payment, the shop's systems know (a signed POST to its endpoint).\n",
        paid.elapsed().as_secs_f64() * 1000.0
    );
    // Later payments and deadlines are left to the next pass.
    sim.configure(|c| c.webhook = None);
    stop.cancel();
    serving.stopped(Duration::from_secs(5)).await;
    let _ = delivering.await;
    Ok(())
}

/// What a shop's own code does: insert each charge it created, in one transaction.
/// `demo.db` in the working directory, removed first with its WAL files.
fn fresh_database() -> anyhow::Result<PathBuf> {
    for suffix in ["", "-wal", "-shm", ".lock"] {
        let f = PathBuf::from(format!("{DB}{suffix}"));
        if f.exists() {
            std::fs::remove_file(&f)?;
        }
    }
    Ok(PathBuf::from(DB))
}

/// A UnivaPay with a realistic feel: a few ms per answer, and a rate limit the reconciler
/// has to pace itself by.
async fn start_simulator(creds: &Credentials) -> anyhow::Result<RunningSim> {
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
    println!(
        "UnivaPay simulator on {} (rate limit: burst of 200, then 30000 per minute).\n",
        sim.base_url()
    );
    Ok(sim)
}

/// The reconciler, with discovery on for the shop's store (and enrichment, so registered
/// charges get their brand and deadline too).
async fn reconciler_for(
    sim: &RunningSim,
    creds: &Credentials,
    shop_hook: &str,
) -> anyhow::Result<Reconciler> {
    let config = format!(
        "[api]\nbase_url = \"{}\"\napp_token = \"{}\"\nsecret = \"{}\"\ntimeout = \"5s\"\nconcurrency = 16\n\
         [database]\npath = \"{DB}\"\n\
         [discovery]\nstores = [\"{}\"]\nenrich = true\n\
         [webhook]\nauth_token = \"{WEBHOOK_TOKEN}\"\n\
         [[delivery]]\nname = \"shop\"\nurl = \"{shop_hook}\"\nsecret = \"{SHOP_SECRET}\"\nevents = [\"charge.paid\"]\n",
        sim.base_url(),
        creds.app_token,
        creds.secret,
        sim.config().default_store_id,
    );
    let no_env: [(&str, &str); 0] = [];
    let settings = Arc::new(Settings::from_toml(
        &config,
        Path::new("(demo settings)"),
        &no_env,
    )?);
    let reconciler = Reconciler::with_clock(settings, Arc::new(SimTime(sim.sim.clone())))?;
    reconciler.prepare_ledger().await?;
    Ok(reconciler)
}

/// The shop's order number of its `index`th order: 12345 for the first.
fn order_number(index: usize) -> String {
    (12345 + index).to_string()
}

/// The shop's side of UnivaPay's API, as the seed document shows it.
struct Shop {
    http: reqwest::Client,
    base: String,
    auth: String,
}

impl Shop {
    async fn post(
        &self,
        path: &str,
        key: Option<&str>,
        body: &Value,
    ) -> anyhow::Result<(Value, String)> {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("Authorization", &self.auth)
            .json(body);
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let idempotency = resp
            .headers()
            .get("Idempotency-Status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        let body: Value = resp.json().await?;
        anyhow::ensure!(status.is_success(), "POST {path}: {status} {body}");
        Ok((body, idempotency))
    }

    /// Step 1: a transaction token. Konbini: customer name, phone, brand, email, metadata.
    async fn token(&self, index: usize, brand: Option<&str>) -> anyhow::Result<String> {
        let body = match brand {
            Some(brand) => json!({
                "payment_type": "konbini",
                "type": "one_time",
                "email": format!("customer{index}@example.com"),
                "data": {
                    "customer_name": format!("山田 太郎 {index}"),
                    "phone_number": {"country_code": 81, "local_number": "0312345678"},
                    "convenience_store": brand,
                    "expiration_period": "P7D"
                },
                "metadata": {"orderid": order_number(index)}
            }),
            None => json!({
                "payment_type": "card",
                "type": "one_time",
                "email": format!("customer{index}@example.com"),
                "data": {"cardholder": "TARO YAMADA", "card_number": "4242424242424242",
                         "exp_month": 12, "exp_year": 2030, "cvv": "123"}
            }),
        };
        let (token, _) = self.post("/tokens", None, &body).await?;
        Ok(token["id"].as_str().unwrap_or_default().to_owned())
    }

    /// Step 2: the charge, under an idempotency key (the order id), so a retry after a
    /// lost answer cannot charge twice.
    async fn charge(
        &self,
        index: usize,
        token: &str,
        amount: i64,
    ) -> anyhow::Result<(Value, String)> {
        let body = json!({
            "transaction_token_id": token,
            "amount": amount,
            "currency": "JPY",
            "metadata": {"orderid": order_number(index)}
        });
        self.post("/charges", Some(&format!("order-{index}")), &body)
            .await
    }
}

/// Step 1 and 2 for every order: konbini charges over all the brands, and a few cards.
async fn create_charges_like_the_shop(
    sim: &RunningSim,
    creds: &Credentials,
) -> anyhow::Result<Vec<Created>> {
    let shop = Shop {
        http: reqwest::Client::new(),
        base: sim.base_url(),
        auth: creds.authorization(),
    };
    let mut created = Vec::new();
    for index in 0..KONBINI + CARDS {
        let brand = (index < KONBINI).then(|| CHAINS[index % CHAINS.len()]);
        let amount = 300 + (index as i64 * 7919 % 3000) * 10;
        let token = shop.token(index, brand).await?;
        let (charge, _) = shop.charge(index, &token, amount).await?;
        created.push(Created {
            index,
            id: charge["id"].as_str().unwrap_or_default().to_owned(),
            store_id: charge["store_id"].as_str().unwrap_or_default().to_owned(),
            amount,
            brand,
        });
    }
    // The same request again, as after a lost answer: the same charge comes back.
    let first = &created[0];
    let token = sim
        .charge(&first.id)
        .map(|c| c.token_id())
        .unwrap_or_default();
    let (again, status) = shop.charge(0, &token, first.amount).await?;
    println!(
        "The shop created {KONBINI} konbini and {CARDS} card charges: POST /tokens, then POST /charges \
         with an Idempotency-Key.\nSending order-0 again answers Idempotency-Status: {status}, \
         the same charge ({}).\n",
        if again["id"] == first.id.as_str() {
            "same id"
        } else {
            "a different id!"
        }
    );
    Ok(created)
}

/// Step 2 of the demo: the shop's own plain INSERT for most of its konbini charges; it
/// "forgets" every 24th (its process crashed between UnivaPay's answer and the INSERT).
/// Returns the forgotten ones.
fn register_most(db: &Path, created: &[Created]) -> anyhow::Result<Vec<Created>> {
    let mut conn = Connection::open(db)?;
    let tx = conn.transaction()?;
    let mut forgotten = Vec::new();
    {
        let mut insert = tx.prepare(
            "INSERT INTO charges (charge_id, store_id, requested_amount) VALUES (?1, ?2, ?3)",
        )?;
        for c in created.iter().filter(|c| c.brand.is_some()) {
            if c.index % 24 == 5 {
                forgotten.push(c.clone());
            } else {
                insert.execute(rusqlite::params![c.id, c.store_id, c.amount])?;
            }
        }
    }
    tx.commit()?;
    println!(
        "It registered {} of them in {DB} (one plain INSERT each) and forgot {}.\n",
        KONBINI - forgotten.len(),
        forgotten.len()
    );
    Ok(forgotten)
}

/// Step 3: the discovery sweep, and what it found.
async fn discover(
    reconciler: &Reconciler,
    db: &Path,
    forgotten: &[Created],
    created: &[Created],
) -> anyhow::Result<()> {
    let held = hold_lock(reconciler)?;
    let report = discovery::sweep(reconciler, &held, Trigger::Once, &CancellationToken::new())
        .await?
        .ok_or_else(|| anyhow::anyhow!("discovery is off"))?;
    println!("== Discovery sweep");
    println!("{}", report.summary_line());
    let conn = Connection::open(db)?;
    let mut stmt = conn.prepare(
        "SELECT charge_id, requested_amount, coalesce(konbini, '-'), coalesce(expires_at, '-')
         FROM charges WHERE origin = 'discovered' ORDER BY created_at, charge_id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
        ))
    })?;
    println!("  Found at UnivaPay, never registered by the shop:");
    let mut found = 0;
    for row in rows {
        let (id, amount, brand, expires) = row?;
        println!("  {id}  {amount:>6} yen  {brand:<20} payable until {expires}");
        found += 1;
    }
    let mut cards_watched = 0;
    for c in created.iter().filter(|c| c.brand.is_none()) {
        cards_watched += count(
            &conn,
            &format!("SELECT count(*) FROM charges WHERE charge_id = '{}'", c.id),
        )?;
    }
    println!(
        "  {found} of the {} forgotten; {cards_watched} of the {CARDS} card charges; {} charges \
         watched in all, {} with brand and deadline filled in from their tokens.\n",
        forgotten.len(),
        count(&conn, "SELECT count(*) FROM charges")?,
        report.counts.enriched,
    );
    Ok(())
}

/// Step 5: most customers pay at the konbini, one pays the wrong amount, the merchant
/// cancels one order; the rest never pay and expire at their deadline.
fn customers_pay(sim: &Sim, created: &[Created]) -> anyhow::Result<()> {
    let (mut paid, mut canceled) = (0, 0);
    // The charge paid during the webhook moment is final already.
    let open = |c: &&Created| sim.charge(&c.id).is_some_and(|s| !s.is_final());
    for c in created.iter().filter(|c| c.brand.is_some()).filter(open) {
        if c.index == 2 {
            sim.pay_with(&c.id, c.amount - 100, "JPY")?;
            paid += 1;
        } else if c.index == 4 {
            sim.cancel(&c.id)?;
            canceled += 1;
        } else if c.index % 10 < 7 {
            sim.pay(&c.id)?;
            paid += 1;
        }
    }
    println!(
        "Customers paid {paid} charges at the konbini (one of them 100 yen short), the merchant \
         canceled {canceled}; the rest are left to expire.\n"
    );
    Ok(())
}

/// The pass lock, which a pass or sweep takes as proof that no other pass runs.
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

fn count(conn: &Connection, sql: &str) -> anyhow::Result<i64> {
    Ok(conn.query_row(sql, [], |r| r.get(0))?)
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
        "SELECT charge_id, requested_amount, payment_number, coalesce(konbini, '-'),
                coalesce(payment_url, '')
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
            r.get::<_, String>(4)?,
        ))
    })?;
    for row in rows {
        let (id, amount, number, brand, url) = row?;
        println!("  {id}  {amount:>6} yen  {brand:<14} payment number {number}  {url}");
    }
    println!();
    Ok(())
}

/// What support staff read for a Pay-easy customer: the payment number, and the
/// collection-agency number the API never returns.
fn print_pay_easy(db: &Path) -> anyhow::Result<()> {
    let conn = Connection::open(db)?;
    let mut stmt = conn.prepare(
        "SELECT charge_id, payment_number, collection_number, origin FROM open_charges
         WHERE konbini = 'pay_easy' ORDER BY origin = 'discovered' DESC, charge_id LIMIT 3",
    )?;
    println!("  Pay-easy customers need two numbers (from open_charges):");
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, Option<String>>(1)?,
            r.get::<_, Option<String>>(2)?,
            r.get::<_, String>(3)?,
        ))
    })?;
    for row in rows {
        let (id, number, collection, origin) = row?;
        println!(
            "  {id}  payment number {}  collection number {}  ({origin})",
            number.as_deref().unwrap_or("-"),
            collection.as_deref().unwrap_or("-")
        );
    }
    println!();
    Ok(())
}

fn print_mismatches(db: &Path) -> anyhow::Result<()> {
    let conn = Connection::open(db)?;
    let total = count(&conn, "SELECT count(*) FROM mismatched_charges")?;
    println!("  Amount mismatches ({total}), paid but not what was asked for:");
    let mut stmt = conn.prepare(
        "SELECT charge_id, mismatch_detail FROM mismatched_charges ORDER BY charge_id LIMIT 8",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    for row in rows {
        let (id, detail) = row?;
        println!("  {id}  {detail}");
    }
    Ok(())
}

fn print_requests(sim: &Sim, first: &PassReport, second: &PassReport) {
    let c = sim.counters();
    println!(
        "\nThe simulator answered {} requests: {} charge GETs, {} transaction history pages, \
         {} token GETs, {} tokens and {} charges created; {} answered 429 (rate limited).",
        c.api_requests,
        c.requests,
        c.history_lists,
        c.token_gets,
        c.token_creates,
        c.charge_creates,
        c.api_rate_limited
    );
    println!(
        "Flagged mismatches: {} in the first pass, {} in the second (the CLI's --once would exit 2 for these).",
        first.counts.mismatches, second.counts.mismatches
    );
    println!("\nLook inside:");
    println!(
        "  sqlite3 {DB} \"SELECT state, provider_status, origin, count(*) FROM charges GROUP BY 1, 2, 3\""
    );
    println!("  sqlite3 {DB} \"SELECT * FROM discovery_sweeps\"");
    println!("  sqlite3 {DB} \"SELECT * FROM open_charges WHERE konbini = 'pay_easy'\"");
    println!("  sqlite3 {DB} \"SELECT * FROM mismatched_charges\"");
    println!("  sqlite3 {DB} \"SELECT * FROM runs\"");
}
