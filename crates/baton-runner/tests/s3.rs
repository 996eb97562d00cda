//! S3 mounts against a real S3-compatible server on loopback (`moto_server`, PyPI
//! `moto[server]`; `$BATON_MOTO_SERVER` overrides the program), for the local and exec-server
//! providers: objects are synced into the workspace on create and back on close (writable
//! mounts only), credentials come from a `RunnerSecretRef` resolved in the environment. One test
//! per binary: it sets that environment variable before any thread exists.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use support::baton_bin;

use baton_exec::{CommandSpec, Process, ProcessEvent, SpawnOptions, Stream};
use baton_runner::*;

const T: Duration = Duration::from_secs(60);
const SECRET: &str = "AKIAMOTOTEST:moto-secret-never-persisted";
const PATH: &str = "/usr/local/bin:/usr/bin:/bin";

fn program_path() -> String {
    let inherited = std::env::var("PATH").unwrap_or_default();
    format!("{inherited}:{PATH}")
}

/// Starts a process and waits until its output contains `ready`; keeps draining afterwards.
async fn start(spec: CommandSpec, ready: &str) -> (Process, String) {
    let process = baton_exec::spawn(&spec, SpawnOptions::streaming()).expect("spawn");
    let mut events = process.take_events().expect("events");
    let mut out = Vec::new();
    let mut stdout = Vec::new();
    while !String::from_utf8_lossy(&out).contains(ready) {
        match tokio::time::timeout(T, events.recv())
            .await
            .expect("ready in time")
        {
            Some(ProcessEvent::Output { stream, chunk, .. }) => {
                if stream == Stream::Stdout {
                    stdout.extend_from_slice(&chunk);
                }
                out.extend_from_slice(&chunk);
            }
            other => panic!(
                "ended before {ready:?}: {other:?}: {}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    (process, String::from_utf8_lossy(&stdout).into_owned())
}

async fn moto(dir: &Path) -> (Process, u16) {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        l.local_addr().expect("addr").port()
    };
    let program = std::env::var("BATON_MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
    let mut spec = CommandSpec::new(program, dir)
        .args(["-H", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .env("PATH", program_path());
    if let Ok(home) = std::env::var("HOME") {
        spec = spec.env("HOME", home);
    }
    let (p, _) = start(spec, "Running on").await;
    (p, port)
}

fn mount(uri: &str, path: &str, read_only: bool) -> RunnerMount {
    RunnerMount {
        name: path.into(),
        path: path.into(),
        read_only,
        intent: RunnerMountIntent {
            kind: RunnerMountKind::S3,
            uri: uri.into(),
            credentials: Some(RunnerSecretRef { id: "moto".into() }),
        },
    }
}

async fn read(s: &dyn RunnerSession, p: &str) -> Result<Vec<u8>, RunnerError> {
    s.read_file(RunnerFileReadRequest { path: p.into() })
        .await
        .map(|r| r.contents)
}

async fn sorted_keys(c: &S3Client) -> Vec<String> {
    let mut k = c.list().await.expect("list");
    k.sort();
    k
}

/// Seeds a bucket, mounts `data/` writable and `ro/` read-only, edits both, closes, and checks
/// what reached the bucket.
async fn round_trip(
    provider: &dyn RunnerProvider,
    mut destination: RunnerDestination,
    port: u16,
    bucket: &str,
) {
    let endpoint = format!("endpoint=http://127.0.0.1:{port}");
    let client = |prefix: &str| {
        S3Client::new(
            S3Location::parse(&format!("s3://{bucket}/{prefix}?{endpoint}")).expect("loc"),
            Some(S3Credentials::parse(SECRET).expect("creds")),
        )
    };
    let data = client("data");
    data.create_bucket().await.expect("bucket");
    data.put("data/a.txt", b"A").await.expect("put");
    data.put("data/sub/b.txt", b"B").await.expect("put");
    data.put("ro/r.txt", b"R").await.expect("put");
    data.put("other/x.txt", b"X").await.expect("put");
    destination.default_manifest.mounts = vec![
        mount(&format!("s3://{bucket}/data?{endpoint}"), "mnt/data", false),
        mount(&format!("s3://{bucket}/ro?{endpoint}"), "mnt/ro", true),
    ];
    assert!(provider.capabilities().mounts.s3);
    let s = tokio::time::timeout(T, provider.create_session(destination))
        .await
        .expect("in time")
        .expect("create with mounts");
    assert_eq!(read(&*s, "mnt/data/a.txt").await.expect("a"), b"A");
    assert_eq!(read(&*s, "mnt/data/sub/b.txt").await.expect("b"), b"B");
    assert_eq!(read(&*s, "mnt/ro/r.txt").await.expect("r"), b"R");
    assert!(matches!(
        read(&*s, "mnt/data/x.txt").await,
        Err(RunnerError::NotFound(_))
    ));

    let state = serde_json::to_string(&s.state()).expect("state");
    assert!(
        state.contains("\"moto\""),
        "the mount's secret reference is kept: {state}"
    );
    assert!(!state.contains("moto-secret"), "{state}");

    s.write_file(RunnerFileWriteRequest {
        path: "mnt/data/new/c.txt".into(),
        contents: b"C".to_vec(),
    })
    .await
    .expect("write");
    s.write_file(RunnerFileWriteRequest {
        path: "mnt/ro/ignored.txt".into(),
        contents: b"I".to_vec(),
    })
    .await
    .expect("write");
    let rm = s
        .run_command(RunnerCommandRequest::new("rm", "rm", ["mnt/data/a.txt"]))
        .await
        .expect("rm");
    assert_eq!(rm.exit_code, Some(0));
    tokio::time::timeout(T, s.close())
        .await
        .expect("in time")
        .expect("close syncs out");
    let all = client("");
    assert_eq!(
        sorted_keys(&all).await,
        [
            "data/new/c.txt",
            "data/sub/b.txt",
            "other/x.txt",
            "ro/r.txt"
        ]
    );
    assert_eq!(all.get("data/new/c.txt").await.expect("get"), b"C");
}

#[test]
fn s3_mounts_sync_in_and_out() {
    // SAFETY: the only test of this binary; no other thread exists yet.
    unsafe { std::env::set_var("BATON_SECRET_MOTO", SECRET) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let tmp = tempfile::tempdir().expect("tmp");
        let base = resolve_real(tmp.path()).expect("resolve");
        let (_moto, port) = moto(&base).await;

        let local = LocalProvider::new(&base.join("local")).expect("local");
        let ws = base.join("allowed/local-ws");
        round_trip(
            &local,
            RunnerDestination {
                id: "l".into(),
                provider_id: "local".into(),
                config: serde_json::json!({ "workspace": ws }),
                default_manifest: Default::default(),
            },
            port,
            "local-bucket",
        )
        .await;

        let root = base.join("allowed");
        let spec = CommandSpec::new(baton_bin(), &root)
            .args(["exec-server", "--listen", "ws://127.0.0.1:0", "--root"])
            .arg(&root)
            .env("PATH", "/usr/bin:/bin");
        let (_server, url) = start(spec, "\n").await;
        let remote: Arc<dyn RunnerProvider> =
            Arc::new(ExecServerProvider::new(&base.join("remote")).expect("remote"));
        round_trip(
            &*remote,
            RunnerDestination {
                id: "r".into(),
                provider_id: "exec-server".into(),
                config: serde_json::json!({
                    "url": url.trim(),
                    "workspace": root.join("remote-ws"),
                }),
                default_manifest: Default::default(),
            },
            port,
            "remote-bucket",
        )
        .await;
    });
}
