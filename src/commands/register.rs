//! `register CHARGE_ID STORE_ID AMOUNT [--currency CUR] [--expires-at RFC3339] [--order REF]`: the
//! contract's plain INSERT, with the values checked first. Idempotent: registering a
//! charge again with the same values changes nothing and succeeds; other values are
//! refused, naming what is registered. The only command that creates the database.

use std::io::Write;

use super::{CommandError, writing};
use crate::config::Settings;
use crate::ledger::{Database, Integrity, NewCharge, Open, Registered, ts};

/// Registers `charge` in the ledger of `settings` (creating and migrating the database if
/// needed) and reports on `out`.
pub(crate) fn run(
    settings: &Settings,
    charge: &NewCharge,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let db = &settings.database;
    // The shop's systems may register every order as it is placed: the integrity check
    // that reads the whole file runs daily, not for every registration.
    let mut ledger = Database::new(&db.path, db.busy_timeout)
        .with_integrity(Integrity::Daily)
        .open(Open::Migrate)?;
    let line = match ledger.register(charge)? {
        Registered::Inserted => format!("registered {}; due now", describe(charge)),
        Registered::Identical => format!(
            "{} is already registered with these values; nothing changed",
            charge.charge_id
        ),
        Registered::Conflict(registered) => {
            return Err(CommandError::Refused(format!(
                "charge {} is already registered with other values ({registered}); nothing changed",
                charge.charge_id
            )));
        }
    };
    writing(|| writeln!(out, "{line}"))
}

fn describe(c: &NewCharge) -> String {
    let expires = c
        .expires_at
        .map(|t| format!(", expires {}", ts(t)))
        .unwrap_or_default();
    format!(
        "{}: store {}, {} {}{expires}",
        c.charge_id, c.store_id, c.amount, c.currency
    )
}
