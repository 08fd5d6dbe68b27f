//! The listening socket and the connections on it.
//!
//! The socket is the one systemd passed (socket activation: `LISTEN_PID` names this
//! process and `LISTEN_FDS` counts descriptors from 3, read by `sd_notify`) or else one
//! bound to `webhook.listen`. A passed socket wins, so the `.socket` unit decides the
//! address when it is in use.
//!
//! Connections are HTTP/1.1 on hyper, with limits so that no client can hold resources
//! for long, and so that idle clients cannot keep UnivaPay out (it gives up after 3 s):
//! - at most [`MAX_CONNECTIONS`] at once. A connection accepted past that takes the
//!   place of the oldest *idle* one (connected, but no request being answered: a client
//!   that has sent nothing, or only part of a head, or waits between requests), which is
//!   closed. Only when every connection is in the middle of a request does the listener
//!   wait, and new connections with it in the kernel's backlog; so thousands of clients
//!   cost no file descriptors here, and a thousand idle ones delay a real webhook by
//!   next to nothing;
//! - the request head must arrive within [`HEADER_TIMEOUT`] (hyper's
//!   `header_read_timeout`, which also ends an idle keep-alive connection), the body
//!   within [`super::http::BODY_TIMEOUT`];
//! - a connection lives at most [`CONNECTION_LIFETIME`], then is closed after the request
//!   in progress (and dropped if even that does not finish);
//! - a request head may take at most [`MAX_HEAD_BYTES`] of buffer.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Throttle, WebhookError};

/// What a [`Handler`] answers a request with.
pub(super) type Answer = hyper::Response<http_body_util::Full<hyper::body::Bytes>>;

/// Most connections served at once.
pub(crate) const MAX_CONNECTIONS: usize = 256;
/// Time allowed for a request's head (and for the next one on a kept-alive connection):
/// UnivaPay sends its request at once, so a client that has sent none within this is
/// closed.
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest a connection is kept.
pub(crate) const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Time a connection gets to finish its request once it must close.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Read buffer per connection (hyper's minimum is 8 KiB).
pub(crate) const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Pause after an accept error such as "too many open files", so as not to spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The socket descriptors systemd passes start here (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// A listening TCP socket for the webhook listener.
#[derive(Debug)]
pub struct Listener {
    socket: std::net::TcpListener,
    addr: SocketAddr,
    from_systemd: bool,
}

impl Listener {
    /// The socket systemd passed, if any, else one bound to `listen`.
    pub(crate) fn open(listen: Option<SocketAddr>) -> Result<Listener, WebhookError> {
        if let Some(l) = Self::passed()? {
            if let Some(addr) = listen {
                tracing::info!(
                    "webhook.listen {addr} not used: serving the socket systemd passed ({})",
                    l.addr
                );
            }
            return Ok(l);
        }
        let addr = listen.ok_or(WebhookError::NoSocket)?;
        let socket = std::net::TcpListener::bind(addr)
            .map_err(|source| WebhookError::Bind { addr, source })?;
        Self::from_std(socket)
    }

    /// An already bound socket (tests, the demo and the benchmark bind `127.0.0.1:0`).
    pub fn from_std(socket: std::net::TcpListener) -> Result<Listener, WebhookError> {
        let addr = socket
            .local_addr()
            .map_err(|e| WebhookError::Passed(format!("not a TCP socket ({e})")))?;
        Ok(Listener {
            socket,
            addr,
            from_systemd: false,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether systemd passed it.
    pub(crate) fn is_from_systemd(&self) -> bool {
        self.from_systemd
    }

    /// The socket passed by systemd for this process, if any. With several, the one
    /// named `webhook` (`FileDescriptorName=`) is taken.
    fn passed() -> Result<Option<Listener>, WebhookError> {
        let Some(fd) = passed_fd()? else {
            return Ok(None);
        };
        // SAFETY: by the socket activation protocol this descriptor was passed to this
        // process (LISTEN_PID is ours) for it to own; nothing else in the program uses
        // descriptors from LISTEN_FDS, and it is taken exactly once, at start.
        let socket = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        let mut l = Self::from_std(socket)?;
        l.from_systemd = true;
        Ok(Some(l))
    }

    /// Serves connections with `service` until `shutdown`; connections are tracked in
    /// `conns` so that the caller can wait for them.
    pub(super) fn serve<H: Handler>(
        self,
        service: Arc<H>,
        conns: TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<impl Future<Output = ()> + Send + 'static, WebhookError> {
        self.socket
            .set_nonblocking(true)
            .map_err(|e| WebhookError::Passed(format!("cannot make it non-blocking ({e})")))?;
        let socket = tokio::net::TcpListener::from_std(self.socket)
            .map_err(|e| WebhookError::Passed(e.to_string()))?;
        Ok(accept_loop(socket, service, conns, shutdown))
    }
}

/// The descriptor systemd passed for the webhook, if any.
fn passed_fd() -> Result<Option<RawFd>, WebhookError> {
    // Not unset from the environment: that is not thread-safe, and a child would see a
    // LISTEN_PID that is not its own anyway.
    let fds: Vec<(RawFd, String)> = sd_notify::listen_fds_with_names(false)
        .map_err(|e| WebhookError::Passed(format!("LISTEN_FDS: {e}")))?
        .collect();
    match fds.as_slice() {
        [] => Ok(None),
        [(fd, _)] => Ok(Some(*fd)),
        several => several
            .iter()
            .find(|(_, name)| name == "webhook")
            .map(|(fd, _)| Some(*fd))
            .ok_or_else(|| {
                WebhookError::Passed(format!(
                    "{} sockets passed (from {LISTEN_FDS_START}) and none named \"webhook\" (FileDescriptorName=)",
                    several.len()
                ))
            }),
    }
}

/// Whether systemd passed this process any socket (to warn when there is no `[webhook]`
/// to serve it).
pub(crate) fn socket_passed() -> bool {
    matches!(sd_notify::listen_fds_with_names(false), Ok(fds) if fds.len() > 0)
}

/// What answers the requests of a listener's connections.
pub(super) trait Handler: Send + Sync + 'static {
    fn handle(
        self: Arc<Self>,
        peer: SocketAddr,
        req: hyper::Request<Incoming>,
    ) -> BoxFuture<'static, Result<Answer, Infallible>>;

    /// An idle connection was closed to make room for a new one.
    fn shed(&self) {}
}

/// The connections open now, oldest first, so that the oldest idle one can be closed to
/// make room (see the module doc).
struct Open {
    next: u64,
    conns: BTreeMap<u64, Conn>,
    /// What [`Activity`] counts from.
    epoch: tokio::time::Instant,
}

struct Conn {
    activity: Arc<Activity>,
    /// Closes it.
    shed: CancellationToken,
}

/// Whether a connection is answering a request: [`Activity::BUSY`] while its handler
/// runs, else when the last handler finished (milliseconds after the registry's epoch,
/// plus one; 0: never).
struct Activity(AtomicU64);

impl Activity {
    const BUSY: u64 = u64::MAX;
    /// An answer is still being written for a while after its handler finished: a
    /// connection is idle only once this has passed.
    const WRITING: Duration = Duration::from_millis(500);

    fn is_idle(&self, now_ms: u64) -> bool {
        match self.0.load(Ordering::Acquire) {
            0 => true,
            Self::BUSY => false,
            done => now_ms.saturating_sub(done - 1) >= Self::WRITING.as_millis() as u64,
        }
    }
}

fn millis_since(epoch: tokio::time::Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
}

type Registry = Arc<Mutex<Open>>;

fn registry() -> Registry {
    Arc::new(Mutex::new(Open {
        next: 0,
        conns: BTreeMap::new(),
        epoch: tokio::time::Instant::now(),
    }))
}

fn lock(r: &Registry) -> std::sync::MutexGuard<'_, Open> {
    // A map of handles: a panic elsewhere cannot leave it inconsistent in a harmful way.
    r.lock().unwrap_or_else(|p| p.into_inner())
}

/// Closes the oldest idle connection, if any; whether one was.
fn shed_oldest_idle(open: &Registry) -> bool {
    let mut o = lock(open);
    let now = millis_since(o.epoch);
    let idle = o
        .conns
        .iter()
        .find(|(_, c)| c.activity.is_idle(now))
        .map(|(id, _)| *id);
    match idle.and_then(|id| o.conns.remove(&id)) {
        Some(c) => {
            c.shed.cancel();
            true
        }
        None => false,
    }
}

/// Removes its connection from the registry when the connection's task ends.
struct Registered {
    open: Registry,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.open).conns.remove(&self.id);
    }
}

async fn accept_loop<H: Handler>(
    socket: tokio::net::TcpListener,
    service: Arc<H>,
    conns: TaskTracker,
    shutdown: CancellationToken,
) {
    // A permit per connection (see the module doc).
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let open = registry();
    let errors = Throttle::new();
    loop {
        let accepted = tokio::select! {
            a = socket.accept() => a,
            () = shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                if let Some(suppressed) = errors.allow() {
                    tracing::warn!(error = %e, suppressed, "webhook listener: accept failed");
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if shed_oldest_idle(&open) {
                    service.shed();
                }
                tokio::select! {
                    p = slots.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    () = shutdown.cancelled() => break,
                }
            }
        };
        let (activity, shed) = (
            Arc::new(Activity(AtomicU64::new(0))),
            CancellationToken::new(),
        );
        let (registered, epoch) = {
            let mut o = lock(&open);
            let id = o.next;
            o.next += 1;
            let conn = Conn {
                activity: activity.clone(),
                shed: shed.clone(),
            };
            o.conns.insert(id, conn);
            let r = Registered {
                open: open.clone(),
                id,
            };
            (r, o.epoch)
        };
        let (service, shutdown) = (service.clone(), shutdown.clone());
        conns.spawn(async move {
            tokio::select! {
                () = serve_connection(stream, peer, service, (activity, epoch), shutdown) => {}
                () = shed.cancelled() => {}
            }
            drop(registered);
            drop(permit);
        });
    }
}

/// Marks its connection busy while a request is answered, and when it was done.
struct Busy(Arc<Activity>, tokio::time::Instant);

impl Busy {
    fn new(activity: &Arc<Activity>, epoch: tokio::time::Instant) -> Busy {
        activity.0.store(Activity::BUSY, Ordering::Release);
        Busy(activity.clone(), epoch)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let done = millis_since(self.1).saturating_add(1);
        self.0.0.store(done, Ordering::Release);
    }
}

async fn serve_connection<H: Handler>(
    stream: TcpStream,
    peer: SocketAddr,
    service: Arc<H>,
    (activity, epoch): (Arc<Activity>, tokio::time::Instant),
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let svc = service_fn(move |req| {
        let guard = Busy::new(&activity, epoch);
        let answer = service.clone().handle(peer, req);
        async move {
            let a = answer.await;
            drop(guard);
            a
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let lifetime = tokio::time::sleep(CONNECTION_LIFETIME);
    tokio::select! {
        _ = conn.as_mut() => return,
        () = lifetime => {}
        () = shutdown.cancelled() => {}
    }
    // Time is up: finish the request in progress, if any, then close.
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
}
