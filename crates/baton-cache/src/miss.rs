//! Why a lookup missed.

use std::fmt;

/// Why a cache lookup missed. `Display` gives the text printed after `cache miss: `, e.g.
/// `'src/a.ts' modified` or `env NODE_ENV changed`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MissReason {
    /// No entry and no earlier run of this task: `not found in cache`.
    NotFound,
    /// An input file's or directory listing's content changed: `'path' modified`.
    Modified(String),
    /// An input appeared (newly matched by a glob, or a probed-absent path now exists):
    /// `'path' added`.
    Added(String),
    /// An input disappeared: `'path' removed`.
    Removed(String),
    /// A listed directory gained and/or lost several entries (paths relative to the workspace
    /// root, sorted): `'src/a.ts' added, 'src/b.ts' removed and 3 more`. A single change is
    /// reported as [`MissReason::Added`] or [`MissReason::Removed`].
    Listing {
        /// Entries that appeared.
        added: Vec<String>,
        /// Entries that disappeared.
        removed: Vec<String>,
    },
    /// An input could not be read to check it: `'path' unreadable: error`.
    Unreadable {
        /// The input path (relative to the workspace root).
        path: String,
        /// The I/O error text.
        error: String,
    },
    /// A tracked env value changed, or it moved between tracked and pass-through:
    /// `env NAME changed`.
    EnvChanged(String),
    /// An env variable is newly part of the key: `env NAME added`.
    EnvAdded(String),
    /// An env variable is no longer part of the key: `env NAME removed`.
    EnvRemoved(String),
    /// Same command text, different arguments (extra args after the task name): `args changed`.
    ArgsChanged,
    /// The command text changed: `command changed`.
    CommandChanged,
    /// Same command text, different program: `program changed`.
    ProgramChanged,
    /// The working directory changed: `cwd changed`.
    CwdChanged,
    /// The configured inputs changed: `input config changed`.
    InputConfigChanged,
    /// The configured outputs changed: `output config changed`.
    OutputConfigChanged,
    /// The matching entry was damaged (missing or corrupt blob, undecodable row) and has been
    /// deleted: `cache entry corrupt: detail`.
    Corrupt(String),
}

/// Changes of a directory listing named in a [`MissReason::Listing`] text; the rest are counted.
const LISTED_CHANGES: usize = 2;

/// A fingerprint key for people: non-UTF-8 keys decoded lossily.
fn shown(key: &str) -> std::borrow::Cow<'_, str> {
    match crate::os_string_from_lossless(key) {
        Some(os) if key.starts_with('\0') => {
            std::borrow::Cow::Owned(os.to_string_lossy().into_owned())
        }
        _ => std::borrow::Cow::Borrowed(key),
    }
}

impl fmt::Display for MissReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound => f.write_str("not found in cache"),
            Self::Modified(p) => write!(f, "'{}' modified", shown(p)),
            Self::Added(p) => write!(f, "'{}' added", shown(p)),
            Self::Removed(p) => write!(f, "'{}' removed", shown(p)),
            Self::Listing { added, removed } => {
                let changes: Vec<(&String, &str)> = added
                    .iter()
                    .map(|p| (p, "added"))
                    .chain(removed.iter().map(|p| (p, "removed")))
                    .collect();
                for (i, (p, what)) in changes.iter().take(LISTED_CHANGES).enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "'{}' {what}", shown(p))?;
                }
                if changes.len() > LISTED_CHANGES {
                    write!(f, " and {} more", changes.len() - LISTED_CHANGES)?;
                }
                Ok(())
            }
            Self::Unreadable { path, error } => {
                write!(f, "'{}' unreadable: {error}", shown(path))
            }
            Self::EnvChanged(n) => write!(f, "env {n} changed"),
            Self::EnvAdded(n) => write!(f, "env {n} added"),
            Self::EnvRemoved(n) => write!(f, "env {n} removed"),
            Self::ArgsChanged => f.write_str("args changed"),
            Self::CommandChanged => f.write_str("command changed"),
            Self::ProgramChanged => f.write_str("program changed"),
            Self::CwdChanged => f.write_str("cwd changed"),
            Self::InputConfigChanged => f.write_str("input config changed"),
            Self::OutputConfigChanged => f.write_str("output config changed"),
            Self::Corrupt(d) => write!(f, "cache entry corrupt: {d}"),
        }
    }
}
