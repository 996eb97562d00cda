//! Reuse of file hashes across runs, keyed by file identity and timestamps (like Git's index).
//!
//! A row `(absolute path, size, mtime, ctime, inode, device) → BLAKE3` is recorded only when both
//! timestamps were more than [`RACY_MARGIN_NS`] older than the moment hashing started, so a later
//! write — which always moves ctime to "now" — can never leave the same stat values behind
//! (the "racily clean" problem). A row is used only when every stat value is equal.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, params};

use crate::fingerprint::{Digest, hash_file, lossless_string};

/// Files whose mtime or ctime is within this many nanoseconds of the hashing start are not
/// recorded.
pub(crate) const RACY_MARGIN_NS: i64 = 2_000_000_000;

/// The stat values a cached hash is bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StatKey {
    pub(crate) size: u64,
    pub(crate) mtime_ns: i64,
    pub(crate) ctime_ns: i64,
    pub(crate) ino: u64,
    pub(crate) dev: u64,
}

#[cfg(unix)]
pub(crate) fn stat_key(meta: &fs::Metadata) -> Option<StatKey> {
    use std::os::unix::fs::MetadataExt;
    Some(StatKey {
        size: meta.size(),
        mtime_ns: meta.mtime().checked_mul(1_000_000_000)? + meta.mtime_nsec(),
        ctime_ns: meta.ctime().checked_mul(1_000_000_000)? + meta.ctime_nsec(),
        ino: meta.ino(),
        dev: meta.dev(),
    })
}

#[cfg(not(unix))]
pub(crate) fn stat_key(_meta: &fs::Metadata) -> Option<StatKey> {
    None
}

pub(crate) fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Hash lookups for one batch of files: rows loaded up front, new rows collected for
/// [`StatCache::save`].
pub(crate) struct StatCache {
    rows: HashMap<String, (StatKey, Digest)>,
    fresh: Mutex<Vec<(String, StatKey, Digest)>>,
    started_ns: i64,
}

impl StatCache {
    /// Loads the rows under the top-most directories of `abs_paths` (one range query each).
    pub(crate) fn load(
        conn: &Connection,
        pending: &Pending,
        abs_paths: &[String],
    ) -> rusqlite::Result<Self> {
        let started_ns = now_ns();
        let mut dirs: Vec<&str> = abs_paths
            .iter()
            .filter_map(|p| p.rfind('/').map(|i| &p[..=i]))
            .collect();
        dirs.sort_unstable();
        dirs.dedup();
        let mut tops: Vec<&str> = Vec::new();
        for d in dirs {
            if tops.last().is_some_and(|t| d.starts_with(t)) {
                continue;
            }
            tops.push(d);
        }
        let mut rows = HashMap::new();
        let mut stmt = conn.prepare_cached(
            "SELECT path, size, mtime_ns, ctime_ns, ino, dev, hash FROM file_hashes \
             WHERE path >= ?1 AND path < ?2",
        )?;
        for top in tops {
            // Every key under `top` ("…/") sorts below `top` with its final '/' replaced by '0'.
            let upper = format!("{}0", &top[..top.len() - 1]);
            let mut q = stmt.query(params![top, upper])?;
            while let Some(r) = q.next()? {
                let hash: Vec<u8> = r.get(6)?;
                let Ok(hash) = <[u8; 32]>::try_from(hash.as_slice()) else {
                    continue;
                };
                let key = StatKey {
                    size: r.get::<_, i64>(1)? as u64,
                    mtime_ns: r.get(2)?,
                    ctime_ns: r.get(3)?,
                    ino: r.get::<_, i64>(4)? as u64,
                    dev: r.get::<_, i64>(5)? as u64,
                };
                rows.insert(r.get(0)?, (key, Digest(hash)));
            }
        }
        if !pending.is_empty() {
            for p in abs_paths {
                if let Some(row) = pending.get(p) {
                    rows.insert(p.clone(), *row);
                }
            }
        }
        Ok(Self {
            rows,
            fresh: Mutex::new(Vec::new()),
            started_ns,
        })
    }

    /// The content hash of the regular file at `abs` whose metadata is `meta`: from a row when
    /// the stat values are unchanged, else by reading it (and noting a row when it is old
    /// enough). `abs_key` is the [`lossless_string`] of `abs`.
    pub(crate) fn hash(
        &self,
        abs: &Path,
        abs_key: &str,
        meta: &fs::Metadata,
    ) -> io::Result<Digest> {
        let key = stat_key(meta);
        if let (Some(k), Some((row_key, digest))) = (key, self.rows.get(abs_key))
            && k == *row_key
        {
            return Ok(*digest);
        }
        let digest = hash_file(abs)?;
        if let Some(k) = key
            && k.mtime_ns.max(k.ctime_ns) < self.started_ns - RACY_MARGIN_NS
        {
            self.fresh
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((abs_key.to_owned(), k, digest));
        }
        Ok(digest)
    }

    /// Moves the rows noted by [`StatCache::hash`] into `pending` (written later by
    /// [`write_pending`], in a transaction that happens anyway).
    pub(crate) fn save(self, pending: &mut Pending) {
        let fresh = self
            .fresh
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (path, k, d) in fresh {
            pending.insert(path, (k, d));
        }
    }
}

/// Rows hashed in this process and not yet written to `file_hashes`.
pub(crate) type Pending = HashMap<String, (StatKey, Digest)>;

/// Pending rows beyond which [`crate::CacheStore`] writes them at once.
pub(crate) const PENDING_FLUSH_AT: usize = 2048;

/// Writes `pending` rows inside the caller's transaction and clears them.
pub(crate) fn write_pending(
    tx: &rusqlite::Transaction<'_>,
    pending: &mut Pending,
) -> rusqlite::Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let mut stmt = tx.prepare_cached(
        "INSERT OR REPLACE INTO file_hashes (path, size, mtime_ns, ctime_ns, ino, dev, hash) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for (path, (k, d)) in pending.drain() {
        stmt.execute(params![
            path,
            k.size as i64,
            k.mtime_ns,
            k.ctime_ns,
            k.ino as i64,
            k.dev as i64,
            &d.0[..]
        ])?;
    }
    Ok(())
}

/// The [`lossless_string`] of an absolute path (the row key).
pub(crate) fn abs_key(abs: &Path) -> String {
    lossless_string(abs.as_os_str())
}
