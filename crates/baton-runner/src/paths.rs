//! Path rules (DESIGN.md §4): the workspace root and read roots are absolute; reads resolve under
//! either, writes and working directories only under the workspace. Resolution is real, not
//! textual: `..` and every symlink are followed (like `realpath -m`), then the result must lie
//! under an allowed root.

use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

use crate::RunnerError;

/// What a path is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reading: under the workspace or a read root.
    Read,
    /// Writing, or a working directory: under the workspace only.
    Write,
}

/// Resolved roots of a session and the check applied to every path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPolicy {
    workspace: PathBuf,
    read_roots: Vec<PathBuf>,
}

impl PathPolicy {
    /// Roots that are already resolved (by [`resolve_real`] or a remote `realpath`).
    ///
    /// # Errors
    /// [`RunnerError::RootNotAbsolute`] when a root is relative.
    pub fn from_resolved(
        workspace: PathBuf,
        read_roots: Vec<PathBuf>,
    ) -> Result<Self, RunnerError> {
        for root in std::iter::once(&workspace).chain(&read_roots) {
            if !root.is_absolute() {
                return Err(RunnerError::RootNotAbsolute(root.clone()));
            }
        }
        Ok(Self {
            workspace,
            read_roots,
        })
    }

    /// Resolves the roots on this host ([`resolve_real`]).
    ///
    /// # Errors
    /// [`RunnerError::RootNotAbsolute`]; [`RunnerError::Io`] when resolving fails.
    pub fn local(workspace: &Path, read_roots: &[PathBuf]) -> Result<Self, RunnerError> {
        let resolve = |p: &Path| {
            if !p.is_absolute() {
                return Err(RunnerError::RootNotAbsolute(p.to_path_buf()));
            }
            resolve_real(p).map_err(|e| RunnerError::io(format!("cannot resolve root {p:?}"), e))
        };
        let workspace = resolve(workspace)?;
        let read_roots = read_roots
            .iter()
            .map(|r| resolve(r))
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_resolved(workspace, read_roots)
    }

    /// The resolved workspace root.
    pub fn workspace(&self) -> &Path {
        &self.workspace
    }

    /// The resolved read roots.
    pub fn read_roots(&self) -> &[PathBuf] {
        &self.read_roots
    }

    /// `path` made absolute: a relative path is joined onto the workspace (not yet resolved).
    pub fn absolutize(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.workspace.join(path)
        }
    }

    /// Checks an already *resolved* absolute path against the roots allowed for `access`.
    ///
    /// # Errors
    /// [`RunnerError::AccessDenied`] naming `original`.
    pub fn check(
        &self,
        original: &Path,
        resolved: &Path,
        access: Access,
    ) -> Result<(), RunnerError> {
        let ok = resolved.starts_with(&self.workspace)
            || (access == Access::Read && self.read_roots.iter().any(|r| resolved.starts_with(r)));
        if ok {
            Ok(())
        } else {
            Err(RunnerError::AccessDenied {
                path: original.to_path_buf(),
                allowed: match access {
                    Access::Read => "workspace and read roots",
                    Access::Write => "workspace",
                },
            })
        }
    }

    /// Resolves `path` on this host and checks it: the absolute, symlink-free path to use.
    ///
    /// # Errors
    /// [`RunnerError::AccessDenied`] when it escapes; [`RunnerError::Io`] when a component
    /// cannot be inspected (permissions, symlink loop).
    pub fn resolve_local(&self, path: &Path, access: Access) -> Result<PathBuf, RunnerError> {
        let abs = self.absolutize(path);
        let resolved = resolve_real(&abs)
            .map_err(|e| RunnerError::io(format!("cannot resolve {path:?}"), e))?;
        self.check(path, &resolved, access)?;
        Ok(resolved)
    }
}

/// Resolves an absolute path like `realpath -m`: `.` dropped, `..` removes the previous
/// *resolved* component, every existing symlink is replaced by its target (recursively, at most
/// 40 links); components after the first missing one are taken literally.
///
/// # Errors
/// `InvalidInput` for a relative path, `FilesystemLoop`-like `Other` after 40 links, or the
/// error of `lstat`/`readlink` other than "not found".
pub fn resolve_real(path: &Path) -> io::Result<PathBuf> {
    if !path.is_absolute() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{path:?} is not absolute"),
        ));
    }
    let mut pending: Vec<OsString> = Vec::new();
    push_components(&mut pending, path);
    let mut current = PathBuf::from("/");
    let mut links = 0;
    let mut missing = false;
    while let Some(part) = pending.pop() {
        if part == ".." {
            current.pop();
            continue;
        }
        let next = current.join(&part);
        if missing {
            current = next;
            continue;
        }
        match std::fs::symlink_metadata(&next) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(io::Error::other(format!("too many symlinks in {path:?}")));
                }
                let target = std::fs::read_link(&next)?;
                if target.is_absolute() {
                    current = PathBuf::from("/");
                }
                push_components(&mut pending, &target);
            }
            Ok(_) => current = next,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing = true;
                current = next;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(current)
}

/// Pushes the components of `path` (in reverse, so that `pop` yields them in order); `.` and
/// the root are dropped, `..` is kept as `".."`.
fn push_components(stack: &mut Vec<OsString>, path: &Path) {
    let parts: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => None,
        })
        .collect();
    stack.extend(parts.into_iter().rev());
}

/// Lexical normalisation of an absolute path (`.` dropped, `..` pops); used before a remote
/// `realpath` so that the remote command gets a clean argument.
pub fn normalize_lexically(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_dotdot_and_symlinks_for_real() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = resolve_real(tmp.path()).expect("root");
        let ws = root.join("ws");
        let outside = root.join("outside");
        std::fs::create_dir_all(ws.join("sub")).expect("mkdir");
        std::fs::create_dir_all(&outside).expect("mkdir");
        std::os::unix::fs::symlink(&outside, ws.join("out")).expect("symlink");
        std::os::unix::fs::symlink("../..", ws.join("sub/up")).expect("symlink");
        let policy = PathPolicy::local(&ws, &[]).expect("policy");
        assert_eq!(
            policy
                .resolve_local(Path::new("sub/../a"), Access::Write)
                .expect("ok"),
            ws.join("a")
        );
        assert_eq!(
            policy
                .resolve_local(Path::new("new/deeper/f"), Access::Write)
                .expect("ok"),
            ws.join("new/deeper/f")
        );
        for bad in ["out/x", "sub/up/outside/x", "../outside/x", "/etc/passwd"] {
            let err = policy
                .resolve_local(Path::new(bad), Access::Read)
                .unwrap_err();
            assert!(
                matches!(err, RunnerError::AccessDenied { .. }),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn read_roots_widen_reads_only() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = resolve_real(tmp.path()).expect("root");
        std::fs::create_dir_all(root.join("ws")).expect("mkdir");
        std::fs::create_dir_all(root.join("ro")).expect("mkdir");
        let policy = PathPolicy::local(&root.join("ws"), &[root.join("ro")]).expect("policy");
        let target = root.join("ro/f");
        assert_eq!(
            policy.resolve_local(&target, Access::Read).expect("read"),
            target
        );
        assert!(matches!(
            policy.resolve_local(&target, Access::Write),
            Err(RunnerError::AccessDenied { .. })
        ));
        assert!(matches!(
            PathPolicy::local(Path::new("rel"), &[]),
            Err(RunnerError::RootNotAbsolute(_))
        ));
    }

    #[test]
    fn lexical_normalisation() {
        assert_eq!(
            normalize_lexically(Path::new("/a/./b/../c")),
            PathBuf::from("/a/c")
        );
        assert_eq!(normalize_lexically(Path::new("/../x")), PathBuf::from("/x"));
    }
}
