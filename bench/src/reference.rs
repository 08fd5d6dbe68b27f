//! The reference loop: the least a program can do to check due charges, so that the
//! benchmark can say how much more the reconciler spends per charge.
//!
//! It does the same work on the same schema, and nothing more: read the due rows in one
//! query, GET each charge (same HTTP client crate and TLS stack, same concurrency), parse
//! the JSON into the few fields it needs, and write the same `UPDATE` of the row and the
//! same `transition` event `INSERT`, grouped into transactions by a writer thread. No
//! pacing, no validation, no rules, no logging: what it costs is the floor.
//!
//! "The same UPDATE" means the columns the contract has every check store: the status and
//! amounts, the konbini payment number and slip URL, and the charge's `metadata` as
//! compact JSON. The last two make the row
//! and the event's payload snapshot (written by the ledger's own trigger, for both
//! programs) several times larger, which is most of what a write costs.
//!
//! It runs as its own process (`konbini-bench --reference-loop DB BASE_URL AUTH CONC`), so
//! its CPU time is measured by the kernel exactly as the reconciler's is.

use std::sync::mpsc;

use futures::StreamExt;
use serde::Deserialize;

#[derive(Deserialize)]
struct Answer {
    status: String,
    charged_amount: Option<i64>,
    charged_currency: Option<String>,
    #[serde(default)]
    metadata: serde_json::Value,
}

impl Answer {
    /// A `metadata` string value, the way the konbini payment details are reported.
    fn meta_text(&self, key: &str) -> Option<&str> {
        self.metadata.get(key)?.as_str()
    }
}

struct Row {
    charge_id: String,
    state: &'static str,
    answer: Answer,
}

/// Arguments: database path, base URL, Authorization header value, concurrency.
pub fn main(args: &[String]) -> Result<(), String> {
    let [db, base_url, auth, conc] = args else {
        return Err("usage: --reference-loop DB BASE_URL AUTH CONCURRENCY".into());
    };
    let concurrency: usize = conc.parse().map_err(|e| format!("concurrency: {e}"))?;
    let conn = rusqlite::Connection::open(db).map_err(|e| e.to_string())?;
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
        .map_err(|e| e.to_string())?;
    let due: Vec<(String, String)> = {
        let mut stmt = conn
            .prepare("SELECT charge_id, store_id FROM charges WHERE next_check_at <= ?1")
            .map_err(|e| e.to_string())?;
        let now = konbini_reconciler::ledger::ts(chrono::Utc::now());
        stmt.query_map([now], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(Iterator::collect)
            .map_err(|e| e.to_string())?
    };
    let (tx, rx) = mpsc::sync_channel::<Row>(1024);
    let writer = std::thread::spawn(move || write_all(conn, rx));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let checked = runtime.block_on(fetch_all(due, base_url, auth, concurrency, tx))?;
    let written = writer.join().map_err(|_| "writer panicked")??;
    println!("reference checked {checked}, wrote {written}");
    Ok(())
}

async fn fetch_all(
    due: Vec<(String, String)>,
    base_url: &str,
    auth: &str,
    concurrency: usize,
    tx: mpsc::SyncSender<Row>,
) -> Result<u64, String> {
    let http = reqwest::Client::builder()
        .build()
        .map_err(|e| e.to_string())?;
    let base = base_url.trim_end_matches('/').to_owned();
    let auth = auth.to_owned();
    let work = tokio::spawn(async move {
        futures::stream::iter(due)
            .map(|(charge, store)| {
                let url = format!("{base}/stores/{store}/charges/{charge}");
                let req = http.get(url).header("Authorization", &auth).send();
                async move {
                    let body = req.await.ok()?.bytes().await.ok()?;
                    let answer: Answer = serde_json::from_slice(&body).ok()?;
                    Some((charge, answer))
                }
            })
            .buffer_unordered(concurrency)
            .fold(0u64, |n, got| {
                let tx = tx.clone();
                async move {
                    let Some((charge_id, answer)) = got else {
                        return n;
                    };
                    let state = match answer.status.as_str() {
                        "successful" => "successful",
                        "failed" | "error" | "canceled" => "failed",
                        "awaiting" | "authorized" => "awaiting",
                        _ => "pending",
                    };
                    // A full channel blocks this worker briefly, as a bounded queue should.
                    let _ = tx.send(Row {
                        charge_id,
                        state,
                        answer,
                    });
                    n + 1
                }
            })
            .await
    });
    work.await.map_err(|e| e.to_string())
}

/// Commits what is ready, up to 256 rows a transaction.
fn write_all(mut conn: rusqlite::Connection, rx: mpsc::Receiver<Row>) -> Result<u64, String> {
    let mut written = 0u64;
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < 256 {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        let now = konbini_reconciler::ledger::ts(chrono::Utc::now());
        let later =
            konbini_reconciler::ledger::ts(chrono::Utc::now() + chrono::Duration::minutes(5));
        let tx = conn.transaction().map_err(|e| e.to_string())?;
        {
            let mut update = tx
                .prepare_cached(
                    "UPDATE charges SET state = ?1, provider_status = ?2, charged_amount = ?3,
                            charged_currency = ?4, next_check_at = ?5, last_checked_at = ?6,
                            updated_at = ?6, payment_number = ?8, payment_url = ?9, metadata = ?10
                     WHERE charge_id = ?7",
                )
                .map_err(|e| e.to_string())?;
            let mut event = tx
                .prepare_cached(
                    "INSERT INTO charge_events (charge_id, at, kind, from_state, to_state, provider_status)
                     VALUES (?1, ?2, 'transition', 'pending', ?3, ?4)",
                )
                .map_err(|e| e.to_string())?;
            for r in &group {
                let next = matches!(r.state, "pending" | "awaiting").then_some(later.as_str());
                update
                    .execute(rusqlite::params![
                        r.state,
                        r.answer.status,
                        r.answer.charged_amount,
                        r.answer.charged_currency,
                        next,
                        now,
                        r.charge_id,
                        r.answer.meta_text("internal_convenience_payment_number"),
                        r.answer.meta_text("internal_convenience_payment_url"),
                        r.answer
                            .metadata
                            .is_object()
                            .then(|| r.answer.metadata.to_string())
                    ])
                    .map_err(|e| e.to_string())?;
                if r.state != "pending" {
                    event
                        .execute(rusqlite::params![
                            r.charge_id,
                            now,
                            r.state,
                            r.answer.status
                        ])
                        .map_err(|e| e.to_string())?;
                }
            }
        }
        tx.commit().map_err(|e| e.to_string())?;
        written += group.len() as u64;
    }
    Ok(written)
}
