//! One run of part 1: a fresh ledger and simulator, the release daemon with one kind of
//! endpoint (or none), its start-up pass, then timed hint checks; the daemon is stopped
//! with SIGTERM and its CPU taken from the kernel.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use konbini_reconciler::Settings;
use konbini_reconciler::delivery::worker;
use rusqlite::Connection;
use univapay_sim::Credentials;

use super::Sizes;
use super::fakes::Fakes;
use crate::{Scenario, Simulator};

/// The webhook listener's `Authorization` value.
const TOKEN: &str = "Bearer outage-bench-webhook-token";
/// How long the start-up pass may take before the run is given up.
const PASS_LIMIT: Duration = Duration::from_secs(300);
/// How long the daemon may take to stop after SIGTERM (systemd allows 90 s).
const STOP_LIMIT: Duration = Duration::from_secs(60);
/// How long one hint may take to be checked before it counts as missed.
const HINT_LIMIT: Duration = Duration::from_secs(10);
/// One hint every this long: under the hint budget at `budget_share = 1` (5 a second),
/// so that no hint waits for budget and the figure is the check's own latency.
const HINT_EVERY: Duration = Duration::from_millis(250);

/// What is at the other end of the one `[[delivery]]` endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Variant {
    None,
    Refused,
    BlackHole,
    Unavailable,
}

impl Variant {
    pub(crate) const ALL: [Variant; 4] = [
        Variant::None,
        Variant::Refused,
        Variant::BlackHole,
        Variant::Unavailable,
    ];

    pub(crate) fn key(self) -> &'static str {
        match self {
            Variant::None => "none",
            Variant::Refused => "refused",
            Variant::BlackHole => "black-hole",
            Variant::Unavailable => "503",
        }
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            Variant::None => "(a) none (reference)",
            Variant::Refused => "(b) connection refused",
            Variant::BlackHole => "(c) black hole (10 s timeout)",
            Variant::Unavailable => "(d) answers 503",
        }
    }

    fn url(self, fakes: &Fakes) -> Option<&str> {
        match self {
            Variant::None => None,
            Variant::Refused => Some(&fakes.refused),
            Variant::BlackHole => Some(&fakes.black_hole),
            Variant::Unavailable => Some(&fakes.unavailable),
        }
    }
}

/// What one run measured.
#[derive(Debug, Clone)]
pub(crate) struct Measured {
    pub variant: Variant,
    pub checked: u64,
    pub pass_secs: f64,
    pub pass_rate: f64,
    pub hint_p50_ms: f64,
    pub hint_p95_ms: f64,
    pub hints_missed: usize,
    /// Delivery attempts that got no 2xx while the daemon ran (in flight at its stop:
    /// not counted).
    pub failed_attempts: i64,
    pub cpu_secs: f64,
    pub log_lines: usize,
    /// The whole run, seeding to the simulator's stop.
    pub wall_secs: f64,
}

impl Measured {
    pub(crate) fn line(&self) -> String {
        format!(
            "pass checked {} in {:.3} s ({:.0} charges/s); hints p50 {:.1} ms, p95 {:.1} ms, \
             {} missed; {} failed delivery attempts; daemon CPU {:.2} s, {} log lines; run {:.1} s",
            self.checked,
            self.pass_secs,
            self.pass_rate,
            self.hint_p50_ms,
            self.hint_p95_ms,
            self.hints_missed,
            self.failed_attempts,
            self.cpu_secs,
            self.log_lines,
            self.wall_secs
        )
    }
}

/// One run of `variant`, in `dir`.
pub(crate) fn one(
    runtime: &tokio::runtime::Runtime,
    variant: Variant,
    fakes: &Fakes,
    bin_dir: &Path,
    dir: &Path,
    sizes: Sizes,
) -> Result<Measured, String> {
    let wall = Instant::now();
    let db = dir.join("bench.db");
    let scenario = Scenario {
        concurrency: 32,
        ..Scenario::new("outage", sizes.charges)
    };
    crate::seed_ledger(&db, &scenario)?;
    let sim = Simulator::start(&scenario, bin_dir)?;
    let port = free_port()?;
    let config = dir.join("config.toml");
    let text = config_text(&sim.base_url, &db, port, variant.url(fakes));
    write_private(&config, &text)?;
    // The endpoint is recorded before the backlog is written, so that the outbox
    // trigger gives the backlog its delivery rows, as in a ledger that was already
    // delivering before the endpoint went down.
    let settings = Settings::from_toml(&text, &config, &[("UNUSED", "")])
        .map_err(|e| format!("config: {e}"))?;
    runtime
        .block_on(worker::sync(&settings, true))
        .map_err(|e| e.to_string())?;
    write_backlog(&db, sizes.backlog)?;

    let mut daemon = Daemon::start(bin_dir, &config)?;
    let timed = wait_for_pass(&db, &mut daemon).and_then(|(checked, pass_secs)| {
        // Past the one-second spacing of the charges checked first in the pass.
        std::thread::sleep(Duration::from_millis(1100));
        let hints = runtime.block_on(time_hints(&db, port, sizes.hints))?;
        Ok((checked, pass_secs, hints))
    });
    let (cpu_secs, log_lines, tail) = daemon.stop()?;
    sim.stop()?;
    let (checked, pass_secs, hints) = timed.map_err(|e| format!("{e}; daemon said: {tail}"))?;
    let (p50, p95) = percentiles(&hints.0);
    Ok(Measured {
        variant,
        checked,
        pass_secs,
        pass_rate: checked as f64 / pass_secs.max(1e-9),
        hint_p50_ms: p50,
        hint_p95_ms: p95,
        hints_missed: hints.1,
        failed_attempts: failed_attempts(&db)?,
        cpu_secs,
        log_lines,
        wall_secs: wall.elapsed().as_secs_f64(),
    })
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// The daemon's config: the simulator, a cron that never ticks during the run (the pass
/// is the start-up one), the webhook listener, and the endpoint if any (default timeout
/// 10 s and concurrency 8, as shipped).
fn config_text(base_url: &str, db: &Path, port: u16, endpoint: Option<&str>) -> String {
    let creds = Credentials::default();
    let mut text = format!(
        "[api]\nbase_url = \"{base_url}\"\napp_token = \"{}\"\nsecret = \"{}\"\n\
         timeout = \"30s\"\nconcurrency = 32\nbudget_share = 1.0\n\
         [database]\npath = \"{}\"\n\
         [schedule]\ncron = \"0 0 0 1 1 *\"\nrun_on_start = true\n\
         [webhook]\nlisten = \"127.0.0.1:{port}\"\npath = \"/univapay/webhook\"\nauth_token = \"{TOKEN}\"\n",
        creds.app_token,
        creds.secret,
        db.display()
    );
    if let Some(url) = endpoint {
        text.push_str(&format!(
            "[[delivery]]\nname = \"shop\"\nurl = \"{url}\"\n\
             secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n"
        ));
    }
    text
}

fn write_private(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    // The config holds secrets inline: private, as the program asks.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| e.to_string())
}

/// `n` paid charges of earlier days, each with its `charge.paid` event not yet
/// delivered (due at once): one transaction.
fn write_backlog(db: &Path, n: usize) -> Result<(), String> {
    let mut c = Connection::open(db).map_err(|e| e.to_string())?;
    let tx = c.transaction().map_err(|e| e.to_string())?;
    for i in 0..n {
        let id = format!("ch_backlog_{i}");
        tx.execute(
            "INSERT INTO charges (charge_id, store_id, requested_amount, state, provider_status,
                                  next_check_at, order_ref)
             VALUES (?1, 'store_backlog', 100, 'successful', 'successful', NULL, ?2)",
            rusqlite::params![id, format!("order-{i}")],
        )
        .and_then(|_| {
            tx.execute(
                "INSERT INTO charge_events (charge_id, at, kind, from_state, to_state)
                 VALUES (?1, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), 'transition', 'awaiting', 'successful')",
                [&id],
            )
        })
        .map_err(|e| e.to_string())?;
    }
    tx.commit().map_err(|e| e.to_string())
}

/// Attempts recorded as failed: every attempt but the delivered ones.
fn failed_attempts(db: &Path) -> Result<i64, String> {
    let c = Connection::open(db).map_err(|e| e.to_string())?;
    c.query_row(
        "SELECT coalesce(sum(attempts), 0) - count(delivered_at) FROM deliveries",
        [],
        |r| r.get(0),
    )
    .map_err(|e| e.to_string())
}

/// The daemon process, its stderr read to the end on a thread of its own.
struct Daemon {
    child: Child,
    stderr: JoinHandle<(usize, String)>,
}

impl Daemon {
    fn start(bin_dir: &Path, config: &Path) -> Result<Daemon, String> {
        // The default log level, as a user runs it: RUST_LOG is removed, not set.
        let mut child = Command::new(bin_dir.join("konbini-reconciler"))
            .arg("--config")
            .arg(config)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start konbini-reconciler: {e}"))?;
        let err = child.stderr.take().ok_or("no daemon stderr")?;
        let stderr = std::thread::spawn(move || {
            let mut lines = 0;
            let mut tail = String::new();
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                lines += 1;
                tail = line;
            }
            (lines, tail)
        });
        Ok(Daemon { child, stderr })
    }

    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// SIGTERM, then its CPU seconds, how many lines it logged, and its last line.
    fn stop(mut self) -> Result<(f64, usize, String), String> {
        let cpu = if self.exited() {
            // Reaped already by std: the kernel's account went with it.
            f64::NAN
        } else {
            let pid = self.child.id() as i32;
            // SAFETY: a plain signal to our own child, which has not been reaped.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
            let usage = wait_exit(pid);
            // wait4 reaped it (or it was killed and reaped); tell std not to try again.
            std::mem::forget(self.child);
            usage?
        };
        let (lines, tail) = self.stderr.join().unwrap_or_default();
        Ok((cpu, lines, tail))
    }
}

/// Waits for the daemon to exit after SIGTERM, for at most [`STOP_LIMIT`] (then it is
/// killed and the run fails: a daemon that does not stop is a finding, not a figure).
fn wait_exit(pid: i32) -> Result<f64, String> {
    let asked = Instant::now();
    loop {
        if let Some((_, usage)) = crate::measure::try_wait4(pid)? {
            return Ok(usage.cpu_secs);
        }
        if asked.elapsed() > STOP_LIMIT {
            // SAFETY: a plain signal to our own child, not yet reaped.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            let _ = crate::measure::wait4(pid);
            return Err(format!(
                "the daemon did not stop within {STOP_LIMIT:?} of SIGTERM"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for the start-up pass's `runs` row to be finished: (checked, seconds).
fn wait_for_pass(db: &Path, daemon: &mut Daemon) -> Result<(u64, f64), String> {
    let started = Instant::now();
    let c = Connection::open(db).map_err(|e| e.to_string())?;
    loop {
        let row: Option<(u64, String, String)> = c
            .query_row(
                "SELECT checked, started_at, finished_at FROM runs
                 WHERE finished_at IS NOT NULL ORDER BY id LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .ok();
        if let Some((checked, start, end)) = row {
            let parse = |t: &str| {
                chrono::DateTime::parse_from_rfc3339(t).map_err(|e| format!("run time {t:?}: {e}"))
            };
            let d = parse(&end)? - parse(&start)?;
            return Ok((checked, d.num_microseconds().unwrap_or(0) as f64 / 1e6));
        }
        if daemon.exited() || started.elapsed() > PASS_LIMIT {
            return Err("the start-up pass did not finish".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Latencies of hint checks in milliseconds, and how many were not checked in time.
type Hints = (Vec<f64>, usize);

/// Open charges checked earliest in the pass, each sent one `charge_updated` hint, one
/// every [`HINT_EVERY`]; each timed from just before its POST until its
/// `last_checked_at` moves (the check's result committed).
async fn time_hints(db: &Path, port: u16, n: usize) -> Result<Hints, String> {
    let c = Connection::open(db).map_err(|e| e.to_string())?;
    let charges: Vec<(String, String, String)> = c
        .prepare(
            "SELECT charge_id, store_id, last_checked_at FROM charges
             WHERE state IN ('pending', 'awaiting') AND last_checked_at IS NOT NULL
             ORDER BY last_checked_at LIMIT ?1",
        )
        .and_then(|mut s| {
            s.query_map([n as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })
        .map_err(|e| e.to_string())?;
    let client = reqwest::Client::builder()
        .timeout(HINT_LIMIT)
        .build()
        .map_err(|e| e.to_string())?;
    let url = format!("http://127.0.0.1:{port}/univapay/webhook");
    let mut latencies = Vec::with_capacity(charges.len());
    let mut missed = 0;
    for (charge, store, before) in &charges {
        let sent = Instant::now();
        let body = serde_json::json!({"event": "charge_updated", "data": {"id": charge, "store_id": store}});
        let answer = client
            .post(&url)
            .header("authorization", TOKEN)
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("hint: {e}"))?;
        if !answer.status().is_success() {
            return Err(format!("hint answered {}", answer.status()));
        }
        match checked_after(&c, charge, before, sent).await? {
            Some(d) => latencies.push(d.as_secs_f64() * 1e3),
            None => missed += 1,
        }
        tokio::time::sleep(HINT_EVERY.saturating_sub(sent.elapsed())).await;
    }
    Ok((latencies, missed))
}

/// How long after `sent` the charge's `last_checked_at` moved from `before`, looked at
/// every millisecond; `None` past [`HINT_LIMIT`].
async fn checked_after(
    c: &Connection,
    charge: &str,
    before: &str,
    sent: Instant,
) -> Result<Option<Duration>, String> {
    while sent.elapsed() < HINT_LIMIT {
        let now: Option<String> = c
            .query_row(
                "SELECT last_checked_at FROM charges WHERE charge_id = ?1",
                [charge],
                |r| r.get(0),
            )
            .map_err(|e| e.to_string())?;
        if now.as_deref() != Some(before) {
            return Ok(Some(sent.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(None)
}

/// p50 and p95 of `v` (NaN when empty).
fn percentiles(v: &[f64]) -> (f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let at = |p: f64| {
        s.get(((s.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    (at(0.5), at(0.95))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_few() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentiles(&v), (11.0, 19.0));
        assert!(percentiles(&[]).0.is_nan());
    }

    #[test]
    fn the_reference_has_no_endpoint() {
        let text = config_text("http://127.0.0.1:1", Path::new("/tmp/x.db"), 9, None);
        assert!(!text.contains("[[delivery]]"));
        let text = config_text(
            "http://127.0.0.1:1",
            Path::new("/tmp/x.db"),
            9,
            Some("http://127.0.0.1:2/h"),
        );
        assert!(text.contains("url = \"http://127.0.0.1:2/h\""));
    }
}
