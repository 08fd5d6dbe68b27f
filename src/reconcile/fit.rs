//! The budget fit: what the open charges ask of UnivaPay's budget, as the latest pass
//! counted them, and the factor the recheck intervals are stretched by so that the checks
//! fit the budget share (see [`super::cadence`] for the arithmetic).
//!
//! One [`BudgetFit`] is shared by every check of a process (passes, hints, `check`), so
//! that a check outside a pass stretches like one inside it. Fitting is a bisection: it
//! runs again only when the counts or the budget have changed.

use std::sync::Mutex;

use chrono::{DateTime, Utc};

use super::cadence::{Cadence, OpenCount};
use crate::ledger::{Timestamp, Urgency};

/// What a pass found before it read its due charges.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Plan {
    /// Charges due when the pass began.
    pub(crate) due: u64,
    /// Checks per minute the open charges need, unstretched (`None`: not estimated,
    /// nothing was due).
    pub(crate) demand: Option<f64>,
}

/// The demand estimate of the latest plan, and the stretch fitted to it.
#[derive(Default)]
pub(crate) struct BudgetFit {
    /// What the latest plan that found charges due counted, and the stretch fitted to it.
    fit: Mutex<Option<Fit>>,
    /// Set while a stretched pass reads the urgent due charges first.
    urgency: Mutex<Option<Urgency>>,
}

/// The open charges as a plan counted them, and the stretch last fitted to them.
struct Fit {
    open: OpenCount,
    /// Checks per minute the open charges need under the unstretched schedule.
    demand: f64,
    /// The budget the stretch was last fitted to, and that stretch.
    fitted: Option<(Option<f64>, f64)>,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain values: a panic elsewhere cannot leave them half-changed in a harmful way.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl BudgetFit {
    /// The factor the recheck intervals are stretched by now: the open charges the latest
    /// plan counted, fitted to `budget` per minute (1 while either is unknown).
    pub(crate) fn stretch(&self, cadence: &Cadence, budget: Option<f64>) -> f64 {
        let mut fit = locked(&self.fit);
        let Some(fit) = fit.as_mut() else {
            return 1.0;
        };
        match fit.fitted {
            Some((fitted_to, stretch)) if fitted_to == budget => stretch,
            _ => {
                let stretch = cadence.stretch_to_fit(&fit.open, budget);
                fit.fitted = Some((budget, stretch));
                stretch
            }
        }
    }

    /// Keeps what a plan counted: the open charges and the checks per minute they need.
    pub(crate) fn counted(&self, open: OpenCount, demand: f64) {
        *locked(&self.fit) = Some(Fit {
            open,
            demand,
            fitted: None,
        });
    }

    /// Checks per minute the open charges need under the unstretched schedule, as the
    /// latest plan that found charges due counted them (0 before any).
    pub(crate) fn demand(&self) -> f64 {
        locked(&self.fit).as_ref().map_or(0.0, |f| f.demand)
    }

    pub(crate) fn set_urgency(&self, urgency: Option<Urgency>) {
        *locked(&self.urgency) = urgency;
    }

    pub(crate) fn urgency(&self) -> Option<Urgency> {
        locked(&self.urgency).clone()
    }
}

/// The urgency bounds for a pass starting at `now`: young is the schedule's first step;
/// near the deadline is inside the deadline watch (or past the deadline).
pub(crate) fn urgency(c: &Cadence, now: DateTime<Utc>) -> Option<Urgency> {
    let young = c.young_until();
    if young.is_none() && c.deadline_watch.is_zero() {
        return None;
    }
    Some(Urgency {
        // With a flat schedule no charge is young: a bound after every created_at.
        born_after: young.map_or_else(Timestamp::latest, |a| Timestamp::before(now, a)),
        expiring_by: Timestamp::after(now, c.deadline_watch),
    })
}
