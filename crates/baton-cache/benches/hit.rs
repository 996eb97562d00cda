//! Cost of the cache's hot paths on real files: a full hit of 200 tasks (input fingerprinting,
//! lookup, restore check) and fingerprinting 10,000 small files.
//!
//! Run: `cargo bench -p baton-cache --bench hit` (prints a table; no assertions).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use baton_cache::{
    CacheStore, CurrentInputs, EnvFingerprint, InputFingerprint, LogChunk, Lookup, NewEntry,
    SpawnFingerprint, Stream, fingerprint_paths,
};

const TASKS: usize = 200;
const INPUTS_PER_TASK: usize = 20;
const OUTPUTS_PER_TASK: usize = 10;

fn spawn(i: usize) -> SpawnFingerprint {
    SpawnFingerprint {
        cwd: format!("packages/p{i}"),
        program: "node".into(),
        args: vec!["build.js".into()],
        env: BTreeMap::from([
            (
                "NODE_ENV".to_string(),
                EnvFingerprint::tracked(OsStr::new("production")),
            ),
            ("PATH".to_string(), EnvFingerprint::PassThrough),
        ]),
        input_config: serde_json::json!({"input": null}),
        output_config: serde_json::json!({"output": ["dist/**"]}),
        command: "node build.js".into(),
    }
}

fn input_paths(i: usize) -> Vec<String> {
    (0..INPUTS_PER_TASK)
        .map(|j| format!("packages/p{i}/src/f{j}.js"))
        .collect()
}

fn setup(root: &Path) {
    for i in 0..TASKS {
        let pkg = root.join(format!("packages/p{i}"));
        fs::create_dir_all(pkg.join("src")).unwrap();
        fs::create_dir_all(pkg.join("dist")).unwrap();
        for j in 0..INPUTS_PER_TASK {
            fs::write(
                pkg.join(format!("src/f{j}.js")),
                format!("// {i} {j}\n").repeat(20),
            )
            .unwrap();
        }
        for j in 0..OUTPUTS_PER_TASK {
            fs::write(
                pkg.join(format!("dist/o{j}.js")),
                format!("out {i} {j}\n").repeat(40),
            )
            .unwrap();
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    setup(root);
    let dir = CacheStore::default_dir(root);
    let store = CacheStore::open(&dir).unwrap();
    let logs = vec![LogChunk {
        stream: Stream::Stdout,
        bytes: b"\x1b[32mbuilt\x1b[0m in 12ms\n".to_vec(),
    }];
    let t = Instant::now();
    for i in 0..TASKS {
        let inputs = fingerprint_paths(root, &input_paths(i)).unwrap();
        store
            .put(&NewEntry {
                task_id: &format!("p{i}#build"),
                spawn: &spawn(i),
                inputs: &inputs,
                root,
                outputs: &[format!("packages/p{i}/dist")],
                logs: &logs,
                duration: Duration::from_millis(100),
            })
            .unwrap();
    }
    let put_time = t.elapsed();
    drop(store);
    // Let every file age past the hash cache's racy margin (2 s), as in a real workspace.
    std::thread::sleep(Duration::from_millis(2100));

    for round in 0..4 {
        let t_open = Instant::now();
        let store = CacheStore::open(&dir).unwrap();
        let open = t_open.elapsed();
        let (mut fp_t, mut lookup_t, mut restore_t) =
            (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        let mut hits = 0;
        for i in 0..TASKS {
            let t = Instant::now();
            // Round 0 hashes everything; later rounds use the store's file-hash cache.
            let known: InputFingerprint = if round == 0 {
                fingerprint_paths(root, &input_paths(i)).unwrap()
            } else {
                store.fingerprint_paths(root, &input_paths(i)).unwrap()
            };
            fp_t += t.elapsed();
            let t = Instant::now();
            let res = store
                .lookup(
                    &format!("p{i}#build"),
                    &spawn(i),
                    &CurrentInputs::complete(&known),
                )
                .unwrap();
            lookup_t += t.elapsed();
            if let Lookup::Hit(run) = res {
                hits += 1;
                let t = Instant::now();
                let s = run.restore_outputs(root).unwrap();
                assert_eq!(s.written, 0);
                restore_t += t.elapsed();
            }
        }
        println!(
            "round {round}: {hits}/{TASKS} hits | open {} | fingerprint inputs {} | lookup {} | restore check {} ({} output files)",
            ms(open),
            ms(fp_t),
            ms(lookup_t),
            ms(restore_t),
            TASKS * OUTPUTS_PER_TASK
        );
    }
    println!("cold put of {TASKS} entries: {}", ms(put_time));

    // 10,000 small files fingerprinted at once (the traced-input hit check of issue 4).
    let many = root.join("many");
    let mut paths = Vec::new();
    for d in 0..100 {
        fs::create_dir_all(many.join(format!("d{d}"))).unwrap();
        for f in 0..100 {
            let p = format!("many/d{d}/f{f}.ts");
            fs::write(
                root.join(&p),
                format!("export const x{f} = {d};\n").repeat(10),
            )
            .unwrap();
            paths.push(p);
        }
    }
    compare(&dir, root, &paths, "10,000 files of 250 B");

    // 1,000 files of 64 KiB (bundles, assets).
    let mut big = Vec::new();
    fs::create_dir_all(root.join("big")).unwrap();
    for f in 0..1000 {
        let p = format!("big/f{f}.js");
        fs::write(root.join(&p), format!("// {f}\n").repeat(64 * 1024 / 8)).unwrap();
        big.push(p);
    }
    compare(&dir, root, &big, "1,000 files of 64 KiB");
}

/// Fingerprints `paths` with and without the store's file-hash cache, interleaved; prints the
/// best of 5 each.
fn compare(dir: &Path, root: &Path, paths: &[String], what: &str) {
    std::thread::sleep(Duration::from_millis(2100));
    let store = CacheStore::open(dir).unwrap();
    store.fingerprint_paths(root, paths).unwrap(); // records the rows
    let (mut plain, mut cached) = (Duration::MAX, Duration::MAX);
    for _ in 0..5 {
        let t = Instant::now();
        let a = fingerprint_paths(root, paths).unwrap();
        plain = plain.min(t.elapsed());
        let t = Instant::now();
        let b = store.fingerprint_paths(root, paths).unwrap();
        cached = cached.min(t.elapsed());
        assert_eq!(a, b);
    }
    println!(
        "fingerprint {what}: hashing {} | with hash cache {}",
        ms(plain),
        ms(cached)
    );
}
