//! The provider contract: one set of assertions, run for every provider by `contract_suite!`.
//!
//! Layout of a harness directory (`base`):
//! `allowed/ws-N` (workspaces), `allowed/ro` (a read root with `shared.txt`), `outside/`
//! (`secret.txt`, reachable from no root). Remote providers' servers get `allowed` as root.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use baton_runner::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Limit for anything a test waits on (a hang fails instead of blocking CI forever).
pub const T: Duration = Duration::from_secs(60);

/// Builds a destination for a workspace directory and read roots.
pub type MakeDestination = Box<dyn Fn(&Path, &[PathBuf]) -> RunnerDestination + Send + Sync>;

/// A provider under test plus its fixture directories.
pub struct Harness {
    pub provider: Arc<dyn RunnerProvider>,
    pub base: PathBuf,
    pub read_root: PathBuf,
    pub outside: PathBuf,
    /// Builds a destination for a workspace directory (created by [`Harness::destination`]).
    pub make_destination: MakeDestination,
    pub next: AtomicUsize,
    /// Keeps servers and temp dirs alive.
    pub _guard: Box<dyn std::any::Any + Send + Sync>,
}

impl Harness {
    /// Creates the fixture layout under a fresh temp dir.
    pub fn layout() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
        let tmp = tempfile::tempdir().expect("tmp");
        let base = resolve_real(tmp.path()).expect("resolve tmp");
        let read_root = base.join("allowed/ro");
        let outside = base.join("outside");
        std::fs::create_dir_all(&read_root).expect("mkdir ro");
        std::fs::create_dir_all(&outside).expect("mkdir outside");
        std::fs::write(read_root.join("shared.txt"), "shared").expect("write");
        std::fs::write(outside.join("secret.txt"), "secret").expect("write");
        (tmp, base, read_root, outside)
    }

    /// A destination with a fresh workspace and the read root.
    pub fn destination(&self) -> RunnerDestination {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let ws = self.base.join(format!("allowed/ws-{n}"));
        std::fs::create_dir_all(&ws).expect("mkdir ws");
        (self.make_destination)(&ws, std::slice::from_ref(&self.read_root))
    }

    pub async fn session(&self) -> Arc<dyn RunnerSession> {
        let dest = self.destination();
        self.provider
            .validate_destination(&dest)
            .await
            .expect("valid");
        tokio::time::timeout(T, self.provider.create_session(dest))
            .await
            .expect("create in time")
            .expect("create session")
    }
}

fn sh(id: &str, script: &str) -> RunnerCommandRequest {
    RunnerCommandRequest::new(id, "sh", ["-c", script])
}

async fn run(s: &dyn RunnerSession, req: RunnerCommandRequest) -> RunnerCommandResult {
    tokio::time::timeout(T, s.run_command(req))
        .await
        .expect("command in time")
        .expect("run_command")
}

async fn next(p: &mut RunnerProcess) -> RunnerEvent {
    tokio::time::timeout(T, p.next_event())
        .await
        .expect("event in time")
        .expect("stream not ended")
}

/// Reads events until stdout contains `needle`; returns the stdout seen.
async fn wait_stdout(p: &mut RunnerProcess, needle: &str) -> String {
    let mut out = Vec::new();
    loop {
        match next(p).await {
            RunnerEvent::Output { chunk, stream, .. } if stream != RunnerStream::Stderr => {
                out.extend_from_slice(&chunk);
                let s = String::from_utf8_lossy(&out).into_owned();
                if s.contains(needle) {
                    return s;
                }
            }
            RunnerEvent::Output { .. } => {}
            other => panic!("ended before {needle:?}: {other:?}, stdout {out:?}"),
        }
    }
}

pub async fn capabilities_are_complete(h: &Harness) {
    let caps = h.provider.capabilities();
    assert!(caps.command_exec && caps.file_read && caps.file_write && caps.cancellation);
    assert!(caps.snapshots && caps.artifact_export && caps.port_preview);
    let json = serde_json::to_value(&caps).expect("json");
    assert_eq!(
        serde_json::from_value::<RunnerCapabilities>(json).expect("back"),
        caps
    );
    let s = h.session().await;
    assert_eq!(s.capabilities(), caps);
    assert_eq!(s.state().provider_id, h.provider.id());
    s.close().await.expect("close");
}

pub async fn run_buffered(h: &Harness) {
    let s = h.session().await;
    let mut req = sh("b1", "echo out; echo err >&2; echo \"$GREETING\"; exit 7");
    req.env.push(("GREETING".into(), "hi there".into()));
    let res = run(&*s, req).await;
    assert_eq!(res.command_id, "b1");
    assert_eq!(res.exit_code, Some(7));
    assert_eq!(res.stdout, "out\nhi there\n");
    assert_eq!(res.stderr, "err\n");
    assert!(!res.timed_out);

    let mut slow = sh("b2", "echo started; exec sleep 1000");
    slow.timeout_ms = Some(3000);
    let res = run(&*s, slow).await;
    assert!(res.timed_out, "{res:?}");
    assert_eq!(res.exit_code, None);
    assert_eq!(res.stdout, "started\n");

    let missing = s
        .run_command(RunnerCommandRequest::new(
            "b3",
            "definitely-not-a-program-baton",
            Vec::<String>::new(),
        ))
        .await;
    match missing {
        Err(_) => {}
        Ok(r) => assert_ne!(r.exit_code, Some(0), "{r:?}"),
    }
    s.close().await.expect("close");
}

pub async fn stream_is_ordered(h: &Harness) {
    let s = h.session().await;
    let mut p = s
        .spawn(sh(
            "st",
            "for i in 1 2 3 4 5; do echo line$i; done; echo oops >&2; exit 3",
        ))
        .await
        .expect("spawn");
    assert_eq!(p.id(), "st");
    let mut last_seq = 0;
    let (mut out, mut err, mut code) = (Vec::new(), Vec::new(), None);
    loop {
        let ev = next(&mut p).await;
        let seq = match &ev {
            RunnerEvent::Output { seq, .. }
            | RunnerEvent::Exited { seq, .. }
            | RunnerEvent::Closed { seq } => *seq,
            RunnerEvent::Failed { message } => panic!("failed: {message}"),
        };
        assert_eq!(seq, last_seq + 1, "seq must increase by one: {ev:?}");
        last_seq = seq;
        match ev {
            RunnerEvent::Output { stream, chunk, .. } => match stream {
                RunnerStream::Stderr => err.extend(chunk),
                _ => out.extend(chunk),
            },
            RunnerEvent::Exited { exit_code, .. } => code = Some(exit_code),
            RunnerEvent::Closed { .. } => break,
            RunnerEvent::Failed { .. } => unreachable!(),
        }
    }
    assert_eq!(
        String::from_utf8_lossy(&out),
        "line1\nline2\nline3\nline4\nline5\n"
    );
    assert_eq!(String::from_utf8_lossy(&err), "oops\n");
    assert_eq!(code, Some(3));
    assert!(
        tokio::time::timeout(T, p.next_event())
            .await
            .expect("end")
            .is_none(),
        "nothing after Closed"
    );
    s.close().await.expect("close");
}

pub async fn stdin_is_interactive(h: &Harness) {
    let s = h.session().await;
    let mut p = s
        .spawn(RunnerCommandRequest::new(
            "cat",
            "cat",
            Vec::<String>::new(),
        ))
        .await
        .expect("spawn");
    p.write_stdin(b"first\n").await.expect("write");
    // The echo arrives while stdin is still open: input is delivered, not buffered to EOF.
    wait_stdout(&mut p, "first\n").await;
    p.write_stdin(b"second\n").await.expect("write");
    p.close_stdin().await.expect("close stdin");
    let rest = p.collect().await;
    assert_eq!(String::from_utf8_lossy(&rest.stdout), "second\n");
    assert_eq!(rest.exit_code, Some(0));
    s.close().await.expect("close");
}

/// `tty: true` gives the command a terminal (stdin is a tty, output arrives as `Pty`), and
/// `signal_command(Interrupt)` reaches a trap in the command without killing it outright.
pub async fn tty_and_interrupt(h: &Harness) {
    let s = h.session().await;
    let mut req = sh(
        "tty",
        "trap 'echo got-int; exit 5' INT; if [ -t 0 ]; then echo is-a-tty; fi; echo ready; \
         while :; do sleep 0.05; done",
    );
    req.tty = true;
    let mut p = s.spawn(req).await.expect("spawn tty");
    let seen = wait_stdout(&mut p, "ready").await;
    assert!(
        seen.contains("is-a-tty"),
        "stdin should be a terminal: {seen:?}"
    );
    assert!(
        s.signal_command("tty", RunnerSignal::Interrupt)
            .await
            .expect("interrupt")
    );
    let mut out = Vec::new();
    let mut streams = Vec::new();
    let mut code = None;
    loop {
        match next(&mut p).await {
            RunnerEvent::Output { stream, chunk, .. } => {
                streams.push(stream);
                out.extend_from_slice(&chunk);
            }
            RunnerEvent::Exited { exit_code, .. } => code = Some(exit_code),
            RunnerEvent::Closed { .. } => break,
            RunnerEvent::Failed { message } => panic!("failed: {message}"),
        }
    }
    assert!(String::from_utf8_lossy(&out).contains("got-int"), "{out:?}");
    assert!(
        streams.iter().all(|s| *s == RunnerStream::Pty),
        "{streams:?}"
    );
    assert_eq!(code, Some(5));
    assert!(
        !s.signal_command("tty", RunnerSignal::Interrupt)
            .await
            .expect("signal after the end")
    );
    s.close().await.expect("close");
}

/// A background grandchild holds the write end of a FIFO; a second command reading the FIFO
/// ends only when every writer is gone — i.e. when cancel killed the grandchild too.
pub async fn cancel_kills_the_tree(h: &Harness) {
    let s = h.session().await;
    let mk = run(&*s, sh("mk", "mkfifo tree.fifo")).await;
    assert_eq!(mk.exit_code, Some(0), "{mk:?}");
    let reader = s
        .spawn(sh("reader", "cat tree.fifo; echo reader-done"))
        .await
        .expect("reader");
    let mut tree = s
        .spawn(sh(
            "tree",
            "(exec 3>tree.fifo; echo holding; exec sleep 1000) & wait",
        ))
        .await
        .expect("spawn tree");
    wait_stdout(&mut tree, "holding").await;
    assert!(s.cancel_command("tree").await.expect("cancel"));
    let end = tree.collect().await;
    assert!(end.exit_code.is_some_and(|c| c != 0), "{end:?}");
    let done = tokio::time::timeout(T, reader.collect())
        .await
        .expect("the reader sees EOF: the grandchild holding the fifo was killed");
    assert_eq!(String::from_utf8_lossy(&done.stdout), "reader-done\n");
    assert!(!s.cancel_command("tree").await.expect("cancel again"));
    assert!(
        !s.cancel_command("never-started")
            .await
            .expect("cancel unknown")
    );
    s.close().await.expect("close");
}

pub async fn files_round_trip(h: &Harness) {
    let s = h.session().await;
    s.write_file(RunnerFileWriteRequest {
        path: "dir/sub/f.bin".into(),
        contents: vec![0, 1, 2, 255],
    })
    .await
    .expect("write relative");
    let abs = s.paths().workspace().join("dir/abs.txt");
    s.write_file(RunnerFileWriteRequest {
        path: abs.clone(),
        contents: b"abs".to_vec(),
    })
    .await
    .expect("write absolute under the workspace");
    let r = s
        .read_file(RunnerFileReadRequest {
            path: "dir/sub/f.bin".into(),
        })
        .await
        .expect("read");
    assert_eq!(r.contents, vec![0, 1, 2, 255]);
    assert_eq!(r.path, s.paths().workspace().join("dir/sub/f.bin"));
    let r = s
        .read_file(RunnerFileReadRequest { path: abs })
        .await
        .expect("read abs");
    assert_eq!(r.contents, b"abs");
    let shared = s
        .read_file(RunnerFileReadRequest {
            path: h.read_root.join("shared.txt"),
        })
        .await
        .expect("read under a read root");
    assert_eq!(shared.contents, b"shared");
    let missing = s
        .read_file(RunnerFileReadRequest {
            path: "nope.txt".into(),
        })
        .await
        .unwrap_err();
    assert!(matches!(missing, RunnerError::NotFound(_)), "{missing}");
    let mut in_dir = RunnerCommandRequest::new("cwd", "sh", ["-c", "cat abs.txt; ls sub"]);
    in_dir.cwd = Some("dir".into());
    let res = run(&*s, in_dir).await;
    assert_eq!(res.exit_code, Some(0), "{res:?}");
    assert_eq!(res.stdout, "absf.bin\n");
    s.close().await.expect("close");
}

fn denied<T: std::fmt::Debug>(r: Result<T, RunnerError>, what: &str) {
    match r {
        Err(RunnerError::AccessDenied { .. }) => {}
        other => panic!("{what}: expected access denied, got {other:?}"),
    }
}

pub async fn confinement_escapes_are_refused(h: &Harness) {
    let s = h.session().await;
    let ln = run(
        &*s,
        RunnerCommandRequest::new(
            "ln",
            "ln",
            ["-s", h.outside.to_str().expect("utf8"), "escape"],
        ),
    )
    .await;
    assert_eq!(ln.exit_code, Some(0), "{ln:?}");
    let ln = run(
        &*s,
        RunnerCommandRequest::new(
            "ln2",
            "ln",
            ["-s", h.read_root.to_str().expect("utf8"), "ro-link"],
        ),
    )
    .await;
    assert_eq!(ln.exit_code, Some(0), "{ln:?}");
    let read = |p: PathBuf| s.read_file(RunnerFileReadRequest { path: p });
    denied(
        read("escape/secret.txt".into()).await,
        "read through symlink",
    );
    denied(
        read("../../outside/secret.txt".into()).await,
        "read with ..",
    );
    denied(read(h.outside.join("secret.txt")).await, "read absolute");
    denied(
        read(h.read_root.join("../../outside/secret.txt")).await,
        "read via read root and ..",
    );
    assert_eq!(
        read("ro-link/shared.txt".into())
            .await
            .expect("symlink into a read root")
            .contents,
        b"shared"
    );
    let write = |p: PathBuf| {
        s.write_file(RunnerFileWriteRequest {
            path: p,
            contents: b"x".to_vec(),
        })
    };
    denied(
        write("escape/new.txt".into()).await,
        "write through symlink",
    );
    denied(write("../evil.txt".into()).await, "write with ..");
    denied(write(h.outside.join("evil.txt")).await, "write absolute");
    denied(
        write(h.read_root.join("evil.txt")).await,
        "write into a read root",
    );
    denied(
        write("ro-link/evil.txt".into()).await,
        "write via link to read root",
    );
    assert!(!h.outside.join("evil.txt").exists());
    assert!(!h.outside.join("new.txt").exists());
    assert!(!h.read_root.join("evil.txt").exists());
    for cwd in [
        PathBuf::from("escape"),
        PathBuf::from(".."),
        h.read_root.clone(),
        PathBuf::from("/"),
    ] {
        let mut req = RunnerCommandRequest::new("c", "true", Vec::<String>::new());
        req.cwd = Some(cwd.clone());
        denied(s.spawn(req).await, &format!("cwd {cwd:?}"));
    }
    denied(
        s.export_artifact(RunnerArtifactExportRequest {
            path: "escape/secret.txt".into(),
            recursive: false,
        })
        .await,
        "export through symlink",
    );
    s.close().await.expect("close");
}

pub async fn snapshot_round_trip(h: &Harness) {
    let s = h.session().await;
    for (p, c) in [("a.txt", "alpha"), ("nested/deep/b.txt", "beta")] {
        s.write_file(RunnerFileWriteRequest {
            path: p.into(),
            contents: c.as_bytes().to_vec(),
        })
        .await
        .expect("write");
    }
    let snap = s.snapshot().await.expect("snapshot");
    assert_eq!(snap.provider_id, h.provider.id());
    assert_eq!(snap.snapshot_id.len(), 64);
    check_no_secrets(&snap.metadata).expect("no secrets in snapshot metadata");
    assert!(snap.metadata["size"].as_u64().is_some_and(|n| n > 0));
    let json = serde_json::to_string(&snap).expect("json");
    let snap: RunnerSnapshotRef = serde_json::from_str(&json).expect("ref round trip");
    s.close().await.expect("close");

    let restored = tokio::time::timeout(
        T,
        h.provider
            .create_session_from_snapshot(h.destination(), snap.clone()),
    )
    .await
    .expect("in time")
    .expect("restore");
    assert_eq!(restored.state().snapshot.as_ref(), Some(&snap));
    for (p, c) in [("a.txt", "alpha"), ("nested/deep/b.txt", "beta")] {
        let r = restored
            .read_file(RunnerFileReadRequest { path: p.into() })
            .await
            .expect("read restored");
        assert_eq!(r.contents, c.as_bytes(), "{p}");
    }
    // Unchanged content gives the same content address.
    let again = restored.snapshot().await.expect("snapshot again");
    let mut bogus = snap.clone();
    bogus.snapshot_id = "0".repeat(64);
    let err = h
        .provider
        .create_session_from_snapshot(h.destination(), bogus)
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(err, RunnerError::NotInStore { .. }), "{err}");
    restored.close().await.expect("close");
    let _ = again;
}

pub async fn artifact_export(h: &Harness) {
    let s = h.session().await;
    let body = b"report body\n".repeat(100);
    s.write_file(RunnerFileWriteRequest {
        path: "out/report.txt".into(),
        contents: body.clone(),
    })
    .await
    .expect("write");
    let a = s
        .export_artifact(RunnerArtifactExportRequest {
            path: "out/report.txt".into(),
            recursive: false,
        })
        .await
        .expect("export file");
    let hash = blake3::hash(&body).to_hex().to_string();
    assert_eq!(a.artifact_id, hash);
    assert_eq!(a.metadata["blake3"], hash.as_str());
    assert_eq!(a.metadata["size"], body.len() as u64);
    assert_eq!(a.metadata["kind"], "file");
    assert_eq!(a.metadata["name"], "report.txt");
    let err = s
        .export_artifact(RunnerArtifactExportRequest {
            path: "out".into(),
            recursive: false,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, RunnerError::IsDirectory(_)), "{err}");
    let d = s
        .export_artifact(RunnerArtifactExportRequest {
            path: "out".into(),
            recursive: true,
        })
        .await
        .expect("export dir");
    assert_eq!(d.metadata["kind"], "directory");
    assert_eq!(d.artifact_id.len(), 64);
    s.close().await.expect("close");
}

/// Starts `python3 -m http.server` on loopback inside the workspace and fetches a file through
/// the exposed URL with a raw HTTP/1.1 request.
pub async fn port_exposure_reaches_a_server(h: &Harness) {
    let s = h.session().await;
    s.write_file(RunnerFileWriteRequest {
        path: "site/hello.txt".into(),
        contents: b"hello from the workspace".to_vec(),
    })
    .await
    .expect("write");
    let mut req = RunnerCommandRequest::new(
        "http",
        "python3",
        ["-u", "-m", "http.server", "0", "--bind", "127.0.0.1"],
    );
    req.cwd = Some("site".into());
    let mut server = s.spawn(req).await.expect("spawn http.server");
    let banner = wait_stdout(&mut server, ") ...").await;
    let port: u16 = banner
        .split(" port ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {banner:?}"));
    let exposed = s
        .expose_port(RunnerPortRequest {
            port,
            label: Some("web".into()),
        })
        .await
        .expect("expose");
    assert_eq!(exposed.port, port);
    let url = exposed.url.expect("url");
    let addr = url.strip_prefix("http://").expect("http url");
    let response = tokio::time::timeout(T, async {
        let mut conn = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect proxy");
        conn.write_all(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("send");
        let mut buf = Vec::new();
        conn.read_to_end(&mut buf).await.expect("read");
        String::from_utf8_lossy(&buf).into_owned()
    })
    .await
    .expect("response in time");
    assert!(
        response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"),
        "{response}"
    );
    assert!(response.ends_with("hello from the workspace"), "{response}");
    assert!(s.cancel_command("http").await.expect("cancel"));
    s.close().await.expect("close");
}

/// A minimal WebSocket echo server (RFC 6455 handshake and frames) for the port test.
const WS_ECHO_PY: &str = r#"
import base64, hashlib, socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(4)
print("port", s.getsockname()[1], "ready", flush=True)
def exact(c, n):
    b = b""
    while len(b) < n:
        d = c.recv(n - len(b))
        if not d:
            raise EOFError
        b += d
    return b
while True:
    c, _ = s.accept()
    req = b""
    while b"\r\n\r\n" not in req:
        req += c.recv(4096)
    key = [l.split(b":", 1)[1].strip() for l in req.split(b"\r\n") if l.lower().startswith(b"sec-websocket-key:")][0]
    acc = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + acc + b"\r\n\r\n")
    try:
        while True:
            b0, b1 = exact(c, 2)
            n = b1 & 0x7F
            if n == 126:
                n = int.from_bytes(exact(c, 2), "big")
            mask = exact(c, 4)
            data = bytes(x ^ mask[i % 4] for i, x in enumerate(exact(c, n)))
            op = b0 & 0x0F
            if op == 1:
                data = b"echo: " + data
            c.sendall(bytes([0x80 | op, len(data)]) + data)
            if op == 8:
                break
    except EOFError:
        pass
    c.close()
"#;

/// A WebSocket server inside the workspace is reached through the exposed URL with a real
/// WebSocket client (upgrade, then frames both ways).
pub async fn port_exposure_carries_websockets(h: &Harness) {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let s = h.session().await;
    s.write_file(RunnerFileWriteRequest {
        path: "ws_echo.py".into(),
        contents: WS_ECHO_PY.as_bytes().to_vec(),
    })
    .await
    .expect("write");
    let mut server = s
        .spawn(RunnerCommandRequest::new(
            "ws",
            "python3",
            ["-u", "ws_echo.py"],
        ))
        .await
        .expect("spawn");
    let banner = wait_stdout(&mut server, "ready").await;
    let port: u16 = banner
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {banner:?}"));
    let url = s
        .expose_port(RunnerPortRequest { port, label: None })
        .await
        .expect("expose")
        .url
        .expect("url");
    let ws_url = url.replacen("http://", "ws://", 1);
    tokio::time::timeout(T, async {
        let (mut ws, response) = tokio_tungstenite::connect_async(ws_url.as_str())
            .await
            .expect("websocket handshake through the proxy");
        assert_eq!(response.status().as_u16(), 101);
        for text in ["first", "second"] {
            ws.send(Message::text(text)).await.expect("send");
            let reply = ws.next().await.expect("a reply").expect("frame");
            assert_eq!(
                reply.into_text().expect("text").as_str(),
                format!("echo: {text}")
            );
        }
        ws.close(None).await.expect("close");
    })
    .await
    .expect("websocket exchange in time");
    assert!(s.cancel_command("ws").await.expect("cancel"));
    s.close().await.expect("close");
}

pub async fn state_round_trip_without_secrets(h: &Harness) {
    let s = h.session().await;
    s.write_file(RunnerFileWriteRequest {
        path: "kept.txt".into(),
        contents: b"still here".to_vec(),
    })
    .await
    .expect("write");
    let state = s.state();
    check_no_secrets(&state.metadata).expect("state metadata has no secrets");
    let json = serde_json::to_string(&state).expect("json");
    let back: RunnerSessionState = serde_json::from_str(&json).expect("parse");
    assert_eq!(back, state);
    // Simulate a restart of the caller: drop the handle without closing, resume from JSON.
    drop(s);
    let resumed = tokio::time::timeout(T, h.provider.resume_session(back))
        .await
        .expect("in time")
        .expect("resume");
    assert_eq!(resumed.state().session_id, state.session_id);
    let r = resumed
        .read_file(RunnerFileReadRequest {
            path: "kept.txt".into(),
        })
        .await
        .expect("read after resume");
    assert_eq!(r.contents, b"still here");
    let res = run(&*resumed, sh("after", "echo ok")).await;
    assert_eq!(res.stdout, "ok\n");

    // A destination carrying a secret value is refused; a reference is fine.
    let mut bad = h.destination();
    bad.config["api_token"] = serde_json::json!("plain-secret-value");
    let err = h.provider.validate_destination(&bad).await.unwrap_err();
    assert!(matches!(err, RunnerError::SecretInMetadata(_)), "{err}");
    assert!(!err.to_string().contains("plain-secret-value"));
    let mut wrong = h.destination();
    wrong.provider_id = "somebody-else".into();
    assert!(matches!(
        h.provider.validate_destination(&wrong).await,
        Err(RunnerError::InvalidDestination(_))
    ));
    resumed.close().await.expect("close");
}

pub async fn manifest_is_copied_in(h: &Harness) {
    let src = h.base.join("manifest-src");
    std::fs::create_dir_all(src.join("lib/inner")).expect("mkdir");
    std::fs::write(src.join("lib/a.txt"), "A").expect("write");
    std::fs::write(src.join("lib/inner/b.txt"), "B").expect("write");
    std::fs::write(src.join("config.toml"), "x = 1").expect("write");
    let mut dest = h.destination();
    dest.default_manifest.entries = vec![
        RunnerManifestEntry {
            source: src.join("lib"),
            target: "vendor/lib".into(),
            writable: true,
        },
        RunnerManifestEntry {
            source: src.join("config.toml"),
            target: "etc/config.toml".into(),
            writable: false,
        },
    ];
    let s = h
        .provider
        .create_session(dest.clone())
        .await
        .expect("create");
    for (p, c) in [
        ("vendor/lib/a.txt", "A"),
        ("vendor/lib/inner/b.txt", "B"),
        ("etc/config.toml", "x = 1"),
    ] {
        let r = s
            .read_file(RunnerFileReadRequest { path: p.into() })
            .await
            .expect("read manifest file");
        assert_eq!(r.contents, c.as_bytes(), "{p}");
    }
    let mode = run(
        &*s,
        RunnerCommandRequest::new(
            "m",
            "stat",
            ["-c", "%A", "etc/config.toml", "vendor/lib/a.txt"],
        ),
    )
    .await;
    assert_eq!(mode.stdout, "-r--r--r--\n-rw-r--r--\n", "{mode:?}");
    s.close().await.expect("close");

    let mut escaping = h.destination();
    escaping.default_manifest.entries = vec![RunnerManifestEntry {
        source: src.join("config.toml"),
        target: "../../outside/planted.toml".into(),
        writable: true,
    }];
    denied(
        h.provider.create_session(escaping).await.map(|_| ()),
        "manifest target escaping",
    );
    assert!(!h.outside.join("planted.toml").exists());

    let mut mounted = h.destination();
    mounted.default_manifest.mounts = vec![RunnerMount {
        name: "data".into(),
        path: "mnt/data".into(),
        read_only: true,
        intent: RunnerMountIntent {
            kind: RunnerMountKind::Gcs,
            uri: "gs://bucket/prefix".into(),
            credentials: Some(RunnerSecretRef {
                id: "gcs-ro".into(),
            }),
        },
    }];
    assert!(matches!(
        h.provider.validate_destination(&mounted).await,
        Err(RunnerError::Unsupported { .. })
    ));
    match h.provider.create_session(mounted).await.map(|_| ()) {
        Err(RunnerError::Unsupported { provider, .. }) => assert_eq!(provider, h.provider.id()),
        other => panic!("gcs mounts must be refused as unsupported, got {other:?}"),
    }
}

pub async fn closed_session_refuses_work(h: &Harness) {
    let s = h.session().await;
    let mut p = s
        .spawn(sh("long", "echo up; exec sleep 1000"))
        .await
        .expect("spawn");
    wait_stdout(&mut p, "up").await;
    s.close().await.expect("close");
    s.close().await.expect("close is idempotent");
    let end = tokio::time::timeout(T, p.collect())
        .await
        .expect("killed on close");
    assert!(
        end.exit_code.is_some_and(|c| c != 0) || end.failure.is_some(),
        "{end:?}"
    );
    assert!(matches!(
        s.run_command(sh("x", "true")).await,
        Err(RunnerError::Closed)
    ));
}

/// One `#[tokio::test]` per contract assertion, for the harness built by `$setup().await`.
#[macro_export]
macro_rules! contract_suite {
    ($setup:path) => {
        $crate::contract_suite!(@tests $setup;
            capabilities_are_complete, run_buffered, stream_is_ordered, stdin_is_interactive,
            tty_and_interrupt, cancel_kills_the_tree, files_round_trip, confinement_escapes_are_refused,
            snapshot_round_trip, artifact_export, port_exposure_reaches_a_server,
            port_exposure_carries_websockets,
            state_round_trip_without_secrets, manifest_is_copied_in, closed_session_refuses_work);
    };
    (@tests $setup:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let harness = $setup().await;
                contract::$name(&harness).await;
            }
        )*
    };
}
