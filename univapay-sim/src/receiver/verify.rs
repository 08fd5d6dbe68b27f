//! Checking a delivery's Standard Webhooks v1 signature with the specification's own
//! maintained implementation (the `standardwebhooks` crate), not with code of ours.
//!
//! Two verdicts: `verified` is the library's full check (signature and a timestamp within
//! its five minutes of now); `signature_valid` is the signature alone, so a sender whose
//! clock is simulated (or a replay of an old delivery) still shows whether it signed
//! right.

use axum::http::HeaderMap;
use standardwebhooks::{HEADER_WEBHOOK_SIGNATURE, Webhook, WebhookError};

/// What the check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub verified: bool,
    pub signature_valid: bool,
    /// Why `verified` is false, as the library says it.
    pub error: Option<String>,
}

/// An endpoint's key, from a `whsec_...` secret (the base64 after the prefix).
pub(crate) fn key(secret: &str) -> Result<Webhook, String> {
    if !secret.starts_with("whsec_") {
        return Err("a Standard Webhooks secret starts with whsec_".into());
    }
    Webhook::new(secret).map_err(|e| format!("the secret is not whsec_ and base64: {e}"))
}

pub(crate) fn check(key: &Webhook, headers: &HeaderMap, body: &[u8]) -> Verdict {
    match key.verify(body, headers) {
        Ok(()) => Verdict {
            verified: true,
            signature_valid: true,
            error: None,
        },
        Err(e @ (WebhookError::TimestampTooOldError | WebhookError::FutureTimestampError)) => {
            Verdict {
                verified: false,
                signature_valid: signature_alone(key, headers, body),
                error: Some(e.to_string()),
            }
        }
        Err(e) => Verdict {
            verified: false,
            signature_valid: false,
            error: Some(e.to_string()),
        },
    }
}

/// The signature check without the timestamp window: the library's own signature of
/// `{id}.{timestamp}.{body}` compared with each `v1,` entry of the header.
fn signature_alone(key: &Webhook, headers: &HeaderMap, body: &[u8]) -> bool {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(id), Some(ts), Some(sigs)) = (
        text("webhook-id"),
        text("webhook-timestamp").and_then(|t| t.parse::<i64>().ok()),
        text(HEADER_WEBHOOK_SIGNATURE),
    ) else {
        return false;
    };
    let Ok(expected) = key.sign(id, ts, body) else {
        return false;
    };
    sigs.split(' ').any(|s| s == expected)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(id: &str, ts: &str, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("webhook-id", HeaderValue::from_str(id).unwrap());
        h.insert("webhook-timestamp", HeaderValue::from_str(ts).unwrap());
        h.insert("webhook-signature", HeaderValue::from_str(sig).unwrap());
        h
    }

    // The specification's published test vector.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: &str = "1614265330";
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn the_specification_vector_has_a_valid_signature_and_an_old_timestamp() {
        let k = key(SECRET).unwrap();
        let v = check(&k, &headers(ID, TS, SIG), BODY);
        assert!(v.signature_valid, "{v:?}");
        assert!(!v.verified, "2021 is outside the five minutes");
        assert_eq!(v.error.as_deref(), Some("signature timestamp too old"));
    }

    #[test]
    fn one_valid_signature_among_several_is_enough() {
        let k = key(SECRET).unwrap();
        let sigs = format!("v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= {SIG}");
        assert!(check(&k, &headers(ID, TS, &sigs), BODY).signature_valid);
    }

    #[test]
    fn a_changed_byte_anywhere_fails() {
        let k = key(SECRET).unwrap();
        assert!(!check(&k, &headers(ID, TS, SIG), br#"{"test": 2432232315}"#).signature_valid);
        assert!(!check(&k, &headers("msg_other", TS, SIG), BODY).signature_valid);
        assert!(!check(&k, &headers(ID, "1614265331", SIG), BODY).signature_valid);
        let other = key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSW").unwrap();
        assert!(!check(&other, &headers(ID, TS, SIG), BODY).signature_valid);
    }

    #[test]
    fn missing_headers_and_bad_secrets_are_named() {
        let k = key(SECRET).unwrap();
        let v = check(&k, &HeaderMap::new(), BODY);
        assert!(!v.signature_valid && !v.verified);
        assert_eq!(v.error.as_deref(), Some("missing header id"));
        assert!(key("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(key("whsec_not base64!").is_err());
    }
}
