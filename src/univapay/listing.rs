//! The requests discovery makes besides the charge GET: a page of a store's transaction
//! history or charge list, a transaction token, and a charge GET that also keeps what the
//! checked [`ProviderCharge`] leaves out (its token, creation time and `capture_at`).
//!
//! Each takes a pacer [`Ticket`] already in hand and goes through the client's one GET
//! path ([`Client::get_paced`]), so discovery spends the same rate-limit budget, under
//! the same pacing, as the passes.
//!
//! Parsing is lenient in the same way as the charge model: unknown fields are ignored, a
//! list item that cannot be read is kept as an item without an id (the sweep counts and
//! skips it), and `created_on` may be RFC 3339 or epoch milliseconds. A page must be an
//! object with an `items` array; `has_more` missing counts as `false`.

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde_json::Value;

use super::client::{Client, checked_charge};
use super::pacer::Ticket;
use super::{ApiError, ProviderCharge};
use crate::domain::{ChargeId, StoreId};

/// The most items a page may be asked for (UnivaPay's maximum `limit`).
pub const MAX_PAGE_LIMIT: u32 = 100;

/// Identifier of a transaction token: the same rules as every UnivaPay id (it goes into a
/// request path).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct TokenId(String);

impl TokenId {
    pub(crate) fn parse(s: &str) -> Option<TokenId> {
        ChargeId::parse(s).ok().map(|_| TokenId(s.to_owned()))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for TokenId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which list a page comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listing {
    /// `GET /stores/{sid}/transaction_history?type=charge&service_provider=convenience`:
    /// konbini charges only, each row with its payment type and brand.
    KonbiniHistory,
    /// `GET /stores/{sid}/charges`: every charge, each with its token id but no payment
    /// type.
    Charges,
}

impl Listing {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Listing::KonbiniHistory => "transaction history",
            Listing::Charges => "charge list",
        }
    }
}

/// One page request: oldest first, created in `from..=to`, after `cursor`.
#[derive(Debug, Clone)]
pub(crate) struct PageQuery {
    pub(crate) from: DateTime<Utc>,
    pub(crate) to: DateTime<Utc>,
    /// The id of the last item seen; `None` for the first page.
    pub(crate) cursor: Option<ChargeId>,
    /// 1 to [`MAX_PAGE_LIMIT`].
    pub(crate) limit: u32,
}

/// One item of a page, as far as discovery needs it. A field the item lacks, or that
/// cannot be read, is `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listed {
    /// `None`: the item has no usable id (it is counted and skipped).
    pub(crate) charge_id: Option<ChargeId>,
    /// History rows: `konbini`, `card`, ... Charge list items have none.
    pub(crate) payment_type: Option<String>,
    /// History rows of konbini charges: `user_data.convenience_store`.
    pub(crate) convenience_store: Option<String>,
    /// Charge list items: `transaction_token_id`.
    pub(crate) token_id: Option<TokenId>,
    pub(crate) created_on: Option<DateTime<Utc>>,
}

/// A page of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Page {
    pub(crate) items: Vec<Listed>,
    pub(crate) has_more: bool,
}

/// What a transaction token says about the payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TokenFacts {
    pub(crate) payment_type: Option<String>,
    /// `data.convenience_store`.
    pub(crate) convenience_store: Option<String>,
    /// `data.expiration_period`, an ISO 8601 duration such as `P7D`.
    pub(crate) expiration_period: Option<String>,
    /// `data.expiration_time_shift`, a time of day such as `09:00:00+09:00`.
    pub(crate) expiration_time_shift: Option<String>,
}

/// A charge GET's answer, checked, with the fields discovery needs beyond the reconciler's.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct VerifiedCharge {
    pub(crate) charge: ProviderCharge,
    pub(crate) token_id: Option<TokenId>,
    pub(crate) created_on: Option<DateTime<Utc>>,
    /// The charge sets its own deadline (`capture_at`), which discovery does not read.
    pub(crate) has_capture_at: bool,
}

impl Client {
    /// One page of `listing` for `store`.
    pub(crate) async fn list_page(
        &self,
        ticket: Ticket,
        store: &StoreId,
        listing: Listing,
        q: &PageQuery,
    ) -> Result<Page, ApiError> {
        let url = self.page_url(store, listing, q);
        let (body, rate_limit) = self.get_paced(ticket, url).await;
        let page = body.and_then(|b| parse_page(&b, listing).map_err(ApiError::malformed));
        self.count(&page, &rate_limit);
        page
    }

    /// `GET /stores/{store}/tokens/{token}`, checked to be about that token.
    pub(crate) async fn get_token(
        &self,
        ticket: Ticket,
        store: &StoreId,
        token: &TokenId,
    ) -> Result<TokenFacts, ApiError> {
        let url = self.endpoint(&["stores", store.as_str(), "tokens", token.as_str()]);
        let (body, rate_limit) = self.get_paced(ticket, url).await;
        let facts = body.and_then(|b| parse_token(&b, store, token).map_err(ApiError::malformed));
        self.count(&facts, &rate_limit);
        facts
    }

    /// The charge GET, checked like the reconciler's, keeping the token id, creation time
    /// and whether `capture_at` is set.
    pub(crate) async fn verify_charge(
        &self,
        ticket: Ticket,
        store: &StoreId,
        charge: &ChargeId,
    ) -> Result<VerifiedCharge, ApiError> {
        let url = self.endpoint(&["stores", store.as_str(), "charges", charge.as_str()]);
        let (body, rate_limit) = self.get_paced(ticket, url).await;
        let checked = body.and_then(|b| checked_charge(&b, store, charge).map(|c| (c, b)));
        self.count(&checked, &rate_limit);
        let (checked, body) = checked?;
        // `checked_charge` has parsed it as an object already.
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        Ok(VerifiedCharge {
            charge: checked,
            token_id: v
                .get("transaction_token_id")
                .and_then(Value::as_str)
                .and_then(TokenId::parse),
            created_on: v.get("created_on").and_then(timestamp),
            has_capture_at: v.get("capture_at").is_some_and(|c| !c.is_null()),
        })
    }

    fn page_url(&self, store: &StoreId, listing: Listing, q: &PageQuery) -> reqwest::Url {
        let route = match listing {
            Listing::KonbiniHistory => "transaction_history",
            Listing::Charges => "charges",
        };
        let mut url = self.endpoint(&["stores", store.as_str(), route]);
        {
            let mut pairs = url.query_pairs_mut();
            pairs
                .append_pair("limit", &q.limit.clamp(1, MAX_PAGE_LIMIT).to_string())
                .append_pair("cursor_direction", "asc")
                .append_pair("from", &bound(q.from))
                .append_pair("to", &bound(q.to));
            if listing == Listing::KonbiniHistory {
                pairs
                    .append_pair("type", "charge")
                    .append_pair("service_provider", "convenience");
            }
            if let Some(c) = &q.cursor {
                pairs.append_pair("cursor", c.as_str());
            }
        }
        url
    }
}

/// A `from`/`to` bound: RFC 3339 in milliseconds, rounded down (both bounds are
/// inclusive, so rounding down never loses an item at `from`).
fn bound(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `created_on`: RFC 3339 text, or epoch milliseconds (one old example used them).
fn timestamp(v: &Value) -> Option<DateTime<Utc>> {
    match v {
        Value::String(s) => DateTime::parse_from_rfc3339(s.trim())
            .ok()
            .map(|t| t.with_timezone(&Utc)),
        Value::Number(n) => Utc.timestamp_millis_opt(n.as_i64()?).single(),
        _ => None,
    }
}

/// A short text field: a string of at most 64 characters, else `None`.
fn short_text(v: Option<&Value>) -> Option<String> {
    let s = v?.as_str()?.trim();
    (!s.is_empty() && s.chars().count() <= 64).then(|| s.to_owned())
}

fn id_of(v: Option<&Value>) -> Option<ChargeId> {
    ChargeId::parse(v?.as_str()?).ok()
}

/// Parses a page body. `Err` when it is not a page at all.
pub(crate) fn parse_page(body: &[u8], listing: Listing) -> Result<Page, String> {
    let v: Value = match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {
            serde_json::from_slice(body).map_err(|e| format!("page is not JSON ({e})"))?
        }
        None => return Err("empty body".to_owned()),
        Some(_) => return Err("page is not a JSON object".to_owned()),
    };
    let items = v
        .get("items")
        .and_then(Value::as_array)
        .ok_or("page has no items array")?;
    let has_more = v.get("has_more").and_then(Value::as_bool).unwrap_or(false);
    let items = items
        .iter()
        .map(|item| match listing {
            Listing::KonbiniHistory => history_row(item),
            Listing::Charges => listed_charge(item),
        })
        .collect();
    Ok(Page { items, has_more })
}

/// A transaction history row: the charge id is `charge_id`, or `resource_id` of a
/// `type: charge` row.
fn history_row(v: &Value) -> Listed {
    let is_charge = v
        .get("type")
        .and_then(Value::as_str)
        .is_none_or(|t| t == "charge");
    let charge_id = id_of(v.get("charge_id"))
        .or_else(|| is_charge.then(|| id_of(v.get("resource_id"))).flatten());
    Listed {
        charge_id,
        payment_type: short_text(v.get("payment_type")),
        convenience_store: short_text(v.get("user_data").and_then(|u| u.get("convenience_store"))),
        token_id: None,
        created_on: v.get("created_on").and_then(timestamp),
    }
}

fn listed_charge(v: &Value) -> Listed {
    Listed {
        charge_id: id_of(v.get("id")),
        payment_type: None,
        convenience_store: None,
        token_id: v
            .get("transaction_token_id")
            .and_then(Value::as_str)
            .and_then(TokenId::parse),
        created_on: v.get("created_on").and_then(timestamp),
    }
}

/// Parses a token answer, checked to be about `token` of `store`.
pub(crate) fn parse_token(
    body: &[u8],
    store: &StoreId,
    token: &TokenId,
) -> Result<TokenFacts, String> {
    let v: Value = match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {
            serde_json::from_slice(body).map_err(|e| format!("token is not JSON ({e})"))?
        }
        _ => return Err("token answer is not a JSON object".to_owned()),
    };
    match v.get("id").and_then(Value::as_str) {
        Some(id) if id == token.as_str() => {}
        Some(_) => return Err(format!("answer is not about token {token}")),
        None => return Err("token has no id".to_owned()),
    }
    if let Some(s) = v.get("store_id").and_then(Value::as_str)
        && s != store.as_str()
    {
        return Err(format!("token answer is for another store, not {store}"));
    }
    let data = v.get("data");
    let field = |name: &str| short_text(data.and_then(|d| d.get(name)));
    Ok(TokenFacts {
        payment_type: short_text(v.get("payment_type")),
        convenience_store: field("convenience_store"),
        expiration_period: field("expiration_period"),
        expiration_time_shift: field("expiration_time_shift"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_rows_are_read_leniently() {
        let body = br#"{"items": [
            {"resource_id": "c1", "charge_id": "c1", "type": "charge", "payment_type": "konbini",
             "user_data": {"convenience_store": "seven_eleven"}, "created_on": "2026-11-27T08:00:00.123456Z"},
            {"resource_id": "c2", "type": "charge", "created_on": 1795766400000},
            {"resource_id": "r3", "type": "refund"},
            {"payment_type": "konbini"},
            {"charge_id": "bad id/../x"},
            "not an object"
        ], "has_more": true}"#;
        let p = parse_page(body, Listing::KonbiniHistory).unwrap();
        assert!(p.has_more);
        let ids: Vec<Option<&str>> = p
            .items
            .iter()
            .map(|i| i.charge_id.as_ref().map(ChargeId::as_str))
            .collect();
        assert_eq!(ids, [Some("c1"), Some("c2"), None, None, None, None]);
        assert_eq!(p.items[0].payment_type.as_deref(), Some("konbini"));
        assert_eq!(
            p.items[0].convenience_store.as_deref(),
            Some("seven_eleven")
        );
        assert_eq!(
            p.items[0].created_on.unwrap().timestamp_micros() % 1_000_000,
            123_456
        );
        assert_eq!(p.items[1].payment_type, None);
        assert!(p.items[1].created_on.is_some());
    }

    #[test]
    fn pages_that_are_not_pages_are_refused() {
        for body in [
            &b""[..],
            b"[]",
            b"{}",
            b"{\"items\": 3}",
            b"{\"items\": [",
            b"null",
        ] {
            assert!(parse_page(body, Listing::Charges).is_err(), "{body:?}");
        }
        let p = parse_page(br#"{"items": []}"#, Listing::Charges).unwrap();
        assert!(!p.has_more, "a missing has_more ends the listing");
    }

    #[test]
    fn charge_list_items_carry_their_token() {
        let p = parse_page(
            br#"{"items": [{"id": "c1", "transaction_token_id": "t1", "created_on": "2026-11-27T08:00:00Z"}], "has_more": false}"#,
            Listing::Charges,
        )
        .unwrap();
        assert_eq!(p.items[0].token_id, TokenId::parse("t1"));
        assert_eq!(p.items[0].payment_type, None);
    }

    #[test]
    fn tokens_are_checked_to_be_the_one_asked_for() {
        let store = StoreId::parse("s1").unwrap();
        let t = TokenId::parse("t1").unwrap();
        let ok = br#"{"id": "t1", "store_id": "s1", "payment_type": "konbini",
            "data": {"convenience_store": "pay_easy", "expiration_period": "P7D", "expiration_time_shift": null}}"#;
        let f = parse_token(ok, &store, &t).unwrap();
        assert_eq!(f.payment_type.as_deref(), Some("konbini"));
        assert_eq!(f.convenience_store.as_deref(), Some("pay_easy"));
        assert_eq!(f.expiration_period.as_deref(), Some("P7D"));
        assert_eq!(f.expiration_time_shift, None);
        for bad in [
            &br#"{"id": "t2", "payment_type": "konbini"}"#[..],
            br#"{"payment_type": "konbini"}"#,
            br#"{"id": "t1", "store_id": "s2"}"#,
            b"[]",
        ] {
            assert!(parse_token(bad, &store, &t).is_err());
        }
    }

    #[test]
    fn token_ids_are_path_safe() {
        assert!(TokenId::parse("11ef-aa").is_some());
        assert!(TokenId::parse("../x").is_none());
        assert!(TokenId::parse("").is_none());
    }
}
