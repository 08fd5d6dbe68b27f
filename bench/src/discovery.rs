//! The discovery benchmark: what one sweep costs in requests per 1,000 charges created.
//!
//! A `univapay-sim` process serves one store's charges, created over the last three days,
//! a fifth of them cards. The ledger holds some share of the konbini ones (registered the
//! way a shop does), and the real `konbini-reconciler --once` runs with `[discovery]` on
//! (interval 1 s), again until a sweep has caught up: its sweeps list the store's konbini
//! transaction history and verify each charge the ledger lacks (charge GET, token GET).
//! The sweeps' own count of requests comes from their `discovery_sweeps` rows (each pass
//! after a sweep makes charge GETs of its own), checked against the simulator's history
//! and token counters.
//!
//! Three shops: one that registers everything (the sweep only lists), one that forgets
//! one konbini charge in ten, and one that registers nothing (discovery is its whole
//! integration).

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use konbini_reconciler::ledger::Ledger;
use univapay_sim::{CounterSnapshot, Credentials, Mix, Population};

const SEED: u64 = 12;
/// Card weight against the konbini outcomes' 100: about one charge in five is a card.
const CARDS: u32 = 25;

/// One shop: which of its konbini charges it registers itself.
struct Shop {
    name: &'static str,
    /// `Some(n)`: every n-th konbini charge is left out (`u64::MAX`: none is); `None`:
    /// none is registered.
    forget_every: Option<u64>,
}

/// Runs the three shops with `charges` charges each and prints a line per shop.
pub fn run(bin_dir: &Path, work: &Path, quick: bool) -> Result<(), String> {
    let charges = if quick { 2_000 } else { 20_000 };
    println!(
        "== discovery (requests one sweep costs per 1,000 charges created; N={charges} in one store, \
         about 1 in 5 a card)"
    );
    let shops = [
        Shop {
            name: "registers every charge",
            forget_every: Some(u64::MAX),
        },
        Shop {
            name: "forgets 1 konbini charge in 10",
            forget_every: Some(10),
        },
        Shop {
            name: "registers none (discovery does it all)",
            forget_every: None,
        },
    ];
    for shop in &shops {
        let dir = work.join(format!("discovery-{}", shop.forget_every.unwrap_or(0)));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let line = run_shop(shop, charges, bin_dir, &dir)?;
        println!("  {:<40} {line}", shop.name);
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

fn population(charges: u64) -> Population {
    Population {
        stores: 1,
        mix: Mix::default().with_cards(CARDS),
        ..Population::new(charges, SEED)
    }
}

/// `--once` runs until the sweeps have caught up (a sweep verifies at most 1,000 charges;
/// the rest wait for the next), at most this many times.
const MAX_RUNS: usize = 20;

fn run_shop(shop: &Shop, charges: u64, bin_dir: &Path, dir: &Path) -> Result<String, String> {
    let db = dir.join("bench.db");
    let forgotten = seed_ledger(&db, charges, shop.forget_every)?;
    let mut sim = start_sim(bin_dir, charges)?;
    let config = dir.join("config.toml");
    write_config(&config, &sim.1, &db)?;
    let mut outcome = String::new();
    let mut runs = 0;
    while runs < MAX_RUNS && outcome != "ok" {
        if runs > 0 {
            // The next sweep is due once the interval (1 s) since the last has passed.
            std::thread::sleep(std::time::Duration::from_millis(1100));
        }
        runs += 1;
        if let Err(e) = once(bin_dir, &config) {
            let _ = stop_sim(&mut sim);
            return Err(e);
        }
        let conn = rusqlite::Connection::open(&db).map_err(|e| e.to_string())?;
        outcome = conn
            .query_row(
                "SELECT outcome FROM discovery_sweeps ORDER BY id DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .map_err(|e| format!("no sweep recorded: {e}"))?;
    }
    let counters = stop_sim(&mut sim)?;
    let conn = rusqlite::Connection::open(&db).map_err(|e| e.to_string())?;
    let (sweeps, requests, pages, discovered): (u64, u64, u64, u64) = conn
        .query_row(
            "SELECT count(*), sum(requests), sum(pages), sum(discovered) FROM discovery_sweeps",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .map_err(|e| e.to_string())?;
    // Cross-check: pages are history pages, and each discovered charge one token GET.
    if counters.history_lists != pages || counters.token_gets != discovered {
        return Err(format!(
            "sweep rows ({pages} pages, {discovered} discovered) disagree with the simulator \
             ({} history pages, {} token GETs)",
            counters.history_lists, counters.token_gets
        ));
    }
    Ok(format!(
        "{:>6.1} requests per 1,000 created ({requests} requests in {sweeps} sweep(s): {pages} \
         pages, {discovered} of {forgotten} forgotten konbini charges registered; last sweep \
         {outcome})",
        requests as f64 * 1000.0 / charges as f64
    ))
}

/// One `konbini-reconciler --once`: its sweep, then its pass.
fn once(bin_dir: &Path, config: &Path) -> Result<(), String> {
    let out = Command::new(bin_dir.join("konbini-reconciler"))
        .arg("--config")
        .arg(config)
        .arg("--once")
        .env_remove("RUST_LOG")
        .output()
        .map_err(|e| format!("cannot run konbini-reconciler: {e}"))?;
    match out.status.code() {
        Some(0 | 2) => Ok(()),
        code => Err(format!(
            "konbini-reconciler exited {code:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// A fresh ledger with the shop's registrations; returns how many konbini charges it left
/// out.
fn seed_ledger(db: &Path, charges: u64, forget_every: Option<u64>) -> Result<u64, String> {
    drop(Ledger::open(db, std::time::Duration::from_secs(5)).map_err(|e| e.to_string())?);
    let mut conn = rusqlite::Connection::open(db).map_err(|e| e.to_string())?;
    let pop = population(charges);
    let tx = conn.transaction().map_err(|e| e.to_string())?;
    let mut forgotten = 0;
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO charges (charge_id, store_id, requested_amount) VALUES (?1, ?2, ?3)",
            )
            .map_err(|e| e.to_string())?;
        for i in 0..pop.count {
            let p = pop.plan(i);
            if p.is_card() {
                continue;
            }
            let keep = forget_every.is_some_and(|n| !(i + 1).is_multiple_of(n));
            if keep {
                insert
                    .execute(rusqlite::params![p.id, p.store_id, p.amount])
                    .map_err(|e| e.to_string())?;
            } else {
                forgotten += 1;
            }
        }
    }
    tx.commit().map_err(|e| e.to_string())?;
    Ok(forgotten)
}

/// A `univapay-sim` process with the population; returns it and its base URL.
fn start_sim(bin_dir: &Path, charges: u64) -> Result<(Child, String), String> {
    let mut child = Command::new(bin_dir.join("univapay-sim"))
        .args(["--charges", &charges.to_string()])
        .args(["--seed", &SEED.to_string()])
        .args(["--stores", "1"])
        .args(["--cards", &CARDS.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start univapay-sim: {e}"))?;
    let mut line = String::new();
    let out = child.stdout.as_mut().ok_or("no simulator stdout")?;
    BufReader::new(out)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let url = line
        .trim()
        .strip_prefix("univapay-sim listening on ")
        .ok_or_else(|| format!("unexpected simulator output {line:?}"))?
        .to_owned();
    Ok((child, url))
}

/// Stops the simulator; it prints its counters as it goes.
fn stop_sim(sim: &mut (Child, String)) -> Result<CounterSnapshot, String> {
    // SAFETY: a plain signal to our own child, not yet reaped.
    unsafe {
        libc::kill(sim.0.id() as i32, libc::SIGTERM);
    }
    let mut rest = String::new();
    if let Some(mut out) = sim.0.stdout.take() {
        let _ = out.read_to_string(&mut rest);
    }
    let _ = sim.0.wait();
    serde_json::from_str(rest.trim()).map_err(|e| format!("simulator counters {rest:?}: {e}"))
}

fn write_config(config: &Path, base_url: &str, db: &Path) -> Result<(), String> {
    let creds = Credentials::default();
    std::fs::write(
        config,
        format!(
            "[api]\nbase_url = \"{base_url}\"\napp_token = \"{}\"\nsecret = \"{}\"\n\
             timeout = \"30s\"\nconcurrency = 16\n[database]\npath = \"{}\"\n\
             [discovery]\nstores = [\"{}\"]\ninterval = \"1s\"\n",
            creds.app_token,
            creds.secret,
            db.display(),
            Population::store_id(0)
        ),
    )
    .map_err(|e| e.to_string())?;
    std::fs::set_permissions(config, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| e.to_string())
}
