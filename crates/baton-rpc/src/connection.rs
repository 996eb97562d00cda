//! The connection driver: a reader task, a writer task and the pending-call table.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use baton_protocol::jsonrpc::{
    Message, Notification, Request, RequestId, Response, RpcError, salvage_id,
};
use futures::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::transport::{ReadEvent, Reader, Transport, Writer};

/// Settings of a [`Connection`].
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// Largest accepted incoming message in bytes (default 64 MiB). Larger ones are rejected
    /// (see the crate docs).
    pub max_message_bytes: usize,
    /// A name for logs, e.g. `exec-server ws 127.0.0.1:5555`.
    pub name: String,
    /// WebSocket keepalive: a ping is sent every interval, and a connection from which nothing
    /// (not even a pong) arrived for three intervals is closed, so a vanished peer is noticed.
    /// Default 30 s; `None` disables it. Ignored on stdio and in-memory transports.
    pub keepalive: Option<std::time::Duration>,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 * 1024 * 1024,
            name: "json-rpc".into(),
            keepalive: Some(std::time::Duration::from_secs(30)),
        }
    }
}

/// Serves what the other side sends.
pub trait Handler: Send + Sync + 'static {
    /// Handles one request; runs in its own task, concurrently with other requests. The
    /// returned value or error becomes the response. Default: `-32601` method not found.
    fn request(
        &self,
        peer: &Peer,
        method: String,
        params: Value,
    ) -> BoxFuture<'static, Result<Value, RpcError>> {
        let _ = (peer, params);
        Box::pin(async move { Err(RpcError::method_not_found(&method)) })
    }

    /// Handles one notification, inline and in arrival order (so it must not block).
    /// Default: ignored.
    fn notification(&self, peer: &Peer, method: String, params: Value) {
        let _ = (peer, method, params);
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The connection closed before the response arrived (or was already closed).
    #[error("json-rpc connection closed: {0}")]
    Closed(String),
    /// The other side answered with an error.
    #[error("server error {}: {}", .0.code, .0.message)]
    Server(#[source] RpcError),
    /// The params could not be serialised, or the result did not have the expected shape.
    #[error("unexpected json-rpc payload: {0}")]
    Json(#[source] serde_json::Error),
}

enum Outgoing {
    Text(String),
    /// Close after everything queued before it (WebSocket close code 1009 when `too_big`).
    Close {
        too_big: bool,
        reason: String,
    },
}

struct Shared {
    name: String,
    out: mpsc::Sender<Outgoing>,
    pending: Mutex<HashMap<i64, oneshot::Sender<Result<Value, RpcError>>>>,
    next_id: AtomicI64,
    cancel: CancellationToken,
    close_reason: Mutex<Option<String>>,
}

/// A handle on a running connection; cheap to clone. Calls and notifications may be made from
/// any task.
#[derive(Clone)]
pub struct Peer {
    shared: Arc<Shared>,
}

/// Starts connections.
pub struct Connection;

impl Connection {
    /// Starts serving `transport` in background tasks (requires a tokio runtime) and returns the
    /// peer handle. `handler` serves incoming requests and notifications.
    pub fn spawn(
        transport: Transport,
        config: ConnectionConfig,
        handler: Arc<dyn Handler>,
    ) -> Peer {
        // Small on purpose: senders (e.g. one process's output) wait here in FIFO order, so
        // a message of a quiet sender waits behind at most this many of a noisy one.
        let (out_tx, out_rx) = mpsc::channel(128);
        let shared = Arc::new(Shared {
            name: config.name.clone(),
            out: out_tx,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicI64::new(1),
            cancel: CancellationToken::new(),
            close_reason: Mutex::new(None),
        });
        let peer = Peer { shared };
        let keepalive = config.keepalive.filter(|_| transport.writer.can_ping());
        tokio::spawn(write_loop(
            transport.writer,
            out_rx,
            peer.clone(),
            keepalive,
        ));
        tokio::spawn(read_loop(
            transport.reader,
            config.max_message_bytes,
            handler,
            peer.clone(),
            keepalive,
        ));
        peer
    }
}

impl Peer {
    /// Calls `method` with `params` and waits for the response.
    ///
    /// Errors: [`CallError::Closed`] when the connection is or becomes closed,
    /// [`CallError::Server`] for an error response, [`CallError::Json`] when the params do not
    /// serialise or the result does not deserialise into `R`.
    pub async fn call<P: Serialize, R: DeserializeOwned>(
        &self,
        method: &str,
        params: &P,
    ) -> Result<R, CallError> {
        let params = serde_json::to_value(params).map_err(CallError::Json)?;
        let value = self.call_value(method, params).await?;
        serde_json::from_value(value).map_err(CallError::Json)
    }

    /// Like [`Peer::call`] with untyped params and result.
    pub async fn call_value(&self, method: &str, params: Value) -> Result<Value, CallError> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.shared.pending).insert(id, tx);
        let msg = Message::Request(Request {
            id: RequestId::Number(id),
            method: method.to_owned(),
            params,
        });
        if self.is_closed() || self.send(msg).await.is_err() {
            lock(&self.shared.pending).remove(&id);
            return Err(CallError::Closed(self.close_reason()));
        }
        let result = tokio::select! {
            r = rx => r,
            () = self.shared.cancel.cancelled() => {
                lock(&self.shared.pending).remove(&id);
                return Err(CallError::Closed(self.close_reason()));
            }
        };
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(CallError::Server(e)),
            Err(_) => Err(CallError::Closed(self.close_reason())),
        }
    }

    /// Sends a notification.
    ///
    /// Errors: [`CallError::Closed`] when the connection is closed, [`CallError::Json`] when
    /// the params do not serialise.
    pub async fn notify<P: Serialize>(&self, method: &str, params: &P) -> Result<(), CallError> {
        // Serialised in one pass (no intermediate `Value`): this is the output hot path.
        #[derive(Serialize)]
        struct Out<'a, P> {
            jsonrpc: &'static str,
            method: &'a str,
            params: &'a P,
        }
        let text = serde_json::to_string(&Out {
            jsonrpc: "2.0",
            method,
            params,
        })
        .map_err(CallError::Json)?;
        if self.is_closed() {
            return Err(CallError::Closed(self.close_reason()));
        }
        self.shared
            .out
            .send(Outgoing::Text(text))
            .await
            .map_err(|_| CallError::Closed(self.close_reason()))
    }

    async fn send(&self, msg: Message) -> Result<(), CallError> {
        if self.is_closed() {
            return Err(CallError::Closed(self.close_reason()));
        }
        self.shared
            .out
            .send(Outgoing::Text(msg.to_json()))
            .await
            .map_err(|_| CallError::Closed(self.close_reason()))
    }

    /// Closes the connection: messages already queued are still sent, then the transport is
    /// closed; pending calls fail with [`CallError::Closed`] carrying `reason`.
    pub fn close(&self, reason: &str) {
        self.set_reason(reason);
        self.shared.cancel.cancel();
    }

    /// Whether the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.shared.cancel.is_cancelled()
    }

    /// Waits until the connection is closed and returns why.
    pub async fn closed(&self) -> String {
        self.shared.cancel.cancelled().await;
        self.close_reason()
    }

    /// The connection's name from its [`ConnectionConfig`].
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    fn set_reason(&self, reason: &str) {
        let mut r = lock(&self.shared.close_reason);
        if r.is_none() {
            *r = Some(reason.to_owned());
        }
    }

    fn close_reason(&self) -> String {
        lock(&self.shared.close_reason)
            .clone()
            .unwrap_or_else(|| "closed".into())
    }

    fn respond(&self, id: RequestId, result: Result<Value, RpcError>) -> Outgoing {
        let _ = self;
        Outgoing::Text(Message::Response(Response { id, result }).to_json())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn ticker(every: Option<std::time::Duration>) -> Option<tokio::time::Interval> {
    every.map(|d| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + d, d);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    })
}

async fn tick(t: &mut Option<tokio::time::Interval>) {
    match t {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn write_loop(
    mut writer: Writer,
    mut rx: mpsc::Receiver<Outgoing>,
    peer: Peer,
    keepalive: Option<std::time::Duration>,
) {
    let cancel = peer.shared.cancel.clone();
    let mut close: Option<(bool, String)> = None;
    let mut pings = ticker(keepalive);
    'outer: loop {
        let first = tokio::select! {
            biased;
            m = rx.recv() => m,
            () = cancel.cancelled() => None,
            () = tick(&mut pings) => {
                if let Err(e) = writer.ping().await {
                    peer.close(&format!("write failed: {e}"));
                    break;
                }
                continue;
            }
        };
        let Some(first) = first else { break };
        let mut next = Some(first);
        // Batch whatever is already queued into one flush.
        while let Some(msg) = next.take() {
            match msg {
                Outgoing::Text(t) => {
                    if let Err(e) = writer.feed(t).await {
                        peer.close(&format!("write failed: {e}"));
                        break 'outer;
                    }
                }
                Outgoing::Close { too_big, reason } => {
                    close = Some((too_big, reason));
                    break 'outer;
                }
            }
            next = rx.try_recv().ok();
        }
        if let Err(e) = writer.flush().await {
            peer.close(&format!("write failed: {e}"));
            break;
        }
    }
    // Best effort: send what was queued before the close.
    if close.is_none() {
        while let Ok(msg) = rx.try_recv() {
            match msg {
                Outgoing::Text(t) => {
                    if writer.feed(t).await.is_err() {
                        break;
                    }
                }
                Outgoing::Close { too_big, reason } => {
                    close = Some((too_big, reason));
                    break;
                }
            }
        }
    }
    let _ = writer.flush().await;
    let (too_big, reason) = close.unwrap_or((false, peer.close_reason()));
    peer.set_reason(&reason);
    writer.close(too_big, &reason).await;
    peer.shared.cancel.cancel();
}

async fn read_loop(
    mut reader: Reader,
    limit: usize,
    handler: Arc<dyn Handler>,
    peer: Peer,
    keepalive: Option<std::time::Duration>,
) {
    let cancel = peer.shared.cancel.clone();
    let mut tasks = JoinSet::new();
    let mut checks = ticker(keepalive);
    let mut last_seen = tokio::time::Instant::now();
    loop {
        while tasks.try_join_next().is_some() {}
        let event = tokio::select! {
            e = reader.next(limit) => e,
            () = cancel.cancelled() => break,
            () = tick(&mut checks) => {
                if let Some(every) = keepalive
                    && last_seen.elapsed() > every * 3
                {
                    peer.close(&format!(
                        "keepalive timeout: nothing received for {:?}",
                        last_seen.elapsed()
                    ));
                    break;
                }
                continue;
            }
        };
        last_seen = tokio::time::Instant::now();
        let bytes = match event {
            Ok(ReadEvent::Activity) => continue,
            Ok(ReadEvent::Message(b)) => b,
            Ok(ReadEvent::Closed(reason)) => {
                peer.close(&reason.unwrap_or_else(|| "peer closed the connection".into()));
                break;
            }
            Err(e) => {
                peer.close(&format!("read failed: {e}"));
                break;
            }
            Ok(ReadEvent::TooLarge { size, fatal }) => {
                let message =
                    format!("message of at least {size} bytes exceeds the limit of {limit} bytes");
                tracing::warn!(connection = %peer.shared.name, "{message}");
                let err = peer.respond(RequestId::Null, Err(RpcError::invalid_request(&message)));
                let _ = peer.shared.out.send(err).await;
                if fatal {
                    let _ = peer
                        .shared
                        .out
                        .send(Outgoing::Close {
                            too_big: true,
                            reason: "message too big".into(),
                        })
                        .await;
                    peer.set_reason(&message);
                    break;
                }
                continue;
            }
        };
        let msg = match Message::from_slice(&bytes) {
            Ok(m) => m,
            Err(e) => {
                let err = if serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_err() {
                    RpcError::parse_error(format!("invalid JSON: {e}"))
                } else {
                    RpcError::invalid_request(format!("invalid JSON-RPC message: {e}"))
                };
                tracing::debug!(connection = %peer.shared.name, "{err}");
                let _ = peer
                    .shared
                    .out
                    .send(peer.respond(salvage_id(&bytes), Err(err)))
                    .await;
                continue;
            }
        };
        match msg {
            Message::Request(Request { id, method, params }) => {
                let fut = handler.request(&peer, method, params);
                let p = peer.clone();
                tasks.spawn(async move {
                    let result = fut.await;
                    let _ = p.shared.out.send(p.respond(id, result)).await;
                });
            }
            Message::Notification(Notification { method, params }) => {
                handler.notification(&peer, method, params);
            }
            Message::Response(Response { id, result }) => {
                let waiter = match &id {
                    RequestId::Number(n) => lock(&peer.shared.pending).remove(n),
                    _ => None,
                };
                match waiter {
                    Some(tx) => {
                        let _ = tx.send(result);
                    }
                    None => tracing::warn!(
                        connection = %peer.shared.name,
                        "response to unknown request id {id}: {result:?}"
                    ),
                }
            }
        }
    }
    peer.shared.cancel.cancel();
    lock(&peer.shared.pending).clear();
    tasks.abort_all();
}
