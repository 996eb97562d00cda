//! The provider contract for `ssh`, against a real OpenSSH server on loopback started per test
//! with a throwaway host key, user key and port (needs Debian's `openssh-server`: `sshd` at
//! `/usr/sbin/sshd`, or `$BATON_SSHD`), which starts the workspace's `baton exec-server
//! --listen stdio` (`$BATON_BIN`, else `target/debug/baton`).

mod contract;

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use support::baton_bin;
use support::sshd::{start_sshd, user};

use baton_runner::{RunnerDestination, SshProvider};
use contract::Harness;

async fn ssh() -> Harness {
    let (tmp, base, read_root, outside) = Harness::layout();
    let sshd_dir = base.join("sshd");
    std::fs::create_dir_all(&sshd_dir).expect("mkdir");
    let (sshd, port, key) = start_sshd(&sshd_dir).await;
    let provider = SshProvider::new(&base.join("runner")).expect("provider");
    let baton = baton_bin();
    let destination = format!("{}@127.0.0.1", user());
    Harness {
        provider: Arc::new(provider),
        base,
        read_root,
        outside,
        make_destination: Box::new(move |ws: &Path, read_roots: &[PathBuf]| RunnerDestination {
            id: "over-ssh".into(),
            provider_id: "ssh".into(),
            config: serde_json::json!({
                "destination": destination,
                "port": port,
                "identity_file": key,
                "ssh_options": [
                    "StrictHostKeyChecking=no",
                    "UserKnownHostsFile=/dev/null",
                    "IdentitiesOnly=yes",
                    "LogLevel=ERROR",
                ],
                "baton": baton,
                "workspace": ws,
                "read_roots": read_roots,
            }),
            default_manifest: Default::default(),
        }),
        next: AtomicUsize::new(0),
        _guard: Box::new((tmp, sshd)),
    }
}

contract_suite!(ssh);
