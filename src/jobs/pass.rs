//! The pass as a job: on every cron tick in the daemon, once in `--once`, under the pass
//! lock. In the daemon its end also goes where the daemon says (`/healthz`, systemd's
//! `STATUS=`, the log).

use std::sync::Arc;

use futures::future::BoxFuture;

use super::{Ended, InOnce, Job, Lock, When, Work};
use crate::ledger::{LedgerError, Trigger};
use crate::reconcile::{Reconciler, RunReport};

/// Where the daemon reports a pass's end (`/healthz`, systemd, the log).
pub(crate) type ReportTo = Box<dyn Fn(&Result<RunReport, LedgerError>) + Send + Sync>;

/// The pass job. See the module doc.
pub(crate) struct PassJob {
    reconciler: Reconciler,
    /// The daemon's; `None` in `--once`, where the end is the exit status.
    report_to: Option<ReportTo>,
}

impl PassJob {
    /// The job for `--once`.
    pub(crate) fn once(reconciler: Reconciler) -> PassJob {
        PassJob {
            reconciler,
            report_to: None,
        }
    }

    /// The daemon's job: each pass's end goes to `report_to` as well.
    pub(crate) fn daemon(reconciler: Reconciler, report_to: ReportTo) -> PassJob {
        PassJob {
            reconciler,
            report_to: Some(report_to),
        }
    }
}

impl Job for PassJob {
    fn name(&self) -> &'static str {
        "pass"
    }

    fn when(&self) -> When {
        When::Cron
    }

    fn lock(&self) -> Lock {
        Lock::Pass
    }

    fn work(self: Arc<Self>, trigger: Trigger) -> Work {
        Box::new(move |held, shutdown| {
            Box::pin(async move {
                let Some(held) = held else {
                    return Ended::Fatal("the pass runs only under the pass lock".to_owned());
                };
                let rec = &self.reconciler;
                let pass = rec.run_pass(&held, trigger, shutdown).await;
                if let Some(report_to) = &self.report_to {
                    report_to(&pass);
                }
                crate::metrics::after_pass(rec.database(), rec.settings(), rec.client()).await;
                Ended::Pass(pass)
            })
        })
    }

    fn in_once(self: Arc<Self>) -> BoxFuture<'static, InOnce> {
        Box::pin(std::future::ready(InOnce::Run))
    }
}
