//! Telling systemd how the daemon is doing, through the `sd_notify(3)` protocol: `READY=1`
//! once the database is open and the schedule armed, `STATUS=` after every pass,
//! `WATCHDOG=1` keep-alives when the unit has `WatchdogSec=`, `STOPPING=1` on shutdown.
//!
//! All of it happens only when systemd asked for it by setting `NOTIFY_SOCKET`; outside
//! systemd (a terminal, the tests, another supervisor) a [`Notifier`] does nothing. A
//! failed send is logged and otherwise ignored: reconciling matters more than reporting.

use std::time::Duration;

use sd_notify::NotifyState;

// systemd takes one assignment per line: a status must not smuggle in another.
use crate::domain::text::one_line;
use tokio::task::JoinHandle;

/// Sends notifications to systemd, or nothing when not run by systemd.
#[derive(Debug, Clone)]
pub struct Notifier {
    enabled: bool,
    /// Half of `WATCHDOG_USEC`, when systemd expects keep-alives from this process.
    watchdog_every: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the environment.
    pub fn from_env() -> Notifier {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let enabled = var("NOTIFY_SOCKET").is_some();
        Notifier {
            enabled,
            watchdog_every: if enabled {
                watchdog_interval(
                    var("WATCHDOG_USEC").as_deref(),
                    var("WATCHDOG_PID").as_deref(),
                    std::process::id(),
                )
            } else {
                None
            },
        }
    }

    /// A notifier that never sends anything.
    pub fn disabled() -> Notifier {
        Notifier {
            enabled: false,
            watchdog_every: None,
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// How often keep-alives are sent, when the watchdog is on.
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog_every
    }

    /// `READY=1` together with a first status line.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(&one_line(status))]);
    }

    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(&one_line(status))]);
    }

    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    fn send(&self, states: &[NotifyState]) {
        if !self.enabled {
            return;
        }
        // `false`: keep NOTIFY_SOCKET set, later messages need it too.
        if let Err(e) = sd_notify::notify(false, states) {
            tracing::warn!(error = %e, "cannot notify systemd");
        }
    }

    /// Starts sending `WATCHDOG=1` at half the interval systemd asked for, if it asked.
    ///
    /// The keep-alive runs on the same runtime as the passes, so it stops when the runtime
    /// is wedged (all workers blocked), which is what the watchdog is there to catch. A
    /// long pass is not a hang and must not get the daemon killed, so the keep-alive does
    /// not wait for passes.
    pub fn spawn_watchdog(&self) -> Option<JoinHandle<()>> {
        let every = self.watchdog_every?;
        let me = self.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                me.send(&[NotifyState::Watchdog]);
            }
        }))
    }
}

/// The keep-alive interval for `WATCHDOG_USEC`, following `sd_watchdog_enabled(3)`: on
/// when the value is a positive number of microseconds and `WATCHDOG_PID` is either unset
/// or this process. (The sd-notify crate's own check insists on `WATCHDOG_PID`, which
/// systemd sets but other supervisors and a plain `env` wrapper do not.)
pub fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, my_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok() != Some(my_pid)
    {
        return None;
    }
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_at_half_the_interval() {
        assert_eq!(
            watchdog_interval(Some("20000000"), None, 7),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            watchdog_interval(Some("20000000"), Some("7"), 7),
            Some(Duration::from_secs(10))
        );
    }

    #[test]
    fn watchdog_off_when_unset_invalid_or_meant_for_another_process() {
        assert_eq!(watchdog_interval(None, None, 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("soon"), None, 7), None);
        assert_eq!(watchdog_interval(Some("20000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(Some("20000000"), Some("x"), 7), None);
    }

    #[test]
    fn status_stays_one_line() {
        assert_eq!(one_line("a\nREADY=1"), "a READY=1");
    }

    #[test]
    fn disabled_notifier_has_no_watchdog() {
        let n = Notifier::disabled();
        assert!(!n.is_enabled());
        assert_eq!(n.watchdog_every(), None);
    }
}
