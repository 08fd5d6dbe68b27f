//! How a sweep ends: each store's ending, and the sweep's outcome and detail folded from
//! them and from enrichment's. Pure.

use crate::domain::StoreId;
use crate::ledger::SweepOutcome;

/// How one store's part of a sweep ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StoreEnd {
    /// Looked at up to the end of its window.
    Complete,
    /// Something was left for the next sweep, and why.
    Partial(String),
    /// Its listing could not be reached at all.
    Unreachable(String),
    Auth(String),
    Interrupted,
}

/// The sweep's outcome from how each store ended. Pure.
pub(crate) fn verdict(ends: &[(StoreId, StoreEnd)]) -> (SweepOutcome, Option<String>) {
    if let Some((_, StoreEnd::Auth(e))) = ends.iter().find(|(_, e)| matches!(e, StoreEnd::Auth(_)))
    {
        return (
            SweepOutcome::AuthFailed,
            Some(format!(
                "{e}; sweep stopped (check api.secret and api.app_token)"
            )),
        );
    }
    if ends.iter().any(|(_, e)| *e == StoreEnd::Interrupted) {
        return (
            SweepOutcome::Interrupted,
            Some("stopped by shutdown".to_owned()),
        );
    }
    let notes: Vec<String> = ends
        .iter()
        .filter_map(|(s, e)| match e {
            StoreEnd::Partial(why) | StoreEnd::Unreachable(why) => {
                Some(format!("store {s}: {why}"))
            }
            _ => None,
        })
        .collect();
    if notes.is_empty() {
        return (SweepOutcome::Ok, None);
    }
    let all_unreachable = !ends.is_empty()
        && ends
            .iter()
            .all(|(_, e)| matches!(e, StoreEnd::Unreachable(_)));
    let outcome = if all_unreachable {
        SweepOutcome::Unreachable
    } else {
        SweepOutcome::Partial
    };
    (outcome, Some(notes.join("; ")))
}

/// Enrichment's ending folded into the sweep's outcome (`Ok` or `Partial` so far).
pub(crate) fn merge_enrichment(
    outcome: SweepOutcome,
    detail: Option<String>,
    end: StoreEnd,
) -> (SweepOutcome, Option<String>) {
    let (o, why) = match end {
        StoreEnd::Complete => return (outcome, detail),
        StoreEnd::Auth(e) => (SweepOutcome::AuthFailed, e),
        StoreEnd::Interrupted => (SweepOutcome::Interrupted, "stopped by shutdown".into()),
        StoreEnd::Partial(w) | StoreEnd::Unreachable(w) => (SweepOutcome::Partial, w),
    };
    let why = format!("enrichment: {why}");
    let detail = Some(match detail {
        Some(d) => format!("{d}; {why}"),
        None => why,
    });
    (o, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(s: &str) -> StoreId {
        StoreId::parse(s).unwrap()
    }

    #[test]
    fn verdicts() {
        assert_eq!(verdict(&[]), (SweepOutcome::Ok, None));
        let ok = (store("a"), StoreEnd::Complete);
        assert_eq!(verdict(std::slice::from_ref(&ok)).0, SweepOutcome::Ok);
        let partial = (store("b"), StoreEnd::Partial("100 pages read".into()));
        let (o, d) = verdict(&[ok.clone(), partial.clone()]);
        assert_eq!(o, SweepOutcome::Partial);
        assert_eq!(d.as_deref(), Some("store b: 100 pages read"));
        let down = (store("c"), StoreEnd::Unreachable("timeout".into()));
        assert_eq!(
            verdict(std::slice::from_ref(&down)).0,
            SweepOutcome::Unreachable
        );
        assert_eq!(
            verdict(&[ok.clone(), down.clone()]).0,
            SweepOutcome::Partial
        );
        let auth = (
            store("d"),
            StoreEnd::Auth("credentials rejected by UnivaPay (401)".into()),
        );
        let (o, d) = verdict(&[partial, auth]);
        assert_eq!(o, SweepOutcome::AuthFailed);
        assert!(d.unwrap().contains("api.secret"));
        let cut = (store("e"), StoreEnd::Interrupted);
        assert_eq!(verdict(&[down, cut]).0, SweepOutcome::Interrupted);
    }

    #[test]
    fn enrichment_folds_into_the_outcome() {
        assert_eq!(
            merge_enrichment(SweepOutcome::Ok, None, StoreEnd::Complete),
            (SweepOutcome::Ok, None)
        );
        let (o, d) = merge_enrichment(
            SweepOutcome::Partial,
            Some("store a: x".into()),
            StoreEnd::Partial("looking up a token failed".into()),
        );
        assert_eq!(o, SweepOutcome::Partial);
        assert_eq!(
            d.as_deref(),
            Some("store a: x; enrichment: looking up a token failed")
        );
        let (o, _) = merge_enrichment(SweepOutcome::Ok, None, StoreEnd::Auth("401".into()));
        assert_eq!(o, SweepOutcome::AuthFailed);
    }
}
