//! One signed POST of one event to one endpoint, and what came of it. The client is the
//! endpoint's own (its own connections and timeout): nothing here shares UnivaPay's client
//! or budget, and a slow endpoint holds up only itself.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::sign::signature_header;
use crate::config::delivery::DeliverySettings;
use crate::domain::text::{MAX_ERROR, clean};

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Sent {
    /// A 2xx.
    Accepted { status: u16 },
    /// Anything else: an HTTP status that is not 2xx, or no answer at all.
    Refused {
        status: Option<u16>,
        error: String,
        retry_after: Option<Duration>,
    },
}

/// The `webhook-id` of an event: the same on every attempt and every replay, so the
/// receiver can drop duplicates by it.
pub(crate) fn webhook_id(event_id: i64) -> String {
    format!("evt_{event_id}")
}

/// An endpoint and its HTTP client.
#[derive(Debug, Clone)]
pub(crate) struct Sender {
    pub(crate) settings: DeliverySettings,
    client: reqwest::Client,
}

impl Sender {
    pub(crate) fn new(settings: DeliverySettings) -> Result<Sender, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
            // A 3xx is an answer like any other that is not 2xx: retried, not followed.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("konbini-reconciler/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(settings.concurrency)
            .build()?;
        Ok(Sender { settings, client })
    }

    /// POSTs `body` as message `msg_id`, signed for `now`.
    pub(crate) async fn send(&self, msg_id: &str, body: &str, now: DateTime<Utc>) -> Sent {
        let timestamp = now.timestamp();
        let signature = signature_header(&self.settings.keys, msg_id, timestamp, body.as_bytes());
        let request = self
            .client
            .post(self.settings.url.clone())
            .header("content-type", "application/json")
            .header("webhook-id", msg_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body.to_owned());
        match request.send().await {
            Ok(resp) if resp.status().is_success() => Sent::Accepted {
                status: resp.status().as_u16(),
            },
            Ok(resp) => {
                let status = resp.status();
                Sent::Refused {
                    status: Some(status.as_u16()),
                    error: format!("HTTP {status}"),
                    retry_after: retry_after(resp.headers()),
                }
            }
            Err(e) => Sent::Refused {
                status: None,
                error: clean(&describe(&e), MAX_ERROR),
                retry_after: None,
            },
        }
    }
}

/// `Retry-After` in seconds (the HTTP-date form is rare from webhook receivers and read
/// as absent).
fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = h.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// A transport error in one line, without the URL (it is the endpoint's, and shown by
/// name), with its cause.
fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_body() || e.is_decode() {
        "broken answer"
    } else {
        "request failed"
    };
    let mut cause = String::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    if cause.is_empty() {
        what.to_owned()
    } else {
        format!("{what}: {cause}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_is_the_event() {
        assert_eq!(webhook_id(4711), "evt_4711");
    }

    #[test]
    fn retry_after_in_seconds() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", "120".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(120)));
        h.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
    }
}
