//! Store round trips on real files: put, hit, restore, misses, corruption, concurrency.
#![cfg(unix)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_cache::{
    CacheError, CacheStore, CurrentInputs, Digest, EnvFingerprint, InputFingerprint, LogChunk,
    Lookup, NewEntry, SpawnFingerprint, Stream, fingerprint_paths,
};

struct Ws {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    cache: PathBuf,
}

fn ws() -> Ws {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("ws");
    fs::create_dir_all(root.join("src")).unwrap();
    fs::write(root.join("src/a.ts"), "export const a = 1;\n").unwrap();
    fs::write(root.join("src/b.ts"), "export const b = 2;\n").unwrap();
    let cache = CacheStore::default_dir(&root);
    Ws {
        _tmp: tmp,
        root,
        cache,
    }
}

fn spawn() -> SpawnFingerprint {
    SpawnFingerprint {
        cwd: "".into(),
        program: "tsc".into(),
        args: vec!["-p".into(), ".".into()],
        env: BTreeMap::from([
            (
                "NODE_ENV".to_string(),
                EnvFingerprint::tracked(OsStr::new("production")),
            ),
            ("PATH".to_string(), EnvFingerprint::PassThrough),
        ]),
        input_config: serde_json::json!(["src/**"]),
        output_config: serde_json::json!(["dist/**"]),
        command: "tsc -p .".into(),
    }
}

/// The glob-configured inputs of the fixture: every file under `src/`, freshly listed.
fn globbed(root: &Path) -> InputFingerprint {
    let mut paths: Vec<String> = fs::read_dir(root.join("src"))
        .unwrap()
        .map(|e| format!("src/{}", e.unwrap().file_name().to_str().unwrap()))
        .collect();
    paths.sort();
    fingerprint_paths(root, &paths).unwrap()
}

fn write_outputs(root: &Path) {
    fs::create_dir_all(root.join("dist/nested/deeper")).unwrap();
    fs::write(root.join("dist/index.js"), "console.log(1)\n").unwrap();
    fs::write(root.join("dist/nested/deeper/x.js"), vec![7u8; 100_000]).unwrap();
    fs::write(root.join("dist/empty.txt"), "").unwrap();
    fs::write(root.join("dist/cli.sh"), "#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(root.join("dist/cli.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("index.js", root.join("dist/link.js")).unwrap();
}

fn logs() -> Vec<LogChunk> {
    vec![
        LogChunk {
            stream: Stream::Stdout,
            bytes: b"\x1b[32mbuilt\x1b[0m\n".to_vec(),
        },
        LogChunk {
            stream: Stream::Stderr,
            bytes: b"warning\n".to_vec(),
        },
        LogChunk {
            stream: Stream::Stdout,
            bytes: b"done\n".to_vec(),
        },
    ]
}

fn put(store: &CacheStore, w: &Ws, spawn: &SpawnFingerprint, logs: &[LogChunk]) {
    let inputs = globbed(&w.root);
    store
        .put(&NewEntry {
            task_id: "app#build",
            spawn,
            inputs: &inputs,
            root: &w.root,
            outputs: &["dist".to_string()],
            logs,
            duration: Duration::from_millis(1500),
        })
        .unwrap();
}

fn lookup(store: &CacheStore, w: &Ws, spawn: &SpawnFingerprint) -> Lookup {
    let known = globbed(&w.root);
    store
        .lookup("app#build", spawn, &CurrentInputs::complete(&known))
        .unwrap()
}

fn miss(l: Lookup) -> String {
    match l {
        Lookup::Miss(r) => r.to_string(),
        Lookup::Hit(_) => panic!("expected a miss"),
    }
}

/// Every file/symlink under `dir` with content (or link target) and mode.
fn snapshot(dir: &Path) -> BTreeMap<String, (Vec<u8>, u32, bool)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let meta = fs::symlink_metadata(e.path()).unwrap();
            let key = e.path().strip_prefix(dir).unwrap().display().to_string();
            if meta.file_type().is_symlink() {
                let t = fs::read_link(e.path()).unwrap();
                out.insert(key, (t.into_os_string().into_encoded_bytes(), 0, true));
            } else if meta.is_dir() {
                stack.push(e.path());
            } else {
                let mode = meta.permissions().mode() & 0o777;
                out.insert(key, (fs::read(e.path()).unwrap(), mode, false));
            }
        }
    }
    out
}

#[test]
fn put_hit_restore_round_trip() {
    let w = ws();
    write_outputs(&w.root);
    let before = snapshot(&w.root.join("dist"));
    let store = CacheStore::open(&w.cache).unwrap();
    assert_eq!(miss(lookup(&store, &w, &spawn())), "not found in cache");
    put(&store, &w, &spawn(), &logs());

    // Full hit with everything in place: nothing is written.
    let Lookup::Hit(run) = lookup(&store, &w, &spawn()) else {
        panic!("expected a hit")
    };
    assert_eq!(run.logs(), logs().as_slice());
    assert_eq!(run.duration(), Duration::from_millis(1500));
    assert_eq!(run.outputs().len(), 5);
    let stats = run.restore_outputs(&w.root).unwrap();
    assert_eq!((stats.written, stats.skipped), (0, 5));

    // Outputs deleted: everything comes back byte-identical, exec bit and symlink included.
    fs::remove_dir_all(w.root.join("dist")).unwrap();
    let stats = run.restore_outputs(&w.root).unwrap();
    assert_eq!((stats.written, stats.skipped), (5, 0));
    assert_eq!(snapshot(&w.root.join("dist")), before);
    assert_eq!(
        fs::metadata(w.root.join("dist/cli.sh"))
            .unwrap()
            .permissions()
            .mode()
            & 0o111,
        0o111
    );

    // One file changed, one removed, mode changed on a third: only those are touched.
    fs::write(w.root.join("dist/index.js"), "tampered").unwrap();
    fs::remove_file(w.root.join("dist/empty.txt")).unwrap();
    fs::set_permissions(
        w.root.join("dist/cli.sh"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let stats = run.restore_outputs(&w.root).unwrap();
    assert_eq!(
        (stats.written, stats.skipped, stats.mode_fixed),
        (2, 2, 1),
        "{stats:?}"
    );
    assert_eq!(snapshot(&w.root.join("dist")), before);

    // A fresh store handle (another process) sees the same entry.
    drop(run);
    drop(store);
    let store = CacheStore::open(&w.cache).unwrap();
    assert!(matches!(lookup(&store, &w, &spawn()), Lookup::Hit(_)));
}

#[test]
fn restore_leaves_no_temp_files() {
    let w = ws();
    write_outputs(&w.root);
    let store = CacheStore::open(&w.cache).unwrap();
    put(&store, &w, &spawn(), &logs());
    fs::remove_dir_all(w.root.join("dist")).unwrap();
    let Lookup::Hit(run) = lookup(&store, &w, &spawn()) else {
        panic!("expected a hit")
    };
    run.restore_outputs(&w.root).unwrap();
    let names: Vec<String> = snapshot(&w.root.join("dist")).into_keys().collect();
    assert!(names.iter().all(|n| !n.contains(".baton-tmp")), "{names:?}");
    let tmp_left: Vec<_> = fs::read_dir(store.schema_dir().join("tmp"))
        .unwrap()
        .collect();
    assert!(tmp_left.is_empty());
}

#[test]
fn input_miss_reasons() {
    let w = ws();
    write_outputs(&w.root);
    let store = CacheStore::open(&w.cache).unwrap();
    put(&store, &w, &spawn(), &logs());
    assert!(matches!(lookup(&store, &w, &spawn()), Lookup::Hit(_)));

    fs::write(w.root.join("src/a.ts"), "export const a = 2;\n").unwrap();
    assert_eq!(miss(lookup(&store, &w, &spawn())), "'src/a.ts' modified");
    fs::write(w.root.join("src/a.ts"), "export const a = 1;\n").unwrap();
    assert!(matches!(lookup(&store, &w, &spawn()), Lookup::Hit(_)));

    fs::write(w.root.join("src/new.ts"), "").unwrap();
    assert_eq!(miss(lookup(&store, &w, &spawn())), "'src/new.ts' added");
    fs::remove_file(w.root.join("src/new.ts")).unwrap();

    fs::remove_file(w.root.join("src/b.ts")).unwrap();
    assert_eq!(miss(lookup(&store, &w, &spawn())), "'src/b.ts' removed");
    fs::write(w.root.join("src/b.ts"), "export const b = 2;\n").unwrap();
    assert!(matches!(lookup(&store, &w, &spawn()), Lookup::Hit(_)));
}

#[test]
fn probed_inputs_and_absent_paths() {
    // Traced-style inputs: nothing known up front, recorded paths are probed under the root.
    let w = ws();
    let store = CacheStore::open(&w.cache).unwrap();
    let mut inputs = fingerprint_paths(&w.root, &["src/a.ts", "src", "tsconfig.json"]).unwrap();
    assert_eq!(inputs.len(), 3);
    assert_eq!(
        inputs.get("tsconfig.json"),
        Some(&baton_cache::PathState::Absent)
    );
    inputs.paths.remove("missing-key-is-fine");
    store
        .put(&NewEntry {
            task_id: "app#build",
            spawn: &spawn(),
            inputs: &inputs,
            root: &w.root,
            outputs: &[],
            logs: &[],
            duration: Duration::ZERO,
        })
        .unwrap();
    let empty = InputFingerprint::new();
    let check = || {
        store
            .lookup(
                "app#build",
                &spawn(),
                &CurrentInputs::probing(&empty, &w.root),
            )
            .unwrap()
    };
    let Lookup::Hit(run) = check() else {
        panic!("expected a hit")
    };
    assert!(run.logs().is_empty());
    assert_eq!(run.restore_outputs(&w.root).unwrap().written, 0);

    fs::write(w.root.join("tsconfig.json"), "{}").unwrap();
    assert_eq!(miss(check()), "'tsconfig.json' added");
    fs::remove_file(w.root.join("tsconfig.json")).unwrap();
    // A new file in a listed directory changes its listing; the miss names the file.
    fs::write(w.root.join("src/c.ts"), "").unwrap();
    assert_eq!(miss(check()), "'src/c.ts' added");
    fs::remove_file(w.root.join("src/c.ts")).unwrap();
    assert!(matches!(check(), Lookup::Hit(_)));
    // A removed entry (not an input itself) is named too.
    fs::rename(w.root.join("src/b.ts"), w.root.join("b.ts")).unwrap();
    assert_eq!(miss(check()), "'src/b.ts' removed");
    // Several changes: the first two are named, the rest counted.
    for n in ["x.ts", "y.ts", "z.ts"] {
        fs::write(w.root.join("src").join(n), "").unwrap();
    }
    assert_eq!(
        miss(check()),
        "'src/x.ts' added, 'src/y.ts' added and 2 more"
    );
    for n in ["x.ts", "y.ts", "z.ts"] {
        fs::remove_file(w.root.join("src").join(n)).unwrap();
    }
    // Without a root the listing cannot be compared: the directory is named.
    let probe_only = |paths: &[&str]| fingerprint_paths(&w.root, paths);
    let no_root = CurrentInputs {
        known: &empty,
        probe: baton_cache::Probe::With(&probe_only),
        env: None,
        root: None,
    };
    assert_eq!(
        miss(store.lookup("app#build", &spawn(), &no_root).unwrap()),
        "'src' modified"
    );
    fs::rename(w.root.join("b.ts"), w.root.join("src/b.ts")).unwrap();
    assert!(matches!(check(), Lookup::Hit(_)));

    // A caller-supplied probe is used for unknown paths.
    let probe = |paths: &[&str]| fingerprint_paths(&w.root, paths);
    let current = CurrentInputs {
        known: &empty,
        probe: baton_cache::Probe::With(&probe),
        env: None,
        root: None,
    };
    assert!(matches!(
        store.lookup("app#build", &spawn(), &current).unwrap(),
        Lookup::Hit(_)
    ));
}

#[test]
fn spawn_miss_reasons_explained_from_last_run() {
    let w = ws();
    let store = CacheStore::open(&w.cache).unwrap();
    put(&store, &w, &spawn(), &[]);
    let check = |f: &dyn Fn(&mut SpawnFingerprint)| {
        let mut s = spawn();
        f(&mut s);
        miss(lookup(&store, &w, &s))
    };
    assert_eq!(
        check(&|s| {
            s.env.insert(
                "NODE_ENV".into(),
                EnvFingerprint::tracked(OsStr::new("development")),
            );
        }),
        "env NODE_ENV changed"
    );
    assert_eq!(
        check(&|s| {
            s.env.insert("CI".into(), EnvFingerprint::PassThrough);
        }),
        "env CI added"
    );
    assert_eq!(
        check(&|s| {
            s.env.remove("NODE_ENV");
        }),
        "env NODE_ENV removed"
    );
    assert_eq!(check(&|s| s.args.push("--watch".into())), "args changed");
    assert_eq!(check(&|s| s.command = "tsc -b".into()), "command changed");
    assert_eq!(check(&|s| s.cwd = "packages/a".into()), "cwd changed");
    assert_eq!(
        check(&|s| s.input_config = serde_json::json!(["lib/**"])),
        "input config changed"
    );
    assert_eq!(
        check(&|s| s.output_config = serde_json::json!(["out/**"])),
        "output config changed"
    );
    // Another task id has no history.
    let known = globbed(&w.root);
    let mut s = spawn();
    s.args.push("x".into());
    assert_eq!(
        miss(
            store
                .lookup("other#build", &s, &CurrentInputs::complete(&known))
                .unwrap()
        ),
        "not found in cache"
    );
}

fn blob_files(store: &CacheStore) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in fs::read_dir(store.schema_dir().join("blobs")).unwrap() {
        for f in fs::read_dir(d.unwrap().path()).unwrap() {
            out.push(f.unwrap().path());
        }
    }
    out
}

fn flip_byte(path: &Path, at: usize) {
    let mut bytes = fs::read(path).unwrap();
    let i = at.min(bytes.len() - 1);
    bytes[i] ^= 0x5a;
    fs::write(path, bytes).unwrap();
}

#[test]
fn corrupt_archive_is_a_miss_and_entry_is_removed() {
    let w = ws();
    write_outputs(&w.root);
    let before = snapshot(&w.root.join("dist"));
    let store = CacheStore::open(&w.cache).unwrap();
    put(&store, &w, &spawn(), &logs());
    let blobs = blob_files(&store);
    assert_eq!(blobs.len(), 1, "small logs are inline: only the archive");
    flip_byte(
        &blobs[0],
        fs::metadata(&blobs[0]).unwrap().len() as usize / 2,
    );

    // With the outputs in place the archive is not needed: still a hit.
    let Lookup::Hit(run) = lookup(&store, &w, &spawn()) else {
        panic!("expected a hit")
    };
    assert_eq!(run.restore_outputs(&w.root).unwrap().written, 0);

    fs::remove_dir_all(w.root.join("dist")).unwrap();
    let err = run.restore_outputs(&w.root).unwrap_err();
    assert!(matches!(err, CacheError::Corrupt { .. }), "{err}");
    let reason = err.as_miss_reason().unwrap().to_string();
    assert!(reason.starts_with("cache entry corrupt: "), "{reason}");
    // Nothing half-restored.
    assert!(!w.root.join("dist/index.js").exists());
    // The entry is gone: the next lookup misses, and a new put heals it.
    assert_eq!(miss(lookup(&store, &w, &spawn())), "not found in cache");
    write_outputs(&w.root);
    put(&store, &w, &spawn(), &logs());
    fs::remove_dir_all(w.root.join("dist")).unwrap();
    let Lookup::Hit(run) = lookup(&store, &w, &spawn()) else {
        panic!("expected a hit")
    };
    run.restore_outputs(&w.root).unwrap();
    assert_eq!(snapshot(&w.root.join("dist")), before);
}

#[test]
fn corrupt_or_missing_logs_blob_is_a_miss() {
    let w = ws();
    let store = CacheStore::open(&w.cache).unwrap();
    let big = vec![LogChunk {
        stream: Stream::Stdout,
        bytes: (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect(),
    }];
    put(&store, &w, &spawn(), &big);
    let blobs = blob_files(&store);
    assert_eq!(blobs.len(), 1, "no outputs: only the logs blob");
    flip_byte(&blobs[0], 40);
    let reason = miss(lookup(&store, &w, &spawn()));
    assert!(reason.starts_with("cache entry corrupt: "), "{reason}");
    assert_eq!(miss(lookup(&store, &w, &spawn())), "not found in cache");

    put(&store, &w, &spawn(), &big);
    let Lookup::Hit(run) = lookup(&store, &w, &spawn()) else {
        panic!("expected a hit after re-put")
    };
    assert_eq!(run.logs(), big.as_slice());
    for b in blob_files(&store) {
        fs::remove_file(b).unwrap();
    }
    let reason = miss(lookup(&store, &w, &spawn()));
    assert!(reason.starts_with("cache entry corrupt: "), "{reason}");
}

#[test]
fn missing_archive_blob_is_a_miss() {
    let w = ws();
    write_outputs(&w.root);
    let store = CacheStore::open(&w.cache).unwrap();
    put(&store, &w, &spawn(), &logs());
    for b in blob_files(&store) {
        fs::remove_file(b).unwrap();
    }
    let reason = miss(lookup(&store, &w, &spawn()));
    assert!(reason.starts_with("cache entry corrupt: "), "{reason}");
}

#[test]
fn temp_blob_left_behind_is_never_served() {
    let w = ws();
    write_outputs(&w.root);
    let store = CacheStore::open(&w.cache).unwrap();
    put(&store, &w, &spawn(), &logs());
    let blob = blob_files(&store).pop().unwrap();
    // Simulate a crash mid-write of the same blob: the complete blob is moved to a temp name
    // (as if the rename never happened) and a truncated copy is left beside it.
    let dir = blob.parent().unwrap();
    let tmp = dir.join(".baton-tmp-999-0-0");
    fs::rename(&blob, &tmp).unwrap();
    let bytes = fs::read(&tmp).unwrap();
    fs::write(dir.join(".baton-tmp-999-1-0"), &bytes[..bytes.len() / 2]).unwrap();
    fs::remove_dir_all(w.root.join("dist")).unwrap();
    // The entry's blob is not under its final name: a miss, never a read of the temp file.
    let reason = miss(lookup(&store, &w, &spawn()));
    assert!(reason.starts_with("cache entry corrupt: "), "{reason}");
    assert!(!w.root.join("dist").exists());
    // Stats still count the stray files; clean removes them.
    let stats = store.stats().unwrap();
    assert_eq!(stats.schemas.len(), 1);
    assert_eq!(stats.schemas[0].blobs, 0);
    assert!(stats.schemas[0].bytes > bytes.len() as u64);
    store.clean().unwrap();
    assert!(!tmp.exists());
}

#[test]
fn hostile_archive_path_is_refused() {
    let w = ws();
    write_outputs(&w.root);
    let store = CacheStore::open(&w.cache).unwrap();
    put(&store, &w, &spawn(), &logs());
    let blob = blob_files(&store).pop().unwrap();

    // Replace the archive with a well-formed one whose first entry escapes the root, stored
    // under its own correct hash, and point the entry at it.
    let mut tar_bytes = Vec::new();
    {
        let mut b = tar::Builder::new(&mut tar_bytes);
        let data = b"pwned";
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // `set_path` refuses `..`, so write the raw name bytes.
        let name = b"../escape.txt";
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        b.append(&h, &data[..]).unwrap();
        b.finish().unwrap();
    }
    let digest = blake3::hash(&tar_bytes);
    let hex = digest.to_hex().to_string();
    let hostile = store.schema_dir().join("blobs").join(&hex[..2]).join(&hex);
    fs::create_dir_all(hostile.parent().unwrap()).unwrap();
    let compressed = zstd::encode_all(&tar_bytes[..], 3).unwrap();
    fs::write(&hostile, &compressed).unwrap();
    fs::remove_file(&blob).unwrap();
    let conn = rusqlite::Connection::open(store.schema_dir().join("meta.sqlite")).unwrap();
    conn.execute(
        "UPDATE entries SET archive = ?1, archive_size = ?2",
        rusqlite::params![&digest.as_bytes()[..], compressed.len() as i64],
    )
    .unwrap();

    fs::remove_dir_all(w.root.join("dist")).unwrap();
    let Lookup::Hit(run) = lookup(&store, &w, &spawn()) else {
        panic!("expected a hit")
    };
    let err = run.restore_outputs(&w.root).unwrap_err();
    assert!(
        err.to_string()
            .contains("unsafe archive path '../escape.txt'"),
        "{err}"
    );
    assert!(!w.root.parent().unwrap().join("escape.txt").exists());
    assert!(!w.root.join("dist").exists());
    assert_eq!(miss(lookup(&store, &w, &spawn())), "not found in cache");
}

#[test]
fn bad_output_paths_are_refused_at_put() {
    let w = ws();
    let store = CacheStore::open(&w.cache).unwrap();
    for bad in ["/etc/passwd", "../outside", "dist/../../x", ""] {
        let err = store
            .put(&NewEntry {
                task_id: "app#build",
                spawn: &spawn(),
                inputs: &InputFingerprint::new(),
                root: &w.root,
                outputs: &[bad.to_string()],
                logs: &[],
                duration: Duration::ZERO,
            })
            .unwrap_err();
        assert!(
            matches!(err, CacheError::BadOutputPath { .. }),
            "{bad}: {err}"
        );
    }
    assert_eq!(miss(lookup(&store, &w, &spawn())), "not found in cache");
}

#[test]
fn non_utf8_env_value_digest_is_byte_exact() {
    use std::os::unix::ffi::OsStrExt;
    let raw = OsStr::from_bytes(b"caf\xe9");
    let lossy = raw.to_string_lossy().into_owned();
    assert_ne!(
        EnvFingerprint::tracked(raw),
        EnvFingerprint::tracked(OsStr::new(&lossy))
    );
    assert_eq!(
        EnvFingerprint::tracked(raw),
        EnvFingerprint::tracked_bytes(b"caf\xe9")
    );
    let mut a = spawn();
    a.env.insert("LANG_X".into(), EnvFingerprint::tracked(raw));
    let mut b = spawn();
    b.env
        .insert("LANG_X".into(), EnvFingerprint::tracked(OsStr::new(&lossy)));
    assert_ne!(a.spawn_key(), b.spawn_key());
    // The value itself never appears in the stored fingerprint.
    let json = serde_json::to_string(&a).unwrap();
    assert!(!json.contains("caf"), "{json}");
}

#[test]
fn pruning_keeps_a_handful_per_spawn_key_and_deletes_unused_blobs() {
    let w = ws();
    let store = CacheStore::open(&w.cache).unwrap();
    fs::create_dir_all(w.root.join("dist")).unwrap();
    for i in 0..10 {
        fs::write(w.root.join("src/a.ts"), format!("v{i}")).unwrap();
        fs::write(w.root.join("dist/out.js"), format!("out{i}")).unwrap();
        put(&store, &w, &spawn(), &[]);
    }
    let stats = store.stats().unwrap();
    let cur = &stats.schemas[0];
    assert_eq!(
        cur.entries,
        Some(baton_cache::MAX_ENTRIES_PER_SPAWN_KEY as u64)
    );
    assert_eq!(cur.blobs, baton_cache::MAX_ENTRIES_PER_SPAWN_KEY as u64);
    assert_eq!(cur.tasks, Some(1));
    // The newest ones survive.
    assert!(matches!(lookup(&store, &w, &spawn()), Lookup::Hit(_)));
    fs::write(w.root.join("src/a.ts"), "v0").unwrap();
    assert_eq!(miss(lookup(&store, &w, &spawn())), "'src/a.ts' modified");

    // Clean removes everything, including other schema directories.
    fs::create_dir_all(w.cache.join("v0/blobs")).unwrap();
    fs::write(w.cache.join("v0/meta.sqlite"), "old").unwrap();
    assert_eq!(store.stats().unwrap().schemas.len(), 2);
    let cleaned = store.clean().unwrap();
    assert_eq!(cleaned.entries, 4);
    assert!(cleaned.bytes > 0);
    let stats = store.stats().unwrap();
    assert_eq!(stats.schemas.len(), 1);
    assert_eq!(stats.schemas[0].entries, Some(0));
    assert_eq!(stats.schemas[0].blobs, 0);
    assert_eq!(miss(lookup(&store, &w, &spawn())), "not found in cache");
}

#[test]
fn concurrent_writers_and_readers_on_one_store() {
    let w = ws();
    write_outputs(&w.root);
    std::thread::scope(|s| {
        for t in 0..6 {
            let w = &w;
            s.spawn(move || {
                // Each thread has its own handle, like a separate process.
                let store = CacheStore::open(&w.cache).unwrap();
                for i in 0..15 {
                    let mut sp = spawn();
                    sp.args.push(format!("--n={}", i % 5));
                    let task = format!("task{t}");
                    let inputs = globbed(&w.root);
                    store
                        .put(&NewEntry {
                            task_id: &task,
                            spawn: &sp,
                            inputs: &inputs,
                            root: &w.root,
                            outputs: &["dist".to_string()],
                            logs: &logs(),
                            duration: Duration::from_millis(i),
                        })
                        .unwrap();
                    match store
                        .lookup(&task, &sp, &CurrentInputs::complete(&inputs))
                        .unwrap()
                    {
                        Lookup::Hit(run) => assert_eq!(run.logs(), logs().as_slice()),
                        Lookup::Miss(r) => panic!("miss right after put: {r}"),
                    }
                }
            });
        }
    });
    let store = CacheStore::open(&w.cache).unwrap();
    let stats = store.stats().unwrap();
    // 5 spawn keys shared by all threads, at most 4 entries each.
    assert!(stats.schemas[0].entries.unwrap() <= 20);
    assert_eq!(
        stats.schemas[0].blobs, 1,
        "identical outputs share one blob"
    );
    fs::remove_dir_all(w.root.join("dist")).unwrap();
    let mut sp = spawn();
    sp.args.push("--n=0".into());
    let inputs = globbed(&w.root);
    let Lookup::Hit(run) = store
        .lookup("task0", &sp, &CurrentInputs::complete(&inputs))
        .unwrap()
    else {
        panic!("expected a hit")
    };
    assert_eq!(run.restore_outputs(&w.root).unwrap().written, 5);
}

/// Env var that turns the test binary into a writer process for the multi-process test.
const CHILD_ENV: &str = "BATON_CACHE_TEST_CHILD";

#[expect(
    clippy::disallowed_methods,
    reason = "the multi-process test re-runs this test binary as writer processes"
)]
fn spawn_self(test: &str, envs: &[(&str, String)]) -> std::process::Child {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = std::process::Command::new(exe);
    cmd.args([test, "--exact", "--nocapture", "--test-threads=1"]);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.stdout(std::process::Stdio::null());
    cmd.spawn().unwrap()
}

/// In a child process: write and read entries in the shared store named by the env.
#[test]
fn child_writer_process() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return; // Only meaningful as a child of `concurrent_processes_on_one_store`.
    };
    let (root, id) = spec.split_once('|').unwrap();
    let root = PathBuf::from(root);
    let store = CacheStore::open(&CacheStore::default_dir(&root)).unwrap();
    for i in 0..20 {
        let mut sp = spawn();
        sp.args.push(format!("--n={}", i % 3));
        let inputs = fingerprint_paths(&root, &["src/a.ts", "src/b.ts"]).unwrap();
        let task = format!("proc{id}");
        store
            .put(&NewEntry {
                task_id: &task,
                spawn: &sp,
                inputs: &inputs,
                root: &root,
                outputs: &["dist".to_string()],
                logs: &logs(),
                duration: Duration::from_millis(i),
            })
            .unwrap();
        match store
            .lookup(&task, &sp, &CurrentInputs::complete(&inputs))
            .unwrap()
        {
            Lookup::Hit(run) => {
                assert_eq!(run.outputs().len(), 5);
            }
            Lookup::Miss(r) => panic!("miss right after put: {r}"),
        }
    }
}

#[test]
fn concurrent_processes_on_one_store() {
    let w = ws();
    write_outputs(&w.root);
    let children: Vec<_> = (0..4)
        .map(|i| {
            spawn_self(
                "child_writer_process",
                &[(CHILD_ENV, format!("{}|{i}", w.root.display()))],
            )
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let store = CacheStore::open(&w.cache).unwrap();
    let stats = store.stats().unwrap();
    assert_eq!(stats.schemas[0].tasks, Some(4));
    assert!(stats.schemas[0].entries.unwrap() >= 3);
    assert_eq!(stats.schemas[0].blobs, 1);
}

/// Env var that turns the test binary into a writer that is killed mid-way.
const CRASH_CHILD_ENV: &str = "BATON_CACHE_TEST_CRASH_CHILD";

fn crash_spawn(i: usize) -> SpawnFingerprint {
    let mut sp = spawn();
    sp.args.push(format!("--round={i}"));
    sp
}

/// Content of the output of round `i` (large enough that a put takes a while).
fn crash_output(i: usize) -> Vec<u8> {
    (0..400_000u32)
        .flat_map(|n| (n.wrapping_mul(2_654_435_761) ^ i as u32).to_le_bytes())
        .collect()
}

/// In a child process: store round after round until killed, announcing each stored round.
#[test]
fn crash_child_writer() {
    let Ok(root) = std::env::var(CRASH_CHILD_ENV) else {
        return; // Only meaningful as a child of `killed_writer_leaves_only_complete_entries`.
    };
    let root = PathBuf::from(root);
    let store = CacheStore::open(&CacheStore::default_dir(&root)).unwrap();
    let inputs = InputFingerprint::new();
    for i in 0.. {
        fs::create_dir_all(root.join("out")).unwrap();
        fs::write(root.join("out/big.bin"), crash_output(i)).unwrap();
        store
            .put(&NewEntry {
                task_id: "crash#build",
                spawn: &crash_spawn(i),
                inputs: &inputs,
                root: &root,
                outputs: &["out".to_string()],
                logs: &[],
                duration: Duration::ZERO,
            })
            .unwrap();
        eprintln!("stored {i}");
    }
}

#[expect(
    clippy::disallowed_methods,
    reason = "the crash test re-runs this test binary as a writer process and kills it"
)]
fn spawn_crash_child(root: &Path) -> std::process::Child {
    let exe = std::env::current_exe().unwrap();
    std::process::Command::new(exe)
        .args(["crash_child_writer", "--exact", "--nocapture"])
        .env(CRASH_CHILD_ENV, root)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn killed_writer_leaves_only_complete_entries() {
    use std::io::BufRead;
    let w = ws();
    let mut child = spawn_crash_child(&w.root);
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    // Kill it while it is in the middle of further puts (it never stops on its own).
    let mut stored = 0;
    for line in lines.by_ref() {
        if line.unwrap().starts_with("stored ") {
            stored += 1;
            if stored == 3 {
                break;
            }
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    drop(lines);

    let store = CacheStore::open(&w.cache).unwrap();
    let empty = InputFingerprint::new();
    let mut hits = 0;
    for i in 0..stored + 3 {
        let restore_root = w.root.join(format!("restore{i}"));
        fs::create_dir_all(&restore_root).unwrap();
        match store
            .lookup(
                "crash#build",
                &crash_spawn(i),
                &CurrentInputs::complete(&empty),
            )
            .unwrap()
        {
            Lookup::Hit(run) => {
                // Every visible entry is complete: it restores the exact bytes of its round.
                let s = run.restore_outputs(&restore_root).unwrap();
                assert_eq!(s.written, 1);
                assert!(fs::read(restore_root.join("out/big.bin")).unwrap() == crash_output(i));
                hits += 1;
            }
            Lookup::Miss(r) => {
                assert!(
                    i >= stored,
                    "round {i} was announced as stored but missed: {r}"
                );
                assert_eq!(r.to_string(), "args changed");
            }
        }
    }
    assert!(hits >= stored, "{hits} hits, {stored} stored");
    // The store keeps working after the crash.
    fs::create_dir_all(w.root.join("dist")).unwrap();
    fs::write(w.root.join("dist/x"), "x").unwrap();
    put(&store, &w, &spawn(), &[]);
    assert!(matches!(lookup(&store, &w, &spawn()), Lookup::Hit(_)));
}

#[test]
fn env_inputs_recorded_after_the_run() {
    use baton_cache::EnvPattern;
    use std::ffi::OsString;
    let w = ws();
    let store = CacheStore::open(&w.cache).unwrap();
    let env = |pairs: &[(&str, &str)]| -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    };
    let at_run = env(&[
        ("VITE_API_URL", "https://a"),
        ("VITE_MODE", "x"),
        ("HOME", "/h"),
    ]);
    let mut inputs = globbed(&w.root);
    inputs.insert_env(&at_run, "VITE_API_URL");
    inputs.insert_env(&at_run, "DEBUG");
    inputs.insert_env_pattern(&at_run, &EnvPattern::Glob("VITE_*".into()));
    inputs.insert_env_pattern(&at_run, &EnvPattern::Prefix("NEXT_".into()));
    store
        .put(&NewEntry {
            task_id: "app#build",
            spawn: &spawn(),
            inputs: &inputs,
            root: &w.root,
            outputs: &[],
            logs: &[],
            duration: Duration::ZERO,
        })
        .unwrap();
    let check = |e: &[(OsString, OsString)]| {
        let known = globbed(&w.root);
        store
            .lookup(
                "app#build",
                &spawn(),
                &CurrentInputs::complete(&known).with_env(e),
            )
            .unwrap()
    };
    assert!(matches!(check(&at_run), Lookup::Hit(_)));
    // Unrelated variables do not matter.
    let mut more = at_run.clone();
    more.push(("OTHER".into(), "1".into()));
    assert!(matches!(check(&more), Lookup::Hit(_)));
    let changed = env(&[("VITE_API_URL", "https://b"), ("VITE_MODE", "x")]);
    assert_eq!(miss(check(&changed)), "env VITE_API_URL changed");
    let removed = env(&[("VITE_MODE", "x")]);
    assert_eq!(miss(check(&removed)), "env VITE_API_URL removed");
    let mut added = at_run.clone();
    added.push(("DEBUG".into(), "1".into()));
    assert_eq!(miss(check(&added)), "env DEBUG added");
    let mut new_match = at_run.clone();
    new_match.push(("VITE_NEW".into(), "1".into()));
    assert_eq!(miss(check(&new_match)), "env VITE_* changed");
    let mut prefixed = at_run.clone();
    prefixed.push(("NEXT_PUBLIC_X".into(), "1".into()));
    assert_eq!(miss(check(&prefixed)), "env NEXT_* changed");
    // Values are never stored: only digests.
    let db = fs::read(store.schema_dir().join("meta.sqlite")).unwrap();
    let wal = fs::read(store.schema_dir().join("meta.sqlite-wal")).unwrap_or_default();
    for hay in [&db, &wal] {
        assert!(!hay.windows(9).any(|w| w == b"https://a"));
    }
}

#[test]
fn long_and_non_utf8_output_names_round_trip() {
    use std::os::unix::ffi::OsStrExt;
    let w = ws();
    let long_dir = w
        .root
        .join("dist")
        .join("a-rather-long-directory-name-".repeat(4))
        .join("and-another-one-".repeat(4));
    fs::create_dir_all(&long_dir).unwrap();
    fs::write(long_dir.join("file-with-a-long-name.js".repeat(3)), "long").unwrap();
    let odd = w.root.join("dist").join(OsStr::from_bytes(b"caf\xe9.txt"));
    fs::write(&odd, "latin-1 name").unwrap();
    // An empty directory where a file will be restored, and a directory symlink.
    std::os::unix::fs::symlink("../src", w.root.join("dist/srclink")).unwrap();
    let before = snapshot(&w.root.join("dist"));
    let store = CacheStore::open(&w.cache).unwrap();
    put(&store, &w, &spawn(), &[]);
    let Lookup::Hit(run) = lookup(&store, &w, &spawn()) else {
        panic!("expected a hit")
    };
    assert_eq!(run.outputs().len(), 3);
    assert!(
        run.outputs()
            .iter()
            .any(|o| o.path.starts_with('\0') && o.path.contains("x:")),
        "non-UTF-8 name kept losslessly: {:?}",
        run.outputs()
    );
    fs::remove_dir_all(w.root.join("dist")).unwrap();
    fs::create_dir_all(w.root.join("dist/srclink")).unwrap();
    let stats = run.restore_outputs(&w.root).unwrap();
    assert_eq!(stats.written, 3);
    assert_eq!(snapshot(&w.root.join("dist")), before);
}

#[test]
fn gc_removes_orphan_blobs_and_old_temp_files_only() {
    let w = ws();
    write_outputs(&w.root);
    let store = CacheStore::open(&w.cache).unwrap();
    put(&store, &w, &spawn(), &logs());
    let live = blob_files(&store);
    assert_eq!(live.len(), 1);
    let dir = live[0].parent().unwrap();
    // An orphan blob (as left by a writer that died before inserting its entry).
    let orphan_hex = Digest::of(b"orphan").to_hex();
    let orphan = store
        .schema_dir()
        .join("blobs")
        .join(&orphan_hex[..2])
        .join(&orphan_hex);
    fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    fs::write(&orphan, "x").unwrap();
    // A temp file from a crash long ago, and one being written right now.
    let old_tmp = dir.join(".baton-tmp-1-2-3");
    fs::write(&old_tmp, "partial").unwrap();
    fs::File::options()
        .write(true)
        .open(&old_tmp)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(7200))
        .unwrap();
    let new_tmp = store.schema_dir().join("tmp/.baton-tmp-4-5-6");
    fs::write(&new_tmp, "in progress").unwrap();

    let stats = store.gc().unwrap();
    assert_eq!((stats.blobs, stats.temp_files), (1, 1));
    assert!(!orphan.exists() && !old_tmp.exists());
    assert!(new_tmp.exists() && live[0].exists());
    fs::remove_dir_all(w.root.join("dist")).unwrap();
    let Lookup::Hit(run) = lookup(&store, &w, &spawn()) else {
        panic!("expected a hit")
    };
    assert_eq!(run.restore_outputs(&w.root).unwrap().written, 5);
}

#[test]
fn restore_blocked_by_a_directory_leaves_no_temp_files() {
    let w = ws();
    write_outputs(&w.root);
    let store = CacheStore::open(&w.cache).unwrap();
    put(&store, &w, &spawn(), &[]);
    fs::remove_dir_all(w.root.join("dist")).unwrap();
    // A non-empty directory where the file `dist/index.js` belongs.
    fs::create_dir_all(w.root.join("dist/index.js/keep")).unwrap();
    let Lookup::Hit(run) = lookup(&store, &w, &spawn()) else {
        panic!("expected a hit")
    };
    let err = run.restore_outputs(&w.root).unwrap_err();
    assert!(
        matches!(&err, CacheError::Restore { path, .. } if path == "dist/index.js"),
        "{err}"
    );
    let left: Vec<String> = snapshot(&w.root.join("dist"))
        .into_keys()
        .filter(|k| k.contains(".baton-tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // Not a corruption: the entry is still there.
    assert!(matches!(lookup(&store, &w, &spawn()), Lookup::Hit(_)));
}
