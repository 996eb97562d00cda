//! The result of a traced run: which paths were touched how, and which network peers were contacted.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// One way a process touched a path.
///
/// The tracer sees system calls on their way *in*, before the kernel runs them, so a kind says what
/// was attempted, not whether it succeeded: a [`AccessKind::Read`] of a file that does not exist is
/// recorded just like one of a file that does (that is how "looked for but absent" inputs are found);
/// the caller checks what is on disk after the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AccessKind {
    /// Opened for reading (`open`/`openat`/`openat2` with `O_RDONLY`, or `O_RDWR` without `O_TRUNC`
    /// and not an exclusive create). May name a directory when a program opens one without
    /// `O_DIRECTORY`.
    Read,
    /// Opened for writing (`O_WRONLY`, `O_RDWR`, `O_CREAT`, `O_TRUNC`, `creat`), `truncate`, or the new
    /// name of `link`/`linkat`/`symlink`/`symlinkat`. `O_RDWR` without `O_TRUNC` records both
    /// [`AccessKind::Read`] and this (old content may have been read), except for `O_CREAT|O_EXCL`.
    Write,
    /// Metadata or existence probe: the `stat` family, `statx`, `access`/`faccessat(2)`, `chdir`, an
    /// `O_PATH` open, a read-only `O_DIRECTORY` open (the directory's entries are
    /// [`AccessKind::List`]), or the existing name passed to `link`/`linkat`.
    Stat,
    /// The target of a symbolic link was read (`readlink`/`readlinkat`).
    ReadLink,
    /// A directory's entries were listed (`getdents`/`getdents64` on an open directory).
    List,
    /// The path was passed to `execve`/`execveat` (including the `PATH` candidates a shell tries).
    Exec,
    /// The source of `rename`/`renameat`/`renameat2`.
    RenameFrom,
    /// The target of `rename`/`renameat`/`renameat2`.
    RenameTo,
    /// Removed with `unlink`/`unlinkat`/`rmdir`.
    Remove,
    /// Created as a directory with `mkdir`/`mkdirat`.
    CreateDir,
}

impl AccessKind {
    /// Every kind, in declaration order.
    pub const ALL: [AccessKind; 10] = [
        AccessKind::Read,
        AccessKind::Write,
        AccessKind::Stat,
        AccessKind::ReadLink,
        AccessKind::List,
        AccessKind::Exec,
        AccessKind::RenameFrom,
        AccessKind::RenameTo,
        AccessKind::Remove,
        AccessKind::CreateDir,
    ];

    fn bit(self) -> u16 {
        1 << (self as u16)
    }

    /// Whether this kind changes the file system (write, rename source or target, remove, mkdir).
    pub fn is_mutation(self) -> bool {
        matches!(
            self,
            AccessKind::Write
                | AccessKind::RenameFrom
                | AccessKind::RenameTo
                | AccessKind::Remove
                | AccessKind::CreateDir
        )
    }

    /// Whether this kind only observes the file system (read, stat, readlink, list, exec): the
    /// candidates for automatic inputs.
    pub fn is_observation(self) -> bool {
        !self.is_mutation()
    }

    /// A short lowercase name (`read`, `write`, `stat`, `readlink`, `list`, `exec`, `rename-from`,
    /// `rename-to`, `remove`, `mkdir`).
    pub fn name(self) -> &'static str {
        match self {
            AccessKind::Read => "read",
            AccessKind::Write => "write",
            AccessKind::Stat => "stat",
            AccessKind::ReadLink => "readlink",
            AccessKind::List => "list",
            AccessKind::Exec => "exec",
            AccessKind::RenameFrom => "rename-from",
            AccessKind::RenameTo => "rename-to",
            AccessKind::Remove => "remove",
            AccessKind::CreateDir => "mkdir",
        }
    }
}

/// A set of [`AccessKind`]s (a bit set; `Default` is empty).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct AccessKinds(u16);

impl AccessKinds {
    /// The empty set.
    pub const EMPTY: AccessKinds = AccessKinds(0);

    /// Whether `kind` is in the set.
    pub fn contains(self, kind: AccessKind) -> bool {
        self.0 & kind.bit() != 0
    }

    /// Adds `kind` to the set.
    pub fn insert(&mut self, kind: AccessKind) {
        self.0 |= kind.bit();
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether any kind in the set changes the file system (see [`AccessKind::is_mutation`]).
    pub fn has_mutation(self) -> bool {
        self.iter().any(AccessKind::is_mutation)
    }

    /// Whether any kind in the set only observes (see [`AccessKind::is_observation`]).
    pub fn has_observation(self) -> bool {
        self.iter().any(AccessKind::is_observation)
    }

    /// The kinds in the set, in declaration order.
    pub fn iter(self) -> impl Iterator<Item = AccessKind> {
        AccessKind::ALL
            .into_iter()
            .filter(move |k| self.contains(*k))
    }
}

impl FromIterator<AccessKind> for AccessKinds {
    fn from_iter<I: IntoIterator<Item = AccessKind>>(iter: I) -> Self {
        let mut set = AccessKinds::EMPTY;
        for kind in iter {
            set.insert(kind);
        }
        set
    }
}

impl fmt::Debug for AccessKinds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.iter().map(AccessKind::name))
            .finish()
    }
}

/// One `connect(2)` of an `AF_INET`/`AF_INET6` socket seen in the tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetworkAccess {
    /// The peer address as passed to `connect` (IPv4-mapped IPv6 addresses are kept as given).
    pub addr: SocketAddr,
    /// Whether the peer is this machine: `127.0.0.0/8`, `::1`, their IPv4-mapped forms, or the
    /// unspecified address (which Linux connects to locally).
    pub loopback: bool,
}

impl NetworkAccess {
    /// Classifies `addr` (see [`NetworkAccess::loopback`]).
    pub fn new(addr: SocketAddr) -> NetworkAccess {
        let loopback = match addr.ip() {
            IpAddr::V4(ip) => ip.is_loopback() || ip.is_unspecified(),
            IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
                Some(v4) => v4.is_loopback() || v4.is_unspecified(),
                None => ip.is_loopback() || ip.is_unspecified(),
            },
        };
        NetworkAccess { addr, loopback }
    }
}

/// Why a traced system call could not be turned into a path; counts per reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unresolved {
    /// The path argument could not be read from the tracee's memory (the process exited, is not
    /// dumpable, or passed a bad pointer).
    pub memory: u64,
    /// A relative path's base (`/proc/PID/cwd` or `/proc/PID/fd/N`) could not be read, or the
    /// directory fd does not name a directory path (a socket, an anonymous inode, …).
    pub base: u64,
    /// The notification was withdrawn before it could be checked (the process died or was
    /// interrupted by a signal mid-call; an interrupted call is usually retried and seen again).
    pub stale: u64,
    /// A system call from a foreign ABI (32-bit x86 or x32 on x86-64), which the tracer does not decode.
    pub foreign_abi: u64,
}

impl Unresolved {
    /// The sum of all counts.
    pub fn total(&self) -> u64 {
        self.memory + self.base + self.stale + self.foreign_abi
    }
}

/// Everything a traced process tree did that the tracer understood.
///
/// Paths are absolute and lexically normalised (no `.`/`..` components, no trailing slash, `..` at
/// `/` stays at `/`); symbolic links are *not* resolved, a path is recorded as the program named it
/// (made absolute against its cwd or directory fd). Non-UTF-8 paths are kept byte-exact.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessLog {
    pub(crate) paths: BTreeMap<PathBuf, AccessKinds>,
    pub(crate) network: Vec<NetworkAccess>,
    pub(crate) unresolved: Unresolved,
    pub(crate) notifications: u64,
}

impl AccessLog {
    /// Every path touched, with how, sorted by path.
    pub fn paths(&self) -> &BTreeMap<PathBuf, AccessKinds> {
        &self.paths
    }

    /// How `path` (absolute, normalised) was touched; empty if not at all.
    pub fn get(&self, path: impl AsRef<Path>) -> AccessKinds {
        self.paths.get(path.as_ref()).copied().unwrap_or_default()
    }

    /// Every distinct peer an `AF_INET`/`AF_INET6` socket tried to `connect` to, in first-seen order.
    pub fn network(&self) -> &[NetworkAccess] {
        &self.network
    }

    /// The first connect attempt to a non-loopback peer, if any (the run had a network side effect).
    pub fn non_loopback_connect(&self) -> Option<&NetworkAccess> {
        self.network.iter().find(|n| !n.loopback)
    }

    /// Traced calls whose path or peer could not be determined, by reason.
    pub fn unresolved(&self) -> Unresolved {
        self.unresolved
    }

    /// How many seccomp notifications the supervisor handled (one per traced system call).
    pub fn notifications(&self) -> u64 {
        self.notifications
    }

    #[cfg_attr(
        not(all(
            target_os = "linux",
            any(target_arch = "x86_64", target_arch = "aarch64")
        )),
        allow(dead_code, reason = "only the Linux supervisor records")
    )]
    pub(crate) fn record_connect(&mut self, addr: SocketAddr) {
        let access = NetworkAccess::new(addr);
        if !self.network.contains(&access) {
            self.network.push(access);
        }
    }
}

/// Collects an [`AccessLog`] on the supervisor thread: paths go into a hash map keyed by their raw
/// bytes (comparing `Path`s component by component in a `BTreeMap` was the supervisor's hottest
/// code) and are sorted once at the end. A path already seen costs no allocation.
#[cfg_attr(
    not(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )),
    allow(dead_code, reason = "only the Linux supervisor records")
)]
#[derive(Default)]
pub(crate) struct Recorder {
    paths: HashMap<Box<[u8]>, AccessKinds>,
    pub(crate) log: AccessLog,
}

#[cfg_attr(
    not(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )),
    allow(dead_code, reason = "only the Linux supervisor records")
)]
impl Recorder {
    /// Adds `kind` for the absolute, normalised path `path` (raw bytes).
    pub(crate) fn record(&mut self, path: &[u8], kind: AccessKind) {
        if let Some(kinds) = self.paths.get_mut(path) {
            kinds.insert(kind);
        } else {
            let mut kinds = AccessKinds::EMPTY;
            kinds.insert(kind);
            self.paths.insert(path.into(), kinds);
        }
    }

    pub(crate) fn finish(mut self) -> AccessLog {
        self.log.paths = self
            .paths
            .into_iter()
            .map(|(p, k)| (path_from_bytes(p), k))
            .collect();
        self.log
    }
}

#[cfg(unix)]
fn path_from_bytes(bytes: Box<[u8]>) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(bytes.into_vec()))
}

#[cfg(not(unix))]
fn path_from_bytes(bytes: Box<[u8]>) -> PathBuf {
    PathBuf::from(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_set_roundtrip() {
        let set: AccessKinds = [AccessKind::Read, AccessKind::Remove].into_iter().collect();
        assert!(set.contains(AccessKind::Read));
        assert!(!set.contains(AccessKind::Write));
        assert!(set.has_mutation());
        assert!(set.has_observation());
        assert!(!AccessKinds::from_iter([AccessKind::Write]).has_observation());
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            vec![AccessKind::Read, AccessKind::Remove]
        );
        assert_eq!(format!("{set:?}"), r#"{"read", "remove"}"#);
    }

    #[test]
    fn loopback_classification() {
        for (addr, loopback) in [
            ("127.0.0.1:80", true),
            ("127.9.9.9:80", true),
            ("0.0.0.0:80", true),
            ("[::1]:80", true),
            ("[::ffff:127.0.0.1]:80", true),
            ("10.0.0.1:80", false),
            ("[2001:db8::1]:443", false),
            ("[::ffff:10.0.0.1]:80", false),
        ] {
            let addr: SocketAddr = addr.parse().expect("test address parses");
            assert_eq!(NetworkAccess::new(addr).loopback, loopback, "{addr}");
        }
    }
}
