//! The HTTP/WebSocket front (axum): routes of DESIGN.md §3, bearer-token auth, the observation
//! WebSocket.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::sync::broadcast::error::RecvError;

use crate::api::{
    ErrorBody, EventEnvelope, FrameDiagnostic, LifecycleRequest, RuntimeList, WorkerList, WsFrame,
};
use crate::backend::{ApiError, Backend, Lifecycle};
use crate::cursor::Cursor;
use crate::log::{CursorCheck, LoggedEvent};

/// How often [`serve`] applies the retention policy.
const RETENTION_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// Events read from SQLite per page while replaying a cursor.
const REPLAY_PAGE: usize = 1000;

/// How the server accepts clients.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Required bearer token (`Authorization: Bearer <token>`); mandatory for a non-loopback
    /// bind. Requests without it get 401, with a different token 403.
    pub token: Option<String>,
}

/// Errors of [`bind`] and [`serve`].
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A non-loopback address without a token.
    #[error("refusing to listen on non-loopback address {0} without a bearer token (--token-file)")]
    TokenRequired(SocketAddr),
    /// Bind or accept failed.
    #[error("cannot listen on {addr}")]
    Io {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Binds `addr` (port 0 picks a free one) after checking the loopback/token rule.
///
/// # Errors
/// [`ServeError::TokenRequired`], [`ServeError::Io`].
pub async fn bind(addr: SocketAddr, options: &ServeOptions) -> Result<TcpListener, ServeError> {
    if !addr.ip().is_loopback() && options.token.as_deref().is_none_or(str::is_empty) {
        return Err(ServeError::TokenRequired(addr));
    }
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Io { addr, source })
}

/// Serves the API on `listener` until the future is dropped or accepting fails, applying the
/// event log's retention every minute. Workers keep running after a client disconnects; call
/// [`Backend::shutdown`] to kill them.
///
/// # Errors
/// [`ServeError::Io`] when the listener fails.
pub async fn serve(
    listener: TcpListener,
    backend: Backend,
    options: ServeOptions,
) -> Result<(), ServeError> {
    let addr = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
    // Age retention also applies to a quiet log (appends trigger it only every 1024 events).
    let log = backend.log().clone();
    let retention = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(RETENTION_INTERVAL);
        loop {
            ticker.tick().await;
            let log = log.clone();
            let now = crate::log::now_ms();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || log.apply_retention(now)).await
            {
                tracing::warn!(error = %e, "event log retention failed");
            }
        }
    });
    let result = axum::serve(listener, router(backend, options))
        .await
        .map_err(|source| ServeError::Io { addr, source });
    retention.abort();
    result
}

#[derive(Clone)]
struct AppState {
    backend: Backend,
    token: Option<Arc<str>>,
}

/// The axum router with every route (for embedding in another server).
pub fn router(backend: Backend, options: ServeOptions) -> Router {
    let state = AppState {
        backend,
        token: options.token.filter(|t| !t.is_empty()).map(Arc::from),
    };
    Router::new()
        .route("/api/runtimes", get(list_runtimes))
        .route("/api/workers", get(list_workers))
        .route(
            "/api/runtimes/{rt}/workers",
            post(spawn_worker).get(list_runtime_workers),
        )
        .route("/api/runtimes/{rt}/workers/{w}", get(get_worker))
        .route("/api/runtimes/{rt}/workers/{w}/input", post(input))
        .route("/api/runtimes/{rt}/workers/{w}/cancel", post(cancel))
        .route("/api/runtimes/{rt}/workers/{w}/stop", post(stop))
        .route("/api/runtimes/{rt}/workers/{w}/transcript", get(transcript))
        .route("/api/runtimes/{rt}/workers/{w}/events/ws", get(observe))
        .fallback(|| async {
            ApiError::new(404, "backend.not_found", "no such route").into_response()
        })
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .with_state(state)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody {
            error: self.diagnostic.code.clone(),
            message: self.diagnostic.message.clone(),
            diagnostics: vec![self.diagnostic],
        };
        (status, axum::Json(body)).into_response()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            None => {
                return ApiError::new(401, "backend.unauthorized", "a bearer token is required")
                    .into_response();
            }
            Some(g) if !constant_time_eq(g.as_bytes(), token.as_bytes()) => {
                return ApiError::new(403, "backend.forbidden", "the bearer token is not valid")
                    .into_response();
            }
            Some(_) => {}
        }
    }
    next.run(request).await
}

fn parse_body<T: DeserializeOwned + Default>(
    body: &Bytes,
    allow_empty: bool,
) -> Result<T, ApiError> {
    if allow_empty && body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            400,
            "backend.bad_request",
            format!("invalid request body: {e}"),
        )
    })
}

async fn list_runtimes(State(s): State<AppState>) -> Response {
    axum::Json(RuntimeList {
        runtimes: s.backend.runtimes(),
    })
    .into_response()
}

async fn list_workers(State(s): State<AppState>) -> Response {
    axum::Json(WorkerList {
        workers: s.backend.workers(),
    })
    .into_response()
}

async fn list_runtime_workers(State(s): State<AppState>, Path(rt): Path<String>) -> Response {
    if let Err(e) = s
        .backend
        .runtimes()
        .iter()
        .find(|r| r.runtime_id == rt)
        .ok_or_else(|| {
            ApiError::new(
                404,
                "backend.runtime_not_found",
                format!("no runtime {rt:?}"),
            )
        })
    {
        return e.into_response();
    }
    let workers = s
        .backend
        .workers()
        .into_iter()
        .filter(|w| w.runtime_id == rt)
        .collect();
    axum::Json(WorkerList { workers }).into_response()
}

async fn spawn_worker(State(s): State<AppState>, Path(rt): Path<String>, body: Bytes) -> Response {
    let request = match parse_body(&body, false) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    match s.backend.spawn(&rt, request).await {
        Ok(summary) => (StatusCode::CREATED, axum::Json(summary)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn get_worker(State(s): State<AppState>, Path((rt, w)): Path<(String, String)>) -> Response {
    match s.backend.worker(&rt, &w) {
        Ok(summary) => axum::Json(summary).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Default, serde::Deserialize)]
struct InputBody {
    kind: Option<crate::api::InputKind>,
    content: Option<String>,
}

async fn input(
    State(s): State<AppState>,
    Path((rt, w)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let parsed: InputBody = match parse_body(&body, false) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let (Some(kind), Some(content)) = (parsed.kind, parsed.content) else {
        return ApiError::new(400, "backend.bad_request", "input needs kind and content")
            .into_response();
    };
    match s
        .backend
        .input(&rt, &w, crate::api::InputRequest { kind, content })
        .await
    {
        Ok(r) => axum::Json(r).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn lifecycle(s: AppState, rt: String, w: String, body: Bytes, action: Lifecycle) -> Response {
    let request: LifecycleRequest = match parse_body(&body, true) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    match s.backend.lifecycle(&rt, &w, action, request).await {
        Ok(r) => axum::Json(r).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn cancel(
    State(s): State<AppState>,
    Path((rt, w)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    lifecycle(s, rt, w, body, Lifecycle::Cancel).await
}

async fn stop(
    State(s): State<AppState>,
    Path((rt, w)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    lifecycle(s, rt, w, body, Lifecycle::Stop).await
}

async fn transcript(
    State(s): State<AppState>,
    Path((rt, w)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let number = |name: &str| -> Result<Option<u64>, ApiError> {
        q.get(name)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    ApiError::new(
                        400,
                        "backend.bad_request",
                        format!("{name} must be a number"),
                    )
                })
            })
            .transpose()
    };
    let (start, limit) = match (number("start"), number("limit")) {
        (Ok(s), Ok(l)) => (s.unwrap_or(0), l.map(|l| l as usize)),
        (Err(e), _) | (_, Err(e)) => return e.into_response(),
    };
    match s.backend.transcript(&rt, &w, start, limit).await {
        Ok(t) => axum::Json(t).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn observe(
    State(s): State<AppState>,
    Path((rt, w)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    ws: WebSocketUpgrade,
) -> Response {
    let cursor = q.get("cursor").cloned();
    ws.on_upgrade(move |socket| async move {
        Observer {
            backend: s.backend,
            rt,
            w,
            socket,
        }
        .run(cursor)
        .await;
    })
}

struct Observer {
    backend: Backend,
    rt: String,
    w: String,
    socket: WebSocket,
}

/// Why an observation ended early.
enum End {
    Closed,
    Diagnostic(&'static str, String),
}

impl Observer {
    async fn run(mut self, cursor: Option<String>) {
        let result = self.observe(cursor).await;
        if let Err(End::Diagnostic(code, message)) = result {
            let frame = WsFrame::Diagnostic {
                diagnostic: FrameDiagnostic {
                    code: code.into(),
                    message: message.clone(),
                },
            };
            let _ = self.send(&frame).await;
            let _ = self
                .socket
                .send(Message::Close(Some(CloseFrame {
                    code: 1008,
                    reason: code.into(),
                })))
                .await;
        }
    }

    async fn send(&mut self, frame: &WsFrame) -> Result<(), End> {
        let text = serde_json::to_string(frame).map_err(|_| End::Closed)?;
        self.socket
            .send(Message::Text(text.into()))
            .await
            .map_err(|_| End::Closed)
    }

    async fn send_event(&mut self, e: &LoggedEvent) -> Result<(), End> {
        let cursor = Cursor(e.sequence).to_string();
        self.send(&WsFrame::Event {
            envelope: EventEnvelope {
                event_id: cursor.clone(),
                cursor,
                runtime_id: e.runtime_id.clone(),
                worker_id: e.worker_id.clone(),
                recorded_at_ms: e.recorded_at_ms,
                payload: e.payload.clone(),
            },
        })
        .await
    }

    /// Sends every stored event of the worker in `(after, up_to]`; returns the last sequence
    /// sent (or `after`).
    async fn replay(&mut self, mut after: u64, up_to: u64) -> Result<u64, End> {
        let log = self.backend.log().clone();
        loop {
            let (log2, rt, w) = (log.clone(), self.rt.clone(), self.w.clone());
            let page = tokio::task::spawn_blocking(move || {
                log2.read_after(&rt, &w, after, up_to, REPLAY_PAGE)
            })
            .await
            .map_err(|e| End::Diagnostic("backend.internal", e.to_string()))?
            .map_err(|e| End::Diagnostic("backend.internal", e.to_string()))?;
            // Retention may have run since the cursor was checked: never skip silently.
            let pruned = log
                .pruned_through(&self.rt, &self.w)
                .map_err(|e| End::Diagnostic("backend.internal", e.to_string()))?;
            if pruned > after {
                return Err(expired(after));
            }
            let Some(last) = page.last().map(|e| e.sequence) else {
                return Ok(after);
            };
            for e in &page {
                self.send_event(e).await?;
            }
            after = last;
        }
    }

    async fn observe(&mut self, cursor: Option<String>) -> Result<(), End> {
        if let Err(e) = self.backend.check_worker(&self.rt, &self.w) {
            let code = if e.diagnostic.code == "backend.worker_not_found" {
                "backend.worker_not_found"
            } else if e.diagnostic.code == "backend.runtime_not_found" {
                "backend.runtime_unavailable"
            } else {
                "backend.bad_id"
            };
            return Err(End::Diagnostic(code, e.diagnostic.message));
        }
        let (mut rx, mut last) = match cursor {
            None => {
                let (summary, rx, head) = self
                    .backend
                    .snapshot_and_subscribe(&self.rt, &self.w)
                    .map_err(|e| {
                        End::Diagnostic("backend.worker_not_found", e.diagnostic.message)
                    })?;
                let snapshot = LoggedEvent {
                    sequence: head,
                    runtime_id: self.rt.clone(),
                    worker_id: self.w.clone(),
                    recorded_at_ms: crate::log::now_ms(),
                    payload: serde_json::json!({"type": "snapshot", "worker": summary}),
                };
                self.send_event(&snapshot).await?;
                (rx, head)
            }
            Some(text) => {
                let cursor = Cursor::parse(&text)
                    .map_err(|e| End::Diagnostic("backend.cursor_malformed", e.to_string()))?;
                let log = self.backend.log().clone();
                let (rx, head) = log.subscribe();
                match log
                    .check_cursor(&self.rt, &self.w, cursor.0)
                    .map_err(|e| End::Diagnostic("backend.internal", e.to_string()))?
                {
                    CursorCheck::Valid => {}
                    CursorCheck::Expired => return Err(expired(cursor.0)),
                    CursorCheck::Unknown => {
                        return Err(End::Diagnostic(
                            "backend.cursor_unknown_or_expired",
                            format!("cursor {cursor} was never issued by this backend"),
                        ));
                    }
                }
                let last = self.replay(cursor.0, head).await?;
                (rx, last.max(head))
            }
        };
        loop {
            tokio::select! {
                event = rx.recv() => match event {
                    Ok(e) => {
                        if e.sequence > last && e.runtime_id == self.rt && e.worker_id == self.w {
                            self.send_event(&e).await?;
                            last = e.sequence;
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        // Fell behind the live channel: read the gap back from SQLite.
                        let (new_rx, head) = self.backend.log().subscribe();
                        rx = new_rx;
                        self.replay(last, head).await?;
                        last = last.max(head);
                    }
                    Err(RecvError::Closed) => return Ok(()),
                },
                message = self.socket.recv() => match message {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Err(End::Closed),
                    Some(Ok(Message::Ping(data))) => {
                        self.socket.send(Message::Pong(data)).await.map_err(|_| End::Closed)?;
                    }
                    Some(Ok(Message::Pong(_))) => {}
                    Some(Ok(Message::Text(_) | Message::Binary(_))) => {
                        return Err(End::Diagnostic(
                            "backend.observation_only",
                            "this WebSocket only observes; send input with POST …/input".into(),
                        ));
                    }
                },
            }
        }
    }
}

fn expired(cursor: u64) -> End {
    End::Diagnostic(
        "backend.cursor_unknown_or_expired",
        format!(
            "events after cursor {} were removed by retention; attach without a cursor to resync",
            Cursor(cursor)
        ),
    )
}
