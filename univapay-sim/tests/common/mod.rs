//! Helpers shared by the simulator's integration tests.
#![allow(dead_code)]

use std::time::Duration;

use serde_json::Value;
use univapay_sim::{Credentials, RunningSim, Sim, SimConfig};

pub const STORE: &str = "11ef0000-0000-0000-0000-000000000001";

pub fn auth() -> String {
    Credentials::default().authorization()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// A simulator with simulated time stopped (tests move it with `advance`).
pub async fn start_still(config: SimConfig) -> RunningSim {
    let sim = Sim::start_with(Credentials::default(), config)
        .await
        .unwrap();
    sim.clock().set_scale(0.0);
    sim
}

pub async fn get(sim: &RunningSim, path: &str) -> reqwest::Response {
    client()
        .get(format!("{}{path}", sim.base_url()))
        .header("Authorization", auth())
        .send()
        .await
        .unwrap()
}

pub async fn get_json(sim: &RunningSim, path: &str) -> (u16, Value) {
    let r = get(sim, path).await;
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

pub async fn post(
    sim: &RunningSim,
    path: &str,
    key: Option<&str>,
    body: &Value,
) -> reqwest::Response {
    let mut req = client()
        .post(format!("{}{path}", sim.base_url()))
        .header("Authorization", auth())
        .json(body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    req.send().await.unwrap()
}

pub fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name)?.to_str().ok()
}

pub fn is_uuid_shaped(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && s.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
}

/// Every page of a listing, following the cursor; panics past `max_pages`.
pub async fn all_pages(
    sim: &RunningSim,
    path: &str,
    query: &str,
    max_pages: usize,
) -> Vec<Vec<Value>> {
    let mut pages = vec![];
    let mut cursor: Option<String> = None;
    for _ in 0..max_pages {
        let mut q = query.to_owned();
        if let Some(c) = &cursor {
            q.push_str(&format!("&cursor={c}"));
        }
        let (status, body) = get_json(sim, &format!("{path}?{q}")).await;
        assert_eq!(status, 200, "{body}");
        let items = body["items"].as_array().unwrap().clone();
        let more = body["has_more"].as_bool().unwrap();
        let last = items.last().map(|i| {
            i.get("id")
                .or(i.get("resource_id"))
                .and_then(Value::as_str)
                .unwrap()
                .to_owned()
        });
        pages.push(items);
        if !more {
            return pages;
        }
        cursor = last;
    }
    panic!("more than {max_pages} pages");
}
