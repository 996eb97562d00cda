//! The `fs/*` methods, confined to the roots (see [`crate::Roots`]). They run on the blocking
//! pool.

use std::io::ErrorKind;
use std::path::Path;
use std::time::SystemTime;

use baton_protocol::exec::{
    Empty, FsCopyParams, FsCreateDirectoryParams, FsGetMetadataParams, FsGetMetadataResponse,
    FsReadDirectoryEntry, FsReadDirectoryParams, FsReadDirectoryResponse, FsReadFileParams,
    FsReadFileResponse, FsRemoveParams, FsWriteFileParams, error_codes,
};
use baton_protocol::jsonrpc::RpcError;

use crate::paths::{Last, Roots};

fn io_error(what: &str, path: &Path, e: std::io::Error) -> RpcError {
    let message = format!("{what} '{}': {e}", path.display());
    match e.kind() {
        ErrorKind::NotFound => RpcError::new(error_codes::NOT_FOUND, message),
        ErrorKind::PermissionDenied => RpcError::new(error_codes::ACCESS_DENIED, message),
        ErrorKind::InvalidInput | ErrorKind::AlreadyExists | ErrorKind::DirectoryNotEmpty => {
            RpcError::invalid_params(message)
        }
        _ if matches!(e.raw_os_error(), Some(libc::EISDIR | libc::ENOTDIR)) => {
            RpcError::invalid_params(message)
        }
        _ => RpcError::internal(message),
    }
}

fn ms(t: std::io::Result<SystemTime>) -> i64 {
    t.ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub(crate) fn read_file(
    roots: &Roots,
    p: FsReadFileParams,
) -> Result<FsReadFileResponse, RpcError> {
    let path = roots.resolve(&p.path, Last::Follow)?;
    let data = std::fs::read(&path).map_err(|e| io_error("cannot read", &path, e))?;
    Ok(FsReadFileResponse {
        data_base64: data.into(),
    })
}

pub(crate) fn write_file(roots: &Roots, p: FsWriteFileParams) -> Result<Empty, RpcError> {
    let path = roots.resolve(&p.path, Last::Follow)?;
    std::fs::write(&path, &p.data_base64.0).map_err(|e| io_error("cannot write", &path, e))?;
    Ok(Empty {})
}

pub(crate) fn create_directory(
    roots: &Roots,
    p: FsCreateDirectoryParams,
) -> Result<Empty, RpcError> {
    let path = roots.resolve(&p.path, Last::Follow)?;
    let r = if p.recursive.unwrap_or(true) {
        std::fs::create_dir_all(&path)
    } else {
        std::fs::create_dir(&path)
    };
    r.map_err(|e| io_error("cannot create directory", &path, e))?;
    Ok(Empty {})
}

pub(crate) fn get_metadata(
    roots: &Roots,
    p: FsGetMetadataParams,
) -> Result<FsGetMetadataResponse, RpcError> {
    let link = roots.resolve(&p.path, Last::NoFollow)?;
    let lmeta = std::fs::symlink_metadata(&link).map_err(|e| io_error("cannot stat", &link, e))?;
    let is_symlink = lmeta.file_type().is_symlink();
    let meta = if is_symlink {
        // Following the link must stay inside the roots too.
        let target = roots.resolve(&p.path, Last::Follow)?;
        std::fs::metadata(&target).map_err(|e| io_error("cannot stat", &target, e))?
    } else {
        lmeta
    };
    Ok(FsGetMetadataResponse {
        is_directory: meta.is_dir(),
        is_file: meta.is_file(),
        is_symlink,
        size: meta.len(),
        created_at_ms: ms(meta.created()),
        modified_at_ms: ms(meta.modified()),
    })
}

pub(crate) fn read_directory(
    roots: &Roots,
    p: FsReadDirectoryParams,
) -> Result<FsReadDirectoryResponse, RpcError> {
    let path = roots.resolve(&p.path, Last::Follow)?;
    let rd = std::fs::read_dir(&path).map_err(|e| io_error("cannot list", &path, e))?;
    let mut entries = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| io_error("cannot list", &path, e))?;
        let meta = std::fs::metadata(entry.path()).or_else(|_| entry.metadata());
        let (is_directory, is_file) = meta.map_or((false, false), |m| (m.is_dir(), m.is_file()));
        entries.push(FsReadDirectoryEntry {
            file_name: entry.file_name().to_string_lossy().into_owned(),
            is_directory,
            is_file,
        });
    }
    entries.sort_by(|a, b| a.file_name.cmp(&b.file_name));
    Ok(FsReadDirectoryResponse { entries })
}

pub(crate) fn remove(roots: &Roots, p: FsRemoveParams) -> Result<Empty, RpcError> {
    let path = roots.resolve(&p.path, Last::NoFollow)?;
    if roots.paths().iter().any(|r| r == &path) {
        return Err(RpcError::new(
            error_codes::ACCESS_DENIED,
            format!("access denied: '{}' is an allowed root", path.display()),
        ));
    }
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound && p.force.unwrap_or(true) => {
            return Ok(Empty {});
        }
        Err(e) => return Err(io_error("cannot remove", &path, e)),
    };
    let r = if meta.is_dir() {
        if p.recursive.unwrap_or(true) {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_dir(&path)
        }
    } else {
        std::fs::remove_file(&path)
    };
    r.map_err(|e| io_error("cannot remove", &path, e))?;
    Ok(Empty {})
}

pub(crate) fn copy(roots: &Roots, p: FsCopyParams) -> Result<Empty, RpcError> {
    let src = roots.resolve(&p.source_path, Last::Follow)?;
    let dst = roots.resolve(&p.destination_path, Last::Follow)?;
    let meta = std::fs::metadata(&src).map_err(|e| io_error("cannot copy", &src, e))?;
    if meta.is_dir() {
        if !p.recursive {
            return Err(RpcError::invalid_params(format!(
                "'{}' is a directory: copying it needs `recursive: true`",
                src.display()
            )));
        }
        if dst.starts_with(&src) {
            return Err(RpcError::invalid_params(format!(
                "cannot copy '{}' into itself",
                src.display()
            )));
        }
        copy_dir(&src, &dst)
    } else {
        std::fs::copy(&src, &dst)
            .map(|_| ())
            .map_err(|e| io_error("cannot copy to", &dst, e))
    }?;
    Ok(Empty {})
}

/// Copies a tree; symlinks are recreated as symlinks (not followed), so nothing outside the
/// roots is read.
fn copy_dir(src: &Path, dst: &Path) -> Result<(), RpcError> {
    std::fs::create_dir_all(dst).map_err(|e| io_error("cannot create directory", dst, e))?;
    let rd = std::fs::read_dir(src).map_err(|e| io_error("cannot list", src, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| io_error("cannot list", src, e))?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let ft = entry
            .file_type()
            .map_err(|e| io_error("cannot stat", &from, e))?;
        if ft.is_symlink() {
            let target =
                std::fs::read_link(&from).map_err(|e| io_error("cannot read link", &from, e))?;
            std::os::unix::fs::symlink(&target, &to)
                .map_err(|e| io_error("cannot create link", &to, e))?;
        } else if ft.is_dir() {
            copy_dir(&from, &to)?;
        } else {
            std::fs::copy(&from, &to).map_err(|e| io_error("cannot copy to", &to, e))?;
        }
    }
    Ok(())
}
