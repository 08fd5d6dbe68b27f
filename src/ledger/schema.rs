//! Versioned schema migrations (tracked in SQLite's `user_version`). Never edit a shipped
//! migration: add a new one. Each runs in its own transaction, so a crash during the first
//! start leaves either no schema or a complete one.

use rusqlite_migration::{M, Migrations};

/// RFC 3339 UTC with milliseconds, the format every timestamp in the ledger uses, so that
/// text order is time order (`2026-11-27T16:55:22.123Z`).
pub const NOW_SQL: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

const V1: &str = r#"
CREATE TABLE charges (
    charge_id          TEXT PRIMARY KEY NOT NULL
                       CHECK (length(charge_id) BETWEEN 1 AND 255
                              AND charge_id NOT GLOB '*[^A-Za-z0-9._-]*'),
    store_id           TEXT NOT NULL
                       CHECK (length(store_id) BETWEEN 1 AND 255
                              AND store_id NOT GLOB '*[^A-Za-z0-9._-]*'),
    requested_amount   INTEGER NOT NULL CHECK (requested_amount BETWEEN 0 AND 1000000000000),
    requested_currency TEXT NOT NULL DEFAULT 'JPY' CHECK (requested_currency GLOB '[A-Z][A-Z][A-Z]'),
    state              TEXT NOT NULL DEFAULT 'pending'
                       CHECK (state IN ('pending', 'awaiting', 'successful', 'failed')),
    provider_status    TEXT,
    charged_amount     INTEGER CHECK (charged_amount >= 0),
    charged_currency   TEXT,
    amount_mismatch    INTEGER NOT NULL DEFAULT 0 CHECK (amount_mismatch IN (0, 1)),
    mismatch_detail    TEXT,
    payment_number     TEXT,
    payment_url        TEXT,
    next_check_at      TEXT DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    last_checked_at    TEXT,
    last_error         TEXT,
    consecutive_errors INTEGER NOT NULL DEFAULT 0 CHECK (consecutive_errors >= 0),
    not_found_count    INTEGER NOT NULL DEFAULT 0 CHECK (not_found_count >= 0),
    created_at         TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at         TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    -- Final charges are never due again.
    CHECK (state IN ('pending', 'awaiting') OR next_check_at IS NULL)
) STRICT;

-- "Which charges are due?" walks this index in order and stops at the first future time,
-- so its cost follows the number of due charges, not the size of the table. Final charges
-- (NULL) are not in it at all.
CREATE INDEX charges_due ON charges (next_check_at, charge_id) WHERE next_check_at IS NOT NULL;
CREATE INDEX charges_state ON charges (state, updated_at);
CREATE INDEX charges_mismatch ON charges (charge_id) WHERE amount_mismatch = 1;

-- Any edit by another program bumps updated_at, which the reconciler checks before it
-- writes a result, so an operator's change is never silently overwritten.
CREATE TRIGGER charges_touch AFTER UPDATE ON charges
WHEN NEW.updated_at = OLD.updated_at
BEGIN
    UPDATE charges SET updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
    WHERE charge_id = NEW.charge_id;
END;

CREATE TABLE runs (
    id          INTEGER PRIMARY KEY,
    trigger     TEXT NOT NULL CHECK (trigger IN ('once', 'schedule')),
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    outcome     TEXT NOT NULL DEFAULT 'running'
                CHECK (outcome IN ('running', 'ok', 'interrupted', 'auth_failed', 'unreachable', 'failed')),
    checked     INTEGER NOT NULL DEFAULT 0,
    transitions INTEGER NOT NULL DEFAULT 0,
    mismatches  INTEGER NOT NULL DEFAULT 0,
    errors      INTEGER NOT NULL DEFAULT 0,
    pid         INTEGER,
    detail      TEXT
) STRICT;

CREATE TABLE charge_events (
    id              INTEGER PRIMARY KEY,
    charge_id       TEXT NOT NULL,
    at              TEXT NOT NULL,
    kind            TEXT NOT NULL CHECK (kind <> ''),
    from_state      TEXT,
    to_state        TEXT,
    provider_status TEXT,
    detail          TEXT,
    run_id          INTEGER
) STRICT;
CREATE INDEX charge_events_charge ON charge_events (charge_id, id);
CREATE INDEX charge_events_kind_at ON charge_events (kind, at);

CREATE TRIGGER charge_events_append_only BEFORE UPDATE ON charge_events
BEGIN
    SELECT RAISE(ABORT, 'charge_events is append-only');
END;

-- Operator views.
CREATE VIEW open_charges AS
SELECT charge_id, store_id, state, provider_status, requested_amount, requested_currency,
       payment_number, created_at, next_check_at, last_error,
       CAST(julianday('now') - julianday(created_at) AS INTEGER) AS days_open
FROM charges
WHERE state IN ('pending', 'awaiting');

CREATE VIEW mismatched_charges AS
SELECT charge_id, store_id, state, provider_status, requested_amount, requested_currency,
       charged_amount, charged_currency, mismatch_detail, updated_at
FROM charges
WHERE amount_mismatch = 1;

CREATE VIEW unchecked_charges AS
SELECT charge_id, store_id, state, last_error, last_checked_at
FROM charges
WHERE state IN ('pending', 'awaiting') AND next_check_at IS NULL;
"#;

pub fn migrations() -> Migrations<'static> {
    Migrations::new(vec![M::up(V1)])
}

#[cfg(test)]
mod tests {
    #[test]
    fn migrations_are_valid() {
        super::migrations().validate().unwrap();
    }
}
