//! File-access tracing of a whole process tree, unprivileged, on Linux.
//!
//! The tracer installs a seccomp filter in the child between `fork` and `exec` (the [`ChildHook`]).
//! The filter routes the file-related system calls (`open*`, the `stat` family, `access`, `readlink`,
//! `getdents`, `execve*`, `rename*`, `unlink*`, `rmdir`, `mkdir*`, `truncate`, `link*`, `symlink*`,
//! `chdir`) and
//! `connect` to a listener fd (`SECCOMP_FILTER_FLAG_NEW_LISTENER`, Linux ≥ 5.0; the mechanism is
//! described in `seccomp_unotify(2)`). The filter is inherited by every thread, `fork` and `exec` of
//! the child, so statically linked programs (Go, Rust, esbuild) are seen like any other. A
//! [`Supervisor`] thread in the parent receives each notification, reads the path argument from the
//! tracee's memory (`process_vm_readv`), makes it absolute against `/proc/PID/cwd` or
//! `/proc/PID/fd/N`, lets the call run unchanged (`SECCOMP_USER_NOTIF_FLAG_CONTINUE`) and records
//! it in an [`AccessLog`] if that reply reached a call still pending (so the pid was not recycled
//! while it was read). No privileges are needed: the child sets `no_new_privs` first.
//!
//! Cost: each traced call is a round trip to the supervisor (about 5 µs on an idle core). What the
//! filter can decide from the syscall number and flag arguments alone (every untraced call, `fstat`
//! through `newfstatat`/`statx` with `AT_EMPTY_PATH`) never leaves the kernel. While one thread
//! makes call after call, the supervisor thread runs at real-time priority when allowed (see
//! [`REALTIME_ENV`]), so that thread is answered at once even when the task keeps every core busy. `cargo run --release -p
//! baton-trace --example bench -- --clean OUT PROGRAM ARGS…` measures a command.
//!
//! ```no_run
//! # #![allow(clippy::disallowed_methods)]
//! use std::os::unix::process::CommandExt;
//! baton_trace::is_available()?;
//! let (hook, supervisor) = baton_trace::start()?;
//! let mut cmd = std::process::Command::new("sh");
//! cmd.args(["-c", "cat a > b"]);
//! // SAFETY: the hook only makes async-signal-safe system calls.
//! unsafe { cmd.pre_exec(hook.into_pre_exec()) };
//! let status = cmd.spawn()?.wait()?;
//! drop(cmd);
//! let log = supervisor.finish()?;
//! for (path, kinds) in log.paths() {
//!     println!("{} {kinds:?}", path.display());
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! How a spawner (`baton-exec`) uses it:
//! 1. [`is_available`] — on `Err`, run the command untraced and show the reason
//!    (`cache disabled: …`).
//! 2. [`start`] before spawning: it allocates everything and starts the supervisor thread, which
//!    must be running while the child `exec`s (the child's `execve` is itself a traced call).
//! 3. Run [`ChildHook::into_pre_exec`] as the *last* `pre_exec` step in the child, after process
//!    group, session and pty setup, so only the task's own calls are recorded. An error from it
//!    (`EBUSY`, `EPERM`, …) comes back from `spawn` as that OS error.
//! 4. Drop the command (and with it the hook) right after spawning.
//! 5. After the child exited, and its process group was killed or drained, call
//!    [`Supervisor::finish`]; or [`Supervisor::wait_tree`] to wait for every descendant. Both
//!    block briefly (`wait_tree` until the tree is gone): use `spawn_blocking` in async code.
//!
//! Side effect on the traced tree: `no_new_privs` is set, so set-user-ID programs (`sudo`, `su`)
//! and file capabilities do not gain privileges inside a traced task.
//!
//! Limits: calls are seen on entry, so an access that then fails (a file that does not exist) is
//! recorded too — callers check the file system afterwards. The path string is read once; a tracee
//! that rewrites it concurrently from another thread can make the record differ from what the kernel
//! used (tracing is for caching, not a security boundary). `sendto`/`sendmsg` without `connect`,
//! `io_uring` file operations, and processes in another mount namespace or `chroot` are not
//! resolved correctly. `fstat` on an open fd (`newfstatat`/`statx` with `AT_EMPTY_PATH`) is not
//! traced; its file was recorded when it was opened.

mod avail;
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
mod child;
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
mod filter;
mod log;
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
mod path;
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
mod supervisor;
#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
mod unsupported;

pub use avail::{DISABLE_ENV, MIN_KERNEL, Unavailable, is_available};
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
pub use child::ChildHook;
pub use log::{AccessKind, AccessKinds, AccessLog, NetworkAccess, Unresolved};
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
pub use supervisor::Supervisor;
#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
pub use unsupported::{ChildHook, Supervisor};

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
use std::os::fd::{FromRawFd, OwnedFd};

/// The environment variable that keeps the supervisor thread at its normal scheduling priority:
/// `0` turns off the real-time priority (`SCHED_FIFO`, lowest level) it otherwise takes while one
/// thread of the tree makes call after call, which the kernel grants only with `CAP_SYS_NICE` or an
/// `RLIMIT_RTPRIO` above 0 (see [`Supervisor`]).
pub const REALTIME_ENV: &str = "BATON_TRACE_REALTIME";

/// Errors of setting up or running a trace.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// Tracing cannot be used here; run the command untraced (and uncached) instead.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// Creating the socket pair, the hook's shared flag page, the stop eventfd or the supervisor thread
    /// failed.
    #[error("cannot set up file-access tracing: {step} failed")]
    Setup {
        /// Which step failed (`socketpair`, `mmap`, `eventfd`, `spawn supervisor thread`).
        step: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Receiving notifications failed; the access log is lost.
    #[error("file-access tracing supervisor failed")]
    Supervisor(#[source] std::io::Error),
    /// The supervisor thread panicked.
    #[error("file-access tracing supervisor panicked")]
    Panicked,
}

/// Prepares tracing of one child process tree: checks [`is_available`], allocates the filter and a
/// socket pair, and starts the supervisor thread, which waits for the child.
///
/// Run the [`ChildHook`] in the child before `exec` (see [`ChildHook::into_pre_exec`]), drop it in
/// the parent after spawning, and call [`Supervisor::finish`] once the child has exited (or
/// [`Supervisor::wait_tree`] to wait for every descendant too).
///
/// # Errors
/// [`TraceError::Unavailable`] with the reason when tracing cannot work here (the caller should run
/// the command untraced), [`TraceError::Setup`] when an OS resource could not be created.
pub fn start() -> Result<(ChildHook, Supervisor), TraceError> {
    is_available()?;
    start_supported()
}

#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
fn start_supported() -> Result<(ChildHook, Supervisor), TraceError> {
    Err(TraceError::Unavailable(Unavailable::UnsupportedPlatform))
}

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
fn start_supported() -> Result<(ChildHook, Supervisor), TraceError> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a valid out-array of two ints.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(TraceError::Setup {
            step: "socketpair",
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    let (parent_end, child_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let hook =
        ChildHook::new(filter::build_program(), child_end).map_err(|source| TraceError::Setup {
            step: "mmap",
            source,
        })?;
    let supervisor = Supervisor::spawn(parent_end)?;
    Ok((hook, supervisor))
}

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
impl ChildHook {
    /// Wraps the hook in the closure shape `CommandExt::pre_exec` (std and tokio) takes. The closure
    /// calls [`ChildHook::install`]; when the command is dropped, so is the hook.
    ///
    /// The closure is only sound to run in a forked child before `exec`, which is what `pre_exec`
    /// does (its own `unsafe` contract covers the rest).
    pub fn into_pre_exec(self) -> impl FnMut() -> std::io::Result<()> + Send + Sync + 'static {
        // SAFETY: `pre_exec` runs the closure in the forked child just before `exec`.
        move || unsafe { self.install() }
    }
}
