//! What a kill -9 in the middle of a sweep costs: the page in flight is verified again by
//! the next sweep (its registrations were not committed), so at most one page's charge
//! and token GETs are repeated, never more. The figure is printed for the docs
//! (docs/discovery-notes.md, "Token memory").

use std::time::Duration;

use konbini_reconciler::discovery::SETTLE;
use konbini_reconciler::univapay::MAX_PAGE_LIMIT;
use univapay_sim::Population;

use crate::discovery::sweep::{discovered, discovery_on};
use crate::helpers::{STORE, TestApp, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_mid_sweep_repeats_at_most_the_page_in_flight() {
    let app = TestApp::spawn_with(|c| {
        discovery_on(&[STORE.to_owned()])(c);
        c.api.concurrency = Some(4);
    })
    .await;
    let pop = app.sim.seed(Population {
        stores: 1,
        ..Population::new(600, 41)
    });
    app.sim.configure(|c| c.latency = Duration::from_millis(10));
    let running = app.command().once().spawn();
    // Killed a good way into a page, not on its edge.
    wait_until(
        Duration::from_secs(60),
        "a page and a half verified",
        || app.sim.counters().token_gets >= 150,
    )
    .await;
    let killed = running.kill();
    assert_eq!(killed.code(), None, "killed: {}", killed.stderr());
    let before = discovered(&app).len();
    assert!(before < 600, "killed mid-sweep: {before}");

    app.sim.configure(|c| c.latency = Duration::ZERO);
    let rerun = app.command().once().run();
    assert!(matches!(rerun.code(), Some(0 | 2)), "{}", rerun.stderr());
    let found = discovered(&app).len() as u64;
    // The real binary runs on the real clock: only charges settled by then are listed.
    let settled = pop.epoch - chrono::Duration::from_std(SETTLE).unwrap();
    let listed = (0..pop.count)
        .filter(|&i| pop.plan(i).created < settled)
        .count() as u64;
    assert!(found >= listed, "all found in the end: {found} of {listed}");
    let c = app.sim.counters();
    // The rerun's pass checks every charge found, with a charge GET of its own.
    let checked: i64 = app.runs().iter().map(|r| r.checked).sum();
    let (tokens_again, charges_again) = (c.token_gets - found, c.requests - found - checked as u64);
    eprintln!(
        "kill -9 mid-sweep: {before} registered before the kill; {tokens_again} token GETs \
         and {charges_again} charge GETs repeated of {found} each"
    );
    assert!(
        tokens_again <= u64::from(MAX_PAGE_LIMIT) && charges_again <= u64::from(MAX_PAGE_LIMIT),
        "{tokens_again} tokens, {charges_again} charges fetched twice"
    );
}
