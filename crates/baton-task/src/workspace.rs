//! Workspace discovery: the root, its packages and the package dependency graph.
//!
//! A workspace root is the nearest ancestor (of the starting directory, inclusive) that has a
//! `pnpm-workspace.yaml`, or a `package.json` with a `workspaces` field (npm/yarn: an array of globs
//! or `{ "packages": [...] }`). When there is none, the nearest directory with a `package.json` is a
//! single-package workspace.
//!
//! Package globs follow pnpm: `packages/*`, `apps/**`, and `!pattern` exclusions. `node_modules`
//! directories are never packages.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use globset::{Glob, GlobMatcher};
use serde::Deserialize;

use crate::config::{self, BatonConfig};
use crate::error::{LoadError, io_err};

/// How the workspace declared its packages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkspaceKind {
    /// `pnpm-workspace.yaml` at the root.
    Pnpm,
    /// `package.json` `workspaces` (npm, yarn, bun).
    PackageJson,
    /// No workspace file: the root package is the only package.
    Single,
}

/// One package of the workspace.
#[derive(Debug, Clone)]
pub struct Package {
    /// Index in [`Workspace::packages`].
    pub index: usize,
    /// `name` from `package.json`; for a nameless package, its directory relative to the root
    /// (or `root` for the workspace root).
    pub name: String,
    /// Absolute directory of the package.
    pub dir: PathBuf,
    /// Directory relative to the workspace root, `/`-separated, empty for the root itself.
    pub rel_dir: String,
    /// `scripts` of `package.json`, in file order is not kept: sorted by name.
    pub scripts: BTreeMap<String, String>,
    /// Indices of workspace packages this one depends on (dependencies, devDependencies,
    /// peerDependencies; any specifier, `workspace:` or a plain version).
    pub deps: Vec<usize>,
    /// `baton.json` beside `package.json`, if any.
    pub config: Option<BatonConfig>,
    /// Whether this is the workspace root package.
    pub is_root: bool,
}

/// A discovered workspace.
#[derive(Debug, Clone)]
pub struct Workspace {
    /// Absolute, canonical root directory.
    pub root: PathBuf,
    /// How packages were declared.
    pub kind: WorkspaceKind,
    /// Every package; the root package (if it has a `package.json`) is one of them.
    pub packages: Vec<Package>,
    /// Package name → index.
    pub by_name: HashMap<String, usize>,
    /// Root `baton.json` `taskDefaults`, by task name.
    pub task_defaults: BTreeMap<String, config::TaskConfig>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PackageJson {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    scripts: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    dependencies: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    dev_dependencies: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    peer_dependencies: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    workspaces: Option<WorkspacesField>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum WorkspacesField {
    List(Vec<String>),
    Object {
        #[serde(default)]
        packages: Vec<String>,
    },
}

#[derive(Debug, Deserialize, Default)]
struct PnpmWorkspace {
    #[serde(default)]
    packages: Vec<String>,
}

impl Workspace {
    /// Finds the workspace containing `start` and loads every package and `baton.json`.
    ///
    /// Errors: no `package.json` in `start` or any ancestor; unreadable or malformed
    /// `package.json`, `pnpm-workspace.yaml` or `baton.json` (the error names the file and field);
    /// two packages with the same name.
    pub fn discover(start: &Path) -> Result<Workspace, LoadError> {
        let start = fs::canonicalize(start).map_err(|e| io_err(start, e))?;
        let (root, kind, patterns) = find_root(&start)?;
        let mut dirs: Vec<PathBuf> = Vec::new();
        if root.join("package.json").is_file() {
            dirs.push(root.clone());
        }
        if kind != WorkspaceKind::Single {
            for dir in expand_package_globs(&root, &patterns)? {
                if dir != root && dir.join("package.json").is_file() {
                    dirs.push(dir);
                }
            }
        }
        if dirs.is_empty() {
            return Err(LoadError::NoPackageJson { dir: root.clone() });
        }
        let mut packages = Vec::with_capacity(dirs.len());
        let mut raw_deps: Vec<Vec<String>> = Vec::with_capacity(dirs.len());
        for (index, dir) in dirs.into_iter().enumerate() {
            let pj_path = dir.join("package.json");
            let text = fs::read_to_string(&pj_path).map_err(|e| io_err(&pj_path, e))?;
            let pj: PackageJson = config::parse_json(&pj_path, &text)?;
            let rel_dir = rel_slash(&root, &dir);
            let is_root = dir == root;
            let name = pj.name.clone().unwrap_or_else(|| {
                if is_root {
                    "root".to_owned()
                } else {
                    rel_dir.clone()
                }
            });
            let mut scripts = BTreeMap::new();
            for (k, v) in pj.scripts {
                match v {
                    serde_json::Value::String(s) => {
                        scripts.insert(k, s);
                    }
                    other => {
                        return Err(LoadError::Invalid {
                            file: pj_path.clone(),
                            field: format!("scripts.{k}"),
                            message: format!("expected a string, found {other}"),
                        });
                    }
                }
            }
            let mut deps: Vec<String> = pj
                .dependencies
                .keys()
                .chain(pj.dev_dependencies.keys())
                .chain(pj.peer_dependencies.keys())
                .cloned()
                .collect();
            deps.sort();
            deps.dedup();
            raw_deps.push(deps);
            let cfg_path = dir.join("baton.json");
            let config = if cfg_path.is_file() {
                Some(config::load_baton_json(&cfg_path, is_root)?)
            } else {
                None
            };
            packages.push(Package {
                index,
                name,
                dir,
                rel_dir,
                scripts,
                deps: Vec::new(),
                config,
                is_root,
            });
        }
        let mut by_name = HashMap::with_capacity(packages.len());
        for p in &packages {
            if let Some(prev) = by_name.insert(p.name.clone(), p.index) {
                return Err(LoadError::DuplicatePackage {
                    name: p.name.clone(),
                    first: packages[prev].dir.clone(),
                    second: p.dir.clone(),
                });
            }
        }
        for (i, deps) in raw_deps.into_iter().enumerate() {
            let mut resolved: Vec<usize> = deps
                .iter()
                .filter_map(|d| by_name.get(d).copied())
                .filter(|&d| d != i)
                .collect();
            resolved.sort_unstable();
            packages[i].deps = resolved;
        }
        let task_defaults = packages
            .iter()
            .find(|p| p.is_root)
            .and_then(|p| p.config.as_ref())
            .map(|c| c.task_defaults.clone())
            .unwrap_or_default();
        Ok(Workspace {
            root,
            kind,
            packages,
            by_name,
            task_defaults,
        })
    }

    /// The package whose directory contains `dir` most closely (the deepest one).
    pub fn package_containing(&self, dir: &Path) -> Option<usize> {
        let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        self.packages
            .iter()
            .filter(|p| dir.starts_with(&p.dir))
            .max_by_key(|p| p.dir.components().count())
            .map(|p| p.index)
    }

    /// Indices of packages that depend on `index` directly.
    pub fn dependents(&self, index: usize) -> Vec<usize> {
        self.packages
            .iter()
            .filter(|p| p.deps.contains(&index))
            .map(|p| p.index)
            .collect()
    }
}

/// `path` relative to `root`, `/`-separated; empty when equal.
pub fn rel_slash(root: &Path, path: &Path) -> String {
    match path.strip_prefix(root) {
        Ok(rel) => rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/"),
        Err(_) => path.to_string_lossy().into_owned(),
    }
}

fn find_root(start: &Path) -> Result<(PathBuf, WorkspaceKind, Vec<String>), LoadError> {
    let mut nearest_pkg: Option<PathBuf> = None;
    for dir in start.ancestors() {
        let pnpm = dir.join("pnpm-workspace.yaml");
        if pnpm.is_file() {
            let text = fs::read_to_string(&pnpm).map_err(|e| io_err(&pnpm, e))?;
            let ws: PnpmWorkspace = if text.trim().is_empty() {
                PnpmWorkspace::default()
            } else {
                serde_yaml::from_str(&text).map_err(|e| LoadError::Invalid {
                    file: pnpm.clone(),
                    field: "packages".into(),
                    message: e.to_string(),
                })?
            };
            return Ok((dir.to_path_buf(), WorkspaceKind::Pnpm, ws.packages));
        }
        let pj = dir.join("package.json");
        if pj.is_file() {
            if nearest_pkg.is_none() {
                nearest_pkg = Some(dir.to_path_buf());
            }
            let text = fs::read_to_string(&pj).map_err(|e| io_err(&pj, e))?;
            let parsed: PackageJson = config::parse_json(&pj, &text)?;
            if let Some(ws) = parsed.workspaces {
                let patterns = match ws {
                    WorkspacesField::List(v) => v,
                    WorkspacesField::Object { packages } => packages,
                };
                return Ok((dir.to_path_buf(), WorkspaceKind::PackageJson, patterns));
            }
        }
    }
    match nearest_pkg {
        Some(dir) => Ok((dir, WorkspaceKind::Single, Vec::new())),
        None => Err(LoadError::NoPackageJson {
            dir: start.to_path_buf(),
        }),
    }
}

/// Expands pnpm-style package globs to package directories (sorted, deduplicated).
fn expand_package_globs(root: &Path, patterns: &[String]) -> Result<Vec<PathBuf>, LoadError> {
    let mut includes = Vec::new();
    let mut excludes: Vec<GlobMatcher> = Vec::new();
    for raw in patterns {
        let (neg, pat) = match raw.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, raw.as_str()),
        };
        let pat = pat.trim_start_matches("./").trim_end_matches('/');
        if pat.is_empty() {
            continue;
        }
        let glob = Glob::new(pat)
            .map_err(|e| LoadError::Invalid {
                file: root.join("pnpm-workspace.yaml"),
                field: "packages".into(),
                message: format!("bad glob {raw:?}: {e}"),
            })?
            .compile_matcher();
        if neg {
            excludes.push(glob);
        } else {
            includes.push(pat.to_owned());
        }
    }
    let mut found = Vec::new();
    for pat in &includes {
        let segments: Vec<&str> = pat.split('/').collect();
        walk_segments(root, &segments, &mut found);
    }
    found.retain(|d: &PathBuf| {
        let rel = rel_slash(root, d);
        !excludes.iter().any(|g| g.is_match(&rel))
    });
    found.sort();
    found.dedup();
    Ok(found)
}

fn is_glob_segment(s: &str) -> bool {
    s.contains(['*', '?', '[', '{'])
}

/// Expands one pattern segment by segment so that `packages/*` reads one directory instead of
/// walking the tree. `**` walks (skipping `node_modules` and dot-directories).
fn walk_segments(dir: &Path, segments: &[&str], out: &mut Vec<PathBuf>) {
    let Some((first, rest)) = segments.split_first() else {
        out.push(dir.to_path_buf());
        return;
    };
    if *first == "**" {
        // Zero directories…
        walk_segments(dir, rest, out);
        // …or one more, recursively.
        for child in subdirs(dir) {
            walk_segments(&child, segments, out);
        }
        return;
    }
    if !is_glob_segment(first) {
        let next = dir.join(first);
        if next.is_dir() {
            walk_segments(&next, rest, out);
        }
        return;
    }
    let Ok(matcher) = Glob::new(first).map(|g| g.compile_matcher()) else {
        return;
    };
    for child in subdirs(dir) {
        if let Some(name) = child.file_name()
            && matcher.is_match(name)
        {
            walk_segments(&child, rest, out);
        }
    }
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name != "node_modules" && !name.starts_with('.')
        })
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}
