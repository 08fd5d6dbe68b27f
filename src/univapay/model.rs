//! The charge object as UnivaPay sends it, read leniently, then checked into
//! [`ProviderCharge`], the only shape the rest of the crate sees.
//!
//! Lenient means: unknown fields are ignored, `error` may be null, missing, `{}` or an
//! object, `charged_*` may be null, `fee_amount_formatted` may be a number or a string and
//! `metadata` values may be of any JSON type. Checked means: the id is there and is an id,
//! the status is a string, amounts are whole numbers in a sane range and currencies are
//! three letters. Anything else is a malformed answer.
//!
//! Text the rest of the crate may store or log is made safe here ([`crate::domain::text`]):
//! an unknown status word and the provider error's code are cleaned and capped at
//! [`MAX_WORD`], its message and every parse error at [`MAX_ERROR`]. The payment number
//! and slip URL are checked for shape, not cleaned: a value that is not one is refused
//! whole (see [`ProviderCharge::payment_number`]).

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::domain::text::{
    MAX_ERROR, MAX_WORD, clean, is_clean_word, is_https_url, is_payment_number,
};
use crate::domain::{ChargeId, Currency, ProviderStatus, StoreId};

/// Larger than any konbini payment could be (the chains cap a payment at 300,000 yen), and
/// well inside i64; anything above is a broken answer rather than a real charge.
pub(crate) const MAX_AMOUNT: i64 = 1_000_000_000_000;

/// The wire shape. Every field optional so that a missing one is reported by name.
#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub(crate) struct ChargeJson {
    pub(crate) id: Option<String>,
    pub(crate) store_id: Option<String>,
    pub(crate) status: Option<String>,
    pub(crate) requested_amount: Option<i64>,
    pub(crate) requested_currency: Option<String>,
    pub(crate) charged_amount: Option<i64>,
    pub(crate) charged_currency: Option<String>,
    // The fee fields (`fee_amount`, `fee_currency`, `fee_amount_formatted`, a number in
    // some SDKs and a string in another) are not read: reconciliation does not use them,
    // and skipping them costs nothing whatever type they arrive as.
    pub(crate) error: Option<Value>,
    pub(crate) metadata: Option<Value>,
    pub(crate) mode: Option<String>,
    pub(crate) created_on: Option<Value>,
}

/// A payment failure reported inside a 200 charge (e.g. code 323, payment code expired).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProviderError {
    pub(crate) code: Option<String>,
    pub(crate) message: Option<String>,
}

/// A checked charge answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ProviderCharge {
    pub(crate) id: ChargeId,
    pub(crate) store_id: Option<StoreId>,
    pub(crate) status: ProviderStatus,
    pub(crate) requested_amount: Option<i64>,
    pub(crate) requested_currency: Option<Currency>,
    pub(crate) charged_amount: Option<i64>,
    pub(crate) charged_currency: Option<Currency>,
    pub(crate) error: Option<ProviderError>,
    pub(crate) metadata: Map<String, Value>,
    pub(crate) mode: Option<String>,
}

impl ProviderCharge {
    /// Parses a response body. The message of an `Err` is safe to store and log: one line
    /// of at most [`MAX_ERROR`] characters (serde's messages quote the offending value).
    pub(crate) fn from_json(body: &[u8]) -> Result<Self, String> {
        Self::parse(body).map_err(|e| clean(&e, MAX_ERROR))
    }

    fn parse(body: &[u8]) -> Result<Self, String> {
        // serde would read a JSON array into the struct by position; only an object is a
        // charge.
        match body.iter().find(|b| !b.is_ascii_whitespace()) {
            None => return Err("empty body".to_owned()),
            Some(b'{') => {}
            Some(_) => return Err("body is not a JSON object".to_owned()),
        }
        let json: ChargeJson = serde_json::from_slice(body).map_err(|e| {
            if body.iter().all(u8::is_ascii_whitespace) {
                "empty body".to_owned()
            } else {
                format!("body is not a charge object ({e})")
            }
        })?;
        Self::try_from(json)
    }

    /// The konbini payment number, once the charge is awaiting payment: `None` when
    /// absent, `Some(Err(why))` when it is not 1 to 64 letters, digits and hyphens (`why`
    /// is safe to store and log; the value itself is not kept).
    pub(crate) fn payment_number(&self) -> Option<Result<String, String>> {
        let v = match self.metadata.get("internal_convenience_payment_number")? {
            Value::Null => return None,
            Value::String(s) if s.trim().is_empty() => return None,
            Value::String(s) => s.trim().to_owned(),
            Value::Number(n) => n.to_string(),
            other => {
                return Some(Err(format!(
                    "payment number refused: {} is not text",
                    kind(other)
                )));
            }
        };
        Some(if is_payment_number(&v) {
            Ok(v)
        } else {
            Err(format!(
                "payment number {:?} refused: not 1 to 64 letters, digits and hyphens",
                clean(&v, 40)
            ))
        })
    }

    /// The payment slip URL (Seven-Eleven only): `None` when absent, `Some(Err(why))`
    /// when it is not an `https://` URL of at most 2048 printable characters (a link shown
    /// to customers must not be `javascript:`, `http:` or anything else).
    pub(crate) fn payment_url(&self) -> Option<Result<String, String>> {
        let v = match self.metadata.get("internal_convenience_payment_url")? {
            Value::Null => return None,
            Value::String(s) if s.trim().is_empty() => return None,
            Value::String(s) => s.trim(),
            other => {
                return Some(Err(format!(
                    "payment URL refused: {} is not text",
                    kind(other)
                )));
            }
        };
        Some(if is_https_url(v) {
            Ok(v.to_owned())
        } else {
            Err(format!(
                "payment URL {:?} refused: only https:// URLs of up to 2048 characters are stored",
                clean(v, 80)
            ))
        })
    }
}

fn amount(field: &str, v: Option<i64>) -> Result<Option<i64>, String> {
    match v {
        Some(a) if !(0..=MAX_AMOUNT).contains(&a) => {
            Err(format!("{field} {a} is outside 0..={MAX_AMOUNT}"))
        }
        other => Ok(other),
    }
}

fn currency(field: &str, v: Option<String>) -> Result<Option<Currency>, String> {
    match v {
        None => Ok(None),
        Some(s) => Currency::parse(&s).map(Some).ok_or_else(|| {
            format!(
                "{field} {:?} is not a three-letter currency code",
                truncate(&s)
            )
        }),
    }
}

fn truncate(s: &str) -> String {
    clean(s, 16)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl TryFrom<ChargeJson> for ProviderCharge {
    type Error = String;

    fn try_from(j: ChargeJson) -> Result<Self, String> {
        let id = j.id.ok_or("charge has no id")?;
        let id = ChargeId::parse(id.clone())
            .map_err(|e| format!("charge id {:?} {e}", truncate(&id)))?;
        let store_id = match j.store_id {
            None => None,
            Some(s) => Some(
                StoreId::parse(s.clone())
                    .map_err(|e| format!("store_id {:?} {e}", truncate(&s)))?,
            ),
        };
        let status = match j.status {
            None => return Err("charge has no status".into()),
            Some(s) if s.is_empty() || s.len() > MAX_WORD => {
                return Err("status is empty or too long".into());
            }
            // A word we do not know is stored and logged as it came: it must be printable.
            Some(s) if !is_clean_word(&s) => {
                return Err(format!(
                    "status {:?} holds control characters or spaces",
                    truncate(&s)
                ));
            }
            Some(s) => ProviderStatus::parse(&s),
        };
        let error = match j.error {
            Some(Value::Object(o)) if !o.is_empty() => Some(ProviderError {
                code: o
                    .get("code")
                    .and_then(scalar_text)
                    .map(|c| clean(&c, MAX_WORD)),
                message: o
                    .get("message")
                    .and_then(scalar_text)
                    .map(|m| clean(&m, MAX_ERROR)),
            }),
            _ => None,
        };
        let metadata = match j.metadata {
            Some(Value::Object(m)) => m,
            None | Some(Value::Null) => Map::new(),
            Some(_) => return Err("metadata is not an object".into()),
        };
        Ok(ProviderCharge {
            id,
            store_id,
            status,
            requested_amount: amount("requested_amount", j.requested_amount)?,
            requested_currency: currency("requested_currency", j.requested_currency)?,
            charged_amount: amount("charged_amount", j.charged_amount)?,
            charged_currency: currency("charged_currency", j.charged_currency)?,
            error,
            metadata,
            mode: j.mode.map(|m| clean(&m, MAX_WORD)),
        })
    }
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"{
        "id": "11efa3b2-6c2d-4e8e-9f3a-0242ac120002",
        "store_id": "11ef0000-0000-0000-0000-000000000001",
        "transaction_token_id": "11ef0000-0000-0000-0000-0000000000aa",
        "transaction_token_type": "one_time",
        "subscription_id": null,
        "merchant_transaction_id": null,
        "requested_amount": 1500,
        "requested_currency": "JPY",
        "requested_amount_formatted": 1500,
        "charged_amount": null,
        "charged_currency": null,
        "charged_amount_formatted": null,
        "fee_amount": null, "fee_currency": null, "fee_amount_formatted": "12.5",
        "only_direct_currency": false,
        "capture_at": null,
        "descriptor": null,
        "status": "awaiting",
        "error": null,
        "metadata": {"orderid": 123456, "internal_convenience_payment_number": "1234-5678",
                     "internal_convenience_payment_url": "https://example.test/slip"},
        "mode": "test",
        "created_on": "2026-11-27T16:55:22.123456Z",
        "three_ds": {"whatever": true}
    }"#;

    #[test]
    fn parses_a_real_shaped_charge() {
        let c = ProviderCharge::from_json(FULL.as_bytes()).unwrap();
        assert_eq!(c.status, ProviderStatus::Awaiting);
        assert_eq!(c.requested_amount, Some(1500));
        assert_eq!(c.charged_amount, None);
        assert_eq!(c.payment_number(), Some(Ok("1234-5678".to_owned())));
        assert_eq!(
            c.payment_url(),
            Some(Ok("https://example.test/slip".to_owned()))
        );
        assert_eq!(c.metadata["orderid"], 123456);
    }

    #[test]
    fn error_field_shapes() {
        for (err, expect) in [
            (r#""error": null,"#, None),
            (r#""error": {},"#, None),
            ("", None),
            (
                r#""error": {"code": 323, "message": "payment code expired", "details": "x"},"#,
                Some(ProviderError {
                    code: Some("323".into()),
                    message: Some("payment code expired".into()),
                }),
            ),
        ] {
            let body =
                format!(r#"{{{err} "id": "c1", "status": "failed", "fee_amount_formatted": 3}}"#);
            let c = ProviderCharge::from_json(body.as_bytes()).unwrap();
            assert_eq!(c.error, expect, "{body}");
        }
    }

    #[test]
    fn refuses_broken_answers() {
        for body in [
            "",
            "not json",
            "[]",
            r#"{"status": "awaiting"}"#,
            r#"{"id": "", "status": "awaiting"}"#,
            r#"{"id": "c1"}"#,
            r#"{"id": "c1", "status": "successful", "charged_amount": -5}"#,
            r#"{"id": "c1", "status": "successful", "charged_amount": 1e20}"#,
            r#"{"id": "c1", "status": "successful", "charged_amount": 100, "charged_currency": "YEN!"}"#,
            r#"{"id": "c1", "status": "successful", "requested_amount": "100"}"#,
            r#"{"id": "c1", "status": "successful", "metadata": [1]}"#,
            r#"["c1", null, "successful"]"#,
            "null",
        ] {
            assert!(
                ProviderCharge::from_json(body.as_bytes()).is_err(),
                "{body}"
            );
        }
        assert_eq!(ProviderCharge::from_json(b"  ").unwrap_err(), "empty body");
    }

    #[test]
    fn numeric_payment_number_is_kept_as_text() {
        let c = ProviderCharge::from_json(
            br#"{"id": "c1", "status": "awaiting", "metadata": {"internal_convenience_payment_number": 98765}}"#,
        )
        .unwrap();
        assert_eq!(c.payment_number(), Some(Ok("98765".to_owned())));
        assert_eq!(c.payment_url(), None);
    }

    fn with_metadata(meta: Value) -> ProviderCharge {
        let body = serde_json::json!({"id": "c1", "status": "awaiting", "metadata": meta});
        ProviderCharge::from_json(body.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn payment_details_of_the_wrong_shape_are_refused_without_their_value() {
        let long = "9".repeat(1_000_000);
        for bad in [
            serde_json::json!("12 34"),
            serde_json::json!("1234\n5678"),
            serde_json::json!("\u{1b}[31m1234"),
            serde_json::json!(long),
            serde_json::json!({"n": 1}),
            serde_json::json!(true),
        ] {
            let c = with_metadata(serde_json::json!({"internal_convenience_payment_number": bad}));
            let why = c.payment_number().unwrap().unwrap_err();
            assert!(why.contains("payment number"), "{why}");
            assert!(
                why.len() < 200 && !why.chars().any(char::is_control),
                "{why}"
            );
        }
        for bad in [
            "http://example.test/slip",
            "javascript:alert(1)",
            "https://",
            "https://example.test/a b",
            "//example.test/slip",
        ] {
            let c = with_metadata(serde_json::json!({"internal_convenience_payment_url": bad}));
            let why = c.payment_url().unwrap().unwrap_err();
            assert!(why.contains("only https://"), "{why}");
        }
        let c = with_metadata(serde_json::json!({
            "internal_convenience_payment_number": null,
            "internal_convenience_payment_url": "  "
        }));
        assert_eq!((c.payment_number(), c.payment_url()), (None, None));
    }

    #[test]
    fn provider_text_is_cleaned_and_capped() {
        let body = serde_json::json!({
            "id": "c1", "status": "failed", "mode": "te\u{1b}[2Jst",
            "error": {"code": "3\n23", "message": format!("line\nbreak {}", "m".repeat(1_000_000))}
        });
        let c = ProviderCharge::from_json(body.to_string().as_bytes()).unwrap();
        let e = c.error.unwrap();
        assert_eq!(e.code.as_deref(), Some("3 23"));
        let m = e.message.unwrap();
        assert!(
            m.starts_with("line break m") && m.chars().count() == MAX_ERROR,
            "{}",
            m.len()
        );
        assert_eq!(c.mode.as_deref(), Some("test"));
        for status in ["awai\\u001b[0mting", "new\\nline", "nul\\u0000"] {
            let body = format!(r#"{{"id": "c1", "status": "{status}"}}"#);
            let e = ProviderCharge::from_json(body.as_bytes()).unwrap_err();
            assert!(e.contains("control characters"), "{e}");
        }
        // serde quotes the offending value; the message is capped all the same.
        let body = serde_json::json!({"id": "c1", "status": "successful", "charged_amount": "x".repeat(1_000_000)});
        let e = ProviderCharge::from_json(body.to_string().as_bytes()).unwrap_err();
        assert!(
            e.chars().count() <= MAX_ERROR && e.contains("invalid type"),
            "{}",
            e.len()
        );
    }
}
