//! Discovery: the sweep that finds the konbini charges UnivaPay has and the ledger lacks
//! (a shop that crashed between creating a charge and registering it, a code path that
//! forgot the INSERT, a shop that never writes one), and registers them to be reconciled
//! like any other.
//!
//! # The sweep, per configured store
//! 1. The window: from [`discovery.overlap`](crate::config::DiscoverySettings::overlap)
//!    behind the store's watermark (`discovery_watermarks.swept_to`; the first sweep
//!    starts `discovery.lookback` ago, and no sweep looks further back than that) to
//!    [`SETTLE`] ago, so that a shop registering right after creating is never raced, and
//!    a row UnivaPay lists late is still inside a later window. What the overlap lists
//!    again is known by id and costs its page only.
//! 2. `GET /stores/{sid}/transaction_history?type=charge&service_provider=convenience`,
//!    oldest first, 100 rows a page, cursor paging: the cheapest listing, since UnivaPay
//!    filters it to konbini charges and each row carries its payment type and brand. A
//!    store whose history answers 404 or another 4xx on its first page is read from `GET
//!    /stores/{sid}/charges` instead (every charge; the token then decides), and so is a
//!    store whose history, read to its end, named no charge while the first page of its
//!    charge list holds one the ledger lacks (rows shaped otherwise than expected must
//!    not make discovery find nothing in silence: one WARN line per store per process,
//!    and `konbini_discovery_history_fallbacks_total`).
//!    Each page's new items are checked to be in creation order: a listing served newest
//!    first (a server ignoring `cursor_direction=asc`) moves the watermark only when it
//!    is read to its end (see `Mark` in `window.rs`).
//! 3. Per page, the ids the ledger already holds (or skipped for good) cost nothing. A
//!    row of another payment type costs nothing either; a row with a payment type
//!    nobody knows is recorded as skipped. Every other one is verified: its charge GET
//!    (amount and currency come only from there, never from the row) and its token GET
//!    (payment type, brand and deadline; each token fetched at most once per sweep).
//! 4. A verified konbini charge is registered: `origin = 'discovered'`, requested amount
//!    and currency from the charge, brand and `expires_at` from the token (the rule is
//!    [`deadline::deadline`]; NULL when unsure), `created_at` from UnivaPay's
//!    `created_on` (so its recheck cadence counts its real age), one `discovered` event,
//!    due at once.
//! 5. The page's registrations, skips and the store's new watermark are one transaction.
//!    A crash mid-sweep loses at most the page in flight, which the next sweep redoes;
//!    registration is by charge id and never duplicates.
//!
//! # What ends a listing early (the rest waits for the next sweep)
//! A page of more than twice the items asked for, `has_more` with no items, a page of
//! items all seen before in the sweep, a cursor used before, 100 pages for one store,
//! 1,000 verifications in one sweep, a transient failure (the charge at fault is retried on
//! the next sweeps, [`crate::ledger::MAX_ATTEMPTS`] times in all, then skipped as
//! `unreachable`), shutdown. Items without ids are counted and skipped. 401/403 stops
//! the whole sweep. Every sweep has a `discovery_sweeps` row and one log line; every
//! charge it spent a request on and did not register has a `discovery_skips` row.
//!
//! # When
//! In the daemon, every `discovery.interval` ([`every_interval`]); with `--once`, before
//! the pass when the last sweep started at least an interval ago ([`before_pass`]).
//! Always under the pass lock, and through the reconciler's client: the same pacer and
//! budget share as the passes. With discovery off, no list, history or token request
//! is ever made.
//!
//! A webhook about a charge the ledger does not hold takes the same verification
//! ([`register_unknown`]).

pub mod deadline;
mod enrich;
mod notice;
mod outcome;
mod payment;
mod sweep;
mod verify;
mod window;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::domain::{ChargeId, StoreId};
use crate::ledger::{DiscoveryBatch, LedgerError, Open, SkipReason, SweepOutcome, Trigger};
use crate::lock::{PassGuard, PassLock};
use crate::reconcile::Reconciler;
use crate::univapay::Listed;

pub use enrich::MAX_ENRICHED_PER_SWEEP;
pub use notice::history_fallbacks;
pub use outcome::{StoreEnd, verdict};
pub use sweep::{MAX_PAGES_PER_STORE, MAX_VERIFIED_PER_SWEEP, SweepReport};
pub use window::SETTLE;

/// What stops `--once` before its pass.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("discovery sweep: {0}")]
    AuthFailed(String),
}

/// Runs a sweep now under the pass lock `held`. `None` when discovery is off.
pub async fn sweep(
    rec: &Reconciler,
    held: &PassGuard,
    trigger: Trigger,
    shutdown: &CancellationToken,
) -> Result<Option<SweepReport>, LedgerError> {
    let Some(settings) = rec.settings().discovery.clone() else {
        return Ok(None);
    };
    let report = sweep::run(rec, &settings, held, trigger, shutdown).await?;
    match report.outcome {
        SweepOutcome::Ok | SweepOutcome::Interrupted => {
            tracing::info!("{}", report.summary_line());
        }
        _ => tracing::warn!(
            detail = report.detail.as_deref().unwrap_or(""),
            "{}",
            report.summary_line()
        ),
    }
    Ok(Some(report))
}

/// How long until a sweep is due: zero when none ran yet or the last one started at least
/// `discovery.interval` ago. `None` when discovery is off.
pub async fn until_due(rec: &Reconciler) -> Result<Option<Duration>, LedgerError> {
    let Some(interval) = rec.settings().discovery.as_ref().map(|d| d.interval) else {
        return Ok(None);
    };
    let last = rec
        .with_ledger(Open::Migrate, |l| l.last_sweep_started())
        .await?;
    let Some(last) = last else {
        return Ok(Some(Duration::ZERO));
    };
    let since = (rec.now() - last).to_std().unwrap_or(Duration::ZERO);
    // A clock stepped back makes `since` zero: wait one interval, never longer.
    Ok(Some(interval.saturating_sub(since)))
}

/// Runs a sweep if one is due (see [`until_due`]).
pub async fn sweep_if_due(
    rec: &Reconciler,
    held: &PassGuard,
    trigger: Trigger,
    shutdown: &CancellationToken,
) -> Result<Option<SweepReport>, LedgerError> {
    match until_due(rec).await? {
        Some(wait) if wait.is_zero() => sweep(rec, held, trigger, shutdown).await,
        _ => Ok(None),
    }
}

/// `--once`: the sweep when due, before the pass. Only the ledger failing and the
/// credentials being refused stop the pass; anything else the sweep met is in its log
/// line and its `discovery_sweeps` row.
pub async fn before_pass(
    rec: &Reconciler,
    held: &PassGuard,
    shutdown: &CancellationToken,
) -> Result<(), DiscoveryError> {
    let report = sweep_if_due(rec, held, Trigger::Once, shutdown).await?;
    match report {
        Some(r) if r.outcome == SweepOutcome::AuthFailed => Err(DiscoveryError::AuthFailed(
            r.detail
                .unwrap_or_else(|| "credentials rejected".to_owned()),
        )),
        _ => Ok(()),
    }
}

/// How long the daemon waits before trying again when a sweep could not start.
const RETRY_AFTER_SKIP: Duration = Duration::from_secs(60);

/// The daemon's sweeps: one whenever due, until `shutdown`. A sweep takes `slot` (the
/// daemon's one-pass-at-a-time permit, waiting for a pass in flight to end) and the pass
/// lock (skipped, and tried again a minute later, while another process holds it).
/// Returns at once when discovery is off.
pub async fn every_interval(
    rec: Reconciler,
    lock: PassLock,
    slot: Arc<Semaphore>,
    shutdown: CancellationToken,
) {
    let Some(interval) = rec.settings().discovery.as_ref().map(|d| d.interval) else {
        return;
    };
    loop {
        let wait = match until_due(&rec).await {
            Ok(w) => w.unwrap_or(interval),
            Err(e) => {
                tracing::error!(error = %e, "cannot tell when discovery is due");
                interval
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        let permit = tokio::select! {
            () = shutdown.cancelled() => return,
            p = slot.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let swept = match lock.try_acquire() {
            Ok(Ok(guard)) => sweep(&rec, &guard, Trigger::Schedule, &shutdown).await,
            Ok(Err(busy)) => {
                tracing::info!(
                    holder_pid = busy.holder,
                    "discovery sweep skipped: another process holds the pass lock"
                );
                Ok(None)
            }
            Err(e) => {
                tracing::error!(error = %e, "discovery sweep not started");
                Ok(None)
            }
        };
        drop(permit);
        let retry = match swept {
            Ok(Some(_)) => Duration::ZERO,
            Ok(None) => RETRY_AFTER_SKIP.min(interval),
            Err(e) => {
                tracing::error!(error = %e, "discovery sweep failed");
                interval
            }
        };
        if !retry.is_zero() {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(retry) => {}
            }
        }
    }
}

/// What [`register_unknown`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unknown {
    /// Verified konbini and registered (origin `discovered`), due at once.
    Registered,
    /// In the ledger already, or skipped for good before.
    AlreadyKnown,
    /// Discovery is off, or the store is not in `discovery.stores`.
    NotWatched,
    /// Not registered, recorded in `discovery_skips` with this reason.
    Skipped(SkipReason),
    /// UnivaPay could not be asked now (transient failure, credentials refused): nothing
    /// was recorded; the sweep finds the charge later if it is konbini.
    Failed(String),
}

/// For a webhook naming a charge the ledger does not hold: verifies it like a sweep does
/// (charge GET, token GET, both paced) and registers it if it is konbini. Needs no pass
/// lock: registration is one idempotent transaction.
pub async fn register_unknown(
    rec: &Reconciler,
    store: &StoreId,
    charge: &ChargeId,
) -> Result<Unknown, LedgerError> {
    let watched = rec
        .settings()
        .discovery
        .as_ref()
        .is_some_and(|d| d.stores.contains(store));
    if !watched {
        return Ok(Unknown::NotWatched);
    }
    let id = charge.clone();
    let known = rec
        .with_ledger(Open::Migrate, move |l| l.known_charges([&id]))
        .await?;
    if !known.is_empty() {
        return Ok(Unknown::AlreadyKnown);
    }
    let verifier = verify::Verifier::new(
        rec.client().clone(),
        CancellationToken::new(),
        rec.max_pause(),
    );
    let item = Listed {
        charge_id: Some(charge.clone()),
        payment_type: None,
        convenience_store: None,
        token_id: None,
        created_on: None,
    };
    let mut batch = DiscoveryBatch::default();
    let result = match verifier
        .verify(store, &item, verify::Source::Webhook, None)
        .await
    {
        Ok(found) => {
            batch.found.push(found);
            None
        }
        Err(verify::Halt::Skip(reason, detail)) => {
            batch.skipped.push(crate::ledger::Skip {
                charge_id: charge.clone(),
                store_id: store.clone(),
                reason,
                detail,
            });
            Some(Unknown::Skipped(reason))
        }
        Err(verify::Halt::Retry(e) | verify::Halt::Auth(e)) => {
            return Ok(Unknown::Failed(e.to_string()));
        }
        Err(verify::Halt::Interrupted) => return Ok(Unknown::Failed("interrupted".to_owned())),
    };
    let now = rec.now();
    let added = rec
        .with_ledger(Open::Existing, move |mut l| l.commit_discovery(&batch, now))
        .await?;
    Ok(result.unwrap_or(if added.discovered == 1 {
        Unknown::Registered
    } else {
        Unknown::AlreadyKnown
    }))
}
