//! The checkpoint job: the checkpointer of the daemon and of `--once` (beside it, only
//! prune rounds copy their own steps). No ledger connection checkpoints in its commits
//! (the ledger's `wal` module says why), so this job copies the WAL into the database
//! file, a passive checkpoint every [`EVERY`], and keeps the `-wal` file from growing
//! while the daemon runs.
//!
//! `When::Own`, `Lock::None`: a passive checkpoint takes no lock a writer or a reader
//! waits for, spends no UnivaPay budget and changes no row. `--once` runs the same loop
//! beside its jobs ([`InOnce::Beside`]), so a long pass's writes are copied as they
//! come rather than piling up in the `-wal` file until the process's last connection
//! closes (which checkpoints once more: SQLite does that itself).
//!
//! A checkpoint held back by a reader (a long `backup`, a stalled Litestream) leaves
//! frames behind; past [`BEHIND_WARN`] frames the job warns once, and says so again
//! when it has caught up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::{Ended, InOnce, Job, Lock, When, Work};
use crate::context::Context;
use crate::ledger::{Checkpointed, LedgerError, Open, Trigger};

/// Between two checkpoints: the WAL then holds about a second of writes (a pass's
/// checks, a prune round's steps) before they are copied.
pub const EVERY: Duration = Duration::from_secs(1);

/// Frames left behind (4 KiB each: 1 GiB) past which the job warns: a reader has held
/// its snapshot for a long time, and the `-wal` file grows by every write meanwhile.
pub const BEHIND_WARN: u64 = 262_144;

/// See the module doc.
pub struct CheckpointJob {
    ctx: Context,
    /// Whether the last checkpoint failed or was [`BEHIND_WARN`] behind (and said so):
    /// one warning for a spell of them, not one a second.
    troubled: Arc<AtomicBool>,
}

impl CheckpointJob {
    pub fn new(ctx: Context) -> CheckpointJob {
        CheckpointJob {
            ctx,
            troubled: Arc::default(),
        }
    }

    fn checkpoint_work(&self) -> Work {
        let (ctx, troubled) = (self.ctx.clone(), self.troubled.clone());
        Box::new(move |_held, _shutdown| {
            Box::pin(async move {
                let done = ctx.with_ledger(Open::Existing, |l| l.catch_up()).await;
                report(&done, &troubled);
                Ended::Ran
            })
        })
    }
}

/// Logs the first checkpoint of a spell that failed or fell behind, and the first one
/// after that is fine again.
fn report(done: &Result<Checkpointed, LedgerError>, troubled: &AtomicBool) {
    let trouble = match done {
        Ok(c) => (c.behind() >= BEHIND_WARN).then(|| {
            format!(
                "{} of {} WAL frames not copied: a reader holds an old snapshot",
                c.behind(),
                c.frames
            )
        }),
        // A lost ledger is what every pass reports already; the job only keeps quiet.
        Err(e) if e.is_lost() => None,
        Err(e) => Some(e.to_string()),
    };
    match trouble {
        Some(why) => {
            if !troubled.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    why,
                    "checkpoint: the WAL is not being copied into the database; the -wal file grows until it is"
                );
            }
        }
        None => {
            if troubled.swap(false, Ordering::Relaxed) {
                tracing::info!("checkpoint: the WAL is copied into the database again");
            }
        }
    }
}

impl Job for CheckpointJob {
    fn name(&self) -> &'static str {
        "checkpoint"
    }

    fn when(&self) -> When {
        When::Own
    }

    fn lock(&self) -> Lock {
        Lock::None
    }

    fn work(self: Arc<Self>, _trigger: Trigger) -> Work {
        self.checkpoint_work()
    }

    fn next(self: Arc<Self>, shutdown: CancellationToken) -> BoxFuture<'static, Option<Work>> {
        Box::pin(async move {
            tokio::select! {
                () = shutdown.cancelled() => None,
                () = tokio::time::sleep(EVERY) => Some(self.checkpoint_work()),
            }
        })
    }

    fn in_once(self: Arc<Self>) -> BoxFuture<'static, InOnce> {
        Box::pin(std::future::ready(InOnce::Beside))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn behind(n: u64) -> Result<Checkpointed, LedgerError> {
        Ok(Checkpointed {
            frames: n + 10,
            copied: 10,
        })
    }

    #[test]
    fn a_spell_of_trouble_is_flagged_once_and_its_end_clears_it() {
        let troubled = AtomicBool::new(false);
        report(&behind(0), &troubled);
        assert!(!troubled.load(Ordering::Relaxed));
        report(&behind(BEHIND_WARN - 1), &troubled);
        assert!(!troubled.load(Ordering::Relaxed), "under the threshold");
        report(&behind(BEHIND_WARN), &troubled);
        assert!(troubled.load(Ordering::Relaxed));
        report(&behind(BEHIND_WARN * 2), &troubled);
        assert!(troubled.load(Ordering::Relaxed));
        report(&behind(3), &troubled);
        assert!(!troubled.load(Ordering::Relaxed), "caught up");
    }

    #[test]
    fn a_failure_is_trouble_but_a_lost_ledger_is_left_to_the_passes() {
        let troubled = AtomicBool::new(false);
        let lost = LedgerError::Vanished {
            path: "/var/lib/k/ledger.db".into(),
        };
        report(&Err(lost), &troubled);
        assert!(!troubled.load(Ordering::Relaxed));
        let failed = LedgerError::Unusable {
            path: "/var/lib/k/ledger.db".into(),
            reason: "disk I/O error".to_owned(),
        };
        report(&Err(failed), &troubled);
        assert!(troubled.load(Ordering::Relaxed));
    }
}
