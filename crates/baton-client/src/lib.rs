//! Client of the exec server (`baton exec-server`, or `codex exec-server`; DESIGN.md §2).
//!
//! [`ExecClient::connect`] opens a WebSocket ([`Endpoint::WebSocket`]) or spawns a command whose
//! stdio speaks the protocol ([`Endpoint::Command`], e.g. `ssh host baton exec-server --listen
//! stdio`), performs the `initialize`/`initialized` handshake with timeouts, and gives typed
//! methods for processes and files.
//!
//! Process events ([`RemoteProcess::next_event`]) are published per process strictly in seq
//! order and never twice, whatever order the notifications arrive in: out-of-order events wait
//! in a reorder window of [`ClientOptions::reorder_window`] events; when the window overflows the
//! gap is filled with `process/read`, and if the server no longer has the missing output the
//! process gets an explicit [`ProcessEvent::Failed`]. Each process has its own channel and wake
//! counter, so a noisy process never delays a quiet one.
//!
//! Reconnect: when the connection drops, the client reconnects with exponential backoff
//! ([`ReconnectPolicy`]), resumes its session (`resumeSessionId`) and catches every live process
//! up with `process/read`, so a consumer sees every byte exactly once. Reads are retried across
//! a reconnect; writes carry a `writeId` and are retried safely; other mutating calls whose
//! answer was lost fail with [`ClientError::OutcomeUnknown`] instead of being replayed blindly.
//! After giving up, every process gets [`ProcessEvent::Failed`] and every call fails fast with
//! [`ClientError::Disconnected`].

pub mod backend;
mod transport;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use baton_protocol::exec::{
    ClosedNotification, Empty, ExitedNotification, FsCopyParams, FsCreateDirectoryParams,
    FsGetMetadataParams, FsGetMetadataResponse, FsReadDirectoryEntry, FsReadDirectoryParams,
    FsReadDirectoryResponse, FsReadFileParams, FsReadFileResponse, FsRemoveParams,
    FsWriteFileParams, InitializeParams, InitializeResponse, OutputNotification, OutputStream,
    ProcessId, ProcessSignal, ReadParams, ReadResponse, ResizeParams, SignalParams, StartParams,
    StartResponse, TerminateParams, TerminateResponse, WirePath, WriteParams, WriteResponse,
    WriteStatus, error_codes, methods,
};
use baton_protocol::jsonrpc::RpcError;
use baton_rpc::{CallError, Connection, ConnectionConfig, Handler, Peer};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::{mpsc, watch};

/// Where the server is.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// A WebSocket URL (`ws://HOST:PORT`), with an optional bearer token.
    WebSocket {
        /// The URL.
        url: String,
        /// Sent as `Authorization: Bearer <token>`.
        token: Option<String>,
    },
    /// A command whose stdin/stdout speak newline-delimited JSON-RPC (its stderr is copied to
    /// ours). It inherits our environment plus `env`; it is killed when the client is dropped.
    Command {
        /// Program and arguments.
        argv: Vec<String>,
        /// Working directory (default: ours).
        cwd: Option<PathBuf>,
        /// Extra environment variables.
        env: Vec<(String, String)>,
    },
}

/// Reconnect behaviour after a dropped connection.
#[derive(Debug, Clone)]
pub struct ReconnectPolicy {
    /// Attempts before giving up (0: never reconnect).
    pub max_attempts: u32,
    /// Delay before the first attempt; doubled after each failure.
    pub initial_backoff: Duration,
    /// Upper bound of the delay.
    pub max_backoff: Duration,
}

impl Default for ReconnectPolicy {
    /// 8 attempts, 100 ms doubling to at most 5 s (about 20 s in all, well inside the server's
    /// default 60 s session TTL).
    fn default() -> Self {
        Self {
            max_attempts: 8,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// `clientName` sent in `initialize`.
    pub client_name: String,
    /// Limit for opening the transport.
    pub connect_timeout: Duration,
    /// Limit for the `initialize` call.
    pub initialize_timeout: Duration,
    /// Resume this session instead of creating one.
    pub resume_session_id: Option<String>,
    /// Out-of-order events held per process before the gap is filled with `process/read`.
    pub reorder_window: usize,
    /// What to do when the connection drops.
    pub reconnect: ReconnectPolicy,
    /// How long a gap in a process's seqs may stay open (events waiting for a lower seq that
    /// does not come) before it is filled with `process/read`.
    pub gap_timeout: Duration,
    /// Largest accepted message in bytes.
    pub max_message_bytes: usize,
    /// Send paths as `file://` URIs (default; Baton accepts both dialects and current Codex
    /// servers accept only URIs) instead of bare absolute paths (older Codex servers).
    pub uri_paths: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            client_name: "baton-client".into(),
            connect_timeout: Duration::from_secs(10),
            initialize_timeout: Duration::from_secs(10),
            resume_session_id: None,
            reorder_window: 4096,
            reconnect: ReconnectPolicy::default(),
            gap_timeout: Duration::from_secs(2),
            max_message_bytes: 64 * 1024 * 1024,
            uri_paths: true,
        }
    }
}

/// Errors of client calls.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The transport could not be opened.
    #[error("cannot connect to exec server {target}: {message}")]
    Connect {
        /// URL or command.
        target: String,
        /// Why.
        message: String,
    },
    /// Something took too long.
    #[error("timed out {what} after {after:?}")]
    Timeout {
        /// What was being done.
        what: String,
        /// The limit.
        after: Duration,
    },
    /// The connection is gone and could not be re-established.
    #[error("exec server disconnected: {0}")]
    Disconnected(String),
    /// A mutating call was sent but the connection dropped before its answer: it may or may not
    /// have taken effect, and was not replayed.
    #[error("connection lost during `{method}`: its outcome is unknown")]
    OutcomeUnknown {
        /// The method.
        method: String,
    },
    /// The server answered with an error.
    #[error("exec server error {code}: {message}")]
    Server {
        /// JSON-RPC error code (see `baton_protocol::exec::error_codes`).
        code: i64,
        /// Its message.
        message: String,
    },
    /// A message did not have the expected shape.
    #[error("unexpected exec-server payload")]
    Json(#[source] serde_json::Error),
    /// A process id is already registered on this client.
    #[error("process `{0}` is already registered on this client")]
    DuplicateProcess(String),
}

impl From<RpcError> for ClientError {
    fn from(e: RpcError) -> Self {
        ClientError::Server {
            code: e.code,
            message: e.message,
        }
    }
}

/// One event of a remote process, in seq order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessEvent {
    /// Output bytes.
    Output {
        /// Event seq.
        seq: u64,
        /// Source stream.
        stream: OutputStream,
        /// The bytes.
        chunk: Vec<u8>,
    },
    /// The process exited (code, or 128 + signal).
    Exited {
        /// Event seq.
        seq: u64,
        /// Exit code.
        exit_code: i32,
    },
    /// Exited and all output delivered: the last event.
    Closed {
        /// Event seq.
        seq: u64,
    },
    /// The process can no longer be followed (connection lost for good, output evicted on the
    /// server, …): the last event.
    Failed(String),
}

impl ProcessEvent {
    fn seq(&self) -> Option<u64> {
        match self {
            ProcessEvent::Output { seq, .. }
            | ProcessEvent::Exited { seq, .. }
            | ProcessEvent::Closed { seq } => Some(*seq),
            ProcessEvent::Failed(_) => None,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Ordered {
    last: u64,
    pending: BTreeMap<u64, ProcessEvent>,
    done: bool,
}

struct ProcState {
    ordered: Mutex<Ordered>,
    tx: mpsc::UnboundedSender<ProcessEvent>,
    wake: watch::Sender<u64>,
    catching_up: AtomicBool,
    watching_gap: AtomicBool,
    /// Set by [`ExecClient::attach`]: output the server evicted before the first catch-up is
    /// skipped (the follower starts at the first retained event, and sees the jump in `seq`)
    /// instead of failing the process.
    skip_evicted: AtomicBool,
}

impl Ordered {
    /// Sends every pending event that directly follows `last`, in order; a `Closed` event ends
    /// the process.
    fn release(&mut self, tx: &mpsc::UnboundedSender<ProcessEvent>) {
        while let Some(ev) = self.pending.remove(&(self.last + 1)) {
            self.last += 1;
            let closed = matches!(ev, ProcessEvent::Closed { .. });
            let _ = tx.send(ev);
            if closed {
                self.done = true;
                self.pending.clear();
                break;
            }
        }
    }
}

impl ProcState {
    /// Moves the published position to `seq` without publishing what lies before it (events
    /// the server no longer has), then publishes whatever was waiting right after it.
    fn skip_to(&self, seq: u64) {
        let mut o = lock(&self.ordered);
        if o.done || seq <= o.last {
            return;
        }
        o.last = seq;
        o.pending.retain(|s, _| *s > seq);
        o.release(&self.tx);
        let last = o.last;
        drop(o);
        self.wake.send_modify(|w| *w = (*w).max(last));
    }

    /// Publishes `event` once every lower seq has been published; returns whether the process
    /// is now finished and whether the reorder window overflowed.
    fn publish(&self, event: ProcessEvent, window: usize) -> (bool, bool) {
        let (done, overflow, _) = self.publish_gap(event, window);
        (done, overflow)
    }

    /// [`ProcState::publish`], also telling whether events still wait for a lower seq.
    fn publish_gap(&self, event: ProcessEvent, window: usize) -> (bool, bool, bool) {
        let mut o = lock(&self.ordered);
        if o.done {
            return (true, false, false);
        }
        let Some(seq) = event.seq() else {
            o.done = true;
            o.pending.clear();
            let _ = self.tx.send(event);
            self.wake.send_modify(|w| *w += 1);
            return (true, false, false);
        };
        if seq <= o.last {
            return (false, false, !o.pending.is_empty());
        }
        o.pending.entry(seq).or_insert(event);
        o.release(&self.tx);
        let last = o.last;
        let (done, overflow, gap) = (o.done, o.pending.len() > window, !o.pending.is_empty());
        drop(o);
        self.wake.send_modify(|w| *w = (*w).max(last));
        (done, overflow, gap)
    }

    fn fail(&self, message: String) {
        self.publish(ProcessEvent::Failed(message), usize::MAX);
    }

    fn last(&self) -> (u64, bool) {
        let o = lock(&self.ordered);
        (o.last, o.done)
    }
}

enum Link {
    Up(Peer),
    Reconnecting,
    Down(String),
}

struct Inner {
    /// `None` for a client made from a ready transport (it cannot reconnect).
    endpoint: Option<Endpoint>,
    first_transport: Mutex<Option<baton_rpc::Transport>>,
    options: ClientOptions,
    link: watch::Sender<Link>,
    /// Keeps a command server alive.
    server_process: Mutex<Option<baton_exec::Process>>,
    session_id: Mutex<String>,
    procs: Mutex<HashMap<ProcessId, Arc<ProcState>>>,
    next_write: AtomicU64,
    closing: AtomicBool,
}

/// A connected exec-server client; cheap to clone. Dropping the last clone closes it.
#[derive(Clone)]
pub struct ExecClient {
    inner: Arc<Inner>,
    _guard: Arc<CloseGuard>,
}

struct CloseGuard(Weak<Inner>);
impl Drop for CloseGuard {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            shut(&inner, "client dropped");
        }
    }
}

fn shut(inner: &Inner, reason: &str) {
    inner.closing.store(true, Ordering::SeqCst);
    let old = inner.link.send_replace(Link::Down(reason.to_owned()));
    if let Link::Up(peer) = old {
        peer.close(reason);
    }
    lock(&inner.server_process).take();
}

struct Router {
    inner: Weak<Inner>,
}

impl Handler for Router {
    fn notification(&self, _peer: &Peer, method: String, params: Value) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        let (id, event) = match method.as_str() {
            methods::PROCESS_OUTPUT => match serde_json::from_value::<OutputNotification>(params) {
                Ok(n) => (
                    n.process_id,
                    ProcessEvent::Output {
                        seq: n.seq,
                        stream: n.stream,
                        chunk: n.chunk.0,
                    },
                ),
                Err(e) => return tracing::warn!("bad process/output: {e}"),
            },
            methods::PROCESS_EXITED => match serde_json::from_value::<ExitedNotification>(params) {
                Ok(n) => (
                    n.process_id,
                    ProcessEvent::Exited {
                        seq: n.seq,
                        exit_code: n.exit_code,
                    },
                ),
                Err(e) => return tracing::warn!("bad process/exited: {e}"),
            },
            methods::PROCESS_CLOSED => match serde_json::from_value::<ClosedNotification>(params) {
                Ok(n) => (n.process_id, ProcessEvent::Closed { seq: n.seq }),
                Err(e) => return tracing::warn!("bad process/closed: {e}"),
            },
            other => return tracing::debug!("ignoring notification `{other}`"),
        };
        route(&inner, &id, event);
    }
}

fn route(inner: &Arc<Inner>, id: &ProcessId, event: ProcessEvent) {
    let Some(state) = lock(&inner.procs).get(id).cloned() else {
        return;
    };
    let (done, overflow, gap) = state.publish_gap(event, inner.options.reorder_window);
    if done {
        lock(&inner.procs).remove(id);
    } else if overflow {
        spawn_catch_up(inner.clone(), id.clone(), state);
    } else if gap && !state.watching_gap.swap(true, Ordering::SeqCst) {
        spawn_gap_watch(inner.clone(), id.clone(), state);
    }
}

/// Fills a gap that stays open for `gap_timeout` without progress (a notification the server
/// never sent, e.g. output evicted while the client lagged) instead of waiting forever.
fn spawn_gap_watch(inner: Arc<Inner>, id: ProcessId, state: Arc<ProcState>) {
    let timeout = inner.options.gap_timeout;
    let (inner, weak_state) = (Arc::downgrade(&inner), Arc::downgrade(&state));
    drop(state);
    tokio::spawn(async move {
        loop {
            let Some(before) = weak_state.upgrade().map(|s| s.last().0) else {
                return;
            };
            tokio::time::sleep(timeout).await;
            let (Some(state), Some(inner)) = (weak_state.upgrade(), inner.upgrade()) else {
                return;
            };
            let (now, done) = state.last();
            let waiting = !lock(&state.ordered).pending.is_empty();
            if done || !waiting || now == before {
                state.watching_gap.store(false, Ordering::SeqCst);
                if !done && waiting {
                    spawn_catch_up(inner, id, state);
                }
                return;
            }
        }
    });
}

fn spawn_catch_up(inner: Arc<Inner>, id: ProcessId, state: Arc<ProcState>) {
    if state.catching_up.swap(true, Ordering::SeqCst) {
        return;
    }
    tokio::spawn(async move {
        let client = ExecClient::from_inner(inner.clone());
        let result = catch_up(&client, &id, &state).await;
        state.catching_up.store(false, Ordering::SeqCst);
        if let Err(message) = result {
            state.fail(message);
        }
        if state.last().1 {
            lock(&inner.procs).remove(&id);
        }
    });
}

/// Fills the gap after the last published seq from the server's retained output.
async fn catch_up(client: &ExecClient, id: &ProcessId, state: &ProcState) -> Result<(), String> {
    loop {
        let (after, done) = state.last();
        if done {
            return Ok(());
        }
        let r = client
            .read(ReadParams {
                process_id: id.clone(),
                after_seq: Some(after),
                max_bytes: None,
                wait_ms: None,
            })
            .await
            .map_err(|e| format!("cannot catch up process `{id}`: {e}"))?;
        let skip = state.skip_evicted.swap(false, Ordering::SeqCst);
        if let Some(e) = r.evicted_before
            && e > after + 1
        {
            if skip {
                state.skip_to(e - 1);
                continue;
            }
            return Err(format!(
                "output of process `{id}` between seq {} and {} was evicted on the server",
                after + 1,
                e - 1
            ));
        }
        let chunk_seqs: std::collections::HashSet<u64> = r.chunks.iter().map(|c| c.seq).collect();
        let mut exit_pending = r.exited;
        let mut events: Vec<ProcessEvent> = r
            .chunks
            .into_iter()
            .map(|c| ProcessEvent::Output {
                seq: c.seq,
                stream: c.stream,
                chunk: c.chunk.0,
            })
            .collect();
        // Seqs without an output chunk are the exit and close events.
        let latest = r.next_seq.saturating_sub(1);
        for seq in (after + 1)..=latest {
            if chunk_seqs.contains(&seq) {
                continue;
            }
            if r.closed && seq == latest {
                events.push(ProcessEvent::Closed { seq });
            } else if exit_pending && let Some(code) = r.exit_code {
                exit_pending = false;
                events.push(ProcessEvent::Exited {
                    seq,
                    exit_code: code,
                });
            }
        }
        events.sort_by_key(|e| e.seq());
        for ev in events {
            state.publish(ev, usize::MAX);
        }
        let (now, _) = state.last();
        if now == after || now >= latest {
            return Ok(());
        }
    }
}

/// How a call behaves when the connection drops before the answer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Replay {
    /// Safe to send again after reconnecting.
    Safe,
    /// Must not be replayed blindly.
    Unsafe,
}

impl ExecClient {
    fn from_inner(inner: Arc<Inner>) -> Self {
        // Internal clones do not own the connection.
        Self {
            _guard: Arc::new(CloseGuard(Weak::new())),
            inner,
        }
    }

    /// Connects and performs the handshake.
    ///
    /// Errors: [`ClientError::Connect`] / [`ClientError::Timeout`] when the transport cannot be
    /// opened or `initialize` does not answer in time, [`ClientError::Server`] when the server
    /// refuses the handshake (e.g. `-32010` session attached, `-32600` unknown session).
    pub async fn connect(endpoint: Endpoint, options: ClientOptions) -> Result<Self, ClientError> {
        Self::connect_inner(Some(endpoint), None, options).await
    }

    /// Like [`ExecClient::connect`] over an already open transport (an in-process server, a
    /// test double). Such a client cannot reconnect: a dropped connection fails its processes.
    ///
    /// Errors: as [`ExecClient::connect`].
    pub async fn connect_transport(
        transport: baton_rpc::Transport,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        Self::connect_inner(None, Some(transport), options).await
    }

    async fn connect_inner(
        endpoint: Option<Endpoint>,
        transport: Option<baton_rpc::Transport>,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        let inner = Arc::new(Inner {
            endpoint,
            first_transport: Mutex::new(transport),
            options,
            link: watch::channel(Link::Reconnecting).0,
            server_process: Mutex::new(None),
            session_id: Mutex::new(String::new()),
            procs: Mutex::new(HashMap::new()),
            next_write: AtomicU64::new(1),
            closing: AtomicBool::new(false),
        });
        let resume = inner.options.resume_session_id.clone();
        let peer = open_session(&inner, resume).await?;
        inner.link.send_replace(Link::Up(peer.clone()));
        tokio::spawn(supervise(Arc::downgrade(&inner), peer));
        Ok(Self {
            _guard: Arc::new(CloseGuard(Arc::downgrade(&inner))),
            inner,
        })
    }

    /// The server-assigned session id (changes only if a resume created a new session, which
    /// Baton never does).
    pub fn session_id(&self) -> String {
        lock(&self.inner.session_id).clone()
    }

    /// Closes the connection (and kills a command server). Processes on the server are not
    /// terminated here; a Baton server kills them when the session TTL expires.
    pub fn close(&self) {
        shut(&self.inner, "client closed");
    }

    /// Whether the client is currently connected (false while reconnecting or after giving up).
    pub fn is_connected(&self) -> bool {
        matches!(*self.inner.link.borrow(), Link::Up(_))
    }

    fn path(&self, p: &Path) -> WirePath {
        if self.inner.options.uri_paths {
            WirePath::uri_from_path(p)
        } else {
            WirePath::from_path(p)
        }
    }

    async fn current_peer(&self) -> Result<Peer, ClientError> {
        let mut rx = self.inner.link.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                Link::Up(p) if !p.is_closed() => return Ok(p.clone()),
                Link::Down(reason) => return Err(ClientError::Disconnected(reason.clone())),
                _ => {}
            }
            if rx.changed().await.is_err() {
                return Err(ClientError::Disconnected("client closed".into()));
            }
        }
    }

    async fn call<P: Serialize, R: DeserializeOwned>(
        &self,
        method: &str,
        params: &P,
        replay: Replay,
    ) -> Result<R, ClientError> {
        loop {
            let peer = self.current_peer().await?;
            match peer.call::<P, R>(method, params).await {
                Ok(r) => return Ok(r),
                Err(CallError::Server(e)) => return Err(e.into()),
                Err(CallError::Json(e)) => return Err(ClientError::Json(e)),
                Err(CallError::Closed(reason)) => {
                    if replay == Replay::Unsafe {
                        tracing::debug!("`{method}` lost with the connection: {reason}");
                        return Err(ClientError::OutcomeUnknown {
                            method: method.to_owned(),
                        });
                    }
                    // Wait for the reconnect (or the final failure) and send it again.
                    let mut rx = self.inner.link.subscribe();
                    while matches!(&*rx.borrow_and_update(), Link::Up(p) if p.is_closed()) {
                        if rx.changed().await.is_err() {
                            break;
                        }
                    }
                }
            }
        }
    }

    /// Starts a process and returns its event stream. The process is registered before the
    /// request is sent, so no early notification is lost.
    ///
    /// Errors: [`ClientError::DuplicateProcess`] when the id is already followed here;
    /// [`ClientError::Server`] (`-32600` duplicate id, `-32602` bad argv/cwd, `-32003` cwd
    /// outside the roots); [`ClientError::OutcomeUnknown`] when the connection dropped first.
    pub async fn start(&self, params: StartParams) -> Result<RemoteProcess, ClientError> {
        let id = params.process_id.clone();
        let process = self.follow(&id)?;
        match self
            .call::<_, StartResponse>(methods::PROCESS_START, &params, Replay::Unsafe)
            .await
        {
            Ok(_) => Ok(process),
            Err(e) => {
                lock(&self.inner.procs).remove(&id);
                Err(e)
            }
        }
    }

    /// Starts `argv` in `cwd` with `env` (and no inherited environment unless `env_policy` is
    /// set in a full [`StartParams`]); a convenience over [`ExecClient::start`].
    pub async fn spawn(
        &self,
        process_id: &str,
        argv: &[String],
        cwd: &Path,
        env: HashMap<String, String>,
        tty: bool,
        pipe_stdin: bool,
    ) -> Result<RemoteProcess, ClientError> {
        self.start(StartParams {
            process_id: process_id.into(),
            argv: argv.to_vec(),
            cwd: self.path(cwd),
            env,
            env_policy: None,
            tty,
            pipe_stdin,
            arg0: None,
        })
        .await
    }

    /// Follows the events of a process started elsewhere (e.g. before a client restart), from
    /// its first retained event: the gap is filled with `process/read`. Output the server already
    /// evicted is skipped (the first event's `seq` then jumps past it).
    ///
    /// Errors: [`ClientError::DuplicateProcess`] when the id is already followed here.
    pub fn attach(&self, process_id: &str) -> Result<RemoteProcess, ClientError> {
        let id = ProcessId::from(process_id);
        let process = self.follow(&id)?;
        if let Some(state) = lock(&self.inner.procs).get(&id).cloned() {
            state.skip_evicted.store(true, Ordering::SeqCst);
            spawn_catch_up(self.inner.clone(), id, state);
        }
        Ok(process)
    }

    fn follow(&self, id: &ProcessId) -> Result<RemoteProcess, ClientError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (wake, wake_rx) = watch::channel(0);
        let state = Arc::new(ProcState {
            ordered: Mutex::new(Ordered {
                last: 0,
                pending: BTreeMap::new(),
                done: false,
            }),
            tx,
            wake,
            catching_up: AtomicBool::new(false),
            watching_gap: AtomicBool::new(false),
            skip_evicted: AtomicBool::new(false),
        });
        {
            let mut procs = lock(&self.inner.procs);
            if procs.contains_key(id) {
                return Err(ClientError::DuplicateProcess(id.0.clone()));
            }
            procs.insert(id.clone(), state);
        }
        Ok(RemoteProcess {
            client: self.clone(),
            id: id.clone(),
            events: rx,
            wake: wake_rx,
            ended: false,
        })
    }

    /// `process/read` (retried across a reconnect).
    pub async fn read(&self, params: ReadParams) -> Result<ReadResponse, ClientError> {
        self.call(methods::PROCESS_READ, &params, Replay::Safe)
            .await
    }

    /// `process/write` with a fresh `writeId`, so it is retried safely across a reconnect.
    pub async fn write(
        &self,
        process_id: &ProcessId,
        chunk: Vec<u8>,
        close_stdin: bool,
    ) -> Result<WriteStatus, ClientError> {
        let n = self.inner.next_write.fetch_add(1, Ordering::Relaxed);
        let params = WriteParams {
            process_id: process_id.clone(),
            chunk: chunk.into(),
            write_id: Some(format!("{}-w{n}", self.session_id())),
            close_stdin,
        };
        let r: WriteResponse = self
            .call(methods::PROCESS_WRITE, &params, Replay::Safe)
            .await?;
        Ok(r.status)
    }

    /// `process/terminate`: kills the process group; returns whether it was running.
    pub async fn terminate(&self, process_id: &ProcessId) -> Result<bool, ClientError> {
        let r: TerminateResponse = self
            .call(
                methods::PROCESS_TERMINATE,
                &TerminateParams {
                    process_id: process_id.clone(),
                },
                Replay::Safe,
            )
            .await?;
        Ok(r.running)
    }

    /// `process/signal` to the process group (Baton extension; Codex knows `interrupt` only).
    pub async fn signal(
        &self,
        process_id: &ProcessId,
        signal: ProcessSignal,
    ) -> Result<(), ClientError> {
        let _: Empty = self
            .call(
                methods::PROCESS_SIGNAL,
                &SignalParams {
                    process_id: process_id.clone(),
                    signal,
                },
                Replay::Unsafe,
            )
            .await?;
        Ok(())
    }

    /// `process/resize` of a tty process (Baton extension).
    pub async fn resize(
        &self,
        process_id: &ProcessId,
        rows: u16,
        cols: u16,
    ) -> Result<(), ClientError> {
        let _: Empty = self
            .call(
                methods::PROCESS_RESIZE,
                &ResizeParams {
                    process_id: process_id.clone(),
                    rows,
                    cols,
                },
                Replay::Safe,
            )
            .await?;
        Ok(())
    }

    /// `fs/readFile`: the whole file.
    pub async fn read_file(&self, path: &Path) -> Result<Vec<u8>, ClientError> {
        let r: FsReadFileResponse = self
            .call(
                methods::FS_READ_FILE,
                &FsReadFileParams {
                    path: self.path(path),
                },
                Replay::Safe,
            )
            .await?;
        Ok(r.data_base64.0)
    }

    /// `fs/writeFile`: creates or truncates `path` (retried safely: the content is the same).
    pub async fn write_file(&self, path: &Path, data: Vec<u8>) -> Result<(), ClientError> {
        let _: Empty = self
            .call(
                methods::FS_WRITE_FILE,
                &FsWriteFileParams {
                    path: self.path(path),
                    data_base64: data.into(),
                },
                Replay::Safe,
            )
            .await?;
        Ok(())
    }

    /// `fs/createDirectory` (with `recursive`, existing directories are fine).
    pub async fn create_directory(&self, path: &Path, recursive: bool) -> Result<(), ClientError> {
        let _: Empty = self
            .call(
                methods::FS_CREATE_DIRECTORY,
                &FsCreateDirectoryParams {
                    path: self.path(path),
                    recursive: Some(recursive),
                },
                if recursive {
                    Replay::Safe
                } else {
                    Replay::Unsafe
                },
            )
            .await?;
        Ok(())
    }

    /// `fs/getMetadata`.
    pub async fn get_metadata(&self, path: &Path) -> Result<FsGetMetadataResponse, ClientError> {
        self.call(
            methods::FS_GET_METADATA,
            &FsGetMetadataParams {
                path: self.path(path),
            },
            Replay::Safe,
        )
        .await
    }

    /// `fs/readDirectory`: entries sorted by name.
    pub async fn read_directory(
        &self,
        path: &Path,
    ) -> Result<Vec<FsReadDirectoryEntry>, ClientError> {
        let r: FsReadDirectoryResponse = self
            .call(
                methods::FS_READ_DIRECTORY,
                &FsReadDirectoryParams {
                    path: self.path(path),
                },
                Replay::Safe,
            )
            .await?;
        Ok(r.entries)
    }

    /// `fs/remove`.
    pub async fn remove(
        &self,
        path: &Path,
        recursive: bool,
        force: bool,
    ) -> Result<(), ClientError> {
        let _: Empty = self
            .call(
                methods::FS_REMOVE,
                &FsRemoveParams {
                    path: self.path(path),
                    recursive: Some(recursive),
                    force: Some(force),
                },
                if force { Replay::Safe } else { Replay::Unsafe },
            )
            .await?;
        Ok(())
    }

    /// `fs/copy`.
    pub async fn copy(
        &self,
        source: &Path,
        destination: &Path,
        recursive: bool,
    ) -> Result<(), ClientError> {
        let _: Empty = self
            .call(
                methods::FS_COPY,
                &FsCopyParams {
                    source_path: self.path(source),
                    destination_path: self.path(destination),
                    recursive,
                },
                Replay::Safe,
            )
            .await?;
        Ok(())
    }
}

/// Opens a transport and performs the handshake.
async fn open_session(inner: &Arc<Inner>, resume: Option<String>) -> Result<Peer, ClientError> {
    let options = &inner.options;
    let ready = lock(&inner.first_transport).take();
    let (transport, server_process) = match (ready, &inner.endpoint) {
        (Some(t), _) => (t, None),
        (None, Some(endpoint)) => {
            transport::open(endpoint, options.connect_timeout, options.max_message_bytes).await?
        }
        (None, None) => {
            return Err(ClientError::Disconnected(
                "the connection was given as a transport and cannot be reopened".into(),
            ));
        }
    };
    let peer = Connection::spawn(
        transport,
        ConnectionConfig {
            max_message_bytes: options.max_message_bytes,
            name: "exec-server client".into(),
            ..Default::default()
        },
        Arc::new(Router {
            inner: Arc::downgrade(inner),
        }),
    );
    let params = InitializeParams {
        client_name: options.client_name.clone(),
        resume_session_id: resume,
    };
    let result = tokio::time::timeout(
        options.initialize_timeout,
        peer.call::<_, InitializeResponse>(methods::INITIALIZE, &params),
    )
    .await;
    let response = match result {
        Err(_) => {
            peer.close("initialize timed out");
            return Err(ClientError::Timeout {
                what: "waiting for the initialize answer".into(),
                after: options.initialize_timeout,
            });
        }
        Ok(Err(CallError::Server(e))) => {
            peer.close("initialize refused");
            return Err(e.into());
        }
        Ok(Err(CallError::Json(e))) => return Err(ClientError::Json(e)),
        Ok(Err(CallError::Closed(reason))) => return Err(ClientError::Disconnected(reason)),
        Ok(Ok(r)) => r,
    };
    peer.notify(methods::INITIALIZED, &serde_json::json!({}))
        .await
        .map_err(|e| ClientError::Disconnected(e.to_string()))?;
    *lock(&inner.session_id) = response.session_id;
    if let Some(p) = server_process {
        *lock(&inner.server_process) = Some(p);
    }
    Ok(peer)
}

/// Watches the connection; on a drop, reconnects, resumes and catches every process up.
async fn supervise(inner: Weak<Inner>, mut peer: Peer) {
    loop {
        let reason = peer.closed().await;
        let Some(strong) = inner.upgrade() else {
            return;
        };
        if strong.closing.load(Ordering::SeqCst) {
            return;
        }
        tracing::info!("exec-server connection lost ({reason}); reconnecting");
        strong.link.send_replace(Link::Reconnecting);
        let policy = strong.options.reconnect.clone();
        let mut backoff = policy.initial_backoff;
        let mut last_error = reason.clone();
        let mut reconnected = None;
        for attempt in 1..=policy.max_attempts {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(policy.max_backoff);
            if strong.closing.load(Ordering::SeqCst) {
                return;
            }
            let session = lock(&strong.session_id).clone();
            match open_session(&strong, Some(session)).await {
                Ok(p) => {
                    reconnected = Some(p);
                    break;
                }
                Err(ClientError::Disconnected(message)) if strong.endpoint.is_none() => {
                    last_error = message;
                    break;
                }
                Err(ClientError::Server { code, message })
                    if code != error_codes::SESSION_ATTACHED =>
                {
                    // The session is gone (expired): retrying cannot help.
                    last_error = format!("cannot resume the session: {message}");
                    break;
                }
                Err(e) => {
                    tracing::debug!("reconnect attempt {attempt} failed: {e}");
                    last_error = e.to_string();
                }
            }
        }
        let Some(new_peer) = reconnected else {
            let message = format!(
                "exec server connection lost and not recovered after {} attempts: {last_error}",
                policy.max_attempts
            );
            tracing::warn!("{message}");
            strong.link.send_replace(Link::Down(message.clone()));
            let procs: Vec<_> = lock(&strong.procs).drain().collect();
            for (_, state) in procs {
                state.fail(message.clone());
            }
            return;
        };
        strong.link.send_replace(Link::Up(new_peer.clone()));
        let procs: Vec<_> = lock(&strong.procs)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (id, state) in procs {
            spawn_catch_up(strong.clone(), id, state);
        }
        peer = new_peer;
    }
}

/// A process followed by the client: its ordered events and control methods.
pub struct RemoteProcess {
    client: ExecClient,
    id: ProcessId,
    events: mpsc::UnboundedReceiver<ProcessEvent>,
    wake: watch::Receiver<u64>,
    ended: bool,
}

impl RemoteProcess {
    /// The process id.
    pub fn id(&self) -> &ProcessId {
        &self.id
    }

    /// The next event in seq order; `None` after [`ProcessEvent::Closed`] or
    /// [`ProcessEvent::Failed`].
    pub async fn next_event(&mut self) -> Option<ProcessEvent> {
        if self.ended {
            return None;
        }
        let event = self.events.recv().await;
        if matches!(
            event,
            None | Some(ProcessEvent::Closed { .. } | ProcessEvent::Failed(_))
        ) {
            self.ended = true;
        }
        event
    }

    /// A wake channel carrying the highest seq published so far (bumped on failure too).
    pub fn wake(&self) -> watch::Receiver<u64> {
        self.wake.clone()
    }

    /// Writes to stdin (see [`ExecClient::write`]).
    pub async fn write(&self, bytes: Vec<u8>) -> Result<WriteStatus, ClientError> {
        self.client.write(&self.id, bytes, false).await
    }

    /// Closes stdin (Baton extension `closeStdin`).
    pub async fn close_stdin(&self) -> Result<WriteStatus, ClientError> {
        self.client.write(&self.id, Vec::new(), true).await
    }

    /// Kills the process group.
    pub async fn terminate(&self) -> Result<bool, ClientError> {
        self.client.terminate(&self.id).await
    }

    /// Sends a signal to the process group.
    pub async fn signal(&self, signal: ProcessSignal) -> Result<(), ClientError> {
        self.client.signal(&self.id, signal).await
    }

    /// Resizes the tty.
    pub async fn resize(&self, rows: u16, cols: u16) -> Result<(), ClientError> {
        self.client.resize(&self.id, rows, cols).await
    }
}

impl Drop for RemoteProcess {
    fn drop(&mut self) {
        lock(&self.client.inner.procs).remove(&self.id);
    }
}
