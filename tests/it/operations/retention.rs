//! `[retention]`: `--once` prunes old webhook events, finished runs and delivered rows,
//! and nothing else (never a fact, never what a pending delivery needs), and only when a
//! round is due; the daemon's job runs its first round within a minute of start.
//! The figures of docs/operations.md ("Retention") come from the two ignored tests at
//! the end (`cargo test --release --test it retention_figures -- --ignored --nocapture`).
//! Archiving's own tests are in `archive.rs` beside this file.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use konbini_reconciler::jobs::Job;
use konbini_reconciler::jobs::checkpoint::CheckpointJob;
use konbini_reconciler::jobs::prune::PruneJob;
use konbini_reconciler::ledger::Trigger;
use rusqlite::{Connection, params};
use tokio_util::sync::CancellationToken;

use crate::helpers::TestApp;

/// `days` days before now, as the ledger writes times.
fn ago(days: i64) -> String {
    (Utc::now() - chrono::Duration::days(days)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Old and recent rows of every prunable kind, and old facts beside them.
fn fill(conn: &Connection) {
    let (old, older, recent) = (ago(60), ago(100), ago(1));
    for at in [&old, &old, &old, &old, &old, &recent, &recent] {
        conn.execute(
            "INSERT INTO charge_events (charge_id, at, kind, detail) VALUES ('c1', ?1, 'webhook', 'charge_updated x1')",
            [at],
        )
        .unwrap();
    }
    for (kind, from, to) in [
        ("transition", Some("pending"), Some("awaiting")),
        ("transition", Some("awaiting"), Some("successful")),
        ("mismatch", None, None),
        ("discovered", None, None),
        ("gave_up", None, None),
    ] {
        conn.execute(
            "INSERT INTO charge_events (charge_id, at, kind, from_state, to_state) VALUES ('c1', ?1, ?2, ?3, ?4)",
            params![older, kind, from, to],
        )
        .unwrap();
    }
    for (finished, outcome) in [
        (Some(&older), "ok"),
        (Some(&older), "ok"),
        (Some(&older), "failed"),
        (Some(&older), "unreachable"),
        (None, "running"),
        (Some(&recent), "ok"),
    ] {
        conn.execute(
            "INSERT INTO runs (trigger, started_at, finished_at, outcome) VALUES ('schedule', ?1, ?2, ?3)",
            params![older, finished, outcome],
        )
        .unwrap();
    }
    for (id, delivered) in [
        (9001, Some(&old)),
        (9002, Some(&old)),
        (9003, Some(&old)),
        (9004, None),
        (9005, Some(&recent)),
    ] {
        conn.execute(
            "INSERT INTO event_payloads (event_id, type, charge_id, at, payload) VALUES (?1, 'charge.paid', ?2, ?3, '{}')",
            params![id, format!("d{id}"), old],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO deliveries (endpoint, event_id, charge_id, created_at, next_attempt_at, delivered_at)
             VALUES ('shop', ?1, ?2, ?3, ?3, ?4)",
            params![id, format!("d{id}"), old, delivered],
        )
        .unwrap();
    }
}

fn counts(app: &TestApp) -> [i64; 6] {
    [
        app.count("SELECT count(*) FROM charge_events WHERE kind = 'webhook'"),
        app.count("SELECT count(*) FROM charge_events WHERE kind <> 'webhook'"),
        app.count("SELECT count(*) FROM runs"),
        app.count("SELECT count(*) FROM deliveries WHERE delivered_at IS NOT NULL"),
        app.count("SELECT count(*) FROM deliveries WHERE delivered_at IS NULL"),
        app.count("SELECT count(*) FROM event_payloads"),
    ]
}

fn with_retention(c: &mut crate::config::TestConfig) {
    *c = c
        .clone()
        .set("retention.webhook_events", "30d")
        .set("retention.runs", "90d")
        .set("retention.deliveries", "30d");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_prunes_old_hints_runs_and_delivered_rows_and_nothing_else() {
    let mut app = TestApp::spawn().await;
    app.register("c1", 100);
    fill(&app.db());
    // Without [retention]: nothing goes. The pass adds its own runs row and its one
    // event (c1 is unknown at UnivaPay); the five facts are joined by four payloads
    // (transitions, mismatch, discovered) to the five of the deliveries.
    app.command().once().run().assert_code(0);
    let facts = 6;
    assert_eq!(counts(&app), [7, facts, 7, 4, 1, 9]);

    app.reconfigure(with_retention);
    let out = app.command().once().run();
    out.assert_code(0);
    assert!(
        out.stderr().contains("retention: pruned"),
        "{}",
        out.stderr()
    );
    // Hints: the two recent. Runs: the interrupted one (never finished), the recent one
    // and the two passes of --once. Deliveries: the recent delivered one and the pending
    // one; every payload (the feed's, and the pending one's) stays. Every fact stays.
    assert_eq!(counts(&app), [2, facts, 4, 1, 1, 9]);
    assert_eq!(
        app.count("SELECT count(*) FROM meta WHERE key = 'retention_pruned_at'"),
        1
    );

    // A round is not due again for ten minutes: the next --once leaves a new old hint.
    app.db()
        .execute(
            "INSERT INTO charge_events (charge_id, at, kind) VALUES ('c1', ?1, 'webhook')",
            [ago(60)],
        )
        .unwrap();
    let out = app.command().once().run();
    out.assert_code(0);
    assert!(
        !out.stderr().contains("retention: pruned"),
        "{}",
        out.stderr()
    );
    assert_eq!(
        app.count("SELECT count(*) FROM charge_events WHERE kind = 'webhook'"),
        3
    );
}

#[tokio::test]
async fn the_daemon_prunes_within_a_minute_of_start_then_every_ten_minutes() {
    let app = TestApp::spawn_with(with_retention).await;
    app.register("c1", 100);
    fill(&app.db());
    let job = Arc::new(PruneJob::new(app.reconciler.context().clone()));
    tokio::time::pause();
    let shutdown = CancellationToken::new();
    let start = tokio::time::Instant::now();
    let work = job.clone().next(shutdown.clone()).await.expect("a round");
    let first = start.elapsed();
    assert!(
        first <= Duration::from_secs(60) && first >= Duration::from_secs(1),
        "{first:?}"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM charge_events WHERE kind = 'webhook'"),
        7,
        "nothing before the first round"
    );
    work(None, shutdown.clone()).await;
    assert_eq!(
        app.count("SELECT count(*) FROM charge_events WHERE kind = 'webhook'"),
        2
    );
    let again = tokio::time::Instant::now();
    let _ = job.clone().next(shutdown.clone()).await.expect("a round");
    let every = again.elapsed();
    assert!(
        every >= Duration::from_secs(600) && every < Duration::from_secs(601),
        "{every:?}"
    );
    shutdown.cancel();
    assert!(
        job.clone().next(shutdown).await.is_none(),
        "ends at shutdown"
    );
    let _ = job.work(Trigger::Schedule);
}

/// Webhook events in the database file alone, as the last checkpoint left it.
fn hints_in_file(app: &TestApp) -> i64 {
    let copy = app.db_path.with_file_name("file-only.db");
    std::fs::copy(&app.db_path, &copy).unwrap();
    let n = Connection::open(&copy)
        .unwrap()
        .query_row(
            "SELECT count(*) FROM charge_events WHERE kind = 'webhook'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    std::fs::remove_file(copy).unwrap();
    n
}

/// No commit copies the WAL into the file (that copy made a pass's commit wait 10 ms and
/// more, docs/operations.md "Retention"). A round copies the WAL before each of its
/// steps, so that the WAL can start over while it runs: here the checkpoint before the
/// first step of `runs` copies the hints' deletions. What a round's last step wrote,
/// and other writes, wait in the WAL for the daemon's checkpoint job, which copies them
/// a second later.
#[tokio::test]
async fn a_round_copies_its_deletions_and_the_checkpoint_job_the_other_writes() {
    let app = TestApp::spawn_with(with_retention).await;
    app.register("c1", 100);
    fill(&app.db());
    // An open connection keeps every other one from being the last to close, as the
    // daemon's delivery connections do: nobody checkpoints on close.
    let open = app.db();
    open.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    assert_eq!(hints_in_file(&app), 7);
    let ctx = app.reconciler.context().clone();
    let prune = Arc::new(PruneJob::new(ctx.clone()));
    prune.work(Trigger::Schedule)(None, CancellationToken::new()).await;
    assert_eq!(
        app.count("SELECT count(*) FROM charge_events WHERE kind = 'webhook'"),
        2
    );
    assert_eq!(hints_in_file(&app), 2, "the round copied its steps");
    open.execute(
        "INSERT INTO charge_events (charge_id, at, kind, detail) VALUES ('c1', ?1, 'webhook', 'charge_updated x1')",
        [ago(0)],
    )
    .unwrap();
    assert_eq!(hints_in_file(&app), 2, "the write waits in the WAL");

    let job = Arc::new(CheckpointJob::new(ctx));
    tokio::time::pause();
    let shutdown = CancellationToken::new();
    let start = tokio::time::Instant::now();
    let work = job
        .clone()
        .next(shutdown.clone())
        .await
        .expect("a checkpoint");
    let every = start.elapsed();
    assert!(
        every >= Duration::from_secs(1) && every < Duration::from_millis(1100),
        "{every:?}"
    );
    work(None, shutdown.clone()).await;
    assert_eq!(hints_in_file(&app), 3);
    shutdown.cancel();
    assert!(job.next(shutdown).await.is_none(), "ends at shutdown");
    drop(open);
}

/// A simulated ledger: 1,000 charges a day, each with its two transitions (the outbox
/// trigger adds their payloads and one delivery row each, delivered the same day) and
/// two webhook events, and a pass a minute (1,440 `runs` rows a day). With retention,
/// a prune round at the end of every day, as the job would run it.
struct SimYear {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    ledger: konbini_reconciler::ledger::Ledger,
    conn: Connection,
    retention: Option<konbini_reconciler::config::retention::RetentionSettings>,
}

const PER_DAY: usize = 1000;

/// What a simulated ledger keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    /// No `[retention]`.
    Everything,
    /// The contract's example retention (30d / 90d / 30d).
    Pruned,
    /// That and `archive = "400d"`.
    Archived,
}

impl SimYear {
    fn new(keep: Keep) -> SimYear {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("year.db");
        let ledger =
            konbini_reconciler::ledger::Ledger::open(&path, Duration::from_secs(5)).unwrap();
        let conn = Connection::open(&path).unwrap();
        conn.execute(
            "INSERT INTO delivery_endpoints (name, events, updated_at) VALUES ('shop', ' charge.awaiting charge.paid charge.failed charge.mismatch charge.discovered ', '2026-01-01T00:00:00.000Z')",
            [],
        )
        .unwrap();
        let day = Duration::from_secs(86_400);
        let retention = (keep != Keep::Everything).then(|| {
            konbini_reconciler::config::retention::RetentionSettings {
                webhook_events: Some(30 * day),
                runs: Some(90 * day),
                deliveries: Some(30 * day),
                archive: (keep == Keep::Archived).then_some(400 * day),
                archive_path: dir.path().join("year-archive.db"),
            }
        });
        SimYear {
            _dir: dir,
            path,
            ledger,
            conn,
            retention,
        }
    }

    fn day(&mut self, d: usize) {
        let base = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let now = base + chrono::Duration::days(d as i64);
        let at = |s: i64| {
            (now + chrono::Duration::seconds(s))
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        };
        let tx = self.conn.transaction().unwrap();
        {
            let mut charge = tx
                .prepare_cached(
                    "INSERT INTO charges (charge_id, store_id, requested_amount, state, provider_status,
                       charged_amount, charged_currency, payment_number, next_check_at, created_at,
                       updated_at, last_checked_at, konbini, expires_at, order_ref, paid_at)
                     VALUES (?1, 'store-1', 1980, 'successful', 'successful', 1980, 'JPY', '7012-3456-7890',
                       NULL, ?2, ?2, ?2, 'seven_eleven', ?2, ?3, ?2)",
                )
                .unwrap();
            let mut event = tx
                .prepare_cached(
                    "INSERT INTO charge_events (charge_id, at, kind, from_state, to_state, provider_status, detail, run_id)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 1)",
                )
                .unwrap();
            for i in 0..PER_DAY {
                let id = format!("ch_{d:04}_{i:04}_0123456789abcdef");
                let t = at((i * 86) as i64);
                charge
                    .execute(params![id, t, format!("order-{d}-{i}")])
                    .unwrap();
                for (kind, from, to, status, detail) in [
                    (
                        "transition",
                        Some("pending"),
                        Some("awaiting"),
                        Some("awaiting"),
                        None,
                    ),
                    ("webhook", None, None, None, Some("charge_updated x1")),
                    ("webhook", None, None, None, Some("charge_finished x1")),
                    (
                        "transition",
                        Some("awaiting"),
                        Some("successful"),
                        Some("successful"),
                        None,
                    ),
                ] {
                    event
                        .execute(params![id, t, kind, from, to, status, detail])
                        .unwrap();
                }
            }
            let mut run = tx
                .prepare_cached(
                    "INSERT INTO runs (trigger, started_at, finished_at, outcome, checked, transitions, due, requests)
                     VALUES ('schedule', ?1, ?2, 'ok', 3, 1, 3, 3)",
                )
                .unwrap();
            for m in 0..1440 {
                run.execute(params![at(m * 60), at(m * 60 + 1)]).unwrap();
            }
            tx.execute(
                "UPDATE deliveries SET delivered_at = ?1, attempts = 1, last_status = 200, next_attempt_at = NULL
                 WHERE delivered_at IS NULL",
                [at(86_399)],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        if let Some(r) = &self.retention {
            konbini_reconciler::jobs::prune::round(
                &mut self.ledger,
                r,
                now + chrono::Duration::days(1),
                &CancellationToken::new(),
            )
            .unwrap();
        }
    }

    /// The file's size after a checkpoint, in bytes.
    /// `n` `webhook` events 60 days old, over at most 5,000 charges, in one transaction;
    /// then a checkpoint, so that the WAL starts empty.
    fn old_hints(&mut self, n: usize) {
        let old = ago(60);
        let tx = self.conn.transaction().unwrap();
        for i in 0..n {
            tx.execute(
                "INSERT INTO charge_events (charge_id, at, kind, detail) VALUES (?1, ?2, 'webhook', 'charge_updated x1')",
                params![format!("c{}", i % 5000), old],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        self.size();
    }

    /// One prune round now with `webhook_events = "30d"` and nothing else.
    fn prune_old_hints(&mut self) -> konbini_reconciler::jobs::prune::Round {
        let retention = konbini_reconciler::config::retention::RetentionSettings {
            webhook_events: Some(Duration::from_secs(30 * 86_400)),
            ..Default::default()
        };
        konbini_reconciler::jobs::prune::round(
            &mut self.ledger,
            &retention,
            Utc::now(),
            &CancellationToken::new(),
        )
        .unwrap()
    }

    fn size(&self) -> u64 {
        self.conn
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
        std::fs::metadata(&self.path).unwrap().len()
    }
}

/// The archive's size after a checkpoint, in bytes (0 when there is none).
fn archive_size(sim: &SimYear) -> u64 {
    let Some(r) = &sim.retention else { return 0 };
    match Connection::open_with_flags(&r.archive_path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)
    {
        Ok(c) => {
            c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
            std::fs::metadata(&r.archive_path).unwrap().len()
        }
        Err(_) => 0,
    }
}

/// The ledger-size figures: two periods (a year each unless `KONBINI_SIM_DAYS` shortens
/// them) without retention, with the contract's example retention (30d / 90d / 30d),
/// and with that and `archive = "400d"`: the ledger's size after each period, the
/// archive's, and the tombstones' share (`dbstat`).
#[test]
#[ignore = "a figure for the docs: minutes of work"]
fn retention_figures_ledger_size_after_a_simulated_year() {
    let days: usize = std::env::var("KONBINI_SIM_DAYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(365);
    let charges = (days * PER_DAY) as u64;
    // `KONBINI_SIM_KEEP` (everything, pruned, archived) runs one of them, so the three
    // can run in processes of their own.
    let only = std::env::var("KONBINI_SIM_KEEP").unwrap_or_default();
    for keep in [Keep::Everything, Keep::Pruned, Keep::Archived] {
        if !only.is_empty() && !format!("{keep:?}").eq_ignore_ascii_case(&only) {
            continue;
        }
        let started = std::time::Instant::now();
        let mut sim = SimYear::new(keep);
        for d in 0..days {
            sim.day(d);
        }
        let (one, one_archive) = (sim.size(), archive_size(&sim));
        for d in days..2 * days {
            sim.day(d);
        }
        let (two, two_archive) = (sim.size(), archive_size(&sim));
        let count = |sql: &str| -> i64 { sim.conn.query_row(sql, [], |r| r.get(0)).unwrap() };
        let tombstone_bytes: i64 = sim
            .conn
            .query_row(
                "SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name IN ('archived_charges')",
                [],
                |r| r.get(0),
            )
            .unwrap_or(-1);
        println!(
            "{keep:?}, {days} days x {PER_DAY} charges: after one period {one} B ({} B/charge), \
             archive {one_archive} B; after two {two} B, archive {two_archive} B; \
             charges in the ledger {}, tombstones {} ({tombstone_bytes} B), webhook events {}, \
             runs {}, deliveries {}; {:?}",
            one / charges,
            count("SELECT count(*) FROM charges"),
            count("SELECT count(*) FROM archived_charges"),
            count("SELECT count(*) FROM charge_events WHERE kind = 'webhook'"),
            count("SELECT count(*) FROM runs"),
            count("SELECT count(*) FROM deliveries"),
            started.elapsed()
        );
    }
}

/// The longest wait pruning causes a writer: a round over 200,000 old hints in one
/// thread, and in another a hint check's write (one IMMEDIATE transaction appending a
/// `webhook` row), each timed from BEGIN to COMMIT; the same writes without pruning for
/// comparison. Two writers, each alone and then beside a round of its own: the ledger's
/// connection as the daemon opens it, and a connection on SQLite's defaults (its own
/// busy handler, `sqlite3_busy_timeout`, and its automatic checkpoint), the reference.
/// Each at two paces: a write every 50 ms, the most a pass and the hint checks can
/// write together (every write follows a GET, and UnivaPay's route allows one per 50 ms
/// after its burst), and every 2 ms, 25 times that, which leaves a checkpoint hardly a
/// moment without writes.
#[test]
#[ignore = "a figure for the docs: a bench-like measurement"]
fn retention_figures_longest_pause_of_a_writer() {
    use konbini_reconciler::domain::ChargeId;
    use konbini_reconciler::ledger::{HintCheck, HintEvents, Ledger};
    use std::sync::atomic::{AtomicBool, Ordering};

    /// One write each time it is called, on a connection of its own.
    type Writer = Box<dyn FnMut() + Send>;

    let mut sim = SimYear::new(Keep::Everything);
    sim.conn
        .execute(
            "INSERT INTO charges (charge_id, store_id, requested_amount) VALUES ('w', 's', 1)",
            [],
        )
        .unwrap();
    let path = sim.path.clone();
    // One write of each kind; both append the same row in one IMMEDIATE transaction.
    let ledger_write = || -> Writer {
        let mut ledger = Ledger::open(&path, Duration::from_secs(5)).unwrap();
        let mut events = HintEvents::default();
        events.add("charge_updated");
        let check = HintCheck {
            charge_id: ChargeId::parse("w").unwrap(),
            events,
            at: Utc::now(),
        };
        Box::new(move || {
            ledger
                .record_hint_checks(std::slice::from_ref(&check))
                .unwrap()
        })
    };
    let sqlite_write = || -> Writer {
        let mut c = Connection::open(&path).unwrap();
        c.busy_timeout(Duration::from_secs(5)).unwrap();
        c.execute_batch("PRAGMA synchronous = NORMAL").unwrap();
        Box::new(move || {
            let tx = c
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .unwrap();
            tx.execute(
                "INSERT INTO charge_events (charge_id, at, kind, detail) VALUES ('w', ?1, 'webhook', 'charge_updated x1')",
                [ago(0)],
            )
            .unwrap();
            tx.commit().unwrap();
        })
    };
    fn writes(stop: &AtomicBool, every: Duration, mut write: impl FnMut()) -> Vec<Duration> {
        let mut took = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let t = std::time::Instant::now();
            write();
            took.push(t.elapsed());
            std::thread::sleep(every);
        }
        took.sort();
        took
    }
    let line = |t: &[Duration]| {
        let p = |q: f64| t[((t.len() - 1) as f64 * q) as usize];
        let over = t.iter().filter(|d| **d > Duration::from_millis(10)).count();
        format!(
            "{} writes, median {:?}, p99 {:?}, longest {:?} (then {:?}), {over} over 10 ms",
            t.len(),
            p(0.5),
            p(0.99),
            t[t.len() - 1],
            &t[t.len().saturating_sub(5)..t.len() - 1]
        )
    };
    let writers: [(&str, &dyn Fn() -> Writer); 2] = [
        ("ledger's connection", &ledger_write),
        ("SQLite's busy handler", &sqlite_write),
    ];
    // The daemon's checkpoint job, on a connection of its own: the longest checkpoint
    // and the most frames the WAL held.
    let checkpoints = |stop: &AtomicBool| -> (Duration, u64) {
        let ledger = Ledger::open(&path, Duration::from_secs(5)).unwrap();
        let (mut longest, mut frames) = (Duration::ZERO, 0);
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(konbini_reconciler::jobs::checkpoint::EVERY);
            let t = std::time::Instant::now();
            let done = ledger.catch_up().unwrap();
            longest = longest.max(t.elapsed());
            frames = frames.max(done.frames);
        }
        (longest, frames)
    };
    let paces = [Duration::from_millis(50), Duration::from_millis(2)];
    for (every, (name, writer)) in paces
        .iter()
        .flat_map(|p| writers.iter().map(move |w| (*p, w)))
    {
        sim.old_hints(200_000);
        let stop = AtomicBool::new(false);
        let alone = std::thread::scope(|s| {
            let w = writer();
            let h = s.spawn(|| writes(&stop, every, w));
            let c = s.spawn(|| checkpoints(&stop));
            std::thread::sleep(Duration::from_secs(3));
            stop.store(true, Ordering::Relaxed);
            c.join().unwrap();
            h.join().unwrap()
        });
        let stop = AtomicBool::new(false);
        let (during, round, ckpt) = std::thread::scope(|s| {
            let w = writer();
            let h = s.spawn(|| writes(&stop, every, w));
            let c = s.spawn(|| checkpoints(&stop));
            let t = std::time::Instant::now();
            let r = sim.prune_old_hints();
            let took = t.elapsed();
            stop.store(true, Ordering::Relaxed);
            let ckpt = c.join().unwrap();
            (h.join().unwrap(), (r, took), ckpt)
        });
        println!(
            "{name}, a write every {every:?}: alone: {}; during a round ({:?}, {} steps, {} pages freed, longest step \
             {:?}, {:?}, {} waits for the WAL, {:?} in all; longest checkpoint {:?}, WAL at \
             most {} frames): {}",
            line(&alone),
            round.0.pruned,
            round.0.steps,
            round.0.pages_freed,
            round.0.longest_step,
            round.1,
            round.0.wal_waits,
            round.0.wal_waited,
            ckpt.0,
            ckpt.1,
            line(&during)
        );
        assert_eq!(round.0.pruned[0].1, 200_000);
    }
}
