//! What the webhook tests share: the daemon with its listener up, and requests written by
//! hand over TCP, so a test can send exactly the bytes it means (no header, two headers, a
//! body that is not UTF-8, a body that trickles in).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::TestApp;
use crate::util::{Finished, Running};

/// The `Authorization` value configured at "UnivaPay" and in `[webhook]`.
pub const TOKEN: &str = "Bearer wh-0123456789abcdef-secret";
pub const PATH: &str = "/univapay/webhook";

/// A cron that does not fire during a test: checks come from hints only.
pub const NEVER: &str = "0 0 0 1 1 *";

pub fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// The daemon with its webhook listener up.
pub struct Daemon {
    pub process: Running,
    pub addr: SocketAddr,
}

impl Daemon {
    /// Starts the daemon of `app` (whose config has `[webhook] listen = addr`) and waits
    /// for `/healthz`.
    pub async fn start(app: &TestApp, addr: SocketAddr) -> Daemon {
        Self::wait_ready(app.command().spawn(), addr).await
    }

    pub async fn wait_ready(mut process: Running, addr: SocketAddr) -> Daemon {
        let start = Instant::now();
        loop {
            if let Ok(r) = try_send(addr, get("/healthz", None)).await
                && r.status == 200
            {
                return Daemon { process, addr };
            }
            if process.has_exited() {
                let out = process.wait(Duration::from_secs(1));
                panic!("daemon exited: {}", out.stderr());
            }
            assert!(start.elapsed() < Duration::from_secs(15), "listener not up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// As [`Daemon::wait_ready`], for a daemon whose `/healthz` may not say 200.
    pub async fn wait_ready_any(process: Running, addr: SocketAddr) -> Daemon {
        let start = Instant::now();
        while TcpStream::connect(addr).await.is_err() {
            assert!(start.elapsed() < Duration::from_secs(15), "listener not up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Daemon { process, addr }
    }

    /// SIGTERM, and what the daemon wrote; it must exit 0.
    pub async fn stop(mut self) -> Finished {
        self.process.signal(libc::SIGTERM);
        let out = self.process.finish(Duration::from_secs(20)).await;
        out.assert_code(0);
        out
    }

    pub async fn send(&self, request: Vec<u8>) -> HttpReply {
        send(self.addr, request).await
    }

    /// A webhook with the right token.
    pub async fn hook(&self, body: &str) -> HttpReply {
        self.send(post(PATH, Some(TOKEN.as_bytes()), body.as_bytes()))
            .await
    }
}

#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// A GET, with an `Authorization` header when given.
pub fn get(path: &str, auth: Option<&str>) -> Vec<u8> {
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n{auth}Connection: close\r\n\r\n").into_bytes()
}

/// A POST with `Content-Length`, and an `Authorization` header when given.
pub fn post(path: &str, auth: Option<&[u8]>, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    )
    .into_bytes();
    if let Some(a) = auth {
        r.extend_from_slice(b"Authorization: ");
        r.extend_from_slice(a);
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"\r\n");
    r.extend_from_slice(body);
    r
}

/// Sends `request` on a fresh connection and reads the answer. The request is written
/// beside the reading, and a failed write is ignored: the listener may answer (401, 413)
/// and close before it has taken a large body.
pub async fn try_send(addr: SocketAddr, request: Vec<u8>) -> std::io::Result<HttpReply> {
    let s = TcpStream::connect(addr).await?;
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&request).await;
        wr
    });
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut buf)).await;
    writer.abort();
    match read {
        Err(_) => return Err(std::io::Error::other("no answer within 10 s")),
        // A reset after the answer (the rest of a refused body unread) loses nothing.
        Ok(Err(e)) if buf.is_empty() => return Err(e),
        Ok(_) => {}
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {text:?}")))?;
    Ok(HttpReply {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    })
}

pub async fn send(addr: SocketAddr, request: Vec<u8>) -> HttpReply {
    try_send(addr, request).await.unwrap()
}
