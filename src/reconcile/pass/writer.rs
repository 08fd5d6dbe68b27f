//! The writer thread of a pass: commits results in groups and logs what was committed.
//!
//! A commit costs about the same for one charge as for a hundred (the same pages of the
//! `runs` row and the indexes are written each time), so the writer gathers what arrives
//! within [`LINGER`] of the first result, up to [`MAX_GROUP`], and commits it as one
//! transaction. Each charge is still wholly before or after its check when the process
//! dies: a group is one transaction, and a charge's row and events are in one group.
//!
//! 404s are held back (unwritten, so a crash leaves those charges untouched and due) while
//! the pass has had no other answer: a pass in which every check answers 404 is a wall (a
//! wrong `base_url`, a maintenance page, the wrong account), and its 404s must not count
//! toward any charge's `not_found_limit`. The first other answer proves the API knows our
//! charges, and the held 404s are written as usual (counted). When the checks are done the
//! pass says whether it was a wall ([`ToWriter::End`]) and the rest are written
//! accordingly. At most [`HOLD_MAX`] are held: a pass that has seen that many 404s and
//! nothing else writes them uncounted, the safe direction (a charge is then given up at
//! most one pass later than it would have been).

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;
use tokio_util::sync::CancellationToken;

use crate::domain::{Decision, EventKind};
use crate::ledger::{Applied, BadRow, CheckResult, Counts, Ledger, LedgerError};

/// Messages to the writer thread.
pub(crate) enum ToWriter {
    Checked(Box<CheckResult>),
    /// A 404, and the decision to write instead if the pass is a wall.
    NotFound {
        result: Box<CheckResult>,
        in_wall: Box<Decision>,
    },
    Bad(BadRow),
    /// The checks are done; `wall`: every one answered 404.
    End {
        wall: bool,
    },
}

/// Most 404s held back while a pass has had no other answer.
pub(crate) const HOLD_MAX: usize = MAX_GROUP;

/// 404 results not yet written, while the pass has seen nothing but 404s.
#[derive(Default)]
struct Held {
    results: Vec<(CheckResult, Decision)>,
    /// Another answer came: nothing more is held.
    found: bool,
}

impl Held {
    /// Moves every held result into `group`, as decided (`wall == false`: counted) or
    /// with its wall decision (not counted).
    fn release(&mut self, group: &mut Vec<CheckResult>, wall: bool) {
        for (mut r, in_wall) in self.results.drain(..) {
            if wall {
                r.decision = in_wall;
            }
            group.push(r);
        }
    }
}

/// Most results committed in one transaction. Bounds how much one commit holds and how
/// long a reader elsewhere can be made to wait.
pub(crate) const MAX_GROUP: usize = 256;

/// How long the writer waits for more results after the first of a group. Short against
/// any recheck interval, long enough that a busy pass commits in groups of dozens.
const LINGER: Duration = Duration::from_millis(20);

/// Polling step while lingering: the writer is a plain thread (rusqlite blocks), and a
/// tokio receiver has no blocking receive with a timeout.
const POLL: Duration = Duration::from_millis(2);

/// Commits results as they come, grouped. Returns the connection and the counts of what
/// was committed. A ledger error stops the pass (`stop`) and is returned.
pub(crate) fn run(
    mut ledger: Ledger,
    run_id: i64,
    mut rx: mpsc::Receiver<ToWriter>,
    stop: CancellationToken,
) -> Result<(Ledger, Counts), LedgerError> {
    let mut totals = Counts::default();
    let mut group: Vec<CheckResult> = Vec::with_capacity(MAX_GROUP);
    let mut held = Held::default();
    while let Some(first) = rx.blocking_recv() {
        let result = gather(&mut rx, first, &mut group, &mut held, |bad| {
            totals.errors += 1;
            record_bad(&ledger, run_id, &bad)
        })
        .and_then(|()| commit(&mut ledger, run_id, &group));
        match result {
            Ok(counts) => totals += counts,
            Err(e) => {
                stop.cancel();
                return Err(e);
            }
        }
        group.clear();
    }
    Ok((ledger, totals))
}

/// Collects the results that arrive within [`LINGER`] of `first`, up to [`MAX_GROUP`]
/// (plus 404s released from `held` at once). Bad rows are recorded as they come (they
/// touch no charge row).
fn gather(
    rx: &mut mpsc::Receiver<ToWriter>,
    first: ToWriter,
    group: &mut Vec<CheckResult>,
    held: &mut Held,
    mut on_bad: impl FnMut(BadRow) -> Result<(), LedgerError>,
) -> Result<(), LedgerError> {
    let deadline = Instant::now() + LINGER;
    let mut next = Some(first);
    loop {
        match next.take() {
            Some(ToWriter::Checked(r)) => {
                if !held.found {
                    held.found = true;
                    held.release(group, false);
                }
                group.push(*r);
            }
            Some(ToWriter::NotFound { result, in_wall }) if !held.found => {
                held.results.push((*result, *in_wall));
                if held.results.len() >= HOLD_MAX {
                    held.release(group, true);
                }
            }
            Some(ToWriter::NotFound { result, .. }) => group.push(*result),
            Some(ToWriter::End { wall }) => held.release(group, wall),
            Some(ToWriter::Bad(bad)) => on_bad(bad)?,
            None => {}
        }
        if group.len() >= MAX_GROUP {
            return Ok(());
        }
        match rx.try_recv() {
            Ok(msg) => next = Some(msg),
            Err(TryRecvError::Disconnected) => return Ok(()),
            Err(TryRecvError::Empty) => {
                let now = Instant::now();
                if now >= deadline {
                    return Ok(());
                }
                std::thread::sleep(POLL.min(deadline - now));
            }
        }
    }
}

fn record_bad(ledger: &Ledger, run_id: i64, bad: &BadRow) -> Result<(), LedgerError> {
    tracing::warn!(charge_id = %bad.charge_id, problem = %bad.problem, "ledger row cannot be checked");
    ledger.record_bad_row(run_id, bad, chrono::Utc::now())
}

fn commit(ledger: &mut Ledger, run_id: i64, group: &[CheckResult]) -> Result<Counts, LedgerError> {
    if group.is_empty() {
        return Ok(Counts::default());
    }
    let applied = ledger.apply(run_id, group)?;
    crate::telemetry::batched(|| log_applied(group, &applied));
    Ok(applied.counts)
}

/// One line per transition and per new mismatch, only for what was committed.
fn log_applied(group: &[CheckResult], applied: &Applied) {
    for (r, written) in group.iter().zip(&applied.written) {
        if !written {
            continue;
        }
        let t = &r.decision.after;
        if let Some((from, to)) = r.decision.transition() {
            tracing::info!(
                charge_id = %r.charge.charge_id,
                from = from.as_str(),
                to = to.as_str(),
                provider_status = t.provider_status.as_deref().unwrap_or(""),
                requested_amount = r.charge.requested.amount,
                charged_amount = t.charged_amount,
                "charge moved"
            );
        }
        if r.decision.new_mismatch() {
            tracing::warn!(
                charge_id = %r.charge.charge_id,
                requested_amount = r.charge.requested.amount,
                requested_currency = %r.charge.requested.currency,
                charged_amount = t.charged_amount,
                charged_currency = t.charged_currency.as_deref().unwrap_or(""),
                detail = t.mismatch_detail.as_deref().unwrap_or(""),
                "amount mismatch"
            );
        }
        if let Some(e) = &t.last_error
            && r.decision
                .events
                .iter()
                .any(|e| e.kind == EventKind::GaveUp)
        {
            tracing::warn!(charge_id = %r.charge.charge_id, error = %e, "charge no longer checked");
        }
        for e in &r.decision.events {
            if e.kind == EventKind::PaymentChanged {
                tracing::warn!(
                    charge_id = %r.charge.charge_id,
                    detail = e.detail.as_deref().unwrap_or(""),
                    "payment details changed"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ChargeId, Currency, Requested, StoreId, Tracked};
    use crate::ledger::DueCharge;

    fn result(id: &str, not_found_count: u32) -> CheckResult {
        let mut after = Tracked::new();
        after.not_found_count = not_found_count;
        CheckResult {
            charge: DueCharge {
                dates: Default::default(),
                charge_id: ChargeId::parse(id).unwrap(),
                store_id: StoreId::parse("s").unwrap(),
                requested: Requested {
                    amount: 1,
                    currency: Currency::JPY,
                },
                tracked: Tracked::new(),
                next_check_at: String::new(),
                updated_at: String::new(),
            },
            decision: Decision {
                after,
                next_check_at: None,
                events: Vec::new(),
            },
            checked_at: chrono::Utc::now(),
            shop: None,
        }
    }

    /// A 404 whose counted decision says `not_found_count` 1 and wall decision 0.
    fn not_found(id: &str) -> ToWriter {
        ToWriter::NotFound {
            result: Box::new(result(id, 1)),
            in_wall: Box::new(result(id, 0).decision),
        }
    }

    /// Feeds `msgs` through `gather` the way `run` does, returning what would be
    /// committed: (charge id, not_found_count) in order.
    fn written(msgs: Vec<ToWriter>) -> Vec<(String, u32)> {
        let (tx, mut rx) = mpsc::channel(msgs.len().max(1));
        for m in msgs {
            tx.try_send(m).ok().unwrap();
        }
        drop(tx);
        let mut held = Held::default();
        let mut out = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            let mut group = Vec::new();
            gather(&mut rx, first, &mut group, &mut held, |_| Ok(())).unwrap();
            out.extend(group.into_iter().map(|r| {
                (
                    r.charge.charge_id.to_string(),
                    r.decision.after.not_found_count,
                )
            }));
        }
        out
    }

    #[test]
    fn held_404s_are_counted_once_another_answer_comes() {
        let w = written(vec![
            not_found("a"),
            not_found("b"),
            ToWriter::Checked(Box::new(result("ok", 0))),
            not_found("c"),
            ToWriter::End { wall: false },
        ]);
        assert_eq!(
            w,
            [("a", 1), ("b", 1), ("ok", 0), ("c", 1)].map(|(i, n)| (i.to_owned(), n))
        );
    }

    #[test]
    fn held_404s_of_a_wall_are_written_uncounted_at_the_end() {
        let w = written(vec![
            not_found("a"),
            not_found("b"),
            not_found("c"),
            ToWriter::End { wall: true },
        ]);
        assert_eq!(
            w,
            [("a", 0), ("b", 0), ("c", 0)].map(|(i, n)| (i.to_owned(), n))
        );
        // Too few for a wall: the pass says so, and they count.
        let w = written(vec![not_found("a"), ToWriter::End { wall: false }]);
        assert_eq!(w, [("a".to_owned(), 1)]);
    }

    #[test]
    fn no_more_than_hold_max_are_held() {
        let mut msgs: Vec<_> = (0..HOLD_MAX + 2)
            .map(|i| not_found(&format!("n{i}")))
            .collect();
        msgs.push(ToWriter::Checked(Box::new(result("ok", 0))));
        msgs.push(ToWriter::End { wall: false });
        let w = written(msgs);
        assert_eq!(w.len(), HOLD_MAX + 3);
        // The first HOLD_MAX went uncounted (the safe direction); the rest counted.
        assert!(w[..HOLD_MAX].iter().all(|(_, n)| *n == 0));
        assert_eq!(w[HOLD_MAX].1, 1);
        assert_eq!(w[HOLD_MAX + 1].1, 1);
    }
}
