//! The simulator handle: its shared state, how it is started and served, and the methods
//! tests use to put charges in place and look at what happened.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::charge::SimCharge;
use crate::clock::SimClock;
use crate::config::{Credentials, Reply, SimConfig};
use crate::counters::{CounterSnapshot, Counters};
use crate::ratelimit::Limiter;
use crate::seed::Population;

/// The charges and scripts the simulator holds, behind one lock.
#[derive(Default)]
pub(crate) struct Data {
    pub charges: HashMap<String, SimCharge>,
    /// Seeded charges that were removed.
    pub removed: HashSet<String>,
    pub scripts: HashMap<String, VecDeque<Reply>>,
    pub per_charge_requests: HashMap<String, u64>,
}

pub(crate) struct Inner {
    /// The exact Authorization value a request must carry.
    pub expected_auth: String,
    /// Behind an `Arc` so a request clones a pointer, not the whole configuration.
    pub config: RwLock<Arc<SimConfig>>,
    pub clock: SimClock,
    pub data: Mutex<Data>,
    pub population: RwLock<Option<Population>>,
    pub limiter: Mutex<Limiter>,
    pub counters: Counters,
}

/// Handle to a simulator. Clones share state.
#[derive(Clone)]
pub struct Sim {
    pub(crate) inner: Arc<Inner>,
}

/// A running simulator: its address and the task serving it (aborted on drop).
pub struct RunningSim {
    pub sim: Sim,
    pub addr: SocketAddr,
    task: JoinHandle<()>,
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
                limiter: Mutex::new(Limiter::new()),
                counters: Counters::default(),
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
        Ok(RunningSim {
            sim: self,
            addr,
            task,
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

    /// Changes the configuration (latency, rate limit, faults) from the next request on.
    pub fn configure(&self, f: impl FnOnce(&mut SimConfig)) {
        let mut c = self.inner.config.write().unwrap_or_else(|p| p.into_inner());
        f(Arc::make_mut(&mut c));
    }

    /// Simulated time.
    pub fn clock(&self) -> &SimClock {
        &self.inner.clock
    }

    /// Moves simulated time forward: seeded charges get on with their lives.
    pub fn advance(&self, d: Duration) {
        self.inner.clock.advance(d);
    }

    /// Serves a seeded population (replacing any earlier one), created as of simulated
    /// now. Returns it, with its `epoch` set, so the caller can list the same charges.
    pub fn seed(&self, mut population: Population) -> Population {
        population.epoch = self.inner.clock.now();
        *self
            .inner
            .population
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(population.clone());
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

    fn seeded(&self, id: &str) -> Option<SimCharge> {
        let pop = self
            .inner
            .population
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let pop = pop.as_ref()?;
        let i = pop.index_of(id)?;
        Some(pop.plan(i).at(self.inner.clock.now()))
    }

    /// Adds or replaces a charge.
    pub fn upsert(&self, charge: SimCharge) {
        self.data().charges.insert(charge.id.clone(), charge);
    }

    /// Changes a charge in place (a seeded one is taken as it is now, and frozen there).
    /// Panics if there is no such charge (a test bug).
    pub fn update(&self, id: &str, f: impl FnOnce(SimCharge) -> SimCharge) {
        let current = self.charge(id).unwrap_or_else(|| panic!("no charge {id}"));
        self.data().charges.insert(id.to_owned(), f(current));
    }

    /// The charge as the simulator holds it now.
    pub fn charge(&self, id: &str) -> Option<SimCharge> {
        {
            let d = self.data();
            if let Some(c) = d.charges.get(id) {
                return Some(c.clone());
            }
            if d.removed.contains(id) {
                return None;
            }
        }
        self.seeded(id)
    }

    /// Removes a charge (its GET then answers 404, like an expired test-mode charge).
    pub fn remove(&self, id: &str) {
        let mut d = self.data();
        d.charges.remove(id);
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
