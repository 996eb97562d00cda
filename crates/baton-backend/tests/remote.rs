//! Runner-session runtimes ([`RunnerRuntime`]):
//! - a real `baton exec-server` (in-process, on loopback) behind a TCP proxy that cuts the
//!   connection while a worker prints: the backend reports the disconnect as a diagnostic, the
//!   exec-server client resumes its session, and no output is lost or doubled;
//! - runtimes that are down or silent: `unavailable` state, 502, 504;
//! - a `local:` runner runtime: tty workers, cancel (SIGINT) reaching a trap, cwd confinement.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use baton_backend::{Backend, BackendConfig, RunnerRuntime, Runtime, ServeOptions};
use baton_runner::{DestinationOptions, ExecServerProvider, LocalProvider, parse_destination};
use common::*;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

/// Forwards connections to `upstream` (which [`Proxy::retarget`] changes for new ones); `cut`
/// drops every live connection, `paused` refuses new ones.
struct Proxy {
    addr: SocketAddr,
    cut: broadcast::Sender<()>,
    paused: Arc<AtomicBool>,
    upstream: Arc<std::sync::Mutex<SocketAddr>>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let (cut, _) = broadcast::channel(4);
        let paused = Arc::new(AtomicBool::new(false));
        let upstream = Arc::new(std::sync::Mutex::new(upstream));
        let (cut2, paused2, upstream2) = (cut.clone(), paused.clone(), upstream.clone());
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
                let upstream = *upstream2.lock().expect("upstream");
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
        Self {
            addr,
            cut,
            paused,
            upstream,
        }
    }

    /// New connections go to `to`; live ones are cut.
    fn retarget(&self, to: SocketAddr) {
        *self.upstream.lock().expect("upstream") = to;
        let _ = self.cut.send(());
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

    let store = tempfile::tempdir().expect("tempdir");
    let destination = parse_destination(
        "build1",
        &format!("ws://{}", proxy.addr),
        &DestinationOptions {
            workspace: Some(root_path.clone()),
            ..Default::default()
        },
    )
    .expect("destination");
    let remote = Arc::new(RunnerRuntime::new(
        "build1",
        Arc::new(ExecServerProvider::new(store.path()).expect("provider")),
        destination,
        GUARD,
    ));
    assert_eq!(remote.kind(), "exec-server");
    assert_eq!(remote.state(), "connecting");
    let data = tempfile::tempdir().expect("tempdir");
    let backend = Backend::open(BackendConfig::new(data.path()), vec![remote]).expect("backend");
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

/// Serves `backend` on loopback; returns the address.
async fn serve(backend: &Backend) -> SocketAddr {
    let listener = baton_backend::bind(
        "127.0.0.1:0".parse().expect("addr"),
        &ServeOptions::default(),
    )
    .await
    .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(baton_backend::serve(
        listener,
        backend.clone(),
        ServeOptions::default(),
    ));
    addr
}

fn ws_runtime(id: &str, url: String, store: &std::path::Path, timeout: Duration) -> RunnerRuntime {
    let destination = parse_destination(
        id,
        &url,
        &DestinationOptions {
            workspace: Some("/".into()),
            ..Default::default()
        },
    )
    .expect("destination");
    RunnerRuntime::new(
        id,
        Arc::new(ExecServerProvider::new(store).expect("provider")),
        destination,
        timeout,
    )
}

/// A runtime nobody listens for is `unavailable` and answers 502; one that accepts TCP but
/// never speaks WebSocket answers 504 after the runner timeout. Neither stops the backend, and
/// neither address appears in any answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_and_silent_runtimes_map_to_502_and_504() {
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        l.local_addr().expect("addr").port()
    };
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            held.push(conn);
        }
    });
    let store = tempfile::tempdir().expect("tempdir");
    let down = Arc::new(ws_runtime(
        "down",
        format!("ws://127.0.0.1:{closed_port}"),
        store.path(),
        GUARD,
    ));
    let mute = Arc::new(ws_runtime(
        "mute",
        format!("ws://{silent_addr}"),
        store.path(),
        Duration::from_millis(500),
    ));
    let data = tempfile::tempdir().expect("tempdir");
    let backend = Backend::open(
        BackendConfig::new(data.path()),
        vec![down.clone(), mute.clone()],
    )
    .expect("backend");
    let addr = serve(&backend).await;
    let body = json!({"argv": ["true"]}).to_string();

    let (status, r) = http(
        addr,
        "POST",
        "/api/runtimes/down/workers",
        Some(&body),
        None,
    )
    .await;
    assert_eq!(status, 502, "{r}");
    assert_eq!(r["error"], "backend.runtime_unavailable");
    assert!(!r.to_string().contains(&closed_port.to_string()), "{r}");
    let (_, list) = http(addr, "GET", "/api/runtimes", None, None).await;
    let state = |id: &str| {
        list["runtimes"]
            .as_array()
            .expect("runtimes")
            .iter()
            .find(|r| r["runtime_id"] == id)
            .map(|r| r["state"].clone())
    };
    assert_eq!(state("down"), Some(json!("unavailable")), "{list}");

    let (status, r) = http(
        addr,
        "POST",
        "/api/runtimes/mute/workers",
        Some(&body),
        None,
    )
    .await;
    assert_eq!(status, 504, "{r}");
    assert_eq!(r["error"], "backend.runtime_timeout");
    assert!(
        !r.to_string().contains(&silent_addr.port().to_string()),
        "{r}"
    );

    // The embedded runtime still works.
    let (status, _) = http(
        addr,
        "POST",
        "/api/runtimes/local/workers",
        Some(&body),
        None,
    )
    .await;
    assert_eq!(status, 201);
    backend.shutdown().await;
}

/// A `local:` runner runtime: a tty worker sees a terminal, `cancel` delivers SIGINT to its
/// trap (exit code 3), and a cwd outside the runtime's workspace is refused with 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_runtime_runs_tty_workers_and_cancel_interrupts() {
    let ws = tempfile::tempdir().expect("tempdir");
    let store = tempfile::tempdir().expect("tempdir");
    let workspace = ws.path().canonicalize().expect("canonical");
    let destination = parse_destination(
        "box",
        &format!("local:{}", workspace.display()),
        &DestinationOptions::default(),
    )
    .expect("destination");
    let runtime = Arc::new(RunnerRuntime::new(
        "box",
        Arc::new(LocalProvider::new(store.path()).expect("provider")),
        destination,
        GUARD,
    ));
    runtime.start();
    let data = tempfile::tempdir().expect("tempdir");
    let backend =
        Backend::open(BackendConfig::new(data.path()), vec![runtime.clone()]).expect("backend");
    let addr = serve(&backend).await;

    let script = "trap 'echo got-int; exit 3' INT; [ -t 0 ] && echo on-a-tty; pwd; echo ready; \
                  while :; do sleep 0.05; done";
    let summary = spawn_worker_on(
        addr,
        "box",
        json!({"argv": ["sh", "-c", script], "tty": true}),
    )
    .await;
    assert_eq!(runtime.state(), "available");
    assert_eq!(summary["cwd"], workspace.display().to_string());
    let w = summary["worker_id"].as_str().expect("id").to_owned();
    let mut obs = observe(addr, "box", &w, Some("bo_0000000000000000")).await;
    let mut events = events_until_output(&mut obs, "ready").await;
    let (status, r) = http(
        addr,
        "POST",
        &format!("/api/runtimes/box/workers/{w}/cancel"),
        Some(r#"{"reason":"test"}"#),
        None,
    )
    .await;
    assert_eq!(
        (status, r["state"].as_str()),
        (200, Some("accepted")),
        "{r}"
    );
    events.extend(events_until(&mut obs, is_exit).await);
    let text = output_text(&events);
    assert!(text.contains("on-a-tty"), "{text:?}");
    assert!(text.contains(&workspace.display().to_string()), "{text:?}");
    assert!(text.contains("got-int"), "{text:?}");
    let exit = events.last().expect("exit");
    assert_eq!(exit["payload"]["exit_code"], 3, "{exit}");
    assert!(
        events
            .iter()
            .filter(|e| e["payload"]["type"] == "output")
            .all(|e| e["payload"]["stream"] == "pty")
    );

    let (status, r) = http(
        addr,
        "POST",
        "/api/runtimes/box/workers",
        Some(&json!({"argv": ["true"], "cwd": "/"}).to_string()),
        None,
    )
    .await;
    assert_eq!(status, 400, "{r}");
    assert!(
        r["message"].as_str().is_some_and(|m| m.contains("outside")),
        "{r}"
    );
    backend.shutdown().await;
}

/// Starts an in-process `baton exec-server` on `addr` rooted at `root`.
async fn exec_server_at(
    root: &std::path::Path,
    addr: SocketAddr,
) -> (baton_server::ExecServer, SocketAddr) {
    exec_server_with(
        baton_server::ServerConfig {
            roots: vec![root.to_path_buf()],
            ..baton_server::ServerConfig::default()
        },
        addr,
    )
    .await
}

/// Starts an in-process `baton exec-server` with `config` on `addr`.
async fn exec_server_with(
    config: baton_server::ServerConfig,
    addr: SocketAddr,
) -> (baton_server::ExecServer, SocketAddr) {
    let exec = baton_server::ExecServer::new(config).expect("exec server");
    let listener = exec
        .bind_ws(addr, baton_server::ListenOptions::default())
        .await
        .expect("bind exec server");
    let bound = listener.local_addr();
    tokio::spawn(listener.run());
    (exec, bound)
}

/// The exec server behind a runtime is replaced (its sessions are gone): the runtime opens a
/// new session, so a spawn works again after at most one failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_exec_server_gets_a_new_session() {
    let root = tempfile::tempdir().expect("tempdir");
    let root_path = root.path().canonicalize().expect("canonical root");
    let (first, first_addr) =
        exec_server_at(&root_path, "127.0.0.1:0".parse().expect("addr")).await;
    let proxy = Proxy::start(first_addr).await;
    let addr = proxy.addr;
    let store = tempfile::tempdir().expect("tempdir");
    let destination = parse_destination(
        "build1",
        &format!("ws://{addr}"),
        &DestinationOptions {
            workspace: Some(root_path.clone()),
            ..Default::default()
        },
    )
    .expect("destination");
    let runtime = Arc::new(RunnerRuntime::new(
        "build1",
        Arc::new(ExecServerProvider::new(store.path()).expect("provider")),
        destination,
        Duration::from_secs(20),
    ));
    let data = tempfile::tempdir().expect("tempdir");
    let backend = Backend::open(BackendConfig::new(data.path()), vec![runtime]).expect("backend");
    let http_addr = serve(&backend).await;
    let body = json!({"argv": ["sh", "-c", "echo alive"]}).to_string();
    let (status, r) = http(
        http_addr,
        "POST",
        "/api/runtimes/build1/workers",
        Some(&body),
        None,
    )
    .await;
    assert_eq!(status, 201, "{r}");

    first.shutdown();
    // Same address (the proxy), fresh server: none of the old sessions exist there.
    let (_second, second_addr) =
        exec_server_at(&root_path, "127.0.0.1:0".parse().expect("addr")).await;
    proxy.retarget(second_addr);
    let mut answers = Vec::new();
    let w = loop {
        let (status, r) = http(
            http_addr,
            "POST",
            "/api/runtimes/build1/workers",
            Some(&body),
            None,
        )
        .await;
        answers.push((status, r.clone()));
        if status == 201 {
            break r["worker_id"].as_str().expect("id").to_owned();
        }
        assert!(answers.len() < 3, "no recovery: {answers:?}");
    };
    let mut ws = observe(http_addr, "build1", &w, Some("bo_0000000000000000")).await;
    let events = events_until(&mut ws, is_exit).await;
    assert_eq!(output_text(&events), "alive\n");
    backend.shutdown().await;
}

/// A backend with one exec-server runtime (`build1` at `url`, workspace `root`) on its own
/// thread and Tokio runtime ([`TestServer`]), so the test can make it vanish like a crashed
/// process.
fn backend_with_exec_runtime(
    data: &std::path::Path,
    url: &str,
    root: &std::path::Path,
) -> TestServer {
    let (store, url, root) = (data.join("runners"), url.to_owned(), root.to_path_buf());
    TestServer::start_with(
        data,
        baton_backend::Retention::default(),
        None,
        "127.0.0.1:0".parse().expect("addr"),
        move || {
            let destination = parse_destination(
                "build1",
                &url,
                &DestinationOptions {
                    workspace: Some(root),
                    ..Default::default()
                },
            )
            .expect("destination");
            vec![Arc::new(RunnerRuntime::new(
                "build1",
                Arc::new(ExecServerProvider::new(&store).expect("provider")),
                destination,
                GUARD,
            )) as Arc<dyn Runtime>]
        },
    )
}

/// The backend dies while a worker on an exec-server runtime prints; the worker keeps running
/// on the exec server, a new backend on the same data resumes the runtime's session, follows
/// the worker again, and an observer from the first cursor sees every line exactly once, in
/// order, across both backends; the worker can still be stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_on_an_exec_server_survive_a_backend_restart() {
    let root = tempfile::tempdir().expect("tempdir");
    let root_path = root.path().canonicalize().expect("canonical root");
    let (exec, exec_addr) = exec_server_at(&root_path, "127.0.0.1:0".parse().expect("addr")).await;
    let url = format!("ws://{exec_addr}");
    let data = tempfile::tempdir().expect("tempdir");

    let first = backend_with_exec_runtime(data.path(), &url, &root_path);
    let (status, summary) = http(
        first.addr,
        "POST",
        "/api/runtimes/build1/workers",
        Some(
            &json!({"argv": ["sh", "-c",
                "i=0; while :; do echo line $i; i=$((i+1)); sleep 0.005; done"]})
            .to_string(),
        ),
        None,
    )
    .await;
    assert_eq!(status, 201, "{summary}");
    let w = summary["worker_id"].as_str().expect("id").to_owned();
    let mut ws = observe(first.addr, "build1", &w, Some("bo_0000000000000000")).await;
    events_until_output(&mut ws, "line 50\n").await;
    drop(ws);
    first.kill();

    let second = backend_with_exec_runtime(data.path(), &url, &root_path);
    let mut ws = observe(second.addr, "build1", &w, Some("bo_0000000000000000")).await;
    let mut events = events_until(&mut ws, |p| p["code"] == "backend.worker_reattached").await;
    events.extend(events_until_output(&mut ws, "line 300\n").await);
    let (status, r) = http(
        second.addr,
        "POST",
        &format!("/api/runtimes/build1/workers/{w}/stop"),
        None,
        None,
    )
    .await;
    assert_eq!(
        (status, r["state"].as_str()),
        (200, Some("accepted")),
        "{r}"
    );
    events.extend(events_until(&mut ws, is_exit).await);

    assert!(
        !events
            .iter()
            .any(|e| e["payload"]["code"] == "backend.worker_lost"),
        "the worker was followed again, not lost"
    );
    let numbers: Vec<u64> = output_text(&events)
        .lines()
        .filter_map(|l| l.strip_prefix("line ").and_then(|n| n.parse().ok()))
        .collect();
    assert_eq!(numbers[0], 0);
    assert!(numbers.len() > 300, "{}", numbers.len());
    // Every line but a possibly cut last one, exactly once and in order, across the restart.
    assert!(
        numbers[..numbers.len() - 1]
            .windows(2)
            .all(|p| p[1] == p[0] + 1),
        "gap or duplicate across the restart: {numbers:?}"
    );
    drop(second);
    exec.shutdown();
}

/// While the backend is away, a worker prints more than the exec server retains: the restarted
/// backend says which events are missing (`backend.output_gap`) instead of pretending the log
/// is complete, and goes on with what follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_dropped_while_the_backend_was_away_are_reported_as_a_gap() {
    let root = tempfile::tempdir().expect("tempdir");
    let root_path = root.path().canonicalize().expect("canonical root");
    let (exec, exec_addr) = exec_server_with(
        baton_server::ServerConfig {
            roots: vec![root_path.clone()],
            retained_bytes: 4096,
            ..baton_server::ServerConfig::default()
        },
        "127.0.0.1:0".parse().expect("addr"),
    )
    .await;
    let url = format!("ws://{exec_addr}");
    let data = tempfile::tempdir().expect("tempdir");
    let first = backend_with_exec_runtime(data.path(), &url, &root_path);
    // Waits for `go`, prints 64 chunks of 1 KiB, says so on disk, then prints `after`.
    let script = "echo waiting; while [ ! -f go ]; do sleep 0.01; done; \
                  for i in $(seq 1 64); do head -c 1023 /dev/zero | tr '\\0' x; echo; sleep 0.001; done; \
                  touch burst-done; while [ ! -f finish ]; do sleep 0.01; done; echo after";
    let summary = spawn_worker_on(
        first.addr,
        "build1",
        json!({"argv": ["sh", "-c", script], "cwd": root_path}),
    )
    .await;
    let w = summary["worker_id"].as_str().expect("id").to_owned();
    let mut ws = observe(first.addr, "build1", &w, Some("bo_0000000000000000")).await;
    events_until_output(&mut ws, "waiting").await;
    drop(ws);
    first.kill();

    std::fs::write(root_path.join("go"), "").expect("go");
    let deadline = std::time::Instant::now() + GUARD;
    while !root_path.join("burst-done").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the burst never ended"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let second = backend_with_exec_runtime(data.path(), &url, &root_path);
    let mut ws = observe(second.addr, "build1", &w, Some("bo_0000000000000000")).await;
    let mut events = events_until(&mut ws, |p| p["code"] == "backend.output_gap").await;
    std::fs::write(root_path.join("finish"), "").expect("finish");
    events.extend(events_until(&mut ws, is_exit).await);
    let gap = events
        .iter()
        .find(|e| e["payload"]["code"] == "backend.output_gap")
        .expect("gap");
    assert!(
        gap["payload"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("dropped by the runtime")),
        "{gap}"
    );
    assert!(
        output_text(&events).ends_with("after\n"),
        "{}",
        output_text(&events)
    );
    assert_eq!(events.last().expect("exit")["payload"]["exit_code"], 0);
    drop(second);
    exec.shutdown();
}
