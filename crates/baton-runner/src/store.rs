//! Content-addressed stores for snapshots and artifacts, and the tar+zstd archive format of
//! workspace snapshots and directory artifacts.
//!
//! Layout: `<dir>/<hex>` holds the bytes whose BLAKE3 is `<hex>` (64 lowercase hex digits);
//! `<dir>/<hex>.json` holds the non-secret metadata; `<dir>/tmp/` holds files being written
//! (renamed into place when complete, so a reader never sees a partial entry). File hashing
//! reuses `baton_cache::hash_file`; the archive helpers of `baton-cache` are private to it and
//! tuned for output restore, so this module has its own small pack/unpack.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{RunnerError, check_no_secrets};

/// zstd level of snapshot and directory-artifact archives.
pub const ZSTD_LEVEL: i32 = 3;

/// A directory of content-addressed blobs (`kind` is `"snapshot"` or `"artifact"`, used in
/// errors).
#[derive(Debug, Clone)]
pub struct ContentStore {
    dir: PathBuf,
    kind: &'static str,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl ContentStore {
    /// Opens (creating) the store at `dir`.
    ///
    /// # Errors
    /// [`RunnerError::Io`] when the directory cannot be created.
    pub fn open(dir: impl Into<PathBuf>, kind: &'static str) -> Result<Self, RunnerError> {
        let dir = dir.into();
        std::fs::create_dir_all(dir.join("tmp"))
            .map_err(|e| RunnerError::io(format!("cannot create {kind} store {dir:?}"), e))?;
        Ok(Self { dir, kind })
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn tmp_path(&self) -> PathBuf {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        self.dir
            .join("tmp")
            .join(format!("{}-{n}", std::process::id()))
    }

    /// Stores `bytes`; returns `(hex blake3, size)`. Storing the same bytes twice is a no-op.
    ///
    /// # Errors
    /// [`RunnerError::Io`].
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<(String, u64), RunnerError> {
        let id = blake3::hash(bytes).to_hex().to_string();
        let dest = self.dir.join(&id);
        if !dest.exists() {
            let tmp = self.tmp_path();
            let write = || -> io::Result<()> {
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(bytes)?;
                f.sync_all()?;
                std::fs::rename(&tmp, &dest)
            };
            write().map_err(|e| RunnerError::io(format!("cannot store {} {id}", self.kind), e))?;
        }
        Ok((id, bytes.len() as u64))
    }

    /// Copies the file at `path` (symlinks followed) into the store; returns `(hex blake3,
    /// size)`.
    ///
    /// # Errors
    /// [`RunnerError::Io`].
    pub fn put_file(&self, path: &Path) -> Result<(String, u64), RunnerError> {
        let tmp = self.tmp_path();
        let ctx = || format!("cannot store {} from {path:?}", self.kind);
        let size = std::fs::copy(path, &tmp).map_err(|e| RunnerError::io(ctx(), e))?;
        let id = baton_cache::hash_file(&tmp)
            .map_err(|e| RunnerError::io(ctx(), e))?
            .to_hex();
        std::fs::rename(&tmp, self.dir.join(&id)).map_err(|e| RunnerError::io(ctx(), e))?;
        Ok((id, size))
    }

    /// Writes `metadata` beside blob `id` after [`check_no_secrets`].
    ///
    /// # Errors
    /// [`RunnerError::SecretInMetadata`], [`RunnerError::Io`].
    pub fn put_metadata(&self, id: &str, metadata: &serde_json::Value) -> Result<(), RunnerError> {
        check_no_secrets(metadata)?;
        let path = self.path_of(id)?.with_extension("json");
        std::fs::write(&path, metadata.to_string())
            .map_err(|e| RunnerError::io(format!("cannot write {path:?}"), e))
    }

    /// Path of blob `id`.
    ///
    /// # Errors
    /// [`RunnerError::NotInStore`] when `id` is not 64 hex digits or is absent.
    pub fn path_of(&self, id: &str) -> Result<PathBuf, RunnerError> {
        let valid = id.len() == 64
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let path = self.dir.join(id);
        if valid && path.is_file() {
            Ok(path)
        } else {
            Err(RunnerError::NotInStore {
                kind: self.kind,
                id: id.to_string(),
            })
        }
    }

    /// The bytes of blob `id`.
    ///
    /// # Errors
    /// [`RunnerError::NotInStore`], [`RunnerError::Io`].
    pub fn get(&self, id: &str) -> Result<Vec<u8>, RunnerError> {
        let path = self.path_of(id)?;
        std::fs::read(&path).map_err(|e| RunnerError::io(format!("cannot read {path:?}"), e))
    }
}

/// The two stores a provider writes to.
#[derive(Debug, Clone)]
pub struct RunnerStores {
    /// Workspace snapshots (tar+zstd).
    pub snapshots: ContentStore,
    /// Exported artifacts (files as is, directories as tar+zstd).
    pub artifacts: ContentStore,
}

impl RunnerStores {
    /// Opens `<dir>/snapshots` and `<dir>/artifacts`.
    ///
    /// # Errors
    /// [`RunnerError::Io`].
    pub fn open(dir: &Path) -> Result<Self, RunnerError> {
        Ok(Self {
            snapshots: ContentStore::open(dir.join("snapshots"), "snapshot")?,
            artifacts: ContentStore::open(dir.join("artifacts"), "artifact")?,
        })
    }
}

/// Packs the tree at `dir` (contents only, paths relative, entries in sorted order) as a tar
/// stream. Symlinks are stored as links, never followed; sockets, FIFOs and devices are
/// skipped.
///
/// # Errors
/// [`RunnerError::Io`].
pub fn tar_dir(dir: &Path) -> Result<Vec<u8>, RunnerError> {
    let ctx = |e| RunnerError::io(format!("cannot archive {dir:?}"), e);
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let abs = dir.join(&rel);
        let mut entries = std::fs::read_dir(&abs)
            .and_then(|rd| rd.collect::<io::Result<Vec<_>>>())
            .map_err(ctx)?;
        entries.sort_by_key(std::fs::DirEntry::file_name);
        let mut subdirs = Vec::new();
        for entry in entries {
            let child = rel.join(entry.file_name());
            let ty = entry.file_type().map_err(ctx)?;
            if ty.is_dir() {
                builder.append_dir(&child, entry.path()).map_err(ctx)?;
                subdirs.push(child);
            } else if ty.is_file() || ty.is_symlink() {
                builder
                    .append_path_with_name(entry.path(), &child)
                    .map_err(ctx)?;
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    builder.into_inner().map_err(ctx)
}

/// zstd-compresses `bytes` at [`ZSTD_LEVEL`].
///
/// # Errors
/// [`RunnerError::Io`].
pub fn compress(bytes: &[u8]) -> Result<Vec<u8>, RunnerError> {
    zstd::encode_all(bytes, ZSTD_LEVEL).map_err(|e| RunnerError::io("cannot compress archive", e))
}

/// Decompresses a zstd frame.
///
/// # Errors
/// [`RunnerError::Io`] on a corrupt frame.
pub fn decompress(bytes: &[u8]) -> Result<Vec<u8>, RunnerError> {
    zstd::decode_all(bytes).map_err(|e| RunnerError::io("cannot decompress archive", e))
}

/// Unpacks a tar stream into `dir` (created). Entries whose path would leave `dir` are refused
/// by the `tar` crate.
///
/// # Errors
/// [`RunnerError::Io`].
pub fn untar_into(tar_bytes: &[u8], dir: &Path) -> Result<(), RunnerError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| RunnerError::io(format!("cannot create {dir:?}"), e))?;
    let mut archive = tar::Archive::new(tar_bytes);
    archive.set_preserve_permissions(true);
    archive
        .unpack(dir)
        .map_err(|e| RunnerError::io(format!("cannot unpack archive into {dir:?}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_addressed_round_trip() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = ContentStore::open(tmp.path().join("s"), "snapshot").expect("open");
        let (id, size) = store.put_bytes(b"hello").expect("put");
        assert_eq!(id, blake3::hash(b"hello").to_hex().to_string());
        assert_eq!(size, 5);
        assert_eq!(store.get(&id).expect("get"), b"hello");
        assert!(matches!(
            store.get("../../etc/passwd"),
            Err(RunnerError::NotInStore { .. })
        ));
        let err = store
            .put_metadata(&id, &serde_json::json!({"api_token": "abc"}))
            .unwrap_err();
        assert!(matches!(err, RunnerError::SecretInMetadata(_)), "{err}");
    }

    #[test]
    fn archive_round_trip() {
        let tmp = tempfile::tempdir().expect("tmp");
        let src = tmp.path().join("src");
        std::fs::create_dir_all(src.join("d")).expect("mkdir");
        std::fs::write(src.join("d/f.txt"), "x").expect("write");
        // A socket (or FIFO) in the workspace is skipped, not an error.
        let _socket = std::os::unix::net::UnixListener::bind(src.join("d/app.sock")).expect("bind");
        std::os::unix::fs::symlink("f.txt", src.join("d/link")).expect("symlink");
        let packed = compress(&tar_dir(&src).expect("tar")).expect("zstd");
        let dst = tmp.path().join("dst");
        untar_into(&decompress(&packed).expect("unzstd"), &dst).expect("untar");
        assert_eq!(
            std::fs::read_to_string(dst.join("d/f.txt")).expect("read"),
            "x"
        );
    }
}
