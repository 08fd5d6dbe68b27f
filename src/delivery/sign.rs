//! Standard Webhooks v1 signatures (<https://www.standardwebhooks.com/>): the
//! `webhook-signature` value is `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")),
//! the key being the base64-decoded part of the `whsec_` secret. With several secrets (a
//! rotation) every one signs and the values are joined by a space, as the specification
//! allows; a receiver accepts the delivery when any of them verifies.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretSlice};
use sha2::Sha256;

/// The prefix of a Standard Webhooks secret.
pub(crate) const SECRET_PREFIX: &str = "whsec_";

/// A decoded signing key. `Debug` never shows it.
#[derive(Clone)]
pub(crate) struct SigningKey(SecretSlice<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey([REDACTED])")
    }
}

impl SigningKey {
    /// Parses `whsec_<base64>` (the prefix may be left out, as the reference libraries
    /// allow). The error never contains the secret.
    pub(crate) fn parse(secret: &str) -> Result<SigningKey, String> {
        let b64 = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
        let bytes = STANDARD.decode(b64).map_err(|_| {
            "is not a Standard Webhooks secret (whsec_ followed by base64)".to_owned()
        })?;
        if bytes.len() < 16 {
            return Err(format!(
                "is too short: its key is {} bytes, at least 16 are needed (24 to 64 are usual)",
                bytes.len()
            ));
        }
        Ok(SigningKey(SecretSlice::from(bytes)))
    }

    /// `v1,<base64 signature>` of one message.
    pub(crate) fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        // HMAC takes keys of any length; this cannot fail.
        let mut mac = Hmac::<Sha256>::new_from_slice(self.0.expose_secret())
            .expect("HMAC accepts any key length");
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// The `webhook-signature` header: one signature per key, space-separated.
pub(crate) fn signature_header(
    keys: &[SigningKey],
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    keys.iter()
        .map(|k| k.sign(msg_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    // The specification's published test vector.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn the_published_vector() {
        let key = SigningKey::parse(SECRET).unwrap();
        assert_eq!(key.sign(ID, TS, BODY), SIGNATURE);
        let unprefixed = SigningKey::parse(&SECRET[SECRET_PREFIX.len()..]).unwrap();
        assert_eq!(unprefixed.sign(ID, TS, BODY), SIGNATURE);
    }

    #[test]
    fn any_change_changes_the_signature() {
        let key = SigningKey::parse(SECRET).unwrap();
        assert_ne!(key.sign("msg_other", TS, BODY), SIGNATURE);
        assert_ne!(key.sign(ID, TS + 1, BODY), SIGNATURE);
        assert_ne!(key.sign(ID, TS, br#"{"test": 2432232315}"#), SIGNATURE);
    }

    #[test]
    fn a_rotation_sends_both() {
        let old = SigningKey::parse(SECRET).unwrap();
        let new = SigningKey::parse("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").unwrap();
        let h = signature_header(&[new.clone(), old], ID, TS, BODY);
        let parts: Vec<&str> = h.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1], SIGNATURE);
        assert_eq!(parts[0], new.sign(ID, TS, BODY));
    }

    #[test]
    fn bad_secrets_are_refused_without_echo() {
        for bad in ["whsec_not base64!", "whsec_", "whsec_c2hvcnQ="] {
            let e = SigningKey::parse(bad).unwrap_err();
            assert!(!e.contains("base64!") && !e.contains("c2hvcnQ"), "{e}");
        }
        let key = SigningKey::parse(SECRET).unwrap();
        assert_eq!(format!("{key:?}"), "SigningKey([REDACTED])");
    }
}
