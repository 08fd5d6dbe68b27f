//! `konbini-bench outage [daemon | day] [--quick]`: what an endpoint that is down costs the reconciler,
//! and what it costs the shop.
//!
//! **Part 1, the daemon beside a dead endpoint.** The release `konbini-reconciler`
//! daemon, run as a user runs it (default log level, stderr through a pipe), against a
//! `univapay-sim` process: its start-up pass over N due charges (charges/s from the
//! `runs` row) and then hint checks (a `charge_updated` webhook POSTed to its listener,
//! timed until the charge's `last_checked_at` moves), with
//! - (a) no `[[delivery]]` endpoint: the reference;
//! - (b) an endpoint whose port refuses connections;
//! - (c) a black hole: it accepts the TCP connection and never answers (every attempt
//!   holds its connection for the endpoint's whole timeout);
//! - (d) an endpoint answering 503 to everything.
//!
//! The ledger also holds a backlog of events from before (due at once), and every
//! transition of the pass adds one, so the delivery job fails and retries the whole time.
//! The variants run in turns, several rounds, each on a fresh ledger and simulator, so
//! the machine's noise hits them alike; the table gives the median of the rounds, their
//! spread, and the ratio of each median against (a)'s.
//!
//! **Part 2, the simulated day** ([`day`]): the library's delivery job on a controlled
//! clock, an endpoint down for 24 hours while thousands of events are written, then back.
//!
//! A tool that prints figures, not a test.

mod day;
mod fakes;
mod run;

use std::path::Path;

use fakes::Fakes;
use run::{Measured, Variant};

/// Rounds of every variant, taken in turns.
const ROUNDS: usize = 3;

/// The sizes of one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sizes {
    /// Charges due in the start-up pass.
    pub charges: u64,
    /// Events already waiting for delivery when the daemon starts.
    pub backlog: usize,
    /// Hint checks timed after the pass.
    pub hints: usize,
}

pub fn main(args: &[String]) -> Result<(), String> {
    let quick = args.iter().any(|a| a == "--quick");
    let sizes = if quick {
        Sizes {
            charges: 2_000,
            backlog: 500,
            hints: 10,
        }
    } else {
        Sizes {
            charges: 10_000,
            backlog: 2_000,
            hints: 30,
        }
    };
    let bin_dir = crate::build_binaries()?;
    let work = std::env::temp_dir().join(format!("konbini-bench-outage-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    println!("machine: {}", crate::machine());
    println!("load: {}", load_average());
    // `daemon` or `day` runs only that part; neither, both.
    let wants = |part: &str| args.iter().any(|a| a == part);
    let (daemon, day) = match (wants("daemon"), wants("day")) {
        (false, false) => (true, true),
        chosen => chosen,
    };
    let ran = if daemon {
        daemon_part(&bin_dir, &work, sizes)
    } else {
        Ok(())
    }
    .and_then(|()| if day { day::run(quick) } else { Ok(()) });
    let _ = std::fs::remove_dir_all(&work);
    println!("load: {}", load_average());
    ran
}

/// Part 1: every variant, [`ROUNDS`] times in turns, then the table.
fn daemon_part(bin_dir: &Path, work: &Path, sizes: Sizes) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let fakes = runtime.block_on(Fakes::start())?;
    println!(
        "== outage, part 1: the daemon's start-up pass over {} due charges (backlog of {} \
         events), then {} hint checks; {ROUNDS} rounds",
        sizes.charges, sizes.backlog, sizes.hints
    );
    let mut all: Vec<Measured> = Vec::new();
    for round in 1..=ROUNDS {
        for variant in Variant::ALL {
            let dir = work.join(format!("{}-{round}", variant.key()));
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let m = run::one(&runtime, variant, &fakes, bin_dir, &dir, sizes)?;
            println!("  round {round}, {}: {}", variant.label(), m.line());
            all.push(m);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    println!("\n{}", table(&all));
    Ok(())
}

/// Median, minimum and maximum.
fn spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    match (v.first(), v.last()) {
        (Some(lo), Some(hi)) => (v[v.len() / 2], *lo, *hi),
        _ => (f64::NAN, f64::NAN, f64::NAN),
    }
}

/// The table: per variant, the medians of the rounds, their spread, and the ratios of the
/// medians against the reference's.
fn table(all: &[Measured]) -> String {
    let of = |v: Variant, f: fn(&Measured) -> f64| {
        spread(all.iter().filter(|m| m.variant == v).map(f).collect())
    };
    let reference = (
        of(Variant::None, |m| m.pass_rate).0,
        of(Variant::None, |m| m.hint_p50_ms).0,
        of(Variant::None, |m| m.hint_p95_ms).0,
    );
    let mut t = String::from(
        "| endpoint | pass charges/s (min-max) | vs (a) | hint p50 ms (min-max) | vs (a) | hint p95 ms (min-max) | vs (a) | failed attempts meanwhile | daemon CPU s |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for v in Variant::ALL {
        let rate = of(v, |m| m.pass_rate);
        let p50 = of(v, |m| m.hint_p50_ms);
        let p95 = of(v, |m| m.hint_p95_ms);
        let failed = of(v, |m| m.failed_attempts as f64);
        let cpu = of(v, |m| m.cpu_secs);
        t.push_str(&format!(
            "| {} | {:.0} ({:.0}-{:.0}) | {:.2} | {:.1} ({:.1}-{:.1}) | {:.2} | {:.1} ({:.1}-{:.1}) | {:.2} | {:.0} | {:.2} |\n",
            v.label(),
            rate.0,
            rate.1,
            rate.2,
            rate.0 / reference.0,
            p50.0,
            p50.1,
            p50.2,
            p50.0 / reference.1,
            p95.0,
            p95.1,
            p95.2,
            p95.0 / reference.2,
            failed.0,
            cpu.0,
        ));
    }
    t
}

/// The machine's load averages, as `uptime` shows them.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spread_is_median_min_max() {
        assert_eq!(spread(vec![3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(spread(vec![5.0]), (5.0, 5.0, 5.0));
        assert!(spread(vec![]).0.is_nan());
    }
}
