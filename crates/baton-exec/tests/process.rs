//! Real processes through the pipe path: ordering, exit codes, signals, groups, stdin, errors.

mod common;

use std::time::Duration;

use baton_exec::{
    CommandSpec, ExitStatus, ProcessEvent, ResolveError, Signal, SpawnError, SpawnOptions,
    StdinError, StdinMode, spawn, spawn_streaming,
};
use common::{collect, collect_after, first_line_pid, is_dead, sh, wait_pid_dead};

#[tokio::test]
async fn events_are_numbered_from_one_and_output_precedes_exit() {
    let (process, mut events) = spawn_streaming(&sh(
        "for i in 1 2 3 4 5; do echo line$i; done; echo oops >&2; echo tail; exit 3",
    ))
    .unwrap();
    let c = collect(&mut events).await;
    assert_eq!(c.stdout, b"line1\nline2\nline3\nline4\nline5\ntail\n");
    assert_eq!(c.stderr, b"oops\n");
    assert_eq!(c.status, Some(ExitStatus::Exited(3)));
    let exited_at = c
        .events
        .iter()
        .position(|e| matches!(e, ProcessEvent::Exited { .. }))
        .unwrap();
    assert!(
        c.events[..exited_at]
            .iter()
            .all(|e| matches!(e, ProcessEvent::Output { .. })),
        "everything the leader wrote comes before Exited: {:?}",
        c.events
    );
    assert_eq!(exited_at, c.events.len() - 2, "only Closed follows Exited");
    assert_eq!(process.wait().await, ExitStatus::Exited(3));
    assert_eq!(process.wait_closed().await, ExitStatus::Exited(3));
    assert!(process.is_closed());
    assert_eq!(process.last_seq(), c.events.len() as u64);
    assert!(process.take_events().is_none(), "taken once");
}

#[tokio::test]
async fn exit_codes_and_shell_codes() {
    for (script, want) in [("exit 0", 0), ("exit 7", 7), ("exit 255", 255)] {
        let (p, mut ev) = spawn_streaming(&sh(script)).unwrap();
        let c = collect(&mut ev).await;
        assert_eq!(c.status, Some(ExitStatus::Exited(want)));
        assert_eq!(p.wait().await.code(), Some(want));
        assert_eq!(p.wait().await.code_for_shell(), want);
        assert_eq!(p.wait().await.success(), want == 0);
    }
}

#[tokio::test]
async fn signals_reach_the_group_and_map_to_shell_codes() {
    for (signal, number) in [
        (Signal::Interrupt, libc::SIGINT),
        (Signal::Terminate, libc::SIGTERM),
        (Signal::Kill, libc::SIGKILL),
        (Signal::Hangup, libc::SIGHUP),
    ] {
        let spec = CommandSpec::new("sleep", "/")
            .arg("1000")
            .env("PATH", common::path());
        let (p, mut ev) = spawn_streaming(&spec).unwrap();
        p.signal(signal).unwrap();
        let c = collect(&mut ev).await;
        assert_eq!(c.status, Some(ExitStatus::Signaled(number)), "{signal:?}");
        assert_eq!(p.wait().await.code_for_shell(), 128 + number);
        assert_eq!(signal.number(), number);
        assert_eq!(Signal::from_name(signal.name()), Some(signal));
        // the group is gone now: signalling it again is not an error
        p.signal(signal).unwrap();
    }
}

#[tokio::test]
async fn interrupt_reaches_a_grandchild_in_the_group() {
    // `cat` runs as the shell's foreground child; once it echoed our ping it is certainly
    // running, and SIGINT to the group kills it and the shell.
    let spec = sh("echo $$; cat; echo survived").stdin(StdinMode::Piped);
    let (p, mut ev) = spawn_streaming(&spec).unwrap();
    let (pid, mut consumed) = common::read_pid_line(&mut ev).await;
    assert_eq!(pid, p.pid() as i32, "argv runs as the group leader");
    p.write_stdin(b"ping\n").await.unwrap();
    let mut echoed = Vec::new();
    while echoed != b"ping\n" {
        let Some(ProcessEvent::Output { chunk, .. }) = ev.recv().await else {
            panic!("expected cat's echo")
        };
        echoed.extend_from_slice(&chunk);
        consumed += 1;
    }
    p.signal(Signal::Interrupt).unwrap();
    let c = collect_after(&mut ev, consumed).await;
    assert!(!String::from_utf8_lossy(&c.stdout).contains("survived"));
    assert_eq!(c.status, Some(ExitStatus::Signaled(libc::SIGINT)));
}

#[tokio::test]
async fn terminate_kills_a_backgrounded_grandchild() {
    let (p, mut ev) = spawn_streaming(&sh("sleep 1000 & echo $!; wait")).unwrap();
    let ProcessEvent::Output { chunk, .. } = ev.recv().await.unwrap() else {
        panic!("expected the pid line")
    };
    let grandchild = first_line_pid(&chunk);
    assert!(!is_dead(grandchild));
    assert!(p.terminate(), "the leader was running");
    let c = collect_after(&mut ev, 1).await;
    assert_eq!(c.status, Some(ExitStatus::Signaled(libc::SIGKILL)));
    // Closed means every holder of the stdout pipe, the grandchild included, has exited
    // (or is exiting: the pidfd wait covers the last step of exit).
    wait_pid_dead(grandchild);
}

#[tokio::test]
async fn closed_waits_for_a_grandchild_that_outlives_the_leader() {
    let (p, mut ev) = spawn_streaming(&sh("sleep 1000 & echo $!")).unwrap();
    let mut grandchild = None;
    // Read until the leader's exit: the grandchild still holds stdout, so no Closed yet.
    loop {
        match ev.recv().await.unwrap() {
            ProcessEvent::Output { chunk, .. } => grandchild = Some(first_line_pid(&chunk)),
            ProcessEvent::Exited { status, .. } => {
                assert_eq!(status, ExitStatus::Exited(0));
                break;
            }
            ProcessEvent::Closed { .. } => panic!("closed while the grandchild holds stdout"),
        }
    }
    let grandchild = grandchild.unwrap();
    assert!(!p.is_closed());
    assert!(!is_dead(grandchild));
    assert!(!p.terminate(), "the leader had already exited");
    let last = ev.recv().await.unwrap();
    assert!(matches!(last, ProcessEvent::Closed { .. }), "{last:?}");
    assert!(ev.recv().await.is_none());
    wait_pid_dead(grandchild);
}

#[tokio::test]
async fn dropping_the_last_handle_kills_the_group() {
    let (p, mut ev) = spawn_streaming(&sh("sleep 1000 & echo $!; wait")).unwrap();
    let ProcessEvent::Output { chunk, .. } = ev.recv().await.unwrap() else {
        panic!("expected the pid line")
    };
    let grandchild = first_line_pid(&chunk);
    let clone = p.clone();
    drop(p);
    assert!(!is_dead(grandchild), "a clone is still alive");
    let mut sub = clone.subscribe();
    drop(clone);
    // The event consumers do not keep the process alive; they see it end.
    let mut saw_exit = false;
    loop {
        match sub.recv().await {
            Ok(ProcessEvent::Exited { status, .. }) => {
                assert_eq!(status, ExitStatus::Signaled(libc::SIGKILL));
                saw_exit = true;
            }
            Ok(ProcessEvent::Closed { .. }) => break,
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert!(saw_exit);
    wait_pid_dead(grandchild);
    let rest = collect_rest(&mut ev).await;
    assert!(matches!(rest.last(), Some(ProcessEvent::Closed { .. })));
}

async fn collect_rest(ev: &mut baton_exec::EventStream) -> Vec<ProcessEvent> {
    let mut v = Vec::new();
    while let Some(e) = ev.recv().await {
        v.push(e);
    }
    v
}

#[test]
fn runtime_shutdown_kills_the_group() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (process, grandchild) = rt.block_on(async {
        let p = spawn(&sh("sleep 1000 & echo $!; wait"), SpawnOptions::retained()).unwrap();
        let r = p
            .read(None, None, Some(Duration::from_secs(60)))
            .await
            .unwrap();
        (p, first_line_pid(&r.chunks[0].bytes))
    });
    let leader = process.pid() as i32;
    drop(rt);
    // The handle is still alive, but its runtime is gone: the group was killed.
    wait_pid_dead(grandchild);
    wait_pid_dead(leader);
    assert_eq!(
        process.try_wait(),
        Some(ExitStatus::Signaled(libc::SIGKILL))
    );
    assert!(process.is_closed());
    // readers do not wait for events that will never come
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let r = rt
        .block_on(process.read(Some(1), None, Some(Duration::from_secs(600))))
        .unwrap();
    assert!(r.closed && r.exited);
    assert_eq!(r.exit_code, Some(128 + libc::SIGKILL));
}

#[tokio::test]
async fn stdin_round_trip_with_cat() {
    let spec = CommandSpec::new("cat", "/")
        .env("PATH", common::path())
        .stdin(StdinMode::Piped);
    let (p, mut ev) = spawn_streaming(&spec).unwrap();
    p.write_stdin(b"hello\n").await.unwrap();
    p.write_stdin(b"").await.unwrap();
    p.write_stdin(&[0xff, 0x00, b'w', b'o', b'r', b'l', b'd'])
        .await
        .unwrap();
    p.close_stdin().await.unwrap();
    p.close_stdin().await.unwrap();
    assert!(matches!(
        p.write_stdin(b"late").await,
        Err(StdinError::Closed)
    ));
    let c = collect(&mut ev).await;
    assert_eq!(c.stdout, b"hello\n\xff\x00world");
    assert_eq!(c.status, Some(ExitStatus::Exited(0)));
}

#[tokio::test]
async fn stdin_to_an_exited_child_is_closed() {
    let spec = sh("exit 0").stdin(StdinMode::Piped);
    let (p, mut ev) = spawn_streaming(&spec).unwrap();
    collect(&mut ev).await;
    // Nobody reads the pipe any more: EPIPE (a large write so it cannot sit in the buffer).
    let big = vec![b'x'; 1 << 20];
    assert!(matches!(p.write_stdin(&big).await, Err(StdinError::Closed)));
}

#[tokio::test]
async fn stdin_not_piped() {
    let (p, mut ev) = spawn_streaming(&sh("cat")).unwrap();
    assert!(matches!(
        p.write_stdin(b"x").await,
        Err(StdinError::NotPiped)
    ));
    assert!(matches!(p.close_stdin().await, Err(StdinError::NotPiped)));
    // stdin is /dev/null: cat ends at once
    let c = collect(&mut ev).await;
    assert!(c.stdout.is_empty());
    assert!(c.status.unwrap().success());
    assert!(matches!(
        p.resize(10, 10),
        Err(baton_exec::ResizeError::NotPty)
    ));
}

#[tokio::test]
async fn environment_is_exactly_the_spec() {
    let spec = CommandSpec::new("env", "/")
        .env("PATH", common::path())
        .env("ONLY", "one")
        .env("ONLY", "two");
    let (_p, mut ev) = spawn_streaming(&spec).unwrap();
    let c = collect(&mut ev).await;
    let out = String::from_utf8(c.stdout).unwrap();
    let mut vars: Vec<&str> = out.lines().collect();
    vars.sort();
    let path = format!("PATH={}", common::path().to_str().unwrap());
    assert_eq!(
        vars,
        vec!["ONLY=two", path.as_str()],
        "nothing else is inherited"
    );
}

#[tokio::test]
async fn argv0_and_cwd_apply() {
    let dir = tempfile::tempdir().unwrap();
    let spec = CommandSpec::new("sh", dir.path())
        .args(["-c", "echo \"$0\"; pwd -P"])
        .arg0("custom-name")
        .env("PATH", common::path());
    let (_p, mut ev) = spawn_streaming(&spec).unwrap();
    let c = collect(&mut ev).await;
    let cwd = dir.path().canonicalize().unwrap();
    assert_eq!(
        String::from_utf8(c.stdout).unwrap(),
        format!("custom-name\n{}\n", cwd.display())
    );
}

#[tokio::test]
async fn program_not_found_names_the_program_and_the_path() {
    let spec =
        CommandSpec::new("baton-no-such-program", "/").env("PATH", "/nonexistent/a:/nonexistent/b");
    let err = spawn(&spec, SpawnOptions::streaming()).unwrap_err();
    assert!(
        matches!(err, SpawnError::Resolve(ResolveError::NotInPath { .. })),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "program 'baton-no-such-program' not found in PATH '/nonexistent/a:/nonexistent/b'"
    );

    let err = spawn(&CommandSpec::new("sh", "/"), SpawnOptions::streaming()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "program 'sh' not found: PATH is not set in the command's environment"
    );

    let mut missing_cwd = sh("true");
    missing_cwd.cwd = "/nonexistent/baton-cwd".into();
    let err = spawn(&missing_cwd, SpawnOptions::streaming()).unwrap_err();
    assert!(matches!(err, SpawnError::CwdMissing { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "working directory '/nonexistent/baton-cwd' does not exist"
    );
}

#[tokio::test]
async fn missing_interpreter_is_an_exec_error() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script");
    std::fs::write(&script, "#!/nonexistent/interpreter\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let spec = CommandSpec::new("./script", dir.path());
    let err = spawn(&spec, SpawnOptions::streaming()).unwrap_err();
    let SpawnError::Exec { program, source } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(program, &dir.path().join("./script"));
    assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
}

#[tokio::test]
async fn a_blocked_process_does_not_delay_another() {
    // A produces far more than fits in its channel and pipe, and nobody consumes it.
    let spec_a = CommandSpec::new("head", "/")
        .args(["-c", "10000000", "/dev/zero"])
        .env("PATH", common::path());
    let a = spawn(
        &spec_a,
        SpawnOptions {
            output: baton_exec::OutputMode::Streaming { capacity: 1 },
            ..SpawnOptions::streaming()
        },
    )
    .unwrap();
    let (_b, mut b_events) = spawn_streaming(&sh("echo b")).unwrap();
    let c = collect(&mut b_events).await;
    assert_eq!(c.stdout, b"b\n");
    assert!(a.try_wait().is_none(), "A cannot finish: nobody reads it");
    let mut a_events = a.take_events().unwrap();
    let c = collect(&mut a_events).await;
    assert_eq!(c.stdout.len(), 10_000_000);
}

#[test]
fn spawn_outside_a_runtime_is_an_error() {
    let err = spawn(&sh("true"), SpawnOptions::streaming()).err();
    assert!(matches!(err, Some(SpawnError::NoRuntime)), "{err:?}");
}

#[tokio::test]
async fn pre_exec_hook_runs_in_the_child_only() {
    // SAFETY: umask(2) is async-signal-safe and allocates nothing.
    let p = unsafe {
        baton_exec::spawn_with_pre_exec(&sh("umask"), SpawnOptions::streaming(), || {
            libc::umask(0o027);
            Ok(())
        })
    }
    .unwrap();
    let c = collect(&mut p.take_events().unwrap()).await;
    assert_eq!(String::from_utf8(c.stdout).unwrap().trim(), "0027");
    // the parent's umask is untouched
    // SAFETY: umask only swaps an integer; restored right away.
    let parent = unsafe {
        let old = libc::umask(0o022);
        libc::umask(old);
        old
    };
    assert_ne!(parent, 0o027);
}

#[tokio::test]
async fn a_failing_pre_exec_hook_aborts_the_spawn() {
    // SAFETY: constructing an io::Error from a raw code allocates nothing.
    let err = unsafe {
        baton_exec::spawn_with_pre_exec(&sh("echo never"), SpawnOptions::streaming(), || {
            Err(std::io::Error::from_raw_os_error(libc::EPERM))
        })
    }
    .unwrap_err();
    let SpawnError::Exec { source, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(source.raw_os_error(), Some(libc::EPERM));
}

#[tokio::test]
async fn terminate_gracefully_lets_a_trap_run() {
    let spec = sh("trap 'echo bye; exit 5' TERM; echo ready; while :; do sleep 1; done");
    let (p, mut ev) = spawn_streaming(&spec).unwrap();
    let ProcessEvent::Output { chunk, .. } = ev.recv().await.unwrap() else {
        panic!("expected ready")
    };
    assert_eq!(chunk.as_ref(), b"ready\n");
    let status = p.terminate_gracefully(Duration::from_secs(60)).await;
    assert_eq!(status, ExitStatus::Exited(5));
    let c = collect_after(&mut ev, 1).await;
    assert_eq!(c.stdout, b"bye\n");
}

#[tokio::test]
async fn terminate_gracefully_kills_what_ignores_sigterm() {
    // An ignored signal stays ignored across exec.
    let spec = sh("trap '' TERM; echo ready; exec sleep 1000");
    let (p, mut ev) = spawn_streaming(&spec).unwrap();
    let ready = ev.recv().await.unwrap();
    assert!(matches!(ready, ProcessEvent::Output { .. }), "{ready:?}");
    let status = p.terminate_gracefully(Duration::from_millis(50)).await;
    assert_eq!(status, ExitStatus::Signaled(libc::SIGKILL));
    collect_after(&mut ev, 1).await;
}

/// A descriptor this process holds without close-on-exec does not leak into children (it would
/// keep a parent's pipe open for as long as any descendant lives), except a jobserver named in
/// the child's `MAKEFLAGS`.
#[tokio::test]
async fn inherited_descriptors_do_not_leak_except_a_jobserver() {
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills the two-element array; both ends are closed below.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let probe =
        |fd: i32| format!("if [ -e /proc/self/fd/{fd} ]; then echo open; else echo closed; fi");
    let (_process, mut events) = spawn_streaming(&sh(&probe(fds[1]))).unwrap();
    let c = collect(&mut events).await;
    assert_eq!(c.stdout, b"closed\n", "{c:?}");
    let spec = sh(&probe(fds[1])).env(
        "MAKEFLAGS",
        format!("-j4 --jobserver-auth={},{}", fds[0], fds[1]),
    );
    let (_process, mut events) = spawn_streaming(&spec).unwrap();
    assert_eq!(collect(&mut events).await.stdout, b"open\n");
    // SAFETY: closing the two descriptors pipe(2) gave us.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
}
