//! The run protocol: every run of checks, whether a pass, the `check` command or a batch
//! of webhook hints, goes through [`Run`], so they cannot drift apart:
//!
//! 1. **open**: a `runs` row with the run's trigger; under the pass lock, runs a dead
//!    process left `running` are closed first ([`Run::open`]). A run without the pass lock
//!    (webhook hints) writes its row only at the end, in the transaction of its results
//!    ([`Run::unlocked`], [`Run::end_in`]), so no pass can take it for abandoned;
//! 2. **honour a recorded pause**: the latest `runs.resume_at` is read before the first
//!    request ([`Run::honour_pause`], or [`honour_pause`] for jobs that keep no `runs`
//!    row); a short rest is imposed on the client, a longer one ends the run at once as
//!    `rate_limited` with [`pause_detail`], the one text for it;
//! 3. **tally**: what the checks saw ([`Tally`], including the requests sent);
//! 4. **verdict**: a pure function from the tally to the outcome ([`verdict`]);
//! 5. **finish**: outcome, counts, requests and `resume_at` into the row, one log line.
//!
//! Each run opens a tracing span (`run`, with its id and trigger); the checks inside
//! carry their charge id in a span of their own.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tracing::Span;

use crate::context::Context;
use crate::ledger::{self, Counts, Ledger, LedgerError, Open, Outcome, Trigger};
use crate::univapay::{PauseCause, Paused};

/// The fewest 404s that make a pass of nothing but 404s a wall rather than a few charges
/// that are really gone.
pub(crate) const WALL_MIN: u64 = 3;

/// The longest pause recorded in `runs.resume_at`, like the cap on `Retry-After`: past
/// it, a request finds out whether UnivaPay still wants quiet (a refill computed from odd
/// headers can come out at hours).
pub(crate) const MAX_RECORDED_PAUSE: Duration = Duration::from_secs(3600);

/// What a run did. Written to `runs` as well.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub run_id: i64,
    pub outcome: Outcome,
    pub counts: Counts,
    pub(crate) elapsed: Duration,
    /// Why the run did not end `ok`, when it did not.
    pub detail: Option<String>,
    /// No request before this time: UnivaPay asked for a pause (`runs.resume_at`).
    pub resume_at: Option<DateTime<Utc>>,
    /// Requests sent to UnivaPay (`runs.requests`).
    pub(crate) requests: u64,
}

/// The name the pass and `--once` have always used.
pub type PassReport = RunReport;

impl RunReport {
    /// The one-line summary printed by `--once` and sent to systemd as `STATUS=`.
    pub fn summary_line(&self) -> String {
        let c = &self.counts;
        format!(
            "pass {} {}: checked {}, transitions {}, mismatches {}, errors {}, {:.2} s",
            self.run_id,
            self.outcome.as_str(),
            c.checked,
            c.transitions,
            c.mismatches,
            c.errors,
            self.elapsed.as_secs_f64()
        )
    }
}

/// What the checks of one run saw, as far as its outcome is concerned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Checks that got an HTTP answer.
    pub(crate) reached: u64,
    /// Checks that got none (connection failed, timed out).
    pub(crate) unreachable: u64,
    /// The last of those failures, to name in the outcome.
    pub(crate) last_unreachable: Option<String>,
    /// The credentials were refused (the first such error).
    pub(crate) auth: Option<String>,
    /// Checks answered 404 (counted in `reached` too).
    pub(crate) not_found: u64,
    /// UnivaPay imposed a wait longer than a run sits idle (the longest seen).
    pub(crate) paused: Option<Paused>,
    /// Every charge of the run was handled.
    pub(crate) complete: bool,
    /// Requests sent (each check that got past the pacer).
    pub(crate) requests: u64,
}

/// Whether every check of the pass, at least [`WALL_MIN`] of them, answered 404.
pub(crate) fn is_wall(t: &Tally) -> bool {
    t.not_found >= WALL_MIN && t.not_found == t.reached + t.unreachable
}

/// The outcome of a run, and why, from its tally. `max_pause` is the wait a run sits
/// through, named in the detail of a `rate_limited` run.
pub(crate) fn verdict(t: &Tally, max_pause: Duration) -> (Outcome, Option<String>) {
    if let Some(e) = &t.auth {
        return (
            Outcome::AuthFailed,
            Some(format!(
                "{e}; pass stopped (check api.secret and api.app_token)"
            )),
        );
    }
    if t.reached == 0 && t.unreachable > 0 {
        return (
            Outcome::Unreachable,
            Some(format!(
                "UnivaPay could not be reached for any of {} charges ({})",
                t.unreachable,
                t.last_unreachable
                    .as_deref()
                    .unwrap_or("connection failed or timed out")
            )),
        );
    }
    if is_wall(t) {
        return (
            Outcome::NotFoundWall,
            Some(format!(
                "every one of the {} charges checked answered 404 (not found): is api.base_url right, and are the credentials those of the account and mode (test or live) the charges belong to? These 404s do not count toward reconcile.not_found_limit",
                t.not_found
            )),
        );
    }
    if let Some(p) = &t.paused {
        return (Outcome::RateLimited, Some(long_pause_detail(p, max_pause)));
    }
    if !t.complete {
        return (Outcome::Interrupted, Some("stopped by shutdown".to_owned()));
    }
    (Outcome::Ok, None)
}

fn long_pause_detail(p: &Paused, max_pause: Duration) -> String {
    let why = match p.cause {
        PauseCause::RateLimited => "",
        PauseCause::Refill => " (its rate-limit headers)",
    };
    format!(
        "{p}{why}, longer than a pass waits (schedule.drain_timeout {}); the pass ended early, the charges not reached stay due, and no request goes before runs.resume_at",
        humantime::format_duration(max_pause)
    )
}

/// The one text for a run (or a sweep) that sends nothing because of a pause recorded
/// earlier.
pub(crate) fn pause_detail(resume_at: DateTime<Utc>) -> String {
    format!(
        "UnivaPay asked for a pause until {} (recorded by an earlier run); no request before then, every due charge stays due",
        ledger::ts(resume_at)
    )
}

/// When requests may go again after UnivaPay asked for `pause` (what `runs.resume_at`
/// records), capped at [`MAX_RECORDED_PAUSE`].
pub(crate) fn resume_at(now: DateTime<Utc>, pause: &Paused) -> DateTime<Utc> {
    after(now, pause.wait.min(MAX_RECORDED_PAUSE))
}

fn after(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// A pause recorded in `runs.resume_at` (by any process) that has not ended: a short one
/// (at most [`Context::max_pause`]) is imposed on the client, so its requests wait for
/// it (`Ok`); a longer one is returned, and nothing may be sent before it.
pub(crate) fn honour_pause(
    ctx: &Context,
    recorded: Option<DateTime<Utc>>,
) -> Result<(), DateTime<Utc>> {
    let Some(resume_at) = recorded else {
        return Ok(());
    };
    let Ok(left) = (resume_at - ctx.now()).to_std() else {
        return Ok(());
    };
    if left <= ctx.max_pause() {
        ctx.client().pause_for(left);
        return Ok(());
    }
    Err(resume_at)
}

/// [`honour_pause`] for a job that reads the ledger only for it (a sweep, a token read,
/// a webhook's unknown charge): reads the latest `runs.resume_at` first.
pub(crate) async fn honour_recorded_pause(
    ctx: &Context,
) -> Result<Result<(), DateTime<Utc>>, LedgerError> {
    let recorded = ctx.with_ledger(Open::Migrate, |l| l.resume_at()).await?;
    Ok(honour_pause(ctx, recorded))
}

/// One run from open to finish. See the module doc.
pub struct Run {
    ctx: Context,
    trigger: Trigger,
    /// `None` until the row is written (at once under the pass lock, at the end without).
    id: Option<i64>,
    started_at: DateTime<Utc>,
    started: Instant,
    recorded_pause: Option<DateTime<Utc>>,
    span: Span,
}

impl Run {
    /// Opens a run under the pass lock (`_held` proves it): runs left `running` are closed
    /// as `interrupted` (with the lock held no other run of checks under it can be
    /// running, so such a row was left by a process that died), the latest recorded pause
    /// is read and this run's row is inserted. Returns the connection, for the run's
    /// writes.
    pub(crate) async fn open(
        ctx: &Context,
        _held: &crate::lock::PassGuard,
        trigger: Trigger,
    ) -> Result<(Run, Ledger), LedgerError> {
        let started = Instant::now();
        let started_at = ctx.now();
        let (ledger, closed, id, recorded_pause) = ctx
            .with_ledger(Open::Migrate, move |l| {
                let closed = l.close_abandoned_runs()?;
                let resume_at = l.resume_at()?;
                let id = l.begin_run(trigger, started_at)?;
                Ok((l, closed, id, resume_at))
            })
            .await?;
        if closed > 0 {
            tracing::warn!(
                runs = closed,
                "marked runs left unfinished by a process that ended as interrupted"
            );
        }
        let span = tracing::info_span!("run", run_id = id, trigger = trigger.as_str());
        span.in_scope(|| tracing::debug!("run started"));
        let run = Run {
            ctx: ctx.clone(),
            trigger,
            id: Some(id),
            started_at,
            started,
            recorded_pause,
            span,
        };
        Ok((run, ledger))
    }

    /// A run without the pass lock: its row is written by [`Run::end_in`], in the same
    /// transaction as its results. Read the recorded pause with [`Run::read_pause_in`]
    /// before the first request.
    pub(crate) fn unlocked(ctx: &Context, trigger: Trigger) -> Run {
        Run {
            ctx: ctx.clone(),
            trigger,
            id: None,
            started_at: ctx.now(),
            started: Instant::now(),
            recorded_pause: None,
            span: tracing::info_span!(
                "run",
                run_id = tracing::field::Empty,
                trigger = trigger.as_str()
            ),
        }
    }

    /// Reads the latest recorded pause on `l` (for a run opened with [`Run::unlocked`]).
    pub(crate) fn read_pause_in(&mut self, l: &Ledger) -> Result<(), LedgerError> {
        self.recorded_pause = l.resume_at()?;
        Ok(())
    }

    pub(crate) fn id(&self) -> Option<i64> {
        self.id
    }

    /// The run's span: the checks of the run are instrumented with it.
    pub(crate) fn span(&self) -> &Span {
        &self.span
    }

    /// Step 2: `None` when requests may go (a short recorded pause is now imposed on the
    /// client); otherwise the `rate_limited` report of a run that sends nothing.
    pub(crate) fn honour_pause(&self) -> Option<RunReport> {
        let resume_at = honour_pause(&self.ctx, self.recorded_pause).err()?;
        Some(RunReport {
            run_id: self.id.unwrap_or(0),
            outcome: Outcome::RateLimited,
            counts: Counts::default(),
            elapsed: self.started.elapsed(),
            detail: Some(pause_detail(resume_at)),
            resume_at: Some(resume_at),
            requests: 0,
        })
    }

    /// Step 4: the report of the run from its tally and the counts its writes committed.
    pub(crate) fn report(&self, tally: &Tally, counts: Counts) -> RunReport {
        let (outcome, detail) = verdict(tally, self.ctx.max_pause());
        RunReport {
            run_id: self.id.unwrap_or(0),
            outcome,
            counts,
            elapsed: self.started.elapsed(),
            detail,
            resume_at: tally.paused.as_ref().map(|p| resume_at(self.ctx.now(), p)),
            requests: tally.requests,
        }
    }

    /// For an unlocked run, inside the transaction of its results: inserts its row (with
    /// the time the run started) and returns its id. The id of a run opened under the
    /// lock otherwise.
    pub(crate) fn begin_in(&mut self, l: &Ledger) -> Result<i64, LedgerError> {
        if let Some(id) = self.id {
            return Ok(id);
        }
        let id = l.begin_run(self.trigger, self.started_at)?;
        self.span.record("run_id", id);
        self.id = Some(id);
        Ok(id)
    }

    /// Step 5 inside a ledger transaction of the caller's: the row (inserted now for an
    /// unlocked run, whose id goes into `report`) gets outcome, counts, requests and
    /// `resume_at`.
    pub(crate) fn end_in(&mut self, l: &Ledger, report: &mut RunReport) -> Result<(), LedgerError> {
        let id = self.begin_in(l)?;
        report.run_id = id;
        if let Some(at) = report.resume_at {
            l.set_resume_at(id, at)?;
        }
        l.set_run_requests(id, report.requests)?;
        l.finish_run(
            id,
            report.outcome,
            report.counts,
            report.detail.as_deref(),
            self.ctx.now(),
        )
    }

    /// Step 5 on its own: [`Run::end_in`] on `ledger`, then the run's log line.
    pub(crate) async fn finish(
        mut self,
        ledger: Ledger,
        report: RunReport,
    ) -> Result<RunReport, LedgerError> {
        let (run, report) = self
            .ctx
            .clone()
            .blocking(move || {
                let mut report = report;
                self.end_in(&ledger, &mut report)?;
                Ok((self, report))
            })
            .await?;
        run.log_finished(&report);
        Ok(report)
    }

    /// The run's one line at its end.
    pub(crate) fn log_finished(&self, report: &RunReport) {
        let c = &report.counts;
        self.span.in_scope(|| {
            tracing::info!(
                run_id = report.run_id,
                outcome = report.outcome.as_str(),
                checked = c.checked,
                transitions = c.transitions,
                mismatches = c.mismatches,
                errors = c.errors,
                requests = report.requests,
                seconds = report.elapsed.as_secs_f64(),
                "pass finished"
            );
        });
    }

    /// Best effort after the ledger failed mid-run: record the run as `failed` with the
    /// cause, on a fresh connection. When even that cannot be written (the disk is full,
    /// say), the row stays `running` and the next run marks it `interrupted`.
    pub(crate) async fn fail(&self, cause: &LedgerError) {
        let Some(run_id) = self.id else {
            return;
        };
        let detail = cause.to_string();
        let now = self.ctx.now();
        let written = self
            .ctx
            .with_ledger(Open::Existing, move |ledger| {
                ledger.fail_run(run_id, &detail, now)
            })
            .await;
        if let Err(e) = written {
            tracing::debug!(run_id, error = %e, "could not mark the run failed");
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        let ok = Tally {
            reached: 3,
            complete: true,
            ..Tally::default()
        };
        let v = |t: &Tally| verdict(t, Duration::from_secs(30));
        assert_eq!(v(&ok), (Outcome::Ok, None));
        let empty = Tally {
            complete: true,
            ..Tally::default()
        };
        assert_eq!(v(&empty).0, Outcome::Ok);
        let auth = Tally {
            auth: Some("401".into()),
            ..ok.clone()
        };
        assert_eq!(v(&auth).0, Outcome::AuthFailed);
        let down = Tally {
            reached: 0,
            unreachable: 4,
            ..ok.clone()
        };
        let (o, d) = v(&down);
        assert_eq!(o, Outcome::Unreachable);
        assert!(d.unwrap().contains("any of 4 charges"));
        let some_down = Tally {
            unreachable: 4,
            ..ok.clone()
        };
        assert_eq!(v(&some_down).0, Outcome::Ok);
        let cut = Tally {
            complete: false,
            ..ok
        };
        assert_eq!(v(&cut).0, Outcome::Interrupted);
    }

    #[test]
    fn a_pass_of_nothing_but_404s_is_a_wall() {
        let v = |t: &Tally| verdict(t, Duration::from_secs(30));
        let wall = Tally {
            reached: 3,
            not_found: 3,
            complete: true,
            ..Tally::default()
        };
        assert!(is_wall(&wall));
        let (o, d) = v(&wall);
        assert_eq!(o, Outcome::NotFoundWall);
        assert!(o.is_failure());
        let d = d.unwrap();
        assert!(
            d.contains("every one of the 3") && d.contains("api.base_url"),
            "{d}"
        );
        // Too few to say; one other answer; a timeout among them: not a wall.
        for t in [
            Tally {
                reached: 2,
                not_found: 2,
                ..wall.clone()
            },
            Tally {
                reached: 4,
                not_found: 3,
                ..wall.clone()
            },
            Tally {
                unreachable: 1,
                ..wall.clone()
            },
        ] {
            assert!(!is_wall(&t), "{t:?}");
            assert_ne!(v(&t).0, Outcome::NotFoundWall);
        }
        // Credentials refused still come first.
        let auth = Tally {
            auth: Some("401".into()),
            ..wall.clone()
        };
        assert_eq!(v(&auth).0, Outcome::AuthFailed);
        // A wall interrupted by shutdown is still a wall.
        assert_eq!(
            v(&Tally {
                complete: false,
                ..wall
            })
            .0,
            Outcome::NotFoundWall
        );
    }

    #[test]
    fn a_long_pause_ends_the_pass_as_rate_limited() {
        let paused = Tally {
            reached: 5,
            paused: Some(Paused {
                wait: Duration::from_secs(3600),
                cause: PauseCause::RateLimited,
            }),
            complete: false,
            ..Tally::default()
        };
        let (o, d) = verdict(&paused, Duration::from_secs(30));
        assert_eq!(o, Outcome::RateLimited);
        assert!(!o.is_failure());
        let d = d.unwrap();
        assert!(
            d.contains("pause of 1h") && d.contains("drain_timeout 30s"),
            "{d}"
        );
        let refill = Tally {
            paused: Some(Paused {
                wait: Duration::from_secs(120),
                cause: PauseCause::Refill,
            }),
            ..paused
        };
        let d = verdict(&refill, Duration::from_secs(30)).1.unwrap();
        assert!(d.contains("refill") && d.contains("2m"), "{d}");
    }
}
