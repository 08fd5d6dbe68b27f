//! `[retention]`: how long the rows that only grow are kept: `webhook` events, finished
//! `runs` rows and delivered delivery rows. The section absent, or a key of it absent,
//! keeps that kind of row for ever. The facts of a charge (transitions, mismatches,
//! discoveries, ...) have no key: they are never pruned (see [`crate::ledger`]'s
//! retention and the `charge_events_keep_facts` trigger).

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

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRetention {
    #[serde(default, with = "humantime_serde")]
    pub webhook_events: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub runs: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub deliveries: Option<Duration>,
}

/// How long each kind of prunable row is kept; `None`: for ever.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionSettings {
    /// `charge_events` of kind `webhook`, by their `at`.
    pub webhook_events: Option<Duration>,
    /// Finished `runs` rows, by their `finished_at`.
    pub runs: Option<Duration>,
    /// Delivered `deliveries` rows, by their `delivered_at`.
    pub deliveries: Option<Duration>,
}

impl RetentionSettings {
    /// Whether anything is ever pruned.
    pub fn is_empty(&self) -> bool {
        self.webhook_events.is_none() && self.runs.is_none() && self.deliveries.is_none()
    }
}

pub(super) fn retention(f: Option<FileRetention>) -> Result<RetentionSettings, Invalid> {
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
    Ok(RetentionSettings {
        webhook_events: f.webhook_events,
        runs: f.runs,
        deliveries: f.deliveries,
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
        ] {
            let e = load(&format!("[retention]\n{extra}\n")).unwrap_err();
            assert!(e.contains(key) && e.contains(says), "{extra}: {e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
    }
}
