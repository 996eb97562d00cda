//! The child side: runs between `fork` and `exec`, installs the filter and hands the listener over.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use libc::{c_int, c_void, sock_filter, sock_fprog};

/// Size of the shared flag mapping (one page on every supported platform; mmap rounds up).
const PAGE: usize = 4096;

/// The part of a trace (see [`start`](crate::start)) that runs in the child process.
///
/// It holds the BPF program and one end of a `socketpair(AF_UNIX, SOCK_SEQPACKET)` whose other end
/// belongs to the [`Supervisor`](crate::Supervisor); everything is allocated when the tracer is
/// created, so [`ChildHook::install`] allocates nothing and only makes raw system calls. It is
/// `Send + Sync + 'static` so it can be moved into a `pre_exec` closure.
///
/// One hook traces one child (and all its descendants): a flag in a shared anonymous mapping
/// records that it ran, so running it in a second child (a `Command` spawned twice) fails that
/// spawn with `EALREADY` instead of starting an untraced process.
#[derive(Debug)]
pub struct ChildHook {
    program: Box<[sock_filter]>,
    sock: OwnedFd,
    /// A `MAP_SHARED | MAP_ANONYMOUS` page holding one `AtomicU32`; shared with every forked child.
    used: NonNull<AtomicU32>,
}

// SAFETY: `sock_filter` is plain data; `used` points at a mapping owned by the hook and is only
// accessed atomically.
unsafe impl Send for ChildHook {}
// SAFETY: as above; `install` takes `&self` and only touches `used` atomically.
unsafe impl Sync for ChildHook {}

impl ChildHook {
    pub(crate) fn new(program: Vec<sock_filter>, sock: OwnedFd) -> io::Result<ChildHook> {
        // SAFETY: a fresh anonymous shared mapping; the kernel zero-fills it (flag 0 = unused).
        let page = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if page == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let used = NonNull::new(page.cast::<AtomicU32>())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        Ok(ChildHook {
            program: program.into_boxed_slice(),
            sock,
            used,
        })
    }

    /// Installs the tracing filter on the calling process and sends the notification listener to the
    /// supervisor. Call it in the child between `fork` and `exec` (e.g. from
    /// `std::os::unix::process::CommandExt::pre_exec`); the filter is inherited by every thread,
    /// child and `exec` of the process from then on, and cannot be removed.
    ///
    /// Steps: `prctl(PR_SET_NO_NEW_PRIVS, 1)`, `seccomp(SECCOMP_SET_MODE_FILTER,
    /// SECCOMP_FILTER_FLAG_NEW_LISTENER [| SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV], prog)`, `sendmsg` of the listener fd with `SCM_RIGHTS`, `close`.
    /// All are async-signal-safe; nothing is allocated.
    ///
    /// # Errors
    /// The OS error of the failing step: `EBUSY` from `seccomp` when an ancestor already holds a
    /// notification listener, `EPERM`/`EACCES`/`ENOSYS`/`EINVAL` when seccomp is denied or missing,
    /// `EPIPE`/`ECONNREFUSED` from `sendmsg` when the supervisor is gone, `EALREADY` when the hook
    /// already ran in another child.
    ///
    /// # Safety
    /// Only call this in a freshly forked child that is about to `exec`. Called in the process that
    /// owns the [`Supervisor`](crate::Supervisor), it would make that process trace itself and
    /// deadlock as soon as the supervisor thread makes a traced call.
    pub unsafe fn install(&self) -> io::Result<()> {
        // SAFETY: `used` points into the live shared mapping (unmapped only when the hook drops).
        let used = unsafe { self.used.as_ref() };
        if used.swap(1, Ordering::SeqCst) != 0 {
            return Err(io::Error::from_raw_os_error(libc::EALREADY));
        }
        // SAFETY: plain prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let prog = sock_fprog {
            len: u16::try_from(self.program.len()).unwrap_or(u16::MAX),
            filter: self.program.as_ptr().cast_mut(),
        };
        // With WAIT_KILLABLE_RECV (Linux 5.19) a call the supervisor has already received is no
        // longer interrupted by non-fatal signals (Go's preemption signal would otherwise restart
        // it and notify twice); older kernels reject the flag with EINVAL, so retry without it.
        let base = libc::SECCOMP_FILTER_FLAG_NEW_LISTENER;
        let mut listener = -1;
        for flags in [base | libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV, base] {
            // SAFETY: `prog` points at a valid program that outlives the call; the kernel copies it.
            listener = unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    flags,
                    &raw const prog,
                )
            };
            if listener >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
                break;
            }
        }
        if listener < 0 {
            return Err(io::Error::last_os_error());
        }
        let listener = listener as c_int;
        let sent = send_fd(self.sock.as_raw_fd(), listener);
        // SAFETY: `listener` is the fd the kernel just returned to us; the supervisor has its own copy.
        unsafe { libc::close(listener) };
        sent
    }
}

impl Drop for ChildHook {
    fn drop(&mut self) {
        // SAFETY: the mapping was created in `new` with this size and is not used after drop.
        unsafe { libc::munmap(self.used.as_ptr().cast::<c_void>(), PAGE) };
    }
}

/// Sends `fd` over the `SOCK_SEQPACKET` socket `sock` with one byte of payload. No allocation.
fn send_fd(sock: c_int, fd: c_int) -> io::Result<()> {
    // A cmsg buffer for one fd: CMSG_SPACE(4) is 24 on 64-bit Linux; 64 bytes with u64 alignment.
    let mut cbuf = [0u64; 8];
    let mut payload = [b'L'];
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast::<c_void>(),
        iov_len: 1,
    };
    // SAFETY: zeroed msghdr is valid; fields are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast::<c_void>();
    // SAFETY: CMSG_SPACE is a pure computation.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<c_int>() as u32) } as _;
    // SAFETY: msg_control points at a buffer of at least msg_controllen bytes, so the first header fits.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        if cmsg.is_null() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<c_int>() as u32) as _;
        libc::CMSG_DATA(cmsg).cast::<c_int>().write_unaligned(fd);
    }
    loop {
        // SAFETY: msg and everything it points to are live for the call.
        let n = unsafe { libc::sendmsg(sock, &raw const msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}
