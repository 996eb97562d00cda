//! Errors of cache operations. A miss is not an error (see [`crate::MissReason`]).

use std::io;
use std::path::PathBuf;

use crate::miss::MissReason;

/// A cache operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The SQLite metadata database failed (open, query, busy beyond the timeout).
    #[error("cache database error in {path}")]
    Db {
        /// The `meta.sqlite` file.
        path: PathBuf,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// A file or directory of the store, or of the workspace, could not be read or written.
    #[error("cache i/o error on {path}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// An output path given to `put` is not a clean relative path inside the workspace.
    #[error("invalid output path '{path}': {reason}")]
    BadOutputPath {
        /// The path as given.
        path: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// An output changed while it was being archived (size differs from what was read).
    #[error("output '{path}' changed while it was archived")]
    OutputChanged {
        /// The output path (relative to the workspace root).
        path: String,
    },
    /// The entry is damaged (missing or corrupt blob, hostile archive path, undecodable row); it
    /// has been deleted. Treat as a miss: see [`CacheError::as_miss_reason`].
    #[error("cache entry corrupt: {detail}")]
    Corrupt {
        /// What was wrong.
        detail: String,
    },
    /// An output could not be restored because something is in the way (e.g. a non-empty
    /// directory where a file belongs, or a parent directory that resolves outside the root).
    #[error("cannot restore '{path}': {reason}")]
    Restore {
        /// The output path (relative to the workspace root).
        path: String,
        /// Why.
        reason: String,
    },
}

impl CacheError {
    /// The miss reason a caller should report when this error means "the entry was unusable"
    /// (`cache entry corrupt: …`); `None` for other errors.
    pub fn as_miss_reason(&self) -> Option<MissReason> {
        match self {
            Self::Corrupt { detail } => Some(MissReason::Corrupt(detail.clone())),
            _ => None,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
