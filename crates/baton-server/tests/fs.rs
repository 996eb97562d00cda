//! `fs/*` methods on real files, confined to the roots (both path dialects).

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use baton_protocol::exec::WirePath;
use baton_rpc::{CallError, Connection, ConnectionConfig, Handler, Peer, Transport};
use baton_server::{ExecServer, ServerConfig};
use serde_json::{Value, json};

struct Quiet;
impl Handler for Quiet {}

async fn client(root: &std::path::Path) -> (ExecServer, Peer) {
    let server = ExecServer::new(ServerConfig {
        roots: vec![root.to_path_buf()],
        ..Default::default()
    })
    .expect("server");
    let (a, b) = Transport::memory_pair();
    server.serve_connection(a, "test");
    let peer = Connection::spawn(b, ConnectionConfig::default(), Arc::new(Quiet));
    peer.call_value("initialize", json!({"clientName": "fs-test"}))
        .await
        .expect("initialize");
    peer.notify("initialized", &json!({}))
        .await
        .expect("initialized");
    (server, peer)
}

fn code(r: Result<Value, CallError>) -> i64 {
    match r {
        Err(CallError::Server(e)) => e.code,
        other => panic!("expected a server error, got {other:?}"),
    }
}

#[tokio::test]
async fn file_operations_round_trip_in_both_dialects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = std::fs::canonicalize(dir.path()).expect("canon");
    let (_server, peer) = client(&root).await;
    let uri = |p: &str| WirePath::uri_from_path(&root.join(p)).0;
    let bare = |p: &str| root.join(p).to_string_lossy().into_owned();

    peer.call_value("fs/createDirectory", json!({"path": uri("a b/c")}))
        .await
        .expect("mkdir -p");
    peer.call_value(
        "fs/writeFile",
        json!({"path": bare("a b/c/f.bin"), "dataBase64": B64.encode(b"\x00\xffdata")}),
    )
    .await
    .expect("write");
    let r = peer
        .call_value("fs/readFile", json!({"path": uri("a b/c/f.bin")}))
        .await
        .expect("read");
    assert_eq!(
        B64.decode(r["dataBase64"].as_str().expect("b64"))
            .expect("b64"),
        b"\x00\xffdata"
    );
    let m = peer
        .call_value("fs/getMetadata", json!({"path": bare("a b/c/f.bin")}))
        .await
        .expect("stat");
    assert_eq!(
        (
            m["isFile"].clone(),
            m["isDirectory"].clone(),
            m["isSymlink"].clone(),
            m["size"].clone()
        ),
        (json!(true), json!(false), json!(false), json!(6))
    );
    assert!(m["modifiedAtMs"].as_i64().expect("ms") > 0);
    peer.call_value(
        "fs/copy",
        json!({"sourcePath": bare("a b"), "destinationPath": bare("copy"), "recursive": true}),
    )
    .await
    .expect("copy -r");
    let no_rec = peer
        .call_value(
            "fs/copy",
            json!({"sourcePath": bare("a b"), "destinationPath": bare("x")}),
        )
        .await;
    assert_eq!(code(no_rec), -32602);
    let list = peer
        .call_value("fs/readDirectory", json!({"path": bare("")}))
        .await
        .expect("ls");
    assert_eq!(
        list["entries"],
        json!([
            {"fileName": "a b", "isDirectory": true, "isFile": false},
            {"fileName": "copy", "isDirectory": true, "isFile": false}
        ])
    );
    let copied = peer
        .call_value("fs/readFile", json!({"path": bare("copy/c/f.bin")}))
        .await
        .expect("copied file");
    assert_eq!(copied["dataBase64"], r["dataBase64"]);
    peer.call_value("fs/remove", json!({"path": bare("a b")}))
        .await
        .expect("rm -r");
    assert!(!root.join("a b").exists());
    // force (default true): removing a missing path succeeds; without force it is not found.
    peer.call_value("fs/remove", json!({"path": bare("a b")}))
        .await
        .expect("rm -f missing");
    let missing = peer
        .call_value("fs/remove", json!({"path": bare("a b"), "force": false}))
        .await;
    assert_eq!(code(missing), -32004);
    let missing = peer
        .call_value("fs/readFile", json!({"path": bare("nope")}))
        .await;
    assert_eq!(code(missing), -32004);
}

#[tokio::test]
async fn escapes_by_dotdot_and_symlink_are_refused() {
    let outer = tempfile::tempdir().expect("tempdir");
    let outer_path = std::fs::canonicalize(outer.path()).expect("canon");
    let root = outer_path.join("root");
    std::fs::create_dir(&root).expect("mkdir");
    std::fs::write(outer_path.join("secret"), b"s").expect("secret");
    std::os::unix::fs::symlink(&outer_path, root.join("up")).expect("symlink");
    std::os::unix::fs::symlink(outer_path.join("secret"), root.join("secret-link"))
        .expect("symlink");
    let (_server, peer) = client(&root).await;
    let p = |s: &str| format!("{}/{s}", root.display());
    for (method, params) in [
        ("fs/readFile", json!({"path": p("../secret")})),
        ("fs/readFile", json!({"path": p("up/secret")})),
        ("fs/readFile", json!({"path": p("secret-link")})),
        (
            "fs/writeFile",
            json!({"path": p("up/new"), "dataBase64": ""}),
        ),
        (
            "fs/writeFile",
            json!({"path": p("../new"), "dataBase64": ""}),
        ),
        ("fs/createDirectory", json!({"path": p("up/newdir")})),
        ("fs/readDirectory", json!({"path": p("up")})),
        ("fs/getMetadata", json!({"path": p("secret-link")})),
        ("fs/remove", json!({"path": p("up/secret")})),
        ("fs/remove", json!({"path": root.display().to_string()})),
        (
            "fs/copy",
            json!({"sourcePath": p("up/secret"), "destinationPath": p("stolen")}),
        ),
        (
            "fs/copy",
            json!({"sourcePath": p("x"), "destinationPath": p("../x")}),
        ),
        ("fs/readFile", json!({"path": "/etc/hostname"})),
    ] {
        let r = peer.call_value(method, params.clone()).await;
        assert_eq!(code(r), -32003, "{method} {params}");
    }
    assert!(!outer_path.join("new").exists() && !outer_path.join("newdir").exists());
    assert!(outer_path.join("secret").exists());
    // Removing the link itself (inside the root) is fine and leaves the target alone.
    peer.call_value("fs/remove", json!({"path": p("secret-link")}))
        .await
        .expect("remove link");
    assert!(outer_path.join("secret").exists());
    let bad = peer
        .call_value("fs/readFile", json!({"path": "https://example.invalid/x"}))
        .await;
    assert_eq!(code(bad), -32602);
}
