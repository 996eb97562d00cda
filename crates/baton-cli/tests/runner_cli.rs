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

/// Ctrl-C (SIGINT to `baton exec --on`) reaches the command as an interrupt its trap can
/// handle (exit 3), instead of killing it outright.
#[test]
fn exec_on_forwards_ctrl_c_as_an_interrupt() {
    use std::io::{BufRead as _, BufReader};
    let ws = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let on = format!("local:{}", ws.path().display());
    let mut child = common::baton_command()
        .args([
            "exec",
            "--on",
            &on,
            "--",
            "sh",
            "-c",
            "trap 'echo got-int; exit 3' INT; echo ready; while :; do sleep 0.05; done",
        ])
        .current_dir(store.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert_eq!(rest, "got-int\n");
    assert_eq!(child.wait().unwrap().code(), Some(3));
}
