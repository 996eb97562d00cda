//! Typed errors of every operation.

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;

/// Why [`crate::resolve_program`] could not find the program to execute.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// The program name is the empty string.
    #[error("program name is empty")]
    Empty,
    /// The command's environment has no `PATH`, so a bare name cannot be looked up.
    #[error(
        "program '{}' not found: PATH is not set in the command's environment",
        .program.to_string_lossy()
    )]
    NoPath {
        /// The name as given.
        program: OsString,
    },
    /// No `PATH` entry contains the program.
    #[error(
        "program '{}' not found in PATH '{}'",
        .program.to_string_lossy(),
        .path.to_string_lossy()
    )]
    NotInPath {
        /// The name as given.
        program: OsString,
        /// The `PATH` value that was searched (from the command's environment).
        path: OsString,
    },
    /// An explicit program path (containing `/`) does not exist.
    #[error("program '{}' does not exist", .path.display())]
    NoSuchFile {
        /// The path, joined to the working directory when relative.
        path: PathBuf,
    },
    /// The program path is a directory.
    #[error("program '{}' is a directory", .path.display())]
    IsDirectory {
        /// The path, joined to the working directory when relative.
        path: PathBuf,
    },
    /// The program exists but is not an executable regular file (for us).
    #[error("program '{}' is not executable", .path.display())]
    NotExecutable {
        /// The file found.
        path: PathBuf,
    },
}

/// Why [`crate::spawn`] failed. No process is left behind when this is returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// The program could not be resolved (see [`ResolveError`]).
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// The working directory does not exist or cannot be inspected.
    #[error("working directory '{}' does not exist", .cwd.display())]
    CwdMissing {
        /// The directory from the spec.
        cwd: PathBuf,
        /// The `stat` error.
        #[source]
        source: io::Error,
    },
    /// The working directory exists but is not a directory.
    #[error("working directory '{}' is not a directory", .cwd.display())]
    CwdNotDirectory {
        /// The path from the spec.
        cwd: PathBuf,
    },
    /// Opening or configuring the pseudo-terminal failed.
    #[error("cannot open a pseudo-terminal")]
    Pty(#[source] io::Error),
    /// `spawn` was called outside a Tokio runtime (the output pump needs one).
    #[error("baton_exec::spawn must be called from within a tokio runtime")]
    NoRuntime,
    /// The OS refused to start the program (`fork`/`exec` failed): e.g. a missing `#!`
    /// interpreter (`No such file or directory`), an unknown binary format, a NUL byte in an
    /// argument, or resource limits.
    #[error("cannot execute '{}'", .program.display())]
    Exec {
        /// The resolved program path.
        program: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Why [`crate::Process::write_stdin`] or [`crate::Process::close_stdin`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StdinError {
    /// The process was spawned without a stdin pipe ([`crate::StdinMode::Null`] or
    /// [`crate::StdinMode::Inherit`]) and has no pty.
    #[error("stdin of the process is not piped")]
    NotPiped,
    /// Stdin was closed: by [`crate::Process::close_stdin`], or the child closed its end
    /// (`EPIPE`), e.g. because it exited.
    #[error("stdin of the process is closed")]
    Closed,
    /// Any other write error.
    #[error("cannot write to the stdin of the process")]
    Io(#[source] io::Error),
}

/// Why [`crate::Process::signal`] failed (a group that is already gone is *not* an error).
#[derive(Debug, thiserror::Error)]
#[error("cannot send {signal:?} to process group {pgid}")]
pub struct SignalError {
    /// The signal.
    pub signal: crate::Signal,
    /// The process group id.
    pub pgid: i32,
    /// The OS error (e.g. `EPERM`).
    #[source]
    pub source: io::Error,
}

/// Why [`crate::Process::resize`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResizeError {
    /// The process was not started on a pty.
    #[error("the process has no pty")]
    NotPty,
    /// The `TIOCSWINSZ` ioctl failed.
    #[error("cannot resize the pty")]
    Io(#[source] io::Error),
}

/// Why [`crate::Process::read`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The process was spawned in streaming mode, which keeps no retention buffer; consume its
    /// [`crate::EventStream`] instead.
    #[error("the process keeps no retained output (spawned in streaming mode)")]
    NotRetained,
}

/// Why [`crate::Subscription::recv`] returned no event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscriptionError {
    /// The subscriber fell behind and `missed` events were dropped for it; it continues with
    /// newer events. Catch up with [`crate::Process::read`] from the last seq seen (retained mode).
    #[error("subscriber lagged behind and missed {missed} events")]
    Lagged {
        /// Number of events skipped.
        missed: u64,
    },
    /// No more events will come: `Closed` was delivered (or the process was torn down).
    #[error("the event stream of the process has ended")]
    Ended,
}
