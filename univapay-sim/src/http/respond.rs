//! Building answers: JSON bodies, UnivaPay's error body, the rate-limit headers, and the
//! broken answers (a body that never ends, a connection cut mid-body).

use std::collections::VecDeque;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::ratelimit::RateHeaders;

/// UnivaPay's error body: `{"status":"error","code":...,"errors":[]}`.
pub(crate) fn error_body(code: &str) -> String {
    json!({"status": "error", "code": code, "errors": []}).to_string()
}

pub(crate) fn json(status: StatusCode, body: String) -> Response {
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

/// An error answer with UnivaPay's body.
pub(crate) fn error(status: StatusCode, code: &str) -> Response {
    json(status, error_body(code))
}

/// An error answer naming the fields at fault:
/// `{"status":"error","code":...,"errors":[{"field":...,"reason":...}]}`.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub errors: Vec<(String, String)>,
}

impl ApiError {
    /// 400 for one field.
    pub fn invalid(field: &str, reason: &str) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "VALIDATION_ERROR",
            errors: vec![(field.into(), reason.into())],
        }
    }

    pub fn body(&self) -> String {
        let errors: Vec<_> = self
            .errors
            .iter()
            .map(|(f, r)| serde_json::json!({"field": f, "reason": r}))
            .collect();
        json!({"status": "error", "code": self.code, "errors": errors}).to_string()
    }

    pub fn response(&self) -> Response {
        json(self.status, self.body())
    }
}

impl From<crate::control::SimError> for ApiError {
    fn from(e: crate::control::SimError) -> ApiError {
        use crate::control::SimError;
        match e {
            SimError::NoSuchToken(_) => ApiError {
                status: StatusCode::NOT_FOUND,
                code: "NOT_FOUND",
                errors: vec![("transaction_token_id".into(), "NOT_FOUND".into())],
            },
            SimError::NoSuchCharge(_) => ApiError {
                status: StatusCode::NOT_FOUND,
                code: "NOT_FOUND",
                errors: vec![],
            },
            SimError::AlreadyFinal { .. } => ApiError {
                status: StatusCode::CONFLICT,
                code: "CONFLICTED",
                errors: vec![],
            },
            SimError::Invalid { field, reason } => ApiError {
                status: StatusCode::BAD_REQUEST,
                code: "VALIDATION_ERROR",
                errors: vec![(field, reason)],
            },
        }
    }
}

/// One of the four 5xx a gateway or the API itself sends, with UnivaPay's body.
pub(crate) fn server_error() -> Response {
    let (status, code) = [
        (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_SERVER_ERROR"),
        (StatusCode::BAD_GATEWAY, "BAD_GATEWAY"),
        (StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE"),
        (StatusCode::GATEWAY_TIMEOUT, "GATEWAY_TIMEOUT"),
    ][rand::random_range(0..4)];
    error(status, code)
}

/// A status code given as a number (scripted replies), 500 if it is not one.
pub(crate) fn status_from(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

pub(crate) fn add_rate_headers(resp: &mut Response, h: Option<RateHeaders>) {
    let Some(h) = h else { return };
    let hs = resp.headers_mut();
    for (name, v) in [
        ("x-remaining-requests-exact", h.remaining_exact),
        ("x-remaining-requests-route", h.remaining_route),
        ("x-requests-per-minute-exact", u64::from(h.per_minute_exact)),
        ("x-requests-per-minute-route", u64::from(h.per_minute_route)),
    ] {
        // Scripted replies may set their own values; those win.
        if !hs.contains_key(name) {
            hs.insert(name, HeaderValue::from(v));
        }
    }
}

/// Headers and the start of a body, then nothing, never finishing.
pub(crate) fn hang() -> Response {
    let stream = stream_of(vec![Ok(Bytes::from_static(b"{\"id\": \""))], true);
    (StatusCode::OK, Body::from_stream(stream)).into_response()
}

/// A 200 whose body breaks off with a connection error.
pub(crate) fn reset() -> Response {
    let stream = stream_of(
        vec![
            Ok(Bytes::from_static(b"{\"id\": \"")),
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "simulated reset",
            )),
        ],
        false,
    );
    (
        StatusCode::OK,
        // A promised length the body never reaches, so the client sees a cut, not an end.
        [(header::CONTENT_LENGTH, HeaderValue::from_static("4096"))],
        Body::from_stream(stream),
    )
        .into_response()
}

/// A body stream yielding `items`, then either ending or pending forever.
fn stream_of(
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
