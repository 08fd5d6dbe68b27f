//! Discovery when the transaction history cannot be used: rows shaped otherwise than the
//! sweep expects (no `charge_id`/`resource_id`, no `payment_type`) or an empty history
//! while the charge list holds charges the ledger lacks make the sweep read the charge
//! list instead, with one WARN line and the `konbini_discovery_history_fallbacks_total`
//! counter; a listing's 404 names the listing, not a charge.

use std::collections::BTreeSet;
use std::sync::Arc;

use konbini_reconciler::discovery::history_fallbacks;
use konbini_reconciler::ledger::SweepOutcome;
use serde_json::Value;
use univapay_sim::Population;

use crate::discovery::sweep::{discovered, discovery_on, settle, sweep};
use crate::helpers::TestApp;
use crate::proxy::{self, Rule, Verdict};

/// History rows as a differently shaped API might send them: no id the sweep reads, no
/// payment type.
fn strip_row_ids(mut v: Value) -> Value {
    if let Some(items) = v.get_mut("items").and_then(Value::as_array_mut) {
        for row in items.iter_mut().filter_map(Value::as_object_mut) {
            row.remove("charge_id");
            row.remove("resource_id");
            row.remove("payment_type");
        }
    }
    v
}

fn empty_page(_: Value) -> Value {
    serde_json::json!({"items": [], "has_more": false})
}

/// Every history page edited by `edit`; everything else passed on.
fn history_edited(edit: fn(Value) -> Value) -> Rule {
    Arc::new(move |path: &str| {
        if path.contains("/transaction_history") {
            Verdict::Edit(path.to_owned(), edit)
        } else {
            Verdict::Forward(path.to_owned())
        }
    })
}

/// A store of its own (the fallback counter is per process, and tests share one), with
/// `count` konbini charges created over the last three days, none registered.
async fn store_with_charges(store: u32, count: u64, rule: Rule) -> (TestApp, BTreeSet<String>) {
    let id = Population::store_id(store);
    let mut app = TestApp::spawn_with(discovery_on(std::slice::from_ref(&id))).await;
    let pop = app.sim.seed(Population {
        stores: store + 1,
        ..Population::new(count * u64::from(store + 1), 31)
    });
    let ids = (0..pop.count)
        .map(|i| pop.plan(i))
        .filter(|p| p.store_id == id)
        .map(|p| p.id)
        .collect();
    let url = proxy::start(app.sim.base_url(), rule).await;
    app.reconfigure(|c| c.api.base_url = Some(url));
    (app, ids)
}

fn fallbacks_of(store: u32) -> u64 {
    let id = Population::store_id(store);
    history_fallbacks()
        .into_iter()
        .find(|(s, _)| *s == id)
        .map_or(0, |(_, n)| n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_rows_without_ids_fall_back_to_the_charge_list() {
    let (app, all) = store_with_charges(5, 150, history_edited(strip_row_ids)).await;
    settle(&app);
    let r = sweep(&app).await;
    assert_eq!(r.outcome, SweepOutcome::Ok, "{r:?}");
    assert_eq!(discovered(&app), all);
    assert_eq!(fallbacks_of(5), 1);
    let c = app.sim.counters();
    assert!(c.history_lists >= 1 && c.charge_lists >= 2, "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_history_while_the_charge_list_has_unknown_charges_falls_back() {
    let (app, all) = store_with_charges(6, 40, history_edited(empty_page)).await;
    settle(&app);
    let r = sweep(&app).await;
    assert_eq!(r.outcome, SweepOutcome::Ok, "{r:?}");
    assert_eq!(discovered(&app), all);
    assert_eq!(fallbacks_of(6), 1);
    // Next time the charge list's first page holds only known charges: no fallback, one
    // probing page.
    crate::discovery::sweep::next_interval(&app);
    let before = app.sim.counters().charge_lists;
    let r = sweep(&app).await;
    assert_eq!(r.outcome, SweepOutcome::Ok, "{r:?}");
    assert_eq!(fallbacks_of(6), 1);
    assert_eq!(app.sim.counters().charge_lists, before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_binary_warns_once_and_counts_the_fallback() {
    let (mut app, all) = store_with_charges(7, 60, history_edited(strip_row_ids)).await;
    let prom = app.dir.path().join("discovery.prom");
    let path = prom.to_str().unwrap().to_owned();
    app.reconfigure(|c| *c = std::mem::take(c).set("metrics.textfile", path.as_str()));
    let out = app.command().once().run();
    assert!(matches!(out.code(), Some(0 | 2)), "{}", out.stderr());
    let err = out.stderr();
    let warned: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("no usable row"))
        .collect();
    assert_eq!(warned.len(), 1, "{err}");
    assert!(
        warned[0].contains(&Population::store_id(7)),
        "{}",
        warned[0]
    );
    assert_eq!(discovered(&app), all);
    let text = std::fs::read_to_string(&prom).unwrap();
    let want = format!(
        "konbini_discovery_history_fallbacks_total{{store=\"{}\"}} 1",
        Population::store_id(7)
    );
    assert!(text.lines().any(|l| l == want), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_from_a_listing_names_the_listing_not_a_charge() {
    let not_found: Rule = Arc::new(|path: &str| {
        if path.contains("/transaction_history") || path.contains("/charges?") {
            Verdict::Answer(
                404,
                r#"{"status":"error","code":"NOT_FOUND","errors":[]}"#.into(),
            )
        } else {
            Verdict::Forward(path.to_owned())
        }
    });
    let (app, _) = store_with_charges(8, 5, not_found).await;
    let out = app.command().once().run();
    let err = out.stderr();
    let store = Population::store_id(8);
    for needle in [
        format!("the transaction history of store {store} was not found at UnivaPay (404)"),
        format!("the charge list of store {store} was not found at UnivaPay (404)"),
    ] {
        assert!(err.contains(&needle), "{needle}: {err}");
    }
    assert!(!err.contains("charge not found"), "{err}");
}
