//! The `local` provider: a directory on this host, processes through `baton-exec`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use baton_exec::{CommandSpec, Process, ProcessEvent, SpawnOptions, StdinError, StdinMode, Stream};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::process::StdinOp;
use crate::{
    Access, PathPolicy, RunnerArtifactExportRequest, RunnerArtifactExportResult,
    RunnerCapabilities, RunnerCommandRequest, RunnerDestination, RunnerError, RunnerEvent,
    RunnerFileReadRequest, RunnerFileReadResult, RunnerFileWriteRequest, RunnerMount,
    RunnerMountCapabilities, RunnerPortRequest, RunnerPortResult, RunnerProcess, RunnerProvider,
    RunnerSession, RunnerSessionState, RunnerSignal, RunnerSnapshotRef, RunnerStores, RunnerStream,
    check_no_secrets, compress, decompress, tar_dir, untar_into,
};

/// The provider id of [`LocalProvider`].
pub const LOCAL_PROVIDER_ID: &str = "local";

/// Destination `config` of the `local` provider (JSON object, every field optional).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LocalConfig {
    /// Absolute workspace directory (created if missing, kept on close). Default: a fresh
    /// directory `<base>/sessions/<session id>` removed on close.
    #[serde(default)]
    pub workspace: Option<PathBuf>,
    /// Extra absolute read roots.
    #[serde(default)]
    pub read_roots: Vec<PathBuf>,
    /// `PATH` of commands. Default: this process's `PATH`, else `/usr/local/bin:/usr/bin:/bin`.
    #[serde(default)]
    pub path: Option<String>,
}

/// What [`RunnerSessionState::metadata`] holds for a local session.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LocalMeta {
    workspace: PathBuf,
    read_roots: Vec<PathBuf>,
    owns_workspace: bool,
    path: String,
    /// Object-storage mounts synced back on close.
    #[serde(default)]
    mounts: Vec<RunnerMount>,
}

/// Sessions in directories of this host.
#[derive(Debug, Clone)]
pub struct LocalProvider {
    stores: RunnerStores,
    sessions_dir: PathBuf,
}

impl LocalProvider {
    /// A provider keeping its stores in `<base>/snapshots`, `<base>/artifacts` and fresh
    /// workspaces in `<base>/sessions`.
    ///
    /// # Errors
    /// [`RunnerError::Io`] when the directories cannot be created.
    pub fn new(base: &Path) -> Result<Self, RunnerError> {
        let sessions_dir = base.join("sessions");
        std::fs::create_dir_all(&sessions_dir)
            .map_err(|e| RunnerError::io(format!("cannot create {sessions_dir:?}"), e))?;
        Ok(Self {
            stores: RunnerStores::open(base)?,
            sessions_dir,
        })
    }

    /// The stores (snapshots, artifacts).
    pub fn stores(&self) -> &RunnerStores {
        &self.stores
    }

    fn config(&self, destination: &RunnerDestination) -> Result<LocalConfig, RunnerError> {
        if destination.provider_id != LOCAL_PROVIDER_ID {
            return Err(RunnerError::InvalidDestination(format!(
                "destination {:?} is for provider {:?}, not {LOCAL_PROVIDER_ID:?}",
                destination.id, destination.provider_id
            )));
        }
        check_no_secrets(&destination.config)?;
        let config: LocalConfig = if destination.config.is_null() {
            LocalConfig::default()
        } else {
            serde_json::from_value(destination.config.clone())
                .map_err(|e| RunnerError::InvalidDestination(format!("bad local config: {e}")))?
        };
        for p in config.workspace.iter().chain(&config.read_roots) {
            if !p.is_absolute() {
                return Err(RunnerError::RootNotAbsolute(p.clone()));
            }
        }
        crate::manifest::validate(&destination.default_manifest, LOCAL_PROVIDER_ID)?;
        Ok(config)
    }

    async fn create(
        &self,
        destination: RunnerDestination,
        snapshot: Option<RunnerSnapshotRef>,
    ) -> Result<Arc<dyn RunnerSession>, RunnerError> {
        let config = self.config(&destination)?;
        let session_id = crate::fresh_id();
        let (workspace, owns_workspace) = match &config.workspace {
            Some(w) => (w.clone(), false),
            None => (self.sessions_dir.join(&session_id), true),
        };
        std::fs::create_dir_all(&workspace)
            .map_err(|e| RunnerError::io(format!("cannot create workspace {workspace:?}"), e))?;
        if let Some(snap) = &snapshot {
            let archive = self.stores.snapshots.get(&snap.snapshot_id)?;
            let ws = workspace.clone();
            tokio::task::spawn_blocking(move || untar_into(&decompress(&archive)?, &ws))
                .await
                .map_err(|e| RunnerError::io("snapshot restore task failed", e.into()))??;
        }
        let meta = LocalMeta {
            workspace,
            read_roots: config.read_roots,
            owns_workspace,
            path: config.path.unwrap_or_else(default_path),
            mounts: Vec::new(),
        };
        let session = Arc::new(LocalSession::open(
            session_id,
            destination.id.clone(),
            snapshot,
            meta,
            self.stores.clone(),
        )?);
        if let Err(e) =
            crate::manifest::apply(&*session, &destination.default_manifest, LOCAL_PROVIDER_ID)
                .await
        {
            session.close().await.ok();
            return Err(e);
        }
        *lock(&session.mounts) = destination.default_manifest.mounts.clone();
        Ok(session)
    }
}

fn default_path() -> String {
    std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into())
}

/// The capabilities of [`LocalProvider`].
pub(crate) fn local_capabilities() -> RunnerCapabilities {
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

#[async_trait]
impl RunnerProvider for LocalProvider {
    fn id(&self) -> String {
        LOCAL_PROVIDER_ID.into()
    }

    fn capabilities(&self) -> RunnerCapabilities {
        local_capabilities()
    }

    async fn validate_destination(
        &self,
        destination: &RunnerDestination,
    ) -> Result<(), RunnerError> {
        self.config(destination).map(|_| ())
    }

    async fn create_session(
        &self,
        destination: RunnerDestination,
    ) -> Result<Arc<dyn RunnerSession>, RunnerError> {
        self.create(destination, None).await
    }

    async fn create_session_from_snapshot(
        &self,
        destination: RunnerDestination,
        snapshot: RunnerSnapshotRef,
    ) -> Result<Arc<dyn RunnerSession>, RunnerError> {
        self.create(destination, Some(snapshot)).await
    }

    async fn resume_session(
        &self,
        state: RunnerSessionState,
    ) -> Result<Arc<dyn RunnerSession>, RunnerError> {
        if state.provider_id != LOCAL_PROVIDER_ID {
            return Err(RunnerError::InvalidDestination(format!(
                "session state of provider {:?}",
                state.provider_id
            )));
        }
        let meta: LocalMeta = serde_json::from_value(state.metadata.clone()).map_err(|e| {
            RunnerError::InvalidDestination(format!("bad local session state: {e}"))
        })?;
        if !meta.workspace.is_dir() {
            return Err(RunnerError::NotFound(meta.workspace));
        }
        Ok(Arc::new(LocalSession::open(
            state.session_id,
            state.destination_id,
            state.snapshot,
            meta,
            self.stores.clone(),
        )?))
    }
}

type Commands = Arc<Mutex<HashMap<String, Process>>>;

/// A session of [`LocalProvider`].
struct LocalSession {
    state: RunnerSessionState,
    meta: LocalMeta,
    policy: PathPolicy,
    stores: RunnerStores,
    commands: Commands,
    mounts: Mutex<Vec<RunnerMount>>,
    ports: Mutex<Vec<JoinHandle<()>>>,
    closed: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl LocalSession {
    fn open(
        session_id: String,
        destination_id: String,
        snapshot: Option<RunnerSnapshotRef>,
        meta: LocalMeta,
        stores: RunnerStores,
    ) -> Result<Self, RunnerError> {
        let policy = PathPolicy::local(&meta.workspace, &meta.read_roots)?;
        let mounts = meta.mounts.clone();
        let metadata = serde_json::to_value(&meta)
            .map_err(|e| RunnerError::InvalidDestination(format!("cannot encode state: {e}")))?;
        check_no_secrets(&metadata)?;
        Ok(Self {
            state: RunnerSessionState {
                provider_id: LOCAL_PROVIDER_ID.into(),
                session_id,
                destination_id,
                snapshot,
                metadata,
            },
            meta,
            policy,
            stores,
            commands: Arc::default(),
            mounts: Mutex::new(mounts),
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
}

fn map_stdin(id: &str, e: StdinError) -> RunnerError {
    match e {
        StdinError::Io(e) => RunnerError::io(format!("cannot write stdin of {id:?}"), e),
        _ => RunnerError::StdinClosed(id.to_string()),
    }
}

fn stream_of(s: Stream) -> RunnerStream {
    match s {
        Stream::Stdout => RunnerStream::Stdout,
        Stream::Stderr => RunnerStream::Stderr,
        Stream::Pty => RunnerStream::Pty,
    }
}

#[async_trait]
impl RunnerSession for LocalSession {
    fn state(&self) -> RunnerSessionState {
        let mut state = self.state.clone();
        let mounts = lock(&self.mounts);
        if let (serde_json::Value::Object(meta), Ok(v)) =
            (&mut state.metadata, serde_json::to_value(&*mounts))
        {
            meta.insert("mounts".into(), v);
        }
        state
    }

    fn capabilities(&self) -> RunnerCapabilities {
        local_capabilities()
    }

    fn paths(&self) -> &PathPolicy {
        &self.policy
    }

    async fn spawn(&self, request: RunnerCommandRequest) -> Result<RunnerProcess, RunnerError> {
        self.ensure_open()?;
        let cwd = self.policy.resolve_local(
            request.cwd.as_deref().unwrap_or(Path::new(".")),
            Access::Write,
        )?;
        let spec = CommandSpec::new(&request.program, cwd)
            .args(&request.args)
            .env("PATH", &self.meta.path)
            .envs(request.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(StdinMode::Piped);
        let spec = if request.tty {
            spec.pty(baton_exec::PtySize::new(24, 80))
        } else {
            spec
        };
        let id = request.command_id.clone();
        let (process, mut events) = {
            let mut commands = lock(&self.commands);
            if commands.contains_key(&id) {
                return Err(RunnerError::DuplicateCommand(id));
            }
            let process =
                baton_exec::spawn(&spec, SpawnOptions::streaming()).map_err(RunnerError::Spawn)?;
            let events = process.take_events().ok_or_else(|| {
                RunnerError::io("no event stream", std::io::Error::other(id.clone()))
            })?;
            commands.insert(id.clone(), process.clone());
            (process, events)
        };
        let (tx, rx) = mpsc::channel(64);
        let (stdin_tx, mut stdin_rx) = mpsc::channel::<StdinOp>(8);
        let commands = self.commands.clone();
        let pump_id = id.clone();
        tokio::spawn(async move {
            let mut receiver_gone = false;
            while let Some(event) = events.recv().await {
                let (converted, last) = match event {
                    ProcessEvent::Output { seq, stream, chunk } => (
                        RunnerEvent::Output {
                            seq,
                            stream: stream_of(stream),
                            chunk: chunk.to_vec(),
                        },
                        false,
                    ),
                    ProcessEvent::Exited { seq, status } => (
                        RunnerEvent::Exited {
                            seq,
                            exit_code: status.code_for_shell(),
                        },
                        false,
                    ),
                    ProcessEvent::Closed { seq } => (RunnerEvent::Closed { seq }, true),
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
        let stdin_id = id.clone();
        tokio::spawn(async move {
            while let Some(op) = stdin_rx.recv().await {
                match op {
                    StdinOp::Write(bytes, reply) => {
                        let r = process.write_stdin(&bytes).await;
                        let _ = reply.send(r.map_err(|e| map_stdin(&stdin_id, e)));
                    }
                    StdinOp::Close(reply) => {
                        let r = process.close_stdin().await;
                        let _ = reply.send(r.map_err(|e| map_stdin(&stdin_id, e)));
                    }
                }
            }
        });
        Ok(RunnerProcess::new(id, rx, stdin_tx))
    }

    async fn cancel_command(&self, command_id: &str) -> Result<bool, RunnerError> {
        let process = lock(&self.commands).get(command_id).cloned();
        Ok(match process {
            Some(p) => {
                p.terminate();
                true
            }
            None => false,
        })
    }

    async fn signal_command(
        &self,
        command_id: &str,
        signal: RunnerSignal,
    ) -> Result<bool, RunnerError> {
        let Some(process) = lock(&self.commands).get(command_id).cloned() else {
            return Ok(false);
        };
        let signal = match signal {
            RunnerSignal::Interrupt => baton_exec::Signal::Interrupt,
            RunnerSignal::Terminate => baton_exec::Signal::Terminate,
            RunnerSignal::Kill => baton_exec::Signal::Kill,
            RunnerSignal::Hangup => baton_exec::Signal::Hangup,
        };
        process.signal(signal).map_err(|e| {
            RunnerError::io(
                format!("cannot signal command {command_id:?}"),
                std::io::Error::other(e),
            )
        })?;
        Ok(true)
    }

    async fn read_file(
        &self,
        request: RunnerFileReadRequest,
    ) -> Result<RunnerFileReadResult, RunnerError> {
        self.ensure_open()?;
        let path = self.policy.resolve_local(&request.path, Access::Read)?;
        let contents = tokio::fs::read(&path).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                RunnerError::NotFound(request.path.clone())
            } else {
                RunnerError::io(format!("cannot read {:?}", request.path), e)
            }
        })?;
        Ok(RunnerFileReadResult { path, contents })
    }

    async fn create_dir(&self, path: &Path) -> Result<(), RunnerError> {
        self.ensure_open()?;
        let resolved = self.policy.resolve_local(path, Access::Write)?;
        tokio::fs::create_dir_all(&resolved)
            .await
            .map_err(|e| RunnerError::io(format!("cannot create directory {path:?}"), e))
    }

    async fn write_file(&self, request: RunnerFileWriteRequest) -> Result<(), RunnerError> {
        self.ensure_open()?;
        let path = self.policy.resolve_local(&request.path, Access::Write)?;
        let ctx = || format!("cannot write {:?}", request.path);
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| RunnerError::io(ctx(), e))?;
        }
        tokio::fs::write(&path, &request.contents)
            .await
            .map_err(|e| RunnerError::io(ctx(), e))
    }

    async fn expose_port(
        &self,
        request: RunnerPortRequest,
    ) -> Result<RunnerPortResult, RunnerError> {
        self.ensure_open()?;
        let (addr, task) = crate::proxy::listen(crate::proxy::direct(request.port))
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
        let path = self.policy.resolve_local(&request.path, Access::Read)?;
        let stores = self.stores.clone();
        let original = request.path.clone();
        let recursive = request.recursive;
        let p = path.clone();
        let (id, metadata) = tokio::task::spawn_blocking(move || {
            let meta = std::fs::metadata(&p).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    RunnerError::NotFound(original.clone())
                } else {
                    RunnerError::io(format!("cannot stat {original:?}"), e)
                }
            })?;
            let (id, size, kind) = if meta.is_dir() {
                if !recursive {
                    return Err(RunnerError::IsDirectory(original));
                }
                let (id, size) = stores.artifacts.put_bytes(&compress(&tar_dir(&p)?)?)?;
                (id, size, "directory")
            } else {
                let (id, size) = stores.artifacts.put_file(&p)?;
                (id, size, "file")
            };
            let metadata = artifact_metadata(&p, &id, size, kind);
            stores.artifacts.put_metadata(&id, &metadata)?;
            Ok((id, metadata))
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
        let ws = self.policy.workspace().to_path_buf();
        let stores = self.stores.clone();
        let (id, metadata) = tokio::task::spawn_blocking(move || {
            let tar = tar_dir(&ws)?;
            store_snapshot(&stores, &tar)
        })
        .await
        .map_err(|e| RunnerError::io("snapshot task failed", e.into()))??;
        Ok(RunnerSnapshotRef {
            provider_id: LOCAL_PROVIDER_ID.into(),
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
            if let Err(e) = crate::s3::sync_out(self, mount, LOCAL_PROVIDER_ID).await {
                sync_error.get_or_insert(e);
            }
        }
        if self.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let commands: Vec<Process> = lock(&self.commands).drain().map(|(_, p)| p).collect();
        for p in &commands {
            p.terminate();
        }
        for task in lock(&self.ports).drain(..) {
            task.abort();
        }
        if self.meta.owns_workspace {
            let ws = self.meta.workspace.clone();
            tokio::task::spawn_blocking(move || {
                make_dirs_writable(&ws);
                std::fs::remove_dir_all(&ws)
                    .map_err(|e| RunnerError::io(format!("cannot remove workspace {ws:?}"), e))
            })
            .await
            .map_err(|e| RunnerError::io("workspace removal task failed", e.into()))??;
        }
        sync_error.map_or(Ok(()), Err)
    }
}

/// Metadata of an exported artifact (see [`RunnerArtifactExportResult`]).
pub(crate) fn artifact_metadata(path: &Path, id: &str, size: u64, kind: &str) -> serde_json::Value {
    serde_json::json!({
        "kind": kind,
        "size": size,
        "blake3": id,
        "name": path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
    })
}

/// Compresses a workspace tar stream into the snapshot store; returns the id and metadata
/// `{size, tar_size, created_ms}`.
pub(crate) fn store_snapshot(
    stores: &RunnerStores,
    tar: &[u8],
) -> Result<(String, serde_json::Value), RunnerError> {
    let (id, size) = stores.snapshots.put_bytes(&compress(tar)?)?;
    let metadata = serde_json::json!({
        "size": size,
        "tar_size": tar.len(),
        "created_ms": crate::now_ms(),
    });
    stores.snapshots.put_metadata(&id, &metadata)?;
    Ok((id, metadata))
}

/// Adds owner write permission to every directory under `root` (read-only manifest entries),
/// so the tree can be removed. Best effort.
fn make_dirs_writable(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let Ok(meta) = std::fs::symlink_metadata(&dir)
            && meta.is_dir()
        {
            let mut perms = meta.permissions();
            perms.set_mode(perms.mode() | 0o700);
            let _ = std::fs::set_permissions(&dir, perms);
            if let Ok(entries) = std::fs::read_dir(&dir) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
}
