//! `[retention]`: how long the rows that only grow are kept: `webhook` events, finished
//! `runs` rows and delivered delivery rows. The section absent, or a key of it absent,
//! keeps that kind of row for ever. The facts of a charge (transitions, mismatches,
//! discoveries, ...) have no key: they are never pruned (see [`crate::ledger`]'s
//! retention and the `charge_events_keep_facts` trigger). They may instead be moved,
//! with their charge, to the archive file (`archive`, `archive_path`; see the ledger's
//! `archive` module), where they are kept as they were.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::validate as check;

type Invalid = (String, String);

/// The shortest retention accepted: below an hour an operator has almost certainly
/// written minutes or seconds for days ("30m" for "30d"), and a day of hints is the
/// least a support engineer reading yesterday's webhook trouble needs.
const MIN_KEEP: Duration = Duration::from_secs(3600);
/// The longest: a hundred years, far beyond any need, and a cutoff that always fits the
/// calendar.
const MAX_KEEP: Duration = Duration::from_secs(100 * 365 * 86_400);
/// The shortest `archive` accepted: a charge's deliveries retry for days, support staff
/// look up last month's charges in the live ledger, and the shop's reconciliation runs
/// monthly; a month keeps all of that out of the archive.
const MIN_ARCHIVE: Duration = Duration::from_secs(30 * 86_400);

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRetention {
    #[serde(default, with = "humantime_serde")]
    pub webhook_events: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub runs: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub deliveries: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub archive: Option<Duration>,
    #[serde(default)]
    pub archive_path: Option<PathBuf>,
}

/// How long each kind of prunable row is kept; `None`: for ever.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionSettings {
    /// `charge_events` of kind `webhook`, by their `at`.
    pub webhook_events: Option<Duration>,
    /// Finished `runs` rows, by their `finished_at`.
    pub runs: Option<Duration>,
    /// Delivered `deliveries` rows, by their `delivered_at`.
    pub deliveries: Option<Duration>,
    /// Final charges whose last change (`updated_at`) is older than this move to the
    /// archive file with all their history; `None`: never.
    pub archive: Option<Duration>,
    /// The archive file: `retention.archive_path`, or [`default_archive_path`] of the
    /// ledger's. Set even when `archive` is not, so `show` finds charges archived while
    /// it was.
    pub archive_path: PathBuf,
}

impl RetentionSettings {
    /// Whether anything is ever pruned or archived.
    pub fn is_empty(&self) -> bool {
        self.webhook_events.is_none()
            && self.runs.is_none()
            && self.deliveries.is_none()
            && self.archive.is_none()
    }
}

/// The archive beside a ledger: `ledger.db` gives `ledger-archive.db`, `ledger` gives
/// `ledger-archive`. In the ledger's directory, so the same backups and the same
/// permissions cover both.
pub fn default_archive_path(ledger: &Path) -> PathBuf {
    let stem = ledger
        .file_stem()
        .map_or_else(|| "konbini-reconciler".into(), |s| s.to_string_lossy());
    let name = match ledger.extension() {
        Some(ext) => format!("{stem}-archive.{}", ext.to_string_lossy()),
        None => format!("{stem}-archive"),
    };
    ledger.with_file_name(name)
}

pub(super) fn retention(
    f: Option<FileRetention>,
    ledger: &Path,
) -> Result<RetentionSettings, Invalid> {
    let f = f.unwrap_or_default();
    for (key, value) in [
        ("webhook_events", f.webhook_events),
        ("runs", f.runs),
        ("deliveries", f.deliveries),
    ] {
        if let Some(d) = value {
            keep(d).map_err(|m| (format!("retention.{key}"), m))?;
        }
    }
    if let Some(d) = f.archive
        && d < MIN_ARCHIVE
    {
        return Err((
            "retention.archive".to_owned(),
            format!(
                "must be at least {} (leave the key out to never archive), got {}",
                humantime::format_duration(MIN_ARCHIVE),
                humantime::format_duration(d)
            ),
        ));
    }
    if let Some(d) = f.archive {
        check::at_most(d, MAX_KEEP).map_err(|m| ("retention.archive".to_owned(), m))?;
    }
    let archive_path = match f.archive_path {
        Some(p) if p.as_os_str().is_empty() || p == ledger => {
            return Err((
                "retention.archive_path".to_owned(),
                "must name a file other than database.path".to_owned(),
            ));
        }
        Some(p) => p,
        None => default_archive_path(ledger),
    };
    Ok(RetentionSettings {
        webhook_events: f.webhook_events,
        runs: f.runs,
        deliveries: f.deliveries,
        archive: f.archive,
        archive_path,
    })
}

fn keep(d: Duration) -> Result<(), String> {
    if d < MIN_KEEP {
        return Err(format!(
            "must be at least {} (leave the key out to keep everything), got {}",
            humantime::format_duration(MIN_KEEP),
            humantime::format_duration(d)
        ));
    }
    check::at_most(d, MAX_KEEP)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::config::Settings;

    const BASE: &str = "[api]\napp_token = \"t\"\nsecret = \"s\"\n";

    fn load(extra: &str) -> Result<Settings, String> {
        Settings::from_toml(
            &format!("{BASE}{extra}"),
            Path::new("c.toml"),
            &[("X", "y")],
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn absent_keeps_everything_and_each_key_is_its_own() {
        assert!(load("").unwrap().retention.is_empty());
        assert!(load("[retention]\n").unwrap().retention.is_empty());
        let r = load("[retention]\nwebhook_events = \"30d\"\nruns = \"90d\"\n")
            .unwrap()
            .retention;
        assert_eq!(r.webhook_events, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(r.runs, Some(Duration::from_secs(90 * 86_400)));
        assert_eq!(r.deliveries, None);
        assert_eq!(r.archive, None);
        assert_eq!(r.archive_path, Path::new("konbini-reconciler-archive.db"));
    }

    #[test]
    fn archive_is_a_month_or_more_and_its_file_sits_beside_the_ledger() {
        let r = load("[retention]\narchive = \"400d\"\n").unwrap().retention;
        assert_eq!(r.archive, Some(Duration::from_secs(400 * 86_400)));
        assert!(!r.is_empty());
        let r =
            load("[database]\npath = \"/var/lib/k/ledger.db\"\n[retention]\narchive = \"30d\"\n")
                .unwrap()
                .retention;
        assert_eq!(r.archive_path, Path::new("/var/lib/k/ledger-archive.db"));
        let r = load("[retention]\narchive = \"1y\"\narchive_path = \"/srv/old.db\"\n")
            .unwrap()
            .retention;
        assert_eq!(r.archive_path, Path::new("/srv/old.db"));
        assert_eq!(
            super::default_archive_path(Path::new("dir/ledger")),
            Path::new("dir/ledger-archive")
        );
    }

    #[test]
    fn mistakes_name_the_key() {
        for (extra, key, says) in [
            ("runs = \"30m\"", "retention.runs", "at least 1h"),
            ("deliveries = \"soon\"", "retention.deliveries", ""),
            (
                "webhook_events = \"0s\"",
                "retention.webhook_events",
                "at least",
            ),
            (
                "webhook_events = \"200years\"",
                "retention.webhook_events",
                "at most",
            ),
            ("events = \"30d\"", "events", "unknown field"),
            ("archive = \"29d\"", "retention.archive", "at least 30days"),
            ("archive = \"later\"", "retention.archive", ""),
            (
                "archive_path = \"konbini-reconciler.db\"",
                "retention.archive_path",
                "other than database.path",
            ),
        ] {
            let e = load(&format!("[retention]\n{extra}\n")).unwrap_err();
            assert!(e.contains(key) && e.contains(says), "{extra}: {e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
    }
}
