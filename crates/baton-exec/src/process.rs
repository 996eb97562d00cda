//! The [`Process`] handle, its events, signals and exit status, and the live-group registry.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use nix::errno::Errno;
use nix::sys::signal::{self as nix_signal, Signal as NixSignal};
use nix::unistd::Pid;
use tokio::process::ChildStdin;
use tokio::sync::{broadcast, mpsc, watch};

use crate::error::{ReadError, ResizeError, SignalError, StdinError, SubscriptionError};
use crate::pty::PtyMaster;
use crate::retain::{EventsSince, ReadResult, Retained};
use crate::spec::PtySize;

/// A signal sent to a process's whole process group by [`Process::signal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// `SIGINT` (what Ctrl-C sends; exec-server `interrupt`).
    Interrupt,
    /// `SIGTERM` (polite termination request; exec-server `terminate` signal).
    Terminate,
    /// `SIGKILL` (cannot be caught).
    Kill,
    /// `SIGHUP` (terminal hung up).
    Hangup,
}

impl Signal {
    /// The Linux signal number (2, 15, 9, 1).
    pub fn number(self) -> i32 {
        self.to_nix() as i32
    }

    /// The lowercase exec-server name: `interrupt`, `terminate`, `kill`, `hangup`.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Interrupt => "interrupt",
            Signal::Terminate => "terminate",
            Signal::Kill => "kill",
            Signal::Hangup => "hangup",
        }
    }

    /// Parses an exec-server name (see [`Signal::name`]); `None` for anything else.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            Signal::Interrupt,
            Signal::Terminate,
            Signal::Kill,
            Signal::Hangup,
        ]
        .into_iter()
        .find(|s| s.name() == name)
    }

    fn to_nix(self) -> NixSignal {
        match self {
            Signal::Interrupt => NixSignal::SIGINT,
            Signal::Terminate => NixSignal::SIGTERM,
            Signal::Kill => NixSignal::SIGKILL,
            Signal::Hangup => NixSignal::SIGHUP,
        }
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExitStatus {
    /// It exited with this code (0-255).
    Exited(i32),
    /// It was killed by this signal number.
    Signaled(i32),
}

impl ExitStatus {
    /// The exit code, if it exited normally.
    pub fn code(self) -> Option<i32> {
        match self {
            ExitStatus::Exited(c) => Some(c),
            ExitStatus::Signaled(_) => None,
        }
    }

    /// The signal number, if it was killed by a signal.
    pub fn signal(self) -> Option<i32> {
        match self {
            ExitStatus::Exited(_) => None,
            ExitStatus::Signaled(s) => Some(s),
        }
    }

    /// Exit code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Exited(0)
    }

    /// The code a POSIX shell would report as `$?`: the exit code, or 128 + the signal number
    /// (130 for `SIGINT`, 137 for `SIGKILL`, 143 for `SIGTERM`).
    pub fn code_for_shell(self) -> i32 {
        match self {
            ExitStatus::Exited(c) => c,
            ExitStatus::Signaled(s) => 128 + s,
        }
    }

    pub(crate) fn from_std(status: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => ExitStatus::Exited(code),
            (None, Some(sig)) => ExitStatus::Signaled(sig),
            // Stopped/continued are not reported by wait() without WUNTRACED; treat as failure.
            (None, None) => ExitStatus::Exited(255),
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitStatus::Exited(c) => write!(f, "exit code {c}"),
            ExitStatus::Signaled(s) => match NixSignal::try_from(s) {
                Ok(sig) => write!(f, "killed by signal {s} ({})", sig.as_str()),
                Err(_) => write!(f, "killed by signal {s}"),
            },
        }
    }
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// The child's stdout pipe.
    Stdout,
    /// The child's stderr pipe.
    Stderr,
    /// The pty (stdout and stderr merged by the terminal; `\n` usually becomes `\r\n`).
    Pty,
}

impl Stream {
    /// The exec-server name: `stdout`, `stderr`, `pty`.
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::Pty => "pty",
        }
    }
}

/// Something that happened to a process. All events of one process share one seq counter that
/// starts at 1 and increases by exactly 1 per event; every consumer sees them in seq order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessEvent {
    /// Bytes read from a stream (never empty; at most 64 KiB per chunk).
    Output {
        /// Event seq.
        seq: u64,
        /// Source stream.
        stream: Stream,
        /// The raw bytes.
        chunk: Bytes,
    },
    /// The process (the group leader) exited. Everything the leader itself wrote to pipes comes
    /// before this event; output of surviving background children, and pty output still in the
    /// terminal's buffers, may follow it.
    Exited {
        /// Event seq.
        seq: u64,
        /// Exit code or signal.
        status: ExitStatus,
    },
    /// The process exited AND every output stream reached EOF. Always the last event.
    Closed {
        /// Event seq.
        seq: u64,
    },
}

impl ProcessEvent {
    /// The event's seq.
    pub fn seq(&self) -> u64 {
        match self {
            ProcessEvent::Output { seq, .. }
            | ProcessEvent::Exited { seq, .. }
            | ProcessEvent::Closed { seq } => *seq,
        }
    }
}

/// How output is consumed, fixed at spawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutputMode {
    /// Lossless streaming with backpressure: take the [`EventStream`] with
    /// [`Process::take_events`]. At most `capacity` events wait in the channel; when it is full
    /// the pipe readers stop and the child blocks on write. Nothing is retained for `read`.
    Streaming {
        /// Channel capacity in events (each ≤ 64 KiB), at least 1.
        capacity: usize,
    },
    /// Retain recent output for [`Process::read`] (long-poll) in a buffer of at most `max_bytes`
    /// output bytes (oldest chunks are evicted, reported via `evicted_before`). The child is
    /// never blocked by slow readers.
    Retained {
        /// Retention bound in bytes (output payload), e.g. [`crate::DEFAULT_RETAINED_BYTES`].
        max_bytes: usize,
    },
}

/// Options chosen at spawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpawnOptions {
    /// How output is consumed.
    pub output: OutputMode,
    /// Capacity (in events) of the live [`Process::subscribe`] broadcast; a subscriber that falls
    /// further behind gets [`SubscriptionError::Lagged`]. Default 1024.
    pub subscriber_capacity: usize,
}

impl SpawnOptions {
    /// Streaming mode with a 64-event channel.
    pub fn streaming() -> Self {
        Self {
            output: OutputMode::Streaming { capacity: 64 },
            subscriber_capacity: 1024,
        }
    }

    /// Retained mode with [`crate::DEFAULT_RETAINED_BYTES`] (8 MiB).
    pub fn retained() -> Self {
        Self::retained_bytes(crate::retain::DEFAULT_RETAINED_BYTES)
    }

    /// Retained mode with a bound of `max_bytes`.
    pub fn retained_bytes(max_bytes: usize) -> Self {
        Self {
            output: OutputMode::Retained { max_bytes },
            subscriber_capacity: 1024,
        }
    }
}

impl Default for SpawnOptions {
    /// [`SpawnOptions::streaming`].
    fn default() -> Self {
        Self::streaming()
    }
}

/// Progress visible to waiters: the latest seq, exit status, closed flag.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Progress {
    pub(crate) last_seq: u64,
    pub(crate) exit: Option<ExitStatus>,
    pub(crate) closed: bool,
}

/// Where `write_stdin` goes.
#[derive(Debug)]
pub(crate) enum StdinSink {
    NotPiped,
    Pipe(Option<ChildStdin>),
    Pty(Arc<PtyMaster>),
}

/// State shared by the handles and the pump task of ONE process (no cross-process locks).
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) registry_id: u64,
    pub(crate) pid: u32,
    pub(crate) pty: Option<Arc<PtyMaster>>,
    pub(crate) stdin: tokio::sync::Mutex<StdinSink>,
    pub(crate) progress: watch::Sender<Progress>,
    pub(crate) retained: Option<Mutex<Retained>>,
    /// Live-event sender; `None` once the pump is finished (new subscribers then end at once).
    pub(crate) broadcast: Mutex<Option<broadcast::Sender<ProcessEvent>>>,
    pub(crate) events: Mutex<Option<mpsc::Receiver<ProcessEvent>>>,
}

impl Shared {
    pub(crate) fn pgid(&self) -> Pid {
        Pid::from_raw(self.pid as i32)
    }

    pub(crate) fn kill_group(&self) {
        match nix_signal::killpg(self.pgid(), NixSignal::SIGKILL) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => tracing::warn!(pgid = self.pid, error = %e, "cannot kill process group"),
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Kills the group when the last [`Process`] clone is dropped, and unregisters it.
#[derive(Debug)]
struct Owner {
    shared: Arc<Shared>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.shared.kill_group();
        registry::remove(self.shared.registry_id);
    }
}

/// A handle to a spawned process and its process group. Cheap to clone (an `Arc`).
///
/// When the LAST clone is dropped, the whole process group is killed with `SIGKILL` (even if the
/// leader already exited: background children left in the group die too). Keep a clone for as
/// long as the process may run. Event consumers ([`EventStream`], [`Subscription`]) do not keep
/// the process alive.
#[derive(Debug, Clone)]
pub struct Process {
    owner: Arc<Owner>,
}

impl Process {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            owner: Arc::new(Owner { shared }),
        }
    }

    fn shared(&self) -> &Shared {
        &self.owner.shared
    }

    /// The child's pid, which is also its process group id (and session id with a pty).
    pub fn pid(&self) -> u32 {
        self.shared().pid
    }

    /// Whether the process runs on a pty.
    pub fn is_pty(&self) -> bool {
        self.shared().pty.is_some()
    }

    /// Sends `signal` to the whole process group. A group that no longer exists is not an error.
    ///
    /// # Errors
    /// [`SignalError`] when `killpg` fails otherwise (e.g. `EPERM`).
    pub fn signal(&self, signal: Signal) -> Result<(), SignalError> {
        match nix_signal::killpg(self.shared().pgid(), signal.to_nix()) {
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(e) => Err(SignalError {
                signal,
                pgid: self.shared().pid as i32,
                source: e.into(),
            }),
        }
    }

    /// Kills the whole process group (leader and every descendant still in the group, including
    /// backgrounded grandchildren) with `SIGKILL`. Returns whether the leader was still running
    /// (had not been reaped) when called. Await [`Process::wait_closed`] to know the streams ended.
    pub fn terminate(&self) -> bool {
        let running = self.shared().progress.borrow().exit.is_none();
        self.shared().kill_group();
        running
    }

    /// Writes all of `bytes` to the child's stdin (the pipe, or the pty's input). Waits while the
    /// pipe is full. Concurrent writes are serialised, each written whole. Not cancel-safe: if
    /// the future is dropped mid-way, a prefix of `bytes` may have been written. A write blocked
    /// on a child that does not read also holds up [`Process::close_stdin`].
    ///
    /// # Errors
    /// [`StdinError::NotPiped`] without a stdin pipe or pty; [`StdinError::Closed`] after
    /// [`Process::close_stdin`] or when the child closed its end; [`StdinError::Io`] otherwise.
    pub async fn write_stdin(&self, bytes: &[u8]) -> Result<(), StdinError> {
        use tokio::io::AsyncWriteExt;
        let mut sink = self.shared().stdin.lock().await;
        match &mut *sink {
            StdinSink::NotPiped => Err(StdinError::NotPiped),
            StdinSink::Pipe(None) => Err(StdinError::Closed),
            StdinSink::Pipe(Some(pipe)) => {
                let result = match pipe.write_all(bytes).await {
                    Ok(()) => pipe.flush().await,
                    Err(e) => Err(e),
                };
                match result {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                        *sink = StdinSink::Pipe(None);
                        Err(StdinError::Closed)
                    }
                    Err(e) => Err(StdinError::Io(e)),
                }
            }
            StdinSink::Pty(master) => {
                master
                    .write_all(bytes)
                    .await
                    .map_err(|e| match e.raw_os_error() {
                        Some(libc::EIO) => StdinError::Closed,
                        _ => StdinError::Io(e),
                    })
            }
        }
    }

    /// Closes the child's stdin pipe, so it reads EOF. Idempotent. With a pty (whose input cannot
    /// be closed separately) this writes the terminal EOF character, Ctrl-D (`0x04`), which ends
    /// a read at the start of a line in canonical mode.
    ///
    /// # Errors
    /// [`StdinError::NotPiped`] without a stdin pipe or pty; [`StdinError::Io`] if the pty write fails.
    pub async fn close_stdin(&self) -> Result<(), StdinError> {
        let mut sink = self.shared().stdin.lock().await;
        match &mut *sink {
            StdinSink::NotPiped => Err(StdinError::NotPiped),
            StdinSink::Pipe(pipe) => {
                *pipe = None;
                Ok(())
            }
            StdinSink::Pty(master) => master.write_all(&[0x04]).await.map_err(StdinError::Io),
        }
    }

    /// Sets the pty window size to `rows` × `cols`; the kernel sends `SIGWINCH` to the terminal's
    /// foreground process group.
    ///
    /// # Errors
    /// [`ResizeError::NotPty`] for a pipe process; [`ResizeError::Io`] if the ioctl fails.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), ResizeError> {
        let pty = self.shared().pty.as_ref().ok_or(ResizeError::NotPty)?;
        pty.resize(PtySize { rows, cols }).map_err(ResizeError::Io)
    }

    /// Waits until the process (the group leader) exits and returns its status. Can be called any
    /// number of times, from any clone. If the runtime driving the process shut down first, the
    /// group was killed and this reports `Signaled(9)`.
    pub async fn wait(&self) -> ExitStatus {
        let mut rx = self.shared().progress.subscribe();
        let result = match rx.wait_for(|p| p.exit.is_some()).await {
            Ok(p) => p.exit,
            Err(_) => None,
        };
        result.unwrap_or(ExitStatus::Signaled(libc::SIGKILL))
    }

    /// Waits until the process exited and all its output streams reached EOF (the `Closed`
    /// event was published), and returns the exit status.
    pub async fn wait_closed(&self) -> ExitStatus {
        let mut rx = self.shared().progress.subscribe();
        let result = match rx.wait_for(|p| p.closed).await {
            Ok(p) => p.exit,
            Err(_) => None,
        };
        result.unwrap_or(ExitStatus::Signaled(libc::SIGKILL))
    }

    /// The exit status if the process has exited, without waiting.
    pub fn try_wait(&self) -> Option<ExitStatus> {
        self.shared().progress.borrow().exit
    }

    /// Whether the `Closed` event has been published.
    pub fn is_closed(&self) -> bool {
        self.shared().progress.borrow().closed
    }

    /// The seq of the latest event published so far (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.shared().progress.borrow().last_seq
    }

    /// Takes the lossless [`EventStream`] of a process spawned in [`OutputMode::Streaming`].
    /// Returns `Some` exactly once; `None` afterwards and in retained mode. Until it is taken the
    /// events queue up and the child blocks once the channel is full; after the stream is
    /// dropped, further events are discarded (the child is no longer blocked).
    pub fn take_events(&self) -> Option<EventStream> {
        lock(&self.shared().events)
            .take()
            .map(|rx| EventStream { rx })
    }

    /// Reads retained output after `after_seq` (`None`: from the start), at most `max_bytes`
    /// (`None`: no limit; at least one whole chunk is always returned when available), waiting up
    /// to `wait` when there is nothing new (long-poll: it returns as soon as a new event — output,
    /// exit or close — arrives, or at the timeout; `None` or zero: no waiting). A read after the
    /// process closed returns at once.
    ///
    /// # Errors
    /// [`ReadError::NotRetained`] for a process spawned in streaming mode.
    pub async fn read(
        &self,
        after_seq: Option<u64>,
        max_bytes: Option<usize>,
        wait: Option<Duration>,
    ) -> Result<ReadResult, ReadError> {
        let retained = self
            .shared()
            .retained
            .as_ref()
            .ok_or(ReadError::NotRetained)?;
        let after = after_seq.unwrap_or(0);
        let deadline = wait.map(|w| tokio::time::Instant::now() + w);
        let mut rx = self.shared().progress.subscribe();
        loop {
            rx.borrow_and_update();
            {
                let buf = lock(retained);
                let expired = deadline.is_none_or(|d| tokio::time::Instant::now() >= d);
                if buf.has_news(after) || expired {
                    return Ok(buf.read(after, max_bytes));
                }
            }
            let Some(deadline) = deadline else {
                return Ok(lock(retained).read(after, max_bytes));
            };
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                // timed out, or the process state can no longer change: answer with what we have
                Ok(Err(_)) | Err(_) => {
                    let buf = lock(retained);
                    return Ok(buf.read(after, max_bytes));
                }
            }
        }
    }

    /// Every still-known event after `after_seq`, as [`ProcessEvent`]s in seq order, without
    /// waiting: the retained output chunks plus the `Exited` and `Closed` events (which are never
    /// evicted). Lets a live-notification forwarder fill a gap exactly, e.g. after
    /// [`SubscriptionError::Lagged`]; `evicted_before` reports output that is lost.
    ///
    /// # Errors
    /// [`ReadError::NotRetained`] for a process spawned in streaming mode.
    pub fn events_since(&self, after_seq: u64) -> Result<EventsSince, ReadError> {
        let retained = self
            .shared()
            .retained
            .as_ref()
            .ok_or(ReadError::NotRetained)?;
        Ok(lock(retained).events_since(after_seq))
    }

    /// Sends [`Signal::Terminate`] to the group, waits up to `grace` for the leader to exit, then
    /// kills the whole group with `SIGKILL` in any case (so no straggler survives) and returns the
    /// leader's exit status.
    pub async fn terminate_gracefully(&self, grace: Duration) -> ExitStatus {
        if self.signal(Signal::Terminate).is_err() {
            tracing::debug!(pid = self.pid(), "SIGTERM failed; killing");
        }
        let status = tokio::time::timeout(grace, self.wait()).await.ok();
        self.shared().kill_group();
        match status {
            Some(status) => status,
            None => self.wait().await,
        }
    }

    /// Subscribes to live events from now on (all output modes). Events published before the
    /// call are not replayed: in retained mode, subscribe first, then [`Process::read`] to catch
    /// up, and drop duplicates by seq. After `Closed`, or for a subscription made after the
    /// process closed, `recv` returns [`SubscriptionError::Ended`].
    pub fn subscribe(&self) -> Subscription {
        let guard = lock(&self.shared().broadcast);
        match guard.as_ref() {
            Some(tx) => Subscription { rx: tx.subscribe() },
            None => {
                let (tx, rx) = broadcast::channel(1);
                drop(tx);
                Subscription { rx }
            }
        }
    }
}

/// The lossless, backpressured event stream of a process in [`OutputMode::Streaming`]:
/// every event from seq 1 in order, ending with `Closed`, then `None`.
#[derive(Debug)]
pub struct EventStream {
    rx: mpsc::Receiver<ProcessEvent>,
}

impl EventStream {
    /// The next event; `None` after `Closed` (or if the process was torn down by a runtime
    /// shutdown).
    pub async fn recv(&mut self) -> Option<ProcessEvent> {
        self.rx.recv().await
    }

    /// Poll form of [`EventStream::recv`], for implementing `Stream` adapters.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<ProcessEvent>> {
        self.rx.poll_recv(cx)
    }
}

/// A live subscription to a process's events (see [`Process::subscribe`]).
#[derive(Debug)]
pub struct Subscription {
    rx: broadcast::Receiver<ProcessEvent>,
}

impl Subscription {
    /// The next live event.
    ///
    /// # Errors
    /// [`SubscriptionError::Lagged`] when events were dropped for this slow subscriber (it then
    /// continues with newer ones); [`SubscriptionError::Ended`] when no more events will come.
    pub async fn recv(&mut self) -> Result<ProcessEvent, SubscriptionError> {
        match self.rx.recv().await {
            Ok(ev) => Ok(ev),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                Err(SubscriptionError::Lagged { missed })
            }
            Err(broadcast::error::RecvError::Closed) => Err(SubscriptionError::Ended),
        }
    }
}

/// The set of live process groups spawned by this process.
pub(crate) mod registry {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    static GROUPS: Mutex<BTreeMap<u64, i32>> = Mutex::new(BTreeMap::new());

    pub(crate) fn next_id() -> u64 {
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn insert(id: u64, pgid: i32) {
        lock(&GROUPS).insert(id, pgid);
    }

    pub(crate) fn remove(id: u64) {
        lock(&GROUPS).remove(&id);
    }

    pub(crate) fn signal_all(sig: NixSignal) -> usize {
        let groups: Vec<i32> = lock(&GROUPS).values().copied().collect();
        let mut sent = 0;
        for pgid in groups {
            if nix_signal::killpg(Pid::from_raw(pgid), sig).is_ok() {
                sent += 1;
            }
        }
        sent
    }
}

/// Sends `SIGKILL` to every process group spawned by this process whose [`Process`] handle is
/// still alive (for Ctrl-C handling and server shutdown). Returns how many groups still existed.
/// Does not wait; the handles remain valid and report the exits as usual.
pub fn kill_all() -> usize {
    registry::signal_all(NixSignal::SIGKILL)
}

/// Sends `signal` to every live process group spawned by this process (see [`kill_all`]), e.g.
/// [`Signal::Interrupt`] first for a graceful Ctrl-C. Returns how many groups still existed.
pub fn signal_all(signal: Signal) -> usize {
    registry::signal_all(signal.to_nix())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_codes_and_display() {
        assert_eq!(ExitStatus::Exited(3).code_for_shell(), 3);
        assert_eq!(ExitStatus::Signaled(libc::SIGKILL).code_for_shell(), 137);
        assert_eq!(ExitStatus::Signaled(libc::SIGINT).code(), None);
        assert_eq!(ExitStatus::Signaled(libc::SIGINT).signal(), Some(2));
        assert!(ExitStatus::Exited(0).success());
        assert!(!ExitStatus::Signaled(0).success());
        assert_eq!(ExitStatus::Exited(1).to_string(), "exit code 1");
        assert_eq!(
            ExitStatus::Signaled(libc::SIGTERM).to_string(),
            "killed by signal 15 (SIGTERM)"
        );
        assert_eq!(ExitStatus::Signaled(99).to_string(), "killed by signal 99");
    }

    #[test]
    fn signal_names_round_trip() {
        for s in [
            Signal::Interrupt,
            Signal::Terminate,
            Signal::Kill,
            Signal::Hangup,
        ] {
            assert_eq!(Signal::from_name(s.name()), Some(s));
        }
        assert_eq!(Signal::from_name("INT"), None);
        assert_eq!(Signal::Hangup.number(), libc::SIGHUP);
        assert_eq!(Stream::Pty.name(), "pty");
    }
}
