//! Confinement of `cwd` and fs paths to the allowed roots, with symlinks resolved.

use std::path::{Component, Path, PathBuf};

use baton_protocol::exec::{WirePath, error_codes};
use baton_protocol::jsonrpc::RpcError;

/// The allowed root directories, canonicalised (symlinks resolved) at startup.
#[derive(Debug, Clone)]
pub struct Roots {
    roots: Vec<PathBuf>,
}

/// How the final path component is treated by [`Roots::resolve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Last {
    /// Follow a symlink in the last component too (read, write, metadata, list, cwd).
    Follow,
    /// Do not follow it: the operation acts on the link itself (remove).
    NoFollow,
}

impl Roots {
    /// Canonicalises `roots`. Errors: a root does not exist or cannot be resolved.
    pub fn new(roots: &[PathBuf]) -> std::io::Result<Self> {
        let roots = roots
            .iter()
            .map(|r| {
                std::fs::canonicalize(r).map_err(|e| {
                    std::io::Error::new(e.kind(), format!("root '{}': {e}", r.display()))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { roots })
    }

    /// The canonical roots.
    pub fn paths(&self) -> &[PathBuf] {
        &self.roots
    }

    fn contains(&self, p: &Path) -> bool {
        self.roots.iter().any(|r| p.starts_with(r))
    }

    /// Decodes a wire path and resolves it inside the roots.
    ///
    /// The longest existing prefix is canonicalised (symlinks resolved); a non-existing rest
    /// may not contain `..`. With [`Last::NoFollow`] only the parent is resolved. The result must
    /// lie under a root, else `-32003` access denied; a bad path is `-32602`.
    pub(crate) fn resolve(&self, wire: &WirePath, last: Last) -> Result<PathBuf, RpcError> {
        let path = wire
            .to_path()
            .map_err(|e| RpcError::invalid_params(e.to_string()))?;
        let resolved = match last {
            Last::Follow => resolve_existing_prefix(&path)?,
            Last::NoFollow => {
                let name = match path.components().next_back() {
                    Some(Component::Normal(n)) => n.to_owned(),
                    _ => {
                        return Err(RpcError::invalid_params(format!(
                            "path '{}' has no final name",
                            path.display()
                        )));
                    }
                };
                let parent = path.parent().unwrap_or(Path::new("/"));
                resolve_existing_prefix(parent)?.join(name)
            }
        };
        if self.contains(&resolved) {
            Ok(resolved)
        } else {
            Err(RpcError::new(
                error_codes::ACCESS_DENIED,
                format!(
                    "access denied: '{}' is outside the allowed roots",
                    path.display()
                ),
            ))
        }
    }
}

fn resolve_existing_prefix(path: &Path) -> Result<PathBuf, RpcError> {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        match std::fs::canonicalize(&existing) {
            Ok(canon) => {
                let mut out = canon;
                for c in rest.iter().rev() {
                    out.push(c);
                }
                return Ok(out);
            }
            Err(_) => {
                let Some(Component::Normal(name)) = existing.components().next_back() else {
                    return Err(RpcError::invalid_params(format!(
                        "path '{}' cannot be resolved",
                        path.display()
                    )));
                };
                rest.push(name.to_owned());
                if !existing.pop() {
                    return Err(RpcError::invalid_params(format!(
                        "path '{}' cannot be resolved",
                        path.display()
                    )));
                }
            }
        }
    }
}
