//! Database trouble: another writer holding the lock, read-only files and directories, a
//! missing directory, files that are not our ledger, and a full disk. Each ends in a clear
//! line and exit status 1 (or, for a lock that is let go in time, a normal pass), writes
//! nothing half-way, and leaves a database that passes `PRAGMA integrity_check`.
//!
//! Permission cases run the binary as `nobody` when the suite runs as root (root ignores
//! file modes); a full disk is a file-size limit on the child process.

use std::path::Path;
use std::time::{Duration, Instant};

use konbini_reconciler::ledger::{Ledger, Outcome};
use rusqlite::Connection;
use rusqlite::types::Value;
use univapay_sim::{Reply, SimCharge};

use crate::helpers::{TestApp, assert_integrity, assert_same, chmod, open_up, snapshot};
use crate::util::TestCommand;

/// Every row of every table, in a stable order: what "nothing was written" compares.
fn dump(db: &Path) -> Vec<String> {
    let conn = Connection::open(db).unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut out = vec![format!(
        "user_version {}",
        conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
            .unwrap()
    )];
    for t in tables {
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM \"{t}\" ORDER BY 1"))
            .unwrap();
        let n = stmt.column_count();
        let rows = stmt
            .query_map([], |r| {
                (0..n)
                    .map(|i| r.get::<_, Value>(i))
                    .collect::<Result<Vec<_>, _>>()
            })
            .unwrap();
        for row in rows {
            out.push(format!("{t}: {:?}", row.unwrap()));
        }
    }
    out
}

/// Sets `[database] busy_timeout` in the test's config, and lets any user read the file.
fn set_busy_timeout(app: &mut TestApp, busy: Duration) {
    app.reconfigure(|c| c.database.busy_timeout = Some(busy));
    chmod(&app.config_path, 0o644);
}

/// `n` pending charges, all paid at the fake.
fn paid_charges(app: &TestApp, n: usize) {
    for i in 0..n {
        let id = format!("c{i:04}");
        app.create(&id, 100 + i as i64);
        app.sim.update(&id, SimCharge::paid);
    }
}

/// Every charge is wholly before its check (pending, untouched, no events) or wholly
/// after it (successful, with exactly one transition event); returns how many are after.
fn assert_each_before_or_after(app: &TestApp) -> i64 {
    let untouched = app.count(
        "SELECT count(*) FROM charges c WHERE state = 'pending' AND last_checked_at IS NULL
           AND NOT EXISTS (SELECT 1 FROM charge_events e WHERE e.charge_id = c.charge_id)",
    );
    let done = app.count(
        "SELECT count(*) FROM charges c WHERE state = 'successful' AND next_check_at IS NULL
           AND (SELECT count(*) FROM charge_events e WHERE e.charge_id = c.charge_id
                AND kind = 'transition' AND from_state = 'pending'
                AND to_state = 'successful') = 1
           AND (SELECT count(*) FROM charge_events e WHERE e.charge_id = c.charge_id) = 1",
    );
    let all = app.count("SELECT count(*) FROM charges");
    assert_eq!(
        untouched + done,
        all,
        "a charge is half-way: {untouched} + {done} != {all}"
    );
    done
}

/// Holds the write lock (`BEGIN IMMEDIATE`) on `db` from another connection for `hold`,
/// running `work` inside that transaction first. Returns once the lock is held.
fn hold_write_lock(db: &Path, hold: Duration, work: &'static str) -> std::thread::JoinHandle<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let db = db.to_owned();
    let t = std::thread::spawn(move || {
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        conn.execute_batch(work).unwrap();
        tx.send(()).unwrap();
        std::thread::sleep(hold);
        conn.execute_batch("COMMIT").unwrap();
    });
    rx.recv().unwrap();
    t
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_lock_held_past_busy_timeout_is_exit_1_and_writes_nothing() {
    let mut app = TestApp::spawn().await;
    paid_charges(&app, 3);
    set_busy_timeout(&mut app, Duration::from_millis(200));
    let before = dump(&app.db_path);
    let holder = hold_write_lock(&app.db_path, Duration::from_secs(2), "");
    let started = Instant::now();
    let out = app.command().once().run();
    let waited = started.elapsed();
    let line = out.assert_fatal(&["database is locked"]);
    assert!(
        line.contains("database.busy_timeout"),
        "the line says which setting to raise: {line}"
    );
    assert!(
        waited < Duration::from_secs(2),
        "gave up after the busy timeout, not the holder"
    );
    holder.join().unwrap();
    assert_eq!(dump(&app.db_path), before, "no partial writes");
    assert_eq!(app.sim.counters().requests, 0, "no charge was checked");
    assert_integrity(&app.db_path);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_lock_released_within_busy_timeout_is_waited_for() {
    let mut app = TestApp::spawn().await;
    paid_charges(&app, 3);
    // The other writer is an operator correcting an amount and registering a charge.
    app.sim
        .upsert(SimCharge::new("late", crate::helpers::STORE, 500).paid());
    app.sim
        .update("c0001", |c| SimCharge::new(c.id, c.store_id, 150).paid());
    set_busy_timeout(&mut app, Duration::from_secs(10));
    let started = Instant::now();
    let holder = hold_write_lock(
        &app.db_path,
        Duration::from_secs(2),
        "UPDATE charges SET requested_amount = 150 WHERE charge_id = 'c0001';
         INSERT INTO charges (charge_id, store_id, requested_amount)
         VALUES ('late', '11ef0000-0000-0000-0000-000000000001', 500);",
    );
    let out = app.command().once().run();
    out.assert_code(0);
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "the pass waited for the lock"
    );
    holder.join().unwrap();
    assert!(
        out.stdout()
            .contains("checked 4, transitions 4, mismatches 0")
    );
    assert_eq!(app.row("c0001").state, "successful");
    assert_eq!(
        app.row("c0001").amount_mismatch,
        0,
        "the operator's amount was used"
    );
    assert_eq!(
        app.count("SELECT requested_amount FROM charges WHERE charge_id = 'c0001'"),
        150
    );
    assert_eq!(app.row("late").state, "successful");
    assert_each_before_or_after(&app);
    assert_integrity(&app.db_path);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_lock_taken_mid_pass_loses_no_update() {
    let app = TestApp::spawn().await;
    paid_charges(&app, 3);
    // c0000's answer is slow, so the pass has read the row and is waiting for UnivaPay
    // when the operator changes it under a write lock.
    app.sim
        .push_reply("c0000", Reply::Delay(Duration::from_millis(600)));
    let pass = {
        let rec = app.reconciler.clone();
        tokio::spawn(async move {
            rec.run_pass(
                &crate::helpers::hold_lock(&rec),
                konbini_reconciler::ledger::Trigger::Once,
                Default::default(),
            )
            .await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.sim.requests_for("c0000") == 0 {
        assert!(Instant::now() < deadline, "the pass never asked for c0000");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let db = app.db_path.clone();
    tokio::task::spawn_blocking(move || {
        hold_write_lock(
            &db,
            Duration::from_millis(1500),
            "UPDATE charges SET requested_amount = 1200 WHERE charge_id = 'c0000'",
        )
        .join()
        .unwrap()
    })
    .await
    .unwrap();
    let r = pass.await.unwrap().expect("the pass waited out the lock");
    assert_eq!(r.outcome, Outcome::Ok);
    assert_eq!(
        r.counts.checked, 2,
        "the result for the edited row was not written"
    );
    let row = app.row("c0000");
    assert_eq!(row.state, "pending");
    assert_eq!(row.last_checked_at, None);
    assert!(app.events("c0000").is_empty());
    assert_eq!(
        app.count("SELECT requested_amount FROM charges WHERE charge_id = 'c0000'"),
        1200,
        "the operator's edit stands"
    );
    // The next pass checks it against the edited amount (UnivaPay charged 100).
    let r = app.pass().await;
    assert_eq!(r.counts.mismatches, 1);
    let row = app.row("c0000");
    assert_eq!(row.state, "successful");
    assert_eq!(
        row.mismatch_detail.as_deref(),
        Some(
            "charged 100 JPY, requested 1200 JPY; UnivaPay's requested_amount is 100, ours is 1200"
        )
    );
    assert_integrity(&app.db_path);
}

/// Removes the WAL and shared-memory files by closing the last connection cleanly, so the
/// database is one self-contained file.
fn settle(db: &Path) {
    let conn = Connection::open(db).unwrap();
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    drop(conn);
    for suffix in ["-wal", "-shm"] {
        assert!(
            !Path::new(&format!("{}{suffix}", db.display())).exists(),
            "{suffix} left behind"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_database_file_is_exit_1() {
    let mut app = TestApp::spawn().await;
    paid_charges(&app, 2);
    set_busy_timeout(&mut app, Duration::from_secs(1));
    settle(&app.db_path);
    open_up(app.dir.path());
    chmod(app.dir.path(), 0o777);
    chmod(&app.db_path, 0o444);
    let before = std::fs::read(&app.db_path).unwrap();
    let rows = dump(&app.db_path);
    settle(&app.db_path);
    let out = app.command().once().unprivileged().run();
    let line = out.assert_fatal(&[&app.db_path.display().to_string()]);
    assert!(line.contains("readonly"), "{line}");
    assert_eq!(
        std::fs::read(&app.db_path).unwrap(),
        before,
        "not a byte changed"
    );
    assert_eq!(dump(&app.db_path), rows);
    assert_eq!(app.sim.counters().requests, 0);
    assert_integrity(&app.db_path);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_directory_is_exit_1() {
    let mut app = TestApp::spawn().await;
    paid_charges(&app, 2);
    set_busy_timeout(&mut app, Duration::from_secs(1));
    settle(&app.db_path);
    open_up(app.dir.path());
    chmod(&app.db_path, 0o666);
    let before = snapshot(app.dir.path());
    chmod(app.dir.path(), 0o555);
    let out = app.command().once().unprivileged().run();
    out.assert_fatal(&[&app.db_path.display().to_string()]);
    // And a ledger that does not exist yet cannot be created there.
    let fresh = app.dir.path().join("fresh.db");
    let fresh_cfg = tempfile::NamedTempFile::new().unwrap();
    app.config
        .clone()
        .with(|c| c.database.path = Some(fresh.clone()))
        .write(fresh_cfg.path());
    chmod(fresh_cfg.path(), 0o644);
    let out = TestCommand::new(app.dir.path())
        .config(fresh_cfg.path())
        .once()
        .unprivileged()
        .run();
    out.assert_fatal(&[&fresh.display().to_string()]);
    chmod(app.dir.path(), 0o755);
    assert_same(&before, &snapshot(app.dir.path()));
    assert_eq!(app.sim.counters().requests, 0);
    assert_integrity(&app.db_path);
}

/// Runs the binary on a config whose database is `db`; asserts the fatal line names it.
fn refused_database(app: &TestApp, db: &Path, needles: &[&str]) -> String {
    let cfg = app.dir.path().join("other.toml");
    app.config
        .clone()
        .with(|c| c.database.path = Some(db.to_owned()))
        .write(&cfg);
    let out = TestCommand::new(app.dir.path()).config(&cfg).once().run();
    let mut all = vec![db.to_str().unwrap()];
    all.extend_from_slice(needles);
    out.assert_fatal(&all)
}

#[tokio::test(flavor = "multi_thread")]
async fn databases_that_cannot_be_ours_are_refused_unchanged() {
    let app = TestApp::spawn().await;
    paid_charges(&app, 1);
    let d = app.dir.path();

    let missing_dir = d.join("no-such-dir").join("ledger.db");
    refused_database(&app, &missing_dir, &[]);
    assert!(
        !d.join("no-such-dir").exists(),
        "the directory was not made"
    );

    let text_file = d.join("notes.db");
    std::fs::write(
        &text_file,
        "these are my notes, not a database\n".repeat(200),
    )
    .unwrap();
    let before = std::fs::read(&text_file).unwrap();
    refused_database(&app, &text_file, &["not a database"]);
    assert_eq!(std::fs::read(&text_file).unwrap(), before);

    let a_dir = d.join("dir.db");
    std::fs::create_dir(&a_dir).unwrap();
    refused_database(&app, &a_dir, &[]);

    // A ledger written by a later version of this program.
    let newer = d.join("newer.db");
    drop(Ledger::open(&newer, Duration::from_secs(1)).unwrap());
    Connection::open(&newer)
        .unwrap()
        .execute_batch("PRAGMA user_version = 99")
        .unwrap();
    let rows = dump(&newer);
    refused_database(&app, &newer, &["cannot migrate", "newer than this version"]);
    assert_eq!(dump(&newer), rows);
    assert_integrity(&newer);

    // Another program's SQLite database that happens to have a `charges` table.
    let foreign = d.join("foreign.db");
    Connection::open(&foreign)
        .unwrap()
        .execute_batch(
            "CREATE TABLE charges (id INTEGER PRIMARY KEY, amount REAL);
             INSERT INTO charges VALUES (1, 9.5);",
        )
        .unwrap();
    let rows = dump(&foreign);
    refused_database(&app, &foreign, &["cannot migrate", "already exists"]);
    assert_eq!(dump(&foreign), rows, "the failed migration was rolled back");
    assert_integrity(&foreign);
    assert_eq!(app.sim.counters().requests, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_mid_pass_is_exit_1_and_every_charge_before_or_after() {
    let mut app = TestApp::spawn().await;
    paid_charges(&app, 400);
    set_busy_timeout(&mut app, Duration::from_secs(1));
    settle(&app.db_path);
    let size = std::fs::metadata(&app.db_path).unwrap().len();
    // Room for the runs row and a little more, not for 400 transitions and their events.
    let out = app.command().once().file_size_limit(size + 64 * 1024).run();
    out.assert_fatal(&["is the disk full"]);
    assert_integrity(&app.db_path);
    let done = assert_each_before_or_after(&app);
    assert!(done < 400, "the limit did not bite");
    eprintln!("full disk: {done} of 400 charges committed before the write failed");
    assert_eq!(
        app.count("SELECT count(*) FROM runs WHERE outcome = 'ok'"),
        0,
        "the failed pass is not recorded as a success"
    );
    // With room again, the next pass finishes the job: nothing was lost.
    let out = app.command().once().run();
    out.assert_code(0);
    assert_eq!(assert_each_before_or_after(&app), 400);
    // The failed pass is visible: marked `failed` when that could still be written,
    // otherwise `interrupted` by the pass after it.
    let first = app
        .db()
        .query_row("SELECT outcome FROM runs ORDER BY id LIMIT 1", [], |r| {
            r.get::<_, String>(0)
        })
        .unwrap();
    assert!(
        matches!(first.as_str(), "failed" | "interrupted"),
        "{first}"
    );
    eprintln!("full disk: the failed pass's run is recorded as {first}");
    assert_integrity(&app.db_path);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_during_the_first_migration_leaves_no_half_schema() {
    let app = TestApp::spawn().await;
    let fresh = app.dir.path().join("fresh.db");
    let cfg = app.dir.path().join("fresh.toml");
    app.config
        .clone()
        .with(|c| c.database.path = Some(fresh.clone()))
        .write(&cfg);
    let out = TestCommand::new(app.dir.path())
        .config(&cfg)
        .once()
        .file_size_limit(8 * 1024)
        .run();
    out.assert_fatal(&[&fresh.display().to_string(), "is the disk full"]);
    assert_integrity(&fresh);
    let conn = Connection::open(&fresh).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        (version, tables),
        (0, 0),
        "no schema at all, not half of one"
    );
    drop(conn);
    let out = TestCommand::new(app.dir.path()).config(&cfg).once().run();
    out.assert_code(0);
    assert_integrity(&fresh);
}
