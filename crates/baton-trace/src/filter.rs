//! The traced system calls and the classic-BPF seccomp program that routes them to the supervisor.
//!
//! Layout of `struct seccomp_data` (linux/seccomp.h): `nr` (i32) at 0, `arch` (u32) at 4,
//! `instruction_pointer` (u64) at 8, `args[6]` (u64 each) at 16. Only forward jumps are allowed.

use libc::{c_long, sock_filter};

/// A traced system call, independent of its number on the running architecture.
#[cfg_attr(
    not(target_arch = "x86_64"),
    allow(
        dead_code,
        reason = "the legacy calls (open, stat, rename, …) exist only on x86-64"
    )
)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sys {
    Open,
    OpenAt,
    OpenAt2,
    Creat,
    Stat,
    Lstat,
    NewFstatAt,
    Statx,
    Access,
    FaccessAt,
    FaccessAt2,
    Readlink,
    ReadlinkAt,
    Getdents,
    Getdents64,
    Execve,
    ExecveAt,
    Rename,
    RenameAt,
    RenameAt2,
    Unlink,
    UnlinkAt,
    Rmdir,
    Mkdir,
    MkdirAt,
    Truncate,
    Link,
    LinkAt,
    Symlink,
    SymlinkAt,
    Chdir,
    Connect,
}

/// `AUDIT_ARCH_*` of the native ABI (linux/audit.h).
#[cfg(target_arch = "x86_64")]
pub(crate) const NATIVE_ARCH: u32 = 0xC000_003E;
/// `AUDIT_ARCH_*` of the native ABI (linux/audit.h).
#[cfg(target_arch = "aarch64")]
pub(crate) const NATIVE_ARCH: u32 = 0xC000_00B7;

/// Syscall numbers with this bit set are the x32 ABI on x86-64 (same `arch` value).
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Every traced call with its number on this architecture.
pub(crate) const TRACED: &[(c_long, Sys)] = &[
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_open, Sys::Open),
    (libc::SYS_openat, Sys::OpenAt),
    (libc::SYS_openat2, Sys::OpenAt2),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_creat, Sys::Creat),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_stat, Sys::Stat),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_lstat, Sys::Lstat),
    (libc::SYS_newfstatat, Sys::NewFstatAt),
    (libc::SYS_statx, Sys::Statx),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_access, Sys::Access),
    (libc::SYS_faccessat, Sys::FaccessAt),
    (libc::SYS_faccessat2, Sys::FaccessAt2),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_readlink, Sys::Readlink),
    (libc::SYS_readlinkat, Sys::ReadlinkAt),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_getdents, Sys::Getdents),
    (libc::SYS_getdents64, Sys::Getdents64),
    (libc::SYS_execve, Sys::Execve),
    (libc::SYS_execveat, Sys::ExecveAt),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_rename, Sys::Rename),
    (libc::SYS_renameat, Sys::RenameAt),
    (libc::SYS_renameat2, Sys::RenameAt2),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_unlink, Sys::Unlink),
    (libc::SYS_unlinkat, Sys::UnlinkAt),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_rmdir, Sys::Rmdir),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_mkdir, Sys::Mkdir),
    (libc::SYS_mkdirat, Sys::MkdirAt),
    (libc::SYS_truncate, Sys::Truncate),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_link, Sys::Link),
    (libc::SYS_linkat, Sys::LinkAt),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_symlink, Sys::Symlink),
    (libc::SYS_symlinkat, Sys::SymlinkAt),
    (libc::SYS_chdir, Sys::Chdir),
    (libc::SYS_connect, Sys::Connect),
];

/// The traced call with number `nr`, if any.
pub(crate) fn sys_of(nr: i32) -> Option<Sys> {
    TRACED
        .iter()
        .find(|(n, _)| *n == c_long::from(nr))
        .map(|(_, s)| *s)
}

const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;

/// Offset of the low 32 bits of `args[i]` (little-endian).
const fn arg_lo(i: u32) -> u32 {
    16 + 8 * i
}

const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// A jump target while assembling.
#[derive(Clone, Copy)]
enum Target {
    Notify,
    /// The `AT_EMPTY_PATH` check on the flags argument with this index.
    EmptyPathCheck(u32),
}

/// Builds the filter program: foreign ABIs and every call in [`TRACED`] return
/// `SECCOMP_RET_USER_NOTIF`, except `newfstatat`/`statx` with `AT_EMPTY_PATH` in their flags (that is
/// `fstat` on an already open fd in glibc and Rust std, by far the most frequent call, and its file
/// was recorded when it was opened); everything else is allowed.
pub(crate) fn build_program() -> Vec<sock_filter> {
    let mut checks: Vec<(u32, Target)> = Vec::new();
    for (nr, sys) in TRACED {
        let target = match sys {
            Sys::NewFstatAt => Target::EmptyPathCheck(3),
            Sys::Statx => Target::EmptyPathCheck(2),
            _ => Target::Notify,
        };
        // Syscall numbers are small non-negative values; the BPF word is the `int nr` field.
        checks.push((*nr as u32, target));
    }

    let mut prog = vec![
        stmt(LD_W_ABS, OFF_ARCH),
        jump(JEQ_K, NATIVE_ARCH, 1, 0),
        stmt(RET_K, libc::SECCOMP_RET_USER_NOTIF),
        stmt(LD_W_ABS, OFF_NR),
    ];
    // Index of the first instruction after the checks: `RET ALLOW`, then `RET NOTIFY`, then the
    // `AT_EMPTY_PATH` blocks (4 instructions each: load, jset, allow, notify).
    #[cfg(target_arch = "x86_64")]
    let x32_checks = 1;
    #[cfg(not(target_arch = "x86_64"))]
    let x32_checks = 0;
    let first_check = prog.len() + x32_checks;
    let allow_at = first_check + checks.len();
    let notify_at = allow_at + 1;
    let block_at = |arg: u32| -> usize {
        // Blocks are emitted for args 3 then 2.
        notify_at + 1 + if arg == 3 { 0 } else { 4 }
    };
    let rel = |from: usize, to: usize| -> u8 {
        let off = to - (from + 1);
        u8::try_from(off).unwrap_or(u8::MAX)
    };

    #[cfg(target_arch = "x86_64")]
    {
        let at = prog.len();
        prog.push(jump(JSET_K, X32_SYSCALL_BIT, rel(at, notify_at), 0));
    }
    for (nr, target) in &checks {
        let at = prog.len();
        let to = match target {
            Target::Notify => notify_at,
            Target::EmptyPathCheck(arg) => block_at(*arg),
        };
        prog.push(jump(JEQ_K, *nr, rel(at, to), 0));
    }
    prog.push(stmt(RET_K, libc::SECCOMP_RET_ALLOW));
    prog.push(stmt(RET_K, libc::SECCOMP_RET_USER_NOTIF));
    for arg in [3, 2] {
        prog.push(stmt(LD_W_ABS, arg_lo(arg)));
        prog.push(jump(JSET_K, libc::AT_EMPTY_PATH as u32, 0, 1));
        prog.push(stmt(RET_K, libc::SECCOMP_RET_ALLOW));
        prog.push(stmt(RET_K, libc::SECCOMP_RET_USER_NOTIF));
    }
    debug_assert!(prog.len() < 256, "all jumps must fit in u8 offsets");
    prog
}

/// A program that allows everything (used by the availability probe).
pub(crate) fn allow_all_program() -> Vec<sock_filter> {
    vec![stmt(RET_K, libc::SECCOMP_RET_ALLOW)]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the program on a `seccomp_data` image, like the kernel's interpreter (subset).
    fn run(prog: &[sock_filter], nr: i32, arch: u32, args: [u64; 6]) -> u32 {
        let mut data = Vec::new();
        data.extend_from_slice(&nr.to_le_bytes());
        data.extend_from_slice(&arch.to_le_bytes());
        data.extend_from_slice(&0u64.to_le_bytes());
        for a in args {
            data.extend_from_slice(&a.to_le_bytes());
        }
        let mut acc = 0u32;
        let mut pc = 0usize;
        loop {
            let ins = prog[pc];
            pc += 1;
            match ins.code {
                LD_W_ABS => {
                    let k = ins.k as usize;
                    acc = u32::from_le_bytes(data[k..k + 4].try_into().expect("4 bytes"));
                }
                JEQ_K => pc += usize::from(if acc == ins.k { ins.jt } else { ins.jf }),
                JSET_K => pc += usize::from(if acc & ins.k != 0 { ins.jt } else { ins.jf }),
                RET_K => return ins.k,
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    #[test]
    fn routes_calls() {
        let prog = build_program();
        let notify = libc::SECCOMP_RET_USER_NOTIF;
        let allow = libc::SECCOMP_RET_ALLOW;
        for (nr, sys) in TRACED {
            let nr = i32::try_from(*nr).expect("small syscall number");
            assert_eq!(run(&prog, nr, NATIVE_ARCH, [0; 6]), notify, "{sys:?}");
        }
        let read = i32::try_from(libc::SYS_read).expect("small");
        assert_eq!(run(&prog, read, NATIVE_ARCH, [0; 6]), allow);
        assert_eq!(
            run(&prog, read, 0x4000_0003, [0; 6]),
            notify,
            "foreign arch"
        );
        let fstatat = i32::try_from(libc::SYS_newfstatat).expect("small");
        let empty = libc::AT_EMPTY_PATH as u64;
        assert_eq!(
            run(&prog, fstatat, NATIVE_ARCH, [0, 0, 0, empty, 0, 0]),
            allow
        );
        assert_eq!(
            run(&prog, fstatat, NATIVE_ARCH, [0, 0, 0, 0x100, 0, 0]),
            notify
        );
        let statx = i32::try_from(libc::SYS_statx).expect("small");
        assert_eq!(
            run(&prog, statx, NATIVE_ARCH, [0, 0, empty, 0, 0, 0]),
            allow
        );
        assert_eq!(run(&prog, statx, NATIVE_ARCH, [0, 0, 0, 0, 0, 0]), notify);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn x32_is_notified() {
        let prog = build_program();
        let nr = i32::try_from(libc::SYS_read).expect("small") | X32_SYSCALL_BIT as i32;
        assert_eq!(
            run(&prog, nr, NATIVE_ARCH, [0; 6]),
            libc::SECCOMP_RET_USER_NOTIF
        );
    }
}
