//! Errors of runner operations.

use std::io;
use std::path::PathBuf;

/// Why a runner operation failed. Messages name paths, ids and environment-variable names,
/// never secret values.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunnerError {
    /// The provider cannot do this (its [`crate::RunnerCapabilities`] flag is `false`).
    #[error("{operation} is not supported by the {provider} provider")]
    Unsupported {
        /// The operation (`"expose_port"`, `"mount s3"`, …).
        operation: String,
        /// The provider id.
        provider: String,
    },
    /// A destination's or session state's config is unusable.
    #[error("invalid destination: {0}")]
    InvalidDestination(String),
    /// A root (workspace or read root) is not absolute.
    #[error("root {0:?} is not an absolute path")]
    RootNotAbsolute(PathBuf),
    /// A path resolves (after `..` and symlinks) outside the roots allowed for the operation.
    #[error("access denied: {path:?} is outside the {allowed}")]
    AccessDenied {
        /// The path as given.
        path: PathBuf,
        /// `"workspace"` (writes, cwd) or `"workspace and read roots"` (reads).
        allowed: &'static str,
    },
    /// A path does not exist.
    #[error("{0:?} not found")]
    NotFound(PathBuf),
    /// A directory was given to an operation that needs `recursive`.
    #[error("{0:?} is a directory (set recursive)")]
    IsDirectory(PathBuf),
    /// A file-system operation failed.
    #[error("{context}")]
    Io {
        /// What was being done (names the path).
        context: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A local process could not be started.
    #[error("cannot start command")]
    Spawn(#[source] baton_exec::SpawnError),
    /// An exec-server call failed.
    #[error("exec server call failed")]
    Client(#[source] baton_client::ClientError),
    /// A remote helper command (`realpath`, `tar`) failed.
    #[error("remote {what} failed: {message}")]
    Remote {
        /// The helper.
        what: &'static str,
        /// Its stderr or exit code.
        message: String,
    },
    /// No running command has this id.
    #[error("no running command {0:?}")]
    UnknownCommand(String),
    /// A running command already has this id.
    #[error("a command with id {0:?} is already running")]
    DuplicateCommand(String),
    /// The command's stdin is closed (or the command ended).
    #[error("stdin of command {0:?} is closed")]
    StdinClosed(String),
    /// A [`crate::RunnerSecretRef`] could not be resolved.
    #[error("secret {id:?} is not set (expected environment variable {env_var})")]
    SecretMissing {
        /// Secret id.
        id: String,
        /// The variable that was read.
        env_var: String,
    },
    /// Persistable metadata or config contains a field that looks like a secret value.
    #[error("refusing to persist secret-like field {0:?}: use a RunnerSecretRef {{id}}")]
    SecretInMetadata(String),
    /// The snapshot or artifact is not in its store.
    #[error("{kind} {id:?} not found in the store")]
    NotInStore {
        /// `"snapshot"` or `"artifact"`.
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// The session was closed.
    #[error("session is closed")]
    Closed,
}

impl RunnerError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        RunnerError::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn unsupported(operation: &str, provider: &str) -> Self {
        RunnerError::Unsupported {
            operation: operation.into(),
            provider: provider.into(),
        }
    }
}

impl From<baton_client::ClientError> for RunnerError {
    fn from(e: baton_client::ClientError) -> Self {
        RunnerError::Client(e)
    }
}
