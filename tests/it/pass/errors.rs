//! Error answers: each leaves state alone, records the error, and lets the pass go on,
//! except 401/403, which stop the pass at once.

use std::time::Duration;

use konbini_reconciler::ledger::Outcome;
use serde_json::json;
use univapay_sim::{Reply, SimCharge};

use crate::helpers::{STORE, TestApp, raw};

/// A charge that is `awaiting` in both the ledger and the fake.
async fn awaiting_charge(app: &TestApp, id: &str) {
    app.create(id, 1000);
    app.sim.update(id, |c| c.awaiting("9999", None));
    app.pass().await;
    assert_eq!(app.row(id).state, "awaiting");
    app.after_recheck();
}

/// Runs one pass where `id` gets `reply`; asserts state untouched, error recorded, and a
/// second charge in the same pass still reconciled.
async fn assert_recorded(reply: Reply, expect_in_error: &str) -> TestApp {
    let app = TestApp::spawn().await;
    awaiting_charge(&app, "bad").await;
    app.create("good", 10);
    app.sim.update("good", SimCharge::paid);
    app.sim.update("bad", SimCharge::paid);
    app.sim.push_reply("bad", reply);
    let r = app.pass().await;
    assert_eq!(r.outcome, Outcome::Ok);
    assert_eq!(r.counts.errors, 1);
    let row = app.row("bad");
    assert_eq!(row.state, "awaiting", "state untouched");
    let err = row.last_error.clone().unwrap_or_default();
    assert!(
        err.contains(expect_in_error),
        "last_error {err:?} lacks {expect_in_error:?}"
    );
    assert!(row.next_check_at.is_some(), "still due later");
    assert_eq!(
        app.event_kinds("bad").last().map(String::as_str),
        Some("error")
    );
    assert_eq!(app.row("good").state, "successful", "the pass went on");
    app
}

#[tokio::test]
async fn wrong_id_changes_nothing_but_last_error() {
    let mut other = SimCharge::new("someone-else", STORE, 1000).paid().to_json();
    other["id"] = json!("someone-else");
    assert_recorded(Reply::Json(other), "someone-else").await;
}

#[tokio::test]
async fn wrong_store_is_refused() {
    let mut c = SimCharge::new("bad", "another-store", 1000)
        .paid()
        .to_json();
    c["store_id"] = json!("another-store");
    assert_recorded(Reply::Json(c), "another-store").await;
}

#[tokio::test]
async fn malformed_json_is_recorded() {
    assert_recorded(raw(200, "{\"id\": \"bad\", \"status\": "), "malformed").await;
    assert_recorded(raw(200, ""), "empty body").await;
    assert_recorded(
        Reply::Json(json!({"id": "bad", "status": "successful", "charged_amount": -3})),
        "charged_amount",
    )
    .await;
    assert_recorded(
        Reply::Json(json!({"id": "bad", "status": "successful", "charged_amount": 1000, "charged_currency": "YENS"})),
        "charged_currency",
    )
    .await;
}

#[tokio::test]
async fn server_error_then_success() {
    let app = assert_recorded(raw(500, "{}"), "500").await;
    // Backoff: not due at the normal recheck, due after the backoff.
    let row = app.row("bad");
    assert!(row.next_check_at.is_some());
    app.after_backoff();
    let r = app.pass().await;
    assert_eq!(r.counts.errors, 0);
    let row = app.row("bad");
    assert_eq!(row.state, "successful");
    assert_eq!(row.last_error, None, "cleared by the good answer");
    assert_eq!(
        app.event_kinds("bad"),
        ["transition", "error", "transition"]
    );
}

#[tokio::test]
async fn gateway_errors_are_transient() {
    for status in [502, 503, 504] {
        assert_recorded(raw(status, ""), &status.to_string()).await;
    }
}

#[tokio::test]
async fn timeout_is_recorded() {
    // The client timeout is 2 s in tests; the reply waits 3 s.
    assert_recorded(Reply::Delay(Duration::from_secs(3)), "within").await;
}

#[tokio::test]
async fn body_that_never_ends_times_out() {
    assert_recorded(Reply::Hang, "within").await;
}

#[tokio::test]
async fn connection_reset_is_recorded() {
    assert_recorded(Reply::Reset, "connect").await;
}

#[tokio::test]
async fn rate_limited_with_retry_after_waits_at_least_that_long() {
    let app = assert_recorded(
        Reply::WithHeaders {
            status: 429,
            body: String::new(),
            headers: vec![("Retry-After".into(), "7200".into())],
        },
        "429",
    )
    .await;
    let next = app.row("bad").next_check_at.unwrap();
    let checked = app.row("bad").last_checked_at.unwrap();
    let gap = chrono::DateTime::parse_from_rfc3339(&next).unwrap()
        - chrono::DateTime::parse_from_rfc3339(&checked).unwrap();
    assert!(
        gap >= chrono::Duration::seconds(3600),
        "Retry-After honoured (capped at 1 h): {gap}"
    );
}

#[tokio::test]
async fn rate_limited_without_retry_after_backs_off() {
    assert_recorded(raw(429, ""), "429").await;
}

#[tokio::test]
async fn other_client_errors_are_recorded() {
    assert_recorded(
        raw(
            400,
            r#"{"status":"error","code":"VALIDATION_ERROR","errors":[]}"#,
        ),
        "VALIDATION_ERROR",
    )
    .await;
    assert_recorded(raw(302, ""), "302").await;
}

#[tokio::test]
async fn repeated_404_gives_up_visibly() {
    let app = TestApp::spawn_with(|c| c.reconcile.not_found_limit = Some(3)).await;
    app.register("ghost", 100); // never created at the fake
    for n in 1..=3 {
        let r = app.pass().await;
        assert_eq!(r.counts.errors, 1);
        assert_eq!(app.row("ghost").not_found_count, n);
        app.after_backoff();
    }
    let row = app.row("ghost");
    assert_eq!(row.state, "pending");
    assert_eq!(row.next_check_at, None, "no longer checked");
    assert!(row.last_error.unwrap().contains("no longer checked"));
    assert_eq!(
        app.event_kinds("ghost"),
        ["error", "error", "error", "gave_up"]
    );
    assert_eq!(app.count("SELECT count(*) FROM unchecked_charges"), 1);
    app.after_backoff();
    assert_eq!(app.pass().await.counts.checked, 0);
    assert_eq!(app.sim.requests_for("ghost"), 3);
}

#[tokio::test]
async fn a_404_run_is_broken_by_a_good_answer() {
    let app = TestApp::spawn_with(|c| c.reconcile.not_found_limit = Some(2)).await;
    app.create("flaky", 100);
    app.sim.push_reply("flaky", raw(404, ""));
    app.pass().await;
    assert_eq!(app.row("flaky").not_found_count, 1);
    app.after_backoff();
    app.pass().await;
    assert_eq!(app.row("flaky").not_found_count, 0);
    app.sim.push_reply("flaky", raw(404, ""));
    app.after_backoff();
    app.pass().await;
    assert!(app.row("flaky").next_check_at.is_some(), "not two in a row");
}

#[tokio::test]
async fn unauthorized_aborts_the_pass_early() {
    let app = TestApp::spawn_with(|c| c.api.concurrency = Some(1)).await;
    for i in 0..50 {
        app.create(&format!("c{i:02}"), 100);
    }
    // Every request is refused as UnivaPay refuses a bad token.
    for i in 0..50 {
        app.sim.push_reply(
            &format!("c{i:02}"),
            raw(
                401,
                r#"{"status":"error","code":"INVALID_CREDENTIALS","errors":[]}"#,
            ),
        );
    }
    let r = app.pass().await;
    assert_eq!(r.outcome, Outcome::AuthFailed);
    let detail = r.detail.unwrap();
    assert!(
        detail.contains("401") && detail.contains("INVALID_CREDENTIALS"),
        "{detail}"
    );
    assert!(
        app.sim.counters().requests <= 2,
        "stopped at once: {:?}",
        app.sim.counters()
    );
    assert_eq!(
        app.count("SELECT count(*) FROM charge_events"),
        0,
        "no charge touched"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM charges WHERE last_checked_at IS NOT NULL"),
        0
    );
    assert_eq!(
        app.count(
            "SELECT count(*) FROM runs WHERE outcome = 'auth_failed' AND finished_at IS NOT NULL"
        ),
        1
    );
}

#[tokio::test]
async fn forbidden_mid_pass_stops_it() {
    let app = TestApp::spawn_with(|c| c.api.concurrency = Some(1)).await;
    for i in 0..10 {
        app.create(&format!("c{i:02}"), 100);
    }
    app.sim.push_reply(
        "c03",
        raw(
            403,
            r#"{"status":"error","code":"INVALID_PERMISSIONS","errors":[]}"#,
        ),
    );
    let r = app.pass().await;
    assert_eq!(r.outcome, Outcome::AuthFailed);
    assert_eq!(r.counts.checked, 3, "the three before were written");
    assert_eq!(app.sim.counters().requests, 4);
    assert_eq!(app.row("c03").last_checked_at, None);
}

#[tokio::test]
async fn unreachable_api_is_reported() {
    let mut app = TestApp::spawn().await;
    app.create("x", 100);
    // Point the reconciler at a port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    app.reconfigure(|c| c.api.base_url = Some(format!("http://{closed}")));
    let r = app.pass().await;
    assert_eq!(r.outcome, Outcome::Unreachable);
    assert_eq!(app.row("x").state, "pending");
    assert!(app.row("x").last_error.unwrap().contains("connect"));
}

#[tokio::test]
async fn a_ledger_failure_mid_pass_is_an_error_and_the_run_is_marked_failed() {
    let app = TestApp::spawn().await;
    for i in 0..5 {
        app.create(&format!("c{i}"), 100);
    }
    // Refuses the pass's progress counters, so the writer's first commit fails.
    app.db()
        .execute_batch(
            "CREATE TRIGGER refuse_progress BEFORE UPDATE ON runs WHEN NEW.checked > 0
             BEGIN SELECT RAISE(ABORT, 'simulated write failure'); END;",
        )
        .unwrap();
    let err = app
        .reconciler
        .run_pass(
            &crate::helpers::hold_lock(&app.reconciler),
            konbini_reconciler::ledger::Trigger::Once,
            Default::default(),
        )
        .await
        .expect_err("a failed commit fails the pass");
    assert!(err.to_string().contains("simulated write failure"), "{err}");
    let runs = app.runs();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].outcome, "failed");
    let detail = runs[0].detail.as_deref().unwrap_or_default();
    assert!(detail.contains("simulated write failure"), "{detail}");
    assert!(runs[0].finished_at.is_some());
    // The failed group was rolled back whole: no charge half-written.
    assert_eq!(
        app.count("SELECT count(*) FROM charges WHERE last_checked_at IS NOT NULL"),
        0
    );
    assert_eq!(app.count("SELECT count(*) FROM charge_events"), 0);
}
