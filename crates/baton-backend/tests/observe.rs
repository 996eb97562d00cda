//! Observation WebSocket: snapshot, cursors, restart and resume, many observers,
//! observation-only enforcement.

mod common;

use baton_backend::Retention;
use common::*;
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

fn diagnostic_code(frame: &Value) -> &str {
    assert_eq!(frame["kind"], "diagnostic", "{frame}");
    frame["diagnostic"]["code"].as_str().expect("code")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_live_and_observation_only() {
    let data = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(data.path(), Retention::default(), None);
    let addr = server.addr;
    let summary = spawn_worker(
        addr,
        json!({"argv": ["sh", "-c", "echo before; read x; echo after:$x"]}),
    )
    .await;
    let w = summary["worker_id"].as_str().expect("id").to_owned();
    // Wait (by observation) until "before" was recorded, so the snapshot comes after it.
    let mut from_start = observe(addr, "local", &w, Some("bo_0000000000000000")).await;
    let early = events_until(&mut from_start, |p| {
        p["text"].as_str().is_some_and(|t| t.contains("before"))
    })
    .await;

    let mut ws = observe(addr, "local", &w, None).await;
    let snapshot = next_frame(&mut ws).await.expect("snapshot");
    let env = &snapshot["envelope"];
    assert_eq!(env["payload"]["type"], "snapshot");
    assert_eq!(env["runtime_id"], "local");
    assert_eq!(env["worker_id"], w.as_str());
    assert_eq!(env["payload"]["worker"]["state"], "running");
    assert!(seq_of(env) >= seq_of(early.last().expect("before")));

    // Ping is answered.
    ws.send(Message::Ping(b"p1".to_vec().into()))
        .await
        .expect("ping");
    loop {
        match tokio::time::timeout(GUARD, ws.next())
            .await
            .expect("pong in time")
        {
            Some(Ok(Message::Pong(data))) => {
                assert_eq!(&data[..], b"p1");
                break;
            }
            Some(Ok(Message::Text(t))) => panic!("unexpected frame {t}"),
            other => assert!(matches!(other, Some(Ok(_))), "{other:?}"),
        }
    }

    http(
        addr,
        "POST",
        &format!("/api/runtimes/local/workers/{w}/input"),
        Some(r#"{"kind":"user","content":"x1"}"#),
        None,
    )
    .await;
    let live = events_until(&mut ws, is_exit).await;
    assert_eq!(
        live[0]["payload"]["type"], "input",
        "live events start after the snapshot"
    );
    assert!(output_text(&live).contains("after:x1"));
    let rest = events_until(&mut from_start, is_exit).await;
    assert_eq!(
        rest.iter().map(seq_of).collect::<Vec<_>>(),
        live.iter().map(seq_of).collect::<Vec<_>>(),
        "both observers see the same events after the snapshot"
    );

    // A data frame gets backend.observation_only and the socket is closed.
    send_ws_text(&mut ws, "hello").await;
    let frame = next_frame(&mut ws).await.expect("diagnostic");
    assert_eq!(diagnostic_code(&frame), "backend.observation_only");
    assert!(
        next_frame(&mut ws).await.is_none(),
        "closed after the diagnostic"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_unknown_and_missing() {
    let data = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(data.path(), Retention::default(), None);
    let addr = server.addr;
    let summary = spawn_worker(addr, json!({"argv": ["true"]})).await;
    let w = summary["worker_id"].as_str().expect("id").to_owned();
    for bad in [
        "bo_12",
        "xx_0000000000000001",
        "bo_000000000000000G",
        "bo_0000000000000ABC",
    ] {
        let mut ws = observe(addr, "local", &w, Some(bad)).await;
        let frame = next_frame(&mut ws).await.expect("diagnostic");
        assert_eq!(diagnostic_code(&frame), "backend.cursor_malformed", "{bad}");
        assert!(next_frame(&mut ws).await.is_none());
    }
    let mut ws = observe(addr, "local", &w, Some("bo_00000000ffffffff")).await;
    let frame = next_frame(&mut ws).await.expect("diagnostic");
    assert_eq!(diagnostic_code(&frame), "backend.cursor_unknown_or_expired");
    let mut ws = observe(addr, "local", "w999", None).await;
    let frame = next_frame(&mut ws).await.expect("diagnostic");
    assert_eq!(diagnostic_code(&frame), "backend.worker_not_found");
    let mut ws = observe(addr, "elsewhere", &w, None).await;
    let frame = next_frame(&mut ws).await.expect("diagnostic");
    assert_eq!(diagnostic_code(&frame), "backend.runtime_unavailable");
}

/// Kill the server while a worker prints, restart it on the same data directory, resume from
/// the last cursor received: the events before and after the crash form the worker's whole log,
/// each exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_a_server_crash_delivers_every_event_once() {
    let data = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(data.path(), Retention::default(), None);
    let summary = spawn_worker(
        server.addr,
        json!({"argv": ["sh", "-c", "i=0; while :; do echo line $i; i=$((i+1)); done"]}),
    )
    .await;
    let w = summary["worker_id"].as_str().expect("id").to_owned();
    let mut ws = observe(server.addr, "local", &w, Some("bo_0000000000000000")).await;
    let mut before = Vec::new();
    while before.len() < 200 {
        let frame = next_frame(&mut ws).await.expect("events while running");
        before.push(frame["envelope"].clone());
    }
    server.kill();
    // Drain what was in flight until the connection drops.
    while let Some(frame) = next_frame(&mut ws).await {
        before.push(frame["envelope"].clone());
    }
    let last_cursor = before
        .last()
        .expect("some")
        .get("cursor")
        .and_then(Value::as_str)
        .expect("cursor")
        .to_owned();

    let server = TestServer::start(data.path(), Retention::default(), None);
    let (status, got) = http(
        server.addr,
        "GET",
        &format!("/api/runtimes/local/workers/{w}"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "workers survive a restart");
    assert_eq!(got["state"], "lost");
    let mut ws = observe(server.addr, "local", &w, Some(&last_cursor)).await;
    let after = events_until(&mut ws, |p| p["code"] == "backend.worker_lost").await;

    let mut full_ws = observe(server.addr, "local", &w, Some("bo_0000000000000000")).await;
    let full = events_until(&mut full_ws, |p| p["code"] == "backend.worker_lost").await;

    // Resuming from the middle of what the first observer saw replays the rest from SQLite.
    let middle = before[99]["cursor"].as_str().expect("cursor").to_owned();
    let mut mid_ws = observe(server.addr, "local", &w, Some(&middle)).await;
    let from_middle = events_until(&mut mid_ws, |p| p["code"] == "backend.worker_lost").await;
    assert_eq!(
        from_middle.iter().map(seq_of).collect::<Vec<_>>(),
        before[100..]
            .iter()
            .chain(&after)
            .map(seq_of)
            .collect::<Vec<_>>()
    );
    assert_eq!(from_middle[0]["payload"], before[100]["payload"]);

    let resumed: Vec<u64> = before.iter().chain(&after).map(seq_of).collect();
    let whole: Vec<u64> = full.iter().map(seq_of).collect();
    assert_eq!(resumed, whole, "every event exactly once, in order");
    assert!(whole.windows(2).all(|p| p[0] < p[1]));
    assert_eq!(after[after.len() - 2]["payload"]["state"], "lost");
    // The output itself has no gap: line 0, 1, 2, … up to the crash.
    let text = output_text(&full);
    let complete: Vec<&str> = text.lines().collect();
    for (i, line) in complete
        .iter()
        .enumerate()
        .take(complete.len().saturating_sub(1))
    {
        assert_eq!(*line, format!("line {i}"));
    }
    assert!(complete.len() > 150, "{}", complete.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_cursor_after_retention() {
    let data = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(data.path(), Retention::default(), None);
    let summary = spawn_worker(
        server.addr,
        json!({"argv": ["sh", "-c", "i=0; while [ $i -lt 300 ]; do echo line $i; i=$((i+1)); done"]}),
    )
    .await;
    let w = summary["worker_id"].as_str().expect("id").to_owned();
    let mut ws = observe(server.addr, "local", &w, Some("bo_0000000000000000")).await;
    let all = events_until(&mut ws, is_exit).await;
    let first = all[0]["cursor"].as_str().expect("cursor").to_owned();
    let last = all.last().expect("exit")["cursor"]
        .as_str()
        .expect("cursor")
        .to_owned();
    server.kill();

    // Restart with a size limit that keeps only the newest events.
    let server = TestServer::start(
        data.path(),
        Retention {
            max_age: None,
            max_bytes: Some(300),
        },
        None,
    );
    let mut ws = observe(server.addr, "local", &w, Some(&first)).await;
    let frame = next_frame(&mut ws).await.expect("diagnostic");
    assert_eq!(diagnostic_code(&frame), "backend.cursor_unknown_or_expired");
    assert!(next_frame(&mut ws).await.is_none());
    // The newest cursor is still served (nothing after it yet): no diagnostic; a snapshot works.
    let mut ws = observe(server.addr, "local", &w, None).await;
    let snap = next_frame(&mut ws).await.expect("snapshot");
    assert_eq!(snap["envelope"]["payload"]["worker"]["state"], "exited");
    assert!(seq_of(&snap["envelope"]) >= baton_backend::Cursor::parse(&last).expect("cursor").0);
    let (status, t) = http(
        server.addr,
        "GET",
        &format!("/api/runtimes/local/workers/{w}/transcript"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(t["diagnostics"][0]["code"], "backend.transcript_truncated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_observers_see_the_same_sequence() {
    let data = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(data.path(), Retention::default(), None);
    let addr = server.addr;
    let summary = spawn_worker(
        addr,
        json!({"argv": ["sh", "-c", "read go; i=0; while [ $i -lt 3000 ]; do echo $i; i=$((i+1)); done"]}),
    )
    .await;
    let w = summary["worker_id"].as_str().expect("id").to_owned();
    let mut observers = Vec::new();
    for _ in 0..100 {
        let mut ws = observe(addr, "local", &w, None).await;
        let snap = next_frame(&mut ws).await.expect("snapshot");
        assert_eq!(snap["envelope"]["payload"]["type"], "snapshot");
        observers.push(ws);
    }
    // Every observer is attached (it got its snapshot): start the output.
    http(
        addr,
        "POST",
        &format!("/api/runtimes/local/workers/{w}/input"),
        Some(r#"{"kind":"user","content":"go"}"#),
        None,
    )
    .await;
    let tasks: Vec<_> = observers
        .into_iter()
        .map(|mut ws| tokio::spawn(async move { events_until(&mut ws, is_exit).await }))
        .collect();
    let expected: String = (0..3000).map(|i| format!("{i}\n")).collect();
    let mut reference: Option<Vec<u64>> = None;
    for t in tasks {
        let events = t.await.expect("observer");
        let seqs: Vec<u64> = events.iter().map(seq_of).collect();
        assert_eq!(output_text(&events), expected);
        match &reference {
            None => reference = Some(seqs),
            Some(r) => assert_eq!(&seqs, r),
        }
    }
}

/// An observer that does not read while a worker prints far more events than the live channel
/// holds falls behind; it must still get every event once, in order (re-read from SQLite).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_observer_catches_up_without_gaps() {
    let data = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(data.path(), Retention::default(), None);
    let addr = server.addr;
    let summary = spawn_worker(
        addr,
        json!({"argv": ["sh", "-c", "read go; i=0; while [ $i -lt 20000 ]; do echo $i; i=$((i+1)); done"]}),
    )
    .await;
    let w = summary["worker_id"].as_str().expect("id").to_owned();
    let mut slow = observe(addr, "local", &w, None).await;
    let snap = next_frame(&mut slow).await.expect("snapshot");
    assert_eq!(snap["envelope"]["payload"]["type"], "snapshot");
    let mut fast = observe(addr, "local", &w, Some("bo_0000000000000000")).await;
    http(
        addr,
        "POST",
        &format!("/api/runtimes/local/workers/{w}/input"),
        Some(r#"{"kind":"user","content":"go"}"#),
        None,
    )
    .await;
    let fast_events = events_until(&mut fast, is_exit).await;
    // Only now does the slow observer read.
    let slow_events = events_until(&mut slow, is_exit).await;
    let expected: String = (0..20000).map(|i| format!("{i}\n")).collect();
    assert_eq!(output_text(&slow_events), expected);
    let fast_tail: Vec<u64> = fast_events
        .iter()
        .map(seq_of)
        .filter(|s| *s > seq_of(&snap["envelope"]))
        .collect();
    assert_eq!(
        slow_events.iter().map(seq_of).collect::<Vec<_>>(),
        fast_tail
    );
}
