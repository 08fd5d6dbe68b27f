//! One HTTP request to the listener: which route, whether the caller holds the token,
//! whether the body is a webhook we understand, and the answer. The decisions are pure
//! functions ([`route`], [`authorize`], [`parse`]); `Service::handle` strings them
//! together with the body read, whose size and time are bounded.
//!
//! Order of the checks on the webhook path: method (405), `Authorization` (401), declared
//! size (413), the body itself (413 past 64 KiB, 408 when it trickles in too slowly, 400
//! when it is not a webhook), then 200. A caller without the token never makes the
//! listener read a body.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;

use futures::future::BoxFuture;

use super::intake::Intake;
use super::listen::{Answer, Handler};
use super::{ChargeEvent, Health, Hint, MetricsRender, Stats, Throttle};
use crate::context::Context;
use crate::domain::text::one_line;
use crate::domain::{ChargeId, IdError, StoreId};

/// Largest body accepted. A charge webhook is a few KiB.
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// How long a body may take to arrive once the headers are in.
pub(crate) const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// The health check's path.
pub(crate) const HEALTH_PATH: &str = "/healthz";

/// The Prometheus scrape path.
pub(crate) const METRICS_PATH: &str = "/metrics";

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    Hook,
    Health,
    Metrics,
    /// A known path with a method it does not take; the value is the `Allow` header.
    WrongMethod(&'static str),
    NotFound,
}

/// Routes by exact path: the configured webhook path is compared as a string, so no
/// character in it can turn into a pattern.
pub(crate) fn route(hook_path: &str, method: &Method, path: &str) -> Route {
    let read = method == Method::GET || method == Method::HEAD;
    if path == hook_path {
        return if method == Method::POST {
            Route::Hook
        } else {
            Route::WrongMethod("POST")
        };
    }
    match path {
        HEALTH_PATH if read => Route::Health,
        METRICS_PATH if read => Route::Metrics,
        HEALTH_PATH | METRICS_PATH => Route::WrongMethod("GET, HEAD"),
        _ => Route::NotFound,
    }
}

/// Why a request was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    Missing,
    /// Several `Authorization` headers: ambiguous, so refused.
    Several,
    Wrong,
}

/// Whether the request carries exactly the configured `Authorization` value, compared in
/// constant time over the bytes (only a difference in length shows, which says nothing
/// about the value: the token is at least 16 characters).
pub(crate) fn authorize(headers: &HeaderMap, expected: &[u8]) -> Result<(), Refused> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let presented = values.next().ok_or(Refused::Missing)?;
    if values.next().is_some() {
        return Err(Refused::Several);
    }
    if bool::from(presented.as_bytes().ct_eq(expected)) {
        Ok(())
    } else {
        Err(Refused::Wrong)
    }
}

/// An understood webhook body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// An event naming a charge: a hint.
    Charge {
        event: ChargeEvent,
        charge_id: ChargeId,
        store_id: StoreId,
    },
    /// Any other event (tokens, subscriptions...): answered 200, not used.
    Other { event: String },
}

/// Why a body is not a webhook.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BadBody {
    #[error("not a JSON webhook object: {0}")]
    NotJson(String),
    /// A key the intake reads (`event`, `data`, `data.id`, `data.charge_id`,
    /// `data.store_id`) appears twice: which one a reader takes is a matter of parser,
    /// so neither is.
    #[error("ambiguous webhook: {0}")]
    Duplicate(String),
    #[error("{event} without a usable data.{field}: {problem}")]
    BadId {
        event: ChargeEvent,
        field: &'static str,
        problem: String,
    },
}

/// The top level. serde's derived structs refuse a key they know that appears twice.
#[derive(Deserialize)]
struct Envelope {
    event: String,
    #[serde(default)]
    data: Option<serde_json::Value>,
}

/// The keys of `data` the intake reads, parsed a second time from the same bytes so that
/// a duplicated one is refused (a [`serde_json::Value`] keeps only the last).
#[derive(Deserialize)]
struct Named {
    data: NamedData,
}

#[derive(Deserialize)]
struct NamedData {
    id: Option<serde_json::Value>,
    charge_id: Option<serde_json::Value>,
    store_id: Option<serde_json::Value>,
}

fn duplicate_or(e: serde_json::Error, other: impl FnOnce(String) -> BadBody) -> BadBody {
    let text = one_line(&e.to_string());
    if text.starts_with("duplicate field") {
        BadBody::Duplicate(text)
    } else {
        other(text)
    }
}

/// Reads a webhook body. Only the event name and `data.id` (or `data.charge_id`) and
/// `data.store_id` are taken; the status and amounts in it are never read (only a charge
/// GET is believed). A `charge_*` event names the charge in `data.id`; any other event
/// names one in `data.charge_id` (a cancel, a refund), and without it is
/// [`Parsed::Other`]. Not UTF-8, not JSON, nested deeper than serde_json's 128 levels, not
/// an object, or no `event`: [`BadBody::NotJson`]; a key read here given twice:
/// [`BadBody::Duplicate`]; ids missing or not possible ids (path characters, say):
/// [`BadBody::BadId`].
pub(crate) fn parse(body: &[u8]) -> Result<Parsed, BadBody> {
    let env: Envelope =
        serde_json::from_slice(body).map_err(|e| duplicate_or(e, BadBody::NotJson))?;
    let event = ChargeEvent::new(&env.event);
    let names_charge = env
        .data
        .as_ref()
        .is_some_and(|d| d.get("charge_id").is_some());
    if !event.carries_the_charge() && !names_charge {
        let name: String = one_line(&env.event).chars().take(64).collect();
        return Ok(Parsed::Other { event: name });
    }
    let id_field = if event.carries_the_charge() {
        "id"
    } else {
        "charge_id"
    };
    let bad = |field: &'static str, problem: String| BadBody::BadId {
        event: event.clone(),
        field,
        problem,
    };
    if !env.data.as_ref().is_some_and(serde_json::Value::is_object) {
        return Err(bad(id_field, "data is not an object".into()));
    }
    let named: Named =
        serde_json::from_slice(body).map_err(|e| duplicate_or(e, |p| bad(id_field, p)))?;
    let text = |field: &'static str, v: Option<serde_json::Value>| match v {
        Some(serde_json::Value::String(s)) => Ok(s),
        Some(_) => Err(bad(field, "not a string".into())),
        None => Err(bad(field, "missing".into())),
    };
    let d = named.data;
    let raw_id = if event.carries_the_charge() {
        d.id
    } else {
        d.charge_id
    };
    let id_err = |field: &'static str| move |e: IdError| bad(field, e.to_string());
    let charge_id = ChargeId::parse(text(id_field, raw_id)?).map_err(id_err(id_field))?;
    let store_id = StoreId::parse(text("store_id", d.store_id)?).map_err(id_err("store_id"))?;
    Ok(Parsed::Charge {
        event,
        charge_id,
        store_id,
    })
}

/// What the listener serves, shared by every connection.
pub(crate) struct Service {
    pub(crate) hook_path: String,
    pub(crate) token: SecretString,
    pub(crate) hints: mpsc::Sender<Hint>,
    pub(crate) ctx: Context,
    pub(crate) stats: Arc<Stats>,
    pub(crate) health: Health,
    /// `None`: `/metrics` answers 404 here.
    pub(crate) metrics: Option<Scrape>,
    /// Counts the hints in the channel (see [`Intake::is_settled`]).
    pub(crate) intake: Arc<Intake>,
    pub(crate) unauthorized_log: Throttle,
    pub(crate) malformed_log: Throttle,
    pub(crate) dropped_log: Throttle,
}

/// `GET /metrics`: the cached text (never the ledger), behind a bearer token when one is
/// set. Shared by the webhook listener (only with a token) and the metrics listener.
pub(crate) struct Scrape {
    pub(crate) render: MetricsRender,
    /// The whole `Authorization` value a scrape must present (`Bearer <token>`).
    pub(crate) expected: Option<SecretString>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) refused_log: Throttle,
}

/// The cached text as a body, without a copy.
struct Text(Arc<str>);

impl AsRef<[u8]> for Text {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl Scrape {
    fn answer(&self, peer: SocketAddr, headers: &HeaderMap) -> Answer {
        if let Some(expected) = &self.expected
            && authorize(headers, expected.expose_secret().as_bytes()).is_err()
        {
            Stats::bump(&self.stats.metrics_refused);
            if let Some(suppressed) = self.refused_log.allow() {
                // As for webhooks: the presented value is never logged.
                tracing::warn!(%peer, suppressed, "metrics scrape refused (401): Authorization is not Bearer metrics.auth_token");
            }
            let mut r = answer(StatusCode::UNAUTHORIZED, "unauthorized\n");
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
        match (self.render)() {
            Some(text) => {
                let mut r = Response::new(Full::new(Bytes::from_owner(Text(text))));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
            None => answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "metrics not gathered yet\n",
            ),
        }
    }
}

/// The listener of `metrics.listen`: `GET /metrics` and nothing else.
pub(crate) struct MetricsService {
    pub(crate) scrape: Scrape,
}

impl Handler for MetricsService {
    fn handle(
        self: Arc<Self>,
        peer: SocketAddr,
        req: Request<Incoming>,
    ) -> BoxFuture<'static, Result<Answer, Infallible>> {
        let read = req.method() == Method::GET || req.method() == Method::HEAD;
        let r = match (req.uri().path(), read) {
            (METRICS_PATH, true) => self.scrape.answer(peer, req.headers()),
            (METRICS_PATH, false) => wrong_method("GET, HEAD"),
            _ => answer(StatusCode::NOT_FOUND, "not found\n"),
        };
        Box::pin(std::future::ready(Ok(r)))
    }

    fn shed(&self) {
        Stats::bump(&self.scrape.stats.shed_idle);
    }
}

fn wrong_method(allow: &'static str) -> Answer {
    let mut r = answer(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

impl Handler for Service {
    fn handle(
        self: Arc<Self>,
        peer: SocketAddr,
        req: Request<Incoming>,
    ) -> BoxFuture<'static, Result<Answer, Infallible>> {
        Box::pin(self.answer(peer, req))
    }

    fn shed(&self) {
        Stats::bump(&self.stats.shed_idle);
    }
}

fn answer(status: StatusCode, text: &'static str) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

impl Service {
    /// Answers one request. Never fails: every outcome is an HTTP answer.
    pub(crate) async fn answer(
        self: Arc<Self>,
        peer: SocketAddr,
        req: Request<Incoming>,
    ) -> Result<Answer, Infallible> {
        let r = match route(&self.hook_path, req.method(), req.uri().path()) {
            Route::Hook => self.hook(peer, req).await,
            Route::Health => self.healthz(),
            Route::Metrics => match &self.metrics {
                Some(scrape) => scrape.answer(peer, req.headers()),
                None => answer(StatusCode::NOT_FOUND, "not found\n"),
            },
            Route::WrongMethod(allow) => wrong_method(allow),
            Route::NotFound => answer(StatusCode::NOT_FOUND, "not found\n"),
        };
        Ok(r)
    }

    fn healthz(&self) -> Answer {
        match self.health.problem() {
            None => answer(StatusCode::OK, "ok\n"),
            Some(why) => answer(StatusCode::SERVICE_UNAVAILABLE, why),
        }
    }

    async fn hook(&self, peer: SocketAddr, req: Request<Incoming>) -> Answer {
        if let Err(why) = authorize(req.headers(), self.token.expose_secret().as_bytes()) {
            Stats::bump(&self.stats.unauthorized);
            if let Some(suppressed) = self.unauthorized_log.allow() {
                // The presented value is never logged, only that it did not match.
                let why = match why {
                    Refused::Missing => "no Authorization header",
                    Refused::Several => "several Authorization headers",
                    Refused::Wrong => "Authorization does not match webhook.auth_token",
                };
                tracing::warn!(%peer, suppressed, "webhook refused (401): {why}");
            }
            return answer(StatusCode::UNAUTHORIZED, "unauthorized\n");
        }
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY as u64) {
            Stats::bump(&self.stats.too_large);
            return closing(answer(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n"));
        }
        let body = match read_body(req.into_body()).await {
            Ok(b) => b,
            Err(status) => {
                let counter = match status {
                    StatusCode::PAYLOAD_TOO_LARGE => &self.stats.too_large,
                    StatusCode::REQUEST_TIMEOUT => &self.stats.timed_out,
                    _ => &self.stats.malformed,
                };
                Stats::bump(counter);
                let text = match status {
                    StatusCode::PAYLOAD_TOO_LARGE => "body too large\n",
                    StatusCode::REQUEST_TIMEOUT => "body too slow\n",
                    _ => "unreadable body\n",
                };
                return closing(answer(status, text));
            }
        };
        match parse(&body) {
            Ok(Parsed::Charge {
                event,
                charge_id,
                store_id,
            }) => self.accept(event, charge_id, store_id),
            Ok(Parsed::Other { event }) => {
                Stats::bump(&self.stats.other_events);
                tracing::debug!(event = %event, "webhook event not about a charge's status; ignored");
                answer(StatusCode::OK, "ignored\n")
            }
            Err(e) => {
                Stats::bump(&self.stats.malformed);
                if let Some(suppressed) = self.malformed_log.allow() {
                    tracing::warn!(%peer, suppressed, "webhook refused (400): {e}");
                }
                answer(StatusCode::BAD_REQUEST, "malformed webhook\n")
            }
        }
    }

    /// Hands a charge hint to the intake and answers at once; the intake looks it up in
    /// the ledger and checks the charge. When the intake's queue is full the hint is
    /// dropped (counted, warned): the answer is still 200, because a failure would make
    /// UnivaPay retry into the same congestion and finally disable the webhook, and the
    /// passes check every open charge anyway.
    fn accept(&self, event: ChargeEvent, charge_id: ChargeId, store_id: StoreId) -> Answer {
        Stats::bump(&self.stats.received);
        let hint = Hint {
            charge_id,
            store_id,
            event,
            arrived: self.intake.now(),
            at: self.ctx.now(),
        };
        self.intake.unrecorded.fetch_add(1, Ordering::AcqRel);
        if self.hints.try_send(hint).is_err() {
            self.intake.unrecorded.fetch_sub(1, Ordering::AcqRel);
            Stats::bump(&self.stats.dropped);
            if let Some(suppressed) = self.dropped_log.allow() {
                tracing::warn!(
                    suppressed,
                    "webhook intake queue full; hint dropped (the scheduled passes will check the charge)"
                );
            }
        }
        answer(StatusCode::OK, "ok\n")
    }
}

/// Asks the client to close the connection after an answer given before its body was
/// read in full.
fn closing(mut r: Answer) -> Answer {
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// The body, at most [`MAX_BODY`] bytes within [`BODY_TIMEOUT`].
async fn read_body(body: Incoming) -> Result<Bytes, StatusCode> {
    let limited = Limited::new(body, MAX_BODY);
    match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
        Err(_) => Err(StatusCode::REQUEST_TIMEOUT),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(StatusCode::PAYLOAD_TOO_LARGE)
        }
        Ok(Err(_)) => Err(StatusCode::BAD_REQUEST),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn routes() {
        let p = "/univapay/webhook";
        assert_eq!(route(p, &Method::POST, p), Route::Hook);
        assert_eq!(route(p, &Method::GET, p), Route::WrongMethod("POST"));
        assert_eq!(route(p, &Method::PUT, p), Route::WrongMethod("POST"));
        assert_eq!(route(p, &Method::GET, "/healthz"), Route::Health);
        assert_eq!(route(p, &Method::HEAD, "/healthz"), Route::Health);
        assert_eq!(
            route(p, &Method::POST, "/healthz"),
            Route::WrongMethod("GET, HEAD")
        );
        assert_eq!(route(p, &Method::GET, "/metrics"), Route::Metrics);
        assert_eq!(
            route(p, &Method::POST, "/univapay/webhook/"),
            Route::NotFound
        );
        assert_eq!(route(p, &Method::POST, "/univapay"), Route::NotFound);
        assert_eq!(route(p, &Method::POST, "/"), Route::NotFound);
        // A path that would be a pattern in a router is just text here.
        let odd = "/hook/{id}/:x/*rest";
        assert_eq!(route(odd, &Method::POST, odd), Route::Hook);
        assert_eq!(
            route(odd, &Method::POST, "/hook/1/:x/*rest"),
            Route::NotFound
        );
    }

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::AUTHORIZATION, HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    #[test]
    fn only_the_exact_token_is_let_in() {
        let t = b"Bearer 0123456789abcdef";
        assert_eq!(authorize(&headers(&[t]), t), Ok(()));
        assert_eq!(authorize(&headers(&[]), t), Err(Refused::Missing));
        assert_eq!(authorize(&headers(&[t, t]), t), Err(Refused::Several));
        for wrong in [
            &b"Bearer 0123456789abcde"[..],
            b"Bearer 0123456789abcdef0",
            b"Bearer 0123456789abcdeF",
            b"bearer 0123456789abcdef",
            b"Bearer",
            b"",
            b"Bearer 0123456789abcdef\xff",
        ] {
            assert_eq!(
                authorize(&headers(&[wrong]), t),
                Err(Refused::Wrong),
                "{wrong:?}"
            );
        }
    }

    fn charge(event: &str, id: &str, store: &str) -> Parsed {
        Parsed::Charge {
            event: ChargeEvent::new(event),
            charge_id: ChargeId::parse(id).unwrap(),
            store_id: StoreId::parse(store).unwrap(),
        }
    }

    #[test]
    fn charge_events_name_their_charge_and_nothing_else_is_read() {
        let body = br#"{"event":"charge_finished","data":{"id":"c1","store_id":"s1",
            "status":"successful","charged_amount":1,"requested_amount":999999}}"#;
        assert_eq!(parse(body), Ok(charge("charge_finished", "c1", "s1")));
        let body = br#"{"id":"x","created_on":"2026-01-01","event":"charge_updated","data":{"id":"c1","store_id":"s1"}}"#;
        assert_eq!(parse(body), Ok(charge("charge_updated", "c1", "s1")));
    }

    #[test]
    fn other_events_are_understood_but_not_used() {
        let body = br#"{"event":"token_created","data":{"id":"t1"}}"#;
        assert_eq!(
            parse(body),
            Ok(Parsed::Other {
                event: "token_created".into()
            })
        );
        let body = br#"{"event":"refund_finished","data":{"id":"r1"}}"#;
        assert_eq!(
            parse(body),
            Ok(Parsed::Other {
                event: "refund_finished".into()
            })
        );
        let long = format!(r#"{{"event":"{}"}}"#, "é".repeat(100));
        let Ok(Parsed::Other { event }) = parse(long.as_bytes()) else {
            panic!()
        };
        assert_eq!(event.chars().count(), 64);
    }

    #[test]
    fn any_event_that_names_a_charge_is_a_hint() {
        let body = br#"{"event":"cancel_finished","data":{"id":"cancel-1","charge_id":"c1",
            "store_id":"s1","status":"successful"}}"#;
        assert_eq!(parse(body), Ok(charge("cancel_finished", "c1", "s1")));
        let body =
            br#"{"event":"refund_finished","data":{"id":"r1","charge_id":"c2","store_id":"s1"}}"#;
        assert_eq!(parse(body), Ok(charge("refund_finished", "c2", "s1")));
        // A name from the body is bounded and sanitised before it goes anywhere.
        let odd = format!(
            r#"{{"event":"x\u001b[2J\n{}","data":{{"charge_id":"c3","store_id":"s1"}}}}"#,
            "y".repeat(100)
        );
        let Ok(Parsed::Charge { event, .. }) = parse(odd.as_bytes()) else {
            panic!("{odd}")
        };
        assert_eq!(event.as_str(), format!("x__2J_{}", "y".repeat(42)));
        // A charge_* event names its charge in data.id, never in data.charge_id.
        let body =
            br#"{"event":"charge_updated","data":{"id":"c1","charge_id":"c9","store_id":"s1"}}"#;
        assert_eq!(parse(body), Ok(charge("charge_updated", "c1", "s1")));
    }

    #[test]
    fn a_key_the_intake_reads_given_twice_is_refused() {
        for body in [
            r#"{"event":"charge_updated","event":"charge_finished","data":{"id":"c1","store_id":"s1"}}"#,
            r#"{"event":"charge_updated","data":{"id":"c1","id":"c2","store_id":"s1"}}"#,
            r#"{"event":"charge_updated","data":{"id":"c1","store_id":"s1","store_id":"s2"}}"#,
            r#"{"event":"cancel_finished","data":{"charge_id":"c1","charge_id":"c2","store_id":"s1"}}"#,
            r#"{"event":"charge_updated","data":{"id":"c1","store_id":"s1"},"data":{"id":"c2","store_id":"s1"}}"#,
        ] {
            assert!(
                matches!(parse(body.as_bytes()), Err(BadBody::Duplicate(_))),
                "{body}: {:?}",
                parse(body.as_bytes())
            );
        }
        // Keys the intake does not read may repeat: they are never used.
        let body = br#"{"event":"charge_updated","data":{"id":"c1","status":"a","status":"b","store_id":"s1"}}"#;
        assert_eq!(parse(body), Ok(charge("charge_updated", "c1", "s1")));
    }

    #[test]
    fn bad_bodies() {
        let not_json = [
            &b""[..],
            b"{",
            b"[]",
            b"\"charge_finished\"",
            b"{\"data\":{}}",
            b"{\"event\":1}",
            b"{\"event\":\"charge_finished\xff\"}",
            b"\xff\xfe{}",
        ];
        for b in not_json {
            assert!(matches!(parse(b), Err(BadBody::NotJson(_))), "{b:?}");
        }
        let deep = format!(
            r#"{{"event":"charge_finished","data":{}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(matches!(parse(deep.as_bytes()), Err(BadBody::NotJson(_))));
        for data in [
            r#"{"id":"../../x","store_id":"s"}"#,
            r#"{"id":"a/b","store_id":"s"}"#,
            r#"{"id":"c","store_id":"s?x=1"}"#,
            r#"{"id":"c","store_id":".."}"#,
            r#"{"id":"","store_id":"s"}"#,
            r#"{"id":"c"}"#,
            r#"{"id":7,"store_id":"s"}"#,
            r#"null"#,
            r#"["c","c","s"]"#,
            r#"7"#,
        ] {
            let body = format!(r#"{{"event":"charge_updated","data":{data}}}"#);
            assert!(
                matches!(parse(body.as_bytes()), Err(BadBody::BadId { .. })),
                "{data}"
            );
        }
    }

    proptest! {
        #[test]
        fn any_bytes_parse_or_are_refused_without_panic(b in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&b);
        }
    }
}
