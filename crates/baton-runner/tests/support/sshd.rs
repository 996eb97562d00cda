//! A throwaway OpenSSH server on loopback for tests (needs Debian's `openssh-server`: `sshd`
//! at `/usr/sbin/sshd`, or `$BATON_SSHD`; run as a user who may create `/run/sshd`). Shared by
//! the runner's ssh contract tests and the CLI's ssh-runtime test (`#[path]` include).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_exec::{CommandSpec, Process, ProcessEvent, SpawnOptions, Stream};

/// Limit for sshd to say it listens (a hang fails instead of blocking CI).
const READY: Duration = Duration::from_secs(60);

pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub fn sshd_bin() -> PathBuf {
    let p = std::env::var_os("BATON_SSHD")
        .map_or_else(|| PathBuf::from("/usr/sbin/sshd"), PathBuf::from);
    assert!(
        p.is_file(),
        "{p:?} is missing: install openssh-server (apt-get install -y openssh-server) or set BATON_SSHD"
    );
    p
}

/// Runs a setup command to completion; panics unless it exits 0.
async fn run_ok(program: &str, args: &[&str], cwd: &Path) {
    let spec = CommandSpec::new(program, cwd).args(args).env("PATH", PATH);
    let (process, mut events) = baton_exec::spawn_streaming(&spec).expect("spawn setup command");
    let mut err = Vec::new();
    while let Some(ev) = events.recv().await {
        if let ProcessEvent::Output { chunk, .. } = ev {
            err.extend_from_slice(&chunk);
        }
    }
    let status = process.wait().await;
    assert!(
        status.success(),
        "{program} {args:?}: {status} {}",
        String::from_utf8_lossy(&err)
    );
}

/// Starts sshd on a free loopback port; returns (sshd process, port, user key path).
pub async fn start_sshd(dir: &Path) -> (Process, u16, PathBuf) {
    // sshd refuses to start without its privilege-separation directory.
    std::fs::create_dir_all("/run/sshd").expect("create /run/sshd (run the tests as root)");
    let host_key = dir.join("host_key");
    let user_key = dir.join("id_ed25519");
    for key in [&host_key, &user_key] {
        run_ok(
            "ssh-keygen",
            &[
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-f",
                key.to_str().expect("utf8"),
            ],
            dir,
        )
        .await;
    }
    std::fs::copy(dir.join("id_ed25519.pub"), dir.join("authorized_keys"))
        .expect("authorized_keys");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        l.local_addr().expect("addr").port()
    };
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
             PidFile {}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
             PermitRootLogin prohibit-password\nLogLevel INFO\n",
            host_key.display(),
            dir.join("authorized_keys").display(),
            dir.join("sshd.pid").display(),
        ),
    )
    .expect("sshd_config");
    let spec = CommandSpec::new(sshd_bin(), dir)
        .args(["-D", "-e", "-f"])
        .arg(&config)
        .env("PATH", PATH);
    let process = baton_exec::spawn(&spec, SpawnOptions::streaming()).expect("spawn sshd");
    let mut events = process.take_events().expect("events");
    let mut log = Vec::new();
    while !String::from_utf8_lossy(&log).contains("Server listening on") {
        match tokio::time::timeout(READY, events.recv())
            .await
            .expect("sshd ready in time")
        {
            Some(ProcessEvent::Output {
                stream: Stream::Stderr | Stream::Stdout,
                chunk,
                ..
            }) => log.extend_from_slice(&chunk),
            other => panic!("sshd ended: {other:?}: {}", String::from_utf8_lossy(&log)),
        }
    }
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    (process, port, user_key)
}

pub fn user() -> String {
    std::env::var("USER").unwrap_or_else(|_| "root".into())
}
