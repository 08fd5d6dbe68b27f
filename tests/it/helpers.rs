//! The test harness: [`TestApp::spawn`] starts a fake UnivaPay (the `univapay-sim` crate)
//! and makes a temp database and settings pointing at it; a test registers charges, sets
//! what the fake answers, runs passes and reads the ledger back.
//!
//! Time is a [`ManualClock`]: passes see only the time the test sets, so "due again after
//! the recheck interval" is a clock step, not a sleep.
//!
//! Also here: named rows of the ledger's tables ([`ChargeRow`], [`EventRow`], [`RunRow`]),
//! polling for a condition ([`wait_until`]), and the file helpers of the permission and
//! full-disk tests ([`chmod`], [`open_up`], [`snapshot`], [`assert_integrity`]). The binary
//! itself is launched through [`TestCommand`] (`util`), [`TestApp::command`] for the
//! test's own config.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use konbini_reconciler::config::Settings;
use konbini_reconciler::ledger::Trigger;
use konbini_reconciler::reconcile::{Clock, PassReport, Reconciler};
use rusqlite::{Connection, OptionalExtension};
use tokio_util::sync::CancellationToken;
use univapay_sim::{Credentials, Reply, RunningSim, Sim};

use crate::config::TestConfig;
use crate::util::{BIN_NAME, Finished, TestCommand, traversable};

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

/// Takes the pass lock of `rec`'s database, which a pass needs as proof. Waits a little:
/// a child another test is spawning holds a copy of every open file description between
/// fork and exec, the lock's among them.
pub fn hold_lock(rec: &Reconciler) -> konbini_reconciler::lock::PassGuard {
    let lock = konbini_reconciler::lock::PassLock::for_database(&rec.settings().database.path);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match lock.try_acquire().expect("lock file") {
            Ok(guard) => return guard,
            Err(busy) if std::time::Instant::now() >= deadline => panic!("lock held: {busy:?}"),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

pub struct TestApp {
    pub sim: RunningSim,
    pub dir: tempfile::TempDir,
    pub db_path: PathBuf,
    pub config_path: PathBuf,
    /// What `config_path` holds; change it with [`reconfigure`](TestApp::reconfigure).
    pub config: TestConfig,
    pub settings: Arc<Settings>,
    pub reconciler: Reconciler,
    pub clock: Arc<ManualClock>,
}

/// One `charges` row, the columns tests look at.
#[derive(Debug, Clone, PartialEq)]
pub struct ChargeRow {
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

/// One `charge_events` row, the columns tests look at.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub kind: String,
    pub from_state: Option<String>,
    pub to_state: Option<String>,
    pub provider_status: Option<String>,
    pub detail: Option<String>,
}

/// One `runs` row, the columns tests look at.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    pub id: i64,
    pub trigger: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub outcome: String,
    pub checked: i64,
    pub transitions: i64,
    pub mismatches: i64,
    pub errors: i64,
    pub detail: Option<String>,
    /// No request before this time (a pause UnivaPay asked for).
    pub resume_at: Option<String>,
    /// Charges due when the pass began; `None` until its plan stage recorded them.
    pub due: Option<i64>,
    /// The factor every recheck interval was stretched by to fit the budget share;
    /// recorded with `due`.
    pub stretch: Option<f64>,
}

impl TestApp {
    /// Fake API plus temp database, default settings, 2 s request timeout.
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    /// As [`spawn`](Self::spawn), with the config edited by `edit` first.
    pub async fn spawn_with(edit: impl FnOnce(&mut TestConfig)) -> TestApp {
        let sim = Sim::start(Credentials::default())
            .await
            .expect("start fake UnivaPay");
        let dir = tempfile::tempdir().unwrap();
        let db_path = dir.path().join("ledger.db");
        let config = TestConfig::new(&sim.base_url(), &Credentials::default(), &db_path)
            .with(|c| c.api.timeout = Some(Duration::from_secs(2)))
            .with(edit);
        let config_path = dir.path().join("config.toml");
        let settings = write_settings(&config, &config_path);
        // Ahead of the database's own clock, so that charges registered just now (their
        // `next_check_at` defaults to the database's now) are due. A minute, not a second:
        // on a loaded two-core machine a test has taken over a second between here and
        // its last INSERT, and a charge registered after the clock was not due.
        let clock = Arc::new(ManualClock(Mutex::new(
            Utc::now() + chrono::Duration::minutes(1),
        )));
        let reconciler = Reconciler::with_clock(settings.clone(), clock.clone()).unwrap();
        reconciler.prepare_ledger().await.unwrap();
        TestApp {
            sim,
            dir,
            db_path,
            config_path,
            config,
            settings,
            reconciler,
            clock,
        }
    }

    /// Edits the test's config and brings the rest along: the file, the settings, the
    /// reconciler (same clock) and `db_path`. The ledger at a new path is not created.
    pub fn reconfigure(&mut self, edit: impl FnOnce(&mut TestConfig)) {
        edit(&mut self.config);
        self.settings = write_settings(&self.config, &self.config_path);
        self.db_path = self.settings.database.path.clone();
        self.reconciler =
            Reconciler::with_clock(self.settings.clone(), self.clock.clone()).unwrap();
    }

    /// The binary in the test's directory with `--config` naming the test's config.
    pub fn command(&self) -> TestCommand {
        let mut cmd = TestCommand::new(self.dir.path());
        cmd.config(&self.config_path);
        cmd
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

    pub fn row(&self, charge_id: &str) -> ChargeRow {
        self.db()
            .query_row(
                "SELECT state, provider_status, charged_amount, charged_currency, amount_mismatch,
                        mismatch_detail, payment_number, payment_url, next_check_at,
                        last_checked_at, last_error, not_found_count
                 FROM charges WHERE charge_id = ?1",
                [charge_id],
                |r| {
                    Ok(ChargeRow {
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

    pub fn events(&self, charge_id: &str) -> Vec<EventRow> {
        let db = self.db();
        let mut stmt = db
            .prepare(
                "SELECT kind, from_state, to_state, provider_status, detail
                 FROM charge_events WHERE charge_id = ?1 ORDER BY id",
            )
            .unwrap();
        stmt.query_map([charge_id], |r| {
            Ok(EventRow {
                kind: r.get(0)?,
                from_state: r.get(1)?,
                to_state: r.get(2)?,
                provider_status: r.get(3)?,
                detail: r.get(4)?,
            })
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    }

    pub fn event_kinds(&self, charge_id: &str) -> Vec<String> {
        self.events(charge_id).into_iter().map(|e| e.kind).collect()
    }

    /// (from, to) of every transition event of a charge, in order.
    pub fn transitions(&self, charge_id: &str) -> Vec<(String, String)> {
        self.events(charge_id)
            .into_iter()
            .filter(|e| e.kind == "transition")
            .map(|e| (e.from_state.unwrap(), e.to_state.unwrap()))
            .collect()
    }

    pub fn count(&self, sql: &str) -> i64 {
        self.db().query_row(sql, [], |r| r.get(0)).unwrap()
    }

    /// Every `runs` row, oldest first.
    pub fn runs(&self) -> Vec<RunRow> {
        let db = self.db();
        let mut stmt = db
            .prepare(
                "SELECT id, trigger, started_at, finished_at, outcome, checked, transitions,
                        mismatches, errors, detail, resume_at, due, stretch
                 FROM runs ORDER BY id",
            )
            .unwrap();
        stmt.query_map([], |r| {
            Ok(RunRow {
                id: r.get(0)?,
                trigger: r.get(1)?,
                started_at: r.get(2)?,
                finished_at: r.get(3)?,
                outcome: r.get(4)?,
                checked: r.get(5)?,
                transitions: r.get(6)?,
                mismatches: r.get(7)?,
                errors: r.get(8)?,
                detail: r.get(9)?,
                resume_at: r.get(10)?,
                due: r.get(11)?,
                stretch: r.get(12)?,
            })
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    }

    /// The newest `runs` row.
    pub fn last_run(&self) -> RunRow {
        self.runs().pop().expect("a run")
    }
}

/// Writes `config` to `path` and reads it back as the program would, with no environment.
fn write_settings(config: &TestConfig, path: &Path) -> Arc<Settings> {
    config.write(path);
    Arc::new(Settings::from_toml(&config.to_toml(), path, &[("UNUSED", "")]).expect("test config"))
}

/// Every run finished, and each started only after the one before it had finished.
pub fn assert_runs_never_overlapped(runs: &[RunRow]) {
    for r in runs {
        assert!(
            r.finished_at.is_some(),
            "run {} never finished: {runs:?}",
            r.id
        );
        assert_ne!(r.outcome, "running", "{runs:?}");
    }
    for w in runs.windows(2) {
        let finished = w[0].finished_at.as_deref().unwrap();
        assert!(
            w[1].started_at.as_str() >= finished,
            "run {} started at {} before run {} finished at {finished}",
            w[1].id,
            w[1].started_at,
            w[0].id
        );
    }
}

/// Polls `cond` every 20 ms until it holds, failing the test after `limit`.
pub async fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out after {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A canned answer of `status` with `body`, for `Sim::push_reply`.
pub fn raw(status: u16, body: &str) -> Reply {
    Reply::Raw {
        status,
        body: body.to_owned(),
    }
}

// ---- files: permissions, snapshots, integrity ------------------------------------------

/// Sets the permission bits of `path`.
pub fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// Lets other users list `dir` (temp dirs are created 0700), and fails loudly if a
/// directory above it is out of their reach: what [`TestCommand::unprivileged`] needs.
pub fn open_up(dir: &Path) {
    let mode = std::fs::metadata(dir).unwrap().permissions().mode();
    chmod(dir, mode | 0o755);
    assert!(
        traversable(dir),
        "a directory above {} is not traversable by other users; the unprivileged tests \
         cannot work there",
        dir.display()
    );
}

/// Every file below `dir` (recursively) with its bytes.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).unwrap_or_default();
                out.insert(p, bytes);
            }
        }
    }
    out
}

/// Asserts two snapshots are equal, naming the first file that differs.
pub fn assert_same(before: &BTreeMap<PathBuf, Vec<u8>>, after: &BTreeMap<PathBuf, Vec<u8>>) {
    let names = |s: &BTreeMap<PathBuf, Vec<u8>>| s.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(before), names(after), "files appeared or vanished");
    for (p, b) in before {
        assert!(after[p] == *b, "{} changed", p.display());
    }
}

/// `PRAGMA integrity_check` on `db` (opened read-write, so a leftover WAL is recovered).
pub fn assert_integrity(db: &Path) {
    let conn = Connection::open(db).unwrap();
    let result: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(result, "ok", "{}", db.display());
}

// ---- runs of the real binary with a bound, and ledger edits for them ------------------

/// Runs `cmd` to its end, failing the test if that takes longer than `limit`: the faults
/// tested here used to make the program wait forever, so the bound is part of what is
/// tested (tighter than [`crate::util::RUN_LIMIT`]).
pub async fn run_within(cmd: &mut TestCommand, limit: Duration) -> Finished {
    cmd.spawn().finish(limit).await
}

/// Exit 1 and exactly one line of the program's own on stderr (log lines aside), the
/// fatal one; returns it.
pub fn one_fatal_line(out: &Finished) -> String {
    let line = out.assert_fatal(&[]);
    let err = out.stderr();
    let own: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with(&format!("{BIN_NAME}: ")))
        .collect();
    assert_eq!(own, [line.as_str()], "one line expected: {err}");
    line
}

/// Rewrites the test's config file with the database at `db`, the rest as the test's
/// config has it (file only: the test's settings and reconciler stay on the old path).
pub fn write_config_with_database(app: &TestApp, db: &Path) {
    app.config
        .clone()
        .with(|c| c.database.path = Some(db.to_owned()))
        .write(&app.config_path);
}

/// `runs.resume_at` of the latest run (a column [`crate::helpers::RunRow`] lacks).
pub fn last_resume_at(app: &TestApp) -> Option<String> {
    app.db()
        .query_row(
            "SELECT resume_at FROM runs ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

/// Makes every open charge due now by the database's own (real) clock, for a run of the
/// binary after passes on the test's manual clock.
pub fn make_due(app: &TestApp) {
    app.db()
        .execute(
            "UPDATE charges SET next_check_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 second')
             WHERE next_check_at IS NOT NULL",
            [],
        )
        .unwrap();
}
