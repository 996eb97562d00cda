//! Helpers shared by the integration tests (real processes, no mocks).
#![allow(dead_code)]

use std::ffi::OsString;
use std::os::fd::{FromRawFd, OwnedFd};

use baton_exec::{CommandSpec, EventStream, ExitStatus, ProcessEvent, Stream};

/// The test's own PATH (the child gets it explicitly; nothing is inherited implicitly).
pub fn path() -> OsString {
    std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into())
}

/// `sh -c script` in the temp dir with only PATH set.
pub fn sh(script: &str) -> CommandSpec {
    CommandSpec::new("sh", std::env::temp_dir())
        .args(["-c", script])
        .env("PATH", path())
}

/// Everything a streaming consumer saw.
#[derive(Debug, Default)]
pub struct Collected {
    pub events: Vec<ProcessEvent>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub pty: Vec<u8>,
    pub status: Option<ExitStatus>,
}

/// Drains `events` to the end, checking the seq invariants on the way: 1, 2, 3, ... without
/// gaps, exactly one `Exited`, `Closed` last.
pub async fn collect(events: &mut EventStream) -> Collected {
    collect_after(events, 0).await
}

/// Like [`collect`] for a stream whose first `already` events were consumed by the caller
/// (they are not in the result).
pub async fn collect_after(events: &mut EventStream, already: u64) -> Collected {
    let mut c = Collected::default();
    while let Some(ev) = events.recv().await {
        assert_eq!(
            ev.seq(),
            already + c.events.len() as u64 + 1,
            "seq must be contiguous from 1"
        );
        match &ev {
            ProcessEvent::Output { stream, chunk, .. } => {
                assert!(!chunk.is_empty());
                match stream {
                    Stream::Stdout => c.stdout.extend_from_slice(chunk),
                    Stream::Stderr => c.stderr.extend_from_slice(chunk),
                    Stream::Pty => c.pty.extend_from_slice(chunk),
                }
            }
            ProcessEvent::Exited { status, .. } => {
                assert!(c.status.is_none(), "one Exited event");
                c.status = Some(*status);
            }
            ProcessEvent::Closed { .. } => {
                assert!(c.status.is_some(), "Closed comes after Exited");
            }
        }
        c.events.push(ev);
    }
    assert!(
        matches!(c.events.last(), Some(ProcessEvent::Closed { .. })),
        "Closed is the last event"
    );
    c
}

/// Whether `pid` is dead: no such process, or a zombie waiting to be reaped by its parent.
pub fn is_dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            // the state follows the parenthesised command name
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next());
            matches!(state, Some('Z' | 'X'))
        }
    }
}

/// Blocks until `pid` has terminated (up to 60 s, then panics), using a pidfd, which becomes
/// readable when the process exits (Linux ≥ 5.3). Returns immediately if it is already gone.
pub fn wait_pid_dead(pid: i32) {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is shared.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        assert!(
            is_dead(pid),
            "pidfd_open({pid}) failed but the process exists"
        );
        return;
    }
    // SAFETY: the syscall returned a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut fds = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(&fd),
        nix::poll::PollFlags::POLLIN,
    )];
    // Other tests' children send SIGCHLD to this process: retry on EINTR.
    let n = loop {
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(60_000u16)) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other.unwrap(),
        }
    };
    assert_eq!(n, 1, "process {pid} still alive after 60 s");
    assert!(is_dead(pid));
}

/// Parses the first line of `bytes` as a pid.
pub fn first_line_pid(bytes: &[u8]) -> i32 {
    let text = String::from_utf8_lossy(bytes);
    text.lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in {text:?}"))
}

/// Reads output events until a full first line arrived; returns (pid on it, events consumed).
pub async fn read_pid_line(events: &mut EventStream) -> (i32, u64) {
    let mut bytes = Vec::new();
    let mut consumed = 0;
    while !bytes.contains(&b'\n') {
        match events.recv().await {
            Some(ProcessEvent::Output { chunk, .. }) => bytes.extend_from_slice(&chunk),
            other => panic!("expected output, got {other:?}"),
        }
        consumed += 1;
    }
    (first_line_pid(&bytes), consumed)
}
