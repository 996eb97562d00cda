//! Starting a process ([`spawn`]) and the per-process output pump task.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStderr, ChildStdout};
use tokio::sync::{broadcast, mpsc, watch};

use crate::error::SpawnError;
use crate::process::{
    ExitStatus, OutputMode, Process, ProcessEvent, Progress, Shared, SpawnOptions, StdinSink,
    Stream, lock, registry,
};
use crate::pty::{self, PtyMaster};
use crate::retain::{Chunk, Retained};
use crate::spec::{CommandSpec, StdinMode, resolve_program};

/// Size of one read from a pipe or pty, hence the maximum size of an output chunk.
const READ_SIZE: usize = 64 * 1024;
/// Upper bound of what is drained synchronously from one stream when the leader exits (more than
/// the largest pipe buffer a process can set unprivileged, 1 MiB).
const EXIT_DRAIN_LIMIT: usize = 2 * 1024 * 1024;

/// Starts `spec` as a new process group and returns its handle; output is pumped by a task on
/// the current Tokio runtime as chosen by `options` (see [`OutputMode`]).
///
/// The child gets exactly `spec.env`, runs in `spec.cwd`, in its own process group (pipes:
/// `setpgid(0, 0)`; pty: `setsid()` and the pty as controlling terminal), with stdout/stderr on
/// pipes (or everything on the pty). `spec.program` is resolved with [`resolve_program`] and
/// executed by absolute path with `argv[0]` = `spec.arg0` or `spec.program`.
///
/// The group is `SIGKILL`ed when the last [`Process`] clone is dropped, and when the runtime
/// that drives the pump shuts down before the process closed.
///
/// # Errors
/// [`SpawnError`]: unresolvable program, missing cwd, pty failure, no runtime, exec failure.
/// On error nothing keeps running.
pub fn spawn(spec: &CommandSpec, options: SpawnOptions) -> Result<Process, SpawnError> {
    spawn_inner(spec, options, None)
}

/// A closure run in the forked child just before `exec` (see [`spawn_with_pre_exec`]).
type PreExec = Box<dyn FnMut() -> io::Result<()> + Send + Sync + 'static>;

/// [`spawn`], plus `hook` run in the child between `fork` and `exec` — after the child entered
/// its own process group or session (and got its pty), with the final stdio in place. This is
/// how a file-access tracer installs its seccomp filter (`baton_trace::ChildHook::install`).
/// The closure is dropped in the parent right after the spawn, closing any fds it owns there.
///
/// # Errors
/// As [`spawn`]; an error returned by `hook` aborts the exec and comes back as
/// [`SpawnError::Exec`] with that OS error.
///
/// # Safety
/// `hook` runs in a freshly forked copy of this multi-threaded process: it must only make
/// async-signal-safe calls (no allocation, no locks, no `println!`), exactly like
/// `std::os::unix::process::CommandExt::pre_exec`.
pub unsafe fn spawn_with_pre_exec<F>(
    spec: &CommandSpec,
    options: SpawnOptions,
    hook: F,
) -> Result<Process, SpawnError>
where
    F: FnMut() -> io::Result<()> + Send + Sync + 'static,
{
    spawn_inner(spec, options, Some(Box::new(hook)))
}

fn spawn_inner(
    spec: &CommandSpec,
    options: SpawnOptions,
    hook: Option<PreExec>,
) -> Result<Process, SpawnError> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| SpawnError::NoRuntime)?;
    match std::fs::metadata(&spec.cwd) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(SpawnError::CwdNotDirectory {
                cwd: spec.cwd.clone(),
            });
        }
        Err(source) => {
            return Err(SpawnError::CwdMissing {
                cwd: spec.cwd.clone(),
                source,
            });
        }
    }
    let program = resolve_program(&spec.program, &spec.env, &spec.cwd)?;

    let mut cmd = new_command(&program);
    cmd.arg0(spec.arg0.as_deref().unwrap_or(&spec.program))
        .args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.cwd)
        .kill_on_drop(false);

    // Descriptors this process inherited without close-on-exec (a parent's pipes, a test
    // harness's, an editor's) would otherwise leak into every child and, held by a daemonized
    // grandchild, keep those pipes open. Only a make/cargo jobserver is passed on.
    let keep = jobserver_fds(&spec.env);
    // SAFETY: the closure only makes close_range(2) system calls (async-signal-safe), on a
    // fixed-size array computed before the fork; it allocates nothing and takes no locks.
    unsafe {
        cmd.pre_exec(move || {
            mark_cloexec_from_3(&keep);
            Ok(())
        });
    }

    let pty_master = match spec.pty {
        Some(size) => {
            let (master, slave) = pty::open(size).map_err(SpawnError::Pty)?;
            let dup = |fd: &OwnedFd| fd.try_clone().map_err(SpawnError::Pty);
            cmd.stdin(Stdio::from(dup(&slave)?))
                .stdout(Stdio::from(dup(&slave)?))
                .stderr(Stdio::from(slave));
            // SAFETY: the closure runs in the forked child before exec and calls only the
            // async-signal-safe functions setsid(2) and ioctl(2); it allocates nothing and
            // touches no locks. By then std has already dup2'ed the pty slave onto fd 0.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::setsid() == -1 {
                        return Err(io::Error::last_os_error());
                    }
                    if libc::ioctl(0, libc::TIOCSCTTY as _, 0) == -1 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            Some(master)
        }
        None => {
            cmd.process_group(0)
                .stdin(match spec.stdin {
                    StdinMode::Null => Stdio::null(),
                    StdinMode::Piped => Stdio::piped(),
                    StdinMode::Inherit => Stdio::inherit(),
                })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            None
        }
    };

    if let Some(hook) = hook {
        // SAFETY: the caller of `spawn_with_pre_exec` promised that the hook is
        // async-signal-safe; it runs after our own setup closure (if any).
        unsafe {
            cmd.pre_exec(hook);
        }
    }

    let spawned = cmd.spawn();
    // Drop our copies of the pty slave now: the master reports EOF only once all are closed.
    drop(cmd);
    let mut child = spawned.map_err(|source| SpawnError::Exec {
        program: program.clone(),
        source,
    })?;
    let Some(pid) = child.id() else {
        // Unreachable in practice: a freshly spawned child has not been reaped.
        return Err(SpawnError::Exec {
            program,
            source: io::Error::other("spawned child has no pid"),
        });
    };

    let pty_master = match pty_master.map(PtyMaster::new).transpose() {
        Ok(m) => m.map(Arc::new),
        Err(e) => {
            // Cannot pump the output: do not leave the child behind.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            return Err(SpawnError::Pty(e));
        }
    };

    let (outputs, stdin) = match &pty_master {
        Some(master) => (Outputs::Pty(master.clone()), StdinSink::Pty(master.clone())),
        None => (
            Outputs::Pipes {
                stdout: child.stdout.take(),
                stderr: child.stderr.take(),
            },
            match child.stdin.take() {
                Some(pipe) => StdinSink::Pipe(Some(pipe)),
                None => StdinSink::NotPiped,
            },
        ),
    };

    let (events_tx, events_rx, retained) = match options.output {
        OutputMode::Streaming { capacity } => {
            let (tx, rx) = mpsc::channel(capacity.max(1));
            (Some(tx), Some(rx), None)
        }
        OutputMode::Retained { max_bytes } => {
            (None, None, Some(Mutex::new(Retained::new(max_bytes))))
        }
    };
    let (broadcast_tx, _) = broadcast::channel(options.subscriber_capacity.max(1));
    let registry_id = registry::next_id();
    let shared = Arc::new(Shared {
        registry_id,
        pid,
        pty: pty_master,
        stdin: tokio::sync::Mutex::new(stdin),
        progress: watch::Sender::new(Progress::default()),
        retained,
        broadcast: Mutex::new(Some(broadcast_tx.clone())),
        events: Mutex::new(events_rx),
    });
    registry::insert(registry_id, pid as i32);
    let process = Process::new(shared.clone());

    let pump = Pump {
        guard: RuntimeGuard {
            shared,
            armed: true,
        },
        seq: 0,
        events: events_tx,
        broadcast: broadcast_tx,
    };
    runtime.spawn(pump.run(child, outputs));
    Ok(process)
}

#[expect(
    clippy::disallowed_methods,
    reason = "baton-exec is the one crate that spawns processes (ARCHITECTURE.md invariant 2)"
)]
fn new_command(program: &std::path::Path) -> tokio::process::Command {
    tokio::process::Command::new(program)
}

/// The output sources of a child.
enum Outputs {
    Pipes {
        stdout: Option<ChildStdout>,
        stderr: Option<ChildStderr>,
    },
    Pty(Arc<PtyMaster>),
}

/// Kills the group if the pump task is dropped (runtime shutdown) before the process closed, and
/// marks the process as ended so waiters wake up.
struct RuntimeGuard {
    shared: Arc<Shared>,
    armed: bool,
}

impl Drop for RuntimeGuard {
    fn drop(&mut self) {
        if self.armed {
            self.shared.kill_group();
            if let Some(retained) = &self.shared.retained {
                lock(retained).mark_torn_down();
            }
            self.shared.progress.send_modify(|p| {
                p.exit.get_or_insert(ExitStatus::Signaled(libc::SIGKILL));
                p.closed = true;
            });
            *lock(&self.shared.broadcast) = None;
        }
    }
}

/// The single task that reads every stream of one process, reaps it, numbers events and
/// publishes them (retention buffer, subscribers, streaming channel), in seq order.
struct Pump {
    guard: RuntimeGuard,
    seq: u64,
    events: Option<mpsc::Sender<ProcessEvent>>,
    broadcast: broadcast::Sender<ProcessEvent>,
}

/// One stream, as a reader the pump can poll.
enum Source {
    Stdout(ChildStdout),
    Stderr(ChildStderr),
    Pty(Arc<PtyMaster>),
}

impl Source {
    fn stream(&self) -> Stream {
        match self {
            Source::Stdout(_) => Stream::Stdout,
            Source::Stderr(_) => Stream::Stderr,
            Source::Pty(_) => Stream::Pty,
        }
    }

    /// Cancel-safe read.
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Source::Stdout(s) => s.read(buf).await,
            Source::Stderr(s) => s.read(buf).await,
            Source::Pty(m) => m.read(buf).await,
        }
    }

    /// A non-blocking read straight from the fd, bypassing the reactor's readiness cache
    /// (`WouldBlock` when empty). Used to drain what the exited leader left in the pipe.
    fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = |fd: std::os::fd::BorrowedFd<'_>, buf: &mut [u8]| {
            nix::unistd::read(fd, buf).map_err(io::Error::from)
        };
        match self {
            Source::Stdout(s) => read(s.as_fd(), buf),
            Source::Stderr(s) => read(s.as_fd(), buf),
            Source::Pty(m) => m.try_read(buf),
        }
    }
}

/// The outcome of one read.
enum ReadOutcome {
    Data(Bytes),
    /// Interrupted by a signal handler (`EINTR`): nothing read, try again.
    Retry,
    Eof,
}

fn outcome(source: &Source, result: io::Result<usize>, buf: &[u8]) -> ReadOutcome {
    match result {
        Ok(0) => ReadOutcome::Eof,
        Ok(n) => ReadOutcome::Data(Bytes::copy_from_slice(&buf[..n])),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => ReadOutcome::Retry,
        Err(e) => {
            tracing::debug!(stream = source.stream().name(), error = %e, "output read failed; treating as EOF");
            ReadOutcome::Eof
        }
    }
}

impl Pump {
    async fn run(mut self, mut child: Child, outputs: Outputs) {
        let (mut a, mut b) = match outputs {
            Outputs::Pipes { stdout, stderr } => {
                (stdout.map(Source::Stdout), stderr.map(Source::Stderr))
            }
            Outputs::Pty(master) => (Some(Source::Pty(master)), None),
        };
        let mut buf_a = vec![0u8; READ_SIZE];
        let mut buf_b = vec![0u8; READ_SIZE];
        let mut exited = false;
        while !exited || a.is_some() || b.is_some() {
            tokio::select! {
                r = read_opt(&mut a, &mut buf_a), if a.is_some() => {
                    self.on_read(&mut a, r, &buf_a).await;
                }
                r = read_opt(&mut b, &mut buf_b), if b.is_some() => {
                    self.on_read(&mut b, r, &buf_b).await;
                }
                status = child.wait(), if !exited => {
                    exited = true;
                    let status = match status {
                        Ok(s) => ExitStatus::from_std(s),
                        Err(e) => {
                            tracing::warn!(pid = self.guard.shared.pid, error = %e, "wait for child failed");
                            ExitStatus::Signaled(libc::SIGKILL)
                        }
                    };
                    // Everything the leader wrote is in the pipes now: publish it before the exit.
                    self.drain(&mut a, &mut buf_a).await;
                    self.drain(&mut b, &mut buf_b).await;
                    self.publish(|seq| ProcessEvent::Exited { seq, status }).await;
                }
            }
        }
        self.publish(|seq| ProcessEvent::Closed { seq }).await;
        self.guard.armed = false;
        *lock(&self.guard.shared.broadcast) = None;
    }

    async fn on_read(
        &mut self,
        source: &mut Option<Source>,
        result: io::Result<usize>,
        buf: &[u8],
    ) {
        let Some(src) = source.as_ref() else { return };
        match outcome(src, result, buf) {
            ReadOutcome::Data(bytes) => {
                let stream = src.stream();
                self.publish(|seq| ProcessEvent::Output {
                    seq,
                    stream,
                    chunk: bytes,
                })
                .await;
            }
            ReadOutcome::Retry => {}
            ReadOutcome::Eof => *source = None,
        }
    }

    async fn drain(&mut self, source: &mut Option<Source>, buf: &mut [u8]) {
        let mut drained = 0usize;
        while drained < EXIT_DRAIN_LIMIT {
            let Some(src) = source.as_mut() else { return };
            let result = src.try_read(buf);
            if matches!(&result, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
                return;
            }
            if let Ok(n) = result {
                drained += n;
            }
            self.on_read(source, result, buf).await;
        }
    }

    /// Assigns the next seq and publishes the event to every consumer, in this order: retention
    /// buffer, progress watchers, live subscribers, streaming channel (which may wait: that is
    /// the backpressure).
    async fn publish(&mut self, make: impl FnOnce(u64) -> ProcessEvent) {
        self.seq += 1;
        let seq = self.seq;
        let event = make(seq);
        let shared = &self.guard.shared;
        if let Some(retained) = &shared.retained {
            let mut r = lock(retained);
            match &event {
                ProcessEvent::Output { stream, chunk, .. } => r.push(Chunk {
                    seq,
                    stream: *stream,
                    bytes: chunk.clone(),
                }),
                ProcessEvent::Exited { status, .. } => r.set_exited(seq, *status),
                ProcessEvent::Closed { .. } => r.set_closed(seq),
            }
        }
        shared.progress.send_modify(|p| {
            p.last_seq = seq;
            match &event {
                ProcessEvent::Exited { status, .. } => p.exit = Some(*status),
                ProcessEvent::Closed { .. } => p.closed = true,
                ProcessEvent::Output { .. } => {}
            }
        });
        // No subscribers is fine.
        let _ = self.broadcast.send(event.clone());
        if let Some(tx) = &self.events
            && tx.send(event).await.is_err()
        {
            // The EventStream was dropped: stop streaming, keep pumping.
            self.events = None;
        }
    }
}

async fn read_opt(source: &mut Option<Source>, buf: &mut [u8]) -> io::Result<usize> {
    match source {
        Some(s) => s.read(buf).await,
        None => std::future::pending().await,
    }
}

/// The jobserver descriptors named in the child's `MAKEFLAGS`/`CARGO_MAKEFLAGS`
/// (`--jobserver-auth=R,W` or the older `--jobserver-fds=R,W`; the `fifo:` form needs none),
/// sorted, as a fixed array so the child can use it without allocating. Unused slots are -1.
fn jobserver_fds<K, V>(env: &[(K, V)]) -> [i32; 4]
where
    K: AsRef<std::ffi::OsStr>,
    V: AsRef<std::ffi::OsStr>,
{
    let mut fds = [-1; 4];
    let mut n = 0;
    for (k, v) in env {
        let k = k.as_ref();
        if k != "MAKEFLAGS" && k != "CARGO_MAKEFLAGS" {
            continue;
        }
        let v = v.as_ref().to_string_lossy();
        for word in v.split_whitespace() {
            let Some(pair) = word
                .strip_prefix("--jobserver-auth=")
                .or_else(|| word.strip_prefix("--jobserver-fds="))
            else {
                continue;
            };
            for fd in pair.split(',').filter_map(|f| f.parse::<i32>().ok()) {
                if fd > 2 && n < fds.len() {
                    fds[n] = fd;
                    n += 1;
                }
            }
        }
    }
    fds[..n].sort_unstable();
    fds
}

/// `CLOSE_RANGE_CLOEXEC` (linux/close_range.h).
const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;

/// In the forked child: sets close-on-exec on every descriptor from 3 up, except `keep`
/// (sorted, -1 for unused slots). Kernels without `close_range` (before 5.11) leave the
/// descriptors as they are.
fn mark_cloexec_from_3(keep: &[i32; 4]) {
    let mut from: libc::c_uint = 3;
    for &fd in keep.iter().filter(|&&fd| fd >= 3) {
        let fd = fd as libc::c_uint;
        if fd > from {
            // SAFETY: a plain system call on integer arguments.
            unsafe { libc::syscall(libc::SYS_close_range, from, fd - 1, CLOSE_RANGE_CLOEXEC) };
        }
        from = from.max(fd + 1);
    }
    // SAFETY: as above.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            from,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };
}

#[cfg(test)]
mod fd_tests {
    use super::jobserver_fds;

    #[test]
    fn jobserver_fds_are_found_in_makeflags() {
        let env = [
            ("PATH", "/bin"),
            ("MAKEFLAGS", " -j4 --jobserver-auth=7,8"),
            ("CARGO_MAKEFLAGS", "--jobserver-fds=12,11 -j"),
        ];
        assert_eq!(jobserver_fds(&env), [7, 8, 11, 12]);
        assert_eq!(
            jobserver_fds(&[("MAKEFLAGS", "--jobserver-auth=fifo:/tmp/x")]),
            [-1; 4]
        );
        assert_eq!(jobserver_fds::<&str, &str>(&[]), [-1; 4]);
    }
}
