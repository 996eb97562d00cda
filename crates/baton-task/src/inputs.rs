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

use globset::{Glob, GlobSet, GlobSetBuilder};
use ignore::WalkBuilder;

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
    pub fn inputs(&self, root: &Path, pkg_dir: &Path, skip_dirs: &[&Path]) -> Vec<String> {
        let mut out = Vec::new();
        if self.auto {
            walk(root, pkg_dir, skip_dirs, true, &mut |rel_pkg, rel_root| {
                if !self.is_output(rel_pkg) && !self.is_excluded(rel_pkg) {
                    out.push(rel_root);
                }
            });
        }
        if let Some(inc) = &self.include {
            walk(root, pkg_dir, skip_dirs, false, &mut |rel_pkg, rel_root| {
                if inc.is_match(rel_pkg) && !self.is_excluded(rel_pkg) {
                    out.push(rel_root);
                }
            });
        }
        out.sort();
        out.dedup();
        out
    }

    /// Output files present now under the package, relative to `root`.
    pub fn outputs(&self, root: &Path, pkg_dir: &Path, skip_dirs: &[&Path]) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(set) = &self.outputs {
            walk(root, pkg_dir, skip_dirs, false, &mut |rel_pkg, rel_root| {
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

/// Walks files (and symlinks) under `pkg_dir`, calling `f(path relative to pkg, relative to root)`.
fn walk(
    root: &Path,
    pkg_dir: &Path,
    skip_dirs: &[&Path],
    gitignore: bool,
    f: &mut dyn FnMut(&str, String),
) {
    let skip: Vec<std::path::PathBuf> = skip_dirs.iter().map(|p| p.to_path_buf()).collect();
    let mut wb = WalkBuilder::new(pkg_dir);
    wb.standard_filters(false)
        .hidden(false)
        .git_ignore(gitignore)
        .git_exclude(gitignore)
        .parents(gitignore)
        .require_git(false)
        .ignore(false)
        .follow_links(false)
        .sort_by_file_name(|a, b| a.cmp(b))
        .filter_entry(move |e| {
            if e.depth() == 0 {
                return true;
            }
            let name = e.file_name();
            if name == "node_modules" || name == ".git" || name == ".baton" {
                return false;
            }
            if e.file_type().is_some_and(|t| t.is_dir()) && skip.iter().any(|s| s == e.path()) {
                return false;
            }
            true
        });
    for entry in wb.build().flatten() {
        let Some(ft) = entry.file_type() else {
            continue;
        };
        if ft.is_dir() {
            continue;
        }
        let path = entry.path();
        let rel_pkg = rel_slash(pkg_dir, path);
        let rel_root = rel_slash(root, path);
        f(&rel_pkg, rel_root);
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
        let got = sel.inputs(d.path(), &d.path().join("pkg"), &[]);
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
        assert_eq!(sel.inputs(d.path(), &pkg, &[]), ["pkg/src/a.ts"]);
        assert_eq!(sel.outputs(d.path(), &pkg, &[]), ["pkg/dist/a.js"]);
    }

    #[test]
    fn exclusions_only_keep_auto() {
        let d = setup();
        let input = vec![InputEntry::Glob("!README.md".into())];
        let sel = FileSelection::new(Some(&input), None).unwrap();
        let got = sel.inputs(d.path(), &d.path().join("pkg"), &[]);
        assert_eq!(got, ["pkg/src/a.ts", "pkg/src/b.test.ts"]);
    }
}
