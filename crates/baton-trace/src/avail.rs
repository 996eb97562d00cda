//! Whether seccomp user notification can be used by this process.

use std::io;
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
use std::sync::OnceLock;

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
use libc::c_int;

/// The environment variable that turns tracing off: any value other than empty or `0` makes
/// [`is_available`] report [`Unavailable::Disabled`]. Tests use it to exercise the untraced fallback.
pub const DISABLE_ENV: &str = "BATON_TRACE_DISABLE";

/// The oldest kernel the tracer accepts: 5.8 has `SECCOMP_USER_NOTIF_FLAG_CONTINUE` (5.5) and
/// reports `POLLHUP` on the listener once no process uses the filter any more (5.8).
pub const MIN_KERNEL: (u32, u32) = (5, 8);

/// Why tracing cannot be used; the `Display` text is a reason for a human ("cache disabled: …").
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    /// [`DISABLE_ENV`] is set.
    #[error("file-access tracing disabled by {DISABLE_ENV}")]
    Disabled,
    /// Not Linux on x86-64 or aarch64.
    #[error("file-access tracing is not supported on this platform")]
    UnsupportedPlatform,
    /// The kernel is older than [`MIN_KERNEL`] (its release string as in `uname -r`).
    #[error("file-access tracing needs Linux 5.8 or newer, this kernel is {release}")]
    KernelTooOld {
        /// `uname -r`.
        release: String,
    },
    /// An ancestor (another Baton, a container runtime, a sandbox) already installed a seccomp filter
    /// with a notification listener; the kernel allows only one per process (`EBUSY`).
    #[error(
        "file-access tracing unavailable: a seccomp notification listener is already installed by an ancestor process"
    )]
    ListenerHeld,
    /// The `seccomp` call was refused (a sandbox or container profile denies it, or the kernel lacks
    /// user notification); `errno` is the error it returned.
    #[error("file-access tracing unavailable: seccomp user notification denied ({})", io::Error::from_raw_os_error(*errno))]
    SeccompDenied {
        /// The `errno` of the failed `prctl`/`seccomp` call.
        errno: i32,
    },
    /// Yama (`/proc/sys/kernel/yama/ptrace_scope`) forbids reading the memory of child processes
    /// (scope 3, or scope 2 without `CAP_SYS_PTRACE`), so no path argument could be read.
    #[error(
        "file-access tracing unavailable: kernel.yama.ptrace_scope={scope} forbids reading child process memory"
    )]
    MemoryReadDenied {
        /// The `ptrace_scope` value.
        scope: u8,
    },
    /// The probe itself could not run (`fork` or `waitpid` failed).
    #[error("file-access tracing unavailable: probe failed ({})", io::Error::from_raw_os_error(*errno))]
    ProbeFailed {
        /// The `errno` of the failed call.
        errno: i32,
    },
}

/// Reports whether tracing ([`start`](crate::start)) can work here, with a reason if not.
///
/// Checks, in order: [`DISABLE_ENV`] (read on every call), the platform, and then once per
/// process (cached) the kernel version, Yama's `ptrace_scope`, and a probe: a forked child sets
/// `no_new_privs` and installs an
/// allow-all filter with `SECCOMP_FILTER_FLAG_NEW_LISTENER`, which fails with `EBUSY` when an
/// ancestor already holds a listener and with `EPERM`/`EACCES`/`ENOSYS` when seccomp is denied.
///
/// # Errors
/// The [`Unavailable`] reason.
pub fn is_available() -> Result<(), Unavailable> {
    if std::env::var_os(DISABLE_ENV).is_some_and(|v| !v.is_empty() && v != "0") {
        return Err(Unavailable::Disabled);
    }
    #[cfg(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    {
        static PROBE: OnceLock<Result<(), Unavailable>> = OnceLock::new();
        PROBE.get_or_init(probe).clone()
    }
    #[cfg(not(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )))]
    Err(Unavailable::UnsupportedPlatform)
}

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
fn kernel_release() -> Option<String> {
    // SAFETY: zeroed utsname is valid; uname fills it.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `uts` is a valid out-pointer.
    if unsafe { libc::uname(&raw mut uts) } != 0 {
        return None;
    }
    let bytes: Vec<u8> = uts
        .release
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// Whether Yama's `ptrace_scope` stops a process from reading its own children's memory
/// (`process_vm_readv` needs `PTRACE_MODE_ATTACH`): scope 0 and 1 allow it for descendants,
/// 2 only with `CAP_SYS_PTRACE`, 3 never.
#[cfg_attr(
    not(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )),
    allow(dead_code, reason = "only the Linux probe checks Yama")
)]
fn yama_denies(scope: u8, cap_sys_ptrace: bool) -> bool {
    match scope {
        0 | 1 => false,
        2 => !cap_sys_ptrace,
        _ => true,
    }
}

/// Whether the `CapEff` line of a `/proc/PID/status` text has `CAP_SYS_PTRACE` (bit 19).
#[cfg_attr(
    not(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )),
    allow(dead_code, reason = "only the Linux probe checks Yama")
)]
fn has_cap_sys_ptrace(status: &str) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 19) != 0)
}

/// Parses the leading `MAJOR.MINOR` of a kernel release string.
#[cfg_attr(
    not(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )),
    allow(dead_code, reason = "only the Linux probe checks the kernel version")
)]
fn parse_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
fn probe() -> Result<(), Unavailable> {
    if let Some(release) = kernel_release()
        && let Some(version) = parse_version(&release)
        && version < MIN_KERNEL
    {
        return Err(Unavailable::KernelTooOld { release });
    }
    let scope = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope").ok();
    let status = std::fs::read_to_string("/proc/self/status").ok();
    if let Some(scope) = scope.as_deref().and_then(|s| s.trim().parse::<u8>().ok())
        && yama_denies(scope, status.as_deref().is_some_and(has_cap_sys_ptrace))
    {
        return Err(Unavailable::MemoryReadDenied { scope });
    }
    let program = crate::filter::allow_all_program();
    let prog = libc::sock_fprog {
        len: u16::try_from(program.len()).unwrap_or(u16::MAX),
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: the child only makes raw system calls (async-signal-safe) and leaves with `_exit`.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Unavailable::ProbeFailed { errno: errno() });
    }
    if pid == 0 {
        // SAFETY: raw syscalls in the forked child; `prog` was built before the fork.
        unsafe {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                libc::_exit(exit_code(errno()));
            }
            let fd = libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
                &raw const prog,
            );
            libc::_exit(if fd < 0 { exit_code(errno()) } else { 0 });
        }
    }
    let mut status: c_int = 0;
    loop {
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid, &raw mut status, 0) };
        if r == pid {
            break;
        }
        let e = errno();
        if e != libc::EINTR {
            return Err(Unavailable::ProbeFailed { errno: e });
        }
    }
    if !libc::WIFEXITED(status) {
        return Err(Unavailable::ProbeFailed {
            errno: libc::ECHILD,
        });
    }
    match libc::WEXITSTATUS(status) {
        0 => Ok(()),
        code if code == libc::EBUSY => Err(Unavailable::ListenerHeld),
        code => Err(Unavailable::SeccompDenied { errno: code }),
    }
}

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Exit codes carry the errno (all errno values are below 256); 0 is reserved for success.
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
fn exit_code(errno: i32) -> c_int {
    if (1..256).contains(&errno) {
        errno
    } else {
        libc::EIO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_versions() {
        assert_eq!(parse_version("6.18.44-fc-v769"), Some((6, 18)));
        assert_eq!(parse_version("5.4.0-150-generic"), Some((5, 4)));
        assert_eq!(parse_version("garbage"), None);
        assert!(parse_version("5.4.0").expect("parses") < MIN_KERNEL);
    }

    #[test]
    fn yama_scopes() {
        assert!(!yama_denies(0, false));
        assert!(!yama_denies(1, false));
        assert!(yama_denies(2, false));
        assert!(!yama_denies(2, true));
        assert!(yama_denies(3, true));
        assert!(has_cap_sys_ptrace("Name:\tx\nCapEff:\t000001ffffffffff\n"));
        assert!(!has_cap_sys_ptrace("CapEff:\t0000000000000000\n"));
        assert!(!has_cap_sys_ptrace("no caps line"));
    }

    #[test]
    fn reasons_read_well() {
        assert_eq!(
            Unavailable::SeccompDenied { errno: libc::EPERM }.to_string(),
            "file-access tracing unavailable: seccomp user notification denied (Operation not permitted (os error 1))"
        );
    }
}
