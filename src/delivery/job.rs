//! Delivery as a job of the job loop ([`crate::jobs`]): its own schedule, never the pass
//! lock (it spends no UnivaPay budget, so it runs beside passes and hint checks), and
//! left out of `--once`'s runs: `--once` delivers in its drain instead, within
//! `schedule.drain_timeout`, after the pass whose events it sends.
//!
//! In the daemon the job's one run is the continuous delivery loop ([`super::run`]),
//! which ends at shutdown; what an endpoint had in flight then is claimed for less than a
//! minute, so the next start sends it again. A drain after a continuous run would only
//! hold up the daemon's stop, so the drain sends only when the job never ran (`--once`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::worker;
use crate::config::Settings;
use crate::jobs::{Ended, InOnce, Job, Lock, When, Work};
use crate::ledger::Trigger;

/// See the module doc.
pub(crate) struct DeliveryJob {
    settings: Arc<Settings>,
    /// Set once the continuous loop was handed out: it runs until shutdown, and the
    /// drain has nothing left to do after it.
    started: AtomicBool,
}

impl DeliveryJob {
    pub(crate) fn new(settings: Arc<Settings>) -> DeliveryJob {
        DeliveryJob {
            settings,
            started: AtomicBool::new(false),
        }
    }

    fn continuous(&self) -> Work {
        let settings = self.settings.clone();
        Box::new(move |_held, shutdown| {
            Box::pin(async move {
                worker::run((*settings).clone(), shutdown).await;
                Ended::Ran
            })
        })
    }
}

impl Job for DeliveryJob {
    fn name(&self) -> &'static str {
        "delivery"
    }

    fn when(&self) -> When {
        When::Own
    }

    fn lock(&self) -> Lock {
        Lock::None
    }

    fn work(self: Arc<Self>, _trigger: Trigger) -> Work {
        self.continuous()
    }

    fn next(self: Arc<Self>, shutdown: CancellationToken) -> BoxFuture<'static, Option<Work>> {
        let first = !self.started.swap(true, Ordering::SeqCst);
        let work = (first && !shutdown.is_cancelled() && !self.settings.delivery.is_empty())
            .then(|| self.continuous());
        Box::pin(std::future::ready(work))
    }

    fn in_once(self: Arc<Self>) -> BoxFuture<'static, InOnce> {
        Box::pin(std::future::ready(InOnce::Skip))
    }

    fn drain(self: Arc<Self>, limit: Duration) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            if !self.started.load(Ordering::SeqCst) {
                worker::after_once(&self.settings, limit).await;
            }
        })
    }
}
