//! The benchmark: `cargo run --release -p konbini-bench [-- SCENARIO... | --quick]`.
//!
//! For each scenario it seeds a fresh ledger with N charges (one transaction, one prepared
//! statement), starts `univapay-sim` as a separate process serving the same N charges,
//! runs the real release `konbini-reconciler --once` against it, and prints what the pass
//! achieved next to the theoretical bound of the setting: charges/s, requests and 429s
//! (from the simulator's counters), peak RSS and CPU seconds (from the kernel, `wait4`'s
//! rusage of the reconciler process, taken by a small launcher: see [`measure`]). It is a
//! tool that prints figures, not a test.
//!
//! Scenarios: `rate` (bucket-limited), `latency` (20 ms answers, concurrency 64), `cpu`
//! (no latency), `scale` (10k, 100k, 1M all due), `idle` (1M rows, none due). No argument
//! runs them all; `--quick` runs each at a small size as a smoke test.
//!
//! `konbini-bench delivery [--quick]` measures delivery to a local endpoint (see
//! [`delivery`]).
//!
//! `konbini-bench outage [--quick]` measures passes and hint checks beside a dead
//! delivery endpoint, and an endpoint down for a simulated day (see [`outage`]).
//!
//! `konbini-bench month [...]` is another benchmark: a month on simulated time (see
//! [`month`]).

mod delivery;
mod discovery;
mod measure;
mod month;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use konbini_reconciler::ledger::Ledger;
use univapay_sim::{CounterSnapshot, Credentials, Population};

use measure::{Usage, run_child, wait4};

mod month_webhook;
mod outage;
mod reference;

/// A seed shared by the ledger and the simulator, so both hold the same charges.
const SEED: u64 = 4;

#[derive(Debug, Clone)]
struct Scenario {
    name: String,
    charges: u64,
    /// None: nothing is due (the idle scenario).
    due: bool,
    concurrency: usize,
    latency: Duration,
    /// (burst, per minute); None: no rate limit (and no headers).
    rate_limit: Option<(u32, u32)>,
    /// Also run the reference loop on the same setting and report the CPU ratio.
    reference: bool,
    /// `api.budget_share` (unset: the default, 0.5).
    budget_share: Option<f64>,
}

/// `api.budget_share` when the config does not set it.
const DEFAULT_BUDGET_SHARE: f64 = 0.5;

impl Scenario {
    fn new(name: &str, charges: u64) -> Self {
        Scenario {
            name: name.into(),
            charges,
            due: true,
            concurrency: 64,
            latency: Duration::ZERO,
            rate_limit: None,
            reference: false,
            budget_share: None,
        }
    }

    /// The bound of the setting, charges per second, with how it is derived.
    fn bound(&self) -> Option<(f64, String)> {
        if let Some((burst, per_minute)) = self.rate_limit {
            // The reconciler's share: that part of the refill, and the burst down to the
            // part kept for the shop.
            let share = self.budget_share.unwrap_or(DEFAULT_BUDGET_SHARE);
            let rate = share * f64::from(per_minute) / 60.0;
            let burst = share * f64::from(burst);
            let secs = (self.charges as f64 - burst).max(0.0) / rate;
            return Some((
                self.charges as f64 / secs,
                format!(
                    "share {share} of burst {burst:.0}, then {:.0}/min",
                    rate * 60.0
                ),
            ));
        }
        if !self.latency.is_zero() {
            let c = self.concurrency as f64;
            return Some((
                c / self.latency.as_secs_f64(),
                format!("C/L = {}/{:?}", self.concurrency, self.latency),
            ));
        }
        None
    }
}

/// What one run measured.
#[derive(Debug)]
struct Measured {
    seed_secs: f64,
    checked: u64,
    /// The pass's own duration, from its summary line.
    pass_secs: f64,
    /// The whole process, start to exit.
    wall_secs: f64,
    exit: i32,
    usage: Usage,
    sim: CounterSnapshot,
    sim_cpu_secs: f64,
    reference: Option<Reference>,
}

/// What the reference loop measured on the same setting.
#[derive(Debug)]
struct Reference {
    checked: u64,
    wall_secs: f64,
    usage: Usage,
}

fn scenarios(quick: bool) -> Vec<Scenario> {
    let k = |n: u64| if quick { (n / 100).max(500) } else { n };
    let mut v = vec![];
    v.push(Scenario {
        concurrency: 16,
        latency: Duration::from_millis(5),
        rate_limit: Some((200, 12_000)),
        ..Scenario::new("rate", if quick { 800 } else { 3000 })
    });
    // The same with the whole budget: how close the pacer gets to the bucket's bound.
    v.push(Scenario {
        concurrency: 16,
        latency: Duration::from_millis(5),
        rate_limit: Some((200, 12_000)),
        budget_share: Some(1.0),
        ..Scenario::new("rate-all", if quick { 800 } else { 3000 })
    });
    v.push(Scenario {
        latency: Duration::from_millis(20),
        ..Scenario::new("latency", k(20_000))
    });
    // The CPU comparison: zero latency, so CPU is all there is to measure, against the
    // reference loop doing the same work in the same run.
    v.push(Scenario {
        concurrency: 32,
        reference: true,
        ..Scenario::new("cpu", if quick { 2000 } else { 20_000 })
    });
    for n in [10_000, 100_000, 1_000_000] {
        v.push(Scenario::new(&format!("scale-{}", short(n)), k(n)));
    }
    v.push(Scenario {
        due: false,
        ..Scenario::new("idle", k(1_000_000))
    });
    v
}

fn short(n: u64) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(measure::LAUNCHER_FLAG) {
        measure::launcher_main(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("--reference-loop") {
        if let Err(e) = reference::main(&args[1..]) {
            eprintln!("konbini-bench: reference loop: {e}");
            std::process::exit(1);
        }
        return;
    }
    if args.first().is_some_and(|a| a == "delivery") {
        return delivery::main(&args[1..]);
    }
    if args.first().is_some_and(|a| a == "outage") {
        if let Err(e) = outage::main(&args[1..]) {
            eprintln!("konbini-bench: outage: {e}");
            std::process::exit(1);
        }
        return;
    }
    if args.first().is_some_and(|a| a == "month") {
        return month::main(&args[1..]);
    }
    if args.first().is_some_and(|a| a == "discovery") {
        let quick = args.iter().any(|a| a == "--quick");
        let work = std::env::temp_dir().join(format!("konbini-bench-{}", std::process::id()));
        let ran = build_binaries().and_then(|bin_dir| {
            std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
            discovery::run(&bin_dir, &work, quick)
        });
        let _ = std::fs::remove_dir_all(&work);
        if let Err(e) = ran {
            eprintln!("konbini-bench: error: {e}");
            std::process::exit(1);
        }
        return;
    }
    if args.first().map(String::as_str) == Some("month-webhook") {
        if let Err(e) = month_webhook::main(&args[1..]) {
            eprintln!("konbini-bench: month-webhook: {e}");
            std::process::exit(1);
        }
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let wanted: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with("--"))
        .map(String::as_str)
        .collect();
    let chosen: Vec<Scenario> = scenarios(quick)
        .into_iter()
        .filter(|s| {
            wanted.is_empty()
                || wanted
                    .iter()
                    .any(|w| s.name == *w || s.name.starts_with(&format!("{w}-")))
        })
        .collect();
    if chosen.is_empty() {
        eprintln!("konbini-bench: no such scenario; choose from rate latency cpu scale idle");
        std::process::exit(1);
    }
    if let Err(e) = run(&chosen) {
        eprintln!("konbini-bench: error: {e}");
        std::process::exit(1);
    }
}

fn run(chosen: &[Scenario]) -> Result<(), String> {
    let bin_dir = build_binaries()?;
    let work = std::env::temp_dir().join(format!("konbini-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    println!("machine: {}", machine());
    println!("work dir: {}\n", work.display());
    let mut rows = vec![];
    for s in chosen {
        println!(
            "== {} (N={}, concurrency {}, latency {:?}, rate limit {})",
            s.name,
            s.charges,
            s.concurrency,
            s.latency,
            s.rate_limit
                .map(|(b, r)| format!("burst {b} + {r}/min"))
                .unwrap_or_else(|| "none".into())
        );
        let dir = work.join(&s.name);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let m = if s.reference {
            compare(s, &bin_dir, &dir)?
        } else {
            run_one(s, &bin_dir, &dir)?
        };
        print_one(s, &m);
        rows.push((s.clone(), m));
        let _ = std::fs::remove_dir_all(&dir);
    }
    let _ = std::fs::remove_dir_all(&work);
    println!("\n{}", table(&rows));
    Ok(())
}

/// Builds the release binaries this benchmark runs and returns their directory. Only
/// those two: a build of the whole workspace may relink this very binary (its features
/// unified with the others'), and the launcher it spawns (`current_exe`) would then be a
/// deleted file.
fn build_binaries() -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let status = Command::new(cargo)
        .args(["build", "--release", "--quiet"])
        .args(["-p", "konbini-reconciler", "-p", "univapay-sim", "--bins"])
        .arg("--manifest-path")
        .arg(&manifest)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err("building the release binaries failed".into());
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = exe.parent().ok_or("no directory")?.to_owned();
    for b in ["konbini-reconciler", "univapay-sim"] {
        if !dir.join(b).is_file() {
            return Err(format!("{} not found next to {}", b, exe.display()));
        }
    }
    Ok(dir)
}

fn run_one(s: &Scenario, bin_dir: &Path, dir: &Path) -> Result<Measured, String> {
    let db = dir.join("bench.db");
    for stale in ["bench.db", "bench.db-wal", "bench.db-shm", "bench.db.lock"] {
        let _ = std::fs::remove_file(dir.join(stale));
    }
    let t = Instant::now();
    seed_ledger(&db, s)?;
    let seed_secs = t.elapsed().as_secs_f64();
    println!(
        "  seeded {} rows in {seed_secs:.2} s (one transaction)",
        s.charges
    );
    let sim = Simulator::start(s, bin_dir)?;
    let config = dir.join("config.toml");
    write_config(&config, &sim.base_url, s, &db)?;

    let started = Instant::now();
    // The default log level, as a user runs it: RUST_LOG is removed, not set.
    let mut cmd = Command::new(bin_dir.join("konbini-reconciler"));
    cmd.arg("--config")
        .arg(&config)
        .arg("--once")
        .env_remove("RUST_LOG");
    let (exit, usage, out, err) = run_child(cmd)?;
    let wall_secs = started.elapsed().as_secs_f64();
    if exit != 0 && exit != 2 {
        return Err(format!("konbini-reconciler exited {exit}: {}", err.trim()));
    }
    let (checked, _) = parse_summary(&out).ok_or_else(|| format!("no summary line in {out:?}"))?;
    let pass_secs = pass_duration(&db)?;
    let (counters, sim_cpu_secs) = sim.stop()?;
    Ok(Measured {
        seed_secs,
        checked,
        pass_secs,
        wall_secs,
        exit,
        usage,
        sim: counters,
        sim_cpu_secs,
        reference: None,
    })
}

/// Runs of the reconciler and of the reference loop, taken in turns so that both see the
/// same machine (this one is shared and noisy): the run of each with the median CPU per
/// charge is kept, and the ratio is between those two.
const COMPARISON_ROUNDS: usize = 5;

fn compare(s: &Scenario, bin_dir: &Path, dir: &Path) -> Result<Measured, String> {
    // Instruction counts repeat exactly from run to run: one round says it all, and
    // each takes minutes under valgrind.
    let rounds = if std::env::var_os(measure::CALLGRIND_ENV).is_some() {
        1
    } else {
        COMPARISON_ROUNDS
    };
    let mut ours = Vec::with_capacity(rounds);
    let mut refs = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let m = run_one(s, bin_dir, dir)?;
        let r = run_reference(s, bin_dir, dir)?;
        println!(
            "  round {}: reconciler {:.1} us per charge, reference {:.1} us per charge",
            round + 1,
            m.usage.per_charge(m.checked).0,
            r.usage.per_charge(r.checked).0
        );
        ours.push(m);
        refs.push(r);
    }
    ours.sort_by(|a, b| {
        a.usage
            .per_charge(a.checked)
            .0
            .total_cmp(&b.usage.per_charge(b.checked).0)
    });
    refs.sort_by(|a, b| {
        a.usage
            .per_charge(a.checked)
            .0
            .total_cmp(&b.usage.per_charge(b.checked).0)
    });
    let mut m = ours.swap_remove(rounds / 2);
    m.reference = Some(refs.swap_remove(rounds / 2));
    Ok(m)
}

/// The reference loop on a fresh ledger and simulator of the same setting.
fn run_reference(s: &Scenario, bin_dir: &Path, dir: &Path) -> Result<Reference, String> {
    let db = dir.join("reference.db");
    for stale in ["reference.db", "reference.db-wal", "reference.db-shm"] {
        let _ = std::fs::remove_file(dir.join(stale));
    }
    seed_ledger(&db, s)?;
    let sim = Simulator::start(s, bin_dir)?;
    let creds = Credentials::default();
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.arg("--reference-loop")
        .arg(&db)
        .arg(&sim.base_url)
        .arg(format!("Bearer {}.{}", creds.secret, creds.app_token))
        .arg(s.concurrency.to_string());
    let started = Instant::now();
    let (exit, usage, out, err) = run_child(cmd)?;
    let wall_secs = started.elapsed().as_secs_f64();
    sim.stop()?;
    if exit != 0 {
        return Err(format!("reference loop exited {exit}: {}", err.trim()));
    }
    let checked = out
        .split_whitespace()
        .nth(2)
        .and_then(|n| n.trim_end_matches(',').parse().ok())
        .ok_or_else(|| format!("reference loop said {out:?}"))?;
    Ok(Reference {
        checked,
        wall_secs,
        usage,
    })
}

/// A `univapay-sim` process serving the scenario's charges.
struct Simulator {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
    base_url: String,
}

impl Simulator {
    fn start(s: &Scenario, bin_dir: &Path) -> Result<Simulator, String> {
        let mut cmd = Command::new(bin_dir.join("univapay-sim"));
        cmd.args(["--charges", &s.charges.to_string()])
            .args(["--seed", &SEED.to_string()])
            .args(["--latency", &format!("{}ms", s.latency.as_millis())]);
        if let Some((burst, per_minute)) = s.rate_limit {
            cmd.args(["--burst", &burst.to_string()])
                .args(["--rate-per-minute", &per_minute.to_string()]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start univapay-sim: {e}"))?;
        let mut out = BufReader::new(child.stdout.take().ok_or("no sim stdout")?);
        let mut line = String::new();
        out.read_line(&mut line).map_err(|e| e.to_string())?;
        let base_url = line
            .trim()
            .strip_prefix("univapay-sim listening on ")
            .ok_or_else(|| format!("unexpected simulator output {line:?}"))?
            .to_owned();
        Ok(Simulator {
            child,
            out,
            base_url,
        })
    }

    /// Stops it; it prints its counters as it goes. Returns them and its CPU seconds.
    fn stop(mut self) -> Result<(CounterSnapshot, f64), String> {
        // SAFETY: a plain signal to our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let mut rest = String::new();
        let _ = self.out.read_to_string(&mut rest);
        let (_, usage) = wait4(self.child.id() as i32)?;
        // wait4 reaped it; tell std so it does not try again.
        std::mem::forget(self.child);
        let counters: CounterSnapshot = serde_json::from_str(rest.trim())
            .map_err(|e| format!("simulator counters {rest:?}: {e}"))?;
        Ok((counters, usage.cpu_secs))
    }
}

fn write_config(config: &Path, base_url: &str, s: &Scenario, db: &Path) -> Result<(), String> {
    let creds = Credentials::default();
    std::fs::write(
        config,
        format!(
            "[api]\nbase_url = \"{base_url}\"\napp_token = \"{}\"\nsecret = \"{}\"\n\
             timeout = \"30s\"\nconcurrency = {}\n{}[database]\npath = \"{}\"\n",
            creds.app_token,
            creds.secret,
            s.concurrency,
            s.budget_share
                .map(|b| format!("budget_share = {b}\n"))
                .unwrap_or_default(),
            db.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    // The config holds the secret inline: private, as the program asks.
    std::fs::set_permissions(config, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| e.to_string())
}

/// Registers the scenario's charges in a fresh, migrated ledger: one transaction, one
/// prepared statement. Due charges get the contract's plain insert; for the idle scenario
/// half are final and half are due in an hour.
fn seed_ledger(db: &Path, s: &Scenario) -> Result<(), String> {
    drop(Ledger::open(db, Duration::from_secs(5)).map_err(|e| e.to_string())?);
    let mut conn = rusqlite::Connection::open(db).map_err(|e| e.to_string())?;
    // A lost seed is simply redone; nothing here needs to survive a crash.
    conn.execute_batch("PRAGMA synchronous = OFF;")
        .map_err(|e| e.to_string())?;
    let population = Population::new(s.charges, SEED);
    let later = konbini_reconciler::ledger::ts(chrono::Utc::now() + chrono::Duration::hours(1));
    let tx = conn.transaction().map_err(|e| e.to_string())?;
    {
        let mut due = tx
            .prepare(
                "INSERT INTO charges (charge_id, store_id, requested_amount) VALUES (?1, ?2, ?3)",
            )
            .map_err(|e| e.to_string())?;
        let mut not_due = tx
            .prepare(
                "INSERT INTO charges (charge_id, store_id, requested_amount, state,
                                      provider_status, next_check_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(|e| e.to_string())?;
        for i in 0..s.charges {
            let p = population.plan(i);
            let r = if s.due {
                due.execute(rusqlite::params![p.id, p.store_id, p.amount])
            } else if i % 2 == 0 {
                not_due.execute(rusqlite::params![
                    p.id,
                    p.store_id,
                    p.amount,
                    "successful",
                    "successful",
                    None::<String>
                ])
            } else {
                not_due.execute(rusqlite::params![
                    p.id, p.store_id, p.amount, "awaiting", "awaiting", later
                ])
            };
            r.map_err(|e| e.to_string())?;
        }
    }
    tx.commit().map_err(|e| e.to_string())?;
    Ok(())
}

/// The pass's duration to the millisecond, from its `runs` row (the summary line rounds
/// to 10 ms, too coarse for the idle scenario).
fn pass_duration(db: &Path) -> Result<f64, String> {
    let conn = rusqlite::Connection::open(db).map_err(|e| e.to_string())?;
    let (start, end): (String, String) = conn
        .query_row(
            "SELECT started_at, finished_at FROM runs ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(|e| format!("reading the run: {e}"))?;
    let parse = |t: &str| {
        chrono::DateTime::parse_from_rfc3339(t).map_err(|e| format!("run time {t:?}: {e}"))
    };
    let d = parse(&end)? - parse(&start)?;
    Ok(d.num_microseconds().unwrap_or(0) as f64 / 1e6)
}

/// `pass 1 ok: checked 1000, transitions ..., 1.64 s` -> (checked, seconds).
fn parse_summary(out: &str) -> Option<(u64, f64)> {
    let line = out.lines().find(|l| l.starts_with("pass "))?;
    let checked = line
        .split("checked ")
        .nth(1)?
        .split(',')
        .next()?
        .trim()
        .parse()
        .ok()?;
    let secs = line
        .rsplit(", ")
        .next()?
        .strip_suffix(" s")?
        .trim()
        .parse()
        .ok()?;
    Some((checked, secs))
}

fn print_one(s: &Scenario, m: &Measured) {
    let rate = m.checked as f64 / m.pass_secs.max(1e-9);
    println!(
        "  pass: checked {} in {:.3} s ({:.0} charges/s); process {:.3} s, exit {}",
        m.checked, m.pass_secs, rate, m.wall_secs, m.exit
    );
    println!(
        "  simulator: {} requests, {} answered 429; its CPU {:.2} s",
        m.sim.requests, m.sim.rate_limited, m.sim_cpu_secs
    );
    let (cpu_us, switches) = m.usage.per_charge(m.checked);
    println!(
        "  reconciler: peak RSS {:.1} MiB, CPU {:.2} s ({cpu_us:.1} us per charge), \
         {switches:.2} context switches per charge",
        m.usage.max_rss_kib as f64 / 1024.0,
        m.usage.cpu_secs,
    );
    if let Some(r) = &m.reference {
        let (ref_us, ref_switches) = r.usage.per_charge(r.checked);
        println!(
            "  reference loop: checked {} in {:.3} s, CPU {:.2} s ({ref_us:.1} us per charge), \
             {ref_switches:.2} context switches per charge, peak RSS {:.1} MiB",
            r.checked,
            r.wall_secs,
            r.usage.cpu_secs,
            r.usage.max_rss_kib as f64 / 1024.0
        );
        println!(
            "  CPU per charge, reconciler / reference (medians of the rounds): {:.2} (goal: at most 1.25)",
            cpu_us / ref_us
        );
    }
    if let Some((bound, how)) = s.bound() {
        println!(
            "  bound: {bound:.0} charges/s ({how}); achieved {:.1} %",
            100.0 * rate / bound
        );
    }
    if !s.latency.is_zero() && m.sim.requests > 0 && s.rate_limit.is_none() {
        let served = m.sim.latency_micros as f64 / m.sim.requests as f64 / 1e6;
        let bound = s.concurrency as f64 / served;
        println!(
            "  latency the simulator actually served: {:.2} ms on average (timer rounding); \
             C/L with it: {bound:.0} charges/s, achieved {:.1} % of that",
            served * 1e3,
            100.0 * rate / bound
        );
    }
    if !s.due {
        println!(
            "  goal: pass < 100 ms with nothing due: {}",
            if m.pass_secs < 0.1 { "met" } else { "NOT met" }
        );
    }
}

fn table(rows: &[(Scenario, Measured)]) -> String {
    let mut t = String::from(
        "| scenario | N | conc. | latency | rate limit | charges/s | bound/s | of bound | requests | 429s | peak RSS MiB | CPU s | CPU us/charge | ctx sw/charge | vs reference | pass s | seed s |\n\
         |---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (s, m) in rows {
        let rate = m.checked as f64 / m.pass_secs.max(1e-9);
        let (bound, share) = match s.bound() {
            Some((b, _)) => (format!("{b:.0}"), format!("{:.1} %", 100.0 * rate / b)),
            None => ("-".into(), "-".into()),
        };
        t.push_str(&format!(
            "| {} | {} | {} | {} ms | {} | {} | {} | {} | {} | {} | {:.1} | {:.2} | {} | {} | {} | {:.3} | {:.2} |\n",
            s.name,
            s.charges,
            s.concurrency,
            s.latency.as_millis(),
            s.rate_limit
                .map(|(b, r)| format!("{b} + {r}/min"))
                .unwrap_or_else(|| "none".into()),
            if m.checked > 0 {
                format!("{rate:.0}")
            } else {
                "-".into()
            },
            bound,
            share,
            m.sim.requests,
            m.sim.rate_limited,
            m.usage.max_rss_kib as f64 / 1024.0,
            m.usage.cpu_secs,
            if m.checked > 0 {
                format!("{:.1}", m.usage.per_charge(m.checked).0)
            } else {
                "-".into()
            },
            if m.checked > 0 {
                format!("{:.2}", m.usage.per_charge(m.checked).1)
            } else {
                "-".into()
            },
            match &m.reference {
                Some(r) if m.checked > 0 => format!(
                    "{:.2}x",
                    m.usage.per_charge(m.checked).0 / r.usage.per_charge(r.checked).0
                ),
                _ => "-".into(),
            },
            m.pass_secs,
            m.seed_secs,
        ));
    }
    t
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| format!("{:.0} GiB", kb as f64 / 1024.0 / 1024.0))
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, {mem}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_line_is_parsed() {
        let out = "pass 1 ok: checked 1000, transitions 1000, mismatches 17, errors 0, 1.64 s\n";
        assert_eq!(parse_summary(out), Some((1000, 1.64)));
        assert_eq!(parse_summary("nothing"), None);
    }

    #[test]
    fn bounds_follow_the_setting() {
        let all = Scenario {
            rate_limit: Some((200, 12_000)),
            budget_share: Some(1.0),
            ..Scenario::new("rate", 3000)
        };
        // 2800 after the burst at 200/s: 14 s for 3000.
        let (b, _) = all.bound().unwrap();
        assert!((b - 3000.0 / 14.0).abs() < 1e-9);
        // The default half: 2900 after a burst of 100, at 100/s: 29 s.
        let half = Scenario {
            budget_share: None,
            ..all
        };
        let (b, _) = half.bound().unwrap();
        assert!((b - 3000.0 / 29.0).abs() < 1e-9);
        let s = Scenario {
            latency: Duration::from_millis(20),
            ..Scenario::new("latency", 10)
        };
        assert_eq!(s.bound().unwrap().0, 3200.0);
        assert!(Scenario::new("cpu", 10).bound().is_none());
    }
}
