//! What to run: [`CommandSpec`], its stdin/pty settings, and the PATH resolver.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::ResolveError;

/// Where the child's standard input comes from (ignored when a pty is requested: then stdin is the
/// pty, and [`crate::Process::write_stdin`] writes to the terminal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum StdinMode {
    /// `/dev/null`: the child reads EOF immediately. The default.
    #[default]
    Null,
    /// A pipe fed by [`crate::Process::write_stdin`] and closed by [`crate::Process::close_stdin`].
    Piped,
    /// The parent's own stdin. Note: the child runs in its own process group, so if the parent's
    /// stdin is a terminal the child is a *background* job there and reading it stops the child
    /// with `SIGTTIN`; use a pty for interactive programs.
    Inherit,
}

/// Size of a pseudo-terminal, in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PtySize {
    /// Number of rows (lines), e.g. 24.
    pub rows: u16,
    /// Number of columns (characters per line), e.g. 80.
    pub cols: u16,
}

impl PtySize {
    /// A size of `rows` × `cols` cells.
    pub fn new(rows: u16, cols: u16) -> Self {
        Self { rows, cols }
    }
}

impl Default for PtySize {
    /// The classic 24 × 80 terminal.
    fn default() -> Self {
        Self { rows: 24, cols: 80 }
    }
}

/// A complete description of a process to start.
///
/// Nothing is inherited implicitly from the parent process: the child sees exactly `env` (use
/// [`CommandSpec::env_from_parent`] to copy the parent's variables on purpose) and runs in `cwd`.
/// `program` without a `/` is looked up in the `PATH` of `env` (see [`resolve_program`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSpec {
    /// The program: a name looked up in `PATH` (no `/`), or a path (absolute, or relative to `cwd`).
    pub program: OsString,
    /// Arguments after `argv[0]`.
    pub args: Vec<OsString>,
    /// `argv[0]` as the child sees it; defaults to `program` as written (not the resolved path).
    pub arg0: Option<OsString>,
    /// Working directory of the child; must exist. A relative path is relative to the parent's cwd.
    pub cwd: PathBuf,
    /// The child's complete environment, in order; when a name occurs twice the last value wins.
    pub env: Vec<(OsString, OsString)>,
    /// Standard input mode (ignored with a pty).
    pub stdin: StdinMode,
    /// Run on a new pseudo-terminal of this size instead of pipes: the child becomes a session
    /// leader with the pty as its controlling terminal and stdin/stdout/stderr; output arrives as
    /// one [`crate::Stream::Pty`] stream.
    pub pty: Option<PtySize>,
}

impl CommandSpec {
    /// A spec running `program` in `cwd` with no arguments, an EMPTY environment, stdin `/dev/null`
    /// and pipes (no pty).
    pub fn new(program: impl Into<OsString>, cwd: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            arg0: None,
            cwd: cwd.into(),
            env: Vec::new(),
            stdin: StdinMode::Null,
            pty: None,
        }
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets `argv[0]`.
    pub fn arg0(mut self, arg0: impl Into<OsString>) -> Self {
        self.arg0 = Some(arg0.into());
        self
    }

    /// Sets (appends) one environment variable; a later value for the same name wins.
    pub fn env(mut self, name: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Sets (appends) several environment variables.
    pub fn envs<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        self.env
            .extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Appends the parent's whole current environment (`std::env::vars_os`), explicitly.
    pub fn env_from_parent(mut self) -> Self {
        self.env.extend(std::env::vars_os());
        self
    }

    /// Sets the stdin mode.
    pub fn stdin(mut self, mode: StdinMode) -> Self {
        self.stdin = mode;
        self
    }

    /// Requests a pseudo-terminal of `size`.
    pub fn pty(mut self, size: PtySize) -> Self {
        self.pty = Some(size);
        self
    }

    /// The effective value of `name` in `env` (the last occurrence), if any.
    pub fn get_env(&self, name: impl AsRef<OsStr>) -> Option<&OsStr> {
        env_lookup(&self.env, name.as_ref())
    }
}

/// The last value of `name` in `env`.
pub(crate) fn env_lookup<'a>(env: &'a [(OsString, OsString)], name: &OsStr) -> Option<&'a OsStr> {
    env.iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_os_str())
}

/// Finds the file that running `program` in `cwd` with environment `env` would execute.
///
/// - `program` containing a `/` is a path: absolute, or relative to `cwd`; it must be an
///   executable regular file.
/// - Otherwise each entry of `PATH` *from `env`* (not the parent's) is tried in order; an empty
///   entry means `cwd` (POSIX), a relative entry is relative to `cwd`. The first executable regular
///   file wins; a matching file without execute permission is skipped but reported if nothing else
///   matches.
///
/// Returns an absolute path when `cwd` is absolute.
///
/// # Errors
/// [`ResolveError::Empty`] for an empty name; [`ResolveError::NoPath`] when `env` has no `PATH`;
/// [`ResolveError::NotInPath`] (with the `PATH` searched) when no entry has it;
/// [`ResolveError::NoSuchFile`], [`ResolveError::IsDirectory`] or [`ResolveError::NotExecutable`]
/// for an explicit path (or, for `NotExecutable`, the only non-executable match in `PATH`).
pub fn resolve_program(
    program: &OsStr,
    env: &[(OsString, OsString)],
    cwd: &Path,
) -> Result<PathBuf, ResolveError> {
    if program.is_empty() {
        return Err(ResolveError::Empty);
    }
    if program.as_bytes().contains(&b'/') {
        let path = cwd.join(program);
        return match check_executable(&path) {
            Candidate::Executable => Ok(path),
            Candidate::Missing => Err(ResolveError::NoSuchFile { path }),
            Candidate::Directory => Err(ResolveError::IsDirectory { path }),
            Candidate::NotExecutable => Err(ResolveError::NotExecutable { path }),
        };
    }
    let Some(path_var) = env_lookup(env, OsStr::new("PATH")) else {
        return Err(ResolveError::NoPath {
            program: program.to_owned(),
        });
    };
    let mut not_executable = None;
    for dir in path_var.as_bytes().split(|&b| b == b':') {
        let dir = Path::new(OsStr::from_bytes(dir));
        let candidate = if dir.as_os_str().is_empty() {
            cwd.join(program)
        } else {
            cwd.join(dir).join(program)
        };
        match check_executable(&candidate) {
            Candidate::Executable => return Ok(candidate),
            Candidate::NotExecutable if not_executable.is_none() => {
                not_executable = Some(candidate);
            }
            _ => {}
        }
    }
    match not_executable {
        Some(path) => Err(ResolveError::NotExecutable { path }),
        None => Err(ResolveError::NotInPath {
            program: program.to_owned(),
            path: path_var.to_owned(),
        }),
    }
}

enum Candidate {
    Executable,
    Missing,
    Directory,
    NotExecutable,
}

fn check_executable(path: &Path) -> Candidate {
    let Ok(meta) = std::fs::metadata(path) else {
        return Candidate::Missing;
    };
    if meta.is_dir() {
        return Candidate::Directory;
    }
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Candidate::NotExecutable;
    }
    match nix::unistd::access(path, nix::unistd::AccessFlags::X_OK) {
        Ok(()) => Candidate::Executable,
        Err(_) => Candidate::NotExecutable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn make_file(path: &Path, mode: u32) {
        std::fs::write(path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn resolves_against_the_spec_path_not_the_parents() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        make_file(&bin.join("only-here"), 0o755);
        let env = vec![("PATH".into(), bin.clone().into_os_string())];
        let got = resolve_program(OsStr::new("only-here"), &env, dir.path()).unwrap();
        assert_eq!(got, bin.join("only-here"));
        // `sh` exists in the parent's PATH but not in this one.
        let err = resolve_program(OsStr::new("sh"), &env, dir.path()).unwrap_err();
        assert!(matches!(err, ResolveError::NotInPath { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("'sh'") && msg.contains(bin.to_str().unwrap()),
            "{msg}"
        );
    }

    #[test]
    fn relative_and_empty_path_entries_are_relative_to_cwd() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tools")).unwrap();
        make_file(&dir.path().join("tools/t1"), 0o755);
        make_file(&dir.path().join("t2"), 0o755);
        let env = vec![("PATH".into(), "/nonexistent:tools:".into())];
        assert_eq!(
            resolve_program(OsStr::new("t1"), &env, dir.path()).unwrap(),
            dir.path().join("tools/t1")
        );
        assert_eq!(
            resolve_program(OsStr::new("t2"), &env, dir.path()).unwrap(),
            dir.path().join("t2")
        );
    }

    #[test]
    fn last_path_wins_and_missing_path_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        make_file(&dir.path().join("x"), 0o755);
        let env = vec![
            ("PATH".into(), "/nonexistent".into()),
            ("PATH".into(), dir.path().as_os_str().to_owned()),
        ];
        assert!(resolve_program(OsStr::new("x"), &env, Path::new("/")).is_ok());
        let err = resolve_program(OsStr::new("x"), &[], Path::new("/")).unwrap_err();
        assert!(matches!(err, ResolveError::NoPath { .. }));
        assert!(err.to_string().contains("PATH is not set"), "{err}");
    }

    #[test]
    fn explicit_paths_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        make_file(&dir.path().join("plain"), 0o644);
        make_file(&dir.path().join("exe"), 0o755);
        let cwd = dir.path();
        assert_eq!(
            resolve_program(OsStr::new("./exe"), &[], cwd).unwrap(),
            cwd.join("./exe")
        );
        assert!(matches!(
            resolve_program(OsStr::new("./missing"), &[], cwd),
            Err(ResolveError::NoSuchFile { .. })
        ));
        assert!(matches!(
            resolve_program(OsStr::new(cwd.as_os_str()), &[], cwd),
            Err(ResolveError::IsDirectory { .. })
        ));
        // root may execute anything with an x bit but never a file without one
        assert!(matches!(
            resolve_program(OsStr::new("./plain"), &[], cwd),
            Err(ResolveError::NotExecutable { .. })
        ));
        assert!(matches!(
            resolve_program(OsStr::new(""), &[], cwd),
            Err(ResolveError::Empty)
        ));
    }

    #[test]
    fn non_executable_match_is_reported_when_nothing_else_matches() {
        let dir = tempfile::tempdir().unwrap();
        make_file(&dir.path().join("tool"), 0o644);
        let env = vec![("PATH".into(), dir.path().as_os_str().to_owned())];
        let err = resolve_program(OsStr::new("tool"), &env, Path::new("/")).unwrap_err();
        assert!(matches!(err, ResolveError::NotExecutable { .. }), "{err}");
    }

    #[test]
    fn builder_and_env_lookup() {
        let spec = CommandSpec::new("echo", "/")
            .args(["a", "b"])
            .env("A", "1")
            .env("A", "2")
            .stdin(StdinMode::Piped);
        assert_eq!(spec.get_env("A"), Some(OsStr::new("2")));
        assert_eq!(spec.get_env("B"), None);
        assert_eq!(spec.args.len(), 2);
    }
}
