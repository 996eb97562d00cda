//! Client of the Baton backend (`baton serve`, DESIGN.md §3): worker management calls and a
//! resumable observation of one worker.
//!
//! The behaviour follows the yoi Backend Runtime API client (seed 001) and goes further:
//! - [`BackendTarget`] validation: an `http://` or `https://` base URL and non-empty runtime and
//!   worker ids (ids are percent-encoded into paths).
//! - [`BackendObserver::connect`] loads the tail of the transcript first, then observes the
//!   event WebSocket **from the transcript's cursor**, so nothing between the two is lost or
//!   shown twice (without a transcript it attaches without a cursor and starts from a snapshot).
//! - Duplicate suppression: events at or below the last delivered sequence are dropped.
//! - Bounded reconnects with exponential backoff ([`ObserveOptions`]), resuming from the last
//!   cursor; a `backend.cursor_unknown_or_expired` diagnostic makes it resync from a fresh
//!   snapshot ([`BackendEvent::Snapshot`]; consumers reset their view).
//! - Every failure is delivered as a [`BackendEvent::Diagnostic`] (`client.*` codes for the
//!   client's own failures, `backend.*` codes from the server).
//!
//! The wire types (transcript, operation results, diagnostics, cursors) are those of
//! [`baton_protocol::backend`], re-exported here; the server uses the same definitions.
//!
//! # Transport
//! The HTTP requests are minimal HTTP/1.1 (`Connection: close`) over a Tokio TCP stream; the
//! observation is a WebSocket (`tokio-tungstenite`) over the same kind of stream. An
//! `https://` base URL makes both TLS (HTTPS and `wss://`; rustls, TLS 1.2/1.3, the `ring`
//! provider, ALPN `http/1.1`). The server certificate must chain to a root of [`BackendTls`]:
//! the Mozilla roots of `webpki-roots` always, plus the extra CA certificates it was given
//! ([`BackendTls::from_ca_file`], e.g. the private CA of a self-hosted `baton serve
//! --tls-cert`). An IP-address host (`https://127.0.0.1:8787`) is checked against the
//! certificate's IP SANs, a name against its DNS SANs. A failed handshake is
//! [`BackendClientError::Tls`] from [`BackendHttp`] and a `client.tls_failed` diagnostic from
//! [`BackendObserver`] (not retried when the certificate was refused).

use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

pub use baton_protocol::backend::{
    Cursor, CursorError, Diagnostic, OperationResult, OperationState, Severity, Transcript,
    TranscriptItem,
};
use baton_protocol::backend::{LifecycleRequest, codes};
use baton_rpc::tokio_tungstenite;
use futures::{SinkExt as _, StreamExt as _};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

/// Largest HTTP response accepted, in bytes.
const MAX_RESPONSE: usize = 64 * 1024 * 1024;

/// Where a backend is and which worker to talk to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendTarget {
    /// Backend API root, e.g. `http://127.0.0.1:8787` (the backend, never a runtime).
    pub base_url: String,
    /// Runtime id (path authority).
    pub runtime_id: String,
    /// Worker id (path authority).
    pub worker_id: String,
    /// Bearer token sent as `Authorization: Bearer …`, if the backend requires one.
    pub token: Option<String>,
    /// Which certificate authorities an `https://` backend may present (default: the
    /// `webpki-roots` Mozilla roots).
    pub tls: BackendTls,
}

impl BackendTarget {
    /// A target without a token.
    pub fn new(
        base_url: impl Into<String>,
        runtime_id: impl Into<String>,
        worker_id: impl Into<String>,
    ) -> Self {
        Self {
            base_url: base_url.into(),
            runtime_id: runtime_id.into(),
            worker_id: worker_id.into(),
            token: None,
            tls: BackendTls::default(),
        }
    }

    /// The same target trusting `tls` for `https://`.
    #[must_use]
    pub fn with_tls(mut self, tls: BackendTls) -> Self {
        self.tls = tls;
        self
    }

    /// `runtime/worker`, for messages.
    pub fn display_label(&self) -> String {
        format!("{}/{}", self.runtime_id, self.worker_id)
    }

    /// Checks the base URL scheme and that both ids are non-empty.
    ///
    /// # Errors
    /// [`BackendClientError::InvalidTarget`].
    pub fn validate(&self) -> Result<(), BackendClientError> {
        validate_base(&self.base_url)?;
        if self.runtime_id.is_empty() {
            return Err(BackendClientError::InvalidTarget(
                "runtime id is required".into(),
            ));
        }
        if self.worker_id.is_empty() {
            return Err(BackendClientError::InvalidTarget(
                "worker id is required".into(),
            ));
        }
        Ok(())
    }

    fn worker_path(&self, suffix: &str) -> String {
        let mut p = format!(
            "/api/runtimes/{}/workers/{}",
            encode(&self.runtime_id),
            encode(&self.worker_id)
        );
        if !suffix.is_empty() {
            p.push('/');
            p.push_str(suffix);
        }
        p
    }

    /// The observation WebSocket URL, with `cursor` when given.
    pub fn observation_url(&self, cursor: Option<&str>) -> String {
        let base = self.base_url.trim_end_matches('/');
        let base = if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            base.to_owned()
        };
        let mut url = format!("{base}{}", self.worker_path("events/ws"));
        if let Some(c) = cursor {
            url.push_str("?cursor=");
            url.push_str(&encode(c));
        }
        url
    }
}

fn validate_base(base_url: &str) -> Result<(), BackendClientError> {
    if base_url.trim().is_empty() {
        return Err(BackendClientError::InvalidTarget(
            "backend base URL is required".into(),
        ));
    }
    let rest = base_url
        .strip_prefix("http://")
        .or_else(|| base_url.strip_prefix("https://"))
        .ok_or_else(|| {
            BackendClientError::InvalidTarget(format!(
                "backend base URL must start with http:// or https://, got {base_url:?}"
            ))
        })?;
    if rest.split('/').next().is_none_or(str::is_empty) {
        return Err(BackendClientError::InvalidTarget(format!(
            "backend base URL {base_url:?} has no host"
        )));
    }
    Ok(())
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn encode(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    for b in input.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Parses a cursor `bo_` + 16 lowercase hex digits into its sequence ([`Cursor::parse`]);
/// `None` for any other spelling.
pub fn decode_cursor(cursor: &str) -> Option<u64> {
    Cursor::parse(cursor).ok().map(Cursor::sequence)
}

/// Which certificate authorities `https://` and `wss://` connections to a backend trust: the
/// Mozilla roots of `webpki-roots` always, plus any extra CA certificates (PEM, e.g. the
/// private CA that signed a self-hosted backend's certificate).
///
/// Cheap to clone; two values are equal when they hold the same extra certificates.
#[derive(Clone, Default)]
pub struct BackendTls {
    extra_roots: Vec<CertificateDer<'static>>,
    /// Built from `extra_roots` when there are any; `None` uses the shared default.
    config: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendTls")
            .field("extra_roots", &self.extra_roots.len())
            .finish()
    }
}

impl PartialEq for BackendTls {
    fn eq(&self, other: &Self) -> bool {
        self.extra_roots == other.extra_roots
    }
}

impl Eq for BackendTls {}

impl BackendTls {
    /// Trusts the `webpki-roots` roots and every `CERTIFICATE` in `pem` (a CA bundle).
    ///
    /// # Errors
    /// [`BackendClientError::CaBundle`] (origin `CA PEM`) when the PEM is malformed, holds no
    /// certificate, or a certificate cannot be a trust anchor.
    pub fn with_ca_pem(pem: &[u8]) -> Result<Self, BackendClientError> {
        Self::build(pem, "CA PEM")
    }

    /// As [`BackendTls::with_ca_pem`] with the bundle read from `path`.
    ///
    /// # Errors
    /// [`BackendClientError::CaBundle`] naming the file, also when it cannot be read.
    pub fn from_ca_file(path: &Path) -> Result<Self, BackendClientError> {
        let origin = path.display().to_string();
        let pem = std::fs::read(path).map_err(|source| BackendClientError::CaBundle {
            origin: origin.clone(),
            source,
        })?;
        Self::build(&pem, &origin)
    }

    /// Number of extra CA certificates (beyond the `webpki-roots` roots).
    pub fn extra_ca_count(&self) -> usize {
        self.extra_roots.len()
    }

    fn build(pem: &[u8], origin: &str) -> Result<Self, BackendClientError> {
        let invalid = |e: String| BackendClientError::CaBundle {
            origin: origin.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        };
        let extra_roots = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(format!("invalid PEM: {e}")))?;
        if extra_roots.is_empty() {
            return Err(invalid(
                "no PEM certificate (-----BEGIN CERTIFICATE-----) found".into(),
            ));
        }
        let config = client_config(&extra_roots).map_err(|e| invalid(e.to_string()))?;
        Ok(Self {
            extra_roots,
            config: Some(config),
        })
    }

    /// The rustls client configuration for these roots.
    fn config(&self) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
        static DEFAULT: OnceLock<Result<Arc<rustls::ClientConfig>, rustls::Error>> =
            OnceLock::new();
        match &self.config {
            Some(c) => Ok(c.clone()),
            None => DEFAULT.get_or_init(|| client_config(&[])).clone(),
        }
    }
}

/// A rustls client configuration (ring provider, safe default protocol versions, ALPN
/// `http/1.1`) trusting the `webpki-roots` roots plus `extra`.
fn client_config(
    extra: &[CertificateDer<'static>],
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for cert in extra {
        roots.add(cert.clone())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Where a base URL points: scheme, host and port to connect to, and the path prefix.
struct Endpoint {
    tls: bool,
    /// Host without IPv6 brackets (for DNS and the TLS server name).
    host: String,
    port: u16,
    /// `host[:port]` as written (the `Host` header).
    authority: String,
    /// The base URL's path (no trailing `/`), prefixed to every request path.
    prefix: String,
}

impl Endpoint {
    fn parse(base_url: &str) -> Result<Self, BackendClientError> {
        validate_base(base_url)?;
        let base = base_url.trim_end_matches('/');
        let (tls, rest) = match base.strip_prefix("https://") {
            Some(rest) => (true, rest),
            None => (false, base.strip_prefix("http://").unwrap_or(base)),
        };
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let default_port = if tls { 443 } else { 80 };
        let bad_port =
            || BackendClientError::InvalidTarget(format!("bad port in backend URL {base_url:?}"));
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| {
                BackendClientError::InvalidTarget(format!("unclosed [ in backend URL {base_url:?}"))
            })?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad_port())?,
                None if after.is_empty() => default_port,
                None => return Err(bad_port()),
            };
            (host, port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, p)) => (host, p.parse().map_err(|_| bad_port())?),
                None => (authority, default_port),
            }
        };
        Ok(Self {
            tls,
            host: host.to_owned(),
            port,
            authority: authority.to_owned(),
            prefix: prefix.to_owned(),
        })
    }

    /// Opens a TCP connection and, for `https://`, completes the TLS handshake.
    ///
    /// `url` names the request in errors.
    async fn connect(
        &self,
        tls: &BackendTls,
        url: &str,
    ) -> Result<BackendStream, BackendClientError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|source| BackendClientError::Io {
                url: url.to_owned(),
                source,
            })?;
        if !self.tls {
            return Ok(BackendStream::Plain(tcp));
        }
        let tls_error = |source| BackendClientError::Tls {
            url: url.to_owned(),
            source,
        };
        let config = tls
            .config()
            .map_err(|e| tls_error(std::io::Error::other(e)))?;
        let name = ServerName::try_from(self.host.clone()).map_err(|_| {
            BackendClientError::InvalidTarget(format!(
                "{:?} is not a valid TLS server name",
                self.host
            ))
        })?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(tls_error)?;
        Ok(BackendStream::Tls(Box::new(stream)))
    }
}

/// A connection to a backend: plain TCP, or TLS over TCP.
enum BackendStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for BackendStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BackendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Whether `e` (from a TLS handshake) is a TLS-level refusal, such as an untrusted certificate,
/// rather than a network failure; such a failure is not retried.
fn is_tls_refusal(e: &std::io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
}

/// `e` and its sources joined with `: ` (for diagnostic messages).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Errors of backend calls.
#[derive(Debug, thiserror::Error)]
pub enum BackendClientError {
    /// The target (URL or ids) is invalid.
    #[error("invalid backend target: {0}")]
    InvalidTarget(String),
    /// The extra CA bundle ([`BackendTls`]) cannot be read or used.
    #[error("cannot use the CA bundle {origin}")]
    CaBundle {
        /// The file path, or `CA PEM`.
        origin: String,
        /// Why (I/O error, or `InvalidData` with the PEM/rustls problem).
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake with an `https://` backend failed: its certificate is not trusted or
    /// does not name the host, no common protocol version, or the connection broke mid-way.
    #[error("tls handshake with the backend at {url} failed")]
    Tls {
        /// The URL.
        url: String,
        /// The handshake error (for a refused certificate it wraps a `rustls::Error`, e.g.
        /// `invalid peer certificate: UnknownIssuer`).
        #[source]
        source: std::io::Error,
    },
    /// Connecting or talking to the backend failed.
    #[error("cannot reach the backend at {url}")]
    Io {
        /// The URL.
        url: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The backend answered with a non-2xx status.
    #[error("backend answered {status} {code}: {message}")]
    Status {
        /// HTTP status.
        status: u16,
        /// The `error` code of the body (empty if none).
        code: String,
        /// The message of the body (or the raw body).
        message: String,
    },
    /// The response was not what the API promises.
    #[error("unexpected backend response from {url}")]
    Decode {
        /// The URL.
        url: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The response was not HTTP.
    #[error("malformed HTTP response from {0}")]
    Malformed(String),
}

/// Something observed on a worker.
#[derive(Debug, Clone, PartialEq)]
pub enum BackendEvent {
    /// A transcript item loaded before observation started (oldest first).
    Transcript(TranscriptItem),
    /// A snapshot: the worker summary at `cursor`. After a resync, consumers reset their view.
    Snapshot {
        /// Cursor of the snapshot.
        cursor: String,
        /// The worker summary (`{runtime_id, worker_id, label, state, status, …}`).
        worker: Value,
    },
    /// A logged event (`payload.type`: `output`, `input`, `exit`, …; see `baton-backend`).
    Event {
        /// Its cursor (= event id).
        cursor: String,
        /// The payload.
        payload: Value,
    },
    /// A failure or a server diagnostic (`client.*` or `backend.*` code).
    Diagnostic {
        /// Code.
        code: String,
        /// Explanation.
        message: String,
    },
}

/// Reconnect and loading behaviour of [`BackendObserver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObserveOptions {
    /// Consecutive failed connection attempts before giving up (a connection that delivered a
    /// frame resets the count).
    pub max_reconnects: usize,
    /// Delay before the first reconnect; doubles each attempt.
    pub initial_backoff: Duration,
    /// Largest delay between attempts.
    pub max_backoff: Duration,
    /// Number of transcript items loaded before observing (the newest ones; 0: none, attach
    /// from a snapshot).
    pub transcript_limit: usize,
}

impl Default for ObserveOptions {
    fn default() -> Self {
        Self {
            max_reconnects: 5,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(5),
            transcript_limit: 512,
        }
    }
}

/// Minimal HTTP/1.1 JSON calls to a backend, over TLS for an `https://` base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendHttp {
    base_url: String,
    token: Option<String>,
    tls: BackendTls,
}

impl BackendHttp {
    /// A client for `base_url` (validated) with an optional bearer token, trusting the
    /// default roots ([`BackendTls::default`]) for `https://`.
    ///
    /// # Errors
    /// [`BackendClientError::InvalidTarget`].
    pub fn new(base_url: &str, token: Option<String>) -> Result<Self, BackendClientError> {
        Endpoint::parse(base_url)?;
        Ok(Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            token,
            tls: BackendTls::default(),
        })
    }

    /// The same client trusting `tls` (e.g. [`BackendTls::from_ca_file`]) for `https://`.
    #[must_use]
    pub fn with_tls(mut self, tls: BackendTls) -> Self {
        self.tls = tls;
        self
    }

    /// `method path` with an optional JSON body; returns the decoded JSON of a 2xx answer.
    ///
    /// # Errors
    /// [`BackendClientError::Status`] for non-2xx (with the backend's error code), and the I/O,
    /// TLS and decode variants.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, BackendClientError> {
        let url = format!("{}{path}", self.base_url);
        let endpoint = Endpoint::parse(&self.base_url)?;
        let io = |source| BackendClientError::Io {
            url: url.clone(),
            source,
        };
        let mut stream = endpoint.connect(&self.tls, &url).await?;
        let (authority, prefix) = (&endpoint.authority, &endpoint.prefix);
        let body = body.map(Value::to_string).unwrap_or_default();
        let auth = self
            .token
            .as_ref()
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "{method} {prefix}{path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nAccept: application/json\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.map_err(io)?;
        let mut raw = Vec::new();
        let read = (&mut stream)
            .take(MAX_RESPONSE as u64)
            .read_to_end(&mut raw)
            .await;
        match read {
            Ok(_) => {}
            // A TLS peer that closed without close_notify: fine once the answer is complete.
            Err(e)
                if e.kind() == std::io::ErrorKind::UnexpectedEof
                    && endpoint.tls
                    && response_complete(&raw) => {}
            Err(e) => return Err(io(e)),
        }
        let (status, body) =
            parse_response(&raw).ok_or_else(|| BackendClientError::Malformed(url.clone()))?;
        if !(200..300).contains(&status) {
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            return Err(BackendClientError::Status {
                status,
                code: v["error"].as_str().unwrap_or_default().to_owned(),
                message: v["message"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned()),
            });
        }
        serde_json::from_slice(&body).map_err(|source| BackendClientError::Decode { url, source })
    }

    /// [`BackendHttp::call`], decoded as `T`.
    ///
    /// # Errors
    /// As [`BackendHttp::call`]; [`BackendClientError::Decode`] when the answer is not a `T`.
    async fn call_as<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T, BackendClientError> {
        let v = self.call(method, path, body).await?;
        serde_json::from_value(v).map_err(|source| BackendClientError::Decode {
            url: format!("{}{path}", self.base_url),
            source,
        })
    }

    /// `GET /api/workers` → the `workers` array.
    ///
    /// # Errors
    /// As [`BackendHttp::call`].
    pub async fn list_workers(&self) -> Result<Vec<Value>, BackendClientError> {
        let v = self.call("GET", "/api/workers", None).await?;
        Ok(v["workers"].as_array().cloned().unwrap_or_default())
    }

    /// `GET /api/runtimes` → the runtimes (`{runtime_id, kind, state, capabilities}`; never
    /// their addresses).
    ///
    /// # Errors
    /// As [`BackendHttp::call`]; [`BackendClientError::Decode`] when the answer is not a
    /// runtime list.
    pub async fn list_runtimes(
        &self,
    ) -> Result<Vec<baton_protocol::backend::RuntimeSummary>, BackendClientError> {
        let list: baton_protocol::backend::RuntimeList =
            self.call_as("GET", "/api/runtimes", None).await?;
        Ok(list.runtimes)
    }

    /// `POST /api/runtimes/{rt}/workers` with `request` (`{argv, cwd?, env?, tty?, label?}`) →
    /// the worker summary.
    ///
    /// # Errors
    /// As [`BackendHttp::call`].
    pub async fn spawn(
        &self,
        runtime_id: &str,
        request: &Value,
    ) -> Result<Value, BackendClientError> {
        let path = format!("/api/runtimes/{}/workers", encode(runtime_id));
        self.call("POST", &path, Some(request)).await
    }

    /// `POST …/workers/{w}/{action}` for `cancel` or `stop` with an optional reason.
    ///
    /// # Errors
    /// As [`BackendHttp::call`], plus decode errors.
    pub async fn lifecycle(
        &self,
        runtime_id: &str,
        worker_id: &str,
        action: &str,
        reason: Option<&str>,
    ) -> Result<OperationResult, BackendClientError> {
        let body = serde_json::json!(LifecycleRequest {
            reason: reason.map(str::to_owned),
        });
        self.call_as(
            "POST",
            &worker_path(runtime_id, worker_id, action),
            Some(&body),
        )
        .await
    }

    /// `POST …/workers/{w}/input` with `{kind, content}` (`kind`: `user` or `system`).
    ///
    /// # Errors
    /// As [`BackendHttp::lifecycle`].
    pub async fn input(
        &self,
        runtime_id: &str,
        worker_id: &str,
        kind: &str,
        content: &str,
    ) -> Result<OperationResult, BackendClientError> {
        let body = serde_json::json!({ "kind": kind, "content": content });
        self.call_as(
            "POST",
            &worker_path(runtime_id, worker_id, "input"),
            Some(&body),
        )
        .await
    }

    /// `GET …/transcript?start&limit`.
    ///
    /// # Errors
    /// As [`BackendHttp::lifecycle`].
    pub async fn transcript(
        &self,
        runtime_id: &str,
        worker_id: &str,
        start: u64,
        limit: usize,
    ) -> Result<Transcript, BackendClientError> {
        let path = worker_path(
            runtime_id,
            worker_id,
            &format!("transcript?start={start}&limit={limit}"),
        );
        self.call_as("GET", &path, None).await
    }
}

/// `/api/runtimes/{rt}/workers/{w}/{rest}` with both ids percent-encoded.
fn worker_path(runtime_id: &str, worker_id: &str, rest: &str) -> String {
    format!(
        "/api/runtimes/{}/workers/{}/{rest}",
        encode(runtime_id),
        encode(worker_id)
    )
}

/// Whether `raw` holds a whole response: a chunked body with its last chunk, or at least
/// `content-length` body bytes.
fn response_complete(raw: &[u8]) -> bool {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let Ok(head) = std::str::from_utf8(&raw[..end]) else {
        return false;
    };
    let length = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
    });
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    match length {
        _ if chunked => parse_response(raw).is_some(),
        Some(n) => raw.len() - (end + 4) >= n,
        // A body delimited by the close itself: a truncation could not be told apart.
        None => false,
    }
}

fn parse_response(raw: &[u8]) -> Option<(u16, Vec<u8>)> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let body = &raw[end + 4..];
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if !chunked {
        return Some((status, body.to_vec()));
    }
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some((status, out));
        }
        out.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

/// A live observation of one worker: transcript, then events, reconnecting as needed.
/// Dropping it stops the background task.
#[derive(Debug)]
pub struct BackendObserver {
    target: BackendTarget,
    http: BackendHttp,
    start_cursor: Option<String>,
    events: mpsc::UnboundedReceiver<BackendEvent>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for BackendObserver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn diag(code: &str, message: impl Into<String>) -> BackendEvent {
    BackendEvent::Diagnostic {
        code: code.to_owned(),
        message: message.into(),
    }
}

impl BackendObserver {
    /// Validates the target, loads the newest `options.transcript_limit` transcript items
    /// (delivered as [`BackendEvent::Transcript`]) and starts observing after them. A transcript
    /// failure is delivered as a `client.transcript_unavailable` diagnostic and observation then
    /// starts from a snapshot.
    ///
    /// # Errors
    /// [`BackendClientError::InvalidTarget`] only; everything later is a diagnostic event.
    pub async fn connect(
        target: BackendTarget,
        options: ObserveOptions,
    ) -> Result<Self, BackendClientError> {
        target.validate()?;
        let http =
            BackendHttp::new(&target.base_url, target.token.clone())?.with_tls(target.tls.clone());
        let (tx, events) = mpsc::unbounded_channel();
        let mut cursor = None;
        if options.transcript_limit > 0 {
            match load_transcript_tail(&http, &target, options.transcript_limit).await {
                Ok(t) => {
                    for item in t.items {
                        let _ = tx.send(BackendEvent::Transcript(item));
                    }
                    for d in t.diagnostics {
                        let _ = tx.send(diag(&d.code, d.message));
                    }
                    cursor = t.cursor;
                }
                Err(e) => {
                    let _ = tx.send(diag(
                        "client.transcript_unavailable",
                        format!(
                            "transcript of {} unavailable: {}",
                            target.display_label(),
                            error_chain(&e)
                        ),
                    ));
                }
            }
        }
        let task = tokio::spawn(observe_loop(target.clone(), options, cursor.clone(), tx));
        Ok(Self {
            target,
            http,
            start_cursor: cursor,
            events,
            task,
        })
    }

    /// Observes from a known cursor (e.g. one saved earlier) without loading the transcript:
    /// every event after `cursor`, or, if the backend says the cursor expired, a
    /// `backend.cursor_unknown_or_expired` diagnostic followed by a fresh snapshot.
    ///
    /// # Errors
    /// [`BackendClientError::InvalidTarget`].
    pub fn resume(
        target: BackendTarget,
        options: ObserveOptions,
        cursor: &str,
    ) -> Result<Self, BackendClientError> {
        target.validate()?;
        let http =
            BackendHttp::new(&target.base_url, target.token.clone())?.with_tls(target.tls.clone());
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(observe_loop(
            target.clone(),
            options,
            Some(cursor.to_owned()),
            tx,
        ));
        Ok(Self {
            target,
            http,
            start_cursor: Some(cursor.to_owned()),
            events,
            task,
        })
    }

    /// The next event; `None` once observation stopped (after a final diagnostic).
    pub async fn next_event(&mut self) -> Option<BackendEvent> {
        self.events.recv().await
    }

    /// An event if one is ready.
    pub fn try_next_event(&mut self) -> Option<BackendEvent> {
        self.events.try_recv().ok()
    }

    /// The cursor observation started after (the transcript's cursor, or the one given to
    /// [`BackendObserver::resume`]); `None` when it started from a snapshot.
    pub fn start_cursor(&self) -> Option<&str> {
        self.start_cursor.as_deref()
    }

    /// The HTTP client for this backend.
    pub fn http(&self) -> &BackendHttp {
        &self.http
    }

    /// The target.
    pub fn target(&self) -> &BackendTarget {
        &self.target
    }

    /// Sends `user` (stdin) or `system` (note) input.
    ///
    /// # Errors
    /// As [`BackendHttp::input`].
    pub async fn send_input(
        &self,
        kind: &str,
        content: &str,
    ) -> Result<OperationResult, BackendClientError> {
        self.http
            .input(
                &self.target.runtime_id,
                &self.target.worker_id,
                kind,
                content,
            )
            .await
    }

    /// Interrupts the worker (`cancel`).
    ///
    /// # Errors
    /// As [`BackendHttp::lifecycle`].
    pub async fn cancel(
        &self,
        reason: Option<&str>,
    ) -> Result<OperationResult, BackendClientError> {
        self.http
            .lifecycle(
                &self.target.runtime_id,
                &self.target.worker_id,
                "cancel",
                reason,
            )
            .await
    }

    /// Terminates the worker's process tree (`stop`).
    ///
    /// # Errors
    /// As [`BackendHttp::lifecycle`].
    pub async fn stop(&self, reason: Option<&str>) -> Result<OperationResult, BackendClientError> {
        self.http
            .lifecycle(
                &self.target.runtime_id,
                &self.target.worker_id,
                "stop",
                reason,
            )
            .await
    }
}

async fn load_transcript_tail(
    http: &BackendHttp,
    target: &BackendTarget,
    limit: usize,
) -> Result<Transcript, BackendClientError> {
    let first = http
        .transcript(&target.runtime_id, &target.worker_id, 0, limit)
        .await?;
    if first.total_items as usize <= first.items.len() {
        return Ok(first);
    }
    let start = first.total_items.saturating_sub(limit as u64);
    http.transcript(&target.runtime_id, &target.worker_id, start, limit)
        .await
}

enum Connection {
    /// Ended by the server or the network; reconnect.
    Dropped { delivered: bool },
    /// The cursor expired: resync from a snapshot.
    Resync,
    /// Nothing more to do (worker gone, consumer gone).
    Stop,
}

async fn observe_loop(
    target: BackendTarget,
    options: ObserveOptions,
    mut cursor: Option<String>,
    tx: mpsc::UnboundedSender<BackendEvent>,
) {
    let mut last = cursor.as_deref().and_then(decode_cursor).unwrap_or(0);
    let mut failures = 0usize;
    loop {
        let outcome = observe_once(&target, &mut cursor, &mut last, &tx).await;
        match outcome {
            Connection::Stop => return,
            Connection::Resync => {
                cursor = None;
                last = 0;
                continue;
            }
            Connection::Dropped { delivered } => {
                if delivered {
                    failures = 0;
                }
                failures += 1;
                if failures > options.max_reconnects {
                    let _ = tx.send(diag(
                        "client.reconnect_exhausted",
                        format!(
                            "observation of {} stopped after {} reconnect attempts",
                            target.display_label(),
                            options.max_reconnects
                        ),
                    ));
                    return;
                }
                let factor = 1u32 << (failures - 1).min(16);
                let delay = options
                    .initial_backoff
                    .saturating_mul(factor)
                    .min(options.max_backoff);
                tokio::time::sleep(delay).await;
            }
        }
        if tx.is_closed() {
            return;
        }
    }
}

async fn observe_once(
    target: &BackendTarget,
    cursor: &mut Option<String>,
    last: &mut u64,
    tx: &mpsc::UnboundedSender<BackendEvent>,
) -> Connection {
    let url = target.observation_url(cursor.as_deref());
    let mut request = match url.as_str().into_client_request() {
        Ok(r) => r,
        Err(e) => {
            let _ = tx.send(diag("client.ws_connect_failed", e.to_string()));
            return Connection::Stop;
        }
    };
    if let Some(token) = &target.token
        && let Ok(v) = format!("Bearer {token}").parse()
    {
        request.headers_mut().insert("authorization", v);
    }
    let endpoint = match Endpoint::parse(&target.base_url) {
        Ok(e) => e,
        Err(e) => {
            let _ = tx.send(diag("client.ws_connect_failed", error_chain(&e)));
            return Connection::Stop;
        }
    };
    let stream = match endpoint.connect(&target.tls, &url).await {
        Ok(s) => s,
        Err(e) => {
            let refused =
                matches!(&e, BackendClientError::Tls { source, .. } if is_tls_refusal(source));
            let code = if matches!(e, BackendClientError::Tls { .. }) {
                "client.tls_failed"
            } else {
                "client.ws_connect_failed"
            };
            let _ = tx.send(diag(
                code,
                format!(
                    "cannot observe {}: {}",
                    target.display_label(),
                    error_chain(&e)
                ),
            ));
            return if refused || matches!(e, BackendClientError::InvalidTarget(_)) {
                Connection::Stop
            } else {
                Connection::Dropped { delivered: false }
            };
        }
    };
    let mut ws = match tokio_tungstenite::client_async(request, stream).await {
        Ok((ws, _)) => ws,
        Err(e) => {
            let _ = tx.send(diag(
                "client.ws_connect_failed",
                format!("cannot observe {}: {e}", target.display_label()),
            ));
            return Connection::Dropped { delivered: false };
        }
    };
    let mut delivered = false;
    while let Some(message) = ws.next().await {
        let text = match message {
            Ok(Message::Text(t)) => t,
            Ok(Message::Ping(p)) => {
                let _ = ws.send(Message::Pong(p)).await;
                continue;
            }
            Ok(Message::Close(_)) => break,
            Ok(_) => continue,
            Err(e) => {
                let _ = tx.send(diag(
                    "client.ws_error",
                    format!("observation of {} failed: {e}", target.display_label()),
                ));
                break;
            }
        };
        delivered = true;
        let frame: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                let _ = tx.send(diag(
                    "client.frame_invalid",
                    format!("frame is not JSON: {e}"),
                ));
                continue;
            }
        };
        match frame["kind"].as_str() {
            Some("event") => {
                let env = &frame["envelope"];
                if env["runtime_id"] != target.runtime_id.as_str()
                    || env["worker_id"] != target.worker_id.as_str()
                {
                    let _ = tx.send(diag(
                        "client.target_mismatch",
                        format!(
                            "frame for another worker: {}/{}",
                            env["runtime_id"], env["worker_id"]
                        ),
                    ));
                    continue;
                }
                let Some(c) = env["cursor"].as_str() else {
                    let _ = tx.send(diag("client.frame_invalid", "event without cursor"));
                    continue;
                };
                let Some(seq) = decode_cursor(c) else {
                    let _ = tx.send(diag("client.cursor_malformed", format!("cursor {c:?}")));
                    continue;
                };
                let payload = env["payload"].clone();
                let is_snapshot = payload["type"] == "snapshot";
                if !is_snapshot && seq <= *last {
                    continue; // duplicate
                }
                *last = (*last).max(seq);
                *cursor = Some(c.to_owned());
                let event = if is_snapshot {
                    BackendEvent::Snapshot {
                        cursor: c.to_owned(),
                        worker: payload["worker"].clone(),
                    }
                } else {
                    BackendEvent::Event {
                        cursor: c.to_owned(),
                        payload,
                    }
                };
                if tx.send(event).is_err() {
                    return Connection::Stop;
                }
            }
            Some("diagnostic") => {
                let code = frame["diagnostic"]["code"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let message = frame["diagnostic"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let _ = tx.send(diag(&code, message));
                return match code.as_str() {
                    codes::CURSOR_UNKNOWN_OR_EXPIRED => Connection::Resync,
                    codes::UPSTREAM_DISCONNECT | codes::RUNTIME_UNAVAILABLE => {
                        Connection::Dropped { delivered }
                    }
                    _ => Connection::Stop,
                };
            }
            _ => {
                let _ = tx.send(diag(
                    "client.frame_invalid",
                    format!("unknown frame {frame}"),
                ));
            }
        }
    }
    Connection::Dropped { delivered }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_targets_and_builds_urls() {
        let ok = BackendTarget::new("http://127.0.0.1:8787/", "runtime/one", "worker one");
        ok.validate().expect("valid");
        assert_eq!(
            ok.observation_url(Some("bo_0000000000000001")),
            "ws://127.0.0.1:8787/api/runtimes/runtime%2Fone/workers/worker%20one/events/ws?cursor=bo_0000000000000001"
        );
        assert_eq!(
            BackendTarget::new("https://h", "a", "b").observation_url(None),
            "wss://h/api/runtimes/a/workers/b/events/ws"
        );
        for bad in [
            BackendTarget::new("", "a", "b"),
            BackendTarget::new("ftp://h", "a", "b"),
            BackendTarget::new("http://", "a", "b"),
            BackendTarget::new("http://h", "", "b"),
            BackendTarget::new("http://h", "a", ""),
        ] {
            assert!(
                matches!(bad.validate(), Err(BackendClientError::InvalidTarget(_))),
                "{bad:?}"
            );
        }
        assert_eq!(decode_cursor("bo_00000000000000ff"), Some(255));
        assert_eq!(decode_cursor("bo_00000000000000FF"), None);
        assert_eq!(decode_cursor("bo_ff"), None);
    }

    #[test]
    fn endpoints_from_base_urls() {
        let e = Endpoint::parse("https://backend.example:8443/prefix/").expect("parse");
        assert!(e.tls);
        assert_eq!(
            (
                e.host.as_str(),
                e.port,
                e.authority.as_str(),
                e.prefix.as_str()
            ),
            ("backend.example", 8443, "backend.example:8443", "/prefix")
        );
        let e = Endpoint::parse("https://h").expect("parse");
        assert_eq!((e.tls, e.port, e.prefix.as_str()), (true, 443, ""));
        let e = Endpoint::parse("http://h").expect("parse");
        assert_eq!((e.tls, e.port), (false, 80));
        let e = Endpoint::parse("https://[::1]:9000").expect("parse");
        assert_eq!((e.host.as_str(), e.port), ("::1", 9000));
        assert_eq!(e.authority, "[::1]:9000");
        let e = Endpoint::parse("http://[::1]").expect("parse");
        assert_eq!((e.host.as_str(), e.port), ("::1", 80));
        for bad in [
            "http://h:port",
            "http://h:99999",
            "https://[::1",
            "https://[::1]x",
        ] {
            assert!(
                matches!(
                    Endpoint::parse(bad),
                    Err(BackendClientError::InvalidTarget(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn ca_bundles_are_checked() {
        let err = BackendTls::with_ca_pem(b"").expect_err("empty");
        assert!(
            matches!(&err, BackendClientError::CaBundle { origin, .. } if origin == "CA PEM"),
            "{err:?}"
        );
        let err =
            BackendTls::with_ca_pem(b"-----BEGIN CERTIFICATE-----\n%%%\n").expect_err("malformed");
        assert!(error_chain(&err).contains("invalid PEM"), "{err:?}");
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope.pem");
        let err = BackendTls::from_ca_file(&missing).expect_err("missing");
        assert!(err.to_string().contains("nope.pem"), "{err}");
        assert_eq!(BackendTls::default(), BackendTls::default());
        assert_eq!(BackendTls::default().extra_ca_count(), 0);
        BackendTls::default().config().expect("default roots");
    }

    #[test]
    fn complete_responses() {
        assert!(response_complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
        ));
        assert!(!response_complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n{}"
        ));
        assert!(response_complete(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
        ));
        assert!(!response_complete(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n"
        ));
        assert!(!response_complete(b"HTTP/1.1 200 OK\r\n\r\n{}"));
        assert!(!response_complete(b"HTTP/1.1 200"));
    }

    #[test]
    fn parses_plain_and_chunked_responses() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_response(plain), Some((200, b"{}".to_vec())));
        let chunked = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked), Some((404, b"{\"a\":1}".to_vec())));
        assert_eq!(parse_response(b"garbage"), None);
    }
}
