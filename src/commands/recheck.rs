//! `recheck (--unchecked | CHARGE_ID...)`: make open charges due now, so the next pass
//! (or the daemon's next tick) checks them. A final charge is never reopened: it is named
//! and left alone. With ids, an id not in the ledger changes nothing at all (exit 1).

use std::io::Write;

use chrono::{DateTime, Utc};

use super::{CommandError, writing};
use crate::config::Settings;
use crate::domain::ChargeId;
use crate::ledger::{Ledger, Rechecked};

/// Which charges to make due.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// Every open charge no longer checked (given up after repeated 404s).
    Unchecked,
    Ids(Vec<ChargeId>),
}

/// Makes `target` due at `now` and reports one line per charge on `out`.
pub(crate) fn run(
    settings: &Settings,
    target: &Target,
    now: DateTime<Utc>,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let db = &settings.database;
    let mut ledger = Ledger::open_if_exists(&db.path, db.busy_timeout)?;
    let lines = match target {
        Target::Unchecked => {
            let ids = ledger.recheck_unchecked(now)?;
            if ids.is_empty() {
                vec!["no charge is unchecked; nothing changed".to_owned()]
            } else {
                ids.iter()
                    .map(|id| format!("{id}: due now (was no longer checked)"))
                    .collect()
            }
        }
        Target::Ids(ids) => {
            let done = ledger.recheck(ids, now)?;
            let unknown: Vec<&str> = ids
                .iter()
                .zip(&done)
                .filter(|(_, r)| **r == Rechecked::Unknown)
                .map(|(id, _)| id.as_str())
                .collect();
            if !unknown.is_empty() {
                return Err(CommandError::Refused(format!(
                    "not in the ledger: {}; nothing changed",
                    unknown.join(", ")
                )));
            }
            ids.iter().zip(&done).map(|(id, r)| line(id, r)).collect()
        }
    };
    writing(|| {
        for l in &lines {
            writeln!(out, "{l}")?;
        }
        out.flush()
    })
}

fn line(id: &ChargeId, r: &Rechecked) -> String {
    match r {
        Rechecked::Due { was: Some(at) } => format!("{id}: due now (was due {at})"),
        Rechecked::Due { was: None } => format!("{id}: due now (was no longer checked)"),
        Rechecked::Final(state) => format!("{id}: {state} is final; not reopened"),
        Rechecked::Unknown => format!("{id}: not in the ledger"),
    }
}
