//! The seed flow over HTTP: `POST /tokens`, `GET /stores/{sid}/tokens/{id}`, `POST
//! /charges` with `Idempotency-Key`, and the lifecycle of a charge made that way.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use univapay_sim::{
    Action, IDEMPOTENCY_RETRIEVED, IDEMPOTENCY_STORED, Population, SimConfig, SimError,
};

fn konbini_token_request(brand: &str) -> Value {
    json!({
        "payment_type": "konbini",
        "type": "one_time",
        "email": "customer@example.com",
        "data": {
            "customer_name": "山田太郎",
            "phone_number": {"country_code": 81, "local_number": "0312345678"},
            "convenience_store": brand,
            "expiration_period": "P7D"
        },
        "metadata": {"order_id": "o-1"}
    })
}

async fn create_token(sim: &univapay_sim::RunningSim, brand: &str) -> Value {
    let r = post(sim, "/tokens", None, &konbini_token_request(brand)).await;
    assert_eq!(r.status(), 201);
    r.json().await.unwrap()
}

#[tokio::test]
async fn a_konbini_token_is_created_and_read_back() {
    let sim = start_still(SimConfig::default()).await;
    let r = post(
        &sim,
        "/tokens",
        None,
        &konbini_token_request("seven_eleven"),
    )
    .await;
    assert_eq!(r.status(), 201);
    assert!(header(&r, "x-remaining-requests-route").is_some());
    assert!(
        header(&r, "idempotency-status").is_none(),
        "no key, no status"
    );
    let token: Value = r.json().await.unwrap();
    let id = token["id"].as_str().unwrap();
    assert!(is_uuid_shaped(id), "{id}");
    assert_eq!(token["store_id"], STORE, "the default store");
    assert_eq!(token["payment_type"], "konbini");
    assert_eq!(token["type"], "one_time");
    assert_eq!(token["mode"], "test");
    assert_eq!(token["email"], "customer@example.com");
    assert_eq!(token["metadata"]["order_id"], "o-1");
    assert_eq!(token["data"]["convenience_store"], "seven_eleven");
    assert_eq!(token["data"]["expiration_period"], "P7D");
    assert_eq!(token["data"]["expiration_time_shift"], Value::Null);
    assert_eq!(token["data"]["phone_number"]["local_number"], "0312345678");
    assert!(token["created_on"].as_str().unwrap().ends_with('Z'));

    let (status, read) = get_json(&sim, &format!("/stores/{STORE}/tokens/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(read, token);
    let other = Population::store_id(1);
    assert_eq!(
        get(&sim, &format!("/stores/{other}/tokens/{id}"))
            .await
            .status(),
        404
    );
    assert_eq!(
        get(&sim, &format!("/stores/{STORE}/tokens/nope"))
            .await
            .status(),
        404
    );
    sim.remove_token(id);
    assert_eq!(
        get(&sim, &format!("/stores/{STORE}/tokens/{id}"))
            .await
            .status(),
        404
    );
    let c = sim.counters();
    assert_eq!((c.token_creates, c.token_gets), (1, 4));
}

#[tokio::test]
async fn token_requests_are_validated() {
    let sim = start_still(SimConfig::default()).await;
    let cases: Vec<(Value, &str)> = vec![
        (json!({"type": "one_time"}), "payment_type"),
        (json!({"payment_type": "cash", "data": {}}), "payment_type"),
        (
            {
                let mut r = konbini_token_request("lawson");
                r["data"].as_object_mut().unwrap().remove("customer_name");
                r
            },
            "data.customer_name",
        ),
        (
            konbini_token_request("corner_shop"),
            "data.convenience_store",
        ),
        (
            {
                let mut r = konbini_token_request("lawson");
                r["data"]["expiration_period"] = json!("7 days");
                r
            },
            "data.expiration_period",
        ),
        (
            {
                let mut r = konbini_token_request("lawson");
                r["data"]["phone_number"] = json!({"country_code": 81});
                r
            },
            "data.phone_number.local_number",
        ),
        (
            {
                let mut r = konbini_token_request("lawson");
                r.as_object_mut().unwrap().remove("email");
                r
            },
            "email",
        ),
        (
            {
                let mut r = konbini_token_request("lawson");
                r["store_id"] = json!("11ef0000-0000-0000-0000-0000000000ff");
                r
            },
            "store_id",
        ),
    ];
    for (body, field) in cases {
        let r = post(&sim, "/tokens", None, &body).await;
        assert_eq!(r.status(), 400, "{body}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["status"], "error");
        assert_eq!(e["errors"][0]["field"], field, "{e}");
    }
    let r = client()
        .post(format!("{}/tokens", sim.base_url()))
        .header("Authorization", auth())
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(sim.counters().token_creates, 0);

    // A store the simulator knows may be named; an added one too.
    let mut r = konbini_token_request("lawson");
    r["store_id"] = json!(Population::store_id(7));
    assert_eq!(post(&sim, "/tokens", None, &r).await.status(), 400);
    sim.add_store(&Population::store_id(7));
    let t: Value = post(&sim, "/tokens", None, &r).await.json().await.unwrap();
    assert_eq!(t["store_id"], Population::store_id(7));
}

#[tokio::test]
async fn a_card_token_keeps_only_harmless_card_details() {
    let sim = start_still(SimConfig::default()).await;
    let body = json!({
        "payment_type": "card", "type": "one_time", "email": "a@example.com",
        "data": {"cardholder": "TARO YAMADA", "card_number": "4242424242424242",
                 "exp_month": 12, "exp_year": 2030, "cvv": "123"}
    });
    let t: Value = post(&sim, "/tokens", None, &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(t["payment_type"], "card");
    assert_eq!(t["data"]["card"]["last_four"], "4242");
    assert_eq!(t["data"]["card"]["brand"], "visa");
    let text = t.to_string();
    assert!(
        !text.contains("4242424242424242") && !text.contains("cvv"),
        "{text}"
    );
}

#[tokio::test]
async fn a_charge_is_created_once_per_idempotency_key() {
    let sim = start_still(SimConfig::default()).await;
    let token = create_token(&sim, "family_mart").await;
    let body = json!({
        "transaction_token_id": token["id"], "amount": 1500, "currency": "jpy",
        "metadata": {"order_id": 42}
    });
    let r = post(&sim, "/charges", Some("key-1"), &body).await;
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "idempotency-status"), Some(IDEMPOTENCY_STORED));
    assert!(header(&r, "x-remaining-requests-route").is_some());
    let first = r.text().await.unwrap();
    let charge: Value = serde_json::from_str(&first).unwrap();
    assert!(is_uuid_shaped(charge["id"].as_str().unwrap()));
    assert_eq!(charge["status"], "pending");
    assert_eq!(charge["store_id"], STORE);
    assert_eq!(charge["transaction_token_id"], token["id"]);
    assert_eq!(charge["requested_amount"], 1500);
    assert_eq!(charge["requested_currency"], "JPY");
    assert_eq!(charge["metadata"]["order_id"], 42);
    assert!(charge["created_on"].is_string());

    // The same key and body: the stored answer, byte for byte, and no second charge.
    sim.advance(Duration::from_secs(10));
    let r = post(&sim, "/charges", Some("key-1"), &body).await;
    assert_eq!(r.status(), 201);
    assert_eq!(
        header(&r, "idempotency-status"),
        Some(IDEMPOTENCY_RETRIEVED)
    );
    assert_eq!(r.text().await.unwrap(), first);
    // The same key, another body: refused, nothing made.
    let mut other = body.clone();
    other["amount"] = json!(1600);
    let r = post(&sim, "/charges", Some("key-1"), &other).await;
    assert_eq!(r.status(), 409);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "IDEMPOTENCY_KEY_CONFLICT"
    );
    // Another key, or none: a new charge each time.
    assert_eq!(
        post(&sim, "/charges", Some("key-2"), &body).await.status(),
        201
    );
    let r = post(&sim, "/charges", None, &body).await;
    assert_eq!(r.status(), 201);
    assert!(header(&r, "idempotency-status").is_none());
    let c = sim.counters();
    assert_eq!(
        (
            c.charge_creates,
            c.idempotent_replays,
            c.idempotency_conflicts
        ),
        (3, 1, 1)
    );
    assert_eq!(sim.charges().len(), 3);
    // A key lives 24 hours.
    sim.advance(Duration::from_secs(24 * 3600));
    let r = post(&sim, "/charges", Some("key-1"), &other).await;
    assert_eq!(header(&r, "idempotency-status"), Some(IDEMPOTENCY_STORED));
}

#[tokio::test]
async fn charge_requests_are_validated() {
    let sim = start_still(SimConfig::default()).await;
    let token = create_token(&sim, "lawson").await;
    let id = token["id"].clone();
    for (body, status, field) in [
        (
            json!({"amount": 1, "currency": "JPY"}),
            400,
            "transaction_token_id",
        ),
        (
            json!({"transaction_token_id": id, "currency": "JPY"}),
            400,
            "amount",
        ),
        (
            json!({"transaction_token_id": id, "amount": 0, "currency": "JPY"}),
            400,
            "amount",
        ),
        (
            json!({"transaction_token_id": id, "amount": 5, "currency": "yen!"}),
            400,
            "currency",
        ),
        (
            json!({"transaction_token_id": "nope", "amount": 5, "currency": "JPY"}),
            404,
            "transaction_token_id",
        ),
    ] {
        let r = post(&sim, "/charges", Some(&body.to_string()), &body).await;
        assert_eq!(r.status().as_u16(), status, "{body}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["errors"][0]["field"], field, "{e}");
    }
    assert_eq!(sim.counters().charge_creates, 0);
}

#[tokio::test]
async fn a_charge_made_through_the_api_lives_its_konbini_life() {
    let sim = start_still(SimConfig::default()).await;
    let token = create_token(&sim, "seven_eleven").await;
    let body = json!({"transaction_token_id": token["id"], "amount": 800, "currency": "JPY"});
    let charge: Value = post(&sim, "/charges", None, &body)
        .await
        .json()
        .await
        .unwrap();
    let path = format!("/stores/{STORE}/charges/{}", charge["id"].as_str().unwrap());
    assert_eq!(get_json(&sim, &path).await.1["status"], "pending");
    sim.advance(Duration::from_secs(2));
    let (_, now) = get_json(&sim, &path).await;
    assert_eq!(now["status"], "awaiting");
    let number = now["metadata"]["internal_convenience_payment_number"]
        .as_str()
        .unwrap();
    assert_eq!(number.len(), 11);
    assert!(
        now["metadata"]["internal_convenience_payment_url"]
            .as_str()
            .unwrap()
            .ends_with(number)
    );
    // Stays awaiting until something happens; the token's P7D deadline expires it.
    sim.advance(Duration::from_secs(6 * 86_400));
    assert_eq!(get_json(&sim, &path).await.1["status"], "awaiting");
    sim.advance(Duration::from_secs(2 * 86_400));
    let (_, done) = get_json(&sim, &path).await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["error"]["code"], 323);

    // Another brand has no slip URL; a test pays it.
    let token = create_token(&sim, "lawson").await;
    let body = json!({"transaction_token_id": token["id"], "amount": 800, "currency": "JPY"});
    let charge: Value = post(&sim, "/charges", None, &body)
        .await
        .json()
        .await
        .unwrap();
    let id = charge["id"].as_str().unwrap();
    sim.advance(Duration::from_secs(2));
    let now = sim.charge(id).unwrap();
    assert_eq!(now.status, "awaiting");
    assert!(
        now.metadata
            .get("internal_convenience_payment_url")
            .is_none()
    );
    let paid = sim.pay_with(id, 700, "JPY").unwrap();
    assert_eq!(
        (paid.status.as_str(), paid.charged_amount),
        ("successful", Some(700))
    );
    assert_eq!(
        sim.expire(id),
        Err(SimError::AlreadyFinal {
            id: id.into(),
            status: "successful".into()
        })
    );
}

#[tokio::test]
async fn a_card_charge_is_captured_after_the_processing_delay() {
    let sim = start_still(SimConfig {
        processing_delay: Duration::from_secs(5),
        ..SimConfig::default()
    })
    .await;
    let charge = sim.create_card_charge(STORE, 2000);
    assert_eq!(charge.status, "pending");
    sim.advance(Duration::from_secs(4));
    assert_eq!(sim.charge(&charge.id).unwrap().status, "pending");
    sim.advance(Duration::from_secs(1));
    let done = sim.charge(&charge.id).unwrap();
    assert_eq!(
        (done.status.as_str(), done.charged_amount),
        ("successful", Some(2000))
    );
    assert!(
        done.metadata
            .get("internal_convenience_payment_number")
            .is_none()
    );
    let token = sim
        .token(charge.transaction_token_id.as_ref().unwrap())
        .unwrap();
    assert_eq!(token.payment_type, "card");
}

#[tokio::test]
async fn the_control_api_pays_expires_cancels_and_schedules() {
    let sim = start_still(SimConfig::default()).await;
    let a = sim.create_konbini_charge(STORE, 1000, "pay_easy");
    // Paying a pending charge issues it first.
    let paid = sim.pay(&a.id).unwrap();
    assert_eq!(paid.status, "successful");
    assert!(paid.metadata["internal_convenience_payment_number"].is_string());
    let b = sim.create_konbini_charge(STORE, 1000, "lawson");
    assert_eq!(sim.issue(&b.id).unwrap().status, "awaiting");
    assert_eq!(sim.cancel(&b.id).unwrap().status, "canceled");
    let c = sim.create_konbini_charge(STORE, 1000, "lawson");
    assert_eq!(sim.expire(&c.id).unwrap().error.unwrap()["code"], 323);
    assert_eq!(sim.pay("nope"), Err(SimError::NoSuchCharge("nope".into())));

    let d = sim.create_konbini_charge(STORE, 1000, "mini_stop");
    sim.schedule(&d.id, Duration::from_secs(3600), Action::Pay)
        .unwrap();
    sim.advance(Duration::from_secs(3599));
    assert_eq!(sim.charge(&d.id).unwrap().status, "awaiting");
    sim.advance(Duration::from_secs(1));
    assert_eq!(sim.charge(&d.id).unwrap().status, "successful");

    // A seeded charge can be driven too: it is held from then on.
    let mut p = Population::new(5, 3);
    p.spread = Duration::ZERO;
    let p = sim.seed(p);
    let plan = p.plan(0);
    let canceled = sim.cancel(&plan.id).unwrap();
    assert_eq!(canceled.status, "canceled");
    sim.advance(p.expiry * 2);
    assert_eq!(sim.charge(&plan.id).unwrap().status, "canceled");

    assert_eq!(sim.tokens().len(), 4);
    assert_eq!(sim.charges().len(), 5);
    assert_eq!(sim.counters().transitions, 2 + 2 + 1 + 2 + 1);
}

#[tokio::test]
async fn a_charge_set_directly_has_an_implied_konbini_token() {
    let sim = start_still(SimConfig::default()).await;
    let mut c = univapay_sim::SimCharge::new("c1", STORE, 500);
    c.metadata = json!({"convenience_store": "lawson"});
    sim.upsert(c);
    sim.upsert(univapay_sim::SimCharge::new("c2", STORE, 500));
    let (status, charge) = get_json(&sim, &format!("/stores/{STORE}/charges/c1")).await;
    assert_eq!(status, 200);
    assert_eq!(charge["transaction_token_id"], "tok-c1");
    let (status, token) = get_json(&sim, &format!("/stores/{STORE}/tokens/tok-c1")).await;
    assert_eq!(status, 200);
    assert_eq!(token["payment_type"], "konbini");
    assert_eq!(token["data"]["convenience_store"], "lawson");
    let (_, token) = get_json(&sim, &format!("/stores/{STORE}/tokens/tok-c2")).await;
    assert_eq!(
        token["data"]["convenience_store"],
        Value::Null,
        "brand unknown"
    );
    let other = Population::store_id(2);
    assert_eq!(
        get(&sim, &format!("/stores/{other}/tokens/tok-c1"))
            .await
            .status(),
        404
    );
    assert_eq!(
        get(&sim, &format!("/stores/{STORE}/tokens/tok-c3"))
            .await
            .status(),
        404
    );
}
