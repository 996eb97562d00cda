//! The supervisor side: a thread that receives seccomp notifications, records what they touch and
//! lets every call continue.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::thread::JoinHandle;

use libc::{c_int, c_void};

use crate::TraceError;
use crate::filter::{NATIVE_ARCH, Sys, sys_of};
use crate::log::{AccessKind, AccessLog, Recorder};
use crate::path::push_normalized;

/// Collects the [`AccessLog`] of one traced child and its whole tree, on a background thread.
///
/// Created by [`start`](crate::start) together with its [`ChildHook`](crate::ChildHook). The thread
/// first waits for the hook to hand over the notification listener, then answers every traced system
/// call with `SECCOMP_USER_NOTIF_FLAG_CONTINUE` after recording it; it never blocks a tracee for more
/// than a few reads of `/proc` and the tracee's memory. While one thread of the tree makes call
/// after call, the supervisor runs at real-time priority (`SCHED_FIFO`, lowest level), so that
/// thread is answered at once even when the task keeps every core busy; when several threads call,
/// at normal priority. Without the privilege for real-time priority, or with
/// [`REALTIME_ENV`](crate::REALTIME_ENV)`=0`, it always runs at normal priority.
///
/// Dropping a supervisor without calling [`finish`](Supervisor::finish) or
/// [`wait_tree`](Supervisor::wait_tree) stops the thread (as `finish` does) and discards the log.
#[derive(Debug)]
pub struct Supervisor {
    stop: Option<OwnedFd>,
    thread: Option<JoinHandle<io::Result<AccessLog>>>,
}

impl Supervisor {
    pub(crate) fn spawn(sock: OwnedFd) -> Result<Supervisor, TraceError> {
        let stop = eventfd().map_err(|source| TraceError::Setup {
            step: "eventfd",
            source,
        })?;
        let stop_thread = stop.try_clone().map_err(|source| TraceError::Setup {
            step: "eventfd",
            source,
        })?;
        let thread = std::thread::Builder::new()
            .name("baton-trace".into())
            .spawn(move || run(sock, stop_thread))
            .map_err(|source| TraceError::Setup {
                step: "spawn supervisor thread",
                source,
            })?;
        Ok(Supervisor {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Stops now and returns the log. Call it once the traced child has exited (and its tree has
    /// exited or been killed): every call the child made before exiting has been recorded by then.
    /// Notifications already queued are still handled; a descendant that is still running afterwards
    /// gets `ENOSYS` from every traced system call.
    ///
    /// # Errors
    /// [`TraceError::Supervisor`] when receiving notifications failed (the log is lost), or
    /// [`TraceError::Panicked`].
    pub fn finish(mut self) -> Result<AccessLog, TraceError> {
        self.signal_stop();
        self.join()
    }

    /// Waits until no process uses the filter any more — the child and every descendant, including
    /// ones that outlived it, have exited and been reaped — and returns the log. If the hook never ran
    /// it returns an empty log once the hook has been dropped; while an unused hook is still alive it
    /// waits.
    ///
    /// The kernel releases a process's filter only when the process is reaped, so call this after
    /// waiting for the child; and if the caller is a child subreaper (`PR_SET_CHILD_SUBREAPER`),
    /// orphaned descendants must be reaped too, or this waits forever.
    ///
    /// # Errors
    /// As [`finish`](Supervisor::finish).
    pub fn wait_tree(mut self) -> Result<AccessLog, TraceError> {
        let log = self.join();
        self.signal_stop();
        log
    }

    /// Makes the stop eventfd readable (a counter write, so copies of the fd that a concurrently
    /// forked child may briefly hold do not matter, unlike a pipe's end-of-file).
    fn signal_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let one = 1u64;
            // SAFETY: writes 8 bytes from a live u64 to an eventfd we own. It cannot fail short of
            // counter overflow, which one write per supervisor never reaches.
            unsafe { libc::write(stop.as_raw_fd(), (&raw const one).cast::<c_void>(), 8) };
        }
    }

    fn join(&mut self) -> Result<AccessLog, TraceError> {
        let thread = self.thread.take().ok_or(TraceError::Panicked)?;
        match thread.join() {
            Ok(Ok(log)) => Ok(log),
            Ok(Err(source)) => Err(TraceError::Supervisor(source)),
            Err(_) => Err(TraceError::Panicked),
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // Wakes the thread, which stops on its own; it is not joined here so that dropping never
        // blocks.
        self.signal_stop();
    }
}

fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain eventfd creation.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the fd was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// How many notifications are still handled after a stop request, so a busy stray process cannot
/// keep the supervisor alive.
const DRAIN_LIMIT: usize = 10_000;

fn run(sock: OwnedFd, stop: OwnedFd) -> io::Result<AccessLog> {
    let mut log = Recorder::default();
    let Some(listener) = receive_listener(&sock, &stop)? else {
        return Ok(log.finish());
    };
    // Further listeners (a second child spawned with the same hook) now fail to be sent, so that
    // child's spawn fails instead of running untraced.
    drop(sock);
    let mut notifier = Notifier::new(listener)?;
    loop {
        let mut fds = [
            pollfd(notifier.fd(), libc::POLLIN),
            pollfd(stop.as_raw_fd(), libc::POLLIN),
        ];
        poll(&mut fds, -1)?;
        if fds[1].revents != 0 {
            for _ in 0..DRAIN_LIMIT {
                let mut pending = [pollfd(notifier.fd(), libc::POLLIN)];
                poll(&mut pending, 0)?;
                if pending[0].revents & libc::POLLIN == 0 {
                    break;
                }
                notifier.handle_one(&mut log)?;
            }
            return Ok(log.finish());
        }
        if fds[0].revents & libc::POLLIN != 0 {
            notifier.handle_one(&mut log)?;
        } else if fds[0].revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
            return Ok(log.finish());
        }
    }
}

/// How many calls in a row from one thread switch the supervisor to real-time priority.
const SAME_CALLER_RUN: u32 = 8;

/// The supervisor thread's scheduling policy, adapted to who is calling.
///
/// Every traced call blocks its thread until the supervisor has answered. When one thread makes the
/// calls one after another (node's main thread: tsc reads and writes synchronously) while the task
/// keeps every core busy (node's compiler and GC threads), a normal-priority supervisor waits for
/// a time slice after each wake-up, and that thread's whole run waits with it. In `SCHED_FIFO`
/// (lowest level) the supervisor runs at once and yields the CPU back as soon as it blocks again;
/// it never spins, so it cannot starve anything (and the kernel's real-time throttling bounds it
/// regardless). But a real-time thread is woken on the CPU it last ran on, not on the caller's
/// (the `SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP` hand-off works for normal threads only), so when many
/// threads call from every core (esbuild and other Go programs) it preempts unrelated work and
/// costs more than it saves. Hence: real-time after [`SAME_CALLER_RUN`] calls in a row from one
/// thread, normal again as soon as another thread calls. A switch is one `sched_setscheduler`.
///
/// `SCHED_RESET_ON_FORK` keeps the policy from reaching any process this thread might fork.
/// Without the privilege (`CAP_SYS_NICE`, or an `RLIMIT_RTPRIO` of at least 1) the first switch
/// fails with `EPERM` and the thread stays normal for good; [`REALTIME_ENV`](crate::REALTIME_ENV)
/// `=0` keeps it normal too.
struct Priority {
    allowed: bool,
    realtime: bool,
    last_tid: u32,
    same: u32,
}

impl Priority {
    fn new() -> Priority {
        Priority {
            allowed: std::env::var_os(crate::REALTIME_ENV).is_none_or(|v| v != "0"),
            realtime: false,
            last_tid: 0,
            same: 0,
        }
    }

    /// Takes note of a call from thread `tid` (after it was answered) and switches the policy when
    /// the pattern of callers changed.
    fn observe(&mut self, tid: u32) {
        if let Some(realtime) = self.switch_for(tid) {
            self.set(realtime);
        }
    }

    /// The policy to switch to (`true`: real-time) after a call from `tid`, if any.
    fn switch_for(&mut self, tid: u32) -> Option<bool> {
        if !self.allowed {
            return None;
        }
        if tid == self.last_tid {
            self.same = self.same.saturating_add(1);
            (!self.realtime && self.same >= SAME_CALLER_RUN).then_some(true)
        } else {
            self.last_tid = tid;
            self.same = 0;
            self.realtime.then_some(false)
        }
    }

    fn set(&mut self, realtime: bool) {
        let (policy, priority) = if realtime {
            // SAFETY: a pure query.
            let min = unsafe { libc::sched_get_priority_min(libc::SCHED_FIFO) };
            (libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, min.max(1))
        } else {
            (libc::SCHED_OTHER, 0)
        };
        let param = libc::sched_param {
            sched_priority: priority,
        };
        // SAFETY: changes the calling thread (pid 0) only, with a valid `sched_param`.
        let r = unsafe { libc::sched_setscheduler(0, policy, &raw const param) };
        if r == 0 {
            self.realtime = realtime;
        } else if realtime {
            self.allowed = false;
        }
    }
}

fn pollfd(fd: RawFd, events: i16) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

fn poll(fds: &mut [libc::pollfd], timeout_ms: c_int) -> io::Result<()> {
    loop {
        // SAFETY: `fds` is a valid slice of pollfd.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if r >= 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// Waits for the child to send the listener fd; `None` when stop was signalled or every copy of the
/// hook's socket end is gone without a listener being sent.
fn receive_listener(sock: &OwnedFd, stop: &OwnedFd) -> io::Result<Option<OwnedFd>> {
    loop {
        let mut fds = [
            pollfd(sock.as_raw_fd(), libc::POLLIN),
            pollfd(stop.as_raw_fd(), libc::POLLIN),
        ];
        poll(&mut fds, -1)?;
        if fds[0].revents & libc::POLLIN != 0 {
            return recv_fd(sock.as_raw_fd());
        }
        if fds[0].revents != 0 || fds[1].revents != 0 {
            return Ok(None);
        }
    }
}

fn recv_fd(sock: RawFd) -> io::Result<Option<OwnedFd>> {
    let mut cbuf = [0u64; 8];
    let mut payload = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast::<c_void>(),
        iov_len: 1,
    };
    // SAFETY: zeroed msghdr is valid; fields are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast::<c_void>();
    msg.msg_controllen = size_of_val(&cbuf) as _;
    let n = loop {
        // SAFETY: msg and the buffers it points to are live for the call.
        let n = unsafe { libc::recvmsg(sock, &raw mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n;
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    };
    if n == 0 {
        return Ok(None);
    }
    // SAFETY: the kernel filled msg_control with msg_controllen bytes of well-formed cmsgs.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        if cmsg.is_null()
            || (*cmsg).cmsg_level != libc::SOL_SOCKET
            || (*cmsg).cmsg_type != libc::SCM_RIGHTS
        {
            return Ok(None);
        }
        let fd = libc::CMSG_DATA(cmsg).cast::<c_int>().read_unaligned();
        Ok(Some(OwnedFd::from_raw_fd(fd)))
    }
}

/// Why one path or peer of a notification could not be determined.
enum Miss {
    Memory,
    Base,
}

/// `SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP` (linux/seccomp.h, Linux 6.6).
const SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP: u64 = 1;

/// Longest path the kernel accepts, including the NUL (`PATH_MAX`).
const PATH_MAX: usize = 4096;
/// `process_vm_readv` transfers whole iovecs only, so reads are split at this boundary (the smallest
/// page size; a larger real page size only makes the split finer than needed).
const CHUNK: usize = 4096;
/// How much of a path the first read takes (most paths are shorter; a longer one costs a second
/// read).
const FIRST_READ: usize = 256;

struct Notifier {
    listener: OwnedFd,
    /// Receive buffer, sized by `SECCOMP_GET_NOTIF_SIZES` (the kernel may know a larger struct).
    buf: Vec<u64>,
    /// The path argument as read from the tracee (`PATH_MAX` bytes).
    path_buf: Vec<u8>,
    /// The target of a `/proc/PID/cwd` or `/proc/PID/fd/N` link (`PATH_MAX` bytes).
    base_buf: Vec<u8>,
    /// The resolved paths of the current notification, back to back; `events` holds their ranges.
    paths: Vec<u8>,
    events: Vec<(usize, usize, AccessKind)>,
    connects: Vec<SocketAddr>,
    miss_memory: u64,
    miss_base: u64,
    priority: Priority,
}

impl Notifier {
    fn new(listener: OwnedFd) -> io::Result<Notifier> {
        let mut sizes = libc::seccomp_notif_sizes {
            seccomp_notif: 0,
            seccomp_notif_resp: 0,
            seccomp_data: 0,
        };
        // SAFETY: `sizes` is a valid out-pointer for SECCOMP_GET_NOTIF_SIZES.
        let r = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_GET_NOTIF_SIZES,
                0,
                &raw mut sizes,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        // Linux 6.6+: wake the supervisor and, after the reply, the tracee on the current CPU
        // (a direct hand-off instead of two scheduler round trips). Older kernels reject the flag
        // with EINVAL, which only costs speed.
        // SAFETY: the argument is a plain integer flag word.
        unsafe {
            libc::ioctl(
                listener.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_SET_FLAGS,
                SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP,
            )
        };
        let bytes = usize::from(sizes.seccomp_notif).max(size_of::<libc::seccomp_notif>());
        Ok(Notifier {
            listener,
            buf: vec![0; bytes.div_ceil(8)],
            path_buf: vec![0; PATH_MAX],
            base_buf: vec![0; PATH_MAX],
            paths: Vec::with_capacity(2 * PATH_MAX),
            events: Vec::new(),
            connects: Vec::new(),
            miss_memory: 0,
            miss_base: 0,
            priority: Priority::new(),
        })
    }

    fn fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// Receives one notification, records it and lets the call continue.
    fn handle_one(&mut self, log: &mut Recorder) -> io::Result<()> {
        self.buf.fill(0);
        // SAFETY: `buf` is zeroed (the kernel requires it) and at least as large as the kernel's
        // `struct seccomp_notif`.
        let r = unsafe {
            libc::ioctl(
                self.fd(),
                libc::SECCOMP_IOCTL_NOTIF_RECV,
                self.buf.as_mut_ptr(),
            )
        };
        if r != 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                // The tracee was killed or interrupted between poll and receive.
                Some(libc::ENOENT | libc::EINTR) => Ok(()),
                _ => Err(err),
            };
        }
        // SAFETY: the buffer holds a `seccomp_notif` written by the kernel; u64 alignment suffices.
        let notif: libc::seccomp_notif =
            unsafe { self.buf.as_ptr().cast::<libc::seccomp_notif>().read() };
        log.log.notifications += 1;
        self.paths.clear();
        self.events.clear();
        self.connects.clear();
        self.miss_memory = 0;
        self.miss_base = 0;
        let sys = (notif.data.arch == NATIVE_ARCH)
            .then(|| sys_of(notif.data.nr))
            .flatten();
        let Some(sys) = sys else {
            log.log.unresolved.foreign_abi += 1;
            self.respond(notif.id);
            return Ok(());
        };
        self.decode(notif.pid, sys, &notif.data.args);
        // The reply succeeds only while the call is still pending, i.e. while the process that made
        // it is alive and blocked in it: so its pid was not recycled while `/proc/PID/…` and its
        // memory were read (this replaces a separate SECCOMP_IOCTL_NOTIF_ID_VALID).
        let answered = self.respond(notif.id);
        self.priority.observe(notif.pid);
        if answered {
            for (start, end, kind) in self.events.drain(..) {
                log.record(&self.paths[start..end], kind);
            }
            for addr in self.connects.drain(..) {
                log.log.record_connect(addr);
            }
            log.log.unresolved.memory += self.miss_memory;
            log.log.unresolved.base += self.miss_base;
        } else {
            log.log.unresolved.stale += 1;
        }
        Ok(())
    }
}

/// What an `open`-style call with these flags does to its path.
fn open_kinds(flags: c_int) -> &'static [AccessKind] {
    let acc = flags & libc::O_ACCMODE;
    let creat = flags & libc::O_CREAT != 0;
    if flags & libc::O_TMPFILE == libc::O_TMPFILE {
        // An unnamed file in that directory; it gets a name (and a write) with linkat.
        &[AccessKind::Stat]
    } else if flags & libc::O_PATH != 0 {
        &[AccessKind::Stat]
    } else if flags & libc::O_TRUNC != 0 || (creat && flags & libc::O_EXCL != 0) {
        // Old content is gone (truncated) or there was none (exclusive create, e.g. mkstemp).
        &[AccessKind::Write]
    } else if acc == libc::O_RDWR {
        &[AccessKind::Read, AccessKind::Write]
    } else if acc == libc::O_WRONLY || creat {
        &[AccessKind::Write]
    } else if flags & libc::O_DIRECTORY != 0 {
        &[AccessKind::Stat]
    } else {
        &[AccessKind::Read]
    }
}

/// `AT_FDCWD` as it arrives in a 64-bit argument register (the low 32 bits are the `int`).
fn dirfd_arg(arg: u64) -> c_int {
    arg as u32 as c_int
}

impl Notifier {
    /// Lets call `id` continue unchanged; whether it was still pending (`false`: the tracee was
    /// killed, or interrupted by a signal and will make the call again).
    fn respond(&self, id: u64) -> bool {
        let resp = libc::seccomp_notif_resp {
            id,
            val: 0,
            error: 0,
            flags: libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32,
        };
        // SAFETY: `resp` is a valid `seccomp_notif_resp`. The only error for a well-formed reply
        // is `ENOENT` (no such pending notification).
        unsafe { libc::ioctl(self.fd(), libc::SECCOMP_IOCTL_NOTIF_SEND, &raw const resp) == 0 }
    }

    fn decode(&mut self, pid: u32, sys: Sys, a: &[u64; 6]) {
        use AccessKind as K;
        const CWD: u64 = libc::AT_FDCWD as u32 as u64;
        match sys {
            Sys::Open => self.open(pid, CWD, a[0], a[1]),
            Sys::OpenAt => self.open(pid, a[0], a[1], a[2]),
            Sys::OpenAt2 => {
                // `struct open_how` starts with `u64 flags`; a3 is its size (at least 24).
                let mut flags = [0u8; 8];
                if a[3] >= 8 && self.read_mem(pid, a[2], &mut flags) {
                    self.open(pid, a[0], a[1], u64::from_ne_bytes(flags));
                } else {
                    self.miss_memory += 1;
                }
            }
            Sys::Creat | Sys::Truncate => self.path(pid, CWD, a[0], 0, K::Write),
            Sys::Stat | Sys::Lstat | Sys::Access => self.path(pid, CWD, a[0], 0, K::Stat),
            Sys::NewFstatAt | Sys::FaccessAt2 => self.path(pid, a[0], a[1], a[3], K::Stat),
            Sys::Statx => self.path(pid, a[0], a[1], a[2], K::Stat),
            Sys::FaccessAt => self.path(pid, a[0], a[1], 0, K::Stat),
            Sys::Readlink => self.path(pid, CWD, a[0], 0, K::ReadLink),
            // readlinkat accepts an empty path for the fd itself (no flag needed).
            Sys::ReadlinkAt => self.path(pid, a[0], a[1], libc::AT_EMPTY_PATH as u64, K::ReadLink),
            Sys::Getdents | Sys::Getdents64 => {
                let start = self.paths.len();
                if let Some(base) = self.read_base(pid, dirfd_arg(a[0])) {
                    push_normalized(&mut self.paths, &self.base_buf[..base], b"");
                    self.events.push((start, self.paths.len(), K::List));
                } else {
                    self.miss_base += 1;
                }
            }
            Sys::Execve => self.path(pid, CWD, a[0], 0, K::Exec),
            Sys::ExecveAt => self.path(pid, a[0], a[1], a[4], K::Exec),
            Sys::Rename => {
                self.path(pid, CWD, a[0], 0, K::RenameFrom);
                self.path(pid, CWD, a[1], 0, K::RenameTo);
            }
            Sys::RenameAt | Sys::RenameAt2 => {
                let flags = if sys == Sys::RenameAt2 { a[4] } else { 0 };
                self.path(pid, a[0], a[1], 0, K::RenameFrom);
                self.path(pid, a[2], a[3], 0, K::RenameTo);
                if flags & u64::from(libc::RENAME_EXCHANGE) != 0 {
                    self.path(pid, a[0], a[1], 0, K::RenameTo);
                    self.path(pid, a[2], a[3], 0, K::RenameFrom);
                }
            }
            Sys::Unlink | Sys::Rmdir => self.path(pid, CWD, a[0], 0, K::Remove),
            Sys::UnlinkAt => self.path(pid, a[0], a[1], 0, K::Remove),
            Sys::Mkdir => self.path(pid, CWD, a[0], 0, K::CreateDir),
            Sys::MkdirAt => self.path(pid, a[0], a[1], 0, K::CreateDir),
            Sys::Link => {
                self.path(pid, CWD, a[0], 0, K::Stat);
                self.path(pid, CWD, a[1], 0, K::Write);
            }
            Sys::LinkAt => {
                self.path(pid, a[0], a[1], a[4], K::Stat);
                self.path(pid, a[2], a[3], 0, K::Write);
            }
            Sys::Symlink => self.path(pid, CWD, a[1], 0, K::Write),
            Sys::SymlinkAt => self.path(pid, a[1], a[2], 0, K::Write),
            // Entering a directory probes it (`cd missing || …` depends on its absence).
            Sys::Chdir => self.path(pid, CWD, a[0], 0, K::Stat),
            Sys::Connect => self.connect(pid, a[1], a[2]),
        }
    }

    /// Records an `open`-style call by its flags.
    fn open(&mut self, pid: u32, dirfd: u64, path: u64, flags: u64) {
        let kinds = open_kinds(flags as u32 as c_int);
        let before = self.events.len();
        self.path(pid, dirfd, path, 0, kinds[0]);
        if let Some(&(start, end, _)) = self.events.get(before) {
            for kind in &kinds[1..] {
                self.events.push((start, end, *kind));
            }
        }
    }

    /// Records `kind` for the path at `path_ptr` relative to `dirfd`; `flags` may carry
    /// `AT_EMPTY_PATH`, which makes an empty path name the fd itself.
    fn path(&mut self, pid: u32, dirfd: u64, path_ptr: u64, flags: u64, kind: AccessKind) {
        let start = self.paths.len();
        match self.resolve(
            pid,
            dirfd_arg(dirfd),
            path_ptr,
            flags & libc::AT_EMPTY_PATH as u64 != 0,
        ) {
            Ok(true) => self.events.push((start, self.paths.len(), kind)),
            // An empty path without AT_EMPTY_PATH fails with ENOENT: nothing was touched.
            Ok(false) => {}
            Err(Miss::Memory) => self.miss_memory += 1,
            Err(Miss::Base) => self.miss_base += 1,
        }
    }

    /// Appends the absolute, normalised path of the call's argument to `paths`; `false` when the
    /// call names nothing.
    fn resolve(
        &mut self,
        pid: u32,
        dirfd: c_int,
        path_ptr: u64,
        empty_ok: bool,
    ) -> Result<bool, Miss> {
        // A NULL path fails with EFAULT and touches nothing (node/libuv makes such calls);
        // since Linux 6.11 `statx(dirfd, NULL, AT_EMPTY_PATH)` means the fd itself, like an
        // empty path. Either way it is handled as an empty path.
        let len = if path_ptr == 0 {
            0
        } else {
            self.read_cstr(pid, path_ptr).ok_or(Miss::Memory)?
        };
        let rel = &self.path_buf[..len];
        if rel.first() == Some(&b'/') {
            push_normalized(&mut self.paths, b"", rel);
            return Ok(true);
        }
        if rel.is_empty() && !empty_ok {
            return Ok(false);
        }
        let base = self.read_base(pid, dirfd).ok_or(Miss::Base)?;
        push_normalized(
            &mut self.paths,
            &self.base_buf[..base],
            &self.path_buf[..len],
        );
        Ok(true)
    }

    /// Reads into `base_buf` the absolute path `dirfd` of `pid` names (`/proc/PID/cwd` for
    /// `AT_FDCWD`, else `/proc/PID/fd/N`) and returns its length; `None` if it names none (a
    /// socket, a pipe, a closed fd) or the process is gone.
    fn read_base(&mut self, pid: u32, dirfd: c_int) -> Option<usize> {
        let mut link = ProcLink::new(pid);
        if dirfd == libc::AT_FDCWD {
            link.push(b"/cwd");
        } else if dirfd >= 0 {
            link.push(b"/fd/");
            link.push_number(dirfd.unsigned_abs());
        } else {
            return None;
        }
        // SAFETY: `link` is NUL-terminated; `base_buf` has `PATH_MAX` writable bytes.
        let n = unsafe {
            libc::readlink(
                link.as_ptr(),
                self.base_buf.as_mut_ptr().cast::<libc::c_char>(),
                PATH_MAX,
            )
        };
        // A result of PATH_MAX bytes may be truncated.
        let n = usize::try_from(n).ok().filter(|n| *n < PATH_MAX)?;
        (self.base_buf.first() == Some(&b'/')).then_some(n)
    }

    /// Reads a NUL-terminated string at `addr` of process `pid` into `path_buf`; its length.
    ///
    /// Most paths are short: a first read takes at most [`FIRST_READ`] bytes without crossing a
    /// page (one page pinned, little copied); only a path that is longer reads on, up to
    /// `PATH_MAX`.
    fn read_cstr(&mut self, pid: u32, addr: u64) -> Option<usize> {
        let addr = usize::try_from(addr).ok().filter(|a| *a != 0)?;
        let first = (CHUNK - addr % CHUNK).min(FIRST_READ);
        let n = self.read_chunks(pid, addr, 0, first)?;
        if let Some(len) = self.path_buf[..n].iter().position(|b| *b == 0) {
            return Some(len);
        }
        if n < first {
            return None;
        }
        let n = self.read_chunks(pid, addr.wrapping_add(first), first, PATH_MAX - first)?;
        self.path_buf[first..first + n]
            .iter()
            .position(|b| *b == 0)
            .map(|len| first + len)
    }

    /// Reads up to `len` bytes at `addr` of `pid` into `path_buf[at..]`, as two iovecs split at the
    /// page boundary (`process_vm_readv` transfers whole iovecs only, so an unmapped next page
    /// does not lose the bytes before it); how many bytes arrived.
    fn read_chunks(&mut self, pid: u32, addr: usize, at: usize, len: usize) -> Option<usize> {
        let head = (CHUNK - addr % CHUNK).min(len);
        let remote = [
            libc::iovec {
                iov_base: addr as *mut c_void,
                iov_len: head,
            },
            libc::iovec {
                iov_base: addr.wrapping_add(head) as *mut c_void,
                iov_len: len - head,
            },
        ];
        let count = if head == len { 1 } else { 2 };
        let local = libc::iovec {
            iov_base: self.path_buf[at..].as_mut_ptr().cast::<c_void>(),
            iov_len: len.min(self.path_buf.len() - at),
        };
        // SAFETY: the local iovec lies within `path_buf`; remote addresses are only read by the
        // kernel.
        let n = unsafe {
            libc::process_vm_readv(
                pid as libc::pid_t,
                &raw const local,
                1,
                remote.as_ptr(),
                count,
                0,
            )
        };
        usize::try_from(n).ok()
    }

    /// Reads exactly `out.len()` bytes at `addr` of process `pid`.
    fn read_mem(&self, pid: u32, addr: u64, out: &mut [u8]) -> bool {
        let Ok(addr) = usize::try_from(addr) else {
            return false;
        };
        let local = libc::iovec {
            iov_base: out.as_mut_ptr().cast::<c_void>(),
            iov_len: out.len(),
        };
        let remote = libc::iovec {
            iov_base: addr as *mut c_void,
            iov_len: out.len(),
        };
        // SAFETY: the local iovec covers `out` exactly; the remote one is only read by the kernel.
        let n = unsafe {
            libc::process_vm_readv(
                pid as libc::pid_t,
                &raw const local,
                1,
                &raw const remote,
                1,
                0,
            )
        };
        usize::try_from(n).is_ok_and(|n| n == out.len())
    }

    /// Records the peer of a `connect` on an `AF_INET`/`AF_INET6` socket; other families are ignored.
    fn connect(&mut self, pid: u32, addr: u64, len: u64) {
        let mut raw = [0u8; 28];
        let len = usize::try_from(len).unwrap_or(0).min(raw.len());
        if len < 2 {
            return;
        }
        if !self.read_mem(pid, addr, &mut raw[..len]) {
            self.miss_memory += 1;
            return;
        }
        let family = c_int::from(u16::from_ne_bytes([raw[0], raw[1]]));
        let port = u16::from_be_bytes([raw[2], raw[3]]);
        let peer = match family {
            libc::AF_INET if len >= 8 => SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::new(raw[4], raw[5], raw[6], raw[7]),
                port,
            )),
            libc::AF_INET6 if len >= 24 => {
                let flowinfo = u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]);
                let mut ip = [0u8; 16];
                ip.copy_from_slice(&raw[8..24]);
                let scope = if len >= 28 {
                    u32::from_ne_bytes([raw[24], raw[25], raw[26], raw[27]])
                } else {
                    0
                };
                SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ip), port, flowinfo, scope))
            }
            _ => return,
        };
        self.connects.push(peer);
    }
}

/// A NUL-terminated `/proc/PID/…` path built on the stack (no allocation per notification).
struct ProcLink {
    buf: [u8; 48],
    len: usize,
}

impl ProcLink {
    fn new(pid: u32) -> ProcLink {
        let mut link = ProcLink {
            buf: [0; 48],
            len: 0,
        };
        link.push(b"/proc/");
        link.push_number(pid);
        link
    }

    /// Appends `bytes`, always leaving a NUL at the end (the longest path, `/proc/4294967295/fd/
    /// 4294967295`, is 31 bytes).
    fn push(&mut self, bytes: &[u8]) {
        let end = (self.len + bytes.len()).min(self.buf.len() - 1);
        self.buf[self.len..end].copy_from_slice(&bytes[..end - self.len]);
        self.len = end;
    }

    fn push_number(&mut self, mut n: u32) {
        let mut digits = [0u8; 10];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }

    fn as_ptr(&self) -> *const libc::c_char {
        self.buf.as_ptr().cast()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AccessKind::{Read, Stat, Write};

    #[test]
    fn realtime_only_while_one_thread_calls() {
        let mut p = Priority {
            allowed: true,
            realtime: false,
            last_tid: 0,
            same: 0,
        };
        let mut switches = Vec::new();
        let calls = [7; 12].into_iter().chain([8, 8, 7]).chain([7; 9]);
        for (i, tid) in calls.enumerate() {
            if let Some(realtime) = p.switch_for(tid) {
                p.realtime = realtime;
                switches.push((i, realtime));
            }
        }
        // Call 8 is the 8th in a row after the first from thread 7; thread 8 at 12 ends the run;
        // back to 7 at 14, whose 8th repeat is call 22.
        assert_eq!(switches, [(8, true), (12, false), (22, true)]);
        let mut denied = Priority {
            allowed: false,
            ..p
        };
        assert_eq!(denied.switch_for(9), None);
    }

    #[test]
    fn proc_links_are_nul_terminated_paths() {
        let mut link = ProcLink::new(4_294_967_295);
        link.push(b"/fd/");
        link.push_number(0);
        assert_eq!(&link.buf[..=link.len], b"/proc/4294967295/fd/0\0");
        let mut link = ProcLink::new(7);
        link.push(b"/cwd");
        assert_eq!(&link.buf[..=link.len], b"/proc/7/cwd\0");
    }

    #[test]
    fn open_flags_classify() {
        let cases: &[(c_int, &[AccessKind])] = &[
            (libc::O_RDONLY, &[Read]),
            (libc::O_RDONLY | libc::O_CLOEXEC, &[Read]),
            (libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, &[Write]),
            (libc::O_WRONLY | libc::O_APPEND, &[Write]),
            (libc::O_RDWR, &[Read, Write]),
            (libc::O_RDWR | libc::O_CREAT, &[Read, Write]),
            (libc::O_RDWR | libc::O_CREAT | libc::O_EXCL, &[Write]),
            (libc::O_RDWR | libc::O_TRUNC, &[Write]),
            (libc::O_RDONLY | libc::O_CREAT, &[Write]),
            (libc::O_RDONLY | libc::O_DIRECTORY, &[Stat]),
            (libc::O_PATH, &[Stat]),
            (libc::O_TMPFILE | libc::O_RDWR, &[Stat]),
        ];
        for (flags, kinds) in cases {
            assert_eq!(open_kinds(*flags), *kinds, "flags {flags:#o}");
        }
    }
}
