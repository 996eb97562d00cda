//! `baton run` on the real example workspace (`examples/monorepo`): TypeScript `tsc` and esbuild
//! builds from npm, cached, restored and invalidated.

mod common;

use std::path::{Path, PathBuf};

use common::{Fixture, tool_command};

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/monorepo")
}

/// Installs an example's npm dependencies when its `node_modules/.bin` lacks one of `bins`.
fn ensure_node_modules(dir: &Path, bins: &[&str]) {
    if bins
        .iter()
        .all(|b| dir.join("node_modules/.bin").join(b).exists())
    {
        return;
    }
    let status = tool_command("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .status()
        .expect("npm must be installed to run the example tests");
    assert!(status.success(), "npm ci in {} failed", dir.display());
}

/// Copies the example (node_modules included, symlinks kept) into a fresh fixture.
fn copy_example() -> Fixture {
    ensure_node_modules(&example_dir(), &["tsc", "esbuild"]);
    let f = Fixture::new(&[]);
    copy_tree(&example_dir(), f.root());
    f
}

/// Copies a tree, keeping symlinks; build outputs and caches of the example itself (not those
/// inside `node_modules`) are left out.
fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        let in_node_modules = from.components().any(|c| c.as_os_str() == "node_modules");
        if !in_node_modules && (name == ".baton" || name == "dist") {
            continue;
        }
        let src = entry.path();
        let dst = to.join(&name);
        let ft = entry.file_type().unwrap();
        if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src).unwrap(), &dst).unwrap();
        } else if ft.is_dir() {
            std::fs::create_dir_all(&dst).unwrap();
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

#[test]
fn example_builds_hits_restores_and_invalidates() {
    let f = copy_example();
    let cold = f.baton(&["run", "build", "-r"]);
    assert_eq!(cold.code, 0, "{}", cold.snapshot());
    assert!(cold.stdout.contains("0/4 cache hit"), "{}", cold.stdout);
    assert!(f.root().join("packages/utils/dist/index.d.ts").exists());
    let app = f.baton_in("packages/app", &["run", "test"], &[]);
    assert!(
        app.stdout.contains("2 orders totalling 5.75."),
        "{}",
        app.stdout
    );

    let hit = f.baton(&["run", "build", "-r"]);
    insta::assert_snapshot!("example_hit", hit.snapshot());

    // Every output deleted: restored from the cache, and the app still runs.
    for p in ["utils", "core", "app"] {
        std::fs::remove_dir_all(f.root().join("packages").join(p).join("dist")).unwrap();
    }
    let restored = f.baton(&["run", "build", "-r"]);
    assert!(
        restored.stdout.contains("4/4 cache hit"),
        "{}",
        restored.stdout
    );
    let app = f.baton_in("packages/app", &["run", "test"], &[]);
    assert!(
        app.stdout.contains("2 orders totalling 5.75."),
        "{}",
        app.stdout
    );

    // A change in the leaf-most library: it and everything above it rebuild.
    let src = f.root().join("packages/utils/src/index.ts");
    let text = std::fs::read_to_string(&src).unwrap();
    std::fs::write(&src, text.replace("+ \".\"", "+ \"!\"")).unwrap();
    let changed = f.baton(&["run", "build", "-r"]);
    insta::assert_snapshot!("example_changed", changed.snapshot());
    let app = f.baton_in("packages/app", &["run", "test"], &[]);
    assert!(
        app.stdout.contains("2 orders totalling 5.75!"),
        "{}",
        app.stdout
    );
}

fn vite_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/vite-app")
}

/// A real `vite build` (Vite 8 reports to the runner through `VP_RUN_NODE_CLIENT_PATH`): cached
/// with no configuration, `dist/` restored, a `VITE_*` change a miss.
#[test]
fn vite_build_is_cached_with_no_config() {
    let dir = vite_dir();
    ensure_node_modules(&dir, &["vite"]);
    let f = Fixture::new(&[]);
    copy_tree(&dir, f.root());
    let env = [("VITE_API_URL", "https://a.example")];
    let cold = f.baton_in("", &["run", "build"], &env);
    assert_eq!(cold.code, 0, "{}", cold.snapshot());
    assert!(!cold.stderr.contains("not cached"), "{}", cold.snapshot());
    let bundle = |f: &Fixture| {
        let assets = f.root().join("dist/assets");
        let js = std::fs::read_dir(&assets)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "js"))
            .expect("a JS bundle");
        std::fs::read_to_string(js).unwrap()
    };
    assert!(bundle(&f).contains("https://a.example"));

    let hit = f.baton_in("", &["run", "build"], &env);
    assert!(
        hit.stdout.contains("cache hit, replaying"),
        "{}",
        hit.snapshot()
    );

    std::fs::remove_dir_all(f.root().join("dist")).unwrap();
    let restored = f.baton_in("", &["run", "build"], &env);
    assert!(
        restored.stdout.contains("cache hit"),
        "{}",
        restored.snapshot()
    );
    assert!(f.root().join("dist/index.html").exists());
    assert!(bundle(&f).contains("https://a.example"));

    let changed = f.baton_in(
        "",
        &["run", "build"],
        &[("VITE_API_URL", "https://b.example")],
    );
    assert!(
        changed.stdout.contains("cache miss: env VITE_* changed"),
        "{}",
        changed.snapshot()
    );
    assert!(bundle(&f).contains("https://b.example"));
}
