//! The three kinds of dead endpoint, on loopback: a port that refuses connections, a
//! black hole (accepts, never answers) and a server answering 503 to everything.

use std::net::{SocketAddr, TcpListener, TcpStream};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;

/// The endpoints' URLs. The black hole and the 503 server live as long as the process.
pub(crate) struct Fakes {
    pub refused: String,
    pub black_hole: String,
    pub unavailable: String,
}

impl Fakes {
    pub(crate) async fn start() -> Result<Fakes, String> {
        Ok(Fakes {
            refused: url(refused_port()?),
            black_hole: url(black_hole()?),
            unavailable: url(unavailable().await?),
        })
    }
}

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}/hooks/konbini")
}

/// A loopback port nothing listens on: bound by the system's choice, then let go. Nothing
/// else on this machine binds loopback ports by number, so it stays closed.
fn refused_port() -> Result<SocketAddr, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    l.local_addr().map_err(|e| e.to_string())
}

/// Accepts every connection and keeps it open without reading or writing: a request
/// there waits for its timeout.
fn black_hole() -> Result<SocketAddr, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        // Held, never read: a few per attempt timeout over a run of the benchmark.
        let mut held: Vec<TcpStream> = Vec::new();
        for s in l.incoming().flatten() {
            held.push(s);
        }
    });
    Ok(addr)
}

async fn unavailable() -> Result<SocketAddr, String> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("bind: {e}"))?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    let app = Router::new().route(
        "/hooks/konbini",
        post(|| async { StatusCode::SERVICE_UNAVAILABLE }),
    );
    tokio::spawn(async move { axum::serve(l, app).await });
    Ok(addr)
}
