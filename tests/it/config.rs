//! Config files for the tests, as typed values: a [`TestConfig`] has a field for each key
//! of each section of `config.toml` and is written out through the `toml` crate, so tests
//! edit keys, never text. A field left `None` is not written, and the program's default
//! applies.
//!
//! What the typed fields cannot hold (a value of the wrong type, a key the program does
//! not know, a duration that does not parse) is set by dotted key with
//! [`TestConfig::set`]: that is how the bad-config tests say exactly what is wrong. Text
//! that is not TOML at all is the one thing left to those tests to spell out.
//!
//! Shared by both test binaries, like `util`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::{Table, Value};
use univapay_sim::Credentials;

/// A whole config file. See the module doc.
#[derive(Debug, Clone, Default)]
pub struct TestConfig {
    pub api: Api,
    pub database: Database,
    pub schedule: Schedule,
    pub reconcile: Reconcile,
    pub log: Log,
    /// Keys set by [`set`](Self::set), written over the typed fields.
    raw: Vec<(String, Value)>,
}

/// `[api]`.
#[derive(Debug, Clone, Default)]
pub struct Api {
    pub base_url: Option<String>,
    pub app_token: Option<String>,
    pub secret: Option<String>,
    pub secret_file: Option<String>,
    pub timeout: Option<Duration>,
    pub concurrency: Option<i64>,
    pub max_requests_per_minute: Option<i64>,
}

/// `[database]`.
#[derive(Debug, Clone, Default)]
pub struct Database {
    pub path: Option<PathBuf>,
    pub busy_timeout: Option<Duration>,
}

/// `[schedule]`.
#[derive(Debug, Clone, Default)]
pub struct Schedule {
    pub cron: Option<String>,
    pub run_on_start: Option<bool>,
    pub timezone: Option<String>,
    pub drain_timeout: Option<Duration>,
    pub lock_wait: Option<Duration>,
}

/// `[reconcile]`.
#[derive(Debug, Clone, Default)]
pub struct Reconcile {
    pub recheck_interval: Option<Duration>,
    pub retry_backoff: Option<Duration>,
    pub retry_backoff_max: Option<Duration>,
    pub not_found_limit: Option<i64>,
    pub batch_size: Option<i64>,
}

/// `[log]`.
#[derive(Debug, Clone, Default)]
pub struct Log {
    pub format: Option<String>,
}

impl TestConfig {
    /// A fake UnivaPay at `base_url` that accepts `creds`, and the ledger at `db`; every
    /// other key left to its default.
    pub fn new(base_url: &str, creds: &Credentials, db: &Path) -> TestConfig {
        let mut c = TestConfig::default();
        c.api.base_url = Some(base_url.to_owned());
        c.api.app_token = Some(creds.app_token.clone());
        c.api.secret = Some(creds.secret.clone());
        c.database.path = Some(db.to_owned());
        c
    }

    /// `self` after `edit`, for building a config in one expression.
    pub fn with(mut self, edit: impl FnOnce(&mut TestConfig)) -> TestConfig {
        edit(&mut self);
        self
    }

    /// Sets the key at the dotted path `key` (`"api.timeout"`, `"verbose"`) to `value`,
    /// whatever the typed field says, creating the table on the way if needed.
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> TestConfig {
        self.raw.push((key.to_owned(), value.into()));
        self
    }

    /// The file's text.
    pub fn to_toml(&self) -> String {
        let a = &self.api;
        let api = section([
            ("base_url", a.base_url.clone().map(Value::from)),
            ("app_token", a.app_token.clone().map(Value::from)),
            ("secret", a.secret.clone().map(Value::from)),
            ("secret_file", a.secret_file.clone().map(Value::from)),
            ("timeout", a.timeout.map(duration)),
            ("concurrency", a.concurrency.map(Value::from)),
            (
                "max_requests_per_minute",
                a.max_requests_per_minute.map(Value::from),
            ),
        ]);
        let d = &self.database;
        let database = section([
            (
                "path",
                d.path.as_ref().map(|p| Value::from(p.to_str().unwrap())),
            ),
            ("busy_timeout", d.busy_timeout.map(duration)),
        ]);
        let s = &self.schedule;
        let schedule = section([
            ("cron", s.cron.clone().map(Value::from)),
            ("run_on_start", s.run_on_start.map(Value::from)),
            ("timezone", s.timezone.clone().map(Value::from)),
            ("drain_timeout", s.drain_timeout.map(duration)),
            ("lock_wait", s.lock_wait.map(duration)),
        ]);
        let r = &self.reconcile;
        let reconcile = section([
            ("recheck_interval", r.recheck_interval.map(duration)),
            ("retry_backoff", r.retry_backoff.map(duration)),
            ("retry_backoff_max", r.retry_backoff_max.map(duration)),
            ("not_found_limit", r.not_found_limit.map(Value::from)),
            ("batch_size", r.batch_size.map(Value::from)),
        ]);
        let log = section([("format", self.log.format.clone().map(Value::from))]);

        let mut file = Table::new();
        for (name, table) in [
            ("api", api),
            ("database", database),
            ("schedule", schedule),
            ("reconcile", reconcile),
            ("log", log),
        ] {
            if !table.is_empty() {
                file.insert(name.to_owned(), Value::Table(table));
            }
        }
        for (key, value) in &self.raw {
            let mut path: Vec<&str> = key.split('.').collect();
            let last = path.pop().unwrap();
            let mut table = &mut file;
            for part in path {
                table = table
                    .entry(part)
                    .or_insert_with(|| Value::Table(Table::new()))
                    .as_table_mut()
                    .unwrap_or_else(|| panic!("{part} in {key} is not a table"));
            }
            table.insert(last.to_owned(), value.clone());
        }
        toml::to_string(&file).expect("a TOML table renders")
    }

    /// Writes the file to `path`.
    /// Writes the file private (0600): it holds the test secret inline, and the program
    /// warns about a readable config that does.
    pub fn write(&self, path: &Path) {
        std::fs::write(path, self.to_toml())
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
    }
}

/// A section's table: the keys that are set.
fn section<const N: usize>(keys: [(&str, Option<Value>); N]) -> Table {
    keys.into_iter()
        .filter_map(|(k, v)| Some((k.to_owned(), v?)))
        .collect()
}

/// A duration as the file writes it: `"2s"`, `"400ms"`.
fn duration(d: Duration) -> Value {
    Value::from(humantime::format_duration(d).to_string())
}
