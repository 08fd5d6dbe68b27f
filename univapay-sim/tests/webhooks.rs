//! Webhook delivery: a small receiver on 127.0.0.1 records what the simulator POSTs.

mod common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post as route_post;
use common::*;
use serde_json::{Value, json};
use univapay_sim::{Population, RunningSim, SimConfig, WebhookTarget};

const AUTH: &str = "Bearer wh-token-0123456789 (verbatim)";

/// One POST received: its `Authorization` value and its body.
type Post = (Option<String>, Value);

#[derive(Clone, Default)]
struct Receiver {
    posts: Arc<Mutex<Vec<Post>>>,
    /// Status codes to answer with, in order; 200 once they run out.
    answers: Arc<Mutex<VecDeque<u16>>>,
    /// Real time to wait before answering.
    slow: Arc<Mutex<Duration>>,
}

impl Receiver {
    async fn start() -> (Receiver, SocketAddr) {
        let r = Receiver::default();
        let app = Router::new()
            .route("/hook", route_post(record))
            .with_state(r.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (r, addr)
    }

    fn posts(&self) -> Vec<Post> {
        self.posts.lock().unwrap().clone()
    }

    fn events(&self) -> Vec<(String, String, String)> {
        self.posts()
            .iter()
            .map(|(_, b)| {
                let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                (s(&b["event"]), s(&b["data"]["id"]), s(&b["data"]["status"]))
            })
            .collect()
    }
}

async fn record(State(r): State<Receiver>, headers: HeaderMap, body: String) -> StatusCode {
    let slow = *r.slow.lock().unwrap();
    tokio::time::sleep(slow).await;
    let auth = headers
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_owned());
    r.posts
        .lock()
        .unwrap()
        .push((auth, serde_json::from_str(&body).unwrap()));
    let code = r.answers.lock().unwrap().pop_front().unwrap_or(200);
    StatusCode::from_u16(code).unwrap()
}

async fn sim_with(target: impl FnOnce(WebhookTarget) -> WebhookTarget) -> (RunningSim, Receiver) {
    let (receiver, addr) = Receiver::start().await;
    let target = target(WebhookTarget::new(format!("http://{addr}/hook"), AUTH));
    let sim = start_still(SimConfig {
        webhook: Some(target),
        ..SimConfig::default()
    })
    .await;
    (sim, receiver)
}

#[tokio::test]
async fn a_charge_made_through_the_api_is_reported_when_awaiting_and_when_paid() {
    let (sim, rx) = sim_with(|t| t).await;
    let token: Value = post(
        &sim,
        "/tokens",
        None,
        &json!({"payment_type": "konbini", "type": "one_time", "email": "a@example.com",
                "data": {"customer_name": "A", "convenience_store": "family_mart",
                         "phone_number": {"country_code": 81, "local_number": "0311112222"}}}),
    )
    .await
    .json()
    .await
    .unwrap();
    let charge: Value = post(
        &sim,
        "/charges",
        Some("k"),
        &json!({"transaction_token_id": token["id"], "amount": 1200, "currency": "JPY"}),
    )
    .await
    .json()
    .await
    .unwrap();
    let id = charge["id"].as_str().unwrap().to_owned();
    sim.deliver_due_webhooks().await;
    assert!(rx.posts().is_empty(), "pending makes no webhook");
    sim.advance(Duration::from_secs(2));
    sim.deliver_due_webhooks().await;
    sim.pay(&id).unwrap();
    sim.deliver_due_webhooks().await;
    assert_eq!(
        rx.events(),
        [
            ("charge_updated".into(), id.clone(), "awaiting".into()),
            ("charge_finished".into(), id.clone(), "successful".into()),
        ]
    );
    let posts = rx.posts();
    for (auth, body) in &posts {
        assert_eq!(auth.as_deref(), Some(AUTH), "sent verbatim");
        let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["data", "event"]);
        assert_eq!(body["data"]["store_id"], STORE);
        assert_eq!(body["data"]["transaction_token_id"], token["id"]);
    }
    assert!(posts[0].1["data"]["metadata"]["internal_convenience_payment_number"].is_string());
    assert_eq!(posts[1].1["data"]["charged_amount"], 1200);
    let c = sim.counters();
    assert_eq!(
        (c.webhooks_sent, c.webhooks_delivered, c.webhooks_failed),
        (2, 2, 0)
    );
}

#[tokio::test]
async fn a_failed_delivery_is_retried_after_the_backoff() {
    let (sim, rx) = sim_with(|mut t| {
        t.backoff = Duration::from_secs(10);
        t
    })
    .await;
    rx.answers.lock().unwrap().extend([500, 404]);
    let c = sim.create_konbini_charge(STORE, 500, "lawson");
    sim.issue(&c.id).unwrap();
    sim.deliver_due_webhooks().await;
    assert_eq!(rx.posts().len(), 1);
    sim.advance(Duration::from_secs(9));
    sim.deliver_due_webhooks().await;
    assert_eq!(rx.posts().len(), 1, "not before the backoff");
    sim.advance(Duration::from_secs(1));
    sim.deliver_due_webhooks().await;
    assert_eq!(rx.posts().len(), 2, "first retry, answered 404");
    sim.advance(Duration::from_secs(19));
    sim.deliver_due_webhooks().await;
    assert_eq!(rx.posts().len(), 2, "the backoff doubled");
    sim.advance(Duration::from_secs(1));
    sim.deliver_due_webhooks().await;
    let posts = rx.posts();
    assert_eq!(posts.len(), 3);
    assert!(
        posts.iter().all(|p| p.1 == posts[0].1),
        "the same body each time"
    );
    let n = sim.counters();
    assert_eq!(
        (
            n.webhooks_sent,
            n.webhooks_failed,
            n.webhooks_retried,
            n.webhooks_delivered
        ),
        (3, 2, 2, 1)
    );
    assert!(!sim.webhook_disabled());
}

#[tokio::test]
async fn out_of_retries_or_a_redirect_disables_the_webhook() {
    let (sim, rx) = sim_with(|mut t| {
        t.retries = 1;
        t.backoff = Duration::from_secs(1);
        t
    })
    .await;
    rx.answers.lock().unwrap().extend([503, 503]);
    let a = sim.create_konbini_charge(STORE, 500, "lawson");
    sim.issue(&a.id).unwrap();
    sim.deliver_due_webhooks().await;
    sim.advance(Duration::from_secs(1));
    sim.deliver_due_webhooks().await;
    assert_eq!(sim.counters().webhooks_given_up, 1);
    assert!(sim.webhook_disabled());
    sim.pay(&a.id).unwrap();
    sim.deliver_due_webhooks().await;
    assert_eq!(rx.posts().len(), 2);
    assert_eq!(sim.counters().webhooks_dropped, 1);

    sim.enable_webhook();
    rx.answers.lock().unwrap().push_back(302);
    let b = sim.create_konbini_charge(STORE, 500, "lawson");
    sim.issue(&b.id).unwrap();
    sim.deliver_due_webhooks().await;
    assert!(sim.webhook_disabled(), "a 3xx disables at once");
    assert_eq!(sim.counters().webhooks_retried, 1, "and is not retried");
}

#[tokio::test]
async fn an_answer_slower_than_the_timeout_is_a_failure() {
    let (sim, rx) = sim_with(|mut t| {
        t.timeout = Duration::from_millis(100);
        t
    })
    .await;
    *rx.slow.lock().unwrap() = Duration::from_millis(400);
    let a = sim.create_konbini_charge(STORE, 500, "lawson");
    sim.issue(&a.id).unwrap();
    sim.deliver_due_webhooks().await;
    let c = sim.counters();
    assert_eq!(
        (c.webhooks_sent, c.webhooks_failed, c.webhooks_retried),
        (1, 1, 1)
    );
}

#[tokio::test]
async fn a_loss_share_of_one_loses_everything() {
    let (sim, rx) = sim_with(|t| t.with_loss(1.0)).await;
    let mut p = Population::new(30, 2);
    p.spread = Duration::ZERO;
    let p = sim.seed(p);
    let a = sim.create_konbini_charge(STORE, 500, "lawson");
    sim.pay(&a.id).unwrap();
    sim.advance(p.expiry + Duration::from_secs(1));
    sim.deliver_due_webhooks().await;
    assert!(rx.posts().is_empty());
    let c = sim.counters();
    assert_eq!((c.webhooks_lost, c.webhooks_sent), (2 + 2 * 30, 0));
}

#[tokio::test]
async fn losses_are_reproducible_from_the_seed() {
    let mut lost = vec![];
    for _ in 0..2 {
        let (sim, rx) = sim_with(|t| t.with_loss(0.5)).await;
        let mut p = Population::new(60, 8);
        p.spread = Duration::ZERO;
        let p = sim.seed(p);
        sim.advance(p.expiry + Duration::from_secs(1));
        sim.deliver_due_webhooks().await;
        let mut got = rx.events();
        got.sort();
        assert_eq!(got.len() as u64 + sim.counters().webhooks_lost, 120);
        lost.push(got);
    }
    assert_eq!(lost[0], lost[1]);
    assert!((30..90).contains(&lost[0].len()), "{}", lost[0].len());
}

#[tokio::test]
async fn seeded_charges_are_reported_as_simulated_time_passes_their_transitions() {
    let (sim, rx) = sim_with(|t| t).await;
    let mut p = Population::new(40, 6).with_cards(30);
    p.spread = Duration::ZERO;
    let p = sim.seed(p);
    sim.advance(Duration::from_secs(31));
    sim.deliver_due_webhooks().await;
    let konbini = (0..p.count).filter(|&i| !p.is_card(i)).count();
    let updated = rx
        .events()
        .iter()
        .filter(|e| e.0 == "charge_updated")
        .count();
    assert_eq!(
        updated, konbini,
        "every konbini charge is awaiting within 30 s"
    );
    sim.advance(p.expiry);
    sim.deliver_due_webhooks().await;
    let events = rx.events();
    assert_eq!(events.len(), konbini * 2 + (p.count as usize - konbini));
    for i in 0..p.count {
        let plan = p.plan(i);
        let mine: Vec<_> = events.iter().filter(|e| e.1 == plan.id).collect();
        let last = mine.last().unwrap();
        assert_eq!(last.0, "charge_finished");
        assert_eq!(last.2, plan.status_at(plan.final_at));
        if !plan.is_card() {
            assert_eq!(mine[0].0, "charge_updated");
            assert_eq!(mine[0].2, "awaiting");
        }
    }
}

#[tokio::test]
async fn deliveries_wait_out_their_delay() {
    let (sim, rx) =
        sim_with(|t| t.with_delay(Duration::from_secs(30)..Duration::from_secs(30))).await;
    let a = sim.create_konbini_charge(STORE, 500, "lawson");
    sim.issue(&a.id).unwrap();
    sim.advance(Duration::from_secs(29));
    sim.deliver_due_webhooks().await;
    assert!(rx.posts().is_empty());
    assert_eq!(sim.webhooks_queued(), 1);
    sim.advance(Duration::from_secs(1));
    sim.deliver_due_webhooks().await;
    assert_eq!(rx.posts().len(), 1);
}

#[tokio::test]
async fn the_background_task_delivers_without_being_asked() {
    let (sim, rx) = sim_with(|t| t).await;
    sim.configure(|c| c.processing_delay = Duration::ZERO);
    let a = sim.create_konbini_charge(STORE, 500, "seven_eleven");
    for _ in 0..100 {
        if !rx.posts().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        rx.events(),
        [("charge_updated".into(), a.id, "awaiting".into())]
    );
}

#[tokio::test]
async fn the_binary_delivers_webhooks_for_its_population() {
    use tokio::io::AsyncBufReadExt;
    let (rx, addr) = Receiver::start().await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_univapay-sim"))
        .args(["--charges", "20", "--seed", "3", "--cards", "30"])
        // A simulated week in well under a second.
        .args(["--time-scale", "1000000"])
        .args(["--webhook-url", &format!("http://{addr}/hook")])
        .args(["--webhook-auth", AUTH, "--webhook-delay", "0s..30s"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next_line().await.unwrap().unwrap();
    assert!(first.starts_with("univapay-sim listening on "), "{first}");
    for _ in 0..300 {
        if rx.events().iter().any(|e| e.0 == "charge_finished") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let posts = rx.posts();
    assert!(
        posts.iter().any(|p| p.1["event"] == "charge_finished"),
        "{posts:?}"
    );
    assert!(posts.iter().all(|p| p.0.as_deref() == Some(AUTH)));
    assert!(posts.iter().all(|p| p.1["data"]["id"].is_string()));
    child.kill().await.unwrap();
}

#[test]
fn the_binary_refuses_webhook_flags_that_make_no_sense() {
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_univapay-sim"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["--webhook-url", "http://127.0.0.1:9/hook"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--webhook-auth"));
    let out = run(&["--webhook-url", "ftp://x", "--webhook-auth", "a"]);
    assert!(!out.status.success());
    let out = run(&["--webhook-auth", "a"]);
    assert!(!out.status.success(), "auth without a URL");
    let out = run(&[
        "--webhook-url",
        "http://x",
        "--webhook-auth",
        "a",
        "--webhook-delay",
        "9s..1s",
    ]);
    assert!(!out.status.success());
}
