//! The tool IPC server: one per task run, so tools can talk back to `baton run` (DESIGN.md §5).
//!
//! [`IpcServer::start`] binds a Unix socket in a fresh private directory (mode 0700) and serves
//! the protocol of [`baton_protocol::tool`] (newline-delimited JSON, `hello` first) to any number
//! of concurrent clients — the task's processes, their workers, … . The child learns the socket
//! from [`IpcServer::child_env`] (`BATON_IPC`, `BATON_RUN=1`). When the task's process tree is
//! gone, [`IpcServer::finish`] stops accepting, lets open connections drain, removes the
//! directory and returns what the tools said as [`ToolReports`].
//!
//! Env answers come from the `parent_env` given to `start` (the runner's own environment), so a
//! tool can read a variable the task was not given. A name that matches the task's `untracked`
//! config is answered but never recorded as tracked: explicit config wins.
//!
//! The JS side lives in `packages/tool-client`; [`NODE_CLIENT_SOURCE`] embeds it so the runner
//! can write it to disk ([`write_node_client`]) and point `VP_RUN_NODE_CLIENT_PATH` at it.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use baton_cache::{Digest, EnvPattern, InputFingerprint, PathState, env_input_key};
use baton_protocol::tool::{
    Ack, ByteChunk, ENV_RUN, ENV_SOCKET, EnvQuery, ErrorCode, GetEnvResult, GetEnvsResult,
    HelloResult, MAX_LINE_BYTES, PROTOCOL_VERSION, Request, RequestFrame, ResponseFrame,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

use crate::env::env_pattern_matches;

/// The JS client (`packages/tool-client/index.cjs`), embedded: a CommonJS module exporting
/// `ignoreInput`, `ignoreOutput`, `disableCache`, `getEnv`, `getEnvs` and `load()` (the
/// `@voidzero-dev/vite-task-client` runtime contract). Write it with [`write_node_client`].
pub const NODE_CLIENT_SOURCE: &str = include_str!("../../../packages/tool-client/index.cjs");

/// How long a connection that is still open when [`IpcServer::finish`] is called is served
/// before it is closed (a leaked background process holding the socket).
const DRAIN_GRACE: Duration = Duration::from_millis(250);

/// Socket file name inside the private directory.
const SOCKET_NAME: &str = "ipc.sock";

/// Why the IPC server could not start.
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    /// The server's tokio runtime could not be built.
    #[error("cannot start the tool IPC runtime")]
    Runtime(#[source] io::Error),
    /// The server thread could not be spawned (or an earlier attempt failed).
    #[error("cannot spawn the tool IPC thread")]
    Thread(#[source] io::Error),
    /// The private socket directory could not be created.
    #[error("cannot create the tool IPC directory in '{dir}'")]
    CreateDir {
        /// The parent directory tried.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The socket could not be bound.
    #[error("cannot bind the tool IPC socket '{path}'")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// One env pattern a tool asked for with `getEnvs(…, {tracked: true})`. `Debug` shows value
/// lengths, not values.
#[derive(Clone, PartialEq, Eq)]
pub struct TrackedEnvPattern {
    /// The pattern, in the cache's terms (`Glob` or `Prefix`).
    pub pattern: EnvPattern,
    /// The matching variables at the time of the call (name → raw value), untracked names left
    /// out.
    pub matches: BTreeMap<String, Vec<u8>>,
}

/// What the tools of one task run reported (the result of [`IpcServer::finish`]).
///
/// Values are env secrets: keep them in memory, put only digests in the cache
/// ([`ToolReports::record_env_inputs`] does). `Debug` shows value lengths, not values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ToolReports {
    /// Paths whose reads must not become automatic inputs (absolute, lexically normalised, as
    /// the tool gave them; symlinks not resolved). A path covers everything under it
    /// ([`ToolReports::ignores_input`]).
    pub ignored_inputs: BTreeSet<PathBuf>,
    /// Paths whose writes must not become automatic outputs (same form as `ignored_inputs`).
    pub ignored_outputs: BTreeSet<PathBuf>,
    /// Set when a tool called `disableCache`: the reason to show (`disabled by a tool (pid
    /// 123): dev server`). The first call wins.
    pub disable_cache: Option<String>,
    /// Env variables read with `tracked: true` (untracked names excluded): name → value at the
    /// time of the call (`None` = unset).
    pub tracked_env: BTreeMap<String, Option<Vec<u8>>>,
    /// Env patterns read with `tracked: true`, each once, in first-call order.
    pub tracked_env_patterns: Vec<TrackedEnvPattern>,
    /// Set when a client sent something the server could not accept (the first one wins):
    /// caching must be disabled for the run, with this reason.
    pub protocol_error: Option<String>,
}

impl ToolReports {
    /// The reason this run must not be cached, if any: a protocol error first, then
    /// `disableCache`.
    pub fn cache_disabled_reason(&self) -> Option<String> {
        self.protocol_error
            .clone()
            .or_else(|| self.disable_cache.clone())
    }

    /// Whether a read of `path` (absolute) is excluded from automatic inputs: `path` equals or
    /// lies under an ignored path (component-wise).
    pub fn ignores_input(&self, path: &Path) -> bool {
        covered(&self.ignored_inputs, path)
    }

    /// Whether a write of `path` (absolute) is excluded from automatic outputs.
    pub fn ignores_output(&self, path: &Path) -> bool {
        covered(&self.ignored_outputs, path)
    }

    /// Adds the tracked env variables and patterns to `fp` as env-derived inputs, with the
    /// values the tools saw: each name under [`env_input_key`] (state as
    /// [`baton_cache::env_input_state`] computes it), each pattern under
    /// [`EnvPattern::input_key`] (state as [`EnvPattern::state`] over the recorded matches).
    ///
    /// At lookup, give [`baton_cache::CurrentInputs::env`] the [`trackable_env`] of the current
    /// parent environment, so untracked names matching a pattern never count.
    pub fn record_env_inputs(&self, fp: &mut InputFingerprint) {
        for (name, value) in &self.tracked_env {
            let state = match value {
                Some(v) => PathState::File {
                    hash: Digest::of(v),
                },
                None => PathState::Absent,
            };
            fp.insert(env_input_key(name), state);
        }
        for p in &self.tracked_env_patterns {
            let env: Vec<(OsString, OsString)> = p
                .matches
                .iter()
                .map(|(n, v)| (OsString::from(n), OsStr::from_bytes(v).to_owned()))
                .collect();
            fp.insert(p.pattern.input_key(), p.pattern.state(&env));
        }
    }
}

/// Env values as `<N bytes>` / `unset`, for `Debug` output that may end up in logs.
struct Redacted<'a>(Option<&'a [u8]>);

impl std::fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(v) => write!(f, "<{} bytes>", v.len()),
            None => f.write_str("unset"),
        }
    }
}

impl std::fmt::Debug for TrackedEnvPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let matches: BTreeMap<&str, Redacted<'_>> = self
            .matches
            .iter()
            .map(|(n, v)| (n.as_str(), Redacted(Some(v))))
            .collect();
        f.debug_struct("TrackedEnvPattern")
            .field("pattern", &self.pattern)
            .field("matches", &matches)
            .finish()
    }
}

impl std::fmt::Debug for ToolReports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tracked: BTreeMap<&str, Redacted<'_>> = self
            .tracked_env
            .iter()
            .map(|(n, v)| (n.as_str(), Redacted(v.as_deref())))
            .collect();
        f.debug_struct("ToolReports")
            .field("ignored_inputs", &self.ignored_inputs)
            .field("ignored_outputs", &self.ignored_outputs)
            .field("disable_cache", &self.disable_cache)
            .field("tracked_env", &tracked)
            .field("tracked_env_patterns", &self.tracked_env_patterns)
            .field("protocol_error", &self.protocol_error)
            .finish()
    }
}

fn covered(set: &BTreeSet<PathBuf>, path: &Path) -> bool {
    let path = normalize(path);
    set.iter().any(|ignored| path.starts_with(ignored))
}

/// `parent_env` without the variables whose names match `untracked` (names or `PREFIX_*`
/// patterns, as [`env_pattern_matches`] reads them): the environment to resolve tool-tracked
/// env inputs against at lookup time.
pub fn trackable_env(
    parent_env: &[(OsString, OsString)],
    untracked: &[String],
) -> Vec<(OsString, OsString)> {
    parent_env
        .iter()
        .filter(|(n, _)| !n.to_str().is_some_and(|n| is_untracked(untracked, n)))
        .cloned()
        .collect()
}

fn is_untracked(untracked: &[String], name: &str) -> bool {
    untracked.iter().any(|p| env_pattern_matches(p, name))
}

/// Writes [`NODE_CLIENT_SOURCE`] to `dir/baton-tool-client-<hash>.cjs` (created if missing,
/// written through a temporary file and renamed, left alone if already there) and returns its
/// path, the value for `VP_RUN_NODE_CLIENT_PATH`. The content hash in the name lets runs of
/// different Baton versions share `dir`.
///
/// Errors: creating `dir` or writing the file.
pub fn write_node_client(dir: &Path) -> io::Result<PathBuf> {
    let hash = blake3::hash(NODE_CLIENT_SOURCE.as_bytes()).to_hex();
    let path = dir.join(format!("baton-tool-client-{}.cjs", &hash[..16]));
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".baton-tool-client-{}-{}.tmp",
        std::process::id(),
        unique()
    ));
    std::fs::write(&tmp, NODE_CLIENT_SOURCE)?;
    std::fs::rename(&tmp, &path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    Ok(path)
}

fn unique() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// Lexical normalisation: drops `.` and empty components, applies `..` to the previous
/// component (never above the root). Symlinks are not resolved.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if out.parent().is_some() {
                    out.pop();
                }
            }
            other => out.push(other),
        }
    }
    out
}

struct Shared {
    env: Vec<(OsString, OsString)>,
    untracked: Vec<String>,
    reports: Mutex<ToolReports>,
}

impl Shared {
    fn with_reports<T>(&self, f: impl FnOnce(&mut ToolReports) -> T) -> T {
        f(&mut self.reports.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn protocol_error(&self, peer: &str, message: &str) {
        self.with_reports(|r| {
            r.protocol_error
                .get_or_insert_with(|| format!("tool IPC protocol error from {peer}: {message}"));
        });
    }

    /// The value of `name` (the last entry wins, as in `execve`).
    fn env_value(&self, name: &str) -> Option<&OsString> {
        self.env
            .iter()
            .rev()
            .find(|(n, _)| n.as_bytes() == name.as_bytes())
            .map(|(_, v)| v)
    }
}

/// A running tool IPC server (see the module docs). Dropping it without
/// [`finish`](IpcServer::finish) stops it and removes its directory.
pub struct IpcServer {
    dir: PathBuf,
    socket_path: PathBuf,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    done: Option<oneshot::Receiver<()>>,
}

impl IpcServer {
    /// Binds a socket in a new private directory under the system temp dir (`$TMPDIR`, or `/tmp`
    /// when that path would be too long for a socket) and serves it on the process's IPC thread
    /// (`baton-ipc`, one current-thread tokio runtime started on first use and shared by every
    /// server), so tools get answers whatever the caller's runtime is doing, and starting a
    /// server costs no thread or runtime of its own. Works inside or outside a tokio runtime.
    ///
    /// `parent_env` answers `getEnv`/`getEnvs`; `untracked` holds names or `PREFIX_*` patterns
    /// (the task's `untrackedEnv`) that are answered but never recorded as tracked.
    ///
    /// Errors: the directory cannot be created, the socket cannot be bound, the runtime or the
    /// thread cannot be started.
    pub fn start(
        parent_env: Vec<(OsString, OsString)>,
        untracked: Vec<String>,
    ) -> Result<IpcServer, IpcError> {
        let handle = ipc_runtime()?;
        let dir = create_private_dir()?;
        let socket_path = dir.join(SOCKET_NAME);
        let listener = {
            let _guard = handle.enter();
            UnixListener::bind(&socket_path)
        };
        let listener = listener.map_err(|source| {
            let _ = std::fs::remove_dir_all(&dir);
            IpcError::Bind {
                path: socket_path.clone(),
                source,
            }
        })?;
        let shared = Arc::new(Shared {
            env: parent_env,
            untracked,
            reports: Mutex::new(ToolReports::default()),
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (done_tx, done) = oneshot::channel();
        let serve_shared = shared.clone();
        handle.spawn(async move {
            accept_loop(listener, serve_shared, shutdown_rx).await;
            let _ = done_tx.send(());
        });
        Ok(IpcServer {
            dir,
            socket_path,
            shared,
            shutdown,
            done: Some(done),
        })
    }

    /// The socket path (the value of `BATON_IPC`).
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// The variables to add to the task child's environment: `BATON_IPC=<socket>`,
    /// `BATON_RUN=1`.
    pub fn child_env(&self) -> Vec<(OsString, OsString)> {
        vec![
            (ENV_SOCKET.into(), self.socket_path.clone().into_os_string()),
            (ENV_RUN.into(), "1".into()),
        ]
    }

    /// Stops accepting, serves what connections (open or still in the backlog) already sent —
    /// each gets 250 ms after this call, then is closed — removes the socket directory and
    /// returns the reports. Call it after the task's process tree has exited. Any executor.
    pub async fn finish(mut self) -> ToolReports {
        let _ = self.shutdown.send(true);
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
        self.take_reports()
    }

    /// [`finish`](IpcServer::finish) for synchronous callers: blocks the calling thread (do not
    /// call it on an async runtime thread).
    pub fn finish_blocking(mut self) -> ToolReports {
        let _ = self.shutdown.send(true);
        if let Some(done) = self.done.take() {
            let _ = done.blocking_recv();
        }
        self.take_reports()
    }

    fn take_reports(&mut self) -> ToolReports {
        let _ = std::fs::remove_dir_all(&self.dir);
        self.shared.with_reports(std::mem::take)
    }
}

impl Drop for IpcServer {
    /// Without `finish`: the server task stops on its own after the drain grace period.
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The runtime every [`IpcServer`] of the process is served on: a current-thread runtime driven
/// by one `baton-ipc` thread, started on first use and kept until the process exits. A failed
/// start is retried by the next call.
fn ipc_runtime() -> Result<tokio::runtime::Handle, IpcError> {
    static HANDLE: Mutex<Option<tokio::runtime::Handle>> = Mutex::new(None);
    let mut slot = HANDLE.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(h) = slot.as_ref() {
        return Ok(h.clone());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(IpcError::Runtime)?;
    let handle = runtime.handle().clone();
    std::thread::Builder::new()
        .name("baton-ipc".to_owned())
        .spawn(move || runtime.block_on(std::future::pending::<()>()))
        .map_err(IpcError::Thread)?;
    *slot = Some(handle.clone());
    Ok(handle)
}

/// Socket paths are limited to 108 bytes (`sun_path`), so fall back to `/tmp` when `$TMPDIR`
/// is long.
fn create_private_dir() -> Result<PathBuf, IpcError> {
    let mut base = std::env::temp_dir();
    // "/baton-ipc-" + 16 hex + "/ipc.sock" + NUL
    if base.as_os_str().len() + 40 > 107 {
        base = PathBuf::from("/tmp");
    }
    let seed = format!(
        "{}-{}-{:?}",
        std::process::id(),
        unique(),
        std::time::SystemTime::now()
    );
    let mut last_err = None;
    for attempt in 0..16u32 {
        let hash = blake3::hash(format!("{seed}-{attempt}").as_bytes()).to_hex();
        let dir = base.join(format!("baton-ipc-{}", &hash[..16]));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
            Err(source) => return Err(IpcError::CreateDir { dir: base, source }),
        }
    }
    Err(IpcError::CreateDir {
        dir: base,
        source: last_err.unwrap_or_else(|| io::Error::other("no free name")),
    })
}

async fn accept_loop(
    listener: UnixListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    conns.spawn(serve_connection(stream, shared.clone(), shutdown.clone()));
                }
                Err(e) => {
                    tracing::warn!("tool IPC accept failed: {e}");
                    // Out of descriptors and the like: do not spin.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    // Connections still in the backlog were made by processes of the run (which has ended):
    // serve what they sent too.
    if let Ok(listener) = listener.into_std() {
        while let Ok((stream, _)) = listener.accept() {
            let stream = stream
                .set_nonblocking(true)
                .and_then(|()| UnixStream::from_std(stream));
            if let Ok(stream) = stream {
                conns.spawn(serve_connection(stream, shared.clone(), shutdown.clone()));
            }
        }
    }
    while conns.join_next().await.is_some() {}
}

/// Per-connection state.
struct Conn {
    peer: String,
    hello: bool,
}

async fn serve_connection(
    stream: UnixStream,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let peer = match stream.peer_cred().ok().and_then(|c| c.pid()) {
        Some(pid) => format!("pid {pid}"),
        None => "a tool".to_owned(),
    };
    let mut conn = Conn { peer, hello: false };
    let (read, mut write) = stream.into_split();
    let mut peer_gone = false;
    let mut reader = BufReader::new(read);
    let mut buf = Vec::new();
    // Once the run is over, the connection gets DRAIN_GRACE in all to deliver what is left.
    let mut drain_deadline = shutdown
        .borrow()
        .then(|| tokio::time::Instant::now() + DRAIN_GRACE);
    loop {
        // `read_until` keeps partial bytes in `buf` when cancelled, so selecting is safe.
        let limit = (MAX_LINE_BYTES + 1).saturating_sub(buf.len()) as u64;
        let mut limited = (&mut reader).take(limit);
        let result = if let Some(deadline) = drain_deadline {
            match tokio::time::timeout_at(deadline, limited.read_until(b'\n', &mut buf)).await {
                Ok(r) => r,
                Err(_) => return,
            }
        } else {
            tokio::select! {
                r = limited.read_until(b'\n', &mut buf) => r,
                _ = shutdown.changed() => {
                    drain_deadline = Some(tokio::time::Instant::now() + DRAIN_GRACE);
                    continue;
                }
            }
        };
        let n = match result {
            Ok(n) => n,
            Err(_) => return,
        };
        let complete = buf.last() == Some(&b'\n');
        if !complete && buf.len() > MAX_LINE_BYTES {
            let message = format!("request line longer than {MAX_LINE_BYTES} bytes");
            shared.protocol_error(&conn.peer, &message);
            let resp = ResponseFrame::err(None, ErrorCode::TooLong, message);
            let _ = send(&mut write, &resp).await;
            return;
        }
        if n == 0 && buf.is_empty() {
            return; // clean EOF
        }
        let eof = !complete;
        let line = std::mem::take(&mut buf);
        let line = line.strip_suffix(b"\n").unwrap_or(&line);
        if line.iter().all(u8::is_ascii_whitespace) && !eof {
            continue;
        }
        let (resp, close) = handle_line(&shared, &mut conn, line);
        // A client that wrote its requests and left can no longer be answered, but what it
        // sent still counts: keep reading until EOF.
        if !peer_gone && send(&mut write, &resp).await.is_err() {
            peer_gone = true;
        }
        if close || eof {
            return;
        }
    }
}

async fn send(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    resp: &ResponseFrame,
) -> io::Result<()> {
    let mut bytes = serde_json::to_vec(resp).map_err(io::Error::other)?;
    bytes.push(b'\n');
    write.write_all(&bytes).await
}

/// Answers one request line; `true` = close the connection after the answer.
fn handle_line(shared: &Shared, conn: &mut Conn, line: &[u8]) -> (ResponseFrame, bool) {
    let frame: RequestFrame = match serde_json::from_slice(line) {
        Ok(f) => f,
        Err(e) => {
            let id = serde_json::from_slice::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v.get("id").and_then(serde_json::Value::as_u64));
            let message = format!("malformed request: {e}");
            shared.protocol_error(&conn.peer, &message);
            return (ResponseFrame::err(id, ErrorCode::BadRequest, message), true);
        }
    };
    let id = frame.id;
    let fail = |code: ErrorCode, message: String, close: bool| {
        shared.protocol_error(&conn.peer, &message);
        (ResponseFrame::err(Some(id), code, message), close)
    };
    if !conn.hello {
        return match frame.request {
            Request::Hello { version, .. } if version == PROTOCOL_VERSION => {
                conn.hello = true;
                ok(
                    id,
                    &HelloResult {
                        version: PROTOCOL_VERSION,
                        server: concat!("baton/", env!("CARGO_PKG_VERSION")).to_owned(),
                    },
                )
            }
            Request::Hello { version, .. } => fail(
                ErrorCode::UnsupportedVersion,
                format!(
                    "unsupported protocol version {version} (this server speaks {PROTOCOL_VERSION})"
                ),
                true,
            ),
            _ => fail(
                ErrorCode::HelloRequired,
                "the first request must be hello".to_owned(),
                true,
            ),
        };
    }
    match frame.request {
        Request::Hello { .. } => fail(
            ErrorCode::BadRequest,
            "hello sent twice on one connection".to_owned(),
            true,
        ),
        Request::IgnoreInput { path } | Request::IgnoreOutput { path }
            if path.is_empty() || path.contains('\0') || !Path::new(&path).is_absolute() =>
        {
            fail(
                ErrorCode::InvalidPath,
                format!("ignore path must be absolute: {path:?}"),
                false,
            )
        }
        Request::IgnoreInput { path } => {
            shared.with_reports(|r| r.ignored_inputs.insert(normalize(Path::new(&path))));
            ok(id, &Ack {})
        }
        Request::IgnoreOutput { path } => {
            shared.with_reports(|r| r.ignored_outputs.insert(normalize(Path::new(&path))));
            ok(id, &Ack {})
        }
        Request::DisableCache { reason } => {
            let text = match reason {
                Some(reason) => format!("disabled by a tool ({}): {reason}", conn.peer),
                None => format!("disabled by a tool ({})", conn.peer),
            };
            shared.with_reports(|r| {
                r.disable_cache.get_or_insert(text);
            });
            ok(id, &Ack {})
        }
        Request::GetEnv { name, tracked } => {
            let value = shared.env_value(&name).map(|v| v.as_bytes().to_vec());
            if tracked && !is_untracked(&shared.untracked, &name) {
                shared.with_reports(|r| {
                    r.tracked_env.entry(name).or_insert_with(|| value.clone());
                });
            }
            ok(
                id,
                &GetEnvResult {
                    value: value.map(ByteChunk),
                },
            )
        }
        Request::GetEnvs {
            glob,
            prefix,
            tracked,
        } => {
            let query = match EnvQuery::from_fields(glob, prefix) {
                Ok(q) => q,
                Err(message) => return fail(ErrorCode::InvalidPattern, message.to_owned(), false),
            };
            let (pattern, matcher) = match query {
                EnvQuery::Prefix(p) => (EnvPattern::Prefix(p), None),
                EnvQuery::Glob(g) => match globset::Glob::new(&g) {
                    Ok(compiled) => (EnvPattern::Glob(g), Some(compiled.compile_matcher())),
                    Err(e) => {
                        return fail(
                            ErrorCode::InvalidPattern,
                            format!("invalid glob {g:?}: {e}"),
                            false,
                        );
                    }
                },
            };
            let mut vars = BTreeMap::new();
            for (n, v) in &shared.env {
                let Some(n) = n.to_str() else { continue };
                let hit = match (&pattern, &matcher) {
                    (EnvPattern::Prefix(p), _) => n.starts_with(p.as_str()),
                    (_, Some(m)) => m.is_match(n),
                    (_, None) => false,
                };
                if hit {
                    vars.insert(n.to_owned(), v.as_bytes().to_vec());
                }
            }
            if tracked {
                let matches: BTreeMap<String, Vec<u8>> = vars
                    .iter()
                    .filter(|(n, _)| !is_untracked(&shared.untracked, n))
                    .map(|(n, v)| (n.clone(), v.clone()))
                    .collect();
                shared.with_reports(|r| {
                    if !r.tracked_env_patterns.iter().any(|p| p.pattern == pattern) {
                        r.tracked_env_patterns
                            .push(TrackedEnvPattern { pattern, matches });
                    }
                });
            }
            ok(
                id,
                &GetEnvsResult {
                    vars: vars.into_iter().map(|(n, v)| (n, ByteChunk(v))).collect(),
                },
            )
        }
    }
}

fn ok<T: serde::Serialize>(id: u64, result: &T) -> (ResponseFrame, bool) {
    match ResponseFrame::ok(id, result) {
        Ok(resp) => (resp, false),
        Err(e) => (
            ResponseFrame::err(
                Some(id),
                ErrorCode::BadRequest,
                format!("cannot encode: {e}"),
            ),
            true,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_is_lexical() {
        assert_eq!(normalize(Path::new("/a/./b//c/../d/")), Path::new("/a/b/d"));
        assert_eq!(normalize(Path::new("/../a")), Path::new("/a"));
    }

    #[test]
    fn ignores_cover_subpaths_by_component() {
        let mut r = ToolReports::default();
        r.ignored_inputs
            .insert(PathBuf::from("/w/node_modules/.cache"));
        assert!(r.ignores_input(Path::new("/w/node_modules/.cache")));
        assert!(r.ignores_input(Path::new("/w/node_modules/.cache/x/y")));
        assert!(!r.ignores_input(Path::new("/w/node_modules/.cachex")));
        assert!(!r.ignores_output(Path::new("/w/node_modules/.cache")));
    }

    #[test]
    fn debug_output_hides_env_values() {
        let mut r = ToolReports::default();
        r.tracked_env
            .insert("TOKEN".into(), Some(b"hunter2".to_vec()));
        r.tracked_env.insert("GONE".into(), None);
        r.tracked_env_patterns.push(TrackedEnvPattern {
            pattern: EnvPattern::Glob("API_*".into()),
            matches: BTreeMap::from([("API_KEY".to_owned(), b"s3cret".to_vec())]),
        });
        let text = format!("{r:?}");
        assert!(
            !text.contains("hunter2") && !text.contains("s3cret"),
            "{text}"
        );
        assert!(text.contains("\"TOKEN\": <7 bytes>"), "{text}");
        assert!(text.contains("\"GONE\": unset"), "{text}");
        assert!(text.contains("\"API_KEY\": <6 bytes>"), "{text}");
    }

    #[test]
    fn trackable_env_drops_untracked_names_and_prefixes() {
        let env = vec![
            (OsString::from("A"), OsString::from("1")),
            (OsString::from("SECRET_X"), OsString::from("2")),
            (OsString::from("B"), OsString::from("3")),
        ];
        let kept = trackable_env(&env, &["SECRET_*".to_owned(), "B".to_owned()]);
        assert_eq!(kept, vec![(OsString::from("A"), OsString::from("1"))]);
    }

    #[test]
    fn recorded_env_inputs_match_the_cache_state_of_the_same_env() {
        let value = OsStr::from_bytes(b"v\xff").to_owned();
        let env = vec![(OsString::from("VITE_A"), value.clone())];
        let mut r = ToolReports::default();
        r.tracked_env
            .insert("VITE_A".into(), Some(b"v\xff".to_vec()));
        r.tracked_env.insert("UNSET".into(), None);
        r.tracked_env_patterns.push(TrackedEnvPattern {
            pattern: EnvPattern::Prefix("VITE_".into()),
            matches: BTreeMap::from([("VITE_A".to_owned(), b"v\xff".to_vec())]),
        });
        let mut fp = InputFingerprint::new();
        r.record_env_inputs(&mut fp);
        let mut expected = InputFingerprint::new();
        expected.insert_env(&env, "VITE_A");
        expected.insert_env(&env, "UNSET");
        expected.insert_env_pattern(&env, &EnvPattern::Prefix("VITE_".into()));
        assert_eq!(fp, expected);
        assert_eq!(fp.len(), 3);
    }
}
