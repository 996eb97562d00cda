//! Processes on a pseudo-terminal: controlling tty, resize, input, session and group kill.

mod common;

use std::time::Duration;

use baton_exec::{
    CommandSpec, ExitStatus, Process, PtySize, SpawnOptions, Stream, spawn, spawn_streaming,
};
use common::{collect, sh};

/// Long-polls retained output until it contains `needle`; returns everything read so far.
async fn read_until(p: &Process, after: &mut u64, seen: &mut Vec<u8>, needle: &str) {
    while !String::from_utf8_lossy(seen).contains(needle) {
        let r = p
            .read(Some(*after), None, Some(Duration::from_secs(60)))
            .await
            .unwrap();
        assert!(
            !r.chunks.is_empty() || !r.closed,
            "ended before {needle:?}: {:?}",
            String::from_utf8_lossy(seen)
        );
        for c in &r.chunks {
            assert_eq!(c.stream, Stream::Pty);
            seen.extend_from_slice(&c.bytes);
        }
        *after = r.next_seq - 1;
    }
}

#[tokio::test]
async fn tty_is_a_pts_and_stdout_stderr_are_merged() {
    let spec = sh("tty; echo to-stderr >&2; test -t 0 && test -t 1 && test -t 2 && echo all-tty")
        .pty(PtySize::default());
    let (p, mut ev) = spawn_streaming(&spec).unwrap();
    assert!(p.is_pty());
    let c = collect(&mut ev).await;
    assert!(c.stdout.is_empty() && c.stderr.is_empty());
    let out = String::from_utf8(c.pty).unwrap();
    assert!(out.starts_with("/dev/pts/"), "{out:?}");
    assert!(out.contains("to-stderr\r\n"), "{out:?}");
    assert!(out.contains("all-tty"), "{out:?}");
    assert_eq!(c.status, Some(ExitStatus::Exited(0)));
}

#[tokio::test]
async fn the_child_leads_a_new_session_with_the_pty_as_controlling_terminal() {
    // ps-free check: the shell's sid and pgid (fields 6 and 5 of /proc/self/stat) equal its pid,
    // and /dev/tty opens (only possible with a controlling terminal).
    let spec = sh(
        "read -r _ _ _ _ pgrp sid _ < /proc/$$/stat; echo \"$$ $pgrp $sid\"; \
                   echo hi > /dev/tty && echo ctty-ok",
    )
    .pty(PtySize::default());
    let (p, mut ev) = spawn_streaming(&spec).unwrap();
    let c = collect(&mut ev).await;
    let out = String::from_utf8(c.pty).unwrap();
    let pid = p.pid();
    assert!(out.contains(&format!("{pid} {pid} {pid}")), "{out:?}");
    assert!(out.contains("ctty-ok"), "{out:?}");
}

#[tokio::test]
async fn resize_is_seen_by_stty() {
    let spec = sh("stty size; read line; stty size").pty(PtySize::new(24, 80));
    let p = spawn(&spec, SpawnOptions::retained()).unwrap();
    let mut after = 0;
    let mut seen = Vec::new();
    read_until(&p, &mut after, &mut seen, "24 80").await;
    p.resize(40, 100).unwrap();
    p.write_stdin(b"go\n").await.unwrap();
    read_until(&p, &mut after, &mut seen, "40 100").await;
    assert_eq!(p.wait_closed().await, ExitStatus::Exited(0));
}

#[tokio::test]
async fn input_reaches_the_program_and_ctrl_d_ends_it() {
    let spec = CommandSpec::new("cat", "/")
        .env("PATH", common::path())
        .pty(PtySize::default());
    let p = spawn(&spec, SpawnOptions::retained()).unwrap();
    p.write_stdin(b"typed\n").await.unwrap();
    let mut after = 0;
    let mut seen = Vec::new();
    // once echoed by the terminal, once written by cat
    read_until(&p, &mut after, &mut seen, "typed\r\ntyped\r\n").await;
    p.close_stdin().await.unwrap();
    assert_eq!(p.wait_closed().await, ExitStatus::Exited(0));
}

#[tokio::test]
async fn terminate_kills_the_pty_session_group() {
    let spec = sh("sleep 1000 & echo $!; wait").pty(PtySize::default());
    let (p, mut ev) = spawn_streaming(&spec).unwrap();
    let (grandchild, consumed) = common::read_pid_line(&mut ev).await;
    assert!(p.terminate());
    let c = common::collect_after(&mut ev, consumed).await;
    assert_eq!(c.status, Some(ExitStatus::Signaled(libc::SIGKILL)));
    common::wait_pid_dead(grandchild);
}
