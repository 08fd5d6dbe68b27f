//! Webhook delivery the way UnivaPay does it: on a charge becoming `awaiting` (or
//! `authorized`) a POST of `{"event":"charge_updated","data":<charge>}`, on its final
//! status `{"event":"charge_finished","data":<charge>}`, to the configured URL with the
//! configured `Authorization` value sent verbatim (no signature), a 3 s timeout, retries
//! with doubling backoff on a non-2xx answer or an error, and a share of deliveries
//! simply lost.
//!
//! Everything is on simulated time: a delivery is due at the event's simulated instant
//! plus a delay drawn from [`WebhookTarget::delay`], and a retry at the failure's
//! simulated instant plus the backoff. Loss and delay are drawn from a hash of
//! [`WebhookTarget::seed`], the charge id and the event, so a run is reproducible.
//!
//! Which changes make webhooks:
//! - held charges (set by tests, made through the API or the control methods): every
//!   change of status into `awaiting`/`authorized` or a final status, at the moment it is
//!   applied (transitions on the timeline are applied when their time has come and
//!   something looks: a request, the background task, [`crate::Sim::deliver_due_webhooks`]);
//! - seeded charges: their planned transitions whose instant falls after the later of
//!   the seeding and the moment a webhook target was configured, as simulated time
//!   passes them. The first time this is needed the whole population's transitions are
//!   computed and sorted (16 bytes per transition, about a second per million charges),
//!   once per seed. Seeded charges a test changed or removed no longer follow their plan.
//!
//! Deliveries happen in the background task [`crate::Sim::serve`] starts (it looks every
//! 10 ms of real time while a target is configured), or when a test calls
//! [`crate::Sim::deliver_due_webhooks`], which also waits for the deliveries it started.
//! As at UnivaPay, a 3xx answer disables the webhook at once, and so does a delivery that
//! fails all its retries (when [`WebhookTarget::disable_after_retries`]); while disabled,
//! events are counted as dropped until [`crate::Sim::enable_webhook`].

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::control::chrono_of;
use crate::counters::bump;
use crate::lifecycle::Event;
use crate::seed::{Population, splitmix};
use crate::sim::Sim;

/// Where and how the simulator delivers webhooks ([`crate::SimConfig::webhook`]).
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookTarget {
    /// The receiver, e.g. `http://127.0.0.1:8089/univapay/webhook`.
    pub url: String,
    /// Sent verbatim as the `Authorization` header.
    pub authorization: String,
    /// Share of events never delivered at all (0 to 1).
    pub loss_share: f64,
    /// Simulated delay between an event and its first delivery attempt, drawn uniformly
    /// from this range (an empty range means exactly `start`).
    pub delay: Range<Duration>,
    /// Attempts after the first failed one (UnivaPay: up to 10).
    pub retries: u32,
    /// Real time an attempt may take before it counts as failed (UnivaPay: 3 s).
    pub timeout: Duration,
    /// Simulated wait before the first retry; it doubles for each further retry.
    pub backoff: Duration,
    /// The longest wait between retries.
    pub backoff_max: Duration,
    /// Seeds the loss and delay draws.
    pub seed: u64,
    /// Disable the webhook when a delivery has failed all its retries (UnivaPay does).
    pub disable_after_retries: bool,
}

impl WebhookTarget {
    /// Delivery to `url` with `authorization`: nothing lost, no delay, 10 retries from
    /// 10 s doubling up to 10 min, a 3 s timeout.
    pub fn new(url: impl Into<String>, authorization: impl Into<String>) -> Self {
        WebhookTarget {
            url: url.into(),
            authorization: authorization.into(),
            loss_share: 0.0,
            delay: Duration::ZERO..Duration::ZERO,
            retries: 10,
            timeout: Duration::from_secs(3),
            backoff: Duration::from_secs(10),
            backoff_max: Duration::from_secs(600),
            seed: 0,
            disable_after_retries: true,
        }
    }

    /// The same target losing this share of events.
    pub fn with_loss(mut self, share: f64) -> Self {
        self.loss_share = share;
        self
    }

    /// The same target with deliveries delayed by a draw from `delay`.
    pub fn with_delay(mut self, delay: Range<Duration>) -> Self {
        self.delay = delay;
        self
    }

    /// A stable draw in `0..1` for this event of this charge (`salt` picks the draw).
    fn draw(&self, charge_id: &str, event: &str, salt: u64) -> f64 {
        let h = charge_id
            .bytes()
            .chain(event.bytes())
            .fold(0xcbf2_9ce4_8422_2325u64 ^ self.seed, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            });
        (splitmix(h ^ salt) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn is_lost(&self, charge_id: &str, event: &str) -> bool {
        self.loss_share > 0.0 && self.draw(charge_id, event, 1) < self.loss_share
    }

    fn delay_for(&self, charge_id: &str, event: &str) -> Duration {
        let span = self.delay.end.saturating_sub(self.delay.start);
        self.delay.start + span.mul_f64(self.draw(charge_id, event, 2))
    }

    /// The wait before retry number `attempt` (1 for the first retry).
    fn backoff_for(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(30));
        self.backoff.saturating_mul(factor).min(self.backoff_max)
    }
}

/// What a delivery sends as `data`.
#[derive(Debug, Clone)]
enum Payload {
    /// A held charge, as it was right after the change.
    Snapshot(Value),
    /// A seeded charge, computed at send time as its plan says it was at `at`.
    Seeded { index: u64, at: DateTime<Utc> },
}

#[derive(Debug, Clone)]
struct Delivery {
    event: &'static str,
    charge_id: String,
    payload: Payload,
    /// Attempts made so far.
    attempts: u32,
}

/// The seeded population's transitions in time order: `(micros, index << 1 | finished)`.
struct PopulationEvents {
    identity: (u64, u64, DateTime<Utc>),
    events: Vec<(i64, u64)>,
}

#[derive(Default)]
struct Outbox {
    /// Deliveries by due simulated instant (the sequence number keeps their order).
    due: BTreeMap<(DateTime<Utc>, u64), Delivery>,
    sequence: u64,
    /// Seeded transitions up to this instant are handled.
    watermark: Option<DateTime<Utc>>,
    population: Option<Arc<PopulationEvents>>,
}

/// Attempts in flight at once, so a burst of due deliveries cannot open thousands of
/// connections; the rest wait in the outbox for the next round.
const MAX_IN_FLIGHT: usize = 32;
/// How often the background task looks for due deliveries (real time).
const TICK: Duration = Duration::from_millis(10);

/// The webhook sender's state, part of the simulator's.
#[derive(Default)]
pub(crate) struct Webhooks {
    outbox: Mutex<Outbox>,
    in_flight: AtomicUsize,
    idle: Notify,
    /// Wakes the background task (a target was configured, time was moved).
    pub wake: Notify,
    disabled: AtomicBool,
    client: OnceLock<reqwest::Client>,
}

impl Webhooks {
    fn outbox(&self) -> std::sync::MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn client(&self) -> &reqwest::Client {
        self.client.get_or_init(|| {
            reqwest::Client::builder()
                // A 3xx must be seen (it disables the webhook), not followed; and the
                // receiver is on loopback, never behind a proxy.
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .build()
                .expect("a plain HTTP client builds")
        })
    }

    fn push(&self, due: DateTime<Utc>, d: Delivery) {
        let mut o = self.outbox();
        o.sequence += 1;
        let seq = o.sequence;
        o.due.insert((due, seq), d);
    }

    /// Seeded transitions are handled from `t` on (seeding, or a target configured).
    pub fn start_watermark(&self, t: DateTime<Utc>) {
        self.outbox().watermark = Some(t);
    }
}

fn nanos(t: DateTime<Utc>) -> i64 {
    t.timestamp_nanos_opt().unwrap_or(i64::MAX)
}

impl PopulationEvents {
    fn identity(p: &Population) -> (u64, u64, DateTime<Utc>) {
        (p.seed, p.count, p.epoch)
    }

    fn build(p: &Population) -> PopulationEvents {
        let mut events = Vec::with_capacity(p.count as usize * 2);
        for i in 0..p.count {
            let plan = p.plan(i);
            if !plan.is_card() {
                events.push((nanos(plan.awaiting_at), i << 1));
            }
            events.push((nanos(plan.final_at), i << 1 | 1));
        }
        events.sort_unstable();
        PopulationEvents {
            identity: Self::identity(p),
            events,
        }
    }
}

impl Sim {
    /// Queues the deliveries of these status changes (when a target is configured).
    pub(crate) fn publish(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        for _ in &events {
            bump(&self.inner.counters.transitions);
        }
        let cfg = self.config_arc();
        let Some(target) = cfg.webhook.as_ref() else {
            return;
        };
        for e in events {
            let payload = Payload::Snapshot(e.charge.to_json());
            self.enqueue(target, e.name, e.charge.id, payload, e.at);
        }
    }

    fn enqueue(
        &self,
        target: &WebhookTarget,
        event: &'static str,
        charge_id: String,
        payload: Payload,
        at: DateTime<Utc>,
    ) {
        let c = &self.inner.counters;
        if self.inner.webhooks.disabled.load(Ordering::Relaxed) {
            bump(&c.webhooks_dropped);
            return;
        }
        if target.is_lost(&charge_id, event) {
            bump(&c.webhooks_lost);
            return;
        }
        let due = at + chrono_of(target.delay_for(&charge_id, event));
        let delivery = Delivery {
            event,
            charge_id,
            payload,
            attempts: 0,
        };
        self.inner.webhooks.push(due, delivery);
    }

    /// Queues the seeded transitions simulated time has passed since the last look.
    fn collect_population_events(&self, target: &WebhookTarget, now: DateTime<Utc>) {
        let Some(pop) = self.population() else {
            return;
        };
        let (from, all) = {
            let mut o = self.inner.webhooks.outbox();
            let from = o.watermark.unwrap_or(pop.epoch);
            if from >= now {
                return;
            }
            o.watermark = Some(now);
            let all = match &o.population {
                Some(e) if e.identity == PopulationEvents::identity(&pop) => e.clone(),
                _ => Arc::new(PopulationEvents::build(&pop)),
            };
            o.population = Some(all.clone());
            (from, all)
        };
        let lo = all.events.partition_point(|e| e.0 <= nanos(from));
        let hi = all.events.partition_point(|e| e.0 <= nanos(now));
        let passed: Vec<(i64, u64, String)> = {
            let d = self.data();
            all.events[lo..hi]
                .iter()
                .map(|&(t, code)| (t, code, pop.charge_id(code >> 1)))
                .filter(|(_, _, id)| !d.holds(id) && !d.removed.contains(id))
                .collect()
        };
        for (t, code, id) in passed {
            let at = DateTime::from_timestamp_nanos(t);
            let name = if code & 1 == 1 {
                "charge_finished"
            } else {
                "charge_updated"
            };
            let payload = Payload::Seeded {
                index: code >> 1,
                at,
            };
            self.enqueue(target, name, id, payload, at);
        }
    }

    /// Starts an attempt for every delivery due now, up to [`MAX_IN_FLIGHT`] at once.
    fn dispatch_due(&self, cfg: &Arc<crate::SimConfig>, now: DateTime<Utc>) -> usize {
        let wh = &self.inner.webhooks;
        let mut started = 0;
        loop {
            // A place is taken before the delivery leaves the outbox, so that a waiter
            // never sees an empty outbox and nothing in flight while one is on its way.
            if wh.in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_IN_FLIGHT {
                self.attempt_done();
                break;
            }
            let next = {
                let mut o = wh.outbox();
                match o.due.first_key_value() {
                    Some(((at, _), _)) if *at <= now => o.due.pop_first().map(|(_, d)| d),
                    _ => None,
                }
            };
            let Some(delivery) = next else {
                self.attempt_done();
                break;
            };
            if wh.disabled.load(Ordering::Relaxed) {
                bump(&self.inner.counters.webhooks_dropped);
                self.attempt_done();
                continue;
            }
            let (sim, cfg) = (self.clone(), cfg.clone());
            tokio::spawn(async move {
                if let Some(target) = cfg.webhook.as_ref() {
                    sim.attempt(target, delivery).await;
                }
                sim.attempt_done();
            });
            started += 1;
        }
        started
    }

    fn attempt_done(&self) {
        let wh = &self.inner.webhooks;
        if wh.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            wh.idle.notify_waiters();
        }
    }

    /// One POST; on failure a retry is queued, or the delivery given up.
    async fn attempt(&self, target: &WebhookTarget, mut d: Delivery) {
        let c = &self.inner.counters;
        let Some(data) = self.payload_json(&d) else {
            return;
        };
        let body = json!({"event": d.event, "data": data}).to_string();
        bump(&c.webhooks_sent);
        d.attempts += 1;
        let answer = self
            .inner
            .webhooks
            .client()
            .post(&target.url)
            .header(reqwest::header::AUTHORIZATION, &target.authorization)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .timeout(target.timeout)
            .body(body)
            .send()
            .await
            .map(|r| r.status());
        match answer {
            Ok(s) if s.is_success() => bump(&c.webhooks_delivered),
            Ok(s) if s.is_redirection() => {
                bump(&c.webhooks_failed);
                self.inner.webhooks.disabled.store(true, Ordering::Relaxed);
            }
            _ => {
                bump(&c.webhooks_failed);
                self.retry_or_give_up(target, d);
            }
        }
    }

    fn retry_or_give_up(&self, target: &WebhookTarget, d: Delivery) {
        let c = &self.inner.counters;
        if d.attempts > target.retries {
            bump(&c.webhooks_given_up);
            if target.disable_after_retries {
                self.inner.webhooks.disabled.store(true, Ordering::Relaxed);
            }
            return;
        }
        bump(&c.webhooks_retried);
        let due = self.now() + chrono_of(target.backoff_for(d.attempts));
        self.inner.webhooks.push(due, d);
    }

    /// The charge JSON a delivery sends (`None` for a seeded charge of a population that
    /// has since been replaced).
    fn payload_json(&self, d: &Delivery) -> Option<Value> {
        match &d.payload {
            Payload::Snapshot(v) => Some(v.clone()),
            Payload::Seeded { index, at } => {
                let pop = self.population()?;
                (pop.index_of(&d.charge_id) == Some(*index))
                    .then(|| pop.plan(*index).at(*at).to_json())
            }
        }
    }

    /// Applies due transitions, queues seeded ones, and starts the due deliveries.
    fn webhook_round(&self) -> usize {
        self.with_data(|_, _, _| ((), vec![]));
        let cfg = self.config_arc();
        if cfg.webhook.is_none() {
            return 0;
        }
        let now = self.now();
        if let Some(target) = cfg.webhook.as_ref() {
            self.collect_population_events(target, now);
        }
        self.dispatch_due(&cfg, now)
    }

    async fn webhooks_idle(&self) {
        let wh = &self.inner.webhooks;
        loop {
            let notified = wh.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if wh.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Delivers every webhook due at simulated now (applying due transitions first) and
    /// waits until those attempts are answered or timed out; returns how many attempts
    /// it started. Retries land on simulated time: move it on and call this again.
    pub async fn deliver_due_webhooks(&self) -> usize {
        let mut total = 0;
        loop {
            self.webhooks_idle().await;
            let started = self.webhook_round();
            total += started;
            self.webhooks_idle().await;
            if started == 0 {
                return total;
            }
        }
    }

    /// The background task that delivers webhooks as simulated time passes (started by
    /// [`Sim::serve`]; for a router embedded elsewhere, start it here). It sleeps while no
    /// target is configured.
    pub fn spawn_webhook_task(&self) -> JoinHandle<()> {
        let sim = self.clone();
        tokio::spawn(async move {
            let wake = &sim.inner.webhooks.wake;
            loop {
                if sim.config_arc().webhook.is_none() {
                    wake.notified().await;
                    continue;
                }
                sim.webhook_round();
                tokio::select! {
                    _ = tokio::time::sleep(TICK) => {}
                    _ = wake.notified() => {}
                }
            }
        })
    }

    /// Whether the webhook was disabled (a 3xx answer, or a delivery out of retries).
    pub fn webhook_disabled(&self) -> bool {
        self.inner.webhooks.disabled.load(Ordering::Relaxed)
    }

    /// Enables the webhook again, as a merchant does in UnivaPay's dashboard.
    pub fn enable_webhook(&self) {
        self.inner.webhooks.disabled.store(false, Ordering::Relaxed);
        self.inner.webhooks.wake.notify_one();
    }

    /// Deliveries queued and not yet attempted (retries included).
    pub fn webhooks_queued(&self) -> usize {
        self.inner.webhooks.outbox().due.len()
    }
}
