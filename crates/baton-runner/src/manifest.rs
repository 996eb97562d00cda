//! Copying a [`RunnerManifest`] into a new session, through the session's own file API so that
//! the path rules apply and every provider behaves the same.

use std::path::{Path, PathBuf};

use crate::{
    RunnerCommandRequest, RunnerError, RunnerFileWriteRequest, RunnerManifest, RunnerSession,
};

/// Checks a manifest without touching anything: mount kinds and URIs (S3 only), absolute
/// entry sources.
pub(crate) fn validate(manifest: &RunnerManifest, provider: &str) -> Result<(), RunnerError> {
    for mount in &manifest.mounts {
        crate::s3::validate_mount(mount, provider)?;
    }
    for entry in &manifest.entries {
        if !entry.source.is_absolute() {
            return Err(RunnerError::InvalidDestination(format!(
                "manifest source {:?} is not absolute",
                entry.source
            )));
        }
    }
    Ok(())
}

/// Applies `manifest`: syncs each mount in (S3 only; other kinds are
/// [`RunnerError::Unsupported`]), then copies each entry's
/// `source` (absolute, on this host; a file, or a directory copied recursively — symlinks and
/// empty subdirectories are skipped) to `target` in the workspace; a non-writable entry is then
/// made read-only with `chmod -R a-w` on the runner.
pub(crate) async fn apply(
    session: &dyn RunnerSession,
    manifest: &RunnerManifest,
    provider: &str,
) -> Result<(), RunnerError> {
    for mount in &manifest.mounts {
        crate::s3::sync_in(session, mount, provider).await?;
    }
    for entry in &manifest.entries {
        if !entry.source.is_absolute() {
            return Err(RunnerError::InvalidDestination(format!(
                "manifest source {:?} is not absolute",
                entry.source
            )));
        }
        let files = list_files(&entry.source)?;
        if files.is_empty() {
            session.create_dir(&entry.target).await?;
        }
        for (rel, abs) in files {
            let contents = tokio::fs::read(&abs)
                .await
                .map_err(|e| RunnerError::io(format!("cannot read manifest source {abs:?}"), e))?;
            let target = if rel.as_os_str().is_empty() {
                entry.target.clone()
            } else {
                entry.target.join(rel)
            };
            session
                .write_file(RunnerFileWriteRequest {
                    path: target,
                    contents,
                })
                .await?;
        }
        if !entry.writable {
            let target = session.paths().absolutize(&entry.target);
            session.paths().check(
                &entry.target,
                &crate::normalize_lexically(&target),
                crate::Access::Write,
            )?;
            let mut req = RunnerCommandRequest::new(
                format!("manifest-chmod-{}", crate::fresh_id()),
                "chmod",
                ["-R", "a-w", "--"],
            );
            req.args.push(target.to_string_lossy().into_owned());
            let res = session.run_command(req).await?;
            if res.exit_code != Some(0) {
                return Err(RunnerError::Remote {
                    what: "chmod",
                    message: res.stderr,
                });
            }
        }
    }
    Ok(())
}

/// Regular files under `source` as (relative path, absolute path); a file source yields one
/// entry with an empty relative path.
fn list_files(source: &Path) -> Result<Vec<(PathBuf, PathBuf)>, RunnerError> {
    let meta = std::fs::symlink_metadata(source)
        .map_err(|e| RunnerError::io(format!("cannot read manifest source {source:?}"), e))?;
    if meta.is_file() {
        return Ok(vec![(PathBuf::new(), source.to_path_buf())]);
    }
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = source.join(&rel);
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| RunnerError::io(format!("cannot list {dir:?}"), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| RunnerError::io(format!("cannot list {dir:?}"), e))?;
            let ty = entry
                .file_type()
                .map_err(|e| RunnerError::io(format!("cannot stat in {dir:?}"), e))?;
            let child = rel.join(entry.file_name());
            if ty.is_dir() {
                stack.push(child);
            } else if ty.is_file() {
                out.push((child, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}
