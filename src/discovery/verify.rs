//! Verifying one charge before it is registered: its charge GET (the only source of its
//! amount and currency) and its transaction token's GET (the only source of its payment
//! type, brand and deadline), each request paced by the client, each token fetched at
//! most once per [`Verifier`].
//!
//! # Why tokens are remembered per sweep only
//! A token is fetched for a charge the ledger does not know yet, and what it says is
//! written with that charge's registration (brand, deadline) or skip (`not_konbini`, ...)
//! in its page's transaction. After that the charge id is known and its token is never
//! asked for again. So the only tokens fetched twice are those of the page a crash (or
//! kill -9) interrupted: at most one page, [`MAX_PAGE_LIMIT`](crate::univapay::MAX_PAGE_LIMIT)
//! tokens and as many charge GETs. Measured (`discovery_crash` test, 600 charges, killed
//! mid-page): 52 token GETs and 56 charge GETs repeated. A durable token table would save
//! those token GETs only if each token were written as it arrives (a write per token on
//! every sweep, a new table to keep bounded) and would still repeat the charge GETs; a
//! few seconds of paced requests after a crash are cheaper than that.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use super::deadline::deadline;
use super::payment::{PaymentKind, brand, payment_kind};
use crate::domain::{ChargeId, StoreId};
use crate::ledger::{NewDiscovered, SkipReason};
use crate::univapay::{
    ApiError, Client, ErrorClass, Listed, Listing, Ticket, TokenFacts, TokenId, VerifiedCharge,
};

/// Where a charge to verify was found, for its `discovered` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Listing(Listing),
    Webhook,
}

/// Why verification could not finish, or what it found instead of a konbini charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Halt {
    /// Not registered, for good: recorded with this reason.
    Skip(SkipReason, String),
    /// A transient failure (connection, timeout, 429, 5xx): try again on a later sweep.
    Retry(ApiError),
    /// 401/403: the whole sweep stops.
    Auth(ApiError),
    /// Shutdown was requested.
    Interrupted,
}

impl Halt {
    fn from_api(e: ApiError, not_found: SkipReason) -> Halt {
        match e.class() {
            ErrorClass::Auth => Halt::Auth(e),
            ErrorClass::Transient => Halt::Retry(e),
            ErrorClass::NotFound => Halt::Skip(not_found, e.to_string()),
            ErrorClass::Malformed | ErrorClass::Rejected => {
                Halt::Skip(SkipReason::Unverified, e.to_string())
            }
        }
    }
}

/// A charge and its token, both fetched and checked.
#[derive(Debug, Clone)]
pub(crate) struct Looked {
    pub(crate) charge: VerifiedCharge,
    pub(crate) token: TokenFacts,
}

/// A token GET's result, kept for the rest of the sweep.
type TokenCell = Arc<OnceCell<Result<TokenFacts, ApiError>>>;

/// Verifies charges for one sweep (or one webhook): counts the requests it sends and
/// remembers every token it fetched.
pub(crate) struct Verifier {
    client: Client,
    shutdown: CancellationToken,
    /// Keyed by store too: a token is read through its store's path.
    tokens: Mutex<HashMap<(StoreId, TokenId), TokenCell>>,
    requests: AtomicU64,
    /// The longest pacer wait taken; beyond it the request is given up as rate limited
    /// (the pass's bound, so a sweep never sleeps through a long `Retry-After` either).
    max_pause: std::time::Duration,
}

impl Verifier {
    pub(crate) fn new(
        client: Client,
        shutdown: CancellationToken,
        max_pause: std::time::Duration,
    ) -> Verifier {
        Verifier {
            client,
            shutdown,
            max_pause,
            tokens: Mutex::new(HashMap::new()),
            requests: AtomicU64::new(0),
        }
    }

    /// Requests sent so far.
    pub(crate) fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// One request: waits for the pacer, sends it, and gives it up at once on shutdown
    /// (nothing of a verification is written before it completes). `None` on shutdown.
    pub(crate) async fn request<T>(
        &self,
        send: impl AsyncFnOnce(Ticket) -> Result<T, ApiError>,
    ) -> Option<Result<T, ApiError>> {
        let ticket = tokio::select! {
            t = self.client.pace(self.max_pause) => match t {
                Ok(t) => t,
                Err(p) => return Some(Err(ApiError::RateLimited { retry_after: Some(p.wait) })),
            },
            () = self.shutdown.cancelled() => return None,
        };
        self.requests.fetch_add(1, Ordering::Relaxed);
        tokio::select! {
            r = send(ticket) => Some(r),
            () = self.shutdown.cancelled() => None,
        }
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// The token's facts, fetched at most once per verifier.
    async fn token(&self, store: &StoreId, token: &TokenId) -> Result<TokenFacts, Halt> {
        let cell = {
            let mut map = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
            map.entry((store.clone(), token.clone()))
                .or_default()
                .clone()
        };
        let fetched = cell
            .get_or_try_init(|| async {
                match self
                    .request(async |t| self.client.get_token(t, store, token).await)
                    .await
                {
                    Some(r) => Ok(r),
                    // Not stored: a later look may still fetch it.
                    None => Err(Halt::Interrupted),
                }
            })
            .await?;
        fetched
            .clone()
            .map_err(|e| Halt::from_api(e, SkipReason::TokenNotFound))
    }

    /// The charge GET and then its token. `listed_token` is the token a charge list
    /// named: asked first (a card then costs one request, not two), and it must be the
    /// charge's own.
    pub(crate) async fn look(
        &self,
        store: &StoreId,
        charge: &ChargeId,
        listed_token: Option<&TokenId>,
    ) -> Result<Looked, Halt> {
        if let Some(t) = listed_token {
            let facts = self.token(store, t).await?;
            if let Some(halt) = not_konbini(&facts) {
                return Err(halt);
            }
        }
        let verified = self
            .request(async |t| self.client.verify_charge(t, store, charge).await)
            .await
            .ok_or(Halt::Interrupted)?
            .map_err(|e| Halt::from_api(e, SkipReason::ChargeNotFound))?;
        let Some(token_id) = verified.token_id.clone() else {
            return Err(Halt::Skip(
                SkipReason::NoToken,
                "the charge names no transaction token".into(),
            ));
        };
        if let Some(t) = listed_token
            && *t != token_id
        {
            return Err(Halt::Skip(
                SkipReason::Unverified,
                format!("the charge names token {token_id}, the charge list {t}"),
            ));
        }
        let token = self.token(store, &token_id).await?;
        Ok(Looked {
            charge: verified,
            token,
        })
    }

    /// Verifies a listed (or webhook-named) charge and builds its registration: a konbini
    /// charge created no earlier than `from`, with a requested amount and currency.
    pub(crate) async fn verify(
        &self,
        store: &StoreId,
        item: &Listed,
        source: Source,
        from: Option<DateTime<Utc>>,
    ) -> Result<NewDiscovered, Halt> {
        let Some(id) = &item.charge_id else {
            return Err(Halt::Skip(SkipReason::Unverified, "no charge id".into()));
        };
        let looked = self.look(store, id, item.token_id.as_ref()).await?;
        if let Some(halt) = not_konbini(&looked.token) {
            return Err(halt);
        }
        registration(store, item, source, from, &looked)
    }
}

/// `Some` when a token says the payment is not konbini.
fn not_konbini(t: &TokenFacts) -> Option<Halt> {
    match payment_kind(t.payment_type.as_deref()) {
        PaymentKind::Konbini => None,
        PaymentKind::Other(w) => Some(Halt::Skip(
            SkipReason::NotKonbini,
            format!("token payment_type {w}"),
        )),
        PaymentKind::Unknown(w) => Some(Halt::Skip(
            SkipReason::UnknownPaymentType,
            format!(
                "token payment_type {:?}",
                w.chars().take(32).collect::<String>()
            ),
        )),
        PaymentKind::Missing => Some(Halt::Skip(
            SkipReason::UnknownPaymentType,
            "token has no payment_type".into(),
        )),
    }
}

/// The registration of a verified konbini charge. Pure.
pub(crate) fn registration(
    store: &StoreId,
    item: &Listed,
    source: Source,
    from: Option<DateTime<Utc>>,
    looked: &Looked,
) -> Result<NewDiscovered, Halt> {
    let c = &looked.charge;
    let created = c.created_on.or(item.created_on);
    if let (Some(from), Some(created)) = (from, created)
        && created < from
    {
        return Err(Halt::Skip(
            SkipReason::OutsideLookback,
            format!("created {}", crate::ledger::ts(created)),
        ));
    }
    let (Some(amount), Some(currency)) = (c.charge.requested_amount, c.charge.requested_currency)
    else {
        return Err(Halt::Skip(
            SkipReason::Unverified,
            "the charge has no requested amount or currency".into(),
        ));
    };
    let t = &looked.token;
    let konbini =
        brand(t.convenience_store.as_deref()).or_else(|| brand(item.convenience_store.as_deref()));
    let expires_at = created.and_then(|created| {
        deadline(
            created,
            t.expiration_period.as_deref(),
            t.expiration_time_shift.as_deref(),
            c.has_capture_at,
        )
    });
    let mut detail = match source {
        Source::Listing(l) => format!("found in the {} of store {store}", l.as_str()),
        Source::Webhook => format!("verified after a webhook for store {store}"),
    };
    detail.push_str(&format!(": {amount} {currency}"));
    if let Some(k) = &konbini {
        detail.push_str(&format!(", {k}"));
    }
    if let Some(e) = expires_at {
        detail.push_str(&format!(", payable until {}", crate::ledger::ts(e)));
    }
    Ok(NewDiscovered {
        charge_id: c.charge.id.clone(),
        store_id: store.clone(),
        requested_amount: amount,
        requested_currency: currency,
        konbini,
        expires_at,
        created_on: created,
        provider_status: c.charge.status.as_str().to_owned(),
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::univapay::ProviderCharge;

    fn looked(token: TokenFacts, created: Option<&str>, capture_at: bool) -> Looked {
        let charge = ProviderCharge::from_json(
            br#"{"id": "c1", "store_id": "s1", "status": "awaiting",
                 "requested_amount": 1500, "requested_currency": "JPY"}"#,
        )
        .unwrap();
        Looked {
            charge: VerifiedCharge {
                charge,
                token_id: TokenId::parse("t1"),
                created_on: created.map(|c| c.parse().unwrap()),
                has_capture_at: capture_at,
            },
            token,
        }
    }

    fn konbini(brand: Option<&str>, period: Option<&str>) -> TokenFacts {
        TokenFacts {
            payment_type: Some("konbini".into()),
            convenience_store: brand.map(str::to_owned),
            expiration_period: period.map(str::to_owned),
            expiration_time_shift: None,
        }
    }

    fn listed(brand: Option<&str>) -> Listed {
        Listed {
            charge_id: ChargeId::parse("c1").ok(),
            payment_type: Some("konbini".into()),
            convenience_store: brand.map(str::to_owned),
            token_id: None,
            created_on: None,
        }
    }

    #[test]
    fn a_registration_takes_amounts_from_the_charge_and_the_rest_from_the_token() {
        let s = StoreId::parse("s1").unwrap();
        let l = looked(
            konbini(Some("seven_eleven"), Some("P7D")),
            Some("2026-11-27T16:00:00Z"),
            false,
        );
        let src = Source::Listing(Listing::KonbiniHistory);
        let d = registration(&s, &listed(Some("lawson")), src, None, &l).unwrap();
        assert_eq!(
            (d.requested_amount, d.requested_currency.as_str()),
            (1500, "JPY")
        );
        assert_eq!(
            d.konbini.as_deref(),
            Some("seven_eleven"),
            "the token over the row"
        );
        assert_eq!(d.expires_at, Some("2026-12-05T14:59:59Z".parse().unwrap()));
        assert_eq!(d.provider_status, "awaiting");
        assert_eq!(
            d.detail,
            "found in the transaction history of store s1: 1500 JPY, seven_eleven, \
             payable until 2026-12-05T14:59:59.000Z"
        );
        // The row's brand when the token has none; no deadline without a period, or
        // with capture_at.
        let l = looked(konbini(None, None), Some("2026-11-27T16:00:00Z"), false);
        let d = registration(&s, &listed(Some("lawson")), src, None, &l).unwrap();
        assert_eq!((d.konbini.as_deref(), d.expires_at), (Some("lawson"), None));
        let l = looked(
            konbini(None, Some("P7D")),
            Some("2026-11-27T16:00:00Z"),
            true,
        );
        assert_eq!(
            registration(&s, &listed(None), Source::Webhook, None, &l)
                .unwrap()
                .expires_at,
            None
        );
    }

    #[test]
    fn older_than_the_window_or_without_amounts_is_skipped() {
        let s = StoreId::parse("s1").unwrap();
        let l = looked(konbini(None, None), Some("2026-01-01T00:00:00Z"), false);
        let from = "2026-02-01T00:00:00Z".parse().unwrap();
        let src = Source::Listing(Listing::Charges);
        assert!(matches!(
            registration(&s, &listed(None), src, Some(from), &l),
            Err(Halt::Skip(SkipReason::OutsideLookback, _))
        ));
        let mut l = looked(konbini(None, None), None, false);
        l.charge.charge.requested_amount = None;
        assert!(matches!(
            registration(&s, &listed(None), src, None, &l),
            Err(Halt::Skip(SkipReason::Unverified, _))
        ));
    }

    #[test]
    fn what_a_token_says_about_the_payment() {
        assert_eq!(not_konbini(&konbini(None, None)), None);
        let card = TokenFacts {
            payment_type: Some("card".into()),
            ..konbini(None, None)
        };
        assert!(matches!(
            not_konbini(&card),
            Some(Halt::Skip(SkipReason::NotKonbini, _))
        ));
        let odd = TokenFacts {
            payment_type: None,
            ..konbini(None, None)
        };
        assert!(matches!(
            not_konbini(&odd),
            Some(Halt::Skip(SkipReason::UnknownPaymentType, _))
        ));
    }
}
