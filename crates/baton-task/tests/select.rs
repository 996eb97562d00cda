//! Workspace discovery, `--filter` selection and task planning on real directories.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use baton_task::filter::select_packages;
use baton_task::plan::{PlanRequest, build_plan};
use baton_task::workspace::{Workspace, WorkspaceKind};

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, text).unwrap();
}

/// app → lib → util, plus a standalone `tool` under `tools/`.
fn workspace() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    write(
        r,
        "package.json",
        r#"{"name":"root","scripts":{"lint":"true"}}"#,
    );
    write(
        r,
        "pnpm-workspace.yaml",
        "packages:\n  - 'packages/*'\n  - 'tools/**'\n  - '!**/fixtures/**'\n",
    );
    write(
        r,
        "packages/util/package.json",
        r#"{"name":"@s/util","scripts":{"build":"true"}}"#,
    );
    write(
        r,
        "packages/lib/package.json",
        r#"{"name":"@s/lib","dependencies":{"@s/util":"workspace:^"},"scripts":{"build":"true","test":"true"}}"#,
    );
    write(
        r,
        "packages/app/package.json",
        r#"{"name":"app","peerDependencies":{"@s/lib":"1.0.0"},"scripts":{"build":"true"}}"#,
    );
    write(
        r,
        "tools/deep/tool/package.json",
        r#"{"name":"tool","scripts":{"build":"true"}}"#,
    );
    write(r, "tools/fixtures/x/package.json", r#"{"name":"fixture"}"#);
    write(
        r,
        "packages/app/node_modules/dep/package.json",
        r#"{"name":"nm"}"#,
    );
    d
}

fn names(ws: &Workspace, set: &BTreeSet<usize>) -> Vec<String> {
    let mut v: Vec<String> = set.iter().map(|&i| ws.packages[i].name.clone()).collect();
    v.sort();
    v
}

fn select(ws: &Workspace, filters: &[&str]) -> Vec<String> {
    let f: Vec<String> = filters.iter().map(|s| s.to_string()).collect();
    names(ws, &select_packages(ws, &f, &ws.root).unwrap())
}

#[test]
fn discovers_pnpm_packages_and_graph() {
    let d = workspace();
    let ws = Workspace::discover(&d.path().join("packages/app")).unwrap();
    assert_eq!(ws.kind, WorkspaceKind::Pnpm);
    let mut all: Vec<&str> = ws.packages.iter().map(|p| p.name.as_str()).collect();
    all.sort();
    assert_eq!(all, ["@s/lib", "@s/util", "app", "root", "tool"]);
    let app = ws.by_name["app"];
    assert_eq!(ws.packages[app].deps, vec![ws.by_name["@s/lib"]]);
    assert_eq!(
        ws.package_containing(&d.path().join("packages/app")),
        Some(app)
    );
}

#[test]
fn filter_syntax() {
    let d = workspace();
    let ws = Workspace::discover(d.path()).unwrap();
    assert_eq!(select(&ws, &[]), ["@s/lib", "@s/util", "app", "tool"]);
    assert_eq!(select(&ws, &["@s/*"]), ["@s/lib", "@s/util"]);
    assert_eq!(select(&ws, &["app..."]), ["@s/lib", "@s/util", "app"]);
    assert_eq!(select(&ws, &["app^..."]), ["@s/lib", "@s/util"]);
    assert_eq!(select(&ws, &["...@s/util"]), ["@s/lib", "@s/util", "app"]);
    assert_eq!(select(&ws, &["...^@s/util"]), ["@s/lib", "app"]);
    assert_eq!(select(&ws, &["!app"]), ["@s/lib", "@s/util", "tool"]);
    assert_eq!(select(&ws, &["app...", "!@s/lib"]), ["@s/util", "app"]);
    assert_eq!(select(&ws, &["./packages/lib"]), ["@s/lib"]);
    assert_eq!(select(&ws, &["./tools"]), ["tool"]);
    assert_eq!(
        select(&ws, &["{packages/**}"]),
        ["@s/lib", "@s/util", "app"]
    );
    let err = select_packages(&ws, &["nope".into()], &ws.root).unwrap_err();
    assert_eq!(err.to_string(), "no package matches \"nope\"");
}

#[test]
fn plan_orders_dependencies_first() {
    let d = workspace();
    let ws = Workspace::discover(d.path()).unwrap();
    let packages = select_packages(&ws, &[], &ws.root).unwrap();
    let plan = build_plan(
        &ws,
        &PlanRequest {
            task: "build".into(),
            packages,
            topological: true,
            extra_args: vec![],
        },
    )
    .unwrap();
    let pos = |id: &str| plan.tasks.iter().position(|t| t.id == id).unwrap();
    assert!(pos("@s/util#build") < pos("@s/lib#build"));
    assert!(pos("@s/lib#build") < pos("app#build"));
    assert_eq!(plan.tasks[pos("app#build")].deps, vec![pos("@s/lib#build")]);
    // `pkg#task` and a missing task.
    let one = build_plan(
        &ws,
        &PlanRequest {
            task: "@s/lib#test".into(),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(one.tasks.len(), 1);
    let err = build_plan(
        &ws,
        &PlanRequest {
            task: "app#test".into(),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "task \"test\" not found in app, available: build"
    );
}

#[test]
fn depends_on_caret_looks_through_packages_without_the_task() {
    let d = workspace();
    let r = d.path();
    // lib has no `gen`; app's ^gen reaches util's through it.
    write(
        r,
        "packages/util/baton.json",
        r#"{"tasks":{"gen":{"command":"true"}}}"#,
    );
    write(
        r,
        "packages/app/baton.json",
        r#"{"tasks":{"gen":{"command":"true","dependsOn":["^gen"]}}}"#,
    );
    let ws = Workspace::discover(r).unwrap();
    let plan = build_plan(
        &ws,
        &PlanRequest {
            task: "app#gen".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let ids: Vec<&str> = plan.tasks.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["@s/util#gen", "app#gen"]);
}

#[test]
fn npm_workspaces_object_form_and_single_package() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    write(
        r,
        "package.json",
        r#"{"name":"r","workspaces":{"packages":["libs/*"]}}"#,
    );
    write(r, "libs/a/package.json", r#"{"name":"a"}"#);
    let ws = Workspace::discover(r).unwrap();
    assert_eq!(ws.kind, WorkspaceKind::PackageJson);
    assert_eq!(ws.packages.len(), 2);

    let s = tempfile::tempdir().unwrap();
    write(s.path(), "package.json", r#"{"scripts":{"x":"true"}}"#);
    write(s.path(), "src/deep/file.txt", "x");
    let ws = Workspace::discover(&s.path().join("src/deep")).unwrap();
    assert_eq!(ws.kind, WorkspaceKind::Single);
    assert_eq!(ws.packages[0].name, "root");
}

#[test]
fn malformed_files_name_themselves() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "package.json",
        r#"{"name":"r","scripts":{"x":1}}"#,
    );
    let err = Workspace::discover(d.path()).unwrap_err().to_string();
    assert!(
        err.contains("package.json: scripts.x: expected a string"),
        "{err}"
    );
    write(d.path(), "package.json", r#"{"name":"r"}"#);
    write(d.path(), "pnpm-workspace.yaml", "packages: [unclosed\n");
    let err = Workspace::discover(d.path()).unwrap_err().to_string();
    assert!(err.contains("pnpm-workspace.yaml"), "{err}");
}
