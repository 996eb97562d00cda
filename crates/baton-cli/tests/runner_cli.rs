//! `baton exec --on`, `baton snapshot`, `baton artifact`: the runner code paths from the CLI.

mod common;

#[test]
fn exec_on_a_local_destination_snapshot_and_artifact() {
    let ws = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let on = format!("local:{}", ws.path().display());
    let out = common::baton_command()
        .args([
            "exec",
            "--on",
            &on,
            "--",
            "sh",
            "-c",
            "echo made > f.txt; echo out; exit 3",
        ])
        .current_dir(store.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(
        std::fs::read_to_string(ws.path().join("f.txt")).unwrap(),
        "made\n"
    );

    let snap = common::baton_command()
        .args(["snapshot", "create", "--on", &on])
        .current_dir(store.path())
        .output()
        .unwrap();
    assert!(snap.status.success(), "{snap:?}");
    let v: serde_json::Value = serde_json::from_slice(&snap.stdout).unwrap();
    let id = v["snapshot_id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 64);

    let art = common::baton_command()
        .args(["artifact", "export", "--on", &on, "f.txt"])
        .current_dir(store.path())
        .output()
        .unwrap();
    assert!(art.status.success(), "{art:?}");
    let v: serde_json::Value = serde_json::from_slice(&art.stdout).unwrap();
    assert_eq!(
        v["metadata"]["blake3"].as_str().unwrap(),
        blake3_hex(b"made\n")
    );

    // Restoring the snapshot brings back the file after it is removed.
    std::fs::remove_file(ws.path().join("f.txt")).unwrap();
    let restore = common::baton_command()
        .args(["snapshot", "restore", "--on", &on, &id])
        .current_dir(store.path())
        .output()
        .unwrap();
    assert!(restore.status.success(), "{restore:?}");
    assert_eq!(
        std::fs::read_to_string(ws.path().join("f.txt")).unwrap(),
        "made\n"
    );
}

fn blake3_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}
