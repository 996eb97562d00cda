//! The local task cache of `baton run`: fingerprints, the store, output archives and miss
//! reasons.
//!
//! # Model
//!
//! A task run is keyed by its [`SpawnFingerprint`] (cwd, program, args, env fingerprint, input and
//! output configuration, command text; env values only as BLAKE3 digests). Every entry stored
//! under a spawn key also records an [`InputFingerprint`]: the state after the run of every input
//! path (file content hash, directory listing hash, or absent). [`CacheStore::lookup`] takes the
//! newest entries with the same spawn key and hits on the first whose recorded inputs all still
//! have the same state ([`CurrentInputs`] supplies the current states: a complete globbed
//! fingerprint, probing of recorded paths, or both). A miss is a value with a precise
//! [`MissReason`] (`'src/a.ts' modified`, `env NODE_ENV changed`, `args changed`, …).
//!
//! # Example
//!
//! ```
//! use std::{collections::BTreeMap, fs, time::Duration};
//! use baton_cache::*;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let tmp = tempfile::tempdir()?;
//! let root = tmp.path();
//! fs::create_dir_all(root.join("src"))?;
//! fs::write(root.join("src/a.ts"), "export {}")?;
//! let store = CacheStore::open(&CacheStore::default_dir(root))?;
//! let spawn = SpawnFingerprint {
//!     cwd: String::new(),
//!     program: "tsc".into(),
//!     args: vec![],
//!     env: BTreeMap::from([("PATH".into(), EnvFingerprint::PassThrough)]),
//!     input_config: serde_json::json!(["src/**"]),
//!     output_config: serde_json::json!(["dist/**"]),
//!     command: "tsc".into(),
//! };
//! // Before running: fingerprint the current inputs and look up.
//! let inputs = store.fingerprint_paths(root, &["src/a.ts"])?;
//! match store.lookup("app#build", &spawn, &CurrentInputs::complete(&inputs))? {
//!     Lookup::Hit(_) => unreachable!("empty cache"),
//!     Lookup::Miss(reason) => assert_eq!(reason.to_string(), "not found in cache"),
//! }
//! // The task ran and exited 0: store it.
//! fs::create_dir_all(root.join("dist"))?;
//! fs::write(root.join("dist/a.js"), "export {}")?;
//! let logs = [LogChunk { stream: Stream::Stdout, bytes: b"done\n".to_vec() }];
//! store.put(&NewEntry {
//!     task_id: "app#build",
//!     spawn: &spawn,
//!     inputs: &inputs,
//!     root,
//!     outputs: &["dist/a.js".to_string()],
//!     logs: &logs,
//!     duration: Duration::from_millis(900),
//! })?;
//! // Next time: a hit; replay the logs and restore what is missing.
//! fs::remove_dir_all(root.join("dist"))?;
//! let inputs = store.fingerprint_paths(root, &["src/a.ts"])?;
//! let Lookup::Hit(run) = store.lookup("app#build", &spawn, &CurrentInputs::complete(&inputs))?
//! else { unreachable!() };
//! assert_eq!(run.logs(), &logs);
//! let restored = run.restore_outputs(root)?; // on CacheError::Corrupt: rerun, report as_miss_reason()
//! assert_eq!((restored.written, restored.skipped), (1, 0));
//! # Ok(()) }
//! ```
//!
//! # Layout (schema version 1)
//!
//! ```text
//! <dir>/                      usually <workspace>/.baton/cache (CacheStore::default_dir)
//!   v1/                       one directory per layout version (SCHEMA_VERSION)
//!     meta.sqlite             SQLite, WAL mode, busy timeout 30 s
//!       entries(id, task_id, spawn_key BLOB(32), created_ms, duration_us,
//!               inputs BLOB, manifest BLOB, archive BLOB(32)?, archive_size?,
//!               logs_inline BLOB?, logs_blob BLOB(32)?, logs_size?)
//!       last_run(task_id PRIMARY KEY, spawn_key, spawn TEXT)   -- JSON SpawnFingerprint
//!       file_hashes(path PRIMARY KEY, size, mtime_ns, ctime_ns, ino, dev, hash)
//!                             stat-keyed BLAKE3 cache (CacheStore::fingerprint_paths)
//!     blobs/ab/abcdef…        zstd frame; name = hex BLAKE3 of the *uncompressed* content
//!     tmp/                    archives being written (renamed into blobs/ when complete)
//! ```
//!
//! * `inputs`, `manifest` and inline logs use a compact tagged binary encoding (varints,
//!   length-prefixed strings, raw 32-byte digests).
//! * The output archive is one tar stream (GNU headers, mtime 0, mode bits kept, symlinks as
//!   links) compressed with zstd; the manifest lists each output's path, size, BLAKE3 and mode.
//! * Logs are ordered `(stream, bytes)` chunks, inline in the row up to 16 KiB, else a blob.
//!
//! # Safety properties
//!
//! * Crash safety: blobs are written to a temp name (`.baton-tmp-*`) and renamed; the entry row
//!   is inserted only afterwards, inside a transaction that re-checks the blobs exist. A temp file
//!   is never read. No fsync: a blob damaged by power loss fails verification and becomes a miss.
//! * Verification: the logs blob is hashed on lookup; the archive blob's size is checked on
//!   lookup and every restored file is checked against the manifest's size and BLAKE3 before
//!   any file is renamed into place. A damaged entry is deleted and reported as
//!   `cache entry corrupt: …`, never restored wrongly.
//! * Restores refuse absolute and `..` archive paths and directories that resolve outside the
//!   workspace; they write temp files next to the target and rename them.
//! * Concurrency: one connection per [`CacheStore`] behind a mutex (held per query, not during
//!   hashing); writers use `BEGIN IMMEDIATE`; several processes can share a directory.
//! * Secrets: env values never reach the disk, only their digests.
//! * File-hash cache: a row is written only for files whose mtime and ctime were more than 2 s
//!   old when hashing started, and used only while size, mtime, ctime, inode and device are all
//!   unchanged, so a later write (which always moves ctime) is never missed.
//!
//! # Env-derived inputs
//!
//! Env variables read during the run (tool IPC `getEnv`/`getEnvs` with `tracked`) are recorded
//! as inputs with [`InputFingerprint::insert_env`] / [`InputFingerprint::insert_env_pattern`]
//! under keys that start with a NUL ([`ENV_INPUT_PREFIX`], [`ENV_PATTERN_INPUT_PREFIX`]), so they
//! never collide with paths; lookups resolve them from [`CurrentInputs::env`] and report
//! `env NAME changed`. They are not paths: do not pass them to [`fingerprint_paths`].

mod archive;
mod codec;
mod error;
mod fingerprint;
mod miss;
mod statcache;
mod store;

pub use archive::{LogChunk, OutputFile, OutputKind, RestoreStats, Stream};
pub use error::CacheError;
pub use fingerprint::{
    Digest, ENV_INPUT_PREFIX, ENV_PATTERN_INPUT_PREFIX, EnvFingerprint, EnvPattern,
    FingerprintError, InputFingerprint, PathState, SpawnFingerprint, env_input_key,
    env_input_state, env_key_state, fingerprint_paths, hash_file, is_env_key, key_to_path,
    listing_hash, lossless_string, os_string_from_lossless, path_state, path_to_key,
};
pub use miss::MissReason;
pub use store::{
    CacheStats, CacheStore, CachedRun, CleanStats, CurrentInputs, GcStats, Lookup,
    MAX_ENTRIES_PER_SPAWN_KEY, MAX_ENTRIES_PER_TASK, NewEntry, Probe, PutStats, SCHEMA_VERSION,
    STAT_CACHE_MIN_BYTES, SchemaStats,
};
