//! A token-protected `baton exec-server`: the runner reads the bearer token only from the
//! environment (`RunnerSecretRef`), and neither session state nor anything the runner writes to
//! disk contains it. One test per binary: it sets an environment variable before any thread
//! exists.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;
use support::baton_bin;

use baton_exec::{CommandSpec, ProcessEvent, SpawnOptions, Stream};
use baton_runner::{
    ExecServerProvider, RunnerCommandRequest, RunnerDestination, RunnerError, RunnerProvider,
    check_no_secrets,
};

const TOKEN: &str = "tok-4c1d9a7e-never-on-disk";
const T: Duration = Duration::from_secs(60);

fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("list").flatten() {
            let path = entry.path();
            let ty = entry.file_type().expect("type");
            if ty.is_dir() {
                stack.push(path);
            } else if ty.is_file() {
                let bytes = std::fs::read(&path).expect("read");
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    hits.push(path);
                }
            }
        }
    }
    hits
}

#[test]
fn token_comes_from_the_environment_only() {
    // SAFETY: the only test of this binary, and no other thread exists yet (the runtime is
    // built below).
    unsafe { std::env::set_var("BATON_SECRET_RUNNER_TOKEN", TOKEN) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let tmp = tempfile::tempdir().expect("tmp");
        let base = baton_runner::resolve_real(tmp.path()).expect("resolve");
        std::fs::create_dir_all(base.join("allowed")).expect("mkdir");
        let token_dir = tempfile::tempdir().expect("tmp");
        let token_file = token_dir.path().join("token");
        std::fs::write(&token_file, TOKEN).expect("token file");
        let root = base.join("allowed");
        let spec = CommandSpec::new(baton_bin(), &root)
            .args([
                "exec-server",
                "--listen",
                "ws://127.0.0.1:0",
                "--token-file",
            ])
            .arg(&token_file)
            .arg("--root")
            .arg(&root)
            .env("PATH", "/usr/bin:/bin");
        let server = baton_exec::spawn(&spec, SpawnOptions::streaming()).expect("server");
        let mut events = server.take_events().expect("events");
        let mut line = Vec::new();
        while !line.ends_with(b"\n") {
            match tokio::time::timeout(T, events.recv()).await.expect("url") {
                Some(ProcessEvent::Output {
                    stream: Stream::Stdout,
                    chunk,
                    ..
                }) => line.extend_from_slice(&chunk),
                Some(ProcessEvent::Output { .. }) => {}
                other => panic!("server ended: {other:?}"),
            }
        }
        tokio::spawn(async move { while events.recv().await.is_some() {} });
        let url = String::from_utf8(line).expect("utf8").trim().to_string();

        let runner_dir = base.join("runner");
        let provider = ExecServerProvider::new(&runner_dir).expect("provider");
        let ws = root.join("ws");
        let destination = |token: serde_json::Value| RunnerDestination {
            id: "secured".into(),
            provider_id: "exec-server".into(),
            config: serde_json::json!({"url": url, "workspace": ws, "token": token}),
            default_manifest: Default::default(),
        };
        // Without the token the server refuses the connection.
        let refused = provider
            .create_session(destination(serde_json::Value::Null))
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(matches!(refused, RunnerError::Client(_)), "{refused}");
        // A reference to an unset secret fails naming the variable, not a value.
        let missing = provider
            .create_session(destination(serde_json::json!({"id": "other"})))
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(
            missing.to_string().contains("BATON_SECRET_OTHER"),
            "{missing}"
        );

        let session = provider
            .create_session(destination(serde_json::json!({"id": "runner-token"})))
            .await
            .expect("authenticated session");
        let res = session
            .run_command(RunnerCommandRequest::new(
                "c",
                "sh",
                ["-c", "echo ok > f.txt"],
            ))
            .await
            .expect("run");
        assert_eq!(res.exit_code, Some(0));
        session.snapshot().await.expect("snapshot");
        session
            .export_artifact(baton_runner::RunnerArtifactExportRequest {
                path: "f.txt".into(),
                recursive: false,
            })
            .await
            .expect("artifact");
        let state = session.state();
        check_no_secrets(&state.metadata).expect("clean state");
        let json = serde_json::to_string(&state).expect("json");
        assert!(!json.contains(TOKEN), "{json}");
        assert!(
            json.contains("runner-token"),
            "the reference is kept: {json}"
        );
        drop(session);
        let resumed = provider
            .resume_session(state)
            .await
            .expect("resume with the token");
        resumed.close().await.expect("close");
        assert_eq!(
            files_containing(&runner_dir, TOKEN.as_bytes()),
            Vec::<PathBuf>::new()
        );
        assert_eq!(
            files_containing(&ws, TOKEN.as_bytes()),
            Vec::<PathBuf>::new()
        );
    });
}
