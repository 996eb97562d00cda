//! Connection behaviour over real transports: a TCP WebSocket, a real pipe pair (stdio
//! framing over a Unix socket pair) and the in-memory pair.

use std::sync::Arc;
use std::time::Duration;

use baton_protocol::jsonrpc::{Message, RequestId, RpcError};
use baton_rpc::tokio_tungstenite::{self, tungstenite};
use baton_rpc::{CallError, Connection, ConnectionConfig, Handler, Peer, Transport, ws_config};
use futures::future::BoxFuture;
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::sync::Notify;

/// `echo` returns its params; `wait` blocks until `release` is called; `release` wakes it;
/// the `ping` notification is answered with a `pong` notification.
struct TestHandler {
    gate: Arc<Notify>,
}

impl Handler for TestHandler {
    fn request(
        &self,
        _peer: &Peer,
        method: String,
        params: Value,
    ) -> BoxFuture<'static, Result<Value, RpcError>> {
        let gate = self.gate.clone();
        Box::pin(async move {
            match method.as_str() {
                "echo" => Ok(params),
                "wait" => {
                    gate.notified().await;
                    Ok(json!("released"))
                }
                "release" => {
                    gate.notify_one();
                    Ok(json!(null))
                }
                // Stays silent for a while (the server's own behaviour under test: a quiet
                // but live connection must survive several keepalive intervals).
                "quiet" => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok(json!("still here"))
                }
                _ => Err(RpcError::method_not_found(&method)),
            }
        })
    }

    fn notification(&self, peer: &Peer, method: String, params: Value) {
        if method == "ping" {
            let peer = peer.clone();
            tokio::spawn(async move { peer.notify("pong", &params).await });
        }
    }
}

fn server_handler() -> Arc<dyn Handler> {
    Arc::new(TestHandler {
        gate: Arc::new(Notify::new()),
    })
}

struct Collect(tokio::sync::mpsc::UnboundedSender<(String, Value)>);
impl Handler for Collect {
    fn notification(&self, _peer: &Peer, method: String, params: Value) {
        let _ = self.0.send((method, params));
    }
}

fn config(limit: usize) -> ConnectionConfig {
    ConnectionConfig {
        max_message_bytes: limit,
        name: "test".into(),
        ..Default::default()
    }
}

async fn exercise(client: Peer, mut notes: tokio::sync::mpsc::UnboundedReceiver<(String, Value)>) {
    let echoed: Value = client
        .call("echo", &json!({"a": [1, 2]}))
        .await
        .expect("echo");
    assert_eq!(echoed, json!({"a": [1, 2]}));
    // A blocked request does not block others on the same connection.
    let c2 = client.clone();
    let waiting = tokio::spawn(async move { c2.call_value("wait", Value::Null).await });
    let again: Value = client
        .call("echo", &json!(5))
        .await
        .expect("echo while waiting");
    assert_eq!(again, json!(5));
    let _: Value = client.call("release", &json!(null)).await.expect("release");
    assert_eq!(
        waiting.await.expect("join").expect("wait answered"),
        json!("released")
    );
    match client.call_value("nope", Value::Null).await {
        Err(CallError::Server(e)) => assert_eq!(e.code, -32601),
        other => panic!("expected method not found, got {other:?}"),
    }
    client
        .notify("ping", &json!({"n": 1}))
        .await
        .expect("notify");
    let (method, params) = notes.recv().await.expect("pong");
    assert_eq!((method.as_str(), params), ("pong", json!({"n": 1})));
}

#[tokio::test]
async fn websocket_over_tcp() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let ws = tokio_tungstenite::accept_async_with_config(tcp, Some(ws_config(1 << 20)))
            .await
            .expect("handshake");
        let peer = Connection::spawn(Transport::websocket(ws), config(1 << 20), server_handler());
        peer.closed().await
    });
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}"))
        .await
        .expect("connect");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let client = Connection::spawn(
        Transport::websocket(ws),
        config(1 << 20),
        Arc::new(Collect(tx)),
    );
    exercise(client.clone(), rx).await;
    client.close("done");
    let reason = server.await.expect("server join");
    assert!(!reason.is_empty());
}

#[tokio::test]
async fn websocket_raw_frames_malformed_binary_and_oversized() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let ws = tokio_tungstenite::accept_async_with_config(tcp, Some(ws_config(1000)))
            .await
            .expect("handshake");
        let peer = Connection::spawn(Transport::websocket(ws), config(1000), server_handler());
        peer.closed().await
    });
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}"))
        .await
        .expect("connect");
    let next = async move |ws: &mut tokio_tungstenite::WebSocketStream<_>| loop {
        match ws.next().await {
            Some(Ok(tungstenite::Message::Text(t))) => {
                return Some(Message::from_slice(t.as_bytes()).expect("server sends json-rpc"));
            }
            Some(Ok(tungstenite::Message::Close(f))) => {
                return f.map(|f| {
                    Message::Notification(baton_protocol::jsonrpc::Notification {
                        method: format!("close {}", u16::from(f.code)),
                        params: Value::Null,
                    })
                });
            }
            Some(Ok(_)) => continue,
            _ => return None,
        }
    };
    ws.send(tungstenite::Message::text("{not json"))
        .await
        .expect("send");
    match next(&mut ws).await {
        Some(Message::Response(r)) => {
            assert_eq!(r.id, RequestId::Null);
            assert_eq!(r.result.expect_err("error").code, -32700);
        }
        other => panic!("expected parse error, got {other:?}"),
    }
    // Binary frame, no `jsonrpc` field: still served.
    ws.send(tungstenite::Message::binary(
        br#"{"id":"b","method":"echo","params":7}"#.to_vec(),
    ))
    .await
    .expect("send");
    match next(&mut ws).await {
        Some(Message::Response(r)) => {
            assert_eq!(r.id, RequestId::String("b".into()));
            assert_eq!(r.result.expect("ok"), json!(7));
        }
        other => panic!("expected echo, got {other:?}"),
    }
    ws.send(tungstenite::Message::text(format!(
        r#"{{"id":1,"method":"echo","params":"{}"}}"#,
        "x".repeat(5000)
    )))
    .await
    .expect("send");
    match next(&mut ws).await {
        Some(Message::Response(r)) => {
            let e = r.result.expect_err("too big");
            assert_eq!(e.code, -32600);
            assert!(e.message.contains("limit of 1000 bytes"), "{}", e.message);
        }
        other => panic!("expected size error, got {other:?}"),
    }
    match next(&mut ws).await {
        Some(Message::Notification(n)) => assert_eq!(n.method, "close 1009"),
        other => panic!("expected close 1009, got {other:?}"),
    }
}

#[tokio::test]
async fn stdio_framing_over_a_socket_pair_keeps_serving_after_bad_input() {
    let (server_sock, client_sock) = tokio::net::UnixStream::pair().expect("pair");
    let (sr, sw) = server_sock.into_split();
    let server = Connection::spawn(Transport::stdio(sr, sw), config(100), server_handler());
    let (cr, mut cw) = client_sock.into_split();
    let mut lines = BufReader::new(cr).lines();
    let long = format!(
        r#"{{"id":9,"method":"echo","params":"{}"}}"#,
        "y".repeat(300)
    );
    cw.write_all(
        format!(
            "{{oops\n\n{long}\n{{\"id\":2,\"method\":\"echo\",\"params\":[1]}}\r\n{{\"jsonrpc\":\"2.0\",\"id\":3}}\n"
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let mut read = async || {
        Message::from_slice(
            lines
                .next_line()
                .await
                .expect("read")
                .expect("line")
                .as_bytes(),
        )
        .expect("json-rpc")
    };
    // Requests are answered concurrently: collect the four answers, then check each.
    let mut answers = Vec::new();
    for _ in 0..4 {
        let Message::Response(r) = read().await else {
            panic!("response")
        };
        answers.push(r);
    }
    let by_id = |id: RequestId| {
        answers
            .iter()
            .filter(|r| r.id == id)
            .map(|r| r.result.clone())
            .collect::<Vec<_>>()
    };
    let nulls = by_id(RequestId::Null);
    assert_eq!(nulls.len(), 2, "{answers:?}");
    assert_eq!(nulls[0].clone().expect_err("parse").code, -32700);
    let e = nulls[1].clone().expect_err("too big");
    assert!(e.message.contains("limit of 100 bytes"), "{}", e.message);
    assert_eq!(by_id(RequestId::Number(2)), vec![Ok(json!([1]))]);
    assert_eq!(
        by_id(RequestId::Number(3))[0]
            .clone()
            .expect_err("bad")
            .code,
        -32600
    );
    // EOF on input closes the connection.
    drop(cw);
    tokio::time::timeout(Duration::from_secs(10), server.closed())
        .await
        .expect("server sees EOF");
}

#[tokio::test]
async fn memory_pair_and_pending_calls_fail_when_closed() {
    let (a, b) = Transport::memory_pair();
    let server = Connection::spawn(a, config(1 << 20), server_handler());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let client = Connection::spawn(b, config(1 << 20), Arc::new(Collect(tx)));
    exercise(client.clone(), rx).await;
    let c2 = client.clone();
    let waiting = tokio::spawn(async move { c2.call_value("wait", Value::Null).await });
    // Make sure the wait request reached the server before closing it.
    let _: Value = client.call("echo", &1).await.expect("echo");
    server.close("server going away");
    match waiting.await.expect("join") {
        Err(CallError::Closed(_)) => {}
        other => panic!("expected closed, got {other:?}"),
    }
    assert!(matches!(
        client.call_value("echo", Value::Null).await,
        Err(CallError::Closed(_))
    ));
}

async fn ws_pair(
    keepalive: Duration,
) -> (
    Peer,
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let ws = tokio_tungstenite::accept_async(tcp)
            .await
            .expect("handshake");
        Connection::spawn(
            Transport::websocket(ws),
            ConnectionConfig {
                keepalive: Some(keepalive),
                ..config(1 << 20)
            },
            server_handler(),
        )
    });
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}"))
        .await
        .expect("connect");
    (server.await.expect("server"), ws)
}

#[tokio::test]
async fn keepalive_closes_a_silent_websocket_peer() {
    // The client never reads, so it never answers the server's pings.
    let (server, _silent) = ws_pair(Duration::from_millis(20)).await;
    let reason = tokio::time::timeout(Duration::from_secs(20), server.closed())
        .await
        .expect("closed by keepalive");
    assert!(reason.contains("keepalive"), "{reason}");
}

#[tokio::test]
async fn keepalive_keeps_a_quiet_but_live_peer() {
    let (server, ws) = ws_pair(Duration::from_millis(20)).await;
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let client = Connection::spawn(
        Transport::websocket(ws),
        ConnectionConfig {
            keepalive: None,
            ..config(1 << 20)
        },
        Arc::new(Collect(tx)),
    );
    // Nothing but pongs flows for 300 ms (15 intervals) while the server works.
    let v: Value = client.call("quiet", &json!(null)).await.expect("answered");
    assert_eq!(v, json!("still here"));
    assert!(!server.is_closed());
}
