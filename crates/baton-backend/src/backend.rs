//! The backend core: runtimes, workers and their event recording, independent of HTTP.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine as _;
use serde_json::json;

use crate::api::{
    Diagnostic, InputKind, InputRequest, LifecycleRequest, OperationResult, OperationState,
    RuntimeSummary, SpawnRequest, Transcript, TranscriptItem, WorkerState, WorkerSummary,
};
use crate::cursor::Cursor;
use crate::log::{EventLog, LogError, LoggedEvent, Retention, WorkerRow, now_ms};
use crate::runtime::{
    Runtime, RuntimeError, WorkerControl, WorkerEvents, WorkerOutput, WorkerSpec,
};
use baton_protocol::backend::codes;

/// Default number of transcript items per page.
pub const DEFAULT_TRANSCRIPT_LIMIT: usize = 256;
/// Largest accepted transcript `limit`; larger values are capped.
pub const MAX_TRANSCRIPT_LIMIT: usize = 1000;
/// Longest accepted runtime or worker id, in bytes.
pub const MAX_ID_LEN: usize = 256;

/// How to open a [`Backend`].
#[derive(Debug, Clone)]
pub struct BackendConfig {
    /// Directory of the event log (`events.sqlite3`); created if missing.
    pub data_dir: PathBuf,
    /// Event-log retention.
    pub retention: Retention,
    /// Working directory of workers spawned without `cwd` on the embedded local runtime.
    pub default_cwd: PathBuf,
    /// Id of the embedded local runtime (default `local`); `None` registers no local runtime.
    pub local_runtime_id: Option<String>,
}

impl BackendConfig {
    /// A config with the data directory `data_dir`, unbounded retention, the process's current
    /// directory as the default worker directory, and a local runtime called `local`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            retention: Retention::default(),
            default_cwd: std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
            local_runtime_id: Some("local".into()),
        }
    }
}

/// Errors of [`Backend::open`].
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The event log could not be opened.
    #[error("cannot open the event log")]
    Log(#[from] LogError),
}

/// A failed API operation: an HTTP status and the diagnostic to return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status: 400, 404, 500, 501, 502 or 504.
    pub status: u16,
    /// What went wrong.
    pub diagnostic: Diagnostic,
}

impl ApiError {
    /// An error with `status` and an error-severity diagnostic.
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            diagnostic: Diagnostic::error(code, message),
        }
    }

    fn log(e: LogError) -> Self {
        Self::new(
            500,
            codes::EVENT_LOG_FAILED,
            format!("{e}: {:?}", std::error::Error::source(&e)),
        )
    }
}

/// Checks an id taken from a path: non-empty, at most [`MAX_ID_LEN`] bytes, no control
/// characters.
///
/// # Errors
/// [`ApiError`] with status 400 and code `backend.bad_id`.
pub fn validate_id(what: &str, id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > MAX_ID_LEN || id.chars().any(char::is_control) {
        return Err(ApiError::new(
            400,
            codes::BAD_ID,
            format!("{what} id must be 1 to {MAX_ID_LEN} bytes without control characters"),
        ));
    }
    Ok(())
}

struct Worker {
    summary: Mutex<WorkerSummary>,
    control: Mutex<Option<Arc<dyn WorkerControl>>>,
    /// The transcript projection of earlier requests (see [`Projection`]).
    transcript: Mutex<Option<Projection>>,
}

struct Inner {
    log: Arc<EventLog>,
    runtimes: BTreeMap<String, Arc<dyn Runtime>>,
    workers: Mutex<BTreeMap<(String, String), Arc<Worker>>>,
    /// Workers that were running when the previous backend stopped, on runtimes that keep
    /// their workers, with their handles: [`Backend::recover`] follows them again.
    pending: Mutex<Vec<(Arc<Worker>, serde_json::Value)>>,
}

/// The backend: owns the runtimes, the workers and the durable event log. Clone freely (shared).
#[derive(Clone)]
pub struct Backend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("log", &self.inner.log)
            .field("runtimes", &self.inner.runtimes.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn output_payload(stream: &str, bytes: &[u8], seq: Option<u64>) -> serde_json::Value {
    let mut payload = match std::str::from_utf8(bytes) {
        Ok(text) => json!({"type": "output", "stream": stream, "text": text}),
        Err(_) => json!({
            "type": "output",
            "stream": stream,
            "text": String::from_utf8_lossy(bytes),
            "data_b64": base64::engine::general_purpose::STANDARD.encode(bytes),
        }),
    };
    if let Some(seq) = seq {
        payload["seq"] = json!(seq);
    }
    payload
}

impl Backend {
    /// Opens the event log under `config.data_dir`, registers the embedded local runtime and
    /// `extra` runtimes, and reloads the workers of earlier runs: a worker that was running when
    /// the previous backend stopped is marked [`WorkerState::Lost`] (its process tree died with
    /// that backend) and gets a `status` event and a `backend.worker_lost` diagnostic event.
    ///
    /// # Errors
    /// [`BackendError::Log`].
    pub fn open(config: BackendConfig, extra: Vec<Arc<dyn Runtime>>) -> Result<Self, BackendError> {
        let log = Arc::new(EventLog::open(&config.data_dir, config.retention)?);
        let mut runtimes: BTreeMap<String, Arc<dyn Runtime>> = BTreeMap::new();
        if let Some(id) = &config.local_runtime_id {
            runtimes.insert(
                id.clone(),
                Arc::new(crate::runtime::LocalRuntime::new(
                    id.clone(),
                    config.default_cwd.clone(),
                )),
            );
        }
        for rt in extra {
            runtimes.insert(rt.id().to_owned(), rt);
        }
        let backend = Self {
            inner: Arc::new(Inner {
                log,
                runtimes,
                workers: Mutex::new(BTreeMap::new()),
                pending: Mutex::new(Vec::new()),
            }),
        };
        for row in backend.inner.log.load_workers()? {
            let Ok(summary) = serde_json::from_value::<WorkerSummary>(row.summary) else {
                tracing::warn!(worker = %row.worker_id, "skipping unreadable worker summary");
                continue;
            };
            let was_running = summary.state == WorkerState::Running;
            let keeps = backend
                .inner
                .runtimes
                .get(&row.runtime_id)
                .is_some_and(|rt| rt.keeps_workers());
            let worker = Arc::new(Worker {
                summary: Mutex::new(summary),
                control: Mutex::new(None),
                transcript: Mutex::new(None),
            });
            lock(&backend.inner.workers).insert((row.runtime_id, row.worker_id), worker.clone());
            match (was_running, row.handle) {
                (true, Some(handle)) if keeps => {
                    lock(&backend.inner.pending).push((worker, handle));
                }
                (true, _) => backend.mark_lost(
                    &worker,
                    "the backend stopped while this worker ran; its process tree was killed",
                )?,
                (false, _) => {}
            }
        }
        Ok(backend)
    }

    /// Marks a worker `lost` (a `status` event) and records why (a `backend.worker_lost`
    /// diagnostic event).
    fn mark_lost(&self, worker: &Worker, message: &str) -> Result<(), LogError> {
        self.record_with(worker, |s| {
            s.state = WorkerState::Lost;
            s.status = "lost".into();
            s.pid = None;
            json!({"type": "status", "state": "lost", "status": "lost"})
        })?;
        self.record_with(worker, |_| {
            json!({"type": "diagnostic", "code": codes::WORKER_LOST, "severity": "warning",
                   "message": message})
        })?;
        Ok(())
    }

    /// Call once after [`Backend::open`], before serving: lets every runtime resume its
    /// earlier session ([`Runtime::recover`], with the state stored after the last spawn) and
    /// follows again the workers that were running on runtimes that keep their workers (a
    /// remote exec server keeps them for its session TTL): each gets a
    /// `backend.worker_reattached` diagnostic event and continues after its last recorded
    /// event, without repeats; one that cannot be found is marked `lost` with the reason.
    pub async fn recover(&self) {
        let pending = std::mem::take(&mut *lock(&self.inner.pending));
        let mut tasks = Vec::new();
        for (id, rt) in &self.inner.runtimes {
            let saved = self.inner.log.load_runtime_state(id).unwrap_or_else(|e| {
                tracing::warn!(runtime = %id, error = %e, "cannot read the runtime's stored state");
                None
            });
            let mine: Vec<_> = pending
                .iter()
                .filter(|(w, _)| lock(&w.summary).runtime_id == *id)
                .cloned()
                .collect();
            let (backend, rt) = (self.clone(), rt.clone());
            // Runtimes recover side by side: one that is down costs only its own timeout.
            tasks.push(tokio::spawn(async move {
                rt.recover(saved).await;
                for (worker, handle) in mine {
                    backend.reattach(&*rt, worker, &handle).await;
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Follows one worker of an earlier backend again, or marks it lost.
    async fn reattach(
        &self,
        runtime: &dyn Runtime,
        worker: Arc<Worker>,
        handle: &serde_json::Value,
    ) {
        let (runtime_id, worker_id) = {
            let s = lock(&worker.summary);
            (s.runtime_id.clone(), s.worker_id.clone())
        };
        let after = self
            .inner
            .log
            .last_runtime_seq(&runtime_id, &worker_id)
            .unwrap_or_else(|e| {
                tracing::warn!(worker = %worker_id, error = %e, "cannot read the worker's last event");
                0
            });
        let result = match runtime.reattach(handle, after).await {
            Ok((control, events)) => {
                *lock(&worker.control) = Some(control);
                let recorded = self.record_with(&worker, |_| {
                    json!({"type": "diagnostic", "code": codes::WORKER_REATTACHED,
                           "severity": "info",
                           "message": "the backend restarted; following the worker again after its last recorded event"})
                });
                tokio::spawn(pump(self.clone(), worker, events));
                recorded.map(|_| ())
            }
            Err(e) => self.mark_lost(
                &worker,
                &format!("the backend restarted and cannot follow this worker again: {e}"),
            ),
        };
        if let Err(e) = result {
            tracing::error!(worker = %worker_id, error = %e, "cannot record a worker event");
        }
    }

    /// The event log.
    pub fn log(&self) -> &Arc<EventLog> {
        &self.inner.log
    }

    /// Path of the event log database.
    pub fn log_path(&self) -> &Path {
        self.inner.log.path()
    }

    /// All runtimes (never their addresses or credentials).
    pub fn runtimes(&self) -> Vec<RuntimeSummary> {
        self.inner
            .runtimes
            .values()
            .map(|rt| RuntimeSummary {
                runtime_id: rt.id().to_owned(),
                kind: rt.kind().to_owned(),
                state: rt.state().into(),
                capabilities: rt.capabilities(),
            })
            .collect()
    }

    /// All workers of all runtimes.
    pub fn workers(&self) -> Vec<WorkerSummary> {
        let mut all: Vec<WorkerSummary> = lock(&self.inner.workers)
            .values()
            .map(|w| lock(&w.summary).clone())
            .collect();
        all.sort_by_key(|s| s.created_at_ms);
        all
    }

    fn runtime(&self, runtime_id: &str) -> Result<Arc<dyn Runtime>, ApiError> {
        validate_id("runtime", runtime_id)?;
        self.inner.runtimes.get(runtime_id).cloned().ok_or_else(|| {
            ApiError::new(
                404,
                codes::RUNTIME_NOT_FOUND,
                format!("no runtime {runtime_id:?}"),
            )
        })
    }

    fn find(&self, runtime_id: &str, worker_id: &str) -> Result<Arc<Worker>, ApiError> {
        self.runtime(runtime_id)?;
        validate_id("worker", worker_id)?;
        lock(&self.inner.workers)
            .get(&(runtime_id.to_owned(), worker_id.to_owned()))
            .cloned()
            .ok_or_else(|| {
                ApiError::new(
                    404,
                    codes::WORKER_NOT_FOUND,
                    format!("no worker {worker_id:?} in runtime {runtime_id:?}"),
                )
            })
    }

    /// The summary of one worker.
    ///
    /// # Errors
    /// 400 bad id, 404 unknown runtime or worker.
    pub fn worker(&self, runtime_id: &str, worker_id: &str) -> Result<WorkerSummary, ApiError> {
        Ok(lock(&self.find(runtime_id, worker_id)?.summary).clone())
    }

    /// Appends an event for `worker` while holding its summary lock; `update` may change the
    /// summary and returns the payload. The summary (with `last_event_id`) is saved when
    /// `update` changed the state.
    fn record_with(
        &self,
        worker: &Worker,
        update: impl FnOnce(&mut WorkerSummary) -> serde_json::Value,
    ) -> Result<Arc<LoggedEvent>, LogError> {
        let mut s = lock(&worker.summary);
        let before_state = (s.state, s.pid);
        let payload = update(&mut s);
        let event = self
            .inner
            .log
            .append(&s.runtime_id, &s.worker_id, payload)?;
        s.last_event_id = Some(Cursor(event.sequence).to_string());
        if (s.state, s.pid) != before_state || event.payload["type"] == "spawned" {
            self.inner.log.save_worker(&WorkerRow {
                runtime_id: s.runtime_id.clone(),
                worker_id: s.worker_id.clone(),
                summary: serde_json::to_value(&*s).unwrap_or_default(),
                handle: None,
            })?;
        }
        Ok(event)
    }

    /// Starts a worker on `runtime_id`; its events (`spawned`, `output`, `exit`) are recorded.
    ///
    /// # Errors
    /// 400 bad id / empty argv / relative cwd / program not found, 404 unknown runtime,
    /// 501 `tty` on a runtime without pty support, 502 runtime unavailable, 500 event log failure.
    pub async fn spawn(
        &self,
        runtime_id: &str,
        request: SpawnRequest,
    ) -> Result<WorkerSummary, ApiError> {
        let runtime = self.runtime(runtime_id)?;
        if request.argv.is_empty() || request.argv[0].is_empty() {
            return Err(ApiError::new(
                400,
                codes::BAD_REQUEST,
                "argv must not be empty",
            ));
        }
        if request.tty && !runtime.capabilities().tty {
            return Err(ApiError::new(
                501,
                codes::UNSUPPORTED,
                format!("runtime {runtime_id:?} cannot run workers on a pty"),
            ));
        }
        let cwd = match &request.cwd {
            Some(c) if Path::new(c).is_absolute() => PathBuf::from(c),
            Some(c) => {
                return Err(ApiError::new(
                    400,
                    codes::BAD_REQUEST,
                    format!("cwd must be absolute, got {c:?}"),
                ));
            }
            None => runtime.default_cwd(),
        };
        let spec = WorkerSpec {
            argv: request.argv.clone(),
            cwd: cwd.clone(),
            env: request
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            tty: request.tty,
        };
        let (control, events) = runtime.spawn(spec).await.map_err(|e| match e {
            RuntimeError::Invalid { message, .. } => {
                ApiError::new(400, codes::SPAWN_FAILED, message)
            }
            RuntimeError::Unsupported(m) => ApiError::new(501, codes::UNSUPPORTED, m),
            RuntimeError::Unavailable(m) => ApiError::new(502, codes::RUNTIME_UNAVAILABLE, m),
            RuntimeError::Timeout(m) => ApiError::new(504, codes::RUNTIME_TIMEOUT, m),
        })?;
        let number = match self.inner.log.next_worker_number(runtime_id) {
            Ok(n) => n,
            Err(e) => {
                control.terminate().await;
                return Err(ApiError::log(e));
            }
        };
        let worker_id = format!("w{number}");
        let summary = WorkerSummary {
            runtime_id: runtime_id.to_owned(),
            worker_id: worker_id.clone(),
            label: request
                .label
                .clone()
                .unwrap_or_else(|| request.argv.join(" ")),
            state: WorkerState::Running,
            status: "running".into(),
            exit_code: None,
            signal: None,
            argv: request.argv.clone(),
            cwd: cwd.display().to_string(),
            tty: request.tty,
            pid: control.pid(),
            created_at_ms: now_ms(),
            last_event_id: None,
        };
        let worker = Arc::new(Worker {
            summary: Mutex::new(summary),
            control: Mutex::new(Some(control.clone())),
            transcript: Mutex::new(None),
        });
        lock(&self.inner.workers).insert((runtime_id.to_owned(), worker_id), worker.clone());
        let env_names: Vec<&String> = request.env.keys().collect();
        if let Err(e) = self.record_with(&worker, |s| {
            json!({"type": "spawned", "argv": s.argv, "cwd": s.cwd, "tty": s.tty,
                   "label": s.label, "env_names": env_names, "pid": s.pid})
        }) {
            control.terminate().await;
            return Err(ApiError::log(e));
        }
        let summary = lock(&worker.summary).clone();
        if let Some(handle) = control.handle()
            && let Err(e) =
                self.inner
                    .log
                    .save_worker_handle(runtime_id, &summary.worker_id, &handle)
        {
            tracing::warn!(error = %e, "cannot store the worker's handle; it will not be followed after a restart");
        }
        if let Some(state) = runtime.session_state()
            && let Err(e) = self.inner.log.save_runtime_state(runtime_id, &state)
        {
            tracing::warn!(error = %e, "cannot store the runtime's session state");
        }
        tokio::spawn(pump(self.clone(), worker, events));
        Ok(summary)
    }

    /// Records input: `user` input is written to the worker's stdin, `system` input is only
    /// recorded. A worker that is not running rejects `user` input.
    ///
    /// # Errors
    /// 400/404 as [`Backend::worker`], 500 event log failure.
    pub async fn input(
        &self,
        runtime_id: &str,
        worker_id: &str,
        request: InputRequest,
    ) -> Result<OperationResult, ApiError> {
        let worker = self.find(runtime_id, worker_id)?;
        let kind = match request.kind {
            InputKind::User => "user",
            InputKind::System => "system",
        };
        let mut control = None;
        if request.kind == InputKind::User {
            let c = lock(&worker.control).clone();
            let running = lock(&worker.summary).state == WorkerState::Running;
            let (Some(c), true) = (c, running) else {
                return Ok(rejected("the worker is not running"));
            };
            control = Some(c);
        }
        // Record first, so the input precedes the output it causes.
        let event = self
            .record_with(
                &worker,
                |_| json!({"type": "input", "kind": kind, "content": request.content}),
            )
            .map_err(ApiError::log)?;
        if let Some(control) = control {
            let mut bytes = request.content.into_bytes();
            if !bytes.ends_with(b"\n") {
                bytes.push(b'\n');
            }
            if let Err(e) = control.write_stdin(&bytes).await {
                let message = format!("input {} was not delivered: {e}", Cursor(event.sequence));
                let _ = self.record_with(&worker, |_| {
                    json!({"type": "diagnostic", "code": codes::INPUT_NOT_DELIVERED,
                           "severity": "warning", "message": message})
                });
                return Ok(refused_by_runtime(codes::INPUT_NOT_DELIVERED, &e));
            }
        }
        Ok(accepted(&event))
    }

    /// `cancel` (interrupt = SIGINT to the process group) or `stop` (kill the process tree).
    ///
    /// # Errors
    /// 400/404 as [`Backend::worker`], 500 event log failure.
    pub async fn lifecycle(
        &self,
        runtime_id: &str,
        worker_id: &str,
        action: Lifecycle,
        request: LifecycleRequest,
    ) -> Result<OperationResult, ApiError> {
        let worker = self.find(runtime_id, worker_id)?;
        let control = lock(&worker.control).clone();
        let running = lock(&worker.summary).state == WorkerState::Running;
        let (Some(control), true) = (control, running) else {
            return Ok(rejected("the worker is not running"));
        };
        let name = match action {
            Lifecycle::Cancel => "cancel",
            Lifecycle::Stop => "stop",
        };
        // Record first, so the request precedes the output and exit it causes.
        let event = self
            .record_with(
                &worker,
                |_| json!({"type": "control", "action": name, "reason": request.reason}),
            )
            .map_err(ApiError::log)?;
        match action {
            Lifecycle::Cancel => {
                if let Err(e) = control.interrupt().await {
                    return Ok(refused_by_runtime(codes::SIGNAL_FAILED, &e));
                }
            }
            Lifecycle::Stop => control.terminate().await,
        }
        Ok(accepted(&event))
    }

    /// The transcript projection: inputs and output lines, `limit` (capped at
    /// [`MAX_TRANSCRIPT_LIMIT`], default [`DEFAULT_TRANSCRIPT_LIMIT`]) items from `start`.
    ///
    /// # Errors
    /// 400/404 as [`Backend::worker`], 500 event log failure.
    pub async fn transcript(
        &self,
        runtime_id: &str,
        worker_id: &str,
        start: u64,
        limit: Option<usize>,
    ) -> Result<Transcript, ApiError> {
        let worker = self.find(runtime_id, worker_id)?;
        let limit = limit
            .unwrap_or(DEFAULT_TRANSCRIPT_LIMIT)
            .min(MAX_TRANSCRIPT_LIMIT);
        let log = self.inner.log.clone();
        let (rt, w) = (runtime_id.to_owned(), worker_id.to_owned());
        tokio::task::spawn_blocking(move || {
            project_transcript(&log, &worker, &rt, &w, start, limit)
        })
        .await
        .map_err(|e| ApiError::new(500, codes::INTERNAL, e.to_string()))?
        .map_err(ApiError::log)
    }

    /// Kills every running worker's process tree (call on shutdown), except on runtimes that
    /// keep their workers ([`Runtime::keeps_workers`]: a restarted backend follows them again).
    pub async fn shutdown(&self) {
        let controls: Vec<_> = lock(&self.inner.workers)
            .values()
            .filter(|w| {
                let rt = lock(&w.summary).runtime_id.clone();
                !self
                    .inner
                    .runtimes
                    .get(&rt)
                    .is_some_and(|r| r.keeps_workers())
            })
            .filter_map(|w| lock(&w.control).take())
            .collect();
        for c in controls {
            c.terminate().await;
        }
        for rt in self.inner.runtimes.values() {
            rt.shutdown().await;
        }
    }

    /// A snapshot of a worker together with the live subscription that follows it: the
    /// snapshot reflects every event of the worker up to `head`, the receiver carries every
    /// event after `head`.
    pub(crate) fn snapshot_and_subscribe(
        &self,
        runtime_id: &str,
        worker_id: &str,
    ) -> Result<
        (
            WorkerSummary,
            tokio::sync::broadcast::Receiver<Arc<LoggedEvent>>,
            u64,
        ),
        ApiError,
    > {
        let worker = self.find(runtime_id, worker_id)?;
        let s = lock(&worker.summary);
        let (rx, head) = self.inner.log.subscribe();
        Ok((s.clone(), rx, head))
    }

    /// Whether the worker exists (for the observation route).
    pub(crate) fn check_worker(&self, runtime_id: &str, worker_id: &str) -> Result<(), ApiError> {
        self.find(runtime_id, worker_id).map(|_| ())
    }
}

/// Which lifecycle operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Interrupt (SIGINT).
    Cancel,
    /// Terminate the process tree.
    Stop,
}

fn accepted(event: &LoggedEvent) -> OperationResult {
    OperationResult {
        state: OperationState::Accepted,
        event_id: Some(Cursor(event.sequence).to_string()),
        diagnostics: Vec::new(),
    }
}

fn rejected(message: &str) -> OperationResult {
    refused(OperationState::Rejected, codes::WORKER_NOT_RUNNING, message)
}

/// A refusal with one warning diagnostic.
fn refused(state: OperationState, code: &str, message: &str) -> OperationResult {
    OperationResult {
        state,
        event_id: None,
        diagnostics: vec![Diagnostic::warning(code, message)],
    }
}

/// The refusal for a runtime error of an operation on a running worker: `unsupported` when the
/// runtime cannot do it at all, else `rejected` with `code`.
fn refused_by_runtime(code: &str, e: &RuntimeError) -> OperationResult {
    match e {
        RuntimeError::Unsupported(m) => refused(OperationState::Unsupported, codes::UNSUPPORTED, m),
        other => refused(OperationState::Rejected, code, &other.to_string()),
    }
}

async fn pump(backend: Backend, worker: Arc<Worker>, mut events: Box<dyn WorkerEvents>) {
    while let Some(event) = events.next().await {
        let result = match event {
            WorkerOutput::Output { stream, bytes, seq } => {
                backend.record_with(&worker, |_| output_payload(stream, &bytes, seq))
            }
            WorkerOutput::Exited {
                code,
                signal,
                status,
                seq,
            } => backend.record_with(&worker, |s| {
                s.state = WorkerState::Exited;
                s.status = status.clone();
                s.exit_code = code;
                s.signal = signal;
                s.pid = None;
                let mut payload =
                    json!({"type": "exit", "exit_code": code, "signal": signal, "status": status});
                if let Some(seq) = seq {
                    payload["seq"] = json!(seq);
                }
                payload
            }),
            WorkerOutput::Diagnostic {
                code,
                severity,
                message,
            } => backend.record_with(&worker, |_| {
                json!({"type": "diagnostic", "code": code, "severity": severity, "message": message})
            }),
            WorkerOutput::Lost { message } => backend.record_with(&worker, |s| {
                s.state = WorkerState::Lost;
                s.status = "lost".into();
                s.pid = None;
                json!({"type": "status", "state": "lost", "status": "lost", "message": message})
            }),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot record a worker event");
        }
    }
    lock(&worker.control).take();
}

/// A worker's transcript projection, kept between requests and extended with the events
/// appended since (so a request reads only what is new). Dropped when retention pruned the
/// worker's events (rebuilt from what is left) or when it grows past
/// [`MAX_CACHED_TRANSCRIPT_BYTES`] (then rebuilt per request).
#[derive(Debug, Default)]
struct Projection {
    items: Vec<TranscriptItem>,
    /// Unfinished line per role and the sequence of its last event.
    partial: BTreeMap<&'static str, String>,
    last_seq: u64,
    pruned_through: u64,
    bytes: usize,
}

/// Above this many bytes of transcript text a worker's projection is not kept in memory.
const MAX_CACHED_TRANSCRIPT_BYTES: usize = 32 << 20;

impl Projection {
    fn push(&mut self, role: &str, content: String, seq: u64) {
        self.bytes += content.len();
        self.items.push(TranscriptItem {
            sequence: self.items.len() as u64,
            role: role.to_owned(),
            content,
            event_id: Cursor(seq).to_string(),
        });
    }

    fn apply(&mut self, e: &LoggedEvent) {
        self.last_seq = e.sequence;
        match e.payload["type"].as_str() {
            Some("input") => {
                let role = e.payload["kind"].as_str().unwrap_or("user").to_owned();
                let content = e.payload["content"].as_str().unwrap_or_default().to_owned();
                self.push(&role, content, e.sequence);
            }
            Some("output") => {
                let role = if e.payload["stream"].as_str() == Some("stderr") {
                    "stderr"
                } else {
                    "assistant"
                };
                let mut buf = self.partial.remove(role).unwrap_or_default();
                buf.push_str(e.payload["text"].as_str().unwrap_or_default());
                while let Some(i) = buf.find('\n') {
                    let mut line: String = buf.drain(..=i).collect();
                    line.pop();
                    if line.ends_with('\r') {
                        line.pop();
                    }
                    self.push(role, line, e.sequence);
                }
                if !buf.is_empty() {
                    self.partial.insert(role, buf);
                }
            }
            _ => {}
        }
    }

    /// Reads and applies every event of the worker after `last_seq`.
    fn catch_up(
        &mut self,
        log: &EventLog,
        runtime_id: &str,
        worker_id: &str,
    ) -> Result<(), LogError> {
        loop {
            let page = log.read_after(runtime_id, worker_id, self.last_seq, u64::MAX, 2000)?;
            if page.is_empty() {
                return Ok(());
            }
            for e in &page {
                self.apply(e);
            }
        }
    }

    /// Items `start..start+limit` of the projection, unfinished lines counted as items.
    fn page(&self, start: u64, limit: usize, diagnostics: Vec<Diagnostic>) -> Transcript {
        let tail: Vec<TranscriptItem> = self
            .partial
            .iter()
            .enumerate()
            .map(|(i, (role, text))| TranscriptItem {
                sequence: (self.items.len() + i) as u64,
                role: (*role).to_owned(),
                content: text.clone(),
                event_id: Cursor(self.last_seq).to_string(),
            })
            .collect();
        let total = (self.items.len() + tail.len()) as u64;
        let from = start.min(total) as usize;
        let page: Vec<TranscriptItem> = self
            .items
            .iter()
            .chain(tail.iter())
            .skip(from)
            .take(limit)
            .cloned()
            .collect();
        let end = from as u64 + page.len() as u64;
        Transcript {
            items: page,
            total_items: total,
            next_start: (end < total).then_some(end),
            cursor: (self.last_seq > 0).then(|| Cursor(self.last_seq).to_string()),
            diagnostics,
        }
    }
}

fn project_transcript(
    log: &EventLog,
    worker: &Worker,
    runtime_id: &str,
    worker_id: &str,
    start: u64,
    limit: usize,
) -> Result<Transcript, LogError> {
    let pruned = log.pruned_through(runtime_id, worker_id)?;
    let mut cached = lock(&worker.transcript);
    let mut projection = match cached.take() {
        Some(p) if p.pruned_through == pruned => p,
        _ => Projection {
            pruned_through: pruned,
            ..Projection::default()
        },
    };
    projection.catch_up(log, runtime_id, worker_id)?;
    let mut diagnostics = Vec::new();
    if pruned > 0 {
        diagnostics.push(Diagnostic::warning(
            codes::TRANSCRIPT_TRUNCATED,
            "retention removed the beginning of this worker's events",
        ));
    }
    let transcript = projection.page(start, limit, diagnostics);
    if projection.bytes <= MAX_CACHED_TRANSCRIPT_BYTES {
        *cached = Some(projection);
    }
    Ok(transcript)
}
