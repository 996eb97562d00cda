//! Package selection with pnpm's `--filter` syntax.
//!
//! Selectors: a package name or a glob over names (`@scope/*`); a directory (`./packages/ui`,
//! `../x`, `{packages/**}`) relative to the current directory; `pkg...` (with its dependencies),
//! `pkg^...` (only its dependencies), `...pkg` (with its dependents), `...^pkg` (only its dependents);
//! `!selector` excludes. Several filters are a union of the inclusions minus the exclusions; only
//! exclusions start from every package.

use std::collections::BTreeSet;
use std::path::Path;

use globset::Glob;

use crate::error::PlanError;
use crate::workspace::{Workspace, rel_slash};

/// Evaluates filters to a sorted set of package indices.
pub fn select_packages(
    ws: &Workspace,
    filters: &[String],
    cwd: &Path,
) -> Result<BTreeSet<usize>, PlanError> {
    let mut include: BTreeSet<usize> = BTreeSet::new();
    let mut exclude: BTreeSet<usize> = BTreeSet::new();
    let mut any_include = false;
    for f in filters {
        let (neg, body) = match f.strip_prefix('!') {
            Some(b) => (true, b),
            None => (false, f.as_str()),
        };
        let set = eval_selector(ws, body, cwd).map_err(|message| PlanError::BadFilter {
            filter: f.clone(),
            message,
        })?;
        if set.is_empty() && !neg {
            return Err(PlanError::UnknownPackage(f.clone()));
        }
        if neg {
            exclude.extend(set);
        } else {
            any_include = true;
            include.extend(set);
        }
    }
    if !any_include {
        include = ws
            .packages
            .iter()
            .filter(|p| !p.is_root || ws.packages.len() == 1)
            .map(|p| p.index)
            .collect();
    }
    Ok(include.difference(&exclude).copied().collect())
}

fn eval_selector(ws: &Workspace, sel: &str, cwd: &Path) -> Result<BTreeSet<usize>, String> {
    let mut s = sel;
    let mut with_dependents = false;
    let mut dependents_only = false;
    let mut with_deps = false;
    let mut deps_only = false;
    if let Some(rest) = s.strip_prefix("...") {
        with_dependents = true;
        s = rest;
        if let Some(rest) = s.strip_prefix('^') {
            dependents_only = true;
            s = rest;
        }
    }
    if let Some(rest) = s.strip_suffix("...") {
        with_deps = true;
        s = rest;
        if let Some(rest) = s.strip_suffix('^') {
            deps_only = true;
            s = rest;
        }
    }
    if s.is_empty() {
        return Err("empty package selector".into());
    }
    let base = match_base(ws, s, cwd)?;
    let mut out = BTreeSet::new();
    if !(dependents_only || deps_only) {
        out.extend(base.iter().copied());
    }
    if with_deps {
        for &b in &base {
            out.extend(closure(b, |i| ws.packages[i].deps.clone()));
        }
    }
    if with_dependents {
        for &b in &base {
            out.extend(closure(b, |i| ws.dependents(i)));
        }
    }
    Ok(out)
}

/// Transitive closure from `start`, excluding `start` itself.
fn closure(start: usize, next: impl Fn(usize) -> Vec<usize>) -> BTreeSet<usize> {
    let mut seen = BTreeSet::new();
    let mut stack = next(start);
    while let Some(i) = stack.pop() {
        if i != start && seen.insert(i) {
            stack.extend(next(i));
        }
    }
    seen
}

fn match_base(ws: &Workspace, s: &str, cwd: &Path) -> Result<BTreeSet<usize>, String> {
    let braced = s.strip_prefix('{').and_then(|r| r.strip_suffix('}'));
    let is_path = braced.is_some() || s.starts_with("./") || s.starts_with("../") || s == ".";
    if is_path {
        let raw = braced.unwrap_or(s);
        let has_glob = raw.contains(['*', '?', '[']);
        let joined = cwd.join(raw);
        let abs = normalize(&joined);
        if has_glob {
            let rel_pat = rel_slash(&ws.root, &abs);
            let g = Glob::new(&rel_pat)
                .map_err(|e| e.to_string())?
                .compile_matcher();
            return Ok(ws
                .packages
                .iter()
                .filter(|p| g.is_match(&p.rel_dir))
                .map(|p| p.index)
                .collect());
        }
        if let Some(p) = ws.packages.iter().find(|p| p.dir == abs) {
            return Ok(BTreeSet::from([p.index]));
        }
        return Ok(ws
            .packages
            .iter()
            .filter(|p| p.dir.starts_with(&abs))
            .map(|p| p.index)
            .collect());
    }
    if s.contains(['*', '?', '[']) {
        let g = Glob::new(s).map_err(|e| e.to_string())?.compile_matcher();
        return Ok(ws
            .packages
            .iter()
            .filter(|p| g.is_match(&p.name))
            .map(|p| p.index)
            .collect());
    }
    Ok(ws.by_name.get(s).copied().into_iter().collect())
}

/// Lexically normalises `.` and `..` (the path need not exist).
pub fn normalize(p: &Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut out = std::path::PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}
