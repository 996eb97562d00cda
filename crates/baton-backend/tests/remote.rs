//! A remote runtime: a real `baton exec-server` (in-process, on loopback) behind a TCP proxy
//! that cuts the connection while a worker prints. The backend reports the disconnect as a
//! diagnostic, the exec-server client resumes its session, and no output is lost or doubled.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use baton_backend::{Backend, BackendConfig, ExecServerRuntime, Runtime, ServeOptions};
use common::*;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

/// Forwards connections to `upstream`; `cut` drops every live connection, `paused` refuses new
/// ones.
struct Proxy {
    addr: SocketAddr,
    cut: broadcast::Sender<()>,
    paused: Arc<AtomicBool>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let (cut, _) = broadcast::channel(4);
        let paused = Arc::new(AtomicBool::new(false));
        let (cut2, paused2) = (cut.clone(), paused.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if paused2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut cut_rx = cut2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.recv() => {}
                    }
                });
            }
        });
        Self { addr, cut, paused }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_runtime_survives_a_cut_connection_without_losing_output() {
    let root = tempfile::tempdir().expect("tempdir");
    let root_path = root.path().canonicalize().expect("canonical root");
    let exec = baton_server::ExecServer::new(baton_server::ServerConfig {
        roots: vec![root_path.clone()],
        ..baton_server::ServerConfig::default()
    })
    .expect("exec server");
    let listener = exec
        .bind_ws(
            "127.0.0.1:0".parse().expect("addr"),
            baton_server::ListenOptions::default(),
        )
        .await
        .expect("bind exec server");
    let upstream = listener.local_addr();
    tokio::spawn(listener.run());
    let proxy = Proxy::start(upstream).await;

    let remote = ExecServerRuntime::connect(
        "build1",
        &format!("ws://{}", proxy.addr),
        None,
        root_path.clone(),
        baton_client::ClientOptions::default(),
    )
    .await
    .expect("connect runtime");
    assert_eq!(remote.kind(), "exec-server");
    let data = tempfile::tempdir().expect("tempdir");
    let backend =
        Backend::open(BackendConfig::new(data.path()), vec![Arc::new(remote)]).expect("backend");
    let http_listener = baton_backend::bind(
        "127.0.0.1:0".parse().expect("addr"),
        &ServeOptions::default(),
    )
    .await
    .expect("bind");
    let addr = http_listener.local_addr().expect("addr");
    tokio::spawn(baton_backend::serve(
        http_listener,
        backend.clone(),
        ServeOptions::default(),
    ));

    let (status, runtimes) = http(addr, "GET", "/api/runtimes", None, None).await;
    assert_eq!(status, 200);
    let text = runtimes.to_string();
    assert!(text.contains("\"build1\"") && text.contains("exec-server"));
    assert!(
        !text.contains(&proxy.addr.port().to_string()),
        "the runtime's address is never exposed"
    );

    let (status, summary) = http(
        addr,
        "POST",
        "/api/runtimes/build1/workers",
        Some(
            &json!({"argv": ["sh", "-c", "i=0; while :; do echo line $i; i=$((i+1)); done"]})
                .to_string(),
        ),
        None,
    )
    .await;
    assert_eq!(status, 201, "{summary}");
    let w = summary["worker_id"].as_str().expect("id").to_owned();
    let mut ws = observe(addr, "build1", &w, Some("bo_0000000000000000")).await;
    let mut events = Vec::new();
    while events.len() < 100 {
        events.push(next_frame(&mut ws).await.expect("frame")["envelope"].clone());
    }
    // Cut the connection and keep it down until the backend reported it.
    proxy.paused.store(true, Ordering::SeqCst);
    let _ = proxy.cut.send(());
    let until_down = events_until(&mut ws, |p| p["code"] == "backend.upstream_disconnect").await;
    events.extend(until_down);
    proxy.paused.store(false, Ordering::SeqCst);
    let until_up = events_until(&mut ws, |p| p["code"] == "backend.upstream_reconnected").await;
    events.extend(until_up);
    // More output after the reconnect, then stop the worker.
    let mut more = 0;
    while more < 100 {
        let e = next_frame(&mut ws).await.expect("frame")["envelope"].clone();
        if e["payload"]["type"] == "output" {
            more += 1;
        }
        events.push(e);
    }
    let (status, r) = http(
        addr,
        "POST",
        &format!("/api/runtimes/build1/workers/{w}/stop"),
        None,
        None,
    )
    .await;
    assert_eq!((status, r["state"].as_str()), (200, Some("accepted")));
    events.extend(events_until(&mut ws, is_exit).await);

    let seqs: Vec<u64> = events.iter().map(seq_of).collect();
    assert!(seqs.windows(2).all(|p| p[0] < p[1]));
    let text = output_text(&events);
    let numbers: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("line ").and_then(|n| n.parse().ok()))
        .collect();
    assert!(numbers.len() > 200);
    assert_eq!(numbers[0], 0);
    // Every line but a possibly cut last one is there exactly once, in order.
    assert!(
        numbers[..numbers.len() - 1]
            .windows(2)
            .all(|p| p[1] == p[0] + 1),
        "gap or duplicate"
    );
    backend.shutdown().await;
    exec.shutdown();
}
