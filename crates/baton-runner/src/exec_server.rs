//! The `exec-server` provider: a workspace on a host running an exec server (DESIGN.md §2,
//! Baton's `baton exec-server` or Codex's), reached over WebSocket through `baton-client`.
//!
//! Everything goes through the protocol: processes (`process/*`), files (`fs/*`), and helper
//! commands on the runner for what the protocol lacks — `realpath -m` (symlink-safe path
//! checks), `tar` (snapshots, directory artifacts), `chmod` (read-only manifest entries) and
//! `bash` (`/dev/tcp` bridge processes that tunnel exposed ports over the exec-server
//! connection, so no port is opened to the network).
//!
//! A dropped connection is handled by `baton-client` (reconnect, `resumeSessionId`, catch-up of
//! every process without loss or duplication); a restarted caller resumes with
//! [`RunnerProvider::resume_session`] from the persisted state, which holds the server session
//! id (the server keeps a detached session for its TTL, 60 s by default).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use baton_client::{ClientError, ClientOptions, Endpoint, ExecClient, ProcessEvent, RemoteProcess};
use baton_protocol::exec::{OutputStream, ProcessId, WriteStatus, error_codes};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::local::{artifact_metadata, store_snapshot};
use crate::process::{CollectedOutput, StdinOp};
use crate::proxy::ConnHandler;
use crate::{
    Access, PathPolicy, RunnerArtifactExportRequest, RunnerArtifactExportResult,
    RunnerCapabilities, RunnerCommandRequest, RunnerDestination, RunnerError, RunnerEvent,
    RunnerFileReadRequest, RunnerFileReadResult, RunnerFileWriteRequest, RunnerMount,
    RunnerMountCapabilities, RunnerPortRequest, RunnerPortResult, RunnerProcess, RunnerProvider,
    RunnerSecretRef, RunnerSession, RunnerSessionState, RunnerSignal, RunnerSnapshotRef,
    RunnerStores, RunnerStream, check_no_secrets, compress, decompress, normalize_lexically,
};

/// Size of the parts a snapshot's tar is written in when restoring on a remote runner (16 MiB:
/// base64 in a JSON-RPC message stays far below the 64 MiB message limit).
const RESTORE_PART_BYTES: usize = 16 << 20;

/// The provider id of [`ExecServerProvider`].
pub const EXEC_SERVER_PROVIDER_ID: &str = "exec-server";

/// `PATH` of commands when the destination sets none.
pub const DEFAULT_REMOTE_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The provider id of [`SshProvider`].
pub const SSH_PROVIDER_ID: &str = "ssh";

/// Destination `config` of the `exec-server` provider.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExecServerConfig {
    /// `ws://HOST:PORT` (or `wss://`).
    pub url: String,
    /// Absolute workspace path on the server host (created if missing; must lie under the
    /// server's `--root`s).
    pub workspace: PathBuf,
    /// Extra absolute read roots on the server host.
    #[serde(default)]
    pub read_roots: Vec<PathBuf>,
    /// Bearer token, by reference ([`RunnerSecretRef::resolve`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<RunnerSecretRef>,
    /// `PATH` of commands (default [`DEFAULT_REMOTE_PATH`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// Destination `config` of the `ssh` provider: `ssh -T -o BatchMode=yes [-p PORT] [-i IDENTITY]
/// [-o OPT]… DESTINATION -- mkdir -p -- WORKSPACE && exec BATON exec-server --listen stdio
/// --root WORKSPACE --root READ_ROOT…` (remote words shell-quoted).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SshConfig {
    /// `user@host` (or a host alias of the ssh config).
    pub destination: String,
    /// Port (default: ssh's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Private key file on this host (a path, not a secret value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_file: Option<PathBuf>,
    /// Extra `-o` options (`StrictHostKeyChecking=accept-new`, `UserKnownHostsFile=…`).
    #[serde(default)]
    pub ssh_options: Vec<String>,
    /// The `baton` binary on the host (default `baton`, looked up in the remote `PATH`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baton: Option<String>,
    /// The `ssh` client on this host (default `ssh`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<String>,
    /// Absolute workspace path on the host (created if missing).
    pub workspace: PathBuf,
    /// Extra absolute read roots on the host.
    #[serde(default)]
    pub read_roots: Vec<PathBuf>,
    /// `PATH` of commands (default [`DEFAULT_REMOTE_PATH`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl SshConfig {
    /// The argv of the `ssh` command that starts the stdio exec server.
    pub fn argv(&self) -> Vec<String> {
        let mut argv = vec![
            self.ssh.clone().unwrap_or_else(|| "ssh".into()),
            "-T".into(),
            "-o".into(),
            "BatchMode=yes".into(),
        ];
        if let Some(port) = self.port {
            argv.extend(["-p".into(), port.to_string()]);
        }
        if let Some(key) = &self.identity_file {
            argv.extend(["-i".into(), key.to_string_lossy().into_owned()]);
        }
        for opt in &self.ssh_options {
            argv.extend(["-o".into(), opt.clone()]);
        }
        argv.extend([self.destination.clone(), "--".into()]);
        let mut remote = vec!["mkdir".to_string(), "-p".into(), "--".into()];
        remote.push(self.workspace.to_string_lossy().into_owned());
        remote.extend([
            "&&".into(),
            "exec".into(),
            self.baton.clone().unwrap_or_else(|| "baton".into()),
            "exec-server".into(),
            "--listen".into(),
            "stdio".into(),
        ]);
        for root in std::iter::once(&self.workspace).chain(&self.read_roots) {
            remote.extend(["--root".into(), root.to_string_lossy().into_owned()]);
        }
        // ssh hands the remote command to the login shell: quote every word but `&&`.
        argv.extend(remote.iter().map(|w| {
            if w == "&&" {
                w.clone()
            } else {
                shlex::try_quote(w).map_or_else(|_| w.clone(), |q| q.into_owned())
            }
        }));
        argv
    }
}

/// How a remote session reaches its exec server (persisted in the session state).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "transport", rename_all = "snake_case")]
enum Transport {
    WebSocket(ExecServerConfig),
    Ssh(SshConfig),
}

impl Transport {
    fn provider_id(&self) -> &'static str {
        match self {
            Transport::WebSocket(_) => EXEC_SERVER_PROVIDER_ID,
            Transport::Ssh(_) => SSH_PROVIDER_ID,
        }
    }

    fn roots(&self) -> (&PathBuf, &[PathBuf]) {
        match self {
            Transport::WebSocket(c) => (&c.workspace, &c.read_roots),
            Transport::Ssh(c) => (&c.workspace, &c.read_roots),
        }
    }

    fn path_env(&self) -> String {
        match self {
            Transport::WebSocket(c) => c.path.clone(),
            Transport::Ssh(c) => c.path.clone(),
        }
        .unwrap_or_else(|| DEFAULT_REMOTE_PATH.into())
    }

    /// Whether the server outlives a connection (WebSocket), so that a session can be resumed
    /// by id; a stdio server over ssh ends with its connection.
    fn resumable(&self) -> bool {
        matches!(self, Transport::WebSocket(_))
    }

    fn parse(provider_id: &str, destination: &RunnerDestination) -> Result<Self, RunnerError> {
        if destination.provider_id != provider_id {
            return Err(RunnerError::InvalidDestination(format!(
                "destination {:?} is for provider {:?}, not {provider_id:?}",
                destination.id, destination.provider_id
            )));
        }
        check_no_secrets(&destination.config)?;
        let bad = |e: serde_json::Error| {
            RunnerError::InvalidDestination(format!("bad {provider_id} config: {e}"))
        };
        let transport = if provider_id == SSH_PROVIDER_ID {
            let config: SshConfig =
                serde_json::from_value(destination.config.clone()).map_err(bad)?;
            if config.destination.is_empty() || config.destination.starts_with('-') {
                return Err(RunnerError::InvalidDestination(format!(
                    "bad ssh destination {:?}",
                    config.destination
                )));
            }
            Transport::Ssh(config)
        } else {
            let config: ExecServerConfig =
                serde_json::from_value(destination.config.clone()).map_err(bad)?;
            if !(config.url.starts_with("ws://") || config.url.starts_with("wss://")) {
                return Err(RunnerError::InvalidDestination(format!(
                    "exec-server url {:?} is not ws:// or wss://",
                    config.url
                )));
            }
            Transport::WebSocket(config)
        };
        let (ws, read_roots) = transport.roots();
        for p in std::iter::once(ws).chain(read_roots) {
            if !p.is_absolute() {
                return Err(RunnerError::RootNotAbsolute(p.clone()));
            }
        }
        crate::manifest::validate(&destination.default_manifest, provider_id)?;
        Ok(transport)
    }

    async fn connect(
        &self,
        options: &ClientOptions,
        resume: Option<String>,
    ) -> Result<ExecClient, RunnerError> {
        let mut options = ClientOptions {
            resume_session_id: resume,
            ..options.clone()
        };
        let endpoint = match self {
            Transport::WebSocket(c) => Endpoint::WebSocket {
                url: c.url.clone(),
                token: c.token.as_ref().map(RunnerSecretRef::resolve).transpose()?,
            },
            Transport::Ssh(c) => {
                // A new ssh connection starts a new server: nothing to resume.
                options.reconnect.max_attempts = 0;
                Endpoint::Command {
                    argv: c.argv(),
                    cwd: None,
                    env: Vec::new(),
                }
            }
        };
        Ok(ExecClient::connect(endpoint, options).await?)
    }
}

/// What [`RunnerSessionState::metadata`] holds for a remote session.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RemoteMeta {
    #[serde(flatten)]
    transport: Transport,
    /// Resolved (remote `realpath`) roots.
    resolved_workspace: PathBuf,
    resolved_read_roots: Vec<PathBuf>,
    server_session_id: String,
    /// Running commands: command id → server process id (for `attach_command` after a resume).
    #[serde(default)]
    commands: HashMap<String, String>,
    /// Object-storage mounts synced back on close.
    #[serde(default)]
    mounts: Vec<RunnerMount>,
}

/// The shared implementation of the exec-server and ssh providers.
#[derive(Debug, Clone)]
struct RemoteProvider {
    id: &'static str,
    stores: RunnerStores,
    options: ClientOptions,
}

impl RemoteProvider {
    fn new(id: &'static str, base: &Path) -> Result<Self, RunnerError> {
        Ok(Self {
            id,
            stores: RunnerStores::open(base)?,
            options: ClientOptions {
                client_name: "baton-runner".into(),
                ..ClientOptions::default()
            },
        })
    }

    async fn create(
        &self,
        destination: RunnerDestination,
        snapshot: Option<RunnerSnapshotRef>,
    ) -> Result<Arc<dyn RunnerSession>, RunnerError> {
        let transport = Transport::parse(self.id, &destination)?;
        let archive = match &snapshot {
            Some(s) => Some(self.stores.snapshots.get(&s.snapshot_id)?),
            None => None,
        };
        let client = transport.connect(&self.options, None).await?;
        let (workspace, read_roots) = transport.roots();
        client.create_directory(workspace, true).await?;
        let mut argv = vec!["realpath".to_string(), "-m".into(), "--".into()];
        argv.extend(
            std::iter::once(workspace)
                .chain(read_roots)
                .map(|p| p.to_string_lossy().into_owned()),
        );
        let out = capture(&client, &argv, workspace, &transport.path_env()).await?;
        let resolved = remote_ok("realpath", out)?;
        let mut lines = resolved.lines().map(PathBuf::from);
        let resolved_workspace = lines.next().ok_or_else(|| RunnerError::Remote {
            what: "realpath",
            message: "no output".into(),
        })?;
        let meta = RemoteMeta {
            resolved_workspace,
            resolved_read_roots: lines.collect(),
            server_session_id: client.session_id(),
            transport,
            commands: HashMap::new(),
            mounts: Vec::new(),
        };
        let session = Arc::new(RemoteSession::new(
            client,
            crate::fresh_id(),
            destination.id.clone(),
            snapshot,
            meta,
            self.stores.clone(),
        )?);
        let setup = async {
            if let Some(archive) = archive {
                session.restore(&archive).await?;
            }
            crate::manifest::apply(&*session, &destination.default_manifest, self.id).await
        };
        if let Err(e) = setup.await {
            session.close().await.ok();
            return Err(e);
        }
        *lock(&session.mounts) = destination.default_manifest.mounts.clone();
        Ok(session)
    }

    async fn resume(
        &self,
        state: RunnerSessionState,
    ) -> Result<Arc<dyn RunnerSession>, RunnerError> {
        if state.provider_id != self.id {
            return Err(RunnerError::InvalidDestination(format!(
                "session state of provider {:?}",
                state.provider_id
            )));
        }
        let mut meta: RemoteMeta = serde_json::from_value(state.metadata.clone()).map_err(|e| {
            RunnerError::InvalidDestination(format!("bad {} session state: {e}", self.id))
        })?;
        if meta.transport.provider_id() != self.id {
            return Err(RunnerError::InvalidDestination(format!(
                "session state transport is not {}",
                self.id
            )));
        }
        let client = if meta.transport.resumable() {
            // The previous connection may still be closing: the server answers "session
            // already attached" until it notices; retry with a short backoff (about 10 s).
            let mut delay = std::time::Duration::from_millis(20);
            let mut attempts = 0;
            loop {
                match meta
                    .transport
                    .connect(&self.options, Some(meta.server_session_id.clone()))
                    .await
                {
                    Err(RunnerError::Client(ClientError::Server { code, .. }))
                        if code == error_codes::SESSION_ATTACHED && attempts < 30 =>
                    {
                        attempts += 1;
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(std::time::Duration::from_millis(500));
                    }
                    other => break other?,
                }
            }
        } else {
            // Files persist; processes of the previous connection ended with its server.
            let client = meta.transport.connect(&self.options, None).await?;
            meta.server_session_id = client.session_id();
            client
        };
        Ok(Arc::new(RemoteSession::new(
            client,
            state.session_id,
            state.destination_id,
            state.snapshot,
            meta,
            self.stores.clone(),
        )?))
    }
}

pub(crate) fn exec_server_capabilities() -> RunnerCapabilities {
    RunnerCapabilities {
        command_exec: true,
        file_read: true,
        file_write: true,
        port_preview: true,
        snapshots: true,
        cancellation: true,
        artifact_export: true,
        mounts: RunnerMountCapabilities {
            s3: true,
            ..RunnerMountCapabilities::default()
        },
    }
}

/// Sessions on exec servers reached over WebSocket (destination config:
/// [`ExecServerConfig`]).
#[derive(Debug, Clone)]
pub struct ExecServerProvider(RemoteProvider);

/// Sessions on hosts reached with `ssh`, which starts `baton exec-server --listen stdio` there
/// (destination config: [`SshConfig`]). The server lives as long as the ssh connection, so a
/// dropped connection ends the session's processes; `resume_session` reconnects to the same
/// workspace (files persist) with a new server session.
#[derive(Debug, Clone)]
pub struct SshProvider(RemoteProvider);

macro_rules! remote_provider_impl {
    ($ty:ident, $id:expr, $hint:expr) => {
        impl $ty {
            /// A provider with its snapshot and artifact stores under `base` (on this host) and
            /// default client options.
            ///
            /// # Errors
            /// [`RunnerError::Io`] when the stores cannot be created.
            pub fn new(base: &Path) -> Result<Self, RunnerError> {
                Ok(Self(RemoteProvider::new($id, base)?))
            }

            /// Replaces the client options (timeouts, reconnect policy); `resume_session_id`
            /// is set per session and ignored here.
            pub fn with_client_options(mut self, options: ClientOptions) -> Self {
                self.0.options = options;
                self
            }

            /// The stores (snapshots, artifacts).
            pub fn stores(&self) -> &RunnerStores {
                &self.0.stores
            }
        }

        #[async_trait]
        impl RunnerProvider for $ty {
            fn id(&self) -> String {
                $id.into()
            }

            fn capabilities(&self) -> RunnerCapabilities {
                exec_server_capabilities()
            }

            fn setup_hint(&self) -> Option<String> {
                Some($hint.into())
            }

            async fn validate_destination(
                &self,
                destination: &RunnerDestination,
            ) -> Result<(), RunnerError> {
                Transport::parse($id, destination).map(|_| ())
            }

            async fn create_session(
                &self,
                destination: RunnerDestination,
            ) -> Result<Arc<dyn RunnerSession>, RunnerError> {
                self.0.create(destination, None).await
            }

            async fn create_session_from_snapshot(
                &self,
                destination: RunnerDestination,
                snapshot: RunnerSnapshotRef,
            ) -> Result<Arc<dyn RunnerSession>, RunnerError> {
                self.0.create(destination, Some(snapshot)).await
            }

            async fn resume_session(
                &self,
                state: RunnerSessionState,
            ) -> Result<Arc<dyn RunnerSession>, RunnerError> {
                self.0.resume(state).await
            }
        }
    };
}

remote_provider_impl!(
    ExecServerProvider,
    EXEC_SERVER_PROVIDER_ID,
    "destinations need `url` (ws://HOST:PORT of `baton exec-server`) and an absolute \
     `workspace` under the server's --root; a destination whose config has `token: {id}` reads \
     the bearer token from the environment variable BATON_SECRET_<ID> (id upper-cased, other \
     characters as `_`); the runner host needs bash, tar, realpath and chmod"
);

remote_provider_impl!(
    SshProvider,
    SSH_PROVIDER_ID,
    "destinations need `destination` (user@host) and an absolute `workspace`; the host needs \
     `baton` in its PATH (or `baton` set to its path), bash, tar, realpath and chmod; \
     authentication is ssh's own (agent, `identity_file`), never a value in the config"
);

type Commands = Arc<Mutex<HashMap<String, ProcessId>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A session of [`ExecServerProvider`].
struct RemoteSession {
    client: ExecClient,
    provider_id: &'static str,
    state: RunnerSessionState,
    policy: PathPolicy,
    stores: RunnerStores,
    path_env: String,
    commands: Commands,
    mounts: Mutex<Vec<RunnerMount>>,
    pumps: Mutex<Vec<JoinHandle<()>>>,
    shutdown: watch::Sender<bool>,
    ports: Mutex<Vec<JoinHandle<()>>>,
    closed: AtomicBool,
}

/// How long `close` waits for terminated commands to report their exit before failing them.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

fn env_map(path_env: &str, extra: &[(String, String)]) -> HashMap<String, String> {
    let mut env = HashMap::from([("PATH".to_string(), path_env.to_string())]);
    env.extend(extra.iter().cloned());
    env
}

/// Runs `argv` in `cwd` on the server to completion and gathers its raw output.
async fn capture(
    client: &ExecClient,
    argv: &[String],
    cwd: &Path,
    path_env: &str,
) -> Result<CollectedOutput, RunnerError> {
    let id = format!("baton-runner-helper-{}", crate::fresh_id());
    let mut process = client
        .spawn(&id, argv, cwd, env_map(path_env, &[]), false, false)
        .await?;
    let mut out = CollectedOutput::default();
    while let Some(event) = process.next_event().await {
        match event {
            ProcessEvent::Output { stream, chunk, .. } => match stream {
                OutputStream::Stderr => out.stderr.extend(chunk),
                _ => out.stdout.extend(chunk),
            },
            ProcessEvent::Exited { exit_code, .. } => out.exit_code = Some(exit_code),
            ProcessEvent::Closed { .. } => break,
            ProcessEvent::Failed(message) => {
                out.failure = Some(message);
                break;
            }
        }
    }
    Ok(out)
}

/// The stdout of a helper that must exit 0 (trailing newline trimmed).
fn remote_ok(what: &'static str, out: CollectedOutput) -> Result<String, RunnerError> {
    if out.exit_code == Some(0) {
        let s = String::from_utf8_lossy(&out.stdout);
        Ok(s.strip_suffix('\n').unwrap_or(&s).to_string())
    } else {
        Err(remote_err(what, &out))
    }
}

/// The error of a helper that did not exit 0.
fn remote_err(what: &'static str, out: &CollectedOutput) -> RunnerError {
    RunnerError::Remote {
        what,
        message: match &out.failure {
            Some(f) => f.clone(),
            None => format!(
                "exit {:?}: {}",
                out.exit_code,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        },
    }
}

fn not_found_or(path: &Path, e: ClientError) -> RunnerError {
    match e {
        ClientError::Server { code, .. } if code == error_codes::NOT_FOUND => {
            RunnerError::NotFound(path.to_path_buf())
        }
        ClientError::Server { code, .. } if code == error_codes::ACCESS_DENIED => {
            RunnerError::AccessDenied {
                path: path.to_path_buf(),
                allowed: "exec server roots",
            }
        }
        e => RunnerError::Client(e),
    }
}

impl RemoteSession {
    fn new(
        client: ExecClient,
        session_id: String,
        destination_id: String,
        snapshot: Option<RunnerSnapshotRef>,
        meta: RemoteMeta,
        stores: RunnerStores,
    ) -> Result<Self, RunnerError> {
        let policy = PathPolicy::from_resolved(
            meta.resolved_workspace.clone(),
            meta.resolved_read_roots.clone(),
        )?;
        let metadata = serde_json::to_value(&meta)
            .map_err(|e| RunnerError::InvalidDestination(format!("cannot encode state: {e}")))?;
        check_no_secrets(&metadata)?;
        let path_env = meta.transport.path_env();
        let mounts = meta.mounts.clone();
        // Processes outlive a connection only on a server that outlives it.
        let commands: HashMap<String, ProcessId> = if meta.transport.resumable() {
            meta.commands
                .iter()
                .map(|(k, v)| (k.clone(), ProcessId::from(v.as_str())))
                .collect()
        } else {
            HashMap::new()
        };
        Ok(Self {
            client,
            provider_id: meta.transport.provider_id(),
            state: RunnerSessionState {
                provider_id: meta.transport.provider_id().into(),
                session_id,
                destination_id,
                snapshot,
                metadata,
            },
            policy,
            stores,
            path_env,
            commands: Arc::new(Mutex::new(commands)),
            mounts: Mutex::new(mounts),
            pumps: Mutex::default(),
            shutdown: watch::channel(false).0,
            ports: Mutex::default(),
            closed: AtomicBool::new(false),
        })
    }

    fn ensure_open(&self) -> Result<(), RunnerError> {
        if self.closed.load(Ordering::SeqCst) {
            Err(RunnerError::Closed)
        } else {
            Ok(())
        }
    }

    async fn helper(
        &self,
        what: &'static str,
        argv: &[String],
    ) -> Result<CollectedOutput, RunnerError> {
        let out = capture(&self.client, argv, self.policy.workspace(), &self.path_env).await?;
        if out.exit_code == Some(0) {
            Ok(out)
        } else {
            Err(remote_err(what, &out))
        }
    }

    /// Forwards a followed remote process to a [`RunnerProcess`] (event pump and stdin task).
    fn follow(&self, id: String, mut remote: RemoteProcess) -> RunnerProcess {
        let pid = remote.id().clone();
        let (tx, rx) = mpsc::channel(64);
        let (stdin_tx, mut stdin_rx) = mpsc::channel::<StdinOp>(8);
        let commands = self.commands.clone();
        let pump_id = id.clone();
        let mut shutdown = self.shutdown.subscribe();
        let pump = tokio::spawn(async move {
            let mut receiver_gone = false;
            loop {
                let event = tokio::select! {
                    event = remote.next_event() => match event {
                        Some(event) => event,
                        None => break,
                    },
                    _ = shutdown.wait_for(|closed| *closed) => {
                        ProcessEvent::Failed("session closed".into())
                    }
                };
                let (converted, last) = match event {
                    ProcessEvent::Output { seq, stream, chunk } => (
                        RunnerEvent::Output {
                            seq,
                            stream: stream_of(stream),
                            chunk,
                        },
                        false,
                    ),
                    ProcessEvent::Exited { seq, exit_code } => {
                        (RunnerEvent::Exited { seq, exit_code }, false)
                    }
                    ProcessEvent::Closed { seq } => (RunnerEvent::Closed { seq }, true),
                    ProcessEvent::Failed(message) => (RunnerEvent::Failed { message }, true),
                };
                if last {
                    lock(&commands).remove(&pump_id);
                }
                if !receiver_gone && tx.send(converted).await.is_err() {
                    receiver_gone = true;
                }
                if last {
                    break;
                }
            }
        });
        {
            let mut pumps = lock(&self.pumps);
            pumps.retain(|p| !p.is_finished());
            pumps.push(pump);
        }
        let client = self.client.clone();
        let stdin_id = id.clone();
        tokio::spawn(async move {
            while let Some(op) = stdin_rx.recv().await {
                let (bytes, close, reply) = match op {
                    StdinOp::Write(b, r) => (b, false, r),
                    StdinOp::Close(r) => (Vec::new(), true, r),
                };
                let result = match client.write(&pid, bytes, close).await {
                    Ok(WriteStatus::Accepted) => Ok(()),
                    Ok(_) => Err(RunnerError::StdinClosed(stdin_id.clone())),
                    Err(e) => Err(RunnerError::Client(e)),
                };
                let _ = reply.send(result);
            }
        });
        RunnerProcess::new(id, rx, stdin_tx)
    }

    /// Resolves `path` on the server (`realpath -m`) and checks it against the roots.
    async fn resolve(&self, path: &Path, access: Access) -> Result<PathBuf, RunnerError> {
        let abs = normalize_lexically(&self.policy.absolutize(path));
        let argv = [
            "realpath".to_string(),
            "-m".into(),
            "--".into(),
            abs.to_string_lossy().into_owned(),
        ];
        let out = self.helper("realpath", &argv).await?;
        let resolved = remote_ok("realpath", out)?;
        let resolved = PathBuf::from(resolved);
        self.policy.check(path, &resolved, access)?;
        Ok(resolved)
    }

    /// Unpacks a snapshot archive (tar+zstd) into the workspace. The tar goes over in parts of
    /// [`RESTORE_PART_BYTES`] (`fs/writeFile` each, well under the message size limit, and no
    /// stdin close needed, so Codex's server works too) into a temporary directory in the
    /// workspace, then `cat parts | tar -x` unpacks them and the directory is removed.
    async fn restore(&self, archive: &[u8]) -> Result<(), RunnerError> {
        let tar = decompress(archive)?;
        let parts = self
            .policy
            .workspace()
            .join(format!(".baton-restore-{}", crate::fresh_id()));
        self.client.create_directory(&parts, true).await?;
        let result = self.restore_parts(&tar, &parts).await;
        self.client.remove(&parts, true, true).await?;
        result
    }

    async fn restore_parts(&self, tar: &[u8], parts: &Path) -> Result<(), RunnerError> {
        for (i, chunk) in tar.chunks(RESTORE_PART_BYTES).enumerate() {
            self.client
                .write_file(&parts.join(format!("{i:08}")), chunk.to_vec())
                .await?;
        }
        let argv = [
            "bash".to_string(),
            "-c".into(),
            "set -o pipefail; cat \"$0\"/* | tar -xf - -C \"$1\"".into(),
            parts.to_string_lossy().into_owned(),
            self.policy.workspace().to_string_lossy().into_owned(),
        ];
        self.helper("tar", &argv).await.map(|_| ())
    }

    /// A tar stream of the directory `dir` on the server.
    async fn tar_remote(&self, dir: &Path) -> Result<Vec<u8>, RunnerError> {
        let argv = [
            "tar".to_string(),
            "-C".into(),
            dir.to_string_lossy().into_owned(),
            "-cf".into(),
            "-".into(),
            ".".into(),
        ];
        Ok(self.helper("tar", &argv).await?.stdout)
    }

    /// The per-connection handler of an exposed port: a `bash` process on the server connects
    /// to `127.0.0.1:port` (`/dev/tcp`) and copies stdin to the socket and the socket to stdout;
    /// it exits when the server side closes.
    fn tunnel(&self, port: u16) -> ConnHandler {
        let client = self.client.clone();
        let commands = self.commands.clone();
        let cwd = self.policy.workspace().to_path_buf();
        let path_env = self.path_env.clone();
        Arc::new(move |inbound: TcpStream| {
            let client = client.clone();
            let commands = commands.clone();
            let cwd = cwd.clone();
            let path_env = path_env.clone();
            Box::pin(async move {
                let id = format!("baton-runner-port-{port}-{}", crate::fresh_id());
                let argv = [
                    "bash".to_string(),
                    "-c".into(),
                    "exec 3<>/dev/tcp/127.0.0.1/$0 || exit 1; exec 4<&0; cat <&4 >&3 & w=$!; \
                     cat <&3; kill $w 2>/dev/null; exit 0"
                        .into(),
                    port.to_string(),
                ];
                let mut process = match client
                    .spawn(&id, &argv, &cwd, env_map(&path_env, &[]), false, true)
                    .await
                {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::debug!("port tunnel to {port} failed to start: {e}");
                        return;
                    }
                };
                let pid = process.id().clone();
                lock(&commands).insert(id.clone(), pid.clone());
                let (mut rd, mut wr) = inbound.into_split();
                let up = async {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match rd.read(&mut buf).await {
                            Ok(0) | Err(_) => {
                                let _ = client.write(&pid, Vec::new(), true).await;
                                break;
                            }
                            Ok(n) => {
                                if client.write(&pid, buf[..n].to_vec(), false).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                };
                let down = async {
                    while let Some(event) = process.next_event().await {
                        let written = match event {
                            ProcessEvent::Output {
                                stream: OutputStream::Stdout,
                                chunk,
                                ..
                            } => wr.write_all(&chunk).await.is_ok(),
                            ProcessEvent::Closed { .. } | ProcessEvent::Failed(_) => break,
                            _ => true,
                        };
                        if !written {
                            let _ = client.terminate(&pid).await;
                            break;
                        }
                    }
                    let _ = wr.shutdown().await;
                };
                tokio::pin!(up);
                tokio::pin!(down);
                tokio::select! {
                    () = &mut down => {}
                    () = &mut up => down.await,
                }
                lock(&commands).remove(&id);
            })
        })
    }
}

impl Drop for RemoteSession {
    /// Dropping without `close` detaches: processes keep running on the server (a WebSocket
    /// server keeps the session for its TTL, so `resume_session` can reattach), followers here
    /// end with [`RunnerEvent::Failed`], and the connection is closed.
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
        self.client.close();
    }
}

fn stream_of(s: OutputStream) -> RunnerStream {
    match s {
        OutputStream::Stdout => RunnerStream::Stdout,
        OutputStream::Stderr => RunnerStream::Stderr,
        OutputStream::Pty => RunnerStream::Pty,
    }
}

#[async_trait]
impl RunnerSession for RemoteSession {
    fn state(&self) -> RunnerSessionState {
        let mut state = self.state.clone();
        let mounts = lock(&self.mounts);
        let commands: HashMap<String, String> = lock(&self.commands)
            .iter()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect();
        if let serde_json::Value::Object(meta) = &mut state.metadata {
            if let Ok(v) = serde_json::to_value(&*mounts) {
                meta.insert("mounts".into(), v);
            }
            if let Ok(v) = serde_json::to_value(&commands) {
                meta.insert("commands".into(), v);
            }
        }
        state
    }

    fn capabilities(&self) -> RunnerCapabilities {
        exec_server_capabilities()
    }

    fn paths(&self) -> &PathPolicy {
        &self.policy
    }

    async fn spawn(&self, request: RunnerCommandRequest) -> Result<RunnerProcess, RunnerError> {
        self.ensure_open()?;
        let cwd = self
            .resolve(
                request.cwd.as_deref().unwrap_or(Path::new(".")),
                Access::Write,
            )
            .await?;
        let id = request.command_id.clone();
        let process_id = format!("{id}#{}", crate::fresh_id());
        {
            let mut commands = lock(&self.commands);
            if commands.contains_key(&id) {
                return Err(RunnerError::DuplicateCommand(id));
            }
            commands.insert(id.clone(), ProcessId::from(process_id.as_str()));
        }
        let mut argv = vec![request.program.clone()];
        argv.extend(request.args.iter().cloned());
        let started = self
            .client
            .spawn(
                &process_id,
                &argv,
                &cwd,
                env_map(&self.path_env, &request.env),
                request.tty,
                true,
            )
            .await;
        let remote = match started {
            Ok(p) => p,
            Err(e) => {
                lock(&self.commands).remove(&id);
                return Err(e.into());
            }
        };
        Ok(self.follow(id, remote))
    }

    async fn attach_command(&self, command_id: &str) -> Result<RunnerProcess, RunnerError> {
        self.ensure_open()?;
        let pid = lock(&self.commands)
            .get(command_id)
            .cloned()
            .ok_or_else(|| RunnerError::UnknownCommand(command_id.to_string()))?;
        let remote = self.client.attach(&pid.0)?;
        Ok(self.follow(command_id.to_string(), remote))
    }

    async fn cancel_command(&self, command_id: &str) -> Result<bool, RunnerError> {
        let pid = lock(&self.commands).get(command_id).cloned();
        match pid {
            Some(pid) => {
                self.client.terminate(&pid).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn signal_command(
        &self,
        command_id: &str,
        signal: RunnerSignal,
    ) -> Result<bool, RunnerError> {
        let pid = lock(&self.commands).get(command_id).cloned();
        match pid {
            Some(pid) => {
                self.client.signal(&pid, signal).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn is_connected(&self) -> bool {
        self.client.is_connected()
    }

    async fn read_file(
        &self,
        request: RunnerFileReadRequest,
    ) -> Result<RunnerFileReadResult, RunnerError> {
        self.ensure_open()?;
        let path = self.resolve(&request.path, Access::Read).await?;
        let contents = self
            .client
            .read_file(&path)
            .await
            .map_err(|e| not_found_or(&request.path, e))?;
        Ok(RunnerFileReadResult { path, contents })
    }

    async fn create_dir(&self, path: &Path) -> Result<(), RunnerError> {
        self.ensure_open()?;
        let resolved = self.resolve(path, Access::Write).await?;
        self.client
            .create_directory(&resolved, true)
            .await
            .map_err(|e| not_found_or(path, e))
    }

    async fn write_file(&self, request: RunnerFileWriteRequest) -> Result<(), RunnerError> {
        self.ensure_open()?;
        let path = self.resolve(&request.path, Access::Write).await?;
        if let Some(parent) = path.parent() {
            self.client
                .create_directory(parent, true)
                .await
                .map_err(|e| not_found_or(&request.path, e))?;
        }
        self.client
            .write_file(&path, request.contents)
            .await
            .map_err(|e| not_found_or(&request.path, e))
    }

    async fn expose_port(
        &self,
        request: RunnerPortRequest,
    ) -> Result<RunnerPortResult, RunnerError> {
        self.ensure_open()?;
        let (addr, task) = crate::proxy::listen(self.tunnel(request.port))
            .await
            .map_err(|e| RunnerError::io("cannot bind the port proxy", e))?;
        lock(&self.ports).push(task);
        Ok(RunnerPortResult {
            port: request.port,
            url: Some(format!("http://{addr}")),
        })
    }

    async fn export_artifact(
        &self,
        request: RunnerArtifactExportRequest,
    ) -> Result<RunnerArtifactExportResult, RunnerError> {
        self.ensure_open()?;
        let path = self.resolve(&request.path, Access::Read).await?;
        let meta = self
            .client
            .get_metadata(&path)
            .await
            .map_err(|e| not_found_or(&request.path, e))?;
        let (bytes, kind) = if meta.is_directory {
            if !request.recursive {
                return Err(RunnerError::IsDirectory(request.path));
            }
            (compress(&self.tar_remote(&path).await?)?, "directory")
        } else {
            let bytes = self
                .client
                .read_file(&path)
                .await
                .map_err(|e| not_found_or(&request.path, e))?;
            (bytes, "file")
        };
        let stores = self.stores.clone();
        let p = path.clone();
        let (id, metadata) = tokio::task::spawn_blocking(move || {
            let (id, size) = stores.artifacts.put_bytes(&bytes)?;
            let metadata = artifact_metadata(&p, &id, size, kind);
            stores.artifacts.put_metadata(&id, &metadata)?;
            Ok::<_, RunnerError>((id, metadata))
        })
        .await
        .map_err(|e| RunnerError::io("artifact export task failed", e.into()))??;
        Ok(RunnerArtifactExportResult {
            path,
            artifact_id: id,
            url: None,
            metadata,
        })
    }

    async fn snapshot(&self) -> Result<RunnerSnapshotRef, RunnerError> {
        self.ensure_open()?;
        let tar = self.tar_remote(self.policy.workspace()).await?;
        let stores = self.stores.clone();
        let (id, metadata) = tokio::task::spawn_blocking(move || store_snapshot(&stores, &tar))
            .await
            .map_err(|e| RunnerError::io("snapshot task failed", e.into()))??;
        Ok(RunnerSnapshotRef {
            provider_id: self.provider_id.into(),
            snapshot_id: id,
            metadata,
        })
    }

    async fn close(&self) -> Result<(), RunnerError> {
        if self.closed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mounts = std::mem::take(&mut *lock(&self.mounts));
        let mut sync_error = None;
        for mount in &mounts {
            if let Err(e) = crate::s3::sync_out(self, mount, self.provider_id).await {
                sync_error.get_or_insert(e);
            }
        }
        if self.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        for task in lock(&self.ports).drain(..) {
            task.abort();
        }
        let pids: Vec<ProcessId> = lock(&self.commands).drain().map(|(_, p)| p).collect();
        for pid in pids {
            if let Err(e) = self.client.terminate(&pid).await {
                tracing::debug!("terminate {pid} on close: {e}");
            }
        }
        // Let the killed commands report their exit, then fail whatever is still followed.
        let pumps: Vec<JoinHandle<()>> = lock(&self.pumps).drain(..).collect();
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            for p in pumps {
                let _ = p.await;
            }
        })
        .await;
        self.shutdown.send_replace(true);
        self.client.close();
        sync_error.map_or(Ok(()), Err)
    }
}
