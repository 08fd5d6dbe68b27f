//! A test receiver for konbini-reconciler's outbound signed deliveries (Standard Webhooks
//! v1): it verifies each delivery with the specification's maintained implementation
//! (the `standardwebhooks` crate), records it, and answers as it is told, per endpoint
//! or per attempt. The tests start it on `127.0.0.1:0`; the `sim-webhook-receiver`
//! binary serves it standalone for the demo and the benchmark.
//!
//! # Rust API
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use std::time::Duration;
//! use univapay_sim::receiver::{Behaviour, Plan, Receiver};
//!
//! let rx = Receiver::start().await?;                  // 127.0.0.1:0
//! rx.add_endpoint("shop", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
//! let url = rx.url("shop");                            // http://127.0.0.1:PORT/shop
//! rx.set_plan("shop", Plan::always(Behaviour::Status(503))).unwrap(); // all refused
//! rx.push("shop", Behaviour::Hang).unwrap();           // ... the next one never answered
//! rx.set_plan("shop", Plan {                          // each event: 500, reset, then 200
//!     per_attempt: vec![Behaviour::Status(500), Behaviour::Reset],
//!     ..Plan::default()
//! }).unwrap();
//! // ... point the sender at `url`, run it ...
//! rx.wait_for_accepted("shop", 3, Duration::from_secs(10)).await;
//! let all = rx.deliveries_to("shop");                  // every attempt, in arrival order
//! assert!(all.iter().all(|d| d.verified));
//! assert!(rx.out_of_order("shop").is_empty());         // per charge, event ids ascending
//! let dups = rx.duplicates("shop");                    // webhook-id accepted more than once
//! let per_charge = rx.per_charge("shop");              // charge id -> accepted deliveries
//! # Ok(()) }
//! ```
//! An endpoint is a path, `POST /{name}`; a delivery to a name never added is answered
//! 404 and recorded unverified. Each [`Delivery`] holds the `webhook-id`,
//! `webhook-timestamp` and `webhook-signature` headers as sent, the body (at most
//! [`MAX_BODY`] bytes; a larger one is refused with 413 and not recorded), `verified`
//! (the library's full check, five minutes of timestamp tolerance included),
//! `signature_valid` (the signature alone, for a sender on simulated time), its arrival
//! (wall clock, and tokio's clock for tests that pause it), which attempt of its
//! `webhook-id` it was at that endpoint, and what it was answered. At most
//! [`MAX_DELIVERIES`] are kept; later ones are answered but only counted
//! ([`Receiver::unrecorded`]).
//!
//! What it answers is a [`Plan`] per endpoint: one-shot answers first ([`Receiver::push`]),
//! then answers by attempt number, then the default (200). The [`Behaviour`]s: any
//! status, a status with `Retry-After`, never answering ([`Behaviour::Hang`]), a TCP
//! reset before any byte ([`Behaviour::Reset`]), a body that trickles
//! ([`Behaviour::SlowBody`]).
//!
//! # Control route (the benchmark's, and by hand)
//! On the same listener, under `/_receiver/` (so endpoint names may not start with `_`):
//! - `PUT /_receiver/endpoints/{name}` `{"secret": "whsec_..."}`: add or re-key one;
//! - `PUT /_receiver/endpoints/{name}/plan` with a [`Plan`] as JSON, e.g.
//!   `{"default": {"status": 503}, "next": ["hang", "reset"],
//!   "per_attempt": [{"retry_after": {"status": 429, "value": "120"}}]}`;
//! - `GET /_receiver/deliveries[?endpoint=NAME][&after=SEQ]`: up to 1000 deliveries as
//!   JSON, oldest first, from just after `SEQ`;
//! - `GET /_receiver/summary`: per endpoint, how many arrived, verified, accepted,
//!   distinct `webhook-id`s, duplicates accepted, charges out of order;
//! - `DELETE /_receiver/deliveries`: forget what was received.

mod plan;
mod serve;
mod verify;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub use plan::{Behaviour, HANG_LIMIT, Plan};
pub use verify::Verdict;

/// The largest body recorded; a larger delivery is refused with 413.
pub const MAX_BODY: usize = 1 << 20;

/// The most deliveries kept.
pub const MAX_DELIVERIES: usize = 200_000;

/// One delivery as it arrived.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    /// Arrival order over the whole receiver, from 1.
    pub seq: u64,
    pub endpoint: String,
    pub webhook_id: Option<String>,
    pub webhook_timestamp: Option<String>,
    pub webhook_signature: Option<String>,
    /// The body, as text (invalid UTF-8 replaced).
    pub body: String,
    /// The library's full verdict: signature and timestamp window.
    pub verified: bool,
    /// The signature alone.
    pub signature_valid: bool,
    /// Why it is not verified.
    pub error: Option<String>,
    pub received_at: DateTime<Utc>,
    /// Arrival on tokio's clock (controlled in a test that pauses it).
    #[serde(skip)]
    pub received: tokio::time::Instant,
    /// The how-many-th delivery of this `webhook-id` to this endpoint, from 1.
    pub attempt: u32,
    /// What it was answered.
    pub answer: Behaviour,
}

impl Delivery {
    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.body).ok()
    }

    /// The payload's `type` (`charge.paid`, ...).
    pub fn event_type(&self) -> Option<String> {
        Some(self.json()?.get("type")?.as_str()?.to_owned())
    }

    /// The payload's `data.charge_id`.
    pub fn charge_id(&self) -> Option<String> {
        Some(
            self.json()?
                .pointer("/data/charge_id")?
                .as_str()?
                .to_owned(),
        )
    }

    /// The payload's `data.event_id`.
    pub fn event_id(&self) -> Option<i64> {
        self.json()?.pointer("/data/event_id")?.as_i64()
    }

    /// Whether the sender was told it was accepted (answered 2xx).
    pub fn accepted(&self) -> bool {
        self.answer.accepts()
    }
}

/// An endpoint's secret (as a key, never printed) and its plan.
struct Endpoint {
    key: standardwebhooks::Webhook,
    plan: Plan,
}

#[derive(Default)]
struct State {
    endpoints: HashMap<String, Endpoint>,
    deliveries: Vec<Delivery>,
    /// Deliveries per (endpoint, webhook-id) so far: the attempt number of the next.
    attempts: HashMap<(String, String), u32>,
    seq: u64,
    unrecorded: u64,
}

pub(crate) struct Inner {
    state: Mutex<State>,
    /// Woken on every recorded delivery, for [`Receiver::wait_until`].
    arrived: Notify,
}

/// Handle to a receiver. Clones share state.
#[derive(Clone)]
pub struct Receiver {
    inner: Arc<Inner>,
}

/// A running receiver: its address and the task serving it (aborted on drop).
pub struct RunningReceiver {
    pub receiver: Receiver,
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl RunningReceiver {
    /// `http://127.0.0.1:{port}`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The URL of an endpoint: `http://127.0.0.1:{port}/{name}`.
    pub fn url(&self, name: &str) -> String {
        format!("http://{}/{name}", self.addr)
    }
}

impl Drop for RunningReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::ops::Deref for RunningReceiver {
    type Target = Receiver;
    fn deref(&self) -> &Receiver {
        &self.receiver
    }
}

/// An endpoint name or secret that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiverError {
    #[error("endpoint name {0:?}: use letters, digits, '-' and '_', not starting with '_'")]
    BadName(String),
    #[error("endpoint {name:?}: {reason}")]
    BadSecret { name: String, reason: String },
    #[error("no endpoint {0:?}")]
    NoSuchEndpoint(String),
}

impl Default for Receiver {
    fn default() -> Self {
        Receiver::new()
    }
}

impl Receiver {
    pub fn new() -> Receiver {
        Receiver {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                arrived: Notify::new(),
            }),
        }
    }

    /// Binds `127.0.0.1:0` and serves until the handle is dropped.
    pub async fn start() -> std::io::Result<RunningReceiver> {
        Receiver::new()
            .serve("127.0.0.1:0".parse().expect("address"))
            .await
    }

    /// Serves on `addr`, which must be a loopback address.
    pub async fn serve(self, addr: SocketAddr) -> std::io::Result<RunningReceiver> {
        let (addr, task) = serve::spawn(self.clone(), addr).await?;
        Ok(RunningReceiver {
            receiver: self,
            addr,
            task,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic under the lock leaves at worst one delivery half-recorded; keep serving.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds an endpoint `POST /{name}` whose deliveries are checked against `secret`
    /// (`whsec_` and base64), answering 200 until told otherwise. Adding it again changes
    /// only its secret.
    pub fn add_endpoint(&self, name: &str, secret: &str) -> Result<(), ReceiverError> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && !name.starts_with('_')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            return Err(ReceiverError::BadName(name.into()));
        }
        let key = verify::key(secret).map_err(|reason| ReceiverError::BadSecret {
            name: name.into(),
            reason,
        })?;
        let mut s = self.state();
        match s.endpoints.get_mut(name) {
            Some(e) => e.key = key,
            None => {
                let plan = Plan::default();
                s.endpoints.insert(name.into(), Endpoint { key, plan });
            }
        }
        Ok(())
    }

    /// Replaces an endpoint's plan.
    pub fn set_plan(&self, name: &str, plan: Plan) -> Result<(), ReceiverError> {
        let mut s = self.state();
        let e = s
            .endpoints
            .get_mut(name)
            .ok_or_else(|| ReceiverError::NoSuchEndpoint(name.into()))?;
        e.plan = plan;
        Ok(())
    }

    /// Queues a one-shot answer for the endpoint's next delivery.
    pub fn push(&self, name: &str, b: Behaviour) -> Result<(), ReceiverError> {
        let mut s = self.state();
        let e = s
            .endpoints
            .get_mut(name)
            .ok_or_else(|| ReceiverError::NoSuchEndpoint(name.into()))?;
        e.plan.next.push_back(b);
        Ok(())
    }

    /// Every delivery, in arrival order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.state().deliveries.clone()
    }

    /// The deliveries to one endpoint, in arrival order.
    pub fn deliveries_to(&self, name: &str) -> Vec<Delivery> {
        let s = self.state();
        s.deliveries
            .iter()
            .filter(|d| d.endpoint == name)
            .cloned()
            .collect()
    }

    /// The deliveries to one endpoint that were accepted (answered 2xx).
    pub fn accepted(&self, name: &str) -> Vec<Delivery> {
        let mut all = self.deliveries_to(name);
        all.retain(Delivery::accepted);
        all
    }

    /// An endpoint's accepted deliveries per `data.charge_id`, each in arrival order.
    pub fn per_charge(&self, name: &str) -> BTreeMap<String, Vec<Delivery>> {
        let mut out: BTreeMap<String, Vec<Delivery>> = BTreeMap::new();
        for d in self.accepted(name) {
            if let Some(c) = d.charge_id() {
                out.entry(c).or_default().push(d);
            }
        }
        out
    }

    /// The charges whose accepted deliveries at this endpoint arrived with a
    /// `data.event_id` lower than one accepted before it (a repeat of the same event is
    /// not out of order).
    pub fn out_of_order(&self, name: &str) -> Vec<String> {
        self.per_charge(name)
            .into_iter()
            .filter(|(_, ds)| {
                let ids: Vec<i64> = ds.iter().filter_map(Delivery::event_id).collect();
                ids.windows(2).any(|w| w[1] < w[0])
            })
            .map(|(c, _)| c)
            .collect()
    }

    /// The `webhook-id`s accepted more than once at this endpoint, with how many times.
    pub fn duplicates(&self, name: &str) -> BTreeMap<String, u32> {
        let mut n: BTreeMap<String, u32> = BTreeMap::new();
        for d in self.accepted(name) {
            if let Some(id) = d.webhook_id {
                *n.entry(id).or_default() += 1;
            }
        }
        n.retain(|_, c| *c > 1);
        n
    }

    /// Deliveries answered but not recorded (past [`MAX_DELIVERIES`]).
    pub fn unrecorded(&self) -> u64 {
        self.state().unrecorded
    }

    /// Forgets what was received (endpoints and plans stay).
    pub fn clear(&self) {
        let mut s = self.state();
        s.deliveries.clear();
        s.attempts.clear();
    }

    /// Waits until `done` holds for the deliveries so far, or `timeout` passes (on tokio's
    /// clock). Returns whether it holds.
    pub async fn wait_until(&self, timeout: Duration, done: impl Fn(&[Delivery]) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let arrived = self.inner.arrived.notified();
            if done(&self.state().deliveries) {
                return true;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return done(&self.state().deliveries);
            }
        }
    }

    /// Waits until `n` deliveries to `name` were accepted.
    pub async fn wait_for_accepted(&self, name: &str, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |ds| {
            ds.iter()
                .filter(|d| d.endpoint == name && d.accepted())
                .count()
                >= n
        })
        .await
    }

    /// Checks and records one delivery, and chooses its answer. A delivery to an
    /// endpoint never added is recorded unverified and answered 404.
    pub(crate) fn receive(&self, endpoint: &str, headers: &HeaderMap, body: &[u8]) -> Behaviour {
        let header = |name: &str| {
            let v = headers.get(name)?;
            Some(
                String::from_utf8_lossy(v.as_bytes())
                    .chars()
                    .take(1024)
                    .collect(),
            )
        };
        let webhook_id: Option<String> = header("webhook-id");
        let mut s = self.state();
        let (verdict, attempt, answer) = match s.endpoints.get(endpoint) {
            Some(e) => {
                let verdict = verify::check(&e.key, headers, body);
                let key = (endpoint.to_owned(), webhook_id.clone().unwrap_or_default());
                let n = s.attempts.entry(key).or_default();
                *n += 1;
                let attempt = *n;
                let answer = match s.endpoints.get_mut(endpoint) {
                    Some(e) => e.plan.choose(attempt),
                    None => Behaviour::ok(),
                };
                (verdict, attempt, answer)
            }
            None => {
                let verdict = Verdict {
                    verified: false,
                    signature_valid: false,
                    error: Some("no such endpoint".into()),
                };
                (verdict, 1, Behaviour::Status(404))
            }
        };
        s.seq += 1;
        if s.deliveries.len() >= MAX_DELIVERIES {
            s.unrecorded += 1;
        } else {
            let d = Delivery {
                seq: s.seq,
                endpoint: endpoint.chars().take(64).collect(),
                webhook_id,
                webhook_timestamp: header("webhook-timestamp"),
                webhook_signature: header("webhook-signature"),
                body: String::from_utf8_lossy(body).into_owned(),
                verified: verdict.verified,
                signature_valid: verdict.signature_valid,
                error: verdict.error,
                received_at: Utc::now(),
                received: tokio::time::Instant::now(),
                attempt,
                answer: answer.clone(),
            };
            s.deliveries.push(d);
        }
        drop(s);
        self.inner.arrived.notify_waiters();
        answer
    }

    /// Deliveries recorded after `after` (a [`Delivery::seq`]), to one endpoint or all, at
    /// most `limit`.
    pub fn deliveries_after(
        &self,
        after: u64,
        endpoint: Option<&str>,
        limit: usize,
    ) -> Vec<Delivery> {
        let s = self.state();
        let start = s.deliveries.partition_point(|d| d.seq <= after);
        s.deliveries[start..]
            .iter()
            .filter(|d| endpoint.is_none_or(|e| d.endpoint == e))
            .take(limit)
            .cloned()
            .collect()
    }

    /// The summary the control route serves: per endpoint, counts.
    pub fn summary(&self) -> BTreeMap<String, Summary> {
        let names: Vec<String> = self.state().endpoints.keys().cloned().collect();
        names
            .into_iter()
            .map(|name| {
                let all = self.deliveries_to(&name);
                let distinct: std::collections::HashSet<_> =
                    all.iter().filter_map(|d| d.webhook_id.clone()).collect();
                let summary = Summary {
                    received: all.len(),
                    verified: all.iter().filter(|d| d.verified).count(),
                    signature_valid: all.iter().filter(|d| d.signature_valid).count(),
                    accepted: all.iter().filter(|d| d.accepted()).count(),
                    distinct_ids: distinct.len(),
                    duplicates_accepted: self.duplicates(&name).len(),
                    charges_out_of_order: self.out_of_order(&name).len(),
                };
                (name, summary)
            })
            .collect()
    }
}

/// What one endpoint received, in counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub received: usize,
    pub verified: usize,
    pub signature_valid: usize,
    pub accepted: usize,
    pub distinct_ids: usize,
    pub duplicates_accepted: usize,
    pub charges_out_of_order: usize,
}
