//! A runtime that is a runner session (DESIGN.md §3, §4): workers run as commands of a
//! `baton-runner` session at any destination — `local:DIR`, a remote exec server
//! (`ws://HOST:PORT`, Baton's or Codex's) or ssh (`ssh://HOST/PATH`, `baton exec-server
//! --listen stdio` started over ssh).
//!
//! The session is created in the background when the runtime is registered and again on the
//! next spawn after a failure, so a runtime that is down at startup shows up as `unavailable`
//! (spawns answer 502, or 504 when the runner did not answer within the timeout) instead of
//! stopping the backend. While a remote session reconnects, its running workers get a
//! `backend.upstream_disconnect` diagnostic event, and `backend.upstream_reconnected` when it
//! is back; the exec-server client resumes its session and catches every process up, so no
//! output is lost. The destination (URL, host, token reference) never leaves this module: the
//! API shows only the runtime id and the provider kind.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use baton_runner::{
    RunnerCommandRequest, RunnerDestination, RunnerError, RunnerEvent, RunnerProcess,
    RunnerProvider, RunnerSession, RunnerSessionState, RunnerSignal, RunnerStdin, RunnerStream,
};
use tokio::sync::Mutex as AsyncMutex;

use crate::api::RuntimeCapabilities;
use crate::runtime::{
    Runtime, RuntimeError, WorkerControl, WorkerEvents, WorkerOutput, WorkerSpec,
};
use baton_protocol::backend::codes;

/// How often a worker's event pump samples the session's connection state.
const CONNECTION_POLL: Duration = Duration::from_millis(100);

/// Default limit for creating a session and for starting a worker.
pub const DEFAULT_RUNNER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Connecting,
    Available,
    Unavailable,
}

/// A runtime backed by a runner session (see the module docs).
pub struct RunnerRuntime {
    id: String,
    kind: String,
    provider: Arc<dyn RunnerProvider>,
    destination: RunnerDestination,
    timeout: Duration,
    session: AsyncMutex<Option<Arc<dyn RunnerSession>>>,
    status: Mutex<Status>,
    next: AtomicU64,
    redactor: Redactor,
    /// The earlier backend's session state, resumed by the first [`RunnerRuntime::session`].
    saved: Mutex<Option<RunnerSessionState>>,
}

impl std::fmt::Debug for RunnerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the destination: it names hosts and secret references.
        f.debug_struct("RunnerRuntime")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl RunnerRuntime {
    /// A runtime `id` whose workers run in a session of `provider` at `destination`. Nothing is
    /// contacted yet: call [`RunnerRuntime::start`] (or let the first spawn connect).
    /// `timeout` bounds session creation and each worker start (see
    /// [`DEFAULT_RUNNER_TIMEOUT`]).
    pub fn new(
        id: impl Into<String>,
        provider: Arc<dyn RunnerProvider>,
        destination: RunnerDestination,
        timeout: Duration,
    ) -> Self {
        Self {
            id: id.into(),
            kind: provider.id(),
            provider,
            redactor: Redactor::new(&destination),
            destination,
            timeout,
            session: AsyncMutex::new(None),
            status: Mutex::new(Status::Connecting),
            next: AtomicU64::new(1),
            saved: Mutex::new(None),
        }
    }

    /// Creates the session in the background (errors are logged and shown as the runtime's
    /// `unavailable` state; the next spawn retries).
    pub fn start(self: &Arc<Self>) {
        let this = self.clone();
        tokio::spawn(async move {
            // Failures are logged by `session` and shown as the runtime's state.
            let _ = this.session().await;
        });
    }

    /// The session, opened now if there is none (or the last one was closed): the first time
    /// after [`Runtime::recover`] by resuming the earlier backend's session, else (or when
    /// that fails) a fresh one.
    async fn session(&self) -> Result<Arc<dyn RunnerSession>, RuntimeError> {
        let mut slot = self.session.lock().await;
        if let Some(s) = slot.as_ref() {
            return Ok(s.clone());
        }
        self.set_status(Status::Connecting);
        let saved = self.saved.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(state) = saved {
            match tokio::time::timeout(self.timeout, self.provider.resume_session(state)).await {
                Ok(Ok(s)) => {
                    self.set_status(Status::Available);
                    *slot = Some(s.clone());
                    return Ok(s);
                }
                Ok(Err(e)) => {
                    tracing::warn!(runtime = %self.id, error = %error_chain(&e), "cannot resume the earlier session; opening a new one")
                }
                Err(_) => {
                    tracing::warn!(runtime = %self.id, "resuming the earlier session timed out; opening a new one")
                }
            }
        }
        let created = tokio::time::timeout(
            self.timeout,
            self.provider.create_session(self.destination.clone()),
        )
        .await;
        let session = match created {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                self.set_status(Status::Unavailable);
                // The operator's log gets the whole story; API clients get it redacted.
                tracing::warn!(runtime = %self.id, error = %error_chain(&e), "cannot open a runner session");
                return Err(RuntimeError::Unavailable(self.redact(&format!(
                    "cannot open a session on runtime {:?}: {}",
                    self.id,
                    error_chain(&e)
                ))));
            }
            Err(_) => {
                self.set_status(Status::Unavailable);
                return Err(RuntimeError::Timeout(format!(
                    "runtime {:?} did not open a session within {} s",
                    self.id,
                    self.timeout.as_secs_f64()
                )));
            }
        };
        self.set_status(Status::Available);
        *slot = Some(session.clone());
        Ok(session)
    }

    /// Forgets a session that can no longer start commands, so the next spawn opens a new one.
    async fn discard(&self, session: &Arc<dyn RunnerSession>) {
        let mut slot = self.session.lock().await;
        if slot.as_ref().is_some_and(|s| Arc::ptr_eq(s, session)) {
            *slot = None;
            self.set_status(Status::Unavailable);
        }
    }

    /// `message` without the destination's address parts (see [`Redactor`]).
    fn redact(&self, message: &str) -> String {
        self.redactor.apply(message)
    }

    fn set_status(&self, status: Status) {
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = status;
    }
}

/// Replaces a destination's address parts (URL, `HOST:PORT`, host, ssh destination) by
/// `<runtime>` in messages that reach API clients: runner errors name them, the API must not.
#[derive(Debug, Clone)]
struct Redactor(Arc<[String]>);

impl Redactor {
    fn new(destination: &RunnerDestination) -> Self {
        let mut parts: Vec<String> = Vec::new();
        for key in ["url", "destination"] {
            if let Some(v) = destination.config.get(key).and_then(|v| v.as_str()) {
                parts.push(v.to_owned());
                let rest = v.split_once("://").map_or(v, |(_, r)| r);
                let authority = rest.split('/').next().unwrap_or(rest);
                parts.push(authority.to_owned());
                let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
                parts.push(host.to_owned());
                if let Some((h, _port)) = host.rsplit_once(':') {
                    parts.push(h.to_owned());
                }
            }
        }
        parts.retain(|p| !p.is_empty());
        // Longest first, so a URL is replaced whole before its host alone.
        parts.sort_by_key(|p| std::cmp::Reverse(p.len()));
        parts.dedup();
        Self(parts.into())
    }

    fn apply(&self, message: &str) -> String {
        let mut out = message.to_owned();
        for p in self.0.iter() {
            out = out.replace(p.as_str(), "<runtime>");
        }
        out
    }

    fn error(&self, e: RuntimeError) -> RuntimeError {
        match e {
            RuntimeError::Invalid { message, source } => RuntimeError::Invalid {
                message: self.apply(&message),
                source,
            },
            RuntimeError::Unsupported(m) => RuntimeError::Unsupported(self.apply(&m)),
            RuntimeError::Unavailable(m) => RuntimeError::Unavailable(self.apply(&m)),
            RuntimeError::Timeout(m) => RuntimeError::Timeout(self.apply(&m)),
        }
    }
}

/// `e` and its sources, joined with `: `.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Maps a runner error of an operation on a worker to the HTTP-facing runtime error.
fn runtime_error(what: &str, e: RunnerError) -> RuntimeError {
    let message = format!("{what}: {}", error_chain(&e));
    match e {
        RunnerError::Unsupported { .. } => RuntimeError::Unsupported(message),
        RunnerError::AccessDenied { .. }
        | RunnerError::NotFound(_)
        | RunnerError::RootNotAbsolute(_)
        | RunnerError::Spawn(_)
        | RunnerError::DuplicateCommand(_)
        | RunnerError::StdinClosed(_)
        | RunnerError::UnknownCommand(_) => RuntimeError::Invalid {
            message,
            source: Some(Box::new(e)),
        },
        _ => RuntimeError::Unavailable(message),
    }
}

struct RunnerControl {
    session: Arc<dyn RunnerSession>,
    command_id: String,
    stdin: RunnerStdin,
    redactor: Redactor,
}

#[async_trait]
impl WorkerControl for RunnerControl {
    fn pid(&self) -> Option<u32> {
        None
    }

    async fn write_stdin(&self, bytes: &[u8]) -> Result<(), RuntimeError> {
        self.stdin.write(bytes).await.map_err(|e| {
            self.redactor
                .error(runtime_error("cannot write to the worker's stdin", e))
        })
    }

    async fn interrupt(&self) -> Result<(), RuntimeError> {
        self.session
            .signal_command(&self.command_id, RunnerSignal::Interrupt)
            .await
            .map(|_| ())
            .map_err(|e| {
                self.redactor
                    .error(runtime_error("cannot interrupt the worker", e))
            })
    }

    async fn terminate(&self) {
        if let Err(e) = self.session.cancel_command(&self.command_id).await {
            tracing::warn!(command = %self.command_id, error = %e, "cannot stop a worker");
        }
    }

    fn handle(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({ "command_id": self.command_id }))
    }
}

struct RunnerWorkerEvents {
    process: RunnerProcess,
    session: Arc<dyn RunnerSession>,
    connected: bool,
    poll: tokio::time::Interval,
    /// Events with a sequence at or below this were recorded before a restart: skipped.
    skip_through: u64,
    /// After a restart: the first new event is checked for a gap in sequences.
    check_gap: bool,
    /// An event held back behind the gap diagnostic.
    pending: Option<RunnerEvent>,
}

/// A runner event as a worker event (`None` for the end of the stream).
fn convert(event: RunnerEvent) -> Option<WorkerOutput> {
    match event {
        RunnerEvent::Output { stream, chunk, seq } => Some(WorkerOutput::Output {
            stream: match stream {
                RunnerStream::Stdout => "stdout",
                RunnerStream::Stderr => "stderr",
                RunnerStream::Pty => "pty",
            },
            bytes: chunk,
            seq: Some(seq),
        }),
        RunnerEvent::Exited { exit_code, seq } => Some(WorkerOutput::Exited {
            code: Some(exit_code),
            signal: None,
            status: format!("exit code {exit_code}"),
            seq: Some(seq),
        }),
        RunnerEvent::Closed { .. } => None,
        RunnerEvent::Failed { message } => Some(WorkerOutput::Lost { message }),
    }
}

impl RunnerWorkerEvents {
    fn new(process: RunnerProcess, session: Arc<dyn RunnerSession>, skip_through: u64) -> Self {
        let mut poll = tokio::time::interval(CONNECTION_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            process,
            connected: session.is_connected(),
            session,
            poll,
            skip_through,
            check_gap: skip_through > 0,
            pending: None,
        }
    }
}

#[async_trait]
impl WorkerEvents for RunnerWorkerEvents {
    async fn next(&mut self) -> Option<WorkerOutput> {
        if let Some(event) = self.pending.take() {
            return convert(event);
        }
        loop {
            tokio::select! {
                biased;
                event = self.process.next_event() => {
                    let event = event?;
                    let seq = match &event {
                        RunnerEvent::Output { seq, .. }
                        | RunnerEvent::Exited { seq, .. }
                        | RunnerEvent::Closed { seq } => Some(*seq),
                        RunnerEvent::Failed { .. } => None,
                    };
                    if let Some(seq) = seq {
                        if seq <= self.skip_through {
                            continue;
                        }
                        if std::mem::take(&mut self.check_gap) && seq > self.skip_through + 1 {
                            self.pending = Some(event);
                            return Some(WorkerOutput::Diagnostic {
                                code: codes::OUTPUT_GAP.into(),
                                severity: "warning",
                                message: format!(
                                    "events {}..{} of the worker were dropped by the runtime while the backend was away",
                                    self.skip_through + 1,
                                    seq - 1
                                ),
                            });
                        }
                    }
                    return convert(event);
                }
                _ = self.poll.tick() => {
                    let now = self.session.is_connected();
                    if now == self.connected {
                        continue;
                    }
                    self.connected = now;
                    return Some(if now {
                        WorkerOutput::Diagnostic {
                            code: codes::UPSTREAM_RECONNECTED.into(),
                            severity: "info",
                            message: "the connection to the runtime is back; output resumes without loss".into(),
                        }
                    } else {
                        WorkerOutput::Diagnostic {
                            code: codes::UPSTREAM_DISCONNECT.into(),
                            severity: "warning",
                            message: "the connection to the runtime dropped; reconnecting".into(),
                        }
                    });
                }
            }
        }
    }
}

#[async_trait]
impl Runtime for RunnerRuntime {
    fn id(&self) -> &str {
        &self.id
    }

    fn kind(&self) -> &str {
        &self.kind
    }

    fn state(&self) -> &'static str {
        match *self.status.lock().unwrap_or_else(|p| p.into_inner()) {
            Status::Connecting => "connecting",
            Status::Available => "available",
            Status::Unavailable => "unavailable",
        }
    }

    /// Closes the session (kills its running commands; a fresh local workspace is removed) —
    /// except on an exec server ([`Runtime::keeps_workers`]), whose session is left to the
    /// server: it keeps the workers running for its session TTL, so a restarted backend can
    /// resume it and follow them again.
    async fn shutdown(&self) {
        let Some(s) = self.session.lock().await.take() else {
            return;
        };
        if self.keeps_workers() {
            return;
        }
        if let Err(e) = s.close().await {
            tracing::warn!(runtime = %self.id, error = %e, "closing the runtime's session");
        }
    }

    fn keeps_workers(&self) -> bool {
        self.kind == baton_runner::EXEC_SERVER_PROVIDER_ID
    }

    fn session_state(&self) -> Option<serde_json::Value> {
        let slot = self.session.try_lock().ok()?;
        serde_json::to_value(slot.as_ref()?.state()).ok()
    }

    async fn recover(&self, saved: Option<serde_json::Value>) {
        let saved = saved
            .filter(|_| self.keeps_workers())
            .and_then(|v| serde_json::from_value::<RunnerSessionState>(v).ok());
        *self.saved.lock().unwrap_or_else(|p| p.into_inner()) = saved;
        // Failures are logged by `session` and shown as the runtime's state.
        let _ = self.session().await;
    }

    async fn reattach(
        &self,
        handle: &serde_json::Value,
        after_seq: u64,
    ) -> Result<(Arc<dyn WorkerControl>, Box<dyn WorkerEvents>), RuntimeError> {
        let command_id = handle["command_id"]
            .as_str()
            .ok_or_else(|| RuntimeError::Invalid {
                message: "the stored worker handle has no command id".into(),
                source: None,
            })?
            .to_owned();
        let session = self.session().await?;
        let process = tokio::time::timeout(self.timeout, session.attach_command(&command_id))
            .await
            .map_err(|_| {
                RuntimeError::Timeout(format!(
                    "runtime {:?} did not find the worker within {} s",
                    self.id,
                    self.timeout.as_secs_f64()
                ))
            })?
            .map_err(|e| {
                self.redactor
                    .error(runtime_error("cannot follow the worker again", e))
            })?;
        let control = RunnerControl {
            session: session.clone(),
            command_id,
            stdin: process.stdin(),
            redactor: self.redactor.clone(),
        };
        let events = RunnerWorkerEvents::new(process, session, after_seq);
        Ok((Arc::new(control), Box::new(events)))
    }

    fn capabilities(&self) -> RuntimeCapabilities {
        let caps = self.provider.capabilities();
        RuntimeCapabilities {
            spawn: caps.command_exec,
            input: caps.command_exec,
            interrupt: caps.cancellation,
            terminate: caps.cancellation,
            tty: caps.command_exec,
        }
    }

    fn default_cwd(&self) -> std::path::PathBuf {
        self.destination
            .config
            .get("workspace")
            .and_then(|w| w.as_str())
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::PathBuf::from("/"))
    }

    async fn spawn(
        &self,
        spec: WorkerSpec,
    ) -> Result<(Arc<dyn WorkerControl>, Box<dyn WorkerEvents>), RuntimeError> {
        let (program, args) = spec.program_and_args()?;
        let session = self.session().await?;
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let command_id = format!("worker-{}-{n}", std::process::id());
        let request = RunnerCommandRequest {
            cwd: Some(spec.cwd.clone()),
            env: spec.env.clone(),
            tty: spec.tty,
            ..RunnerCommandRequest::new(&command_id, program, args.iter().cloned())
        };
        let started = tokio::time::timeout(self.timeout, session.spawn(request)).await;
        let process = match started {
            Ok(Ok(p)) => p,
            Ok(Err(e @ RunnerError::Closed)) => {
                self.discard(&session).await;
                return Err(self
                    .redactor
                    .error(runtime_error("the runtime's session is closed", e)));
            }
            Ok(Err(e)) => {
                let err = runtime_error(&format!("cannot start {program:?}"), e);
                if matches!(err, RuntimeError::Unavailable(_)) {
                    // The connection is gone for good (the client gave up reconnecting, or an
                    // ssh runner's server ended): the next spawn opens a new session.
                    self.discard(&session).await;
                }
                return Err(self.redactor.error(err));
            }
            Err(_) => {
                // The start may still happen: make sure it does not outlive the refusal.
                let _ = session.cancel_command(&command_id).await;
                return Err(RuntimeError::Timeout(format!(
                    "runtime {:?} did not start {program:?} within {} s",
                    self.id,
                    self.timeout.as_secs_f64()
                )));
            }
        };
        let control = RunnerControl {
            session: session.clone(),
            command_id,
            stdin: process.stdin(),
            redactor: self.redactor.clone(),
        };
        let events = RunnerWorkerEvents::new(process, session, 0);
        Ok((Arc::new(control), Box::new(events)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redactor_hides_every_form_of_the_address() {
        let d = baton_runner::parse_destination(
            "x",
            "ws://10.1.2.3:7070/path",
            &baton_runner::DestinationOptions {
                workspace: Some("/ws".into()),
                ..Default::default()
            },
        )
        .expect("destination");
        let r = Redactor::new(&d);
        assert_eq!(
            r.apply(
                "cannot connect to ws://10.1.2.3:7070/path (10.1.2.3:7070, host 10.1.2.3) in /ws"
            ),
            "cannot connect to <runtime> (<runtime>, host <runtime>) in /ws"
        );
        let d = baton_runner::parse_destination(
            "y",
            "ssh://me@box.internal:2222/srv",
            &Default::default(),
        )
        .expect("destination");
        assert_eq!(
            Redactor::new(&d)
                .apply("ssh: connect to host box.internal port 2222 as me@box.internal"),
            "ssh: connect to host <runtime> port 2222 as <runtime>"
        );
    }
}
