//! The test harness: [`TestApp::spawn`] starts a fake UnivaPay (the `univapay-sim` crate)
//! and makes a temp database and settings pointing at it; a test registers charges, sets
//! what the fake answers, runs passes and reads the ledger back.
//!
//! Time is a [`ManualClock`]: passes see only the time the test sets, so "due again after
//! the recheck interval" is a clock step, not a sleep.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use konbini_reconciler::config::Settings;
use konbini_reconciler::ledger::Trigger;
use konbini_reconciler::reconcile::{Clock, PassReport, Reconciler};
use rusqlite::{Connection, OptionalExtension};
use tokio_util::sync::CancellationToken;
use univapay_sim::{Credentials, RunningSim, Sim};

pub const STORE: &str = "11ef0000-0000-0000-0000-000000000001";

/// A clock that moves only when told to.
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn advance(&self, d: Duration) {
        let mut t = self.0.lock().unwrap();
        *t += chrono::Duration::from_std(d).unwrap();
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
}

/// Takes the pass lock of `rec`'s database, which a pass needs as proof.
pub fn hold_lock(rec: &Reconciler) -> konbini_reconciler::lock::PassGuard {
    konbini_reconciler::lock::PassLock::for_database(&rec.settings().database.path)
        .try_acquire()
        .expect("lock file")
        .expect("lock free")
}

pub struct TestApp {
    pub sim: RunningSim,
    pub dir: tempfile::TempDir,
    pub db_path: PathBuf,
    pub config_path: PathBuf,
    pub settings: Arc<Settings>,
    pub reconciler: Reconciler,
    pub clock: Arc<ManualClock>,
}

/// One `charges` row, the columns tests look at.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub state: String,
    pub provider_status: Option<String>,
    pub charged_amount: Option<i64>,
    pub charged_currency: Option<String>,
    pub amount_mismatch: i64,
    pub mismatch_detail: Option<String>,
    pub payment_number: Option<String>,
    pub payment_url: Option<String>,
    pub next_check_at: Option<String>,
    pub last_checked_at: Option<String>,
    pub last_error: Option<String>,
    pub not_found_count: i64,
}

/// One `charge_events` row: (kind, from_state, to_state, provider_status, detail).
pub type Event = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

impl TestApp {
    /// Fake API plus temp database, default settings, 2 s request timeout.
    pub async fn spawn() -> TestApp {
        Self::spawn_with("").await
    }

    /// As [`spawn`](Self::spawn), with extra TOML lines appended to `[api]` (a following
    /// `[section]` header in `extra` starts other sections).
    pub async fn spawn_with(extra: &str) -> TestApp {
        let sim = Sim::start(Credentials::default())
            .await
            .expect("start fake UnivaPay");
        let dir = tempfile::tempdir().unwrap();
        let db_path = dir.path().join("ledger.db");
        let config_path = dir.path().join("config.toml");
        let text = config_text(&sim.base_url(), &db_path, extra);
        std::fs::write(&config_path, &text).unwrap();
        // It holds the test secret inline: keep it private, as the program asks.
        std::fs::set_permissions(
            &config_path,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let settings = Arc::new(
            Settings::from_toml(&text, &config_path, &[("UNUSED", "")]).expect("test config"),
        );
        // Ahead of the database's own clock, so that charges registered just now are due.
        let clock = Arc::new(ManualClock(Mutex::new(
            Utc::now() + chrono::Duration::seconds(1),
        )));
        let reconciler = Reconciler::with_clock(settings.clone(), clock.clone()).unwrap();
        reconciler.prepare_ledger().await.unwrap();
        TestApp {
            sim,
            dir,
            db_path,
            config_path,
            settings,
            reconciler,
            clock,
        }
    }

    pub fn db(&self) -> Connection {
        Connection::open(&self.db_path).unwrap()
    }

    /// Registers a charge the way a merchant's code does: one plain INSERT.
    pub fn register(&self, charge_id: &str, amount: i64) {
        self.db()
            .execute(
                "INSERT INTO charges (charge_id, store_id, requested_amount) VALUES (?1, ?2, ?3)",
                rusqlite::params![charge_id, STORE, amount],
            )
            .unwrap();
    }

    /// Registers a charge here and creates it, `pending`, at the fake UnivaPay.
    pub fn create(&self, charge_id: &str, amount: i64) {
        self.register(charge_id, amount);
        self.sim
            .upsert(univapay_sim::SimCharge::new(charge_id, STORE, amount));
    }

    pub async fn pass(&self) -> PassReport {
        self.reconciler
            .run_pass(
                &hold_lock(&self.reconciler),
                Trigger::Once,
                CancellationToken::new(),
            )
            .await
            .expect("pass")
    }

    /// Moves the clock past the recheck interval, so every unchanged charge is due again.
    pub fn after_recheck(&self) {
        self.clock
            .advance(self.settings.reconcile.recheck_interval + Duration::from_secs(1));
    }

    /// Moves the clock past any retry backoff.
    pub fn after_backoff(&self) {
        self.clock
            .advance(self.settings.reconcile.retry_backoff_max + Duration::from_secs(1));
    }

    pub fn row(&self, charge_id: &str) -> Row {
        self.db()
            .query_row(
                "SELECT state, provider_status, charged_amount, charged_currency, amount_mismatch,
                        mismatch_detail, payment_number, payment_url, next_check_at,
                        last_checked_at, last_error, not_found_count
                 FROM charges WHERE charge_id = ?1",
                [charge_id],
                |r| {
                    Ok(Row {
                        state: r.get(0)?,
                        provider_status: r.get(1)?,
                        charged_amount: r.get(2)?,
                        charged_currency: r.get(3)?,
                        amount_mismatch: r.get(4)?,
                        mismatch_detail: r.get(5)?,
                        payment_number: r.get(6)?,
                        payment_url: r.get(7)?,
                        next_check_at: r.get(8)?,
                        last_checked_at: r.get(9)?,
                        last_error: r.get(10)?,
                        not_found_count: r.get(11)?,
                    })
                },
            )
            .optional()
            .unwrap()
            .unwrap_or_else(|| panic!("no charge {charge_id}"))
    }

    pub fn events(&self, charge_id: &str) -> Vec<Event> {
        let db = self.db();
        let mut stmt = db
            .prepare(
                "SELECT kind, from_state, to_state, provider_status, detail
                 FROM charge_events WHERE charge_id = ?1 ORDER BY id",
            )
            .unwrap();
        stmt.query_map([charge_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    }

    pub fn event_kinds(&self, charge_id: &str) -> Vec<String> {
        self.events(charge_id).into_iter().map(|e| e.0).collect()
    }

    /// (from, to) of every transition event of a charge, in order.
    pub fn transitions(&self, charge_id: &str) -> Vec<(String, String)> {
        self.events(charge_id)
            .into_iter()
            .filter(|e| e.0 == "transition")
            .map(|e| (e.1.unwrap(), e.2.unwrap()))
            .collect()
    }

    pub fn count(&self, sql: &str) -> i64 {
        self.db().query_row(sql, [], |r| r.get(0)).unwrap()
    }
}

/// A complete config for tests; `extra` lines go at the end of `[api]`.
pub fn config_text(base_url: &str, db_path: &Path, extra: &str) -> String {
    let creds = Credentials::default();
    let (api_extra, rest) = match extra.find("\n[") {
        Some(i) => extra.split_at(i),
        None if extra.starts_with('[') => ("", extra),
        None => (extra, ""),
    };
    format!(
        "[api]\nbase_url = \"{base_url}\"\napp_token = \"{}\"\nsecret = \"{}\"\ntimeout = \"2s\"\n{api_extra}\n\
         [database]\npath = \"{}\"\n{rest}\n",
        creds.app_token,
        creds.secret,
        db_path.display(),
    )
}
