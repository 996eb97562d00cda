//! The exec server core: connections, the handshake, sessions and the `process/*` methods.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use baton_exec::{
    CommandSpec, OutputMode, Process, ProcessEvent, PtySize, SpawnOptions, StdinMode,
};
use baton_protocol::exec::{
    self as proto, ClosedNotification, Empty, ExitedNotification, InitializeParams,
    InitializeResponse, OutputNotification, OutputStream, ProcessId, ReadParams, ReadResponse,
    ResizeParams, SignalParams, StartParams, StartResponse, TerminateParams, TerminateResponse,
    WriteParams, WriteResponse, WriteStatus, error_codes, methods,
};
use baton_protocol::jsonrpc::RpcError;
use baton_rpc::{Connection, ConnectionConfig, Handler, Peer, Transport};
use futures::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::ServerConfig;
use crate::paths::{Last, Roots};
use crate::retain::Retained;

/// Longest accepted `waitMs` (longer waits are shortened to this): one hour.
const MAX_WAIT: Duration = Duration::from_secs(3600);
/// How many `writeId`s are remembered per process for idempotent retries.
const WRITE_IDS_KEPT: usize = 4096;

/// An exec server: sessions, their processes and the connections attached to them.
/// Cheap to clone; all clones are the same server. Needs a tokio runtime.
#[derive(Clone)]
pub struct ExecServer {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: ServerConfig,
    roots: Roots,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    conns: Mutex<HashMap<u64, Peer>>,
    next_conn: AtomicU64,
    next_session: AtomicU64,
    pub(crate) shutdown: CancellationToken,
}

struct Session {
    id: String,
    state: Mutex<SessionState>,
}

#[derive(Default)]
struct SessionState {
    /// The attached connection: its id and peer.
    attached: Option<(u64, Peer)>,
    /// Bumped on every attach/detach, so a stale expiry timer does nothing.
    generation: u64,
    ended: bool,
    procs: HashMap<ProcessId, Arc<Proc>>,
}

struct Proc {
    process: Process,
    writable: bool,
    write_ids: Mutex<(HashSet<String>, VecDeque<String>)>,
    retained: Retained,
    /// Writes run in arrival order even though requests are handled concurrently: each takes
    /// a ticket when it arrives and waits for its turn.
    next_ticket: AtomicU64,
    turn: watch::Sender<u64>,
    finished_tickets: Mutex<std::collections::BTreeSet<u64>>,
}

/// A place in a process's write queue; dropping it (done or cancelled) passes the turn on.
struct WriteTurn {
    proc: Arc<Proc>,
    ticket: u64,
}

impl WriteTurn {
    fn take(proc: Arc<Proc>) -> Self {
        let ticket = proc.next_ticket.fetch_add(1, Ordering::SeqCst);
        Self { proc, ticket }
    }

    async fn wait(&self) {
        let mut rx = self.proc.turn.subscribe();
        let _ = rx.wait_for(|t| *t >= self.ticket).await;
    }
}

impl Drop for WriteTurn {
    fn drop(&mut self) {
        let mut done = lock(&self.proc.finished_tickets);
        done.insert(self.ticket);
        let mut turn = *self.proc.turn.borrow();
        while done.remove(&turn) {
            turn += 1;
        }
        drop(done);
        self.proc.turn.send_replace(turn);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Why [`ExecServer::new`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A `--root` directory does not exist or cannot be resolved.
    #[error("invalid root directory")]
    Root(#[source] std::io::Error),
}

impl ExecServer {
    /// Creates a server. Roots are canonicalised now (an empty list means the current directory).
    ///
    /// Errors: [`ServerError::Root`] when a root cannot be resolved.
    pub fn new(config: ServerConfig) -> Result<Self, ServerError> {
        let mut roots = config.roots.clone();
        if roots.is_empty() {
            roots.push(std::env::current_dir().map_err(ServerError::Root)?);
        }
        let roots = Roots::new(&roots).map_err(ServerError::Root)?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                roots,
                sessions: Mutex::new(HashMap::new()),
                conns: Mutex::new(HashMap::new()),
                next_conn: AtomicU64::new(1),
                next_session: AtomicU64::new(1),
                shutdown: CancellationToken::new(),
            }),
        })
    }

    /// The canonical allowed roots.
    pub fn roots(&self) -> &[std::path::PathBuf] {
        self.inner.roots.paths()
    }

    /// Serves one client connection over `transport` (in background tasks) and returns its
    /// peer; `peer.closed()` resolves when it ends. `name` is used in logs.
    pub fn serve_connection(&self, transport: Transport, name: &str) -> Peer {
        let conn_id = self.inner.next_conn.fetch_add(1, Ordering::Relaxed);
        let handler = Arc::new(ConnHandler {
            server: self.inner.clone(),
            conn_id,
            state: Mutex::new(ConnState::default()),
        });
        let peer = Connection::spawn(
            transport,
            ConnectionConfig {
                max_message_bytes: self.inner.config.max_message_bytes,
                name: name.to_owned(),
                ..Default::default()
            },
            handler.clone(),
        );
        lock(&self.inner.conns).insert(conn_id, peer.clone());
        if self.inner.shutdown.is_cancelled() {
            peer.close("server shutting down");
        }
        let p = peer.clone();
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let reason = p.closed().await;
            tracing::debug!(connection = p.name(), %reason, "connection closed");
            lock(&inner.conns).remove(&conn_id);
            let session = lock(&handler.state).session.take();
            if let Some(session) = session {
                detach(&inner, &session, conn_id);
            }
        });
        peer
    }

    /// Shuts down: closes every connection and kills every process of every session (whole
    /// process groups). Idempotent. Only this server's processes are touched (a binary may
    /// additionally call `baton_exec::kill_all` on exit).
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
        let conns: Vec<Peer> = lock(&self.inner.conns).values().cloned().collect();
        for c in conns {
            c.close("server shutting down");
        }
        let sessions: Vec<Arc<Session>> =
            lock(&self.inner.sessions).drain().map(|(_, s)| s).collect();
        for s in sessions {
            end_session(&s);
        }
    }

    /// Resolves when [`ExecServer::shutdown`] has been called.
    pub async fn shut_down(&self) {
        self.inner.shutdown.cancelled().await;
    }

    /// Number of live sessions (attached or detached).
    pub fn session_count(&self) -> usize {
        lock(&self.inner.sessions).len()
    }
}

/// Detaches `conn_id` from the session; after the TTL without a resume the session ends.
fn detach(inner: &Arc<Inner>, session: &Arc<Session>, conn_id: u64) {
    let generation = {
        let mut st = lock(&session.state);
        match &st.attached {
            Some((id, _)) if *id == conn_id => {}
            _ => return,
        }
        st.attached = None;
        st.generation += 1;
        st.generation
    };
    let ttl = inner.config.session_ttl;
    let inner = Arc::downgrade(inner);
    let session = Arc::downgrade(session);
    tokio::spawn(async move {
        tokio::time::sleep(ttl).await;
        let (Some(inner), Some(session)) = (inner.upgrade(), session.upgrade()) else {
            return;
        };
        {
            let st = lock(&session.state);
            if st.attached.is_some() || st.generation != generation || st.ended {
                return;
            }
        }
        tracing::info!(session = %session.id, "session expired after {ttl:?} detached");
        lock(&inner.sessions).remove(&session.id);
        end_session(&session);
    });
}

/// Kills every process of the session and forgets them.
fn end_session(session: &Session) {
    let procs: Vec<Arc<Proc>> = {
        let mut st = lock(&session.state);
        st.ended = true;
        st.attached = None;
        st.procs.drain().map(|(_, p)| p).collect()
    };
    for p in procs {
        p.process.terminate();
    }
}

#[derive(Default)]
struct ConnState {
    /// `initialize` was received (it may still be in progress).
    initialize_seen: bool,
    session: Option<Arc<Session>>,
    initialized: bool,
}

struct ConnHandler {
    server: Arc<Inner>,
    conn_id: u64,
    state: Mutex<ConnState>,
}

fn parse<T: DeserializeOwned>(params: Value) -> Result<T, RpcError> {
    let params = if params.is_null() {
        Value::Object(Default::default())
    } else {
        params
    };
    serde_json::from_value(params).map_err(|e| RpcError::invalid_params(format!("{e}")))
}

fn to_value<T: Serialize>(v: T) -> Result<Value, RpcError> {
    serde_json::to_value(v).map_err(|e| RpcError::internal(e.to_string()))
}

impl Handler for ConnHandler {
    fn request(
        &self,
        peer: &Peer,
        method: String,
        params: Value,
    ) -> BoxFuture<'static, Result<Value, RpcError>> {
        if method == methods::INITIALIZE {
            let r = self.initialize(peer, params);
            return Box::pin(async move { r });
        }
        let known = matches!(
            method.as_str(),
            methods::PROCESS_START
                | methods::PROCESS_READ
                | methods::PROCESS_WRITE
                | methods::PROCESS_TERMINATE
                | methods::PROCESS_SIGNAL
                | methods::PROCESS_RESIZE
                | methods::FS_READ_FILE
                | methods::FS_WRITE_FILE
                | methods::FS_CREATE_DIRECTORY
                | methods::FS_GET_METADATA
                | methods::FS_READ_DIRECTORY
                | methods::FS_REMOVE
                | methods::FS_COPY
        );
        if !known {
            return Box::pin(async move { Err(RpcError::method_not_found(&method)) });
        }
        let session = {
            let st = lock(&self.state);
            match (&st.session, st.initialized) {
                (Some(s), true) => s.clone(),
                _ => {
                    return Box::pin(async move {
                        Err(RpcError::invalid_request(format!(
                            "`{method}` before the handshake: send `initialize` and \
                             `initialized` first"
                        )))
                    });
                }
            }
        };
        if method == methods::PROCESS_WRITE {
            // Take the write's place in line now, in arrival order.
            let turn = params
                .get("processId")
                .and_then(Value::as_str)
                .and_then(|id| {
                    lock(&session.state)
                        .procs
                        .get(&ProcessId::from(id))
                        .cloned()
                })
                .map(WriteTurn::take);
            return Box::pin(async move {
                if let Some(turn) = &turn {
                    turn.wait().await;
                }
                let result = match parse(params) {
                    Ok(p) => write(&session, p).await.and_then(to_value),
                    Err(e) => Err(e),
                };
                drop(turn);
                result
            });
        }
        let inner = self.server.clone();
        Box::pin(async move { dispatch(inner, session, &method, params).await })
    }

    fn notification(&self, _peer: &Peer, method: String, _params: Value) {
        if method == methods::INITIALIZED {
            let mut st = lock(&self.state);
            if st.session.is_some() {
                st.initialized = true;
            } else {
                tracing::debug!("`initialized` before `initialize` ignored");
            }
        } else {
            tracing::debug!("ignoring notification `{method}`");
        }
    }
}

impl ConnHandler {
    fn initialize(&self, peer: &Peer, params: Value) -> Result<Value, RpcError> {
        let params: InitializeParams = parse(params)?;
        {
            let mut st = lock(&self.state);
            if st.initialize_seen {
                return Err(RpcError::invalid_request(
                    "`initialize` was already sent on this connection",
                ));
            }
            st.initialize_seen = true;
        }
        let result = self.attach(peer, &params);
        match result {
            Ok(session) => {
                let id = session.id.clone();
                lock(&self.state).session = Some(session);
                tracing::info!(session = %id, client = %params.client_name, "client attached");
                to_value(InitializeResponse {
                    session_id: id,
                    environment_info: Some(environment_info()),
                })
            }
            Err(e) => {
                // A refused handshake may be retried on the same connection.
                lock(&self.state).initialize_seen = false;
                Err(e)
            }
        }
    }

    fn attach(&self, peer: &Peer, params: &InitializeParams) -> Result<Arc<Session>, RpcError> {
        let inner = &self.server;
        if let Some(id) = &params.resume_session_id {
            let session = lock(&inner.sessions)
                .get(id)
                .cloned()
                .ok_or_else(|| RpcError::invalid_request(format!("unknown session `{id}`")))?;
            let mut st = lock(&session.state);
            if st.ended {
                return Err(RpcError::invalid_request(format!("unknown session `{id}`")));
            }
            if let Some((_, old)) = &st.attached {
                // Refuse, and evict the old connection so that a retry succeeds: the old one
                // is usually a half-open connection the client has already given up on.
                old.close("session resumed by another connection");
                return Err(RpcError::new(
                    error_codes::SESSION_ATTACHED,
                    format!("session `{id}` is already attached to another connection"),
                ));
            }
            st.attached = Some((self.conn_id, peer.clone()));
            st.generation += 1;
            drop(st);
            return Ok(session);
        }
        let n = inner.next_session.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{n}", random_hex());
        let session = Arc::new(Session {
            id: id.clone(),
            state: Mutex::new(SessionState {
                attached: Some((self.conn_id, peer.clone())),
                ..Default::default()
            }),
        });
        lock(&inner.sessions).insert(id, session.clone());
        Ok(session)
    }
}

/// What `initialize` tells about this host (the fields current Codex servers send).
fn environment_info() -> proto::EnvironmentInfo {
    let uri = |p: Option<std::path::PathBuf>| p.map(|p| proto::WirePath::uri_from_path(&p).0);
    let shell_path = std::env::var("SHELL").unwrap_or_else(|_| "/bin/sh".into());
    let shell_name = std::path::Path::new(&shell_path)
        .file_name()
        .map_or_else(|| "sh".into(), |n| n.to_string_lossy().into_owned());
    proto::EnvironmentInfo {
        shell: proto::ShellInfo {
            name: shell_name,
            path: shell_path,
        },
        cwd: uri(std::env::current_dir().ok()),
        user_home_dir: uri(std::env::var_os("HOME").map(Into::into)),
        temp_dir: uri(Some(std::env::temp_dir())),
        platform_os: Some(std::env::consts::OS.to_owned()),
    }
}

/// 64 random bits from the OS (session ids must not be guessable).
fn random_hex() -> String {
    let mut b = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read as _;
        let _ = f.read_exact(&mut b);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn dispatch(
    inner: Arc<Inner>,
    session: Arc<Session>,
    method: &str,
    params: Value,
) -> Result<Value, RpcError> {
    match method {
        methods::PROCESS_START => to_value(start(&inner, &session, parse(params)?)?),
        methods::PROCESS_READ => to_value(read(&session, parse(params)?).await?),
        methods::PROCESS_TERMINATE => {
            // As in Codex, an unknown (or already forgotten) process is simply not running.
            let p: TerminateParams = parse(params)?;
            let running = find(&session, &p.process_id)
                .map(|proc| proc.process.terminate())
                .unwrap_or(false);
            to_value(TerminateResponse { running })
        }
        methods::PROCESS_SIGNAL => {
            let p: SignalParams = parse(params)?;
            // As in Codex, signalling a process that is gone is not an error.
            let Ok(proc) = find(&session, &p.process_id) else {
                return to_value(Empty {});
            };
            let sig = match p.signal {
                proto::ProcessSignal::Interrupt => baton_exec::Signal::Interrupt,
                proto::ProcessSignal::Terminate => baton_exec::Signal::Terminate,
                proto::ProcessSignal::Kill => baton_exec::Signal::Kill,
                proto::ProcessSignal::Hangup => baton_exec::Signal::Hangup,
            };
            proc.process
                .signal(sig)
                .map_err(|e| RpcError::internal(format!("{e}: {}", e.source)))?;
            to_value(Empty {})
        }
        methods::PROCESS_RESIZE => {
            let p: ResizeParams = parse(params)?;
            let proc = find(&session, &p.process_id)?;
            proc.process
                .resize(p.rows, p.cols)
                .map_err(|e| RpcError::invalid_params(e.to_string()))?;
            to_value(Empty {})
        }
        _ => fs_dispatch(inner, method, params).await,
    }
}

async fn fs_dispatch(inner: Arc<Inner>, method: &str, params: Value) -> Result<Value, RpcError> {
    let method = method.to_owned();
    tokio::task::spawn_blocking(move || {
        let roots = &inner.roots;
        match method.as_str() {
            methods::FS_READ_FILE => to_value(crate::fs::read_file(roots, parse(params)?)?),
            methods::FS_WRITE_FILE => to_value(crate::fs::write_file(roots, parse(params)?)?),
            methods::FS_CREATE_DIRECTORY => {
                to_value(crate::fs::create_directory(roots, parse(params)?)?)
            }
            methods::FS_GET_METADATA => to_value(crate::fs::get_metadata(roots, parse(params)?)?),
            methods::FS_READ_DIRECTORY => {
                to_value(crate::fs::read_directory(roots, parse(params)?)?)
            }
            methods::FS_REMOVE => to_value(crate::fs::remove(roots, parse(params)?)?),
            methods::FS_COPY => to_value(crate::fs::copy(roots, parse(params)?)?),
            other => Err(RpcError::method_not_found(other)),
        }
    })
    .await
    .map_err(|e| RpcError::internal(format!("fs task failed: {e}")))?
}

fn find(session: &Session, id: &ProcessId) -> Result<Arc<Proc>, RpcError> {
    lock(&session.state)
        .procs
        .get(id)
        .cloned()
        .ok_or_else(|| RpcError::invalid_request(format!("unknown process `{id}`")))
}

fn start(
    inner: &Arc<Inner>,
    session: &Arc<Session>,
    p: StartParams,
) -> Result<StartResponse, RpcError> {
    let Some(program) = p.argv.first() else {
        return Err(RpcError::invalid_params("`argv` must not be empty"));
    };
    let cwd = inner.roots.resolve(&p.cwd, Last::Follow)?;
    if !cwd.is_dir() {
        return Err(RpcError::invalid_params(format!(
            "working directory '{}' is not a directory",
            cwd.display()
        )));
    }
    let env = crate::env::build(p.env_policy.as_ref(), &p.env, std::env::vars_os());
    // A bare program name with no PATH in the child's env is looked up in the server's PATH.
    let mut program_os: std::ffi::OsString = program.into();
    let has_path = env.iter().any(|(k, _)| k == "PATH");
    if !program.contains('/') && !has_path {
        let server_path: Vec<_> = std::env::var_os("PATH")
            .map(|v| vec![("PATH".into(), v)])
            .unwrap_or_default();
        if let Ok(resolved) = baton_exec::resolve_program(program.as_ref(), &server_path, &cwd) {
            program_os = resolved.into_os_string();
        }
    }
    let mut spec = CommandSpec::new(program_os, &cwd)
        .args(p.argv.iter().skip(1))
        .envs(env)
        .arg0(p.arg0.clone().unwrap_or_else(|| program.clone()))
        .stdin(if p.pipe_stdin {
            StdinMode::Piped
        } else {
            StdinMode::Null
        });
    if p.tty {
        spec = spec.pty(PtySize::default());
    }
    let mut st = lock(&session.state);
    if st.ended {
        return Err(RpcError::invalid_request("the session has ended"));
    }
    if st.procs.contains_key(&p.process_id) {
        return Err(RpcError::invalid_request(format!(
            "process `{}` already exists in this session",
            p.process_id
        )));
    }
    // Streaming mode: lossless and backpressured; the forwarder retains output itself.
    let options = SpawnOptions {
        output: OutputMode::Streaming { capacity: 16 },
        ..SpawnOptions::streaming()
    };
    let process = baton_exec::spawn(&spec, options).map_err(|e| {
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(&format!(": {s}"));
            source = s.source();
        }
        // A missing working directory is the caller's mistake; a program that cannot be
        // found or executed is reported as an internal error, as Codex does.
        match e {
            baton_exec::SpawnError::CwdMissing { .. }
            | baton_exec::SpawnError::CwdNotDirectory { .. } => RpcError::invalid_params(message),
            _ => RpcError::internal(message),
        }
    })?;
    let Some(events) = process.take_events() else {
        return Err(RpcError::internal(
            "the process event stream is unavailable",
        ));
    };
    let proc = Arc::new(Proc {
        process: process.clone(),
        writable: p.pipe_stdin || p.tty,
        write_ids: Mutex::new(Default::default()),
        retained: Retained::new(inner.config.retained_bytes),
        next_ticket: AtomicU64::new(0),
        turn: watch::channel(0).0,
        finished_tickets: Mutex::new(Default::default()),
    });
    st.procs.insert(p.process_id.clone(), proc.clone());
    drop(st);
    tokio::spawn(forward(
        Arc::downgrade(session),
        p.process_id.clone(),
        proc,
        events,
        inner.config.closed_retention,
    ));
    Ok(StartResponse {
        process_id: p.process_id,
    })
}

fn wire_stream(s: baton_exec::Stream) -> OutputStream {
    match s {
        baton_exec::Stream::Stdout => OutputStream::Stdout,
        baton_exec::Stream::Stderr => OutputStream::Stderr,
        baton_exec::Stream::Pty => OutputStream::Pty,
    }
}

/// Retains a process's events and pushes them, in seq order, to whichever connection is
/// attached to its session. While one is attached, sending waits for the connection, which
/// slows the child down instead of dropping output; while detached, output is only retained.
async fn forward(
    session: Weak<Session>,
    id: ProcessId,
    proc: Arc<Proc>,
    mut events: baton_exec::EventStream,
    retention: Duration,
) {
    let mut closed = false;
    while let Some(event) = events.recv().await {
        let peer = session
            .upgrade()
            .and_then(|s| lock(&s.state).attached.as_ref().map(|(_, p)| p.clone()));
        let sent = match event {
            ProcessEvent::Output { seq, stream, chunk } => {
                let stream = wire_stream(stream);
                let note = peer.as_ref().map(|_| OutputNotification {
                    process_id: id.clone(),
                    seq,
                    stream,
                    chunk: chunk.to_vec().into(),
                });
                proc.retained.push_output(seq, stream, chunk);
                match (peer, note) {
                    (Some(peer), Some(n)) => peer.notify(methods::PROCESS_OUTPUT, &n).await,
                    _ => Ok(()),
                }
            }
            ProcessEvent::Exited { seq, status } => {
                let exit_code = status.code_for_shell();
                proc.retained.push_exit(seq, exit_code);
                match peer {
                    Some(peer) => {
                        let n = ExitedNotification {
                            process_id: id.clone(),
                            seq,
                            exit_code,
                        };
                        peer.notify(methods::PROCESS_EXITED, &n).await
                    }
                    None => Ok(()),
                }
            }
            ProcessEvent::Closed { seq } => {
                closed = true;
                proc.retained.push_closed(seq);
                match peer {
                    Some(peer) => {
                        let n = ClosedNotification {
                            process_id: id.clone(),
                            seq,
                        };
                        peer.notify(methods::PROCESS_CLOSED, &n).await
                    }
                    None => Ok(()),
                }
            }
        };
        if let Err(e) = sent {
            // The connection went away; the client catches up with process/read.
            tracing::debug!(process = %id, "notification not delivered: {e}");
        }
        if closed {
            break;
        }
    }
    if !closed {
        proc.retained.mark_closed();
    }
    // Keep the closed process readable for the retention period, then free its id.
    let weak_proc = Arc::downgrade(&proc);
    drop(proc);
    tokio::time::sleep(retention).await;
    if let Some(session) = session.upgrade() {
        let mut st = lock(&session.state);
        if st
            .procs
            .get(&id)
            .is_some_and(|p| Weak::ptr_eq(&Arc::downgrade(p), &weak_proc))
        {
            st.procs.remove(&id);
        }
    }
}

async fn read(session: &Session, p: ReadParams) -> Result<ReadResponse, RpcError> {
    let proc = find(session, &p.process_id)?;
    let wait = p
        .wait_ms
        .filter(|w| *w > 0)
        .map(|w| Duration::from_millis(w).min(MAX_WAIT));
    Ok(proc
        .retained
        .read(p.after_seq.unwrap_or(0), p.max_bytes, wait)
        .await)
}

async fn write(session: &Session, p: WriteParams) -> Result<WriteResponse, RpcError> {
    let status = |status| Ok(WriteResponse { status });
    let Some(proc) = lock(&session.state).procs.get(&p.process_id).cloned() else {
        return status(WriteStatus::UnknownProcess);
    };
    if !proc.writable {
        return status(WriteStatus::StdinClosed);
    }
    if let Some(wid) = &p.write_id {
        let mut ids = lock(&proc.write_ids);
        if ids.0.contains(wid) {
            return status(WriteStatus::Accepted);
        }
        ids.0.insert(wid.clone());
        ids.1.push_back(wid.clone());
        if ids.1.len() > WRITE_IDS_KEPT
            && let Some(old) = ids.1.pop_front()
        {
            ids.0.remove(&old);
        }
    }
    let forget = || {
        if let Some(wid) = &p.write_id {
            lock(&proc.write_ids).0.remove(wid);
        }
    };
    if !p.chunk.0.is_empty() {
        match proc.process.write_stdin(&p.chunk.0).await {
            Ok(()) => {}
            Err(baton_exec::StdinError::Io(e)) => {
                forget();
                return Err(RpcError::internal(format!("cannot write to stdin: {e}")));
            }
            Err(_) => {
                forget();
                return status(WriteStatus::StdinClosed);
            }
        }
    }
    if p.close_stdin {
        let _ = proc.process.close_stdin().await;
    }
    status(WriteStatus::Accepted)
}
