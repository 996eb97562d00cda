//! Pseudo-terminal plumbing: open a master/slave pair, async read/write on the master, resize.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::stat::Mode;
use tokio::io::unix::AsyncFd;

use crate::spec::PtySize;

/// The parent's side of a pty: non-blocking, close-on-exec, registered with the Tokio reactor.
#[derive(Debug)]
pub(crate) struct PtyMaster {
    fd: AsyncFd<OwnedFd>,
}

/// Opens a pty pair of `size`. Both fds are close-on-exec (so concurrent spawns elsewhere in this
/// process never inherit them); the slave is handed to the child as its stdio, which clears the
/// flag on fds 0-2 only.
pub(crate) fn open(size: PtySize) -> io::Result<(OwnedFd, OwnedFd)> {
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    nix::pty::grantpt(&master)?;
    nix::pty::unlockpt(&master)?;
    let name = nix::pty::ptsname_r(&master)?;
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let master: OwnedFd = master.into();
    // posix_openpt may ignore O_CLOEXEC on old libcs; set it explicitly as well.
    fcntl(&master, FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))?;
    let flags = OFlag::from_bits_truncate(fcntl(&master, FcntlArg::F_GETFL)?);
    fcntl(&master, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    set_size(&master, size)?;
    Ok((master, slave))
}

/// Sets the window size of the terminal behind `fd` (`TIOCSWINSZ`); the kernel then sends
/// `SIGWINCH` to the terminal's foreground process group.
fn set_size(fd: &impl AsFd, size: PtySize) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: `fd` is a valid open descriptor for the duration of the call (borrowed), and
    // TIOCSWINSZ only reads the `winsize` struct we pass by pointer, which outlives the call.
    let rc = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl PtyMaster {
    /// Registers `master` (already non-blocking) with the current Tokio reactor.
    pub(crate) fn new(master: OwnedFd) -> io::Result<Self> {
        // SAFETY: `OwnedFd` owns a valid open descriptor and always returns that same
        // descriptor from `as_raw_fd`; the `AsyncFd` owns it for its whole lifetime and nothing
        // else closes or replaces it.
        let fd = unsafe { AsyncFd::register(master) }.map_err(|e| e.into_parts().1)?;
        Ok(Self { fd })
    }

    /// Reads what the terminal has; `Ok(0)` at the end (the kernel reports `EIO` once every
    /// slave fd is closed, which we map to end-of-file).
    pub(crate) async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|inner| read_nonblocking(inner.get_ref(), buf)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// One non-blocking read attempt (`Err(WouldBlock)` when nothing is buffered).
    pub(crate) fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        read_nonblocking(self.fd.get_ref(), buf)
    }

    /// Writes all of `data` to the terminal (the child's input).
    pub(crate) async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard
                .try_io(|inner| nix::unistd::write(inner.get_ref(), data).map_err(io::Error::from))
            {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// Sets the window size.
    pub(crate) fn resize(&self, size: PtySize) -> io::Result<()> {
        set_size(self.fd.get_ref(), size)
    }
}

fn read_nonblocking(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    match nix::unistd::read(fd, buf) {
        Ok(n) => Ok(n),
        Err(Errno::EIO) => Ok(0),
        Err(e) => Err(e.into()),
    }
}
