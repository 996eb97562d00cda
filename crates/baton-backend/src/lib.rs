//! The Baton backend (`baton serve`, DESIGN.md §3): an HTTP/WebSocket control plane over
//! runtimes and workers, with a durable event log and resumable observation.
//!
//! DESIGN.md places the backend in `baton-server`; while that crate is owned by the exec-server
//! work, the backend lives in this separate crate (`baton-backend`). Keep it here: the exec
//! server and the backend share no code beyond `baton-exec`.
//!
//! # Pieces
//! - [`Backend`] (core): runtimes ([`Runtime`]; one embedded [`LocalRuntime`] called `local` by
//!   default), workers (processes in a runtime), and the [`EventLog`].
//! - [`EventLog`]: SQLite in WAL mode at `DATA/events.sqlite3`. Every worker event is appended
//!   with a global sequence; its cursor and `event_id` are `bo_` + 16 lowercase hex digits of
//!   the sequence ([`Cursor`]). Workers and sequences survive a restart. [`Retention`] by age and
//!   by total payload size; a cursor whose events were deleted gets
//!   `backend.cursor_unknown_or_expired`.
//! - [`router`] / [`serve`] / [`bind`]: the axum front with bearer-token auth ([`ServeOptions`];
//!   a non-loopback bind requires a token).
//! - TLS: with [`ServeOptions::tls`] ([`TlsConfig::from_pem_files`], PEM certificate chain and
//!   key; rustls with the `ring` provider) the same routes are served as HTTPS and the
//!   observation WebSocket as WSS; a plain-HTTP request to the TLS port gets 400
//!   `backend.tls_required`. `baton serve --tls-cert FILE --tls-key FILE` turns it on. The
//!   bearer token is only as private as the transport: serve TLS (or stay on loopback) when
//!   one is set.
//!
//! # Routes
//! Ids are percent-encoded path segments (1..=256 bytes, no control characters; else 400
//! `backend.bad_id`). Errors are `{"error": code, "message", "diagnostics": [{code, severity,
//! message}]}` with 400 (bad id/body), 401 (no token), 403 (wrong token), 404 (unknown runtime,
//! worker or route), 500 (event log), 501 (unsupported capability), 502 (runtime unavailable),
//! 504 (runtime timed out).
//!
//! | route | body | response |
//! |---|---|---|
//! | `GET /api/runtimes` | | 200 [`RuntimeList`] `{runtimes:[{runtime_id, kind, state, capabilities}]}` |
//! | `GET /api/workers` | | 200 [`WorkerList`] `{workers:[WorkerSummary]}` |
//! | `GET /api/runtimes/{rt}/workers` | | 200 [`WorkerList`] of that runtime |
//! | `POST /api/runtimes/{rt}/workers` | [`SpawnRequest`] `{argv, cwd?, env?, tty?, label?}` | 201 [`WorkerSummary`] |
//! | `GET /api/runtimes/{rt}/workers/{w}` | | 200 [`WorkerSummary`] `{runtime_id, worker_id, label, state, status, exit_code?, signal?, argv, cwd, tty, pid?, created_at_ms, last_event_id?}` |
//! | `POST …/workers/{w}/input` | [`InputRequest`] `{kind: user\|system, content}` | 200 [`OperationResult`] `{state: accepted\|unsupported\|rejected, event_id?, diagnostics[]}` |
//! | `POST …/workers/{w}/cancel` | [`LifecycleRequest`] `{reason?}` (body optional) | 200 [`OperationResult`]; SIGINT to the process group |
//! | `POST …/workers/{w}/stop` | [`LifecycleRequest`] | 200 [`OperationResult`]; kills the process tree |
//! | `GET …/workers/{w}/transcript?start&limit` | | 200 [`Transcript`] `{items:[{sequence, role, content, event_id}], total_items, next_start?, cursor?, diagnostics[]}`; `limit` default 256, capped at 1000 |
//! | `GET …/workers/{w}/events/ws?cursor=bo_…` | | WebSocket, see below |
//!
//! # Observation WebSocket
//! Text frames [`WsFrame`]: `{"kind":"event","envelope":{cursor, event_id, runtime_id,
//! worker_id, recorded_at_ms, payload}}` and `{"kind":"diagnostic","diagnostic":{code,
//! message}}`. Without `cursor`: one `snapshot` event (payload `{"type":"snapshot","worker":
//! WorkerSummary}`; its cursor is the log head it reflects), then live events. With `cursor`:
//! every later event of the worker, in order, without gaps or duplicates (replayed from SQLite,
//! then live; a subscriber that falls behind the live channel re-reads from SQLite). Diagnostic
//! codes (each followed by a close frame 1008): `backend.worker_not_found`,
//! `backend.runtime_unavailable`, `backend.cursor_malformed`,
//! `backend.cursor_unknown_or_expired`, `backend.observation_only` (the client sent a text or
//! binary frame). Pings are answered with pongs.
//!
//! Event payloads (`payload.type`): `spawned {argv, cwd, tty, label, env_names, pid}` (env values
//! are never recorded), `output {stream: stdout|stderr|pty, text, data_b64?, seq?}` (`data_b64` holds
//! the exact bytes when they are not UTF-8; `seq` is the runtime's sequence number of the chunk,
//! on runner runtimes), `input {kind, content}`, `control {action:
//! cancel|stop, reason}`, `exit {exit_code, signal, status}`, `status {state, status}` (e.g.
//! `lost` after a restart), `diagnostic {code, severity, message}`, and the synthesized
//! `snapshot`.
//!
//! # Runtimes
//! A runtime is a runner session (DESIGN.md §3/§4). [`RunnerRuntime`] runs workers as commands
//! of a `baton-runner` session at any destination: `local:DIR`, a remote exec server
//! (`ws://`, Baton's or Codex's) or ssh (`ssh://HOST/PATH`, `baton exec-server --listen stdio`
//! over ssh). Runtimes are registered with `--runtime NAME=DESTINATION` or a runtimes file
//! ([`RuntimesFile`], [`build_runtime`]); a token is a secret reference (`token_secret`,
//! resolved from `BATON_SECRET_<ID>`), never a value in a file. The session opens in the
//! background: a runtime that is down shows `state: "unavailable"` (spawn → 502
//! `backend.runtime_unavailable`, retried on each spawn), one that does not answer within its
//! timeout gives 504 `backend.runtime_timeout`; error messages have the destination's address
//! replaced by `<runtime>`. A remote session that reconnects gives its running workers
//! `backend.upstream_disconnect` / `backend.upstream_reconnected` diagnostic events and loses
//! no output (exec-server session resume). The embedded default runtime, [`LocalRuntime`],
//! runs workers on this host with `baton-exec` directly (host pid, killing signal, the
//! backend's environment).
//!
//! # Restarts
//! Workers of the embedded runtime die with the backend (no orphans) and show as `lost` after a
//! restart. Workers on exec-server runtimes keep running on their server: the backend stores
//! each runtime's session state and each worker's command id, does not stop them on shutdown,
//! and after a restart [`Backend::recover`] resumes the session (within the server's session
//! TTL, 60 s by default) and follows them again from their last recorded event
//! (`backend.worker_reattached`; `backend.output_gap` if the server dropped events meanwhile).

mod api;
mod backend;
mod config;
mod cursor;
mod http;
mod log;
mod runner;
mod runtime;

pub use api::{
    Diagnostic, ErrorBody, EventEnvelope, FrameDiagnostic, InputKind, InputRequest,
    LifecycleRequest, OperationResult, OperationState, RuntimeCapabilities, RuntimeList,
    RuntimeSummary, Severity, SpawnRequest, Transcript, TranscriptItem, WorkerList, WorkerState,
    WorkerSummary, WsFrame,
};
pub use backend::{
    ApiError, Backend, BackendConfig, BackendError, DEFAULT_TRANSCRIPT_LIMIT, Lifecycle,
    MAX_ID_LEN, MAX_TRANSCRIPT_LIMIT, validate_id,
};
pub use config::{ConfigError, RuntimeEntry, RuntimesFile, build_runtime, parse_runtime_flag};
pub use cursor::{Cursor, CursorError};
pub use http::{
    ServeError, ServeOptions, TLS_HANDSHAKE_TIMEOUT, TlsConfig, TlsConfigError, bind, router, serve,
};
pub use log::{CursorCheck, EventLog, LogError, LoggedEvent, Retention, WorkerRow};
pub use runner::{DEFAULT_RUNNER_TIMEOUT, RunnerRuntime};
pub use runtime::{
    LocalRuntime, Runtime, RuntimeError, WorkerControl, WorkerEvents, WorkerOutput, WorkerSpec,
};
