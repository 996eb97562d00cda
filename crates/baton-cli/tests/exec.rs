//! `baton exec-server` and `baton exec` as real processes: WebSocket and stdio transports,
//! exit codes, stdin forwarding, clean shutdown on SIGTERM and on stdin EOF.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BATON: &str = env!("CARGO_BIN_EXE_baton");
const T: Duration = Duration::from_secs(30);

#[expect(
    clippy::disallowed_methods,
    reason = "the test drives the real baton binary"
)]
fn baton(args: &[&str], cwd: &Path) -> Command {
    let mut c = Command::new(BATON);
    c.args(args).current_dir(cwd);
    c
}

/// Whether `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().next());
            state != Some("Z") && state != Some("X")
        }
        Err(_) => false,
    }
}

/// Waits (bounded) for a condition that another process makes true.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + T;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return s;
        }
        assert!(Instant::now() < deadline, "process did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn exec_with_a_private_stdio_server_streams_output_stdin_and_exit_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = baton(
        &["exec", "--", "sh", "-c", "echo out; echo err >&2; exit 7"],
        dir.path(),
    )
    .stdin(Stdio::null())
    .output()
    .expect("run");
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");

    let mut child = baton(
        &[
            "exec",
            "--env",
            "GREETING=hi",
            "--",
            "sh",
            "-c",
            "cat; echo $GREETING",
        ],
        dir.path(),
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()
    .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"from stdin\n")
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from stdin\nhi\n");
}

#[test]
fn websocket_server_prints_its_url_serves_exec_and_dies_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = std::fs::canonicalize(dir.path()).expect("canon");
    let mut server = baton(
        &[
            "exec-server",
            "--listen",
            "ws://127.0.0.1:0",
            "--root",
            root.to_str().expect("utf8"),
        ],
        &root,
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .spawn()
    .expect("spawn server");
    let mut stdout = BufReader::new(server.stdout.take().expect("stdout"));
    let mut url = String::new();
    stdout.read_line(&mut url).expect("url line");
    let url = url.trim().to_owned();
    assert!(url.starts_with("ws://127.0.0.1:"), "{url}");

    // GET /readyz answers 200.
    let mut tcp = std::net::TcpStream::connect(url.trim_start_matches("ws://")).expect("tcp");
    tcp.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let mut reply = String::new();
    tcp.read_to_string(&mut reply).expect("reply");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");

    let out = baton(
        &["exec", "--server", &url, "--", "sh", "-c", "pwd; exit 3"],
        &root,
    )
    .stdin(Stdio::null())
    .output()
    .expect("exec");
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        root.to_str().expect("utf8")
    );

    // A cwd outside the server's root is refused with a clear error.
    let out = baton(
        &["exec", "--server", &url, "--cwd", "/", "--", "true"],
        &root,
    )
    .stdin(Stdio::null())
    .output()
    .expect("exec");
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("outside the allowed roots"), "{err}");

    // A long-running command; SIGTERM to the server kills it and ends the client.
    let mut client = baton(
        &[
            "exec",
            "--server",
            &url,
            "--reconnect-attempts",
            "1",
            "--",
            "sh",
            "-c",
            "echo $$; exec sleep 1000",
        ],
        &root,
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn client");
    let mut line = String::new();
    BufReader::new(client.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("pid line");
    let pid: i32 = line.trim().parse().expect("pid");
    assert!(alive(pid));
    // SAFETY: plain kill(2) on a child we spawned.
    assert_eq!(unsafe { libc_kill(server.id() as i32, 15) }, 0);
    let status = wait_exit(&mut server);
    assert_eq!(status.code(), Some(0), "server exits cleanly");
    assert!(
        stdout.read_line(&mut String::new()).expect("eof") == 0,
        "nothing else on stdout"
    );
    wait_until("the remote command to die", || !alive(pid));
    let status = wait_exit(&mut client);
    assert_ne!(status.code(), Some(0));
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

#[test]
fn stdio_server_eof_kills_its_processes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = std::fs::canonicalize(dir.path()).expect("canon");
    let mut server = baton(
        &[
            "exec-server",
            "--listen",
            "stdio",
            "--root",
            root.to_str().expect("utf8"),
        ],
        &root,
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()
    .expect("spawn server");
    let mut stdin = server.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(server.stdout.take().expect("stdout"));
    let start = serde_json::json!({
        "id": 2, "method": "process/start", "params": {
            "processId": "p", "argv": ["sh", "-c", "echo $$ > pid; exec sleep 1000"],
            "cwd": root, "env": {"PATH": "/usr/bin:/bin"}, "tty": false}});
    writeln!(
        stdin,
        r#"{{"id":1,"method":"initialize","params":{{"clientName":"t"}}}}"#
    )
    .expect("send");
    writeln!(stdin, r#"{{"method":"initialized"}}"#).expect("send");
    writeln!(stdin, "{start}").expect("send");
    // Every stdout line is JSON-RPC; wait for the start answer.
    loop {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).expect("read") > 0,
            "server ended early"
        );
        let v: serde_json::Value = serde_json::from_str(&line).expect("json line");
        if v["id"] == 2 {
            assert_eq!(v["result"]["processId"], "p", "{v}");
            break;
        }
    }
    let pid_file = root.join("pid");
    wait_until("the pid file", || {
        std::fs::read_to_string(&pid_file).is_ok_and(|s| s.ends_with('\n'))
    });
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("pid")
        .trim()
        .parse()
        .expect("pid");
    assert!(alive(pid));
    drop(stdin);
    let status = wait_exit(&mut server);
    assert_eq!(status.code(), Some(0));
    wait_until("the process to die", || !alive(pid));
}

#[test]
fn exec_forwards_ctrl_c_as_an_interrupt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = baton(
        &[
            "exec",
            "--",
            "sh",
            "-c",
            "trap 'echo got-int; exit 9' INT; echo ready; while :; do sleep 0.05; done",
        ],
        dir.path(),
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .spawn()
    .expect("spawn");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("ready");
    assert_eq!(line, "ready\n");
    // SAFETY: plain kill(2) on a child we spawned.
    assert_eq!(unsafe { libc_kill(child.id() as i32, 2) }, 0);
    line.clear();
    stdout.read_line(&mut line).expect("reply");
    assert_eq!(line, "got-int\n");
    assert_eq!(wait_exit(&mut child).code(), Some(9));
}

/// `baton exec --tty` on a terminal: the remote terminal gets our window size, our terminal is
/// raw while the command runs (typed keys are echoed once, by the remote terminal, not also by
/// ours), and our settings are restored afterwards (`stty` run after it sees `icanon` again).
#[test]
fn exec_tty_uses_raw_mode_and_our_window_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = format!(
        "'{BATON}' exec --tty -- sh -c 'echo ready; read x; stty size; echo got:$x'; \
         stty -a | tr ' ' '\\n' | grep -x -e icanon -e -icanon"
    );
    let spec = baton_exec::CommandSpec::new("sh", dir.path())
        .args(["-c", &script])
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .pty(baton_exec::PtySize::new(33, 101));
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    let text = rt.block_on(async move {
        let (process, mut events) = baton_exec::spawn_streaming(&spec).expect("spawn in a pty");
        let mut out = Vec::new();
        let mut typed = false;
        loop {
            let event = tokio::time::timeout(T, events.recv())
                .await
                .expect("output in time");
            match event {
                Some(baton_exec::ProcessEvent::Output { chunk, .. }) => {
                    out.extend_from_slice(&chunk);
                    if !typed && String::from_utf8_lossy(&out).contains("ready") {
                        typed = true;
                        process.write_stdin(b"abc\r").await.expect("type");
                    }
                }
                Some(_) => {}
                None => break,
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    });
    assert!(
        text.contains("33 101"),
        "window size reaches the remote terminal: {text:?}"
    );
    assert!(text.contains("got:abc"), "{text:?}");
    assert_eq!(
        text.matches("abc").count(),
        2,
        "one echo (remote) plus got:abc; a cooked local terminal would echo a second time: {text:?}"
    );
    let last = text
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or_default();
    assert_eq!(last.trim(), "icanon", "settings restored: {text:?}");
}
