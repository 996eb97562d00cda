//! `baton-tool`: a blocking client for tools that run under `baton run`.
//!
//! A task's tools can tell the runner what its file tracing cannot know (DESIGN.md §5,
//! "Tool IPC"):
//!
//! | function | effect under `baton run` | outside Baton |
//! |---|---|---|
//! | [`ignore_input`]`(path)` | reads under `path` are not cache inputs | nothing |
//! | [`ignore_output`]`(path)` | writes under `path` are not cache outputs | nothing |
//! | [`disable_cache`]`()` | this run is not cached | nothing |
//! | [`get_env`]`(name, tracked)` | the runner's value of `name`; `tracked` puts it in the key | `std::env::var_os` |
//! | [`get_envs`]`(pattern, tracked)` | the runner's matching variables | `std::env::vars_os`, filtered |
//!
//! The runner's environment may hold variables the task itself was not given; values arrive
//! byte-exact (non-UTF-8 included). Names the task config lists as untracked are answered but
//! never tracked.
//!
//! Under Baton the child's `BATON_IPC` names a Unix socket; the first call connects (plain
//! `std::os::unix::net`, no async runtime, no threads) and the connection is reused by later
//! calls from any thread. The free functions never fail: if the runner cannot be reached they
//! print one warning on stderr and behave as outside Baton. [`Client`] gives the same calls
//! with errors. Wire format: [`baton_protocol::tool`].

use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use baton_protocol::tool::{
    Ack, ENV_SOCKET, EnvQuery, ErrorCode, GetEnvResult, GetEnvsResult, HelloResult, MAX_LINE_BYTES,
    PROTOCOL_VERSION, Request, RequestFrame, ResponseFrame,
};
use serde::de::DeserializeOwned;

/// Which variables [`get_envs`] selects. A `&str` converts to [`Pattern::Glob`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// Names matching a glob (`VITE_*`; `globset` syntax, case-sensitive, whole name).
    Glob(String),
    /// Names starting with a literal prefix (`VITE_`).
    Prefix(String),
}

impl Pattern {
    /// A prefix pattern.
    pub fn prefix(prefix: impl Into<String>) -> Self {
        Self::Prefix(prefix.into())
    }
}

impl From<&str> for Pattern {
    fn from(glob: &str) -> Self {
        Self::Glob(glob.to_owned())
    }
}

impl From<String> for Pattern {
    fn from(glob: String) -> Self {
        Self::Glob(glob)
    }
}

/// Why a [`Client`] call failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The socket could not be connected.
    #[error("cannot connect to the baton tool IPC socket '{path}'")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Reading or writing the socket failed, or the runner closed it.
    #[error("tool IPC connection failed")]
    Io(#[source] io::Error),
    /// The runner's answer was not what the protocol promises.
    #[error("unexpected answer from the runner: {0}")]
    BadAnswer(String),
    /// The runner rejected the request (it then also disables caching for the run).
    #[error("the runner rejected the request ({code:?}): {message}")]
    Rejected {
        /// The error kind.
        code: ErrorCode,
        /// The runner's message.
        message: String,
    },
    /// A path to ignore is not valid UTF-8 (the protocol carries paths as JSON strings).
    #[error("path is not valid UTF-8: {0:?}")]
    NonUtf8Path(PathBuf),
    /// The current directory is unavailable to make a relative path absolute.
    #[error("cannot resolve a relative path")]
    CurrentDir(#[source] io::Error),
}

/// One connection to the runner's tool IPC server (blocking; not thread-safe by itself — the
/// free functions share one behind a mutex).
#[derive(Debug)]
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
    line: Vec<u8>,
}

impl Client {
    /// Connects to the socket named by `BATON_IPC`; `Ok(None)` when it is unset or empty
    /// (not running under Baton).
    ///
    /// Errors: as [`Client::connect`].
    pub fn from_env() -> Result<Option<Client>, ToolError> {
        match std::env::var_os(ENV_SOCKET) {
            Some(path) if !path.is_empty() => Client::connect(Path::new(&path)).map(Some),
            _ => Ok(None),
        }
    }

    /// Connects to the socket at `path` and says `hello`.
    ///
    /// Errors: [`ToolError::Connect`]; the hello failing ([`ToolError::Io`],
    /// [`ToolError::Rejected`], [`ToolError::BadAnswer`]).
    pub fn connect(path: &Path) -> Result<Client, ToolError> {
        let stream = UnixStream::connect(path).map_err(|source| ToolError::Connect {
            path: path.to_owned(),
            source,
        })?;
        let writer = stream.try_clone().map_err(ToolError::Io)?;
        let mut client = Client {
            reader: BufReader::new(stream),
            writer,
            next_id: 1,
            line: Vec::new(),
        };
        let hello: HelloResult = client.call(Request::Hello {
            version: PROTOCOL_VERSION,
            client: Some(concat!("baton-tool/", env!("CARGO_PKG_VERSION")).to_owned()),
        })?;
        if hello.version != PROTOCOL_VERSION {
            return Err(ToolError::BadAnswer(format!(
                "protocol version {} instead of {PROTOCOL_VERSION}",
                hello.version
            )));
        }
        Ok(client)
    }

    /// Reads under `path` (absolute, or relative to the current directory) are not cache
    /// inputs of this run.
    ///
    /// Errors: a non-UTF-8 path, the connection, the runner rejecting it.
    pub fn ignore_input(&mut self, path: &Path) -> Result<(), ToolError> {
        let path = wire_path(path)?;
        self.call::<Ack>(Request::IgnoreInput { path }).map(drop)
    }

    /// Writes under `path` are not cache outputs of this run.
    ///
    /// Errors: as [`Client::ignore_input`].
    pub fn ignore_output(&mut self, path: &Path) -> Result<(), ToolError> {
        let path = wire_path(path)?;
        self.call::<Ack>(Request::IgnoreOutput { path }).map(drop)
    }

    /// This run is not cached; `reason` is shown to the user.
    ///
    /// Errors: the connection.
    pub fn disable_cache(&mut self, reason: Option<&str>) -> Result<(), ToolError> {
        self.call::<Ack>(Request::DisableCache {
            reason: reason.map(str::to_owned),
        })
        .map(drop)
    }

    /// The runner's value of `name` (`None` = unset); `tracked` makes it part of the cache key.
    ///
    /// Errors: the connection, a malformed answer.
    pub fn get_env(&mut self, name: &str, tracked: bool) -> Result<Option<OsString>, ToolError> {
        let result: GetEnvResult = self.call(Request::GetEnv {
            name: name.to_owned(),
            tracked,
        })?;
        Ok(result.value.map(|v| OsString::from_vec(v.0)))
    }

    /// The runner's variables matching `pattern`, sorted by name; `tracked` makes the matching
    /// set part of the cache key.
    ///
    /// Errors: the connection, an invalid glob ([`ToolError::Rejected`]).
    pub fn get_envs(
        &mut self,
        pattern: impl Into<Pattern>,
        tracked: bool,
    ) -> Result<Vec<(OsString, OsString)>, ToolError> {
        let (glob, prefix) = match pattern.into() {
            Pattern::Glob(g) => EnvQuery::Glob(g),
            Pattern::Prefix(p) => EnvQuery::Prefix(p),
        }
        .into_fields();
        let result: GetEnvsResult = self.call(Request::GetEnvs {
            glob,
            prefix,
            tracked,
        })?;
        Ok(result
            .vars
            .into_iter()
            .map(|(n, v)| (OsString::from(n), OsString::from_vec(v.0)))
            .collect())
    }

    fn call<T: DeserializeOwned>(&mut self, request: Request) -> Result<T, ToolError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut bytes = serde_json::to_vec(&RequestFrame { id, request })
            .map_err(|e| ToolError::BadAnswer(format!("cannot encode the request: {e}")))?;
        bytes.push(b'\n');
        self.writer.write_all(&bytes).map_err(ToolError::Io)?;
        self.line.clear();
        let n = (&mut self.reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut self.line)
            .map_err(ToolError::Io)?;
        if n == 0 || self.line.last() != Some(&b'\n') {
            return Err(ToolError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the runner closed the connection",
            )));
        }
        let resp: ResponseFrame = serde_json::from_slice(&self.line)
            .map_err(|e| ToolError::BadAnswer(format!("not a response: {e}")))?;
        if let Some(err) = resp.error {
            return Err(ToolError::Rejected {
                code: err.code,
                message: err.message,
            });
        }
        if resp.id != Some(id) {
            return Err(ToolError::BadAnswer(format!(
                "answer for request {:?}, expected {id}",
                resp.id
            )));
        }
        let result = resp
            .result
            .ok_or_else(|| ToolError::BadAnswer("neither result nor error".to_owned()))?;
        serde_json::from_value(result).map_err(|e| ToolError::BadAnswer(e.to_string()))
    }
}

fn wire_path(path: &Path) -> Result<String, ToolError> {
    let abs = std::path::absolute(path).map_err(ToolError::CurrentDir)?;
    match abs.to_str() {
        Some(s) => Ok(s.to_owned()),
        None => Err(ToolError::NonUtf8Path(abs)),
    }
}

/// The shared connection of the free functions.
enum Shared {
    /// Not connected yet (or the last connection broke).
    Idle,
    /// Connected, by the process with this pid (a forked child must not share the socket).
    Ready(Client, u32),
}

static SHARED: Mutex<Shared> = Mutex::new(Shared::Idle);
static WARNED: AtomicBool = AtomicBool::new(false);

/// Whether this process runs under `baton run` (`BATON_IPC` is set and not empty).
pub fn in_baton() -> bool {
    std::env::var_os(ENV_SOCKET).is_some_and(|v| !v.is_empty())
}

/// Runs `f` on the shared connection: `None` outside Baton or on failure (warned once).
fn with_client<T>(f: impl FnOnce(&mut Client) -> Result<T, ToolError>) -> Option<T> {
    if !in_baton() {
        return None;
    }
    let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    let pid = std::process::id();
    if matches!(*shared, Shared::Ready(_, owner) if owner != pid) {
        // Inherited over fork: closing our copy of the descriptors leaves the parent's
        // connection intact; this process gets its own.
        *shared = Shared::Idle;
    }
    if let Shared::Idle = *shared {
        match Client::from_env() {
            Ok(Some(c)) => *shared = Shared::Ready(c, pid),
            Ok(None) => return None,
            Err(e) => {
                warn(&e);
                return None;
            }
        }
    }
    let Shared::Ready(client, _) = &mut *shared else {
        return None;
    };
    match f(client) {
        Ok(v) => Some(v),
        Err(e) => {
            if matches!(e, ToolError::Io(_) | ToolError::BadAnswer(_)) {
                *shared = Shared::Idle;
            }
            warn(&e);
            None
        }
    }
}

fn warn(e: &ToolError) {
    if WARNED.swap(true, Ordering::Relaxed) {
        return;
    }
    let mut text = format!("baton-tool: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    eprintln!("{text}; continuing without the runner");
}

/// Reads under `path` (a file or a directory; relative paths resolve against the current
/// directory) are not cache inputs of this task run. No-op outside Baton.
pub fn ignore_input(path: impl AsRef<Path>) {
    with_client(|c| c.ignore_input(path.as_ref()));
}

/// Writes under `path` are not cache outputs of this task run. No-op outside Baton.
pub fn ignore_output(path: impl AsRef<Path>) {
    with_client(|c| c.ignore_output(path.as_ref()));
}

/// This task run is not cached. No-op outside Baton.
pub fn disable_cache() {
    with_client(|c| c.disable_cache(None));
}

/// This task run is not cached; `reason` is shown to the user. No-op outside Baton.
pub fn disable_cache_because(reason: &str) {
    with_client(|c| c.disable_cache(Some(reason)));
}

/// The value of env variable `name` in the runner's environment (`None` = unset). With
/// `tracked`, the value becomes part of this run's cache key (unless the task config lists the
/// name as untracked). Outside Baton, or if the runner cannot be reached:
/// `std::env::var_os(name)`.
pub fn get_env(name: &str, tracked: bool) -> Option<OsString> {
    match with_client(|c| c.get_env(name, tracked)) {
        Some(v) => v,
        None => std::env::var_os(name),
    }
}

/// The variables of the runner's environment matching `pattern` (a glob `&str`, or
/// [`Pattern::prefix`]), sorted by name. With `tracked`, the matching set becomes part of the
/// cache key: adding, removing or changing a match is a miss. Outside Baton, or if the runner
/// cannot be reached: this process's environment, filtered the same way (an invalid glob
/// matches nothing). Names that are not UTF-8 never match.
pub fn get_envs(pattern: impl Into<Pattern>, tracked: bool) -> Vec<(OsString, OsString)> {
    let pattern = pattern.into();
    if let Some(vars) = with_client(|c| c.get_envs(pattern.clone(), tracked)) {
        return vars;
    }
    let matcher = match &pattern {
        Pattern::Glob(g) => match globset::Glob::new(g) {
            Ok(g) => Some(g.compile_matcher()),
            Err(_) => return Vec::new(),
        },
        Pattern::Prefix(_) => None,
    };
    let mut vars: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(n, _)| {
            let Some(n) = n.to_str() else { return false };
            match (&pattern, &matcher) {
                (Pattern::Prefix(p), _) => n.starts_with(p.as_str()),
                (_, Some(m)) => m.is_match(n),
                (_, None) => false,
            }
        })
        .collect();
    vars.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    vars
}
