//! Each section of the file resolved into its settings, on its own: the file's values,
//! the environment's overrides, and the validators of [`super::check`]. Every error is
//! `(key, message)`; [`super::Settings::from_toml`] adds the file name.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::file::{
    FileApi, FileDatabase, FileDiscovery, FileMetrics, FileReconcile, FileSchedule, FileWebhook,
};
use super::types::{
    ApiSettings, DatabaseSettings, DiscoverySettings, Env, MetricsSettings, ReconcileSettings,
    ScheduleSettings, WebhookSettings, env,
};
use super::validate::{self, at_most, in_range, positive};
use crate::domain::{RecheckStep, StoreId};

/// A key at fault and what is wrong with it.
pub(super) type Invalid = (String, String);

fn at(key: &str) -> impl Fn(String) -> Invalid + '_ {
    move |m| (key.to_owned(), m)
}

/// Ceiling of `database.busy_timeout`: SQLite takes it in milliseconds as a C int.
const MAX_BUSY_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);
/// Ceiling of the `[reconcile]` intervals: a (Julian) year, far beyond any konbini
/// payment deadline. Added to timestamps, where an absurd value overflows.
const MAX_RECONCILE_INTERVAL: Duration = Duration::from_secs(31_557_600);
/// Ceiling of `discovery.lookback`: past this UnivaPay has long finished every konbini
/// charge (30 days at most) and deleted test-mode ones.
const MAX_LOOKBACK: Duration = Duration::from_secs(400 * 24 * 60 * 60);
/// Shortest webhook token accepted: anything shorter can be guessed.
const MIN_WEBHOOK_TOKEN: usize = 16;

/// A credential and the name of the place it came from, for messages.
fn credential(
    from_env: Option<String>,
    env_name: &'static str,
    from_file: Option<SecretString>,
    key: &'static str,
) -> Option<(SecretString, &'static str)> {
    match from_env {
        Some(v) => Some((SecretString::from(v), env_name)),
        None => from_file.map(|v| (v, key)),
    }
}

pub(super) fn api(f: FileApi, config_path: &Path, env: &dyn Env) -> Result<ApiSettings, Invalid> {
    let base_url = validate::parse_base_url(&f.base_url).map_err(at("api.base_url"))?;
    // Errors about a credential name where its value came from, so that the operator
    // looks in the right place.
    let (app_token, app_token_key) = credential(
        env.var(env::APP_TOKEN),
        "$UNIVAPAY_APP_TOKEN",
        f.app_token,
        "api.app_token",
    )
    .ok_or_else(|| {
        at("api.app_token")(format!(
            "missing (set it in the file or in ${})",
            env::APP_TOKEN
        ))
    })?;
    validate::secret_text(app_token.expose_secret()).map_err(at(app_token_key))?;
    let (secret, secret_key) = api_secret(env, f.secret, f.secret_file, config_path)?;
    validate::secret_text(secret.expose_secret()).map_err(at(secret_key))?;
    positive(f.timeout).map_err(at("api.timeout"))?;
    in_range(f.concurrency, 1, 1024).map_err(at("api.concurrency"))?;
    let max_requests_per_minute = f
        .max_requests_per_minute
        .map(|n| {
            u32::try_from(n)
                .ok()
                .and_then(NonZeroU32::new)
                .ok_or_else(|| format!("must be a positive whole number, got {n}"))
        })
        .transpose()
        .map_err(at("api.max_requests_per_minute"))?;
    if !(f.budget_share > 0.0 && f.budget_share <= 1.0) {
        return Err(at("api.budget_share")(format!(
            "must be greater than 0 and at most 1, got {}",
            f.budget_share
        )));
    }
    Ok(ApiSettings {
        base_url,
        app_token,
        secret,
        timeout: f.timeout,
        concurrency: f.concurrency as usize,
        max_requests_per_minute,
        budget_share: f.budget_share,
    })
}

fn api_secret(
    env: &dyn Env,
    inline: Option<SecretString>,
    file: Option<String>,
    config_path: &Path,
) -> Result<(SecretString, &'static str), Invalid> {
    match (env.var(env::SECRET), inline, file) {
        (Some(v), _, _) => Ok((SecretString::from(v), "$UNIVAPAY_SECRET")),
        (None, Some(_), Some(_)) => Err(at("api.secret_file")(
            "set either api.secret or api.secret_file, not both".into(),
        )),
        (None, Some(s), None) => Ok((s, "api.secret")),
        (None, None, Some(file)) => Ok((
            SecretString::from(
                validate::read_secret_file(&file, config_path, env)
                    .map_err(at("api.secret_file"))?,
            ),
            "api.secret_file",
        )),
        (None, None, None) => Err(at("api.secret")(format!(
            "missing (set api.secret or api.secret_file, or ${})",
            env::SECRET
        ))),
    }
}

pub(super) fn database(f: FileDatabase) -> Result<DatabaseSettings, Invalid> {
    if f.path.as_os_str().is_empty() {
        return Err(at("database.path")("must not be empty".into()));
    }
    at_most(f.busy_timeout, MAX_BUSY_TIMEOUT).map_err(at("database.busy_timeout"))?;
    Ok(DatabaseSettings {
        path: f.path,
        busy_timeout: f.busy_timeout,
    })
}

pub(super) fn schedule(f: FileSchedule) -> Result<ScheduleSettings, Invalid> {
    validate::cron(&f.cron).map_err(at("schedule.cron"))?;
    let timezone = f
        .timezone
        .map(|name| {
            name.parse::<chrono_tz::Tz>().map_err(|_| {
                format!("unknown time zone {name:?} (use an IANA name such as \"Asia/Tokyo\")")
            })
        })
        .transpose()
        .map_err(at("schedule.timezone"))?;
    positive(f.drain_timeout).map_err(at("schedule.drain_timeout"))?;
    Ok(ScheduleSettings {
        cron: f.cron,
        run_on_start: f.run_on_start,
        timezone,
        drain_timeout: f.drain_timeout,
        lock_wait: f.lock_wait,
    })
}

/// An interval of `[reconcile]`: positive, and small enough to add to a timestamp.
fn interval(key: &str, d: Duration) -> Result<(), Invalid> {
    positive(d).map_err(at(key))?;
    at_most(d, MAX_RECONCILE_INTERVAL).map_err(at(key))
}

/// The recheck schedule when neither `recheck_interval` nor `recheck_schedule` is set:
/// every 10 minutes (every second pass of the default cron) for the first two days, when
/// nearly all konbini payments are made, then every 3 hours, where the unpaid charges
/// that dominate the calls spend most of their lives. With `deadline_watch` the last day
/// before a known deadline is checked at the young pace again. See the README for the
/// model behind it.
pub(crate) const DEFAULT_RECHECK_SCHEDULE: [RecheckStep; 2] = [
    RecheckStep {
        age: Duration::ZERO,
        every: Duration::from_secs(10 * 60),
    },
    RecheckStep {
        age: Duration::from_secs(2 * 24 * 60 * 60),
        every: Duration::from_secs(3 * 60 * 60),
    },
];

pub(super) fn reconcile(f: FileReconcile) -> Result<ReconcileSettings, Invalid> {
    if let Some(flat) = f.recheck_interval {
        interval("reconcile.recheck_interval", flat)?;
    }
    let recheck_schedule = match (f.recheck_schedule, f.recheck_interval) {
        (None, None) => DEFAULT_RECHECK_SCHEDULE.to_vec(),
        (None, Some(flat)) => vec![RecheckStep {
            age: Duration::ZERO,
            every: flat,
        }],
        (Some(steps), _) => {
            if f.recheck_interval.is_some() {
                return Err(at("reconcile.recheck_schedule")(
                    "set either reconcile.recheck_interval (a flat schedule) or reconcile.recheck_schedule, not both".into(),
                ));
            }
            recheck_schedule(&steps).map_err(at("reconcile.recheck_schedule"))?
        }
    };
    at_most(f.expiry_grace, MAX_RECONCILE_INTERVAL).map_err(at("reconcile.expiry_grace"))?;
    at_most(f.deadline_watch, MAX_RECONCILE_INTERVAL).map_err(at("reconcile.deadline_watch"))?;
    interval("reconcile.retry_backoff", f.retry_backoff)?;
    interval("reconcile.retry_backoff_max", f.retry_backoff_max)?;
    if f.retry_backoff_max < f.retry_backoff {
        return Err(at("reconcile.retry_backoff_max")(
            "must not be shorter than reconcile.retry_backoff".into(),
        ));
    }
    in_range(f.not_found_limit, 1, 1_000_000).map_err(at("reconcile.not_found_limit"))?;
    in_range(f.batch_size, 1, 100_000).map_err(at("reconcile.batch_size"))?;
    Ok(ReconcileSettings {
        recheck_interval: recheck_schedule[0].every,
        recheck_schedule,
        expiry_grace: f.expiry_grace,
        deadline_watch: f.deadline_watch,
        retry_backoff: f.retry_backoff,
        retry_backoff_max: f.retry_backoff_max,
        not_found_limit: f.not_found_limit as u32,
        batch_size: f.batch_size as usize,
        order_key: super::delivery::order_key(f.order_key)?,
    })
}

/// Non-empty, first step at age 0, ages strictly increasing, every interval positive and
/// bounded.
fn recheck_schedule(steps: &[super::file::FileStep]) -> Result<Vec<RecheckStep>, String> {
    let first = steps.first().ok_or("must have at least one step")?;
    if !first.age.is_zero() {
        return Err(format!(
            "the first step must start at age \"0s\", got {}",
            humantime::format_duration(first.age)
        ));
    }
    let mut out = Vec::with_capacity(steps.len());
    for (i, s) in steps.iter().enumerate() {
        positive(s.every)
            .and_then(|()| at_most(s.every, MAX_RECONCILE_INTERVAL))
            .and_then(|()| at_most(s.age, MAX_RECONCILE_INTERVAL))
            .map_err(|m| format!("step {}: every/age {m}", i + 1))?;
        if i > 0 && s.age <= steps[i - 1].age {
            return Err(format!(
                "steps must be sorted by age, strictly increasing (step {} is not after step {i})",
                i + 1
            ));
        }
        out.push(RecheckStep {
            age: s.age,
            every: s.every,
        });
    }
    Ok(out)
}

/// Where a token may come from: its environment variable, its inline key, its file key.
struct TokenKeys {
    env: &'static str,
    inline: &'static str,
    file: &'static str,
}

/// A token from the environment (which wins), inline, or a file; `None` when none is set.
/// At least [`MIN_WEBHOOK_TOKEN`] characters, no control characters; errors name where
/// the value came from, never the value.
fn token(
    keys: &TokenKeys,
    inline: Option<SecretString>,
    file: Option<String>,
    config_path: &Path,
    env: &dyn Env,
) -> Result<Option<SecretString>, Invalid> {
    let from_env = format!("${}", keys.env);
    let (token, key) = match (env.var(keys.env), inline, file) {
        (Some(v), _, _) => (SecretString::from(v), from_env.as_str()),
        (None, Some(_), Some(_)) => {
            return Err(at(keys.file)(format!(
                "set either {} or {}, not both",
                keys.inline, keys.file
            )));
        }
        (None, Some(t), None) => (t, keys.inline),
        (None, None, Some(file)) => (
            SecretString::from(
                validate::read_secret_file(&file, config_path, env).map_err(at(keys.file))?,
            ),
            keys.file,
        ),
        (None, None, None) => return Ok(None),
    };
    let t = token.expose_secret();
    if t.chars().count() < MIN_WEBHOOK_TOKEN {
        return Err(at(key)(format!(
            "must be at least {MIN_WEBHOOK_TOKEN} characters"
        )));
    }
    if t.chars().any(char::is_control) {
        return Err(at(key)("contains control characters".into()));
    }
    Ok(Some(token))
}

pub(super) fn webhook(
    f: FileWebhook,
    config_path: &Path,
    env: &dyn Env,
) -> Result<WebhookSettings, Invalid> {
    let listen = f
        .listen
        .map(|l| {
            l.parse::<SocketAddr>()
                .map_err(|_| format!("{l:?} is not an address:port such as \"127.0.0.1:8089\""))
        })
        .transpose()
        .map_err(at("webhook.listen"))?;
    if !f.path.starts_with('/')
        || f.path.contains(['?', '#'])
        || f.path.chars().any(char::is_whitespace)
    {
        return Err(at("webhook.path")(format!(
            "must be a path starting with / (no query, no spaces), got {:?}",
            f.path
        )));
    }
    let names = TokenKeys {
        env: env::WEBHOOK_TOKEN,
        inline: "webhook.auth_token",
        file: "webhook.auth_token_file",
    };
    let Some(token) = token(&names, f.auth_token, f.auth_token_file, config_path, env)? else {
        return Err(at("webhook.auth_token")(format!(
            "missing: a webhook listener needs the Authorization value configured at UnivaPay (or ${})",
            env::WEBHOOK_TOKEN
        )));
    };
    Ok(WebhookSettings {
        listen,
        path: f.path,
        auth_token: token,
    })
}

pub(super) fn discovery(f: FileDiscovery) -> Result<Option<DiscoverySettings>, Invalid> {
    let stores = f
        .stores
        .into_iter()
        .enumerate()
        .map(|(i, s)| StoreId::parse(s).map_err(|e| format!("entry {}: store id {e}", i + 1)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(at("discovery.stores"))?;
    interval("discovery.interval", f.interval)?;
    positive(f.lookback).map_err(at("discovery.lookback"))?;
    at_most(f.lookback, MAX_LOOKBACK).map_err(at("discovery.lookback"))?;
    at_most(f.overlap, MAX_LOOKBACK).map_err(at("discovery.overlap"))?;
    if !f.enabled {
        return Ok(None);
    }
    if stores.is_empty() {
        return Err(at("discovery.stores")(
            "must name at least one store when discovery is enabled".into(),
        ));
    }
    Ok(Some(DiscoverySettings {
        stores,
        interval: f.interval,
        lookback: f.lookback,
        overlap: f.overlap,
        enrich: f.enrich,
    }))
}

pub(super) fn metrics(
    f: FileMetrics,
    config_path: &Path,
    env: &dyn Env,
) -> Result<MetricsSettings, Invalid> {
    if let Some(p) = &f.textfile
        && (p.as_os_str().is_empty() || p.file_name().is_none())
    {
        return Err(at("metrics.textfile")("must name a file".into()));
    }
    let listen = f
        .listen
        .as_deref()
        .map(metrics_listen)
        .transpose()
        .map_err(at("metrics.listen"))?;
    let names = TokenKeys {
        env: env::METRICS_TOKEN,
        inline: "metrics.auth_token",
        file: "metrics.auth_token_file",
    };
    let auth_token = token(&names, f.auth_token, f.auth_token_file, config_path, env)?;
    Ok(MetricsSettings {
        textfile: f.textfile,
        listen,
        auth_token,
    })
}

/// `metrics.listen`: `"host:port"` as written, or only a port (`"9464"`, `":9464"`),
/// which means loopback (`127.0.0.1`): metrics stay on the machine unless a host says
/// otherwise. `localhost` is `127.0.0.1`.
fn metrics_listen(raw: &str) -> Result<SocketAddr, String> {
    let bad = || format!("{raw:?} is not a port or address:port such as \"127.0.0.1:9464\"");
    let port_only = raw.strip_prefix(':').unwrap_or(raw);
    if let Ok(port) = port_only.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    if let Some(port) = raw.strip_prefix("localhost:") {
        let port = port.parse::<u16>().map_err(|_| bad())?;
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    raw.parse::<SocketAddr>().map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_listen_without_a_host_is_loopback() {
        let ok = |s: &str| metrics_listen(s).unwrap().to_string();
        assert_eq!(ok("9464"), "127.0.0.1:9464");
        assert_eq!(ok(":9464"), "127.0.0.1:9464");
        assert_eq!(ok("localhost:9464"), "127.0.0.1:9464");
        assert_eq!(ok("0.0.0.0:9464"), "0.0.0.0:9464");
        assert_eq!(ok("[::1]:9464"), "[::1]:9464");
        for bad in [
            "",
            ":",
            "70000",
            "host:9464",
            "127.0.0.1",
            "9464:",
            "localhost:x",
        ] {
            assert!(metrics_listen(bad).is_err(), "{bad:?}");
        }
    }
}
