//! The on-disk store: `meta.sqlite` + content-addressed blobs.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::archive::{
    self, HashWriter, LogChunk, OutputFile, OutputKind, RestoreStats, decode_logs, decode_manifest,
    encode_logs, encode_manifest, temp_path,
};
use crate::codec::{Reader, Writer};
use crate::error::CacheError;
use crate::fingerprint::{
    Digest, FingerprintError, InputFingerprint, PathState, SpawnFingerprint, change, env_key_state,
    hash_file, is_absent, is_env_key, key_to_path, listing_digest, listing_entries, listing_hash,
};
use crate::miss::MissReason;
use crate::statcache::{
    PENDING_FLUSH_AT, Pending, RACY_MARGIN_NS, StatCache, StatKey, abs_key, now_ns, stat_key,
    write_pending,
};

/// Version of the on-disk layout; the store lives in `<dir>/v{SCHEMA_VERSION}/`. Bump it whenever
/// the layout or any encoding changes; old directories are then ignored (and removed by
/// [`CacheStore::clean`]).
pub const SCHEMA_VERSION: u32 = 1;

/// Entries kept per spawn key (most recent first); older ones are pruned on `put`.
pub const MAX_ENTRIES_PER_SPAWN_KEY: usize = 4;

/// Entries kept per task id over all its spawn keys; older ones are pruned on `put`.
pub const MAX_ENTRIES_PER_TASK: usize = 16;

/// Log bytes (encoded) up to which logs are stored inline in the entry row instead of a blob.
const INLINE_LOGS_MAX: usize = 16 * 1024;

/// zstd level for blobs: fast, since cold runs pay for it.
const ZSTD_LEVEL: i32 = 3;

const SCHEMA_SQL: &str = "
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY,
    task_id TEXT NOT NULL,
    spawn_key BLOB NOT NULL,
    created_ms INTEGER NOT NULL,
    duration_us INTEGER NOT NULL,
    inputs BLOB NOT NULL,
    manifest BLOB NOT NULL,
    archive BLOB,
    archive_size INTEGER,
    logs_inline BLOB,
    logs_blob BLOB,
    logs_size INTEGER
);
CREATE INDEX IF NOT EXISTS entries_by_key ON entries(spawn_key, id);
CREATE INDEX IF NOT EXISTS entries_by_task ON entries(task_id, id);
CREATE INDEX IF NOT EXISTS entries_by_archive ON entries(archive);
CREATE INDEX IF NOT EXISTS entries_by_logs ON entries(logs_blob);
CREATE TABLE IF NOT EXISTS last_run (
    task_id TEXT PRIMARY KEY,
    spawn_key BLOB NOT NULL,
    spawn TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS file_hashes (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    dev INTEGER NOT NULL,
    hash BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS listings (
    entry_id INTEGER PRIMARY KEY,
    data BLOB NOT NULL
);
";

/// Revision of the tables inside a schema directory (`PRAGMA user_version`); additive changes
/// (new tables, created with `IF NOT EXISTS`) bump it without changing [`SCHEMA_VERSION`].
const DB_REVISION: i64 = 3;

/// The current state of a task's inputs, as [`CacheStore::lookup`] needs it.
///
/// `known` is the complete, freshly computed fingerprint of the glob-configured inputs (a path
/// in it that a stored entry lacks is `added`). Any path a stored entry records that is not in
/// `known` (e.g. traced inputs) is looked up with `probe`.
pub struct CurrentInputs<'a> {
    /// Current states the caller already computed (empty when none).
    pub known: &'a InputFingerprint,
    /// How to get the state of stored paths missing from `known`.
    pub probe: Probe<'a>,
    /// Environment for env-derived inputs (keys made by [`env_input_key`](crate::env_input_key) /
    /// [`EnvPattern::input_key`](crate::EnvPattern::input_key)); `None` = this process's
    /// environment.
    pub env: Option<&'a [(OsString, OsString)]>,
    /// Workspace root the paths are relative to, if the caller has one: on a miss because a
    /// listed directory changed, the entries added or removed are named (`'src/new.ts'
    /// added`) instead of the directory (`'src' modified`). [`Probe::Root`] implies it.
    pub root: Option<&'a Path>,
}

/// How [`CacheStore::lookup`] obtains the current state of a stored input path that is not in
/// [`CurrentInputs::known`].
pub enum Probe<'a> {
    /// Such paths count as absent (use when `known` is the complete current fingerprint).
    Absent,
    /// Fingerprint them under this workspace root with [`CacheStore::fingerprint_paths`].
    Root(&'a Path),
    /// Ask the caller: given paths, return their states (e.g. with its own ignore rules).
    With(&'a (dyn Fn(&[&str]) -> Result<InputFingerprint, FingerprintError> + Sync)),
}

impl<'a> CurrentInputs<'a> {
    /// `known` is the complete current fingerprint; stored paths outside it are absent.
    pub fn complete(known: &'a InputFingerprint) -> Self {
        Self {
            known,
            probe: Probe::Absent,
            env: None,
            root: None,
        }
    }

    /// `known` (possibly empty) plus probing of other stored paths under `root`.
    pub fn probing(known: &'a InputFingerprint, root: &'a Path) -> Self {
        Self {
            known,
            probe: Probe::Root(root),
            env: None,
            root: Some(root),
        }
    }

    /// Uses `env` (name, value pairs; later pairs win) for env-derived inputs instead of this
    /// process's environment.
    pub fn with_env(mut self, env: &'a [(OsString, OsString)]) -> Self {
        self.env = Some(env);
        self
    }
}

/// Result of [`CacheStore::lookup`].
#[derive(Debug)]
pub enum Lookup {
    /// An entry matches: replay its logs and restore its outputs.
    Hit(CachedRun),
    /// No entry matches, and why (printed after `cache miss: `).
    Miss(MissReason),
}

/// What [`CacheStore::put`] stores for one successful run.
#[derive(Clone, Copy, Debug)]
pub struct NewEntry<'a> {
    /// Stable id of the task item, e.g. `@scope/pkg#build` or `@scope/pkg#build[1]` for the
    /// second `&&` item; used for pruning and for explaining misses.
    pub task_id: &'a str,
    /// How the process was spawned (the key).
    pub spawn: &'a SpawnFingerprint,
    /// The inputs' states as fingerprinted after the run.
    pub inputs: &'a InputFingerprint,
    /// Workspace root that `outputs` are relative to.
    pub root: &'a Path,
    /// Output paths relative to `root` (`/`-separated). Directories are archived recursively;
    /// symlinks are stored as links; paths that no longer exist are skipped.
    pub outputs: &'a [String],
    /// stdout/stderr chunks in production order.
    pub logs: &'a [LogChunk],
    /// Wall time of the run (reported as "time saved" on hits).
    pub duration: Duration,
}

/// What [`CacheStore::put`] stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PutStats {
    /// Outputs in the manifest (files and symlinks).
    pub outputs: usize,
    /// Compressed size of the output archive in bytes (0 when there are no outputs).
    pub archive_bytes: u64,
}

/// Disk usage of one schema directory (`v1`, …) of a cache directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaStats {
    /// Directory name, e.g. `v1`.
    pub name: String,
    /// Whether it is the layout this build uses ([`SCHEMA_VERSION`]).
    pub current: bool,
    /// Entries in its database (only known for the current schema).
    pub entries: Option<u64>,
    /// Task ids with a recorded last run (only known for the current schema).
    pub tasks: Option<u64>,
    /// Blob files.
    pub blobs: u64,
    /// Total bytes of every file in the directory (database, WAL, blobs, temp files).
    pub bytes: u64,
}

/// Result of [`CacheStore::stats`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheStats {
    /// The cache directory (e.g. `<root>/.baton/cache`).
    pub dir: PathBuf,
    /// One element per schema directory found, sorted by name.
    pub schemas: Vec<SchemaStats>,
}

/// Result of [`CacheStore::clean`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CleanStats {
    /// Entries deleted from the current schema.
    pub entries: u64,
    /// Bytes freed on disk (blobs, temp files and old schema directories).
    pub bytes: u64,
}

/// Result of [`CacheStore::gc`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Blob files no entry referenced, deleted.
    pub blobs: u64,
    /// Temp files left behind by interrupted writes, deleted.
    pub temp_files: u64,
    /// Bytes freed.
    pub bytes: u64,
}

/// Temp files younger than this are left alone by [`CacheStore::gc`] (a writer may be using
/// them).
const GC_TEMP_MIN_AGE: Duration = Duration::from_secs(3600);

struct Inner {
    dir: PathBuf,
    schema_dir: PathBuf,
    blobs_dir: PathBuf,
    tmp_dir: PathBuf,
    db_path: PathBuf,
    conn: Mutex<Connection>,
    /// File hashes computed by this process, written with the next `put` or on drop.
    pending_hashes: Mutex<Pending>,
    /// Hashes of files this process already read, by (device, inode), with the stat values
    /// they were read under (see [`CacheStore::hash_once`]).
    seen: Mutex<HashMap<(u64, u64), (StatKey, Digest)>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let pending = self
            .pending_hashes
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if pending.is_empty() {
            return;
        }
        let conn = self.conn.get_mut().unwrap_or_else(PoisonError::into_inner);
        let res = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .and_then(|tx| {
                write_pending(&tx, pending)?;
                tx.commit()
            });
        if let Err(e) = res {
            tracing::debug!(error = %e, "cannot record file hashes");
        }
    }
}

/// A local task cache (see the crate docs for the layout). Cheap to clone (shared handle);
/// `Send + Sync`: one SQLite connection behind a mutex, held only for the duration of a query,
/// so many threads can look up at once. Several processes may open the same directory.
#[derive(Clone)]
pub struct CacheStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CacheStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheStore")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

/// A matching cache entry: logs to replay, outputs to restore.
pub struct CachedRun {
    store: CacheStore,
    entry_id: i64,
    duration: Duration,
    logs: Vec<LogChunk>,
    manifest: Vec<OutputFile>,
    archive: Option<(Digest, u64)>,
}

impl std::fmt::Debug for CachedRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedRun")
            .field("entry_id", &self.entry_id)
            .field("duration", &self.duration)
            .field("logs", &self.logs.len())
            .field("outputs", &self.manifest.len())
            .finish_non_exhaustive()
    }
}

impl CachedRun {
    /// The stored stdout/stderr chunks, in order (already verified).
    pub fn logs(&self) -> &[LogChunk] {
        &self.logs
    }

    /// Wall time of the original run.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// The output manifest, sorted by path.
    pub fn outputs(&self) -> &[OutputFile] {
        &self.manifest
    }

    /// Restores the outputs under `root`: outputs that already match (size, then BLAKE3) are
    /// skipped; the archive is opened only when something must be written. Written files are
    /// verified against the manifest before being renamed into place, with their mode bits.
    ///
    /// Errors: [`CacheError::Corrupt`] (missing or damaged archive; the entry has been deleted,
    /// nothing was written — rerun the task and report [`CacheError::as_miss_reason`]),
    /// [`CacheError::Restore`] / [`CacheError::Io`] when the workspace cannot be written.
    pub fn restore_outputs(&self, root: &Path) -> Result<RestoreStats, CacheError> {
        let mut stats = RestoreStats::default();
        // As in `fingerprint_paths`: hashing a small file costs less than asking the database
        // for its hash, so only outputs of at least STAT_CACHE_MIN_BYTES use the hash cache.
        let abs: Vec<String> = self
            .manifest
            .iter()
            .filter(
                |o| matches!(o.kind, OutputKind::File { size, .. } if size >= STAT_CACHE_MIN_BYTES),
            )
            .map(|o| abs_key(&key_to_path(root, &o.path)))
            .collect();
        let cache = if abs.is_empty() {
            None
        } else {
            self.store.load_stat_cache(&abs)
        };
        let hasher = |path: &Path, meta: &fs::Metadata| match &cache {
            Some(c) if meta.len() >= STAT_CACHE_MIN_BYTES => c.hash(path, &abs_key(path), meta),
            _ => self.store.hash_once(path, meta),
        };
        let needed = archive::plan_restore(root, &self.manifest, &hasher, &mut stats)?;
        if let Some(c) = cache {
            self.store.save_stat_cache(c);
        }
        if needed.is_empty() {
            return Ok(stats);
        }
        let Some((digest, _)) = self.archive else {
            return Err(self.store.discard(
                self.entry_id,
                None,
                "entry has outputs but no archive".into(),
            ));
        };
        let path = self.store.blob_path(&digest);
        let file = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                return Err(self.store.discard(
                    self.entry_id,
                    None,
                    format!("archive blob {digest} unreadable: {e}"),
                ));
            }
        };
        let decoder = match zstd::Decoder::new(file) {
            Ok(d) => d,
            Err(e) => {
                return Err(self.store.discard(
                    self.entry_id,
                    Some(digest),
                    format!("archive blob {digest}: {e}"),
                ));
            }
        };
        match archive::extract(root, &self.manifest, &needed, decoder) {
            Ok(written) => {
                stats.written = written;
                Ok(stats)
            }
            Err(CacheError::Corrupt { detail }) => Err(self.store.discard(
                self.entry_id,
                Some(digest),
                format!("archive {digest}: {detail}"),
            )),
            Err(e) => Err(e),
        }
    }
}

thread_local! {
    /// This thread's zstd compression context, reused by every archive it writes: a fresh
    /// context allocates and clears its match tables (about a megabyte at level 3), which costs
    /// more than compressing a small task's outputs.
    static COMPRESSOR: std::cell::RefCell<Option<zstd::zstd_safe::CCtx<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f` with this thread's reusable compression context (level [`ZSTD_LEVEL`], ready for a
/// new frame), or `None` when it cannot be had (then `f` makes its own encoder).
fn with_compressor<R>(f: impl FnOnce(Option<&mut zstd::zstd_safe::CCtx<'static>>) -> R) -> R {
    use zstd::zstd_safe::{CCtx, CParameter, ResetDirective};
    COMPRESSOR.with(|cell| {
        let Ok(mut slot) = cell.try_borrow_mut() else {
            return f(None);
        };
        if slot.is_none() {
            *slot = CCtx::try_create().and_then(|mut ctx| {
                ctx.set_parameter(CParameter::CompressionLevel(ZSTD_LEVEL))
                    .ok()
                    .map(|_| ctx)
            });
        }
        // A frame left unfinished by an earlier error is dropped; the parameters stay.
        if let Some(ctx) = slot.as_mut()
            && ctx.reset(ResetDirective::SessionOnly).is_err()
        {
            *slot = None;
        }
        f(slot.as_mut())
    })
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A stored blob: digest and size on disk.
type BlobRef = (Digest, u64);

/// An entry to prune: id, archive digest column, logs blob digest column.
type DoomedRow = (i64, Option<Vec<u8>>, Option<Vec<u8>>);

/// A candidate row, read under the lock and checked outside it.
struct Row {
    id: i64,
    duration_us: i64,
    inputs: Vec<u8>,
    manifest: Vec<u8>,
    archive: Option<Vec<u8>>,
    archive_size: Option<i64>,
    logs_inline: Option<Vec<u8>>,
    logs_blob: Option<Vec<u8>>,
}

/// A directory's sorted `(name bytes, type tag)` entries (see `listing_entries`).
type Listing = Vec<(Vec<u8>, u8)>;

/// The entries of every directory listing in `inputs`, read now under `root`, for the ones
/// whose listing is still the recorded one (so a later miss can name what changed).
fn record_listings(root: &Path, inputs: &InputFingerprint) -> Vec<(String, Listing)> {
    inputs
        .paths
        .iter()
        .filter_map(|(p, state)| match state {
            PathState::Dir { listing_hash } => {
                let entries = listing_entries(&key_to_path(root, p)).ok()?;
                (listing_digest(&entries) == *listing_hash).then(|| (p.clone(), entries))
            }
            _ => None,
        })
        .collect()
}

/// Encodes recorded listings (`D` tag; per directory its key and `(name, type tag)` entries);
/// `None` when there are none.
fn encode_listings(listings: &[(String, Listing)]) -> Option<Vec<u8>> {
    if listings.is_empty() {
        return None;
    }
    let mut w = Writer::with_tag(b'D');
    w.varint(listings.len() as u64);
    for (dir, entries) in listings {
        w.str(dir);
        w.varint(entries.len() as u64);
        for (name, tag) in entries {
            w.bytes(name);
            w.u8(*tag);
        }
    }
    Some(w.buf)
}

/// Decodes [`encode_listings`].
fn decode_listings(buf: &[u8]) -> Result<BTreeMap<String, Listing>, crate::codec::DecodeError> {
    let mut r = Reader::with_tag(buf, b'D')?;
    let mut out = BTreeMap::new();
    for _ in 0..r.varint()? {
        let dir = r.str()?.to_owned();
        let n = r.varint()?;
        let mut entries = Vec::new();
        for _ in 0..n {
            let name = r.bytes()?.to_vec();
            entries.push((name, r.u8()?));
        }
        out.insert(dir, entries);
    }
    Ok(out)
}

fn digest_from_col(col: &[u8]) -> Option<Digest> {
    let arr: [u8; 32] = col.try_into().ok()?;
    Some(Digest(arr))
}

/// Files smaller than this are hashed directly by [`CacheStore::fingerprint_paths`] (a BLAKE3
/// pass over a few KiB is cheaper than a database lookup); larger ones use the file-hash cache.
pub const STAT_CACHE_MIN_BYTES: u64 = 64 * 1024;

impl CacheStore {
    /// The conventional cache directory of a workspace: `<root>/.baton/cache`.
    pub fn default_dir(workspace_root: &Path) -> PathBuf {
        workspace_root.join(".baton").join("cache")
    }

    /// Opens (creating as needed) the store under `dir` (e.g. `<root>/.baton/cache`); the
    /// current layout lives in `dir/v{SCHEMA_VERSION}/`. Sets WAL mode and a 30 s busy timeout
    /// so concurrent `baton run` processes wait for each other instead of failing.
    ///
    /// Errors: the directory cannot be created, or the database cannot be opened/initialised.
    pub fn open(dir: &Path) -> Result<Self, CacheError> {
        let schema_dir = dir.join(format!("v{SCHEMA_VERSION}"));
        let blobs_dir = schema_dir.join("blobs");
        let tmp_dir = schema_dir.join("tmp");
        for d in [&blobs_dir, &tmp_dir] {
            fs::create_dir_all(d).map_err(|e| CacheError::io(d, e))?;
        }
        let db_path = schema_dir.join("meta.sqlite");
        let db_err = |source| CacheError::Db {
            path: db_path.clone(),
            source,
        };
        let conn = Connection::open(&db_path).map_err(db_err)?;
        conn.busy_timeout(Duration::from_secs(30)).map_err(db_err)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(db_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            // Switching needs a moment of exclusive access; another process may be doing the same.
            let mut attempts = 0;
            loop {
                match conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0)) {
                    Ok(_) => break,
                    Err(e) if attempts < 50 && is_busy(&e) => {
                        attempts += 1;
                        std::thread::yield_now();
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => return Err(db_err(e)),
                }
            }
        }
        conn.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=OFF;")
            .map_err(db_err)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(db_err)?;
        if version < DB_REVISION {
            let tx_sql =
                format!("BEGIN IMMEDIATE; {SCHEMA_SQL} PRAGMA user_version={DB_REVISION}; COMMIT;");
            conn.execute_batch(&tx_sql).map_err(db_err)?;
        }
        Ok(Self {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                schema_dir,
                blobs_dir,
                tmp_dir,
                db_path,
                conn: Mutex::new(conn),
                pending_hashes: Mutex::new(Pending::new()),
                seen: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The cache directory given to [`CacheStore::open`].
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The directory of the current layout (`<dir>/v{SCHEMA_VERSION}`).
    pub fn schema_dir(&self) -> &Path {
        &self.inner.schema_dir
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.inner
            .conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn db_err(&self, source: rusqlite::Error) -> CacheError {
        CacheError::Db {
            path: self.inner.db_path.clone(),
            source,
        }
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        let hex = d.to_hex();
        self.inner.blobs_dir.join(&hex[..2]).join(hex)
    }

    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.inner
            .pending_hashes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn load_stat_cache(&self, abs: &[String]) -> Option<StatCache> {
        let conn = self.conn();
        let pending = self.pending();
        match StatCache::load(&conn, &pending, abs) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::debug!(error = %e, "file hash cache unavailable");
                None
            }
        }
    }

    fn save_stat_cache(&self, cache: StatCache) {
        let full = {
            let mut pending = self.pending();
            cache.save(&mut pending);
            pending.len() >= PENDING_FLUSH_AT
        };
        if full {
            // Lock order everywhere: connection, then pending rows.
            let mut conn = self.conn();
            let mut pending = self.pending();
            let res = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .and_then(|tx| {
                    write_pending(&tx, &mut pending)?;
                    tx.commit()
                });
            if let Err(e) = res {
                tracing::debug!(error = %e, "cannot record file hashes");
            }
        }
    }

    /// The BLAKE3 of the file at `abs` whose metadata is `meta`, read at most once per process
    /// while its stat values (size, mtime, ctime, inode, device) stay the same: the same file is
    /// often an input of several tasks (a dependency's output, through each dependent's
    /// `node_modules` link) and an output restored by its own task. Only files whose timestamps
    /// are more than 2 s old when hashed are remembered, so a later write — which moves ctime to
    /// now — never leaves the same stat values behind.
    pub(crate) fn hash_once(&self, abs: &Path, meta: &fs::Metadata) -> io::Result<Digest> {
        let Some(key) = stat_key(meta) else {
            return hash_file(abs);
        };
        let id = (key.dev, key.ino);
        let seen = || {
            self.inner
                .seen
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        };
        if let Some((k, d)) = seen().get(&id)
            && *k == key
        {
            return Ok(*d);
        }
        let started = now_ns();
        let digest = hash_file(abs)?;
        if key.mtime_ns.max(key.ctime_ns) < started - RACY_MARGIN_NS {
            seen().insert(id, (key, digest));
        }
        Ok(digest)
    }

    /// Writes the file hashes remembered by [`CacheStore::fingerprint_paths`] and restores to
    /// `meta.sqlite` now (they are otherwise written with the next `put`, after 2048 of them,
    /// or when the last handle is dropped). Call before `std::process::exit`.
    ///
    /// Errors: database failures (the rows are then dropped; only speed is lost).
    pub fn flush(&self) -> Result<(), CacheError> {
        let mut conn = self.conn();
        let mut pending = self.pending();
        if pending.is_empty() {
            return Ok(());
        }
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.db_err(e))?;
        write_pending(&tx, &mut pending).map_err(|e| self.db_err(e))?;
        tx.commit().map_err(|e| self.db_err(e))
    }

    /// Like [`fingerprint_paths`], but reuses the hash of a file whose size, mtime, ctime, inode
    /// and device are unchanged since an earlier call hashed it (rows live in `meta.sqlite`,
    /// recorded only for files whose timestamps were more than 2 s old at hashing time, so a
    /// later write is always detected). Directories and absent paths are computed as usual.
    ///
    /// Errors: as [`fingerprint_paths`]. Failures of the hash cache itself are ignored (files
    /// are then simply hashed).
    pub fn fingerprint_paths<S: AsRef<str> + Sync>(
        &self,
        root: &Path,
        paths: &[S],
    ) -> Result<InputFingerprint, FingerprintError> {
        let abs: Vec<PathBuf> = paths
            .iter()
            .map(|p| key_to_path(root, p.as_ref()))
            .collect();
        // Hashing a small file costs less than asking the database for its hash: only files of
        // at least STAT_CACHE_MIN_BYTES go through the file-hash cache.
        let metas = crate::fingerprint::parallel_map(&abs, |p| fs::metadata(p));
        let big: Vec<usize> = metas
            .iter()
            .enumerate()
            .filter(|(_, m)| {
                m.as_ref()
                    .is_ok_and(|m| m.is_file() && m.len() >= STAT_CACHE_MIN_BYTES)
            })
            .map(|(i, _)| i)
            .collect();
        let keys: Vec<String> = big.iter().map(|&i| abs_key(&abs[i])).collect();
        let cache = if big.is_empty() {
            None
        } else {
            self.load_stat_cache(&keys)
        };
        let idx: Vec<usize> = (0..paths.len()).collect();
        let states = crate::fingerprint::parallel_map(&idx, |&i| -> io::Result<PathState> {
            let path = &abs[i];
            let meta = match &metas[i] {
                Ok(m) => m,
                Err(e) if is_absent(e) => return Ok(PathState::Absent),
                Err(e) => return Err(io::Error::new(e.kind(), e.to_string())),
            };
            if meta.is_dir() {
                return Ok(PathState::Dir {
                    listing_hash: listing_hash(path)?,
                });
            }
            let cached = cache.as_ref().and_then(|c| {
                let k = big.binary_search(&i).ok()?;
                Some(c.hash(path, &keys[k], meta))
            });
            match cached.unwrap_or_else(|| self.hash_once(path, meta)) {
                Ok(hash) => Ok(PathState::File { hash }),
                Err(e) if is_absent(&e) => Ok(PathState::Absent),
                Err(e) => Err(e),
            }
        });
        if let Some(cache) = cache {
            self.save_stat_cache(cache);
        }
        let mut out = InputFingerprint::new();
        for (p, state) in paths.iter().zip(states) {
            match state {
                Ok(s) => out.insert(p.as_ref(), s),
                Err(source) => {
                    return Err(FingerprintError {
                        path: p.as_ref().to_owned(),
                        source,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Looks up a run of `task_id` spawned as `spawn` whose inputs still match `current`.
    ///
    /// Candidates are the entries with the same spawn key, most recent first; one hits when the
    /// current state of every input it recorded equals the recorded state and no input in
    /// `current.known` is new to it. The hit's logs blob is verified (BLAKE3) and its archive
    /// blob checked for presence and size before returning it. On a miss the reason compares
    /// against the most recent candidate, or, when there is none, against the last stored run
    /// of `task_id` (`env NODE_ENV changed`, `args changed`, …).
    ///
    /// Errors: database or I/O failures only; a damaged entry is deleted and reported as
    /// [`MissReason::Corrupt`].
    pub fn lookup(
        &self,
        task_id: &str,
        spawn: &SpawnFingerprint,
        current: &CurrentInputs<'_>,
    ) -> Result<Lookup, CacheError> {
        let key = spawn.spawn_key();
        let rows = self.candidates(&key).map_err(|e| self.db_err(e))?;
        if rows.is_empty() {
            return self.explain_no_candidate(task_id, spawn, &key);
        }
        let mut probed: BTreeMap<String, PathState> = BTreeMap::new();
        let mut first_reason = None;
        // The entry the reason compares against, and whether that path was a listing there.
        let mut first_row: Option<(i64, bool)> = None;
        for row in rows {
            let stored = match InputFingerprint::decode(&row.inputs) {
                Ok(s) => s,
                Err(e) => {
                    let err = self.discard(row.id, None, format!("inputs record: {e}"));
                    return Ok(Lookup::Miss(MissReason::Corrupt(corrupt_detail(&err))));
                }
            };
            match check_candidate(self, &stored, current, &mut probed) {
                Ok(()) => return self.hit(row),
                Err(reason) => {
                    if matches!(reason, MissReason::Unreadable { .. }) {
                        return Ok(Lookup::Miss(reason));
                    }
                    if first_reason.is_none() {
                        let listed = match &reason {
                            MissReason::Modified(p) => {
                                matches!(stored.paths.get(p), Some(PathState::Dir { .. }))
                            }
                            _ => false,
                        };
                        first_row = Some((row.id, listed));
                        first_reason = Some(reason);
                    }
                }
            }
        }
        let root = current.root.or(match current.probe {
            Probe::Root(r) => Some(r),
            _ => None,
        });
        if let (Some(MissReason::Modified(dir)), Some((id, true)), Some(root)) =
            (&first_reason, first_row, root)
            && let Some(r) = self.explain_listing(id, dir, root)
        {
            return Ok(Lookup::Miss(r));
        }
        Ok(Lookup::Miss(first_reason.unwrap_or(MissReason::NotFound)))
    }

    /// Names the entries added to or removed from the listed directory `dir` (a key relative
    /// to `root`) since entry `id` recorded its listing; `None` when that listing was not
    /// recorded, the directory cannot be read now, or only entry types changed.
    fn explain_listing(&self, id: i64, dir: &str, root: &Path) -> Option<MissReason> {
        if dir.starts_with('\0') {
            return None;
        }
        let data: Vec<u8> = {
            let conn = self.conn();
            let mut stmt = conn
                .prepare_cached("SELECT data FROM listings WHERE entry_id = ?1")
                .ok()?;
            stmt.query_row([id], |r| r.get(0)).optional().ok()??
        };
        let before = decode_listings(&data).ok()?.remove(dir)?;
        let now = listing_entries(&key_to_path(root, dir)).ok()?;
        let names = |l: &[(Vec<u8>, u8)]| -> std::collections::BTreeSet<Vec<u8>> {
            l.iter().map(|(n, _)| n.clone()).collect()
        };
        let (before, now) = (names(&before), names(&now));
        let path = |n: &Vec<u8>| {
            let n = String::from_utf8_lossy(n);
            if dir.is_empty() || dir == "." {
                n.into_owned()
            } else {
                format!("{dir}/{n}")
            }
        };
        let added: Vec<String> = now.difference(&before).map(path).collect();
        let removed: Vec<String> = before.difference(&now).map(path).collect();
        match (added.len(), removed.len()) {
            (0, 0) => None,
            (1, 0) => added.into_iter().next().map(MissReason::Added),
            (0, 1) => removed.into_iter().next().map(MissReason::Removed),
            _ => Some(MissReason::Listing { added, removed }),
        }
    }

    fn candidates(&self, key: &Digest) -> rusqlite::Result<Vec<Row>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, duration_us, inputs, manifest, archive, archive_size, logs_inline, \
             logs_blob FROM entries WHERE spawn_key = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![&key.0[..], MAX_ENTRIES_PER_SPAWN_KEY as i64], |r| {
            Ok(Row {
                id: r.get(0)?,
                duration_us: r.get(1)?,
                inputs: r.get(2)?,
                manifest: r.get(3)?,
                archive: r.get(4)?,
                archive_size: r.get(5)?,
                logs_inline: r.get(6)?,
                logs_blob: r.get(7)?,
            })
        })?;
        rows.collect()
    }

    fn explain_no_candidate(
        &self,
        task_id: &str,
        spawn: &SpawnFingerprint,
        key: &Digest,
    ) -> Result<Lookup, CacheError> {
        let last: Option<(Vec<u8>, String)> = {
            let conn = self.conn();
            let mut stmt = conn
                .prepare_cached("SELECT spawn_key, spawn FROM last_run WHERE task_id = ?1")
                .map_err(|e| self.db_err(e))?;
            stmt.query_row([task_id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
                .map_err(|e| self.db_err(e))?
        };
        let reason = match last {
            Some((last_key, json)) if last_key != key.0 => {
                match serde_json::from_str::<SpawnFingerprint>(&json) {
                    Ok(prev) => prev.diff(spawn).unwrap_or(MissReason::NotFound),
                    Err(_) => MissReason::NotFound,
                }
            }
            _ => MissReason::NotFound,
        };
        Ok(Lookup::Miss(reason))
    }

    fn hit(&self, row: Row) -> Result<Lookup, CacheError> {
        let manifest = match decode_manifest(&row.manifest) {
            Ok(m) => m,
            Err(e) => return Ok(self.corrupt_miss(row.id, None, format!("manifest record: {e}"))),
        };
        let logs = match (&row.logs_inline, &row.logs_blob) {
            (Some(inline), _) => match decode_logs(inline) {
                Ok(l) => l,
                Err(e) => return Ok(self.corrupt_miss(row.id, None, format!("logs record: {e}"))),
            },
            (None, Some(col)) => {
                let Some(d) = digest_from_col(col) else {
                    return Ok(self.corrupt_miss(row.id, None, "logs blob id".into()));
                };
                match self.read_blob(&d).map(|b| decode_logs(&b)) {
                    Ok(Ok(l)) => l,
                    Ok(Err(e)) => {
                        return Ok(self.corrupt_miss(
                            row.id,
                            Some(d),
                            format!("logs blob {d}: {e}"),
                        ));
                    }
                    Err(detail) => return Ok(self.corrupt_miss(row.id, Some(d), detail)),
                }
            }
            (None, None) => Vec::new(),
        };
        let archive = match (&row.archive, row.archive_size) {
            (Some(col), Some(size)) => {
                let Some(d) = digest_from_col(col) else {
                    return Ok(self.corrupt_miss(row.id, None, "archive blob id".into()));
                };
                let size = u64::try_from(size).unwrap_or(0);
                match fs::metadata(self.blob_path(&d)) {
                    Ok(m) if m.len() == size => {}
                    Ok(m) => {
                        return Ok(self.corrupt_miss(
                            row.id,
                            Some(d),
                            format!("archive blob {d} has {} bytes, expected {size}", m.len()),
                        ));
                    }
                    Err(e) => {
                        return Ok(self.corrupt_miss(
                            row.id,
                            None,
                            format!("archive blob {d} unreadable: {e}"),
                        ));
                    }
                }
                Some((d, size))
            }
            _ => None,
        };
        if archive.is_none() && !manifest.is_empty() {
            return Ok(self.corrupt_miss(row.id, None, "entry has outputs but no archive".into()));
        }
        Ok(Lookup::Hit(CachedRun {
            store: self.clone(),
            entry_id: row.id,
            duration: Duration::from_micros(u64::try_from(row.duration_us).unwrap_or(0)),
            logs,
            manifest,
            archive,
        }))
    }

    fn corrupt_miss(&self, id: i64, bad_blob: Option<Digest>, detail: String) -> Lookup {
        let err = self.discard(id, bad_blob, detail);
        Lookup::Miss(MissReason::Corrupt(corrupt_detail(&err)))
    }

    /// Deletes entry `id` (and the damaged blob, if any) and returns the `Corrupt` error to
    /// report. Failures to delete are logged: the entry stays unusable either way.
    fn discard(&self, id: i64, bad_blob: Option<Digest>, detail: String) -> CacheError {
        tracing::warn!(entry = id, %detail, "discarding corrupt cache entry");
        let conn = self.conn();
        if let Err(e) = conn.execute("DELETE FROM entries WHERE id = ?1", [id]) {
            tracing::warn!(error = %e, "cannot delete corrupt cache entry");
        }
        let _ = conn.execute("DELETE FROM listings WHERE entry_id = ?1", [id]);
        if let Some(d) = bad_blob {
            let _ = fs::remove_file(self.blob_path(&d));
        }
        drop(conn);
        CacheError::Corrupt { detail }
    }

    /// Reads, decompresses and verifies a blob; `Err(detail)` when missing or corrupt.
    fn read_blob(&self, d: &Digest) -> Result<Vec<u8>, String> {
        let path = self.blob_path(d);
        let raw = fs::read(&path).map_err(|e| format!("blob {d} unreadable: {e}"))?;
        let data = zstd::decode_all(&raw[..]).map_err(|e| format!("blob {d}: {e}"))?;
        if Digest::of(&data) != *d {
            return Err(format!("blob {d} does not match its hash"));
        }
        Ok(data)
    }

    /// Stores `data` as a blob (zstd) under its BLAKE3; returns the digest and stored size.
    /// Written to a temp file in the blob's directory and renamed, so a final name always holds
    /// a complete blob.
    fn write_blob(&self, data: &[u8]) -> Result<(Digest, u64), CacheError> {
        let d = Digest::of(data);
        let path = self.blob_path(&d);
        if let Ok(m) = fs::metadata(&path) {
            return Ok((d, m.len()));
        }
        let compressed =
            zstd::encode_all(data, ZSTD_LEVEL).map_err(|e| CacheError::io(&path, e))?;
        let dir = path.parent().unwrap_or(&self.inner.blobs_dir);
        fs::create_dir_all(dir).map_err(|e| CacheError::io(dir, e))?;
        let tmp = temp_path(dir);
        let res = fs::write(&tmp, &compressed).and_then(|()| fs::rename(&tmp, &path));
        if let Err(e) = res {
            let _ = fs::remove_file(&tmp);
            return Err(CacheError::io(&path, e));
        }
        Ok((d, compressed.len() as u64))
    }

    /// Archives the outputs into a blob; `None` when there are none.
    fn write_archive_blob(
        &self,
        entry: &NewEntry<'_>,
    ) -> Result<(Vec<OutputFile>, Option<BlobRef>), CacheError> {
        let tmp = temp_path(&self.inner.tmp_dir);
        let result = with_compressor(|ctx| {
            let file = fs::File::create(&tmp).map_err(|e| CacheError::io(&tmp, e))?;
            let out = io::BufWriter::new(file);
            let encoder = match ctx {
                Some(ctx) => zstd::Encoder::with_context(out, ctx),
                None => zstd::Encoder::new(out, ZSTD_LEVEL).map_err(|e| CacheError::io(&tmp, e))?,
            };
            let (manifest, sink) =
                archive::write_archive(entry.root, entry.outputs, HashWriter::new(encoder))?;
            if manifest.is_empty() {
                return Ok((manifest, None));
            }
            let digest: Digest = sink.hasher.finalize().into();
            let mut buf = sink.inner.finish().map_err(|e| CacheError::io(&tmp, e))?;
            buf.flush().map_err(|e| CacheError::io(&tmp, e))?;
            drop(buf);
            let path = self.blob_path(&digest);
            let dir = path.parent().unwrap_or(&self.inner.blobs_dir);
            fs::create_dir_all(dir).map_err(|e| CacheError::io(dir, e))?;
            // Same filesystem (both under the schema dir), so the rename is atomic.
            fs::rename(&tmp, &path).map_err(|e| CacheError::io(&path, e))?;
            let size = fs::metadata(&path)
                .map_err(|e| CacheError::io(&path, e))?
                .len();
            Ok((manifest, Some((digest, size))))
        });
        let _ = fs::remove_file(&tmp);
        result
    }

    /// Stores a successful run (the caller ensures exit code 0). Blobs are written first
    /// (content-addressed, temp + rename); the entry row is inserted afterwards in one
    /// transaction that re-checks the blobs exist, updates the task's last-run record, and
    /// prunes old entries (keeping [`MAX_ENTRIES_PER_SPAWN_KEY`] per key and
    /// [`MAX_ENTRIES_PER_TASK`] per task) together with blobs no entry references any more.
    ///
    /// Errors: a bad output path ([`CacheError::BadOutputPath`]), an output changing while
    /// archived ([`CacheError::OutputChanged`]), I/O or database failures. Nothing is visible
    /// to lookups unless the call succeeds.
    pub fn put(&self, entry: &NewEntry<'_>) -> Result<PutStats, CacheError> {
        let spawn_json = serde_json::to_string(entry.spawn).map_err(|e| CacheError::Corrupt {
            detail: format!("cannot encode spawn fingerprint: {e}"),
        })?;
        let key = entry.spawn.spawn_key();
        let inputs = entry.inputs.encode();
        let listings = encode_listings(&record_listings(entry.root, entry.inputs));
        let duration_us = i64::try_from(entry.duration.as_micros()).unwrap_or(i64::MAX);
        // A concurrent prune may delete a blob we deduplicated against between writing and
        // inserting; the transaction re-checks and we redo the blobs once.
        for attempt in 0..3 {
            let (manifest, archive) = self.write_archive_blob(entry)?;
            let logs_enc = encode_logs(entry.logs);
            let (logs_inline, logs_blob) = if entry.logs.is_empty() {
                (None, None)
            } else if logs_enc.len() <= INLINE_LOGS_MAX {
                (Some(logs_enc), None)
            } else {
                (None, Some(self.write_blob(&logs_enc)?))
            };
            let manifest_enc = encode_manifest(&manifest);
            let mut conn = self.conn();
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| self.db_err(e))?;
            let blobs_present = archive
                .iter()
                .chain(logs_blob.iter())
                .all(|(d, size)| fs::metadata(self.blob_path(d)).is_ok_and(|m| m.len() == *size));
            if !blobs_present {
                drop(tx);
                drop(conn);
                if attempt < 2 {
                    continue;
                }
                return Err(CacheError::io(
                    &self.inner.blobs_dir,
                    io::Error::other("blobs vanished while storing the entry"),
                ));
            }
            let outcome = (|| -> rusqlite::Result<()> {
                tx.prepare_cached(
                    "INSERT INTO entries (task_id, spawn_key, created_ms, duration_us, inputs, \
                     manifest, archive, archive_size, logs_inline, logs_blob, logs_size) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )?
                .execute(params![
                    entry.task_id,
                    &key.0[..],
                    now_ms(),
                    duration_us,
                    inputs,
                    manifest_enc,
                    archive.map(|(d, _)| d.0.to_vec()),
                    archive.map(|(_, s)| s as i64),
                    logs_inline,
                    logs_blob.map(|(d, _)| d.0.to_vec()),
                    logs_blob.map(|(_, s)| s as i64),
                ])?;
                if let Some(data) = &listings {
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO listings (entry_id, data) VALUES (?1, ?2)",
                    )?
                    .execute(params![tx.last_insert_rowid(), data])?;
                }
                tx.prepare_cached(
                    "INSERT INTO last_run (task_id, spawn_key, spawn) VALUES (?1, ?2, ?3) \
                     ON CONFLICT(task_id) DO UPDATE SET spawn_key = excluded.spawn_key, \
                     spawn = excluded.spawn",
                )?
                .execute(params![entry.task_id, &key.0[..], spawn_json])?;
                let mut doomed: Vec<DoomedRow> = Vec::new();
                {
                    let mut stmt = tx.prepare_cached(
                        "SELECT id, archive, logs_blob FROM entries WHERE spawn_key = ?1 \
                         ORDER BY id DESC LIMIT -1 OFFSET ?2",
                    )?;
                    let rows = stmt
                        .query_map(params![&key.0[..], MAX_ENTRIES_PER_SPAWN_KEY as i64], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                        })?;
                    for r in rows {
                        doomed.push(r?);
                    }
                    let mut stmt = tx.prepare_cached(
                        "SELECT id, archive, logs_blob FROM entries WHERE task_id = ?1 \
                         ORDER BY id DESC LIMIT -1 OFFSET ?2",
                    )?;
                    let rows = stmt
                        .query_map(params![entry.task_id, MAX_ENTRIES_PER_TASK as i64], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                        })?;
                    for r in rows {
                        doomed.push(r?);
                    }
                }
                let mut blobs = Vec::new();
                for (id, a, l) in doomed {
                    tx.prepare_cached("DELETE FROM entries WHERE id = ?1")?
                        .execute([id])?;
                    tx.prepare_cached("DELETE FROM listings WHERE entry_id = ?1")?
                        .execute([id])?;
                    blobs.extend(a);
                    blobs.extend(l);
                }
                for b in blobs {
                    let used: bool = tx
                        .prepare_cached(
                            "SELECT EXISTS(SELECT 1 FROM entries WHERE archive = ?1) \
                             OR EXISTS(SELECT 1 FROM entries WHERE logs_blob = ?1)",
                        )?
                        .query_row([&b], |r| r.get(0))?;
                    if !used && let Some(d) = digest_from_col(&b) {
                        // Deleted while holding the write lock: a concurrent `put` re-checks
                        // its blobs under the same lock.
                        let _ = fs::remove_file(self.blob_path(&d));
                    }
                }
                // File hashes noted since the last write ride along (best effort).
                let _ = write_pending(&tx, &mut self.pending());
                Ok(())
            })();
            outcome.map_err(|e| self.db_err(e))?;
            tx.commit().map_err(|e| self.db_err(e))?;
            return Ok(PutStats {
                outputs: manifest.len(),
                archive_bytes: archive.map_or(0, |(_, s)| s),
            });
        }
        unreachable!("the loop returns on its last attempt")
    }

    /// Disk usage per schema directory of the cache dir (entries and tasks for the current one).
    ///
    /// Errors: database failures; unreadable directories are counted as far as possible.
    pub fn stats(&self) -> Result<CacheStats, CacheError> {
        let mut schemas = Vec::new();
        let mut names: Vec<(String, PathBuf)> = fs::read_dir(&self.inner.dir)
            .map_err(|e| CacheError::io(&self.inner.dir, e))?
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
            .filter(|(n, _)| is_schema_dir_name(n))
            .collect();
        names.sort();
        for (name, path) in names {
            let current = path == self.inner.schema_dir;
            let (entries, tasks) = if current {
                let conn = self.conn();
                let e: i64 = conn
                    .query_row("SELECT COUNT(*) FROM entries", [], |r| r.get(0))
                    .map_err(|e| self.db_err(e))?;
                let t: i64 = conn
                    .query_row("SELECT COUNT(*) FROM last_run", [], |r| r.get(0))
                    .map_err(|e| self.db_err(e))?;
                (Some(e as u64), Some(t as u64))
            } else {
                (None, None)
            };
            let (blobs, _) = dir_usage(&path.join("blobs"), true);
            let (_, bytes) = dir_usage(&path, false);
            schemas.push(SchemaStats {
                name,
                current,
                entries,
                tasks,
                blobs,
                bytes,
            });
        }
        Ok(CacheStats {
            dir: self.inner.dir.clone(),
            schemas,
        })
    }

    /// Deletes what crashes and pruning races can leave behind: blob files no entry references,
    /// and temp files (`.baton-tmp-*`) older than an hour. Runs under the write lock; a
    /// concurrent `put` re-checks its blobs under the same lock and rewrites them if needed.
    ///
    /// Errors: database failures; files that cannot be deleted are skipped.
    pub fn gc(&self) -> Result<GcStats, CacheError> {
        let mut stats = GcStats::default();
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.db_err(e))?;
        let mut referenced = std::collections::HashSet::new();
        {
            let mut stmt = tx
                .prepare("SELECT archive, logs_blob FROM entries")
                .map_err(|e| self.db_err(e))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, Option<Vec<u8>>>(0)?,
                        r.get::<_, Option<Vec<u8>>>(1)?,
                    ))
                })
                .map_err(|e| self.db_err(e))?;
            for row in rows {
                let (a, l) = row.map_err(|e| self.db_err(e))?;
                referenced.extend(a.as_deref().and_then(digest_from_col));
                referenced.extend(l.as_deref().and_then(digest_from_col));
            }
        }
        let now = SystemTime::now();
        let mut dirs = vec![self.inner.tmp_dir.clone()];
        if let Ok(rd) = fs::read_dir(&self.inner.blobs_dir) {
            dirs.extend(rd.filter_map(Result::ok).map(|e| e.path()));
        }
        for dir in dirs {
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            for e in rd.filter_map(Result::ok) {
                let Ok(meta) = e.metadata() else { continue };
                if !meta.is_file() {
                    continue;
                }
                let name = e.file_name();
                let name = name.to_string_lossy();
                let (delete, is_blob) = match Digest::from_hex(&name) {
                    Some(d) => (!referenced.contains(&d), true),
                    None => {
                        let old = meta
                            .modified()
                            .ok()
                            .and_then(|m| now.duration_since(m).ok())
                            .is_some_and(|age| age >= GC_TEMP_MIN_AGE);
                        (name.starts_with(".baton-tmp-") && old, false)
                    }
                };
                if delete && fs::remove_file(e.path()).is_ok() {
                    stats.bytes += meta.len();
                    if is_blob {
                        stats.blobs += 1;
                    } else {
                        stats.temp_files += 1;
                    }
                }
            }
        }
        tx.commit().map_err(|e| self.db_err(e))?;
        Ok(stats)
    }

    /// Removes every entry and blob of the current schema (under the write lock, so concurrent
    /// runs see either the old entries or none) and deletes other schema directories.
    ///
    /// Errors: database or I/O failures.
    pub fn clean(&self) -> Result<CleanStats, CacheError> {
        let mut stats = CleanStats::default();
        {
            let mut conn = self.conn();
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| self.db_err(e))?;
            stats.entries = tx
                .execute("DELETE FROM entries", [])
                .map_err(|e| self.db_err(e))? as u64;
            tx.execute("DELETE FROM last_run", [])
                .map_err(|e| self.db_err(e))?;
            tx.execute("DELETE FROM listings", [])
                .map_err(|e| self.db_err(e))?;
            tx.execute("DELETE FROM file_hashes", [])
                .map_err(|e| self.db_err(e))?;
            self.pending().clear();
            for d in [&self.inner.blobs_dir, &self.inner.tmp_dir] {
                stats.bytes += dir_usage(d, false).1;
                remove_contents(d).map_err(|e| CacheError::io(d, e))?;
            }
            tx.commit().map_err(|e| self.db_err(e))?;
            let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
        }
        for entry in fs::read_dir(&self.inner.dir)
            .map_err(|e| CacheError::io(&self.inner.dir, e))?
            .filter_map(Result::ok)
        {
            let path = entry.path();
            let is_other_schema = entry.file_name().to_str().is_some_and(is_schema_dir_name)
                && path != self.inner.schema_dir;
            if is_other_schema {
                stats.bytes += dir_usage(&path, false).1;
                fs::remove_dir_all(&path).map_err(|e| CacheError::io(&path, e))?;
            }
        }
        Ok(stats)
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

fn corrupt_detail(e: &CacheError) -> String {
    match e {
        CacheError::Corrupt { detail } => detail.clone(),
        other => other.to_string(),
    }
}

fn is_schema_dir_name(n: &str) -> bool {
    n.len() > 1 && n.starts_with('v') && n[1..].bytes().all(|b| b.is_ascii_digit())
}

/// (number of blob-named files, total bytes) under `dir`, recursively; errors are skipped.
fn dir_usage(dir: &Path, count_blobs: bool) -> (u64, u64) {
    let mut files = 0;
    let mut bytes = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.filter_map(Result::ok) {
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                bytes += meta.len();
                let is_blob = e
                    .file_name()
                    .to_str()
                    .is_some_and(|n| Digest::from_hex(n).is_some());
                if !count_blobs || is_blob {
                    files += 1;
                }
            }
        }
    }
    (files, bytes)
}

fn remove_contents(dir: &Path) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            fs::remove_dir_all(e.path())?;
        } else {
            fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

/// Checks one candidate's stored inputs against the current state.
fn check_candidate(
    store: &CacheStore,
    stored: &InputFingerprint,
    current: &CurrentInputs<'_>,
    probed: &mut BTreeMap<String, PathState>,
) -> Result<(), MissReason> {
    // Probe (once per lookup) the stored paths the caller did not provide; env-derived keys
    // come from the environment, never from the probe.
    let mut unknown: Vec<&str> = Vec::new();
    let mut process_env: Option<Vec<(OsString, OsString)>> = None;
    for p in stored.paths.keys() {
        if current.known.paths.contains_key(p) || probed.contains_key(p) {
            continue;
        }
        if is_env_key(p) {
            let env: &[(OsString, OsString)] = match current.env {
                Some(e) => e,
                None => process_env.get_or_insert_with(|| std::env::vars_os().collect()),
            };
            let state = env_key_state(env, p).unwrap_or(PathState::Absent);
            probed.insert(p.clone(), state);
        } else {
            unknown.push(p);
        }
    }
    if !unknown.is_empty() {
        let result = match &current.probe {
            Probe::Absent => Ok(unknown
                .iter()
                .map(|p| ((*p).to_owned(), PathState::Absent))
                .collect()),
            Probe::Root(root) => store.fingerprint_paths(root, &unknown),
            Probe::With(f) => f(&unknown),
        };
        match result {
            Ok(fp) => {
                for p in unknown {
                    let state = fp.paths.get(p).copied().unwrap_or(PathState::Absent);
                    probed.insert(p.to_owned(), state);
                }
            }
            Err(e) => {
                return Err(MissReason::Unreadable {
                    path: e.path,
                    error: e.source.to_string(),
                });
            }
        }
    }
    // Walk the union of stored paths and known paths in order.
    let mut known = current.known.paths.iter().peekable();
    for (path, state) in &stored.paths {
        while let Some(&(kp, ks)) = known.peek() {
            if kp >= path {
                break;
            }
            known.next();
            if let Some(r) = change(kp, None, Some(*ks)) {
                return Err(r);
            }
        }
        let now = match known.peek() {
            Some(&(kp, ks)) if kp == path => {
                known.next();
                Some(*ks)
            }
            _ => probed.get(path).copied(),
        };
        if let Some(r) = change(path, Some(*state), now) {
            return Err(r);
        }
    }
    for (kp, ks) in known {
        if let Some(r) = change(kp, None, Some(*ks)) {
            return Err(r);
        }
    }
    Ok(())
}
