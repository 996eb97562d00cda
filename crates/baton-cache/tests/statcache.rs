//! The file-hash cache of `CacheStore::fingerprint_paths`: rows only for old files, reused only
//! while every stat value is unchanged.
#![cfg(unix)]

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use baton_cache::{CacheStore, Digest, PathState, STAT_CACHE_MIN_BYTES, fingerprint_paths};

/// An old system file (timestamps far in the past) large enough to go through the file-hash
/// cache ([`STAT_CACHE_MIN_BYTES`]) to exercise row recording.
fn old_system_file() -> &'static str {
    for p in [
        "usr/bin/bash",
        "bin/bash",
        "usr/bin/perl",
        "usr/bin/git",
        "bin/sh",
    ] {
        let Ok(meta) = fs::metadata(Path::new("/").join(p)) else {
            continue;
        };
        if meta.len() < STAT_CACHE_MIN_BYTES {
            continue;
        }
        use std::os::unix::fs::MetadataExt;
        let ctime = SystemTime::UNIX_EPOCH + Duration::from_secs(meta.ctime() as u64);
        if SystemTime::now()
            .duration_since(ctime)
            .is_ok_and(|d| d > Duration::from_secs(60))
        {
            return p;
        }
    }
    panic!("no old system file found to test with");
}

fn rows(store: &CacheStore) -> Vec<(String, Vec<u8>)> {
    let conn = rusqlite::Connection::open(store.schema_dir().join("meta.sqlite")).unwrap();
    let mut stmt = conn
        .prepare("SELECT path, hash FROM file_hashes ORDER BY path")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn old_files_are_recorded_and_reused_while_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let store = CacheStore::open(tmp.path()).unwrap();
    let file = old_system_file();
    let root = Path::new("/");
    let plain = fingerprint_paths(root, &[file]).unwrap();
    let cached = store.fingerprint_paths(root, &[file]).unwrap();
    assert_eq!(plain, cached);
    // Rows are written with the next put, on flush, or when the store is dropped.
    assert!(rows(&store).is_empty());
    store.flush().unwrap();
    let recorded = rows(&store);
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].0, format!("/{file}"));

    drop(store);

    // The row is what answers now: a forged hash shows through while stat values match...
    let forged = Digest::of(b"forged");
    let forge = |extra: &str| {
        let conn = rusqlite::Connection::open(tmp.path().join("v1/meta.sqlite")).unwrap();
        conn.execute(
            &format!("UPDATE file_hashes SET hash = ?1 {extra}"),
            [&forged.0[..]],
        )
        .unwrap();
        // A fresh handle: no rows held in memory from earlier calls.
        CacheStore::open(tmp.path()).unwrap()
    };
    let store = forge("");
    let again = store.fingerprint_paths(root, &[file]).unwrap();
    assert_eq!(again.get(file), Some(&PathState::File { hash: forged }));
    drop(store);
    // ...and is ignored as soon as one of them differs.
    for changed in [
        ", size = size + 1",
        ", mtime_ns = mtime_ns - 1",
        ", ctime_ns = ctime_ns - 1",
        ", ino = ino + 1",
    ] {
        let store = forge(changed);
        assert_eq!(
            store.fingerprint_paths(root, &[file]).unwrap(),
            plain,
            "{changed}"
        );
    }
}

#[test]
fn fresh_files_are_never_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("ws");
    fs::create_dir_all(root.join("src")).unwrap();
    fs::write(root.join("src/a.ts"), "a").unwrap();
    fs::write(root.join("src/b.ts"), "b").unwrap();
    // An old mtime does not help: ctime is still fresh.
    let f = fs::File::options()
        .write(true)
        .open(root.join("src/b.ts"))
        .unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    drop(f);
    let store = CacheStore::open(&CacheStore::default_dir(&root)).unwrap();
    let paths = ["src/a.ts", "src/b.ts", "src", "missing.ts"];
    let fp = store.fingerprint_paths(&root, &paths).unwrap();
    assert_eq!(fp, fingerprint_paths(&root, &paths).unwrap());
    assert_eq!(fp.get("missing.ts"), Some(&PathState::Absent));
    assert!(matches!(fp.get("src"), Some(PathState::Dir { .. })));
    drop(store);
    let store = CacheStore::open(&CacheStore::default_dir(&root)).unwrap();
    assert!(rows(&store).is_empty());
    // Same-size rewrites right after hashing are seen.
    fs::write(root.join("src/a.ts"), "A").unwrap();
    let fp2 = store.fingerprint_paths(&root, &paths).unwrap();
    assert_ne!(fp2.get("src/a.ts"), fp.get("src/a.ts"));
}

#[test]
fn a_small_file_rewritten_within_one_process_is_hashed_again() {
    // Small files skip the database, but a process remembers the hashes it read by inode:
    // a rewrite with the same size right after (same coarse timestamps) must not be served
    // from that memory.
    let tmp = tempfile::tempdir().unwrap();
    let store = CacheStore::open(&tmp.path().join("cache")).unwrap();
    let root = tmp.path();
    fs::write(root.join("a.txt"), "one").unwrap();
    let first = store.fingerprint_paths(root, &["a.txt"]).unwrap();
    fs::write(root.join("a.txt"), "two").unwrap();
    let second = store.fingerprint_paths(root, &["a.txt"]).unwrap();
    assert_ne!(first, second);
    assert_eq!(second, fingerprint_paths(root, &["a.txt"]).unwrap());
}

#[test]
fn one_file_seen_through_two_paths_has_one_hash() {
    // An old file reached directly and through a symlink (a dependency's output seen through
    // a dependent's node_modules link) fingerprints the same both ways.
    let tmp = tempfile::tempdir().unwrap();
    let store = CacheStore::open(&tmp.path().join("cache")).unwrap();
    let file = Path::new("/").join(old_system_file());
    std::os::unix::fs::symlink(&file, tmp.path().join("link")).unwrap();
    let direct = store
        .fingerprint_paths(
            Path::new("/"),
            &[file.strip_prefix("/").unwrap().to_str().unwrap()],
        )
        .unwrap();
    let linked = store.fingerprint_paths(tmp.path(), &["link"]).unwrap();
    let d = direct.paths.values().next().copied();
    assert!(matches!(d, Some(PathState::File { .. })));
    assert_eq!(d, linked.paths.values().next().copied());
}
