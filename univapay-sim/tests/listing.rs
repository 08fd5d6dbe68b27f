//! The list routes: charge list and transaction history, paging with the cursor both
//! ways, `from`/`to`, filters, the seeded population (card charges included), and the
//! discovery faults.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use serde_json::Value;
use univapay_sim::{DiscoveryFaults, Population, RunningSim, SimConfig};

const LIST: &str = "/stores/11ef0000-0000-0000-0000-000000000001/charges";
const HISTORY: &str = "/stores/11ef0000-0000-0000-0000-000000000001/transaction_history";

/// `n` konbini charges one second apart, oldest first.
fn make_charges(sim: &RunningSim, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            sim.advance(Duration::from_secs(1));
            sim.create_konbini_charge(STORE, 100 + i as i64, "lawson")
                .id
        })
        .collect()
}

fn ids(pages: &[Vec<Value>]) -> Vec<String> {
    pages
        .iter()
        .flatten()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn pages_through_more_than_a_hundred_charges_both_ways() {
    let sim = start_still(SimConfig::default()).await;
    let made = make_charges(&sim, 250);
    let (status, body) = get_json(&sim, LIST).await;
    assert_eq!(status, 200);
    assert_eq!(body["items"].as_array().unwrap().len(), 10, "default limit");
    assert_eq!(body["has_more"], true);
    assert_eq!(body["items"][0]["id"], made[249].as_str(), "newest first");

    let desc = all_pages(&sim, LIST, "limit=100", 10).await;
    assert_eq!(
        desc.iter().map(Vec::len).collect::<Vec<_>>(),
        [100, 100, 50]
    );
    let mut newest_first = made.clone();
    newest_first.reverse();
    assert_eq!(ids(&desc), newest_first);

    let asc = all_pages(&sim, LIST, "limit=100&cursor_direction=asc", 10).await;
    assert_eq!(ids(&asc), made);
    let (_, last) = get_json(&sim, &format!("{LIST}?cursor={}", made[0])).await;
    assert_eq!(last["items"].as_array().unwrap().len(), 0);
    assert_eq!(last["has_more"], false);

    for bad in [
        "limit=0",
        "limit=101",
        "limit=x",
        "cursor_direction=up",
        "cursor=nope",
        "from=soon",
    ] {
        let (status, e) = get_json(&sim, &format!("{LIST}?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {e}");
    }
    assert_eq!(sim.counters().charge_lists, 1 + 3 + 3 + 1 + 6);
}

#[tokio::test]
async fn from_and_to_bound_created_on_inclusively() {
    let sim = start_still(SimConfig::default()).await;
    let made = make_charges(&sim, 30);
    let created = |i: usize| sim.charge(&made[i]).unwrap().created_on;
    let (from, to) = (created(5), created(14));
    let q = format!("limit=7&from={from}&to={to}");
    let desc = ids(&all_pages(&sim, LIST, &q, 10).await);
    assert_eq!(desc, made[5..=14].iter().rev().cloned().collect::<Vec<_>>());
    let asc = ids(&all_pages(&sim, LIST, &format!("{q}&cursor_direction=asc"), 10).await);
    assert_eq!(asc, made[5..=14].to_vec());
    // Epoch milliseconds work too (a bound in milliseconds is that millisecond's start).
    let ms = |s: String| {
        chrono::DateTime::parse_from_rfc3339(&s)
            .unwrap()
            .timestamp_millis()
    };
    let q = format!(
        "limit=100&from={}&to={}",
        ms(created(20)),
        ms(created(29)) + 1
    );
    assert_eq!(ids(&all_pages(&sim, LIST, &q, 2).await).len(), 10);
    // A charge list also filters by token.
    let tok = sim.charge(&made[3]).unwrap().transaction_token_id.unwrap();
    let (_, one) = get_json(&sim, &format!("{LIST}?transaction_token_id={tok}")).await;
    assert_eq!(
        ids(&[one["items"].as_array().unwrap().clone()]),
        [made[3].clone()]
    );
}

#[tokio::test]
async fn the_seeded_population_is_listed_with_held_charges() {
    let sim = start_still(SimConfig::default()).await;
    let p = sim.seed(Population::new(600, 9).with_cards(20));
    sim.advance(Duration::from_secs(60));
    let held = make_charges(&sim, 3);
    let seeded: HashSet<String> = (0..p.count)
        .map(|i| p.plan(i))
        .filter(|c| c.store_id == STORE)
        .map(|c| c.id)
        .collect();
    let listed = ids(&all_pages(&sim, LIST, "limit=100", 20).await);
    assert_eq!(listed.len(), seeded.len() + 3);
    assert_eq!(
        listed[..3],
        [held[2].clone(), held[1].clone(), held[0].clone()]
    );
    assert_eq!(listed[3..].iter().cloned().collect::<HashSet<_>>(), seeded);
    // Newest first throughout.
    let (_, page) = get_json(&sim, &format!("{LIST}?limit=100")).await;
    let times: Vec<i64> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            chrono::DateTime::parse_from_rfc3339(c["created_on"].as_str().unwrap())
                .unwrap()
                .timestamp_micros()
        })
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]));
    // A seeded charge a test changed is listed once, as changed; a removed one not at all.
    let some: Vec<&String> = seeded.iter().take(2).collect();
    sim.update(some[0], |c| c.with_status("canceled"));
    sim.remove(some[1]);
    let listed = ids(&all_pages(&sim, LIST, "limit=100&cursor_direction=asc", 20).await);
    assert_eq!(listed.len(), seeded.len() + 2);
    assert_eq!(listed.iter().filter(|i| *i == some[0]).count(), 1);
    assert!(!listed.contains(some[1]));
}

#[tokio::test]
async fn history_rows_carry_the_payment_type_and_filter_by_it() {
    let sim = start_still(SimConfig::default()).await;
    let p = sim.seed(Population::new(400, 4).with_cards(25));
    sim.advance(Duration::from_secs(60));
    let in_store: Vec<_> = (0..p.count)
        .map(|i| p.plan(i))
        .filter(|c| c.store_id == STORE)
        .collect();
    let cards = in_store.iter().filter(|c| c.is_card()).count();
    assert!(
        cards > 10 && cards < in_store.len() / 2,
        "{cards} of {}",
        in_store.len()
    );
    let card_token = sim.create_card_token(STORE);
    sim.create_charge(&card_token.id, 999, "JPY", Value::Null)
        .unwrap();

    let rows = |q: &str| {
        let q = q.to_owned();
        let sim = &sim;
        async move {
            all_pages(sim, HISTORY, &format!("limit=100&{q}"), 20)
                .await
                .concat()
        }
    };
    let card_rows = rows("payment_type=card").await;
    assert_eq!(card_rows.len(), cards + 1);
    assert!(
        card_rows
            .iter()
            .all(|r| r["payment_type"] == "card" && r["service_provider"] == "card")
    );
    let konbini = rows("payment_type=konbini").await;
    assert_eq!(konbini.len(), in_store.len() - cards);
    for r in &konbini {
        assert_eq!(r["service_provider"], "convenience");
        assert!(
            univapay_sim::CHAINS.contains(&r["user_data"]["convenience_store"].as_str().unwrap())
        );
        assert!(r["user_data"]["customer_name"].is_string());
        assert_eq!(r["resource_id"], r["charge_id"]);
        assert_eq!(r["type"], "charge");
        assert!(r["amount"].is_i64() && r["currency"] == "JPY" && r["created_on"].is_string());
    }
    assert_eq!(
        rows("service_provider=convenience").await.len(),
        konbini.len()
    );
    assert_eq!(rows("type=refund").await.len(), 0);
    let pending = rows("status=pending").await;
    assert_eq!(pending.len(), 1, "the API card charge, still processing");
    let awaiting = rows("status=awaiting&payment_type=konbini").await;
    assert!(awaiting.iter().all(|r| r["status"] == "awaiting"));
    // The token GET agrees with the history row.
    let plan = in_store.iter().find(|c| c.is_card()).unwrap();
    let (_, token) = get_json(&sim, &format!("/stores/{STORE}/tokens/{}", plan.token_id)).await;
    assert_eq!(token["payment_type"], "card");
    let plan = in_store.iter().find(|c| !c.is_card()).unwrap();
    let (_, token) = get_json(&sim, &format!("/stores/{STORE}/tokens/{}", plan.token_id)).await;
    assert_eq!(token["data"]["convenience_store"], plan.chain);
    assert_eq!(token["data"]["expiration_period"], "P7D");
    assert_eq!(
        sim.charge(&plan.id)
            .unwrap()
            .transaction_token_id
            .as_deref(),
        Some(plan.token_id.as_str())
    );
}

#[tokio::test]
async fn cards_change_nothing_else_in_a_population() {
    let plain = Population::new(2000, 5);
    let mut with_cards = Population::new(2000, 5).with_cards(10);
    with_cards.epoch = plain.epoch;
    let mut cards = 0;
    for i in 0..plain.count {
        let (a, b) = (plain.plan(i), with_cards.plan(i));
        assert!(!a.is_card());
        assert_eq!(
            (&a.id, &a.store_id, a.amount, a.created),
            (&b.id, &b.store_id, b.amount, b.created)
        );
        if b.is_card() {
            cards += 1;
        } else {
            assert_eq!(a, b);
        }
    }
    assert!((100..260).contains(&cards), "{cards}");
}

async fn faulty(faults: DiscoveryFaults) -> RunningSim {
    let sim = start_still(SimConfig {
        discovery_faults: faults,
        ..SimConfig::default()
    })
    .await;
    make_charges(&sim, 25);
    sim
}

#[tokio::test]
async fn discovery_faults_bend_the_pages() {
    let sim = faulty(DiscoveryFaults {
        empty_has_more: true,
        ..Default::default()
    })
    .await;
    let (_, b) = get_json(&sim, &format!("{LIST}?cursor=whatever")).await;
    assert_eq!(
        (b["items"].as_array().unwrap().len(), &b["has_more"]),
        (0, &Value::Bool(true))
    );

    let sim = faulty(DiscoveryFaults {
        looping_cursor: true,
        ..Default::default()
    })
    .await;
    let (_, first) = get_json(&sim, &format!("{HISTORY}?limit=10")).await;
    let last = first["items"][9]["resource_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, again) = get_json(&sim, &format!("{HISTORY}?limit=10&cursor={last}")).await;
    assert_eq!(first, again);
    assert_eq!(again["has_more"], true);

    let sim = faulty(DiscoveryFaults {
        repeat_items: true,
        ..Default::default()
    })
    .await;
    let (_, first) = get_json(&sim, &format!("{LIST}?limit=5")).await;
    let items = first["items"].as_array().unwrap();
    assert_eq!(items.len(), 6);
    assert_eq!(items[0], items[5]);
    let last = items[4]["id"].as_str().unwrap();
    let (_, next) = get_json(&sim, &format!("{LIST}?limit=5&cursor={last}")).await;
    assert_eq!(next["items"][0]["id"], last);

    let sim = faulty(DiscoveryFaults {
        items_without_ids: true,
        ..Default::default()
    })
    .await;
    let (_, page) = get_json(&sim, &format!("{HISTORY}?limit=9")).await;
    let missing: Vec<usize> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .filter(|(_, r)| r.get("resource_id").is_none() && r.get("charge_id").is_none())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(missing, [2, 5, 8]);

    let sim = faulty(DiscoveryFaults {
        huge_page: Some(10_000),
        ..Default::default()
    })
    .await;
    let text = get(&sim, &format!("{LIST}?limit=10"))
        .await
        .text()
        .await
        .unwrap();
    // Counted, not parsed: parsing 7 MB in a debug build is most of a second.
    assert_eq!(text.matches("\"requested_amount\":").count(), 10_000);
    assert!(text.starts_with("{\"items\":[{") && text.ends_with("],\"has_more\":false}"));

    let sim = faulty(DiscoveryFaults {
        unknown_payment_type: true,
        ..Default::default()
    })
    .await;
    let rows = all_pages(&sim, HISTORY, "limit=100&payment_type=konbini", 2)
        .await
        .concat();
    assert_eq!(rows.len(), 25, "the filter sees the real type");
    let odd = rows
        .iter()
        .filter(|r| r["payment_type"] == "sim_unknown")
        .count();
    assert!(odd > 0 && odd < 25, "{odd}");

    let sim = faulty(DiscoveryFaults {
        token_not_found: 1.0,
        ..Default::default()
    })
    .await;
    let token = sim.charges()[0].transaction_token_id.clone().unwrap();
    assert_eq!(
        get(&sim, &format!("/stores/{STORE}/tokens/{token}"))
            .await
            .status(),
        404
    );
    sim.configure(|c| c.discovery_faults.token_not_found = 0.0);
    assert_eq!(
        get(&sim, &format!("/stores/{STORE}/tokens/{token}"))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn every_route_spends_its_own_bucket() {
    let sim = start_still(SimConfig {
        rate_limit: Some(univapay_sim::RateLimitConfig::new(2, 1)),
        ..SimConfig::default()
    })
    .await;
    let c = sim.create_konbini_charge(STORE, 100, "lawson");
    for path in [
        LIST.to_owned(),
        HISTORY.to_owned(),
        format!("{LIST}/{}", c.id),
    ] {
        let statuses: Vec<u16> = {
            let mut v = vec![];
            for _ in 0..3 {
                let r = get(&sim, &path).await;
                assert!(header(&r, "x-requests-per-minute-route").is_some());
                v.push(r.status().as_u16());
            }
            v
        };
        assert_eq!(statuses, [200, 200, 429], "{path}");
    }
    let c = sim.counters();
    assert_eq!(
        (
            c.api_requests,
            c.api_rate_limited,
            c.requests,
            c.rate_limited
        ),
        (9, 3, 3, 1)
    );
}
