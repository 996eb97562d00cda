//! Serde types shared by every provider: destinations, manifests, mounts, capabilities, snapshot
//! refs, session state, command/file/port/artifact requests and results.
//!
//! Shapes and field names follow the runner API of the seed harness (`RunnerCapabilities`,
//! `RunnerDestination`, `ThreadRunnerBinding`, …; DESIGN.md §4), with Baton's additions marked
//! in each item's docs. JSON field names are the Rust field names (snake_case).

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::RunnerSession;

/// Identifies a provider (`"local"`, `"exec-server"`).
pub type RunnerProviderId = String;
/// Identifies a session of a provider.
pub type RunnerSessionId = String;
/// Identifies a configured destination.
pub type RunnerDestinationId = String;
/// Identifies one command of a session (chosen by the caller).
pub type RunnerCommandId = String;

/// What a provider can do. An operation whose flag is `false` returns
/// [`crate::RunnerError::Unsupported`], never a silent no-op.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerCapabilities {
    /// `run_command` and `spawn`.
    pub command_exec: bool,
    /// `read_file`.
    pub file_read: bool,
    /// `write_file`.
    pub file_write: bool,
    /// `expose_port`.
    pub port_preview: bool,
    /// `snapshot` and `create_session_from_snapshot`.
    pub snapshots: bool,
    /// `cancel_command` (kills the command's whole process tree).
    pub cancellation: bool,
    /// `export_artifact`.
    #[serde(default)]
    pub artifact_export: bool,
    /// Which object-storage mount kinds are synced into the workspace.
    #[serde(default)]
    pub mounts: RunnerMountCapabilities,
}

/// Which [`RunnerMountKind`]s a provider can mount.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerMountCapabilities {
    /// S3-compatible object storage.
    #[serde(default)]
    pub s3: bool,
    /// Google Cloud Storage.
    #[serde(default)]
    pub gcs: bool,
    /// Cloudflare R2.
    #[serde(default)]
    pub r2: bool,
    /// Azure Blob Storage.
    #[serde(default)]
    pub azure_blob: bool,
    /// Box.
    #[serde(default)]
    pub box_storage: bool,
    /// A mount the provider itself knows how to attach.
    #[serde(default)]
    pub provider_native: bool,
}

/// A place where sessions can be created: a provider plus its configuration.
///
/// `config` is provider-specific JSON (see [`crate::LocalProvider`] and
/// [`crate::ExecServerProvider`]). It is persisted with threads, so it must not hold secrets:
/// credentials are [`RunnerSecretRef`]s (see [`crate::check_no_secrets`], which the providers
/// apply in `validate_destination`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerDestination {
    /// Destination id.
    pub id: RunnerDestinationId,
    /// The provider that serves it.
    pub provider_id: RunnerProviderId,
    /// Provider-specific settings.
    #[serde(default)]
    pub config: serde_json::Value,
    /// Entries and mounts applied to every session created here.
    #[serde(default)]
    pub default_manifest: RunnerManifest,
}

/// What is put into a session workspace when it is created.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerManifest {
    /// Files and directories copied from this host into the workspace.
    #[serde(default)]
    pub entries: Vec<RunnerManifestEntry>,
    /// Object-storage mounts (declared; see [`RunnerCapabilities::mounts`]).
    #[serde(default)]
    pub mounts: Vec<RunnerMount>,
}

/// One manifest entry: `source` (a path on this host, absolute) copied to `target` (relative to
/// the workspace, or absolute under it). A file or a directory (copied recursively).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerManifestEntry {
    /// Path on this host.
    pub source: PathBuf,
    /// Path in the workspace.
    pub target: PathBuf,
    /// When `false`, the copied files are made read-only (mode without write bits).
    pub writable: bool,
}

/// An object-storage mount at `path` in the workspace.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerMount {
    /// Mount name.
    pub name: String,
    /// Where it appears in the workspace.
    pub path: PathBuf,
    /// Whether changes are *not* synced back on close.
    pub read_only: bool,
    /// What to mount.
    #[serde(default)]
    pub intent: RunnerMountIntent,
}

/// The storage behind a [`RunnerMount`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerMountIntent {
    /// Storage kind.
    pub kind: RunnerMountKind,
    /// Location, e.g. `s3://bucket/prefix`.
    pub uri: String,
    /// Credentials, by reference only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<RunnerSecretRef>,
}

impl Default for RunnerMountIntent {
    /// A provider-native mount with an empty URI and no credentials.
    fn default() -> Self {
        Self {
            kind: RunnerMountKind::ProviderNative,
            uri: String::new(),
            credentials: None,
        }
    }
}

/// Storage kinds of [`RunnerMountIntent`]; JSON `s3`, `gcs`, `r2`, `azure_blob`, `box_storage`,
/// `provider_native`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RunnerMountKind {
    /// S3-compatible object storage.
    S3,
    /// Google Cloud Storage.
    Gcs,
    /// Cloudflare R2.
    R2,
    /// Azure Blob Storage.
    AzureBlob,
    /// Box.
    BoxStorage,
    /// Provider-specific.
    ProviderNative,
}

/// A reference to a secret; the value never appears in configs, state, snapshots or logs.
///
/// Resolution ([`RunnerSecretRef::resolve`]): the environment variable
/// `BATON_SECRET_<ID>` of the process that uses it, where `<ID>` is `id` upper-cased with every
/// character outside `[A-Z0-9]` replaced by `_` (id `ws-token` → `BATON_SECRET_WS_TOKEN`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerSecretRef {
    /// Secret id.
    pub id: String,
}

impl RunnerSecretRef {
    /// The environment variable this reference resolves from (see the type docs).
    pub fn env_var(&self) -> String {
        let mut name = String::from("BATON_SECRET_");
        name.extend(self.id.chars().map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        }));
        name
    }

    /// The secret value from this process's environment.
    ///
    /// # Errors
    /// [`crate::RunnerError::SecretMissing`] when the variable is unset or not UTF-8 (the error
    /// names the variable, never a value).
    pub fn resolve(&self) -> Result<String, crate::RunnerError> {
        let var = self.env_var();
        std::env::var(&var).map_err(|_| crate::RunnerError::SecretMissing {
            id: self.id.clone(),
            env_var: var,
        })
    }
}

/// A snapshot of a workspace: `snapshot_id` is the hex BLAKE3 of the tar+zstd archive in the
/// snapshot store (content-addressed). `metadata` holds `{size, created_ms}` and never secrets.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerSnapshotRef {
    /// Provider that took it.
    pub provider_id: RunnerProviderId,
    /// Hex BLAKE3 of the archive (64 characters).
    pub snapshot_id: String,
    /// Non-secret metadata.
    #[serde(default)]
    pub metadata: serde_json::Value,
}

/// Everything needed to resume a session (`RunnerProvider::resume_session`); persistable JSON
/// without secrets. `metadata` is provider-specific (the workspace path, read roots, the exec
/// server URL and its session id, …).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerSessionState {
    /// Provider id.
    pub provider_id: RunnerProviderId,
    /// Session id.
    pub session_id: RunnerSessionId,
    /// Destination the session was created for.
    pub destination_id: RunnerDestinationId,
    /// Snapshot the session was created from, if any.
    #[serde(default)]
    pub snapshot: Option<RunnerSnapshotRef>,
    /// Provider-specific, secret-free data.
    #[serde(default)]
    pub metadata: serde_json::Value,
}

/// The runner a thread is bound to, persisted with the thread.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ThreadRunnerBinding {
    /// Where sessions are created.
    pub destination: RunnerDestination,
    /// Absolute path on the runner: the thread's workspace root (reads, writes, cwd).
    pub workspace: PathBuf,
    /// Extra absolute runner paths that reads may resolve under; writes and working directories
    /// stay confined to `workspace`.
    #[serde(default)]
    pub read_roots: Vec<PathBuf>,
}

/// A live workspace handle for tools of a runner-bound thread: operations go through `session`,
/// paths are scoped under `root` (a path on the runner) and, for reads, `read_roots`.
#[derive(Clone)]
pub struct RemoteWorkspace {
    /// The session.
    pub session: Arc<dyn RunnerSession>,
    /// Workspace root on the runner.
    pub root: PathBuf,
    /// Extra read-only roots on the runner.
    pub read_roots: Vec<PathBuf>,
}

impl std::fmt::Debug for RemoteWorkspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteWorkspace")
            .field("session", &self.session.state().session_id)
            .field("root", &self.root)
            .field("read_roots", &self.read_roots)
            .finish()
    }
}

/// A command to run in a session.
///
/// `program` is looked up in the `PATH` of the command's environment. The environment is
/// `PATH` (the provider's default) plus `env`; values are passed to the process only, never
/// persisted. `cwd` is relative to the workspace or absolute under it (default: the workspace).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerCommandRequest {
    /// Caller-chosen id, unique among the session's running commands; used by `cancel_command`.
    pub command_id: RunnerCommandId,
    /// Program.
    pub program: String,
    /// Arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Working directory (confined to the workspace).
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Baton addition: limit for `run_command` in milliseconds; on expiry the process tree is
    /// killed and [`RunnerCommandResult::timed_out`] is set. `None`: no limit.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Baton addition: run on a pseudo-terminal (80×24; stdout and stderr arrive merged as
    /// [`RunnerStream::Pty`]; stdin is the terminal's input). Default `false`: pipes.
    #[serde(default)]
    pub tty: bool,
}

impl RunnerCommandRequest {
    /// A request for `program args…` with id `command_id`, default cwd and env, no timeout.
    pub fn new<I, S>(command_id: impl Into<String>, program: impl Into<String>, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            command_id: command_id.into(),
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            cwd: None,
            env: Vec::new(),
            timeout_ms: None,
            tty: false,
        }
    }
}

/// Outcome of `run_command`: output decoded as UTF-8 (lossy).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerCommandResult {
    /// The request's id.
    pub command_id: RunnerCommandId,
    /// Exit code (128 + signal when killed by a signal); `None` when it timed out.
    pub exit_code: Option<i32>,
    /// Everything written to stdout.
    pub stdout: String,
    /// Everything written to stderr.
    pub stderr: String,
    /// Baton addition: the timeout expired and the tree was killed.
    #[serde(default)]
    pub timed_out: bool,
}

/// A file to read (relative to the workspace, or absolute under the workspace or a read root).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerFileReadRequest {
    /// Path.
    pub path: PathBuf,
}

/// File contents.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerFileReadResult {
    /// The resolved absolute path.
    pub path: PathBuf,
    /// Bytes.
    pub contents: Vec<u8>,
}

/// A file to write (under the workspace only); missing parent directories are created.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerFileWriteRequest {
    /// Path.
    pub path: PathBuf,
    /// Bytes.
    pub contents: Vec<u8>,
}

/// A TCP port inside the runner (loopback) to expose.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerPortRequest {
    /// Port on the runner's loopback.
    pub port: u16,
    /// Display label.
    pub label: Option<String>,
}

/// An exposed port.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerPortResult {
    /// The runner port.
    pub port: u16,
    /// `http://127.0.0.1:<local port>`: HTTP and WebSocket traffic to it reaches the runner port.
    pub url: Option<String>,
}

/// A file or directory to export as an artifact.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerArtifactExportRequest {
    /// Path (read rules).
    pub path: PathBuf,
    /// Required to export a directory (stored as a tar+zstd archive).
    #[serde(default)]
    pub recursive: bool,
}

/// An exported artifact. `artifact_id` is the hex BLAKE3 of the stored bytes; `metadata` is
/// `{"kind": "file"|"directory", "size": bytes stored, "blake3": hex, "name": last path
/// component}` (a directory is stored as tar+zstd, `size` and `blake3` are of that archive).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerArtifactExportResult {
    /// The resolved path.
    pub path: PathBuf,
    /// Content id in the artifact store.
    pub artifact_id: String,
    /// Where it is served (set by the backend; `None` here).
    pub url: Option<String>,
    /// See the type docs.
    #[serde(default)]
    pub metadata: serde_json::Value,
}

/// Output stream of a [`RunnerEvent::Output`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RunnerStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// A pseudo-terminal (merged).
    Pty,
}

/// One event of a spawned command, in `seq` order (one counter per command from 1, shared by
/// output, exit and close).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum RunnerEvent {
    /// Bytes written by the command.
    Output {
        /// Event seq.
        seq: u64,
        /// Stream.
        stream: RunnerStream,
        /// Bytes.
        chunk: Vec<u8>,
    },
    /// The command exited (code, or 128 + signal).
    Exited {
        /// Event seq.
        seq: u64,
        /// Exit code.
        exit_code: i32,
    },
    /// Exited and every output stream ended: the last event.
    Closed {
        /// Event seq.
        seq: u64,
    },
    /// The command can no longer be followed (connection lost, output evicted): the last event.
    Failed {
        /// Why.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn destination_json_shape() {
        let json = json!({
            "id": "build1",
            "provider_id": "exec-server",
            "config": {"url": "ws://127.0.0.1:7070", "workspace": "/srv/ws", "token": {"id": "ws"}},
            "default_manifest": {
                "entries": [{"source": "/src", "target": "src", "writable": true}],
                "mounts": [{
                    "name": "data",
                    "path": "mnt/data",
                    "read_only": true,
                    "intent": {"kind": "azure_blob", "uri": "az://c/p", "credentials": {"id": "az"}}
                }]
            }
        });
        let d: RunnerDestination = serde_json::from_value(json.clone()).expect("parse");
        assert_eq!(
            d.default_manifest.mounts[0].intent.kind,
            RunnerMountKind::AzureBlob
        );
        assert_eq!(serde_json::to_value(&d).expect("encode"), json);
        // Defaults: no config, no manifest, a mount without an intent is provider-native.
        let d: RunnerDestination =
            serde_json::from_value(json!({"id": "x", "provider_id": "local"})).expect("minimal");
        assert!(d.config.is_null() && d.default_manifest == RunnerManifest::default());
        let m: RunnerMount =
            serde_json::from_value(json!({"name": "n", "path": "p", "read_only": false}))
                .expect("mount");
        assert_eq!(m.intent, RunnerMountIntent::default());
        assert_eq!(
            serde_json::to_value(RunnerMountIntent::default()).expect("encode"),
            json!({"kind": "provider_native", "uri": ""})
        );
    }

    #[test]
    fn capabilities_default_missing_fields() {
        let caps: RunnerCapabilities = serde_json::from_value(json!({
            "command_exec": true, "file_read": true, "file_write": false,
            "port_preview": false, "snapshots": false, "cancellation": true
        }))
        .expect("parse");
        assert!(!caps.artifact_export);
        assert_eq!(caps.mounts, RunnerMountCapabilities::default());
    }

    #[test]
    fn events_and_requests_round_trip() {
        let ev = RunnerEvent::Output {
            seq: 1,
            stream: RunnerStream::Stderr,
            chunk: b"x".to_vec(),
        };
        let v = serde_json::to_value(&ev).expect("encode");
        assert_eq!(v["type"], "output");
        assert_eq!(
            serde_json::from_value::<RunnerEvent>(v).expect("decode"),
            ev
        );
        let req: RunnerCommandRequest =
            serde_json::from_value(json!({"command_id": "c", "program": "ls"})).expect("req");
        assert_eq!(
            req,
            RunnerCommandRequest::new("c", "ls", Vec::<String>::new())
        );
        let binding = ThreadRunnerBinding {
            destination: serde_json::from_value(json!({"id": "x", "provider_id": "local"}))
                .expect("dest"),
            workspace: "/ws".into(),
            read_roots: vec!["/ro".into()],
        };
        let back: ThreadRunnerBinding =
            serde_json::from_value(serde_json::to_value(&binding).expect("encode"))
                .expect("decode");
        assert_eq!(back, binding);
    }

    #[test]
    fn secret_ref_env_var_name() {
        assert_eq!(
            RunnerSecretRef {
                id: "ws-token.v2".into()
            }
            .env_var(),
            "BATON_SECRET_WS_TOKEN_V2"
        );
        let err = RunnerSecretRef {
            id: "surely-unset-baton-test".into(),
        }
        .resolve()
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("BATON_SECRET_SURELY_UNSET_BATON_TEST"),
            "{err}"
        );
    }
}
