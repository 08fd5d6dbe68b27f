//! Telling systemd how the daemon is doing, through the `sd_notify(3)` protocol: `READY=1`
//! once the database is open and the schedule armed, `STATUS=` after every pass,
//! `WATCHDOG=1` keep-alives when the unit has `WatchdogSec=`, `STOPPING=1` on shutdown.
//!
//! All of it happens only when systemd asked for it by setting `NOTIFY_SOCKET`; outside
//! systemd (a terminal, the tests, another supervisor) a [`Notifier`] does nothing. A
//! failed send is logged and otherwise ignored: reconciling matters more than reporting.
//!
//! A keep-alive means "passes are making progress", not merely "the process runs": the
//! daemon hands `Notifier::spawn_watchdog` a check built on a `ProgressWatch`, and a
//! pass that has finished no check for too long stops the keep-alives, so that
//! `WatchdogSec=` restarts a process that is wedged (a bug that waits forever, say)
//! instead of letting it skip every tick with "previous pass still running".

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::mpsc;
use tokio::time::Instant;

// systemd takes one assignment per line: a status must not smuggle in another.
use crate::domain::text::one_line;
use tokio::task::JoinHandle;

/// Sends notifications to systemd, or nothing when not run by systemd.
#[derive(Debug, Clone)]
pub struct Notifier {
    sink: Sink,
    /// Half of `WATCHDOG_USEC`, when systemd expects keep-alives from this process.
    watchdog_every: Option<Duration>,
}

/// Where notifications go.
#[derive(Debug, Clone)]
enum Sink {
    Off,
    /// `NOTIFY_SOCKET`, through the sd-notify crate.
    Systemd,
    /// One string per notification (its lines as systemd would receive them).
    Channel(mpsc::UnboundedSender<String>),
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the environment.
    pub(crate) fn from_env() -> Notifier {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let enabled = var("NOTIFY_SOCKET").is_some();
        Notifier {
            sink: if enabled { Sink::Systemd } else { Sink::Off },
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
            sink: Sink::Off,
            watchdog_every: None,
        }
    }

    /// A notifier that hands every notification to a channel instead of systemd, with
    /// keep-alives every `watchdog_every`: for tests, and for embedding the daemon under
    /// another supervisor.
    pub fn channel(
        watchdog_every: Option<Duration>,
    ) -> (Notifier, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let n = Notifier {
            sink: Sink::Channel(tx),
            watchdog_every,
        };
        (n, rx)
    }

    #[cfg(test)]
    pub(crate) fn is_enabled(&self) -> bool {
        !matches!(self.sink, Sink::Off)
    }

    #[cfg(test)]
    /// How often keep-alives are sent, when the watchdog is on.
    pub(crate) fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog_every
    }

    /// `READY=1` together with a first status line.
    pub(crate) fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(&one_line(status))]);
    }

    pub(crate) fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(&one_line(status))]);
    }

    pub(crate) fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    fn send(&self, states: &[NotifyState]) {
        match &self.sink {
            Sink::Off => {}
            Sink::Systemd => {
                // `false`: keep NOTIFY_SOCKET set, later messages need it too.
                if let Err(e) = sd_notify::notify(false, states) {
                    tracing::warn!(error = %e, "cannot notify systemd");
                }
            }
            Sink::Channel(tx) => {
                let lines: Vec<String> = states.iter().map(ToString::to_string).collect();
                let _ = tx.send(lines.join("\n"));
            }
        }
    }

    /// Starts sending `WATCHDOG=1` at half the interval systemd asked for, if it asked,
    /// each time `alive()` says the work is moving.
    ///
    /// The keep-alive runs on the same runtime as the passes, so it stops when the runtime
    /// is wedged (all workers blocked). `alive` catches the rest: a pass stuck while the
    /// runtime runs on. A long pass that keeps finishing checks is not a hang and must not
    /// get the daemon killed, which is why `alive` judges progress, not duration.
    pub(crate) fn spawn_watchdog(
        &self,
        mut alive: impl FnMut() -> bool + Send + 'static,
    ) -> Option<JoinHandle<()>> {
        let every = self.watchdog_every?;
        let me = self.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if alive() {
                    me.send(&[NotifyState::Watchdog]);
                }
            }
        }))
    }
}

/// Judges whether work in progress is moving: it is while idle, and while busy as long
/// as a progress count has moved within `limit`.
#[derive(Debug, Clone)]
pub(crate) struct ProgressWatch {
    limit: Duration,
    last: u64,
    since: Instant,
    stuck: bool,
}

/// What [`ProgressWatch::check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Health {
    Moving,
    /// Busy and no progress for `for_` (longer than the limit); `newly` the first time.
    Stuck {
        for_: Duration,
        newly: bool,
    },
    /// Moving again after having been stuck (reported once).
    Recovered,
}

impl ProgressWatch {
    pub(crate) fn new(limit: Duration, now: Instant) -> ProgressWatch {
        ProgressWatch {
            limit,
            last: 0,
            since: now,
            stuck: false,
        }
    }

    pub(crate) fn limit(&self) -> Duration {
        self.limit
    }

    /// `busy`: work is under way; `progress`: a count that grows while it moves.
    pub(crate) fn check(&mut self, busy: bool, progress: u64, now: Instant) -> Health {
        if !busy || progress != self.last {
            self.last = progress;
            self.since = now;
            let was = std::mem::replace(&mut self.stuck, false);
            return if was {
                Health::Recovered
            } else {
                Health::Moving
            };
        }
        let for_ = now.saturating_duration_since(self.since);
        if for_ <= self.limit {
            return Health::Moving;
        }
        let newly = !std::mem::replace(&mut self.stuck, true);
        Health::Stuck { for_, newly }
    }
}

/// The keep-alive interval for `WATCHDOG_USEC`, following `sd_watchdog_enabled(3)`: on
/// when the value is a positive number of microseconds and `WATCHDOG_PID` is either unset
/// or this process. (The sd-notify crate's own check insists on `WATCHDOG_PID`, which
/// systemd sets but other supervisors and a plain `env` wrapper do not.)
pub(crate) fn watchdog_interval(
    usec: Option<&str>,
    pid: Option<&str>,
    my_pid: u32,
) -> Option<Duration> {
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
    fn progress_watch_flags_only_busy_work_that_does_not_move() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut w = ProgressWatch::new(s(10), t0);
        assert_eq!(
            w.check(false, 0, t0 + s(100)),
            Health::Moving,
            "idle is fine"
        );
        assert_eq!(w.check(true, 0, t0 + s(105)), Health::Moving);
        assert_eq!(
            w.check(true, 0, t0 + s(110)),
            Health::Moving,
            "at the limit"
        );
        assert_eq!(
            w.check(true, 0, t0 + s(111)),
            Health::Stuck {
                for_: s(11),
                newly: true
            }
        );
        assert_eq!(
            w.check(true, 0, t0 + s(120)),
            Health::Stuck {
                for_: s(20),
                newly: false
            }
        );
        assert_eq!(w.check(true, 1, t0 + s(121)), Health::Recovered);
        assert_eq!(w.check(true, 1, t0 + s(130)), Health::Moving);
        // A long pass that keeps moving is never stuck.
        for i in 2..100 {
            assert_eq!(w.check(true, i, t0 + s(130 + 9 * i)), Health::Moving);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn keep_alives_stop_while_not_alive_and_resume() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let (n, mut rx) = Notifier::channel(Some(Duration::from_secs(1)));
        let alive = Arc::new(AtomicBool::new(true));
        let a = alive.clone();
        let task = n.spawn_watchdog(move || a.load(Ordering::Relaxed)).unwrap();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let mut pings = 0;
        while let Ok(m) = rx.try_recv() {
            assert_eq!(m, "WATCHDOG=1");
            pings += 1;
        }
        assert_eq!(pings, 3, "at 0, 1 and 2 s");
        alive.store(false, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(rx.try_recv().is_err(), "no keep-alive while stuck");
        alive.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(rx.try_recv().is_ok(), "back once moving");
        task.abort();
    }

    #[test]
    fn disabled_notifier_has_no_watchdog() {
        let n = Notifier::disabled();
        assert!(!n.is_enabled());
        assert_eq!(n.watchdog_every(), None);
    }
}
