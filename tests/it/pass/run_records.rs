//! What every run writes about itself through the run protocol: `runs.requests` (shown by
//! `status --json`, the base of `konbini_budget_share_used`), `resume_at` for a hint
//! batch UnivaPay paused, and the run's span (run id, trigger) around a check's log lines
//! (charge id) in the JSON logs.

use std::time::Duration;

use univapay_sim::{Reply, SimCharge};

use crate::helpers::TestApp;

#[tokio::test(flavor = "multi_thread")]
async fn a_pass_records_the_requests_it_sent() {
    let mut app = TestApp::spawn().await;
    let dir = app.dir.path().join("metrics");
    std::fs::create_dir_all(&dir).unwrap();
    let textfile = dir.join("konbini_reconciler.prom");
    app.reconfigure(|c| *c = std::mem::take(c).set("metrics.textfile", textfile.to_str().unwrap()));
    for id in ["a", "b", "c"] {
        app.create(id, 1000);
    }
    app.sim.update("a", SimCharge::paid);
    let before = app.sim.counters().requests;
    app.command().once().run().assert_code(0);
    let sent = app.sim.counters().requests - before;
    assert_eq!(sent, 3, "one GET per due charge");
    assert_eq!(
        app.count("SELECT requests FROM runs ORDER BY id DESC LIMIT 1"),
        3
    );

    let r = app.command().args(["status", "--json"]).run();
    r.assert_code(0);
    let j: serde_json::Value = serde_json::from_str(&r.stdout()).unwrap();
    assert_eq!(j["last_run"]["requests"], 3, "{j}");

    let text = std::fs::read_to_string(&textfile).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("konbini_budget_share_used "))
        .unwrap_or_else(|| panic!("no konbini_budget_share_used in:\n{text}"));
    let used: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(used > 0.0, "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_check_command_records_its_requests() {
    let app = TestApp::spawn().await;
    app.create("one", 500);
    app.create("two", 500);
    app.command()
        .args(["check", "one", "two"])
        .run()
        .assert_code(0);
    assert_eq!(
        app.count("SELECT requests FROM runs WHERE trigger = 'check'"),
        2
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_checks_json_log_line_carries_run_id_trigger_and_charge_id() {
    let app = TestApp::spawn_with(|c| c.log.format = Some("json".into())).await;
    app.create("moves", 1500);
    app.sim.update("moves", SimCharge::paid);
    let r = app.command().once().run();
    r.assert_code(0);
    let run_id = app.count("SELECT max(id) FROM runs");
    let moved: Vec<serde_json::Value> = r
        .stderr()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|j| j["charge_id"] == "moves")
        .collect();
    assert!(
        !moved.is_empty(),
        "no line names the charge: {}",
        r.stderr()
    );
    for line in &moved {
        let spans = line["spans"]
            .as_array()
            .unwrap_or_else(|| panic!("no spans: {line}"));
        let run = spans
            .iter()
            .find(|s| s["name"] == "run")
            .unwrap_or_else(|| panic!("no run span: {line}"));
        assert_eq!(run["run_id"], run_id, "{line}");
        assert_eq!(run["trigger"], "once", "{line}");
    }
}

/// A hint batch that finds UnivaPay's pause in force (an earlier hint's GET met a 429
/// with an hour's `Retry-After`) ends its run as `rate_limited` with `resume_at`, like a
/// pass, so that every other process honours it too (it used to write no row at all).
#[tokio::test(flavor = "multi_thread")]
async fn a_hint_batch_paused_by_univapay_records_resume_at() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let app = TestApp::spawn_with(|c| {
        c.schedule.cron = Some("0 0 0 1 1 *".into());
        c.schedule.run_on_start = Some(false);
        c.schedule.drain_timeout = Some(Duration::from_secs(2));
        *c = std::mem::take(c)
            .set("webhook.auth_token", TOKEN)
            .set("webhook.listen", addr.to_string());
    })
    .await;
    for id in ["first", "second"] {
        app.create(id, 800);
        app.sim.update(id, |c| c.awaiting("7012-3456", None));
    }
    app.pass().await;
    app.sim.push_reply(
        "first",
        Reply::WithHeaders {
            status: 429,
            body: String::new(),
            headers: vec![("Retry-After".to_owned(), "3600".to_owned())],
        },
    );
    let webhook_runs = || app.count("SELECT count(*) FROM runs WHERE trigger = 'webhook'");
    let mut daemon = app.command().spawn();
    hook(&app, addr, "first").await;
    crate::helpers::wait_until(Duration::from_secs(10), "the first hint's run", || {
        webhook_runs() >= 1
    })
    .await;
    let before = app.sim.counters().requests;
    hook(&app, addr, "second").await;
    crate::helpers::wait_until(Duration::from_secs(10), "the second hint's run", || {
        webhook_runs() >= 2
    })
    .await;
    daemon.signal(libc::SIGTERM);
    daemon.finish(Duration::from_secs(20)).await.assert_code(0);
    assert_eq!(
        app.sim.counters().requests,
        before,
        "nothing sent in the pause"
    );
    let (outcome, resume_at, requests): (String, Option<String>, i64) = app
        .db()
        .query_row(
            "SELECT outcome, resume_at, requests FROM runs WHERE trigger = 'webhook'
             ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(outcome, "rate_limited");
    assert!(resume_at.is_some(), "resume_at recorded");
    assert_eq!(requests, 0);
}

const TOKEN: &str = "Bearer wh-0123456789abcdef-secret";

/// A `charge_finished` webhook for `id`, answered 200.
async fn hook(app: &TestApp, addr: std::net::SocketAddr, id: &str) {
    let charge = app.sim.charge(id).unwrap().to_json();
    let body = serde_json::json!({"event": "charge_finished", "data": charge}).to_string();
    let request = format!(
        "POST /univapay/webhook HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nAuthorization: {TOKEN}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let status = post_when_up(addr, request.as_bytes()).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
}

/// Sends `request` once the listener accepts, and returns the status line.
async fn post_when_up(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let start = std::time::Instant::now();
    loop {
        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
            s.write_all(request).await.unwrap();
            let mut out = String::new();
            let _ = s.read_to_string(&mut out).await;
            return out.lines().next().unwrap_or("").to_owned();
        }
        assert!(start.elapsed() < Duration::from_secs(15), "listener not up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
