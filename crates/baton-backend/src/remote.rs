//! A runtime on a remote exec server (`baton exec-server` or `codex exec-server`, DESIGN.md §2)
//! reached over WebSocket with `baton-client`'s [`ExecClient`].
//!
//! The exec-server client reconnects with backoff and resumes its session, catching every
//! process up with `process/read`, so a dropped connection loses no output. The runtime watches
//! the connection and gives every running worker a `backend.upstream_disconnect` diagnostic
//! event when it drops and `backend.upstream_reconnected` when it is back. The URL and token are
//! never exposed through the API.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use baton_client::{ClientOptions, Endpoint, ExecClient, ProcessEvent, RemoteProcess};
use baton_protocol::exec::{
    EnvInherit, EnvPolicy, OutputStream, ProcessId, ProcessSignal, StartParams, WirePath,
};
use tokio::sync::watch;

use crate::api::RuntimeCapabilities;
use crate::runtime::{
    Runtime, RuntimeError, WorkerControl, WorkerEvents, WorkerOutput, WorkerSpec,
};

/// How often the connection state is sampled.
const WATCH_INTERVAL: Duration = Duration::from_millis(100);

/// A runtime whose workers run on a remote exec server.
pub struct ExecServerRuntime {
    id: String,
    client: ExecClient,
    default_cwd: PathBuf,
    next: AtomicU64,
    connected: watch::Receiver<bool>,
    watcher: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for ExecServerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the endpoint: it may carry credentials.
        f.debug_struct("ExecServerRuntime")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Drop for ExecServerRuntime {
    fn drop(&mut self) {
        self.watcher.abort();
        self.client.close();
    }
}

impl ExecServerRuntime {
    /// Connects to the exec server at `url` (`ws://HOST:PORT`) with an optional bearer token.
    /// Workers spawned without `cwd` start in `default_cwd` (a path on the remote host).
    ///
    /// # Errors
    /// [`RuntimeError::Unavailable`] when the connection or handshake fails.
    pub async fn connect(
        id: impl Into<String>,
        url: &str,
        token: Option<String>,
        default_cwd: impl Into<PathBuf>,
        options: ClientOptions,
    ) -> Result<Self, RuntimeError> {
        let client = ExecClient::connect(
            Endpoint::WebSocket {
                url: url.to_owned(),
                token,
            },
            options,
        )
        .await
        .map_err(|e| {
            RuntimeError::Unavailable(format!("cannot connect to the exec server: {e}"))
        })?;
        let (tx, connected) = watch::channel(true);
        let probe = client.clone();
        let watcher = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(WATCH_INTERVAL);
            loop {
                ticker.tick().await;
                let now = probe.is_connected();
                tx.send_if_modified(|v| {
                    let changed = *v != now;
                    *v = now;
                    changed
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        Ok(Self {
            id: id.into(),
            client,
            default_cwd: default_cwd.into(),
            next: AtomicU64::new(1),
            connected,
            watcher,
        })
    }
}

struct RemoteControl {
    client: ExecClient,
    id: ProcessId,
}

#[async_trait]
impl WorkerControl for RemoteControl {
    fn pid(&self) -> Option<u32> {
        None
    }

    async fn write_stdin(&self, bytes: &[u8]) -> Result<(), RuntimeError> {
        self.client
            .write(&self.id, bytes.to_vec(), false)
            .await
            .map(|_| ())
            .map_err(|e| RuntimeError::Unavailable(format!("cannot write to the worker: {e}")))
    }

    async fn interrupt(&self) -> Result<(), RuntimeError> {
        self.client
            .signal(&self.id, ProcessSignal::Interrupt)
            .await
            .map_err(|e| RuntimeError::Unavailable(format!("cannot interrupt the worker: {e}")))
    }

    async fn terminate(&self) {
        if let Err(e) = self.client.terminate(&self.id).await {
            tracing::warn!(error = %e, "cannot terminate a remote worker");
        }
    }
}

struct RemoteEvents {
    process: RemoteProcess,
    /// `None` once the runtime's watcher is gone (then only process events remain).
    connected: Option<watch::Receiver<bool>>,
}

/// Waits for the connection state to change and returns it; never returns once the watcher is
/// gone.
async fn connection_change(rx: &mut Option<watch::Receiver<bool>>) -> bool {
    if let Some(r) = rx {
        if r.changed().await.is_ok() {
            return *r.borrow_and_update();
        }
        *rx = None;
    }
    std::future::pending().await
}

#[async_trait]
impl WorkerEvents for RemoteEvents {
    async fn next(&mut self) -> Option<WorkerOutput> {
        tokio::select! {
            biased;
            event = self.process.next_event() => {
                return match event? {
                    ProcessEvent::Output { stream, chunk, .. } => Some(WorkerOutput::Output {
                        stream: match stream {
                            OutputStream::Stdout => "stdout",
                            OutputStream::Stderr => "stderr",
                            OutputStream::Pty => "pty",
                        },
                        bytes: chunk,
                    }),
                    ProcessEvent::Exited { exit_code, .. } => Some(WorkerOutput::Exited {
                        code: Some(exit_code),
                        signal: None,
                        status: format!("exit code {exit_code}"),
                    }),
                    ProcessEvent::Closed { .. } => None,
                    ProcessEvent::Failed(message) => Some(WorkerOutput::Lost { message }),
                };
            }
            up = connection_change(&mut self.connected) => {
                return Some(if up {
                    WorkerOutput::Diagnostic {
                        code: "backend.upstream_reconnected".into(),
                        severity: "info",
                        message: "the connection to the runtime is back; output resumes without loss".into(),
                    }
                } else {
                    WorkerOutput::Diagnostic {
                        code: "backend.upstream_disconnect".into(),
                        severity: "warning",
                        message: "the connection to the runtime dropped; reconnecting".into(),
                    }
                });
            }
        }
    }
}

#[async_trait]
impl Runtime for ExecServerRuntime {
    fn id(&self) -> &str {
        &self.id
    }

    fn kind(&self) -> &'static str {
        "exec-server"
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
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let process_id =
            ProcessId::from(format!("baton-backend-{}-{n}", std::process::id()).as_str());
        let env: HashMap<String, String> = spec.env.into_iter().collect();
        let process = self
            .client
            .start(StartParams {
                process_id: process_id.clone(),
                argv: spec.argv,
                cwd: WirePath::uri_from_path(&spec.cwd),
                env,
                env_policy: Some(EnvPolicy {
                    inherit: EnvInherit::Core,
                    ..EnvPolicy::default()
                }),
                tty: spec.tty,
                pipe_stdin: true,
                arg0: None,
            })
            .await
            .map_err(|e| match e {
                baton_client::ClientError::Server { .. } => RuntimeError::Invalid {
                    message: format!("the exec server refused the worker: {e}"),
                    source: Some(Box::new(e)),
                },
                other => RuntimeError::Unavailable(format!("cannot start the worker: {other}")),
            })?;
        let mut connected = self.connected.clone();
        connected.borrow_and_update();
        Ok((
            Arc::new(RemoteControl {
                client: self.client.clone(),
                id: process_id,
            }),
            Box::new(RemoteEvents {
                process,
                connected: Some(connected),
            }),
        ))
    }
}
