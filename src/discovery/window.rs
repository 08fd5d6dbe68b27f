//! The pure decisions of a store's listing: the window of creation times a sweep looks
//! at (the watermark, the lookback, the overlap and the settling delay), where a listed
//! item falls against it, the [`Mark`] of how far the store has really been looked at,
//! and the paging guard that ends a misbehaving listing.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::domain::ChargeId;
use crate::univapay::{Listed, Page};

/// How long after its creation a charge is first looked at: a shop that registers its
/// charges right after creating them is never raced by a sweep.
pub const SETTLE: Duration = Duration::from_secs(2 * 60);

/// The creation times one store's sweep looks at, both ends inclusive: from `overlap`
/// behind the watermark (never further back than `lookback`) to `SETTLE` ago. `None`
/// when that is empty.
///
/// The overlap is there because a listing may show a row later than its `created_on`
/// (replication, a charge created while the history was behind): a row that appears up
/// to `overlap` late is still inside a later window. What the overlap lists again costs
/// its page only: the ids are known by then, and known ids cost no request.
pub(crate) fn window(
    now: DateTime<Utc>,
    lookback: Duration,
    overlap: Duration,
    watermark: Option<DateTime<Utc>>,
) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let floor = now - chrono::Duration::from_std(lookback).ok()?;
    let overlap = chrono::Duration::from_std(overlap).ok()?;
    let from = watermark.map_or(floor, |w| (w - overlap).max(floor));
    let to = now - chrono::Duration::from_std(SETTLE).ok()?;
    (from <= to).then_some((from, to))
}

/// Where a listed item falls against the window (by its listed creation time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    Inside,
    /// Created before the window (the listing ignored `from`): not looked at.
    Before,
    /// Created after the window (the listing ignored `to`): left for a later sweep.
    After,
}

pub(crate) fn placement(
    created: Option<DateTime<Utc>>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Placement {
    match created {
        Some(t) if t < from => Placement::Before,
        Some(t) if t > to => Placement::After,
        _ => Placement::Inside,
    }
}

/// How far one store has been looked at during a sweep: everything created up to
/// [`Mark::at`] is handled. Advanced item by item, in listing order; stopping at an item
/// not handled caps it there (`from` is inclusive, so the next sweep starts with that
/// item).
///
/// That reasoning holds only for a listing served oldest first. Every page's new items
/// are checked to be in creation order, continuing the pages before ([`Mark::see`]); once
/// they are not (a server that ignores `cursor_direction=asc` and serves newest first),
/// the mark stays at the window's start until the listing has been read to its end: the
/// items not yet listed may be older than any seen, so nothing after `from` is known to
/// be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark {
    at: DateTime<Utc>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    /// The latest creation time listed so far, in listing order.
    latest: Option<DateTime<Utc>>,
    in_order: bool,
    complete: bool,
}

impl Mark {
    pub(crate) fn new(from: DateTime<Utc>, to: DateTime<Utc>) -> Mark {
        Mark {
            at: from,
            from,
            to,
            latest: None,
            in_order: true,
            complete: false,
        }
    }

    /// How far the store is known to be handled: the watermark to commit.
    pub(crate) fn at(&self) -> DateTime<Utc> {
        if self.complete {
            self.to
        } else if self.in_order {
            self.at
        } else {
            self.from
        }
    }

    /// Takes in a page's new items, in listing order, before any of them is handled.
    /// Items without a creation time say nothing about the order.
    pub(crate) fn see(&mut self, items: &[Listed]) {
        for t in items.iter().filter_map(|i| i.created_on) {
            if self.latest.is_some_and(|l| t < l) {
                self.in_order = false;
            }
            self.latest = Some(self.latest.map_or(t, |l| l.max(t)));
        }
    }

    /// Whether everything listed so far came oldest first.
    pub(crate) fn in_order(&self) -> bool {
        self.in_order
    }

    /// An item created at `created` is handled.
    pub(crate) fn handled(&mut self, created: Option<DateTime<Utc>>) {
        if let Some(t) = created {
            self.at = self.at.max(t.min(self.to));
        }
    }

    /// The item created at `created` is not handled: nothing from it on may count as
    /// handled.
    pub(crate) fn stop_before(&mut self, created: Option<DateTime<Utc>>) {
        if let Some(t) = created {
            self.at = self.at.min(t).max(self.from);
        }
    }

    /// The listing was read to its end: everything in the window is handled, whatever
    /// order it came in.
    pub(crate) fn complete(&mut self) {
        self.complete = true;
    }

    /// The window's start.
    pub(crate) fn from(&self) -> DateTime<Utc> {
        self.from
    }

    /// The window's end.
    pub(crate) fn to(&self) -> DateTime<Utc> {
        self.to
    }
}

/// Why a listing was given up on before its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Broken {
    /// `has_more: true` on a page without items.
    EmptyPageWithMore,
    /// More than twice the items asked for: not a page of this listing.
    Oversized { items: usize, limit: u32 },
    /// A page with nothing not seen before in this sweep.
    Repeats,
    /// A cursor used before in this sweep.
    CursorLoop,
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Broken::EmptyPageWithMore => f.write_str("a page without items said has_more"),
            Broken::Oversized { items, limit } => {
                write!(
                    f,
                    "a page of {items} items, when at most {limit} were asked for"
                )
            }
            Broken::Repeats => f.write_str("a page repeated only items already seen"),
            Broken::CursorLoop => f.write_str("the cursor led back to a page already read"),
        }
    }
}

/// What comes after a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Next {
    /// Ask for the page after this cursor.
    More(ChargeId),
    /// The listing ended.
    Done,
    /// Give up on the listing for this sweep.
    Stop(Broken),
    /// The sweep's page limit for one store is reached; the next sweep goes on.
    PageLimit,
}

/// A page's items that are worth looking at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Fresh {
    /// Items with an id not seen before in this sweep, in listing order.
    pub(crate) items: Vec<Listed>,
    /// Items seen before in this sweep (counted, not looked at again).
    pub(crate) repeats: u64,
    /// Items without a usable id (counted and skipped).
    pub(crate) without_id: u64,
}

/// The guard of one store's listing in one sweep: every id and cursor it has seen, so a
/// listing that repeats itself or loops ends, and at most `max_pages` pages.
#[derive(Debug)]
pub(crate) struct Paging {
    limit: u32,
    max_pages: u32,
    pages: u32,
    seen: HashSet<ChargeId>,
    cursors: HashSet<ChargeId>,
}

impl Paging {
    pub(crate) fn new(limit: u32, max_pages: u32) -> Paging {
        Paging {
            limit,
            max_pages: max_pages.max(1),
            pages: 0,
            seen: HashSet::new(),
            cursors: HashSet::new(),
        }
    }

    /// Takes a page in: its fresh items, or why the page cannot be used at all.
    pub(crate) fn admit(&mut self, page: &Page) -> Result<Fresh, Broken> {
        self.pages += 1;
        // A few items over the limit (a server that repeats the cursor's item) are
        // tolerated; twice the limit is not a page of this listing.
        if page.items.len() > 2 * self.limit as usize {
            return Err(Broken::Oversized {
                items: page.items.len(),
                limit: self.limit,
            });
        }
        let mut fresh = Fresh::default();
        for item in &page.items {
            match &item.charge_id {
                None => fresh.without_id += 1,
                Some(id) if !self.seen.insert(id.clone()) => fresh.repeats += 1,
                Some(_) => fresh.items.push(item.clone()),
            }
        }
        Ok(fresh)
    }

    /// What follows an admitted page.
    pub(crate) fn next(&mut self, page: &Page, fresh: &Fresh) -> Next {
        if !page.has_more {
            return Next::Done;
        }
        let Some(last) = fresh.items.last().and_then(|i| i.charge_id.clone()) else {
            return Next::Stop(if page.items.is_empty() {
                Broken::EmptyPageWithMore
            } else {
                Broken::Repeats
            });
        };
        if !self.cursors.insert(last.clone()) {
            return Next::Stop(Broken::CursorLoop);
        }
        if self.pages >= self.max_pages {
            return Next::PageLimit;
        }
        Next::More(last)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn item(id: Option<&str>) -> Listed {
        Listed {
            charge_id: id.map(|i| ChargeId::parse(i).unwrap()),
            payment_type: None,
            convenience_store: None,
            token_id: None,
            created_on: None,
        }
    }

    fn page(ids: &[Option<&str>], has_more: bool) -> Page {
        Page {
            items: ids.iter().map(|i| item(*i)).collect(),
            has_more,
        }
    }

    #[test]
    fn the_window_starts_an_overlap_behind_the_watermark_within_the_lookback() {
        let now = t("2026-11-27T12:00:00Z");
        let day = Duration::from_secs(86_400);
        let hour = Duration::from_secs(3_600);
        let (from, to) = window(now, 35 * day, hour, None).unwrap();
        assert_eq!(from, t("2026-10-23T12:00:00Z"));
        assert_eq!(to, t("2026-11-27T11:58:00Z"));
        let (from, _) = window(now, 35 * day, hour, Some(t("2026-11-27T10:00:00Z"))).unwrap();
        assert_eq!(from, t("2026-11-27T09:00:00Z"));
        let (from, _) = window(
            now,
            35 * day,
            Duration::ZERO,
            Some(t("2026-11-27T10:00:00Z")),
        )
        .unwrap();
        assert_eq!(from, t("2026-11-27T10:00:00Z"));
        // A watermark older than the lookback, or an overlap reaching past it: the
        // lookback wins.
        let (from, _) = window(now, day, hour, Some(t("2026-01-01T00:00:00Z"))).unwrap();
        assert_eq!(from, t("2026-11-26T12:00:00Z"));
        let (from, _) = window(now, day, 2 * day, Some(t("2026-11-27T10:00:00Z"))).unwrap();
        assert_eq!(from, t("2026-11-26T12:00:00Z"));
        // Without an overlap, swept up to a minute ago: nothing settled since.
        let recent = Some(t("2026-11-27T11:59:00Z"));
        assert_eq!(window(now, day, Duration::ZERO, recent), None);
        let (from, to) = window(now, day, hour, recent).unwrap();
        assert_eq!(
            (from, to),
            (t("2026-11-27T10:59:00Z"), t("2026-11-27T11:58:00Z"))
        );
    }

    #[test]
    fn the_mark_never_passes_an_item_not_handled() {
        let (from, to) = (t("2026-11-01T00:00:00Z"), t("2026-11-10T00:00:00Z"));
        let mut m = Mark::new(from, to);
        m.handled(Some(t("2026-11-02T00:00:00Z")));
        m.handled(None);
        m.handled(Some(t("2026-11-05T00:00:00Z")));
        assert_eq!(m.at(), t("2026-11-05T00:00:00Z"));
        m.stop_before(Some(t("2026-11-04T00:00:00Z")));
        assert_eq!(m.at(), t("2026-11-04T00:00:00Z"));
        // Past the window's end: capped there.
        let mut m = Mark::new(from, to);
        m.handled(Some(t("2026-12-01T00:00:00Z")));
        assert_eq!(m.at(), to);
        m.complete();
        assert_eq!(m.at(), to);
    }

    fn dated(times: &[&str]) -> Vec<Listed> {
        times
            .iter()
            .map(|s| Listed {
                created_on: Some(t(s)),
                ..item(Some("c"))
            })
            .collect()
    }

    #[test]
    fn a_listing_not_oldest_first_holds_the_mark_at_the_window_start_until_its_end() {
        let (from, to) = (t("2026-11-01T00:00:00Z"), t("2026-11-10T00:00:00Z"));
        // Oldest first, across two pages (equal times are in order): the mark follows.
        let mut m = Mark::new(from, to);
        m.see(&dated(&["2026-11-02T00:00:00Z", "2026-11-03T00:00:00Z"]));
        m.handled(Some(t("2026-11-03T00:00:00Z")));
        m.see(&dated(&["2026-11-03T00:00:00Z", "2026-11-04T00:00:00Z"]));
        m.handled(Some(t("2026-11-04T00:00:00Z")));
        assert!(m.in_order());
        assert_eq!(m.at(), t("2026-11-04T00:00:00Z"));
        // Newest first: the first page's newest items handled, the mark stays at `from`.
        let mut m = Mark::new(from, to);
        m.see(&dated(&["2026-11-09T00:00:00Z", "2026-11-08T00:00:00Z"]));
        m.handled(Some(t("2026-11-09T00:00:00Z")));
        m.handled(Some(t("2026-11-08T00:00:00Z")));
        assert!(!m.in_order());
        assert_eq!(m.at(), from);
        // A later page going back in time, each page ascending in itself.
        let mut m = Mark::new(from, to);
        m.see(&dated(&["2026-11-08T00:00:00Z", "2026-11-09T00:00:00Z"]));
        m.handled(Some(t("2026-11-09T00:00:00Z")));
        assert_eq!(m.at(), t("2026-11-09T00:00:00Z"));
        m.see(&dated(&["2026-11-02T00:00:00Z"]));
        assert_eq!(m.at(), from);
        // Read to its end: everything is handled, whatever the order.
        m.complete();
        assert_eq!(m.at(), to);
        // Items without a time say nothing about the order.
        let mut m = Mark::new(from, to);
        m.see(&[item(Some("a")), item(Some("b"))]);
        assert!(m.in_order());
    }

    #[test]
    fn paging_follows_the_last_new_item() {
        let mut p = Paging::new(3, 10);
        let first = page(&[Some("a"), Some("b"), Some("c")], true);
        let f = p.admit(&first).unwrap();
        assert_eq!(f.items.len(), 3);
        assert_eq!(
            p.next(&first, &f),
            Next::More(ChargeId::parse("c").unwrap())
        );
        // The repeat_items misbehaviour: the cursor's item first, the page's first last.
        let huge = page(&[Some("x"); 7], true);
        assert_eq!(
            p.admit(&huge),
            Err(Broken::Oversized { items: 7, limit: 3 })
        );
        let second = page(&[Some("c"), Some("d"), Some("d")], true);
        let f = p.admit(&second).unwrap();
        assert_eq!((f.items.len(), f.repeats, f.without_id), (1, 2, 0));
        assert_eq!(
            p.next(&second, &f),
            Next::More(ChargeId::parse("d").unwrap())
        );
        let last = page(&[Some("e"), None], false);
        let f = p.admit(&last).unwrap();
        assert_eq!(f.without_id, 1);
        assert_eq!(p.next(&last, &f), Next::Done);
    }

    #[test]
    fn misbehaving_listings_end() {
        let mut p = Paging::new(100, 10);
        let empty = page(&[], true);
        let f = p.admit(&empty).unwrap();
        assert_eq!(p.next(&empty, &f), Next::Stop(Broken::EmptyPageWithMore));

        let mut p = Paging::new(100, 10);
        let same = page(&[Some("a"), Some("b")], true);
        let f = p.admit(&same).unwrap();
        assert!(matches!(p.next(&same, &f), Next::More(_)));
        let f = p.admit(&same).unwrap();
        assert_eq!(p.next(&same, &f), Next::Stop(Broken::Repeats));

        let mut p = Paging::new(100, 2);
        let one = page(&[Some("a")], true);
        let f = p.admit(&one).unwrap();
        assert!(matches!(p.next(&one, &f), Next::More(_)));
        let two = page(&[Some("b")], true);
        let f = p.admit(&two).unwrap();
        assert_eq!(p.next(&two, &f), Next::PageLimit);
    }

    fn arb_page() -> impl Strategy<Value = Page> {
        (
            prop::collection::vec(prop::option::of(0u8..20), 0..6),
            any::<bool>(),
        )
            .prop_map(|(ids, has_more)| Page {
                items: ids
                    .into_iter()
                    .map(|i| {
                        let id = i.map(|i| format!("c{i}"));
                        item(id.as_deref())
                    })
                    .collect(),
                has_more,
            })
    }

    proptest! {
        /// A listing served oldest first or newest first (distinct creation times, pages
        /// of at least two), cut off after any page: every item created before the mark
        /// has been seen. (A newest-first first page whose times are all equal cannot be
        /// told from an oldest-first one; see the docs.)
        #[test]
        fn the_mark_never_passes_an_item_not_seen(
            minutes in prop::collection::btree_set(0i64..10_000, 1..60),
            newest_first in any::<bool>(),
            page_size in 2usize..10,
            pages_read in 1usize..10,
        ) {
            let base = t("2026-11-01T00:00:00Z");
            let mut times: Vec<DateTime<Utc>> =
                minutes.iter().map(|m| base + chrono::Duration::minutes(*m)).collect();
            if newest_first {
                times.reverse();
            }
            let (from, to) = (base, base + chrono::Duration::minutes(10_000));
            let mut m = Mark::new(from, to);
            let pages: Vec<&[DateTime<Utc>]> = times.chunks(page_size).collect();
            let read = pages_read.min(pages.len());
            for page in &pages[..read] {
                let items: Vec<Listed> = page
                    .iter()
                    .map(|c| Listed { created_on: Some(*c), ..item(Some("c")) })
                    .collect();
                m.see(&items);
                for c in page.iter() {
                    m.handled(Some(*c));
                }
            }
            if read == pages.len() {
                m.complete();
            }
            let seen: HashSet<DateTime<Utc>> =
                pages[..read].iter().flat_map(|p| p.iter().copied()).collect();
            for c in &times {
                prop_assert!(*c >= m.at() || seen.contains(c), "{c} passed unseen");
            }
        }
    }

    proptest! {
        /// Whatever a server answers, a store's listing ends within the page limit, and
        /// no id is handed out for a look twice.
        #[test]
        fn any_listing_ends_and_never_repeats(pages in prop::collection::vec(arb_page(), 1..40)) {
            let mut p = Paging::new(5, 8);
            let mut handed = HashSet::new();
            let mut asked = 0;
            for page in pages.iter().cycle() {
                asked += 1;
                prop_assert!(asked <= 8, "more pages than the limit");
                let Ok(fresh) = p.admit(page) else { break };
                for i in &fresh.items {
                    prop_assert!(handed.insert(i.charge_id.clone().unwrap()));
                }
                match p.next(page, &fresh) {
                    Next::More(_) => continue,
                    _ => break,
                }
            }
        }
    }
}
