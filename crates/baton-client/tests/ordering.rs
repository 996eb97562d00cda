//! Event ordering against a scripted server over a real socket pair: reordered notifications
//! are published in seq order exactly once, and a noisy process does not starve a quiet one.

use std::time::Duration;

use baton_client::{ClientOptions, ExecClient, ProcessEvent};
use baton_protocol::exec::OutputStream;
use baton_protocol::jsonrpc::{Message, Notification, Response};
use baton_rpc::Transport;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

const T: Duration = Duration::from_secs(20);

/// A scripted server: answers `initialize` and every `process/start`; after `initialized` it
/// writes the scripted notifications in the order given. One writer task serialises both.
async fn scripted_server(sock: UnixStream, mut script: mpsc::UnboundedReceiver<Value>) {
    let (r, mut w) = sock.into_split();
    let (out, mut out_rx) = mpsc::unbounded_channel::<String>();
    let writer = tokio::spawn(async move {
        while let Some(t) = out_rx.recv().await {
            if w.write_all(format!("{t}\n").as_bytes()).await.is_err() {
                break;
            }
        }
    });
    let mut lines = BufReader::new(r).lines();
    let mut streaming = false;
    while let Ok(Some(line)) = lines.next_line().await {
        match Message::from_slice(line.as_bytes()).expect("client sends json-rpc") {
            // Hang up instead of answering: the client must not guess the outcome.
            Message::Request(req) if req.method == "process/signal" => {
                writer.abort();
                return;
            }
            Message::Request(req) => {
                let result = match req.method.as_str() {
                    "initialize" => Ok(json!({"sessionId": "scripted"})),
                    "process/start" => Ok(json!({"processId": req.params["processId"]})),
                    other => Err(baton_protocol::jsonrpc::RpcError::method_not_found(other)),
                };
                let _ = out.send(Message::Response(Response { id: req.id, result }).to_json());
            }
            Message::Notification(n) if n.method == "initialized" && !streaming => {
                streaming = true;
                let out = out.clone();
                let mut script = std::mem::replace(&mut script, mpsc::unbounded_channel().1);
                tokio::spawn(async move {
                    while let Some(v) = script.recv().await {
                        let text = Message::Notification(Notification {
                            method: v["method"].as_str().expect("method").to_owned(),
                            params: v["params"].clone(),
                        })
                        .to_json();
                        if out.send(text).is_err() {
                            break;
                        }
                    }
                });
            }
            Message::Notification(_) | Message::Response(_) => {}
        }
    }
}

fn output(id: &str, seq: u64, text: &str) -> Value {
    use base64::Engine as _;
    json!({"method": "process/output", "params": {
        "processId": id, "seq": seq, "stream": "stdout",
        "chunk": base64::engine::general_purpose::STANDARD.encode(text)}})
}

async fn client() -> (ExecClient, mpsc::UnboundedSender<Value>) {
    // This server cannot answer process/read: never let a slow machine trigger a catch-up.
    client_with(ClientOptions {
        gap_timeout: Duration::from_secs(3600),
        ..Default::default()
    })
    .await
}

async fn client_with(options: ClientOptions) -> (ExecClient, mpsc::UnboundedSender<Value>) {
    let (a, b) = UnixStream::pair().expect("pair");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(scripted_server(a, rx));
    let (r, w) = b.into_split();
    let client = ExecClient::connect_transport(Transport::stdio(r, w), options)
        .await
        .expect("connect");
    (client, tx)
}

#[tokio::test]
async fn reordered_notifications_are_published_in_seq_order_once() {
    let (client, script) = client().await;
    let mut p = client
        .spawn(
            "reordered",
            &["x".into()],
            std::path::Path::new("/"),
            Default::default(),
            false,
            false,
        )
        .await
        .expect("start");
    for v in [
        json!({"method": "process/closed", "params": {"processId": "reordered", "seq": 5}}),
        output("reordered", 1, "one"),
        json!({"method": "process/exited", "params": {"processId": "reordered", "seq": 4, "exitCode": 0}}),
        output("reordered", 3, "three"),
        output("reordered", 1, "one again"),
        output("reordered", 2, "two"),
        output("reordered", 3, "three again"),
    ] {
        script.send(v).expect("script");
    }
    let mut got = Vec::new();
    while let Some(ev) = tokio::time::timeout(T, p.next_event())
        .await
        .expect("in time")
    {
        got.push(ev);
    }
    let out = |seq, t: &str| ProcessEvent::Output {
        seq,
        stream: OutputStream::Stdout,
        chunk: t.as_bytes().to_vec(),
    };
    assert_eq!(
        got,
        vec![
            out(1, "one"),
            out(2, "two"),
            out(3, "three"),
            ProcessEvent::Exited {
                seq: 4,
                exit_code: 0
            },
            ProcessEvent::Closed { seq: 5 },
        ]
    );
}

#[tokio::test]
async fn a_noisy_process_does_not_starve_a_quiet_one() {
    let (client, script) = client().await;
    let _noisy = client
        .spawn(
            "noisy",
            &["x".into()],
            std::path::Path::new("/"),
            Default::default(),
            false,
            false,
        )
        .await
        .expect("start noisy");
    let quiet = client
        .spawn(
            "quiet",
            &["x".into()],
            std::path::Path::new("/"),
            Default::default(),
            false,
            false,
        )
        .await
        .expect("start quiet");
    let mut wake = quiet.wake();
    for seq in 1..=4096 {
        script.send(output("noisy", seq, "x")).expect("script");
    }
    script
        .send(json!({"method": "process/exited", "params": {"processId": "quiet", "seq": 1, "exitCode": 17}}))
        .expect("script");
    tokio::time::timeout(T, wake.wait_for(|s| *s >= 1))
        .await
        .expect("quiet woken")
        .expect("wake channel open");
    assert_eq!(*wake.borrow(), 1);
}

#[tokio::test]
async fn a_gap_that_never_fills_ends_in_an_explicit_failure() {
    let (client, script) = client_with(ClientOptions {
        gap_timeout: Duration::from_millis(50),
        ..Default::default()
    })
    .await;
    let mut p = client
        .spawn(
            "gap",
            &["x".into()],
            std::path::Path::new("/"),
            Default::default(),
            false,
            false,
        )
        .await
        .expect("start");
    // Seq 1 never comes, and this server cannot answer process/read.
    script.send(output("gap", 2, "two")).expect("script");
    script
        .send(json!({"method": "process/closed", "params": {"processId": "gap", "seq": 3}}))
        .expect("script");
    match tokio::time::timeout(T, p.next_event())
        .await
        .expect("in time")
    {
        Some(ProcessEvent::Failed(message)) => {
            assert!(message.contains("cannot catch up"), "{message}")
        }
        other => panic!("expected an explicit failure, got {other:?}"),
    }
    assert_eq!(
        tokio::time::timeout(T, p.next_event())
            .await
            .expect("in time"),
        None
    );
}

#[tokio::test]
async fn a_mutating_call_lost_with_the_connection_is_not_replayed() {
    let (client, _script) = client().await;
    let err = client
        .signal(&"p".into(), baton_protocol::exec::ProcessSignal::Interrupt)
        .await
        .expect_err("the server hung up");
    assert!(
        matches!(&err, baton_client::ClientError::OutcomeUnknown { method } if method == "process/signal"),
        "{err:?}"
    );
    // This client cannot reconnect (it was given a transport): later calls fail fast.
    let err = client
        .read(baton_protocol::exec::ReadParams {
            process_id: "p".into(),
            ..Default::default()
        })
        .await
        .expect_err("disconnected");
    assert!(
        matches!(err, baton_client::ClientError::Disconnected(_)),
        "{err:?}"
    );
}
