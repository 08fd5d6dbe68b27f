//! The config file as written: serde structs with the defaults of every key. Nothing here
//! is validated; [`super::sections`] turns each section into its settings.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

use super::types::{DEFAULT_BASE_URL, LogFormat};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    #[serde(default)]
    pub(crate) api: FileApi,
    #[serde(default)]
    pub(crate) database: FileDatabase,
    #[serde(default)]
    pub(crate) schedule: FileSchedule,
    #[serde(default)]
    pub(crate) reconcile: FileReconcile,
    #[serde(default)]
    pub(crate) log: FileLog,
    pub(crate) webhook: Option<FileWebhook>,
    pub(crate) discovery: Option<FileDiscovery>,
    pub(crate) metrics: Option<FileMetrics>,
    #[serde(default)]
    pub(crate) delivery: Vec<super::delivery::FileDelivery>,
    pub(crate) retention: Option<super::retention::FileRetention>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileApi {
    pub(crate) base_url: String,
    pub(crate) app_token: Option<SecretString>,
    pub(crate) secret: Option<SecretString>,
    pub(crate) secret_file: Option<String>,
    #[serde(with = "humantime_serde")]
    pub(crate) timeout: Duration,
    pub(crate) concurrency: i64,
    pub(crate) max_requests_per_minute: Option<i64>,
    pub(crate) budget_share: f64,
}

impl Default for FileApi {
    fn default() -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.to_owned(),
            app_token: None,
            secret: None,
            secret_file: None,
            timeout: Duration::from_secs(30),
            concurrency: 8,
            max_requests_per_minute: None,
            budget_share: 0.5,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileDatabase {
    pub(crate) path: PathBuf,
    #[serde(with = "humantime_serde")]
    pub(crate) busy_timeout: Duration,
}

impl Default for FileDatabase {
    fn default() -> Self {
        Self {
            path: PathBuf::from("konbini-reconciler.db"),
            busy_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileSchedule {
    pub(crate) cron: String,
    pub(crate) run_on_start: bool,
    pub(crate) timezone: Option<String>,
    #[serde(with = "humantime_serde")]
    pub(crate) drain_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub(crate) lock_wait: Duration,
}

impl Default for FileSchedule {
    fn default() -> Self {
        Self {
            cron: "0 */5 * * * *".to_owned(),
            run_on_start: true,
            timezone: None,
            drain_timeout: Duration::from_secs(30),
            lock_wait: Duration::from_secs(0),
        }
    }
}

/// One step of `reconcile.recheck_schedule`.
#[derive(Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub(super) struct FileStep {
    #[serde(with = "humantime_serde")]
    pub(crate) age: Duration,
    #[serde(with = "humantime_serde")]
    pub(crate) every: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileReconcile {
    /// `None` when not written: whether it was is what tells the flat schedule (only
    /// `recheck_interval`) from the default one.
    #[serde(with = "humantime_serde::option")]
    pub(crate) recheck_interval: Option<Duration>,
    pub(crate) recheck_schedule: Option<Vec<FileStep>>,
    #[serde(with = "humantime_serde")]
    pub(crate) expiry_grace: Duration,
    #[serde(with = "humantime_serde")]
    pub(crate) deadline_watch: Duration,
    #[serde(with = "humantime_serde")]
    pub(crate) retry_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub(crate) retry_backoff_max: Duration,
    pub(crate) not_found_limit: i64,
    pub(crate) batch_size: i64,
    pub(crate) order_key: String,
}

impl Default for FileReconcile {
    fn default() -> Self {
        Self {
            recheck_interval: None,
            recheck_schedule: None,
            expiry_grace: Duration::from_secs(5 * 60),
            deadline_watch: Duration::from_secs(24 * 60 * 60),
            retry_backoff: Duration::from_secs(30),
            retry_backoff_max: Duration::from_secs(60 * 60),
            not_found_limit: 5,
            batch_size: 500,
            order_key: "orderid".to_owned(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileLog {
    pub(crate) format: LogFormat,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileWebhook {
    pub(crate) listen: Option<String>,
    #[serde(default = "default_webhook_path")]
    pub(crate) path: String,
    pub(crate) auth_token: Option<SecretString>,
    pub(crate) auth_token_file: Option<String>,
}

fn default_webhook_path() -> String {
    "/univapay/webhook".to_owned()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileDiscovery {
    pub(crate) enabled: bool,
    pub(crate) stores: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub(crate) interval: Duration,
    #[serde(with = "humantime_serde")]
    pub(crate) lookback: Duration,
    #[serde(with = "humantime_serde")]
    pub(crate) overlap: Duration,
    pub(crate) enrich: bool,
}

impl Default for FileDiscovery {
    fn default() -> Self {
        Self {
            enabled: true,
            stores: Vec::new(),
            interval: Duration::from_secs(10 * 60),
            lookback: Duration::from_secs(35 * 24 * 60 * 60),
            overlap: Duration::from_secs(60 * 60),
            enrich: false,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileMetrics {
    pub(crate) textfile: Option<PathBuf>,
    pub(crate) listen: Option<String>,
    pub(crate) auth_token: Option<SecretString>,
    pub(crate) auth_token_file: Option<String>,
}
