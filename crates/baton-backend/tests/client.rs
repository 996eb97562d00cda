//! The `baton-client` backend observer against a real backend: transcript then live events,
//! input, reconnect across a server restart, resync on an expired cursor, failures as
//! diagnostics.

mod common;

use std::time::Duration;

use baton_backend::Retention;
use baton_client::backend::{
    BackendEvent, BackendObserver, BackendTarget, ObserveOptions, decode_cursor,
};
use common::*;
use serde_json::json;

fn fast() -> ObserveOptions {
    ObserveOptions {
        max_reconnects: 50,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        transcript_limit: 512,
    }
}

async fn next(o: &mut BackendObserver) -> BackendEvent {
    tokio::time::timeout(GUARD, o.next_event())
        .await
        .expect("event in time")
        .expect("observer still running")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcript_then_live_events_and_input() {
    let data = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(data.path(), Retention::default(), None);
    let addr = server.addr;
    let summary = spawn_worker(
        addr,
        json!({"argv": ["sh", "-c", "echo a; echo b; read x; echo got:$x; exit 4"]}),
    )
    .await;
    let w = summary["worker_id"].as_str().expect("id").to_owned();
    // Wait until both lines are recorded.
    let mut ws = observe(addr, "local", &w, Some("bo_0000000000000000")).await;
    let mut text = String::new();
    while !text.contains("b\n") {
        let f = next_frame(&mut ws).await.expect("frame");
        text.push_str(
            f["envelope"]["payload"]["text"]
                .as_str()
                .unwrap_or_default(),
        );
    }

    let target = BackendTarget::new(format!("http://{addr}/"), "local", w.clone());
    let mut o = BackendObserver::connect(target, fast())
        .await
        .expect("connect");
    let mut transcript = Vec::new();
    for _ in 0..2 {
        match next(&mut o).await {
            BackendEvent::Transcript(item) => transcript.push((item.role, item.content)),
            other => panic!("expected transcript, got {other:?}"),
        }
    }
    assert_eq!(
        transcript,
        vec![
            ("assistant".into(), "a".into()),
            ("assistant".into(), "b".into())
        ]
    );
    let r = o.send_input("user", "hello").await.expect("input");
    assert_eq!(r.state, "accepted");
    let mut seen = Vec::new();
    let mut last = 0;
    loop {
        match next(&mut o).await {
            BackendEvent::Event { cursor, payload } => {
                let seq = decode_cursor(&cursor).expect("cursor");
                assert!(seq > last, "no duplicates, in order");
                last = seq;
                let exit = payload["type"] == "exit";
                seen.push(payload);
                if exit {
                    break;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        seen[0]["type"], "input",
        "nothing of the transcript is repeated: {seen:?}"
    );
    assert!(
        seen.iter()
            .any(|p| p["text"].as_str().is_some_and(|t| t.contains("got:hello")))
    );
    assert_eq!(seen.last().expect("exit")["exit_code"], 4);
    let r = o.cancel(Some("late")).await.expect("cancel");
    assert_eq!(r.state, "rejected");
    assert_eq!(r.diagnostics[0].code, "backend.worker_not_running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_across_a_server_restart_without_gaps_or_duplicates() {
    let data = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(data.path(), Retention::default(), None);
    let addr = server.addr;
    let summary = spawn_worker(
        addr,
        json!({"argv": ["sh", "-c", "i=0; while :; do echo line $i; i=$((i+1)); done"]}),
    )
    .await;
    let w = summary["worker_id"].as_str().expect("id").to_owned();
    let target = BackendTarget::new(format!("http://{addr}"), "local", w.clone());
    // No transcript: start from a snapshot, then every event.
    let options = ObserveOptions {
        transcript_limit: 0,
        ..fast()
    };
    let mut o = BackendObserver::connect(target, options)
        .await
        .expect("connect");
    let mut snapshots = 0;

    let mut text = String::new();
    let mut seqs = Vec::new();
    let mut diagnostics = Vec::new();
    let mut restarted = None;
    let mut server = Some(server);
    loop {
        match next(&mut o).await {
            BackendEvent::Transcript(item) => panic!("no transcript was asked for: {item:?}"),
            BackendEvent::Event { cursor, payload } => {
                seqs.push(decode_cursor(&cursor).expect("cursor"));
                if payload["type"] == "output" {
                    text.push_str(payload["text"].as_str().unwrap_or_default());
                }
                if payload["code"] == "backend.worker_lost" {
                    break;
                }
                if seqs.len() == 300 {
                    // Crash the server mid-stream and bring it back on the same port.
                    if let Some(s) = server.take() {
                        s.kill();
                    }
                    restarted = Some(TestServer::start_at(
                        data.path(),
                        Retention::default(),
                        None,
                        addr,
                    ));
                }
            }
            BackendEvent::Diagnostic { code, .. } => diagnostics.push(code),
            BackendEvent::Snapshot { .. } => snapshots += 1,
        }
    }
    assert!(restarted.is_some());
    assert_eq!(
        snapshots, 1,
        "one snapshot at attach; the cursor stays valid across the restart"
    );
    assert!(
        seqs.windows(2).all(|p| p[0] < p[1]),
        "in order, no duplicates"
    );
    // The output has no gap: the complete lines are consecutive (the first and last may be
    // partial: observation started mid-stream, the crash cut the last one).
    let numbers: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("line ").and_then(|n| n.parse().ok()))
        .collect();
    let inner = &numbers[1..numbers.len() - 1];
    assert!(inner.len() > 100, "{}", inner.len());
    assert!(
        inner.windows(2).all(|p| p[1] == p[0] + 1),
        "gap or duplicate in {inner:?}"
    );
    assert!(
        !diagnostics
            .iter()
            .any(|c| c == "client.reconnect_exhausted"),
        "{diagnostics:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_cursor_resyncs_from_a_snapshot() {
    let data = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(data.path(), Retention::default(), None);
    let summary = spawn_worker(
        server.addr,
        json!({"argv": ["sh", "-c", "i=0; while [ $i -lt 200 ]; do echo $i; i=$((i+1)); done"]}),
    )
    .await;
    let w = summary["worker_id"].as_str().expect("id").to_owned();
    let mut ws = observe(server.addr, "local", &w, Some("bo_0000000000000000")).await;
    let events = events_until(&mut ws, is_exit).await;
    let first = events[0]["cursor"].as_str().expect("cursor").to_owned();
    server.kill();
    let server = TestServer::start(
        data.path(),
        Retention {
            max_age: None,
            max_bytes: Some(200),
        },
        None,
    );
    let target = BackendTarget::new(format!("http://{}", server.addr), "local", w);
    let mut o = BackendObserver::resume(target, fast(), &first).expect("resume");
    match next(&mut o).await {
        BackendEvent::Diagnostic { code, .. } => {
            assert_eq!(code, "backend.cursor_unknown_or_expired")
        }
        other => panic!("expected the expiry diagnostic, got {other:?}"),
    }
    match next(&mut o).await {
        BackendEvent::Snapshot { worker, .. } => assert_eq!(worker["state"], "exited"),
        other => panic!("expected a fresh snapshot, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_diagnostics_and_reconnects_are_bounded() {
    // A port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let target = BackendTarget::new(format!("http://127.0.0.1:{port}"), "local", "w1");
    let options = ObserveOptions {
        max_reconnects: 2,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        transcript_limit: 16,
    };
    let mut o = BackendObserver::connect(target, options)
        .await
        .expect("valid target");
    let mut codes = Vec::new();
    while let Some(e) = tokio::time::timeout(GUARD, o.next_event())
        .await
        .expect("in time")
    {
        match e {
            BackendEvent::Diagnostic { code, .. } => codes.push(code),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        codes,
        vec![
            "client.transcript_unavailable",
            "client.ws_connect_failed",
            "client.ws_connect_failed",
            "client.ws_connect_failed",
            "client.reconnect_exhausted"
        ]
    );
    assert!(
        BackendObserver::connect(BackendTarget::new("ftp://x", "a", "b"), options)
            .await
            .is_err()
    );
}
