//! What discovery tells the operator once per process: which warnings were given already
//! (one line per store and kind, not one per sweep), and how often a store's transaction
//! history was given up for its charge list, for the metrics.
//!
//! Process-wide on purpose: the figures are counters from the start of the process, like
//! the client's request counters, and a warning repeated every ten minutes would bury the
//! one line that matters.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, PoisonError};

use crate::domain::StoreId;

/// What a store's listing did that the operator hears about once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Notice {
    /// A listing came newest first (or otherwise out of creation order).
    OutOfOrder,
    /// The transaction history answered without usable rows while the charge list had
    /// charges: the charge list was read instead.
    HistoryUnusable,
}

static WARNED: Mutex<BTreeSet<(Notice, String)>> = Mutex::new(BTreeSet::new());
static FALLBACKS: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

/// `true` the first time this process asks about `notice` for `store`.
pub(crate) fn first(notice: Notice, store: &StoreId) -> bool {
    WARNED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert((notice, store.as_str().to_owned()))
}

/// Counts one fallback from the history to the charge list for `store`.
pub(crate) fn count_fallback(store: &StoreId) {
    *FALLBACKS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(store.as_str().to_owned())
        .or_default() += 1;
}

/// Fallbacks from the history to the charge list since the process started, by store
/// (the `konbini_discovery_history_fallbacks_total` counter).
pub fn history_fallbacks() -> Vec<(String, u64)> {
    FALLBACKS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|(s, n)| (s.clone(), *n))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_notice_is_first_once_per_store() {
        let a = StoreId::parse("notice-test-a").unwrap();
        let b = StoreId::parse("notice-test-b").unwrap();
        assert!(first(Notice::HistoryUnusable, &a));
        assert!(!first(Notice::HistoryUnusable, &a));
        assert!(first(Notice::HistoryUnusable, &b));
        assert!(first(Notice::OutOfOrder, &a));
        count_fallback(&a);
        count_fallback(&a);
        let figures = history_fallbacks();
        assert!(
            figures.contains(&("notice-test-a".to_owned(), 2)),
            "{figures:?}"
        );
    }
}
