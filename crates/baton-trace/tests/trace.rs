//! Integration tests: real processes (shells, coreutils, a statically linked Rust binary) traced
//! through seccomp user notification. Linux only.
#![cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]

use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use baton_trace::{AccessKind, AccessLog, NetworkAccess};

/// The only place these tests create a `Command`.
#[expect(
    clippy::disallowed_methods,
    reason = "baton-trace tests spawn directly until baton-exec grows a pre_exec hook"
)]
fn command(program: impl AsRef<OsStr>) -> Command {
    Command::new(program)
}

/// Runs `cmd` traced; waits for the child, then finishes the supervisor.
fn trace(mut cmd: Command) -> (Output, AccessLog) {
    let (hook, supervisor) =
        baton_trace::start().expect("tracing is available on the test machine");
    // SAFETY: the hook only makes async-signal-safe system calls in the forked child.
    unsafe { cmd.pre_exec(hook.into_pre_exec()) };
    let output = cmd.output().expect("spawn traced command");
    drop(cmd);
    let log = supervisor.finish().expect("supervisor finishes");
    (output, log)
}

fn trace_ok(cmd: Command) -> AccessLog {
    let (output, log) = trace(cmd);
    assert!(
        output.status.success(),
        "traced command failed: {:?}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    log
}

fn sh(dir: &Path, script: &str) -> Command {
    let mut cmd = command("sh");
    cmd.arg("-c").arg(script).current_dir(dir);
    cmd
}

/// A temp dir by its canonical path (what `/proc/PID/cwd` reports).
fn workdir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().canonicalize().expect("canonical tempdir");
    (dir, path)
}

fn assert_kind(log: &AccessLog, path: &Path, kind: AccessKind) {
    assert!(
        log.get(path).contains(kind),
        "{} lacks {kind:?}; it has {:?}; log: {:#?}",
        path.display(),
        log.get(path),
        log.paths()
    );
}

fn exec_of(log: &AccessLog, name: &str) -> bool {
    log.paths()
        .iter()
        .any(|(p, k)| p.file_name() == Some(OsStr::new(name)) && k.contains(AccessKind::Exec))
}

#[test]
fn tracing_is_available_here() {
    assert_eq!(baton_trace::is_available(), Ok(()));
}

#[test]
fn shell_pipeline_reads_and_writes() {
    let (_guard, dir) = workdir();
    std::fs::write(dir.join("a.txt"), "hello\n").expect("write input");
    let log = trace_ok(sh(&dir, "cat a.txt | tr a-z A-Z > b.txt"));
    assert_eq!(
        std::fs::read_to_string(dir.join("b.txt")).expect("output exists"),
        "HELLO\n"
    );
    assert_kind(&log, &dir.join("a.txt"), AccessKind::Read);
    assert!(!log.get(dir.join("a.txt")).has_mutation());
    assert_kind(&log, &dir.join("b.txt"), AccessKind::Write);
    assert!(!log.get(dir.join("b.txt")).contains(AccessKind::Read));
    assert!(
        exec_of(&log, "cat") && exec_of(&log, "tr"),
        "{:#?}",
        log.paths()
    );
    assert_eq!(log.unresolved().total(), 0, "{:?}", log.unresolved());
    assert!(log.notifications() > 0);
    assert!(log.network().is_empty());
}

#[test]
fn forked_subshells_and_background_jobs_are_traced() {
    let (_guard, dir) = workdir();
    std::fs::write(dir.join("a"), "a").expect("write a");
    std::fs::write(dir.join("b"), "b").expect("write b");
    let log = trace_ok(sh(&dir, "(cat a > out1) & (cat b > out2); wait"));
    assert_kind(&log, &dir.join("a"), AccessKind::Read);
    assert_kind(&log, &dir.join("b"), AccessKind::Read);
    assert_kind(&log, &dir.join("out1"), AccessKind::Write);
    assert_kind(&log, &dir.join("out2"), AccessKind::Write);
}

#[test]
fn exec_chain_is_followed() {
    let (_guard, dir) = workdir();
    std::fs::write(dir.join("deep.txt"), "x").expect("write input");
    let log = trace_ok(sh(&dir, "exec sh -c 'exec env cat deep.txt'"));
    assert_kind(&log, &dir.join("deep.txt"), AccessKind::Read);
    assert!(
        exec_of(&log, "env") && exec_of(&log, "cat"),
        "{:#?}",
        log.paths()
    );
}

#[test]
fn absent_paths_that_are_probed_are_recorded() {
    let (_guard, dir) = workdir();
    let log = trace_ok(sh(
        &dir,
        "test -e missing; [ -f sub/also-missing ]; cat nothing-here 2>/dev/null; true",
    ));
    assert_kind(&log, &dir.join("missing"), AccessKind::Stat);
    assert_kind(&log, &dir.join("sub/also-missing"), AccessKind::Stat);
    assert_kind(&log, &dir.join("nothing-here"), AccessKind::Read);
    assert!(!dir.join("missing").exists());
}

#[test]
fn directory_listing_is_recorded() {
    let (_guard, dir) = workdir();
    std::fs::create_dir(dir.join("listed")).expect("mkdir");
    std::fs::write(dir.join("listed/one"), "1").expect("write");
    let log = trace_ok(sh(&dir, "ls listed > /dev/null"));
    assert_kind(&log, &dir.join("listed"), AccessKind::List);
    assert!(!log.get(dir.join("listed/one")).contains(AccessKind::Read));
}

#[test]
fn relative_paths_resolve_against_cwd_after_cd() {
    let (_guard, dir) = workdir();
    std::fs::create_dir(dir.join("sub")).expect("mkdir");
    std::fs::write(dir.join("top.txt"), "t").expect("write");
    std::fs::write(dir.join("sub/rel.txt"), "r").expect("write");
    let script = "cd sub && cat ../top.txt ./rel.txt > ../joined.txt; (: > ../no-dir/../never.txt) 2>/dev/null; true";
    let log = trace_ok(sh(&dir, script));
    assert_kind(&log, &dir.join("top.txt"), AccessKind::Read);
    assert_kind(&log, &dir.join("sub/rel.txt"), AccessKind::Read);
    assert_kind(&log, &dir.join("joined.txt"), AccessKind::Write);
    // `no-dir` does not exist, so that open fails; the attempt is still recorded, normalised.
    assert_kind(&log, &dir.join("never.txt"), AccessKind::Write);
    assert!(!dir.join("never.txt").exists());
}

#[test]
fn rename_unlink_and_mkdir_are_recorded() {
    let (_guard, dir) = workdir();
    std::fs::write(dir.join("a.txt"), "a").expect("write");
    let log = trace_ok(sh(
        &dir,
        "mkdir d && mv a.txt d/moved.txt && rm d/moved.txt && rmdir d",
    ));
    assert_kind(&log, &dir.join("d"), AccessKind::CreateDir);
    assert_kind(&log, &dir.join("a.txt"), AccessKind::RenameFrom);
    assert_kind(&log, &dir.join("d/moved.txt"), AccessKind::RenameTo);
    assert_kind(&log, &dir.join("d/moved.txt"), AccessKind::Remove);
    assert_kind(&log, &dir.join("d"), AccessKind::Remove);
    assert!(!dir.join("d").exists());
}

#[test]
fn wait_tree_includes_descendants_that_outlive_the_child() {
    let (_guard, dir) = workdir();
    std::fs::write(dir.join("late.txt"), "late").expect("write");
    // The fifo makes the background `cat` block until the shell has exited, so it surely outlives it.
    let mut cmd = sh(
        &dir,
        "mkfifo gate; (cat gate late.txt > copy.txt) & exec 3>gate; exit 0",
    );
    let (hook, supervisor) = baton_trace::start().expect("tracing available");
    // SAFETY: the hook only makes async-signal-safe system calls in the forked child.
    unsafe { cmd.pre_exec(hook.into_pre_exec()) };
    let status = cmd.status().expect("spawn");
    drop(cmd);
    assert!(status.success());
    let log = supervisor
        .wait_tree()
        .expect("supervisor waits for the tree");
    assert_kind(&log, &dir.join("late.txt"), AccessKind::Read);
    assert_kind(&log, &dir.join("copy.txt"), AccessKind::Write);
    assert_eq!(
        std::fs::read_to_string(dir.join("copy.txt")).expect("copied"),
        "late"
    );
}

#[test]
fn finishing_without_a_child_gives_an_empty_log() {
    let (hook, supervisor) = baton_trace::start().expect("tracing available");
    drop(hook);
    let log = supervisor.finish().expect("finish");
    assert!(log.paths().is_empty());
    assert_eq!(log.notifications(), 0);
    let (hook, supervisor) = baton_trace::start().expect("tracing available");
    drop(hook);
    assert_eq!(
        supervisor.wait_tree().expect("wait_tree").notifications(),
        0
    );
}

/// Compiles `tests/support/static_helper.rs` with a statically linked C runtime, once per test binary.
fn static_helper() -> &'static Path {
    static HELPER: OnceLock<PathBuf> = OnceLock::new();
    HELPER.get_or_init(|| {
        let source = include_str!("support/static_helper.rs");
        let mut hasher = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(source, &mut hasher);
        let name = format!(
            "baton-trace-static-helper-{:016x}",
            std::hash::Hasher::finish(&hasher)
        );
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let done = dir.join(&name);
        if done.exists() {
            return done;
        }
        // Built under a per-process name and renamed, so concurrent test runs never see a partial file.
        let src = dir.join(format!("{name}-{}.rs", std::process::id()));
        let out = dir.join(format!("{name}-{}", std::process::id()));
        std::fs::write(&src, source).expect("write helper source");
        let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
        let output = command(rustc)
            .args([
                "--edition",
                "2021",
                "-C",
                "target-feature=+crt-static",
                "-C",
                "debuginfo=0",
                "-o",
            ])
            .arg(&out)
            .arg(&src)
            .output()
            .expect("run rustc");
        assert!(
            output.status.success(),
            "rustc failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            !has_interpreter(&out),
            "{} is dynamically linked",
            out.display()
        );
        std::fs::rename(&out, &done).expect("rename helper into place");
        std::fs::remove_file(&src).expect("remove helper source");
        done
    })
}

/// Whether the ELF64 file has a `PT_INTERP` program header (i.e. is dynamically linked).
fn has_interpreter(path: &Path) -> bool {
    let elf = std::fs::read(path).expect("read ELF");
    assert_eq!(&elf[..5], b"\x7fELF\x02", "an ELF64 file");
    let u16_at = |o: usize| usize::from(u16::from_le_bytes([elf[o], elf[o + 1]]));
    let phoff = usize::try_from(u64::from_le_bytes(
        elf[0x20..0x28].try_into().expect("8 bytes"),
    ))
    .expect("fits");
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let at = phoff + i * phentsize;
        u32::from_le_bytes(elf[at..at + 4].try_into().expect("4 bytes")) == 3
    })
}

#[test]
fn statically_linked_binary_with_threads_children_and_dirfd() {
    let helper = static_helper();
    let (_guard, dir) = workdir();
    std::fs::create_dir(dir.join("sub")).expect("mkdir");
    for name in [
        "in.txt",
        "in2.txt",
        "threaded.txt",
        "child.txt",
        "sub/rel.txt",
    ] {
        std::fs::write(dir.join(name), name).expect("write input");
    }
    let mut cmd = command(helper);
    cmd.current_dir(&dir).args([
        "read=in.txt",
        "write=out.txt",
        "stat=absent.txt",
        "list=sub",
        "thread-read=threaded.txt",
        "openat=sub:rel.txt",
        "openat2=sub/../in2.txt",
        "child=read=child.txt",
    ]);
    let log = trace_ok(cmd);
    assert_kind(&log, &dir.join("in.txt"), AccessKind::Read);
    assert_kind(&log, &dir.join("out.txt"), AccessKind::Write);
    assert_kind(&log, &dir.join("absent.txt"), AccessKind::Stat);
    assert_kind(&log, &dir.join("sub"), AccessKind::List);
    assert_kind(&log, &dir.join("threaded.txt"), AccessKind::Read);
    assert_kind(&log, &dir.join("sub/rel.txt"), AccessKind::Read);
    assert_kind(&log, &dir.join("in2.txt"), AccessKind::Read);
    assert_kind(&log, &dir.join("child.txt"), AccessKind::Read);
    assert_kind(&log, helper, AccessKind::Exec);
    // A static binary never asks the dynamic loader for anything.
    let loader = log.paths().keys().find(|p| {
        let s = p.to_string_lossy();
        s.contains("ld.so") || s.contains("libc.so")
    });
    assert_eq!(loader, None);
}

#[test]
fn null_path_is_not_an_unresolved_access() {
    let (_guard, dir) = workdir();
    let mut cmd = command(static_helper());
    cmd.current_dir(&dir).arg("access-null=_");
    let log = trace_ok(cmd);
    assert_eq!(log.unresolved().total(), 0, "{:?}", log.unresolved());
}

#[test]
fn loopback_connect_is_recorded_as_loopback() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let (_guard, dir) = workdir();
    let mut cmd = command(static_helper());
    cmd.current_dir(&dir).arg(format!("connect={addr}"));
    let log = trace_ok(cmd);
    let (mut conn, _) = listener.accept().expect("the traced child connected");
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut conn, &mut got).expect("read");
    assert_eq!(got, b"hi");
    assert_eq!(
        log.network(),
        &[NetworkAccess {
            addr,
            loopback: true
        }]
    );
    assert_eq!(log.non_loopback_connect(), None);
}

/// Helper for the two tests below: prints the availability verdict of the process it runs in.
#[test]
#[ignore = "run by the nested, sandboxed and disable-switch availability tests"]
fn availability_probe_child() {
    match baton_trace::is_available() {
        Ok(()) => println!("AVAILABILITY=ok"),
        Err(reason) => println!("AVAILABILITY={reason:?} REASON={reason}"),
    }
}

fn probe_command() -> Command {
    let mut cmd = command(std::env::current_exe().expect("test binary path"));
    cmd.args([
        "--exact",
        "availability_probe_child",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    cmd.env_remove(baton_trace::DISABLE_ENV);
    cmd
}

#[test]
fn nested_tracer_reports_listener_held() {
    let (output, log) = trace(probe_command());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("AVAILABILITY=ListenerHeld"), "{stdout}");
    assert!(
        stdout.contains("already installed by an ancestor"),
        "{stdout}"
    );
    // The nested test binary itself was traced.
    assert_kind(
        &log,
        &std::env::current_exe().expect("exe"),
        AccessKind::Exec,
    );
}

#[test]
fn disable_switch_reports_disabled() {
    let mut cmd = probe_command();
    cmd.env(baton_trace::DISABLE_ENV, "1");
    let output = cmd.output().expect("spawn probe");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("AVAILABILITY=Disabled"), "{stdout}");
    let mut cmd = probe_command();
    cmd.env(baton_trace::DISABLE_ENV, "0");
    let output = cmd.output().expect("spawn probe");
    assert!(String::from_utf8_lossy(&output.stdout).contains("AVAILABILITY=ok"));
}

/// Helper for the test below: traces a shell that makes a run of calls from its one thread, then
/// waits on stdin, and prints the scheduling policy of the supervisor thread (the only
/// `baton-trace` thread of this process) while it waits.
#[test]
#[ignore = "run by supervisor_is_realtime_when_permitted"]
fn supervisor_policy_child() {
    use std::io::{BufRead, Write};
    let mut cmd = command("sh");
    // Twenty `stat` calls from the shell's only thread (`[` is a builtin).
    let probes = "for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do \
                  [ -e /nonexistent-baton-$i ]; done";
    cmd.args(["-c", &format!("{probes}; echo ready; read line")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let (hook, supervisor) = baton_trace::start().expect("tracing available");
    // SAFETY: the hook only makes async-signal-safe system calls in the forked child.
    unsafe { cmd.pre_exec(hook.into_pre_exec()) };
    let mut child = cmd.spawn().expect("spawn sh");
    drop(cmd);
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("read ready");
    assert_eq!(line, "ready\n");
    // Every probe was answered before `ready`, so the supervisor has switched by now.
    let mut policies = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("list threads") {
        let task = task.expect("thread entry").path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if comm.trim() == "baton-trace" {
            let tid: libc::pid_t = task
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse().ok())
                .expect("numeric tid");
            // SAFETY: plain query of a thread of this process.
            policies.push(unsafe { libc::sched_getscheduler(tid) });
        }
    }
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"done\n")
        .expect("write stdin");
    assert!(child.wait().expect("wait sh").success());
    assert!(exec_of(&supervisor.finish().expect("finish"), "sh"));
    println!("POLICIES={policies:?}");
}

/// A run of calls from one thread switches the supervisor to `SCHED_FIFO` when the process may use
/// it (root, `CAP_SYS_NICE`, `RLIMIT_RTPRIO`), and never with `BATON_TRACE_REALTIME=0`.
#[test]
fn supervisor_is_realtime_when_permitted() {
    // Whether this process may use SCHED_FIFO at all, tried on a scratch thread.
    let permitted = std::thread::spawn(|| {
        let param = libc::sched_param { sched_priority: 1 };
        // SAFETY: changes only the calling scratch thread, which exits right after.
        unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &raw const param) == 0 }
    })
    .join()
    .expect("scratch thread");
    let policies = |realtime: Option<&str>| {
        let mut cmd = command(std::env::current_exe().expect("test binary path"));
        cmd.args([
            "--exact",
            "supervisor_policy_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ]);
        match realtime {
            Some(v) => cmd.env(baton_trace::REALTIME_ENV, v),
            None => cmd.env_remove(baton_trace::REALTIME_ENV),
        };
        let output = cmd.output().expect("spawn policy child");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(output.status.success(), "{stdout}");
        stdout
            .lines()
            .find_map(|l| l.split_once("POLICIES=").map(|(_, v)| v.trim().to_owned()))
            .unwrap_or_else(|| panic!("no POLICIES line in {stdout}"))
    };
    let fifo = libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK;
    let expected = if permitted { fifo } else { libc::SCHED_OTHER };
    assert_eq!(policies(None), format!("[{expected}]"));
    assert_eq!(policies(Some("0")), format!("[{}]", libc::SCHED_OTHER));
}

#[test]
fn a_hook_traces_only_one_child() {
    let (_guard, dir) = workdir();
    let mut cmd = sh(&dir, "true");
    let (hook, supervisor) = baton_trace::start().expect("tracing available");
    // SAFETY: the hook only makes async-signal-safe system calls in the forked child.
    unsafe { cmd.pre_exec(hook.into_pre_exec()) };
    assert!(cmd.status().expect("first spawn").success());
    let second = cmd
        .status()
        .expect_err("a second child must not run with the same hook");
    assert_eq!(second.raw_os_error(), Some(libc::EALREADY), "{second}");
    drop(cmd);
    assert!(exec_of(&supervisor.finish().expect("finish"), "sh"));
}

#[test]
fn links_readlink_truncate_and_cd_are_recorded() {
    let (_guard, dir) = workdir();
    std::fs::write(dir.join("target.txt"), "t").expect("write");
    let script = "ln -s target.txt sym && ln target.txt hard && readlink sym > /dev/null \
        && truncate -s 0 hard && (cd nowhere 2>/dev/null; true)";
    let log = trace_ok(sh(&dir, script));
    assert_kind(&log, &dir.join("sym"), AccessKind::Write);
    assert_kind(&log, &dir.join("sym"), AccessKind::ReadLink);
    assert_kind(&log, &dir.join("hard"), AccessKind::Write);
    assert_kind(&log, &dir.join("target.txt"), AccessKind::Stat);
    assert_kind(&log, &dir.join("nowhere"), AccessKind::Stat);
}

#[test]
fn unresolvable_calls_are_counted() {
    let (_guard, dir) = workdir();
    let mut cmd = command(static_helper());
    cmd.current_dir(&dir).arg("unresolvable=_");
    let log = trace_ok(cmd);
    let unresolved = log.unresolved();
    assert_eq!(
        (unresolved.base, unresolved.memory),
        (1, 1),
        "{unresolved:?}"
    );
    assert_eq!(unresolved.total(), 2);
}

/// A classic seccomp program that makes `seccomp(2)` fail with `EPERM` and allows everything else,
/// like a container profile that forbids nested filters.
fn deny_seccomp_program() -> Vec<libc::sock_filter> {
    let ld = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    let jeq = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    let ret = (libc::BPF_RET | libc::BPF_K) as u16;
    let op = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    vec![
        op(ld, 0, 0, 0),
        op(
            jeq,
            0,
            1,
            u32::try_from(libc::SYS_seccomp).expect("small syscall number"),
        ),
        op(ret, 0, 0, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        op(ret, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

#[test]
fn sandbox_denying_seccomp_reports_denied() {
    let program = deny_seccomp_program();
    let mut cmd = probe_command();
    // SAFETY: the closure only calls prctl(2) on a program allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let prog = libc::sock_fprog {
                len: u16::try_from(program.len()).unwrap_or(u16::MAX),
                filter: program.as_ptr().cast_mut(),
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &raw const prog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let output = cmd.output().expect("spawn probe in the sandbox");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("AVAILABILITY=SeccompDenied { errno: 1 }"),
        "{stdout}"
    );
    assert!(
        stdout.contains("seccomp user notification denied"),
        "{stdout}"
    );
}
