//! The Prometheus figures: what the ledger holds, how the last pass went, and what the
//! UnivaPay client has done, in the Prometheus text exposition format (version 0.0.4, the
//! one node_exporter's textfile collector reads).
//!
//! A [`Snapshot`] is gathered from the ledger and the client; [`render`] turns it into the
//! text. The same text goes to the `[metrics] textfile` after every pass (`after_pass`,
//! written atomically: a temporary file in the same directory, then a rename) and to
//! `GET /metrics` (`Cache`). Rendering builds a fresh registry of the `prometheus`
//! crate each time, so the figures are always the snapshot's, never leftovers of an
//! earlier one.
//!
//! `/metrics` never reads the ledger itself: one task gathers the figures every
//! `REFRESH_EVERY` into a `Cache`, and a scrape is handed the cached text (a
//! reference count, no copy), so any number of scrapers costs the ledger nothing and
//! each scrape a bounded, small amount of work. The figures are therefore up to
//! `REFRESH_EVERY` old; `konbini_metrics_gathered_timestamp_seconds` says when they
//! were gathered, and `konbini_metrics_refreshes_total{result}` counts the gatherings.
//!
//! The names and their meaning are listed in docs/monitoring.md ("Metrics"). Counters
//! (`*_total`) count from the start of the process, so for `--once` they cover one pass;
//! Prometheus's `rate()`/`increase()` take the resets in their stride.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus::core::Collector;
use prometheus::{Counter, Gauge, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::config::Settings;
use crate::domain::State;
use crate::ledger::{Database, Ledger, LedgerError, Open, Overview};
use crate::univapay::{Client, ClientStats, RequestResult};

/// The `runs.outcome` values a finished pass can have, each a `konbini_last_pass_outcome`
/// series (1 for the last pass's, 0 for the others), so an alert can name one.
const OUTCOMES: [&str; 7] = [
    "ok",
    "interrupted",
    "auth_failed",
    "unreachable",
    "failed",
    "rate_limited",
    "not_found_wall",
];

/// Everything the metrics report, taken at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub overview: Overview,
    pub api: ClientStats,
    /// `api.budget_share` as configured.
    pub budget_share: f64,
    pub taken_at: DateTime<Utc>,
    /// Per delivery endpoint: pending, oldest pending, delivered and failed.
    pub deliveries: Vec<crate::ledger::EndpointBacklog>,
}

impl Snapshot {
    /// Reads the ledger's overview (blocking) and copies the client's counters.
    pub(crate) fn gather(
        ledger: &Ledger,
        api: ClientStats,
        budget_share: f64,
        now: DateTime<Utc>,
    ) -> Result<Snapshot, LedgerError> {
        Ok(Snapshot {
            overview: ledger.overview(now)?,
            api,
            budget_share,
            taken_at: now,
            deliveries: ledger.delivery_backlog()?,
        })
    }

    /// [`gather`](Self::gather) from async code, on the blocking pool, from `db` (already
    /// migrated by whoever runs passes).
    pub(crate) async fn take(
        db: &Database,
        settings: &Settings,
        client: &Client,
    ) -> Result<Snapshot, LedgerError> {
        let api = client.stats();
        let share = settings.api.budget_share;
        db.with_ledger(Open::Existing, move |l| {
            Snapshot::gather(&l, api, share, Utc::now())
        })
        .await
    }

    /// Requests of the last pass per second over UnivaPay's announced route refill per
    /// second: how much of the whole budget the last pass used. `None` until a pass has
    /// recorded its requests and UnivaPay has announced a rate.
    pub fn budget_share_used(&self) -> Option<f64> {
        let pass = self.overview.last_pass.as_ref()?;
        let seconds = pass.duration()?.as_secs_f64();
        let per_sec = self.api.per_minute_route? as f64 / 60.0;
        (pass.requests > 0 && seconds > 0.0 && per_sec > 0.0)
            .then(|| pass.requests as f64 / seconds / per_sec)
    }
}

/// The snapshot in the Prometheus text format.
pub fn render(s: &Snapshot) -> String {
    let registry = Registry::new();
    let add = |c: Box<dyn Collector>| {
        // Every name below is fixed and distinct, so this cannot fail; if it ever did,
        // one family would be missing rather than the whole text.
        if let Err(e) = registry.register(c) {
            tracing::warn!(error = %e, "metric not rendered");
        }
    };
    add(ledger_ok(true));
    add(ledger_figures(&s.overview));
    add(last_pass(&s.overview));
    add(api_figures(&s.api));
    add(budget(s));
    add(discovery_figures(&crate::discovery::history_fallbacks()));
    add(crate::delivery::metrics::figures(
        &s.deliveries,
        &crate::delivery::metrics::endpoints_down(),
        s.taken_at,
    ));
    add(pruned_figures(&crate::jobs::prune::pruned_totals()));
    add(archived_figure(crate::jobs::prune::archived_total()));
    let mut text = String::new();
    if let Err(e) = prometheus::TextEncoder::new().encode_utf8(&registry.gather(), &mut text) {
        tracing::warn!(error = %e, "metrics not rendered");
    }
    text
}

/// What the metrics say when the ledger cannot be read (gone, replaced, corrupt, locked):
/// `konbini_ledger_ok 0` alone, so an alert fires on it rather than on stale figures.
pub(crate) fn render_unreadable() -> String {
    let registry = Registry::new();
    let mut text = String::new();
    let encoded = registry
        .register(ledger_ok(false))
        .map_err(|e| e.to_string())
        .and_then(|()| {
            prometheus::TextEncoder::new()
                .encode_utf8(&registry.gather(), &mut text)
                .map_err(|e| e.to_string())
        });
    if let Err(e) = encoded {
        tracing::warn!(error = %e, "metrics not rendered");
    }
    text
}

fn ledger_ok(ok: bool) -> Box<dyn Collector> {
    int_gauge(
        "konbini_ledger_ok",
        "1 when the ledger could be read (present, intact, still the ledger this process opened), else 0",
        u64::from(ok),
    )
}

/// A set of metrics gathered as one collector, so each group is built in one place.
struct Group(Vec<Box<dyn Collector>>);

impl Collector for Group {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.iter().flat_map(|c| c.desc()).collect()
    }
    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.0.iter().flat_map(|c| c.collect()).collect()
    }
}

fn int_gauge(name: &str, help: &str, v: u64) -> Box<dyn Collector> {
    let g = IntGauge::new(name, help).expect("valid metric name");
    g.set(i64::try_from(v).unwrap_or(i64::MAX));
    Box::new(g)
}

fn gauge(name: &str, help: &str, v: f64) -> Box<dyn Collector> {
    let g = Gauge::new(name, help).expect("valid metric name");
    g.set(v);
    Box::new(g)
}

fn ledger_figures(o: &Overview) -> Box<dyn Collector> {
    let f = &o.figures;
    let charges = IntGaugeVec::new(
        Opts::new("konbini_charges", "Charges in the ledger, by state."),
        &["state"],
    )
    .expect("valid metric");
    let amounts = IntGaugeVec::new(
        Opts::new(
            "konbini_charges_requested_amount",
            "Sum of requested_amount (minor units) of the charges in each state, by currency.",
        ),
        &["state", "currency"],
    )
    .expect("valid metric");
    for state in State::ALL {
        charges
            .with_label_values(&[state.as_str()])
            .set(f.count(state) as i64);
    }
    for t in &f.by_state {
        amounts
            .with_label_values(&[t.state.as_str(), t.currency.as_str()])
            .set(t.requested_amount);
    }
    Box::new(Group(vec![
        Box::new(charges),
        Box::new(amounts),
        int_gauge(
            "konbini_mismatches",
            "Charges flagged with an amount mismatch (the flag is sticky).",
            f.mismatches,
        ),
        int_gauge(
            "konbini_unchecked",
            "Open charges no longer checked (given up after repeated 404s).",
            f.unchecked,
        ),
        int_gauge(
            "konbini_due",
            "Charges due for a check now (the backlog).",
            f.due,
        ),
        int_gauge(
            "konbini_open_past_expiry",
            "Open charges whose expires_at has passed.",
            f.open_past_expiry,
        ),
        int_gauge(
            "konbini_open_with_errors",
            "Open charges whose last check failed.",
            f.open_with_errors,
        ),
    ]))
}

fn last_pass(o: &Overview) -> Box<dyn Collector> {
    let Some(pass) = &o.last_pass else {
        return Box::new(Group(Vec::new()));
    };
    let mut group: Vec<Box<dyn Collector>> = Vec::new();
    if let Some(at) = pass
        .finished_at
        .as_deref()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
    {
        group.push(gauge(
            "konbini_last_pass_timestamp_seconds",
            "When the last pass (--once or scheduled) finished, in Unix time.",
            at.timestamp_millis() as f64 / 1000.0,
        ));
    }
    if let Some(d) = pass.duration() {
        group.push(gauge(
            "konbini_pass_duration_seconds",
            "How long the last pass took.",
            d.as_secs_f64(),
        ));
    }
    let outcome = IntGaugeVec::new(
        Opts::new(
            "konbini_last_pass_outcome",
            "1 for the outcome of the last pass (runs.outcome), 0 for the others.",
        ),
        &["outcome"],
    )
    .expect("valid metric");
    for o in OUTCOMES {
        outcome.with_label_values(&[o]).set(0);
    }
    outcome.with_label_values(&[pass.outcome.as_str()]).set(1);
    group.push(Box::new(outcome));
    let count = |v: i64| u64::try_from(v).unwrap_or(0);
    group.push(int_gauge(
        "konbini_last_pass_checked",
        "Charges the last pass checked.",
        count(pass.checked),
    ));
    group.push(int_gauge(
        "konbini_last_pass_transitions",
        "State changes in the last pass.",
        count(pass.transitions),
    ));
    group.push(int_gauge(
        "konbini_last_pass_new_mismatches",
        "Amount mismatches first flagged by the last pass.",
        count(pass.mismatches),
    ));
    group.push(int_gauge(
        "konbini_last_pass_errors",
        "Checks of the last pass that failed.",
        count(pass.errors),
    ));
    if let Some(due) = pass.due {
        group.push(int_gauge(
            "konbini_last_pass_due",
            "Charges that were due when the last pass began.",
            count(due),
        ));
    }
    Box::new(Group(group))
}

fn api_figures(a: &ClientStats) -> Box<dyn Collector> {
    let requests = IntCounterVec::new(
        Opts::new(
            "konbini_api_requests_total",
            "UnivaPay charge GETs by result (ok, not_found, rate_limited (429), server_error, \
             transport, auth, malformed, rejected), since the process started.",
        ),
        &["result"],
    )
    .expect("valid metric");
    for r in RequestResult::ALL {
        requests
            .with_label_values(&[r.as_str()])
            .inc_by(a.requests(r));
    }
    let waits = prometheus::IntCounter::new(
        "konbini_pacer_waits_total",
        "Requests that waited for the rate-limit budget, since the process started.",
    )
    .expect("valid metric");
    waits.inc_by(a.pacer_waits);
    let waited = Counter::new(
        "konbini_pacer_wait_seconds_total",
        "Time requests spent waiting for the rate-limit budget, added up.",
    )
    .expect("valid metric");
    waited.inc_by(a.pacer_wait.as_secs_f64());
    let mut group: Vec<Box<dyn Collector>> =
        vec![Box::new(requests), Box::new(waits), Box::new(waited)];
    if let Some(n) = a.remaining_route {
        group.push(int_gauge(
            "konbini_rate_limit_remaining",
            "Requests left in UnivaPay's route bucket, as its last answer said.",
            n,
        ));
    }
    if let Some(n) = a.per_minute_route {
        group.push(int_gauge(
            "konbini_rate_limit_per_minute",
            "UnivaPay's announced route refill, requests per minute.",
            n,
        ));
    }
    Box::new(Group(group))
}

/// `(store, count)` pairs from [`crate::discovery::history_fallbacks`]; no series until
/// a store's first fallback.
fn discovery_figures(fallbacks: &[(String, u64)]) -> Box<dyn Collector> {
    let c = IntCounterVec::new(
        Opts::new(
            "konbini_discovery_history_fallbacks_total",
            "Sweeps of a store that read its charge list because its transaction history \
             answered without a usable row, since the process started.",
        ),
        &["store"],
    )
    .expect("valid metric");
    for (store, n) in fallbacks {
        c.with_label_values(&[store.as_str()]).inc_by(*n);
    }
    Box::new(c)
}

/// `(table, rows)` pairs from [`crate::jobs::prune::pruned_totals`].
fn pruned_figures(totals: &[(&str, u64)]) -> Box<dyn Collector> {
    let c = IntCounterVec::new(
        Opts::new(
            "konbini_pruned_rows_total",
            "Rows deleted by [retention], per table, since the process started.",
        ),
        &["table"],
    )
    .expect("valid metric");
    for (table, n) in totals {
        c.with_label_values(&[*table]).inc_by(*n);
    }
    Box::new(c)
}

/// The count from [`crate::jobs::prune::archived_total`].
fn archived_figure(total: u64) -> Box<dyn Collector> {
    let c = prometheus::IntCounter::new(
        "konbini_archived_charges_total",
        "Charges moved to the archive by [retention] archive, since the process started.",
    )
    .expect("valid metric");
    c.inc_by(total);
    Box::new(c)
}

fn budget(s: &Snapshot) -> Box<dyn Collector> {
    let mut group = vec![gauge(
        "konbini_budget_share",
        "Share of UnivaPay's route budget this program may use (api.budget_share).",
        s.budget_share,
    )];
    if let Some(used) = s.budget_share_used() {
        group.push(gauge(
            "konbini_budget_share_used",
            "Requests per second of the last pass over UnivaPay's announced refill per second.",
            used,
        ));
    }
    Box::new(Group(group))
}

/// Replaces `path` with `text` atomically: readers (node_exporter) see the old file or the
/// new one, never half of one. The file is made readable by all (0644), whatever the
/// umask, because the collector runs as another user.
pub(crate) fn write_textfile(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"))?;
    // Not ending in .prom, so the collector never reads it half-written.
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let open = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
    };
    // A temp file left by a crashed process of the same pid is ours to replace;
    // create_new never follows a symlink planted in its place.
    let mut file = match open() {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(&tmp)?;
            open()?
        }
        other => other?,
    };
    let written = (|| {
        file.write_all(text.as_bytes())?;
        file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// How often the figures of `/metrics` are gathered from the ledger.
pub(crate) const REFRESH_EVERY: Duration = Duration::from_secs(5);

/// The latest `/metrics` text, gathered by one task ([`Cache::refresh_loop`]); a scrape
/// only takes a reference to it ([`Cache::latest`]).
#[derive(Debug, Default)]
pub(crate) struct Cache {
    text: RwLock<Option<Arc<str>>>,
    ok: AtomicU64,
    failed: AtomicU64,
}

impl Cache {
    pub(crate) fn new() -> Arc<Cache> {
        Arc::new(Cache::default())
    }

    /// The text of the last gathering; `None` before the first.
    pub(crate) fn latest(&self) -> Option<Arc<str>> {
        self.text.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Gathers once: the ledger's figures and the client's counters, rendered with the
    /// cache's own. When the ledger cannot be read, only the cache's own figures remain,
    /// so the ledger's go absent (what an alert on absent series sees) rather than stale.
    pub(crate) async fn refresh(&self, db: &Database, settings: &Settings, client: &Client) {
        let snapshot = Snapshot::take(db, settings, client).await;
        let (mut text, counter) = match snapshot {
            Ok(s) => (render(&s), &self.ok),
            Err(e) => {
                tracing::warn!(error = %e, "metrics not gathered: cannot read the ledger");
                (render_unreadable(), &self.failed)
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
        text.push_str(&self.own_figures(Utc::now()));
        *self.text.write().unwrap_or_else(|p| p.into_inner()) = Some(text.into());
    }

    fn own_figures(&self, now: DateTime<Utc>) -> String {
        let registry = Registry::new();
        let refreshes = IntCounterVec::new(
            Opts::new(
                "konbini_metrics_refreshes_total",
                "Times the /metrics figures were gathered from the ledger, by result",
            ),
            &["result"],
        )
        .expect("valid metric");
        refreshes
            .with_label_values(&["ok"])
            .inc_by(self.ok.load(Ordering::Relaxed));
        refreshes
            .with_label_values(&["failed"])
            .inc_by(self.failed.load(Ordering::Relaxed));
        let gathered = gauge(
            "konbini_metrics_gathered_timestamp_seconds",
            "When the /metrics figures were gathered (Unix time)",
            now.timestamp_millis() as f64 / 1000.0,
        );
        for c in [Box::new(refreshes) as Box<dyn Collector>, gathered] {
            if let Err(e) = registry.register(c) {
                tracing::warn!(error = %e, "metric not rendered");
            }
        }
        let mut text = String::new();
        if let Err(e) = prometheus::TextEncoder::new().encode_utf8(&registry.gather(), &mut text) {
            tracing::warn!(error = %e, "metrics not rendered");
        }
        text
    }

    /// Gathers at once and then every [`REFRESH_EVERY`] until `shutdown`.
    pub(crate) async fn refresh_loop(
        self: Arc<Self>,
        db: Database,
        settings: Arc<Settings>,
        client: Client,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut every = tokio::time::interval(REFRESH_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => self.refresh(&db, &settings, &client).await,
                () = shutdown.cancelled() => break,
            }
        }
    }
}

/// After a pass: the textfile, when `[metrics] textfile` is set. A failure is a warning
/// (the pass itself went fine), never an error.
pub(crate) async fn after_pass(db: &Database, settings: &Settings, client: &Client) {
    let Some(path) = settings.metrics.as_ref().and_then(|m| m.textfile.clone()) else {
        return;
    };
    let text = match Snapshot::take(db, settings, client).await {
        Ok(s) => render(&s),
        Err(e) => {
            tracing::warn!(error = %e, "metrics: cannot read the ledger");
            render_unreadable()
        }
    };
    let shown = path.display().to_string();
    let written = tokio::task::spawn_blocking(move || write_textfile(&path, &text)).await;
    match written {
        Ok(Ok(())) => tracing::debug!(path = %shown, "metrics written"),
        Ok(Err(e)) => tracing::warn!(path = %shown, error = %e, "cannot write metrics.textfile"),
        Err(e) => tracing::warn!(path = %shown, error = %e, "cannot write metrics.textfile"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn the_textfile_is_replaced_whole_and_readable_by_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.prom");
        write_textfile(&path, "a 1\n").unwrap();
        write_textfile(&path, "a 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a 2\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        assert_eq!(names(dir.path()), ["k.prom"], "no temporary file left");
    }

    #[test]
    fn a_planted_temp_name_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let tmp = dir
            .path()
            .join(format!(".k.prom.{}.tmp", std::process::id()));
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        let path = dir.path().join("k.prom");
        write_textfile(&path, "a 1\n").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a 1\n");
        assert_eq!(names(dir.path()), ["k.prom", "victim"]);
    }

    #[test]
    fn a_missing_directory_is_an_error_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no").join("k.prom");
        assert!(write_textfile(&path, "a 1\n").is_err());
        assert!(names(dir.path()).is_empty());
    }

    #[test]
    fn an_empty_ledger_renders_zeros_and_no_pass_figures() {
        let s = Snapshot {
            overview: Overview {
                figures: crate::ledger::Figures::default(),
                last_run: None,
                last_pass: None,
                last_failure: None,
            },
            api: ClientStats::default(),
            budget_share: 0.5,
            taken_at: Utc::now(),
            deliveries: Vec::new(),
        };
        let text = render(&s);
        for state in State::ALL {
            assert!(
                text.contains(&format!("konbini_charges{{state=\"{state}\"}} 0")),
                "{text}"
            );
        }
        assert!(text.contains("konbini_api_requests_total{result=\"ok\"} 0"));
        assert!(
            text.contains("# TYPE konbini_archived_charges_total counter"),
            "{text}"
        );
        // No pass yet: no timestamp (the "no recent pass" alert then sees it as absent).
        assert!(!text.contains("konbini_last_pass_timestamp_seconds"));
        assert!(!text.contains("konbini_rate_limit_remaining"));
        assert_eq!(s.budget_share_used(), None);
    }

    #[test]
    fn archived_charges_are_one_counter() {
        let registry = Registry::new();
        registry.register(archived_figure(3)).unwrap();
        let mut text = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&registry.gather(), &mut text)
            .unwrap();
        assert!(
            text.contains("\nkonbini_archived_charges_total 3\n"),
            "{text}"
        );
    }
}
