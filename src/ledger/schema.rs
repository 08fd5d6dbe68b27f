//! Versioned schema migrations (tracked in SQLite's `user_version`). Never edit a shipped
//! migration: add a new one. Each runs in its own transaction, so a crash during the first
//! start leaves either no schema or a complete one.

use rusqlite_migration::{M, Migrations};

use super::{archive, outbox};

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

/// The second round: where a charge came from, its brand and deadline; more run outcomes
/// and figures; timestamps written by hand in other forms normalised (or refused), so an
/// operator's `SET next_check_at = 'now'` cannot silently park a charge.
const V2: &str = r#"
ALTER TABLE charges ADD COLUMN origin TEXT NOT NULL DEFAULT 'registered'
    CHECK (origin IN ('registered', 'discovered'));
ALTER TABLE charges ADD COLUMN expires_at TEXT;
ALTER TABLE charges ADD COLUMN konbini TEXT
    CHECK (konbini IS NULL OR (length(konbini) BETWEEN 1 AND 64 AND konbini NOT GLOB '*[^a-z0-9_]*'));

CREATE INDEX charges_expires ON charges (expires_at) WHERE expires_at IS NOT NULL AND next_check_at IS NOT NULL;

-- Timestamps are compared as text, so only the canonical form sorts right. Any form
-- SQLite's date functions read ('now', '2026-11-27 10:00', '+09:00' offsets, lower case) is
-- rewritten to it; anything else is refused.
CREATE TRIGGER charges_next_check_normal_insert AFTER INSERT ON charges
WHEN NEW.next_check_at IS NOT NULL AND NEW.next_check_at NOT GLOB
    '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'
BEGIN
    SELECT RAISE(ABORT, 'next_check_at is not a timestamp (use strftime(''%Y-%m-%dT%H:%M:%fZ'', ''now'') or an RFC 3339 time)')
    WHERE coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', NEW.next_check_at),
                   strftime('%Y-%m-%dT%H:%M:%fZ', upper(NEW.next_check_at))) IS NULL;
    UPDATE charges SET next_check_at = coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', NEW.next_check_at),
                                                strftime('%Y-%m-%dT%H:%M:%fZ', upper(NEW.next_check_at)))
    WHERE charge_id = NEW.charge_id;
END;

CREATE TRIGGER charges_next_check_normal_update AFTER UPDATE OF next_check_at ON charges
WHEN NEW.next_check_at IS NOT NULL AND NEW.next_check_at NOT GLOB
    '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'
BEGIN
    SELECT RAISE(ABORT, 'next_check_at is not a timestamp (use strftime(''%Y-%m-%dT%H:%M:%fZ'', ''now'') or an RFC 3339 time)')
    WHERE coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', NEW.next_check_at),
                   strftime('%Y-%m-%dT%H:%M:%fZ', upper(NEW.next_check_at))) IS NULL;
    UPDATE charges SET next_check_at = coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', NEW.next_check_at),
                                                strftime('%Y-%m-%dT%H:%M:%fZ', upper(NEW.next_check_at)))
    WHERE charge_id = NEW.charge_id;
END;

CREATE TRIGGER charges_expires_normal_insert AFTER INSERT ON charges
WHEN NEW.expires_at IS NOT NULL AND NEW.expires_at NOT GLOB
    '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'
BEGIN
    SELECT RAISE(ABORT, 'expires_at is not a timestamp (use an RFC 3339 time)')
    WHERE coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', NEW.expires_at),
                   strftime('%Y-%m-%dT%H:%M:%fZ', upper(NEW.expires_at))) IS NULL;
    UPDATE charges SET expires_at = coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', NEW.expires_at),
                                             strftime('%Y-%m-%dT%H:%M:%fZ', upper(NEW.expires_at)))
    WHERE charge_id = NEW.charge_id;
END;

CREATE TRIGGER charges_expires_normal_update AFTER UPDATE OF expires_at ON charges
WHEN NEW.expires_at IS NOT NULL AND NEW.expires_at NOT GLOB
    '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'
BEGIN
    SELECT RAISE(ABORT, 'expires_at is not a timestamp (use an RFC 3339 time)')
    WHERE coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', NEW.expires_at),
                   strftime('%Y-%m-%dT%H:%M:%fZ', upper(NEW.expires_at))) IS NULL;
    UPDATE charges SET expires_at = coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', NEW.expires_at),
                                             strftime('%Y-%m-%dT%H:%M:%fZ', upper(NEW.expires_at)))
    WHERE charge_id = NEW.charge_id;
END;

-- runs: more outcomes, so rebuilt (a CHECK cannot be altered), and the figures of the
-- budget: how many charges were due, how much the schedule was stretched, and until when
-- UnivaPay asked us to pause (the next pass sends nothing before it).
CREATE TABLE runs_v2 (
    id          INTEGER PRIMARY KEY,
    trigger     TEXT NOT NULL CHECK (trigger IN ('once', 'schedule', 'check', 'webhook')),
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    outcome     TEXT NOT NULL DEFAULT 'running'
                CHECK (outcome IN ('running', 'ok', 'interrupted', 'auth_failed', 'unreachable',
                                   'failed', 'rate_limited', 'not_found_wall')),
    checked     INTEGER NOT NULL DEFAULT 0,
    transitions INTEGER NOT NULL DEFAULT 0,
    mismatches  INTEGER NOT NULL DEFAULT 0,
    errors      INTEGER NOT NULL DEFAULT 0,
    pid         INTEGER,
    detail      TEXT,
    due         INTEGER,
    stretch     REAL,
    requests    INTEGER NOT NULL DEFAULT 0,
    resume_at   TEXT
) STRICT;
INSERT INTO runs_v2 (id, trigger, started_at, finished_at, outcome, checked, transitions,
                     mismatches, errors, pid, detail)
SELECT id, trigger, started_at, finished_at, outcome, checked, transitions, mismatches,
       errors, pid, detail
FROM runs;
DROP TABLE runs;
ALTER TABLE runs_v2 RENAME TO runs;
CREATE INDEX runs_resume ON runs (resume_at) WHERE resume_at IS NOT NULL;

-- Pay-easy needs collection-agency number 58091, which UnivaPay's API never returns;
-- support staff read it here.
DROP VIEW open_charges;
CREATE VIEW open_charges AS
SELECT charge_id, store_id, state, provider_status, requested_amount, requested_currency,
       payment_number, created_at, next_check_at, last_error,
       CAST(julianday('now') - julianday(created_at) AS INTEGER) AS days_open,
       konbini, expires_at, origin,
       CASE WHEN konbini = 'pay_easy' THEN '58091' END AS collection_number
FROM charges
WHERE state IN ('pending', 'awaiting');
"#;

/// Discovery: per store, how far the sweeps have looked (`swept_to`); one row per sweep;
/// the charges a sweep or a webhook spent requests on and did not register, and why; the
/// registered charges enrichment has looked up. And a shop that INSERTs a charge the
/// reconciler discovered first is not refused: the same values are taken as its
/// registration (one `registered` event), different ones are refused with a message.
const V3: &str = r#"
CREATE TABLE discovery_watermarks (
    store_id   TEXT PRIMARY KEY NOT NULL,
    swept_to   TEXT NOT NULL,
    updated_at TEXT NOT NULL
) STRICT;

CREATE TABLE discovery_sweeps (
    id          INTEGER PRIMARY KEY,
    trigger     TEXT NOT NULL CHECK (trigger IN ('once', 'schedule')),
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    outcome     TEXT NOT NULL DEFAULT 'running'
                CHECK (outcome IN ('running', 'ok', 'partial', 'interrupted', 'auth_failed',
                                   'unreachable', 'failed')),
    stores      INTEGER NOT NULL DEFAULT 0,
    requests    INTEGER NOT NULL DEFAULT 0,
    pages       INTEGER NOT NULL DEFAULT 0,
    items       INTEGER NOT NULL DEFAULT 0,
    discovered  INTEGER NOT NULL DEFAULT 0,
    skipped     INTEGER NOT NULL DEFAULT 0,
    enriched    INTEGER NOT NULL DEFAULT 0,
    pid         INTEGER,
    detail      TEXT
) STRICT;
CREATE INDEX discovery_sweeps_started ON discovery_sweeps (started_at);

CREATE TABLE discovery_skips (
    charge_id  TEXT PRIMARY KEY NOT NULL,
    store_id   TEXT NOT NULL,
    reason     TEXT NOT NULL,
    detail     TEXT,
    attempts   INTEGER NOT NULL DEFAULT 1,
    first_at   TEXT NOT NULL,
    last_at    TEXT NOT NULL
) STRICT;

CREATE TABLE discovery_enriched (
    charge_id TEXT PRIMARY KEY NOT NULL,
    at        TEXT NOT NULL,
    outcome   TEXT NOT NULL
) STRICT;

CREATE TRIGGER charges_register_discovered BEFORE INSERT ON charges
WHEN NEW.origin = 'registered'
     AND EXISTS (SELECT 1 FROM charges WHERE charge_id = NEW.charge_id AND origin = 'discovered')
BEGIN
    SELECT RAISE(ABORT, 'charge was discovered at UnivaPay with another store_id, requested_amount or requested_currency')
    WHERE NOT EXISTS (SELECT 1 FROM charges
                      WHERE charge_id = NEW.charge_id AND store_id = NEW.store_id
                        AND requested_amount = NEW.requested_amount
                        AND requested_currency = NEW.requested_currency);
    INSERT INTO charge_events (charge_id, at, kind, detail)
    SELECT NEW.charge_id, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), 'registered',
           'registered by the shop after discovery'
    WHERE NOT EXISTS (SELECT 1 FROM charge_events
                      WHERE charge_id = NEW.charge_id AND kind = 'registered');
    UPDATE charges SET expires_at = coalesce(expires_at, NEW.expires_at),
                       konbini = coalesce(konbini, NEW.konbini)
    WHERE charge_id = NEW.charge_id
      AND ((expires_at IS NULL AND NEW.expires_at IS NOT NULL)
           OR (konbini IS NULL AND NEW.konbini IS NOT NULL));
    SELECT RAISE(IGNORE);
END;
"#;

/// The ledger's identity and the end of deleting facts.
const V4: &str = r#"
-- One row per key. `ledger_id` is drawn once, when this migration runs (on a new ledger:
-- when it is created), and never changes: every open checks that the file still carries
-- the identity the process first saw, so a ledger that was removed or replaced under a
-- running daemon is refused instead of recreated or adopted. A backup carries it too, so
-- restoring one is restoring the same ledger.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) STRICT;
INSERT INTO meta (key, value) VALUES ('ledger_id', lower(hex(randomblob(16))));

CREATE TRIGGER meta_ledger_id_fixed BEFORE UPDATE ON meta
WHEN OLD.key = 'ledger_id'
BEGIN
    SELECT RAISE(ABORT, 'meta.ledger_id never changes');
END;
CREATE TRIGGER meta_ledger_id_kept BEFORE DELETE ON meta
WHEN OLD.key = 'ledger_id'
BEGIN
    SELECT RAISE(ABORT, 'meta.ledger_id never changes');
END;

-- Append-only means no deletes either. Only `webhook` events (hints, which retention
-- prunes after `retention.webhook_events`) may be deleted; transitions, mismatches,
-- discoveries, errors and every other kind are the charge's history and stay.
CREATE TRIGGER charge_events_keep_facts BEFORE DELETE ON charge_events
WHEN OLD.kind <> 'webhook'
BEGIN
    SELECT RAISE(ABORT, 'charge_events keeps its facts: only webhook events may be deleted');
END;
"#;

pub(super) fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(V1),
        M::up(V2),
        M::up(V3),
        M::up(V4),
        // Keep this after every migration that defines an index or trigger on
        // charge_events: it rebuilds the table with whatever the migrations before it
        // defined (V4's charge_events_keep_facts among them).
        M::up_with_hook(outbox::V4_COLUMNS, |tx: &rusqlite::Transaction<'_>| {
            outbox::rebuild_charge_events(tx)?;
            tx.execute_batch(outbox::V4_OUTBOX)?;
            Ok(())
        }),
        M::up(archive::V6_ARCHIVE),
    ])
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    #[test]
    fn migrations_are_valid() {
        super::migrations().validate().unwrap();
    }

    fn db() -> Connection {
        let mut c = Connection::open_in_memory().unwrap();
        super::migrations().to_latest(&mut c).unwrap();
        c.execute(
            "INSERT INTO charges (charge_id, store_id, requested_amount) VALUES ('c', 's', 1)",
            [],
        )
        .unwrap();
        c
    }

    fn next(c: &Connection) -> String {
        c.query_row("SELECT next_check_at FROM charges", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn hand_written_times_are_normalised() {
        let c = db();
        for (written, want) in [
            ("2026-11-27 10:00:00", "2026-11-27T10:00:00.000Z"),
            ("2026-11-27T19:00:00+09:00", "2026-11-27T10:00:00.000Z"),
            ("2026-11-27t10:00:00z", "2026-11-27T10:00:00.000Z"),
            ("2026-11-27T10:00:00.5Z", "2026-11-27T10:00:00.500Z"),
        ] {
            c.execute("UPDATE charges SET next_check_at = ?1", [written])
                .unwrap();
            assert_eq!(next(&c), want, "{written}");
            c.execute("UPDATE charges SET expires_at = ?1", [written])
                .unwrap();
            let e: String = c
                .query_row("SELECT expires_at FROM charges", [], |r| r.get(0))
                .unwrap();
            assert_eq!(e, want, "{written}");
        }
        c.execute("UPDATE charges SET next_check_at = 'now'", [])
            .unwrap();
        assert!(
            next(&c).ends_with('Z') && next(&c).len() == 24,
            "{}",
            next(&c)
        );
        c.execute("UPDATE charges SET next_check_at = datetime('now')", [])
            .unwrap();
        assert!(next(&c).contains('T'), "{}", next(&c));
    }

    #[test]
    fn garbage_times_are_refused() {
        let c = db();
        for bad in ["soon", "", "27/11/2026"] {
            let e = c
                .execute("UPDATE charges SET next_check_at = ?1", [bad])
                .unwrap_err()
                .to_string();
            assert!(e.contains("next_check_at is not a timestamp"), "{bad}: {e}");
        }
        let e = c
            .execute(
                "INSERT INTO charges (charge_id, store_id, requested_amount, expires_at) VALUES ('d', 's', 1, 'tomorrow')",
                [],
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("expires_at is not a timestamp"), "{e}");
    }

    #[test]
    fn a_shop_registering_a_discovered_charge_is_not_refused() {
        let c = db();
        c.execute(
            "INSERT INTO charges (charge_id, store_id, requested_amount, origin, konbini)
             VALUES ('d', 's', 500, 'discovered', 'lawson')",
            [],
        )
        .unwrap();
        // The shop's plain INSERT, same values: taken as its registration.
        let n = c
            .execute(
                "INSERT INTO charges (charge_id, store_id, requested_amount, expires_at)
                 VALUES ('d', 's', 500, '2026-12-01T15:00:00Z')",
                [],
            )
            .unwrap();
        assert_eq!(n, 0);
        let (origin, expires, konbini): (String, String, String) = c
            .query_row(
                "SELECT origin, expires_at, konbini FROM charges WHERE charge_id = 'd'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(
            (origin.as_str(), expires.as_str(), konbini.as_str()),
            ("discovered", "2026-12-01T15:00:00.000Z", "lawson")
        );
        // Again: still accepted, still one event.
        c.execute(
            "INSERT INTO charges (charge_id, store_id, requested_amount) VALUES ('d', 's', 500)",
            [],
        )
        .unwrap();
        let events: i64 = c
            .query_row(
                "SELECT count(*) FROM charge_events WHERE charge_id = 'd' AND kind = 'registered'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(events, 1);
        // Other values: refused, with a message that says why.
        let e = c
            .execute(
                "INSERT INTO charges (charge_id, store_id, requested_amount) VALUES ('d', 's', 501)",
                [],
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("discovered at UnivaPay with another"), "{e}");
        // A registered charge inserted twice is the usual conflict.
        let e = c
            .execute(
                "INSERT INTO charges (charge_id, store_id, requested_amount) VALUES ('c', 's', 1)",
                [],
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("UNIQUE"), "{e}");
    }

    #[test]
    fn pay_easy_shows_its_collection_number() {
        let c = db();
        c.execute("UPDATE charges SET konbini = 'pay_easy'", [])
            .unwrap();
        let n: Option<String> = c
            .query_row("SELECT collection_number FROM open_charges", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(n.as_deref(), Some("58091"));
    }

    #[test]
    fn history_keeps_its_facts_and_the_identity_stays() {
        let c = db();
        c.execute_batch(
            "INSERT INTO charge_events (charge_id, at, kind) VALUES ('c', 'x', 'transition');
             INSERT INTO charge_events (charge_id, at, kind) VALUES ('c', 'x', 'webhook');
             INSERT INTO charge_events (charge_id, at, kind) VALUES ('c', 'x', 'mismatch');",
        )
        .unwrap();
        for kind in ["transition", "mismatch"] {
            let e = c
                .execute("DELETE FROM charge_events WHERE kind = ?1", [kind])
                .unwrap_err();
            assert!(e.to_string().contains("only webhook events"), "{kind}: {e}");
        }
        assert_eq!(
            c.execute("DELETE FROM charge_events WHERE kind = 'webhook'", [])
                .unwrap(),
            1,
            "retention prunes hints"
        );
        assert!(c.execute("DELETE FROM charge_events", []).is_err());
        let id: String = c
            .query_row("SELECT value FROM meta WHERE key = 'ledger_id'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(id.len(), 32);
        assert!(c.execute("UPDATE meta SET value = 'x'", []).is_err());
        assert!(c.execute("DELETE FROM meta", []).is_err());
    }
}
