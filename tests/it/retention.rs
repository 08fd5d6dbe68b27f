//! `[retention]`: `--once` prunes old webhook events, finished runs and delivered rows,
//! and nothing else (never a fact, never what a pending delivery needs), and only when a
//! round is due; the daemon's job runs its first round within a minute of start.
//! The figures of docs/operations.md ("Retention") come from the two ignored tests at
//! the end (`cargo test --release --test it retention_figures -- --ignored --nocapture`).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use konbini_reconciler::jobs::Job;
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
