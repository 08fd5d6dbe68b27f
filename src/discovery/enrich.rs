//! Enrichment (`discovery.enrich`, off by default): registered charges that lack their
//! brand or deadline get them from their transaction token. The charge GET gives the
//! token's id, the token GET the brand and the deadline's inputs: two requests per
//! charge, once per charge (`discovery_enriched` remembers it, whatever was found). Only
//! columns still NULL are filled: what the shop wrote stands.

use futures::StreamExt;

use super::deadline::deadline;
use super::outcome::StoreEnd;
use super::payment::{PaymentKind, brand, payment_kind};
use super::verify::{Halt, Looked, Verifier};
use crate::context::Context;
use crate::domain::ChargeId;
use crate::ledger::{Enrichment, LedgerError, Open};

/// Charges enriched in one sweep at most (two requests each).
pub(crate) const MAX_ENRICHED_PER_SWEEP: usize = 200;

/// What one round of enrichment did: how it ended and how many charges it filled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Enriched {
    pub(crate) end: StoreEnd,
    pub(crate) filled: u64,
}

/// Enriches what is waiting, through the sweep's `verifier`, and commits it with the
/// sweep `sweep_id`. `None` when nothing was waiting.
pub(super) async fn run(
    rec: &Context,
    verifier: &Verifier,
    sweep_id: i64,
) -> Result<Option<Enriched>, LedgerError> {
    let todo = rec
        .with_ledger(Open::Existing, |l| {
            l.charges_to_enrich(MAX_ENRICHED_PER_SWEEP)
        })
        .await?;
    if todo.is_empty() {
        return Ok(None);
    }
    let concurrency = rec.settings().api.concurrency;
    let mut found = Vec::new();
    let mut end = StoreEnd::Complete;
    let mut looks = futures::stream::iter(todo)
        .map(|(charge, store)| async move {
            let looked = verifier.look(&store, &charge, None).await;
            (charge, looked)
        })
        .buffered(concurrency);
    while let Some((charge, looked)) = looks.next().await {
        match looked {
            Ok(l) => found.push(enrichment(&charge, &l)),
            Err(Halt::Skip(reason, _)) => found.push(Enrichment {
                charge_id: charge.clone(),
                konbini: None,
                expires_at: None,
                outcome: reason.as_str().to_owned(),
            }),
            Err(Halt::Retry(e)) => {
                end = StoreEnd::Partial(format!("looking up a token failed: {e}"));
                break;
            }
            Err(Halt::Auth(e)) => {
                end = StoreEnd::Auth(e.to_string());
                break;
            }
            Err(Halt::Interrupted) => {
                end = StoreEnd::Interrupted;
                break;
            }
        }
    }
    drop(looks);
    let now = rec.now();
    let filled = rec
        .with_ledger(Open::Existing, move |mut l| {
            l.commit_enrichment(Some(sweep_id), &found, now)
        })
        .await?;
    Ok(Some(Enriched { end, filled }))
}

/// What a charge's token says, as the columns take it. Pure.
pub(crate) fn enrichment(charge: &ChargeId, looked: &Looked) -> Enrichment {
    let t = &looked.token;
    if payment_kind(t.payment_type.as_deref()) != PaymentKind::Konbini {
        return Enrichment {
            charge_id: charge.clone(),
            konbini: None,
            expires_at: None,
            outcome: "not_konbini".to_owned(),
        };
    }
    let c = &looked.charge;
    let konbini = brand(t.convenience_store.as_deref());
    let expires_at = c.created_on.and_then(|created| {
        deadline(
            created,
            t.expiration_period.as_deref(),
            t.expiration_time_shift.as_deref(),
            c.has_capture_at,
        )
    });
    let outcome = if konbini.is_some() || expires_at.is_some() {
        "filled"
    } else {
        "nothing_known"
    };
    Enrichment {
        charge_id: charge.clone(),
        konbini,
        expires_at,
        outcome: outcome.to_owned(),
    }
}
