//! The charge model: a charge as the simulator holds it, the builder steps of the konbini
//! lifecycle that tests use to put one in a given state, and its rendering as UnivaPay's
//! JSON.
//!
//! The charge object does not say which payment type it is (as at UnivaPay): its
//! `transaction_token_id` leads to the token that does.

use serde_json::{Value, json};

/// A charge as the simulator holds it; rendered into UnivaPay's JSON on every GET.
#[derive(Debug, Clone, PartialEq)]
pub struct SimCharge {
    pub id: String,
    pub store_id: String,
    pub status: String,
    pub requested_amount: i64,
    pub requested_currency: String,
    pub charged_amount: Option<i64>,
    pub charged_currency: Option<String>,
    pub metadata: Value,
    pub error: Option<Value>,
    pub mode: String,
    pub created_on: String,
    /// The transaction token the charge was made with. `None` (what [`SimCharge::new`]
    /// gives) renders as `tok-{id}`, a token the simulator answers as a konbini token of
    /// the charge's store (brand from `metadata.convenience_store`, if any).
    pub transaction_token_id: Option<String>,
}

/// The merchant every simulated store belongs to (`merchant_id` on every charge).
pub const MERCHANT_ID: &str = "11f2aa00-0000-4000-8000-00000000a11e";

/// The final statuses: a charge in one never changes again.
pub const FINAL_STATUSES: [&str; 4] = ["successful", "failed", "error", "canceled"];

/// The error object of a declined card (the code is the simulator's own).
pub(crate) fn card_declined() -> Value {
    json!({"code": 399, "message": "card declined", "detail": null})
}

impl SimCharge {
    /// A konbini charge just created: `pending`, nothing charged yet.
    pub fn new(id: impl Into<String>, store_id: impl Into<String>, amount: i64) -> Self {
        SimCharge {
            id: id.into(),
            store_id: store_id.into(),
            status: "pending".into(),
            requested_amount: amount,
            requested_currency: "JPY".into(),
            charged_amount: None,
            charged_currency: None,
            metadata: json!({}),
            error: None,
            mode: "test".into(),
            created_on: "2026-11-27T08:00:00.123456Z".into(),
            transaction_token_id: None,
        }
    }

    /// The same charge, made with this transaction token.
    pub fn with_token(mut self, token_id: impl Into<String>) -> Self {
        self.transaction_token_id = Some(token_id.into());
        self
    }

    /// The token id as rendered: the one set, or `tok-{id}`.
    pub fn token_id(&self) -> String {
        self.transaction_token_id
            .clone()
            .unwrap_or_else(|| format!("tok-{}", self.id))
    }

    /// `successful`, `failed`, `error` or `canceled`.
    pub fn is_final(&self) -> bool {
        FINAL_STATUSES.contains(&self.status.as_str())
    }

    /// Payment number issued: `awaiting`, with the konbini payment details in metadata.
    pub fn awaiting(mut self, payment_number: &str, slip_url: Option<&str>) -> Self {
        self.status = "awaiting".into();
        let m = self.metadata_mut();
        m.insert(
            "internal_convenience_payment_number".into(),
            json!(payment_number),
        );
        if let Some(u) = slip_url {
            m.insert("internal_convenience_payment_url".into(), json!(u));
        }
        self
    }

    /// Paid at the store: `successful`, charged exactly what was requested.
    pub fn paid(self) -> Self {
        let (amount, currency) = (self.requested_amount, self.requested_currency.clone());
        self.paid_with(amount, &currency)
    }

    /// Paid, but with the given charged amount and currency (for mismatch scenarios).
    pub fn paid_with(mut self, amount: i64, currency: &str) -> Self {
        self.status = "successful".into();
        self.charged_amount = Some(amount);
        self.charged_currency = Some(currency.into());
        self
    }

    /// The payment deadline passed: `failed` with UnivaPay's error object.
    pub fn expired(mut self) -> Self {
        self.status = "failed".into();
        self.error = Some(json!({"code": 323, "message": "payment code expired", "detail": null}));
        self
    }

    /// Any status word, verbatim.
    pub fn with_status(mut self, status: &str) -> Self {
        self.status = status.into();
        self
    }

    pub(crate) fn metadata_mut(&mut self) -> &mut serde_json::Map<String, Value> {
        if !self.metadata.is_object() {
            self.metadata = json!({});
        }
        self.metadata
            .as_object_mut()
            .expect("metadata is an object")
    }

    /// The charge as UnivaPay's JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "merchant_id": MERCHANT_ID,
            "store_id": self.store_id,
            "transaction_token_id": self.token_id(),
            "transaction_token_type": "one_time",
            "subscription_id": null,
            "merchant_transaction_id": null,
            "requested_amount": self.requested_amount,
            "requested_currency": self.requested_currency,
            "requested_amount_formatted": self.requested_amount,
            "charged_amount": self.charged_amount,
            "charged_currency": self.charged_currency,
            "charged_amount_formatted": self.charged_amount,
            "fee_amount": null,
            "fee_currency": null,
            "fee_amount_formatted": null,
            "only_direct_currency": false,
            "capture_at": null,
            "descriptor": null,
            "descriptor_phone_number": null,
            "status": self.status,
            "error": self.error,
            "metadata": self.metadata,
            "mode": self.mode,
            "created_on": self.created_on,
        })
    }
}
