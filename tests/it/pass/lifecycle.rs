//! Whole-lifecycle scenarios against the fake UnivaPay: states, events, amounts, payment
//! details, idempotence.

use konbini_reconciler::ledger::Outcome;
use univapay_sim::SimCharge;

use crate::helpers::{STORE, TestApp};

fn s(v: &str) -> Option<String> {
    Some(v.to_owned())
}

#[tokio::test]
async fn pending_awaiting_successful() {
    let app = TestApp::spawn().await;
    app.create("c1", 1500);

    let r = app.pass().await;
    assert_eq!(
        (r.outcome, r.counts.checked, r.counts.transitions),
        (Outcome::Ok, 1, 0)
    );
    let row = app.row("c1");
    assert_eq!(row.state, "pending");
    assert_eq!(row.provider_status, s("pending"));
    assert!(row.last_checked_at.is_some() && row.next_check_at.is_some());

    app.sim.update("c1", |c| {
        c.awaiting("7012-3456-7890", Some("https://slip.example/c1"))
    });
    app.after_recheck();
    let r = app.pass().await;
    assert_eq!(r.counts.transitions, 1);
    let row = app.row("c1");
    assert_eq!(row.state, "awaiting");
    assert_eq!(row.payment_number, s("7012-3456-7890"));
    assert_eq!(row.payment_url, s("https://slip.example/c1"));

    app.sim.update("c1", SimCharge::paid);
    app.after_recheck();
    let r = app.pass().await;
    assert_eq!((r.counts.transitions, r.counts.mismatches), (1, 0));
    let row = app.row("c1");
    assert_eq!(row.state, "successful");
    assert_eq!(row.charged_amount, Some(1500));
    assert_eq!(row.charged_currency, s("JPY"));
    assert_eq!(row.amount_mismatch, 0);
    assert_eq!(row.next_check_at, None, "final charges are never due again");
    // The payment details stay once issued.
    assert_eq!(row.payment_number, s("7012-3456-7890"));

    assert_eq!(
        app.transitions("c1"),
        vec![
            ("pending".into(), "awaiting".into()),
            ("awaiting".into(), "successful".into())
        ]
    );
    assert_eq!(app.event_kinds("c1"), ["transition", "transition"]);
}

#[tokio::test]
async fn failed_by_deadline_canceled_and_error_all_end_failed() {
    let app = TestApp::spawn().await;
    for id in ["expired", "canceled", "errored"] {
        app.create(id, 800);
        app.sim.update(id, |c| c.awaiting("1111", None));
    }
    app.pass().await;
    app.sim.update("expired", SimCharge::expired);
    app.sim.update("canceled", |c| c.with_status("canceled"));
    app.sim.update("errored", |c| c.with_status("error"));
    app.after_recheck();
    let r = app.pass().await;
    assert_eq!(r.counts.transitions, 3);
    for (id, word) in [
        ("expired", "failed"),
        ("canceled", "canceled"),
        ("errored", "error"),
    ] {
        let row = app.row(id);
        assert_eq!(row.state, "failed", "{id}");
        assert_eq!(row.provider_status.as_deref(), Some(word), "{id}");
        assert_eq!(row.next_check_at, None, "{id}");
        let events = app.events(id);
        let last = events.last().unwrap();
        assert_eq!(last.kind, "transition");
        assert_eq!(last.provider_status.as_deref(), Some(word));
    }
    // UnivaPay's error object is kept on the transition.
    let detail = app.events("expired").pop().unwrap().detail.unwrap();
    assert!(
        detail.contains("323") && detail.contains("payment code expired"),
        "{detail}"
    );
}

#[tokio::test]
async fn pending_straight_to_successful_and_authorized_counts_as_awaiting() {
    let app = TestApp::spawn().await;
    app.create("fast", 100);
    app.create("auth", 100);
    app.sim.update("fast", SimCharge::paid);
    app.sim.update("auth", |c| c.with_status("authorized"));
    app.pass().await;
    assert_eq!(app.row("fast").state, "successful");
    assert_eq!(
        app.transitions("fast"),
        [("pending".into(), "successful".into())]
    );
    assert_eq!(app.row("auth").state, "awaiting");
    assert_eq!(app.row("auth").provider_status, s("authorized"));
}

#[tokio::test]
async fn each_mismatch_kind_is_flagged_once() {
    let app = TestApp::spawn().await;
    app.create("amount", 1000);
    app.create("currency", 1000);
    app.create("theirs", 1000);
    app.create("exact", 1000);
    app.sim.update("amount", |c| c.paid_with(900, "JPY"));
    app.sim.update("currency", |c| c.paid_with(1000, "USD"));
    app.sim.update("theirs", |mut c| {
        c.requested_amount = 1200;
        c.paid_with(1000, "jpy")
    });
    app.sim.update("exact", SimCharge::paid);

    let r = app.pass().await;
    assert_eq!(r.counts.mismatches, 3);
    assert_eq!(
        app.row("amount").mismatch_detail,
        s("charged 900 JPY, requested 1000 JPY")
    );
    assert_eq!(
        app.row("currency").mismatch_detail,
        s("charged 1000 USD, requested 1000 JPY")
    );
    let theirs = app.row("theirs").mismatch_detail.unwrap();
    assert!(theirs.contains("1200"), "{theirs}");
    assert!(
        !theirs.contains("charged"),
        "currency compared case-insensitively: {theirs}"
    );
    assert_eq!(app.row("exact").amount_mismatch, 0);
    for id in ["amount", "currency", "theirs"] {
        let row = app.row(id);
        assert_eq!(
            (row.amount_mismatch, row.state.as_str()),
            (1, "successful"),
            "{id}"
        );
        let kinds = app.event_kinds(id);
        assert_eq!(
            kinds.iter().filter(|k| *k == "mismatch").count(),
            1,
            "{id}: {kinds:?}"
        );
    }
}

#[tokio::test]
async fn mismatch_flag_is_sticky_and_not_repeated() {
    let app = TestApp::spawn().await;
    app.create("m", 1000);
    // Charged while still awaiting (partially processed): flagged, not final.
    app.sim.update("m", |mut c| {
        c = c.awaiting("2222", None);
        c.charged_amount = Some(999);
        c.charged_currency = Some("JPY".into());
        c
    });
    assert_eq!(app.pass().await.counts.mismatches, 1);
    app.sim.update("m", |mut c| {
        c.charged_amount = Some(1000);
        c
    });
    app.after_recheck();
    let r = app.pass().await;
    assert_eq!(r.counts.mismatches, 0, "no new mismatch");
    let row = app.row("m");
    assert_eq!(row.amount_mismatch, 1, "sticky");
    assert_eq!(row.charged_amount, Some(1000), "amounts as last reported");
    assert_eq!(
        app.event_kinds("m")
            .iter()
            .filter(|k| *k == "mismatch")
            .count(),
        1
    );
}

#[tokio::test]
async fn unknown_status_changes_no_state_and_stays_due() {
    let app = TestApp::spawn().await;
    app.create("u", 500);
    app.sim.update("u", |c| c.awaiting("3333", None));
    app.pass().await;
    app.sim.update("u", |c| c.with_status("on_hold"));
    app.after_recheck();
    let r = app.pass().await;
    assert_eq!(r.counts.transitions, 0);
    let row = app.row("u");
    assert_eq!(row.state, "awaiting");
    assert_eq!(row.provider_status, s("on_hold"));
    assert!(row.next_check_at.is_some());
    let kinds = app.event_kinds("u");
    assert_eq!(kinds, ["transition", "unknown_status"]);
    // The same unknown word again is not a new event.
    app.after_recheck();
    app.pass().await;
    assert_eq!(app.event_kinds("u").len(), 2);
    // And it is still checked: a later known status moves it.
    app.sim.update("u", SimCharge::paid);
    app.after_recheck();
    app.pass().await;
    assert_eq!(app.row("u").state, "successful");
}

#[tokio::test]
async fn final_charges_are_not_polled_again() {
    let app = TestApp::spawn().await;
    app.create("done", 100);
    app.sim.update("done", SimCharge::paid);
    app.pass().await;
    assert_eq!(app.sim.requests_for("done"), 1);
    for _ in 0..3 {
        app.after_recheck();
        app.after_backoff();
        let r = app.pass().await;
        assert_eq!(r.counts.checked, 0);
    }
    assert_eq!(app.sim.requests_for("done"), 1);
    // The database refuses to make a final charge due again.
    let err = app
        .db()
        .execute(
            "UPDATE charges SET next_check_at = '2000-01-01T00:00:00.000Z' WHERE charge_id = 'done'",
            [],
        )
        .unwrap_err();
    assert!(err.to_string().contains("CHECK"), "{err}");
}

#[tokio::test]
async fn rerunning_changes_nothing_and_adds_no_events() {
    let app = TestApp::spawn().await;
    for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
        app.create(id, 100 * (i as i64 + 1));
    }
    app.sim.update("a", |c| c.awaiting("4444", None));
    app.sim.update("b", |c| c.paid_with(1, "JPY"));
    app.sim.update("c", |c| c.with_status("weird"));
    app.pass().await;
    let snapshot = |app: &TestApp| {
        ["a", "b", "c", "d"].map(|id| {
            let mut r = app.row(id);
            r.next_check_at = None;
            r.last_checked_at = None;
            (r, app.events(id))
        })
    };
    let before = snapshot(&app);
    let events_before = app.count("SELECT count(*) FROM charge_events");
    for _ in 0..3 {
        app.after_recheck();
        let r = app.pass().await;
        assert_eq!(
            (r.counts.transitions, r.counts.mismatches, r.counts.errors),
            (0, 0, 0)
        );
    }
    assert_eq!(snapshot(&app), before);
    assert_eq!(
        app.count("SELECT count(*) FROM charge_events"),
        events_before
    );
}

#[tokio::test]
async fn not_yet_due_charges_are_left_alone() {
    let app = TestApp::spawn().await;
    app.create("x", 100);
    app.pass().await;
    let r = app.pass().await;
    assert_eq!(r.counts.checked, 0, "checked again before recheck_interval");
    assert_eq!(app.sim.requests_for("x"), 1);
    // An operator makes it due by setting next_check_at in the past.
    app.db()
        .execute(
            "UPDATE charges SET next_check_at = '2000-01-01T00:00:00.000Z' WHERE charge_id = 'x'",
            [],
        )
        .unwrap();
    assert_eq!(app.pass().await.counts.checked, 1);
}

#[tokio::test]
async fn runs_rows_record_each_pass() {
    let app = TestApp::spawn().await;
    app.create("r1", 100);
    app.create("r2", 100);
    app.sim.update("r2", |c| c.paid_with(50, "JPY"));
    app.pass().await;
    let runs = app.runs();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let run = &runs[0];
    assert_eq!(
        (
            run.trigger.as_str(),
            run.outcome.as_str(),
            run.checked,
            run.transitions,
            run.mismatches,
            run.errors
        ),
        ("once", "ok", 2, 1, 1, 0)
    );
    assert!(run.finished_at.is_some());
    let run_ids =
        app.count("SELECT count(DISTINCT run_id) FROM charge_events WHERE run_id IS NOT NULL");
    assert_eq!(run_ids, 1);
}

#[tokio::test]
async fn many_charges_stream_through_small_batches() {
    let app = TestApp::spawn_with(|c| c.reconcile.batch_size = Some(7)).await;
    for i in 0..100 {
        let id = format!("bulk-{i:03}");
        app.create(&id, 100 + i);
        if i % 3 == 0 {
            app.sim.update(&id, |c| c.awaiting("5555", None));
        }
    }
    // Registering 100 charges can take longer than the clock's one-second lead on a
    // loaded machine; the last ones would then not be due yet.
    app.clock.advance(std::time::Duration::from_secs(60));
    let r = app.pass().await;
    assert_eq!(r.counts.checked, 100);
    assert_eq!(r.counts.transitions, 34);
    assert_eq!(
        app.sim.counters().requests,
        100,
        "each charge fetched exactly once"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM charges WHERE last_checked_at IS NULL"),
        0
    );
    let _ = STORE;
}
