//! The webhook listener of the real daemon: every answer of the contract, what a hint does
//! (and what a forged body does not do), coalescing, the budget cap, slow and numerous
//! clients, socket activation through an inherited descriptor, and delivery by the
//! simulator the way UnivaPay delivers.
//!
//! Requests are written by hand over TCP, so a test can send exactly the bytes it means
//! (no header, two headers, a body that is not UTF-8, a body that trickles in).

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use univapay_sim::{Reply, SimCharge, WebhookTarget};

use super::http::{Daemon, NEVER, PATH, TOKEN, free_port, get, post};
use crate::config::TestConfig;
use crate::helpers::{STORE, TestApp, wait_until};
use crate::util::TestCommand;

/// `[webhook]` with the token and `listen` (when given), and a schedule that leaves the
/// checks to the hints.
fn webhook_config(c: &mut TestConfig, listen: Option<SocketAddr>) {
    c.schedule.cron = Some(NEVER.into());
    c.schedule.run_on_start = Some(false);
    c.schedule.drain_timeout = Some(Duration::from_secs(2));
    let mut t = std::mem::take(c).set("webhook.auth_token", TOKEN);
    if let Some(l) = listen {
        t = t.set("webhook.listen", l.to_string());
    }
    *c = t;
}

/// A webhook body as UnivaPay sends it: the event and the whole charge.
fn body(event: &str, charge: &SimCharge) -> String {
    json!({"event": event, "data": charge.to_json()}).to_string()
}

/// A body naming a charge, with whatever status and amounts the sender likes.
fn forged(event: &str, id: &str, store: &str) -> String {
    json!({"event": event, "data": {"id": id, "store_id": store, "status": "successful",
        "charged_amount": 1, "charged_currency": "JPY", "requested_amount": 1}})
    .to_string()
}

/// A test app whose daemon will listen on a free port.
async fn app_with_listener(edit: impl FnOnce(&mut TestConfig)) -> (TestApp, SocketAddr) {
    let addr = free_port();
    let app = TestApp::spawn_with(|c| {
        webhook_config(c, Some(addr));
        edit(c);
    })
    .await;
    (app, addr)
}

/// A charge `awaiting` at UnivaPay and in the ledger.
async fn awaiting(app: &TestApp, id: &str) -> SimCharge {
    app.create(id, 1500);
    app.sim.update(id, |c| c.awaiting("7012-3456", None));
    app.pass().await;
    assert_eq!(app.row(id).state, "awaiting");
    app.sim.charge(id).unwrap()
}

fn webhook_events(app: &TestApp, id: &str) -> Vec<String> {
    app.events(id)
        .into_iter()
        .filter(|e| e.kind == "webhook")
        .map(|e| e.detail.unwrap_or_default())
        .collect()
}

// ---- config and start-up -------------------------------------------------------------

#[tokio::test]
async fn a_webhook_section_without_a_usable_token_or_address_stops_the_start() {
    let app = TestApp::spawn().await;
    let run = |c: TestConfig| {
        let path = app.dir.path().join("bad.toml");
        c.write(&path);
        let mut cmd = TestCommand::new(app.dir.path());
        cmd.config(&path);
        cmd.run()
    };
    let base = app.config.clone().with(|c| {
        c.schedule.cron = Some(NEVER.into());
        c.schedule.run_on_start = Some(false);
    });

    let no_token = base.clone().set("webhook.listen", "127.0.0.1:0");
    run(no_token).assert_fatal(&["webhook.auth_token", "missing"]);

    let short = base
        .clone()
        .set("webhook.listen", "127.0.0.1:0")
        .set("webhook.auth_token", "Bearer 12345");
    let line = run(short).assert_fatal(&["webhook.auth_token", "at least 16"]);
    assert!(!line.contains("12345"), "the token is not shown: {line}");

    // An address another socket holds.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let busy = base
        .clone()
        .set("webhook.listen", addr.to_string())
        .set("webhook.auth_token", TOKEN);
    run(busy).assert_fatal(&["webhook.listen", &addr.to_string(), "cannot listen"]);

    // An address of no interface here.
    let foreign = base
        .clone()
        .set("webhook.listen", "192.0.2.1:8089")
        .set("webhook.auth_token", TOKEN);
    run(foreign).assert_fatal(&["webhook.listen", "192.0.2.1:8089", "cannot listen"]);

    // No address and no socket from systemd.
    let nowhere = base.clone().set("webhook.auth_token", TOKEN);
    run(nowhere).assert_fatal(&["webhook.listen", "LISTEN_FDS"]);

    let reserved = base
        .set("webhook.listen", "127.0.0.1:0")
        .set("webhook.auth_token", TOKEN)
        .set("webhook.path", "/healthz");
    run(reserved).assert_fatal(&["webhook.path", "/healthz"]);
    assert_eq!(app.count("SELECT count(*) FROM runs"), 0, "no pass ran");
}

// ---- what a hint does -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hint_for_a_paid_charge_makes_it_successful_within_two_seconds() {
    let (app, addr) = app_with_listener(|_| {}).await;
    awaiting(&app, "paid").await;
    let daemon = Daemon::start(&app, addr).await;
    let before = app.sim.requests_for("paid");

    app.sim.pay("paid").unwrap();
    let sent = Instant::now();
    let r = daemon
        .hook(&body("charge_finished", &app.sim.charge("paid").unwrap()))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        sent.elapsed() < Duration::from_millis(500),
        "answered at once"
    );
    wait_until(Duration::from_secs(2), "paid charge successful", || {
        app.row("paid").state == "successful"
    })
    .await;

    assert_eq!(app.sim.requests_for("paid") - before, 1, "one GET");
    assert_eq!(webhook_events(&app, "paid"), ["charge_finished x1"]);
    assert_eq!(
        app.event_kinds("paid")[1..],
        ["webhook", "transition"],
        "the hint's row, then the check's"
    );
    let run = app.last_run();
    assert_eq!(
        (
            run.trigger.as_str(),
            run.outcome.as_str(),
            run.checked,
            run.transitions
        ),
        ("webhook", "ok", 1, 1),
        "{run:?}"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_body_changes_nothing_but_what_the_get_says() {
    let (app, addr) = app_with_listener(|_| {}).await;
    awaiting(&app, "forged").await;
    let row = app.row("forged");
    let daemon = Daemon::start(&app, addr).await;
    let gets = app.sim.requests_for("forged");

    let r = daemon
        .hook(&forged("charge_finished", "forged", STORE))
        .await;
    assert_eq!(r.status, 200);
    wait_until(Duration::from_secs(3), "the hint's GET", || {
        app.sim.requests_for("forged") == gets + 1
    })
    .await;
    wait_until(Duration::from_secs(3), "the check written", || {
        app.row("forged").last_checked_at != row.last_checked_at
    })
    .await;
    let after = app.row("forged");
    assert_eq!(after.state, "awaiting");
    assert_eq!(after.provider_status.as_deref(), Some("awaiting"));
    assert_eq!(after.charged_amount, None);
    assert_eq!(after.amount_mismatch, 0);
    assert_eq!(
        app.transitions("forged").len(),
        1,
        "only pending -> awaiting"
    );

    // The same body naming the charge under another store: not even a GET.
    let r = daemon
        .hook(&forged("charge_finished", "forged", "other-store"))
        .await;
    assert_eq!(r.status, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(app.sim.requests_for("forged"), gets + 1);
    assert_eq!(webhook_events(&app, "forged"), ["charge_finished x1"]);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_hints_share_gets() {
    let (app, addr) = app_with_listener(|_| {}).await;
    awaiting(&app, "dup").await;
    let daemon = Daemon::start(&app, addr).await;
    let base = app.sim.requests_for("dup");
    let hint = forged("charge_updated", "dup", STORE);

    // The first GET is slow: every hint that arrives while it is in flight shares the
    // one GET that follows it.
    app.sim
        .push_reply("dup", Reply::Delay(Duration::from_secs(3)));
    assert_eq!(daemon.hook(&hint).await.status, 200);
    wait_until(Duration::from_secs(2), "first GET", || {
        app.sim.requests_for("dup") == base + 1
    })
    .await;
    let hints = (0..30).map(|_| daemon.hook(&hint));
    for r in futures::future::join_all(hints).await {
        assert_eq!(r.status, 200);
    }
    wait_until(Duration::from_secs(6), "the follow-up GET", || {
        app.sim.requests_for("dup") == base + 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(app.sim.requests_for("dup"), base + 2, "31 hints, 2 GETs");
    assert_eq!(
        webhook_events(&app, "dup"),
        ["charge_updated x1", "charge_updated x30"],
        "one row per GET, counting its hints"
    );

    // A burst of hints: the first starts a GET at once; the rest arrive before it starts
    // (and share it) or while it is in flight (and share the one after it).
    let hints = (0..20).map(|_| daemon.hook(&hint));
    futures::future::join_all(hints).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let more = app.sim.requests_for("dup") - base - 2;
    assert!((1..=2).contains(&more), "20 more hints, {more} more GETs");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_hints_are_answered_200_and_cost_nothing() {
    let (app, addr) = app_with_listener(|_| {}).await;
    app.create("done", 500);
    app.sim.update("done", SimCharge::paid);
    app.pass().await;
    assert_eq!(app.row("done").state, "successful");
    let daemon = Daemon::start(&app, addr).await;
    let requests = app.sim.counters().requests;

    for (body, what) in [
        (forged("charge_finished", "done", STORE), "final charge"),
        (
            forged("charge_finished", "stranger", STORE),
            "not in the ledger",
        ),
        (
            json!({"event": "refund_finished", "data": {"id": "r1"}}).to_string(),
            "other event",
        ),
        (json!({"event": "token_created"}).to_string(), "no data"),
    ] {
        let r = daemon.hook(&body).await;
        assert_eq!(r.status, 200, "{what}: {r:?}");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(app.sim.counters().requests, requests, "no GET");
    assert_eq!(webhook_events(&app, "done"), ["charge_finished x1"]);
    assert_eq!(
        app.count("SELECT count(*) FROM charge_events WHERE charge_id = 'stranger'"),
        0
    );
    assert_eq!(
        app.count("SELECT count(*) FROM charges"),
        1,
        "nothing registered"
    );
    daemon.stop().await;
}

// ---- every answer ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answers_of_the_contract() {
    let (app, addr) = app_with_listener(|_| {}).await;
    awaiting(&app, "c1").await;
    let daemon = Daemon::start(&app, addr).await;
    let requests = app.sim.counters().requests;
    let ok_body = forged("charge_updated", "c1", STORE);
    let auth = Some(TOKEN.as_bytes());

    let r = daemon.send(get("/healthz", None)).await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    assert_eq!(
        daemon.send(get("/metrics", None)).await.status,
        404,
        "metrics not wired"
    );
    assert_eq!(daemon.send(get("/", None)).await.status, 404);
    assert_eq!(daemon.send(post("/other", auth, b"{}")).await.status, 404);
    assert_eq!(
        daemon
            .send(post("/univapay/webhook/", auth, ok_body.as_bytes()))
            .await
            .status,
        404
    );
    let r = daemon.send(get(PATH, None)).await;
    assert_eq!(r.status, 405);
    assert!(r.head.to_ascii_lowercase().contains("allow: post"), "{r:?}");
    let put = post(PATH, auth, b"{}")
        .into_iter()
        .skip(4)
        .collect::<Vec<u8>>();
    let put = [b"PUT".as_slice(), &put].concat();
    assert_eq!(daemon.send(put).await.status, 405);

    // Too large: declared, and undeclared (chunked).
    let big = vec![b' '; 64 * 1024 + 1];
    assert_eq!(daemon.send(post(PATH, auth, &big)).await.status, 413);
    let mut chunked = format!(
        "POST {PATH} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: {TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..20 {
        chunked.extend_from_slice(format!("{:x}\r\n", 8192).as_bytes());
        chunked.extend_from_slice(&[b' '; 8192]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(daemon.send(chunked).await.status, 413);
    // Exactly the limit is fine (a valid body padded with spaces).
    let mut padded = ok_body.clone().into_bytes();
    padded.resize(64 * 1024, b' ');
    assert_eq!(daemon.send(post(PATH, auth, &padded)).await.status, 200);

    // Malformed.
    let nested = format!(
        r#"{{"event":"charge_updated","data":{}1{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    for bad in [
        b"{".to_vec(),
        b"[]".to_vec(),
        b"\xff\xfe\x00{\"event\":\"charge_updated\"}".to_vec(),
        [
            b"{\"event\":\"charge_updated\",\"data\":{\"id\":\"c1".as_slice(),
            b"\xc3\x28",
            b"\",\"store_id\":\"s\"}}",
        ]
        .concat(),
        nested.into_bytes(),
        forged("charge_updated", "../../stores/x/charges/c1", STORE).into_bytes(),
        forged("charge_updated", "c1/../c2", STORE).into_bytes(),
        forged("charge_updated", "c1", "s?x=1").into_bytes(),
        forged("charge_updated", "c1", "..").into_bytes(),
        json!({"event": "charge_updated", "data": {"id": "c1"}})
            .to_string()
            .into_bytes(),
    ] {
        let r = daemon.send(post(PATH, auth, &bad)).await;
        let shown: String = String::from_utf8_lossy(&bad).chars().take(120).collect();
        assert_eq!(r.status, 400, "{shown:?}: {r:?}");
    }

    // The padded hint above made the one GET; nothing else reached UnivaPay.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(app.sim.counters().requests, requests + 1);
    assert_eq!(webhook_events(&app, "c1"), ["charge_updated x1"]);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_exact_token_gets_in_and_it_is_never_logged() {
    let (app, addr) = app_with_listener(|_| {}).await;
    awaiting(&app, "c1").await;
    let daemon = Daemon::start(&app, addr).await;
    let requests = app.sim.counters().requests;
    let body = forged("charge_finished", "c1", STORE);
    let tries: Vec<(&str, Vec<u8>)> = vec![
        ("missing", post(PATH, None, body.as_bytes())),
        (
            "prefix",
            post(
                PATH,
                Some(&TOKEN.as_bytes()[..TOKEN.len() - 1]),
                body.as_bytes(),
            ),
        ),
        (
            "longer",
            post(PATH, Some(format!("{TOKEN}X").as_bytes()), body.as_bytes()),
        ),
        (
            "other case",
            post(PATH, Some(TOKEN.to_uppercase().as_bytes()), body.as_bytes()),
        ),
        (
            "bare secret",
            post(PATH, Some(b"wh-0123456789abcdef-secret"), body.as_bytes()),
        ),
        (
            "not text",
            post(
                PATH,
                Some(b"Bearer wh-\xff\xfe-guess-1234567"),
                body.as_bytes(),
            ),
        ),
        ("empty", post(PATH, Some(b""), body.as_bytes())),
    ];
    for (what, req) in tries {
        let r = daemon.send(req).await;
        assert_eq!(r.status, 401, "{what}: {r:?}");
    }
    // Twice, the right one and a wrong one: ambiguous, refused.
    let mut twice = post(PATH, Some(TOKEN.as_bytes()), body.as_bytes());
    let at = twice.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    twice.splice(
        at..at,
        b"\r\nAuthorization: Bearer guessed-value-0000"
            .iter()
            .copied(),
    );
    assert_eq!(daemon.send(twice).await.status, 401);
    // A huge body without the token is not read at all.
    assert_eq!(
        daemon
            .send(post(PATH, Some(b"Bearer nope"), &vec![b'x'; 1 << 20]))
            .await
            .status,
        401
    );

    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(app.sim.counters().requests, requests, "no GET");
    assert!(webhook_events(&app, "c1").is_empty(), "no row");
    let out = daemon.stop().await;
    let log = out.stderr();
    assert!(log.contains("401"), "a warning: {log}");
    for secret in [
        "wh-0123456789abcdef",
        "guessed-value",
        "Bearer nope",
        "guess-1234567",
    ] {
        assert!(!log.contains(secret), "{secret:?} in the log: {log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_reports_a_failed_pass() {
    let (app, addr) = app_with_listener(|c| {
        c.api.secret = Some("wrong-secret".into());
        c.schedule.run_on_start = Some(true);
    })
    .await;
    app.register("c1", 100);
    let daemon = Daemon::wait_ready_any(app.command().spawn(), addr).await;
    wait_until(Duration::from_secs(5), "the failed pass", || {
        app.count("SELECT count(*) FROM runs WHERE outcome = 'auth_failed'") == 1
    })
    .await;
    let r = daemon.send(get("/healthz", None)).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (503, "last pass: auth_failed\n")
    );
    daemon.stop().await;
}

// ---- hostile clients ------------------------------------------------------------------

/// Connects, sends `first`, then `drip` every half second (nothing when empty) while
/// reading, until the listener closes the connection (at most 20 s). Returns what came
/// back and how long the connection lasted.
async fn trickle(addr: SocketAddr, first: Vec<u8>, drip: &'static [u8]) -> (String, Duration) {
    let start = Instant::now();
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let _ = wr.write_all(&first).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "still open after 20 s"
        );
        tokio::select! {
            n = rd.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            },
            () = tokio::time::sleep(Duration::from_millis(500)) => {
                if !drip.is_empty() {
                    let _ = wr.write_all(drip).await;
                }
            }
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off() {
    let (app, addr) = app_with_listener(|_| {}).await;
    awaiting(&app, "c1").await;
    let daemon = Daemon::start(&app, addr).await;

    // Headers that never end, a byte every half second.
    let head = trickle(
        addr,
        b"POST /univapay/webhook HTTP/1.1\r\nHost: t\r\n".to_vec(),
        b"X",
    );
    // A connection that never sends anything.
    let idle = trickle(addr, Vec::new(), b"");
    // A body that trickles in, with the right token.
    let body = trickle(
        addr,
        format!("POST {PATH} HTTP/1.1\r\nHost: t\r\nAuthorization: {TOKEN}\r\nContent-Length: 1000\r\n\r\n")
            .into_bytes(),
        b" ",
    );
    let ((_, head_took), (_, idle_took), (body_reply, body_took)) = tokio::join!(head, idle, body);
    // The head within 2 s (hyper's header timeout), the body within 10 s.
    assert!(head_took < Duration::from_secs(8), "{head_took:?}");
    assert!(idle_took < Duration::from_secs(8), "{idle_took:?}");
    assert!(
        body_reply.starts_with("HTTP/1.1 408"),
        "{body_reply:?} after {body_took:?}"
    );
    assert!(body_took < Duration::from_secs(13), "{body_took:?}");
    // Still serving.
    assert_eq!(daemon.send(get("/healthz", None)).await.status, 200);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_connections_do_not_exhaust_descriptors() {
    let (app, addr) = app_with_listener(|_| {}).await;
    awaiting(&app, "c1").await;
    let mut daemon = Daemon::start(&app, addr).await;
    let pid = daemon.process.pid();
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let idle_fds = fds();

    // 2,000 clients connect at once and stay idle. Those past the cap and the kernel's
    // backlog wait for the handshake and give up after 2 s.
    let attempts = (0..2000).map(|_| async move {
        tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
            .await
            .ok()
            .and_then(Result::ok)
    });
    let held: Vec<TcpStream> = futures::future::join_all(attempts)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert!(held.len() > 300, "only {} connections opened", held.len());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let busy_fds = fds();
    assert!(
        busy_fds <= idle_fds + 256 + 8,
        "{busy_fds} descriptors with {} connections (idle: {idle_fds})",
        held.len()
    );
    assert!(!daemon.process.has_exited());

    // Once the idle ones are cut off (header timeout), a real hint gets through.
    drop(held);
    let r = tokio::time::timeout(
        Duration::from_secs(15),
        daemon.hook(&forged("charge_updated", "c1", STORE)),
    )
    .await
    .expect("answered");
    assert_eq!(r.status, 200);
    daemon.stop().await;
}

// ---- the budget ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_hints_keeps_to_the_hint_budget_and_passes_go_on() {
    // 120 requests a minute: hints get a quarter, 0.5/s in bursts of 2.
    let (app, addr) = app_with_listener(|c| {
        c.api.max_requests_per_minute = Some(120);
        c.schedule.cron = Some("* * * * * *".into());
    })
    .await;
    for i in 0..60 {
        let id = format!("h{i}");
        app.create(&id, 100);
        app.sim.update(&id, |c| c.awaiting("1", None));
    }
    // Not due for a pass: only hints would check them.
    app.db()
        .execute(
            "UPDATE charges SET next_check_at = '2999-01-01T00:00:00.000Z' WHERE charge_id LIKE 'h%'",
            [],
        )
        .unwrap();
    for i in 0..3 {
        app.create(&format!("due{i}"), 100);
    }
    let daemon = Daemon::start(&app, addr).await;
    let start = Instant::now();
    let flood = (0..60).flat_map(|i| {
        let d = &daemon;
        (0..3).map(move |_| async move {
            d.hook(&forged("charge_updated", &format!("h{i}"), STORE))
                .await
        })
    });
    for r in futures::future::join_all(flood).await {
        assert_eq!(r.status, 200);
    }
    wait_until(
        Duration::from_secs(8),
        "the scheduled pass checked its charges",
        || (0..3).all(|i| app.row(&format!("due{i}")).last_checked_at.is_some()),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let hinted: u64 = (0..60)
        .map(|i| app.sim.requests_for(&format!("h{i}")))
        .sum();
    let secs = start.elapsed().as_secs_f64();
    assert!(
        hinted as f64 <= 2.0 + 0.5 * secs + 1.0,
        "{hinted} hint GETs in {secs:.1} s"
    );
    assert!(hinted >= 2, "hints are checked too: {hinted}");
    // One row per GET the hints caused (written as it starts), not one per hint.
    let rows = app.count("SELECT count(*) FROM charge_events WHERE kind = 'webhook'") as u64;
    assert!(
        (hinted..=hinted + 32).contains(&rows),
        "{rows} rows for {hinted} GETs"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_is_not_held_up_by_a_burst_of_expiries() {
    // Default budget: hint GETs at 2.5/s in bursts of 10, so 40 expiries take 12 s.
    let (app, addr) = app_with_listener(|_| {}).await;
    for i in 0..40 {
        let id = format!("x{i}");
        app.create(&id, 100);
        app.sim.update(&id, SimCharge::expired);
    }
    app.db()
        .execute(
            "UPDATE charges SET expires_at = '2000-01-01T00:00:00.000Z',
                    next_check_at = '2999-01-01T00:00:00.000Z' WHERE charge_id LIKE 'x%'",
            [],
        )
        .unwrap();
    awaiting(&app, "paid").await;
    let daemon = Daemon::start(&app, addr).await;
    let expiries = (0..40).map(|i| {
        let d = &daemon;
        async move {
            d.hook(&forged("charge_finished", &format!("x{i}"), STORE))
                .await
        }
    });
    futures::future::join_all(expiries).await;
    app.sim.pay("paid").unwrap();
    let paid = Instant::now();
    assert_eq!(
        daemon
            .hook(&forged("charge_finished", "paid", STORE))
            .await
            .status,
        200
    );
    wait_until(Duration::from_secs(2), "the payment seen", || {
        app.row("paid").state == "successful"
    })
    .await;
    let expired = app.count("SELECT count(*) FROM charges WHERE state = 'failed'");
    assert!(
        expired < 40,
        "the payment went ahead of the expiries ({expired} done, {:?})",
        paid.elapsed()
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_not_yet_followed_at_shutdown_are_left_due_for_the_next_pass() {
    let (app, addr) = app_with_listener(|_| {}).await;
    awaiting(&app, "c1").await;
    app.db()
        .execute(
            "UPDATE charges SET next_check_at = '2999-01-01T00:00:00.000Z' WHERE charge_id = 'c1'",
            [],
        )
        .unwrap();
    let daemon = Daemon::start(&app, addr).await;
    let gets = app.sim.requests_for("c1");
    let hint = forged("charge_updated", "c1", STORE);
    app.sim
        .push_reply("c1", Reply::Delay(Duration::from_millis(800)));
    assert_eq!(daemon.hook(&hint).await.status, 200);
    wait_until(Duration::from_secs(2), "the first GET", || {
        app.sim.requests_for("c1") == gets + 1
    })
    .await;
    // Arrives while that GET is in flight: its own GET would follow a second later.
    assert_eq!(daemon.hook(&hint).await.status, 200);
    let out = daemon.stop().await;
    assert_eq!(
        app.sim.requests_for("c1"),
        gets + 1,
        "no GET after the stop"
    );
    let next = app.row("c1").next_check_at.unwrap();
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    assert!(
        next <= now,
        "due now ({next}), not at its schedule: {}",
        out.stderr()
    );
}

// ---- socket activation -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_passed_by_systemd_is_served() {
    let app = TestApp::spawn_with(|c| webhook_config(c, None)).await;
    awaiting(&app, "c1").await;
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();

    let mut cmd = TestCommand::socket_activated(app.dir.path(), socket.as_raw_fd(), true);
    cmd.config(&app.config_path);
    let daemon = Daemon::wait_ready(cmd.spawn(), addr).await;
    drop(socket);
    app.sim.pay("c1").unwrap();
    let r = daemon.hook(&forged("charge_finished", "c1", STORE)).await;
    assert_eq!(r.status, 200);
    wait_until(Duration::from_secs(2), "successful", || {
        app.row("c1").state == "successful"
    })
    .await;
    daemon.stop().await;

    // A socket meant for another process (LISTEN_PID is not ours) is not taken.
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cmd = TestCommand::socket_activated(app.dir.path(), socket.as_raw_fd(), false);
    cmd.config(&app.config_path);
    cmd.run().assert_fatal(&["webhook.listen", "LISTEN_FDS"]);
}

// ---- the simulator's delivery ----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_delivered_like_univapay_turn_into_checks_and_lost_ones_are_found_by_passes() {
    let (app, addr) = app_with_listener(|c| {
        c.schedule.cron = Some("* * * * * *".into());
        c.reconcile.recheck_interval = Some(Duration::from_secs(3600));
    })
    .await;
    let url = format!("http://{addr}{PATH}");
    app.sim
        .configure(|c| c.webhook = Some(WebhookTarget::new(url.clone(), TOKEN)));
    let delivered = app.sim.create_konbini_charge(STORE, 2400, "lawson");
    let lost = app.sim.create_konbini_charge(STORE, 900, "family_mart");
    for c in [&delivered, &lost] {
        app.db()
            .execute(
                "INSERT INTO charges (charge_id, store_id, requested_amount) VALUES (?1, ?2, ?3)",
                rusqlite::params![c.id, STORE, c.requested_amount],
            )
            .unwrap();
    }
    let daemon = Daemon::start(&app, addr).await;
    app.sim.issue(&delivered.id).unwrap();
    app.sim.issue(&lost.id).unwrap();
    wait_until(Duration::from_secs(5), "both awaiting", || {
        app.row(&delivered.id).state == "awaiting" && app.row(&lost.id).state == "awaiting"
    })
    .await;

    app.sim.pay(&delivered.id).unwrap();
    let paid = Instant::now();
    wait_until(Duration::from_secs(2), "delivered payment seen", || {
        app.row(&delivered.id).state == "successful"
    })
    .await;
    let took = paid.elapsed();
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(
        app.sim.counters().webhooks_delivered >= 3,
        "{:?}",
        app.sim.counters()
    );
    assert!(
        webhook_events(&app, &delivered.id)
            .iter()
            .any(|d| d.contains("charge_finished"))
    );

    // Every delivery of the lost charge's payment fails: only the safety net finds it.
    app.sim.configure(|c| {
        c.webhook = Some(WebhookTarget::new(url.clone(), TOKEN).with_loss(1.0));
    });
    app.sim.pay(&lost.id).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(app.row(&lost.id).state, "awaiting", "no hint, not yet due");
    app.db()
        .execute(
            "UPDATE charges SET next_check_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE charge_id = ?1",
            [&lost.id],
        )
        .unwrap();
    wait_until(Duration::from_secs(4), "the pass found the payment", || {
        app.row(&lost.id).state == "successful"
    })
    .await;
    assert!(
        !webhook_events(&app, &lost.id)
            .iter()
            .any(|d| d.contains("charge_finished"))
    );
    daemon.stop().await;
}

// ---- wired to discovery and the metrics -------------------------------------------------

/// With discovery on, a webhook for a konbini charge of a swept store that the ledger
/// lacks is verified by GETs and registered as discovered; `/metrics` serves the
/// Prometheus text when `metrics.auth_token` is set and presented.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_charges_go_to_discovery_and_metrics_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let textfile = dir.path().join("k.prom");
    let (app, addr) = app_with_listener(|c| {
        *c = std::mem::take(c)
            .set("discovery.stores", vec![STORE])
            .set("discovery.interval", "1h")
            .set("metrics.textfile", textfile.display().to_string())
            .set("metrics.auth_token", "metrics-0123456789abcdef");
    })
    .await;
    let fresh = app.sim.create_konbini_charge(STORE, 2400, "family_mart");
    let daemon = Daemon::start(&app, addr).await;
    let r = daemon.hook(&body("charge_updated", &fresh)).await;
    assert_eq!(r.status, 200, "{r:?}");
    let id = fresh.id.clone();
    crate::helpers::wait_until(Duration::from_secs(30), "registered as discovered", || {
        app.count(&format!(
            "SELECT count(*) FROM charges WHERE charge_id = '{id}' AND origin = 'discovered'"
        )) == 1
    })
    .await;
    let m = daemon
        .send(
            b"GET /metrics HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer metrics-0123456789abcdef\r\nConnection: close\r\n\r\n"
                .to_vec(),
        )
        .await;
    assert_eq!(m.status, 200, "{m:?}");
    assert!(m.body.contains("konbini_charges{"), "{}", m.body);
    daemon.stop().await;
}
