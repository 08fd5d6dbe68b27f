//! The config file as written: serde structs with the defaults of every key. Nothing here
//! is validated; [`super::sections`] turns each section into its settings.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

use super::{DEFAULT_BASE_URL, LogFormat};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    #[serde(default)]
    pub api: FileApi,
    #[serde(default)]
    pub database: FileDatabase,
    #[serde(default)]
    pub schedule: FileSchedule,
    #[serde(default)]
    pub reconcile: FileReconcile,
    #[serde(default)]
    pub log: FileLog,
    pub webhook: Option<FileWebhook>,
    pub discovery: Option<FileDiscovery>,
    pub metrics: Option<FileMetrics>,
    #[serde(default)]
    pub delivery: Vec<super::delivery::FileDelivery>,
    pub retention: Option<super::retention::FileRetention>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileApi {
    pub base_url: String,
    pub app_token: Option<SecretString>,
    pub secret: Option<SecretString>,
    pub secret_file: Option<String>,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub concurrency: i64,
    pub max_requests_per_minute: Option<i64>,
    pub budget_share: f64,
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
    pub path: PathBuf,
    #[serde(with = "humantime_serde")]
    pub busy_timeout: Duration,
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
    pub cron: String,
    pub run_on_start: bool,
    pub timezone: Option<String>,
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub lock_wait: Duration,
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
    pub age: Duration,
    #[serde(with = "humantime_serde")]
    pub every: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileReconcile {
    /// `None` when not written: whether it was is what tells the flat schedule (only
    /// `recheck_interval`) from the default one.
    #[serde(with = "humantime_serde::option")]
    pub recheck_interval: Option<Duration>,
    pub recheck_schedule: Option<Vec<FileStep>>,
    #[serde(with = "humantime_serde")]
    pub expiry_grace: Duration,
    #[serde(with = "humantime_serde")]
    pub deadline_watch: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_backoff_max: Duration,
    pub not_found_limit: i64,
    pub batch_size: i64,
    pub order_key: String,
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
    pub format: LogFormat,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileWebhook {
    pub listen: Option<String>,
    #[serde(default = "default_webhook_path")]
    pub path: String,
    pub auth_token: Option<SecretString>,
    pub auth_token_file: Option<String>,
}

fn default_webhook_path() -> String {
    "/univapay/webhook".to_owned()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileDiscovery {
    pub enabled: bool,
    pub stores: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    #[serde(with = "humantime_serde")]
    pub lookback: Duration,
    #[serde(with = "humantime_serde")]
    pub overlap: Duration,
    pub enrich: bool,
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
    pub textfile: Option<PathBuf>,
    pub listen: Option<String>,
    pub auth_token: Option<SecretString>,
    pub auth_token_file: Option<String>,
}
