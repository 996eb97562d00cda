//! Turning a traced run's file accesses ([`baton_trace::AccessLog`]) into cache inputs and
//! outputs.
//!
//! For every path under the workspace root (outside `.git` and the cache directory):
//! - only observed (read, stat/access probe, listing, readlink, exec): an **input**, fingerprinted
//!   after the run by what is on disk then (content hash, absent, or directory listing);
//! - written (open for writing, created, truncated, rename target, `mkdir`): an **output** if it
//!   exists after the run as a file or symlink, or as a directory that was a rename target (a
//!   staged-then-renamed directory is credited to its final name and archived whole);
//! - a directory that was only probed (stat, access), not listed: an input by existence only,
//!   under the key `dir/` (see [`dir_probe_state`]);
//! - read *and* written: a **conflict** — the run's result depends on state it produced itself, so
//!   it is not cached (the path is printed);
//! - removed or renamed away and not recreated: neither;
//! - a directory that holds an output is not an input, even if it was listed (a restore
//!   recreates it). In a task of several items the scheduler applies this again over the outputs
//!   of every item, when it stores the task after its last item.
//!
//! Paths outside the workspace (the toolchain, `/tmp`) are not tracked.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use baton_trace::{AccessKind, AccessLog};

use crate::workspace::rel_slash;

/// What a traced run read and wrote, relative to the workspace root (`/`-separated, sorted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TracedAccesses {
    /// Paths observed and not written.
    pub inputs: Vec<String>,
    /// Written paths that exist after the run.
    pub outputs: Vec<String>,
    /// Paths both read and written.
    pub conflicts: Vec<String>,
    /// The first connection to a non-loopback address, as `ip:port`.
    pub network: Option<String>,
    /// Accesses the tracer could not resolve to a path.
    pub unresolved: u64,
}

/// Classifies a log. `exclude` are absolute directories never tracked (the cache directory).
pub fn classify(log: &AccessLog, root: &Path, exclude: &[PathBuf]) -> TracedAccesses {
    let mut inputs = BTreeSet::new();
    let mut outputs = BTreeSet::new();
    let mut conflicts = BTreeSet::new();
    for (path, kinds) in log.paths() {
        let Ok(rel) = path.strip_prefix(root) else {
            continue;
        };
        if rel.as_os_str().is_empty()
            || rel.components().any(|c| c.as_os_str() == ".git")
            || exclude.iter().any(|e| path.starts_with(e))
        {
            continue;
        }
        let key = rel_slash(root, path);
        let written = kinds.contains(AccessKind::Write)
            || kinds.contains(AccessKind::RenameTo)
            || kinds.contains(AccessKind::CreateDir);
        if !kinds.has_mutation() {
            // A directory that was only probed (stat, access), not listed: its existence is
            // the input, not its entries (else adding a package would invalidate every task
            // that stat()ed `packages/`). Such keys end with `/` (see [`dir_probe_state`]).
            let stat_only = kinds.iter().all(|k| k == AccessKind::Stat);
            if stat_only && path.is_dir() {
                inputs.insert(format!("{key}/"));
            } else {
                inputs.insert(key);
            }
            continue;
        }
        if !written {
            // Removed or renamed away: gone, or recreated by a later write we saw too.
            continue;
        }
        let meta = std::fs::symlink_metadata(path);
        let is_dir = meta.as_ref().is_ok_and(|m| m.is_dir());
        if kinds.contains(AccessKind::Read)
            && !is_dir
            && (kinds.contains(AccessKind::Write) || kinds.contains(AccessKind::RenameTo))
        {
            conflicts.insert(key.clone());
        }
        match meta {
            Ok(m) if m.is_dir() => {
                if kinds.contains(AccessKind::RenameTo) {
                    outputs.insert(key);
                }
            }
            Ok(_) => {
                outputs.insert(key);
            }
            Err(_) => {}
        }
    }
    // A file inside a directory credited as a whole is not listed twice.
    let dirs: Vec<String> = outputs
        .iter()
        .filter(|o| root.join(o).is_dir())
        .cloned()
        .collect();
    if !dirs.is_empty() {
        outputs.retain(|o| {
            !dirs.iter().any(|d| {
                o.len() > d.len() && o.starts_with(d.as_str()) && o.as_bytes()[d.len()] == b'/'
            })
        });
        // Reading files inside a directory the run wrote is not an input either.
        inputs.retain(|i| {
            !dirs.iter().any(|d| {
                i.len() > d.len() && i.starts_with(d.as_str()) && i.as_bytes()[d.len()] == b'/'
            })
        });
    }
    // A directory that holds an output was probed or listed on the way to writing it: it is
    // recreated by a restore, so it is not an input (else deleting `dist/` would be a miss rather
    // than a restore).
    let mut output_parents = BTreeSet::new();
    for o in &outputs {
        let mut rest = o.as_str();
        while let Some(pos) = rest.rfind('/') {
            rest = &rest[..pos];
            if !output_parents.insert(rest.to_owned()) {
                break;
            }
        }
    }
    inputs.retain(|i| !output_parents.contains(i));
    TracedAccesses {
        inputs: inputs.into_iter().collect(),
        outputs: outputs.into_iter().collect(),
        conflicts: conflicts.into_iter().collect(),
        network: log.non_loopback_connect().map(|n| n.addr.to_string()),
        unresolved: log.unresolved().total(),
    }
}

/// The state of a `dir/` key: whether a directory exists there (its entries do not matter).
pub fn dir_probe_state(root: &Path, key: &str) -> baton_cache::PathState {
    let path = root.join(key.trim_end_matches('/'));
    match std::fs::metadata(&path) {
        Ok(m) if m.is_dir() => baton_cache::PathState::File {
            hash: baton_cache::Digest::of(b"baton:directory"),
        },
        Ok(_) => baton_cache::PathState::File {
            hash: baton_cache::Digest::of(b"baton:not-a-directory"),
        },
        Err(_) => baton_cache::PathState::Absent,
    }
}

/// Fingerprints traced input keys: `dir/` keys with [`dir_probe_state`], the rest with
/// `fingerprint` (the store's hash-cached fingerprinting).
pub fn fingerprint_traced<S: AsRef<str>>(
    root: &Path,
    keys: &[S],
    fingerprint: impl FnOnce(
        &[&str],
    )
        -> Result<baton_cache::InputFingerprint, baton_cache::FingerprintError>,
) -> Result<baton_cache::InputFingerprint, baton_cache::FingerprintError> {
    let (dirs, files): (Vec<&str>, Vec<&str>) = keys
        .iter()
        .map(AsRef::as_ref)
        .partition(|k| k.ends_with('/'));
    let mut fp = fingerprint(&files)?;
    for d in dirs {
        fp.insert(d, dir_probe_state(root, d));
    }
    Ok(fp)
}
