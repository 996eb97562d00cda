//! Output archives (tar inside zstd) with a manifest, and restoring them into a workspace.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::codec::{DecodeError, Reader, Writer};
use crate::error::CacheError;
use crate::fingerprint::{
    Digest, key_to_path, lossless_string, os_string_from_lossless, parallel_map, path_to_key,
};

/// One output recorded in an entry's manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputFile {
    /// Path relative to the workspace root, `/`-separated ([`lossless_string`]-encoded when not
    /// UTF-8).
    pub path: String,
    /// What is at that path.
    pub kind: OutputKind,
}

/// The kind and content identity of an output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputKind {
    /// A regular file.
    File {
        /// Size in bytes.
        size: u64,
        /// BLAKE3 of the content.
        hash: Digest,
        /// Unix permission bits (`mode & 0o7777`), restored exactly (so the executable bit
        /// survives).
        mode: u32,
    },
    /// A symbolic link, stored and restored as a link (never followed).
    Symlink {
        /// The link target as read by `readlink` ([`lossless_string`]-encoded).
        target: String,
    },
}

/// What [`crate::CachedRun::restore_outputs`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RestoreStats {
    /// Files and symlinks written from the archive.
    pub written: usize,
    /// Outputs left untouched because they already matched the manifest (size, then hash).
    pub skipped: usize,
    /// Files whose content matched but whose permission bits were fixed (no archive read).
    pub mode_fixed: usize,
}

/// Which stream a log chunk was written to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    /// The child's stdout.
    Stdout,
    /// The child's stderr.
    Stderr,
}

/// A chunk of a task's output, in the order it was produced (bytes verbatim, colour escapes
/// included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogChunk {
    /// Stream the bytes were written to.
    pub stream: Stream,
    /// The raw bytes.
    pub bytes: Vec<u8>,
}

pub(crate) fn encode_logs(logs: &[LogChunk]) -> Vec<u8> {
    let mut w = Writer::with_tag(b'L');
    w.varint(logs.len() as u64);
    for chunk in logs {
        w.u8(match chunk.stream {
            Stream::Stdout => 1,
            Stream::Stderr => 2,
        });
        w.bytes(&chunk.bytes);
    }
    w.buf
}

pub(crate) fn decode_logs(buf: &[u8]) -> Result<Vec<LogChunk>, DecodeError> {
    let mut r = Reader::with_tag(buf, b'L')?;
    let n = r.varint()?;
    let mut out = Vec::new();
    for _ in 0..n {
        let stream = match r.u8()? {
            1 => Stream::Stdout,
            2 => Stream::Stderr,
            _ => return Err(DecodeError::Invalid("unknown log stream")),
        };
        out.push(LogChunk {
            stream,
            bytes: r.bytes()?.to_vec(),
        });
    }
    Ok(out)
}

pub(crate) fn encode_manifest(files: &[OutputFile]) -> Vec<u8> {
    let mut w = Writer::with_tag(b'M');
    w.varint(files.len() as u64);
    for f in files {
        w.str(&f.path);
        match &f.kind {
            OutputKind::File { size, hash, mode } => {
                w.u8(b'f');
                w.varint(*size);
                w.digest(&hash.0);
                w.varint(u64::from(*mode));
            }
            OutputKind::Symlink { target } => {
                w.u8(b'l');
                w.str(target);
            }
        }
    }
    w.buf
}

pub(crate) fn decode_manifest(buf: &[u8]) -> Result<Vec<OutputFile>, DecodeError> {
    let mut r = Reader::with_tag(buf, b'M')?;
    let n = r.varint()?;
    let mut out = Vec::new();
    for _ in 0..n {
        let path = r.str()?.to_owned();
        if normalize_key(&path).is_err() {
            return Err(DecodeError::Invalid("unsafe path in manifest"));
        }
        let kind = match r.u8()? {
            b'f' => OutputKind::File {
                size: r.varint()?,
                hash: Digest(r.digest()?),
                mode: u32::try_from(r.varint()?)
                    .map_err(|_| DecodeError::Invalid("mode out of range"))?,
            },
            b'l' => OutputKind::Symlink {
                target: r.str()?.to_owned(),
            },
            _ => return Err(DecodeError::Invalid("unknown output kind")),
        };
        out.push(OutputFile { path, kind });
    }
    Ok(out)
}

/// Checks that `path` is a clean relative path (only normal components; `.` and empty
/// components dropped) and returns its canonical key and relative `PathBuf`.
pub(crate) fn normalize_key(key: &str) -> Result<(String, PathBuf), &'static str> {
    if key.is_empty() {
        return Err("empty path");
    }
    let os = os_string_from_lossless(key).ok_or("bad non-UTF-8 encoding")?;
    let path = Path::new(&os);
    let mut rel = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(s) => rel.push(s),
            Component::CurDir => {}
            Component::ParentDir => return Err("'..' is not allowed"),
            Component::RootDir | Component::Prefix(_) => return Err("absolute path"),
        }
    }
    if rel.as_os_str().is_empty() {
        return Err("path names the workspace root");
    }
    let key = path_to_key(Path::new(""), &rel).ok_or("not a relative path")?;
    Ok((key, rel))
}

/// A writer that hashes what passes through.
pub(crate) struct HashWriter<W> {
    pub(crate) inner: W,
    pub(crate) hasher: blake3::Hasher,
    pub(crate) written: u64,
}

impl<W: Write> HashWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: blake3::Hasher::new(),
            written: 0,
        }
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct HashReader<R> {
    inner: R,
    hasher: blake3::Hasher,
    read: u64,
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

#[cfg(unix)]
fn mode_of(meta: &fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o7777
}

#[cfg(not(unix))]
fn mode_of(_meta: &fs::Metadata) -> u32 {
    0o644
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> io::Result<()> {
    Ok(())
}

#[cfg(unix)]
fn make_symlink(target: &OsStr, at: &Path) -> io::Result<()> {
    std::os::unix::fs::symlink(target, at)
}

#[cfg(not(unix))]
fn make_symlink(_target: &OsStr, _at: &Path) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "symlinks are restored on Unix only",
    ))
}

enum Pending {
    File(PathBuf, fs::Metadata),
    Symlink(String),
}

/// Collects the outputs (files, symlinks; directories expanded recursively; missing paths
/// skipped) in path order.
fn collect_outputs<S: AsRef<str>>(
    root: &Path,
    outputs: &[S],
) -> Result<BTreeMap<String, Pending>, CacheError> {
    let mut found = BTreeMap::new();
    let mut stack: Vec<(String, PathBuf)> = Vec::new();
    for out in outputs {
        let (key, rel) =
            normalize_key(out.as_ref()).map_err(|reason| CacheError::BadOutputPath {
                path: out.as_ref().to_owned(),
                reason,
            })?;
        stack.push((key, root.join(rel)));
    }
    while let Some((key, abs)) = stack.pop() {
        if found.contains_key(&key) {
            continue;
        }
        let meta = match fs::symlink_metadata(&abs) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::debug!(path = %key, "output vanished before archiving; skipped");
                continue;
            }
            Err(e) => return Err(CacheError::io(abs, e)),
        };
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&abs).map_err(|e| CacheError::io(&abs, e))?;
            found.insert(key, Pending::Symlink(lossless_string(target.as_os_str())));
        } else if meta.is_dir() {
            for entry in fs::read_dir(&abs).map_err(|e| CacheError::io(&abs, e))? {
                let entry = entry.map_err(|e| CacheError::io(&abs, e))?;
                let child = abs.join(entry.file_name());
                if let Some(child_key) = path_to_key(root, &child) {
                    stack.push((child_key, child));
                }
            }
        } else if meta.is_file() {
            found.insert(key, Pending::File(abs, meta));
        }
    }
    Ok(found)
}

/// Writes the outputs as a tar stream into `sink` (the caller compresses) and returns the
/// manifest. File contents are hashed as they are archived.
pub(crate) fn write_archive<S: AsRef<str>, W: Write>(
    root: &Path,
    outputs: &[S],
    sink: W,
) -> Result<(Vec<OutputFile>, W), CacheError> {
    let found = collect_outputs(root, outputs)?;
    let mut builder = tar::Builder::new(sink);
    builder.mode(tar::HeaderMode::Deterministic);
    let mut manifest = Vec::with_capacity(found.len());
    let tar_err = |e: io::Error| CacheError::io("<archive>", e);
    for (key, pending) in found {
        let name = key_to_path(Path::new(""), &key);
        match pending {
            Pending::Symlink(target) => {
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                header.set_mode(0o777);
                header.set_mtime(0);
                let target_os = os_string_from_lossless(&target).unwrap_or_default();
                builder
                    .append_link(&mut header, &name, &target_os)
                    .map_err(tar_err)?;
                manifest.push(OutputFile {
                    path: key,
                    kind: OutputKind::Symlink { target },
                });
            }
            Pending::File(abs, meta) => {
                let mode = mode_of(&meta);
                let size = meta.len();
                let file = fs::File::open(&abs).map_err(|e| CacheError::io(&abs, e))?;
                let mut reader = HashReader {
                    inner: file.take(size),
                    hasher: blake3::Hasher::new(),
                    read: 0,
                };
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(size);
                header.set_mode(mode);
                header.set_mtime(0);
                builder
                    .append_data(&mut header, &name, &mut reader)
                    .map_err(|e| match e.kind() {
                        io::ErrorKind::UnexpectedEof => {
                            CacheError::OutputChanged { path: key.clone() }
                        }
                        _ => CacheError::io(&abs, e),
                    })?;
                if reader.read != size {
                    return Err(CacheError::OutputChanged { path: key });
                }
                manifest.push(OutputFile {
                    path: key,
                    kind: OutputKind::File {
                        size,
                        hash: reader.hasher.finalize().into(),
                        mode,
                    },
                });
            }
        }
    }
    let sink = builder.into_inner().map_err(tar_err)?;
    Ok((manifest, sink))
}

/// Outputs of `manifest` that do not match the workspace yet: `(index, needs_content)`; an
/// output whose content matches but whose mode differs gets its mode fixed here.
pub(crate) fn plan_restore(
    root: &Path,
    manifest: &[OutputFile],
    hasher: &(dyn Fn(&Path, &fs::Metadata) -> io::Result<Digest> + Sync),
    stats: &mut RestoreStats,
) -> Result<Vec<usize>, CacheError> {
    #[derive(Clone, Copy)]
    enum State {
        Matches,
        ModeDiffers(u32),
        Needed,
    }
    let states = parallel_map(manifest, |out| {
        let abs = key_to_path(root, &out.path);
        match &out.kind {
            OutputKind::File { size, hash, mode } => {
                let Ok(meta) = fs::symlink_metadata(&abs) else {
                    return State::Needed;
                };
                if !meta.is_file() || meta.len() != *size {
                    return State::Needed;
                }
                match hasher(&abs, &meta) {
                    Ok(h) if h == *hash => {
                        if mode_of(&meta) == *mode {
                            State::Matches
                        } else {
                            State::ModeDiffers(*mode)
                        }
                    }
                    _ => State::Needed,
                }
            }
            OutputKind::Symlink { target } => match fs::read_link(&abs) {
                Ok(t) if lossless_string(t.as_os_str()) == *target => State::Matches,
                _ => State::Needed,
            },
        }
    });
    let mut needed = Vec::new();
    for (i, state) in states.into_iter().enumerate() {
        match state {
            State::Matches => stats.skipped += 1,
            State::ModeDiffers(mode) => {
                let abs = key_to_path(root, &manifest[i].path);
                set_mode(&abs, mode).map_err(|e| CacheError::io(&abs, e))?;
                stats.mode_fixed += 1;
            }
            State::Needed => needed.push(i),
        }
    }
    Ok(needed)
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A unique temporary file name in `dir` (never a valid blob or output name we produce).
pub(crate) fn temp_path(dir: &Path) -> PathBuf {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    dir.join(format!(".baton-tmp-{}-{n}-{nanos:x}", std::process::id()))
}

/// Temp files created during a restore; removed on drop unless renamed into place.
struct Staged {
    items: Vec<(PathBuf, PathBuf, String)>,
}

impl Drop for Staged {
    fn drop(&mut self) {
        for (tmp, _, _) in &self.items {
            let _ = fs::remove_file(tmp);
        }
    }
}

fn corrupt(detail: impl Into<String>) -> CacheError {
    CacheError::Corrupt {
        detail: detail.into(),
    }
}

/// Extracts the `needed` outputs of `manifest` from the archive stream `tar_stream` (already
/// decompressed) into `root`. Every archive path is checked (absolute or `..` refused); every
/// written file is verified against the manifest's size and BLAKE3 before anything is renamed
/// into place; files are written to a temp name in their directory and renamed.
pub(crate) fn extract<R: Read>(
    root: &Path,
    manifest: &[OutputFile],
    needed: &[usize],
    tar_stream: R,
) -> Result<usize, CacheError> {
    let root_canon = fs::canonicalize(root).map_err(|e| CacheError::io(root, e))?;
    let mut wanted: HashMap<&str, usize> = needed
        .iter()
        .map(|&i| (manifest[i].path.as_str(), i))
        .collect();
    let mut staged = Staged { items: Vec::new() };
    let mut safe_dirs: HashSet<PathBuf> = HashSet::new();
    let mut archive = tar::Archive::new(tar_stream);
    let entries = archive
        .entries()
        .map_err(|e| corrupt(format!("unreadable archive: {e}")))?;
    for entry in entries {
        if wanted.is_empty() {
            break;
        }
        let mut entry = entry.map_err(|e| corrupt(format!("unreadable archive: {e}")))?;
        let raw = entry.path_bytes().into_owned();
        let raw_os = bytes_to_os(&raw);
        let key = lossless_string(&raw_os);
        let (key, rel) = normalize_key(&key)
            .map_err(|why| corrupt(format!("unsafe archive path '{key}': {why}")))?;
        let Some(idx) = wanted.remove(key.as_str()) else {
            continue;
        };
        let out = &manifest[idx];
        let dest = root.join(&rel);
        let parent = dest.parent().unwrap_or(root).to_path_buf();
        if !safe_dirs.contains(&parent) {
            fs::create_dir_all(&parent).map_err(|e| CacheError::io(&parent, e))?;
            let canon = fs::canonicalize(&parent).map_err(|e| CacheError::io(&parent, e))?;
            if !canon.starts_with(&root_canon) {
                return Err(CacheError::Restore {
                    path: key,
                    reason: "its directory resolves outside the workspace".into(),
                });
            }
            safe_dirs.insert(parent.clone());
        }
        let tmp = temp_path(&parent);
        match &out.kind {
            OutputKind::File { size, hash, mode } => {
                if entry.header().entry_type() != tar::EntryType::Regular {
                    return Err(corrupt(format!("'{key}' is not a file in the archive")));
                }
                let file = fs::File::create(&tmp).map_err(|e| CacheError::io(&tmp, e))?;
                staged.items.push((tmp.clone(), dest, key.clone()));
                let mut w = HashWriter::new(io::BufWriter::new(file));
                io::copy(&mut (&mut entry).take(size + 1), &mut w)
                    .map_err(|e| corrupt(format!("unreadable archive: {e}")))?;
                w.flush().map_err(|e| CacheError::io(&tmp, e))?;
                let got: Digest = w.hasher.finalize().into();
                if w.written != *size || got != *hash {
                    return Err(corrupt(format!(
                        "'{key}' in the archive does not match its recorded hash"
                    )));
                }
                drop(w);
                set_mode(&tmp, *mode).map_err(|e| CacheError::io(&tmp, e))?;
            }
            OutputKind::Symlink { target } => {
                let link = entry
                    .link_name_bytes()
                    .map(|b| lossless_string(&bytes_to_os(&b)));
                if entry.header().entry_type() != tar::EntryType::Symlink
                    || link.as_deref() != Some(target.as_str())
                {
                    return Err(corrupt(format!(
                        "symlink '{key}' in the archive does not match the manifest"
                    )));
                }
                let target_os = os_string_from_lossless(target).unwrap_or_default();
                make_symlink(&target_os, &tmp).map_err(|e| CacheError::io(&tmp, e))?;
                staged.items.push((tmp, dest, key.clone()));
            }
        }
    }
    if let Some(missing) = wanted.keys().next() {
        return Err(corrupt(format!("'{missing}' is missing from the archive")));
    }
    let written = staged.items.len();
    // Rename in order; on failure the items not yet renamed stay in `staged` and its drop
    // removes their temp files.
    while let Some((tmp, dest, key)) = staged.items.pop() {
        if let Ok(meta) = fs::symlink_metadata(&dest)
            && meta.is_dir()
            && fs::remove_dir(&dest).is_err()
        {
            let _ = fs::remove_file(&tmp);
            return Err(CacheError::Restore {
                path: key,
                reason: "a non-empty directory is in the way".into(),
            });
        }
        if let Err(e) = fs::rename(&tmp, &dest) {
            let _ = fs::remove_file(&tmp);
            return Err(CacheError::io(dest, e));
        }
    }
    Ok(written)
}

#[cfg(unix)]
fn bytes_to_os(b: &[u8]) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStrExt;
    OsStr::from_bytes(b).to_owned()
}

#[cfg(not(unix))]
fn bytes_to_os(b: &[u8]) -> std::ffi::OsString {
    String::from_utf8_lossy(b).into_owned().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_refuses_hostile_paths() {
        assert!(normalize_key("/etc/passwd").is_err());
        assert!(normalize_key("../x").is_err());
        assert!(normalize_key("a/../../x").is_err());
        assert!(normalize_key("").is_err());
        assert!(normalize_key(".").is_err());
        assert_eq!(normalize_key("./a//b/").unwrap().0, "a/b");
    }

    #[test]
    fn logs_round_trip() {
        let logs = vec![
            LogChunk {
                stream: Stream::Stdout,
                bytes: b"\x1b[32mok\x1b[0m\n".to_vec(),
            },
            LogChunk {
                stream: Stream::Stderr,
                bytes: vec![0xff, 0],
            },
        ];
        assert_eq!(decode_logs(&encode_logs(&logs)).unwrap(), logs);
    }
}
