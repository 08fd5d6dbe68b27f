//! The answers as the official SDK (univapay-node 4.0.130) declares them: `merchant_id` on
//! charges, `merchant_name`/`store_name` on list items, a token's
//! `phone_number.country_code` as a string and no `null` for its optional fields, the
//! merchant-wide `GET /charges`, `polling=true`, and
//! `GET /stores/{sid}/charges/{id}/expiry/latest`. (The SDK itself checks them in
//! `conformance/`; these keep the shapes from regressing without node.)

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use univapay_sim::{Population, SimCharge, SimConfig};

#[tokio::test]
async fn a_charge_names_its_merchant() {
    let sim = start_still(SimConfig::default()).await;
    let c = sim.create_konbini_charge(STORE, 1200, "lawson");
    let (status, body) = get_json(&sim, &format!("/stores/{STORE}/charges/{}", c.id)).await;
    assert_eq!(status, 200);
    assert_eq!(body["merchant_id"], "11f2aa00-0000-4000-8000-00000000a11e");
}

#[tokio::test]
async fn a_konbini_token_answers_its_country_code_as_a_string_and_omits_what_it_lacks() {
    let sim = start_still(SimConfig::default()).await;
    let request = json!({
        "payment_type": "konbini", "type": "one_time", "email": "c@example.com",
        "data": {"customer_name": "Yamada", "convenience_store": "lawson",
                 "phone_number": {"country_code": 81, "local_number": "0312345678"}},
    });
    let r = post(&sim, "/tokens", None, &request).await;
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    assert_eq!(created["data"]["phone_number"]["country_code"], "81");
    let data = created["data"].as_object().unwrap();
    assert!(!data.contains_key("expiration_period"), "{data:?}");
    assert!(!data.contains_key("expiration_time_shift"), "{data:?}");
    let top = created.as_object().unwrap();
    assert!(!top.contains_key("usage_limit") && !top.contains_key("confirmed"));
    assert_eq!(created["last_used_on"], created["created_on"]);

    let seeded = sim.create_konbini_token(STORE, "family_mart");
    let (_, read) = get_json(&sim, &format!("/stores/{STORE}/tokens/{}", seeded.id)).await;
    assert_eq!(read["data"]["phone_number"]["country_code"], "81");
}

#[tokio::test]
async fn list_items_carry_the_merchant_and_store_names() {
    let sim = start_still(SimConfig::default()).await;
    sim.create_konbini_charge(STORE, 500, "lawson");
    let (status, page) = get_json(&sim, &format!("/stores/{STORE}/charges")).await;
    assert_eq!(status, 200);
    let item = &page["items"][0];
    assert_eq!(item["merchant_name"], "Sim Merchant");
    assert_eq!(item["store_name"], format!("Sim Store {STORE}"));
}

fn charge_at(id: &str, store: &str, created_on: &str) -> SimCharge {
    let mut c = SimCharge::new(id, store, 100);
    c.created_on = created_on.into();
    c
}

#[tokio::test]
async fn the_merchant_wide_list_pages_over_every_store_newest_first() {
    let sim = start_still(SimConfig::default()).await;
    let other = Population::store_id(1);
    for (id, store, at) in [
        ("c-1", STORE, "2026-11-01T00:00:01Z"),
        ("c-2", other.as_str(), "2026-11-01T00:00:02Z"),
        ("c-3", STORE, "2026-11-01T00:00:03Z"),
        ("c-4", other.as_str(), "2026-11-01T00:00:04Z"),
        ("c-5", other.as_str(), "2026-11-01T00:00:05Z"),
    ] {
        sim.upsert(charge_at(id, store, at));
    }
    let ids = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (status, first) = get_json(&sim, "/charges?limit=2").await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(ids(&first), ["c-5", "c-4"]);
    assert_eq!(first["has_more"], true);
    assert_eq!(
        first["items"][1]["store_name"],
        format!("Sim Store {other}")
    );
    let (_, second) = get_json(&sim, "/charges?limit=2&cursor=c-4").await;
    assert_eq!(ids(&second), ["c-3", "c-2"]);
    assert_eq!(second["has_more"], true);
    let (_, last) = get_json(&sim, "/charges?limit=2&cursor=c-2").await;
    assert_eq!(ids(&last), ["c-1"]);
    assert_eq!(last["has_more"], false);
    let (_, asc) = get_json(&sim, "/charges?limit=3&cursor_direction=asc").await;
    assert_eq!(ids(&asc), ["c-1", "c-2", "c-3"]);
    let (status, _) = get_json(&sim, "/charges?cursor=nope").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn polling_holds_a_pending_charge_until_it_leaves_pending() {
    let sim = start_still(SimConfig::default()).await;
    let c = sim.create_konbini_charge(STORE, 800, "lawson");
    let issuer = sim.sim.clone();
    let id = c.id.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        issuer.issue(&id).unwrap();
    });
    let started = std::time::Instant::now();
    let path = format!("/stores/{STORE}/charges/{}?polling=true", c.id);
    let (status, body) = get_json(&sim, &path).await;
    let took = started.elapsed();
    assert_eq!(status, 200);
    assert_eq!(body["status"], "awaiting", "answered once it left pending");
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_millis(2500), "{took:?}");
}

#[tokio::test]
async fn without_polling_or_past_pending_the_answer_is_immediate() {
    let sim = start_still(SimConfig::default()).await;
    let c = sim.create_konbini_charge(STORE, 800, "lawson");
    let started = std::time::Instant::now();
    let (_, body) = get_json(&sim, &format!("/stores/{STORE}/charges/{}", c.id)).await;
    assert_eq!(body["status"], "pending");
    sim.issue(&c.id).unwrap();
    let path = format!("/stores/{STORE}/charges/{}?polling=true", c.id);
    let (_, body) = get_json(&sim, &path).await;
    assert_eq!(body["status"], "awaiting");
    assert!(started.elapsed() < Duration::from_secs(1));
}

// Tokio's clock is paused, so the three held seconds pass at once; the client has no
// timeout of its own (a paused clock would fire it early).
#[tokio::test(start_paused = true)]
async fn polling_gives_up_after_about_three_seconds_and_answers_pending() {
    let sim = start_still(SimConfig::default()).await;
    let c = sim.create_konbini_charge(STORE, 800, "lawson");
    let started = tokio::time::Instant::now();
    let r = reqwest::Client::new()
        .get(format!(
            "{}/stores/{STORE}/charges/{}?polling=true",
            sim.base_url(),
            c.id
        ))
        .header("Authorization", auth())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "pending");
    let held = started.elapsed();
    assert!(held >= Duration::from_secs(3), "{held:?}");
    assert!(held < Duration::from_millis(3500), "{held:?}");
}

#[tokio::test]
async fn expiry_latest_is_the_konbini_deadline() {
    let sim = start_still(SimConfig::default()).await;
    let token = json!({
        "payment_type": "konbini", "type": "one_time", "email": "c@example.com",
        "data": {"customer_name": "Yamada", "convenience_store": "lawson",
                 "expiration_period": "P7D",
                 "phone_number": {"country_code": "81", "local_number": "0312345678"}},
    });
    let t: Value = post(&sim, "/tokens", None, &token)
        .await
        .json()
        .await
        .unwrap();
    let charge = json!({"transaction_token_id": t["id"], "amount": 900, "currency": "JPY"});
    let c: Value = post(&sim, "/charges", Some("k-1"), &charge)
        .await
        .json()
        .await
        .unwrap();
    let id = c["id"].as_str().unwrap();
    let (status, exp) =
        get_json(&sim, &format!("/stores/{STORE}/charges/{id}/expiry/latest")).await;
    assert_eq!(status, 200, "{exp}");
    assert_eq!(exp["charge_id"], id);
    assert_eq!(exp["extension_count"], 0);
    assert_eq!(exp["created_on"], c["created_on"]);
    // Seven days on, at 23:59:59 JST (14:59:59 UTC), as the simulator's deadline rule says.
    let created = chrono::DateTime::parse_from_rfc3339(c["created_on"].as_str().unwrap()).unwrap();
    let jst = chrono::FixedOffset::east_opt(9 * 3600).unwrap();
    let day = (created.with_timezone(&jst) + chrono::Duration::days(7)).date_naive();
    let expected = day
        .and_hms_opt(23, 59, 59)
        .unwrap()
        .and_local_timezone(jst)
        .unwrap();
    let got =
        chrono::DateTime::parse_from_rfc3339(exp["expiration_date"].as_str().unwrap()).unwrap();
    assert_eq!(got, expected);

    let card = sim.create_card_charge(STORE, 100);
    let (status, _) = get_json(
        &sim,
        &format!("/stores/{STORE}/charges/{}/expiry/latest", card.id),
    )
    .await;
    assert_eq!(status, 404, "a card charge has no konbini deadline");
    let other = Population::store_id(1);
    let (status, _) = get_json(&sim, &format!("/stores/{other}/charges/{id}/expiry/latest")).await;
    assert_eq!(status, 404, "another store's path");
}
