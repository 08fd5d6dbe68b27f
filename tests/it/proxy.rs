//! A small HTTP proxy in front of the simulator for the ways a real UnivaPay (or what
//! stands between it and the reconciler) may differ from it: each GET is answered by the
//! test's rule, which may pass it on with another path, pass it on and edit the JSON
//! answer, or answer itself. Binds 127.0.0.1:0; one request per connection.

use std::sync::Arc;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the proxy does with one request.
pub enum Verdict {
    /// Pass it on to this path (and query) of the simulator.
    Forward(String),
    /// Pass it on, then answer with the JSON body edited.
    Edit(String, fn(Value) -> Value),
    /// Answer with this status and body, without asking the simulator.
    Answer(u16, String),
}

pub type Rule = Arc<dyn Fn(&str) -> Verdict + Send + Sync>;

/// Starts the proxy in front of `upstream` (the simulator's base URL); returns its base
/// URL.
pub async fn start(upstream: String, rule: Rule) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        while let Ok((sock, _)) = listener.accept().await {
            let (client, upstream, rule) = (client.clone(), upstream.clone(), rule.clone());
            tokio::spawn(serve(sock, client, upstream, rule));
        }
    });
    format!("http://{addr}")
}

async fn serve(
    mut sock: tokio::net::TcpStream,
    client: reqwest::Client,
    upstream: String,
    rule: Rule,
) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let path = lines
        .next()
        .unwrap_or("")
        .split(' ')
        .nth(1)
        .unwrap_or("/")
        .to_owned();
    let auth = lines
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        })
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    let (to, edit) = match rule(&path) {
        Verdict::Answer(status, body) => return answer(sock, status, String::new(), body).await,
        Verdict::Forward(p) => (p, None),
        Verdict::Edit(p, f) => (p, Some(f)),
    };
    let Ok(r) = client
        .get(format!("{upstream}{to}"))
        .header("Authorization", auth)
        .send()
        .await
    else {
        return answer(sock, 502, String::new(), String::new()).await;
    };
    let mut extra = String::new();
    for (k, v) in r.headers() {
        if k.as_str().starts_with("x-") {
            extra.push_str(&format!("{k}: {}\r\n", v.to_str().unwrap_or("")));
        }
    }
    let status = r.status().as_u16();
    let mut body = r.text().await.unwrap_or_default();
    if let Some(f) = edit
        && let Ok(v) = serde_json::from_str::<Value>(&body)
    {
        body = f(v).to_string();
    }
    answer(sock, status, extra, body).await;
}

async fn answer(mut sock: tokio::net::TcpStream, status: u16, mut extra: String, body: String) {
    extra.push_str(&format!(
        "content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    ));
    let _ = sock
        .write_all(format!("HTTP/1.1 {status} X\r\n{extra}\r\n{body}").as_bytes())
        .await;
}

/// A listing's path with `cursor_direction=asc` made `desc`: a server that ignores the
/// direction asked for and serves newest first (the simulator's default, as UnivaPay's).
pub fn newest_first(path: &str) -> String {
    path.replace("cursor_direction=asc", "cursor_direction=desc")
}
