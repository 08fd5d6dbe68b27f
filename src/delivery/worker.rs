//! The delivery job: per endpoint, "try one step" ([`Endpoint::step`]: send what is due
//! now, record how it went, say when the next is due) and a thin loop around it
//! ([`run`] for the daemon, [`drain`] for the end of `--once`).
//!
//! Each endpoint has its own task, HTTP client and ledger connection, so a dead endpoint
//! never slows a live one. A step takes at most `concurrency` deliveries, each the oldest
//! undelivered event of a different charge: per-charge order holds because a charge's
//! next event is not even looked at until its previous one is delivered. Before sending,
//! a step claims its deliveries for a lease (`lease`); a process that dies mid-flight leaves them
//! to fall due again within that time.
//!
//! While the endpoint is down (`probe`) a step sends only its oldest pending delivery,
//! no more often than the probe interval; the probe's 2xx makes every pending delivery
//! due at once.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::probe::{self, Answer, Change, Health};
use super::retry;
use super::sender::{Sender, Sent, webhook_id};
use crate::config::Settings;
use crate::config::delivery::DeliverySettings;
use crate::ledger::{self, AttemptResult, DueDelivery, EndpointFilter, Ledger, LedgerError};

/// The longest a delivery taken for an attempt stays taken: after a crash it is due
/// again this long after it was taken at most (the contract says within a minute of the
/// next start). It is shorter for an endpoint with a short timeout ([`lease`]).
pub(crate) const LEASE: Duration = Duration::from_secs(55);

/// How long an attempt at an endpoint with `timeout` keeps its delivery taken: the
/// request cannot outlast its timeout, so a few seconds more cover the write of its
/// result; at most [`LEASE`].
pub(crate) fn lease(timeout: Duration) -> Duration {
    (timeout + Duration::from_secs(5)).min(LEASE)
}
/// How often an idle endpoint looks for new events: the latency from a committed
/// transition to its delivery is at most about this (one indexed read each time).
pub(crate) const IDLE_POLL: Duration = Duration::from_millis(200);
/// How long to wait after the ledger failed before trying again.
const LEDGER_RETRY: Duration = Duration::from_secs(5);

/// What one step did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepReport {
    pub(crate) delivered: usize,
    pub(crate) failed: usize,
    /// When the next pending delivery falls due; `None`: nothing pending.
    pub next_due: Option<DateTime<Utc>>,
}

impl StepReport {
    /// Deliveries this step sent, answered or not.
    pub fn attempted(&self) -> usize {
        self.delivered + self.failed
    }

    /// Deliveries this step ended with a 2xx.
    pub fn delivered(&self) -> usize {
        self.delivered
    }
}

/// One endpoint: its sender and its own ledger connection.
pub struct Endpoint {
    sender: Sender,
    /// The handle the connection was opened through: it knows which ledger this process
    /// opened, so a reopen makes the passes' identity check.
    database: ledger::Database,
    held: Arc<Mutex<Held>>,
    path: PathBuf,
    /// Whether the endpoint is down ([`probe`]): in memory, so a restart starts up and
    /// finds out again within [`probe::DOWN_AFTER`] attempts.
    health: Mutex<Health>,
}

/// The endpoint's connection and what a step remembers about it, behind one lock: a
/// step reads and replaces them together.
struct Held {
    ledger: Ledger,
    /// The file the connection has open, as `(device, inode)`: a path that names another
    /// file (a backup restored, or the ledger removed or renamed, under a running daemon)
    /// makes the next step reopen ([`Held::follow`]).
    file: Option<FileId>,
    /// What the last step that found nothing to send saw: the ledger's `data_version`
    /// and when the next delivery falls due. While neither has moved, a step reads
    /// nothing but that version, so an idle (or dead) endpoint costs next to nothing
    /// however large its backlog.
    idle: Option<Idle>,
    /// Counts reopens: a `data_version` read on one connection means nothing on
    /// another, so a step's view is kept only if no reopen came between its reads.
    generation: u64,
}

/// A file's `(device, inode)`.
type FileId = (u64, u64);

/// An idle step's view: the ledger's `data_version`, and when the next delivery is due.
type Idle = (i64, Option<DateTime<Utc>>);

/// What a step takes from the ledger.
enum Taken {
    /// Nothing changed since the last idle step; the next delivery is due then.
    Quiet(Option<DateTime<Utc>>),
    /// These deliveries, claimed; the ledger's `data_version` before they were read, on
    /// the connection of this generation.
    Work(Vec<DueDelivery>, i64, u64),
}

/// The `(device, inode)` of the file `path` names now; `None` when it names none.
fn file_id(path: &Path) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl Held {
    /// Keeps the connection on the file the ledger's path names. When the path names
    /// another file than the one open (or none), reopens through the identity check of
    /// every open: the same ledger (a backup of it restored) goes on from the new file;
    /// another ledger, or none, is the passes' own error ([`LedgerError::Replaced`],
    /// [`LedgerError::Vanished`]), and the old connection is left unused until the path
    /// names the right ledger again. A `stat` per step: cheap next to its queries.
    fn follow(&mut self, database: &ledger::Database) -> Result<(), LedgerError> {
        let now = file_id(database.path());
        if now.is_some() && now == self.file {
            return Ok(());
        }
        self.ledger = database.open(ledger::Open::Migrate)?;
        self.file = now;
        self.idle = None;
        self.generation += 1;
        Ok(())
    }
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("name", &self.sender.settings.name)
            .finish()
    }
}

/// Failures to set up delivery.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("delivery endpoint {name}: cannot build its HTTP client: {message}")]
    Client { name: String, message: String },
}

/// The config's endpoints as the ledger's outbox trigger reads them.
pub(crate) fn filters(settings: &Settings) -> Vec<EndpointFilter> {
    settings
        .delivery
        .iter()
        .map(|d| EndpointFilter {
            name: d.name.clone(),
            events: d.events.clone(),
        })
        .collect()
}

/// Copies the config's endpoints into the ledger, where the outbox trigger reads them.
/// Every process that writes events calls it first. A database that does not exist yet
/// is created only when `create` says so (else there is nothing to sync).
pub async fn sync(settings: &Settings, create: bool) -> Result<(), LedgerError> {
    let filters = filters(settings);
    let path = settings.database.path.clone();
    let busy = settings.database.busy_timeout;
    if !create && !path.is_file() {
        return Ok(());
    }
    ledger::blocking(&settings.database.path, move || {
        ledger::Database::new(&path, busy)
            .with_integrity(ledger::Integrity::Daily)
            .open(ledger::Open::Migrate)?
            .sync_endpoints(&filters, Utc::now())
    })
    .await
}

/// Opens one [`Endpoint`] per configured `[[delivery]]`.
pub(crate) async fn endpoints(settings: &Settings) -> Result<Vec<Endpoint>, DeliveryError> {
    let mut out = Vec::new();
    for d in &settings.delivery {
        out.push(Endpoint::open(d.clone(), settings).await?);
    }
    Ok(out)
}

impl Endpoint {
    pub async fn open(d: DeliverySettings, settings: &Settings) -> Result<Endpoint, DeliveryError> {
        let name = d.name.clone();
        let sender = Sender::new(d).map_err(|e| DeliveryError::Client {
            name,
            message: e.to_string(),
        })?;
        let path = settings.database.path.clone();
        let database = ledger::Database::new(&path, settings.database.busy_timeout)
            .with_integrity(ledger::Integrity::Daily);
        let ledger = database.with_ledger(ledger::Open::Migrate, Ok).await?;
        let held = Held {
            ledger,
            file: file_id(&path),
            idle: None,
            generation: 0,
        };
        Ok(Endpoint {
            sender,
            database,
            held: Arc::new(Mutex::new(held)),
            path,
            health: Mutex::new(Health::default()),
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.sender.settings.name
    }

    /// Runs `f` on the endpoint's connection, on the blocking pool, after making sure
    /// the connection is on the ledger's file ([`Held::follow`]).
    async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Held) -> Result<T, LedgerError> + Send + 'static,
    ) -> Result<T, LedgerError> {
        let held = self.held.clone();
        let database = self.database.clone();
        ledger::blocking(&self.path, move || {
            // A panic while holding it is already an error of its own; the connection
            // itself is still sound.
            let mut h = held.lock().unwrap_or_else(|p| p.into_inner());
            h.follow(&database)?;
            f(&mut h)
        })
        .await
    }

    fn health(&self) -> Health {
        *self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_health(&self, h: Health) {
        *self.health.lock().unwrap_or_else(|p| p.into_inner()) = h;
        super::metrics::set_down(self.name(), h.is_down());
    }

    /// Sends what is due at `now` (at most `concurrency` deliveries, of different
    /// charges, at once) and records the results. While the endpoint is down
    /// (`probe`) it sends at most one, the endpoint's oldest pending delivery, and not
    /// before the probe time.
    pub async fn step(&self, now: DateTime<Utc>) -> Result<StepReport, LedgerError> {
        let health = self.health();
        if let Health::Down { next_probe } = health
            && !health.may_send(now)
        {
            return Ok(StepReport {
                next_due: Some(next_probe),
                ..StepReport::default()
            });
        }
        let taken = if health.is_down() {
            self.take_probe(now).await?
        } else {
            self.take(now).await?
        };
        let (due, version, generation) = match taken {
            Taken::Quiet(next_due) => {
                return Ok(StepReport {
                    next_due,
                    ..StepReport::default()
                });
            }
            Taken::Work(due, version, generation) => (due, version, generation),
        };
        if due.is_empty()
            && let Health::Down { .. } = health
        {
            // Nothing to probe with: look again an interval later.
            let next_probe = after(now, probe::PROBE_INTERVAL);
            self.set_health(Health::Down { next_probe });
            return Ok(StepReport {
                next_due: Some(next_probe),
                ..StepReport::default()
            });
        }
        let sends = due.iter().map(|d| async move {
            let sent = self
                .sender
                .send(&webhook_id(d.event_id), &d.payload, now)
                .await;
            (d, sent)
        });
        let sent = futures::future::join_all(sends).await;
        let mut report = StepReport::default();
        let mut results = Vec::with_capacity(sent.len());
        let mut answers = Vec::with_capacity(sent.len());
        let mut last_error = None;
        for (d, s) in sent {
            answers.push(answer(&s));
            let result = outcome(d, s, now, rand::random::<f64>());
            match &result {
                AttemptResult::Delivered { .. } => report.delivered += 1,
                AttemptResult::Failed { error, .. } => {
                    report.failed += 1;
                    if health.is_down() {
                        tracing::debug!(endpoint = self.name(), event_id = d.event_id, error = %error, "delivery endpoint still down");
                    } else {
                        tracing::warn!(endpoint = self.name(), event_id = d.event_id, attempt = d.attempts + 1, error = %error, "delivery failed; will retry");
                    }
                    last_error = Some(error.clone());
                }
            }
            results.push((d.event_id, now, result));
        }
        let (next_health, change) = health.after(&answers, now);
        self.set_health(next_health);
        if change == Change::WentDown {
            let probe_in = match next_health {
                Health::Down { next_probe } => (next_probe - now).num_seconds(),
                Health::Up { .. } => 0,
            };
            tracing::warn!(
                endpoint = self.name(),
                error = last_error.as_deref().unwrap_or(""),
                probe_every_s = probe_in,
                "delivery endpoint is down; sending it one delivery at a time as a probe until it answers"
            );
        }
        let name = self.name().to_owned();
        let idle_now = report.attempted() == 0;
        let back = change == Change::Back;
        let probe_at = match next_health {
            Health::Down { next_probe } => Some(next_probe),
            Health::Up { .. } => None,
        };
        let (next_due, waiting) = self
            .db(move |h| {
                h.ledger.record_attempts(&name, &results)?;
                let waiting = if back {
                    Some(h.ledger.make_pending_due(&name, now)?)
                } else {
                    None
                };
                let next_due = match probe_at {
                    Some(t) => Some(t),
                    None => h
                        .ledger
                        .next_delivery_at(&name)?
                        .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                        .map(|t| t.with_timezone(&Utc)),
                };
                h.idle = (idle_now && probe_at.is_none() && h.generation == generation)
                    .then_some((version, next_due));
                Ok((next_due, waiting))
            })
            .await?;
        match change {
            Change::Back => tracing::info!(
                endpoint = self.name(),
                waiting = waiting.unwrap_or(0),
                "delivery endpoint is back; its pending deliveries are due now"
            ),
            Change::Answering => tracing::info!(
                endpoint = self.name(),
                "delivery endpoint answers again (it rejected the probe's event); pending deliveries go at their own retry times"
            ),
            Change::None | Change::WentDown => {}
        }
        report.next_due = next_due;
        Ok(report)
    }

    /// The probe of a down endpoint: its oldest pending delivery, claimed, whatever its
    /// own retry time (none when nothing is pending).
    async fn take_probe(&self, now: DateTime<Utc>) -> Result<Taken, LedgerError> {
        let name = self.name().to_owned();
        let lease = lease(self.sender.settings.timeout);
        self.db(move |h| {
            let version = h.ledger.data_version()?;
            h.idle = None;
            let due = h.ledger.claim_probe(&name, after(now, lease))?;
            Ok(Taken::Work(
                due.into_iter().collect(),
                version,
                h.generation,
            ))
        })
        .await
    }

    /// The deliveries due at `now`, claimed; or, when nothing changed since the last idle
    /// step and nothing has fallen due, [`Taken::Quiet`] without a query.
    async fn take(&self, now: DateTime<Utc>) -> Result<Taken, LedgerError> {
        let name = self.name().to_owned();
        let limit = self.sender.settings.concurrency;
        let lease = lease(self.sender.settings.timeout);
        self.db(move |h| {
            let version = h.ledger.data_version()?;
            if let Some((seen, next_due)) = h.idle
                && seen == version
                && next_due.is_none_or(|t| t > now)
            {
                return Ok(Taken::Quiet(next_due));
            }
            let l = &mut h.ledger;
            let due = l.due_deliveries(&name, now, &[], limit)?;
            let ids: Vec<i64> = due.iter().map(|d| d.event_id).collect();
            let taken = l.claim_deliveries(&name, &ids, now, after(now, lease))?;
            let due = due
                .into_iter()
                .filter(|d| taken.contains(&d.event_id))
                .collect();
            Ok(Taken::Work(due, version, h.generation))
        })
        .await
    }
}

/// What an attempt's answer says about the endpoint ([`probe`]).
fn answer(sent: &Sent) -> Answer {
    match sent {
        Sent::Accepted { status } => Answer::of(Some(*status), None),
        Sent::Refused {
            status,
            retry_after,
            ..
        } => Answer::of(*status, *retry_after),
    }
}

/// What an attempt's answer means for the delivery row: pure.
pub(crate) fn outcome(
    d: &DueDelivery,
    sent: Sent,
    now: DateTime<Utc>,
    jitter: f64,
) -> AttemptResult {
    match sent {
        Sent::Accepted { status } => AttemptResult::Delivered { status },
        Sent::Refused {
            status,
            error,
            retry_after,
        } => AttemptResult::Failed {
            status,
            error,
            retry_at: after(
                now,
                retry::delay(d.attempts.saturating_add(1), jitter, retry_after),
            ),
        },
    }
}

fn after(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// How long from `now` until `next` (zero when past), at most `cap`.
fn until(next: Option<DateTime<Utc>>, now: DateTime<Utc>, cap: Duration) -> Duration {
    next.map_or(cap, |t| {
        (t - now).to_std().unwrap_or(Duration::ZERO).min(cap)
    })
}

/// The daemon's delivery job: one task per endpoint, until `stop`. A step in flight when
/// `stop` comes is abandoned (its deliveries fall due again after their `lease`).
pub async fn run(settings: Settings, stop: CancellationToken) {
    if let Err(e) = sync(&settings, true).await {
        tracing::error!(error = %e, "cannot record the delivery endpoints; deliveries of new events may be missing");
    }
    let endpoints = match endpoints(&settings).await {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "delivery not started");
            return;
        }
    };
    let tasks: Vec<_> = endpoints
        .into_iter()
        .map(|e| tokio::spawn(run_endpoint(e, stop.clone())))
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

async fn run_endpoint(e: Endpoint, stop: CancellationToken) {
    loop {
        let now = Utc::now();
        let wait = tokio::select! {
            r = e.step(now) => match r {
                Ok(r) if r.attempted() > 0 => Duration::ZERO,
                Ok(r) => until(r.next_due, now, IDLE_POLL),
                Err(err) => {
                    tracing::error!(endpoint = e.name(), error = %err, "delivery step failed");
                    LEDGER_RETRY
                }
            },
            () = stop.cancelled() => return,
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// What [`drain`] left.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drained {
    pub delivered: usize,
    pub failed: usize,
    /// Endpoints with deliveries still pending at the end.
    pub(crate) pending_at: Vec<String>,
}

/// The end of `--once`: delivers what is pending, retries that fall due meanwhile
/// included, for at most `timeout`.
pub async fn drain(settings: &Settings, timeout: Duration) -> Result<Drained, DeliveryError> {
    sync(settings, true).await?;
    let endpoints = endpoints(settings).await?;
    let deadline = tokio::time::Instant::now() + timeout;
    let runs = endpoints.iter().map(|e| drain_one(e, deadline));
    let mut total = Drained::default();
    for (e, (report, pending)) in endpoints.iter().zip(futures::future::join_all(runs).await) {
        total.delivered += report.delivered;
        total.failed += report.failed;
        if pending {
            total.pending_at.push(e.name().to_owned());
        }
    }
    Ok(total)
}

/// The end of `--once`: a drain bounded by `schedule.drain_timeout` when endpoints are
/// configured, its outcome logged (it never changes the exit status: the pass's news is
/// in the ledger, and what is left is delivered by the next run).
pub(crate) async fn after_once(settings: &Settings, limit: Duration) {
    if settings.delivery.is_empty() {
        return;
    }
    match drain(settings, limit).await {
        Ok(d) if d.pending_at.is_empty() => {
            tracing::info!(
                delivered = d.delivered,
                failed = d.failed,
                "deliveries drained"
            );
        }
        Ok(d) => tracing::warn!(
            delivered = d.delivered,
            failed = d.failed,
            pending_at = %d.pending_at.join(", "),
            "deliveries still pending after schedule.drain_timeout; the next run sends them"
        ),
        Err(e) => tracing::error!(error = %e, "cannot deliver"),
    }
}

/// One endpoint's drain: (what it did, whether anything is left pending).
async fn drain_one(e: &Endpoint, deadline: tokio::time::Instant) -> (StepReport, bool) {
    let mut total = StepReport::default();
    loop {
        let now = Utc::now();
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Ok(step) = tokio::time::timeout(left, e.step(now)).await else {
            return (total, true);
        };
        let r = match step {
            Ok(r) => r,
            Err(err) => {
                tracing::error!(endpoint = e.name(), error = %err, "delivery step failed");
                return (total, true);
            }
        };
        total.delivered += r.delivered;
        total.failed += r.failed;
        let Some(next) = r.next_due else {
            return (total, false);
        };
        if r.attempted() == 0 {
            let wait = until(Some(next), now, Duration::MAX);
            if wait >= deadline.saturating_duration_since(tokio::time::Instant::now()) {
                return (total, true);
            }
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn due(attempts: u32) -> DueDelivery {
        DueDelivery {
            event_id: 7,
            charge_id: "c".into(),
            attempts,
            payload: "{}".into(),
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_2xx_ends_it_and_anything_else_is_retried_on_the_schedule() {
        let now = at("2026-12-02T10:00:00Z");
        assert_eq!(
            outcome(&due(0), Sent::Accepted { status: 204 }, now, 0.5),
            AttemptResult::Delivered { status: 204 }
        );
        let refused = |retry_after| Sent::Refused {
            status: Some(503),
            error: "HTTP 503".into(),
            retry_after,
        };
        let AttemptResult::Failed { retry_at, .. } = outcome(&due(0), refused(None), now, 0.5)
        else {
            panic!()
        };
        assert_eq!(retry_at, at("2026-12-02T10:00:05Z"));
        let AttemptResult::Failed { retry_at, .. } = outcome(&due(2), refused(None), now, 0.5)
        else {
            panic!()
        };
        assert_eq!(retry_at, at("2026-12-02T10:30:00Z"));
        let ra = Some(Duration::from_secs(600));
        let AttemptResult::Failed { retry_at, .. } = outcome(&due(0), refused(ra), now, 0.5) else {
            panic!()
        };
        assert_eq!(retry_at, at("2026-12-02T10:10:00Z"));
    }

    #[test]
    fn a_lease_outlasts_the_request_and_stays_within_a_minute() {
        assert_eq!(lease(Duration::from_secs(2)), Duration::from_secs(7));
        assert_eq!(lease(Duration::from_secs(10)), Duration::from_secs(15));
        assert_eq!(lease(Duration::from_secs(300)), LEASE);
    }

    #[test]
    fn waits_are_capped_and_never_negative() {
        let now = at("2026-12-02T10:00:00Z");
        assert_eq!(until(None, now, IDLE_POLL), IDLE_POLL);
        assert_eq!(
            until(Some(at("2026-12-02T09:00:00Z")), now, IDLE_POLL),
            Duration::ZERO
        );
        assert_eq!(
            until(Some(at("2026-12-02T10:00:00.100Z")), now, IDLE_POLL),
            Duration::from_millis(100)
        );
    }
}
