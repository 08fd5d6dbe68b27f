//! Discovery: the sweep that finds the konbini charges UnivaPay has and the ledger lacks
//! (a shop that crashed between creating a charge and registering it, a code path that
//! forgot the INSERT, a shop that never writes one), and registers them to be reconciled
//! like any other.
//!
//! # The sweep, per configured store
//! 1. The window: from `discovery.overlap`
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
//!    `deadline::deadline`; NULL when unsure), `created_at` from UnivaPay's
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
//! As a job of the job loop (`SweepJob`): in the daemon, every `discovery.interval`;
//! with `--once`, before the pass when the last sweep started at least an interval ago.
//! Always under the pass lock, and through the context's client: the same pacer and
//! budget share as the passes. A pause UnivaPay asked for (`runs.resume_at`) is honoured
//! before the first request of a sweep or of a webhook's unknown charge. With discovery
//! off, no list, history or token request is ever made.
//!
//! A webhook about a charge the ledger does not hold takes the same verification
//! ([`register_unknown`]).

pub(crate) mod deadline;
mod enrich;
mod notice;
mod outcome;
mod payment;
mod sweep;
mod verify;
mod window;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::context::Context;
use crate::domain::{ChargeId, StoreId};
use crate::jobs::{Ended, InOnce, Job, Lock, When, Work};
use crate::ledger::{DiscoveryBatch, LedgerError, Open, SkipReason, SweepOutcome, Trigger};
use crate::lock::PassGuard;
use crate::reconcile::run::honour_recorded_pause;
use crate::univapay::Listed;

pub use notice::history_fallbacks;
pub use sweep::MAX_VERIFIED_PER_SWEEP;
pub use sweep::SweepReport;
pub use window::SETTLE;

/// What stops `--once` before its pass.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DiscoveryError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("discovery sweep: {0}")]
    AuthFailed(String),
}

/// Runs a sweep now under the pass lock `held`. `None` when discovery is off, or when a
/// pause UnivaPay asked for (`runs.resume_at`, recorded by any process) has not ended:
/// then no request at all is sent (a short rest of the pause is waited out instead).
pub async fn sweep(
    ctx: &Context,
    held: &PassGuard,
    trigger: Trigger,
    shutdown: &CancellationToken,
) -> Result<Option<SweepReport>, LedgerError> {
    let Some(settings) = ctx.settings().discovery.clone() else {
        return Ok(None);
    };
    if let Err(resume_at) = honour_recorded_pause(ctx).await? {
        tracing::info!(
            "discovery sweep not started: {}",
            crate::reconcile::run::pause_detail(resume_at)
        );
        return Ok(None);
    }
    let span = tracing::info_span!(
        "sweep",
        sweep_id = tracing::field::Empty,
        trigger = trigger.as_str()
    );
    let report = sweep::run(ctx, &settings, held, trigger, shutdown)
        .instrument(span.clone())
        .await?;
    span.record("sweep_id", report.sweep_id);
    span.in_scope(|| match report.outcome {
        SweepOutcome::Ok | SweepOutcome::Interrupted => {
            tracing::info!("{}", report.summary_line());
        }
        _ => tracing::warn!(
            detail = report.detail.as_deref().unwrap_or(""),
            "{}",
            report.summary_line()
        ),
    });
    Ok(Some(report))
}

/// How long until a sweep is due: zero when none ran yet or the last one started at least
/// `discovery.interval` ago. `None` when discovery is off.
pub(crate) async fn until_due(ctx: &Context) -> Result<Option<Duration>, LedgerError> {
    let Some(interval) = ctx.settings().discovery.as_ref().map(|d| d.interval) else {
        return Ok(None);
    };
    let last = ctx
        .with_ledger(Open::Migrate, |l| l.last_sweep_started())
        .await?;
    let Some(last) = last else {
        return Ok(Some(Duration::ZERO));
    };
    let since = (ctx.now() - last).to_std().unwrap_or(Duration::ZERO);
    // A clock stepped back makes `since` zero: wait one interval, never longer.
    Ok(Some(interval.saturating_sub(since)))
}

/// The sweep as a job ([`crate::jobs`]): under the pass lock, whenever due (every
/// `discovery.interval`; a minute after a sweep that could not start), and in `--once`
/// before the pass when due. In `--once` only the ledger failing and the credentials
/// being refused stop what follows; anything else the sweep met is in its log line and
/// its `discovery_sweeps` row.
pub(crate) struct SweepJob {
    ctx: Context,
    /// Wait before the next look at `until_due` (after a sweep that failed).
    backoff: std::sync::Mutex<Duration>,
}

impl SweepJob {
    pub(crate) fn new(ctx: Context) -> SweepJob {
        SweepJob {
            ctx,
            backoff: std::sync::Mutex::new(Duration::ZERO),
        }
    }

    fn interval(&self) -> Option<Duration> {
        self.ctx.settings().discovery.as_ref().map(|d| d.interval)
    }

    fn set_backoff(&self, d: Duration) {
        *self.backoff.lock().unwrap_or_else(|p| p.into_inner()) = d;
    }

    fn take_backoff(&self) -> Duration {
        std::mem::take(&mut *self.backoff.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// When the next sweep may start: the backoff, then until it is due.
    async fn wait_due(&self, interval: Duration) -> Duration {
        let backoff = self.take_backoff();
        if !backoff.is_zero() {
            return backoff;
        }
        match until_due(&self.ctx).await {
            Ok(w) => w.unwrap_or(interval),
            Err(e) => {
                tracing::error!(error = %e, "cannot tell when discovery is due");
                interval
            }
        }
    }
}

impl Job for SweepJob {
    fn name(&self) -> &'static str {
        "discovery sweep"
    }

    fn when(&self) -> When {
        When::Own
    }

    fn lock(&self) -> Lock {
        Lock::Pass
    }

    fn work(self: Arc<Self>, trigger: Trigger) -> Work {
        Box::new(move |held, shutdown| {
            Box::pin(async move {
                let Some(held) = held else {
                    return Ended::Fatal("a sweep runs only under the pass lock".to_owned());
                };
                match sweep(&self.ctx, &held, trigger, &shutdown).await {
                    Ok(Some(r)) if r.outcome == SweepOutcome::AuthFailed => Ended::Fatal(
                        DiscoveryError::AuthFailed(
                            r.detail
                                .unwrap_or_else(|| "credentials rejected".to_owned()),
                        )
                        .to_string(),
                    ),
                    Ok(Some(_)) => Ended::Ran,
                    // Discovery is on: nothing ran because of a recorded pause. Look
                    // again later, not at once.
                    Ok(None) => {
                        self.set_backoff(self.retry_after_skip());
                        Ended::Ran
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "discovery sweep failed");
                        self.set_backoff(self.interval().unwrap_or(RETRY_AFTER_SKIP));
                        Ended::Fatal(e.to_string())
                    }
                }
            })
        })
    }

    fn next(self: Arc<Self>, shutdown: CancellationToken) -> BoxFuture<'static, Option<Work>> {
        Box::pin(async move {
            let interval = self.interval()?;
            let wait = self.wait_due(interval).await;
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(wait) => {}
            }
            Some(self.work(Trigger::Schedule))
        })
    }

    fn in_once(self: Arc<Self>) -> BoxFuture<'static, InOnce> {
        Box::pin(async move {
            match until_due(&self.ctx).await {
                Ok(Some(w)) if w.is_zero() => InOnce::Run,
                Ok(_) => InOnce::Skip,
                // The sweep reports the ledger's failure itself.
                Err(_) => InOnce::Run,
            }
        })
    }

    fn retry_after_skip(&self) -> Duration {
        RETRY_AFTER_SKIP.min(self.interval().unwrap_or(RETRY_AFTER_SKIP))
    }
}

/// How long the daemon waits before trying again when a sweep could not start.
const RETRY_AFTER_SKIP: Duration = Duration::from_secs(60);

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
    rec: &Context,
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
    // A recorded pause binds this verification too; the sweep finds the charge later.
    if let Err(resume_at) = honour_recorded_pause(rec).await? {
        return Ok(Unknown::Failed(crate::reconcile::run::pause_detail(
            resume_at,
        )));
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
