//! Typed settings: `config.toml` plus environment overrides, validated in full before
//! anything else (the database above all) is touched.
//!
//! Every error names the file and the key at fault on one line. Secrets are held as
//! [`SecretString`] from the moment they are read; neither they nor their values appear in
//! an error message or in `Debug` output.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// The UnivaPay production endpoint, used when `api.base_url` is not set.
pub const DEFAULT_BASE_URL: &str = "https://api.univapay.com";
/// Where the config is looked for when neither `--config` nor the env var says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "config.toml";

/// Environment variables that override the config file.
pub mod env {
    pub const CONFIG: &str = "KONBINI_RECONCILER_CONFIG";
    pub const APP_TOKEN: &str = "UNIVAPAY_APP_TOKEN";
    pub const SECRET: &str = "UNIVAPAY_SECRET";
    /// Set by systemd for `LoadCredential=`; may be referenced from `api.secret_file`.
    pub const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config {path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub api: ApiSettings,
    pub database: DatabaseSettings,
    pub schedule: ScheduleSettings,
    pub reconcile: ReconcileSettings,
    pub log: LogSettings,
}

/// `Debug` shows `[REDACTED]` for the two secrets (secrecy's own `Debug`).
#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub base_url: Url,
    pub app_token: SecretString,
    pub secret: SecretString,
    pub timeout: Duration,
    pub concurrency: usize,
    /// Our own ceiling on requests per minute, below whatever UnivaPay allows.
    pub max_requests_per_minute: Option<NonZeroU32>,
}

#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub path: PathBuf,
    pub busy_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct ScheduleSettings {
    pub cron: String,
    pub run_on_start: bool,
    pub timezone: Option<chrono_tz::Tz>,
    /// How long a shutdown may take to let in-flight checks finish and commit.
    pub drain_timeout: Duration,
    /// How long `--once` waits for another pass to release the lock before giving up.
    pub lock_wait: Duration,
}

#[derive(Debug, Clone)]
pub struct ReconcileSettings {
    pub recheck_interval: Duration,
    pub retry_backoff: Duration,
    pub retry_backoff_max: Duration,
    pub not_found_limit: u32,
    pub batch_size: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub format: LogFormat,
}

// ---- the file as written -------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    api: FileApi,
    #[serde(default)]
    database: FileDatabase,
    #[serde(default)]
    schedule: FileSchedule,
    #[serde(default)]
    reconcile: FileReconcile,
    #[serde(default)]
    log: FileLog,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileApi {
    base_url: String,
    app_token: Option<SecretString>,
    secret: Option<SecretString>,
    secret_file: Option<String>,
    #[serde(with = "humantime_serde")]
    timeout: Duration,
    concurrency: i64,
    max_requests_per_minute: Option<i64>,
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
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileDatabase {
    path: PathBuf,
    #[serde(with = "humantime_serde")]
    busy_timeout: Duration,
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
struct FileSchedule {
    cron: String,
    run_on_start: bool,
    timezone: Option<String>,
    #[serde(with = "humantime_serde")]
    drain_timeout: Duration,
    #[serde(with = "humantime_serde")]
    lock_wait: Duration,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileReconcile {
    #[serde(with = "humantime_serde")]
    recheck_interval: Duration,
    #[serde(with = "humantime_serde")]
    retry_backoff: Duration,
    #[serde(with = "humantime_serde")]
    retry_backoff_max: Duration,
    not_found_limit: i64,
    batch_size: i64,
}

impl Default for FileReconcile {
    fn default() -> Self {
        Self {
            recheck_interval: Duration::from_secs(5 * 60),
            retry_backoff: Duration::from_secs(30),
            retry_backoff_max: Duration::from_secs(60 * 60),
            not_found_limit: 5,
            batch_size: 500,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct FileLog {
    format: LogFormat,
}

// ---- loading -------------------------------------------------------------------------

/// Where the environment comes from; tests pass a map instead of the process environment.
pub trait Env {
    fn var(&self, key: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

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

impl Settings {
    /// Reads and validates the config file at `path`, applying overrides from `env`.
    pub fn load(path: &Path, env: &dyn Env) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path, env)
    }

    /// Parses config text; `path` is used in messages and to resolve a relative `secret_file`.
    pub fn from_toml(text: &str, path: &Path, env: &dyn Env) -> Result<Settings, ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            message,
        };
        let file: FileConfig = parse_toml(text).map_err(|(key, msg)| invalid(&key, msg))?;

        let api = {
            let f = file.api;
            let base_url = parse_base_url(&f.base_url).map_err(|m| invalid("api.base_url", m))?;
            // Errors about a credential name where its value came from, so that the
            // operator looks in the right place.
            const APP_TOKEN_ENV: &str = "$UNIVAPAY_APP_TOKEN";
            const SECRET_ENV: &str = "$UNIVAPAY_SECRET";
            let (app_token, app_token_key) = match env.var(env::APP_TOKEN) {
                Some(v) => (SecretString::from(v), APP_TOKEN_ENV),
                None => (
                    f.app_token.ok_or_else(|| {
                        invalid(
                            "api.app_token",
                            format!("missing (set it in the file or in ${})", env::APP_TOKEN),
                        )
                    })?,
                    "api.app_token",
                ),
            };
            check_secret_text(app_token.expose_secret()).map_err(|m| invalid(app_token_key, m))?;
            let (secret, secret_key) = match (env.var(env::SECRET), f.secret, f.secret_file) {
                (Some(v), _, _) => (SecretString::from(v), SECRET_ENV),
                (None, Some(_), Some(_)) => {
                    return Err(invalid(
                        "api.secret_file",
                        "set either api.secret or api.secret_file, not both".into(),
                    ));
                }
                (None, Some(s), None) => (s, "api.secret"),
                (None, None, Some(file)) => (
                    read_secret_file(&file, path, env)
                        .map_err(|m| invalid("api.secret_file", m))?,
                    "api.secret_file",
                ),
                (None, None, None) => {
                    return Err(invalid(
                        "api.secret",
                        format!(
                            "missing (set api.secret or api.secret_file, or ${})",
                            env::SECRET
                        ),
                    ));
                }
            };
            check_secret_text(secret.expose_secret()).map_err(|m| invalid(secret_key, m))?;
            if f.timeout.is_zero() {
                return Err(invalid("api.timeout", "must be greater than 0".into()));
            }
            if !(1..=1024).contains(&f.concurrency) {
                return Err(invalid(
                    "api.concurrency",
                    format!("must be between 1 and 1024, got {}", f.concurrency),
                ));
            }
            let max_requests_per_minute = match f.max_requests_per_minute {
                None => None,
                Some(n) => Some(u32::try_from(n).ok().and_then(NonZeroU32::new).ok_or_else(
                    || {
                        invalid(
                            "api.max_requests_per_minute",
                            format!("must be a positive whole number, got {n}"),
                        )
                    },
                )?),
            };
            ApiSettings {
                base_url,
                app_token,
                secret,
                timeout: f.timeout,
                concurrency: f.concurrency as usize,
                max_requests_per_minute,
            }
        };

        let database = {
            let f = file.database;
            if f.path.as_os_str().is_empty() {
                return Err(invalid("database.path", "must not be empty".into()));
            }
            // SQLite takes the busy timeout in milliseconds as a C int (about 24 days).
            check_at_most(f.busy_timeout, MAX_BUSY_TIMEOUT)
                .map_err(|m| invalid("database.busy_timeout", m))?;
            DatabaseSettings {
                path: f.path,
                busy_timeout: f.busy_timeout,
            }
        };

        let schedule = {
            let f = file.schedule;
            validate_cron(&f.cron).map_err(|m| invalid("schedule.cron", m))?;
            let timezone = match f.timezone {
                None => None,
                Some(name) => Some(name.parse::<chrono_tz::Tz>().map_err(|_| {
                    invalid(
                        "schedule.timezone",
                        format!(
                            "unknown time zone {name:?} (use an IANA name such as \"Asia/Tokyo\")"
                        ),
                    )
                })?),
            };
            if f.drain_timeout.is_zero() {
                return Err(invalid(
                    "schedule.drain_timeout",
                    "must be greater than 0".into(),
                ));
            }
            ScheduleSettings {
                cron: f.cron,
                run_on_start: f.run_on_start,
                timezone,
                drain_timeout: f.drain_timeout,
                lock_wait: f.lock_wait,
            }
        };

        let reconcile = {
            let f = file.reconcile;
            for (key, d) in [
                ("reconcile.recheck_interval", f.recheck_interval),
                ("reconcile.retry_backoff", f.retry_backoff),
                ("reconcile.retry_backoff_max", f.retry_backoff_max),
            ] {
                if d.is_zero() {
                    return Err(invalid(key, "must be greater than 0".into()));
                }
                // Added to timestamps, where an absurd value overflows (and means nothing).
                check_at_most(d, MAX_RECONCILE_INTERVAL).map_err(|m| invalid(key, m))?;
            }
            if f.retry_backoff_max < f.retry_backoff {
                return Err(invalid(
                    "reconcile.retry_backoff_max",
                    "must not be shorter than reconcile.retry_backoff".into(),
                ));
            }
            if !(1..=1_000_000).contains(&f.not_found_limit) {
                return Err(invalid(
                    "reconcile.not_found_limit",
                    format!("must be between 1 and 1000000, got {}", f.not_found_limit),
                ));
            }
            if !(1..=100_000).contains(&f.batch_size) {
                return Err(invalid(
                    "reconcile.batch_size",
                    format!("must be between 1 and 100000, got {}", f.batch_size),
                ));
            }
            ReconcileSettings {
                recheck_interval: f.recheck_interval,
                retry_backoff: f.retry_backoff,
                retry_backoff_max: f.retry_backoff_max,
                not_found_limit: f.not_found_limit as u32,
                batch_size: f.batch_size as usize,
            }
        };

        Ok(Settings {
            api,
            database,
            schedule,
            reconcile,
            log: LogSettings {
                format: file.log.format,
            },
        })
    }
}

/// Ceiling of `database.busy_timeout`.
const MAX_BUSY_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);
/// Ceiling of the `[reconcile]` intervals: a (Julian) year, far beyond any konbini
/// payment deadline.
const MAX_RECONCILE_INTERVAL: Duration = Duration::from_secs(31_557_600);

fn check_at_most(d: Duration, max: Duration) -> Result<(), String> {
    if d > max {
        return Err(format!(
            "must be at most {}, got {}",
            humantime::format_duration(max),
            humantime::format_duration(d)
        ));
    }
    Ok(())
}

/// Deserializes, returning the dotted key path at fault and a one-line message.
fn parse_toml(text: &str) -> Result<FileConfig, (String, String)> {
    let de =
        toml::Deserializer::parse(text).map_err(|e| (at_line(text, &e), one_line(e.message())))?;
    serde_path_to_error::deserialize::<_, FileConfig>(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let key = if key == "." || key.is_empty() {
            at_line(text, &inner)
        } else {
            key
        };
        // A wrongly typed secret would otherwise be echoed back in serde's message.
        let message = if key.ends_with("secret") || key.ends_with("app_token") {
            "must be a string".to_owned()
        } else {
            one_line(inner.message())
        };
        (key, message)
    })
}

fn at_line(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}")
        }
        None => "(file)".to_owned(),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn parse_base_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| format!("not a URL ({e})"))?;
    match url.scheme() {
        "https" => {}
        "http" => {
            if !is_loopback_host(&url) {
                return Err(format!(
                    "http:// is only allowed for loopback hosts (127.0.0.1, ::1, localhost); use https:// for {}",
                    url.host_str().unwrap_or("")
                ));
            }
        }
        other => return Err(format!("scheme must be https, got {other}")),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment".into());
    }
    Ok(url)
}

fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// Secrets go into an HTTP header; refuse what cannot travel there, without echoing it.
fn check_secret_text(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("is empty".into());
    }
    if s.chars()
        .any(|c| c.is_whitespace() || c.is_control() || !c.is_ascii())
    {
        return Err("contains whitespace or characters not allowed in an HTTP header".into());
    }
    Ok(())
}

fn read_secret_file(raw: &str, config_path: &Path, env: &dyn Env) -> Result<SecretString, String> {
    let expanded = expand_credentials_dir(raw, env)?;
    let mut file = PathBuf::from(&expanded);
    if file.is_relative() {
        // Relative to the config file, so a config and its secret can travel together.
        if let Some(dir) = config_path.parent() {
            file = dir.join(file);
        }
    }
    let content = std::fs::read_to_string(&file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let trimmed = content.trim_end_matches(['\n', '\r']);
    Ok(SecretString::from(trimmed.to_owned()))
}

/// `${CREDENTIALS_DIRECTORY}` in `secret_file` is replaced from the environment, so that a
/// systemd `LoadCredential=` works without writing the runtime path into the config.
fn expand_credentials_dir(raw: &str, env: &dyn Env) -> Result<String, String> {
    const VAR: &str = "${CREDENTIALS_DIRECTORY}";
    if !raw.contains(VAR) {
        return Ok(raw.to_owned());
    }
    let dir = env.var(env::CREDENTIALS_DIRECTORY).ok_or_else(|| {
        format!(
            "uses {VAR} but ${} is not set (is LoadCredential= in the unit?)",
            env::CREDENTIALS_DIRECTORY
        )
    })?;
    Ok(raw.replace(VAR, &dir))
}

/// Validates a 6-field cron expression (seconds first) with the parser the scheduler uses.
pub fn validate_cron(expr: &str) -> Result<(), String> {
    let fields = expr.split_whitespace().count();
    if fields != 6 {
        return Err(format!(
            "{expr:?} has {fields} fields; 6 are needed, seconds first (e.g. \"0 */5 * * * *\")"
        ));
    }
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(expr)
        .map(|_| ())
        .map_err(|e| format!("{expr:?} is not a valid cron expression ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRETS: [(&str, &str); 0] = [];

    fn load(text: &str) -> Result<Settings, ConfigError> {
        Settings::from_toml(text, Path::new("test.toml"), &SECRETS)
    }

    const MINIMAL: &str = "[api]\napp_token = \"tok.en.jwt\"\nsecret = \"s3cr3t\"\n";

    #[test]
    fn defaults_fill_everything_else() {
        let s = load(MINIMAL).unwrap();
        assert_eq!(s.api.base_url.as_str(), "https://api.univapay.com/");
        assert_eq!(s.api.timeout, Duration::from_secs(30));
        assert_eq!(s.api.concurrency, 8);
        assert_eq!(s.database.path, PathBuf::from("konbini-reconciler.db"));
        assert_eq!(s.schedule.cron, "0 */5 * * * *");
        assert_eq!(s.reconcile.recheck_interval, Duration::from_secs(300));
    }

    #[test]
    fn shipped_config_is_valid() {
        let text = include_str!("../config.toml");
        let env = [("UNIVAPAY_APP_TOKEN", "a.b.c"), ("UNIVAPAY_SECRET", "x")];
        Settings::from_toml(text, Path::new("config.toml"), &env).unwrap();
    }

    fn err(text: &str) -> String {
        load(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_key() {
        let e = err(&format!("{MINIMAL}timeout = \"soon\"\n"));
        assert!(e.contains("api.timeout"), "{e}");
        let e = err(&format!("{MINIMAL}colour = \"red\"\n"));
        assert!(e.contains("colour"), "{e}");
        let e = err(&format!("{MINIMAL}concurrency = 0\n"));
        assert!(e.contains("api.concurrency"), "{e}");
        let e = err(&format!("{MINIMAL}[schedule]\ncron = \"*/5 * * * *\"\n"));
        assert!(e.contains("schedule.cron"), "{e}");
        let e = err(&format!("{MINIMAL}[schedule]\ncron = \"0 99 * * * *\"\n"));
        assert!(e.contains("schedule.cron"), "{e}");
        let e = err(&format!("{MINIMAL}[databse]\npath = \"x\"\n"));
        assert!(e.contains("databse"), "{e}");
        let e = err("[api]\nsecret = \"s\"\n");
        assert!(e.contains("api.app_token"), "{e}");
        let e = err("[api]\napp_token = \"t\"\n");
        assert!(e.contains("api.secret"), "{e}");
        let e = err("[api\n");
        assert!(e.contains("line 1"), "{e}");
        for e in [
            err(&format!("{MINIMAL}timeout = \"soon\"\n")),
            err("[api\n"),
        ] {
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn http_only_for_loopback() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://localhost:1",
            "http://[::1]:9",
            "https://example.com",
        ] {
            load(&format!("{MINIMAL}base_url = \"{ok}\"\n")).unwrap();
        }
        for bad in [
            "http://example.com",
            "http://10.0.0.1",
            "ftp://127.0.0.1",
            "nonsense",
        ] {
            let e = err(&format!("{MINIMAL}base_url = \"{bad}\"\n"));
            assert!(e.contains("api.base_url"), "{e}");
        }
    }

    #[test]
    fn env_overrides_and_secret_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), "from-file\n").unwrap();
        let cfg = dir.path().join("c.toml");
        let text = "[api]\napp_token = \"file-token\"\nsecret_file = \"secret\"\n";
        let s = Settings::from_toml(text, &cfg, &SECRETS).unwrap();
        assert_eq!(s.api.secret.expose_secret(), "from-file");
        assert_eq!(s.api.app_token.expose_secret(), "file-token");

        let env = [
            ("UNIVAPAY_APP_TOKEN", "env-token"),
            ("UNIVAPAY_SECRET", "env-secret"),
        ];
        let s = Settings::from_toml(text, &cfg, &env).unwrap();
        assert_eq!(s.api.secret.expose_secret(), "env-secret");
        assert_eq!(s.api.app_token.expose_secret(), "env-token");

        let creds = [("CREDENTIALS_DIRECTORY", dir.path().to_str().unwrap())];
        let text = "[api]\napp_token = \"t\"\nsecret_file = \"${CREDENTIALS_DIRECTORY}/secret\"\n";
        let s = Settings::from_toml(text, Path::new("/elsewhere/c.toml"), &creds).unwrap();
        assert_eq!(s.api.secret.expose_secret(), "from-file");

        let e = Settings::from_toml(text, &cfg, &SECRETS)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("api.secret_file") && e.contains("CREDENTIALS_DIRECTORY"),
            "{e}"
        );
        let text = "[api]\napp_token = \"t\"\nsecret_file = \"missing\"\n";
        let e = Settings::from_toml(text, &cfg, &SECRETS)
            .unwrap_err()
            .to_string();
        assert!(e.contains("api.secret_file"), "{e}");
    }

    #[test]
    fn secrets_never_echoed() {
        let s = load("[api]\napp_token = \"TOKEN-XYZ\"\nsecret = \"SECRET-XYZ\"\n").unwrap();
        let dbg = format!("{s:?}");
        assert!(
            !dbg.contains("TOKEN-XYZ") && !dbg.contains("SECRET-XYZ"),
            "{dbg}"
        );
        let e = err("[api]\napp_token = \"t\"\nsecret = 424242\n");
        assert!(e.contains("api.secret") && !e.contains("424242"), "{e}");
        let e = err("[api]\napp_token = \"t\"\nsecret = \"has space-SECRET\"\n");
        assert!(!e.contains("SECRET"), "{e}");
    }

    #[test]
    fn absurd_durations_are_refused_before_they_overflow() {
        // Each of these used to panic at run time (a timestamp overflow, or rusqlite's
        // "too big" for the busy timeout) instead of being refused here.
        for (text, key) in [
            (
                "[reconcile]\nrecheck_interval = \"1000000years\"\n",
                "reconcile.recheck_interval",
            ),
            (
                "[reconcile]\nretry_backoff_max = \"2years\"\n",
                "reconcile.retry_backoff_max",
            ),
            (
                "[database]\nbusy_timeout = \"30days\"\n",
                "database.busy_timeout",
            ),
        ] {
            let e = err(&format!("{MINIMAL}{text}"));
            assert!(e.contains(key) && e.contains("must be at most"), "{e}");
        }
        load(&format!(
            "{MINIMAL}[reconcile]\nrecheck_interval = \"1year\"\nretry_backoff_max = \"1year\"\n"
        ))
        .unwrap();
    }

    #[test]
    fn credential_errors_name_where_the_value_came_from() {
        let env = [("UNIVAPAY_SECRET", "a b"), ("UNIVAPAY_APP_TOKEN", "t")];
        let e = Settings::from_toml(MINIMAL, Path::new("c.toml"), &env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("$UNIVAPAY_SECRET: contains whitespace"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s"), "\n").unwrap();
        let text = "[api]\napp_token = \"t\"\nsecret_file = \"s\"\n";
        let e = Settings::from_toml(text, &dir.path().join("c.toml"), &SECRETS)
            .unwrap_err()
            .to_string();
        assert!(e.contains("api.secret_file: is empty"), "{e}");
    }

    #[test]
    fn timezone_and_durations() {
        let s = load(&format!(
            "{MINIMAL}[schedule]\ntimezone = \"Asia/Tokyo\"\n[reconcile]\nrecheck_interval = \"90s\"\n"
        ))
        .unwrap();
        assert_eq!(s.schedule.timezone, Some(chrono_tz::Asia::Tokyo));
        assert_eq!(s.reconcile.recheck_interval, Duration::from_secs(90));
        let e = err(&format!(
            "{MINIMAL}[schedule]\ntimezone = \"Mars/Olympus\"\n"
        ));
        assert!(e.contains("schedule.timezone"), "{e}");
    }
}
