//! Small validators shared by the sections, and the bounded reading of files named by the
//! config (the config itself, secrets, tokens).

use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Url;

use super::types::{Env, env};

/// Largest config file read: far beyond any real one, small enough that `/dev/zero` given
/// by mistake is refused instead of filling memory.
pub(crate) const MAX_CONFIG_BYTES: u64 = 1024 * 1024;
/// Largest secret or token file read.
pub(crate) const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// Reads a regular file of at most `cap` bytes. A FIFO, a device or a directory is refused
/// before it is opened for reading (reading one could block forever or never end).
pub(crate) fn read_bounded(path: &Path, cap: u64) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind};
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        let what = if meta.is_dir() {
            "a directory"
        } else {
            "not a regular file (a device, FIFO or socket)"
        };
        return Err(Error::new(ErrorKind::InvalidInput, format!("is {what}")));
    }
    if meta.len() > cap {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("is larger than {cap} bytes"),
        ));
    }
    let mut text = String::new();
    // The file may grow between the check and the read: the cap holds either way.
    std::fs::File::open(path)?
        .take(cap + 1)
        .read_to_string(&mut text)
        .map_err(|e| match e.kind() {
            ErrorKind::InvalidData => Error::new(ErrorKind::InvalidData, "is not UTF-8 text"),
            _ => e,
        })?;
    if text.len() as u64 > cap {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("is larger than {cap} bytes"),
        ));
    }
    Ok(text)
}

pub(crate) fn positive(d: Duration) -> Result<(), String> {
    if d.is_zero() {
        return Err("must be greater than 0".into());
    }
    Ok(())
}

pub(crate) fn at_most(d: Duration, max: Duration) -> Result<(), String> {
    if d > max {
        return Err(format!(
            "must be at most {}, got {}",
            humantime::format_duration(max),
            humantime::format_duration(d)
        ));
    }
    Ok(())
}

pub(crate) fn in_range(n: i64, lo: i64, hi: i64) -> Result<(), String> {
    if !(lo..=hi).contains(&n) {
        return Err(format!("must be between {lo} and {hi}, got {n}"));
    }
    Ok(())
}

pub(crate) fn parse_base_url(s: &str) -> Result<Url, String> {
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
pub(crate) fn secret_text(s: &str) -> Result<(), String> {
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

/// Reads a secret from a file named in the config: relative to the config file (so a
/// config and its secret can travel together), `${CREDENTIALS_DIRECTORY}` expanded,
/// bounded, one trailing newline dropped.
pub(crate) fn read_secret_file(
    raw: &str,
    config_path: &Path,
    env: &dyn Env,
) -> Result<String, String> {
    let expanded = expand_credentials_dir(raw, env)?;
    let mut file = PathBuf::from(&expanded);
    if file.is_relative()
        && let Some(dir) = config_path.parent()
    {
        file = dir.join(file);
    }
    let content = read_bounded(&file, MAX_SECRET_BYTES)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    Ok(content.trim_end_matches(['\n', '\r']).to_owned())
}

/// `${CREDENTIALS_DIRECTORY}` in a file name is replaced from the environment, so that a
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
pub(crate) fn cron(expr: &str) -> Result<(), String> {
    let fields = expr.split_whitespace().count();
    if fields != 6 {
        return Err(format!(
            "{expr:?} has {fields} fields; 6 are needed, seconds first (e.g. \"0 */5 * * * *\")"
        ));
    }
    parse_cron(expr)
        .map(|_| ())
        .map_err(|e| format!("{expr:?} is not a valid cron expression ({e})"))
}

/// The time between the next two runs of a cron expression after `now`, or `None` when
/// the expression cannot be read. A pass's checks land on these ticks, which decides how
/// often a charge on a given interval is really checked.
pub(crate) fn cron_period(
    expr: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<std::time::Duration> {
    let cron = parse_cron(expr).ok()?;
    let first = cron.find_next_occurrence(&now, false).ok()?;
    let second = cron.find_next_occurrence(&first, false).ok()?;
    (second - first).to_std().ok()
}

/// The first tick of `expr` after `now`; `None` for an invalid cron or one that never
/// fires again.
pub(crate) fn cron_next(
    expr: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<chrono::DateTime<chrono::Utc>> {
    parse_cron(expr)
        .ok()?
        .find_next_occurrence(&now, false)
        .ok()
}

fn parse_cron(expr: &str) -> Result<croner::Cron, croner::errors::CronError> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(expr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cron_period_is_the_time_between_two_runs() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-28T01:02:03Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let secs = |e: &str| cron_period(e, now).map(|d| d.as_secs());
        assert_eq!(secs("0 */5 * * * *"), Some(300));
        assert_eq!(secs("0 0 * * * *"), Some(3600));
        assert_eq!(secs("*/30 * * * * *"), Some(30));
        assert_eq!(secs("not a cron"), None);
    }

    #[test]
    fn only_bounded_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            read_bounded(Path::new("/dev/zero"), 10)
                .unwrap_err()
                .to_string()
                .contains("not a regular file")
        );
        assert!(
            read_bounded(dir.path(), 10)
                .unwrap_err()
                .to_string()
                .contains("directory")
        );
        let big = dir.path().join("big");
        std::fs::write(&big, "x".repeat(11)).unwrap();
        assert!(
            read_bounded(&big, 10)
                .unwrap_err()
                .to_string()
                .contains("larger than 10 bytes")
        );
        std::fs::write(&big, "x".repeat(10)).unwrap();
        assert_eq!(read_bounded(&big, 10).unwrap().len(), 10);
    }
}
