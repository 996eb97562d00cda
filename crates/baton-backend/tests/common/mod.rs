//! Shared helpers: a backend on its own Tokio runtime (so a test can "kill" it by shutting the
//! runtime down), a raw HTTP/1.1 client and a WebSocket observer.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_backend::{Backend, BackendConfig, Retention, ServeOptions};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::Message;

/// Failure guard for waits (never used to synchronise).
pub const GUARD: Duration = Duration::from_secs(60);

/// A backend serving on loopback from its own thread and runtime.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    pub fn start(data: &Path, retention: Retention, token: Option<&str>) -> Self {
        Self::start_at(data, retention, token, "127.0.0.1:0".parse().expect("addr"))
    }

    /// As [`TestServer::start`] on a given address (to restart on the same port).
    pub fn start_at(
        data: &Path,
        retention: Retention,
        token: Option<&str>,
        at: SocketAddr,
    ) -> Self {
        Self::start_with(data, retention, token, at, Vec::new)
    }

    /// As [`TestServer::start_at`] with extra runtimes, made on the server's own Tokio runtime
    /// by `runtimes`; [`Backend::recover`] runs before the server answers.
    pub fn start_with<F>(
        data: &Path,
        retention: Retention,
        token: Option<&str>,
        at: SocketAddr,
        runtimes: F,
    ) -> Self
    where
        F: FnOnce() -> Vec<std::sync::Arc<dyn baton_backend::Runtime>> + Send + 'static,
    {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let data: PathBuf = data.to_path_buf();
        let token = token.map(str::to_owned);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            let options = ServeOptions {
                token,
                ..ServeOptions::default()
            };
            rt.block_on(async {
                let mut config = BackendConfig::new(&data);
                config.retention = retention;
                config.default_cwd = std::env::temp_dir();
                let backend = Backend::open(config, runtimes()).expect("open backend");
                backend.recover().await;
                let listener = baton_backend::bind(at, &options).await.expect("bind");
                addr_tx
                    .send(listener.local_addr().expect("addr"))
                    .expect("send addr");
                tokio::spawn(baton_backend::serve(listener, backend, options));
            });
            // Wait for stop (or the test dropping us), then kill everything like a crash: the
            // runtime drops every task, which kills every worker's process group.
            let _ = stop_rx.recv();
            rt.shutdown_timeout(Duration::from_secs(10));
        });
        let addr = addr_rx.recv_timeout(GUARD).expect("server address");
        Self {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Stops the server abruptly (all tasks dropped, workers killed) and waits for it.
    pub fn kill(mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            t.join().expect("server thread");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One HTTP/1.1 request over a fresh connection; returns the status and the JSON body (Null
/// when the body is empty or not JSON).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> (u16, Value) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let body = body.unwrap_or("");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(GUARD, stream.read_to_end(&mut response))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").expect("http head");
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the observation WebSocket of `rt/w`, with an optional cursor.
pub async fn observe(addr: SocketAddr, rt: &str, w: &str, cursor: Option<&str>) -> Ws {
    let mut url = format!("ws://{addr}/api/runtimes/{rt}/workers/{w}/events/ws");
    if let Some(c) = cursor {
        url.push_str("?cursor=");
        url.push_str(c);
    }
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("ws connect");
    ws
}

/// The next text frame as JSON; `None` when the connection closed.
pub async fn next_frame(ws: &mut Ws) -> Option<Value> {
    loop {
        let msg = tokio::time::timeout(GUARD, ws.next())
            .await
            .expect("frame in time");
        match msg {
            Some(Ok(Message::Text(t))) => {
                return Some(serde_json::from_str(&t).expect("frame is JSON"));
            }
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => {}
        }
    }
}

/// Reads event frames until one whose payload matches `stop`; returns them all (including it).
pub async fn events_until(ws: &mut Ws, stop: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let frame = next_frame(ws)
            .await
            .expect("stream ended before the expected event");
        assert_eq!(frame["kind"], "event", "unexpected frame {frame}");
        let done = stop(&frame["envelope"]["payload"]);
        out.push(frame["envelope"].clone());
        if done {
            return out;
        }
    }
}

pub fn is_exit(p: &Value) -> bool {
    p["type"] == "exit"
}

pub fn seq_of(envelope: &Value) -> u64 {
    let c = envelope["cursor"].as_str().expect("cursor");
    assert_eq!(envelope["event_id"], c);
    baton_backend::Cursor::parse(c)
        .expect("well-formed cursor")
        .0
}

/// Output text of the `output` events among `envelopes`, concatenated.
pub fn output_text(envelopes: &[Value]) -> String {
    envelopes
        .iter()
        .filter(|e| e["payload"]["type"] == "output")
        .map(|e| e["payload"]["text"].as_str().unwrap_or_default())
        .collect()
}

pub async fn spawn_worker(addr: SocketAddr, body: Value) -> Value {
    spawn_worker_on(addr, "local", body).await
}

/// Spawns a worker on runtime `rt` and returns its summary (asserting 201).
pub async fn spawn_worker_on(addr: SocketAddr, rt: &str, body: Value) -> Value {
    let (status, summary) = http(
        addr,
        "POST",
        &format!("/api/runtimes/{rt}/workers"),
        Some(&body.to_string()),
        None,
    )
    .await;
    assert_eq!(status, 201, "{summary}");
    summary
}

/// Reads event frames until an `output` event whose text contains `needle`.
pub async fn events_until_output(ws: &mut Ws, needle: &str) -> Vec<Value> {
    events_until(ws, |p| {
        p["type"] == "output" && p["text"].as_str().is_some_and(|t| t.contains(needle))
    })
    .await
}

pub async fn send_ws_text(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(text.into())).await.expect("send");
}
