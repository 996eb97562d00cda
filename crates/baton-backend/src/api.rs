//! The JSON shapes of the backend API (DESIGN.md §3; modelled on the yoi Backend Runtime API
//! client of seed 001, which decodes `state`, `diagnostics[{code, message}]`, transcript
//! `items[{role, content}]` and WebSocket frames tagged by `kind`).
//!
//! These types cross a process boundary; they live here until they move to `baton-protocol`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How serious a [`Diagnostic`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// For information.
    Info,
    /// Something did not go as asked, the request still did something.
    Warning,
    /// The request failed.
    Error,
}

/// A machine-readable problem report: `{code, severity, message}`. Codes are `backend.*`
/// strings such as `backend.worker_not_found` (see the crate docs for the list).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    /// Stable code, e.g. `backend.cursor_malformed`.
    pub code: String,
    /// Severity.
    pub severity: Severity,
    /// Human-readable explanation.
    pub message: String,
}

impl Diagnostic {
    /// A diagnostic with severity [`Severity::Error`].
    pub fn error(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            severity: Severity::Error,
            message: message.into(),
        }
    }

    /// A diagnostic with severity [`Severity::Warning`].
    pub fn warning(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            severity: Severity::Warning,
            message: message.into(),
        }
    }
}

/// Body of every non-2xx response: `{"error": code, "message": text, "diagnostics": [..]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The code of the first diagnostic.
    pub error: String,
    /// Its message.
    pub message: String,
    /// All diagnostics (at least one).
    pub diagnostics: Vec<Diagnostic>,
}

/// What a runtime can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeCapabilities {
    /// Workers can be spawned.
    pub spawn: bool,
    /// `input` of kind `user` reaches the worker's stdin.
    pub input: bool,
    /// `cancel` interrupts (SIGINT to the worker's process group).
    pub interrupt: bool,
    /// `stop` terminates the worker's whole process tree.
    pub terminate: bool,
    /// Workers may run on a pseudo-terminal (`tty: true`).
    pub tty: bool,
}

/// One entry of `GET /api/runtimes` → `{"runtimes": [RuntimeSummary]}`. Never carries the
/// runtime's address or credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeSummary {
    /// Opaque id used in paths.
    pub runtime_id: String,
    /// Provider kind, e.g. `local`.
    pub kind: String,
    /// `available` or `unavailable`.
    pub state: String,
    /// Capabilities.
    pub capabilities: RuntimeCapabilities,
}

/// Body of `POST /api/runtimes/{rt}/workers`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpawnRequest {
    /// Program and arguments (non-empty). A program without `/` is looked up in `PATH`.
    pub argv: Vec<String>,
    /// Working directory (absolute); default: the runtime's default directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Extra environment variables, on top of the runtime's environment. Only their names are
    /// recorded in the event log, never their values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Run on a pseudo-terminal (24×80).
    #[serde(default)]
    pub tty: bool,
    /// Display label; default: the argv joined by spaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// Lifecycle state of a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// The process is running.
    Running,
    /// The process ended (see `exit_code`/`signal`).
    Exited,
    /// The backend stopped while the worker ran (its process tree was killed with the backend);
    /// seen after a restart.
    Lost,
}

/// A worker as served by `GET /api/workers`, `GET …/workers/{w}` and spawn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerSummary {
    /// Runtime id.
    pub runtime_id: String,
    /// Worker id (opaque; `w<number>` for workers this backend spawned).
    pub worker_id: String,
    /// Display label.
    pub label: String,
    /// Lifecycle state.
    pub state: WorkerState,
    /// Human-readable status: `running`, `exit code 0`, `killed by signal 9 (SIGKILL)`, `lost`.
    pub status: String,
    /// Exit code when it exited normally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Signal number when it was killed by a signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// Whether it runs on a pty.
    pub tty: bool,
    /// Process id on the runtime's host while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Spawn time, Unix milliseconds.
    pub created_at_ms: u64,
    /// Cursor of the worker's latest event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event_id: Option<String>,
}

/// `{"workers": [WorkerSummary]}` of `GET /api/workers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerList {
    /// All workers, oldest first.
    pub workers: Vec<WorkerSummary>,
}

/// `{"runtimes": [RuntimeSummary]}` of `GET /api/runtimes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeList {
    /// All runtimes.
    pub runtimes: Vec<RuntimeSummary>,
}

/// Kind of a worker input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputKind {
    /// Written to the worker's stdin (a newline is appended unless `content` ends with one).
    User,
    /// A note recorded in the event log and transcript; the worker does not see it.
    System,
}

/// Body of `POST …/workers/{w}/input`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputRequest {
    /// `user` or `system`.
    pub kind: InputKind,
    /// The text.
    pub content: String,
}

/// Body of `POST …/workers/{w}/cancel` and `…/stop` (may be empty).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LifecycleRequest {
    /// Why; recorded in the event log.
    #[serde(default)]
    pub reason: Option<String>,
}

/// Outcome of an input or lifecycle request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationState {
    /// Done; `event_id` names the recorded event.
    Accepted,
    /// The runtime cannot do this.
    Unsupported,
    /// Not possible now (e.g. the worker is no longer running).
    Rejected,
}

/// Response of input, cancel and stop: `{state, event_id?, diagnostics[]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationResult {
    /// Outcome.
    pub state: OperationState,
    /// Cursor of the recorded event when accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// Why it was not accepted, or warnings.
    #[serde(default)]
    pub diagnostics: Vec<Diagnostic>,
}

/// One transcript item: an input or one line of output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TranscriptItem {
    /// Index of the item in the worker's transcript (0-based).
    pub sequence: u64,
    /// `user` / `system` (inputs), `assistant` (a stdout or pty line), `stderr` (a stderr line).
    pub role: String,
    /// The text (a line without its line terminator).
    pub content: String,
    /// Cursor of the event that completed the item.
    pub event_id: String,
}

/// Response of `GET …/transcript?start&limit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transcript {
    /// Items `start..start+limit`.
    pub items: Vec<TranscriptItem>,
    /// Number of items in the whole transcript.
    pub total_items: u64,
    /// `start` of the next page, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_start: Option<u64>,
    /// Baton addition: the log position this projection reflects (the worker's last event when
    /// it was computed). Observing with `?cursor=` this value continues exactly after the
    /// transcript, without gaps or duplicates. Absent when the worker has no events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Problems (e.g. retention removed the beginning of the transcript).
    #[serde(default)]
    pub diagnostics: Vec<Diagnostic>,
}

/// The envelope of one event on the observation WebSocket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope {
    /// `bo_` + 16 hex digits; resume with `?cursor=` this value.
    pub cursor: String,
    /// Same as `cursor`.
    pub event_id: String,
    /// Runtime id.
    pub runtime_id: String,
    /// Worker id.
    pub worker_id: String,
    /// When the event was recorded, Unix milliseconds.
    pub recorded_at_ms: u64,
    /// The event (see the crate docs for the `type`s).
    pub payload: serde_json::Value,
}

/// The diagnostic of a `{"kind":"diagnostic"}` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameDiagnostic {
    /// Code, e.g. `backend.cursor_unknown_or_expired`.
    pub code: String,
    /// Explanation.
    pub message: String,
}

/// A text frame of the observation WebSocket, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WsFrame {
    /// `{"kind":"event","envelope":{…}}`.
    Event {
        /// The event.
        envelope: EventEnvelope,
    },
    /// `{"kind":"diagnostic","diagnostic":{code, message}}`.
    Diagnostic {
        /// The problem.
        diagnostic: FrameDiagnostic,
    },
}
