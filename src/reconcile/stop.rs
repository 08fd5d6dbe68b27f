//! The stop and drain signal every run of checks is given: `stop` ends the taking of new
//! charges (shutdown, refused credentials, a writer that failed); `abandon` follows it a
//! drain timeout later and gives up on the checks still in flight, whose charges stay
//! untouched and due.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The two ways a run of checks is told to stop. See the module doc.
#[derive(Clone)]
pub(crate) struct Stop {
    pub(crate) stop: CancellationToken,
    pub(crate) abandon: CancellationToken,
}

impl Stop {
    /// Stop tokens under `shutdown`, with `abandon` following `stop` after `drain`.
    /// The returned guard ends the drain timer; drop it when the checks are done.
    pub(crate) fn with_drain(shutdown: &CancellationToken, drain: Duration) -> (Stop, DrainGuard) {
        let stop = shutdown.child_token();
        let abandon = CancellationToken::new();
        let timer = {
            let (stop, abandon) = (stop.clone(), abandon.clone());
            tokio::spawn(async move {
                stop.cancelled().await;
                tokio::time::sleep(drain).await;
                abandon.cancel();
            })
        };
        (Stop { stop, abandon }, DrainGuard(timer))
    }
}

/// Ends the drain timer of a [`Stop`] when dropped.
pub(crate) struct DrainGuard(tokio::task::JoinHandle<()>);

impl Drop for DrainGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}
