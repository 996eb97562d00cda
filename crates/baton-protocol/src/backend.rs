//! The backend API (`baton serve`, DESIGN.md §3): the JSON bodies of its HTTP routes, the frames
//! of its observation WebSocket, and the `bo_` cursor format.
//!
//! These are the types of DESIGN.md §3, shared by the server (`baton-backend`) and its clients
//! (`baton-client::backend`, `baton attach`). The shapes follow the yoi Backend Runtime API
//! client (seed 001), which decodes `state`, `diagnostics[{code, message}]`, transcript
//! `items[{role, content}]` and WebSocket frames tagged by `kind`; Baton adds fields (a
//! diagnostic `severity`, the transcript `cursor`, `recorded_at_ms`) but renames none.
//! Field names are snake_case; enums are snake_case strings.
//!
//! # Routes
//!
//! Ids are opaque and percent-encoded in paths.
//!
//! | route | body | response |
//! |---|---|---|
//! | `GET /api/runtimes` | | [`RuntimeList`] `{runtimes:[{runtime_id, kind, state, capabilities}]}` |
//! | `GET /api/workers` | | [`WorkerList`] `{workers:[WorkerSummary]}` |
//! | `POST /api/runtimes/{rt}/workers` | [`SpawnRequest`] `{argv, cwd?, env?, tty?, label?}` | [`WorkerSummary`] |
//! | `GET /api/runtimes/{rt}/workers/{w}` | | [`WorkerSummary`] `{runtime_id, worker_id, label, state, status, exit_code?, signal?, argv, cwd, tty, pid?, created_at_ms, last_event_id?}` |
//! | `POST …/workers/{w}/input` | [`InputRequest`] `{kind: user\|system, content}` | [`OperationResult`] `{state: accepted\|unsupported\|rejected, event_id?, diagnostics[]}` |
//! | `POST …/workers/{w}/cancel`, `…/stop` | [`LifecycleRequest`] `{reason?}` | [`OperationResult`] |
//! | `GET …/workers/{w}/transcript?start&limit` | | [`Transcript`] `{items:[{sequence, role, content, event_id}], total_items, next_start?, cursor?, diagnostics[]}` |
//! | `GET …/workers/{w}/events/ws?cursor=bo_…` | | WebSocket of [`WsFrame`]s |
//!
//! Every non-2xx answer has the body [`ErrorBody`] `{"error": code, "message": text,
//! "diagnostics": [{code, severity, message}]}`; the codes are in [`codes`].
//!
//! # Observation WebSocket
//!
//! Text frames, one JSON object each ([`WsFrame`]):
//! `{"kind":"event","envelope":{cursor, event_id, runtime_id, worker_id, recorded_at_ms,
//! payload}}` ([`EventEnvelope`]) and `{"kind":"diagnostic","diagnostic":{code, message}}`
//! ([`FrameDiagnostic`]). Without `?cursor=` the server sends one snapshot event (payload
//! `{"type":"snapshot","worker": WorkerSummary}`), then live events; with a cursor, every event
//! of the worker after it. Event payloads (`payload.type`): `spawned`, `output`, `input`,
//! `control`, `exit`, `status`, `diagnostic` and `snapshot` (see `baton-backend` for their fields).
//!
//! # Cursors
//!
//! [`Cursor`]: `bo_` followed by exactly 16 lowercase hexadecimal digits of the event's global
//! sequence in the backend's event log (e.g. `bo_00000000000000ff` is event 255). This is the
//! format the yoi client decodes (a prefix and a fixed-width hexadecimal `u64`); Baton writes
//! and accepts lowercase only, so each sequence has exactly one spelling and cursors compare as
//! strings in the same order as their sequences. An `event_id` is the cursor of its event.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The `code`s of backend diagnostics (in [`Diagnostic`], [`ErrorBody`], [`FrameDiagnostic`]
/// and `diagnostic` events). Stable strings; clients branch on them.
pub mod codes {
    /// 400: an id in the path is empty, longer than 256 bytes or holds control characters.
    pub const BAD_ID: &str = "backend.bad_id";
    /// 400: the request body or query is not what the route takes.
    pub const BAD_REQUEST: &str = "backend.bad_request";
    /// 401: the backend requires a bearer token and none was sent.
    pub const UNAUTHORIZED: &str = "backend.unauthorized";
    /// 403: the bearer token is wrong.
    pub const FORBIDDEN: &str = "backend.forbidden";
    /// 404: no such route.
    pub const NOT_FOUND: &str = "backend.not_found";
    /// 404: no runtime with this id.
    pub const RUNTIME_NOT_FOUND: &str = "backend.runtime_not_found";
    /// 404 / WebSocket: no worker with this id in this runtime.
    pub const WORKER_NOT_FOUND: &str = "backend.worker_not_found";
    /// 501 / `unsupported` operation: the runtime cannot do this (e.g. interrupt, tty).
    pub const UNSUPPORTED: &str = "backend.unsupported";
    /// 502 / WebSocket: the runtime cannot be reached.
    pub const RUNTIME_UNAVAILABLE: &str = "backend.runtime_unavailable";
    /// 504: the runtime did not answer in time (opening its session or starting a worker).
    pub const RUNTIME_TIMEOUT: &str = "backend.runtime_timeout";
    /// `rejected` cancel: the interrupt could not be delivered to the worker.
    pub const SIGNAL_FAILED: &str = "backend.signal_failed";
    /// 400: the worker could not be started (e.g. the program was not found).
    pub const SPAWN_FAILED: &str = "backend.spawn_failed";
    /// `rejected` operation: the worker is no longer running.
    pub const WORKER_NOT_RUNNING: &str = "backend.worker_not_running";
    /// The input was recorded but could not be written to the worker.
    pub const INPUT_NOT_DELIVERED: &str = "backend.input_not_delivered";
    /// The worker was running when the backend stopped and cannot be followed again (seen
    /// after a restart).
    pub const WORKER_LOST: &str = "backend.worker_lost";
    /// After a backend restart, the worker (still running on its remote runtime) is followed
    /// again; events recorded before the restart are not repeated.
    pub const WORKER_REATTACHED: &str = "backend.worker_reattached";
    /// The runtime dropped some of the worker's events while the backend was away (its
    /// retention buffer overflowed); the message gives the missing range.
    pub const OUTPUT_GAP: &str = "backend.output_gap";
    /// Retention removed the beginning of the transcript.
    pub const TRANSCRIPT_TRUNCATED: &str = "backend.transcript_truncated";
    /// 500: the event log failed.
    pub const EVENT_LOG_FAILED: &str = "backend.event_log_failed";
    /// 500: any other internal failure.
    pub const INTERNAL: &str = "backend.internal";
    /// WebSocket: `?cursor=` is not `bo_` + 16 lowercase hex digits.
    pub const CURSOR_MALFORMED: &str = "backend.cursor_malformed";
    /// WebSocket: the cursor is ahead of the log or retention removed its events; resync from a
    /// fresh snapshot (attach without a cursor).
    pub const CURSOR_UNKNOWN_OR_EXPIRED: &str = "backend.cursor_unknown_or_expired";
    /// The connection to a remote runtime dropped; worker events may pause until it is back.
    pub const UPSTREAM_DISCONNECT: &str = "backend.upstream_disconnect";
    /// The connection to a remote runtime is back, nothing was lost.
    pub const UPSTREAM_RECONNECTED: &str = "backend.upstream_reconnected";
    /// WebSocket: the client sent a data frame; the observation socket is read-only.
    pub const OBSERVATION_ONLY: &str = "backend.observation_only";
}

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
/// strings such as `backend.worker_not_found` (the list is in [`codes`]).
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
    /// The event, an object tagged by `type` (see the module docs for the `type`s).
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

impl OperationState {
    /// The wire spelling: `accepted`, `unsupported` or `rejected`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Unsupported => "unsupported",
            Self::Rejected => "rejected",
        }
    }
}

impl fmt::Display for OperationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Compares with the wire spelling, so `result.state == "accepted"` reads as on the wire.
impl PartialEq<str> for OperationState {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

/// Compares with the wire spelling, so `result.state == "accepted"` reads as on the wire.
impl PartialEq<&str> for OperationState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// A position in the backend's global event log: the sequence of one event (`1..`), or `0`
/// ("before everything"). Written `bo_` + 16 lowercase hex digits (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cursor(pub u64);

/// Why [`Cursor::parse`] refused a string; holds (the first 64 characters of) that string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed cursor {0:?}: expected bo_ followed by 16 lowercase hex digits")]
pub struct CursorError(pub String);

impl Cursor {
    /// Parses `bo_` + 16 lowercase hex digits.
    ///
    /// # Errors
    /// [`CursorError`] for any other spelling (wrong prefix, length, upper case, non-hex, sign).
    pub fn parse(text: &str) -> Result<Self, CursorError> {
        let bad = || CursorError(text.chars().take(64).collect());
        let hex = text.strip_prefix("bo_").ok_or_else(bad)?;
        if hex.len() != 16 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad());
        }
        u64::from_str_radix(hex, 16).map(Cursor).map_err(|_| bad())
    }

    /// The sequence number.
    pub fn sequence(self) -> u64 {
        self.0
    }
}

impl std::str::FromStr for Cursor {
    type Err = CursorError;

    /// As [`Cursor::parse`].
    fn from_str(text: &str) -> Result<Self, CursorError> {
        Self::parse(text)
    }
}

/// Writes `bo_` + 16 lowercase hex digits.
impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bo_{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_other_spellings() {
        assert_eq!(Cursor(1).to_string(), "bo_0000000000000001");
        assert_eq!(Cursor(0xabc).to_string(), "bo_0000000000000abc");
        assert_eq!(Cursor::parse("bo_00000000000000ff"), Ok(Cursor(255)));
        assert_eq!("bo_00000000000000ff".parse(), Ok(Cursor(255)));
        assert_eq!(
            Cursor::parse(&Cursor(u64::MAX).to_string()),
            Ok(Cursor(u64::MAX))
        );
        for bad in [
            "",
            "bo_",
            "bo_1",
            "bo_ff",
            "bo_00000000000000FF",
            "xx_00000000000000ff",
            "bo_00000000000000fg",
            "bo_000000000000000ff",
            "bo_+000000000000000",
        ] {
            assert_eq!(
                Cursor::parse(bad),
                Err(CursorError(bad.to_owned())),
                "{bad}"
            );
        }
        let long = format!("bo_{}", "x".repeat(100));
        assert_eq!(Cursor::parse(&long).map_err(|e| e.0.len()), Err(64));
    }

    #[test]
    fn cursors_order_like_their_strings() {
        let seqs = [0, 1, 9, 10, 255, 256, u64::MAX - 1, u64::MAX];
        for pair in seqs.windows(2) {
            let (a, b) = (Cursor(pair[0]), Cursor(pair[1]));
            assert!(a < b && a.to_string() < b.to_string(), "{a} {b}");
        }
    }

    #[test]
    fn operation_results_keep_their_wire_shape() {
        let r = OperationResult {
            state: OperationState::Accepted,
            event_id: Some(Cursor(7).to_string()),
            diagnostics: vec![Diagnostic::warning(codes::WORKER_LOST, "gone")],
        };
        let v = serde_json::to_value(&r).expect("serialize");
        assert_eq!(
            v,
            json!({"state": "accepted", "event_id": "bo_0000000000000007",
                   "diagnostics": [{"code": "backend.worker_lost", "severity": "warning", "message": "gone"}]})
        );
        let back: OperationResult = serde_json::from_value(v).expect("deserialize");
        assert_eq!(back, r);
        assert!(r.state == "accepted" && r.state != "rejected");
        assert_eq!(OperationState::Unsupported.to_string(), "unsupported");
        // event_id and diagnostics are optional on input.
        let bare: OperationResult =
            serde_json::from_value(json!({"state": "rejected"})).expect("bare");
        assert_eq!(
            (bare.state, bare.event_id, bare.diagnostics),
            (OperationState::Rejected, None, vec![])
        );
        assert!(serde_json::from_value::<OperationResult>(json!({"state": "maybe"})).is_err());
    }

    #[test]
    fn operation_state_spelling_matches_serde() {
        for s in [
            OperationState::Accepted,
            OperationState::Unsupported,
            OperationState::Rejected,
        ] {
            assert_eq!(serde_json::to_value(s).expect("state"), json!(s.as_str()));
        }
    }

    #[test]
    fn frames_are_tagged_by_kind() {
        let event = WsFrame::Event {
            envelope: EventEnvelope {
                cursor: Cursor(3).to_string(),
                event_id: Cursor(3).to_string(),
                runtime_id: "local".into(),
                worker_id: "w1".into(),
                recorded_at_ms: 5,
                payload: json!({"type": "output", "stream": "stdout", "text": "hi\n"}),
            },
        };
        let v = serde_json::to_value(&event).expect("event");
        assert_eq!(v["kind"], "event");
        assert_eq!(v["envelope"]["cursor"], "bo_0000000000000003");
        assert_eq!(serde_json::from_value::<WsFrame>(v).expect("back"), event);
        let diag: WsFrame = serde_json::from_str(
            r#"{"kind":"diagnostic","diagnostic":{"code":"backend.cursor_malformed","message":"m"}}"#,
        )
        .expect("diagnostic");
        assert_eq!(
            diag,
            WsFrame::Diagnostic {
                diagnostic: FrameDiagnostic {
                    code: codes::CURSOR_MALFORMED.into(),
                    message: "m".into()
                }
            }
        );
    }

    #[test]
    fn spawn_requests_reject_unknown_fields_and_omit_defaults() {
        let r: SpawnRequest = serde_json::from_value(json!({"argv": ["sh"]})).expect("minimal");
        assert_eq!(
            serde_json::to_value(&r).expect("ser"),
            json!({"argv": ["sh"], "tty": false})
        );
        assert!(
            serde_json::from_value::<SpawnRequest>(json!({"argv": ["sh"], "ttty": true})).is_err()
        );
    }
}
