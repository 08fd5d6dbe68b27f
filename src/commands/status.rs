//! `status [--json]`: what the ledger says now. Per state the number of charges and what
//! they ask for, per currency; the charges that need a human (mismatches, no longer
//! checked, past their deadline but open, last check failed); how many are due; the last
//! run and the last failed one.
//!
//! The human form is a table that fits 80 columns; `--json` is one object with the
//! contract's keys (`charges`, `mismatches`, `unchecked`, `due`, `last_run`) and more.

use std::io::Write;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::{CommandError, writing};
use crate::config::Settings;
use crate::domain::State;
use crate::ledger::{Database, Open, Overview, RunRow, ts};

/// Widest line of the human form.
pub(crate) const WIDTH: usize = 80;

/// Reads the ledger and writes its status to `out`.
pub(crate) fn run(
    settings: &Settings,
    json: bool,
    now: DateTime<Utc>,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let db = Database::existing(&settings.database.path, settings.database.busy_timeout);
    let overview = db.open(Open::Migrate)?.overview(now)?;
    let id = db.identity();
    let text = if json {
        let mut j = to_json(&overview, db.path(), now);
        j["ledger_id"] = json!(id);
        j.to_string() + "\n"
    } else {
        let t = table(&overview, db.path(), now);
        match id {
            // Beside the path: which ledger this is (docs/ledger.md).
            Some(id) => t.replacen('\n', &format!("\nid     {id}\n"), 1),
            None => t,
        }
    };
    writing(|| {
        out.write_all(text.as_bytes())?;
        out.flush()
    })
}

/// The `--json` object.
pub(crate) fn to_json(o: &Overview, database: &Path, now: DateTime<Utc>) -> Value {
    let f = &o.figures;
    let mut charges = Map::new();
    for state in State::ALL {
        let mut by_currency = Map::new();
        let mut sum = 0i64;
        for t in f.by_state.iter().filter(|t| t.state == state) {
            by_currency.insert(t.currency.clone(), json!(t.requested_amount));
            sum = sum.saturating_add(t.requested_amount);
        }
        charges.insert(
            state.as_str().to_owned(),
            json!({
                "count": f.count(state),
                "requested_amount": sum,
                "requested_by_currency": by_currency,
            }),
        );
    }
    json!({
        "database": database.display().to_string(),
        "at": ts(now),
        "charges": charges,
        "invalid_state": f.invalid_state,
        "total": f.total(),
        "mismatches": f.mismatches,
        "unchecked": f.unchecked,
        "due": f.due,
        "open_past_expiry": f.open_past_expiry,
        "open_with_errors": f.open_with_errors,
        "last_run": o.last_run,
        "last_pass": o.last_pass,
        "last_failure": o.last_failure,
    })
}

/// The human form: a table and a few lines, none wider than [`WIDTH`].
pub(crate) fn table(o: &Overview, database: &Path, now: DateTime<Utc>) -> String {
    let f = &o.figures;
    let mut lines = vec![
        format!("ledger {}", database.display()),
        format!("at     {}", ts(now)),
        String::new(),
        format!("{:<12}{:>10}{:>16}", "state", "charges", "requested"),
    ];
    for state in State::ALL {
        let mut totals = f.by_state.iter().filter(|t| t.state == state);
        let first = totals.next();
        let amount =
            |t: &crate::ledger::StateTotal| format!("{:>16} {}", t.requested_amount, t.currency);
        lines.push(format!(
            "{:<12}{:>10}{}",
            state.as_str(),
            f.count(state),
            first
                .map(|t| format!("{:>20}", amount(t)))
                .unwrap_or_default()
        ));
        for t in totals {
            lines.push(format!("{:<22}{:>20}", "", amount(t)));
        }
    }
    if f.invalid_state > 0 {
        // Rows the schema's checks should have kept out: shown, so the total adds up.
        lines.push(format!("{:<12}{:>10}", "invalid", f.invalid_state));
    }
    lines.push(format!("{:<12}{:>10}", "total", f.total()));
    lines.push(String::new());
    for (label, n) in [
        ("amount mismatches", f.mismatches),
        ("unchecked (no longer checked)", f.unchecked),
        ("due now", f.due),
        ("open past expires_at", f.open_past_expiry),
        ("open, last check failed", f.open_with_errors),
    ] {
        lines.push(format!("{label:<32}{n:>10}"));
    }
    lines.push(String::new());
    match &o.last_run {
        Some(run) => lines.extend(run_lines("last run", run)),
        None => lines.push("last run    none yet".to_owned()),
    }
    if let Some(run) = &o.last_failure {
        lines.extend(run_lines("last error", run));
    }
    let mut text = String::new();
    for line in lines {
        text.push_str(&fit(&line));
        text.push('\n');
    }
    text
}

/// A run as two or three lines: what and when, its counts, and its detail if any.
fn run_lines(label: &str, run: &RunRow) -> Vec<String> {
    let when = run.finished_at.as_deref().unwrap_or(&run.started_at);
    let took = run
        .duration()
        .map(|d| format!(" ({:.2} s)", d.as_secs_f64()))
        .unwrap_or_default();
    let mut lines = vec![
        format!(
            "{label:<12}#{} {} {} at {when}{took}",
            run.id, run.trigger, run.outcome
        ),
        format!(
            "{:<12}checked {}, transitions {}, mismatches {}, errors {}",
            "", run.checked, run.transitions, run.mismatches, run.errors
        ),
    ];
    if let Some(d) = &run.detail {
        lines.push(format!("{:<12}{d}", ""));
    }
    lines
}

/// Cuts a line to [`WIDTH`] characters, marking the cut.
fn fit(line: &str) -> String {
    if line.chars().count() <= WIDTH {
        return line.to_owned();
    }
    let mut cut: String = line.chars().take(WIDTH - 3).collect();
    cut.push_str("...");
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Figures, StateTotal};

    fn run(outcome: &str, detail: Option<&str>) -> RunRow {
        RunRow {
            id: 7,
            trigger: "schedule".into(),
            started_at: "2026-05-01T00:00:00.000Z".into(),
            finished_at: Some("2026-05-01T00:00:01.250Z".into()),
            outcome: outcome.into(),
            checked: 3,
            transitions: 1,
            mismatches: 0,
            errors: 2,
            pid: Some(1),
            detail: detail.map(Into::into),
            due: None,
            stretch: None,
            requests: 0,
            resume_at: None,
        }
    }

    fn overview() -> Overview {
        let total = |state, currency: &str, count, requested_amount| StateTotal {
            state,
            currency: currency.into(),
            count,
            requested_amount,
        };
        Overview {
            figures: Figures {
                by_state: vec![
                    total(State::Pending, "JPY", 3, 3000),
                    total(State::Successful, "JPY", 400, 999_999_999_999_999),
                    total(State::Successful, "USD", 2, 500),
                ],
                invalid_state: 0,
                mismatches: 1,
                unchecked: 2,
                due: 3,
                open_past_expiry: 4,
                open_with_errors: 5,
            },
            last_run: Some(run("ok", None)),
            last_pass: Some(run("ok", None)),
            last_failure: Some(run(
                "unreachable",
                Some(&"UnivaPay could not be reached for any of 3 charges ".repeat(5)),
            )),
        }
    }

    fn now() -> DateTime<Utc> {
        "2026-05-01T00:10:00Z".parse().unwrap()
    }

    #[test]
    fn the_table_fits_80_columns_and_says_it_all() {
        let long = Path::new("/var/lib/private/konbini-reconciler/")
            .join("x".repeat(100))
            .join("konbini-reconciler.db");
        let t = table(&overview(), &long, now());
        for line in t.lines() {
            assert!(line.chars().count() <= WIDTH, "{line:?}");
        }
        for want in [
            "pending              3            3000 JPY",
            "successful         402 999999999999999 JPY",
            "                                   500 USD",
            "awaiting             0",
            "total              405",
            "amount mismatches                        1",
            "unchecked (no longer checked)            2",
            "due now                                  3",
            "last run    #7 schedule ok at 2026-05-01T00:00:01.250Z (1.25 s)",
            "            checked 3, transitions 1, mismatches 0, errors 2",
            "last error  #7 schedule unreachable at",
        ] {
            assert!(t.contains(want), "missing {want:?} in\n{t}");
        }
        assert!(t.contains("..."), "the long detail is cut:\n{t}");
    }

    #[test]
    fn no_run_yet() {
        let mut o = overview();
        o.last_run = None;
        o.last_failure = None;
        let t = table(&o, Path::new("l.db"), now());
        assert!(t.contains("last run    none yet"), "{t}");
        assert!(!t.contains("last error"), "{t}");
        let j = to_json(&o, Path::new("l.db"), now());
        assert_eq!(j["last_run"], Value::Null);
    }

    #[test]
    fn json_has_the_contract_keys() {
        let j = to_json(&overview(), Path::new("l.db"), now());
        assert_eq!(j["charges"]["pending"]["count"], 3);
        assert_eq!(j["charges"]["pending"]["requested_amount"], 3000);
        assert_eq!(j["charges"]["awaiting"]["count"], 0);
        assert_eq!(j["charges"]["awaiting"]["requested_amount"], 0);
        assert_eq!(j["charges"]["successful"]["count"], 402);
        assert_eq!(
            j["charges"]["successful"]["requested_by_currency"]["USD"],
            500
        );
        assert_eq!(j["mismatches"], 1);
        assert_eq!(j["unchecked"], 2);
        assert_eq!(j["due"], 3);
        assert_eq!(j["last_run"]["id"], 7);
        assert_eq!(j["last_run"]["outcome"], "ok");
        assert_eq!(j["last_failure"]["outcome"], "unreachable");
    }
}
