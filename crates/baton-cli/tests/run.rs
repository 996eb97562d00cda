//! End-to-end tests of `baton run` on fixture workspaces, with snapshotted output.

mod common;

use common::{Fixture, pid_alive};

/// A pnpm workspace: `a` ← `b` ← `c` (b depends on a, c on b), and an independent `d`.
/// Builds are shell scripts that read `src/` and the dependency's `dist/`, and write `dist/`.
fn chain() -> Fixture {
    Fixture::new(&[
        ("package.json", r#"{ "name": "root", "private": true }"#),
        ("pnpm-workspace.yaml", "packages:\n  - 'packages/*'\n"),
        (".gitignore", "node_modules\ndist\n"),
        (
            "baton.json",
            r#"{ "taskDefaults": { "build": { "dependsOn": ["^build"], "output": ["dist"] } } }"#,
        ),
        (
            "packages/a/package.json",
            r#"{ "name": "a", "scripts": { "build": "mkdir -p dist && cp src/a.txt dist/a.txt && echo built a" } }"#,
        ),
        ("packages/a/src/a.txt", "A\n"),
        (
            "packages/b/package.json",
            r#"{ "name": "b", "dependencies": { "a": "workspace:*" },
                 "scripts": { "build": "mkdir -p dist && cat ../a/dist/a.txt src/b.txt > dist/b.txt && echo built b >&2" } }"#,
        ),
        ("packages/b/src/b.txt", "B\n"),
        (
            "packages/c/package.json",
            r#"{ "name": "c", "devDependencies": { "b": "^1.0.0" },
                 "scripts": { "build": "mkdir -p dist && cat ../b/dist/b.txt src/c.txt > dist/c.txt" } }"#,
        ),
        ("packages/c/src/c.txt", "C\n"),
        (
            "packages/d/package.json",
            r#"{ "name": "d", "scripts": { "build": "mkdir -p dist && cp src/d.txt dist/d.txt" } }"#,
        ),
        ("packages/d/src/d.txt", "D\n"),
    ])
}

#[test]
fn cold_hit_restore_and_change() {
    cold_hit_restore_and_change_in("chain", &[]);
}

/// The same without tracing: inputs are the package files, outputs the `output` globs, and a
/// dependency's output and cache key are inputs of its dependents.
#[test]
fn cold_hit_restore_and_change_untraced() {
    cold_hit_restore_and_change_in("chain_untraced", &[("BATON_TRACE_DISABLE", "1")]);
}

fn cold_hit_restore_and_change_in(name: &str, env: &[(&str, &str)]) {
    let f = chain();
    let run = |args: &[&str]| f.baton_in("", args, env);
    let cold = run(&["run", "build", "-r", "--concurrency", "1"]);
    insta::assert_snapshot!(format!("{name}_cold"), cold.snapshot());
    assert_eq!(f.read("packages/c/dist/c.txt"), "A\nB\nC\n");

    let hit = run(&["run", "build", "-r", "--concurrency", "1"]);
    insta::assert_snapshot!(format!("{name}_hit"), hit.snapshot());

    // Outputs deleted: a hit restores them byte for byte.
    std::fs::remove_dir_all(f.root().join("packages/b/dist")).unwrap();
    std::fs::remove_dir_all(f.root().join("packages/c/dist")).unwrap();
    let restored = run(&["run", "build", "-r", "--concurrency", "1", "-v"]);
    insta::assert_snapshot!(format!("{name}_restored"), restored.snapshot());
    assert_eq!(f.read("packages/b/dist/b.txt"), "A\nB\n");
    assert_eq!(f.read("packages/c/dist/c.txt"), "A\nB\nC\n");

    // One source changed: that package and its dependents miss, naming the file; d hits.
    f.write("packages/a/src/a.txt", "A2\n");
    let changed = run(&["run", "build", "-r", "--concurrency", "1"]);
    insta::assert_snapshot!(format!("{name}_changed"), changed.snapshot());
    assert_eq!(f.read("packages/c/dist/c.txt"), "A2\nB\nC\n");
}

#[test]
fn filters_select_packages() {
    let f = chain();
    let r = f.baton(&["run", "build", "--filter", "b...", "--concurrency", "1"]);
    insta::assert_snapshot!("filter_b_deps", r.snapshot());
    let r = f.baton(&["run", "build", "--filter", "...b", "--filter", "!c"]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("b#build"), "{}", r.stdout);
    assert!(!r.stdout.contains("c#build"), "{}", r.stdout);
    // From inside a package, the task of that package (and its dependsOn) runs.
    let r = f.baton_in("packages/c", &["run", "build", "--concurrency", "1"], &[]);
    assert_eq!(r.code, 0, "{}", r.snapshot());
    assert!(r.stdout.contains("c#build"));
    assert!(!r.stdout.contains("d#build"));
    let r = f.baton(&["run", "build", "--filter", "nope"]);
    insta::assert_snapshot!("filter_unknown", r.snapshot());
}

#[test]
fn env_is_filtered_tracked_and_explained() {
    let f = Fixture::new(&[
        (
            "package.json",
            r#"{ "name": "single", "scripts": { "show": "echo mode=$NODE_ENV secret=$SECRET home=${HOME:+set} token=${API_TOKEN:+set}" } }"#,
        ),
        (
            "baton.json",
            r#"{ "tasks": { "show": { "env": ["NODE_ENV", "API_*"] } } }"#,
        ),
    ]);
    let env = [
        ("NODE_ENV", "development"),
        ("SECRET", "hunter2"),
        ("API_TOKEN", "tok-9f8e7d"),
    ];
    let first = f.baton_in("", &["run", "show"], &env);
    assert_eq!(first.code, 0, "{}", first.snapshot());
    assert!(
        first
            .stdout
            .contains("mode=development secret= home=set token=set"),
        "{}",
        first.stdout
    );
    let again = f.baton_in("", &["run", "show"], &env);
    assert!(again.stdout.contains("cache hit"), "{}", again.stdout);
    // An untracked variable changing does not matter…
    let again = f.baton_in(
        "",
        &["run", "show"],
        &[
            ("NODE_ENV", "development"),
            ("SECRET", "x"),
            ("API_TOKEN", "tok-9f8e7d"),
        ],
    );
    assert!(again.stdout.contains("cache hit"), "{}", again.stdout);
    // …a tracked one does, and the miss says which.
    let changed = f.baton_in(
        "",
        &["run", "show"],
        &[("NODE_ENV", "production"), ("API_TOKEN", "tok-9f8e7d")],
    );
    insta::assert_snapshot!("env_changed", changed.snapshot());
    let removed = f.baton_in("", &["run", "show"], &[("NODE_ENV", "production")]);
    assert!(
        removed.stdout.contains("cache miss: env API_TOKEN removed"),
        "{}",
        removed.stdout
    );
    // A tracked value never reaches the cache directory in clear.
    let needle = b"tok-9f8e7d";
    for entry in walk(&f.root().join(".baton")) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "{} holds the value",
            entry.display()
        );
    }
}

#[test]
fn args_and_items() {
    let f = Fixture::new(&[(
        "package.json",
        r#"{ "name": "single", "scripts": { "greet": "echo one && echo two" } }"#,
    )]);
    let r = f.baton(&["run", "greet", "--", "extra"]);
    insta::assert_snapshot!("items_args", r.snapshot());
    let r = f.baton(&["run", "greet", "--", "other"]);
    insta::assert_snapshot!("items_args_changed", r.snapshot());
    let r = f.baton(&["run", "greet", "--", "other"]);
    assert!(r.stdout.contains("2/2 cache hit"), "{}", r.stdout);
}

#[test]
fn failing_task_fails_fast_and_kills_the_tree() {
    let f = Fixture::new(&[
        (
            "package.json",
            r#"{ "name": "root", "private": true, "workspaces": ["packages/*"] }"#,
        ),
        (
            "packages/bad/package.json",
            r#"{ "name": "bad", "scripts": { "build": "sh ./bad.sh" } }"#,
        ),
        // Fails once the slow task is surely running.
        (
            "packages/bad/bad.sh",
            "while [ ! -f ../child.pid ]; do sleep 0.01; done\necho failing >&2\nexit 3\n",
        ),
        (
            "packages/after/package.json",
            r#"{ "name": "after", "dependencies": { "bad": "*" }, "scripts": { "build": "echo never" } }"#,
        ),
    ]);
    add_slow_package(&f);
    let r = f.baton(&["run", "build", "-r", "--concurrency", "2"]);
    assert_eq!(r.code, 3, "{}", r.snapshot());
    assert!(
        r.stderr.contains("✗ bad#build exited with code 3"),
        "{}",
        r.stderr
    );
    assert!(!r.stdout.contains("never"), "{}", r.stdout);
    assert!(r.stdout.contains("1 failed · 1 stopped"), "{}", r.stdout);
    assert_slow_tree_gone(&f);
    // Neither the failed task nor the killed one was stored.
    let stats = f.baton(&["cache", "stats", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stats.stdout).unwrap();
    assert_eq!(v["schemas"][0]["entries"], 0, "{}", stats.stdout);
}

#[test]
fn cycle_is_reported_with_its_path() {
    let f = Fixture::new(&[
        (
            "package.json",
            r#"{ "name": "root", "private": true, "workspaces": ["packages/*"] }"#,
        ),
        (
            "packages/a/package.json",
            r#"{ "name": "a", "scripts": { "build": "true" } }"#,
        ),
        (
            "packages/a/baton.json",
            r#"{ "tasks": { "build": { "dependsOn": ["b#build"] } } }"#,
        ),
        (
            "packages/b/package.json",
            r#"{ "name": "b", "scripts": { "build": "true" } }"#,
        ),
        (
            "packages/b/baton.json",
            r#"{ "tasks": { "build": { "dependsOn": ["a#build"] } } }"#,
        ),
    ]);
    let r = f.baton(&["run", "build", "-r"]);
    insta::assert_snapshot!("cycle", r.snapshot());
}

#[test]
fn bad_config_names_file_and_field() {
    let f = Fixture::new(&[
        (
            "package.json",
            r#"{ "name": "root", "private": true, "workspaces": ["packages/*"] }"#,
        ),
        (
            "packages/a/package.json",
            r#"{ "name": "a", "scripts": { "build": "true" } }"#,
        ),
        (
            "packages/a/baton.json",
            r#"{ "tasks": { "build": { "dependOn": ["^build"] } } }"#,
        ),
    ]);
    let r = f.baton(&["run", "build", "-r"]);
    insta::assert_snapshot!("bad_config_unknown_field", r.snapshot());
    f.write(
        "packages/a/baton.json",
        r#"{ "tasks": { "build": { "cache": "yes" } } }"#,
    );
    let r = f.baton(&["run", "build", "-r"]);
    insta::assert_snapshot!("bad_config_wrong_type", r.snapshot());
    f.write(
        "packages/a/baton.json",
        r#"{ "tasks": { "build": { "command": "make" } } }"#,
    );
    let r = f.baton(&["run", "build", "-r"]);
    insta::assert_snapshot!("bad_config_command_conflict", r.snapshot());
    f.write("packages/a/baton.json", "{ not json");
    let r = f.baton(&["run", "build", "-r"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("packages/a/baton.json"), "{}", r.stderr);
}

#[test]
fn concurrent_runs_share_one_cache() {
    let cache = tempfile::tempdir().unwrap();
    let mut fixtures = Vec::new();
    for _ in 0..4 {
        let mut f = chain();
        f.cache_dir = Some(cache.path().to_path_buf());
        fixtures.push(f);
    }
    let children: Vec<_> = fixtures
        .iter()
        .map(|f| {
            f.command("", &["run", "build", "-r"], &[])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (f, c) in fixtures.iter().zip(children) {
        let r = f.finish(c.wait_with_output().unwrap());
        assert_eq!(r.code, 0, "{}", r.snapshot());
        assert_eq!(f.read("packages/c/dist/c.txt"), "A\nB\nC\n");
    }
    for f in &fixtures {
        let r = f.baton(&["run", "build", "-r"]);
        assert_eq!(r.code, 0, "{}", r.snapshot());
        assert!(r.stdout.contains("10/10 cache hit"), "{}", r.stdout);
    }
}

#[test]
fn report_and_log_modes() {
    let f = chain();
    let report = f.root().join("report.json");
    let r = f.baton(&[
        "run",
        "build",
        "-r",
        "--log",
        "labeled",
        "--report",
        report.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.snapshot());
    assert!(r.stdout.contains("a#build | built a\n"), "{}", r.stdout);
    assert!(r.stderr.contains("b#build | built b\n"), "{}", r.stderr);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let tasks = v["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 10);
    for t in tasks {
        assert_eq!(t["cache"], "miss");
        assert_eq!(t["reason"], "not found in cache");
        assert_eq!(t["exit_code"], 0);
        assert!(t["duration_ms"].as_f64().unwrap() > 0.0);
    }
    let r = f.baton(&[
        "run",
        "build",
        "-r",
        "--log",
        "grouped",
        "--report",
        report.to_str().unwrap(),
    ]);
    assert!(
        r.stdout
            .contains("▶ a#build $ mkdir -p dist && cp src/a.txt dist/a.txt && echo built a")
            || r.stdout.contains("▶ a#build [1/3]"),
        "{}",
        r.stdout
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(v["cache_hits"], 10);
}

#[test]
fn cache_stats_and_clean() {
    let f = chain();
    assert_eq!(f.baton(&["run", "build", "-r"]).code, 0);
    let stats = f.baton(&["cache", "stats", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stats.stdout).unwrap();
    assert_eq!(v["schemas"][0]["entries"], 10);
    let clean = f.baton(&["cache", "clean"]);
    assert!(
        clean.stdout.contains("removed 10 entries"),
        "{}",
        clean.stdout
    );
    let r = f.baton(&["run", "build", "-r"]);
    assert!(r.stdout.contains("0/10 cache hit"), "{}", r.stdout);
}

/// Every file under `dir`, recursively.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn ctrl_c_stops_everything_and_leaves_no_process() {
    let f = Fixture::new(&[
        (
            "package.json",
            r#"{ "name": "root", "private": true, "workspaces": ["packages/*"] }"#,
        ),
        (
            "packages/later/package.json",
            r#"{ "name": "later", "dependencies": { "slow": "*" }, "scripts": { "build": "echo never" } }"#,
        ),
    ]);
    add_slow_package(&f);
    let child = f
        .command("", &["run", "build", "-r"], &[])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the task's process tree is up (the script writes the file last).
    let pid_file = f.root().join("packages/child.pid");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !pid_file.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the task never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let status = common::tool_command("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let r = f.finish(out);
    assert_eq!(r.code, 130, "{}", r.snapshot());
    assert!(!r.stdout.contains("never"), "{}", r.stdout);
    assert!(r.stdout.contains("cancelled"), "{}", r.stdout);
    assert_slow_tree_gone(&f);
}

/// Package `slow`: its build starts a background grandchild, records both pids (the child's
/// last, atomically), then waits forever.
fn add_slow_package(f: &Fixture) {
    f.write(
        "packages/slow/package.json",
        r#"{ "name": "slow", "scripts": { "build": "sh ./slow.sh" } }"#,
    );
    f.write(
        "packages/slow/slow.sh",
        "sleep 600 &\necho $! > ../grandchild.pid\necho $$ > ../child.pid.tmp && mv ../child.pid.tmp ../child.pid\nwait\n",
    );
}

/// Neither the `slow` task's shell nor its backgrounded grandchild is alive.
fn assert_slow_tree_gone(f: &Fixture) {
    for name in ["child", "grandchild"] {
        let pid: i32 = f
            .read(&format!("packages/{name}.pid"))
            .trim()
            .parse()
            .unwrap();
        assert!(!pid_alive(pid), "{name} {pid} survived");
    }
}

/// `baton run … 2>&1 | head -1` with debug logging: the reader goes away after one line and
/// every later write to stderr fails. The run still finishes (it used to hang: the logger's
/// error report panicked inside a task).
#[test]
fn a_closed_stderr_does_not_hang_the_run() {
    use std::io::{BufRead as _, BufReader};
    let f = chain();
    let mut child = f
        .command(
            "",
            &["run", "build", "-r"],
            &[("BATON_LOG", "baton_task=debug")],
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut first = String::new();
    BufReader::new(child.stderr.take().expect("stderr"))
        .read_line(&mut first)
        .expect("one line");
    // The reader is dropped here: stderr is now a broken pipe.
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let Ok(status) = rx.recv_timeout(std::time::Duration::from_secs(60)) else {
        // SAFETY: kill(2) of our own hung child.
        unsafe { nix::libc::kill(pid as i32, nix::libc::SIGKILL) };
        panic!("baton run hung after its stderr closed");
    };
    let status = status.expect("wait");
    assert!(status.success(), "{status:?}");
    assert!(!f.read("packages/c/dist/c.txt").is_empty());
}
