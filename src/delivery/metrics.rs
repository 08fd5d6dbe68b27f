//! The delivery figures for [`crate::metrics`]: per endpoint, what is pending, how old
//! the oldest pending delivery is, and how many were delivered or failed. Read from the
//! ledger, so every process reports the same (the counters are the ledger's rows, and
//! reset only when retention prunes delivered rows). Whether an endpoint is down is the
//! one figure kept in memory: each endpoint's worker knows it ([`super::probe`]).

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, Utc};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts};

use crate::ledger::EndpointBacklog;

/// Per endpoint name, whether its worker in this process finds it down.
static DOWN: Mutex<BTreeMap<String, bool>> = Mutex::new(BTreeMap::new());

/// Records whether endpoint `name` is down (`konbini_delivery_endpoint_down`).
pub(crate) fn set_down(name: &str, down: bool) {
    let mut m = DOWN.lock().unwrap_or_else(PoisonError::into_inner);
    if m.get(name) != Some(&down) {
        m.insert(name.to_owned(), down);
    }
}

/// The endpoints this process's workers find down.
pub(crate) fn endpoints_down() -> Vec<String> {
    DOWN.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter(|(_, d)| **d)
        .map(|(n, _)| n.clone())
        .collect()
}

/// The four families, ready to register.
pub(crate) struct DeliveryFigures {
    pending: IntGaugeVec,
    down: IntGaugeVec,
    oldest: GaugeVec,
    total: IntCounterVec,
}

impl Collector for DeliveryFigures {
    fn desc(&self) -> Vec<&Desc> {
        let mut d = self.pending.desc();
        d.extend(self.down.desc());
        d.extend(self.oldest.desc());
        d.extend(self.total.desc());
        d
    }
    fn collect(&self) -> Vec<MetricFamily> {
        let mut m = self.pending.collect();
        m.extend(self.down.collect());
        m.extend(self.oldest.collect());
        m.extend(self.total.collect());
        m
    }
}

/// Seconds from an RFC 3339 time to `now` (never negative).
pub(crate) fn age(at: Option<&str>, now: DateTime<Utc>) -> Option<f64> {
    let t = DateTime::parse_from_rfc3339(at?).ok()?;
    Some(((now - t.with_timezone(&Utc)).num_milliseconds().max(0) as f64) / 1000.0)
}

/// The figures of `backlog` at `now`, with the endpoints named in `down` down.
pub(crate) fn figures(
    backlog: &[EndpointBacklog],
    down: &[String],
    now: DateTime<Utc>,
) -> Box<dyn Collector> {
    let pending = IntGaugeVec::new(
        Opts::new(
            "konbini_deliveries_pending",
            "Deliveries to the endpoint not yet answered with a 2xx.",
        ),
        &["endpoint"],
    )
    .expect("valid metric");
    let down_gauge = IntGaugeVec::new(
        Opts::new(
            "konbini_delivery_endpoint_down",
            "1 while the endpoint is down (unanswered attempts in a row; probed with one delivery at a time), else 0.",
        ),
        &["endpoint"],
    )
    .expect("valid metric");
    let oldest = GaugeVec::new(
        Opts::new(
            "konbini_delivery_oldest_pending_seconds",
            "Age of the oldest pending delivery to the endpoint (0 when none is pending).",
        ),
        &["endpoint"],
    )
    .expect("valid metric");
    let total = IntCounterVec::new(
        Opts::new(
            "konbini_deliveries_total",
            "Delivery attempts by result: delivered (a 2xx) or failed (anything else).",
        ),
        &["endpoint", "result"],
    )
    .expect("valid metric");
    for b in backlog {
        let name = b.endpoint.as_str();
        pending
            .with_label_values(&[name])
            .set(i64::try_from(b.pending).unwrap_or(i64::MAX));
        down_gauge
            .with_label_values(&[name])
            .set(i64::from(down.iter().any(|d| d == name)));
        oldest
            .with_label_values(&[name])
            .set(age(b.oldest_pending_at.as_deref(), now).unwrap_or(0.0));
        total
            .with_label_values(&[name, "delivered"])
            .inc_by(b.delivered);
        total
            .with_label_values(&[name, "failed"])
            .inc_by(b.failed_attempts);
    }
    Box::new(DeliveryFigures {
        pending,
        down: down_gauge,
        oldest,
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_endpoint_in_the_text_format() {
        let b = EndpointBacklog {
            endpoint: "shop".into(),
            pending: 3,
            oldest_pending_at: Some("2026-12-02T09:00:00.000Z".into()),
            next_attempt_at: None,
            last_success_at: None,
            last_error: None,
            last_error_at: None,
            delivered: 10,
            failed_attempts: 4,
        };
        let now = DateTime::parse_from_rfc3339("2026-12-02T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let r = prometheus::Registry::new();
        let mut other = b.clone();
        other.endpoint = "erp".into();
        r.register(figures(&[b, other], &["erp".into()], now))
            .unwrap();
        let mut text = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&r.gather(), &mut text)
            .unwrap();
        for line in [
            "konbini_deliveries_pending{endpoint=\"shop\"} 3",
            "konbini_delivery_oldest_pending_seconds{endpoint=\"shop\"} 3600",
            "konbini_deliveries_total{endpoint=\"shop\",result=\"delivered\"} 10",
            "konbini_deliveries_total{endpoint=\"shop\",result=\"failed\"} 4",
            "konbini_delivery_endpoint_down{endpoint=\"shop\"} 0",
            "konbini_delivery_endpoint_down{endpoint=\"erp\"} 1",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
    }
}
