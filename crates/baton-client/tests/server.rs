//! The client against a real Baton exec server over WebSocket: processes, files, and a forced
//! disconnect in the middle of a run (through a TCP proxy the test can cut) with no byte lost
//! or duplicated.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_client::{
    ClientError, ClientOptions, Endpoint, ExecClient, ProcessEvent, ReconnectPolicy,
};
use baton_server::{ExecServer, ListenOptions, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const T: Duration = Duration::from_secs(30);

async fn server(root: &Path) -> (ExecServer, String) {
    server_with(root, ServerConfig::default()).await
}

async fn server_with(root: &Path, config: ServerConfig) -> (ExecServer, String) {
    let server = ExecServer::new(ServerConfig {
        roots: vec![root.to_path_buf()],
        ..config
    })
    .expect("server");
    let listener = server
        .bind_ws(
            "127.0.0.1:0".parse().expect("addr"),
            ListenOptions::default(),
        )
        .await
        .expect("bind");
    let url = listener.url();
    tokio::spawn(listener.run());
    (server, url)
}

fn argv(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn path_env() -> HashMap<String, String> {
    [("PATH".to_string(), "/usr/bin:/bin".to_string())].into()
}

/// Collects events until the end; returns (stdout+pty bytes, stderr bytes, exit code, end).
async fn drain(
    p: &mut baton_client::RemoteProcess,
) -> (Vec<u8>, Vec<u8>, Option<i32>, ProcessEvent) {
    let (mut out, mut err, mut code) = (Vec::new(), Vec::new(), None);
    let mut last_seq = 0;
    loop {
        let ev = tokio::time::timeout(T, p.next_event())
            .await
            .expect("event in time")
            .expect("stream ends with Closed or Failed");
        if let Some(seq) = match &ev {
            ProcessEvent::Output { seq, .. }
            | ProcessEvent::Exited { seq, .. }
            | ProcessEvent::Closed { seq } => Some(*seq),
            ProcessEvent::Failed(_) => None,
        } {
            assert_eq!(seq, last_seq + 1, "seqs are consecutive: {ev:?}");
            last_seq = seq;
        }
        match ev {
            ProcessEvent::Output { stream, chunk, .. } => match stream {
                baton_protocol::exec::OutputStream::Stderr => err.extend(chunk),
                _ => out.extend(chunk),
            },
            ProcessEvent::Exited { exit_code, .. } => code = Some(exit_code),
            end @ (ProcessEvent::Closed { .. } | ProcessEvent::Failed(_)) => {
                return (out, err, code, end);
            }
        }
    }
}

#[tokio::test]
async fn runs_processes_and_file_operations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = std::fs::canonicalize(dir.path()).expect("canon");
    let (_server, url) = server(&root).await;
    let client = ExecClient::connect(
        Endpoint::WebSocket { url, token: None },
        ClientOptions::default(),
    )
    .await
    .expect("connect");
    assert!(!client.session_id().is_empty());
    let mut p = client
        .spawn(
            "cat",
            &argv(&["sh", "-c", "cat; echo done >&2; exit 4"]),
            &root,
            path_env(),
            false,
            true,
        )
        .await
        .expect("start");
    p.write(b"abc".to_vec()).await.expect("write");
    p.close_stdin().await.expect("close stdin");
    let (out, err, code, end) = drain(&mut p).await;
    assert_eq!(
        (out.as_slice(), err.as_slice(), code),
        (&b"abc"[..], &b"done\n"[..], Some(4))
    );
    assert!(matches!(end, ProcessEvent::Closed { .. }));

    let file = root.join("d/f.txt");
    client
        .create_directory(&root.join("d"), true)
        .await
        .expect("mkdir");
    client
        .write_file(&file, b"hello".to_vec())
        .await
        .expect("write");
    assert_eq!(client.read_file(&file).await.expect("read"), b"hello");
    assert!(client.get_metadata(&file).await.expect("stat").is_file);
    let entries = client.read_directory(&root.join("d")).await.expect("ls");
    assert_eq!(entries.len(), 1);
    client
        .copy(&file, &root.join("g.txt"), false)
        .await
        .expect("copy");
    client
        .remove(&root.join("d"), true, false)
        .await
        .expect("rm");
    match client.read_file(&file).await {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, -32004),
        other => panic!("expected not found, got {other:?}"),
    }
    match client.read_file(Path::new("/etc/passwd")).await {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, -32003),
        other => panic!("expected access denied, got {other:?}"),
    }
}

/// A TCP proxy whose live connections can be cut and whose new connections wait while it is
/// closed.
struct Proxy {
    addr: std::net::SocketAddr,
    open: watch::Sender<bool>,
    generation: watch::Sender<u64>,
    accepted: Arc<Mutex<u64>>,
}

impl Proxy {
    async fn start(upstream: std::net::SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let open = watch::channel(true).0;
        let generation = watch::channel(0u64).0;
        let accepted = Arc::new(Mutex::new(0));
        let (open_rx, gen_tx, acc) = (open.subscribe(), generation.clone(), accepted.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut down, _)) = listener.accept().await else {
                    return;
                };
                *acc.lock().expect("lock") += 1;
                let mut open_rx = open_rx.clone();
                let mut gen_rx = gen_tx.subscribe();
                tokio::spawn(async move {
                    if open_rx.wait_for(|o| *o).await.is_err() {
                        return;
                    }
                    let my_gen = *gen_rx.borrow_and_update();
                    let Ok(mut up) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                        _ = gen_rx.wait_for(|g| *g != my_gen) => {}
                    }
                });
            }
        });
        Self {
            addr,
            open,
            generation,
            accepted,
        }
    }

    /// Drops every live connection and holds new ones until `resume`.
    fn cut(&self) {
        self.open.send_replace(false);
        self.generation.send_modify(|g| *g += 1);
    }

    fn resume(&self) {
        self.open.send_replace(true);
    }
}

#[tokio::test]
async fn resume_after_forced_disconnect_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = std::fs::canonicalize(dir.path()).expect("canon");
    let (_server, url) = server(&root).await;
    let upstream = url.trim_start_matches("ws://").parse().expect("addr");
    let proxy = Proxy::start(upstream).await;
    let client = ExecClient::connect(
        Endpoint::WebSocket {
            url: format!("ws://{}", proxy.addr),
            token: None,
        },
        ClientOptions {
            reconnect: ReconnectPolicy {
                max_attempts: 50,
                initial_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(100),
            },
            ..Default::default()
        },
    )
    .await
    .expect("connect");
    let sid = client.session_id();
    // Prints a first burst, waits for the `go` file, prints a second burst while the client is
    // disconnected, then marks `done`.
    let script = "i=0; while [ $i -lt 500 ]; do echo a-$i; i=$((i+1)); done; \
                  while [ ! -e go ]; do sleep 0.01; done; \
                  i=0; while [ $i -lt 2000 ]; do echo b-$i; i=$((i+1)); done; touch done";
    let mut p = client
        .spawn(
            "burst",
            &argv(&["sh", "-c", script]),
            &root,
            path_env(),
            false,
            false,
        )
        .await
        .expect("start");
    // Consume part of the first burst, then cut the connection.
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("a-100\n") {
        match tokio::time::timeout(T, p.next_event())
            .await
            .expect("in time")
        {
            Some(ProcessEvent::Output { chunk, .. }) => seen.extend(chunk),
            other => panic!("unexpected {other:?}"),
        }
    }
    proxy.cut();
    std::fs::write(root.join("go"), b"").expect("go");
    let deadline = tokio::time::Instant::now() + T;
    while !root.join("done").exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "script did not finish"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proxy.resume();
    let (rest, _, code, end) = drain_after(&mut p).await;
    seen.extend(rest);
    assert!(matches!(end, ProcessEvent::Closed { .. }), "{end:?}");
    assert_eq!(code, Some(0));
    let mut expected = String::new();
    for i in 0..500 {
        expected.push_str(&format!("a-{i}\n"));
    }
    for i in 0..2000 {
        expected.push_str(&format!("b-{i}\n"));
    }
    assert_eq!(String::from_utf8(seen).expect("utf8"), expected);
    assert_eq!(client.session_id(), sid, "the same session was resumed");
    assert!(
        *proxy.accepted.lock().expect("lock") >= 2,
        "a reconnect happened"
    );
}

/// Like [`drain`] but without assuming the first seq is 1.
async fn drain_after(
    p: &mut baton_client::RemoteProcess,
) -> (Vec<u8>, Vec<u8>, Option<i32>, ProcessEvent) {
    let (mut out, mut code) = (Vec::new(), None);
    let mut last: Option<u64> = None;
    loop {
        let ev = tokio::time::timeout(T, p.next_event())
            .await
            .expect("event in time")
            .expect("stream ends with Closed or Failed");
        let seq = match &ev {
            ProcessEvent::Output { seq, .. }
            | ProcessEvent::Exited { seq, .. }
            | ProcessEvent::Closed { seq } => Some(*seq),
            ProcessEvent::Failed(_) => None,
        };
        if let (Some(s), Some(l)) = (seq, last) {
            assert_eq!(s, l + 1, "consecutive seqs");
        }
        if seq.is_some() {
            last = seq;
        }
        match ev {
            ProcessEvent::Output { chunk, .. } => out.extend(chunk),
            ProcessEvent::Exited { exit_code, .. } => code = Some(exit_code),
            end => return (out, Vec::new(), code, end),
        }
    }
}

#[tokio::test]
async fn giving_up_fails_processes_and_calls_fast() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = std::fs::canonicalize(dir.path()).expect("canon");
    let (server, url) = server(&root).await;
    let client = ExecClient::connect(
        Endpoint::WebSocket { url, token: None },
        ClientOptions {
            reconnect: ReconnectPolicy {
                max_attempts: 2,
                initial_backoff: Duration::from_millis(5),
                max_backoff: Duration::from_millis(5),
            },
            ..Default::default()
        },
    )
    .await
    .expect("connect");
    let mut p = client
        .spawn(
            "s",
            &argv(&["sleep", "1000"]),
            &root,
            path_env(),
            false,
            false,
        )
        .await
        .expect("start");
    server.shutdown();
    let (_, _, _, end) = drain(&mut p).await;
    match end {
        ProcessEvent::Failed(message) => assert!(message.contains("not recovered"), "{message}"),
        other => panic!("expected failure, got {other:?}"),
    }
    match client.read_file(&root.join("x")).await {
        Err(ClientError::Disconnected(_)) => {}
        other => panic!("expected a fast failure, got {other:?}"),
    }
}

#[tokio::test]
async fn a_fast_producer_loses_nothing_while_attached() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = std::fs::canonicalize(dir.path()).expect("canon");
    // Retention far smaller than the output: only backpressure can keep every byte.
    let (_server, url) = server_with(
        &root,
        ServerConfig {
            retained_bytes: 64 * 1024,
            ..Default::default()
        },
    )
    .await;
    let client = ExecClient::connect(
        Endpoint::WebSocket { url, token: None },
        ClientOptions::default(),
    )
    .await
    .expect("connect");
    let size = 16 * 1024 * 1024;
    let mut p = client
        .spawn(
            "fast",
            &argv(&["head", "-c", &size.to_string(), "/dev/zero"]),
            &root,
            path_env(),
            false,
            false,
        )
        .await
        .expect("start");
    let (out, _, code, end) = drain(&mut p).await;
    assert!(matches!(end, ProcessEvent::Closed { .. }), "{end:?}");
    assert_eq!((out.len(), code), (size, Some(0)));
    assert!(out.iter().all(|&b| b == 0));
}
