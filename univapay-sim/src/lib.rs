//! A fake UnivaPay API for konbini-reconciler: the integration tests' fake server and the
//! standalone simulator are this one piece of code.
//!
//! It serves `GET /stores/{store_id}/charges/{charge_id}` with the JSON shapes of the real
//! API, checks `Authorization: Bearer {secret}.{app_token}` like the real API, and can be
//! told what to answer: charges are set directly ([`Sim::upsert`], [`Sim::update`]), and
//! one-shot scripted replies ([`Sim::push_reply`]) take precedence for a charge, which is
//! how tests produce 500s, timeouts, wrong ids and malformed bodies.
//!
//! It binds to 127.0.0.1 only.

use std::collections::{HashMap, VecDeque};

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A charge as the simulator holds it; rendered into UnivaPay's JSON on every GET.
#[derive(Debug, Clone, PartialEq)]
pub struct SimCharge {
    pub id: String,
    pub store_id: String,
    pub status: String,
    pub requested_amount: i64,
    pub requested_currency: String,
    pub charged_amount: Option<i64>,
    pub charged_currency: Option<String>,
    pub metadata: Value,
    pub error: Option<Value>,
    pub mode: String,
    pub created_on: String,
}

impl SimCharge {
    /// A konbini charge just created: `pending`, nothing charged yet.
    pub fn new(id: impl Into<String>, store_id: impl Into<String>, amount: i64) -> Self {
        SimCharge {
            id: id.into(),
            store_id: store_id.into(),
            status: "pending".into(),
            requested_amount: amount,
            requested_currency: "JPY".into(),
            charged_amount: None,
            charged_currency: None,
            metadata: json!({}),
            error: None,
            mode: "test".into(),
            created_on: "2026-11-27T08:00:00.123456Z".into(),
        }
    }

    /// Payment number issued: `awaiting`, with the konbini payment details in metadata.
    pub fn awaiting(mut self, payment_number: &str, slip_url: Option<&str>) -> Self {
        self.status = "awaiting".into();
        let m = self.metadata_mut();
        m.insert(
            "internal_convenience_payment_number".into(),
            json!(payment_number),
        );
        if let Some(u) = slip_url {
            m.insert("internal_convenience_payment_url".into(), json!(u));
        }
        self
    }

    /// Paid at the store: `successful`, charged exactly what was requested.
    pub fn paid(self) -> Self {
        let (amount, currency) = (self.requested_amount, self.requested_currency.clone());
        self.paid_with(amount, &currency)
    }

    /// Paid, but with the given charged amount and currency (for mismatch scenarios).
    pub fn paid_with(mut self, amount: i64, currency: &str) -> Self {
        self.status = "successful".into();
        self.charged_amount = Some(amount);
        self.charged_currency = Some(currency.into());
        self
    }

    /// The payment deadline passed: `failed` with UnivaPay's error object.
    pub fn expired(mut self) -> Self {
        self.status = "failed".into();
        self.error = Some(json!({"code": 323, "message": "payment code expired", "detail": null}));
        self
    }

    /// Any status word, verbatim.
    pub fn with_status(mut self, status: &str) -> Self {
        self.status = status.into();
        self
    }

    fn metadata_mut(&mut self) -> &mut serde_json::Map<String, Value> {
        if !self.metadata.is_object() {
            self.metadata = json!({});
        }
        self.metadata
            .as_object_mut()
            .expect("metadata is an object")
    }

    /// The charge as UnivaPay's JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "store_id": self.store_id,
            "transaction_token_id": format!("tok-{}", self.id),
            "transaction_token_type": "one_time",
            "subscription_id": null,
            "merchant_transaction_id": null,
            "requested_amount": self.requested_amount,
            "requested_currency": self.requested_currency,
            "requested_amount_formatted": self.requested_amount,
            "charged_amount": self.charged_amount,
            "charged_currency": self.charged_currency,
            "charged_amount_formatted": self.charged_amount,
            "fee_amount": null,
            "fee_currency": null,
            "fee_amount_formatted": null,
            "only_direct_currency": false,
            "capture_at": null,
            "descriptor": null,
            "descriptor_phone_number": null,
            "status": self.status,
            "error": self.error,
            "metadata": self.metadata,
            "mode": self.mode,
            "created_on": self.created_on,
        })
    }
}

/// A scripted answer, used once, ahead of the charge's normal answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// This status code and body (`application/json`).
    Raw { status: u16, body: String },
    /// This status code, body and extra headers.
    WithHeaders {
        status: u16,
        body: String,
        headers: Vec<(String, String)>,
    },
    /// 200 with this JSON, whatever the charge is.
    Json(Value),
    /// Wait this long, then answer normally (past the client timeout: a timeout).
    Delay(Duration),
    /// Send headers and part of a body, then nothing, never finishing.
    Hang,
    /// Start a 200 answer and break the connection in the middle of the body.
    Reset,
}

/// What the simulator has seen and sent.
#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    ok: AtomicU64,
    unauthorized: AtomicU64,
    not_found: AtomicU64,
    rate_limited: AtomicU64,
    scripted: AtomicU64,
}

/// A snapshot of [`Sim`]'s counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    pub requests: u64,
    pub ok: u64,
    pub unauthorized: u64,
    pub not_found: u64,
    pub rate_limited: u64,
    pub scripted: u64,
}

#[derive(Default)]
struct Data {
    charges: HashMap<String, SimCharge>,
    scripts: HashMap<String, VecDeque<Reply>>,
    per_charge_requests: HashMap<String, u64>,
}

struct Inner {
    /// The exact Authorization value a request must carry.
    expected_auth: String,
    data: Mutex<Data>,
    counters: Counters,
}

/// Credentials the simulator accepts.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub secret: String,
    pub app_token: String,
}

impl Default for Credentials {
    fn default() -> Self {
        Credentials {
            secret: "sim-secret".into(),
            // Shaped like a JWT, as real app tokens are.
            app_token: "eyJhbGciOiJIUzI1NiJ9.eyJhcHBfaWQiOiJzaW0ifQ.c2lnbmF0dXJl".into(),
        }
    }
}

/// Handle to a simulator. Clones share state.
#[derive(Clone)]
pub struct Sim {
    inner: Arc<Inner>,
}

/// A running simulator: its address and the task serving it (aborted on drop).
pub struct RunningSim {
    pub sim: Sim,
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl RunningSim {
    /// `http://127.0.0.1:{port}`, for `api.base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for RunningSim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::ops::Deref for RunningSim {
    type Target = Sim;
    fn deref(&self) -> &Sim {
        &self.sim
    }
}

impl Sim {
    pub fn new(credentials: Credentials) -> Sim {
        Sim {
            inner: Arc::new(Inner {
                expected_auth: format!("Bearer {}.{}", credentials.secret, credentials.app_token),
                data: Mutex::new(Data::default()),
                counters: Counters::default(),
            }),
        }
    }

    fn data(&self) -> MutexGuard<'_, Data> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters for a fake; keep serving.
        self.inner.data.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Binds `127.0.0.1:0` and serves until the returned handle is dropped.
    pub async fn start(credentials: Credentials) -> std::io::Result<RunningSim> {
        Sim::new(credentials)
            .serve("127.0.0.1:0".parse().expect("address"))
            .await
    }

    /// Serves on `addr` (which must be a loopback address).
    pub async fn serve(self, addr: SocketAddr) -> std::io::Result<RunningSim> {
        if !addr.ip().is_loopback() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the simulator only listens on loopback addresses",
            ));
        }
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = self.router();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(RunningSim {
            sim: self,
            addr,
            task,
        })
    }

    /// The axum router, for embedding.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/heartbeat", get(|| async { StatusCode::OK }))
            .route("/stores/{store_id}/charges/{charge_id}", get(get_charge))
            .with_state(self.clone())
    }

    /// Adds or replaces a charge.
    pub fn upsert(&self, charge: SimCharge) {
        self.data().charges.insert(charge.id.clone(), charge);
    }

    /// Changes a charge in place. Panics if there is no such charge (a test bug).
    pub fn update(&self, id: &str, f: impl FnOnce(SimCharge) -> SimCharge) {
        let mut d = self.data();
        let c = d
            .charges
            .remove(id)
            .unwrap_or_else(|| panic!("no charge {id}"));
        d.charges.insert(id.to_owned(), f(c));
    }

    /// The charge as the simulator holds it now.
    pub fn charge(&self, id: &str) -> Option<SimCharge> {
        self.data().charges.get(id).cloned()
    }

    /// Removes a charge (its GET then answers 404, like an expired test-mode charge).
    pub fn remove(&self, id: &str) {
        self.data().charges.remove(id);
    }

    /// Queues a one-shot reply for the next GET of `charge_id`.
    pub fn push_reply(&self, charge_id: &str, reply: Reply) {
        self.data()
            .scripts
            .entry(charge_id.to_owned())
            .or_default()
            .push_back(reply);
    }

    /// How many GETs arrived for this charge.
    pub fn requests_for(&self, charge_id: &str) -> u64 {
        self.data()
            .per_charge_requests
            .get(charge_id)
            .copied()
            .unwrap_or(0)
    }

    pub fn counters(&self) -> CounterSnapshot {
        let c = &self.inner.counters;
        CounterSnapshot {
            requests: c.requests.load(Ordering::Relaxed),
            ok: c.ok.load(Ordering::Relaxed),
            unauthorized: c.unauthorized.load(Ordering::Relaxed),
            not_found: c.not_found.load(Ordering::Relaxed),
            rate_limited: c.rate_limited.load(Ordering::Relaxed),
            scripted: c.scripted.load(Ordering::Relaxed),
        }
    }
}

fn error_body(code: &str) -> String {
    json!({"status": "error", "code": code, "errors": []}).to_string()
}

fn json_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

async fn get_charge(
    State(sim): State<Sim>,
    Path((store_id, charge_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let c = &sim.inner.counters;
    c.requests.fetch_add(1, Ordering::Relaxed);
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == sim.inner.expected_auth);
    if !authorized {
        c.unauthorized.fetch_add(1, Ordering::Relaxed);
        let code = if headers.contains_key(header::AUTHORIZATION) {
            "INVALID_CREDENTIALS"
        } else {
            "AUTH_HEADER_MISSING"
        };
        return json_response(StatusCode::UNAUTHORIZED, error_body(code));
    }
    let script = {
        let mut d = sim.data();
        *d.per_charge_requests.entry(charge_id.clone()).or_default() += 1;
        d.scripts.get_mut(&charge_id).and_then(VecDeque::pop_front)
    };
    if let Some(reply) = script {
        c.scripted.fetch_add(1, Ordering::Relaxed);
        match reply {
            Reply::Raw { status, body } => {
                return json_response(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    body,
                );
            }
            Reply::WithHeaders {
                status,
                body,
                headers,
            } => {
                let mut resp = json_response(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    body,
                );
                for (k, v) in headers {
                    if let (Ok(k), Ok(v)) =
                        (header::HeaderName::try_from(k), HeaderValue::try_from(v))
                    {
                        resp.headers_mut().insert(k, v);
                    }
                }
                return resp;
            }
            Reply::Json(v) => return json_response(StatusCode::OK, v.to_string()),
            Reply::Delay(d) => tokio::time::sleep(d).await,
            Reply::Hang => {
                let stream = futures_stream(vec![Ok(Bytes::from_static(b"{\"id\": \""))], true);
                return (StatusCode::OK, Body::from_stream(stream)).into_response();
            }
            Reply::Reset => {
                let stream = futures_stream(
                    vec![
                        Ok(Bytes::from_static(b"{\"id\": \"")),
                        Err(std::io::Error::new(
                            std::io::ErrorKind::ConnectionReset,
                            "simulated reset",
                        )),
                    ],
                    false,
                );
                return (
                    StatusCode::OK,
                    [(header::CONTENT_LENGTH, HeaderValue::from_static("4096"))],
                    Body::from_stream(stream),
                )
                    .into_response();
            }
        }
    }
    let charge = sim.data().charges.get(&charge_id).cloned();
    match charge {
        Some(ch) if ch.store_id == store_id => {
            c.ok.fetch_add(1, Ordering::Relaxed);
            json_response(StatusCode::OK, ch.to_json().to_string())
        }
        _ => {
            c.not_found.fetch_add(1, Ordering::Relaxed);
            json_response(StatusCode::NOT_FOUND, error_body("NOT_FOUND"))
        }
    }
}

/// A body stream yielding `items`, then either ending or pending forever.
fn futures_stream(
    items: Vec<Result<Bytes, std::io::Error>>,
    hang: bool,
) -> impl futures_core::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let mut items: VecDeque<_> = items.into();
    futures_util::stream::poll_fn(move |_cx| match items.pop_front() {
        Some(item) => std::task::Poll::Ready(Some(item)),
        None if hang => std::task::Poll::Pending,
        None => std::task::Poll::Ready(None),
    })
}
