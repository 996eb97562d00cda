//! Zero-config caching: no `input`/`output` lists anywhere; Baton traces what each task's process
//! tree reads and writes, and tools talk back through the IPC.

mod common;

use common::Fixture;

fn single(scripts: &str) -> Fixture {
    Fixture::new(&[(
        "package.json",
        &format!(r#"{{ "name": "app", "scripts": {scripts} }}"#),
    )])
}

#[test]
fn node_script_inputs_and_outputs_are_inferred() {
    let f = single(r#"{ "build": "node build.js" }"#);
    f.write(
        "build.js",
        r#"const fs = require("fs");
fs.mkdirSync("out", { recursive: true });
let text = "";
for (const name of fs.readdirSync("src").sort()) text += fs.readFileSync("src/" + name, "utf8");
fs.writeFileSync("out/all.txt", text.toUpperCase());
console.log("built", text.length, "bytes");
"#,
    );
    f.write("src/a.txt", "alpha\n");
    f.write("src/b.txt", "beta\n");
    f.write("notes.md", "not read by the build\n");

    let cold = f.baton(&["run", "build"]);
    assert!(
        cold.stdout.contains("cache miss: not found in cache"),
        "{}",
        cold.snapshot()
    );
    assert_eq!(f.read("out/all.txt"), "ALPHA\nBETA\n");

    let hit = f.baton(&["run", "build"]);
    assert!(
        hit.stdout.contains("cache hit, replaying"),
        "{}",
        hit.snapshot()
    );
    assert!(hit.stdout.contains("built 11 bytes"), "{}", hit.stdout);

    // A file the build never reads does not matter.
    f.write("notes.md", "edited\n");
    let hit = f.baton(&["run", "build"]);
    assert!(hit.stdout.contains("cache hit"), "{}", hit.stdout);

    // Outputs deleted: restored with no `output` config.
    std::fs::remove_dir_all(f.root().join("out")).unwrap();
    let restored = f.baton(&["run", "build"]);
    assert!(restored.stdout.contains("cache hit"), "{}", restored.stdout);
    assert_eq!(f.read("out/all.txt"), "ALPHA\nBETA\n");

    // A read file changes: the miss names it.
    f.write("src/b.txt", "BETA2\n");
    let changed = f.baton(&["run", "build"]);
    insta::assert_snapshot!("auto_node_modified", changed.snapshot());

    // A new file in a listed directory is a miss too, naming the file.
    f.write("src/c.txt", "gamma\n");
    let added = f.baton(&["run", "build"]);
    assert!(
        added.stdout.contains("cache miss: 'src/c.txt' added"),
        "{}",
        added.stdout
    );
    assert_eq!(f.read("out/all.txt"), "ALPHA\nBETA2\nGAMMA\n");

    // A removed one is named as removed.
    std::fs::remove_file(f.root().join("src/a.txt")).unwrap();
    let removed = f.baton(&["run", "build"]);
    assert!(
        removed.stdout.contains("cache miss: 'src/a.txt' removed"),
        "{}",
        removed.stdout
    );
    assert_eq!(f.read("out/all.txt"), "BETA2\nGAMMA\n");
}

#[test]
fn shell_pipeline_is_traced() {
    let f = single(r#"{ "gen": "cat in/a.txt in/b.txt | tr a-z A-Z > upper.txt && echo done" }"#);
    f.write("in/a.txt", "one\n");
    f.write("in/b.txt", "two\n");
    assert_eq!(f.baton(&["run", "gen"]).code, 0);
    assert_eq!(f.read("upper.txt"), "ONE\nTWO\n");
    let hit = f.baton(&["run", "gen"]);
    assert!(hit.stdout.contains("cache hit"), "{}", hit.stdout);
    std::fs::remove_file(f.root().join("upper.txt")).unwrap();
    assert!(f.baton(&["run", "gen"]).stdout.contains("cache hit"));
    assert_eq!(f.read("upper.txt"), "ONE\nTWO\n");
    f.write("in/a.txt", "uno\n");
    let miss = f.baton(&["run", "gen"]);
    assert!(
        miss.stdout.contains("cache miss: 'in/a.txt' modified"),
        "{}",
        miss.stdout
    );
}

#[test]
fn files_read_by_child_processes_and_worker_threads_are_inputs() {
    let f = single(r#"{ "build": "node main.js" }"#);
    f.write(
        "main.js",
        r#"const { fork } = require("child_process");
const { Worker } = require("worker_threads");
const fs = require("fs");
const w = new Worker(`require("fs").writeFileSync("from-thread.txt", require("fs").readFileSync("thread-input.txt"))`, { eval: true });
w.on("exit", () => {
  const c = fork("child.js");
  c.on("exit", (code) => { console.log("done", code); });
});
"#,
    );
    f.write(
        "child.js",
        r#"require("fs").writeFileSync("from-child.txt", require("fs").readFileSync("child-input.txt"));"#,
    );
    f.write("thread-input.txt", "T1");
    f.write("child-input.txt", "C1");
    assert_eq!(f.baton(&["run", "build"]).code, 0);
    assert!(f.baton(&["run", "build"]).stdout.contains("cache hit"));
    std::fs::remove_file(f.root().join("from-child.txt")).unwrap();
    std::fs::remove_file(f.root().join("from-thread.txt")).unwrap();
    assert!(f.baton(&["run", "build"]).stdout.contains("cache hit"));
    assert_eq!(f.read("from-child.txt"), "C1");
    assert_eq!(f.read("from-thread.txt"), "T1");
    f.write("child-input.txt", "C2");
    let miss = f.baton(&["run", "build"]);
    assert!(
        miss.stdout
            .contains("cache miss: 'child-input.txt' modified"),
        "{}",
        miss.stdout
    );
    f.write("thread-input.txt", "T2");
    let miss = f.baton(&["run", "build"]);
    assert!(
        miss.stdout
            .contains("cache miss: 'thread-input.txt' modified"),
        "{}",
        miss.stdout
    );
}

#[test]
fn a_file_read_and_written_is_not_cached() {
    let f = single(r#"{ "bump": "node bump.js" }"#);
    f.write(
        "bump.js",
        r#"const fs = require("fs");
const n = Number(fs.readFileSync("counter.txt", "utf8")) + 1;
fs.writeFileSync("counter.txt", String(n));
console.log("counter", n);
"#,
    );
    f.write("counter.txt", "0");
    let first = f.baton(&["run", "bump"]);
    insta::assert_snapshot!("auto_read_write", first.snapshot());
    let second = f.baton(&["run", "bump"]);
    assert!(second.stdout.contains("counter 2"), "{}", second.stdout);
    assert_eq!(f.read("counter.txt"), "2");
}

#[test]
fn tools_track_env_ignore_paths_and_disable_the_cache() {
    let f = single(r#"{ "build": "node tool.js", "serve": "node serve.js" }"#);
    // A tool built on vite-task-client's contract: it reads a variable the task was not given,
    // asks for it to be tracked, and scratch files it reads and writes are ignored.
    f.write(
        "tool.js",
        r#"const fs = require("fs");
const runner = require(process.env.VP_RUN_NODE_CLIENT_PATH).load();
const mode = runner.getEnv("BUILD_MODE", { tracked: true });
const flags = runner.getEnvs({ prefix: "FEATURE_" }, { tracked: true });
fs.mkdirSync("scratch", { recursive: true });
runner.ignoreInput("scratch");
runner.ignoreOutput("scratch");
const runs = fs.existsSync("scratch/runs") ? Number(fs.readFileSync("scratch/runs", "utf8")) : 0;
fs.writeFileSync("scratch/runs", String(runs + 1));
fs.writeFileSync("result.txt", `mode=${mode} flags=${Object.keys(flags).sort().join(",")} direct=${process.env.BUILD_MODE ?? "unset"}\n`);
"#,
    );
    f.write(
        "serve.js",
        r#"require(process.env.VP_RUN_NODE_CLIENT_PATH).load().disableCache(); console.log("serving");"#,
    );
    let env = [("BUILD_MODE", "release"), ("FEATURE_X", "1")];
    let first = f.baton_in("", &["run", "build"], &env);
    assert_eq!(first.code, 0, "{}", first.snapshot());
    assert!(!first.stderr.contains("not cached"), "{}", first.snapshot());
    // The task itself does not see BUILD_MODE; the tool reads it through Baton.
    assert_eq!(
        f.read("result.txt"),
        "mode=release flags=FEATURE_X direct=unset\n"
    );
    let hit = f.baton_in("", &["run", "build"], &env);
    assert!(hit.stdout.contains("cache hit"), "{}", hit.snapshot());
    let changed = f.baton_in(
        "",
        &["run", "build"],
        &[("BUILD_MODE", "debug"), ("FEATURE_X", "1")],
    );
    assert!(
        changed
            .stdout
            .contains("cache miss: env BUILD_MODE changed"),
        "{}",
        changed.stdout
    );
    let added = f.baton_in(
        "",
        &["run", "build"],
        &[
            ("BUILD_MODE", "debug"),
            ("FEATURE_X", "1"),
            ("FEATURE_Y", "1"),
        ],
    );
    assert!(
        added.stdout.contains("cache miss: env FEATURE_* changed"),
        "{}",
        added.stdout
    );

    let serve = f.baton(&["run", "serve"]);
    assert!(
        serve.stderr.contains("not cached: disabled by a tool"),
        "{}",
        serve.snapshot()
    );
    let serve = f.baton(&["run", "serve"]);
    assert!(serve.stdout.contains("cache miss"), "{}", serve.snapshot());
}

#[test]
fn without_tracing_a_task_runs_uncached_and_says_why() {
    let f = single(r#"{ "build": "node -e \"require('fs').writeFileSync('o.txt','x')\"" }"#);
    let r = f.baton_in("", &["run", "build"], &[("BATON_TRACE_DISABLE", "1")]);
    insta::assert_snapshot!("auto_trace_disabled", r.snapshot());
    assert_eq!(f.read("o.txt"), "x");
}

/// Builds (if needed) and locates `baton-tool-demo`, the command-line wrapper of the Rust client.
fn tool_demo() -> std::path::PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = common::tool_command(&cargo)
        .args([
            "build",
            "-q",
            "-p",
            "baton-tool",
            "--bin",
            "baton-tool-demo",
            "--message-format=json",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo build baton-tool-demo");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| {
            (v["target"]["name"] == "baton-tool-demo")
                .then(|| v["executable"].as_str().map(std::path::PathBuf::from))
                .flatten()
        })
        .expect("the build reports the executable")
}

/// The Rust client (`baton-tool`) reads a tracked variable through Baton; a non-UTF-8 value is
/// byte-exact in the key.
#[test]
fn rust_client_tracks_env_byte_exact() {
    use std::os::unix::ffi::OsStrExt;
    let demo = tool_demo();
    let f = single(&format!(
        r#"{{ "build": "{} get-env RAW_VALUE > out.txt" }}"#,
        demo.display()
    ));
    let run = |value: &[u8]| {
        let mut cmd = f.command("", &["run", "build"], &[]);
        cmd.env("RAW_VALUE", std::ffi::OsStr::from_bytes(value));
        f.finish(cmd.output().unwrap())
    };
    let first = run(b"\xff\xfeA");
    assert_eq!(first.code, 0, "{}", first.snapshot());
    assert_eq!(f.read("out.txt"), "RAW_VALUE=fffe41\n");
    assert!(run(b"\xff\xfeA").stdout.contains("cache hit"));
    let changed = run(b"\xff\xfdA");
    assert!(
        changed.stdout.contains("cache miss: env RAW_VALUE changed"),
        "{}",
        changed.stdout
    );
}

/// A directory that was only probed (node stats `packages/` on its way to a script) is an input
/// by existence: adding a package does not invalidate the others.
#[test]
fn probed_directories_count_by_existence_only() {
    let f = Fixture::new(&[
        (
            "package.json",
            r#"{ "name": "root", "private": true, "workspaces": ["packages/*"] }"#,
        ),
        (
            "packages/a/package.json",
            r#"{ "name": "a", "scripts": { "build": "node build.js" } }"#,
        ),
        (
            "packages/a/build.js",
            r#"require("fs").writeFileSync("out.txt", require("fs").readFileSync("in.txt"));"#,
        ),
        ("packages/a/in.txt", "a"),
    ]);
    assert_eq!(f.baton(&["run", "build", "-r"]).code, 0);
    assert!(
        f.baton(&["run", "build", "-r"])
            .stdout
            .contains("1/1 cache hit")
    );
    f.write(
        "packages/b/package.json",
        r#"{ "name": "b", "scripts": { "build": "true" } }"#,
    );
    let r = f.baton(&["run", "build", "-r"]);
    assert!(
        r.stdout.contains("▶ a#build $ node build.js — cache hit"),
        "{}",
        r.stdout
    );
}

/// A workspace with one package, `app`, whose `build` is
/// `node check.js && node gen.js && node bundle.js`: `check` lists the package directory and
/// reads `src/` (a type check: no outputs), `gen` reads `src/` and writes `gen/index.txt`, and
/// `bundle` reads that and writes `dist/out.txt`. `gen/` and `dist/` appear in the directory
/// `check` listed.
fn three_item_build() -> Fixture {
    Fixture::new(&[
        (
            "package.json",
            r#"{ "name": "root", "private": true, "workspaces": ["packages/*"] }"#,
        ),
        (
            "packages/app/package.json",
            r#"{ "name": "app", "scripts": { "build": "node check.js && node gen.js && node bundle.js" } }"#,
        ),
        (
            "packages/app/check.js",
            r#"const fs = require("fs");
const names = fs.readdirSync(".").filter((n) => n.endsWith(".js")).sort();
for (const name of fs.readdirSync("src")) fs.readFileSync("src/" + name);
console.log("checked", names.join(","));
"#,
        ),
        (
            "packages/app/gen.js",
            r#"const fs = require("fs");
let text = "";
for (const name of fs.readdirSync("src").sort()) text += fs.readFileSync("src/" + name, "utf8");
fs.mkdirSync("gen", { recursive: true });
fs.writeFileSync("gen/index.txt", text.toUpperCase());
"#,
        ),
        (
            "packages/app/bundle.js",
            r#"const fs = require("fs");
const text = fs.readFileSync("gen/index.txt", "utf8");
fs.mkdirSync("dist", { recursive: true });
fs.writeFileSync("dist/out.txt", "bundle:" + text);
console.log("bundled", text.length, "bytes");
"#,
        ),
        ("packages/app/src/a.txt", "alpha\n"),
    ])
}

/// In a traced `a && b && c` task, later items creating `gen/` and `dist/` in a directory item
/// `a` listed do not invalidate `a`: the items are stored after the last one ran, and a directory
/// holding any of the task's outputs is not a listing input. Run 2 is a full hit; deleting every
/// output is a restore (item `c`'s input `gen/index.txt` is checked against what item `b`'s hit
/// restores); a source change is a miss naming the file.
#[test]
fn multi_item_task_hits_on_the_second_run_and_restores() {
    let f = three_item_build();
    let cold = f.baton(&["run", "build", "-r"]);
    assert_eq!(cold.code, 0, "{}", cold.snapshot());
    assert!(cold.stdout.contains("0/3 cache hit"), "{}", cold.stdout);
    assert!(!cold.stderr.contains("not cached"), "{}", cold.snapshot());
    assert_eq!(f.read("packages/app/dist/out.txt"), "bundle:ALPHA\n");

    let hit = f.baton(&["run", "build", "-r"]);
    insta::assert_snapshot!("auto_items_hit", hit.snapshot());

    // Every output deleted: both items restored, nothing runs again.
    std::fs::remove_dir_all(f.root().join("packages/app/dist")).unwrap();
    std::fs::remove_dir_all(f.root().join("packages/app/gen")).unwrap();
    let restored = f.baton(&["run", "build", "-r", "-v"]);
    assert!(
        restored.stdout.contains("3/3 cache hit"),
        "{}",
        restored.snapshot()
    );
    assert!(
        restored.stderr.contains("restored 1 output file(s)"),
        "{}",
        restored.snapshot()
    );
    assert_eq!(f.read("packages/app/gen/index.txt"), "ALPHA\n");
    assert_eq!(f.read("packages/app/dist/out.txt"), "bundle:ALPHA\n");

    // A real source changes: a miss naming it, then a hit again.
    f.write("packages/app/src/a.txt", "beta\n");
    let changed = f.baton(&["run", "build", "-r"]);
    insta::assert_snapshot!("auto_items_changed", changed.snapshot());
    assert_eq!(f.read("packages/app/dist/out.txt"), "bundle:BETA\n");
    let hit = f.baton(&["run", "build", "-r"]);
    assert!(hit.stdout.contains("3/3 cache hit"), "{}", hit.snapshot());
}

/// An item that read a file a later item of the same task writes saw state the task itself
/// produced (on the next run it would read the previous run's output): the task is not cached,
/// and says so.
#[test]
fn an_item_reading_what_a_later_item_writes_is_not_cached() {
    let f = single(r#"{ "build": "node read.js && node write.js" }"#);
    f.write(
        "read.js",
        r#"const fs = require("fs");
console.log("saw", fs.existsSync("out.txt") ? fs.readFileSync("out.txt", "utf8") : "nothing");
"#,
    );
    f.write(
        "write.js",
        r#"require("fs").writeFileSync("out.txt", "written");"#,
    );
    let first = f.baton(&["run", "build"]);
    insta::assert_snapshot!("auto_items_read_later_output", first.snapshot());
    let second = f.baton(&["run", "build"]);
    assert!(second.stdout.contains("saw written"), "{}", second.stdout);
    assert!(
        second.stdout.contains("cache miss: not found in cache"),
        "{}",
        second.snapshot()
    );
}
