//! The provider contract for `exec-server`, against a real `baton exec-server` process (the
//! workspace's `baton` binary: `$BATON_BIN`, else `target/debug/baton`; `cargo test
//! --workspace` builds it), plus a dropped-connection test through a TCP proxy the test cuts.

mod contract;

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use support::baton_bin;

use baton_exec::{CommandSpec, Process, ProcessEvent, SpawnOptions};
use baton_runner::{
    ExecServerProvider, RunnerCommandRequest, RunnerDestination, RunnerError, RunnerEvent,
    RunnerProvider, RunnerStream,
};
use contract::{Harness, T};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The server process; on drop it gets SIGTERM and a bounded wait, so that it kills the
/// processes it started (a SIGKILL alone would orphan them when a test fails midway).
struct Server(Process);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.signal(baton_exec::Signal::Terminate);
        let process = self.0.clone();
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async {
                let _ = tokio::time::timeout(T, process.wait()).await;
            })
        });
    }
}

/// Starts `baton exec-server` on loopback with `root`; returns the server (stopped on drop)
/// and the URL it printed.
async fn start_server(root: &Path) -> (Server, String) {
    let spec = CommandSpec::new(baton_bin(), root)
        .args(["exec-server", "--listen", "ws://127.0.0.1:0", "--root"])
        .arg(root)
        .env("PATH", "/usr/local/bin:/usr/bin:/bin");
    let process = baton_exec::spawn(&spec, SpawnOptions::streaming()).expect("spawn server");
    let mut events = process.take_events().expect("events");
    let mut line = Vec::new();
    while !line.ends_with(b"\n") {
        match tokio::time::timeout(T, events.recv())
            .await
            .expect("url in time")
        {
            Some(ProcessEvent::Output { stream, chunk, .. }) => {
                if stream == baton_exec::Stream::Stdout {
                    line.extend_from_slice(&chunk);
                }
            }
            other => panic!("server ended before printing its url: {other:?}"),
        }
    }
    // Keep draining (stderr logs) so the server never blocks on a full pipe.
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    let url = String::from_utf8(line).expect("utf8").trim().to_string();
    assert!(url.starts_with("ws://127.0.0.1:"), "{url}");
    (Server(process), url)
}

fn destination_for(url: String) -> contract::MakeDestination {
    Box::new(move |ws: &Path, read_roots: &[PathBuf]| RunnerDestination {
        id: "remote".into(),
        provider_id: "exec-server".into(),
        config: serde_json::json!({ "url": url, "workspace": ws, "read_roots": read_roots }),
        default_manifest: Default::default(),
    })
}

async fn exec_server() -> Harness {
    let (tmp, base, read_root, outside) = Harness::layout();
    let (server, url) = start_server(&base.join("allowed")).await;
    let provider = ExecServerProvider::new(&base.join("runner")).expect("provider");
    Harness {
        provider: Arc::new(provider),
        base,
        read_root,
        outside,
        make_destination: destination_for(url),
        next: AtomicUsize::new(0),
        _guard: Box::new((tmp, server)),
    }
}

contract_suite!(exec_server);

/// A TCP proxy whose live connections the test can cut (new ones still pass).
async fn cuttable_proxy(target: String) -> (String, watch::Sender<u64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (cut, cut_rx) = watch::channel(0u64);
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let target = target.clone();
            let mut cut_rx = cut_rx.clone();
            cut_rx.borrow_and_update();
            tokio::spawn(async move {
                let Ok(mut outbound) = TcpStream::connect(&target).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = cut_rx.changed() => {}
                }
            });
        }
    });
    (format!("ws://{addr}"), cut)
}

/// The connection drops in the middle of a command: the client reconnects and resumes the
/// server session; stdin written after the drop arrives once and every output byte is seen
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_after_the_connection_drops() {
    let (tmp, base, _read_root, _outside) = Harness::layout();
    let (_server, url) = start_server(&base.join("allowed")).await;
    let (proxy_url, cut) = cuttable_proxy(url.trim_start_matches("ws://").to_string()).await;
    let provider = ExecServerProvider::new(&base.join("runner")).expect("provider");
    let ws = base.join("allowed/ws");
    std::fs::create_dir_all(&ws).expect("mkdir");
    let session = provider
        .create_session(destination_for(proxy_url)(&ws, &[]))
        .await
        .expect("create");
    let mut p = session
        .spawn(RunnerCommandRequest::new(
            "chat",
            "sh",
            ["-c", "echo before; read line; echo \"after $line\""],
        ))
        .await
        .expect("spawn");
    let mut out = Vec::new();
    while !out.ends_with(b"before\n") {
        match tokio::time::timeout(T, p.next_event())
            .await
            .expect("in time")
        {
            Some(RunnerEvent::Output {
                stream: RunnerStream::Stdout,
                chunk,
                ..
            }) => out.extend(chunk),
            other => panic!("unexpected {other:?}"),
        }
    }
    cut.send_modify(|n| *n += 1);
    p.write_stdin(b"resumed\n")
        .await
        .expect("stdin after the drop");
    let rest = tokio::time::timeout(T, p.collect()).await.expect("in time");
    out.extend(rest.stdout);
    assert_eq!(String::from_utf8_lossy(&out), "before\nafter resumed\n");
    assert_eq!(rest.exit_code, Some(0), "{:?}", rest.failure);
    session.close().await.expect("close");
    drop(tmp);
}

/// The caller goes away (session dropped without close, as in a backend restart) while a
/// command runs; a session resumed from the persisted state re-follows the command, feeds its
/// stdin and sees it finish. Local sessions cannot do this and say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_session_reattaches_a_running_command() {
    let h = exec_server().await;
    let s = h.session().await;
    let mut p = s
        .spawn(RunnerCommandRequest::new(
            "chat",
            "sh",
            ["-c", "echo one; read x; echo \"two $x\""],
        ))
        .await
        .expect("spawn");
    let mut seen = Vec::new();
    while !seen.ends_with(b"one\n") {
        match tokio::time::timeout(T, p.next_event())
            .await
            .expect("in time")
        {
            Some(RunnerEvent::Output { chunk, .. }) => seen.extend(chunk),
            other => panic!("unexpected {other:?}"),
        }
    }
    let state = s.state();
    assert!(
        state.metadata["commands"]["chat"].is_string(),
        "running commands are in the state: {}",
        state.metadata
    );
    let json = serde_json::to_string(&state).expect("persist");
    drop(s);
    match tokio::time::timeout(T, p.next_event())
        .await
        .expect("in time")
    {
        Some(RunnerEvent::Failed { .. }) | None => {}
        other => panic!("the old follower ends when its session is dropped: {other:?}"),
    }
    let resumed = h
        .provider
        .resume_session(serde_json::from_str(&json).expect("state"))
        .await
        .expect("resume");
    let again = resumed.attach_command("chat").await.expect("attach");
    again.write_stdin(b"resumed\n").await.expect("stdin");
    let out = tokio::time::timeout(T, again.collect())
        .await
        .expect("in time");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "one\ntwo resumed\n");
    assert_eq!(out.exit_code, Some(0));
    assert!(matches!(
        resumed.attach_command("chat").await,
        Err(RunnerError::UnknownCommand(_))
    ));
    resumed.close().await.expect("close");

    let local = baton_runner::LocalProvider::new(&h.base.join("local")).expect("local");
    let ls = local
        .create_session(RunnerDestination {
            id: "l".into(),
            provider_id: "local".into(),
            config: serde_json::Value::Null,
            default_manifest: Default::default(),
        })
        .await
        .expect("local session");
    assert!(matches!(
        ls.attach_command("x").await,
        Err(RunnerError::Unsupported { .. })
    ));
    ls.close().await.expect("close");
}

/// A snapshot larger than one exec-server message (a 50 MiB incompressible file, 67 MiB as base64) restores
/// into a fresh workspace byte for byte: the tar goes over in parts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_snapshot_restores_in_parts() {
    let h = exec_server().await;
    let dest = h.destination();
    let ws = PathBuf::from(dest.config["workspace"].as_str().expect("workspace"));
    // Incompressible: BLAKE3's output stream.
    let mut big = vec![0u8; 50 << 20];
    blake3::Hasher::new()
        .update(b"baton")
        .finalize_xof()
        .fill(&mut big);
    std::fs::write(ws.join("big.bin"), &big).expect("write big");
    let session = h.provider.create_session(dest).await.expect("create");
    let snapshot = session.snapshot().await.expect("snapshot");
    session.close().await.expect("close");

    let target = h.destination();
    let target_ws = PathBuf::from(target.config["workspace"].as_str().expect("workspace"));
    let restored = h
        .provider
        .create_session_from_snapshot(target, snapshot)
        .await
        .expect("restore");
    let back = std::fs::read(target_ws.join("big.bin")).expect("restored file");
    assert!(
        back == big,
        "restored bytes differ ({} vs {})",
        back.len(),
        big.len()
    );
    let leftovers: Vec<_> = std::fs::read_dir(&target_ws)
        .expect("ls")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".baton-restore"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    restored.close().await.expect("close");
}
