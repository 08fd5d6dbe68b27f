//! Crash anywhere: the real binary is killed with SIGKILL at random instants while it
//! reconciles a few thousand charges against a fake UnivaPay whose answers change between
//! passes; then a clean pass runs and the ledger is checked:
//! - `PRAGMA integrity_check` is ok;
//! - every charge's state and provider status match what the fake says;
//! - each charge's `transition` events form one unbroken chain from `pending` to its
//!   current state, with no duplicates and no gaps;
//! - the mismatch flag and its single event agree;
//! - every `runs` row is finished or visibly `interrupted`.
//!
//! Kills during the very first start (schema creation) are included.
//!
//! CI runs a short version. For a long run:
//! `CRASH_TRIALS=300 CRASH_CHARGES=5000 cargo test --release --test crash -- --nocapture`;
//! a failure prints its seed, and `CRASH_SEED=<seed>` replays it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rusqlite::Connection;
use univapay_sim::{Credentials, Sim, SimCharge};

// The launcher and config builder of the `it` tests, one implementation for both
// binaries; this one uses a part of each.
#[allow(dead_code)]
#[path = "it/config.rs"]
mod config;
#[allow(dead_code)]
#[path = "it/util.rs"]
mod util;

use config::TestConfig;
use util::TestCommand;

const STORE: &str = "store-crash";

/// The columns of a `charges` row the final check compares with the fake.
struct ChargeRow {
    state: String,
    provider_status: Option<String>,
    amount_mismatch: i64,
}

/// The columns of a `charge_events` row the final check follows.
struct EventRow {
    charge_id: String,
    kind: String,
    from_state: Option<String>,
    to_state: Option<String>,
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn write_config(dir: &Path, base_url: &str, db: &Path) -> PathBuf {
    let config = TestConfig::new(base_url, &Credentials::default(), db).with(|c| {
        c.api.timeout = Some(Duration::from_secs(5));
        c.api.concurrency = Some(8);
        // Every open charge is due again by the next pass, failed checks included.
        c.reconcile.recheck_interval = Some(Duration::from_millis(1));
        c.reconcile.retry_backoff = Some(Duration::from_millis(1));
        c.reconcile.retry_backoff_max = Some(Duration::from_millis(2));
        c.reconcile.batch_size = Some(200);
        c.schedule.lock_wait = Some(Duration::from_secs(10));
    });
    let path = dir.join("config.toml");
    config.write(&path);
    path
}

/// `--once` on `config`, in the config's directory, with logging off: only the exit status
/// and the ledger matter here.
fn once(config: &Path) -> TestCommand {
    let mut cmd = TestCommand::new(config.parent().unwrap());
    cmd.config(config).once().env("RUST_LOG", "off");
    cmd
}

/// Starts a pass and SIGKILLs it after `after`. `Some(elapsed)` when it finished first.
fn run_and_kill(config: &Path, after: Duration) -> Option<Duration> {
    let mut child = once(config).spawn();
    let started = Instant::now();
    let deadline = started + after;
    loop {
        if child.has_exited() {
            return Some(started.elapsed());
        }
        if Instant::now() >= deadline {
            child.kill();
            return None;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Runs a pass to completion; the exit status must be 0 or 2 (mismatch).
fn run_clean(config: &Path) -> Duration {
    let started = Instant::now();
    let out = once(config).run();
    let code = out.code();
    assert!(
        matches!(code, Some(0) | Some(2)),
        "clean pass failed ({code:?}): {}",
        out.stderr()
    );
    started.elapsed()
}

fn integrity_ok(db: &Path) {
    let conn = Connection::open(db).unwrap();
    let r: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(r, "ok");
}

/// Where the fake moves a charge next; `None` once it is final.
fn advance(c: SimCharge, rng: &mut StdRng) -> Option<SimCharge> {
    match c.status.as_str() {
        "pending" => Some(c.awaiting(
            &format!(
                "{:04}-{:04}",
                rng.random_range(0..10000),
                rng.random_range(0..10000)
            ),
            None,
        )),
        "awaiting" => Some(match rng.random_range(0..10) {
            0..=4 => c.paid(),
            5 => {
                let short = c.requested_amount - 1;
                c.paid_with(short, "JPY")
            }
            6 | 7 => c.expired(),
            8 => c.with_status("canceled"),
            _ => c.with_status("error"),
        }),
        _ => None,
    }
}

fn our_state(word: &str) -> &'static str {
    match word {
        "pending" => "pending",
        "awaiting" | "authorized" => "awaiting",
        "successful" => "successful",
        _ => "failed",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_anywhere_loses_nothing() {
    let seed = env_num("CRASH_SEED", rand::random::<u32>() as u64);
    let trials = env_num("CRASH_TRIALS", 12);
    let charges = env_num("CRASH_CHARGES", 2000) as usize;
    let migration_trials = env_num("CRASH_MIGRATION_TRIALS", 8);
    println!(
        "crash harness: seed {seed}, {trials} kill trials, {charges} charges, {migration_trials} kills during first start (CRASH_SEED={seed} replays)"
    );
    let mut rng = StdRng::seed_from_u64(seed);

    let sim = Sim::start(Credentials::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let config = write_config(dir.path(), &sim.base_url(), &db);

    // 1. Kills during the first start: the schema is created whole or not at all.
    let mut killed_in_migration = 0;
    // What each kill left behind: no file yet, an empty file, a complete schema.
    let (mut no_file, mut empty, mut complete) = (0, 0, 0);
    for _ in 0..migration_trials {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
        }
        let after = Duration::from_micros(rng.random_range(0..15_000));
        if tokio::task::block_in_place(|| run_and_kill(&config, after)).is_none() {
            killed_in_migration += 1;
        }
        if !db.exists() {
            no_file += 1;
        } else {
            integrity_ok(&db);
            let conn = Connection::open(&db).unwrap();
            let version: i64 = conn
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .unwrap();
            let tables: i64 = conn
                .query_row(
                    "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name IN ('charges', 'charge_events', 'runs')",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert!(
                (version == 0 && tables == 0) || (version >= 1 && tables == 3),
                "half a schema after a kill (seed {seed}): user_version {version}, {tables} tables"
            );
            if tables == 0 {
                empty += 1;
            } else {
                complete += 1;
            }
        }
        // The next start must complete whatever the kill left.
        tokio::task::block_in_place(|| run_clean(&config));
    }
    println!(
        "  first-start kills: {killed_in_migration}/{migration_trials} landed; left no file {no_file}, no schema {empty}, whole schema {complete}"
    );

    // 2. Register the charges; the fake knows them all.
    {
        let mut conn = Connection::open(&db).unwrap();
        let tx = conn.transaction().unwrap();
        for i in 0..charges {
            let id = format!("crash-{i:05}");
            let amount = 100 + (i as i64 % 5000);
            tx.execute(
                "INSERT INTO charges (charge_id, store_id, requested_amount) VALUES (?1, ?2, ?3)",
                rusqlite::params![id, STORE, amount],
            )
            .unwrap();
            sim.upsert(SimCharge::new(&id, STORE, amount));
        }
        tx.commit().unwrap();
    }
    let ids: Vec<String> = (0..charges).map(|i| format!("crash-{i:05}")).collect();
    let mut full_pass = tokio::task::block_in_place(|| run_clean(&config));
    println!("  one full pass takes {full_pass:?}");
    // Slow enough that many charges are still open, and so still checked, in late trials.
    let step = (4.0 / trials as f64).min(0.25);

    // 3. Kill passes at random instants; the fake moves some charges between passes.
    let mut killed = 0;
    for _ in 0..trials {
        for id in &ids {
            if rng.random_bool(step)
                && let Some(c) = sim.charge(id)
                && let Some(next) = advance(c, &mut rng)
            {
                sim.upsert(next);
            }
        }
        let after = Duration::from_micros(
            rng.random_range(0..(full_pass.as_micros() as u64 * 6 / 5).max(1)),
        );
        match tokio::task::block_in_place(|| run_and_kill(&config, after)) {
            None => killed += 1,
            // Passes shorten as charges become final; kill within the current length.
            Some(elapsed) => full_pass = elapsed,
        }
        integrity_ok(&db);
    }
    println!("  passes killed mid-way: {killed}/{trials}");

    // 4. A clean pass; then the ledger must agree with the fake and with itself.
    tokio::task::block_in_place(|| run_clean(&config));
    integrity_ok(&db);
    let conn = Connection::open(&db).unwrap();

    let mut rows: HashMap<String, ChargeRow> = HashMap::new();
    {
        let mut stmt = conn
            .prepare("SELECT charge_id, state, provider_status, amount_mismatch FROM charges")
            .unwrap();
        for r in stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    ChargeRow {
                        state: r.get(1)?,
                        provider_status: r.get(2)?,
                        amount_mismatch: r.get(3)?,
                    },
                ))
            })
            .unwrap()
        {
            let (id, row) = r.unwrap();
            rows.insert(id, row);
        }
    }
    assert_eq!(rows.len(), charges, "seed {seed}: charges lost or added");
    let mut chains: HashMap<String, Vec<(String, String)>> = HashMap::new();
    let mut mismatch_events: HashMap<String, i64> = HashMap::new();
    {
        let mut stmt = conn
            .prepare("SELECT charge_id, kind, from_state, to_state FROM charge_events ORDER BY id")
            .unwrap();
        for e in stmt
            .query_map([], |r| {
                Ok(EventRow {
                    charge_id: r.get(0)?,
                    kind: r.get(1)?,
                    from_state: r.get(2)?,
                    to_state: r.get(3)?,
                })
            })
            .unwrap()
        {
            let e = e.unwrap();
            match e.kind.as_str() {
                "transition" => chains
                    .entry(e.charge_id)
                    .or_default()
                    .push((e.from_state.unwrap(), e.to_state.unwrap())),
                "mismatch" => *mismatch_events.entry(e.charge_id).or_default() += 1,
                _ => {}
            }
        }
    }
    let mut transitions_seen = 0;
    for id in &ids {
        let fake = sim.charge(id).unwrap();
        let ChargeRow {
            state,
            provider_status,
            amount_mismatch,
        } = &rows[id];
        assert_eq!(state, our_state(&fake.status), "seed {seed}: {id} state");
        assert_eq!(
            provider_status.as_deref(),
            Some(fake.status.as_str()),
            "seed {seed}: {id}"
        );
        let chain = chains.get(id).cloned().unwrap_or_default();
        transitions_seen += chain.len();
        let mut at = "pending".to_owned();
        for (from, to) in &chain {
            assert_eq!(from, &at, "seed {seed}: {id} chain broken: {chain:?}");
            assert_ne!(from, to, "seed {seed}: {id} transition to itself");
            at = to.clone();
        }
        assert_eq!(
            &at, state,
            "seed {seed}: {id} chain ends at {at}, state is {state}"
        );
        let should_flag = fake
            .charged_amount
            .is_some_and(|a| a != fake.requested_amount);
        assert_eq!(
            *amount_mismatch == 1,
            should_flag,
            "seed {seed}: {id} mismatch flag"
        );
        assert_eq!(
            mismatch_events.get(id).copied().unwrap_or(0),
            i64::from(should_flag),
            "seed {seed}: {id} mismatch events"
        );
    }
    let open_runs: i64 = conn
        .query_row(
            "SELECT count(*) FROM runs WHERE finished_at IS NULL AND outcome <> 'interrupted'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        open_runs, 0,
        "seed {seed}: runs neither finished nor marked interrupted"
    );
    let (runs, interrupted): (i64, i64) = conn
        .query_row(
            "SELECT count(*), count(*) FILTER (WHERE outcome = 'interrupted') FROM runs",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    println!(
        "  checked: {charges} charges, {transitions_seen} transitions in unbroken chains, {runs} runs ({interrupted} interrupted), nothing lost"
    );
}
