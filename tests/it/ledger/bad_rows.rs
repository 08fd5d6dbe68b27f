//! Bad input from the merchant's own code (rows written straight into the ledger): a bad
//! row must be refused at insert by the schema, or, when it got past the constraints
//! anyway, be skipped with an `invalid_row` event while the rest of the pass goes on.

use konbini_reconciler::ledger::Outcome;
use rusqlite::{Connection, ErrorCode, params};
use univapay_sim::SimCharge;

use crate::helpers::{STORE, TestApp};

fn is_constraint(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::ConstraintViolation)
}

#[tokio::test]
async fn bad_rows_are_refused_at_insert() {
    let app = TestApp::spawn().await;
    app.register("taken", 100);
    let db = app.db();
    let insert = |id: &str, store: &str, amount: rusqlite::types::Value, extra: &str| {
        let (cols, vals) = match extra.split_once('=') {
            Some((c, v)) => (format!(", {c}"), format!(", {v}")),
            None => (String::new(), String::new()),
        };
        db.execute(
            &format!(
                "INSERT INTO charges (charge_id, store_id, requested_amount{cols})
                 VALUES (?1, ?2, ?3{vals})"
            ),
            params![id, store, amount],
        )
    };
    use rusqlite::types::Value::{Integer, Null, Real, Text};
    let cases: Vec<(&str, &str, &str, rusqlite::types::Value, &str)> = vec![
        ("negative amount", "neg", STORE, Integer(-1), ""),
        (
            "amount past the ceiling",
            "big",
            STORE,
            Integer(1_000_000_000_001),
            "",
        ),
        (
            "amount as words",
            "words",
            STORE,
            Text("one hundred".into()),
            "",
        ),
        ("fractional amount", "frac", STORE, Real(100.5), ""),
        ("no amount", "none", STORE, Null, ""),
        ("empty charge id", "", STORE, Integer(100), ""),
        ("empty store id", "e-store", "", Integer(100), ""),
        ("charge id with '/'", "a/b", STORE, Integer(100), ""),
        ("store id with '/'", "s-slash", "x/../y", Integer(100), ""),
        ("charge id with a space", "a b", STORE, Integer(100), ""),
        ("charge id with a query", "a?b=1", STORE, Integer(100), ""),
        (
            "lowercase currency",
            "lower",
            STORE,
            Integer(100),
            "requested_currency='jpy'",
        ),
        (
            "two-letter currency",
            "two",
            STORE,
            Integer(100),
            "requested_currency='JP'",
        ),
        (
            "currency sign",
            "yen",
            STORE,
            Integer(100),
            "requested_currency='¥¥¥'",
        ),
        ("unknown state", "paid", STORE, Integer(100), "state='paid'"),
        (
            "final state still due",
            "final",
            STORE,
            Integer(100),
            "state='successful'",
        ),
        (
            "mismatch flag 2",
            "flag",
            STORE,
            Integer(100),
            "amount_mismatch=2",
        ),
        ("the same charge twice", "taken", STORE, Integer(200), ""),
    ];
    for (name, id, store, amount, extra) in &cases {
        let e = insert(id, store, amount.clone(), extra)
            .expect_err(&format!("{name}: the schema accepted it"));
        assert!(is_constraint(&e), "{name}: {e}");
    }
    assert_eq!(app.count("SELECT count(*) FROM charges"), 1);
    assert_eq!(
        app.count("SELECT requested_amount FROM charges WHERE charge_id = 'taken'"),
        100,
        "the first registration stands"
    );
    // History cannot be rewritten either.
    app.sim.upsert(SimCharge::new("taken", STORE, 100).paid());
    app.pass().await;
    let e = db
        .execute("UPDATE charge_events SET to_state = 'failed'", [])
        .unwrap_err();
    assert!(e.to_string().contains("append-only"), "{e}");
    eprintln!("bad inserts tried: {}", cases.len() + 1);
}

#[tokio::test]
async fn rows_slipped_past_the_constraints_are_skipped_with_an_event() {
    let app = TestApp::spawn().await;
    app.create("good", 100);
    app.sim.update("good", SimCharge::paid);
    let db = app.db();
    db.execute_batch("PRAGMA ignore_check_constraints = ON")
        .unwrap();
    let slipped: [(&str, &str, i64, &str, &str, &str); 8] = [
        // (charge_id, store_id, amount, currency, state, what the event says)
        (
            "neg",
            STORE,
            -100,
            "JPY",
            "pending",
            "requested_amount -100 is negative",
        ),
        ("", STORE, 100, "JPY", "pending", "charge_id is empty"),
        (
            "a/b",
            STORE,
            100,
            "JPY",
            "pending",
            "charge_id contains a character",
        ),
        (
            "dots",
            "..",
            100,
            "JPY",
            "pending",
            "store_id contains a character",
        ),
        ("nostore", "", 100, "JPY", "pending", "store_id is empty"),
        (
            "yen",
            STORE,
            100,
            "¥",
            "pending",
            "requested_currency \"¥\"",
        ),
        ("paid", STORE, 100, "JPY", "paid", "unknown state \"paid\""),
        (
            "cash",
            STORE,
            100,
            "JPY",
            "Pending",
            "unknown state \"Pending\"",
        ),
    ];
    for (id, store, amount, cur, state, _) in &slipped {
        db.execute(
            "INSERT INTO charges (charge_id, store_id, requested_amount, requested_currency, state)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, store, amount, cur, state],
        )
        .unwrap();
        // A fake charge of the same id that would move the row if it were ever fetched.
        if !id.is_empty() && !id.contains('/') {
            app.sim.upsert(SimCharge::new(*id, STORE, 100).paid());
        }
    }
    // '..' passes the schema's character check but can never be a path segment.
    db.execute_batch("PRAGMA ignore_check_constraints = OFF")
        .unwrap();
    db.execute(
        "INSERT INTO charges (charge_id, store_id, requested_amount) VALUES ('..', ?1, 100)",
        [STORE],
    )
    .unwrap();
    let rows_before: Vec<String> = row_dumps(&db);

    let r = app.pass().await;
    assert_eq!(r.outcome, Outcome::Ok, "{:?}", r.detail);
    assert_eq!(app.row("good").state, "successful", "the pass went on");
    assert_eq!(r.counts.checked, 1);
    assert_eq!(r.counts.errors, slipped.len() as u64 + 1);
    let mut expected: Vec<(&str, &str)> =
        slipped.iter().map(|&(id, .., says)| (id, says)).collect();
    expected.push(("..", "charge_id contains a character"));
    for (id, detail) in &expected {
        let events = app.events(id);
        assert_eq!(events.len(), 1, "{id:?}: {events:?}");
        assert_eq!(events[0].kind, "invalid_row", "{id:?}");
        let d = events[0].detail.clone().unwrap_or_default();
        assert!(d.contains(detail), "{id:?}: {d:?} lacks {detail:?}");
        if !id.is_empty() && !id.contains('/') && *id != ".." {
            assert_eq!(app.sim.requests_for(id), 0, "{id:?} was never fetched");
        }
    }
    assert_eq!(
        app.sim.counters().requests,
        1,
        "only the good charge was fetched"
    );
    // The bad rows themselves are left exactly as they were, for a human to fix.
    let good_now: Vec<String> = row_dumps(&db)
        .into_iter()
        .filter(|r| !r.starts_with("good|"))
        .collect();
    let good_before: Vec<String> = rows_before
        .into_iter()
        .filter(|r| !r.starts_with("good|"))
        .collect();
    assert_eq!(good_now, good_before);
    assert_eq!(
        app.count("SELECT errors FROM runs ORDER BY id DESC LIMIT 1"),
        slipped.len() as i64 + 1
    );

    // The next pass counts them again but does not repeat the events.
    let events_before = app.count("SELECT count(*) FROM charge_events");
    let r = app.pass().await;
    assert_eq!(r.counts.errors, slipped.len() as u64 + 1);
    assert_eq!(
        app.count("SELECT count(*) FROM charge_events"),
        events_before
    );
}

/// Every charges row as one `|`-joined line, in charge_id order.
fn row_dumps(db: &Connection) -> Vec<String> {
    let mut stmt = db
        .prepare(
            "SELECT charge_id || '|' || store_id || '|' || requested_amount || '|' ||
                    requested_currency || '|' || state || '|' || coalesce(next_check_at, '-') ||
                    '|' || coalesce(last_error, '-') || '|' || updated_at
             FROM charges ORDER BY charge_id",
        )
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test]
async fn slipped_rows_that_can_still_be_read_are_reconciled_safely() {
    let app = TestApp::spawn().await;
    let db = app.db();
    db.execute_batch("PRAGMA ignore_check_constraints = ON")
        .unwrap();
    // A lowercase currency means the same currency (the mismatch rule ignores case).
    db.execute(
        "INSERT INTO charges (charge_id, store_id, requested_amount, requested_currency)
         VALUES ('lower', ?1, 100, 'jpy')",
        [STORE],
    )
    .unwrap();
    // A final charge made due again by hand: checked once more, then final again.
    db.execute(
        "INSERT INTO charges (charge_id, store_id, requested_amount, state, provider_status)
         VALUES ('final', ?1, 100, 'successful', 'successful')",
        [STORE],
    )
    .unwrap();
    db.execute_batch("PRAGMA ignore_check_constraints = OFF")
        .unwrap();
    app.sim.upsert(SimCharge::new("lower", STORE, 100).paid());
    app.sim.upsert(SimCharge::new("final", STORE, 100).paid());
    let r = app.pass().await;
    assert_eq!(r.outcome, Outcome::Ok, "{:?}", r.detail);
    let lower = app.row("lower");
    assert_eq!(lower.state, "successful");
    assert_eq!(lower.amount_mismatch, 0, "{:?}", lower.mismatch_detail);
    let fin = app.row("final");
    assert_eq!(fin.state, "successful");
    assert_eq!(fin.next_check_at, None, "final again, no longer due");
    assert_eq!(app.transitions("final"), Vec::<(String, String)>::new());
    app.after_backoff();
    assert_eq!(app.pass().await.counts.checked, 0);
}
