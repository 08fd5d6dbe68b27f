//! Typed settings: `config.toml` plus environment overrides, validated in full before
//! anything else (the database above all) is touched.
//!
//! Every error names the file and the key at fault on one line. Secrets are held as
//! [`SecretString`](secrecy::SecretString) from the moment they are read; neither they
//! nor their values appear in an error message or in `Debug` output.
//!
//! The file is read into [`file`]'s serde structs, then each section is resolved on its
//! own by `sections` with the small validators of `validate`.

pub(crate) mod delivery;
mod file;
pub mod retention;
mod sections;
mod types;
mod validate;

use std::path::{Path, PathBuf};

use crate::domain::text::one_line;
use file::FileConfig;

pub use types::{ApiSettings, DatabaseSettings, Env, ReconcileSettings, WebhookSettings, env};
pub(crate) use types::{
    DiscoverySettings, LogFormat, LogSettings, MetricsSettings, ProcessEnv, ScheduleSettings,
};
pub(crate) use validate::{cron_next, cron_period};

/// Where the config is looked for when neither `--config` nor the env var says otherwise.
pub(crate) const DEFAULT_CONFIG_PATH: &str = "config.toml";

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
    pub(crate) schedule: ScheduleSettings,
    pub reconcile: ReconcileSettings,
    pub(crate) log: LogSettings,
    /// `[webhook]`: `None` when the section is absent (no listener).
    pub webhook: Option<WebhookSettings>,
    /// `[discovery]`: `None` when absent or `enabled = false`.
    pub(crate) discovery: Option<DiscoverySettings>,
    /// `[metrics]`: `None` when absent.
    pub(crate) metrics: Option<MetricsSettings>,
    /// `[[delivery]]`: the shop's endpoints (none: no outbound requests).
    pub delivery: Vec<delivery::DeliverySettings>,
    /// `[retention]`: how long prunable rows are kept (absent: for ever).
    pub retention: retention::RetentionSettings,
    /// Things worth a warning that do not stop the program (logged once logging is up).
    pub(crate) warnings: Vec<String>,
}

impl Settings {
    /// Reads and validates the config file at `path`, applying overrides from `env`. Only
    /// a regular file of at most `validate::MAX_CONFIG_BYTES` is read.
    pub fn load(path: &Path, env: &dyn Env) -> Result<Settings, ConfigError> {
        let text = validate::read_bounded(path, validate::MAX_CONFIG_BYTES).map_err(|source| {
            ConfigError::Read {
                path: path.to_owned(),
                source,
            }
        })?;
        let mut settings = Self::from_toml(&text, path, env)?;
        if let Some(w) = inline_secret_exposed(path, &text) {
            settings.warnings.push(w);
        }
        Ok(settings)
    }

    /// Parses config text; `path` is used in messages and to resolve relative file names.
    pub fn from_toml(text: &str, path: &Path, env: &dyn Env) -> Result<Settings, ConfigError> {
        let invalid = |(key, message): (String, String)| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        };
        let file: FileConfig = parse_toml(text).map_err(invalid)?;
        let retention =
            retention::retention(file.retention, &file.database.path).map_err(invalid)?;
        Ok(Settings {
            api: sections::api(file.api, path, env).map_err(invalid)?,
            database: sections::database(file.database).map_err(invalid)?,
            schedule: sections::schedule(file.schedule).map_err(invalid)?,
            reconcile: sections::reconcile(file.reconcile).map_err(invalid)?,
            log: LogSettings {
                format: file.log.format,
            },
            webhook: file
                .webhook
                .map(|w| sections::webhook(w, path, env))
                .transpose()
                .map_err(invalid)?,
            discovery: match file.discovery {
                Some(d) => sections::discovery(d).map_err(invalid)?,
                None => None,
            },
            metrics: file
                .metrics
                .map(|m| sections::metrics(m, path, env))
                .transpose()
                .map_err(invalid)?,
            delivery: delivery::endpoints(file.delivery, path, env).map_err(invalid)?,
            retention,
            warnings: Vec::new(),
        })
    }
}

/// Like ssh with a private key: a config that holds a secret inline should not be
/// readable by others. One line, naming the file and its mode, never the secret.
fn inline_secret_exposed(path: &Path, text: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let value: toml::Table = text.parse().ok()?;
    let has = |section: &str, key: &str| value.get(section).and_then(|s| s.get(key)).is_some();
    let delivery_secret = value
        .get("delivery")
        .and_then(|d| d.as_array())
        .is_some_and(|a| a.iter().any(|e| e.get("secret").is_some()));
    if !has("api", "secret") && !has("webhook", "auth_token") && !delivery_secret {
        return None;
    }
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "config {} holds a secret inline and is readable by group or others (mode {mode:03o}); chmod 600 it, or use api.secret_file / LoadCredential=",
            path.display()
        )
    })
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
        let message =
            if key.ends_with("secret") || key.ends_with("app_token") || key.ends_with("auth_token")
            {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use secrecy::ExposeSecret;

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
        assert_eq!(
            s.reconcile.recheck_schedule,
            sections::DEFAULT_RECHECK_SCHEDULE.to_vec()
        );
        assert_eq!(s.reconcile.recheck_interval, Duration::from_secs(600));
        assert_eq!(s.reconcile.expiry_grace, Duration::from_secs(300));
        assert_eq!(s.reconcile.deadline_watch, Duration::from_secs(86_400));
        assert_eq!(s.api.budget_share, 0.5);
    }

    #[test]
    fn recheck_interval_alone_is_the_flat_schedule() {
        let s = load(&format!(
            "{MINIMAL}[reconcile]\nrecheck_interval = \"5m\"\n"
        ))
        .unwrap();
        let flat = crate::domain::RecheckStep {
            age: Duration::ZERO,
            every: Duration::from_secs(300),
        };
        assert_eq!(s.reconcile.recheck_schedule, vec![flat]);
    }

    #[test]
    fn shipped_config_is_valid() {
        let text = include_str!("../../config.toml");
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
    fn the_metrics_token_comes_from_env_inline_or_file_and_is_redacted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mt"), "file-metrics-token-0123\n").unwrap();
        let cfg = dir.path().join("c.toml");
        let base = MINIMAL.to_owned() + "[metrics]\n";
        let with = |extra: &str| format!("{base}{extra}\n");

        let s = load(&base).unwrap();
        let m = s.metrics.unwrap();
        assert!(
            m.listen.is_none() && m.auth_token.is_none(),
            "nothing by default"
        );

        let text = with("auth_token = \"INLINE-metrics-token-0123\"\nlisten = \":9464\"");
        let s = Settings::from_toml(&text, &cfg, &SECRETS).unwrap();
        let m = s.metrics.as_ref().unwrap();
        assert_eq!(m.listen.unwrap().to_string(), "127.0.0.1:9464");
        assert_eq!(
            m.auth_token.as_ref().unwrap().expose_secret(),
            "INLINE-metrics-token-0123"
        );
        assert!(!format!("{s:?}").contains("INLINE-metrics"), "redacted");

        let s = Settings::from_toml(&with("auth_token_file = \"mt\""), &cfg, &SECRETS).unwrap();
        let token = s.metrics.unwrap().auth_token.unwrap();
        assert_eq!(token.expose_secret(), "file-metrics-token-0123");

        let env = [("KONBINI_RECONCILER_METRICS_TOKEN", "env-metrics-token-0123")];
        let s = Settings::from_toml(&text, &cfg, &env).unwrap();
        let token = s.metrics.unwrap().auth_token.unwrap();
        assert_eq!(token.expose_secret(), "env-metrics-token-0123");

        let both = with("auth_token = \"INLINE-metrics-token-0123\"\nauth_token_file = \"mt\"");
        let e = Settings::from_toml(&both, &cfg, &SECRETS)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("metrics.auth_token_file") && e.contains("not both"),
            "{e}"
        );
        let short = [("KONBINI_RECONCILER_METRICS_TOKEN", "short")];
        let e = Settings::from_toml(&base, &cfg, &short)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("$KONBINI_RECONCILER_METRICS_TOKEN") && e.contains("at least 16"),
            "{e}"
        );
        let e = err(&with("listen = \"0.0.0.0\""));
        assert!(e.contains("metrics.listen") && e.contains("0.0.0.0"), "{e}");
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
