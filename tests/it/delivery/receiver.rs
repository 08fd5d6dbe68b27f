//! A shop's webhook endpoint for the tests: records every request (headers and body) and
//! answers with the status it is told to, on 127.0.0.1:0.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response};
use hyper_util::rt::TokioIo;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: String,
    /// The status it was answered with.
    pub answered: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).expect("a JSON body")
    }

    /// Verified by the maintained Standard Webhooks crate (which also checks the
    /// timestamp against the wall clock).
    pub fn verify(&self, secret: &str) -> Result<(), String> {
        standardwebhooks::Webhook::new(secret)
            .map_err(|e| e.to_string())?
            .verify(self.body.as_bytes(), &self.headers)
            .map_err(|e| e.to_string())
    }
}

#[derive(Default)]
struct State {
    status: u16,
    /// How long each answer takes (a slow endpoint).
    delay: std::time::Duration,
    retry_after: Option<String>,
    received: Vec<Received>,
}

/// The running receiver; stops when dropped.
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    /// Answers `status` to everything until told otherwise.
    pub async fn start(status: u16) -> Receiver {
        Receiver::start_at("127.0.0.1:0".parse().unwrap(), status).await
    }

    /// As [`Receiver::start`], listening at `addr` (an endpoint that comes back where it
    /// was refusing connections).
    // Used by the outage tests, not by the kill -9 trial, which shares this file.
    #[allow(dead_code)]
    pub async fn start_at(addr: SocketAddr, status: u16) -> Receiver {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            status,
            ..State::default()
        }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let state = state.clone();
                        async move {
                            let headers = req.headers().clone();
                            let body = req.into_body().collect().await?.to_bytes();
                            let delay = state.lock().unwrap().delay;
                            tokio::time::sleep(delay).await;
                            let mut s = state.lock().unwrap();
                            let answered = s.status;
                            s.received.push(Received {
                                headers,
                                body: String::from_utf8_lossy(&body).into_owned(),
                                answered,
                            });
                            let mut resp = Response::builder().status(s.status);
                            if let Some(ra) = &s.retry_after {
                                resp = resp.header("retry-after", ra.as_str());
                            }
                            Ok::<_, hyper::Error>(resp.body(Full::new(Bytes::new())).unwrap())
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Receiver { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks/konbini", self.addr)
    }

    pub fn answer(&self, status: u16, retry_after: Option<&str>) {
        let mut s = self.state.lock().unwrap();
        s.status = status;
        s.retry_after = retry_after.map(str::to_owned);
    }

    /// Answers only after `delay`.
    // Used by the kill -9 trial (tests/delivery_crash.rs), which shares this file.
    #[allow(dead_code)]
    pub fn slow(&self, delay: std::time::Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }
}
