//! Route tests: real server on loopback, real processes, status codes and JSON shapes.

mod common;

use baton_backend::Retention;
use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_status_codes_and_shapes() {
    let data = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(data.path(), Retention::default(), None);
    let addr = server.addr;

    let (status, body) = http(addr, "GET", "/api/runtimes", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(body["runtimes"][0]["runtime_id"], "local");
    assert_eq!(body["runtimes"][0]["kind"], "local");
    assert_eq!(body["runtimes"][0]["capabilities"]["tty"], true);
    assert_eq!(body["runtimes"].as_array().map(Vec::len), Some(1));

    let (status, body) = http(addr, "GET", "/api/workers", None, None).await;
    assert_eq!((status, body), (200, json!({"workers": []})));

    // A worker that echoes, reads one line, echoes it back and exits 7.
    let summary = spawn_worker(
        addr,
        json!({"argv": ["sh", "-c", "echo hello; echo oops >&2; read line; echo got:$line; exit 7"],
               "label": "echoer", "env": {"SECRET_NAME": "s3cr3t"}}),
    )
    .await;
    let w = summary["worker_id"].as_str().expect("worker id").to_owned();
    assert_eq!(summary["runtime_id"], "local");
    assert_eq!(summary["label"], "echoer");
    assert_eq!(summary["state"], "running");
    assert_eq!(summary["status"], "running");
    assert!(summary["pid"].as_u64().is_some());
    assert!(summary.get("exit_code").is_none());

    // Observe from the very beginning.
    let mut ws = observe(addr, "local", &w, Some("bo_0000000000000000")).await;
    let first = events_until_output(&mut ws, "hello").await;
    assert_eq!(first[0]["payload"]["type"], "spawned");
    assert_eq!(first[0]["payload"]["env_names"], json!(["SECRET_NAME"]));

    // Percent-encoded ids are decoded ("lo%63al" is "local").
    let (status, got) = http(
        addr,
        "GET",
        &format!("/api/runtimes/lo%63al/workers/{w}"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["worker_id"], w.as_str());

    let (status, result) = http(
        addr,
        "POST",
        &format!("/api/runtimes/local/workers/{w}/input"),
        Some(r#"{"kind":"user","content":"hi there"}"#),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(result["state"], "accepted");
    assert_eq!(result["diagnostics"], json!([]));
    let input_event = result["event_id"].as_str().expect("event id").to_owned();

    let rest = events_until(&mut ws, is_exit).await;
    assert!(
        rest.iter()
            .any(|e| e["event_id"] == input_event.as_str() && e["payload"]["type"] == "input")
    );
    let exit = rest.last().expect("exit");
    assert_eq!(exit["payload"]["exit_code"], 7);
    let all: Vec<_> = first.iter().chain(&rest).cloned().collect();
    let seqs: Vec<u64> = all.iter().map(seq_of).collect();
    assert!(seqs.windows(2).all(|p| p[0] < p[1]), "{seqs:?}");
    assert!(output_text(&all).contains("got:hi there\n"));
    // No env value anywhere in the log's events.
    assert!(
        !serde_json::to_string(&all)
            .expect("json")
            .contains("s3cr3t")
    );

    let (status, got) = http(
        addr,
        "GET",
        &format!("/api/runtimes/local/workers/{w}"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(got["state"], "exited");
    assert_eq!(got["exit_code"], 7);
    assert_eq!(got["status"], "exit code 7");
    assert_eq!(got["last_event_id"], exit["event_id"]);

    // Transcript: inputs and output lines with roles.
    let (status, t) = http(
        addr,
        "GET",
        &format!("/api/runtimes/local/workers/{w}/transcript?start=0&limit=10"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{t}");
    let items: Vec<(String, String)> = t["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            (
                i["role"].as_str().unwrap_or("").to_owned(),
                i["content"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let has = |role: &str, content: &str| items.iter().any(|(r, c)| r == role && c == content);
    assert!(
        has("assistant", "hello")
            && has("stderr", "oops")
            && has("user", "hi there")
            && has("assistant", "got:hi there"),
        "{items:?}"
    );
    assert_eq!(t["total_items"], 4);
    assert!(t.get("next_start").is_none());
    let (status, page) = http(
        addr,
        "GET",
        &format!("/api/runtimes/local/workers/{w}/transcript?start=1&limit=2"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(page["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(page["items"][0]["sequence"], 1);
    assert_eq!(page["next_start"], 3);
    let (status, _) = http(
        addr,
        "GET",
        &format!("/api/runtimes/local/workers/{w}/transcript?limit=x"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 400);

    // Lifecycle on an exited worker is rejected with a diagnostic.
    let (status, r) = http(
        addr,
        "POST",
        &format!("/api/runtimes/local/workers/{w}/cancel"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(r["state"], "rejected");
    assert_eq!(r["diagnostics"][0]["code"], "backend.worker_not_running");
    assert_eq!(r["diagnostics"][0]["severity"], "warning");
    let (_, r) = http(
        addr,
        "POST",
        &format!("/api/runtimes/local/workers/{w}/input"),
        Some(r#"{"kind":"user","content":"x"}"#),
        None,
    )
    .await;
    assert_eq!(r["state"], "rejected");
    let (_, r) = http(
        addr,
        "POST",
        &format!("/api/runtimes/local/workers/{w}/input"),
        Some(r#"{"kind":"system","content":"note"}"#),
        None,
    )
    .await;
    assert_eq!(
        r["state"], "accepted",
        "system notes are recorded even after exit"
    );

    // Errors.
    let (status, e) = http(addr, "GET", "/api/runtimes/nope/workers/w1", None, None).await;
    assert_eq!(status, 404);
    assert_eq!(e["error"], "backend.runtime_not_found");
    assert_eq!(e["diagnostics"][0]["severity"], "error");
    let (status, e) = http(addr, "GET", "/api/runtimes/local/workers/w999", None, None).await;
    assert_eq!(
        (status, e["error"].as_str()),
        (404, Some("backend.worker_not_found"))
    );
    let (status, e) = http(addr, "GET", "/api/runtimes/local/workers/a%01b", None, None).await;
    assert_eq!((status, e["error"].as_str()), (400, Some("backend.bad_id")));
    let (status, e) = http(
        addr,
        "POST",
        "/api/runtimes/local/workers",
        Some("{\"argv\": 3}"),
        None,
    )
    .await;
    assert_eq!(
        (status, e["error"].as_str()),
        (400, Some("backend.bad_request"))
    );
    let (status, e) = http(
        addr,
        "POST",
        "/api/runtimes/local/workers",
        Some(r#"{"argv": []}"#),
        None,
    )
    .await;
    assert_eq!(
        (status, e["error"].as_str()),
        (400, Some("backend.bad_request"))
    );
    let (status, e) = http(
        addr,
        "POST",
        "/api/runtimes/local/workers",
        Some(r#"{"argv": ["/nonexistent/prog"]}"#),
        None,
    )
    .await;
    assert_eq!(
        (status, e["error"].as_str()),
        (400, Some("backend.spawn_failed"))
    );
    let (status, e) = http(
        addr,
        "POST",
        "/api/runtimes/local/workers",
        Some(r#"{"argv": ["true"], "cwd": "rel"}"#),
        None,
    )
    .await;
    assert_eq!(
        (status, e["error"].as_str()),
        (400, Some("backend.bad_request"))
    );
    let (status, _) = http(
        addr,
        "POST",
        &format!("/api/runtimes/local/workers/{w}/input"),
        Some(r#"{"kind":"other","content":"x"}"#),
        None,
    )
    .await;
    assert_eq!(status, 400);
    let (status, e) = http(addr, "GET", "/api/nothing", None, None).await;
    assert_eq!(
        (status, e["error"].as_str()),
        (404, Some("backend.not_found"))
    );

    let (status, list) = http(addr, "GET", "/api/workers", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(list["workers"].as_array().map(Vec::len), Some(1));
    let (status, list) = http(addr, "GET", "/api/runtimes/local/workers", None, None).await;
    assert_eq!(
        (status, list["workers"].as_array().map(Vec::len)),
        (200, Some(1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_interrupts_and_stop_kills_the_tree() {
    let data = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(data.path(), Retention::default(), None);
    let addr = server.addr;

    let summary = spawn_worker(
        addr,
        json!({"argv": ["sh", "-c", "trap 'echo interrupted; exit 3' INT; echo ready; while :; do sleep 1; done"]}),
    )
    .await;
    let w = summary["worker_id"].as_str().expect("id").to_owned();
    let mut ws = observe(addr, "local", &w, Some("bo_0000000000000000")).await;
    events_until(&mut ws, |p| {
        p["text"].as_str().is_some_and(|t| t.contains("ready"))
    })
    .await;
    let (status, r) = http(
        addr,
        "POST",
        &format!("/api/runtimes/local/workers/{w}/cancel"),
        Some(r#"{"reason":"test"}"#),
        None,
    )
    .await;
    assert_eq!((status, r["state"].as_str()), (200, Some("accepted")));
    let events = events_until(&mut ws, is_exit).await;
    assert_eq!(
        events[0]["payload"],
        json!({"type": "control", "action": "cancel", "reason": "test"})
    );
    assert!(output_text(&events).contains("interrupted"));
    assert_eq!(events.last().expect("exit")["payload"]["exit_code"], 3);

    // stop: a shell with a background grandchild; the whole group dies.
    let summary = spawn_worker(
        addr,
        json!({"argv": ["sh", "-c", "sleep 1000 & echo ready; wait"], "tty": false}),
    )
    .await;
    let w = summary["worker_id"].as_str().expect("id").to_owned();
    let mut ws = observe(addr, "local", &w, None).await;
    let snapshot = next_frame(&mut ws).await.expect("snapshot");
    assert_eq!(snapshot["envelope"]["payload"]["type"], "snapshot");
    let (status, r) = http(
        addr,
        "POST",
        &format!("/api/runtimes/local/workers/{w}/stop"),
        None,
        None,
    )
    .await;
    assert_eq!((status, r["state"].as_str()), (200, Some("accepted")));
    let events = events_until(&mut ws, is_exit).await;
    assert_eq!(events.last().expect("exit")["payload"]["signal"], 9);
    let (_, got) = http(
        addr,
        "GET",
        &format!("/api/runtimes/local/workers/{w}"),
        None,
        None,
    )
    .await;
    assert_eq!(got["state"], "exited");
    assert_eq!(got["signal"], 9);

    // A tty worker sees a terminal.
    let summary = spawn_worker(
        addr,
        json!({"argv": ["sh", "-c", "test -t 0 && echo is-a-tty"], "tty": true}),
    )
    .await;
    let w = summary["worker_id"].as_str().expect("id").to_owned();
    let mut ws = observe(addr, "local", &w, Some("bo_0000000000000000")).await;
    let events = events_until(&mut ws, is_exit).await;
    assert_eq!(events.last().expect("exit")["payload"]["exit_code"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_is_required_when_configured() {
    let data = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(data.path(), Retention::default(), Some("tok-123"));
    let (status, e) = http(server.addr, "GET", "/api/runtimes", None, None).await;
    assert_eq!(
        (status, e["error"].as_str()),
        (401, Some("backend.unauthorized"))
    );
    let (status, e) = http(server.addr, "GET", "/api/runtimes", None, Some("wrong")).await;
    assert_eq!(
        (status, e["error"].as_str()),
        (403, Some("backend.forbidden"))
    );
    let (status, _) = http(server.addr, "GET", "/api/runtimes", None, Some("tok-123")).await;
    assert_eq!(status, 200);
    // The WebSocket handshake is refused without the token too.
    let url = format!(
        "ws://{}/api/runtimes/local/workers/w1/events/ws",
        server.addr
    );
    assert!(tokio_tungstenite::connect_async(url).await.is_err());
}

#[tokio::test]
async fn non_loopback_bind_needs_a_token() {
    let err = baton_backend::bind(
        "0.0.0.0:0".parse().expect("addr"),
        &baton_backend::ServeOptions::default(),
    )
    .await
    .expect_err("must refuse");
    assert!(matches!(err, baton_backend::ServeError::TokenRequired(_)));
}

/// The transcript is kept between requests and extended with new events: an unfinished line is
/// an item until it completes, input lands where it was recorded, and a backend restarted on
/// the same data (a fresh projection) answers exactly the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcript_grows_between_requests_like_a_fresh_projection() {
    let data = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(data.path(), Retention::default(), None);
    let addr = server.addr;
    let summary = spawn_worker(
        addr,
        json!({"argv": ["sh", "-c", "printf 'one\\ntw'; read x; printf 'o\\nthree\\n'; read y"]}),
    )
    .await;
    let w = summary["worker_id"].as_str().expect("worker id").to_owned();
    let path = format!("/api/runtimes/local/workers/{w}/transcript");
    let items = |t: &serde_json::Value| -> Vec<(String, String)> {
        t["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| {
                (
                    i["role"].as_str().unwrap_or("").to_owned(),
                    i["content"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    };
    let pair = |r: &str, c: &str| (r.to_owned(), c.to_owned());

    let mut ws = observe(addr, "local", &w, Some("bo_0000000000000000")).await;
    events_until(&mut ws, |p| {
        p["type"] == "output" && p["text"].as_str().is_some_and(|t| t.ends_with("tw"))
    })
    .await;
    let (_, first) = http(addr, "GET", &path, None, None).await;
    assert_eq!(
        items(&first),
        vec![pair("assistant", "one"), pair("assistant", "tw")]
    );

    let (status, _) = http(
        addr,
        "POST",
        &format!("/api/runtimes/local/workers/{w}/input"),
        Some(r#"{"kind":"user","content":"go"}"#),
        None,
    )
    .await;
    assert_eq!(status, 200);
    events_until_output(&mut ws, "three").await;
    let (_, second) = http(addr, "GET", &path, None, None).await;
    let expected = vec![
        pair("assistant", "one"),
        pair("user", "go"),
        pair("assistant", "two"),
        pair("assistant", "three"),
    ];
    assert_eq!(items(&second), expected);
    let (_, paged) = http(addr, "GET", &format!("{path}?start=2&limit=1"), None, None).await;
    assert_eq!(items(&paged), vec![pair("assistant", "two")]);
    assert_eq!(paged["next_start"], 3);
    drop(ws);
    server.kill();

    let again = TestServer::start(data.path(), Retention::default(), None);
    let (_, fresh) = http(again.addr, "GET", &path, None, None).await;
    assert_eq!(items(&fresh), expected);
}
