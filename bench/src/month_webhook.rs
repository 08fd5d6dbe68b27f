//! The month scenario with webhooks: `cargo run --release -p konbini-bench -- month-webhook
//! [--quick] [--days N] [--per-day N] [--recheck 1h] [--loss 0.05] [--step 60s]`.
//!
//! A simulated month of konbini charges, about 1,000 new ones a day, most paid within
//! three days, some on the last day, a fifth never paid and failing at the 7-day
//! deadline, a few canceled. The real pass machinery ([`Reconciler::run_pass`], every
//! five simulated minutes) and the real webhook intake ([`webhook::serve`], over HTTP on
//! 127.0.0.1) run in this process against `univapay-sim`, which delivers `charge_updated`
//! and `charge_finished` like UnivaPay: 95% of them, each 0-30 s after its event.
//!
//! Time: the simulator's clock runs at real speed while anything happens and jumps
//! forward between steps ([`MonthParams::step`]); the reconciler reads the same clock. So
//! every timestamp in the ledger is on one simulated timeline, and the time from a
//! webhook's arrival to the transition it led to is real processing time (pacer, spacing,
//! GET, commit), measured from the `webhook` event row to the `transition` row. The time
//! from payment to delivery is the simulator's delay plus up to one step.
//!
//! The budget is counted, not enforced: the simulator runs without a rate limit, since a
//! month of 1,200-a-minute pacing in real time would take a month; the report gives the
//! peak GETs in one simulated minute against the route budget instead. (The budget
//! scenario of `month.rs` covers pacing under the shared bucket.)
//!
//! Next to the measured run it prints the polling-only figures of the same charges,
//! computed from their lifetimes: flat 5-minute polling (today's default) and the
//! recheck setting alone (what the safety net gives a lost webhook).
//!
//! Entry point for other code: [`run`] with [`MonthParams`], which returns a [`Report`]
//! ([`Report::print`] writes the table).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use konbini_reconciler::Settings;
use konbini_reconciler::ledger::{Ledger, Trigger, ts};
use konbini_reconciler::lock::PassLock;
use konbini_reconciler::reconcile::cadence::on_the_cron;
use konbini_reconciler::reconcile::{Clock, Reconciler};
use konbini_reconciler::webhook::{self, Health, Hooks, Listener};
use tokio_util::sync::CancellationToken;
use univapay_sim::{Action, Credentials, RunningSim, Sim, SimConfig, WebhookTarget};

const TOKEN: &str = "Bearer month-webhook-token-0123456789";
const STORE: &str = "11ef0000-0000-0000-0000-00000000b0b0";
const DAY: Duration = Duration::from_secs(86_400);

/// The simulated month.
#[derive(Debug, Clone)]
pub struct MonthParams {
    pub days: u32,
    pub charges_per_day: u32,
    pub seed: u64,
    /// Share of webhook events never delivered.
    pub webhook_loss: f64,
    /// Delay between an event and its delivery, drawn uniformly.
    pub webhook_delay: std::ops::Range<Duration>,
    /// `[reconcile]` lines for the run with webhooks (the safety net's schedule).
    pub recheck: String,
    /// How often a pass runs (the daemon's cron).
    pub pass_every: Duration,
    /// Simulated time between two looks at the world.
    pub step: Duration,
    /// UnivaPay's route refill, for the budget figure.
    pub route_per_minute: u32,
}

impl Default for MonthParams {
    fn default() -> Self {
        MonthParams {
            days: 30,
            charges_per_day: 1000,
            seed: 11,
            webhook_loss: 0.05,
            webhook_delay: Duration::ZERO..Duration::from_secs(30),
            recheck: "recheck_interval = \"2h\"".into(),
            pass_every: Duration::from_secs(300),
            step: Duration::from_secs(10),
            route_per_minute: 1200,
        }
    }
}

/// How one charge's life is planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Paid,
    Expired,
    Canceled,
}

#[derive(Debug, Clone)]
struct Planned {
    /// Since the start of the month.
    arrival: Duration,
    fate: Fate,
    /// Since its creation: when it is paid or canceled (expiry comes from the deadline).
    ends_after: Duration,
}

/// The charges of the month, from the seed: one every `86400 / per_day` seconds.
fn plan(p: &MonthParams) -> Vec<Planned> {
    let n = u64::from(p.days) * u64::from(p.charges_per_day);
    let gap = DAY.as_secs_f64() / f64::from(p.charges_per_day.max(1));
    (0..n)
        .map(|i| {
            let mut h = p.seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut u = || {
                h = splitmix(h);
                (h >> 11) as f64 / (1u64 << 53) as f64
            };
            let (fate, ends) = match u() {
                x if x < 0.75 => (Fate::Paid, paid_after(u(), u())),
                x if x < 0.95 => (Fate::Expired, Duration::ZERO),
                _ => (Fate::Canceled, DAY.mul_f64(2.0 * u())),
            };
            Planned {
                arrival: Duration::from_secs_f64(i as f64 * gap),
                fate,
                ends_after: ends,
            }
        })
        .collect()
}

/// When a payer goes to the store: 60% within the first day (most within hours), 30% on
/// the second or third day, 10% on the last day before the 7-day deadline.
fn paid_after(which: f64, u: f64) -> Duration {
    let hour = Duration::from_secs(3600);
    if which < 0.6 {
        hour.mul_f64(24.0 * u * u)
    } else if which < 0.9 {
        DAY + DAY.mul_f64(2.0 * u)
    } else {
        DAY * 6 + hour.mul_f64(12.0 * u)
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The reconciler reads the simulator's clock.
struct SimTime(Sim);

impl Clock for SimTime {
    fn now(&self) -> DateTime<Utc> {
        self.0.clock().now()
    }
}

/// One charge as the run saw it.
#[derive(Debug, Clone)]
struct Seen {
    fate: Fate,
    gets: u64,
    /// From creation to the final status.
    life: Duration,
    /// When UnivaPay's status became final (simulated).
    final_at: DateTime<Utc>,
    /// When the ledger's state became final, if it did.
    detected_at: Option<DateTime<Utc>>,
    /// When the `charge_finished` hint arrived, if one did.
    hinted_at: Option<DateTime<Utc>>,
}

/// Latencies in seconds: p50, p95, max, and how many.
#[derive(Debug, Clone, Copy, Default)]
pub struct Spread {
    pub p50: f64,
    pub p95: f64,
    pub max: f64,
    pub n: usize,
}

impl Spread {
    fn of(mut v: Vec<f64>) -> Spread {
        if v.is_empty() {
            return Spread::default();
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Spread {
            p50: at(0.5),
            p95: at(0.95),
            max: v[v.len() - 1],
            n: v.len(),
        }
    }
}

/// GETs per charge over its life.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gets {
    pub mean: f64,
    pub p95: f64,
    pub total: u64,
}

impl Gets {
    fn of(v: &[u64]) -> Gets {
        let s = Spread::of(v.iter().map(|&g| g as f64).collect());
        let total: u64 = v.iter().sum();
        Gets {
            mean: total as f64 / v.len().max(1) as f64,
            p95: s.p95,
            total,
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Line {
    pub name: String,
    pub gets: Gets,
    /// Paid charges: from the payment to the ledger's `successful`.
    pub payment: Spread,
    /// Paid charges whose hint arrived: from its arrival to the ledger (measured only).
    pub after_delivery: Option<Spread>,
    /// Unpaid charges: from the deadline to the ledger's `failed`.
    pub expiry: Spread,
}

/// What [`run`] found.
#[derive(Debug, Clone)]
pub struct Report {
    pub params: MonthParams,
    pub charges: usize,
    pub lines: Vec<Line>,
    /// Charges whose final webhook never arrived: detection by the passes alone.
    pub lost: Spread,
    /// Final at UnivaPay but not in the ledger when the run ended.
    pub missed: usize,
    /// Most GETs in one simulated minute, and the webhook counters.
    pub peak_per_minute: u64,
    pub hints: webhook::StatsSnapshot,
    pub wall: Duration,
}

/// Runs the month and returns the figures.
pub fn run(p: &MonthParams) -> Result<Report, String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(measure(p))
}

/// The handles of one run.
struct World {
    sim: RunningSim,
    reconciler: Reconciler,
    lock: PassLock,
    db: std::path::PathBuf,
}

async fn measure(p: &MonthParams) -> Result<Report, String> {
    let wall = Instant::now();
    let dir = std::env::temp_dir().join(format!("konbini-month-webhook-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let plans = plan(p);
    let (world, serving, stop) = start(p, &dir).await?;
    let made = simulate(p, &plans, &world, &serving).await?;
    let hints = serving.stats();
    stop.cancel();
    serving.stopped(Duration::from_secs(10)).await;
    let seen = collect(&world, &made)?;
    let peak = peak_per_minute(&world.db)?;
    let report = summarize(p, &seen, peak, hints, wall.elapsed());
    drop(world);
    if std::env::var_os("MONTH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("kept {}", dir.display());
    }
    Ok(report)
}

/// The simulator (delivering webhooks to the listener), the ledger and the intake.
async fn start(
    p: &MonthParams,
    dir: &Path,
) -> Result<(World, webhook::Serving, CancellationToken), String> {
    let creds = Credentials::default();
    let sim = Sim::start_with(
        creds.clone(),
        SimConfig {
            rate_limit: None,
            konbini_expiry: DAY * 7,
            ..SimConfig::default()
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    let db = dir.join("month.db");
    let config = format!(
        "[api]\nbase_url = \"{}\"\napp_token = \"{}\"\nsecret = \"{}\"\ntimeout = \"5s\"\nconcurrency = 16\n\
         [database]\npath = \"{}\"\n[reconcile]\n{}\n[webhook]\nauth_token = \"{TOKEN}\"\n",
        sim.base_url(),
        creds.app_token,
        creds.secret,
        db.display(),
        p.recheck
    );
    let no_env: [(&str, &str); 0] = [];
    let settings = Arc::new(
        Settings::from_toml(&config, Path::new("(month-webhook)"), &no_env)
            .map_err(|e| e.to_string())?,
    );
    let reconciler = Reconciler::with_clock(settings.clone(), Arc::new(SimTime(sim.sim.clone())))
        .map_err(|e| e.to_string())?;
    reconciler
        .prepare_ledger()
        .await
        .map_err(|e| e.to_string())?;
    let socket = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let listener = Listener::from_std(socket).map_err(|e| e.to_string())?;
    let url = format!("http://{}{}", listener.local_addr(), "/univapay/webhook");
    let stop = CancellationToken::new();
    let wh = settings.webhook.as_ref().ok_or("no [webhook]")?;
    // The intake counts its spacing and budget in simulated time, like everything else:
    // the jumps between steps are time passing for it too.
    let (origin, sim_origin, clock_sim) = (
        tokio::time::Instant::now(),
        sim.clock().now(),
        sim.sim.clone(),
    );
    let hooks = Hooks {
        clock: Some(Arc::new(move || {
            origin
                + (clock_sim.clock().now() - sim_origin)
                    .to_std()
                    .unwrap_or_default()
        })),
        ..Hooks::default()
    };
    let serving = webhook::serve(
        listener,
        wh,
        reconciler.checker().clone(),
        hooks,
        Health::new(),
        stop.clone(),
    )
    .map_err(|e| e.to_string())?;
    let target = WebhookTarget {
        seed: p.seed,
        ..WebhookTarget::new(url, TOKEN)
            .with_loss(p.webhook_loss)
            .with_delay(p.webhook_delay.clone())
    };
    sim.configure(|c| c.webhook = Some(target));
    let lock = PassLock::for_database(&db);
    Ok((
        World {
            sim,
            reconciler,
            lock,
            db,
        },
        serving,
        stop,
    ))
}

/// Steps through the month (and a week more, for the last charges to end): charges
/// arrive, webhooks are delivered, passes run; after each step everything the hints
/// started is finished before time jumps on. Returns the charges in plan order.
async fn simulate(
    p: &MonthParams,
    plans: &[Planned],
    w: &World,
    serving: &webhook::Serving,
) -> Result<Vec<Made>, String> {
    let sim = &w.sim;
    let t0 = sim.clock().now();
    let end = DAY * (p.days + 8);
    let mut ids = Vec::with_capacity(plans.len());
    let mut next_pass = Duration::ZERO;
    let mut at = Duration::ZERO;
    let mut last_report = Instant::now();
    while at <= end {
        let now = sim.clock().now();
        let target = t0 + chrono::Duration::from_std(at).unwrap_or_default();
        if now < target {
            sim.advance((target - now).to_std().unwrap_or_default());
        }
        while let Some(pl) = plans.get(ids.len()).filter(|pl| pl.arrival <= at) {
            ids.push(create(w, pl)?);
        }
        sim.deliver_due_webhooks().await;
        settle(sim, serving).await;
        if at >= next_pass {
            pass(w).await?;
            next_pass += p.pass_every;
            settle(sim, serving).await;
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "  day {:.1} of {}, {} charges, {:.0} s",
                at.as_secs_f64() / 86_400.0,
                p.days + 8,
                ids.len(),
                last_report.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        at += p.step;
    }
    Ok(ids)
}

/// Waits until the intake has done everything the hints so far asked for. Work runs in
/// real time (simulated time flows with it); waits for the spacing or the hint budget are
/// skipped by moving simulated time to their end, as a discrete-event simulation does.
async fn settle(sim: &Sim, serving: &webhook::Serving) {
    loop {
        if let Some(at) = serving.waiting_until() {
            let now = serving.now();
            if at > now {
                sim.advance(at - now);
            }
            serving.wake();
        }
        if serving.is_settled() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A charge made at the simulator: its id, and when it was created and will end there.
#[derive(Debug, Clone)]
struct Made {
    id: String,
    fate: Fate,
    created: DateTime<Utc>,
    ends: DateTime<Utc>,
}

/// Creates the charge at UnivaPay, schedules how it ends, and registers it the way a shop
/// does right after creating it (with its deadline).
fn create(w: &World, pl: &Planned) -> Result<Made, String> {
    let c = w.sim.create_konbini_charge(STORE, 1000, "lawson");
    let now = w.sim.clock().now();
    let deadline = univapay_sim::konbini_deadline(now, DAY * 7, None);
    let until_deadline = (deadline - now).to_std().unwrap_or_default();
    let action = match pl.fate {
        Fate::Paid => Some(Action::Pay),
        Fate::Canceled => Some(Action::Cancel),
        Fate::Expired => None,
    };
    let mut ends = deadline;
    if let Some(a) = action {
        // After the payment number is issued, and before the deadline.
        let after = (pl.ends_after + Duration::from_secs(5))
            .min(until_deadline.saturating_sub(Duration::from_secs(60)));
        w.sim.schedule(&c.id, after, a).map_err(|e| e.to_string())?;
        ends = now + chrono::Duration::from_std(after).unwrap_or_default();
    }
    let conn = rusqlite::Connection::open(&w.db).map_err(|e| e.to_string())?;
    conn.execute(
        "INSERT INTO charges (charge_id, store_id, requested_amount, created_at, next_check_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?4, ?5)",
        rusqlite::params![c.id, STORE, c.requested_amount, ts(now), ts(deadline)],
    )
    .map_err(|e| e.to_string())?;
    Ok(Made {
        id: c.id,
        fate: pl.fate,
        created: now,
        ends,
    })
}

async fn pass(w: &World) -> Result<(), String> {
    let guard = w
        .lock
        .try_acquire()
        .map_err(|e| e.to_string())?
        .map_err(|_| "pass lock held".to_string())?;
    w.reconciler
        .run_pass(&guard, Trigger::Schedule, CancellationToken::new())
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// What the simulator and the ledger say about each charge.
fn collect(w: &World, made: &[Made]) -> Result<Vec<Seen>, String> {
    let ledger =
        Ledger::open_if_exists(&w.db, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    // One scan for every charge: when it turned final, when its final hint arrived.
    let mut events = ledger.endings().map_err(|e| e.to_string())?;
    Ok(made
        .iter()
        .map(|m| {
            let ending = events.remove(&m.id).unwrap_or_default();
            Seen {
                fate: m.fate,
                gets: w.sim.requests_for(&m.id),
                life: (m.ends - m.created).to_std().unwrap_or_default(),
                final_at: m.ends,
                detected_at: ending.finalized_at,
                hinted_at: ending.finished_hint_at,
            }
        })
        .collect())
}

/// Most charge GETs the passes and hints made in one simulated minute (from the runs'
/// `checked` counts, by the minute they started).
fn peak_per_minute(db: &Path) -> Result<u64, String> {
    let conn = rusqlite::Connection::open(db).map_err(|e| e.to_string())?;
    conn.query_row(
        "SELECT coalesce(max(n), 0) FROM
           (SELECT substr(started_at, 1, 16) AS minute, sum(checked) AS n FROM runs GROUP BY minute)",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n as u64)
    .map_err(|e| e.to_string())
}

fn secs(d: chrono::Duration) -> f64 {
    d.num_milliseconds() as f64 / 1000.0
}

fn summarize(
    p: &MonthParams,
    seen: &[Seen],
    peak: u64,
    hints: webhook::StatsSnapshot,
    wall: Duration,
) -> Report {
    let latency = |s: &Seen| Some(secs(s.detected_at? - s.final_at).max(0.0));
    let of = |fate: Fate| {
        Spread::of(
            seen.iter()
                .filter(|s| s.fate == fate)
                .filter_map(latency)
                .collect(),
        )
    };
    let after: Vec<f64> = seen
        .iter()
        .filter(|s| s.fate == Fate::Paid)
        .filter_map(|s| Some(secs(s.detected_at? - s.hinted_at?).max(0.0)))
        .collect();
    let lost: Vec<f64> = seen
        .iter()
        .filter(|s| s.hinted_at.is_none())
        .filter_map(latency)
        .collect();
    let gets: Vec<u64> = seen.iter().map(|s| s.gets).collect();
    let tick = Some(p.pass_every);
    let flat = model(seen, &[(Duration::ZERO, Duration::from_secs(300))], tick);
    let alone = model(seen, &schedule_of(&p.recheck), tick);
    Report {
        params: p.clone(),
        charges: seen.len(),
        lines: vec![
            Line {
                name: "flat 5 min, polling only (model: every second pass, as it runs)".into(),
                ..flat
            },
            Line {
                name: format!("`{}`, polling only (model)", p.recheck),
                ..alone
            },
            Line {
                name: format!("webhooks + `{}` (measured)", p.recheck),
                gets: Gets::of(&gets),
                payment: of(Fate::Paid),
                after_delivery: Some(Spread::of(after)),
                expiry: of(Fate::Expired),
            },
        ],
        lost: Spread::of(lost),
        missed: seen.iter().filter(|s| s.detected_at.is_none()).count(),
        peak_per_minute: peak,
        hints,
        wall,
    }
}

/// Polling alone over the same charges' lives: a GET at registration, then one every
/// `every` (by age) until one sees the final status. With passes every `tick`, each
/// interval is the one the reconciler keeps on that cron, on average ([`on_the_cron`]).
fn model(seen: &[Seen], schedule: &[(Duration, Duration)], tick: Option<Duration>) -> Line {
    let flat = schedule.len() == 1;
    let mut gets = Vec::with_capacity(seen.len());
    let (mut paid, mut expired) = (Vec::new(), Vec::new());
    for s in seen {
        let (mut t, mut n) = (Duration::ZERO, 1u64);
        while t < s.life {
            let every = schedule
                .iter()
                .rev()
                .find(|(age, _)| *age <= t)
                .map_or(Duration::from_secs(300), |(_, e)| *e);
            // With no cron, the nominal interval: the strict model.
            t += tick.map_or(every, |_| on_the_cron(every, flat, tick));
            n += 1;
        }
        gets.push(n);
        let late = (t - s.life).as_secs_f64();
        match s.fate {
            Fate::Paid => paid.push(late),
            Fate::Expired => expired.push(late),
            Fate::Canceled => {}
        }
    }
    Line {
        name: String::new(),
        gets: Gets::of(&gets),
        payment: Spread::of(paid),
        after_delivery: None,
        expiry: Spread::of(expired),
    }
}

/// The schedule a `[reconcile]` snippet sets, for the model: `recheck_interval` alone is
/// one step; `recheck_schedule` is read step by step.
fn schedule_of(recheck: &str) -> Vec<(Duration, Duration)> {
    let table: toml::Table = toml::from_str(recheck).unwrap_or_default();
    let dur = |v: Option<&toml::Value>| {
        v.and_then(toml::Value::as_str)
            .and_then(|s| humantime::parse_duration(s).ok())
    };
    if let Some(steps) = table
        .get("recheck_schedule")
        .and_then(toml::Value::as_array)
    {
        let s: Vec<(Duration, Duration)> = steps
            .iter()
            .filter_map(|st| Some((dur(st.get("age"))?, dur(st.get("every"))?)))
            .collect();
        if !s.is_empty() {
            return s;
        }
    }
    let every = dur(table.get("recheck_interval")).unwrap_or(Duration::from_secs(300));
    vec![(Duration::ZERO, every)]
}

impl Report {
    pub fn print(&self) {
        let p = &self.params;
        println!(
            "month-webhook: {} days, {} charges a day ({} in all), webhooks {:.0}% lost, delayed {:?}-{:?}, a pass every {:?}, steps of {:?}; {:.0} s",
            p.days,
            p.charges_per_day,
            self.charges,
            p.webhook_loss * 100.0,
            p.webhook_delay.start,
            p.webhook_delay.end,
            p.pass_every,
            p.step,
            self.wall.as_secs_f64()
        );
        println!(
            "\n| schedule | GETs/charge mean | p95 | total | payment detection p50 / p95 / max | after delivery p50 / p95 / max | expiry detection p50 / p95 / max |"
        );
        println!("|---|---|---|---|---|---|---|");
        let three = |s: &Spread| format!("{} / {} / {}", human(s.p50), human(s.p95), human(s.max));
        for l in &self.lines {
            println!(
                "| {} | {:.1} | {:.0} | {} | {} | {} | {} |",
                l.name,
                l.gets.mean,
                l.gets.p95,
                l.gets.total,
                three(&l.payment),
                l.after_delivery.as_ref().map_or_else(String::new, three),
                three(&l.expiry)
            );
        }
        let flat = self.lines[0].gets.mean;
        let measured = self.lines[self.lines.len() - 1].gets.mean;
        println!(
            "\nGETs per charge: {:.1}x fewer than flat 5-minute polling.",
            flat / measured.max(f64::MIN_POSITIVE)
        );
        println!(
            "Final webhook lost for {} charges: found by the passes after {} / {} / {} (p50 / p95 / max). Missed: {}.",
            self.lost.n,
            human(self.lost.p50),
            human(self.lost.p95),
            human(self.lost.max),
            self.missed
        );
        let h = &self.hints;
        println!(
            "Hints: {} received, {} GETs, {} coalesced, {} for final charges, {} dropped; peak {} GETs in a simulated minute (route budget {}/min).",
            h.received,
            h.checks,
            h.coalesced,
            h.for_final,
            h.dropped,
            self.peak_per_minute,
            p.route_per_minute
        );
    }
}

fn human(s: f64) -> String {
    if s < 10.0 {
        format!("{s:.2} s")
    } else if s < 120.0 {
        format!("{s:.1} s")
    } else if s < 7200.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

/// `month-webhook [--quick] [--days N] [--per-day N] [--recheck TOML] [--loss F] [--step D]`.
pub fn main(args: &[String]) -> Result<(), String> {
    let mut p = MonthParams::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--quick" => {
                p.days = 3;
                p.charges_per_day = 200;
            }
            "--days" => p.days = val()?.parse().map_err(|e| format!("--days: {e}"))?,
            "--per-day" => {
                p.charges_per_day = val()?.parse().map_err(|e| format!("--per-day: {e}"))?;
            }
            "--recheck" => p.recheck = val()?.clone(),
            "--loss" => p.webhook_loss = val()?.parse().map_err(|e| format!("--loss: {e}"))?,
            "--step" => {
                p.step = humantime::parse_duration(val()?).map_err(|e| format!("--step: {e}"))?;
            }
            other => return Err(format!("month-webhook: unknown argument {other:?}")),
        }
    }
    run(&p)?.print();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(life_s: u64, fate: Fate) -> Seen {
        Seen {
            fate,
            gets: 0,
            life: Duration::from_secs(life_s),
            final_at: Utc::now(),
            detected_at: None,
            hinted_at: None,
        }
    }

    #[test]
    fn the_recheck_setting_is_read_for_the_model() {
        let h = Duration::from_secs(3600);
        assert_eq!(
            schedule_of("recheck_interval = \"1h\""),
            [(Duration::ZERO, h)]
        );
        let s = schedule_of(
            "recheck_schedule = [{ age = \"0s\", every = \"15m\" }, { age = \"1h\", every = \"1h\" }]",
        );
        assert_eq!(s, [(Duration::ZERO, h / 4), (h, h)]);
    }

    #[test]
    fn polling_costs_a_get_per_interval_and_is_late_by_the_rest() {
        let five = [(Duration::ZERO, Duration::from_secs(300))];
        let l = model(&[seen(0, Fate::Paid), seen(301, Fate::Paid)], &five, None);
        // At registration; then at 5 and 10 minutes for the second.
        assert_eq!(l.gets.total, 1 + 3);
        assert_eq!(l.payment.max, 299.0);
        let by_age = [
            (Duration::ZERO, Duration::from_secs(600)),
            (Duration::from_secs(3600), Duration::from_secs(3600)),
        ];
        // Every 10 minutes for the first hour, then hourly: 6 + 2 checks after the first.
        assert_eq!(
            model(&[seen(3 * 3600, Fate::Expired)], &by_age, None)
                .gets
                .total,
            9
        );
    }

    #[test]
    fn on_the_cron_intervals_round_to_whole_passes() {
        let min = Duration::from_secs(60);
        let tick = Some(5 * min);
        // A flat 5 minutes is every second pass; a flat hour every 13th.
        assert_eq!(on_the_cron(5 * min, true, tick), 10 * min);
        assert_eq!(on_the_cron(60 * min, true, tick), 65 * min);
        // By age, 10 minutes comes early enough for every second pass; an hour, due 46 to
        // 58 minutes after a check, at the 10th (4 of 12 minutes), 11th (5) or 12th (3)
        // pass: 131 / 12 passes on average (the mean over the jitter, as the plan counts).
        assert_eq!(on_the_cron(10 * min, false, tick), 10 * min);
        let hour = on_the_cron(60 * min, false, tick).as_secs_f64() / 60.0;
        assert!((hour - 131.0 / 12.0 * 5.0).abs() < 1e-9, "{hour}");
        assert_eq!(on_the_cron(7 * min, true, None), 7 * min);
        // So the flat 5-minute model costs half the GETs of a strict 5 minutes.
        let five = [(Duration::ZERO, 5 * min)];
        let life = seen(24 * 3600, Fate::Expired);
        let strict = model(std::slice::from_ref(&life), &five, None).gets.total;
        let as_run = model(&[life], &five, tick).gets.total;
        assert_eq!((strict, as_run), (289, 145));
    }

    #[test]
    fn the_month_is_mostly_paid_a_fifth_expires() {
        let p = MonthParams::default();
        let plans = plan(&p);
        assert_eq!(plans.len(), 30_000);
        let share = |f: Fate| plans.iter().filter(|pl| pl.fate == f).count() as f64 / 30_000.0;
        assert!((share(Fate::Paid) - 0.75).abs() < 0.02);
        assert!((share(Fate::Expired) - 0.20).abs() < 0.02);
        let paid: Vec<&Planned> = plans.iter().filter(|pl| pl.fate == Fate::Paid).collect();
        let within = |d: Duration| {
            paid.iter().filter(|pl| pl.ends_after <= d).count() as f64 / paid.len() as f64
        };
        assert!(
            within(DAY) > 0.55 && within(DAY * 3) > 0.85,
            "{}",
            within(DAY)
        );
        assert!(plans.windows(2).all(|w| w[0].arrival < w[1].arrival));
    }
}
