//! Runners: one API for "a workspace somewhere" (DESIGN.md §4).
//!
//! A [`RunnerProvider`] creates [`RunnerSession`]s at a [`RunnerDestination`]; a session runs
//! commands (buffered [`RunnerSession::run_command`] or streaming [`RunnerSession::spawn`] with
//! stdin and ordered [`RunnerEvent`]s), cancels them (the whole process tree), reads and writes
//! files under the path rules ([`PathPolicy`]), exposes ports, exports artifacts, takes
//! snapshots and persists its [`RunnerSessionState`] (no secrets) for
//! [`RunnerProvider::resume_session`].
//!
//! # Providers
//!
//! | capability | [`LocalProvider`] (`local`) | [`ExecServerProvider`] (`exec-server`) | [`SshProvider`] (`ssh`) |
//! |---|---|---|---|
//! | `command_exec` (run, spawn, stdin) | yes (baton-exec) | yes (`process/*` over WebSocket) | yes (`process/*` over ssh stdio) |
//! | `cancellation` (tree killed) | yes (process-group SIGKILL) | yes (`process/terminate`) | yes (same) |
//! | `file_read` / `file_write` | yes | yes (`fs/*`; paths checked with a remote `realpath -m`) | yes (same) |
//! | `port_preview` | yes (loopback TCP proxy) | yes (loopback proxy tunnelled through a `bash` `/dev/tcp` bridge process over the connection; no port opened to the network) | yes (same) |
//! | `snapshots` | yes (tar+zstd) | yes (remote `tar` streamed back, zstd here) | yes (same) |
//! | `artifact_export` | yes | yes | yes |
//! | `mounts.s3` | yes | yes | yes |
//! | `mounts.{gcs,r2,azure_blob,box_storage,provider_native}` | no | no | no |
//! | resume after a dropped connection | n/a (state resume reopens the directory) | yes (client reconnects, `resumeSessionId`, catch-up; state resume within the server's session TTL) | no (the stdio server ends with ssh; state resume reconnects to the same workspace, files persist, processes are gone) |
//!
//! An operation a provider cannot do returns [`RunnerError::Unsupported`], never a no-op (for
//! example a GCS mount).
//!
//! Remote runner hosts need `bash`, `tar`, `realpath`, `chmod` and `find` (GNU coreutils /
//! findutils) besides the exec server; ssh hosts need `baton` (see [`SshConfig::baton`]).
//!
//! # Stores
//!
//! Snapshots and artifacts go to content-addressed stores on *this* host ([`RunnerStores`]):
//! ids are hex BLAKE3 of the stored bytes, so the backend can serve artifacts by id.
//!
//! # Mounts
//!
//! [`RunnerMountKind::S3`] mounts (URI `s3://BUCKET/PREFIX?endpoint=http://HOST:PORT&region=R`,
//! see [`S3Location`]) are synced into the mount path when a session is created and, unless
//! `read_only`, back on [`RunnerSession::close`] (uploads every file, deletes objects whose file
//! is gone). The sync runs on this host through the session API, so it works for every provider.
//! Credentials: a [`RunnerSecretRef`] whose value is `ACCESS_KEY_ID:SECRET_ACCESS_KEY`
//! (requests are SigV4-signed); none means anonymous. Only `http://` endpoints so far.
//!
//! # Secrets
//!
//! Destination configs, session state and snapshot metadata are checked with
//! [`check_no_secrets`]; credentials are [`RunnerSecretRef`]s resolved from
//! `BATON_SECRET_<ID>` environment variables of the process that uses them.
//!
//! # Tests
//!
//! `tests/contract/mod.rs` is one set of assertions run for every provider (`tests/local.rs`,
//! `tests/exec_server.rs` against a real `baton exec-server`, `tests/ssh.rs` against a real
//! OpenSSH `sshd` on loopback); `tests/s3.rs` syncs mounts with a real `moto_server`.

mod destination;
mod error;
mod exec_server;
mod local;
mod manifest;
mod paths;
mod process;
mod proxy;
mod s3;
mod secrets;
mod store;
mod types;

use std::sync::Arc;

use async_trait::async_trait;

pub use destination::{DestinationOptions, parse_destination};
pub use error::RunnerError;
pub use exec_server::{
    DEFAULT_REMOTE_PATH, EXEC_SERVER_PROVIDER_ID, ExecServerConfig, ExecServerProvider,
    SSH_PROVIDER_ID, SshConfig, SshProvider,
};
pub use local::{LOCAL_PROVIDER_ID, LocalConfig, LocalProvider};
pub use paths::{Access, PathPolicy, normalize_lexically, resolve_real};
pub use process::{CollectedOutput, RunnerProcess, RunnerStdin};

/// A signal for [`RunnerSession::signal_command`]: `Interrupt` (SIGINT), `Terminate`
/// (SIGTERM), `Kill` (SIGKILL), `Hangup` (SIGHUP). The exec-server protocol's own type
/// (`process/signal`, DESIGN.md §2), so it passes to remote runners unchanged.
pub use baton_protocol::exec::ProcessSignal as RunnerSignal;
pub use s3::{S3Client, S3Credentials, S3Location};
pub use secrets::{SECRET_KEY_FRAGMENTS, check_no_secrets};
pub use store::{
    ContentStore, RunnerStores, ZSTD_LEVEL, compress, decompress, tar_dir, untar_into,
};
pub use types::*;

/// Creates and resumes sessions at destinations of one kind.
#[async_trait]
pub trait RunnerProvider: Send + Sync + 'static {
    /// The provider id (`"local"`, `"exec-server"`); matches [`RunnerDestination::provider_id`].
    fn id(&self) -> RunnerProviderId;

    /// What sessions of this provider can do.
    fn capabilities(&self) -> RunnerCapabilities;

    /// Setup guidance when the provider needs configuration; names only documented environment
    /// variables, never values. `None`: nothing to set up.
    fn setup_hint(&self) -> Option<String> {
        None
    }

    /// Checks a destination's config without creating anything remote.
    ///
    /// # Errors
    /// [`RunnerError::InvalidDestination`] (wrong provider, bad config),
    /// [`RunnerError::SecretInMetadata`] (a secret value in the config).
    async fn validate_destination(
        &self,
        destination: &RunnerDestination,
    ) -> Result<(), RunnerError>;

    /// Creates a session: resolves/creates the workspace, copies the destination's default
    /// manifest in.
    ///
    /// # Errors
    /// As [`RunnerProvider::validate_destination`], plus connection, I/O and
    /// [`RunnerError::Unsupported`] (mounts) errors.
    async fn create_session(
        &self,
        destination: RunnerDestination,
    ) -> Result<Arc<dyn RunnerSession>, RunnerError>;

    /// Creates a session whose workspace starts as the contents of `snapshot` (restored into
    /// the workspace before the manifest is applied).
    ///
    /// # Errors
    /// As [`RunnerProvider::create_session`], plus [`RunnerError::NotInStore`].
    async fn create_session_from_snapshot(
        &self,
        destination: RunnerDestination,
        snapshot: RunnerSnapshotRef,
    ) -> Result<Arc<dyn RunnerSession>, RunnerError>;

    /// Reattaches to a session from its persisted [`RunnerSessionState`].
    ///
    /// # Errors
    /// [`RunnerError::InvalidDestination`] for a state of another provider or with bad
    /// metadata; connection errors.
    async fn resume_session(
        &self,
        state: RunnerSessionState,
    ) -> Result<Arc<dyn RunnerSession>, RunnerError>;
}

/// A workspace somewhere, and the commands running in it.
#[async_trait]
pub trait RunnerSession: Send + Sync + 'static {
    /// Persistable, secret-free state for [`RunnerProvider::resume_session`].
    fn state(&self) -> RunnerSessionState;

    /// The provider's capabilities.
    fn capabilities(&self) -> RunnerCapabilities;

    /// The resolved path rules (workspace root and read roots on the runner).
    fn paths(&self) -> &PathPolicy;

    /// Starts a command with piped stdin; its events arrive in seq order on the returned
    /// [`RunnerProcess`].
    ///
    /// # Errors
    /// [`RunnerError::AccessDenied`] (cwd outside the workspace), [`RunnerError::DuplicateCommand`],
    /// [`RunnerError::Spawn`] / [`RunnerError::Client`], [`RunnerError::Closed`].
    async fn spawn(&self, request: RunnerCommandRequest) -> Result<RunnerProcess, RunnerError>;

    /// Runs a command to completion with stdin closed and returns its exit code and output.
    /// With [`RunnerCommandRequest::timeout_ms`], the tree is killed at expiry and the result
    /// says `timed_out` (exit code `None`).
    ///
    /// # Errors
    /// As [`RunnerSession::spawn`].
    async fn run_command(
        &self,
        request: RunnerCommandRequest,
    ) -> Result<RunnerCommandResult, RunnerError> {
        let command_id = request.command_id.clone();
        let timeout = request.timeout_ms.map(std::time::Duration::from_millis);
        let mut process = self.spawn(request).await?;
        process.close_stdin().await.ok();
        let mut collected = CollectedOutput::default();
        match timeout {
            None => process.collect_into(&mut collected).await,
            Some(limit) => {
                if tokio::time::timeout(limit, process.collect_into(&mut collected))
                    .await
                    .is_err()
                {
                    self.cancel_command(&command_id).await?;
                    process.collect_into(&mut collected).await;
                    collected.timed_out = true;
                    collected.exit_code = None;
                }
            }
        }
        Ok(collected.into_result(command_id))
    }

    /// Follows a command that is still running, e.g. one started before the session was
    /// resumed from its state: its events from the first one the runner still retains (so
    /// output may repeat what an earlier follower saw), and its stdin.
    ///
    /// # Errors
    /// [`RunnerError::UnknownCommand`]; [`RunnerError::Unsupported`] for providers whose
    /// processes cannot be re-followed (`local`); connection errors.
    async fn attach_command(&self, command_id: &str) -> Result<RunnerProcess, RunnerError> {
        let _ = command_id;
        Err(RunnerError::Unsupported {
            operation: "attach_command".into(),
            provider: self.state().provider_id,
        })
    }

    /// Kills the running command's whole process tree. `Ok(false)` when no command with this
    /// id is running (any more).
    ///
    /// # Errors
    /// Connection errors of remote providers.
    async fn cancel_command(&self, command_id: &str) -> Result<bool, RunnerError>;

    /// Sends `signal` to the running command's process group (e.g. [`RunnerSignal::Interrupt`],
    /// what Ctrl-C sends) without otherwise touching it. `Ok(false)` when no command with this
    /// id is running (any more).
    ///
    /// # Errors
    /// [`RunnerError::Unsupported`] for providers that cannot signal; connection errors.
    async fn signal_command(
        &self,
        command_id: &str,
        signal: RunnerSignal,
    ) -> Result<bool, RunnerError> {
        let _ = (command_id, signal);
        Err(RunnerError::Unsupported {
            operation: "signal_command".into(),
            provider: self.state().provider_id,
        })
    }

    /// Whether the session's connection to the runner is up right now. Always `true` for
    /// providers without a connection (`local`); remote sessions report `false` while they
    /// reconnect, so callers can tell their users (the backend records
    /// `backend.upstream_disconnect`).
    fn is_connected(&self) -> bool {
        true
    }

    /// Reads a file (read rules).
    ///
    /// # Errors
    /// [`RunnerError::AccessDenied`], [`RunnerError::NotFound`], I/O and connection errors.
    async fn read_file(
        &self,
        request: RunnerFileReadRequest,
    ) -> Result<RunnerFileReadResult, RunnerError>;

    /// Creates a directory and its missing parents (write rules).
    ///
    /// # Errors
    /// [`RunnerError::AccessDenied`], I/O and connection errors.
    async fn create_dir(&self, path: &std::path::Path) -> Result<(), RunnerError>;

    /// Writes a file (write rules), creating missing parent directories.
    ///
    /// # Errors
    /// [`RunnerError::AccessDenied`], I/O and connection errors.
    async fn write_file(&self, request: RunnerFileWriteRequest) -> Result<(), RunnerError>;

    /// Exposes a loopback TCP port of the runner at a URL on this host (HTTP and WebSocket
    /// traffic both pass: the proxy is a byte stream). Lives until [`RunnerSession::close`].
    ///
    /// # Errors
    /// [`RunnerError::Unsupported`], I/O errors binding the local listener.
    async fn expose_port(
        &self,
        request: RunnerPortRequest,
    ) -> Result<RunnerPortResult, RunnerError>;

    /// Copies a file (or, with `recursive`, a directory as tar+zstd) into the artifact store.
    ///
    /// # Errors
    /// [`RunnerError::AccessDenied`], [`RunnerError::NotFound`], [`RunnerError::IsDirectory`],
    /// I/O and connection errors.
    async fn export_artifact(
        &self,
        request: RunnerArtifactExportRequest,
    ) -> Result<RunnerArtifactExportResult, RunnerError>;

    /// Archives the workspace (tar+zstd) into the snapshot store.
    ///
    /// # Errors
    /// [`RunnerError::Unsupported`], I/O and connection errors.
    async fn snapshot(&self) -> Result<RunnerSnapshotRef, RunnerError>;

    /// Syncs writable object-storage mounts back, kills every running command, stops exposed
    /// ports, and releases the session (a local workspace created for the session is removed).
    /// Idempotent. The session is closed even when the mount sync fails.
    ///
    /// # Errors
    /// The first mount-sync error; I/O errors removing the workspace.
    async fn close(&self) -> Result<(), RunnerError>;
}

/// The built-in providers keyed by id (`local`, `exec-server`, `ssh`), each with its stores
/// (and, for `local`, fresh workspaces) under `base/<id>/`.
///
/// # Errors
/// [`RunnerError::Io`] when a store directory cannot be created.
pub fn builtin_providers(
    base: &std::path::Path,
) -> Result<std::collections::BTreeMap<String, Arc<dyn RunnerProvider>>, RunnerError> {
    let providers: [Arc<dyn RunnerProvider>; 3] = [
        Arc::new(LocalProvider::new(&base.join(LOCAL_PROVIDER_ID))?),
        Arc::new(ExecServerProvider::new(
            &base.join(EXEC_SERVER_PROVIDER_ID),
        )?),
        Arc::new(SshProvider::new(&base.join(SSH_PROVIDER_ID))?),
    ];
    Ok(providers.into_iter().map(|p| (p.id(), p)).collect())
}

/// Builds the [`RemoteWorkspace`] handle of a session.
pub fn remote_workspace(session: Arc<dyn RunnerSession>) -> RemoteWorkspace {
    let root = session.paths().workspace().to_path_buf();
    let read_roots = session.paths().read_roots().to_vec();
    RemoteWorkspace {
        session,
        root,
        read_roots,
    }
}

/// A short random-looking id (16 hex digits from BLAKE3 of time, pid and a counter).
pub(crate) fn fresh_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut h = blake3::Hasher::new();
    h.update(&nanos.to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(&N.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    h.finalize().to_hex()[..16].to_string()
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}
