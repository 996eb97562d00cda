//! Processes for Baton: the only crate that spawns them.
//!
//! `baton-exec` starts a child described completely by a [`CommandSpec`], keeps it and everything
//! it starts in one process group, and turns its output into an ordered sequence of
//! [`ProcessEvent`]s. Two consumers drive it: the task runner (`baton run`, lossless streaming)
//! and the exec server (`baton exec-server`, retained output with long-polling reads and live
//! notifications; DESIGN.md section 2).
//!
//! # Starting a process
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use baton_exec::{CommandSpec, ProcessEvent, SpawnOptions, StdinMode, spawn};
//!
//! let spec = CommandSpec::new("sh", "/tmp")
//!     .args(["-c", "echo hello; cat"])
//!     .env("PATH", "/usr/bin:/bin")
//!     .stdin(StdinMode::Piped);
//! let process = spawn(&spec, SpawnOptions::streaming())?;
//! let mut events = process.take_events().expect("streaming mode");
//! process.write_stdin(b"from stdin\n").await?;
//! process.close_stdin().await?;
//! while let Some(event) = events.recv().await {
//!     match event {
//!         ProcessEvent::Output { seq, stream, chunk } => { /* bytes in seq order */ }
//!         ProcessEvent::Exited { status, .. } => println!("{status}"),
//!         ProcessEvent::Closed { .. } => break,
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! - **Environment**: nothing is inherited; the child sees exactly [`CommandSpec::env`]
//!   ([`CommandSpec::env_from_parent`] copies the parent's on purpose).
//! - **Program lookup**: a `program` without `/` is searched in the `PATH` *of the spec's env*,
//!   relative entries against `cwd` ([`resolve_program`], also usable on its own). Failures are
//!   typed ([`SpawnError`], [`ResolveError`]) and name the program and the `PATH` searched.
//! - **Stdin**: `/dev/null`, a pipe ([`Process::write_stdin`], [`Process::close_stdin`]) or the
//!   parent's ([`StdinMode`]).
//! - **Pty**: [`CommandSpec::pty`] runs the child on a new pseudo-terminal (it becomes a session
//!   leader with the pty as controlling terminal); output is one [`Stream::Pty`] stream,
//!   [`Process::resize`] changes the window size (the child gets `SIGWINCH`).
//!
//! # Descriptors
//!
//! A child gets its stdio and nothing else: every other descriptor this process holds is made
//! close-on-exec in the child (`close_range(3, ~0, CLOSE_RANGE_CLOEXEC)`, Linux 5.11+), so a
//! parent's stray pipes do not leak into tasks — except the jobserver descriptors named by
//! `--jobserver-auth=R,W` in the child's `MAKEFLAGS`/`CARGO_MAKEFLAGS`.
//!
//! # Process groups, signals, no orphans
//!
//! Every child leads its own process group (pipes: `setpgid(0, 0)`; pty: `setsid`), and its
//! pid is the group id. [`Process::signal`] sends [`Signal`]s to the whole group;
//! [`Process::terminate`] `SIGKILL`s the whole group, including backgrounded grandchildren that
//! outlived the leader. The group is also `SIGKILL`ed
//! - when the last clone of the [`Process`] handle is dropped,
//! - when the Tokio runtime driving it shuts down before the process closed,
//! - by [`kill_all`] (or gently by [`signal_all`]), which reaches every live group this process
//!   spawned: call it on Ctrl-C and on server shutdown.
//!
//! A descendant that leaves the group (`setsid`, `setpgid`) escapes all of this. A binary could
//! catch such daemons with `prctl(PR_SET_CHILD_SUBREAPER)`, but it must then also reap the
//! orphans that get reparented to it, without stealing the exit statuses of the children this
//! crate waits for (`waitid(P_ALL, .., WNOWAIT)` and skipping registered pids) — this crate does
//! not set or require it. Such an escaped descendant that keeps the stdout/stderr pipe open also
//! delays `Closed` until it exits; [`Process::wait`] is not affected.
//!
//! # Events and seq numbers
//!
//! One pump task per process reads stdout and stderr (or the pty) concurrently and reaps the
//! child. Each event gets the next number of ONE per-process counter that starts at 1 and is
//! shared by output, exit and close: [`ProcessEvent::Output`] (chunks of at most 64 KiB),
//! [`ProcessEvent::Exited`] (the leader exited; everything it wrote to the pipes comes before),
//! [`ProcessEvent::Closed`] (exited *and* EOF on every stream; always last). Processes share no
//! locks: one process's output never delays another's.
//!
//! Output is consumed in one of two modes chosen at spawn ([`SpawnOptions`], [`OutputMode`]):
//!
//! - **Streaming** ([`SpawnOptions::streaming`]), for the task runner: [`Process::take_events`]
//!   yields an [`EventStream`] with every event from seq 1, lossless. The channel is bounded, so a
//!   slow consumer stops the readers and the child blocks on write instead of bytes being lost.
//!   Consequently, consume the stream concurrently with (or instead of) [`Process::wait`]:
//!   awaiting `wait` while nobody drains the stream can deadlock a chatty child.
//! - **Retained** ([`SpawnOptions::retained`]), for the exec server: recent chunks are kept in a
//!   buffer bounded in bytes (default [`DEFAULT_RETAINED_BYTES`], 8 MiB) and read with
//!   [`Process::read`]`(after_seq, max_bytes, wait)`, which long-polls, always returns at least one
//!   whole chunk, and reports chunks evicted before the reader's cursor in
//!   [`ReadResult::evicted_before`] instead of skipping them silently. The child is never blocked.
//!
//! In both modes [`Process::subscribe`] gives live events (a broadcast); a subscriber that falls
//! behind gets [`SubscriptionError::Lagged`] and can catch up with [`Process::read`].
//! [`Process::wait`] / [`Process::wait_closed`] return the [`ExitStatus`];
//! [`ExitStatus::code_for_shell`] is the `$?` a shell would show (128 + signal when killed).
//!
//! # API at a glance
//!
//! | call | for |
//! |---|---|
//! | [`spawn`]`(&spec, options)`, [`spawn_streaming`]`(&spec)` | start a process |
//! | [`spawn_with_pre_exec`] (unsafe) | start with a hook run between fork and exec (tracing) |
//! | [`resolve_program`]`(program, env, cwd)` | the PATH lookup `spawn` uses |
//! | [`Process::pid`], [`Process::is_pty`] | identity (pid = process group id) |
//! | [`Process::signal`], [`Process::terminate`], [`Process::terminate_gracefully`] | stop it |
//! | [`Process::write_stdin`], [`Process::close_stdin`], [`Process::resize`] | input |
//! | [`Process::wait`], [`Process::wait_closed`], [`Process::try_wait`], [`Process::is_closed`] | status |
//! | [`Process::take_events`] → [`EventStream::recv`] | lossless streaming |
//! | [`Process::read`], [`Process::events_since`] | retained output |
//! | [`Process::subscribe`] → [`Subscription::recv`] | live events |
//! | [`kill_all`], [`signal_all`] | every live group (Ctrl-C, shutdown) |
//!
//! # Runtime
//!
//! [`spawn`] must be called inside a Tokio runtime (with IO and time enabled); the pump runs on
//! it. Linux is the target platform (`posix_openpt` ptys, `killpg`, `TIOCSCTTY`); nothing needs
//! `/proc`, `pidfd` or privileges.

mod error;
mod process;
mod pty;
mod retain;
mod spawn;
mod spec;

pub use error::{
    ReadError, ResizeError, ResolveError, SignalError, SpawnError, StdinError, SubscriptionError,
};
pub use process::{
    EventStream, ExitStatus, OutputMode, Process, ProcessEvent, Signal, SpawnOptions, Stream,
    Subscription, kill_all, signal_all,
};
pub use retain::{Chunk, DEFAULT_RETAINED_BYTES, EventsSince, ReadResult};
pub use spawn::{spawn, spawn_with_pre_exec};
pub use spec::{CommandSpec, PtySize, StdinMode, resolve_program};

/// Convenience: [`spawn`] in streaming mode and take the event stream in one call.
///
/// # Errors
/// As [`spawn`].
pub fn spawn_streaming(spec: &CommandSpec) -> Result<(Process, EventStream), SpawnError> {
    let process = spawn(spec, SpawnOptions::streaming())?;
    let events = process
        .take_events()
        .expect("a freshly spawned streaming-mode process has its event stream");
    Ok((process, events))
}
