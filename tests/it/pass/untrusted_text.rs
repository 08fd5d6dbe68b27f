//! Nothing from the network is stored or logged unbounded or raw: hostile answers with a
//! million-character field, ANSI escapes, newlines and NULs leave a ledger and a log of
//! bounded size with no control characters; payment details of the wrong shape are
//! refused and their changes recorded; a payment without an amount is a mismatch.

use std::time::Duration;

use konbini_reconciler::ledger::Outcome;
use serde_json::{Value, json};
use univapay_sim::{Reply, SimCharge};

use crate::helpers::{STORE, TestApp, make_due, run_within};

/// A million characters with a terminal escape, a newline and a NUL inside.
fn hostile_text() -> String {
    format!(
        "\u{1b}[2J\u{1b}[31mPWNED\nforged log line\0{}",
        "A".repeat(1_000_000)
    )
}

/// The `n`-th of several hostile answers for the charge `id`: the huge field in a place
/// that once went whole into `last_error`, an event, a payment column or the log.
fn hostile_answer(id: &str, n: usize) -> Reply {
    let base = SimCharge::new(id, STORE, 100).to_json();
    let mut body = base.clone();
    let huge = Value::String(hostile_text());
    match n % 6 {
        // serde quotes the value in its error message.
        0 => body["charged_amount"] = huge,
        1 => body["metadata"] = json!({"internal_convenience_payment_number": huge}),
        2 => {
            body["status"] = json!("awaiting");
            body["metadata"] = json!({"internal_convenience_payment_url": huge});
        }
        3 => {
            body["status"] = json!("awaiting");
            body["error"] = json!({"code": huge.clone(), "message": huge});
        }
        4 => body["requested_currency"] = huge,
        _ => body["store_id"] = huge,
    }
    Reply::Json(body)
}

/// Every text value stored in the ledger's tables.
fn stored_text(app: &TestApp) -> Vec<String> {
    let db = app.db();
    let mut out = Vec::new();
    for (table, cols) in [
        (
            "charges",
            "provider_status, mismatch_detail, payment_number, payment_url, last_error, charged_currency",
        ),
        ("charge_events", "kind, provider_status, detail"),
        ("runs", "detail"),
    ] {
        let n = cols.split(',').count();
        let mut stmt = db.prepare(&format!("SELECT {cols} FROM {table}")).unwrap();
        let rows = stmt
            .query_map([], |r| {
                (0..n)
                    .map(|i| r.get::<_, Option<String>>(i))
                    .collect::<Result<Vec<_>, _>>()
            })
            .unwrap();
        for row in rows {
            out.extend(row.unwrap().into_iter().flatten());
        }
    }
    out
}

fn ledger_bytes(app: &TestApp) -> u64 {
    app.db()
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    std::fs::metadata(&app.db_path).unwrap().len()
}

/// 20 charges over 5 passes, every answer hostile: this once made a 125 MB ledger.
#[tokio::test(flavor = "multi_thread")]
async fn a_million_character_field_does_not_grow_the_ledger() {
    let app = TestApp::spawn().await;
    let ids: Vec<String> = (0..20).map(|i| format!("c{i:02}")).collect();
    for id in &ids {
        app.create(id, 100);
    }
    let empty = ledger_bytes(&app);
    for pass in 0..5 {
        for (i, id) in ids.iter().enumerate() {
            app.sim.push_reply(id, hostile_answer(id, i + pass));
        }
        let r = app.pass().await;
        assert_ne!(r.outcome, Outcome::Failed);
        assert!(r.counts.checked > 0, "pass {pass}: {r:?}");
        app.after_backoff();
    }
    let texts = stored_text(&app);
    let total: usize = texts.iter().map(String::len).sum();
    assert!(total < 200_000, "{total} bytes of text stored");
    for t in &texts {
        assert!(
            t.chars().count() <= 2048,
            "{} chars stored",
            t.chars().count()
        );
        assert!(
            !t.chars().any(|c| c.is_control()),
            "control character stored: {:?}",
            &t[..t.len().min(80)]
        );
        assert!(!t.contains("PWNED\n"), "{t:.80}");
    }
    let grown = ledger_bytes(&app) - empty;
    assert!(grown < 1024 * 1024, "the ledger grew by {grown} bytes");
    // The huge payment details were refused, not stored.
    assert_eq!(
        app.count("SELECT count(*) FROM charges WHERE length(payment_number) > 64 OR length(payment_url) > 2048"),
        0
    );
}

/// The same through the real binary with every log line switched on: the log stays small
/// and holds no escape sequence, no NUL and no forged line.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_text_does_not_reach_the_log_raw() {
    let app = TestApp::spawn().await;
    let ids: Vec<String> = (0..6).map(|i| format!("c{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        app.create(id, 100);
        app.sim.push_reply(id, hostile_answer(id, i));
    }
    let out = run_within(
        app.command().once().env("RUST_LOG", "trace"),
        Duration::from_secs(30),
    )
    .await;
    let err = out.stderr();
    assert!(out.code().is_some(), "{err:.2000}");
    assert!(err.len() < 256 * 1024, "{} bytes of log", err.len());
    assert!(
        !err.contains('\u{1b}'),
        "an escape sequence reached the log"
    );
    assert!(!err.contains('\0'), "a NUL reached the log");
    assert!(
        !err.lines().any(|l| l.starts_with("forged log line")),
        "a newline from UnivaPay started a log line"
    );
    assert!(
        !err.contains(&"A".repeat(600)),
        "an unbounded field reached the log"
    );
}

/// `payment_url` is a link for customers: only https:// is stored, anything else is an
/// error event and the old value stays. A payment number of the wrong shape likewise. A
/// number or URL that changes after it was first seen is a `payment_changed` event
/// naming old and new, and a warning in the log.
#[tokio::test(flavor = "multi_thread")]
async fn payment_details_are_checked_and_changes_recorded() {
    let app = TestApp::spawn().await;
    app.create("k", 100);
    app.sim.update("k", |c| {
        c.awaiting("1111-2222", Some("https://pay.example/slip/1"))
    });
    app.pass().await;
    let row = app.row("k");
    assert_eq!(row.payment_number.as_deref(), Some("1111-2222"));
    assert_eq!(
        row.payment_url.as_deref(),
        Some("https://pay.example/slip/1")
    );

    // New number, and a slip URL that is no link for a customer.
    app.after_recheck();
    app.sim.update("k", |c| {
        c.awaiting("3333-4444", Some("javascript:alert(document.cookie)"))
    });
    make_due(&app);
    let out = run_within(app.command().once(), Duration::from_secs(20)).await;
    out.assert_code(0);
    let row = app.row("k");
    assert_eq!(row.payment_number.as_deref(), Some("3333-4444"));
    assert_eq!(
        row.payment_url.as_deref(),
        Some("https://pay.example/slip/1"),
        "the old URL is kept"
    );
    let events = app.events("k");
    let changed: Vec<_> = events
        .iter()
        .filter(|e| e.kind == "payment_changed")
        .map(|e| e.detail.clone().unwrap())
        .collect();
    assert_eq!(
        changed,
        [r#"payment_number changed from "1111-2222" to "3333-4444""#]
    );
    let refused: Vec<_> = events
        .iter()
        .filter(|e| e.kind == "error")
        .map(|e| e.detail.clone().unwrap())
        .collect();
    assert_eq!(refused.len(), 1, "{events:?}");
    assert!(refused[0].contains("only https://"), "{}", refused[0]);
    let log = out.stderr();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("payment details changed")
            && l.contains("1111-2222")
            && l.contains("3333-4444")),
        "{log}"
    );

    // The same refused URL on the next check is not news; an http:// one is refused too.
    app.after_recheck();
    app.pass().await;
    assert_eq!(app.event_kinds("k").len(), events.len(), "nothing new");
    app.after_recheck();
    app.sim.update("k", |c| {
        c.awaiting("3333-4444 OR 1=1", Some("http://pay.example/slip/2"))
    });
    app.pass().await;
    let row = app.row("k");
    assert_eq!(row.payment_number.as_deref(), Some("3333-4444"));
    assert_eq!(
        row.payment_url.as_deref(),
        Some("https://pay.example/slip/1")
    );
    let err = row.last_error.unwrap();
    assert!(
        err.contains("payment number") && err.contains("payment URL"),
        "{err}"
    );
}

/// "Paid exactly what was asked" cannot be verified without the amount: a `successful`
/// answer with `charged_amount` null or missing is flagged, and `--once` exits 2.
#[tokio::test(flavor = "multi_thread")]
async fn a_payment_without_an_amount_is_a_mismatch() {
    let app = TestApp::spawn().await;
    for (id, drop_field) in [("null-amount", false), ("no-amount", true)] {
        app.create(id, 1000);
        let mut body = SimCharge::new(id, STORE, 1000).paid().to_json();
        body["charged_amount"] = Value::Null;
        if drop_field {
            body.as_object_mut().unwrap().remove("charged_amount");
        }
        app.sim.push_reply(id, Reply::Json(body));
    }
    let out = run_within(app.command().once(), Duration::from_secs(20)).await;
    out.assert_code(2);
    for id in ["null-amount", "no-amount"] {
        let row = app.row(id);
        assert_eq!(row.state, "successful", "{id}");
        assert_eq!(row.amount_mismatch, 1, "{id}");
        let detail = row.mismatch_detail.unwrap();
        assert!(
            detail.contains("charged amount was missing"),
            "{id}: {detail}"
        );
        assert!(app.event_kinds(id).contains(&"mismatch".to_owned()), "{id}");
    }
    assert_eq!(app.count("SELECT count(*) FROM mismatched_charges"), 2);
}
