//! The events the shop is told about, in the ledger: the shop's own words on a charge
//! (`order_ref`, `metadata`, `paid_at`), the payload snapshot of each of the five event
//! types, the delivery rows per endpoint, and the queries of the feed and the delivery
//! worker.
//!
//! The outbox is written by a trigger on `charge_events`, not by each code path that
//! appends an event: every `transition`, `mismatch` and `discovered` row gets its payload
//! (built from the charge row as it stands after the change) and one delivery row per
//! configured endpoint whose filter takes it, in the statement that inserts the event and
//! so in its transaction. No writer (a pass, a hint check, `check`, discovery, a future
//! one) can forget it, and a crash can never leave an event without its deliveries.
//! The endpoints the trigger reads are the config's `[[delivery]]` sections, copied into
//! `delivery_endpoints` by [`Ledger::sync_endpoints`] when a process that writes events
//! starts.

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::Serialize;

use super::{Ledger, LedgerError, ts};

/// The largest `charges.metadata` stored, in bytes of compact JSON.
pub const MAX_METADATA: usize = 4096;
/// The longest `order_ref`, in bytes.
pub const MAX_ORDER_REF: usize = 255;

/// The event types of the feed and of delivery.
pub const EVENT_TYPES: [&str; 5] = [
    "charge.awaiting",
    "charge.paid",
    "charge.failed",
    "charge.mismatch",
    "charge.discovered",
];

/// What one answer says in the shop's words, ready to be written with the check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShopFacts {
    /// The answer's `metadata` as compact JSON; `None` when it is too large (see
    /// `refused`) or absent.
    pub metadata: Option<String>,
    /// The order reference the metadata names (under `reconcile.order_key`).
    pub order_ref: Option<String>,
    /// Why a value was not stored: one `error` event the first time each appears.
    pub refused: Vec<String>,
}

/// The migration of the third round: the shop's columns, `charge_events.id` never reused,
/// the outbox. The columns and tables are plain SQL ([`V4_COLUMNS`], [`V4_OUTBOX`]); the
/// rebuild of `charge_events` between them is [`rebuild_charge_events`].
pub(super) const V4_COLUMNS: &str = r#"
ALTER TABLE charges ADD COLUMN order_ref TEXT
    CHECK (order_ref IS NULL OR length(CAST(order_ref AS BLOB)) BETWEEN 1 AND 255);
ALTER TABLE charges ADD COLUMN metadata TEXT
    CHECK (metadata IS NULL OR (length(CAST(metadata AS BLOB)) <= 4096 AND json_valid(metadata)));
ALTER TABLE charges ADD COLUMN paid_at TEXT;
CREATE INDEX charges_order_ref ON charges (order_ref) WHERE order_ref IS NOT NULL;
CREATE INDEX charges_paid_at ON charges (paid_at) WHERE paid_at IS NOT NULL;
"#;

pub(super) const V4_OUTBOX: &str = r#"
-- The [[delivery]] endpoints of the config; `events` is the filter, space-delimited with a
-- space at either end (' charge.paid charge.failed ').
CREATE TABLE delivery_endpoints (
    name       TEXT PRIMARY KEY NOT NULL,
    events     TEXT NOT NULL,
    updated_at TEXT NOT NULL
) STRICT;

-- The payload of each event of the five types, fixed when the event is written.
CREATE TABLE event_payloads (
    event_id  INTEGER PRIMARY KEY NOT NULL,
    type      TEXT NOT NULL,
    charge_id TEXT NOT NULL,
    at        TEXT NOT NULL,
    payload   TEXT NOT NULL
) STRICT;
CREATE INDEX event_payloads_type ON event_payloads (type, event_id);
CREATE INDEX event_payloads_at ON event_payloads (at);

-- One row per event and endpoint. Pending while delivered_at is NULL; next_attempt_at is
-- when it is due (while an attempt is in flight: when it may be taken again).
CREATE TABLE deliveries (
    endpoint        TEXT NOT NULL,
    event_id        INTEGER NOT NULL,
    charge_id       TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    next_attempt_at TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_attempt_at TEXT,
    last_status     INTEGER,
    last_error      TEXT,
    delivered_at    TEXT,
    PRIMARY KEY (endpoint, event_id)
) STRICT;
CREATE INDEX deliveries_due ON deliveries (endpoint, next_attempt_at) WHERE delivered_at IS NULL;
CREATE INDEX deliveries_charge ON deliveries (endpoint, charge_id, event_id) WHERE delivered_at IS NULL;

-- The shop's question, "which orders are paid?", in its words.
CREATE VIEW paid_orders AS
SELECT order_ref, charge_id, store_id, charged_amount, charged_currency, requested_amount,
       requested_currency, amount_mismatch, mismatch_detail, konbini, paid_at
FROM charges
WHERE state = 'successful';

CREATE TRIGGER charge_events_outbox AFTER INSERT ON charge_events
WHEN NEW.kind IN ('transition', 'mismatch', 'discovered')
BEGIN
    INSERT INTO event_payloads (event_id, type, charge_id, at, payload)
    SELECT NEW.id, t.type, NEW.charge_id, NEW.at,
           json_object('type', t.type, 'timestamp', NEW.at, 'data', json_object(
               'event_id', NEW.id, 'charge_id', c.charge_id, 'store_id', c.store_id,
               'order_ref', c.order_ref, 'state', c.state, 'provider_status', c.provider_status,
               'requested_amount', c.requested_amount, 'requested_currency', c.requested_currency,
               'charged_amount', c.charged_amount, 'charged_currency', c.charged_currency,
               'amount_mismatch', CASE WHEN c.amount_mismatch = 1 THEN json('true') ELSE json('false') END,
               'mismatch_detail', c.mismatch_detail, 'payment_number', c.payment_number,
               'konbini', c.konbini, 'metadata', json(c.metadata), 'at', NEW.at))
    FROM (SELECT CASE
                 WHEN NEW.kind = 'mismatch' THEN 'charge.mismatch'
                 WHEN NEW.kind = 'discovered' THEN 'charge.discovered'
                 WHEN NEW.to_state = 'awaiting' THEN 'charge.awaiting'
                 WHEN NEW.to_state = 'successful' THEN 'charge.paid'
                 WHEN NEW.to_state = 'failed' THEN 'charge.failed'
                 END AS type) AS t
    JOIN charges AS c ON c.charge_id = NEW.charge_id
    WHERE t.type IS NOT NULL;

    -- Due at once by the database's clock (the event's own time is the writer's, which
    -- a test or a simulation may have moved).
    INSERT INTO deliveries (endpoint, event_id, charge_id, created_at, next_attempt_at)
    SELECT e.name, p.event_id, p.charge_id, p.at, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
    FROM event_payloads AS p JOIN delivery_endpoints AS e
      ON instr(e.events, ' ' || p.type || ' ') > 0
    WHERE p.event_id = NEW.id;
END;
"#;

/// Rebuilds `charge_events` with an `AUTOINCREMENT` key, so that an id is never handed
/// out twice even after the newest rows are deleted (the feed's cursor relies on it).
/// Every row keeps its id. The table's own definition is taken from the schema as it is
/// (columns added by earlier migrations included), and every index and trigger defined on
/// it is recreated from its stored SQL, whatever earlier migrations defined.
pub(super) fn rebuild_charge_events(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    let table_sql: String = tx.query_row(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'charge_events'",
        [],
        |r| r.get(0),
    )?;
    let new_sql = autoincrement_table_sql(&table_sql).ok_or_else(|| {
        rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some("charge_events has an unexpected definition; cannot rebuild it".to_owned()),
        )
    })?;
    let extras: Vec<String> = tx
        .prepare(
            "SELECT sql FROM sqlite_master
             WHERE tbl_name = 'charge_events' AND type IN ('index', 'trigger') AND sql IS NOT NULL
             ORDER BY rowid",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let columns: Vec<String> = tx
        .prepare("SELECT name FROM pragma_table_info('charge_events') ORDER BY cid")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let columns = columns
        .iter()
        .map(|c| format!("\"{}\"", c.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(", ");
    // Triggers and views elsewhere name charge_events; with the modern rename they would
    // be checked against a schema in which it is briefly missing.
    tx.execute_batch("PRAGMA legacy_alter_table = ON")?;
    tx.execute_batch(&format!(
        "{new_sql};
         INSERT INTO charge_events_v4 ({columns}) SELECT {columns} FROM charge_events;
         DROP TABLE charge_events;
         ALTER TABLE charge_events_v4 RENAME TO charge_events;"
    ))?;
    tx.execute_batch("PRAGMA legacy_alter_table = OFF")?;
    for sql in extras {
        tx.execute_batch(&sql)?;
    }
    Ok(())
}

/// `CREATE TABLE charge_events (id INTEGER PRIMARY KEY, ...)` as
/// `CREATE TABLE charge_events_v4 (id INTEGER PRIMARY KEY AUTOINCREMENT, ...)`; `None`
/// when it is not of that shape (or already AUTOINCREMENT).
fn autoincrement_table_sql(sql: &str) -> Option<String> {
    let rest = sql.strip_prefix("CREATE TABLE charge_events")?;
    let open = rest.find('(')?;
    if !rest[..open].trim().is_empty() || sql.contains("AUTOINCREMENT") {
        return None;
    }
    let key = rest.find("INTEGER PRIMARY KEY")? + "INTEGER PRIMARY KEY".len();
    Some(format!(
        "CREATE TABLE charge_events_v4{} AUTOINCREMENT{}",
        &rest[..key],
        &rest[key..]
    ))
}

/// The first value wins and a different later one is one `order_ref_changed` event; a
/// refused value is one `error` event the first time it is seen. Called by the check's
/// write after the charge row is updated (same transaction).
pub(super) fn record_shop_facts(
    conn: &Connection,
    charge_id: &str,
    at: &str,
    run_id: i64,
    facts: &ShopFacts,
) -> rusqlite::Result<()> {
    if let Some(new) = &facts.order_ref {
        conn.prepare_cached(
            "INSERT INTO charge_events (charge_id, at, kind, detail, run_id)
             SELECT ?1, ?2, 'order_ref_changed', d.detail, ?4
             FROM (SELECT 'order reference changed from ' || json_quote(order_ref) || ' to '
                          || json_quote(?3) || '; the first is kept' AS detail
                   FROM charges WHERE charge_id = ?1 AND order_ref <> ?3) AS d
             WHERE NOT EXISTS (SELECT 1 FROM charge_events e WHERE e.charge_id = ?1
                               AND e.kind = 'order_ref_changed' AND e.detail = d.detail)",
        )?
        .execute(params![charge_id, at, new, run_id])?;
    }
    for why in &facts.refused {
        conn.prepare_cached(
            "INSERT INTO charge_events (charge_id, at, kind, detail, run_id)
             SELECT ?1, ?2, 'error', ?3, ?4
             WHERE NOT EXISTS (SELECT 1 FROM charge_events
                               WHERE charge_id = ?1 AND kind = 'error' AND detail = ?3)",
        )?
        .execute(params![charge_id, at, why, run_id])?;
    }
    Ok(())
}

/// One event of the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedEvent {
    pub event_id: i64,
    pub event_type: String,
    pub charge_id: String,
    /// The payload, exactly as stored (the bytes every attempt sends).
    pub payload: String,
}

/// One endpoint as the config names it, for [`Ledger::sync_endpoints`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointFilter {
    pub name: String,
    pub events: Vec<String>,
}

/// A delivery the worker may attempt now: the oldest undelivered event of its charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueDelivery {
    pub event_id: i64,
    pub charge_id: String,
    pub attempts: u32,
    pub payload: String,
}

/// The result of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    Delivered {
        status: u16,
    },
    Failed {
        status: Option<u16>,
        error: String,
        retry_at: DateTime<Utc>,
    },
}

/// What is pending at one endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointBacklog {
    pub endpoint: String,
    pub pending: u64,
    pub oldest_pending_at: Option<String>,
    pub next_attempt_at: Option<String>,
    pub last_success_at: Option<String>,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    /// Delivered and failed attempts recorded, for the counters.
    pub delivered: u64,
    pub failed_attempts: u64,
}

fn row_to_feed(r: &rusqlite::Row<'_>) -> rusqlite::Result<FeedEvent> {
    Ok(FeedEvent {
        event_id: r.get(0)?,
        event_type: r.get(1)?,
        charge_id: r.get(2)?,
        payload: r.get(3)?,
    })
}

impl Ledger {
    /// Copies the config's endpoints into the ledger, where the outbox trigger reads them.
    /// Endpoints no longer configured are removed (their pending rows stay, and are shown).
    pub fn sync_endpoints(
        &mut self,
        endpoints: &[EndpointFilter],
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        self.write(|tx| {
            let names: Vec<&str> = endpoints.iter().map(|e| e.name.as_str()).collect();
            let json = serde_json::to_string(&names).unwrap_or_default();
            tx.execute(
            "DELETE FROM delivery_endpoints WHERE name NOT IN (SELECT value FROM json_each(?1))",
            [json],
        )?;
            for e in endpoints {
                let filter = format!(" {} ", e.events.join(" "));
                tx.execute(
                    "INSERT INTO delivery_endpoints (name, events, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET events = ?2, updated_at = ?3
                 WHERE events <> ?2",
                    params![e.name, filter, ts(now)],
                )?;
            }
            Ok(())
        })
    }

    /// Events after `after` (ascending), of the given types (all when empty), at most
    /// `limit`.
    pub fn feed(
        &self,
        after: i64,
        types: &[String],
        limit: u32,
    ) -> Result<Vec<FeedEvent>, LedgerError> {
        let types = serde_json::to_string(types).unwrap_or_default();
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT event_id, type, charge_id, payload FROM event_payloads
                 WHERE event_id > ?1
                   AND (json_array_length(?2) = 0 OR type IN (SELECT value FROM json_each(?2)))
                 ORDER BY event_id LIMIT ?3",
            )
            .map_err(|e| self.err(e))?;
        stmt.query_map(params![after, types, limit], row_to_feed)
            .and_then(|rows| rows.collect())
            .map_err(|e| self.err(e))
    }

    /// SQLite's `PRAGMA data_version`: it changes when another connection commits, and
    /// reads no table.
    pub fn data_version(&self) -> Result<i64, LedgerError> {
        self.conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    /// The newest event id of any kind (0 when none): a cheap "anything new?".
    pub fn last_event_id(&self) -> Result<i64, LedgerError> {
        self.conn
            .query_row("SELECT coalesce(max(id), 0) FROM charge_events", [], |r| {
                r.get(0)
            })
            .map_err(|e| self.err(e))
    }

    /// Up to `limit` deliveries of `endpoint` due at `now`, each the oldest undelivered
    /// event of its charge (per-charge order), skipping charges in `busy`. Oldest first.
    pub fn due_deliveries(
        &self,
        endpoint: &str,
        now: DateTime<Utc>,
        busy: &[String],
        limit: usize,
    ) -> Result<Vec<DueDelivery>, LedgerError> {
        let busy = serde_json::to_string(busy).unwrap_or_default();
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT d.event_id, d.charge_id, d.attempts, p.payload
                 FROM deliveries AS d JOIN event_payloads AS p ON p.event_id = d.event_id
                 WHERE d.endpoint = ?1 AND d.delivered_at IS NULL AND d.next_attempt_at <= ?2
                   AND d.charge_id NOT IN (SELECT value FROM json_each(?3))
                   AND NOT EXISTS (SELECT 1 FROM deliveries AS b
                                   WHERE b.endpoint = d.endpoint AND b.charge_id = d.charge_id
                                     AND b.delivered_at IS NULL AND b.event_id < d.event_id)
                 ORDER BY d.next_attempt_at, d.event_id LIMIT ?4",
            )
            .map_err(|e| self.err(e))?;
        stmt.query_map(params![endpoint, ts(now), busy, limit as i64], |r| {
            Ok(DueDelivery {
                event_id: r.get(0)?,
                charge_id: r.get(1)?,
                attempts: u32::try_from(r.get::<_, i64>(2)?).unwrap_or(u32::MAX),
                payload: r.get(3)?,
            })
        })
        .and_then(|rows| rows.collect())
        .map_err(|e| self.err(e))
    }

    /// When the next pending delivery of `endpoint` that may be sent falls due (the
    /// oldest of each charge; the others wait for it). `None`: nothing pending.
    ///
    /// Walks `deliveries_due` in time order and stops at the first delivery that heads
    /// its charge, so a step of an endpoint with a large backlog (one that is down) reads
    /// a few rows, not the whole backlog: `min()` over the same rows cannot stop early
    /// (the per-charge condition defeats SQLite's min/max optimisation) and cost every
    /// step of a dead endpoint time in proportion to its backlog.
    pub fn next_delivery_at(&self, endpoint: &str) -> Result<Option<String>, LedgerError> {
        self.conn
            .prepare_cached(
                "SELECT d.next_attempt_at FROM deliveries AS d INDEXED BY deliveries_due
                 WHERE d.endpoint = ?1 AND d.delivered_at IS NULL AND d.next_attempt_at IS NOT NULL
                   AND NOT EXISTS (SELECT 1 FROM deliveries AS b
                                   WHERE b.endpoint = d.endpoint AND b.charge_id = d.charge_id
                                     AND b.delivered_at IS NULL AND b.event_id < d.event_id)
                 ORDER BY d.next_attempt_at LIMIT 1",
            )
            .and_then(|mut s| s.query_row([endpoint], |r| r.get(0)).optional())
            .map_err(|e| self.err(e))
    }

    /// Takes deliveries for an attempt: each is made due again only at `until`, so that
    /// should the process die while it is in flight it is tried again then. Returns the
    /// ids taken: one another process took meanwhile (it is no longer due) is left out.
    pub fn claim_deliveries(
        &mut self,
        endpoint: &str,
        event_ids: &[i64],
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<i64>, LedgerError> {
        self.write(|tx| {
            let mut taken = Vec::with_capacity(event_ids.len());
            for id in event_ids {
                let n = tx
                    .prepare_cached(
                        "UPDATE deliveries SET next_attempt_at = ?4
                     WHERE endpoint = ?1 AND event_id = ?2 AND delivered_at IS NULL
                       AND next_attempt_at <= ?3",
                    )
                    .and_then(|mut s| s.execute(params![endpoint, id, ts(now), ts(until)]))?;
                if n == 1 {
                    taken.push(*id);
                }
            }
            Ok(taken)
        })
    }

    /// The oldest pending delivery of `endpoint`, whatever its `next_attempt_at`: the probe
    /// of an endpoint that is down. Being the endpoint's oldest, it heads its charge.
    /// Claimed as [`Ledger::claim_deliveries`] does, unless another process changed the
    /// row between the read and the claim; `None`: nothing pending (or lost that race).
    pub fn claim_probe(
        &mut self,
        endpoint: &str,
        until: DateTime<Utc>,
    ) -> Result<Option<DueDelivery>, LedgerError> {
        self.write(|tx| {
            let found = tx
                .prepare_cached(
                    "SELECT d.event_id, d.charge_id, d.attempts, p.payload, d.next_attempt_at
                     FROM deliveries AS d JOIN event_payloads AS p ON p.event_id = d.event_id
                     WHERE d.endpoint = ?1 AND d.delivered_at IS NULL
                     ORDER BY d.event_id LIMIT 1",
                )
                .and_then(|mut s| {
                    s.query_row([endpoint], |r| {
                        Ok((
                            DueDelivery {
                                event_id: r.get(0)?,
                                charge_id: r.get(1)?,
                                attempts: u32::try_from(r.get::<_, i64>(2)?).unwrap_or(u32::MAX),
                                payload: r.get(3)?,
                            },
                            r.get::<_, Option<String>>(4)?,
                        ))
                    })
                    .optional()
                })?;
            let Some((d, was)) = found else {
                return Ok(None);
            };
            let n = tx
                .prepare_cached(
                    "UPDATE deliveries SET next_attempt_at = ?4
                     WHERE endpoint = ?1 AND event_id = ?2 AND delivered_at IS NULL
                       AND next_attempt_at IS ?3",
                )
                .and_then(|mut s| s.execute(params![endpoint, d.event_id, was, ts(until)]))?;
            Ok((n == 1).then_some(d))
        })
    }

    /// Makes every pending delivery of `endpoint` due at `now` (an endpoint that is back
    /// after an outage): the backlog drains at once instead of at each delivery's own
    /// retry time, in order per charge as always. Returns how many were pending.
    pub fn make_pending_due(
        &mut self,
        endpoint: &str,
        now: DateTime<Utc>,
    ) -> Result<u64, LedgerError> {
        self.write(|tx| {
            let n = tx
                .prepare_cached(
                    "UPDATE deliveries SET next_attempt_at =
                        CASE WHEN next_attempt_at IS NULL OR next_attempt_at > ?2 THEN ?2
                             ELSE next_attempt_at END
                     WHERE endpoint = ?1 AND delivered_at IS NULL",
                )
                .and_then(|mut s| s.execute(params![endpoint, ts(now)]))?;
            Ok(n as u64)
        })
    }

    /// Records the results of attempts, in one transaction.
    pub fn record_attempts(
        &mut self,
        endpoint: &str,
        results: &[(i64, DateTime<Utc>, AttemptResult)],
    ) -> Result<(), LedgerError> {
        self.write(|tx| {
            for (event_id, at, result) in results {
                let at = ts(*at);
                match result {
                    AttemptResult::Delivered { status } => tx
                        .prepare_cached(
                            "UPDATE deliveries SET delivered_at = ?3, last_attempt_at = ?3,
                                last_status = ?4, attempts = attempts + 1, next_attempt_at = NULL
                         WHERE endpoint = ?1 AND event_id = ?2",
                        )
                        .and_then(|mut s| s.execute(params![endpoint, event_id, at, status])),
                    AttemptResult::Failed {
                        status,
                        error,
                        retry_at,
                    } => tx
                        .prepare_cached(
                            "UPDATE deliveries SET last_attempt_at = ?3, last_status = ?4,
                                last_error = ?5, attempts = attempts + 1, next_attempt_at = ?6
                         WHERE endpoint = ?1 AND event_id = ?2 AND delivered_at IS NULL",
                        )
                        .and_then(|mut s| {
                            s.execute(params![
                                endpoint,
                                event_id,
                                at,
                                status,
                                error,
                                ts(*retry_at)
                            ])
                        }),
                }?;
            }
            Ok(())
        })
    }

    /// Makes deliveries due at `now`: the given events, or every event at or after
    /// `since`, for one endpoint or all. A delivered one is sent again (same webhook-id).
    /// Returns how many rows were made due.
    pub fn replay(
        &mut self,
        events: &[i64],
        since: Option<DateTime<Utc>>,
        endpoint: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<u64, LedgerError> {
        self.write(|tx| {
            let ids = serde_json::to_string(events).unwrap_or_default();
            // Events written before an endpoint existed get their row now.
            tx.execute(
            "INSERT INTO deliveries (endpoint, event_id, charge_id, created_at, next_attempt_at)
             SELECT e.name, p.event_id, p.charge_id, p.at, ?4
             FROM event_payloads AS p JOIN delivery_endpoints AS e
             WHERE (p.event_id IN (SELECT value FROM json_each(?1)) OR p.at >= ?2)
               AND (?3 IS NULL OR e.name = ?3)
             ON CONFLICT (endpoint, event_id) DO NOTHING",
            params![ids, since.map(ts), endpoint, ts(now)],
        )?;
            let n = tx.execute(
                "UPDATE deliveries SET delivered_at = NULL, next_attempt_at = ?4
                 WHERE (event_id IN (SELECT value FROM json_each(?1))
                        OR created_at >= ?2)
                   AND (?3 IS NULL OR endpoint = ?3)",
                params![ids, since.map(ts), endpoint, ts(now)],
            )?;
            Ok(n as u64)
        })
    }

    /// Whether `event_id` has a payload (`deliveries replay` names unknown ones).
    pub fn has_payload(&self, event_id: i64) -> Result<bool, LedgerError> {
        self.conn
            .query_row(
                "SELECT 1 FROM event_payloads WHERE event_id = ?1",
                [event_id],
                |_| Ok(()),
            )
            .optional()
            .map(|o| o.is_some())
            .map_err(|e| self.err(e))
    }

    /// Per endpoint (configured now, or with rows): what is pending and how it went.
    pub fn delivery_backlog(&self) -> Result<Vec<EndpointBacklog>, LedgerError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "WITH names AS (SELECT name FROM delivery_endpoints
                                UNION SELECT DISTINCT endpoint FROM deliveries)
                 SELECT n.name,
                   (SELECT count(*) FROM deliveries WHERE endpoint = n.name AND delivered_at IS NULL),
                   (SELECT min(created_at) FROM deliveries WHERE endpoint = n.name AND delivered_at IS NULL),
                   (SELECT min(next_attempt_at) FROM deliveries WHERE endpoint = n.name AND delivered_at IS NULL),
                   (SELECT max(delivered_at) FROM deliveries WHERE endpoint = n.name),
                   (SELECT last_error FROM deliveries WHERE endpoint = n.name AND last_error IS NOT NULL
                    AND delivered_at IS NULL ORDER BY last_attempt_at DESC LIMIT 1),
                   (SELECT max(last_attempt_at) FROM deliveries WHERE endpoint = n.name
                    AND last_error IS NOT NULL AND delivered_at IS NULL),
                   (SELECT count(*) FROM deliveries WHERE endpoint = n.name AND delivered_at IS NOT NULL),
                   (SELECT coalesce(sum(attempts), 0) FROM deliveries WHERE endpoint = n.name)
                 FROM names AS n ORDER BY n.name",
            )
            .map_err(|e| self.err(e))?;
        stmt.query_map([], |r| {
            let delivered = r.get::<_, i64>(7)?.max(0) as u64;
            let attempts = r.get::<_, i64>(8)?.max(0) as u64;
            Ok(EndpointBacklog {
                endpoint: r.get(0)?,
                pending: r.get::<_, i64>(1)?.max(0) as u64,
                oldest_pending_at: r.get(2)?,
                next_attempt_at: r.get(3)?,
                last_success_at: r.get(4)?,
                last_error: r.get(5)?,
                last_error_at: r.get(6)?,
                delivered,
                failed_attempts: attempts.saturating_sub(delivered),
            })
        })
        .and_then(|rows| rows.collect())
        .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_definition_gains_autoincrement() {
        let sql = "CREATE TABLE charge_events (\n    id              INTEGER PRIMARY KEY,\n    x TEXT\n) STRICT";
        assert_eq!(
            autoincrement_table_sql(sql).unwrap(),
            "CREATE TABLE charge_events_v4 (\n    id              INTEGER PRIMARY KEY AUTOINCREMENT,\n    x TEXT\n) STRICT"
        );
        assert_eq!(
            autoincrement_table_sql(
                "CREATE TABLE charge_events (id INTEGER PRIMARY KEY AUTOINCREMENT)"
            ),
            None
        );
        assert_eq!(
            autoincrement_table_sql("CREATE TABLE other (id INTEGER PRIMARY KEY)"),
            None
        );
    }

    use rusqlite::Connection;

    /// A ledger at the schema before this migration, with a few events.
    fn before_v4() -> Connection {
        let mut c = Connection::open_in_memory().unwrap();
        super::super::schema::migrations()
            .to_version(&mut c, 3)
            .unwrap();
        c.execute_batch(
            "INSERT INTO charges (charge_id, store_id, requested_amount) VALUES ('c', 's', 100);
             INSERT INTO charge_events (id, charge_id, at, kind) VALUES (1, 'c', 't', 'error');
             INSERT INTO charge_events (id, charge_id, at, kind) VALUES (5, 'c', 't', 'webhook');
             -- What another migration might have added before this one.
             CREATE TRIGGER charge_events_keep BEFORE DELETE ON charge_events
             WHEN OLD.kind <> 'webhook'
             BEGIN SELECT RAISE(ABORT, 'only webhook events may be deleted'); END;",
        )
        .unwrap();
        c
    }

    fn latest(mut c: Connection) -> Connection {
        super::super::schema::migrations()
            .to_latest(&mut c)
            .unwrap();
        c
    }

    #[test]
    fn ids_are_never_reused_and_every_row_and_trigger_survives() {
        let c = latest(before_v4());
        let ids: Vec<i64> = c
            .prepare("SELECT id FROM charge_events ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(ids, [1, 5]);
        let e = c
            .execute("UPDATE charge_events SET detail = 'x'", [])
            .unwrap_err()
            .to_string();
        assert!(e.contains("append-only"), "{e}");
        let e = c
            .execute("DELETE FROM charge_events WHERE id = 1", [])
            .unwrap_err()
            .to_string();
        assert!(e.contains("only webhook events"), "{e}");
        let indexes: i64 = c
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'charge_events'
                 AND name IN ('charge_events_charge', 'charge_events_kind_at')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(indexes, 2);
        // The newest row deleted: its id is not handed out again.
        c.execute("DELETE FROM charge_events WHERE id = 5", [])
            .unwrap();
        c.execute(
            "INSERT INTO charge_events (charge_id, at, kind) VALUES ('c', 't', 'error')",
            [],
        )
        .unwrap();
        assert_eq!(c.last_insert_rowid(), 6);
        // The shop's plain INSERT after discovery still writes its event.
        c.execute(
            "INSERT INTO charges (charge_id, store_id, requested_amount, origin) VALUES ('d', 's', 1, 'discovered')",
            [],
        )
        .unwrap();
        c.execute(
            "INSERT INTO charges (charge_id, store_id, requested_amount) VALUES ('d', 's', 1)",
            [],
        )
        .unwrap();
    }

    #[test]
    fn the_five_event_types_get_a_payload_and_a_delivery_per_matching_endpoint() {
        let c = latest(before_v4());
        c.execute_batch(
            r#"INSERT INTO delivery_endpoints VALUES ('all', ' charge.awaiting charge.paid charge.failed charge.mismatch charge.discovered ', 't');
               INSERT INTO delivery_endpoints VALUES ('paid', ' charge.paid ', 't');
               UPDATE charges SET state = 'successful', provider_status = 'successful', next_check_at = NULL,
                      charged_amount = 100, charged_currency = 'JPY', order_ref = '12345',
                      metadata = '{"orderid":"12345"}', payment_number = '20020-1', konbini = 'family_mart';
               INSERT INTO charge_events (charge_id, at, kind, from_state, to_state, provider_status)
               VALUES ('c', '2026-12-02T10:00:00.123Z', 'transition', 'pending', 'successful', 'successful');
               INSERT INTO charge_events (charge_id, at, kind) VALUES ('c', '2026-12-02T10:00:00.123Z', 'webhook');"#,
        )
        .unwrap();
        let (id, kind, payload): (i64, String, String) = c
            .query_row(
                "SELECT event_id, type, payload FROM event_payloads",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!((id, kind.as_str()), (6, "charge.paid"));
        assert_eq!(
            payload,
            r#"{"type":"charge.paid","timestamp":"2026-12-02T10:00:00.123Z","data":{"event_id":6,"charge_id":"c","store_id":"s","order_ref":"12345","state":"successful","provider_status":"successful","requested_amount":100,"requested_currency":"JPY","charged_amount":100,"charged_currency":"JPY","amount_mismatch":false,"mismatch_detail":null,"payment_number":"20020-1","konbini":"family_mart","metadata":{"orderid":"12345"},"at":"2026-12-02T10:00:00.123Z"}}"#
        );
        let paid: (String, String) = c
            .query_row("SELECT order_ref, paid_at FROM paid_orders", [], |r| {
                Ok((
                    r.get(0)?,
                    r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                ))
            })
            .unwrap();
        assert_eq!(paid.0, "12345");
        let endpoints: Vec<String> = c
            .prepare("SELECT endpoint FROM deliveries ORDER BY endpoint")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(endpoints, ["all", "paid"]);
        for (kind, to, want) in [
            ("transition", "awaiting", "charge.awaiting"),
            ("transition", "failed", "charge.failed"),
            ("mismatch", "successful", "charge.mismatch"),
            ("discovered", "pending", "charge.discovered"),
            ("transition", "pending", ""),
            ("error", "pending", ""),
        ] {
            c.execute(
                "INSERT INTO charge_events (charge_id, at, kind, to_state) VALUES ('c', 't', ?1, ?2)",
                [kind, to],
            )
            .unwrap();
            let got: Option<String> = c
                .query_row(
                    "SELECT type FROM event_payloads WHERE event_id = ?1",
                    [c.last_insert_rowid()],
                    |r| r.get(0),
                )
                .optional()
                .unwrap();
            assert_eq!(got.unwrap_or_default(), want, "{kind} {to}");
        }
    }

    mod probe {
        use chrono::TimeZone;

        use super::*;
        use crate::ledger::test_ledger;

        /// A delivery row: `(endpoint, event_id, charge_id, next_attempt_at,
        /// delivered_at)`.
        type Row<'a> = (&'a str, i64, &'a str, Option<&'a str>, Option<&'a str>);

        /// A ledger with these deliveries, each with a payload `{"e":<event_id>}`.
        fn with_deliveries(rows: &[Row<'_>]) -> (tempfile::TempDir, Ledger) {
            let (d, l) = test_ledger();
            for (endpoint, id, charge, next, delivered) in rows {
                l.conn()
                    .execute(
                        "INSERT OR IGNORE INTO event_payloads (event_id, type, charge_id, at, payload)
                         VALUES (?1, 'charge.paid', ?2, '2026-12-01T00:00:00.000Z', '{\"e\":' || ?1 || '}')",
                        params![id, charge],
                    )
                    .unwrap();
                l.conn()
                    .execute(
                        "INSERT INTO deliveries (endpoint, event_id, charge_id, created_at, next_attempt_at, delivered_at)
                         VALUES (?1, ?2, ?3, '2026-12-01T00:00:00.000Z', ?4, ?5)",
                        params![endpoint, id, charge, next, delivered],
                    )
                    .unwrap();
            }
            (d, l)
        }

        fn next_attempts(l: &Ledger) -> Vec<(String, i64, Option<String>)> {
            l.conn()
                .prepare("SELECT endpoint, event_id, next_attempt_at FROM deliveries ORDER BY endpoint, event_id")
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        }

        fn at(h: u32) -> DateTime<Utc> {
            Utc.with_ymd_and_hms(2026, 12, 2, h, 0, 0).unwrap()
        }

        #[test]
        fn a_probe_takes_the_oldest_pending_delivery_whenever_it_is_due() {
            let (_d, mut l) = with_deliveries(&[
                (
                    "shop",
                    3,
                    "a",
                    Some("2026-12-01T00:00:00.000Z"),
                    Some("2026-12-01T00:00:01.000Z"),
                ),
                ("shop", 5, "b", Some("2026-12-09T00:00:00.000Z"), None),
                ("shop", 7, "a", Some("2026-12-02T00:00:00.000Z"), None),
                ("other", 4, "a", Some("2026-12-01T00:00:00.000Z"), None),
            ]);
            let d = l.claim_probe("shop", at(10)).unwrap().expect("a probe");
            assert_eq!(
                (d.event_id, d.charge_id.as_str(), d.payload.as_str()),
                (5, "b", r#"{"e":5}"#)
            );
            assert_eq!(
                next_attempts(&l),
                [
                    ("other".into(), 4, Some("2026-12-01T00:00:00.000Z".into())),
                    ("shop".into(), 3, Some("2026-12-01T00:00:00.000Z".into())),
                    ("shop".into(), 5, Some("2026-12-02T10:00:00.000Z".into())),
                    ("shop".into(), 7, Some("2026-12-02T00:00:00.000Z".into())),
                ]
            );
            // Still pending, it is the next probe too.
            assert_eq!(
                l.claim_probe("shop", at(11)).unwrap().map(|d| d.event_id),
                Some(5)
            );
            assert!(l.claim_probe("nobody", at(11)).unwrap().is_none());
        }

        #[test]
        fn a_probe_answered_makes_every_pending_delivery_of_its_endpoint_due_now() {
            let (_d, mut l) = with_deliveries(&[
                ("shop", 1, "a", Some("2026-12-01T00:00:00.000Z"), None),
                ("shop", 2, "a", Some("2026-12-03T00:00:00.000Z"), None),
                ("shop", 3, "b", None, None),
                (
                    "shop",
                    4,
                    "b",
                    Some("2026-12-09T00:00:00.000Z"),
                    Some("2026-12-01T00:00:01.000Z"),
                ),
                ("other", 2, "a", Some("2026-12-03T00:00:00.000Z"), None),
            ]);
            assert_eq!(l.make_pending_due("shop", at(10)).unwrap(), 3);
            assert_eq!(
                next_attempts(&l),
                [
                    ("other".into(), 2, Some("2026-12-03T00:00:00.000Z".into())),
                    // Already due: it keeps its place.
                    ("shop".into(), 1, Some("2026-12-01T00:00:00.000Z".into())),
                    ("shop".into(), 2, Some("2026-12-02T10:00:00.000Z".into())),
                    ("shop".into(), 3, Some("2026-12-02T10:00:00.000Z".into())),
                    // Delivered: untouched.
                    ("shop".into(), 4, Some("2026-12-09T00:00:00.000Z".into())),
                ]
            );
        }
    }
}
