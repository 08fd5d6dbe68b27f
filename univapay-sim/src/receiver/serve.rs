//! Serving the receiver: an accept loop of our own (not `axum::serve`), because a
//! [`Behaviour::Reset`] must reach the socket: the connection is dropped with `SO_LINGER`
//! at zero, which makes the kernel send a TCP reset instead of a clean close. Every
//! connection carries a [`ConnControl`] into the router for that.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::{Behaviour, HANG_LIMIT, MAX_BODY, Plan, Receiver};

/// Binds `addr` (loopback only) and spawns the accept loop.
pub(super) async fn spawn(
    rx: Receiver,
    addr: SocketAddr,
) -> io::Result<(SocketAddr, JoinHandle<()>)> {
    if !addr.ip().is_loopback() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the receiver only listens on loopback addresses",
        ));
    }
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let app = router(rx);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of descriptors or similar: let the pressure pass rather than spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            tokio::spawn(serve_connection(stream, app.clone()));
        }
    });
    Ok((addr, task))
}

/// Lets a handler ask for its connection to be reset.
#[derive(Clone)]
struct ConnControl {
    reset: Arc<AtomicBool>,
    wake: Arc<Notify>,
}

impl ConnControl {
    fn reset(&self) {
        self.reset.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }
}

async fn serve_connection(stream: TcpStream, app: Router) {
    let control = ConnControl {
        reset: Arc::new(AtomicBool::new(false)),
        wake: Arc::new(Notify::new()),
    };
    let io = TokioIo::new(Conn {
        stream,
        reset: control.reset.clone(),
    });
    let service = TowerToHyperService::new(app.layer(Extension(control.clone())));
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
    tokio::select! {
        _ = conn => {}
        // Dropping the connection drops `Conn`, which resets the socket.
        _ = control.wake.notified() => {}
    }
}

/// The TCP stream, reset instead of closed when its flag is set.
struct Conn {
    stream: TcpStream,
    reset: Arc<AtomicBool>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.reset.load(Ordering::SeqCst) {
            let _ = socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

fn router(rx: Receiver) -> Router {
    Router::new()
        .route("/{endpoint}", post(deliver))
        .route("/_receiver/endpoints/{name}", put(put_endpoint))
        .route("/_receiver/endpoints/{name}/plan", put(put_plan))
        .route(
            "/_receiver/deliveries",
            get(get_deliveries).delete(delete_deliveries),
        )
        .route("/_receiver/summary", get(get_summary))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(rx)
}

async fn deliver(
    State(rx): State<Receiver>,
    Extension(conn): Extension<ConnControl>,
    Path(endpoint): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match rx.receive(&endpoint, &headers, &body) {
        Behaviour::Status(s) => answer(s),
        Behaviour::RetryAfter { status, value } => {
            let mut resp = answer(status);
            if let Ok(v) = HeaderValue::from_str(&value) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
            resp
        }
        Behaviour::Hang => {
            tokio::time::sleep(HANG_LIMIT).await;
            conn.reset();
            std::future::pending().await
        }
        Behaviour::Reset => {
            conn.reset();
            std::future::pending().await
        }
        Behaviour::SlowBody { status, delay_ms } => slow(status, Duration::from_millis(delay_ms)),
    }
}

fn status_of(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn answer(code: u16) -> Response {
    let status = status_of(code);
    (status, Json(json!({"status": code}))).into_response()
}

/// `{"status": N}` with its first byte at once and the rest after `delay`.
fn slow(code: u16, delay: Duration) -> Response {
    let rest = format!("\"status\": {code}}}");
    let chunks = futures_util::stream::unfold(0u8, move |step| {
        let rest = rest.clone();
        async move {
            match step {
                0 => Some((Ok::<_, io::Error>(Bytes::from_static(b"{")), 1)),
                1 => {
                    tokio::time::sleep(delay).await;
                    Some((Ok(Bytes::from(rest)), 2))
                }
                _ => None,
            }
        }
    });
    (
        status_of(code),
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        Body::from_stream(chunks),
    )
        .into_response()
}

#[derive(Deserialize)]
struct SecretBody {
    secret: String,
}

async fn put_endpoint(
    State(rx): State<Receiver>,
    Path(name): Path<String>,
    Json(b): Json<SecretBody>,
) -> Response {
    match rx.add_endpoint(&name, &b.secret) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

async fn put_plan(
    State(rx): State<Receiver>,
    Path(name): Path<String>,
    Json(plan): Json<Plan>,
) -> Response {
    match rx.set_plan(&name, plan) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => (StatusCode::NOT_FOUND, e.to_string()).into_response(),
    }
}

#[derive(Deserialize)]
struct DeliveriesQuery {
    endpoint: Option<String>,
    #[serde(default)]
    after: u64,
}

/// The most deliveries one control GET returns.
const PAGE: usize = 1000;

async fn get_deliveries(State(rx): State<Receiver>, Query(q): Query<DeliveriesQuery>) -> Response {
    Json(rx.deliveries_after(q.after, q.endpoint.as_deref(), PAGE)).into_response()
}

async fn delete_deliveries(State(rx): State<Receiver>) -> Response {
    rx.clear();
    StatusCode::NO_CONTENT.into_response()
}

async fn get_summary(State(rx): State<Receiver>) -> Response {
    Json(rx.summary()).into_response()
}
