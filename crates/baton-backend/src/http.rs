//! The HTTP/WebSocket front (axum): routes of DESIGN.md §3, bearer-token auth, the observation
//! WebSocket, and optional TLS.
//!
//! # TLS
//! With [`ServeOptions::tls`] set ([`TlsConfig::from_pem_files`]: a PEM certificate chain and
//! its PEM private key), [`serve`] speaks HTTPS and WSS on the same routes: rustls (TLS 1.2 and
//! 1.3, the `ring` provider, ALPN `http/1.1`) in front of the same axum router. Handshakes run
//! concurrently with accepting (each bounded by [`TLS_HANDSHAKE_TIMEOUT`]), so a slow or broken
//! client never holds up the others; a failed handshake is logged at debug level and the server
//! keeps serving. A client that speaks plain HTTP to the TLS port gets a plain `400` answer
//! with the `backend.tls_required` error body, then the connection closes. The loopback/token
//! rule of [`bind`] is the same with or without TLS.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

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
    /// Serve HTTPS/WSS with this certificate and key instead of plain HTTP/WS.
    pub tls: Option<TlsConfig>,
}

/// Longest time a client may take to complete the TLS handshake (or, on the TLS port, to send
/// a plain HTTP request head) before its connection is dropped.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server side of TLS: a certificate chain and its private key, ready for rustls.
///
/// Cheap to clone (the rustls configuration is shared).
#[derive(Clone)]
pub struct TlsConfig {
    config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig").finish_non_exhaustive()
    }
}

/// Errors of [`TlsConfig::from_pem_files`] and [`TlsConfig::from_pem`]; each names the file
/// (or, for in-memory PEM, which argument) at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// The certificate or key file cannot be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The certificate PEM holds no `CERTIFICATE` section.
    #[error("no PEM certificate (-----BEGIN CERTIFICATE-----) in {origin}")]
    NoCertificate {
        /// The file path, or `certificate PEM`.
        origin: String,
    },
    /// A `CERTIFICATE` section is malformed.
    #[error("invalid PEM certificate in {origin}")]
    Certificate {
        /// The file path, or `certificate PEM`.
        origin: String,
        /// The PEM error.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The key PEM holds no usable private key (PKCS#8, PKCS#1 or SEC1).
    #[error("no usable PEM private key (PKCS#8, PKCS#1 or SEC1) in {origin}")]
    Key {
        /// The file path, or `key PEM`.
        origin: String,
        /// The PEM error.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// rustls refused the pair (the key does not match the certificate, unsupported key type,
    /// …).
    #[error("the certificate in {cert} and the key in {key} cannot be used together")]
    Rejected {
        /// Where the certificate came from.
        cert: String,
        /// Where the key came from.
        key: String,
        /// The rustls error.
        #[source]
        source: rustls::Error,
    },
}

impl TlsConfig {
    /// Reads a PEM certificate chain (leaf first, then intermediates) from `cert` and a PEM
    /// private key (PKCS#8, PKCS#1 or SEC1) from `key`.
    ///
    /// # Errors
    /// [`TlsConfigError`], naming the file at fault.
    pub fn from_pem_files(cert: &FsPath, key: &FsPath) -> Result<Self, TlsConfigError> {
        let read = |path: &FsPath| {
            std::fs::read(path).map_err(|source| TlsConfigError::Read {
                path: path.to_owned(),
                source,
            })
        };
        let (cert_pem, key_pem) = (read(cert)?, read(key)?);
        Self::build(
            &cert_pem,
            &cert.display().to_string(),
            &key_pem,
            &key.display().to_string(),
        )
    }

    /// As [`TlsConfig::from_pem_files`] from PEM text in memory.
    ///
    /// # Errors
    /// [`TlsConfigError`] (origins `certificate PEM` / `key PEM`).
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsConfigError> {
        Self::build(cert_pem, "certificate PEM", key_pem, "key PEM")
    }

    fn build(
        cert_pem: &[u8],
        cert_origin: &str,
        key_pem: &[u8],
        key_origin: &str,
    ) -> Result<Self, TlsConfigError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| TlsConfigError::Certificate {
                origin: cert_origin.to_owned(),
                source,
            })?;
        if chain.is_empty() {
            return Err(TlsConfigError::NoCertificate {
                origin: cert_origin.to_owned(),
            });
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| TlsConfigError::Key {
            origin: key_origin.to_owned(),
            source,
        })?;
        let rejected = |source| TlsConfigError::Rejected {
            cert: cert_origin.to_owned(),
            key: key_origin.to_owned(),
            source,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(rejected)?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(rejected)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            config: Arc::new(config),
        })
    }

    /// The rustls server configuration (for embedding the router in another TLS server).
    pub fn rustls_config(&self) -> Arc<rustls::ServerConfig> {
        self.config.clone()
    }
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

/// Serves the API on `listener` (HTTPS/WSS when [`ServeOptions::tls`] is set, else plain
/// HTTP/WS) until the future is dropped or accepting fails, applying the event log's retention
/// every minute. Workers keep running after a client disconnects; call
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
    let tls = options.tls.clone();
    let app = router(backend, options);
    let result = match tls {
        None => axum::serve(listener, app).await,
        Some(tls) => axum::serve(TlsListener::new(listener, &tls), app).await,
    }
    .map_err(|source| ServeError::Io { addr, source });
    retention.abort();
    result
}

/// A TLS-terminated connection handed to axum, with the peer address.
type Accepted = (TlsStream<TcpStream>, SocketAddr);

/// An [`axum::serve::Listener`] yielding TLS streams: a background task accepts TCP
/// connections and runs each handshake in its own task (a slow client never blocks accepting).
struct TlsListener {
    local: Option<SocketAddr>,
    accepted: mpsc::Receiver<Accepted>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsListener {
    fn new(listener: TcpListener, tls: &TlsConfig) -> Self {
        let local = listener.local_addr().ok();
        let (tx, accepted) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(tls.rustls_config());
        let task = tokio::spawn(accept_tls(listener, acceptor, tx));
        Self {
            local,
            accepted,
            task,
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The accept task only ends when the listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.local
            .ok_or_else(|| std::io::Error::other("the listener has no local address"))
    }
}

/// Accepts TCP connections forever, handshaking each in a task of its own (aborted with this
/// task) and passing the established streams to `tx`.
async fn accept_tls(listener: TcpListener, acceptor: TlsAcceptor, tx: mpsc::Sender<Accepted>) {
    let mut handshakes = tokio::task::JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            Some(_) = handshakes.join_next() => continue,
        };
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        handshakes.spawn(async move {
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake(tcp, &acceptor)).await {
                Ok(Ok(Some(stream))) => {
                    let _ = tx.send((stream, peer)).await;
                }
                Ok(Ok(None)) => {
                    tracing::debug!(%peer, "plain HTTP on the TLS port answered with 400");
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// Like axum's own listener: per-connection errors are skipped, others (e.g. out of file
/// descriptors) are logged and retried after a pause.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// The first byte of a TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Runs the TLS handshake; a client that sent plain HTTP instead gets a 400 answer and `None`.
async fn handshake(
    tcp: TcpStream,
    acceptor: &TlsAcceptor,
) -> std::io::Result<Option<TlsStream<TcpStream>>> {
    let mut first = [0u8; 1];
    if tcp.peek(&mut first).await? == 1 && first[0] != TLS_HANDSHAKE_RECORD {
        answer_plain_http(tcp).await?;
        return Ok(None);
    }
    acceptor.accept(tcp).await.map(Some)
}

/// Largest plain-HTTP request read (and discarded) on the TLS port.
const PLAIN_REQUEST_LIMIT: usize = 64 * 1024;

/// Answers a plain HTTP request on the TLS port with `400 backend.tls_required`. The request is
/// read first and the rest drained after the answer, so closing does not reset the connection
/// before the client read the answer.
async fn answer_plain_http(mut tcp: TcpStream) -> std::io::Result<()> {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < PLAIN_REQUEST_LIMIT {
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(&buf[..n]);
    }
    let error = ApiError::new(
        400,
        "backend.tls_required",
        "this backend only speaks HTTPS; use an https:// (or wss://) URL",
    );
    let body = serde_json::to_string(&error_body(error)).unwrap_or_default();
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(answer.as_bytes()).await?;
    tcp.shutdown().await?;
    let mut drained = request.len();
    while drained < PLAIN_REQUEST_LIMIT {
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        drained += n;
    }
    Ok(())
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
        (status, axum::Json(error_body(self))).into_response()
    }
}

fn error_body(error: ApiError) -> ErrorBody {
    ErrorBody {
        error: error.diagnostic.code.clone(),
        message: error.diagnostic.message.clone(),
        diagnostics: vec![error.diagnostic],
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
