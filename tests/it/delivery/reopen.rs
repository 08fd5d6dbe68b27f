//! The delivery job beside a ledger file swapped under it (an operator restoring a
//! backup without stopping the daemon): the endpoint's long-lived connection follows the
//! path to a restored copy of the same ledger, and refuses another ledger, or none, with
//! the passes' own error, until the right file is back.

use std::path::Path;
use std::time::Duration;

use chrono::Utc;
use konbini_reconciler::delivery::Endpoint;
use konbini_reconciler::delivery::worker::sync;
use konbini_reconciler::ledger::Ledger;

use super::{Receiver, SECRET, app_with, endpoint, order};
use crate::helpers::TestApp;

/// An app with one endpoint answering 200, one charge's awaiting event delivered to it.
async fn delivered_once() -> (Receiver, TestApp, Endpoint) {
    let shop = Receiver::start(200).await;
    let app = app_with(vec![endpoint("shop", &shop.url(), SECRET)]).await;
    sync(&app.settings, true).await.unwrap();
    let c = order(&app, "ch_r1", "r1");
    app.sim.upsert(c.awaiting("1000-1", None));
    assert_eq!(app.pass().await.counts.transitions, 1);
    let ep = Endpoint::open(app.settings.delivery[0].clone(), &app.settings)
        .await
        .unwrap();
    assert_eq!(ep.step(Utc::now()).await.unwrap().delivered(), 1);
    (shop, app, ep)
}

/// Empties the WAL into the file, so that what lies at the path is the whole ledger.
fn checkpoint(app: &TestApp) {
    app.db()
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
}

fn remove_with_sidecars(db: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
}

fn delivered_charges(shop: &Receiver) -> Vec<String> {
    shop.received()
        .iter()
        .filter(|r| r.answered == 200)
        .map(|r| r.json()["data"]["charge_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restored_under_it_is_followed_to_the_new_file() {
    let (shop, app, ep) = delivered_once().await;
    let db = app.db_path.clone();
    let backup = app.dir.path().join("backup.db");
    app.db()
        .execute("VACUUM INTO ?1", [backup.to_str().unwrap()])
        .unwrap();
    // The restore: the ledger and its sidecars removed, the copy put in its place (a new
    // inode carrying the same ledger id).
    remove_with_sidecars(&db);
    std::fs::rename(&backup, &db).unwrap();

    let c = order(&app, "ch_r2", "r2");
    app.sim.upsert(c.awaiting("1000-2", None));
    assert_eq!(app.pass().await.counts.transitions, 1);
    let r = ep.step(Utc::now()).await.unwrap();
    assert_eq!(r.delivered(), 1, "the new file's event");
    assert_eq!(delivered_charges(&shop), ["ch_r1", "ch_r2"]);
    assert_eq!(
        app.count("SELECT count(*) FROM deliveries WHERE delivered_at IS NULL"),
        0,
        "recorded in the new file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_ledger_or_none_stops_it_with_the_passes_error_until_the_right_one_is_back() {
    let (shop, app, ep) = delivered_once().await;
    let db = app.db_path.clone();
    let dir = app.dir.path().to_owned();
    let c = order(&app, "ch_r2", "r2");
    app.sim.upsert(c.awaiting("1000-2", None));
    assert_eq!(app.pass().await.counts.transitions, 1);
    checkpoint(&app);

    std::fs::rename(&db, dir.join("kept.db")).unwrap();
    let gone = ep.step(Utc::now()).await.unwrap_err();
    assert!(gone.is_lost(), "{gone}");
    assert!(gone.to_string().contains("is gone"), "{gone}");

    let other = dir.join("other.db");
    drop(Ledger::open(&other, Duration::from_secs(1)).unwrap());
    std::fs::rename(&other, &db).unwrap();
    let replaced = ep.step(Utc::now()).await.unwrap_err();
    assert!(replaced.is_lost(), "{replaced}");
    assert!(replaced.to_string().contains("was replaced"), "{replaced}");
    assert_eq!(
        delivered_charges(&shop),
        ["ch_r1"],
        "nothing sent meanwhile"
    );

    // The right ledger back: the waiting event goes.
    std::fs::rename(&db, &other).unwrap();
    std::fs::rename(dir.join("kept.db"), &db).unwrap();
    let r = ep.step(Utc::now()).await.unwrap();
    assert_eq!(r.delivered(), 1);
    assert_eq!(delivered_charges(&shop), ["ch_r1", "ch_r2"]);
}
