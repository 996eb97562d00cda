//! Which files are a task's inputs and outputs, from config globs or defaults.
//!
//! Inputs (`input` in `baton.json`):
//! - absent, or only `!glob` exclusions, or `{ "auto": true }` present: the automatic inputs —
//!   every file of the package not ignored by `.gitignore` (nor in `node_modules`, `.git`,
//!   `.baton`, a nested package, or the task's outputs);
//! - positive globs (relative to the package) without `{ "auto": true }`: exactly the matches;
//! - `!glob` removes matches; `{ "auto": false }` turns automatic inputs off.
//!
//! Outputs (`output`): files under the package matching the globs after the run. All paths
//! returned are relative to the workspace root, `/`-separated, sorted.

use std::path::Path;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use globset::{Glob, GlobSet, GlobSetBuilder};
use ignore::gitignore::{Gitignore, GitignoreBuilder};

use crate::config::InputEntry;
use crate::workspace::rel_slash;

/// Compiled input/output selection of one task.
#[derive(Debug, Clone)]
pub struct FileSelection {
    auto: bool,
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
    outputs: Option<GlobSet>,
}

fn build_set(globs: &[&str]) -> Result<Option<GlobSet>, (String, String)> {
    if globs.is_empty() {
        return Ok(None);
    }
    let mut b = GlobSetBuilder::new();
    for g in globs {
        let pat = g.trim_start_matches("./");
        let glob = Glob::new(pat).map_err(|e| ((*g).to_owned(), e.to_string()))?;
        b.add(glob);
        // `dist` also means everything below `dist`.
        if !pat.contains('*') {
            let sub = format!("{}/**", pat.trim_end_matches('/'));
            b.add(Glob::new(&sub).map_err(|e| ((*g).to_owned(), e.to_string()))?);
        }
    }
    b.build()
        .map(Some)
        .map_err(|e| (globs.join(","), e.to_string()))
}

impl FileSelection {
    /// Compiles `input` and `output` config. Errors give (field, glob, message).
    pub fn new(
        input: Option<&[InputEntry]>,
        output: Option<&[String]>,
    ) -> Result<FileSelection, (&'static str, String, String)> {
        let mut auto_flag: Option<bool> = None;
        let mut pos: Vec<&str> = Vec::new();
        let mut neg: Vec<&str> = Vec::new();
        for e in input.unwrap_or(&[]) {
            match e {
                InputEntry::Auto { auto } => auto_flag = Some(*auto),
                InputEntry::Glob(g) => match g.strip_prefix('!') {
                    Some(n) => neg.push(n),
                    None => pos.push(g),
                },
            }
        }
        let auto = auto_flag.unwrap_or(pos.is_empty());
        let outs: Vec<&str> = output.unwrap_or(&[]).iter().map(String::as_str).collect();
        Ok(FileSelection {
            auto,
            include: build_set(&pos).map_err(|(g, m)| ("input", g, m))?,
            exclude: build_set(&neg).map_err(|(g, m)| ("input", g, m))?,
            outputs: build_set(&outs).map_err(|(g, m)| ("output", g, m))?,
        })
    }

    /// Whether automatic inputs are on.
    pub fn auto(&self) -> bool {
        self.auto
    }

    /// Whether any output globs are configured.
    pub fn has_outputs(&self) -> bool {
        self.outputs.is_some()
    }

    /// Input files of a package, relative to `root`.
    ///
    /// `skip_dirs` are absolute directories never entered (nested packages).
    pub fn inputs(
        &self,
        root: &Path,
        pkg_dir: &Path,
        skip_dirs: &[&Path],
        ignores: &IgnoreCache,
    ) -> Vec<String> {
        let mut out = Vec::new();
        if self.auto {
            walk(
                root,
                pkg_dir,
                skip_dirs,
                Some(ignores),
                &mut |rel_pkg, rel_root| {
                    if !self.is_output(rel_pkg) && !self.is_excluded(rel_pkg) {
                        out.push(rel_root);
                    }
                },
            );
        }
        if let Some(inc) = &self.include {
            walk(root, pkg_dir, skip_dirs, None, &mut |rel_pkg, rel_root| {
                if inc.is_match(rel_pkg) && !self.is_excluded(rel_pkg) {
                    out.push(rel_root);
                }
            });
        }
        out.sort();
        out.dedup();
        out
    }

    /// Files matching the explicit positive `input` globs only (no automatic inputs).
    pub fn glob_inputs(&self, root: &Path, pkg_dir: &Path, skip_dirs: &[&Path]) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(inc) = &self.include {
            walk(root, pkg_dir, skip_dirs, None, &mut |rel_pkg, rel_root| {
                if inc.is_match(rel_pkg) && !self.is_excluded(rel_pkg) {
                    out.push(rel_root);
                }
            });
        }
        out
    }

    /// Output files present now under the package, relative to `root`.
    pub fn outputs(&self, root: &Path, pkg_dir: &Path, skip_dirs: &[&Path]) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(set) = &self.outputs {
            walk(root, pkg_dir, skip_dirs, None, &mut |rel_pkg, rel_root| {
                if set.is_match(rel_pkg) {
                    out.push(rel_root);
                }
            });
        }
        out.sort();
        out
    }

    fn is_output(&self, rel_pkg: &str) -> bool {
        self.outputs.as_ref().is_some_and(|s| s.is_match(rel_pkg))
    }

    fn is_excluded(&self, rel_pkg: &str) -> bool {
        self.exclude.as_ref().is_some_and(|s| s.is_match(rel_pkg))
    }
}

/// Compiled `.gitignore` files of a workspace, read once per directory and shared by every walk
/// of a run (a walk per task would otherwise re-read the same files hundreds of times).
#[derive(Debug, Default)]
pub struct IgnoreCache {
    dirs: Mutex<HashMap<PathBuf, Option<Arc<Gitignore>>>>,
}

impl IgnoreCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The matcher of `dir/.gitignore` (plus `.git/info/exclude` when `dir` holds a `.git`).
    fn matcher(&self, dir: &Path) -> Option<Arc<Gitignore>> {
        let mut map = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = map.get(dir) {
            return m.clone();
        }
        let mut b = GitignoreBuilder::new(dir);
        let mut any = false;
        for f in [dir.join(".gitignore"), dir.join(".git/info/exclude")] {
            if f.is_file() {
                any = true;
                // A malformed line is skipped, as git does.
                let _ = b.add(f);
            }
        }
        let m = if any {
            b.build().ok().map(Arc::new)
        } else {
            None
        };
        map.insert(dir.to_path_buf(), m.clone());
        m
    }

    /// Matchers that apply inside `dir`, from `root` down to `dir`.
    fn chain(&self, root: &Path, dir: &Path) -> Vec<Arc<Gitignore>> {
        let mut dirs: Vec<&Path> = dir
            .ancestors()
            .take_while(|d| d.starts_with(root))
            .collect();
        dirs.reverse();
        dirs.into_iter().filter_map(|d| self.matcher(d)).collect()
    }
}

fn ignored(chain: &[Arc<Gitignore>], path: &Path, is_dir: bool) -> bool {
    for m in chain.iter().rev() {
        match m.matched(path, is_dir) {
            ignore::Match::Ignore(_) => return true,
            ignore::Match::Whitelist(_) => return false,
            ignore::Match::None => {}
        }
    }
    false
}

/// Walks files (and symlinks, not followed) under `pkg_dir`, calling
/// `f(path relative to pkg, relative to root)` in sorted order. `node_modules`, `.git` and `.baton`
/// are never entered, nor `skip_dirs`; with `gitignore`, ignored paths are skipped.
fn walk(
    root: &Path,
    pkg_dir: &Path,
    skip_dirs: &[&Path],
    gitignore: Option<&IgnoreCache>,
    f: &mut dyn FnMut(&str, String),
) {
    let chain = gitignore
        .map(|c| c.chain(root, pkg_dir))
        .unwrap_or_default();
    let prefix_pkg = String::new();
    let prefix_root = rel_slash(root, pkg_dir);
    walk_dir(
        pkg_dir,
        &prefix_pkg,
        &prefix_root,
        skip_dirs,
        gitignore,
        chain,
        f,
    );
}

fn walk_dir(
    dir: &Path,
    rel_pkg: &str,
    rel_root: &str,
    skip_dirs: &[&Path],
    cache: Option<&IgnoreCache>,
    chain: Vec<Arc<Gitignore>>,
    f: &mut dyn FnMut(&str, String),
) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<(std::ffi::OsString, bool)> = rd
        .filter_map(Result::ok)
        .map(|e| {
            let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
            (e.file_name(), is_dir)
        })
        .collect();
    entries.sort();
    for (name, is_dir) in entries {
        if name == "node_modules" || name == ".git" || name == ".baton" {
            continue;
        }
        let path = dir.join(&name);
        if cache.is_some() && ignored(&chain, &path, is_dir) {
            continue;
        }
        let name = name.to_string_lossy();
        let join = |base: &str| {
            if base.is_empty() {
                name.to_string()
            } else {
                format!("{base}/{name}")
            }
        };
        let (child_pkg, child_root) = (join(rel_pkg), join(rel_root));
        if is_dir {
            if skip_dirs.iter().any(|s| *s == path) {
                continue;
            }
            let mut sub = chain.clone();
            if let Some(m) = cache.and_then(|c| c.matcher(&path)) {
                sub.push(m);
            }
            walk_dir(&path, &child_pkg, &child_root, skip_dirs, cache, sub, f);
        } else {
            f(&child_pkg, child_root);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn setup() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("pkg");
        for f in [
            "src/a.ts",
            "src/b.test.ts",
            "dist/a.js",
            "node_modules/x/i.js",
            "README.md",
        ] {
            let path = p.join(f);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, f).unwrap();
        }
        fs::write(d.path().join(".gitignore"), "dist\n").unwrap();
        d
    }

    #[test]
    fn auto_respects_gitignore_and_node_modules() {
        let d = setup();
        let sel = FileSelection::new(None, None).unwrap();
        let got = sel.inputs(d.path(), &d.path().join("pkg"), &[], &IgnoreCache::new());
        assert_eq!(got, ["pkg/README.md", "pkg/src/a.ts", "pkg/src/b.test.ts"]);
    }

    #[test]
    fn globs_replace_and_exclude() {
        let d = setup();
        let input = vec![
            InputEntry::Glob("src/**".into()),
            InputEntry::Glob("!**/*.test.ts".into()),
        ];
        let sel = FileSelection::new(Some(&input), Some(&["dist".into()])).unwrap();
        let pkg = d.path().join("pkg");
        assert_eq!(
            sel.inputs(d.path(), &pkg, &[], &IgnoreCache::new()),
            ["pkg/src/a.ts"]
        );
        assert_eq!(sel.outputs(d.path(), &pkg, &[]), ["pkg/dist/a.js"]);
    }

    #[test]
    fn nested_gitignore_and_negation() {
        let d = setup();
        fs::write(d.path().join("pkg/.gitignore"), "*.md\n!keep.md\n").unwrap();
        fs::write(d.path().join("pkg/keep.md"), "k").unwrap();
        let sel = FileSelection::new(None, None).unwrap();
        let got = sel.inputs(d.path(), &d.path().join("pkg"), &[], &IgnoreCache::new());
        assert_eq!(
            got,
            [
                "pkg/.gitignore",
                "pkg/keep.md",
                "pkg/src/a.ts",
                "pkg/src/b.test.ts"
            ]
        );
    }

    #[test]
    fn exclusions_only_keep_auto() {
        let d = setup();
        let input = vec![InputEntry::Glob("!README.md".into())];
        let sel = FileSelection::new(Some(&input), None).unwrap();
        let got = sel.inputs(d.path(), &d.path().join("pkg"), &[], &IgnoreCache::new());
        assert_eq!(got, ["pkg/src/a.ts", "pkg/src/b.test.ts"]);
    }
}
