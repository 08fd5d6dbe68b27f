//! `sim-webhook-receiver`: the delivery test receiver (`univapay_sim::receiver`) as a
//! standalone process on 127.0.0.1, for the demo, the benchmark and trying deliveries by
//! hand.
//!
//! On start it prints `sim-webhook-receiver listening on http://127.0.0.1:PORT`; then one
//! JSON line per delivery (unless `--quiet`); on SIGINT/SIGTERM the per-endpoint summary
//! as JSON, and it exits 0. The control route (`/_receiver/...`) changes endpoints and
//! answers while it runs.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde_json::json;
use univapay_sim::receiver::{Plan, Receiver};

/// A receiver of Standard Webhooks deliveries that verifies, records and answers on command.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on (loopback only); port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// An endpoint `POST /NAME` and its secret: `NAME=whsec_...`, or `NAME` alone to read
    /// the secret from the environment variable `SIM_RECEIVER_SECRET_<NAME>` (upper case,
    /// `-` as `_`). Repeatable.
    #[arg(long = "endpoint", value_name = "NAME[=SECRET]")]
    endpoints: Vec<String>,
    /// What an endpoint answers: `NAME=PLAN`, the plan as the control route's JSON, e.g.
    /// `shop={"default":{"status":503}}`. Repeatable.
    #[arg(long = "plan", value_name = "NAME=JSON")]
    plans: Vec<String>,
    /// Do not print deliveries as they arrive.
    #[arg(long)]
    quiet: bool,
}

fn setup(rx: &Receiver, args: &Args) -> Result<(), String> {
    for e in &args.endpoints {
        let (name, secret) = match e.split_once('=') {
            Some((n, s)) => (n.to_owned(), s.to_owned()),
            None => {
                let var = format!("SIM_RECEIVER_SECRET_{}", e.to_uppercase().replace('-', "_"));
                let s = std::env::var(&var)
                    .map_err(|_| format!("--endpoint {e}: no secret given and {var} is not set"))?;
                (e.clone(), s)
            }
        };
        rx.add_endpoint(&name, &secret)
            .map_err(|err| err.to_string())?;
    }
    for p in &args.plans {
        let (name, plan) = p
            .split_once('=')
            .ok_or_else(|| format!("--plan {p}: expected NAME=JSON"))?;
        let plan: Plan =
            serde_json::from_str(plan).map_err(|err| format!("--plan {name}: {err}"))?;
        rx.set_plan(name, plan)
            .map_err(|err| format!("--plan: {err}"))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rx = Receiver::new();
    if let Err(e) = setup(&rx, &args) {
        eprintln!("sim-webhook-receiver: error: {e}");
        return ExitCode::from(1);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sim-webhook-receiver: error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(run(rx, args))
}

async fn run(rx: Receiver, args: Args) -> ExitCode {
    let running = match rx.clone().serve(args.listen).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "sim-webhook-receiver: error: cannot listen on {}: {e}",
                args.listen
            );
            return ExitCode::from(1);
        }
    };
    println!("sim-webhook-receiver listening on {}", running.base_url());
    let _ = std::io::stdout().flush();
    if !args.quiet {
        tokio::spawn(print_deliveries(rx.clone()));
    }
    wait_for_signal().await;
    println!(
        "{}",
        serde_json::to_string(&rx.summary()).unwrap_or_default()
    );
    ExitCode::SUCCESS
}

/// One JSON line per delivery, in arrival order.
async fn print_deliveries(rx: Receiver) {
    let mut seen = 0;
    loop {
        rx.wait_until(Duration::from_secs(3600), |ds| {
            ds.last().is_some_and(|d| d.seq > seen)
        })
        .await;
        let batch = rx.deliveries_after(seen, None, 1000);
        let mut out = std::io::stdout().lock();
        for d in &batch {
            let line = json!({
                "seq": d.seq, "endpoint": d.endpoint, "webhook_id": d.webhook_id,
                "verified": d.verified, "signature_valid": d.signature_valid, "error": d.error,
                "attempt": d.attempt, "answer": d.answer, "type": d.event_type(),
                "body": d.json().unwrap_or_else(|| json!(d.body)),
            });
            let _ = writeln!(out, "{line}");
            seen = d.seq;
        }
        let _ = out.flush();
    }
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
