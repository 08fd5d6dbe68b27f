//! The simulator handle: its shared state, how it is started and served, and the methods
//! tests use to put charges in place and look at what happened.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::time::Duration;

use axum::Router;
use chrono::{DateTime, Utc};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::charge::SimCharge;
use crate::clock::SimClock;
use crate::config::{Credentials, Reply, SimConfig};
use crate::counters::{CounterSnapshot, Counters};
use crate::lifecycle::{self, Event};
use crate::listing::PopulationIndex;
use crate::ratelimit::Limiter;
use crate::seed::Population;
use crate::store::Data;
use crate::webhook::Webhooks;

pub(crate) struct Inner {
    /// The exact Authorization value a request must carry.
    pub expected_auth: String,
    /// Behind an `Arc` so a request clones a pointer, not the whole configuration.
    pub config: RwLock<Arc<SimConfig>>,
    pub clock: SimClock,
    pub data: Mutex<Data>,
    /// Lock order: `population` before `data`, never the other way round.
    pub population: RwLock<Option<Population>>,
    /// The population ordered per store for the list routes, built on first use.
    pub population_index: Mutex<Option<Arc<PopulationIndex>>>,
    pub limiter: Mutex<Limiter>,
    pub counters: Counters,
    pub webhooks: Webhooks,
}

/// Handle to a simulator. Clones share state.
#[derive(Clone)]
pub struct Sim {
    pub(crate) inner: Arc<Inner>,
}

/// A running simulator: its address, the task serving it and the one delivering
/// webhooks (both aborted on drop).
pub struct RunningSim {
    pub sim: Sim,
    pub addr: SocketAddr,
    task: JoinHandle<()>,
    webhook_task: JoinHandle<()>,
}

impl RunningSim {
    /// `http://127.0.0.1:{port}`, for `api.base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for RunningSim {
    fn drop(&mut self) {
        self.task.abort();
        self.webhook_task.abort();
    }
}

impl std::ops::Deref for RunningSim {
    type Target = Sim;
    fn deref(&self) -> &Sim {
        &self.sim
    }
}

impl Sim {
    pub fn new(credentials: Credentials) -> Sim {
        Sim::with_config(credentials, SimConfig::default())
    }

    pub fn with_config(credentials: Credentials, config: SimConfig) -> Sim {
        Sim {
            inner: Arc::new(Inner {
                expected_auth: credentials.authorization(),
                config: RwLock::new(Arc::new(config)),
                clock: SimClock::default(),
                data: Mutex::new(Data::default()),
                population: RwLock::new(None),
                population_index: Mutex::new(None),
                limiter: Mutex::new(Limiter::new()),
                counters: Counters::default(),
                webhooks: Webhooks::default(),
            }),
        }
    }

    pub(crate) fn data(&self) -> MutexGuard<'_, Data> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters for a fake; keep serving.
        self.inner.data.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Binds `127.0.0.1:0` and serves until the returned handle is dropped.
    pub async fn start(credentials: Credentials) -> std::io::Result<RunningSim> {
        Sim::new(credentials)
            .serve("127.0.0.1:0".parse().expect("address"))
            .await
    }

    /// As [`Sim::start`], with a configuration.
    pub async fn start_with(
        credentials: Credentials,
        config: SimConfig,
    ) -> std::io::Result<RunningSim> {
        Sim::with_config(credentials, config)
            .serve("127.0.0.1:0".parse().expect("address"))
            .await
    }

    /// Serves on `addr` (which must be a loopback address).
    pub async fn serve(self, addr: SocketAddr) -> std::io::Result<RunningSim> {
        if !addr.ip().is_loopback() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the simulator only listens on loopback addresses",
            ));
        }
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = self.router();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let webhook_task = self.spawn_webhook_task();
        Ok(RunningSim {
            sim: self,
            addr,
            task,
            webhook_task,
        })
    }

    /// The axum router, for embedding.
    pub fn router(&self) -> Router {
        crate::http::router(self.clone())
    }

    /// The current configuration.
    pub fn config(&self) -> SimConfig {
        SimConfig::clone(&self.config_arc())
    }

    /// The current configuration without copying it (one per request).
    pub(crate) fn config_arc(&self) -> Arc<SimConfig> {
        self.inner
            .config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Changes the configuration (latency, rate limit, faults, webhook) from the next
    /// request on. Configuring a webhook target where there was none starts seeded
    /// charges' webhooks from simulated now.
    pub fn configure(&self, f: impl FnOnce(&mut SimConfig)) {
        let (had, has) = {
            let mut c = self.inner.config.write().unwrap_or_else(|p| p.into_inner());
            let had = c.webhook.is_some();
            f(Arc::make_mut(&mut c));
            (had, c.webhook.is_some())
        };
        if has && !had {
            self.inner.webhooks.start_watermark(self.now());
        }
        self.inner.webhooks.wake.notify_one();
    }

    /// Simulated time.
    pub fn clock(&self) -> &SimClock {
        &self.inner.clock
    }

    /// Moves simulated time forward: seeded charges get on with their lives, and
    /// transitions and webhooks that became due happen.
    pub fn advance(&self, d: Duration) {
        self.inner.clock.advance(d);
        self.inner.webhooks.wake.notify_one();
    }

    /// Serves a seeded population (replacing any earlier one), created as of simulated
    /// now. Returns it, with its `epoch` set, so the caller can list the same charges.
    pub fn seed(&self, mut population: Population) -> Population {
        population.epoch = self.inner.clock.now();
        self.inner.webhooks.start_watermark(population.epoch);
        *self
            .inner
            .population
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(population.clone());
        *self
            .inner
            .population_index
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        population
    }

    /// The seeded population, if any.
    pub fn population(&self) -> Option<Population> {
        self.inner
            .population
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Simulated now.
    pub(crate) fn now(&self) -> DateTime<Utc> {
        self.inner.clock.now()
    }

    pub(crate) fn population_guard(&self) -> RwLockReadGuard<'_, Option<Population>> {
        self.inner
            .population
            .read()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the held data once every transition due now has been applied, then
    /// publishes the events of those transitions and of whatever `f` changed.
    pub(crate) fn with_data<R>(
        &self,
        f: impl FnOnce(&mut Data, Option<&Population>, DateTime<Utc>) -> (R, Vec<Event>),
    ) -> R {
        let pop = self.population_guard();
        let mut d = self.data();
        let now = self.now();
        let mut events = lifecycle::settle(&mut d, pop.as_ref(), now);
        let (r, more) = f(&mut d, pop.as_ref(), now);
        drop(d);
        drop(pop);
        events.extend(more);
        self.publish(events);
        r
    }

    /// The charge as it is now: held, or seeded and computed from its plan.
    pub(crate) fn charge_in(
        d: &Data,
        pop: Option<&Population>,
        id: &str,
        now: DateTime<Utc>,
    ) -> Option<SimCharge> {
        if let Some(c) = d.charge(id) {
            return Some(c.clone());
        }
        if d.removed.contains(id) {
            return None;
        }
        let pop = pop?;
        Some(pop.plan(pop.index_of(id)?).at(now))
    }

    /// Adds or replaces a charge. A change of status into `awaiting` or a final one makes
    /// its webhook event, as at UnivaPay.
    pub fn upsert(&self, charge: SimCharge) {
        self.with_data(|d, pop, now| {
            let old = Self::charge_in(d, pop, &charge.id, now).map(|c| c.status);
            (
                (),
                lifecycle::commit(d, old.as_deref(), charge, now)
                    .into_iter()
                    .collect(),
            )
        })
    }

    /// Changes a charge in place (a seeded one is taken as it is now, and frozen there).
    /// Panics if there is no such charge (a test bug).
    pub fn update(&self, id: &str, f: impl FnOnce(SimCharge) -> SimCharge) {
        self.with_data(|d, pop, now| {
            let current =
                Self::charge_in(d, pop, id, now).unwrap_or_else(|| panic!("no charge {id}"));
            let old = current.status.clone();
            let new = f(current);
            (
                (),
                lifecycle::commit(d, Some(&old), new, now)
                    .into_iter()
                    .collect(),
            )
        })
    }

    /// The charge as the simulator holds it now.
    pub fn charge(&self, id: &str) -> Option<SimCharge> {
        self.with_data(|d, pop, now| (Self::charge_in(d, pop, id, now), vec![]))
    }

    /// Removes a charge (its GET then answers 404, like an expired test-mode charge).
    pub fn remove(&self, id: &str) {
        let mut d = self.data();
        d.take(id);
        d.removed.insert(id.to_owned());
    }

    /// Queues a one-shot reply for the next GET of `charge_id`.
    pub fn push_reply(&self, charge_id: &str, reply: Reply) {
        self.data()
            .scripts
            .entry(charge_id.to_owned())
            .or_default()
            .push_back(reply);
    }

    /// How many GETs arrived for this charge.
    pub fn requests_for(&self, charge_id: &str) -> u64 {
        self.data()
            .per_charge_requests
            .get(charge_id)
            .copied()
            .unwrap_or(0)
    }

    pub fn counters(&self) -> CounterSnapshot {
        self.inner.counters.snapshot()
    }
}
