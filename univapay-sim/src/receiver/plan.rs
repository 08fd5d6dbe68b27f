//! What the receiver answers: a [`Behaviour`] per delivery, chosen by an endpoint's
//! [`Plan`]. Pure: no I/O here, so the choice is unit-tested on its own.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One answer to one delivery.
///
/// Over the control route it is JSON: `{"status": 503}`,
/// `{"retry_after": {"status": 429, "value": "120"}}`, `"hang"`, `"reset"`,
/// `{"slow_body": {"status": 200, "delay_ms": 5000}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Behaviour {
    /// This status with a short body (2xx accepts the delivery; anything else refuses it).
    Status(u16),
    /// This status with a `Retry-After` header of exactly `value` (seconds, or an HTTP
    /// date: the receiver does not check it, so a test can send a bad one too).
    RetryAfter { status: u16, value: String },
    /// Never answers: not even a status line (the sender's timeout must fire). The
    /// connection is let go after [`HANG_LIMIT`], so a sender without a timeout does not
    /// keep it for ever.
    Hang,
    /// Cuts the connection with a TCP reset before answering anything.
    Reset,
    /// The status line and headers at once, then the body's first byte, then the rest
    /// `delay_ms` later (a sender's body read must not wait for ever).
    SlowBody { status: u16, delay_ms: u64 },
}

/// How long [`Behaviour::Hang`] holds a connection at most.
pub const HANG_LIMIT: Duration = Duration::from_secs(600);

impl Behaviour {
    /// 200, the default answer.
    pub fn ok() -> Behaviour {
        Behaviour::Status(200)
    }

    /// The status the sender sees, if it sees one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Behaviour::Status(s)
            | Behaviour::RetryAfter { status: s, .. }
            | Behaviour::SlowBody { status: s, .. } => Some(*s),
            Behaviour::Hang | Behaviour::Reset => None,
        }
    }

    /// Whether the sender is told the delivery was accepted (a 2xx arrives in full, or
    /// at least its status does: a slow body's status is already the verdict).
    pub fn accepts(&self) -> bool {
        self.status().is_some_and(|s| (200..300).contains(&s))
    }
}

/// An endpoint's answers: one-shot answers first (for "the next three deliveries"), then
/// answers by attempt (the `n`-th delivery of each `webhook-id` gets `per_attempt[n-1]`,
/// for "every event fails twice, then succeeds"), then the default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    #[serde(default = "Behaviour::ok")]
    pub default: Behaviour,
    #[serde(default)]
    pub next: VecDeque<Behaviour>,
    #[serde(default)]
    pub per_attempt: Vec<Behaviour>,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            default: Behaviour::ok(),
            next: VecDeque::new(),
            per_attempt: vec![],
        }
    }
}

impl Plan {
    /// Always this answer.
    pub fn always(b: Behaviour) -> Plan {
        Plan {
            default: b,
            ..Plan::default()
        }
    }

    /// The answer to a delivery that is the `attempt`-th (from 1) of its `webhook-id`;
    /// takes a one-shot answer if one is queued.
    pub fn choose(&mut self, attempt: u32) -> Behaviour {
        if let Some(b) = self.next.pop_front() {
            return b;
        }
        let i = usize::try_from(attempt.saturating_sub(1)).unwrap_or(usize::MAX);
        self.per_attempt
            .get(i)
            .cloned()
            .unwrap_or_else(|| self.default.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_shots_come_first_then_attempts_then_the_default() {
        let mut p = Plan {
            default: Behaviour::Status(204),
            next: VecDeque::from([Behaviour::Reset]),
            per_attempt: vec![Behaviour::Status(503), Behaviour::Hang],
        };
        assert_eq!(p.choose(1), Behaviour::Reset);
        assert_eq!(p.choose(1), Behaviour::Status(503));
        assert_eq!(p.choose(2), Behaviour::Hang);
        assert_eq!(p.choose(3), Behaviour::Status(204));
        assert_eq!(
            p.choose(0),
            Behaviour::Status(503),
            "attempt 0 counts as the first"
        );
    }

    #[test]
    fn only_a_2xx_status_accepts() {
        assert!(Behaviour::Status(200).accepts());
        assert!(Behaviour::Status(299).accepts());
        assert!(
            Behaviour::SlowBody {
                status: 204,
                delay_ms: 10
            }
            .accepts()
        );
        assert!(!Behaviour::Status(300).accepts());
        assert!(
            !Behaviour::RetryAfter {
                status: 503,
                value: "1".into()
            }
            .accepts()
        );
        assert!(!Behaviour::Hang.accepts());
        assert!(!Behaviour::Reset.accepts());
    }

    #[test]
    fn the_json_forms_of_the_control_route() {
        let p: Plan = serde_json::from_str(
            r#"{"next": ["hang", "reset", {"status": 500}],
                "per_attempt": [{"retry_after": {"status": 429, "value": "120"}}],
                "default": {"slow_body": {"status": 200, "delay_ms": 5000}}}"#,
        )
        .unwrap();
        assert_eq!(
            p.next,
            [Behaviour::Hang, Behaviour::Reset, Behaviour::Status(500)]
        );
        assert_eq!(
            p.per_attempt,
            [Behaviour::RetryAfter {
                status: 429,
                value: "120".into()
            }]
        );
        assert_eq!(
            p.default,
            Behaviour::SlowBody {
                status: 200,
                delay_ms: 5000
            }
        );
        let empty: Plan = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, Plan::default());
    }
}
