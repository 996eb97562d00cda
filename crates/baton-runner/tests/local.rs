//! The provider contract for `local`.

mod contract;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use baton_runner::{LocalProvider, RunnerDestination};
use contract::Harness;

async fn local() -> Harness {
    let (tmp, base, read_root, outside) = Harness::layout();
    let provider = LocalProvider::new(&base.join("runner")).expect("provider");
    Harness {
        provider: Arc::new(provider),
        base,
        read_root,
        outside,
        make_destination: Box::new(|ws: &Path, read_roots: &[PathBuf]| RunnerDestination {
            id: "here".into(),
            provider_id: "local".into(),
            config: serde_json::json!({ "workspace": ws, "read_roots": read_roots }),
            default_manifest: Default::default(),
        }),
        next: AtomicUsize::new(0),
        _guard: Box::new(tmp),
    }
}

contract_suite!(local);

/// Without a configured workspace, a fresh directory is created per session and removed on
/// close (even with read-only content).
#[tokio::test]
async fn fresh_workspace_is_created_and_removed() {
    use baton_runner::RunnerFileWriteRequest;
    let h = local().await;
    let s = h
        .provider
        .create_session(RunnerDestination {
            id: "fresh".into(),
            provider_id: "local".into(),
            config: serde_json::Value::Null,
            default_manifest: Default::default(),
        })
        .await
        .expect("create");
    let ws = s.paths().workspace().to_path_buf();
    assert!(ws.starts_with(h.base.join("runner/sessions")), "{ws:?}");
    s.write_file(RunnerFileWriteRequest {
        path: "ro/f".into(),
        contents: b"x".to_vec(),
    })
    .await
    .expect("write");
    std::fs::set_permissions(
        ws.join("ro"),
        std::os::unix::fs::PermissionsExt::from_mode(0o555),
    )
    .expect("chmod");
    assert!(ws.is_dir());
    s.close().await.expect("close");
    assert!(!ws.exists());
}

#[test]
fn builtin_providers_are_keyed_by_id() {
    let tmp = tempfile::tempdir().expect("tmp");
    let providers = baton_runner::builtin_providers(tmp.path()).expect("providers");
    let ids: Vec<&str> = providers.keys().map(String::as_str).collect();
    assert_eq!(ids, ["exec-server", "local", "ssh"]);
    for (id, p) in &providers {
        assert_eq!(&p.id(), id);
        assert!(p.capabilities().command_exec);
    }
    assert!(
        providers["ssh"]
            .setup_hint()
            .is_some_and(|h| !h.contains('='))
    );
}
