//! The single check of one charge, shared by passes, webhook hints and the `check`
//! command: wait for the pacer's permission, GET the charge, and decide with
//! [`super::decide`] what the answer does to it. Nothing is written here: the caller
//! writes the [`CheckResult`] under its run.
//!
//! A [`Checker`] is the context plus the decision rules' knobs and the shared budget fit
//! (every check stretches the intervals alike, wherever it was started from), and a
//! progress count the daemon's watchdog reads.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::Instrument;

use super::cadence::Cadence;
use super::decide::{self, Policy};
use super::fit::BudgetFit;
use super::stop::Stop;
use crate::config::ReconcileSettings;
use crate::context::Context;
use crate::domain::Decision;
use crate::ledger::{CheckResult, DueCharge};
use crate::univapay::{ApiError, ErrorClass, Paused};

/// The decision rules' knobs, from `[reconcile]` (unstretched).
pub(crate) fn policy(r: &ReconcileSettings) -> Policy {
    Policy {
        cadence: Cadence {
            schedule: r.recheck_schedule.as_slice().into(),
            expiry_grace: r.expiry_grace,
            deadline_watch: r.deadline_watch,
            stretch: 1.0,
        },
        retry_backoff: r.retry_backoff,
        retry_backoff_max: r.retry_backoff_max,
        not_found_limit: r.not_found_limit,
    }
}

/// How one [`Checker::check_one`] ended.
#[derive(Debug)]
pub(crate) enum Checked {
    /// Decided and ready to write. `no_answer` says why when no HTTP answer came. For a
    /// 404, `in_wall` is the decision to write instead should every check of the pass
    /// answer 404 (then it does not count toward `not_found_limit`).
    Decided {
        result: Box<CheckResult>,
        no_answer: Option<String>,
        in_wall: Option<Box<Decision>>,
    },
    /// UnivaPay refused our credentials: nothing to write, and the run must stop.
    AuthRejected(ApiError),
    /// Stopped before the request went out, or abandoned in flight: the charge is
    /// untouched and stays due.
    Skipped,
    /// UnivaPay imposes a wait longer than a run sits idle; nothing was sent, the charge
    /// is untouched and stays due, and the run must stop.
    Paused(Paused),
}

impl Checked {
    /// Whether a request went out for this check.
    pub(crate) fn sent(&self) -> bool {
        matches!(self, Checked::Decided { .. } | Checked::AuthRejected(_))
    }
}

/// Checks charges one at a time, on a context. Cheap to clone; clones share the fit and
/// the progress count.
#[derive(Clone)]
pub struct Checker {
    ctx: Context,
    policy: Policy,
    fit: Arc<BudgetFit>,
    progress: Arc<AtomicU64>,
}

impl Checker {
    pub(crate) fn new(ctx: Context) -> Checker {
        let policy = policy(&ctx.settings().reconcile);
        Checker {
            ctx,
            policy,
            fit: Arc::default(),
            progress: Arc::new(AtomicU64::new(0)),
        }
    }

    pub(crate) fn context(&self) -> &Context {
        &self.ctx
    }

    /// The unstretched rules' knobs.
    pub(crate) fn policy(&self) -> &Policy {
        &self.policy
    }

    pub(crate) fn fit(&self) -> &BudgetFit {
        &self.fit
    }

    /// The factor the recheck intervals are stretched by now (see [`BudgetFit::stretch`]).
    pub(crate) fn stretch(&self) -> f64 {
        self.fit
            .stretch(&self.policy.cadence, self.ctx.client().budget_per_minute())
    }

    /// A number that grows while checks make progress (a check finished, a stage of a run
    /// passed), for the daemon's watchdog: a count that stops moving is a stuck pass.
    pub(crate) fn progress(&self) -> u64 {
        self.progress.load(Ordering::Relaxed)
    }

    /// Counts one step of progress.
    pub(crate) fn beat(&self) {
        self.progress.fetch_add(1, Ordering::Relaxed);
    }

    /// Checks one charge: waits its turn in the pacer, GETs it, and decides what the
    /// answer does to it. Its log lines carry the charge id (a `check` span inside the
    /// run's).
    pub(crate) async fn check_one(&self, charge: DueCharge, stop: &Stop) -> Checked {
        let span = tracing::info_span!("check", charge_id = %charge.charge_id);
        self.check_in_span(charge, stop).instrument(span).await
    }

    async fn check_in_span(&self, charge: DueCharge, stop: &Stop) -> Checked {
        let client = self.ctx.client();
        // A charge still waiting for the rate-limit budget when the run stops is not
        // sent at all; it stays due, untouched.
        let ticket = tokio::select! {
            t = client.pace(self.ctx.max_pause()) => match t {
                Ok(t) => t,
                Err(paused) => return Checked::Paused(paused),
            },
            () = stop.stop.cancelled() => return Checked::Skipped,
        };
        let fetched = tokio::select! {
            f = client.get_charge_paced(ticket, &charge.store_id, &charge.charge_id) => f,
            () = stop.abandon.cancelled() => return Checked::Skipped,
        };
        let result = fetched.result;
        if let Err(e) = &result {
            if e.class() == ErrorClass::Auth {
                return Checked::AuthRejected(e.clone());
            }
            tracing::debug!(error = %e, "check failed");
        }
        self.decide(charge, result)
    }

    /// The pure part: what the answer (or the failure) does to the charge.
    fn decide(
        &self,
        charge: DueCharge,
        result: Result<crate::univapay::ProviderCharge, ApiError>,
    ) -> Checked {
        let now = self.ctx.now();
        let jitter = rand::random::<f64>();
        let mut policy = self.policy.clone();
        policy.cadence.stretch = self.stretch();
        let decision = decide::decide(
            &charge.tracked,
            &charge.requested,
            &charge.dates,
            result.as_ref(),
            now,
            &policy,
            jitter,
        );
        let in_wall = matches!(result, Err(ApiError::NotFound)).then(|| {
            Box::new(decide::decide_not_found_in_wall(
                &charge.tracked,
                now,
                &policy,
                jitter,
            ))
        });
        Checked::Decided {
            result: Box::new(CheckResult {
                charge,
                decision,
                checked_at: now,
                shop: result.as_ref().ok().map(|answer| {
                    crate::delivery::facts::shop_facts(
                        &answer.metadata,
                        &self.ctx.settings().reconcile.order_key,
                    )
                }),
            }),
            no_answer: result
                .err()
                .filter(ApiError::is_unreachable)
                .map(|e| e.to_string()),
            in_wall,
        }
    }
}
