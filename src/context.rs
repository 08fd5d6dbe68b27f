//! The context every job and command receives: the settings, the UnivaPay client (with
//! its pacer and budget), the clock and the way to the database. Cheap to clone (three
//! `Arc`s and the client's own shared handles), and nothing more: the pass engine
//! ([`crate::reconcile::Reconciler`]), the single check ([`crate::reconcile::Checker`]),
//! discovery and the webhook intake are built on it, never the other way round, so a new
//! job needs only a `Context` to talk to UnivaPay and the ledger.
//!
//! One client per process: every job of the process shares its pacer, so the budget share
//! holds whatever runs at once.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::Settings;
use crate::ledger::{self, Database, Integrity, Ledger, LedgerError, Open};
use crate::univapay::Client;

/// The time the ledger and the rules are computed in; a test or a simulation gives its
/// own.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// What a job or a command works with. See the module doc.
#[derive(Clone)]
pub struct Context {
    settings: Arc<Settings>,
    client: Client,
    clock: Arc<dyn Clock>,
    /// The ledger every connection of this context (and its clones) opens: it holds the
    /// identity the first open found, which every later open checks, so a ledger that
    /// vanished or was replaced under a running process is never adopted.
    db: Database,
}

impl Context {
    /// A context on the wall clock. `Err` when the HTTP client cannot be built.
    pub(crate) fn new(settings: Arc<Settings>) -> anyhow::Result<Self> {
        Self::with_clock(settings, Arc::new(SystemClock))
    }

    /// A context on `clock` (tests, simulations).
    pub(crate) fn with_clock(
        settings: Arc<Settings>,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Self> {
        let client = Client::new(&settings.api)?;
        // The reconciler's own runs (the daemon, `--once`, `check`'s checks) may come every
        // minute; the operator's commands check integrity on their own handles.
        let db = Database::new(&settings.database.path, settings.database.busy_timeout)
            .with_integrity(Integrity::Daily);
        Ok(Context {
            settings,
            client,
            clock,
            db,
        })
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The settings, shared.
    pub(crate) fn settings_arc(&self) -> &Arc<Settings> {
        &self.settings
    }

    /// The process's one UnivaPay client.
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// The ledger's handle.
    pub(crate) fn database(&self) -> &Database {
        &self.db
    }

    /// The longest wait for UnivaPay's permission any job accepts before it ends early:
    /// `schedule.drain_timeout`, so that a job never outlives the shutdown deadline
    /// waiting.
    pub(crate) fn max_pause(&self) -> Duration {
        self.settings.schedule.drain_timeout
    }

    /// Runs `f` on the ledger, on the blocking pool.
    pub(crate) async fn with_ledger<T: Send + 'static>(
        &self,
        open: Open,
        f: impl FnOnce(Ledger) -> Result<T, LedgerError> + Send + 'static,
    ) -> Result<T, LedgerError> {
        self.db.with_ledger(open, f).await
    }

    /// Runs `f` on the blocking pool, its join failure named after the database.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, LedgerError> + Send + 'static,
    ) -> Result<T, LedgerError> {
        ledger::blocking(&self.settings.database.path, f).await
    }

    /// Creates or migrates the database.
    pub async fn prepare_ledger(&self) -> Result<(), LedgerError> {
        self.with_ledger(Open::Migrate, |_| Ok(())).await
    }
}
