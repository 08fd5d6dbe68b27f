//! One sweep: every configured store's listing read page by page from its watermark, each
//! page's unknown konbini charges verified and registered, the page committed with the
//! store's new watermark; then, when asked, enrichment. See the module doc of
//! [`crate::discovery`] for the design.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::notice::{self, Notice};
use super::outcome::{StoreEnd, merge_enrichment, verdict};
use super::payment::{ItemVerdict, item_verdict};
use super::verify::{Halt, Source, Verifier};
use super::window::{self, Broken, Fresh, Mark, Next, Paging, Placement};
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
pub(crate) const MAX_PAGES_PER_STORE: u32 = 100;
/// Unknown charges verified in one sweep (two requests each at most); the rest wait for
/// the next sweep.
pub const MAX_VERIFIED_PER_SWEEP: u64 = 1_000;

/// What a sweep did.
#[derive(Debug, Clone)]
pub struct SweepReport {
    pub(crate) sweep_id: i64,
    pub outcome: SweepOutcome,
    /// Why the sweep did not end `ok`, when it did not.
    pub detail: Option<String>,
    pub stores: u64,
    /// What was committed: requests, pages, items, discovered, skipped, enriched.
    pub counts: SweepCounts,
    /// Skips recorded, by reason.
    pub skipped: BTreeMap<&'static str, u64>,
    /// Listed items of other payment types (no request spent on them).
    pub(crate) other_types: u64,
    /// Listed items without a usable id.
    pub without_id: u64,
    /// Listed items seen before in the same sweep.
    pub repeats: u64,
    pub(crate) elapsed: Duration,
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

/// How reading one listing ended.
enum Read {
    End(StoreEnd),
    /// The transaction history is not to be used for this store in this sweep: refused
    /// on its first page (404 or another 4xx), or read to its end without a single row
    /// that names a charge while the charge list has charges the ledger lacks (rows
    /// shaped otherwise than the sweep expects, or a filter UnivaPay reads otherwise, must
    /// not make discovery find nothing in silence). The charge list is read instead.
    FallBack,
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
struct Sweep<'a> {
    rec: &'a Context,
    settings: &'a DiscoverySettings,
    verifier: Verifier,
    sweep_id: i64,
    now: DateTime<Utc>,
    /// Verifications left before [`MAX_VERIFIED_PER_SWEEP`].
    verify_left: u64,
    /// Requests already counted in a committed batch.
    committed_requests: u64,
    totals: SweepCounts,
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
        let enriched = super::enrich::run(rec, &sweep.verifier, sweep_id).await;
        match enriched {
            Ok(None) => {}
            Ok(Some(e)) => {
                sweep.totals.enriched += e.filled;
                (outcome, detail) = merge_enrichment(outcome, detail, e.end);
            }
            Err(e) => {
                sweep.mark_failed(&e).await;
                return Err(e);
            }
        }
    }
    sweep.flush().await?;
    let report = SweepReport {
        sweep_id,
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

    /// One store's part: its transaction history from the watermark, or its charge list
    /// when the history is refused or yields nothing usable (see [`Read::FallBack`]).
    async fn store(&mut self, store: &StoreId) -> Result<StoreEnd, LedgerError> {
        let s = store.clone();
        let watermark = self
            .rec
            .with_ledger(Open::Existing, move |l| l.watermark(&s))
            .await?;
        let Some((from, to)) = window::window(
            self.now,
            self.settings.lookback,
            self.settings.overlap,
            watermark,
        ) else {
            return Ok(StoreEnd::Complete);
        };
        match self.read(store, Listing::KonbiniHistory, from, to).await? {
            Read::End(end) => Ok(end),
            Read::FallBack => match self.read(store, Listing::Charges, from, to).await? {
                Read::End(end) => Ok(end),
                // The charge list never falls back; should it, nothing more is read.
                Read::FallBack => Ok(StoreEnd::Partial("charge list unusable".into())),
            },
        }
    }

    /// One listing of one store, page by page, each page committed with the watermark.
    async fn read(
        &mut self,
        store: &StoreId,
        listing: Listing,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Read, LedgerError> {
        let mut mark = Mark::new(from, to);
        let mut paging = Paging::new(MAX_PAGE_LIMIT, MAX_PAGES_PER_STORE);
        let mut cursor = None;
        let mut with_ids = 0u64;
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
                    tracing::info!(store = %store, "{}; discovery reads the charge list instead", listing_failure(listing, store, &e));
                    return Ok(Read::FallBack);
                }
                failed => {
                    return Ok(Read::End(
                        self.end_on_page_failure(store, listing, failed).await?,
                    ));
                }
            };
            let fresh = match paging.admit(&page) {
                Ok(f) => f,
                Err(broken) => {
                    return Ok(Read::End(self.end_broken(store, listing, broken).await?));
                }
            };
            with_ids += fresh.items.len() as u64 + fresh.repeats;
            self.see_order(store, listing, &mut mark, &fresh);
            let next = paging.next(&page, &fresh);
            if listing == Listing::KonbiniHistory
                && with_ids == 0
                && !matches!(next, Next::More(_))
                && self.falls_back(store, &page, &fresh, (from, to)).await?
            {
                return Ok(Read::FallBack);
            }
            let (batch, stop) = self
                .handle_page(store, listing, &page, &fresh, &mut mark, &next)
                .await?;
            self.commit(batch, store, mark.at()).await?;
            if let Some(end) = stop {
                return Ok(Read::End(end));
            }
            match next {
                Next::More(c) => cursor = Some(c),
                Next::Done => return Ok(Read::End(StoreEnd::Complete)),
                Next::Stop(broken) => return Ok(Read::End(self.broken(store, listing, broken))),
                Next::PageLimit => {
                    return Ok(Read::End(StoreEnd::Partial(format!(
                        "{MAX_PAGES_PER_STORE} pages read; the next sweep goes on"
                    ))));
                }
            }
        }
    }

    /// The history ended (to its end, or given up as repeating itself) without a row
    /// naming a charge, its last page being `page`: whether the charge list is to be read
    /// instead. If so, that page is counted and the fallback reported.
    async fn falls_back(
        &mut self,
        store: &StoreId,
        page: &Page,
        fresh: &Fresh,
        (from, to): (DateTime<Utc>, DateTime<Utc>),
    ) -> Result<bool, LedgerError> {
        if !self.charge_list_has_unknown(store, from, to).await? {
            return Ok(false);
        }
        self.fell_back(store, page.items.len());
        self.without_id += fresh.without_id;
        self.write(DiscoveryBatch {
            sweep_id: Some(self.sweep_id),
            counts: SweepCounts {
                pages: 1,
                items: page.items.len() as u64,
                ..SweepCounts::default()
            },
            ..DiscoveryBatch::default()
        })
        .await?;
        Ok(true)
    }

    /// Whether the first page of the store's charge list in the window holds a charge the
    /// ledger does not know (one request). A failure counts as no: the history stands.
    async fn charge_list_has_unknown(
        &self,
        store: &StoreId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<bool, LedgerError> {
        let q = PageQuery {
            from,
            to,
            cursor: None,
            limit: MAX_PAGE_LIMIT,
        };
        let page = match self.page(store, Listing::Charges, &q).await {
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                tracing::debug!(store = %store, error = %e, "charge list not read to check an empty history");
                return Ok(false);
            }
            None => return Ok(false),
        };
        let ids: Vec<ChargeId> = page
            .items
            .iter()
            .filter_map(|i| i.charge_id.clone())
            .collect();
        let listed = ids.len();
        let known = self
            .rec
            .with_ledger(Open::Existing, move |l| l.known_charges(&ids))
            .await?;
        Ok(known.len() < listed)
    }

    /// The history answered without a usable row while the charge list has charges the
    /// ledger lacks: counted for the metrics, and said once per store per process.
    fn fell_back(&self, store: &StoreId, rows: usize) {
        notice::count_fallback(store);
        if notice::first(Notice::HistoryUnusable, store) {
            tracing::warn!(
                store = %store,
                rows,
                "the transaction history of store {store} answered with no usable row (no \
                 charge_id or resource_id) while its charge list has charges the ledger lacks: \
                 discovery reads the charge list instead (a token request per unknown charge); \
                 said once per process, counted in konbini_discovery_history_fallbacks_total"
            );
        } else {
            tracing::debug!(store = %store, rows, "transaction history unusable; charge list read instead");
        }
    }

    /// Checks a page's new items for creation order; the first time a store's listing is
    /// found out of order in this process, says so.
    fn see_order(&self, store: &StoreId, listing: Listing, mark: &mut Mark, fresh: &Fresh) {
        let was = mark.in_order();
        mark.see(&fresh.items);
        if was && !mark.in_order() && notice::first(Notice::OutOfOrder, store) {
            tracing::warn!(
                store = %store,
                listing = listing.as_str(),
                "the {} is not served oldest first (cursor_direction=asc ignored?): discovery \
                 moves this store's watermark only when a sweep reads it to its end",
                listing.as_str()
            );
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

    /// How a page request that did not answer with a page ends the store's part
    /// (`None`: shutdown).
    async fn end_on_page_failure(
        &mut self,
        store: &StoreId,
        listing: Listing,
        failed: Option<Result<Page, ApiError>>,
    ) -> Result<StoreEnd, LedgerError> {
        self.flush().await?;
        let e = match failed {
            Some(Err(e)) => e,
            // A page is never a failure; shutdown is.
            Some(Ok(_)) | None => return Ok(StoreEnd::Interrupted),
        };
        Ok(match e.class() {
            ErrorClass::Auth => StoreEnd::Auth(e.to_string()),
            _ if e.is_unreachable() => StoreEnd::Unreachable(e.to_string()),
            _ => StoreEnd::Partial(listing_failure(listing, store, &e)),
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
        match window::placement(item.created_on, mark.from(), mark.to()) {
            Placement::Before => return ItemOutcome::Ignored,
            Placement::After => return ItemOutcome::Later,
            Placement::Inside if known.contains(id) => return ItemOutcome::Handled,
            Placement::Inside => {}
        }
        match item_verdict(item) {
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
    async fn flush(&mut self) -> Result<(), LedgerError> {
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

/// What a listing request's failure means, naming the listing: a 404 there is the
/// route (or the store) not found, never a charge.
fn listing_failure(listing: Listing, store: &StoreId, e: &ApiError) -> String {
    match e.class() {
        ErrorClass::NotFound => format!(
            "the {} of store {store} was not found at UnivaPay (404): a wrong store id or \
             api.base_url, or credentials without it",
            listing.as_str()
        ),
        _ => format!("{} failed: {e}", listing.as_str()),
    }
}

/// The history route is not there for these credentials (404, or refused with another
/// 4xx): the charge list stands in for it.
fn history_unavailable(listing: Listing, e: &ApiError) -> bool {
    listing == Listing::KonbiniHistory
        && matches!(e.class(), ErrorClass::NotFound | ErrorClass::Rejected)
}
