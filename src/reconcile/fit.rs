//! The budget fit: what the open charges ask of UnivaPay's budget, as the latest pass
//! counted them, and the factor the recheck intervals are stretched by so that the checks
//! fit the budget share (see [`super::cadence`] for the arithmetic).
//!
//! One [`BudgetFit`] is shared by every check of a process (passes, hints, `check`), so
//! that a check outside a pass stretches like one inside it. Fitting is a bisection: it
//! runs again only when the counts or the budget have changed.

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::cadence::{Cadence, OpenCount};
use crate::ledger::{self, Urgency};

/// The first and last ledger timestamps SQLite's date functions read (years 0 to 9999).
const EARLIEST: &str = "0000-01-01T00:00:00.000Z";
const LATEST: &str = "9999-12-31T23:59:59.999Z";

/// What a pass found before it read its due charges.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    /// Charges due when the pass began.
    pub due: u64,
    /// Checks per minute the open charges need, unstretched (`None`: not estimated,
    /// nothing was due).
    pub demand: Option<f64>,
}

/// The demand estimate of the latest plan, and the stretch fitted to it.
#[derive(Default)]
pub struct BudgetFit {
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
    pub fn stretch(&self, cadence: &Cadence, budget: Option<f64>) -> f64 {
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
    pub fn counted(&self, open: OpenCount, demand: f64) {
        *locked(&self.fit) = Some(Fit {
            open,
            demand,
            fitted: None,
        });
    }

    /// Checks per minute the open charges need under the unstretched schedule, as the
    /// latest plan that found charges due counted them (0 before any).
    pub fn demand(&self) -> f64 {
        locked(&self.fit).as_ref().map_or(0.0, |f| f.demand)
    }

    pub fn set_urgency(&self, urgency: Option<Urgency>) {
        *locked(&self.urgency) = urgency;
    }

    pub fn urgency(&self) -> Option<Urgency> {
        locked(&self.urgency).clone()
    }
}

/// The urgency bounds for a pass starting at `now`: young is the schedule's first step;
/// near the deadline is inside the deadline watch (or past the deadline).
pub fn urgency(c: &Cadence, now: DateTime<Utc>) -> Option<Urgency> {
    let young = c.young_until();
    if young.is_none() && c.deadline_watch.is_zero() {
        return None;
    }
    Some(Urgency {
        // With a flat schedule no charge is young: a bound after every created_at.
        born_after: young.map_or_else(|| LATEST.to_owned(), |a| ts_before(now, a)),
        expiring_by: ts_after(now, c.deadline_watch),
    })
}

/// The ledger timestamp `d` before `now`, no earlier than `EARLIEST`.
pub fn ts_before(now: DateTime<Utc>, d: Duration) -> String {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .map(ledger::ts)
        .filter(|t| t.as_str() >= EARLIEST && t.len() == EARLIEST.len())
        .unwrap_or_else(|| EARLIEST.to_owned())
}

/// The ledger timestamp `d` after `now`, no later than `LATEST`.
pub fn ts_after(now: DateTime<Utc>, d: Duration) -> String {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .map(ledger::ts)
        .filter(|t| t.as_str() <= LATEST && t.len() == LATEST.len())
        .unwrap_or_else(|| LATEST.to_owned())
}
