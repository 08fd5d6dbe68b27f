//! What a listed row or a token says about the payment: its kind (konbini, another
//! documented type, or a word nobody documented), whether a listed item is worth a
//! request, and the brand as the `charges.konbini` column takes it. Pure.

use crate::univapay::Listed;

/// Payment types UnivaPay documents besides konbini. A history row or token with one of
/// these is simply not ours; any other word is recorded as unknown.
pub(crate) const OTHER_PAYMENT_TYPES: [&str; 7] = [
    "card",
    "qr_scan",
    "apple_pay",
    "paidy",
    "qr_merchant",
    "online",
    "bank_transfer",
];

/// What a `payment_type` word says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PaymentKind {
    Konbini,
    /// A documented payment type other than konbini.
    Other(String),
    /// A word nobody documented.
    Unknown(String),
    /// No payment type given.
    Missing,
}

pub(crate) fn payment_kind(word: Option<&str>) -> PaymentKind {
    match word {
        None => PaymentKind::Missing,
        Some("konbini") => PaymentKind::Konbini,
        Some(w) if OTHER_PAYMENT_TYPES.contains(&w) => PaymentKind::Other(w.to_owned()),
        Some(w) => PaymentKind::Unknown(w.to_owned()),
    }
}

/// What to do with a listed item whose charge the ledger does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ItemVerdict {
    /// Verify it (charge GET, token GET) and register it if it is konbini.
    Candidate,
    /// The row says another payment type: not ours, no request.
    NotKonbini,
    /// The row names a payment type nobody knows: skipped and recorded, no request.
    UnknownType(String),
}

/// A listed item's verdict from its own fields. A row without a payment type (and every
/// charge list item) is a candidate: its token decides.
pub(crate) fn item_verdict(item: &Listed) -> ItemVerdict {
    match payment_kind(item.payment_type.as_deref()) {
        PaymentKind::Konbini | PaymentKind::Missing => ItemVerdict::Candidate,
        PaymentKind::Other(_) => ItemVerdict::NotKonbini,
        PaymentKind::Unknown(w) => ItemVerdict::UnknownType(w),
    }
}

/// A brand as the `charges.konbini` column takes it (lower-case letters, digits and `_`,
/// 1 to 64 characters), else `None`.
pub(crate) fn brand(word: Option<&str>) -> Option<String> {
    let w = word?.trim();
    let ok = (1..=64).contains(&w.len())
        && w.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    ok.then(|| w.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ChargeId;

    fn item(id: Option<&str>) -> Listed {
        Listed {
            charge_id: id.map(|i| ChargeId::parse(i).unwrap()),
            payment_type: None,
            convenience_store: None,
            token_id: None,
            created_on: None,
        }
    }

    #[test]
    fn payment_types() {
        assert_eq!(payment_kind(Some("konbini")), PaymentKind::Konbini);
        assert_eq!(
            payment_kind(Some("card")),
            PaymentKind::Other("card".into())
        );
        assert_eq!(
            payment_kind(Some("sim_unknown")),
            PaymentKind::Unknown("sim_unknown".into())
        );
        assert_eq!(payment_kind(None), PaymentKind::Missing);
        let mut row = item(Some("c"));
        assert_eq!(item_verdict(&row), ItemVerdict::Candidate);
        row.payment_type = Some("card".into());
        assert_eq!(item_verdict(&row), ItemVerdict::NotKonbini);
        row.payment_type = Some("cash".into());
        assert_eq!(item_verdict(&row), ItemVerdict::UnknownType("cash".into()));
    }

    #[test]
    fn brands_fit_the_column() {
        assert_eq!(brand(Some("pay_easy")).as_deref(), Some("pay_easy"));
        assert_eq!(brand(Some("Seven Eleven")), None);
        assert_eq!(brand(Some("")), None);
        assert_eq!(brand(None), None);
    }
}
