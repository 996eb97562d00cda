//! The exec server over real WebSocket connections with real processes and files.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use baton_protocol::exec::{ReadResponse, StartResponse, WriteResponse, WriteStatus};
use baton_rpc::tokio_tungstenite;
use baton_rpc::{CallError, Connection, ConnectionConfig, Handler, Peer, Transport};
use baton_server::{ExecServer, ListenError, ListenOptions, ServerConfig};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

const T: Duration = Duration::from_secs(20);

struct Notes(UnboundedSender<(String, Value)>);
impl Handler for Notes {
    fn notification(&self, _peer: &Peer, method: String, params: Value) {
        let _ = self.0.send((method, params));
    }
}

struct Fixture {
    server: ExecServer,
    url: String,
    root: tempfile::TempDir,
}

async fn fixture(tweak: impl FnOnce(&mut ServerConfig)) -> Fixture {
    let root = tempfile::tempdir().expect("tempdir");
    let mut config = ServerConfig {
        roots: vec![root.path().to_path_buf()],
        ..Default::default()
    };
    tweak(&mut config);
    let server = ExecServer::new(config).expect("server");
    let listener = server
        .bind_ws(
            "127.0.0.1:0".parse().expect("addr"),
            ListenOptions::default(),
        )
        .await
        .expect("bind");
    let url = listener.url();
    tokio::spawn(listener.run());
    Fixture { server, url, root }
}

async fn connect(url: &str) -> (Peer, UnboundedReceiver<(String, Value)>) {
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    let (tx, rx) = unbounded_channel();
    let peer = Connection::spawn(
        Transport::websocket(ws),
        ConnectionConfig::default(),
        Arc::new(Notes(tx)),
    );
    (peer, rx)
}

async fn handshake(peer: &Peer, resume: Option<&str>) -> Result<String, CallError> {
    let mut params = json!({"clientName": "test"});
    if let Some(r) = resume {
        params["resumeSessionId"] = json!(r);
    }
    let v = peer.call_value("initialize", params).await?;
    // Host facts in the shape current Codex servers send.
    assert_eq!(v["environmentInfo"]["platformOs"], "linux", "{v}");
    assert!(v["environmentInfo"]["shell"]["path"].is_string(), "{v}");
    assert!(
        v["environmentInfo"]["cwd"]
            .as_str()
            .is_some_and(|c| c.starts_with("file:///")),
        "{v}"
    );
    peer.notify("initialized", &json!({})).await?;
    Ok(v["sessionId"].as_str().expect("sessionId").to_owned())
}

async fn session(url: &str) -> (Peer, UnboundedReceiver<(String, Value)>, String) {
    let (peer, rx) = connect(url).await;
    let id = handshake(&peer, None).await.expect("initialize");
    (peer, rx, id)
}

fn code(r: Result<Value, CallError>) -> i64 {
    match r {
        Err(CallError::Server(e)) => e.code,
        other => panic!("expected a server error, got {other:?}"),
    }
}

async fn start(peer: &Peer, id: &str, cwd: &std::path::Path, argv: &[&str], extra: Value) {
    let mut params = json!({
        "processId": id, "argv": argv, "cwd": cwd, "env": {"PATH": "/usr/bin:/bin"}, "tty": false
    });
    if let (Some(p), Value::Object(extra)) = (params.as_object_mut(), extra) {
        p.extend(extra);
    }
    let r: StartResponse = peer.call("process/start", &params).await.expect("start");
    assert_eq!(r.process_id.0, id);
}

/// Reads everything until closed (following `nextSeq`), returning stdout+stderr bytes and
/// the exit code.
async fn read_all(peer: &Peer, id: &str, mut after: u64) -> (Vec<u8>, Option<i32>, u64) {
    let mut out = Vec::new();
    loop {
        let r: ReadResponse = peer
            .call(
                "process/read",
                &json!({"processId": id, "afterSeq": after, "waitMs": 10_000}),
            )
            .await
            .expect("read");
        for c in &r.chunks {
            assert!(c.seq > after, "chunk {} not after {after}", c.seq);
            out.extend_from_slice(&c.chunk.0);
        }
        after = r.next_seq - 1;
        if r.closed {
            return (out, r.exit_code, after);
        }
    }
}

/// Collects notifications for `id` until `process/closed`; checks seqs are 1, 2, 3, … with no
/// gap or duplicate.
async fn notes_until_closed(
    rx: &mut UnboundedReceiver<(String, Value)>,
    id: &str,
) -> (Vec<u8>, Vec<u8>, i64) {
    let (mut out, mut err, mut exit) = (Vec::new(), Vec::new(), -1);
    let mut expected = 1;
    loop {
        let (method, p) = tokio::time::timeout(T, rx.recv())
            .await
            .expect("notification in time")
            .expect("connection open");
        if p["processId"] != id {
            continue;
        }
        assert_eq!(p["seq"], expected, "{method} {p}");
        expected += 1;
        match method.as_str() {
            "process/output" => {
                let bytes = B64
                    .decode(p["chunk"].as_str().expect("chunk"))
                    .expect("b64");
                match p["stream"].as_str() {
                    Some("stdout") | Some("pty") => out.extend(bytes),
                    _ => err.extend(bytes),
                }
            }
            "process/exited" => exit = p["exitCode"].as_i64().expect("code"),
            "process/closed" => return (out, err, exit),
            other => panic!("unexpected {other}"),
        }
    }
}

#[tokio::test]
async fn process_lifecycle_notifications_and_read() {
    let f = fixture(|_| {}).await;
    let (peer, mut rx, _) = session(&f.url).await;
    start(
        &peer,
        "p1",
        f.root.path(),
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
        json!({}),
    )
    .await;
    let (out, err, exit) = notes_until_closed(&mut rx, "p1").await;
    assert_eq!(
        (out.as_slice(), err.as_slice(), exit),
        (&b"out\n"[..], &b"err\n"[..], 3)
    );
    let (all, code, _) = read_all(&peer, "p1", 0).await;
    assert_eq!(all.len(), 8);
    assert_eq!(code, Some(3));
    // The closed process is still known: a second start with its id is refused.
    let dup = peer
        .call_value(
            "process/start",
            json!({"processId": "p1", "argv": ["true"], "cwd": f.root.path(), "env": {}, "tty": false}),
        )
        .await;
    assert_eq!(code_of(dup), -32600);
}

fn code_of(r: Result<Value, CallError>) -> i64 {
    code(r)
}

#[tokio::test]
async fn handshake_is_enforced() {
    let f = fixture(|_| {}).await;
    let (peer, _rx) = connect(&f.url).await;
    let early = peer
        .call_value("process/read", json!({"processId": "x"}))
        .await;
    assert_eq!(code(early), -32600);
    assert_eq!(code(peer.call_value("no/such", json!({})).await), -32601);
    handshake(&peer, None).await.expect("first initialize");
    assert_eq!(
        code(
            peer.call_value("initialize", json!({"clientName": "again"}))
                .await
        ),
        -32600
    );
    assert_eq!(
        code(
            peer.call_value("process/read", json!({"processId": "nope"}))
                .await
        ),
        -32600
    );
    assert_eq!(
        code(
            peer.call_value("process/start", json!({"processId": 5}))
                .await
        ),
        -32602
    );
    let (other, _rx2) = connect(&f.url).await;
    assert_eq!(
        code(
            other
                .call_value(
                    "initialize",
                    json!({"clientName": "t", "resumeSessionId": "bogus"})
                )
                .await
        ),
        -32600
    );
}

#[tokio::test]
async fn stdin_writes_are_idempotent_by_write_id_and_argv_empty_is_rejected() {
    let f = fixture(|_| {}).await;
    let (peer, _rx, _) = session(&f.url).await;
    start(
        &peer,
        "cat",
        f.root.path(),
        &["cat"],
        json!({"pipeStdin": true}),
    )
    .await;
    for _ in 0..2 {
        let w: WriteResponse = peer
            .call(
                "process/write",
                &json!({"processId": "cat", "chunk": B64.encode("hello\n"), "writeId": "w1"}),
            )
            .await
            .expect("write");
        assert_eq!(w.status, WriteStatus::Accepted);
    }
    let w: WriteResponse = peer
        .call(
            "process/write",
            &json!({"processId": "cat", "chunk": B64.encode("bye\n"), "closeStdin": true}),
        )
        .await
        .expect("write");
    assert_eq!(w.status, WriteStatus::Accepted);
    let (out, exit, _) = read_all(&peer, "cat", 0).await;
    assert_eq!((out.as_slice(), exit), (&b"hello\nbye\n"[..], Some(0)));
    let w: WriteResponse = peer
        .call("process/write", &json!({"processId": "ghost", "chunk": ""}))
        .await
        .expect("write");
    assert_eq!(w.status, WriteStatus::UnknownProcess);
    start(&peer, "nostdin", f.root.path(), &["sleep", "30"], json!({})).await;
    let w: WriteResponse = peer
        .call(
            "process/write",
            &json!({"processId": "nostdin", "chunk": "eA=="}),
        )
        .await
        .expect("write");
    assert_eq!(w.status, WriteStatus::StdinClosed);
    let empty = peer
        .call_value(
            "process/start",
            json!({"processId": "e", "argv": [], "cwd": f.root.path(), "env": {}, "tty": false}),
        )
        .await;
    assert_eq!(code(empty), -32602);
}

#[tokio::test]
async fn terminate_kills_a_backgrounded_grandchild() {
    let f = fixture(|_| {}).await;
    let (peer, mut rx, _) = session(&f.url).await;
    start(
        &peer,
        "tree",
        f.root.path(),
        &["sh", "-c", "sleep 1000 & echo $!; wait"],
        json!({}),
    )
    .await;
    // The grandchild's pid is the first line of output.
    let (method, p) = rx.recv().await.expect("output");
    assert_eq!(method, "process/output");
    let text = String::from_utf8(
        B64.decode(p["chunk"].as_str().expect("chunk"))
            .expect("b64"),
    )
    .expect("utf8");
    let pid: i32 = text.trim().parse().expect("pid");
    assert!(alive(pid), "grandchild {pid} should run");
    let r = peer
        .call_value("process/terminate", json!({"processId": "tree"}))
        .await
        .expect("terminate");
    assert_eq!(r, json!({"running": true}));
    let (_, _, exit) = notes_until_closed_from(&mut rx, "tree", 2).await;
    assert_eq!(exit, 128 + 9);
    // The grandchild got SIGKILL with the group; it is gone or a zombie awaiting its reaper.
    let deadline = tokio::time::Instant::now() + T;
    while alive(pid) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "grandchild {pid} survived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn notes_until_closed_from(
    rx: &mut UnboundedReceiver<(String, Value)>,
    id: &str,
    mut expected: i64,
) -> (Vec<u8>, Vec<u8>, i64) {
    let mut exit = -1;
    loop {
        let (method, p) = tokio::time::timeout(T, rx.recv())
            .await
            .expect("in time")
            .expect("open");
        if p["processId"] != id {
            continue;
        }
        assert_eq!(p["seq"], expected);
        expected += 1;
        match method.as_str() {
            "process/exited" => exit = p["exitCode"].as_i64().expect("code"),
            "process/closed" => return (Vec::new(), Vec::new(), exit),
            _ => {}
        }
    }
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

#[tokio::test]
async fn concurrent_duplicate_starts_exactly_one_wins() {
    let f = fixture(|_| {}).await;
    let (peer, _rx, _) = session(&f.url).await;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let peer = peer.clone();
        let cwd = f.root.path().to_path_buf();
        tasks.push(tokio::spawn(async move {
            peer.call_value(
                "process/start",
                json!({"processId": "same", "argv": ["sleep", "30"], "cwd": cwd,
                       "env": {"PATH": "/usr/bin:/bin"}, "tty": false}),
            )
            .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.expect("join") {
            Ok(_) => ok += 1,
            Err(CallError::Server(e)) => assert_eq!(e.code, -32600),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(ok, 1);
}

#[tokio::test]
async fn a_long_poll_blocks_nothing_else() {
    let f = fixture(|_| {}).await;
    let (peer, _rx, _) = session(&f.url).await;
    start(&peer, "slow", f.root.path(), &["sleep", "1000"], json!({})).await;
    let p2 = peer.clone();
    let poll = tokio::spawn(async move {
        p2.call_value(
            "process/read",
            json!({"processId": "slow", "afterSeq": 0, "waitMs": 600_000}),
        )
        .await
    });
    // While the poll waits, another process runs to completion on the same connection.
    start(&peer, "fast", f.root.path(), &["echo", "hi"], json!({})).await;
    let (out, _, _) = read_all(&peer, "fast", 0).await;
    assert_eq!(out, b"hi\n");
    assert!(!poll.is_finished());
    // Terminating the slow process answers the poll.
    peer.call_value("process/terminate", json!({"processId": "slow"}))
        .await
        .expect("terminate");
    let r: ReadResponse =
        serde_json::from_value(poll.await.expect("join").expect("read")).expect("shape");
    assert!(r.exited || r.next_seq > 1);
}

#[tokio::test]
async fn eviction_is_reported() {
    let f = fixture(|c| c.retained_bytes = 4096).await;
    let (peer, _rx, _) = session(&f.url).await;
    start(
        &peer,
        "big",
        f.root.path(),
        &[
            "sh",
            "-c",
            "head -c 300000 /dev/zero | tr '\\0' x; echo; echo line-1999",
        ],
        json!({}),
    )
    .await;
    // Wait for the end, then read from the start.
    let (_, exit, _) = read_all(&peer, "big", u64::MAX / 2).await;
    assert_eq!(exit, Some(0));
    let r: ReadResponse = peer
        .call("process/read", &json!({"processId": "big", "afterSeq": 0}))
        .await
        .expect("read");
    let evicted = r.evicted_before.expect("evictedBefore reported");
    assert!(evicted > 1);
    assert!(r.chunks.first().expect("kept chunks").seq >= evicted);
    let text =
        String::from_utf8(r.chunks.iter().flat_map(|c| c.chunk.0.clone()).collect()).expect("utf8");
    assert!(text.ends_with("line-1999\n"), "{text}");
}

#[tokio::test]
async fn cwd_outside_roots_is_refused() {
    let f = fixture(|_| {}).await;
    let (peer, _rx, _) = session(&f.url).await;
    let r = peer
        .call_value(
            "process/start",
            json!({"processId": "x", "argv": ["true"], "cwd": "/", "env": {}, "tty": false}),
        )
        .await;
    assert_eq!(code(r), -32003);
    let r = peer
        .call_value(
            "process/start",
            json!({"processId": "x", "argv": ["true"], "cwd": "relative", "env": {}, "tty": false}),
        )
        .await;
    assert_eq!(code(r), -32602);
}

#[tokio::test]
async fn resume_after_disconnect_loses_nothing() {
    let f = fixture(|_| {}).await;
    let (peer, mut rx, sid) = session(&f.url).await;
    start(
        &peer,
        "r",
        f.root.path(),
        &["sh", "-c", "echo before; read x; echo after-$x"],
        json!({"pipeStdin": true}),
    )
    .await;
    let (method, _) = rx.recv().await.expect("first output");
    assert_eq!(method, "process/output");
    // A second connection cannot take the session while it is attached (-32010)...
    let (thief, _trx) = connect(&f.url).await;
    assert_eq!(
        code(
            thief
                .call_value(
                    "initialize",
                    json!({"clientName": "t", "resumeSessionId": sid})
                )
                .await
        ),
        -32010
    );
    // ...and that evicts the old connection.
    tokio::time::timeout(T, peer.closed())
        .await
        .expect("old connection evicted");
    // Output written while detached is kept: feed stdin from the new connection.
    let resumed = handshake(&thief, Some(&sid)).await.expect("resume");
    assert_eq!(resumed, sid);
    let w: WriteResponse = thief
        .call(
            "process/write",
            &json!({"processId": "r", "chunk": B64.encode("1\n"), "writeId": "a"}),
        )
        .await
        .expect("write");
    assert_eq!(w.status, WriteStatus::Accepted);
    let (out, exit, _) = read_all(&thief, "r", 0).await;
    assert_eq!((out.as_slice(), exit), (&b"before\nafter-1\n"[..], Some(0)));
}

#[tokio::test]
async fn detached_session_expires_and_its_processes_die() {
    let f = fixture(|c| c.session_ttl = Duration::from_millis(200)).await;
    let (peer, mut rx, sid) = session(&f.url).await;
    start(
        &peer,
        "s",
        f.root.path(),
        &["sh", "-c", "echo $$; exec sleep 1000"],
        json!({}),
    )
    .await;
    let (_, p) = rx.recv().await.expect("pid");
    let pid: i32 = String::from_utf8(B64.decode(p["chunk"].as_str().expect("c")).expect("b64"))
        .expect("utf8")
        .trim()
        .parse()
        .expect("pid");
    assert!(alive(pid));
    peer.close("test drops the connection");
    let deadline = tokio::time::Instant::now() + T;
    while f.server.session_count() > 0 || alive(pid) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "session did not expire"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (late, _lrx) = connect(&f.url).await;
    assert_eq!(
        code(handshake(&late, Some(&sid)).await.map(Value::String)),
        -32600
    );
}

async fn http(url: &str, request: &str) -> String {
    let addr = url.trim_start_matches("ws://");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    tcp.write_all(request.as_bytes()).await.expect("send");
    let mut text = String::new();
    tcp.read_to_string(&mut text).await.expect("read");
    text
}

#[tokio::test]
async fn readyz_origin_and_token() {
    let f = fixture(|_| {}).await;
    let ready = http(&f.url, "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    let cross = http(
        &f.url,
        "GET / HTTP/1.1\r\nHost: x\r\nOrigin: http://evil.example\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
    )
    .await;
    assert!(cross.starts_with("HTTP/1.1 403"), "{cross}");
    let plain = http(&f.url, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(plain.starts_with("HTTP/1.1 426"), "{plain}");

    // Off loopback a token is mandatory.
    let err = f
        .server
        .bind_ws("0.0.0.0:0".parse().expect("addr"), ListenOptions::default())
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, ListenError::TokenRequired(_)));
    // With a token, requests without it are refused and requests with it are served.
    let listener = f
        .server
        .bind_ws(
            "127.0.0.1:0".parse().expect("addr"),
            ListenOptions {
                token: Some("s3cret".into()),
                allowed_origins: vec![],
            },
        )
        .await
        .expect("bind");
    let url = listener.url();
    tokio::spawn(listener.run());
    let denied = tokio_tungstenite::connect_async(url.as_str()).await;
    assert!(denied.is_err());
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let mut req = url.as_str().into_client_request().expect("request");
    req.headers_mut()
        .insert("authorization", "Bearer s3cret".parse().expect("header"));
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("authorized");
    let (tx, _rx) = unbounded_channel();
    let peer = Connection::spawn(
        Transport::websocket(ws),
        ConnectionConfig::default(),
        Arc::new(Notes(tx)),
    );
    handshake(&peer, None).await.expect("initialize with token");
}

#[tokio::test]
async fn shutdown_kills_processes_and_closes_connections() {
    let f = fixture(|_| {}).await;
    let (peer, mut rx, _) = session(&f.url).await;
    start(
        &peer,
        "s",
        f.root.path(),
        &["sh", "-c", "echo $$; exec sleep 1000"],
        json!({}),
    )
    .await;
    let (_, p) = rx.recv().await.expect("pid");
    let pid: i32 = String::from_utf8(B64.decode(p["chunk"].as_str().expect("c")).expect("b64"))
        .expect("utf8")
        .trim()
        .parse()
        .expect("pid");
    f.server.shutdown();
    tokio::time::timeout(T, peer.closed())
        .await
        .expect("closed");
    let deadline = tokio::time::Instant::now() + T;
    while alive(pid) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "child survived shutdown"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn tty_processes_resize_and_signals() {
    let f = fixture(|_| {}).await;
    let (peer, mut rx, _) = session(&f.url).await;
    // On a pty: stdin is a terminal, output arrives on stream `pty`, resize reaches stty.
    start(
        &peer,
        "t",
        f.root.path(),
        &[
            "sh",
            "-c",
            "test -t 0 && echo is-tty; read x; stty size; exit 5",
        ],
        json!({"tty": true}),
    )
    .await;
    peer.call_value(
        "process/resize",
        json!({"processId": "t", "rows": 33, "cols": 101}),
    )
    .await
    .expect("resize");
    let w: WriteResponse = peer
        .call(
            "process/write",
            &json!({"processId": "t", "chunk": B64.encode("go\n"), "writeId": "1"}),
        )
        .await
        .expect("write");
    assert_eq!(w.status, WriteStatus::Accepted);
    let (out, _, exit) = notes_until_closed(&mut rx, "t").await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("is-tty"), "{text}");
    assert!(text.contains("33 101"), "{text}");
    assert_eq!(exit, 5);
    // Resizing a pipe process is invalid.
    start(&peer, "pipe", f.root.path(), &["sleep", "30"], json!({})).await;
    let r = peer
        .call_value(
            "process/resize",
            json!({"processId": "pipe", "rows": 1, "cols": 1}),
        )
        .await;
    assert_eq!(code(r), -32602);
    // interrupt reaches the group: a shell trap sees SIGINT.
    start(
        &peer,
        "trap",
        f.root.path(),
        &[
            "sh",
            "-c",
            "trap 'echo got-int; exit 9' INT; echo ready; while :; do sleep 0.05; done",
        ],
        json!({}),
    )
    .await;
    loop {
        let (method, p) = tokio::time::timeout(T, rx.recv())
            .await
            .expect("in time")
            .expect("open");
        if method == "process/output" && p["processId"] == "trap" {
            break;
        }
    }
    peer.call_value(
        "process/signal",
        json!({"processId": "trap", "signal": "interrupt"}),
    )
    .await
    .expect("signal");
    let (out, exit, _) = read_all(&peer, "trap", 0).await;
    assert_eq!(
        (String::from_utf8_lossy(&out).into_owned().as_str(), exit),
        ("ready\ngot-int\n", Some(9_i32))
    );
}

#[tokio::test]
async fn pipelined_writes_reach_stdin_in_arrival_order() {
    use futures::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message as Ws;
    let f = fixture(|_| {}).await;
    let (peer, _rx, sid) = session(&f.url).await;
    // cat starts reading late, so the pipe fills and writes pile up behind each other.
    start(
        &peer,
        "cat",
        f.root.path(),
        &["sh", "-c", "sleep 0.3; exec cat"],
        json!({"pipeStdin": true}),
    )
    .await;
    // A second raw connection cannot share the session while it is attached, so pipeline on
    // a fresh raw WebSocket after handing the session over.
    peer.close("hand over");
    tokio::time::timeout(T, peer.closed())
        .await
        .expect("closed");
    let (mut ws, _) = tokio_tungstenite::connect_async(f.url.as_str())
        .await
        .expect("connect");
    let text = |v: Value| Ws::text(v.to_string());
    // The old connection may not be detached yet: retry the resume until it is accepted.
    let mut id = 1000;
    loop {
        id += 1;
        ws.send(text(json!({"id": id, "method": "initialize",
            "params": {"clientName": "raw", "resumeSessionId": sid}})))
            .await
            .expect("send");
        let answer = loop {
            let Some(Ok(Ws::Text(t))) = ws.next().await else {
                panic!("closed")
            };
            let v: Value = serde_json::from_str(&t).expect("json");
            if v["id"] == id {
                break v;
            }
        };
        if answer.get("result").is_some() {
            break;
        }
        assert_eq!(answer["error"]["code"], -32010, "{answer}");
    }
    ws.send(text(json!({"method": "initialized"})))
        .await
        .expect("send");
    let mut expected = String::new();
    for i in 0..200 {
        let line = format!("line-{i:04}-{}\n", "x".repeat(2000));
        expected.push_str(&line);
        ws.send(text(json!({"id": i, "method": "process/write", "params": {
            "processId": "cat", "chunk": B64.encode(&line), "writeId": format!("w{i}")}})))
            .await
            .expect("send");
    }
    ws.send(text(
        json!({"id": 999, "method": "process/write", "params": {
        "processId": "cat", "chunk": "", "closeStdin": true}}),
    ))
    .await
    .expect("send");
    let mut out = Vec::new();
    loop {
        let Some(Ok(Ws::Text(t))) = tokio::time::timeout(T, ws.next()).await.expect("in time")
        else {
            panic!("closed")
        };
        let v: Value = serde_json::from_str(&t).expect("json");
        match v["method"].as_str() {
            Some("process/output") => out.extend(
                B64.decode(v["params"]["chunk"].as_str().expect("c"))
                    .expect("b64"),
            ),
            Some("process/closed") => break,
            _ => {}
        }
    }
    assert_eq!(String::from_utf8(out).expect("utf8"), expected);
}

#[tokio::test]
async fn an_endless_noisy_process_does_not_starve_a_quiet_one() {
    let f = fixture(|_| {}).await;
    let (peer, mut rx, _) = session(&f.url).await;
    start(
        &peer,
        "noisy",
        f.root.path(),
        &["cat", "/dev/zero"],
        json!({}),
    )
    .await;
    // Wait until the noise is flowing, then start the quiet process.
    loop {
        let (method, p) = tokio::time::timeout(T, rx.recv())
            .await
            .expect("in time")
            .expect("open");
        if method == "process/output" && p["processId"] == "noisy" {
            break;
        }
    }
    start(&peer, "quiet", f.root.path(), &["echo", "quiet"], json!({})).await;
    // The noisy output never ends, so this only finishes if the quiet events get through.
    let mut quiet_out = Vec::new();
    loop {
        let (method, p) = tokio::time::timeout(T, rx.recv())
            .await
            .expect("quiet events arrive while the noise goes on")
            .expect("open");
        if p["processId"] != "quiet" {
            continue;
        }
        match method.as_str() {
            "process/output" => quiet_out.extend(
                B64.decode(p["chunk"].as_str().expect("chunk"))
                    .expect("b64"),
            ),
            "process/closed" => break,
            _ => {}
        }
    }
    assert_eq!(quiet_out, b"quiet\n");
    let r = peer
        .call_value("process/terminate", json!({"processId": "noisy"}))
        .await
        .expect("terminate");
    assert_eq!(r, json!({"running": true}));
}
