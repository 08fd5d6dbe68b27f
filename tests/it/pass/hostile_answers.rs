//! Hostile answers beyond the plain error codes of `errors`: bodies past the size cap,
//! absurd amounts, answers that try to smuggle in path tricks or deep nesting, redirects to
//! another host, and a 401 in the middle of a pass. Each must leave the charge as it was
//! (unless the answer is valid), record the error, and let the pass go on.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use konbini_reconciler::ledger::Outcome;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use univapay_sim::{Credentials, Reply, Sim, SimCharge};

use crate::helpers::{STORE, TestApp, raw};

/// The client's body cap (`MAX_BODY_BYTES` in `src/univapay/client.rs`).
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// `bad` awaiting and `good` pending, both paid at the fake; `bad` then gets `reply`.
/// Asserts that `bad` kept its state and recorded an error containing `expect`, and that
/// `good` was reconciled in the same pass.
async fn assert_refused(reply: Reply, expect: &str) -> TestApp {
    let app = TestApp::spawn().await;
    app.create("bad", 1000);
    app.sim.update("bad", |c| c.awaiting("9999", None));
    app.pass().await;
    app.after_recheck();
    app.create("good", 10);
    app.sim.update("good", SimCharge::paid);
    app.sim.update("bad", SimCharge::paid);
    app.sim.push_reply("bad", reply);
    let r = app.pass().await;
    assert_eq!(r.outcome, Outcome::Ok, "{:?}", r.detail);
    assert_eq!(r.counts.errors, 1);
    let row = app.row("bad");
    assert_eq!(row.state, "awaiting", "state untouched");
    assert_eq!(row.provider_status.as_deref(), Some("awaiting"));
    assert_eq!(row.charged_amount, None);
    assert_eq!(row.amount_mismatch, 0);
    assert_eq!(row.payment_number.as_deref(), Some("9999"));
    let err = row.last_error.clone().unwrap_or_default();
    assert!(err.contains(expect), "last_error {err:?} lacks {expect:?}");
    assert!(row.next_check_at.is_some(), "still due later");
    assert_eq!(
        app.event_kinds("bad"),
        ["transition", "error"],
        "one error event, no transition"
    );
    assert_eq!(app.row("good").state, "successful", "the pass went on");
    app
}

#[tokio::test]
async fn body_over_the_cap_with_content_length_is_refused() {
    let huge = format!(
        r#"{{"id": "bad", "status": "successful", "pad": "{}"}}"#,
        "x".repeat(MAX_BODY_BYTES + 1)
    );
    assert_refused(raw(200, &huge), "larger than 1048576 bytes").await;
}

#[tokio::test]
async fn absurd_amounts_are_refused() {
    let cases = [
        (json!(1_000_000_000_000_000_i64), "charged_amount"),
        (json!(i64::MAX), "charged_amount"),
        (json!(1e15), "floating point"),
        (json!(100.5), "floating point"),
        (json!(1000.0), "floating point"),
        (json!("1000"), "invalid type"),
        (json!(true), "invalid type"),
        (json!(u64::MAX), "invalid value"),
    ];
    for (amount, expect) in cases {
        let body = json!({"id": "bad", "store_id": STORE, "status": "successful",
                          "requested_amount": 1000, "requested_currency": "JPY",
                          "charged_amount": amount, "charged_currency": "JPY"});
        assert_refused(Reply::Json(body), expect).await;
    }
    // 99999999999999999999 is outside u64 too: serde_json reads it as a float.
    assert_refused(
        raw(
            200,
            r#"{"id": "bad", "status": "successful", "charged_amount": 99999999999999999999}"#,
        ),
        "floating point",
    )
    .await;
    for (field, value) in [
        ("requested_amount", json!(-1)),
        ("requested_amount", json!(2_000_000_000_000_i64)),
    ] {
        let mut body = SimCharge::new("bad", STORE, 1000).paid().to_json();
        body[field] = value;
        assert_refused(Reply::Json(body), field).await;
    }
}

#[tokio::test]
async fn structurally_hostile_answers_are_refused() {
    let deep = format!(
        r#"{{"id": "bad", "status": "successful", "metadata": {{"a": {}1{}}}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let long_status = format!(r#"{{"id": "bad", "status": "{}"}}"#, "s".repeat(10_000));
    let cases: [(Reply, &str); 9] = [
        // Past serde_json's recursion limit: refused without exhausting the stack.
        (raw(200, &deep), "recursion limit"),
        (raw(200, &long_status), "status is empty or too long"),
        // An id that would change the meaning of a request path if it were ever used.
        (
            Reply::Json(json!({"id": "../bad", "status": "successful"})),
            "charge id",
        ),
        // Two status fields: which one is meant is ambiguous, so neither is believed.
        (
            raw(
                200,
                r#"{"id": "bad", "status": "awaiting", "status": "successful"}"#,
            ),
            "duplicate field",
        ),
        (raw(200, "null"), "not a JSON object"),
        (raw(200, "[]"), "not a JSON object"),
        // serde would read a struct from an array by position: refused before that.
        (
            raw(
                200,
                r#"["bad", null, "successful", 1000, "JPY", 1000, "JPY"]"#,
            ),
            "not a JSON object",
        ),
        (raw(200, "<html>maintenance</html>"), "not a JSON object"),
        (
            Reply::Json(json!({"id": "bad", "status": 3})),
            "not a charge object",
        ),
    ];
    for (reply, expect) in cases {
        assert_refused(reply, expect).await;
    }
}

#[tokio::test]
async fn redirect_to_another_host_is_not_followed() {
    // The other host accepts the same credentials and would answer "paid": if the request
    // went there, the charge would move and the secret would have travelled.
    let other = Sim::start(Credentials::default()).await.unwrap();
    other.upsert(SimCharge::new("bad", STORE, 1000).paid());
    for (status, host) in [
        (302, format!("127.0.0.1:{}", other.addr.port())),
        (301, format!("localhost:{}", other.addr.port())),
        (303, format!("127.0.0.1:{}", other.addr.port())),
        (307, format!("127.0.0.1:{}", other.addr.port())),
        (308, format!("127.0.0.1:{}", other.addr.port())),
    ] {
        let location = format!("http://{host}/stores/{STORE}/charges/bad");
        let app = assert_refused(
            Reply::WithHeaders {
                status,
                body: String::new(),
                headers: vec![("Location".into(), location)],
            },
            &format!("({status})"),
        )
        .await;
        assert_eq!(app.sim.requests_for("bad"), 2, "asked once per pass");
    }
    assert_eq!(
        other.counters().requests,
        0,
        "the other host saw no request, so no Authorization header reached it"
    );
}

#[tokio::test]
async fn unauthorized_mid_pass_stops_the_pass_and_keeps_what_was_done() {
    let app = TestApp::spawn_with(|c| c.api.concurrency = Some(1)).await;
    for i in 0..10 {
        let id = format!("c{i:02}");
        app.create(&id, 100);
        app.sim.update(&id, SimCharge::paid);
    }
    app.sim.push_reply(
        "c04",
        raw(
            401,
            r#"{"status":"error","code":"INVALID_APP_TOKEN","errors":[]}"#,
        ),
    );
    let r = app.pass().await;
    assert_eq!(r.outcome, Outcome::AuthFailed);
    let detail = r.detail.unwrap();
    assert!(
        detail.contains("401") && detail.contains("INVALID_APP_TOKEN"),
        "{detail}"
    );
    assert_eq!(r.counts.checked, 4, "the four before were written");
    assert_eq!(
        app.sim.counters().requests,
        5,
        "nothing asked after the 401"
    );
    for i in 0..10 {
        let id = format!("c{i:02}");
        let row = app.row(&id);
        if i < 4 {
            assert_eq!(row.state, "successful", "{id}");
        } else {
            assert_eq!(row.state, "pending", "{id}");
            assert_eq!(row.last_checked_at, None, "{id} untouched");
            assert_eq!(row.last_error, None, "{id}");
            assert!(app.events(&id).is_empty(), "{id}");
        }
    }
    assert_eq!(
        app.count("SELECT count(*) FROM runs WHERE outcome = 'auth_failed' AND checked = 4"),
        1
    );
    // The credentials are fine again: the next pass picks up where this one stopped.
    let r = app.pass().await;
    assert_eq!(r.outcome, Outcome::Ok);
    assert_eq!(r.counts.checked, 6);
    assert_eq!(
        app.count("SELECT count(*) FROM charges WHERE state = 'successful'"),
        10
    );
}

// ---- a server that does what the fake cannot: endless and oversized streamed bodies ----

/// How a [`RawServer`] answers a charge, chosen by the charge id.
/// - `endless`: a chunked 200 body that never ends on its own;
/// - `liar`: a 200 that announces 1 GiB of body and streams it;
/// - `binary`: a 200 whose body is not UTF-8;
/// - anything else: a valid `successful` charge.
struct RawServer {
    addr: std::net::SocketAddr,
    /// Body bytes the server managed to hand to the kernel for the hostile answers.
    sent: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Stop offering after this much, so that a client without a cap still ends the test.
const OFFER: u64 = 512 * 1024 * 1024;

impl RawServer {
    async fn start() -> RawServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sent = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let sent = sent.clone();
            async move {
                while let Ok((sock, _)) = listener.accept().await {
                    tokio::spawn(serve_one(sock, sent.clone()));
                }
            }
        });
        RawServer { addr, sent, task }
    }
}

async fn serve_one(mut sock: tokio::net::TcpStream, sent: Arc<AtomicU64>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let id = path.rsplit('/').next().unwrap_or("").to_owned();
    let chunk = vec![b'x'; 64 * 1024];
    match id.as_str() {
        "endless" => {
            let start = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                          transfer-encoding: chunked\r\nconnection: close\r\n\r\n";
            if sock.write_all(start).await.is_err() {
                return;
            }
            let opening: &[u8] = b"{\"id\": \"";
            let mut first = format!("{:x}\r\n", opening.len()).into_bytes();
            first.extend_from_slice(opening);
            first.extend_from_slice(b"\r\n");
            if sock.write_all(&first).await.is_err() {
                return;
            }
            while sent.load(Ordering::Relaxed) < OFFER {
                let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
                frame.extend_from_slice(&chunk);
                frame.extend_from_slice(b"\r\n");
                if sock.write_all(&frame).await.is_err() {
                    return;
                }
                sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        }
        "liar" => {
            let start = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n",
                1u64 << 30
            );
            if sock.write_all(start.as_bytes()).await.is_err() {
                return;
            }
            while sent.load(Ordering::Relaxed) < OFFER {
                if sock.write_all(&chunk).await.is_err() {
                    return;
                }
                sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        }
        "binary" => {
            let body: &[u8] = b"{\"id\": \"binary\", \"status\": \"\xff\xfe\x00\x01\"}";
            let start = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(start.as_bytes()).await;
            let _ = sock.write_all(body).await;
        }
        _ => {
            let body = SimCharge::new(id, STORE, 100).paid().to_json().to_string();
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        }
    }
    let _ = sock.shutdown().await;
}

#[tokio::test]
async fn streamed_bodies_past_the_cap_are_cut_off_not_read() {
    let server = RawServer::start().await;
    for (id, expect) in [
        ("endless", "larger than 1048576 bytes"),
        ("liar", "larger than 1048576 bytes"),
        ("binary", "not a charge object"),
    ] {
        let mut app = TestApp::spawn().await;
        app.register(id, 100);
        app.register("good", 100);
        // Talk to the raw server instead of the fake.
        app.reconfigure(|c| c.api.base_url = Some(format!("http://{}", server.addr)));
        server.sent.store(0, Ordering::Relaxed);
        let r = app.pass().await;
        assert_eq!(r.outcome, Outcome::Ok, "{id}: {:?}", r.detail);
        assert_eq!(r.counts.errors, 1, "{id}");
        let row = app.row(id);
        assert_eq!(row.state, "pending", "{id}");
        let err = row.last_error.unwrap_or_default();
        assert!(err.contains(expect), "{id}: {err}");
        assert_eq!(app.event_kinds(id), ["error"], "{id}");
        assert_eq!(
            app.row("good").state,
            "successful",
            "{id}: the pass went on"
        );
        // The cap, plus what the kernel buffers on both sides of a loopback connection,
        // is all the server could push before the client hung up; without the cap the
        // client would have taken all 512 MiB (or run into the 2 s timeout trying).
        let sent = server.sent.load(Ordering::Relaxed);
        assert!(
            sent < 48 * 1024 * 1024,
            "{id}: the client read {sent} bytes"
        );
    }
}
