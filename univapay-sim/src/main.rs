//! `univapay-sim`: the simulator as a standalone process on 127.0.0.1, for the benchmark
//! and for trying konbini-reconciler by hand.
//!
//! On start it prints one line, `univapay-sim listening on http://127.0.0.1:PORT`, to
//! stdout, so a parent process can read the address. `GET /_sim/counters` reports the
//! counters as JSON at any time; on SIGINT/SIGTERM they are printed as JSON and the process
//! exits 0.
//!
//! With `--write-config PATH` it first writes a konbini-reconciler config for itself
//! there (see [`univapay_sim::write_reconciler_config`]), so the listening line means the
//! config is ready.
//!
//! With `--webhook-url` it delivers webhooks there as simulated time passes (see
//! `WebhookTarget`); `--cards` adds card charges to the seeded population.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use univapay_sim::{
    Credentials, Faults, Limit, Mix, Population, RateLimitConfig, Sim, SimConfig, WebhookTarget,
};

/// A fake UnivaPay charge API with konbini lifecycles, rate limits, latency and faults.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on (loopback only); port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The secret requests must present (`Authorization: Bearer {secret}.{app_token}`).
    #[arg(long, default_value_t = Credentials::default().secret)]
    secret: String,
    /// The app token requests must present.
    #[arg(long, default_value_t = Credentials::default().app_token)]
    app_token: String,

    /// How many charges to seed.
    #[arg(long, default_value_t = 0)]
    charges: u64,
    /// Seed of the population: the same seed and count give the same charges.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Number of stores the charges are spread over.
    #[arg(long, default_value_t = 3)]
    stores: u32,
    /// Outcome weights, e.g. `paid=70,expired=20,canceled=7,underpaid=2,foreign=1`; add
    /// `card=N` for card charges (weighed against the sum of the others; 0 by default).
    #[arg(
        long,
        default_value = "paid=70,expired=20,canceled=7,underpaid=2,foreign=1"
    )]
    mix: Mix,
    /// Simulated seconds per real second (0 stops simulated time).
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    /// Print the SQL that registers the seeded charges in a konbini-reconciler ledger
    /// (`... --print-inserts | sqlite3 ledger.db`) and exit without serving.
    #[arg(long)]
    print_inserts: bool,
    /// Write a ready konbini-reconciler config for this simulator to PATH (mode 0600: its
    /// address, secret and app token, and a ledger `ledger.db` beside it), then serve.
    #[arg(long, value_name = "PATH", conflicts_with = "print_inserts")]
    write_config: Option<std::path::PathBuf>,

    /// Route bucket refill in requests per minute; 0 turns rate limiting (and its headers)
    /// off.
    #[arg(long, default_value_t = 0)]
    rate_per_minute: u32,
    /// Route bucket size (the burst).
    #[arg(long, default_value_t = 60)]
    burst: u32,
    /// Per-URL bucket refill per minute (default: as the route's).
    #[arg(long)]
    exact_rate_per_minute: Option<u32>,
    /// Per-URL bucket size (default: as the route's).
    #[arg(long)]
    exact_burst: Option<u32>,
    /// Send `Retry-After` with 429s.
    #[arg(long)]
    retry_after: bool,

    /// Latency added to every answer, e.g. `20ms`.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    latency: Duration,
    /// Random extra latency of up to this much.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    latency_jitter: Duration,

    /// Share of requests answered 500/502/503/504.
    #[arg(long, default_value_t = 0.0)]
    fault_5xx: f64,
    /// Share of requests answered only after `--slow-delay` (past a client's timeout).
    #[arg(long, default_value_t = 0.0)]
    fault_slow: f64,
    /// Share of requests whose connection is cut mid-answer.
    #[arg(long, default_value_t = 0.0)]
    fault_reset: f64,
    /// Share of requests answered 200 with a malformed body.
    #[arg(long, default_value_t = 0.0)]
    fault_malformed: f64,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    slow_delay: Duration,

    /// Weight of card charges in the seeded population (as `card=N` in `--mix`).
    #[arg(long)]
    cards: Option<u32>,

    /// Deliver webhooks to this URL (`http://...`), like UnivaPay.
    #[arg(long)]
    webhook_url: Option<String>,
    /// The `Authorization` value sent with every webhook, verbatim (required with
    /// `--webhook-url`).
    #[arg(long, requires = "webhook_url")]
    webhook_auth: Option<String>,
    /// Share of webhooks simply lost (0 to 1).
    #[arg(long, default_value_t = 0.0, requires = "webhook_url")]
    webhook_loss: f64,
    /// Simulated delay before a webhook is sent: `5s`, or a range `0s..30s` drawn from
    /// uniformly.
    #[arg(long, default_value = "0s", value_parser = parse_delay_range, requires = "webhook_url")]
    webhook_delay: std::ops::Range<Duration>,
    /// Retries of a failed delivery (doubling backoff from 10 s of simulated time).
    #[arg(long, default_value_t = 10, requires = "webhook_url")]
    webhook_retries: u32,
    /// Seed of the webhook loss and delay draws (default: `--seed`).
    #[arg(long, requires = "webhook_url")]
    webhook_seed: Option<u64>,
}

/// `5s` or `0s..30s`.
fn parse_delay_range(s: &str) -> Result<std::ops::Range<Duration>, String> {
    let parse = |p: &str| humantime::parse_duration(p.trim()).map_err(|e| format!("{p:?}: {e}"));
    match s.split_once("..") {
        Some((a, b)) => {
            let (a, b) = (parse(a)?, parse(b)?);
            if b < a {
                return Err(format!("{s:?}: the range ends before it starts"));
            }
            Ok(a..b)
        }
        None => {
            let d = parse(s)?;
            Ok(d..d)
        }
    }
}

impl Args {
    fn config(&self) -> Result<SimConfig, String> {
        let shares = [
            self.fault_5xx,
            self.fault_slow,
            self.fault_reset,
            self.fault_malformed,
        ];
        if shares.iter().any(|s| !(0.0..=1.0).contains(s)) || shares.iter().sum::<f64>() > 1.0 {
            return Err("fault shares must each be in 0..=1 and sum to at most 1".into());
        }
        let rate_limit = (self.rate_per_minute > 0).then(|| RateLimitConfig {
            route: Limit::new(self.burst, self.rate_per_minute),
            exact: Limit::new(
                self.exact_burst.unwrap_or(self.burst),
                self.exact_rate_per_minute.unwrap_or(self.rate_per_minute),
            ),
            retry_after: self.retry_after,
        });
        Ok(SimConfig {
            latency: self.latency,
            latency_jitter: self.latency_jitter,
            rate_limit,
            faults: Faults {
                server_error: self.fault_5xx,
                slow: self.fault_slow,
                reset: self.fault_reset,
                malformed: self.fault_malformed,
                slow_delay: self.slow_delay,
            },
            count_per_charge: false,
            webhook: self.webhook()?,
            ..SimConfig::default()
        })
    }

    fn webhook(&self) -> Result<Option<WebhookTarget>, String> {
        let Some(url) = &self.webhook_url else {
            return Ok(None);
        };
        if !url.starts_with("http://") {
            return Err("--webhook-url must be an http:// URL".into());
        }
        let auth = self
            .webhook_auth
            .clone()
            .ok_or("--webhook-url needs --webhook-auth (the Authorization value to send)")?;
        if !(0.0..=1.0).contains(&self.webhook_loss) {
            return Err("--webhook-loss must be in 0..=1".into());
        }
        let mut target = WebhookTarget::new(url, auth)
            .with_loss(self.webhook_loss)
            .with_delay(self.webhook_delay.clone());
        target.retries = self.webhook_retries;
        target.seed = self.webhook_seed.unwrap_or(self.seed);
        Ok(Some(target))
    }

    /// The population `--charges`, `--seed`, `--stores`, `--mix` and `--cards` describe.
    fn population(&self) -> Population {
        let mut p = Population::new(self.charges, self.seed);
        p.stores = self.stores;
        p.mix = self.mix;
        if let Some(w) = self.cards {
            p.mix.card = w;
        }
        p
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match args.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("univapay-sim: error: {e}");
            return ExitCode::from(1);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("univapay-sim: error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    if args.print_inserts {
        print_inserts(&args);
        return ExitCode::SUCCESS;
    }
    runtime.block_on(async move {
        let sim = Sim::with_config(
            Credentials {
                secret: args.secret.clone(),
                app_token: args.app_token.clone(),
            },
            config,
        );
        sim.clock().set_scale(args.time_scale);
        if args.charges > 0 {
            sim.seed(args.population());
        }
        let running = match sim.serve(args.listen).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("univapay-sim: error: cannot listen on {}: {e}", args.listen);
                return ExitCode::from(1);
            }
        };
        if let Some(path) = &args.write_config {
            let creds = Credentials {
                secret: args.secret.clone(),
                app_token: args.app_token.clone(),
            };
            match univapay_sim::write_reconciler_config(path, &running.base_url(), &creds) {
                Ok(ledger) => eprintln!(
                    "univapay-sim: wrote {} (ledger {})",
                    path.display(),
                    ledger.display()
                ),
                Err(e) => {
                    eprintln!("univapay-sim: error: cannot write {}: {e}", path.display());
                    return ExitCode::from(1);
                }
            }
        }
        println!("univapay-sim listening on {}", running.base_url());
        let _ = std::io::stdout().flush();
        wait_for_signal().await;
        println!(
            "{}",
            serde_json::to_string(&running.counters()).unwrap_or_default()
        );
        ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The same population as `--charges`/`--seed`/`--stores` would serve, as one transaction
/// of the plain INSERTs a shop uses to register charges. Card charges (`--cards`, or
/// `card=N` in `--mix`) are left out: a shop registers only its konbini charges.
fn print_inserts(args: &Args) {
    let p = args.population();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let _ = writeln!(out, "BEGIN;");
    for i in 0..args.charges {
        let c = p.plan(i);
        if c.is_card() {
            continue;
        }
        let _ = writeln!(
            out,
            "INSERT INTO charges (charge_id, store_id, requested_amount) VALUES ('{}', '{}', {});",
            c.id, c.store_id, c.amount
        );
    }
    let _ = writeln!(out, "COMMIT;");
}
