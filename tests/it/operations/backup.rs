//! `backup DEST`, through the real binary: what it refuses (the live database by any
//! name, an existing file without `--force`), copies taken beside a daemon that is
//! writing on a per-second cron (whole and consistent, also when the backup process is
//! killed midway), and the restore drill: stop, put the copy in place, start, and the
//! next passes neither lose nor duplicate a transition.
//!
//! The 20-trial run against 10,000 charges is `backups_of_a_busy_ledger_at_scale`,
//! `#[ignore]`d for its length; run it with
//! `cargo test --test it backup::backups_of_a_busy_ledger_at_scale -- --ignored --nocapture`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};
use univapay_sim::SimCharge;

use crate::helpers::{STORE, TestApp, assert_integrity, snapshot, wait_until};
use crate::util::Running;

const EVERY_SECOND: &str = "* * * * * *";

/// A fresh app whose daemon will check every open charge on every tick.
async fn busy_app() -> TestApp {
    let mut app = TestApp::spawn().await;
    app.reconfigure(|c| {
        c.api.timeout = Some(Duration::from_secs(20));
        c.schedule.cron = Some(EVERY_SECOND.into());
        c.schedule.drain_timeout = Some(Duration::from_secs(2));
        c.reconcile.recheck_interval = Some(Duration::from_secs(1));
    });
    app
}

fn id(i: usize) -> String {
    format!("ch-{i:05}")
}

/// `n` pending charges, in the ledger (one transaction) and at the fake UnivaPay.
fn seed(app: &TestApp, n: usize) {
    let mut db = app.db();
    let tx = db.transaction().unwrap();
    for i in 0..n {
        tx.execute(
            "INSERT INTO charges (charge_id, store_id, requested_amount) VALUES (?1, ?2, ?3)",
            params![id(i), STORE, 1000 + i as i64],
        )
        .unwrap();
        app.sim
            .upsert(SimCharge::new(id(i), STORE, 1000 + i as i64));
    }
    tx.commit().unwrap();
}

/// Moves charge `i` one step on at the fake UnivaPay: pending -> awaiting -> paid.
fn step_on(app: &TestApp, i: usize) {
    app.sim.update(&id(i), |c| match c.status.as_str() {
        "pending" => c.awaiting("7012-3456", None),
        "awaiting" => c.paid(),
        _ => c,
    });
}

fn start_daemon(app: &TestApp) -> Running {
    app.command().spawn()
}

async fn stop_daemon(mut daemon: Running) {
    daemon.signal(libc::SIGTERM);
    let out = daemon.finish(Duration::from_secs(30)).await;
    out.assert_code(0);
}

fn backup(app: &TestApp, dest: &Path) -> crate::util::TestCommand {
    let mut cmd = app.command();
    cmd.arg("backup").arg(dest);
    cmd
}

/// What a copy holds, once shown consistent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    charges: i64,
    transitions: i64,
    runs: i64,
    /// The runs' `checked` counts summed: it grows with every commit of a pass.
    checked: i64,
}

/// Fails unless the ledger at `path` is whole and of one point in time: integrity ok,
/// every charge's transitions chain from `pending` to its state, the runs' transition
/// counts (added in the same transactions as the transitions) sum to the transitions
/// written, and every run is either running or finished.
fn assert_consistent(path: &Path) -> Held {
    assert_integrity(path);
    let db = Connection::open(path).unwrap();
    let n = |sql: &str| -> i64 { db.query_row(sql, [], |r| r.get(0)).unwrap() };
    let broken_chains = n("SELECT count(*) FROM (
             SELECT from_state, lag(to_state, 1, 'pending')
                    OVER (PARTITION BY charge_id ORDER BY id) AS before
             FROM charge_events WHERE kind = 'transition')
         WHERE from_state IS NOT before");
    assert_eq!(
        broken_chains,
        0,
        "{}: a transition chain is broken",
        path.display()
    );
    let wrong_state = n(
        "SELECT count(*) FROM charges c WHERE c.state IS NOT coalesce(
             (SELECT to_state FROM charge_events e
              WHERE e.charge_id = c.charge_id AND e.kind = 'transition'
              ORDER BY e.id DESC LIMIT 1), 'pending')",
    );
    assert_eq!(
        wrong_state,
        0,
        "{}: a state disagrees with its events",
        path.display()
    );
    let transitions = n("SELECT count(*) FROM charge_events WHERE kind = 'transition'");
    let counted = n("SELECT coalesce(sum(transitions), 0) FROM runs");
    assert_eq!(
        counted,
        transitions,
        "{}: runs and events disagree",
        path.display()
    );
    let half_runs = n("SELECT count(*) FROM runs
         WHERE (outcome = 'running') = (finished_at IS NOT NULL)");
    assert_eq!(
        half_runs,
        0,
        "{}: a run is neither running nor finished",
        path.display()
    );
    Held {
        charges: n("SELECT count(*) FROM charges"),
        transitions,
        runs: n("SELECT count(*) FROM runs"),
        checked: n("SELECT coalesce(sum(checked), 0) FROM runs"),
    }
}

/// The files in `dir` whose names start with `prefix`.
fn files_like(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_database_is_refused_by_any_name() {
    let app = TestApp::spawn().await;
    app.create("ch-1", 500);
    let dir = app.dir.path();
    std::fs::create_dir(dir.join("sub")).unwrap();
    std::os::unix::fs::symlink(&app.db_path, dir.join("link.db")).unwrap();
    std::fs::hard_link(&app.db_path, dir.join("hard.db")).unwrap();
    let before = snapshot(dir);
    for (dest, what) in [
        (app.db_path.clone(), "it is the live database"),
        (PathBuf::from("ledger.db"), "it is the live database"),
        (dir.join("sub/../ledger.db"), "it is the live database"),
        (dir.join("link.db"), "it is the live database"),
        (dir.join("hard.db"), "it is the live database"),
        (dir.join("ledger.db-wal"), "write-ahead log"),
        (dir.join("ledger.db.lock"), "the pass lock"),
    ] {
        for force in [false, true] {
            let mut cmd = backup(&app, &dest);
            if force {
                cmd.arg("--force");
            }
            let line = cmd
                .run()
                .assert_fatal(&["refusing to write the backup", what]);
            assert!(line.contains(&dest.display().to_string()), "{line}");
        }
    }
    crate::helpers::assert_same(&before, &snapshot(dir));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_file_is_replaced_only_with_force() {
    let app = TestApp::spawn().await;
    app.create("ch-1", 500);
    let dest = app.dir.path().join("copy.db");
    std::fs::write(&dest, b"an older backup").unwrap();
    backup(&app, &dest)
        .run()
        .assert_fatal(&["copy.db already exists", "--force"]);
    assert_eq!(std::fs::read(&dest).unwrap(), b"an older backup");

    let out = backup(&app, &dest).arg("--force").run();
    out.assert_code(0);
    assert!(out.stdout().contains("1 charges"), "{}", out.stdout());
    assert!(out.stdout().contains("integrity ok"), "{}", out.stdout());
    assert_eq!(assert_consistent(&dest).charges, 1);
    // The copy is the ledger's own: a later register lands in the ledger only.
    app.create("ch-2", 700);
    assert_eq!(assert_consistent(&dest).charges, 1);
    assert!(
        files_like(app.dir.path(), ".copy.db.").is_empty(),
        "no temporary file left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_cannot_be_a_file_is_one_line() {
    let app = TestApp::spawn().await;
    app.create("ch-1", 500);
    let dir = app.dir.path();
    backup(&app, &dir.join("missing/copy.db"))
        .run()
        .assert_fatal(&["missing/copy.db", "directory", "does not exist"]);
    backup(&app, dir).run().assert_fatal(&["is a directory"]);
    // Without a ledger there is nothing to copy, and none is created.
    let mut gone = busy_app().await;
    let nowhere = gone.dir.path().join("nowhere.db");
    gone.reconfigure(|c| c.database.path = Some(nowhere.clone()));
    backup(&gone, &gone.dir.path().join("copy.db"))
        .run()
        .assert_fatal(&["no such database"]);
    assert!(!nowhere.exists());
}

/// Backups taken while the daemon writes; every other one is SIGKILLed after a random
/// share of the time a whole backup took. Returns (whole copies, killed ones left absent,
/// killed ones that had already finished), and the slowest backup.
async fn trials(app: &TestApp, charges: usize, count: usize) -> (usize, usize, usize, Duration) {
    let (mut whole, mut absent, mut finished) = (0, 0, 0);
    let mut slowest = Duration::ZERO;
    let mut last = Duration::from_millis(200);
    let mut held = Vec::new();
    for trial in 0..count {
        // Keep transitions flowing: a few charges move on at UnivaPay before each trial.
        for k in 0..charges / 20 {
            step_on(app, (trial * 97 + k * 13) % charges);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let dest = app.dir.path().join(format!("copy-{trial}.db"));
        // Committed before the backup starts, so the copy must hold it.
        let committed = app.count("SELECT coalesce(sum(checked), 0) FROM runs");
        let started = Instant::now();
        let running = backup(app, &dest).spawn();
        if trial % 2 == 1 {
            let share = rand::random::<f64>();
            tokio::time::sleep(last.mul_f64(share)).await;
            let out = running.kill();
            match out.code() {
                None if !dest.exists() => absent += 1,
                None | Some(0) => finished += 1,
                Some(c) => panic!("backup exited {c}: {}", out.stderr()),
            }
        } else {
            let out = running.finish(Duration::from_secs(60)).await;
            out.assert_code(0);
            last = started.elapsed();
            slowest = slowest.max(last);
            whole += 1;
        }
        if dest.exists() {
            let h = assert_consistent(&dest);
            assert!(
                h.checked >= committed,
                "{h:?} lacks commits made before it began ({committed})"
            );
            held.push(h);
        }
        let _ = std::fs::remove_file(&dest);
    }
    // The daemon moved on between copies: they are of different times, not one stale one.
    assert!(
        held.first().map(|h| h.runs) < held.last().map(|h| h.runs),
        "{held:?}"
    );
    assert!(held.iter().all(|h| h.charges == charges as i64), "{held:?}");
    (whole, absent, finished, slowest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_beside_a_writing_daemon_are_whole_and_consistent() {
    let app = busy_app().await;
    seed(&app, 1_000);
    let daemon = start_daemon(&app);
    wait_until(Duration::from_secs(30), "a first pass", || {
        app.count("SELECT count(*) FROM runs WHERE finished_at IS NOT NULL") > 0
    })
    .await;
    let (whole, absent, finished, slowest) = trials(&app, 1_000, 6).await;
    eprintln!(
        "{whole} whole, {absent} killed (absent), {finished} killed (whole); slowest {slowest:?}"
    );
    assert_eq!(whole, 3);
    stop_daemon(daemon).await;
    assert_consistent(&app.db_path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "about a minute: 20 backups beside a daemon checking 10,000 charges a second"]
async fn backups_of_a_busy_ledger_at_scale() {
    let app = busy_app().await;
    seed(&app, 10_000);
    let daemon = start_daemon(&app);
    wait_until(Duration::from_secs(120), "a first pass", || {
        app.count("SELECT count(*) FROM runs WHERE finished_at IS NOT NULL") > 0
    })
    .await;
    let t = Instant::now();
    let (whole, absent, finished, slowest) = trials(&app, 10_000, 20).await;
    let size = std::fs::metadata(&app.db_path).unwrap().len();
    eprintln!(
        "20 trials in {:?}: {whole} whole, {absent} killed before the rename (DEST absent), \
         {finished} killed after it (DEST whole); slowest backup {slowest:?}; ledger {size} \
         bytes, {} runs, {} transitions",
        t.elapsed(),
        app.count("SELECT count(*) FROM runs"),
        app.count("SELECT count(*) FROM charge_events WHERE kind = 'transition'"),
    );
    assert_eq!(whole + absent + finished, 20);
    stop_daemon(daemon).await;
}

/// The transitions of `charge`, in order.
fn transitions(db: &Connection, charge: &str) -> Vec<(String, String)> {
    let mut stmt = db
        .prepare(
            "SELECT from_state, to_state FROM charge_events
             WHERE charge_id = ?1 AND kind = 'transition' ORDER BY id",
        )
        .unwrap();
    stmt.query_map([charge], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn states(app: &TestApp, n: usize) -> Vec<String> {
    (0..n).map(|i| app.row(&id(i)).state).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_backup_loses_and_duplicates_no_transition() {
    const N: usize = 30;
    let app = busy_app().await;
    seed(&app, N);
    for i in 0..N {
        step_on(&app, i);
    }
    let daemon = start_daemon(&app);
    wait_until(Duration::from_secs(30), "every charge awaiting", || {
        states(&app, N).iter().all(|s| s == "awaiting")
    })
    .await;
    let copy = app.dir.path().join("copy.db");
    backup(&app, &copy).run().assert_code(0);

    // After the backup: a third are paid, a third expire; the ledger records it.
    for i in 0..N {
        match i % 3 {
            0 => app.sim.update(&id(i), SimCharge::paid),
            1 => app.sim.update(&id(i), SimCharge::expired),
            _ => {}
        }
    }
    let expected = |i: usize| match i % 3 {
        0 => "successful",
        1 => "failed",
        _ => "awaiting",
    };
    let settled = || {
        states(&app, N)
            .iter()
            .enumerate()
            .all(|(i, s)| s == expected(i))
    };
    wait_until(
        Duration::from_secs(30),
        "paid and expired recorded",
        settled,
    )
    .await;

    // The drill: stop, put the copy in place (the WAL and index go with the old file),
    // start.
    stop_daemon(daemon).await;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = app.db_path.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
    std::fs::copy(&copy, &app.db_path).unwrap();
    assert!(
        states(&app, N).iter().all(|s| s == "awaiting"),
        "the copy's time"
    );
    let daemon = start_daemon(&app);
    wait_until(
        Duration::from_secs(30),
        "paid and expired recorded again",
        settled,
    )
    .await;
    stop_daemon(daemon).await;

    let db = app.db();
    let step = |a: &str, b: &str| (a.to_owned(), b.to_owned());
    for i in 0..N {
        let mut want = vec![step("pending", "awaiting")];
        if i % 3 != 2 {
            want.push(step("awaiting", expected(i)));
        }
        assert_eq!(transitions(&db, &id(i)), want, "{}", id(i));
    }
    assert_consistent(&app.db_path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_leaves_the_old_copy_and_no_partial_file() {
    let app = TestApp::spawn().await;
    seed(&app, 2_000);
    let size = std::fs::metadata(&app.db_path).unwrap().len();
    assert!(size > 256 * 1024, "{size}");
    let dest = app.dir.path().join("copy.db");
    std::fs::write(&dest, b"yesterday's backup").unwrap();
    // The stand-in for a full disk: no file of the process may grow past 128 KiB.
    let line = backup(&app, &dest)
        .arg("--force")
        .file_size_limit(128 * 1024)
        .run()
        .assert_fatal(&["cannot write the backup to", "copy.db:", "is the disk full"]);
    assert!(!line.contains(".partial"), "{line}");
    assert_eq!(std::fs::read(&dest).unwrap(), b"yesterday's backup");
    assert!(
        files_like(app.dir.path(), ".copy.db.").is_empty(),
        "no partial file left"
    );
    assert_consistent(&app.db_path);
}
