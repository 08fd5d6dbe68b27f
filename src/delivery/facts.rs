//! What a charge's answer says in the shop's words: the metadata as stored (compact JSON,
//! bounded) and the order reference under `reconcile.order_key`. Pure; the check calls
//! [`shop_facts`] on every answer and the ledger writes the result with the check.

use serde_json::{Map, Value};

use crate::domain::text::{MAX_ERROR, clean};
use crate::ledger::{MAX_METADATA, MAX_ORDER_REF, ShopFacts};

/// The facts of one answer's `metadata`.
pub(crate) fn shop_facts(metadata: &Map<String, Value>, order_key: &str) -> ShopFacts {
    let mut facts = ShopFacts::default();
    // serde_json escapes control characters as JSON does, and writes no whitespace.
    let json = serde_json::to_string(metadata).unwrap_or_else(|_| "{}".to_owned());
    if json.len() <= MAX_METADATA {
        facts.metadata = Some(json);
    } else {
        facts.refused.push(format!(
            "metadata not stored: {} bytes of JSON, more than the {MAX_METADATA} kept",
            json.len()
        ));
    }
    match metadata.get(order_key).map(order_ref) {
        None | Some(Ok(None)) => {}
        Some(Ok(Some(r))) => facts.order_ref = Some(r),
        Some(Err(why)) => facts.refused.push(clean(
            &format!("order reference not taken from metadata {order_key:?}: {why}"),
            MAX_ERROR,
        )),
    }
    facts
}

/// A metadata value as an order reference: a string or an integer, 1 to 255 bytes, no
/// control characters. `Ok(None)` for null or an empty string.
fn order_ref(v: &Value) -> Result<Option<String>, String> {
    let text = match v {
        Value::Null => return Ok(None),
        Value::String(s) => s.trim().to_owned(),
        Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
        other => return Err(format!("a {} is not an order reference", kind(other))),
    };
    if text.is_empty() {
        return Ok(None);
    }
    if text.len() > MAX_ORDER_REF {
        return Err(format!("{} bytes, more than {MAX_ORDER_REF}", text.len()));
    }
    if text.chars().any(char::is_control) {
        return Err("contains control characters".into());
    }
    Ok(Some(text))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Bool(_) => "boolean",
        Value::Number(_) => "fractional number",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
        _ => "value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn the_charge_create_example() {
        let f = shop_facts(&map(json!({"orderid": "12345"})), "orderid");
        assert_eq!(f.order_ref.as_deref(), Some("12345"));
        assert_eq!(f.metadata.as_deref(), Some(r#"{"orderid":"12345"}"#));
        assert!(f.refused.is_empty());
        let f = shop_facts(&map(json!({"orderid": 123456})), "orderid");
        assert_eq!(f.order_ref.as_deref(), Some("123456"));
    }

    #[test]
    fn another_key_and_odd_values() {
        let f = shop_facts(
            &map(json!({"order_no": " A-9 ", "orderid": "x"})),
            "order_no",
        );
        assert_eq!(f.order_ref.as_deref(), Some("A-9"));
        let f = shop_facts(&map(json!({"orderid": [1]})), "orderid");
        assert_eq!(f.order_ref, None);
        assert_eq!(
            f.refused,
            vec![
                r#"order reference not taken from metadata "orderid": a list is not an order reference"#
            ]
        );
        let f = shop_facts(&map(json!({"orderid": "a\u{7}b"})), "orderid");
        assert!(
            f.refused[0].contains("control characters"),
            "{:?}",
            f.refused
        );
        let f = shop_facts(&map(json!({"orderid": ""})), "orderid");
        assert_eq!((f.order_ref, f.refused.len()), (None, 0));
        let f = shop_facts(&map(json!({"orderid": "x".repeat(256)})), "orderid");
        assert!(f.refused[0].contains("256 bytes"), "{:?}", f.refused);
    }

    #[test]
    fn control_characters_are_escaped_and_size_is_bounded() {
        let f = shop_facts(&map(json!({"note": "a\nb\u{1}"})), "orderid");
        assert_eq!(f.metadata.as_deref(), Some(r#"{"note":"a\nb\u0001"}"#));
        // 4096 bytes exactly is kept; one more is not.
        let fill = |n: usize| map(json!({"k": "x".repeat(n)}));
        let overhead = r#"{"k":""}"#.len();
        assert!(
            shop_facts(&fill(4096 - overhead), "orderid")
                .metadata
                .is_some()
        );
        let f = shop_facts(&fill(4097 - overhead), "orderid");
        assert_eq!(f.metadata, None);
        assert_eq!(
            f.refused,
            vec!["metadata not stored: 4097 bytes of JSON, more than the 4096 kept"]
        );
    }
}
