//! Runtimes: where workers run.
//!
//! The backend talks to runtimes through the small [`Runtime`] trait. DESIGN.md §3 makes a
//! runtime a runner session (`baton-runner`): [`crate::RunnerRuntime`] runs workers in a runner
//! session at any destination (`local:DIR`, a remote exec server, ssh). The embedded default
//! runtime, [`LocalRuntime`], runs workers directly on `baton-exec` on this host because it
//! adds what a runner session hides: the worker's host pid and the signal that killed it, and
//! the backend's own environment (runner sessions give commands only `PATH` plus `env`).

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

use crate::api::RuntimeCapabilities;

/// A worker to start, already validated by the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSpec {
    /// Program and arguments (non-empty).
    pub argv: Vec<String>,
    /// Absolute working directory.
    pub cwd: PathBuf,
    /// Extra environment variables (added to the runtime's environment).
    pub env: Vec<(String, String)>,
    /// Run on a pseudo-terminal.
    pub tty: bool,
}

impl WorkerSpec {
    /// `argv` split into the program and its arguments.
    ///
    /// # Errors
    /// [`RuntimeError::Invalid`] when `argv` is empty.
    pub fn program_and_args(&self) -> Result<(&String, &[String]), RuntimeError> {
        self.argv
            .split_first()
            .ok_or_else(|| RuntimeError::Invalid {
                message: "argv is empty".into(),
                source: None,
            })
    }
}

/// Something a running worker did, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerOutput {
    /// Bytes on a stream (`stdout`, `stderr` or `pty`).
    Output {
        /// Stream name.
        stream: &'static str,
        /// The bytes.
        bytes: Vec<u8>,
        /// The runtime's sequence number of this chunk, when it has one (exec-server `seq`):
        /// recorded so that following the worker again after a restart resumes after it.
        seq: Option<u64>,
    },
    /// The worker's main process ended.
    Exited {
        /// Exit code, when it exited normally.
        code: Option<i32>,
        /// Signal number, when killed by a signal.
        signal: Option<i32>,
        /// Human-readable status, e.g. `exit code 0`.
        status: String,
        /// The runtime's sequence number of the exit, when it has one.
        seq: Option<u64>,
    },
    /// Something about the connection to the worker (recorded as a `diagnostic` event), e.g.
    /// `backend.upstream_disconnect` when a remote runtime's connection dropped.
    Diagnostic {
        /// Code.
        code: String,
        /// `info`, `warning` or `error`.
        severity: &'static str,
        /// Explanation.
        message: String,
    },
    /// The worker can no longer be followed (e.g. a remote connection was lost for good); the
    /// last event.
    Lost {
        /// Why.
        message: String,
    },
}

/// Errors of a runtime operation; the HTTP layer maps them to status codes.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The request is invalid for this runtime (bad program, cwd…): HTTP 400.
    #[error("{message}")]
    Invalid {
        /// What is wrong.
        message: String,
        /// The cause.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The runtime cannot do this at all: HTTP 501.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The runtime could not be reached or failed: HTTP 502.
    #[error("runtime unavailable: {0}")]
    Unavailable(String),
    /// The runtime did not answer in time: HTTP 504.
    #[error("runtime timed out: {0}")]
    Timeout(String),
}

/// Control of a running worker. Methods on a worker that already ended are harmless.
#[async_trait]
pub trait WorkerControl: Send + Sync + 'static {
    /// Process id on the runtime's host, if known.
    fn pid(&self) -> Option<u32>;
    /// Writes bytes to the worker's stdin (or its terminal).
    ///
    /// # Errors
    /// [`RuntimeError`] when stdin is closed or the write fails.
    async fn write_stdin(&self, bytes: &[u8]) -> Result<(), RuntimeError>;
    /// Sends an interrupt (SIGINT) to the worker's process group.
    ///
    /// # Errors
    /// [`RuntimeError`] when the signal cannot be delivered.
    async fn interrupt(&self) -> Result<(), RuntimeError>;
    /// Kills the worker's whole process tree.
    async fn terminate(&self);
    /// What the runtime needs to follow this worker again after a backend restart
    /// ([`Runtime::reattach`]); secret-free JSON, stored in the event log. `None` (the default):
    /// the worker cannot outlive the backend.
    fn handle(&self) -> Option<serde_json::Value> {
        None
    }
}

/// The ordered events of a running worker; `None` after the last one (all streams closed and
/// the process exited).
#[async_trait]
pub trait WorkerEvents: Send + 'static {
    /// The next event.
    async fn next(&mut self) -> Option<WorkerOutput>;
}

/// A place to run workers.
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Opaque id, used in paths (`/api/runtimes/{id}`).
    fn id(&self) -> &str;
    /// Provider kind, e.g. `local`, `exec-server`, `ssh`.
    fn kind(&self) -> &str;
    /// `available`, `connecting` (not connected yet, or reconnecting) or `unavailable` (the
    /// last connection attempt failed; the next spawn tries again).
    fn state(&self) -> &'static str {
        "available"
    }
    /// What it supports.
    fn capabilities(&self) -> RuntimeCapabilities;
    /// Working directory of a worker spawned without `cwd`.
    fn default_cwd(&self) -> PathBuf;
    /// Releases the runtime on backend shutdown (after its workers were stopped, unless
    /// [`Runtime::keeps_workers`]). Default: nothing to release.
    async fn shutdown(&self) {}

    /// Whether this runtime's workers keep running when the backend stops, so that a restarted
    /// backend can follow them again ([`Runtime::reattach`]); then shutdown leaves them alone.
    /// Default `false`: they are stopped with the backend.
    fn keeps_workers(&self) -> bool {
        false
    }

    /// Persistable, secret-free state of the runtime's session, stored by the backend after
    /// each spawn and handed to [`Runtime::recover`] after a restart. Default `None`.
    fn session_state(&self) -> Option<serde_json::Value> {
        None
    }

    /// Called once when the backend starts, with the state last stored from
    /// [`Runtime::session_state`]: resume that session (so [`Runtime::reattach`] can find
    /// its workers) or open a fresh one. Default: nothing.
    async fn recover(&self, saved: Option<serde_json::Value>) {
        let _ = saved;
    }

    /// Follows a worker again after a backend restart, from its [`WorkerControl::handle`]:
    /// events already recorded (runtime sequence `<= after_seq`) are skipped.
    ///
    /// # Errors
    /// [`RuntimeError::Unsupported`] (the default), or why the worker cannot be found.
    async fn reattach(
        &self,
        handle: &serde_json::Value,
        after_seq: u64,
    ) -> Result<(Arc<dyn WorkerControl>, Box<dyn WorkerEvents>), RuntimeError> {
        let _ = (handle, after_seq);
        Err(RuntimeError::Unsupported(format!(
            "runtime {:?} cannot follow workers across a restart",
            self.id()
        )))
    }

    /// Starts a worker.
    ///
    /// # Errors
    /// [`RuntimeError`].
    async fn spawn(
        &self,
        spec: WorkerSpec,
    ) -> Result<(Arc<dyn WorkerControl>, Box<dyn WorkerEvents>), RuntimeError>;
}

/// The embedded runtime: workers are processes on this host, spawned with `baton-exec`. They
/// inherit the backend's environment plus the requested variables, and are killed with their
/// process tree when the backend stops.
#[derive(Debug, Clone)]
pub struct LocalRuntime {
    id: String,
    default_cwd: PathBuf,
}

impl LocalRuntime {
    /// A local runtime with id `id` whose workers start in `default_cwd` unless told otherwise.
    pub fn new(id: impl Into<String>, default_cwd: impl Into<PathBuf>) -> Self {
        Self {
            id: id.into(),
            default_cwd: default_cwd.into(),
        }
    }
}

struct LocalControl(baton_exec::Process);

#[async_trait]
impl WorkerControl for LocalControl {
    fn pid(&self) -> Option<u32> {
        Some(self.0.pid())
    }

    async fn write_stdin(&self, bytes: &[u8]) -> Result<(), RuntimeError> {
        self.0
            .write_stdin(bytes)
            .await
            .map_err(|e| RuntimeError::Invalid {
                message: format!("cannot write to the worker's stdin: {e}"),
                source: Some(Box::new(e)),
            })
    }

    async fn interrupt(&self) -> Result<(), RuntimeError> {
        self.0
            .signal(baton_exec::Signal::Interrupt)
            .map_err(|e| RuntimeError::Invalid {
                message: format!("cannot interrupt the worker: {e}"),
                source: Some(Box::new(e)),
            })
    }

    async fn terminate(&self) {
        self.0.terminate();
    }
}

struct LocalEvents(baton_exec::EventStream);

#[async_trait]
impl WorkerEvents for LocalEvents {
    async fn next(&mut self) -> Option<WorkerOutput> {
        match self.0.recv().await? {
            baton_exec::ProcessEvent::Output { stream, chunk, .. } => Some(WorkerOutput::Output {
                stream: stream.name(),
                bytes: chunk.to_vec(),
                seq: None,
            }),
            baton_exec::ProcessEvent::Exited { status, .. } => Some(WorkerOutput::Exited {
                code: status.code(),
                signal: status.signal(),
                status: status.to_string(),
                seq: None,
            }),
            baton_exec::ProcessEvent::Closed { .. } => None,
        }
    }
}

#[async_trait]
impl Runtime for LocalRuntime {
    fn id(&self) -> &str {
        &self.id
    }

    fn kind(&self) -> &str {
        "local"
    }

    fn capabilities(&self) -> RuntimeCapabilities {
        RuntimeCapabilities {
            spawn: true,
            input: true,
            interrupt: true,
            terminate: true,
            tty: true,
        }
    }

    fn default_cwd(&self) -> PathBuf {
        self.default_cwd.clone()
    }

    async fn spawn(
        &self,
        spec: WorkerSpec,
    ) -> Result<(Arc<dyn WorkerControl>, Box<dyn WorkerEvents>), RuntimeError> {
        let (program, args) = spec.program_and_args()?;
        let mut command = baton_exec::CommandSpec::new(program, &spec.cwd)
            .args(args)
            .env_from_parent()
            .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(baton_exec::StdinMode::Piped);
        if spec.tty {
            command = command.pty(baton_exec::PtySize::new(24, 80));
        }
        let (process, events) =
            baton_exec::spawn_streaming(&command).map_err(|e| RuntimeError::Invalid {
                message: format!("cannot start {program:?}: {e}"),
                source: Some(Box::new(e)),
            })?;
        Ok((
            Arc::new(LocalControl(process)),
            Box::new(LocalEvents(events)),
        ))
    }
}
