//! The settings of each section once resolved, and the environment they may read: the
//! leaf of `config`, imported by the files that resolve the sections and by `mod.rs`,
//! which puts them together into [`Settings`](super::Settings).

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::Url;
use secrecy::SecretString;
use serde::Deserialize;

use crate::domain::{RecheckStep, StoreId};

/// UnivaPay's production API.
pub(crate) const DEFAULT_BASE_URL: &str = "https://api.univapay.com";

/// Environment variables that override the config file.
pub mod env {
    pub const CONFIG: &str = "KONBINI_RECONCILER_CONFIG";
    pub const APP_TOKEN: &str = "UNIVAPAY_APP_TOKEN";
    pub const SECRET: &str = "UNIVAPAY_SECRET";
    pub const WEBHOOK_TOKEN: &str = "KONBINI_RECONCILER_WEBHOOK_TOKEN";
    pub(crate) const METRICS_TOKEN: &str = "KONBINI_RECONCILER_METRICS_TOKEN";
    /// Set by systemd for `LoadCredential=`; may be referenced from `api.secret_file`.
    pub const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";
}

/// `Debug` shows `[REDACTED]` for the two secrets (secrecy's own `Debug`).
#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub(crate) base_url: Url,
    pub(crate) app_token: SecretString,
    pub(crate) secret: SecretString,
    pub(crate) timeout: Duration,
    pub(crate) concurrency: usize,
    /// Our own ceiling on requests per minute, below whatever UnivaPay allows.
    pub(crate) max_requests_per_minute: Option<NonZeroU32>,
    /// Share of UnivaPay's advertised route budget (burst and refill) this program may
    /// use, in (0, 1]; the rest stays free for the shop's own requests.
    pub(crate) budget_share: f64,
}

#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub path: PathBuf,
    pub(crate) busy_timeout: Duration,
}

#[derive(Debug, Clone)]
pub(crate) struct ScheduleSettings {
    pub(crate) cron: String,
    pub(crate) run_on_start: bool,
    pub(crate) timezone: Option<chrono_tz::Tz>,
    /// How long a shutdown may take to let in-flight checks finish and commit.
    pub(crate) drain_timeout: Duration,
    /// How long `--once` waits for another pass to release the lock before giving up.
    pub(crate) lock_wait: Duration,
}

#[derive(Debug, Clone)]
pub struct ReconcileSettings {
    /// The interval of the schedule's first step (the whole schedule when it is flat).
    pub recheck_interval: Duration,
    /// The recheck interval by age; one step at age 0 when only `recheck_interval` is set.
    pub(crate) recheck_schedule: Vec<RecheckStep>,
    /// A charge with `expires_at` is checked this long after it.
    pub(crate) expiry_grace: Duration,
    /// During this long before a known `expires_at`, a charge is checked at the
    /// schedule's first interval (zero: off).
    pub(crate) deadline_watch: Duration,
    pub(crate) retry_backoff: Duration,
    pub retry_backoff_max: Duration,
    pub(crate) not_found_limit: u32,
    pub(crate) batch_size: usize,
    /// The metadata key holding the shop's order reference.
    pub(crate) order_key: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub(crate) struct LogSettings {
    pub(crate) format: LogFormat,
}

/// `[webhook]`. `Debug` redacts the token.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Where to listen; `None` when the socket comes from systemd socket activation only.
    pub(crate) listen: Option<SocketAddr>,
    pub path: String,
    /// Exactly the `Authorization` value configured at UnivaPay.
    pub(crate) auth_token: SecretString,
}

/// `[discovery]`, when enabled.
#[derive(Debug, Clone)]
pub(crate) struct DiscoverySettings {
    pub(crate) stores: Vec<StoreId>,
    pub(crate) interval: Duration,
    /// How far back the first sweep looks.
    pub(crate) lookback: Duration,
    /// How far behind its watermark every later sweep starts again, so that rows that
    /// become visible in a listing late are still found.
    pub(crate) overlap: Duration,
    /// Also fill brand and deadline of registered charges from their tokens.
    pub(crate) enrich: bool,
}

/// `[metrics]`. `Debug` redacts the token.
#[derive(Debug, Clone)]
pub(crate) struct MetricsSettings {
    /// node_exporter textfile written after every pass.
    pub(crate) textfile: Option<PathBuf>,
    /// A listener of its own for `GET /metrics`; `None`: none.
    pub(crate) listen: Option<SocketAddr>,
    /// When set, `/metrics` is also served on the webhook listener, and wherever it is
    /// served it asks for `Authorization: Bearer <token>`.
    pub(crate) auth_token: Option<SecretString>,
}

/// Where the environment comes from; tests pass a map instead of the process environment.
pub trait Env {
    fn var(&self, key: &str) -> Option<String>;
}

/// The real process environment.
pub(crate) struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok().filter(|v| !v.is_empty())
    }
}

impl<const N: usize> Env for [(&str, &str); N] {
    fn var(&self, key: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| (*v).to_owned())
    }
}
