//! The delivery test receiver over HTTP: Standard Webhooks verification (the
//! specification's vector included), what it records, the answers it gives on command,
//! and its control route.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use univapay_sim::receiver::{Behaviour, Plan, Receiver, RunningReceiver};

// The Standard Webhooks specification's published test vector.
const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const SPEC_TS: &str = "1614265330";
const SPEC_BODY: &str = r#"{"test": 2432232314}"#;
const SPEC_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn sign(secret: &str, id: &str, ts: i64, body: &str) -> String {
    standardwebhooks::Webhook::new(secret)
        .unwrap()
        .sign(id, ts, body.as_bytes())
        .unwrap()
}

async fn post_raw(
    url: &str,
    id: &str,
    ts: &str,
    sig: &str,
    body: &str,
    timeout: Duration,
) -> reqwest::Result<reqwest::Response> {
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .unwrap()
        .post(url)
        .header("webhook-id", id)
        .header("webhook-timestamp", ts)
        .header("webhook-signature", sig)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
}

/// A delivery signed now with [`SECRET`].
async fn deliver(url: &str, id: &str, body: &str) -> reqwest::Result<reqwest::Response> {
    let ts = now();
    let sig = sign(SECRET, id, ts, body);
    post_raw(url, id, &ts.to_string(), &sig, body, Duration::from_secs(5)).await
}

fn event(event_id: i64, charge: &str) -> String {
    json!({"type": "charge.paid", "timestamp": "2026-12-02T10:00:00.123Z",
           "data": {"event_id": event_id, "charge_id": charge, "order_ref": "12345"}})
    .to_string()
}

async fn receiver() -> RunningReceiver {
    let rx = Receiver::start().await.unwrap();
    rx.add_endpoint("shop", SECRET).unwrap();
    rx
}

#[tokio::test]
async fn a_signed_delivery_is_verified_and_recorded() {
    let rx = receiver().await;
    let body = event(7, "ch-1");
    let r = deliver(&rx.url("shop"), "evt_7", &body).await.unwrap();
    assert_eq!(r.status(), 200);
    let ds = rx.deliveries_to("shop");
    assert_eq!(ds.len(), 1);
    let d = &ds[0];
    assert!(d.verified && d.signature_valid, "{d:?}");
    assert_eq!(d.error, None);
    assert_eq!(d.webhook_id.as_deref(), Some("evt_7"));
    assert_eq!(d.body, body);
    assert_eq!(d.attempt, 1);
    assert_eq!(d.event_type().as_deref(), Some("charge.paid"));
    assert_eq!(d.charge_id().as_deref(), Some("ch-1"));
    assert_eq!(d.event_id(), Some(7));
    assert!(d.accepted());
}

#[tokio::test]
async fn the_specification_vector_has_a_valid_signature_but_a_stale_timestamp() {
    let rx = Receiver::start().await.unwrap();
    rx.add_endpoint("spec", SPEC_SECRET).unwrap();
    let r = post_raw(
        &rx.url("spec"),
        SPEC_ID,
        SPEC_TS,
        SPEC_SIG,
        SPEC_BODY,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(
        r.status(),
        200,
        "the receiver answers as told, verified or not"
    );
    let d = &rx.deliveries_to("spec")[0];
    assert!(d.signature_valid, "{d:?}");
    assert!(!d.verified);
    assert_eq!(d.error.as_deref(), Some("signature timestamp too old"));

    // One character off in the signature: not valid.
    let bad = SPEC_SIG.replace("g0hM", "g0hN");
    post_raw(
        &rx.url("spec"),
        SPEC_ID,
        SPEC_TS,
        &bad,
        SPEC_BODY,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let d = &rx.deliveries_to("spec")[1];
    assert!(!d.signature_valid && !d.verified, "{d:?}");
    assert_eq!(d.attempt, 2, "the second delivery of that webhook-id");
}

#[tokio::test]
async fn a_delivery_signed_with_another_secret_or_unsigned_is_not_verified() {
    let rx = receiver().await;
    let body = event(1, "ch-1");
    let ts = now();
    let sig = sign(SPEC_SECRET, "evt_1", ts, &body);
    post_raw(
        &rx.url("shop"),
        "evt_1",
        &ts.to_string(),
        &sig,
        &body,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let r = reqwest::Client::new()
        .post(rx.url("shop"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ds = rx.deliveries_to("shop");
    assert!(!ds[0].verified && !ds[0].signature_valid);
    assert_eq!(ds[0].error.as_deref(), Some("signature invalid"));
    assert_eq!(ds[1].error.as_deref(), Some("missing header id"));
}

#[tokio::test]
async fn an_unknown_endpoint_is_a_404_recorded_unverified() {
    let rx = receiver().await;
    let r = deliver(&format!("{}/nowhere", rx.base_url()), "evt_1", "{}")
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let d = &rx.deliveries()[0];
    assert_eq!(d.endpoint, "nowhere");
    assert!(!d.verified && !d.accepted());
}

#[tokio::test]
async fn answers_by_attempt_then_the_default_and_duplicates_are_counted() {
    let rx = receiver().await;
    let plan = Plan {
        per_attempt: vec![
            Behaviour::Status(500),
            Behaviour::RetryAfter {
                status: 429,
                value: "120".into(),
            },
        ],
        ..Plan::default()
    };
    rx.set_plan("shop", plan).unwrap();
    let url = rx.url("shop");
    let body = event(3, "ch-1");
    let first = deliver(&url, "evt_3", &body).await.unwrap();
    assert_eq!(first.status(), 500);
    let second = deliver(&url, "evt_3", &body).await.unwrap();
    assert_eq!(second.status(), 429);
    assert_eq!(second.headers()["retry-after"], "120");
    assert_eq!(deliver(&url, "evt_3", &body).await.unwrap().status(), 200);
    assert_eq!(
        deliver(&url, "evt_4", &event(4, "ch-1"))
            .await
            .unwrap()
            .status(),
        500
    );
    assert!(
        rx.duplicates("shop").is_empty(),
        "refused attempts are no duplicates"
    );
    assert_eq!(deliver(&url, "evt_3", &body).await.unwrap().status(), 200);
    assert_eq!(rx.duplicates("shop").get("evt_3"), Some(&2));
    let attempts: Vec<u32> = rx.deliveries_to("shop").iter().map(|d| d.attempt).collect();
    assert_eq!(attempts, [1, 2, 3, 1, 4]);
    assert_eq!(rx.accepted("shop").len(), 2);
}

#[tokio::test]
async fn one_shot_answers_come_before_the_plan() {
    let rx = receiver().await;
    rx.set_plan("shop", Plan::always(Behaviour::Status(204)))
        .unwrap();
    rx.push("shop", Behaviour::Status(503)).unwrap();
    let url = rx.url("shop");
    assert_eq!(deliver(&url, "evt_1", "{}").await.unwrap().status(), 503);
    assert_eq!(deliver(&url, "evt_1", "{}").await.unwrap().status(), 204);
    assert!(rx.push("other", Behaviour::Hang).is_err());
}

#[tokio::test]
async fn hang_never_answers_so_the_sender_times_out() {
    let rx = receiver().await;
    rx.push("shop", Behaviour::Hang).unwrap();
    let started = Instant::now();
    let err = {
        let ts = now();
        let sig = sign(SECRET, "evt_1", ts, "{}");
        post_raw(
            &rx.url("shop"),
            "evt_1",
            &ts.to_string(),
            &sig,
            "{}",
            Duration::from_millis(300),
        )
        .await
        .unwrap_err()
    };
    assert!(err.is_timeout(), "{err:?}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(rx.deliveries_to("shop")[0].answer, Behaviour::Hang);
    assert!(!rx.deliveries_to("shop")[0].accepted());
}

fn has_reset(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut e: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(x) = e {
        if let Some(io) = x.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionReset
        {
            return true;
        }
        e = x.source();
    }
    false
}

#[tokio::test]
async fn reset_cuts_the_connection_before_any_answer() {
    let rx = receiver().await;
    rx.push("shop", Behaviour::Reset).unwrap();
    let err = deliver(&rx.url("shop"), "evt_1", "{}").await.unwrap_err();
    assert!(has_reset(&err), "a TCP reset, not a clean close: {err:?}");
    assert_eq!(rx.deliveries_to("shop")[0].answer, Behaviour::Reset);
    // The next delivery, on a new connection, is answered normally.
    assert_eq!(
        deliver(&rx.url("shop"), "evt_1", "{}")
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn a_slow_body_sends_its_status_at_once_and_the_rest_later() {
    let rx = receiver().await;
    let delay = Duration::from_millis(600);
    let slow = Behaviour::SlowBody {
        status: 200,
        delay_ms: 600,
    };
    rx.push("shop", slow).unwrap();
    let started = Instant::now();
    let r = deliver(&rx.url("shop"), "evt_1", "{}").await.unwrap();
    let head = started.elapsed();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    let whole = started.elapsed();
    assert_eq!(body, json!({"status": 200}));
    // The body's rest comes a delay after the status line (some slack for a loaded
    // machine, which can only make the status line late).
    assert!(whole >= delay, "{whole:?}");
    assert!(
        whole - head >= delay / 2,
        "status at {head:?}, body at {whole:?}"
    );
}

#[tokio::test]
async fn order_per_charge_is_checked_on_accepted_deliveries() {
    let rx = receiver().await;
    let url = rx.url("shop");
    for (id, charge) in [
        (1, "ch-a"),
        (5, "ch-b"),
        (2, "ch-a"),
        (2, "ch-a"),
        (3, "ch-b"),
    ] {
        deliver(&url, &format!("evt_{id}"), &event(id, charge))
            .await
            .unwrap();
    }
    let per = rx.per_charge("shop");
    let ids = |c: &str| {
        per[c]
            .iter()
            .map(|d| d.event_id().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids("ch-a"), [1, 2, 2]);
    assert_eq!(ids("ch-b"), [5, 3]);
    assert_eq!(rx.out_of_order("shop"), ["ch-b"]);
    assert_eq!(rx.duplicates("shop").get("evt_2"), Some(&2));
}

#[tokio::test]
async fn waiting_for_deliveries_returns_once_they_arrive() {
    let rx = receiver().await;
    let url = rx.url("shop");
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        deliver(&url, "evt_1", "{}").await.unwrap();
    });
    assert!(
        rx.wait_for_accepted("shop", 1, Duration::from_secs(5))
            .await
    );
    assert!(
        !rx.wait_for_accepted("shop", 2, Duration::from_millis(100))
            .await
    );
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_unrecorded() {
    let rx = receiver().await;
    let big = "x".repeat(univapay_sim::receiver::MAX_BODY + 1);
    let r = deliver(&rx.url("shop"), "evt_1", &big).await.unwrap();
    assert_eq!(r.status(), 413);
    assert!(rx.deliveries().is_empty());
}

#[tokio::test]
async fn the_control_route_adds_endpoints_sets_plans_and_reports() {
    let rx = Receiver::start().await.unwrap();
    let base = rx.base_url();
    let c = reqwest::Client::new();
    let put = |path: &str, body: Value| c.put(format!("{base}{path}")).json(&body).send();
    assert_eq!(
        put("/_receiver/endpoints/shop", json!({"secret": SECRET}))
            .await
            .unwrap()
            .status(),
        204
    );
    let bad = put("/_receiver/endpoints/shop", json!({"secret": "nope"}))
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let plan = json!({"next": [{"status": 503}], "default": {"status": 202}});
    assert_eq!(
        put("/_receiver/endpoints/shop/plan", plan.clone())
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        put("/_receiver/endpoints/none/plan", plan)
            .await
            .unwrap()
            .status(),
        404
    );

    let url = rx.url("shop");
    assert_eq!(
        deliver(&url, "evt_1", &event(1, "ch-1"))
            .await
            .unwrap()
            .status(),
        503
    );
    assert_eq!(
        deliver(&url, "evt_1", &event(1, "ch-1"))
            .await
            .unwrap()
            .status(),
        202
    );

    let list: Value = c
        .get(format!("{base}/_receiver/deliveries?endpoint=shop&after=1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["seq"], 2);
    assert_eq!(list[0]["verified"], true);
    assert_eq!(list[0]["webhook_id"], "evt_1");
    assert_eq!(list[0]["answer"], json!({"status": 202}));

    let summary: Value = c
        .get(format!("{base}/_receiver/summary"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        summary["shop"],
        json!({"received": 2, "verified": 2, "signature_valid": 2, "accepted": 1,
               "distinct_ids": 1, "duplicates_accepted": 0, "charges_out_of_order": 0})
    );
    let r = c
        .delete(format!("{base}/_receiver/deliveries"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(rx.deliveries().is_empty());
}

#[tokio::test]
async fn bad_endpoint_names_and_secrets_are_refused() {
    let rx = Receiver::new();
    assert!(rx.add_endpoint("_receiver", SECRET).is_err());
    assert!(rx.add_endpoint("a/b", SECRET).is_err());
    assert!(rx.add_endpoint("", SECRET).is_err());
    let e = rx
        .add_endpoint("shop", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        .unwrap_err();
    assert!(e.to_string().contains("whsec_"), "{e}");
    assert!(
        Receiver::new()
            .serve("0.0.0.0:0".parse().unwrap())
            .await
            .is_err()
    );
}
