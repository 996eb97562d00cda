//! The exec-server protocol (DESIGN.md §2), wire-compatible with `codex exec-server`.
//!
//! Every params/result struct serialises with camelCase field names; byte fields are standard
//! base64 ([`ByteChunk`]); unknown fields are ignored on input (Codex sends sandbox hints Baton
//! does not use). Paths ([`WirePath`]) accept both Codex dialects: a bare absolute path or a
//! `file://` URI.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Method names (requests unless noted).
pub mod methods {
    /// `initialize` request: [`super::InitializeParams`] → [`super::InitializeResponse`].
    pub const INITIALIZE: &str = "initialize";
    /// `initialized` notification, sent by the client after `initialize` succeeded.
    pub const INITIALIZED: &str = "initialized";
    /// [`super::StartParams`] → [`super::StartResponse`].
    pub const PROCESS_START: &str = "process/start";
    /// [`super::ReadParams`] → [`super::ReadResponse`].
    pub const PROCESS_READ: &str = "process/read";
    /// [`super::WriteParams`] → [`super::WriteResponse`].
    pub const PROCESS_WRITE: &str = "process/write";
    /// [`super::TerminateParams`] → [`super::TerminateResponse`].
    pub const PROCESS_TERMINATE: &str = "process/terminate";
    /// [`super::SignalParams`] → `{}`.
    pub const PROCESS_SIGNAL: &str = "process/signal";
    /// [`super::ResizeParams`] → `{}` (Baton extension).
    pub const PROCESS_RESIZE: &str = "process/resize";
    /// Server notification [`super::OutputNotification`].
    pub const PROCESS_OUTPUT: &str = "process/output";
    /// Server notification [`super::ExitedNotification`].
    pub const PROCESS_EXITED: &str = "process/exited";
    /// Server notification [`super::ClosedNotification`].
    pub const PROCESS_CLOSED: &str = "process/closed";
    /// [`super::FsReadFileParams`] → [`super::FsReadFileResponse`].
    pub const FS_READ_FILE: &str = "fs/readFile";
    /// [`super::FsWriteFileParams`] → `{}`.
    pub const FS_WRITE_FILE: &str = "fs/writeFile";
    /// [`super::FsCreateDirectoryParams`] → `{}`.
    pub const FS_CREATE_DIRECTORY: &str = "fs/createDirectory";
    /// [`super::FsGetMetadataParams`] → [`super::FsGetMetadataResponse`].
    pub const FS_GET_METADATA: &str = "fs/getMetadata";
    /// [`super::FsReadDirectoryParams`] → [`super::FsReadDirectoryResponse`].
    pub const FS_READ_DIRECTORY: &str = "fs/readDirectory";
    /// [`super::FsRemoveParams`] → `{}`.
    pub const FS_REMOVE: &str = "fs/remove";
    /// [`super::FsCopyParams`] → `{}`.
    pub const FS_COPY: &str = "fs/copy";
}

/// Application error codes of the exec server (besides the JSON-RPC ones in
/// [`crate::jsonrpc`]).
pub mod error_codes {
    /// Access denied: a path outside the allowed roots (Baton).
    pub const ACCESS_DENIED: i64 = -32003;
    /// fs path not found (as in Codex).
    pub const NOT_FOUND: i64 = -32004;
    /// Output evicted: the requested output is no longer retained (Baton).
    pub const OUTPUT_EVICTED: i64 = -32005;
    /// The session named by `resumeSessionId` is attached to another connection (as in Codex).
    pub const SESSION_ATTACHED: i64 = -32010;
}

/// Bytes carried as a standard-base64 JSON string.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ByteChunk(pub Vec<u8>);

impl ByteChunk {
    /// The raw bytes.
    pub fn into_inner(self) -> Vec<u8> {
        self.0
    }
}

impl From<Vec<u8>> for ByteChunk {
    fn from(v: Vec<u8>) -> Self {
        Self(v)
    }
}

impl From<&[u8]> for ByteChunk {
    fn from(v: &[u8]) -> Self {
        Self(v.to_vec())
    }
}

impl Serialize for ByteChunk {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&BASE64.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for ByteChunk {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        BASE64
            .decode(text.as_bytes())
            .map(ByteChunk)
            .map_err(|e| serde::de::Error::custom(format!("invalid base64: {e}")))
    }
}

/// A client-chosen process handle, unique among the live processes of a session
/// (a protocol key, not an OS pid).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ProcessId(pub String);

impl std::fmt::Display for ProcessId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for ProcessId {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl From<String> for ProcessId {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// Why a [`WirePath`] does not name a local absolute path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path (after URI decoding) is relative.
    #[error("path `{0}` is not absolute")]
    NotAbsolute(String),
    /// A URI with a scheme other than `file`, a remote host or a bad percent escape.
    #[error("unsupported path URI `{0}`: expected an absolute path or a file:// URI")]
    BadUri(String),
}

/// A path on the wire, in either Codex dialect: a bare absolute path (`/home/a/x`) or a
/// `file://` URI (`file:///home/a/x`, host empty or `localhost`, percent-escapes decoded).
/// It serialises back in the form it was given (or built with).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WirePath(pub String);

impl WirePath {
    /// A bare-path form of `path` (lossy for non-UTF-8 names).
    pub fn from_path(path: &Path) -> Self {
        Self(path.to_string_lossy().into_owned())
    }

    /// A `file://` URI form of `path`, percent-escaping bytes outside the unreserved set.
    pub fn uri_from_path(path: &Path) -> Self {
        use std::os::unix::ffi::OsStrExt as _;
        let mut out = String::from("file://");
        for &b in path.as_os_str().as_bytes() {
            if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        Self(out)
    }

    /// Decodes to an absolute local path.
    ///
    /// Errors: [`PathError::NotAbsolute`] for a relative path, [`PathError::BadUri`] for a
    /// non-`file` scheme, a remote host or an invalid percent escape.
    pub fn to_path(&self) -> Result<PathBuf, PathError> {
        use std::os::unix::ffi::OsStringExt as _;
        let s = self.0.as_str();
        let path = if let Some(rest) = strip_prefix_ignore_case(s, "file://") {
            let rest = if rest.starts_with('/') {
                rest
            } else if let Some(r) = strip_prefix_ignore_case(rest, "localhost") {
                r
            } else {
                return Err(PathError::BadUri(s.to_owned()));
            };
            let bytes = percent_decode(rest).ok_or_else(|| PathError::BadUri(s.to_owned()))?;
            PathBuf::from(std::ffi::OsString::from_vec(bytes))
        } else if s.contains("://") || s.starts_with("file:") {
            return Err(PathError::BadUri(s.to_owned()));
        } else {
            PathBuf::from(s)
        };
        if path.is_absolute() {
            Ok(path)
        } else {
            Err(PathError::NotAbsolute(s.to_owned()))
        }
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// `initialize` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitializeParams {
    /// Free-form client name, for logs.
    pub client_name: String,
    /// A session to reattach to (from an earlier `initialize` result).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_session_id: Option<String>,
}

/// `initialize` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitializeResponse {
    /// The session this connection is attached to (new, or the resumed one).
    pub session_id: String,
    /// Facts about the server's host, as current Codex servers report them (their other
    /// fields, e.g. `capabilities`, are ignored on input and not sent by Baton).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment_info: Option<EnvironmentInfo>,
}

/// The host a server runs processes on (`environmentInfo` of the `initialize` result).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentInfo {
    /// The user's shell.
    pub shell: ShellInfo,
    /// The server's working directory (`file://` URI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// The user's home directory (`file://` URI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_home_dir: Option<String>,
    /// The temporary directory (`file://` URI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temp_dir: Option<String>,
    /// `linux`, `macos`, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_os: Option<String>,
}

/// A shell: its short name (`bash`, `zsh`, `sh`) and executable path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShellInfo {
    /// Short name.
    pub name: String,
    /// Executable path.
    pub path: String,
}

/// Which variables of the server's environment a process inherits (Codex's
/// `shell_environment_policy.inherit`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EnvInherit {
    /// Every variable of the server.
    All,
    /// A core set (HOME, PATH, SHELL, USER, LOGNAME, TMPDIR, TEMP, TMP, LANG, TERM, …).
    #[default]
    Core,
    /// None.
    None,
}

/// `envPolicy` of `process/start`: how the child environment is built from the server's.
/// Order: inherit → (unless `ignoreDefaultExcludes`) drop names matching `*KEY*`, `*SECRET*`,
/// `*TOKEN*` → drop `exclude` patterns → apply `set` → keep only `includeOnly` patterns (when
/// non-empty) → finally the request's `env` overrides. Patterns are case-insensitive globs with `*`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EnvPolicy {
    /// The inherited base.
    pub inherit: EnvInherit,
    /// Skip the default secret-name excludes.
    pub ignore_default_excludes: bool,
    /// Name patterns to drop.
    pub exclude: Vec<String>,
    /// Variables to set.
    pub set: HashMap<String, String>,
    /// When non-empty, only names matching one of these patterns are kept.
    pub include_only: Vec<String>,
}

/// `process/start` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartParams {
    /// Client-chosen handle (see [`ProcessId`]).
    pub process_id: ProcessId,
    /// Program and arguments; must be non-empty. The program is looked up in `PATH` of the
    /// child environment when it has no slash.
    pub argv: Vec<String>,
    /// Working directory (absolute path or `file://` URI); must lie under an allowed root.
    pub cwd: WirePath,
    /// Variables set in the child environment (on top of `envPolicy`, or alone when absent).
    #[serde(default)]
    pub env: HashMap<String, String>,
    /// How the base environment is built; absent: the child gets only `env`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_policy: Option<EnvPolicy>,
    /// Run under a pseudo-terminal (output then arrives on stream `pty`).
    #[serde(default)]
    pub tty: bool,
    /// Keep stdin open as a pipe for `process/write` (without a tty); otherwise stdin is
    /// `/dev/null`.
    #[serde(default)]
    pub pipe_stdin: bool,
    /// The `argv[0]` the program sees, when different from `argv[0]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arg0: Option<String>,
}

/// `process/start` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartResponse {
    /// The handle from the request.
    pub process_id: ProcessId,
}

/// `process/read` params.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadParams {
    /// The process.
    pub process_id: ProcessId,
    /// Return chunks with `seq > afterSeq` (default 0: from the start).
    #[serde(default)]
    pub after_seq: Option<u64>,
    /// Byte budget of the returned chunks; at least one whole chunk is returned even when it is
    /// larger (default: server limit).
    #[serde(default)]
    pub max_bytes: Option<usize>,
    /// Long-poll: wait up to this many milliseconds for something new when nothing is
    /// available (default 0: answer at once).
    #[serde(default)]
    pub wait_ms: Option<u64>,
}

/// Which stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OutputStream {
    /// The child's stdout pipe.
    Stdout,
    /// The child's stderr pipe.
    Stderr,
    /// The pseudo-terminal (stdout and stderr merged).
    Pty,
}

/// One retained output chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutputChunk {
    /// The process's event sequence number (from 1, shared with exit and close).
    pub seq: u64,
    /// Where it came from.
    pub stream: OutputStream,
    /// The bytes.
    pub chunk: ByteChunk,
}

/// `process/read` result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadResponse {
    /// Chunks with `seq > afterSeq`, in order.
    pub chunks: Vec<OutputChunk>,
    /// The `afterSeq` to pass next time (one past the last event seen, as in Codex).
    pub next_seq: u64,
    /// The process has exited.
    pub exited: bool,
    /// Its exit code (128 + signal number when killed by a signal), once exited.
    pub exit_code: Option<i32>,
    /// Exited and every output stream reached EOF.
    pub closed: bool,
    /// Why the process could not be followed (client-side transport failure, or spawn failure).
    pub failure: Option<String>,
    /// Baton extension: output chunks with `afterSeq < seq < evictedBefore` were evicted
    /// (retention limit) and are missing from `chunks`; absent when nothing requested was
    /// evicted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evicted_before: Option<u64>,
}

/// `process/write` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WriteParams {
    /// The process.
    pub process_id: ProcessId,
    /// Bytes for its stdin (or pty).
    pub chunk: ByteChunk,
    /// Idempotency key: a retried write with an id already accepted is acknowledged and not
    /// written twice. Optional in Baton; always sent by Baton's client (Codex requires it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_id: Option<String>,
    /// Baton extension: close stdin after writing `chunk` (the child then reads EOF; on a pty
    /// the terminal EOF character is sent). Not understood by Codex, so only sent when true.
    #[serde(default, skip_serializing_if = "is_false")]
    pub close_stdin: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Outcome of `process/write`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum WriteStatus {
    /// Written (or already written under the same `writeId`).
    Accepted,
    /// No such process in this session.
    UnknownProcess,
    /// Stdin is closed or was never a pipe.
    StdinClosed,
    /// The process is still starting.
    Starting,
}

/// `process/write` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WriteResponse {
    /// What happened.
    pub status: WriteStatus,
}

/// `process/terminate` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TerminateParams {
    /// The process.
    pub process_id: ProcessId,
}

/// `process/terminate` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TerminateResponse {
    /// Whether the process was still running when the request arrived.
    pub running: bool,
}

/// A signal for `process/signal`, delivered to the whole process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProcessSignal {
    /// SIGINT (as in Codex).
    Interrupt,
    /// SIGTERM.
    Terminate,
    /// SIGKILL.
    Kill,
    /// SIGHUP.
    Hangup,
}

/// `process/signal` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignalParams {
    /// The process.
    pub process_id: ProcessId,
    /// The signal.
    pub signal: ProcessSignal,
}

/// `process/resize` params (tty processes only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResizeParams {
    /// The process.
    pub process_id: ProcessId,
    /// Terminal rows.
    pub rows: u16,
    /// Terminal columns.
    pub cols: u16,
}

/// An empty result object `{}` (signal, resize and the mutating fs methods).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// `process/output` notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutputNotification {
    /// The process.
    pub process_id: ProcessId,
    /// Event sequence number.
    pub seq: u64,
    /// Source stream.
    pub stream: OutputStream,
    /// The bytes.
    pub chunk: ByteChunk,
}

/// `process/exited` notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitedNotification {
    /// The process.
    pub process_id: ProcessId,
    /// Event sequence number.
    pub seq: u64,
    /// Exit code (128 + signal number when killed by a signal).
    pub exit_code: i32,
}

/// `process/closed` notification: exited and all streams at EOF; the last event of a process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClosedNotification {
    /// The process.
    pub process_id: ProcessId,
    /// Event sequence number.
    pub seq: u64,
}

/// `fs/readFile` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FsReadFileParams {
    /// The file.
    pub path: WirePath,
}

/// `fs/readFile` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FsReadFileResponse {
    /// The whole content.
    pub data_base64: ByteChunk,
}

/// `fs/writeFile` params: creates or truncates the file (parent must exist).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FsWriteFileParams {
    /// The file.
    pub path: WirePath,
    /// The new content.
    pub data_base64: ByteChunk,
}

/// `fs/createDirectory` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FsCreateDirectoryParams {
    /// The directory.
    pub path: WirePath,
    /// Create missing parents and succeed when it exists (default true, as in Codex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recursive: Option<bool>,
}

/// `fs/getMetadata` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FsGetMetadataParams {
    /// The path (a symlink is followed; `isSymlink` tells whether the path itself is one).
    pub path: WirePath,
}

/// `fs/getMetadata` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FsGetMetadataResponse {
    /// A directory.
    pub is_directory: bool,
    /// A regular file.
    pub is_file: bool,
    /// The path itself is a symbolic link.
    pub is_symlink: bool,
    /// Size in bytes.
    pub size: u64,
    /// Creation time, ms since the Unix epoch (0 when the filesystem does not record it).
    pub created_at_ms: i64,
    /// Modification time, ms since the Unix epoch.
    pub modified_at_ms: i64,
}

/// `fs/readDirectory` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FsReadDirectoryParams {
    /// The directory.
    pub path: WirePath,
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FsReadDirectoryEntry {
    /// The entry's name (no directory part).
    pub file_name: String,
    /// A directory (symlinks followed).
    pub is_directory: bool,
    /// A regular file (symlinks followed).
    pub is_file: bool,
}

/// `fs/readDirectory` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FsReadDirectoryResponse {
    /// Entries, sorted by name.
    pub entries: Vec<FsReadDirectoryEntry>,
}

/// `fs/remove` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FsRemoveParams {
    /// The path.
    pub path: WirePath,
    /// Remove a directory with its contents (default true, as in Codex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recursive: Option<bool>,
    /// Succeed when the path does not exist (default true, as in Codex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force: Option<bool>,
}

/// `fs/copy` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FsCopyParams {
    /// What to copy.
    pub source_path: WirePath,
    /// Where to.
    pub destination_path: WirePath,
    /// Required to copy a directory.
    #[serde(default)]
    pub recursive: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn start_params_accept_both_path_dialects_and_ignore_unknown_fields() {
        let p: StartParams = serde_json::from_value(json!({
            "processId": "p1", "argv": ["sh"], "cwd": "file:///tmp/a%20b", "env": {},
            "tty": false, "sandbox": {"whatever": 1}, "arg0": null
        }))
        .expect("parses");
        assert_eq!(p.cwd.to_path().expect("abs"), PathBuf::from("/tmp/a b"));
        let bare = WirePath("/tmp/x".into());
        assert_eq!(bare.to_path().expect("abs"), PathBuf::from("/tmp/x"));
        assert!(matches!(
            WirePath("rel/x".into()).to_path(),
            Err(PathError::NotAbsolute(_))
        ));
        assert!(matches!(
            WirePath("http://h/x".into()).to_path(),
            Err(PathError::BadUri(_))
        ));
        assert!(matches!(
            WirePath("file://host/x".into()).to_path(),
            Err(PathError::BadUri(_))
        ));
        assert_eq!(
            WirePath("file://localhost/x".into()).to_path().expect("ok"),
            PathBuf::from("/x")
        );
        let uri = WirePath::uri_from_path(Path::new("/tmp/a b%"));
        assert_eq!(uri.0, "file:///tmp/a%20b%25");
        assert_eq!(uri.to_path().expect("ok"), PathBuf::from("/tmp/a b%"));
    }

    #[test]
    fn bytes_are_base64_and_fields_camel_case() {
        let n = OutputNotification {
            process_id: "p".into(),
            seq: 3,
            stream: OutputStream::Stderr,
            chunk: b"hi\xff".to_vec().into(),
        };
        assert_eq!(
            serde_json::to_value(&n).expect("ser"),
            json!({"processId":"p","seq":3,"stream":"stderr","chunk":"aGn/"})
        );
        let r = ReadResponse {
            next_seq: 1,
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&r).expect("ser"),
            json!({"chunks":[],"nextSeq":1,"exited":false,"exitCode":null,"closed":false,"failure":null})
        );
        assert!(serde_json::from_value::<ByteChunk>(json!("!!")).is_err());
        let w: WriteParams =
            serde_json::from_value(json!({"processId":"p","chunk":""})).expect("no writeId");
        assert_eq!(w.write_id, None);
        let s: SignalParams =
            serde_json::from_value(json!({"processId":"p","signal":"interrupt"})).expect("sig");
        assert_eq!(s.signal, ProcessSignal::Interrupt);
        let e: EnvPolicy = serde_json::from_value(json!({"inherit":"all"})).expect("policy");
        assert_eq!(e.inherit, EnvInherit::All);
    }
}
