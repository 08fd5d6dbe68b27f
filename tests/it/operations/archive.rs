//! `retention.archive`: `--once` moves an old final charge with all its history to the
//! archive file and leaves everything else; `show` finds it there; a crash between the
//! copy and the delete loses and duplicates nothing; the ledger's trigger still refuses
//! an ordinary delete of a fact; an archive of another ledger is refused; discovery and
//! hints never bring an archived charge back.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use konbini_reconciler::config::retention::RetentionSettings;
use konbini_reconciler::jobs::prune;
use konbini_reconciler::ledger::{Ledger, LedgerError, Timestamp};
use rusqlite::{Connection, params};
use tokio_util::sync::CancellationToken;

use crate::helpers::{STORE, TestApp, one_fatal_line};

/// `days` days before now, as the ledger writes times.
fn ago(days: i64) -> String {
    (Utc::now() - chrono::Duration::days(days)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A charge in `state`, last changed `days` ago, with two transitions (whose payloads
/// and deliveries to `shop` the outbox trigger writes) and one hint; its deliveries
/// delivered unless `pending`.
fn charge(conn: &Connection, id: &str, state: &str, days: i64, pending: bool) {
    let final_ = matches!(state, "successful" | "failed");
    let next = (!final_).then(|| ago(-30));
    conn.execute(
        "INSERT INTO charges (charge_id, store_id, requested_amount, state, provider_status,
                              next_check_at, created_at, updated_at)
         VALUES (?1, ?2, 1980, ?3, ?3, ?4, ?5, ?5)",
        params![id, STORE, state, next, ago(days)],
    )
    .unwrap();
    for (kind, from, to) in [
        ("transition", Some("pending"), Some("awaiting")),
        ("webhook", None, None),
        ("transition", Some("awaiting"), Some(state)),
    ] {
        conn.execute(
            "INSERT INTO charge_events (charge_id, at, kind, from_state, to_state) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, ago(days), kind, from, to],
        )
        .unwrap();
    }
    conn.execute(
        "UPDATE deliveries SET delivered_at = ?2, next_attempt_at = NULL WHERE charge_id = ?1",
        params![id, ago(days)],
    )
    .unwrap();
    if pending {
        conn.execute(
            "UPDATE deliveries SET delivered_at = NULL, next_attempt_at = ?2
             WHERE charge_id = ?1 AND event_id = (SELECT max(event_id) FROM deliveries WHERE charge_id = ?1)",
            params![id, ago(-1)],
        )
        .unwrap();
    }
}

fn with_endpoint(conn: &Connection) {
    conn.execute(
        "INSERT INTO delivery_endpoints (name, events, updated_at) VALUES ('shop', ' charge.awaiting charge.paid charge.failed ', ?1)",
        [ago(0)],
    )
    .unwrap();
}

/// Per charge id: rows in `charges`, `charge_events`, `event_payloads`, `deliveries`.
fn rows(conn: &Connection, id: &str) -> [i64; 4] {
    let n = |sql: &str| -> i64 { conn.query_row(sql, [id], |r| r.get(0)).unwrap() };
    [
        n("SELECT count(*) FROM charges WHERE charge_id = ?1"),
        n("SELECT count(*) FROM charge_events WHERE charge_id = ?1"),
        n("SELECT count(*) FROM event_payloads WHERE charge_id = ?1"),
        n("SELECT count(*) FROM deliveries WHERE charge_id = ?1"),
    ]
}

fn archive_of(app: &TestApp) -> PathBuf {
    app.dir.path().join("ledger-archive.db")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_moves_an_old_final_charge_with_all_its_history_and_nothing_else() {
    let mut app = TestApp::spawn().await;
    let db = app.db();
    with_endpoint(&db);
    charge(&db, "old_paid", "successful", 500, false);
    charge(&db, "old_failed", "failed", 401, false);
    charge(&db, "old_pending_delivery", "successful", 500, true);
    charge(&db, "recent_paid", "successful", 399, false);
    charge(&db, "old_open", "awaiting", 500, false);
    drop(db);
    app.reconfigure(|c| *c = c.clone().set("retention.archive", "400d"));
    let out = app.command().once().run();
    out.assert_code(0);
    assert!(
        out.stderr().contains("archived_charges=2"),
        "{}",
        out.stderr()
    );

    let db = app.db();
    let archive = Connection::open(archive_of(&app)).unwrap();
    for id in ["old_paid", "old_failed"] {
        assert_eq!(rows(&db, id), [0, 0, 0, 0], "{id} left the ledger");
        assert_eq!(
            rows(&archive, id),
            [1, 3, 2, 2],
            "{id} is whole in the archive"
        );
    }
    for id in ["old_pending_delivery", "recent_paid", "old_open"] {
        assert_eq!(rows(&db, id), [1, 3, 2, 2], "{id} stays");
        assert_eq!(rows(&archive, id), [0, 0, 0, 0], "{id} is not archived");
    }
    assert_eq!(app.count("SELECT count(*) FROM archived_charges"), 2);
    assert_eq!(app.count("SELECT count(*) FROM archive_moving"), 0);
    let ledger_id: String = db
        .query_row("SELECT value FROM meta WHERE key = 'ledger_id'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let carried: String = archive
        .query_row("SELECT value FROM meta WHERE key = 'ledger_id'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(carried, ledger_id);

    // `show` finds it in the archive and says so; a live one is live; neither: exit 1.
    let out = app.command().args(["show", "old_paid"]).run();
    out.assert_code(0);
    assert!(
        out.stdout().starts_with("archived       yes, on "),
        "{}",
        out.stdout()
    );
    assert!(
        out.stdout().contains("state          successful\n"),
        "{}",
        out.stdout()
    );
    assert!(
        out.stdout()
            .contains(" transition awaiting -> successful\n"),
        "{}",
        out.stdout()
    );
    let out = app.command().args(["show", "recent_paid"]).run();
    out.assert_code(0);
    assert!(
        out.stdout().starts_with("archived       no"),
        "{}",
        out.stdout()
    );
    let out = app.command().args(["show", "nowhere"]).run();
    out.assert_code(1);
    assert_eq!(
        one_fatal_line(&out),
        "konbini-reconciler: error: not in the ledger: nowhere"
    );
}

/// A ledger with the archive settings, for the library-level tests.
fn ledger(dir: &Path) -> (Ledger, Connection, RetentionSettings) {
    let path = dir.join("l.db");
    let ledger = Ledger::open(&path, Duration::from_secs(5)).unwrap();
    let conn = Connection::open(&path).unwrap();
    let settings = RetentionSettings {
        archive: Some(Duration::from_secs(400 * 86_400)),
        archive_path: dir.join("l-archive.db"),
        ..RetentionSettings::default()
    };
    (ledger, conn, settings)
}

fn round(ledger: &mut Ledger, r: &RetentionSettings) -> Result<prune::Round, LedgerError> {
    prune::round(ledger, r, Utc::now(), &CancellationToken::new())
}

#[test]
fn a_crash_between_copy_and_delete_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut l, conn, r) = ledger(dir.path());
    with_endpoint(&conn);
    charge(&conn, "a", "successful", 500, false);
    charge(&conn, "b", "failed", 500, false);
    let cutoff = Timestamp::before(Utc::now(), r.archive.unwrap());
    l.attach_archive(&r.archive_path).unwrap();
    let ids = l.archive_candidates(cutoff, 10).unwrap();
    assert_eq!(ids.len(), 2);
    assert_eq!(l.archive_copy(&ids).unwrap(), 2);
    // The first delete transaction stops after one charge (a zero budget) ...
    let m = l
        .archive_delete(&ids, cutoff, Utc::now(), Duration::ZERO)
        .unwrap();
    assert_eq!((m.looked, m.charges), (1, 1));
    // ... and the process dies there: one charge moved, the other in both files.
    drop(l);
    let archive = Connection::open(&r.archive_path).unwrap();
    let moved = &ids[0];
    let both = &ids[1];
    assert_eq!(rows(&conn, moved), [0, 0, 0, 0]);
    assert_eq!(rows(&archive, moved), [1, 3, 2, 2]);
    assert_eq!(rows(&conn, both), [1, 3, 2, 2]);
    assert_eq!(rows(&archive, both), [1, 3, 2, 2]);

    // The next round finishes the move; the one after finds nothing; nothing twice.
    let mut l = Ledger::open(&dir.path().join("l.db"), Duration::from_secs(5)).unwrap();
    assert_eq!(round(&mut l, &r).unwrap().archived, 1);
    assert_eq!(round(&mut l, &r).unwrap().archived, 0);
    for id in ["a", "b"] {
        assert_eq!(rows(&conn, id), [0, 0, 0, 0], "{id}");
        assert_eq!(rows(&archive, id), [1, 3, 2, 2], "{id}");
    }
    let tombstones: i64 = conn
        .query_row("SELECT count(*) FROM archived_charges", [], |r| r.get(0))
        .unwrap();
    assert_eq!(tombstones, 2);
}

#[test]
fn the_trigger_still_refuses_an_ordinary_delete_of_a_fact() {
    let dir = tempfile::tempdir().unwrap();
    let (_l, conn, _r) = ledger(dir.path());
    charge(&conn, "a", "successful", 500, false);
    charge(&conn, "open", "awaiting", 500, false);
    let e = conn
        .execute("DELETE FROM charge_events WHERE kind = 'transition'", [])
        .unwrap_err();
    assert!(e.to_string().contains("only webhook events"), "{e}");
    // The exception names only a final charge that already has its tombstone.
    for id in ["a", "open"] {
        let e = conn
            .execute("INSERT INTO archive_moving (charge_id) VALUES (?1)", [id])
            .unwrap_err();
        assert!(
            e.to_string().contains("only a final charge being archived"),
            "{id}: {e}"
        );
    }
    assert_eq!(
        conn.execute("DELETE FROM charge_events WHERE kind = 'webhook'", [])
            .unwrap(),
        2,
        "hints may still go"
    );
    let facts: i64 = conn
        .query_row("SELECT count(*) FROM charge_events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(facts, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_of_another_ledger_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut l, conn, r) = ledger(dir.path());
    charge(&conn, "a", "successful", 500, false);
    // Another ledger's archive, at this one's archive_path.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let (mut o, oconn, mut or) = ledger(&other);
    charge(&oconn, "x", "successful", 500, false);
    or.archive_path = r.archive_path.clone();
    assert_eq!(round(&mut o, &or).unwrap().archived, 1);

    let e = round(&mut l, &r).unwrap_err();
    assert!(matches!(e, LedgerError::ForeignArchive { .. }), "{e}");
    assert!(
        e.to_string().contains("is not this ledger's") && !e.to_string().contains('\n'),
        "{e}"
    );
    assert_eq!(rows(&conn, "a"), [1, 3, 2, 0], "nothing moved");

    // `show` of a charge archived elsewhere is refused too, in one line, when the
    // archive it reads is not its ledger's.
    let mut app = TestApp::spawn().await;
    let db = app.db();
    charge(&db, "mine", "successful", 500, false);
    drop(db);
    app.reconfigure(|c| *c = c.clone().set("retention.archive", "400d"));
    app.command().once().run().assert_code(0);
    std::fs::copy(&r.archive_path, archive_of(&app)).unwrap();
    let out = app.command().args(["show", "mine"]).run();
    out.assert_code(1);
    assert!(
        one_fatal_line(&out).contains("is not this ledger's"),
        "{}",
        out.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_and_hints_never_bring_an_archived_charge_back() {
    let stores = vec![STORE.to_owned()];
    let app = crate::discovery::sweep::app_with_discovery(&stores).await;
    let found = app.sim.create_konbini_charge(STORE, 1_000, "lawson");
    crate::discovery::sweep::settle(&app);
    assert_eq!(
        crate::discovery::sweep::sweep(&app).await.counts.discovered,
        1
    );
    // It ends, and its last change is long ago.
    let db = app.db();
    db.execute(
        "UPDATE charges SET state = 'successful', provider_status = 'successful', next_check_at = NULL, updated_at = ?2
         WHERE charge_id = ?1",
        params![found.id, ago(500)],
    )
    .unwrap();
    db.execute("UPDATE deliveries SET delivered_at = ?1", [ago(500)])
        .unwrap();
    let mut l = Ledger::open(&app.db_path, Duration::from_secs(5)).unwrap();
    let r = RetentionSettings {
        archive: Some(Duration::from_secs(400 * 86_400)),
        archive_path: archive_of(&app),
        ..RetentionSettings::default()
    };
    assert_eq!(round(&mut l, &r).unwrap().archived, 1);

    // A sweep that looks again from the start does not register it again, nor ask
    // UnivaPay about it.
    db.execute("DELETE FROM discovery_watermarks", []).unwrap();
    let gets = app.sim.requests_for(&found.id);
    crate::discovery::sweep::next_interval(&app);
    assert_eq!(
        crate::discovery::sweep::sweep(&app).await.counts.discovered,
        0
    );
    assert_eq!(app.sim.requests_for(&found.id), gets);
    assert_eq!(app.count("SELECT count(*) FROM charges"), 0);
    // Nor does an INSERT: a discovered one is ignored, a registration refused.
    db.execute(
        "INSERT INTO charges (charge_id, store_id, requested_amount, origin) VALUES (?1, ?2, 1000, 'discovered')",
        params![found.id, STORE],
    )
    .unwrap();
    let e = db
        .execute(
            "INSERT INTO charges (charge_id, store_id, requested_amount) VALUES (?1, ?2, 1000)",
            params![found.id, STORE],
        )
        .unwrap_err();
    assert!(e.to_string().contains("charge was archived"), "{e}");
    assert_eq!(app.count("SELECT count(*) FROM charges"), 0);
    // A hint for it checks nothing and writes nothing.
    let hint = konbini_reconciler::ledger::HintRow {
        charge_id: konbini_reconciler::domain::ChargeId::parse(&found.id).unwrap(),
        store_id: konbini_reconciler::domain::StoreId::parse(STORE).unwrap(),
        event: "refund_finished".to_owned(),
        at: Utc::now(),
    };
    assert_eq!(
        l.record_hints(&[hint]).unwrap(),
        vec![konbini_reconciler::ledger::HintTarget::Archived]
    );
    assert_eq!(app.count("SELECT count(*) FROM charge_events"), 0);
}
