//! One sweep: every configured store's listing read page by page from its watermark, each
//! page's unknown konbini charges verified and registered, the page committed with the
//! store's new watermark; then, when asked, enrichment. See the module doc of
//! [`crate::discovery`] for the design.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::rules::{self, Broken, Fresh, ItemVerdict, Mark, Next, Paging, Placement};
use super::verify::{Halt, Source, Verifier};
use crate::config::DiscoverySettings;
use crate::context::Context;
use crate::domain::{ChargeId, StoreId};
use crate::ledger::{
    DiscoveryBatch, LedgerError, NewDiscovered, Open, Skip, SkipReason, SweepCounts, SweepOutcome,
    Trigger,
};
use crate::lock::PassGuard;
use crate::univapay::{ApiError, ErrorClass, Listed, Listing, MAX_PAGE_LIMIT, Page, PageQuery};

/// Pages read per store in one sweep (10,000 items): the next sweep goes on from there.
pub const MAX_PAGES_PER_STORE: u32 = 100;
/// Unknown charges verified in one sweep (two requests each at most); the rest wait for
/// the next sweep.
pub const MAX_VERIFIED_PER_SWEEP: u64 = 1_000;

/// What a sweep did.
#[derive(Debug, Clone)]
pub struct SweepReport {
    pub sweep_id: i64,
    pub trigger: Trigger,
    pub outcome: SweepOutcome,
    /// Why the sweep did not end `ok`, when it did not.
    pub detail: Option<String>,
    pub stores: u64,
    /// What was committed: requests, pages, items, discovered, skipped, enriched.
    pub counts: SweepCounts,
    /// Skips recorded, by reason.
    pub skipped: BTreeMap<&'static str, u64>,
    /// Listed items of other payment types (no request spent on them).
    pub other_types: u64,
    /// Listed items without a usable id.
    pub without_id: u64,
    /// Listed items seen before in the same sweep.
    pub repeats: u64,
    pub elapsed: Duration,
}

impl SweepReport {
    /// The one-line summary logged after every sweep.
    pub fn summary_line(&self) -> String {
        let c = &self.counts;
        let skipped = if self.skipped.is_empty() {
            String::new()
        } else {
            let parts: Vec<String> = self
                .skipped
                .iter()
                .map(|(r, n)| format!("{r} {n}"))
                .collect();
            format!(" ({})", parts.join(", "))
        };
        format!(
            "discovery sweep {} {}: {} stores, {} pages, {} items, {} discovered, {} skipped{skipped}, \
             {} of other payment types, {} without id, {} repeated, {} enriched, {} requests, {:.2} s",
            self.sweep_id,
            self.outcome.as_str(),
            self.stores,
            c.pages,
            c.items,
            c.discovered,
            c.skipped,
            self.other_types,
            self.without_id,
            self.repeats,
            c.enriched,
            c.requests,
            self.elapsed.as_secs_f64()
        )
    }
}

/// How one store's part of a sweep ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEnd {
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
pub fn verdict(ends: &[(StoreId, StoreEnd)]) -> (SweepOutcome, Option<String>) {
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

/// One item of a page, decided.
enum ItemOutcome {
    /// Nothing to write (in the ledger already, another payment type).
    Handled,
    Register(NewDiscovered),
    Skip(Skip),
    /// After the window (a listing that ignores `to`): the next sweep's.
    Later,
    /// To be verified; still so when verification stopped before it.
    Pending,
    /// Verification stopped here; the page stops here.
    Halt(Halt),
    /// Not looked at: the sweep's verification limit is reached.
    OverLimit,
    /// Created before the window: not ours to look at.
    Ignored,
}

/// A sweep in progress.
pub(super) struct Sweep<'a> {
    rec: &'a Context,
    settings: &'a DiscoverySettings,
    pub(super) verifier: Verifier,
    pub(super) sweep_id: i64,
    now: DateTime<Utc>,
    /// Verifications left before [`MAX_VERIFIED_PER_SWEEP`].
    verify_left: u64,
    /// Requests already counted in a committed batch.
    committed_requests: u64,
    pub(super) totals: SweepCounts,
    skipped: BTreeMap<&'static str, u64>,
    other_types: u64,
    without_id: u64,
    repeats: u64,
}

/// Runs a whole sweep under the pass lock `held`.
pub(super) async fn run(
    rec: &Context,
    settings: &DiscoverySettings,
    _held: &PassGuard,
    trigger: Trigger,
    shutdown: &CancellationToken,
) -> Result<SweepReport, LedgerError> {
    let started = Instant::now();
    let now = rec.now();
    let sweep_id = rec
        .with_ledger(Open::Migrate, move |l| l.begin_sweep(trigger, now))
        .await?;
    let mut sweep = Sweep {
        rec,
        settings,
        verifier: Verifier::new(rec.client().clone(), shutdown.clone(), rec.max_pause()),
        sweep_id,
        now,
        verify_left: MAX_VERIFIED_PER_SWEEP,
        committed_requests: 0,
        totals: SweepCounts::default(),
        skipped: BTreeMap::new(),
        other_types: 0,
        without_id: 0,
        repeats: 0,
    };
    let result = sweep.stores().await;
    let ends = match result {
        Ok(ends) => ends,
        Err(e) => {
            sweep.mark_failed(&e).await;
            return Err(e);
        }
    };
    let (mut outcome, mut detail) = verdict(&ends);
    if settings.enrich && matches!(outcome, SweepOutcome::Ok | SweepOutcome::Partial) {
        let enriched = super::enrich::run(&mut sweep).await;
        match enriched {
            Ok(None) => {}
            Ok(Some(end)) => (outcome, detail) = merge_enrichment(outcome, detail, end),
            Err(e) => {
                sweep.mark_failed(&e).await;
                return Err(e);
            }
        }
    }
    sweep.flush().await?;
    let report = SweepReport {
        sweep_id,
        trigger,
        outcome,
        detail,
        stores: ends.len() as u64,
        counts: sweep.totals,
        skipped: sweep.skipped.clone(),
        other_types: sweep.other_types,
        without_id: sweep.without_id,
        repeats: sweep.repeats,
        elapsed: started.elapsed(),
    };
    let finished = rec.now();
    let (o, d, stores) = (report.outcome, report.detail.clone(), report.stores);
    rec.with_ledger(Open::Existing, move |l| {
        l.finish_sweep(sweep_id, o, stores, d.as_deref(), finished)
    })
    .await?;
    Ok(report)
}

/// Enrichment's ending folded into the sweep's outcome (`Ok` or `Partial` so far).
fn merge_enrichment(
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

impl Sweep<'_> {
    /// Every configured store in turn; an auth failure or shutdown ends the sweep.
    async fn stores(&mut self) -> Result<Vec<(StoreId, StoreEnd)>, LedgerError> {
        let mut ends = Vec::new();
        for store in &self.settings.stores {
            let end = self.store(store).await?;
            if end != StoreEnd::Complete {
                tracing::info!(store = %store, end = ?end, "discovery left part of a store for the next sweep");
            }
            let stop = matches!(end, StoreEnd::Auth(_) | StoreEnd::Interrupted);
            ends.push((store.clone(), end));
            if stop {
                break;
            }
        }
        Ok(ends)
    }

    /// One store's listing, page by page, from its watermark.
    async fn store(&mut self, store: &StoreId) -> Result<StoreEnd, LedgerError> {
        let s = store.clone();
        let watermark = self
            .rec
            .with_ledger(Open::Existing, move |l| l.watermark(&s))
            .await?;
        let Some((from, to)) = rules::window(self.now, self.settings.lookback, watermark) else {
            return Ok(StoreEnd::Complete);
        };
        let mut mark = Mark::new(from, to);
        let mut listing = Listing::KonbiniHistory;
        let mut paging = Paging::new(MAX_PAGE_LIMIT, MAX_PAGES_PER_STORE);
        let mut cursor = None;
        loop {
            let q = PageQuery {
                from,
                to,
                cursor: cursor.clone(),
                limit: MAX_PAGE_LIMIT,
            };
            let page = match self.page(store, listing, &q).await {
                Some(Ok(p)) => p,
                Some(Err(e)) if cursor.is_none() && history_unavailable(listing, &e) => {
                    tracing::info!(store = %store, error = %e, "transaction history unavailable; discovery reads the charge list instead");
                    listing = Listing::Charges;
                    continue;
                }
                Some(Err(e)) => return self.end_on_page_failure(Some(e)).await,
                None => return self.end_on_page_failure(None).await,
            };
            let fresh = match paging.admit(&page) {
                Ok(f) => f,
                Err(broken) => return self.end_broken(store, listing, broken).await,
            };
            let next = paging.next(&page, &fresh);
            let (batch, stop) = self
                .handle_page(store, listing, &page, &fresh, &mut mark, &next)
                .await?;
            self.commit(batch, store, mark.at).await?;
            if let Some(end) = stop {
                return Ok(end);
            }
            match next {
                Next::More(c) => cursor = Some(c),
                Next::Done => return Ok(StoreEnd::Complete),
                Next::Stop(broken) => return Ok(self.broken(store, listing, broken)),
                Next::PageLimit => {
                    return Ok(StoreEnd::Partial(format!(
                        "{MAX_PAGES_PER_STORE} pages read; the next sweep goes on"
                    )));
                }
            }
        }
    }

    /// One page request. `None` on shutdown.
    async fn page(
        &self,
        store: &StoreId,
        listing: Listing,
        q: &PageQuery,
    ) -> Option<Result<Page, ApiError>> {
        let client = self.verifier.client();
        self.verifier
            .request(async |t| client.list_page(t, store, listing, q).await)
            .await
    }

    async fn end_on_page_failure(
        &mut self,
        failed: Option<ApiError>,
    ) -> Result<StoreEnd, LedgerError> {
        self.flush().await?;
        let Some(e) = failed else {
            return Ok(StoreEnd::Interrupted);
        };
        Ok(match e.class() {
            ErrorClass::Auth => StoreEnd::Auth(e.to_string()),
            _ if e.is_unreachable() => StoreEnd::Unreachable(e.to_string()),
            _ => StoreEnd::Partial(format!("listing failed: {e}")),
        })
    }

    async fn end_broken(
        &mut self,
        store: &StoreId,
        listing: Listing,
        broken: Broken,
    ) -> Result<StoreEnd, LedgerError> {
        self.flush().await?;
        Ok(self.broken(store, listing, broken))
    }

    fn broken(&self, store: &StoreId, listing: Listing, broken: Broken) -> StoreEnd {
        tracing::warn!(store = %store, listing = listing.as_str(), "discovery gave up on a misbehaving listing: {broken}");
        StoreEnd::Partial(format!("{}: {broken}", listing.as_str()))
    }

    /// Decides every fresh item of a page, verifying the candidates, and builds the
    /// page's batch. The second value ends the store's part of the sweep.
    async fn handle_page(
        &mut self,
        store: &StoreId,
        listing: Listing,
        page: &Page,
        fresh: &Fresh,
        mark: &mut Mark,
        next: &Next,
    ) -> Result<(DiscoveryBatch, Option<StoreEnd>), LedgerError> {
        self.without_id += fresh.without_id;
        self.repeats += fresh.repeats;
        let ids: Vec<_> = fresh
            .items
            .iter()
            .filter_map(|i| i.charge_id.clone())
            .collect();
        let known = self
            .rec
            .with_ledger(Open::Existing, move |l| l.known_charges(&ids))
            .await?;
        let mut outcomes: Vec<ItemOutcome> = Vec::with_capacity(fresh.items.len());
        let mut candidates = Vec::new();
        for (i, item) in fresh.items.iter().enumerate() {
            let outcome = self.decide(store, listing, item, &known, mark);
            if matches!(outcome, ItemOutcome::Pending) {
                candidates.push(i);
            }
            outcomes.push(outcome);
        }
        self.verify_all(
            store,
            listing,
            fresh,
            &candidates,
            mark.from(),
            &mut outcomes,
        )
        .await;
        Ok(self.fold(store, page, fresh, outcomes, mark, next))
    }

    /// What a listed item needs, before any request: nothing, a skip record, or a
    /// verification (`Pending`, within the sweep's verification limit).
    fn decide(
        &mut self,
        store: &StoreId,
        listing: Listing,
        item: &Listed,
        known: &HashSet<ChargeId>,
        mark: &Mark,
    ) -> ItemOutcome {
        // Fresh items all have ids; one without would simply not be looked at.
        let Some(id) = &item.charge_id else {
            return ItemOutcome::Ignored;
        };
        match rules::placement(item.created_on, mark.from(), mark.to()) {
            Placement::Before => return ItemOutcome::Ignored,
            Placement::After => return ItemOutcome::Later,
            Placement::Inside if known.contains(id) => return ItemOutcome::Handled,
            Placement::Inside => {}
        }
        match rules::item_verdict(item) {
            ItemVerdict::NotKonbini => {
                self.other_types += 1;
                ItemOutcome::Handled
            }
            ItemVerdict::UnknownType(w) => ItemOutcome::Skip(Skip {
                charge_id: id.clone(),
                store_id: store.clone(),
                reason: SkipReason::UnknownPaymentType,
                detail: format!(
                    "{} payment_type {:?}",
                    listing.as_str(),
                    w.chars().take(32).collect::<String>()
                ),
            }),
            ItemVerdict::Candidate if self.verify_left == 0 => ItemOutcome::OverLimit,
            ItemVerdict::Candidate => {
                self.verify_left -= 1;
                ItemOutcome::Pending
            }
        }
    }

    /// Verifies the candidates, `api.concurrency` at a time, in listing order; after the
    /// first one that halts, the rest are not asked about (they stay `Pending`).
    async fn verify_all(
        &self,
        store: &StoreId,
        listing: Listing,
        fresh: &Fresh,
        candidates: &[usize],
        from: DateTime<Utc>,
        outcomes: &mut [ItemOutcome],
    ) {
        let concurrency = self.rec.settings().api.concurrency;
        let verifier = &self.verifier;
        let mut results = futures::stream::iter(candidates.iter().copied())
            .map(|i| async move {
                let r = verifier
                    .verify(store, &fresh.items[i], Source::Listing(listing), Some(from))
                    .await;
                (i, r)
            })
            .buffered(concurrency);
        while let Some((i, r)) = results.next().await {
            let halts = match r {
                Ok(d) => {
                    outcomes[i] = ItemOutcome::Register(d);
                    false
                }
                Err(Halt::Skip(reason, detail)) => {
                    if let Some(id) = &fresh.items[i].charge_id {
                        outcomes[i] = ItemOutcome::Skip(Skip {
                            charge_id: id.clone(),
                            store_id: store.clone(),
                            reason,
                            detail,
                        });
                    }
                    false
                }
                Err(h) => {
                    outcomes[i] = ItemOutcome::Halt(h);
                    true
                }
            };
            if halts {
                break;
            }
        }
    }

    /// The page's batch, in listing order up to the first item that stops it; the mark
    /// follows.
    fn fold(
        &mut self,
        store: &StoreId,
        page: &Page,
        fresh: &Fresh,
        outcomes: Vec<ItemOutcome>,
        mark: &mut Mark,
        next: &Next,
    ) -> (DiscoveryBatch, Option<StoreEnd>) {
        let mut batch = DiscoveryBatch {
            sweep_id: Some(self.sweep_id),
            counts: SweepCounts {
                pages: 1,
                items: page.items.len() as u64,
                ..SweepCounts::default()
            },
            ..DiscoveryBatch::default()
        };
        let mut stop = None;
        for (item, outcome) in fresh.items.iter().zip(outcomes) {
            match outcome {
                // Before the window, or after it (a listing that ignores `from`/`to`); a
                // pending item comes only after a halt, which has ended the loop.
                ItemOutcome::Ignored | ItemOutcome::Later | ItemOutcome::Pending => {}
                ItemOutcome::Handled => mark.handled(item.created_on),
                ItemOutcome::Register(d) => {
                    batch.found.push(d);
                    mark.handled(item.created_on);
                }
                ItemOutcome::Skip(s) => {
                    *self.skipped.entry(s.reason.as_str()).or_default() += 1;
                    batch.skipped.push(s);
                    mark.handled(item.created_on);
                }
                ItemOutcome::OverLimit => {
                    mark.stop_before(item.created_on);
                    stop = Some(StoreEnd::Partial(format!(
                        "{MAX_VERIFIED_PER_SWEEP} charges verified; the next sweep goes on"
                    )));
                    break;
                }
                ItemOutcome::Halt(h) => {
                    mark.stop_before(item.created_on);
                    stop = Some(self.halted(store, item, h, &mut batch));
                    break;
                }
            }
        }
        if stop.is_none() && *next == Next::Done {
            mark.complete();
        }
        (batch, stop)
    }

    /// How a halt on `item` ends the store's part; a transient failure is recorded as an
    /// attempt, so that one charge cannot hold the watermark for ever.
    fn halted(
        &mut self,
        store: &StoreId,
        item: &Listed,
        h: Halt,
        batch: &mut DiscoveryBatch,
    ) -> StoreEnd {
        match h {
            Halt::Interrupted => StoreEnd::Interrupted,
            Halt::Auth(e) => StoreEnd::Auth(e.to_string()),
            Halt::Retry(e) => {
                if let Some(id) = &item.charge_id {
                    batch.skipped.push(Skip {
                        charge_id: id.clone(),
                        store_id: store.clone(),
                        reason: SkipReason::Retrying,
                        detail: e.to_string(),
                    });
                }
                StoreEnd::Partial(format!("verifying a charge failed: {e}"))
            }
            // Skips are outcomes, never halts; should one come here, it stops the page.
            Halt::Skip(_, why) => StoreEnd::Partial(why),
        }
    }

    /// Commits a page's batch with the store's watermark and the requests sent since the
    /// last commit.
    async fn commit(
        &mut self,
        mut batch: DiscoveryBatch,
        store: &StoreId,
        mark: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        batch.watermark = Some((store.clone(), mark));
        self.write(batch).await
    }

    /// Commits the requests not yet counted (those of a page that failed).
    pub(super) async fn flush(&mut self) -> Result<(), LedgerError> {
        if self.verifier.requests() == self.committed_requests {
            return Ok(());
        }
        self.write(DiscoveryBatch {
            sweep_id: Some(self.sweep_id),
            ..DiscoveryBatch::default()
        })
        .await
    }

    /// Writes `batch` with the requests made since the last write counted in it.
    async fn write(&mut self, mut batch: DiscoveryBatch) -> Result<(), LedgerError> {
        let requests = self.verifier.requests();
        batch.counts.requests = requests - self.committed_requests;
        let now = self.rec.now();
        let added = self
            .rec
            .with_ledger(Open::Existing, move |mut l| l.commit_discovery(&batch, now))
            .await?;
        self.committed_requests = requests;
        self.totals += added;
        Ok(())
    }

    pub(super) fn rec(&self) -> &Context {
        self.rec
    }

    /// Best effort after the ledger failed: the sweep's row says so.
    async fn mark_failed(&self, cause: &LedgerError) {
        let (id, detail, now) = (self.sweep_id, cause.to_string(), self.rec.now());
        let written = self
            .rec
            .with_ledger(Open::Existing, move |l| {
                l.finish_sweep(id, SweepOutcome::Failed, 0, Some(&detail), now)
            })
            .await;
        if let Err(e) = written {
            tracing::debug!(sweep_id = id, error = %e, "could not mark the sweep failed");
        }
    }
}

/// The history route is not there for these credentials (404, or refused with another
/// 4xx): the charge list stands in for it.
fn history_unavailable(listing: Listing, e: &ApiError) -> bool {
    listing == Listing::KonbiniHistory
        && matches!(e.class(), ErrorClass::NotFound | ErrorClass::Rejected)
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
