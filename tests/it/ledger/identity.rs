//! The ledger's boundary through the real binary: a ledger removed or replaced under a
//! running daemon is neither recreated nor adopted (its passes fail with one clear error,
//! `/healthz` answers 503, `konbini_ledger_ok` is 0, and putting the file back heals it);
//! every command refuses a corrupt ledger alike; the history refuses the deletion of its
//! facts; `status` counts rows whose state is invalid instead of dropping them, and shows
//! the ledger's id.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use konbini_reconciler::ledger::Ledger;
use rusqlite::{Connection, OptionalExtension};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{STORE, TestApp, wait_until};
use crate::util::{Finished, Running};

const TOKEN: &str = "Bearer ledger-identity-0123456789-secret";

/// A daemon with a pass every second, `/healthz` on `addr` and a metrics textfile.
struct Daemon {
    app: TestApp,
    addr: SocketAddr,
    textfile: PathBuf,
    process: Running,
}

impl Daemon {
    async fn start() -> Daemon {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let app = TestApp::spawn_with(|c| {
            c.schedule.cron = Some("* * * * * *".into());
            c.schedule.run_on_start = Some(true);
            c.schedule.drain_timeout = Some(Duration::from_secs(2));
        })
        .await;
        let textfile = app.dir.path().join("konbini.prom");
        let mut app = app;
        app.reconfigure(|c| {
            *c = std::mem::take(c)
                .set("webhook.auth_token", TOKEN)
                .set("webhook.listen", addr.to_string())
                .set("metrics.textfile", textfile.to_str().unwrap());
        });
        let process = app.command().spawn();
        let d = Daemon {
            app,
            addr,
            textfile,
            process,
        };
        d.wait_health(200, "the daemon up and healthy").await;
        d
    }

    async fn health(&self) -> Option<(u16, String)> {
        let mut s = TcpStream::connect(self.addr).await.ok()?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut reply = String::new();
        s.read_to_string(&mut reply).await.ok()?;
        let status = reply.split(' ').nth(1)?.parse().ok()?;
        let body = reply.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
        Some((status, body))
    }

    async fn wait_health(&self, status: u16, what: &str) {
        let limit = Duration::from_secs(15);
        let start = std::time::Instant::now();
        loop {
            if let Some((s, _)) = self.health().await
                && s == status
            {
                return;
            }
            assert!(start.elapsed() < limit, "{what}: /healthz not {status}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_metric(&self, line: &str) {
        wait_until(Duration::from_secs(15), line, || {
            std::fs::read_to_string(&self.textfile).is_ok_and(|t| t.lines().any(|l| l == line))
        })
        .await;
    }

    async fn stop(mut self) -> Finished {
        self.process.signal(libc::SIGTERM);
        let out = self.process.finish(Duration::from_secs(20)).await;
        out.assert_code(0);
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_ledger_is_not_recreated_and_health_fails() {
    let d = Daemon::start().await;
    let db = d.app.db_path.clone();
    std::fs::remove_file(&db).unwrap();
    d.wait_health(503, "after rm of the ledger").await;
    d.wait_metric("konbini_ledger_ok 0").await;
    // More passes come and go; none makes a new ledger.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!db.exists(), "the ledger was recreated");
    let (_, why) = d.health().await.unwrap();
    assert_eq!(why, "last pass: failed\n");
    let out = d.stop().await;
    assert!(
        out.stderr().contains("is gone") && out.stderr().contains("it is not recreated"),
        "{}",
        out.stderr()
    );
    assert!(!db.exists(), "recreated at shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_ledger_is_not_adopted_and_the_right_one_back_heals() {
    let d = Daemon::start().await;
    let db = d.app.db_path.clone();
    let dir = d.app.dir.path().to_owned();
    let other = dir.join("other.db");
    drop(Ledger::open(&other, Duration::from_secs(1)).unwrap());
    std::fs::rename(&db, dir.join("kept.db")).unwrap();
    std::fs::rename(&other, &db).unwrap();
    d.wait_health(503, "after the swap").await;
    d.wait_metric("konbini_ledger_ok 0").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let runs: i64 = Connection::open(&db)
        .unwrap()
        .query_row("SELECT count(*) FROM runs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(runs, 0, "a pass ran on the other ledger");

    std::fs::rename(&db, &other).unwrap();
    std::fs::rename(dir.join("kept.db"), &db).unwrap();
    d.wait_health(200, "the right ledger back").await;
    d.wait_metric("konbini_ledger_ok 1").await;
    let runs: i64 = Connection::open(&other)
        .unwrap()
        .query_row("SELECT count(*) FROM runs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(runs, 0, "the other ledger was written");
    let out = d.stop().await;
    assert!(
        out.stderr().contains("was replaced") && out.stderr().contains("it is not adopted"),
        "{}",
        out.stderr()
    );
}

/// Fills page `page` (1-based) of `db` with garbage.
fn scribble(db: &Path, page: i64) {
    use std::io::{Seek, SeekFrom, Write};
    let size: i64 = Connection::open(db)
        .unwrap()
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap();
    let mut f = std::fs::OpenOptions::new().write(true).open(db).unwrap();
    f.seek(SeekFrom::Start(((page - 1) * size) as u64)).unwrap();
    f.write_all(&vec![0xA5; size as usize]).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_refuses_a_corrupt_ledger_alike() {
    let app = TestApp::spawn().await;
    app.create("c1", 100);
    app.pass().await;
    // An export never reads that page either.
    let page = mismatch_index_page(&app);
    // `register` and `--once` check daily: as on a ledger whose last check is a day old.
    app.db()
        .execute("DELETE FROM meta WHERE key = 'integrity_checked_at'", [])
        .unwrap();
    scribble(&app.db_path, page);
    let db = app.db_path.display().to_string();
    let commands: [&[&str]; 7] = [
        &["status"],
        &["status", "--json"],
        &["export"],
        &["check", "c1"],
        &["recheck", "c1"],
        &["register", "c2", STORE, "100"],
        &["--once"],
    ];
    for args in commands {
        let out = app.command().args(args).run();
        out.assert_code(1);
        let stderr = out.stderr();
        assert!(
            stderr.contains(&db) && stderr.contains("is corrupt") && stderr.lines().count() == 1,
            "{args:?}: {stderr}"
        );
    }
}

/// The root page of the index of flagged charges: a page that a check of an unflagged
/// charge never reads, so only an integrity check finds damage there.
fn mismatch_index_page(app: &TestApp) -> i64 {
    app.db()
        .query_row(
            "SELECT rootpage FROM sqlite_schema WHERE name = 'charges_mismatch'",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

fn checked_at(app: &TestApp) -> Option<String> {
    app.db()
        .query_row(
            "SELECT value FROM meta WHERE key = 'integrity_checked_at'",
            [],
            |r| r.get(0),
        )
        .optional()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_checks_integrity_once_a_day_and_the_operators_commands_every_time() {
    let app = TestApp::spawn().await;
    app.create("c1", 100);
    app.command().arg("--once").run().assert_code(0);
    let first = checked_at(&app).expect("a passed check is recorded");
    // A check a day and a half old is due again, and its time moves on.
    app.db()
        .execute(
            "UPDATE meta SET value = '2000-01-01T00:00:00.000Z' WHERE key = 'integrity_checked_at'",
            [],
        )
        .unwrap();
    app.command().arg("--once").run().assert_code(0);
    let second = checked_at(&app).unwrap();
    assert!(
        second.as_str() > "2000-01-01T00:00:00.000Z" && second.as_str() >= first.as_str(),
        "{first} then {second}"
    );
    // Within the day `--once` does not look again, so damage where a pass never reads goes
    // unseen by it; `status` checks on every run and finds it.
    scribble(&app.db_path, mismatch_index_page(&app));
    app.command().arg("--once").run().assert_code(0);
    assert_eq!(checked_at(&app).as_deref(), Some(second.as_str()));
    let out = app.command().arg("status").run();
    out.assert_code(1);
    assert!(out.stderr().contains("is corrupt"), "{}", out.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_refuses_deleting_its_facts() {
    let app = TestApp::spawn().await;
    app.create("c1", 100);
    app.sim.update("c1", |c| c.awaiting("7012-3456", None));
    app.pass().await;
    let conn = app.db();
    let kinds = app.event_kinds("c1");
    assert!(kinds.contains(&"transition".to_owned()), "{kinds:?}");
    let e = conn.execute("DELETE FROM charge_events", []).unwrap_err();
    assert!(e.to_string().contains("only webhook events"), "{e}");
    assert_eq!(app.event_kinds("c1"), kinds, "nothing deleted");
    conn.execute(
        "INSERT INTO charge_events (charge_id, at, kind, detail) VALUES ('c1', 'x', 'webhook', 'charge_updated')",
        [],
    )
    .unwrap();
    let pruned = conn
        .execute("DELETE FROM charge_events WHERE kind = 'webhook'", [])
        .unwrap();
    assert_eq!(pruned, 1, "hints may be pruned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_rows_with_an_invalid_state_and_names_the_ledger() {
    let app = TestApp::spawn().await;
    for id in ["c1", "c2", "c3"] {
        app.register(id, 100);
    }
    app.db()
        .execute_batch(
            "PRAGMA ignore_check_constraints = ON;
             UPDATE charges SET state = 'paid' WHERE charge_id = 'c3';",
        )
        .unwrap();
    let out = app.command().args(["status", "--json"]).run();
    out.assert_code(0);
    let j: serde_json::Value = serde_json::from_str(&out.stdout()).unwrap();
    assert_eq!(j["total"], 3, "{j}");
    assert_eq!(j["invalid_state"], 1, "{j}");
    assert_eq!(j["charges"]["pending"]["count"], 2, "{j}");
    let id: String = app
        .db()
        .query_row("SELECT value FROM meta WHERE key = 'ledger_id'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(j["ledger_id"], id.as_str(), "{j}");
    let out = app.command().arg("status").run();
    out.assert_code(0);
    let text = out.stdout();
    assert!(text.contains(&format!("\nid     {id}\n")), "{text}");
    assert!(text.contains("invalid              1"), "{text}");
    assert!(text.contains("total                3"), "{text}");
}
