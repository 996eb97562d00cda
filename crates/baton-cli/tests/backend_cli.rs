//! `baton serve`, `baton workers` and `baton attach` end to end: the real binary, a real
//! backend on loopback, real workers.

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Child, Command, Output, Stdio};

#[path = "../../baton-runner/tests/support/sshd.rs"]
mod sshd;

#[expect(
    clippy::disallowed_methods,
    reason = "the test drives the real baton binary"
)]
fn baton() -> Command {
    Command::new(env!("CARGO_BIN_EXE_baton"))
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(args: &[&str], stdin: &str) -> Output {
    let mut child = baton()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn baton");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

#[test]
fn serve_spawn_list_attach_stop() {
    let data = tempfile::tempdir().expect("tempdir");
    let (server, url) = serve(&[std::ffi::OsStr::new("--data"), data.path().as_os_str()]);
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

    let out = run(
        &[
            "workers",
            "spawn",
            "--url",
            &url,
            "--label",
            "demo",
            "--",
            "sh",
            "-c",
            "echo hello-from-worker; read x; echo got:$x; exit 5",
        ],
        "",
    );
    assert!(out.status.success(), "{out:?}");
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(id, "local/w1");

    let out = run(&["workers", "list", "--url", &url], "");
    let list = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(list.contains("local/w1\trunning\trunning\tdemo"), "{list}");

    let out = run(&["attach", "--url", &url, &id], "typed\n");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("hello-from-worker"), "{out:?}");
    assert!(text.contains("got:typed"), "{out:?}");
    assert_eq!(
        out.status.code(),
        Some(5),
        "attach exits with the worker's code"
    );

    let out = run(&["workers", "stop", "--url", &url, &id], "");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "rejected");
    assert_eq!(out.status.code(), Some(1));

    let out = run(&["workers", "list", "--url", &url, "--json"], "");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v[0]["exit_code"], 5);
    drop(server);
}

#[test]
fn serve_with_a_remote_exec_server_runtime() {
    let root = tempfile::tempdir().expect("tempdir");
    let root_path = root.path().canonicalize().expect("canonical");
    let mut exec = baton()
        .args(["exec-server", "--listen", "ws://127.0.0.1:0", "--root"])
        .arg(&root_path)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn exec-server");
    let exec_out = exec.stdout.take().expect("stdout");
    let _exec = Server(exec);
    let mut ws_url = String::new();
    BufReader::new(exec_out)
        .read_line(&mut ws_url)
        .expect("ws url");

    let data = tempfile::tempdir().expect("tempdir");
    let (_server, url) = serve(&[
        std::ffi::OsString::from("--runtime"),
        format!("build1={}", ws_url.trim()).into(),
        "--workdir".into(),
        root_path.clone().into(),
        "--data".into(),
        data.path().into(),
    ]);

    let root_str = root_path.display().to_string();
    let out = run(
        &[
            "workers",
            "spawn",
            "--url",
            &url,
            "--runtime",
            "build1",
            "--cwd",
            &root_str,
            "--",
            "sh",
            "-c",
            "pwd; exit 3",
        ],
        "",
    );
    assert!(out.status.success(), "{out:?}");
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(id.starts_with("build1/"), "{id}");
    let out = run(&["attach", "--url", &url, &id], "");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&root_str),
        "{out:?}"
    );
    assert_eq!(out.status.code(), Some(3));

    // `baton serve` is killed (SIGKILL) while a worker runs on the exec server; a new `baton
    // serve` on the same data follows it again: attach shows every tick once, and its exit.
    let serve_args = [
        std::ffi::OsString::from("--runtime"),
        format!("build1={}", ws_url.trim()).into(),
        "--workdir".into(),
        root_path.clone().into(),
        "--data".into(),
        data.path().into(),
    ];
    let out = run(
        &[
            "workers",
            "spawn",
            "--url",
            &url,
            "--runtime",
            "build1",
            "--",
            "sh",
            "-c",
            "for i in $(seq 1 40); do echo tick $i; sleep 0.05; done; exit 6",
        ],
        "",
    );
    assert!(out.status.success(), "{out:?}");
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    drop(_server);
    let (_server, url) = serve(&serve_args);
    let out = run(&["attach", "--url", &url, &id], "");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let ticks: Vec<&str> = text.lines().filter(|l| l.starts_with("tick ")).collect();
    let expected: Vec<String> = (1..=40).map(|i| format!("tick {i}")).collect();
    assert_eq!(ticks, expected, "{out:?}");
    assert_eq!(out.status.code(), Some(6), "{out:?}");
}

/// Starts `baton serve` with `args` and returns the guard and its URL.
fn serve<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (Server, String) {
    let mut child = baton()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn baton serve");
    let stdout = child.stdout.take().expect("stdout");
    let server = Server(child);
    let mut url = String::new();
    BufReader::new(stdout)
        .read_line(&mut url)
        .expect("url line");
    (server, url.trim().to_owned())
}

/// A runtime registered by a runtimes file whose destination is ssh: a real sshd on loopback
/// starts `baton exec-server --listen stdio` for the backend's runner session, and the worker
/// runs there (tty, exit code, output through attach). The ssh address never appears in the
/// API.
#[test]
fn serve_with_an_ssh_runtime_from_a_runtimes_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path().canonicalize().expect("canonical");
    let sshd_dir = base.join("sshd");
    let ws = base.join("ws");
    std::fs::create_dir_all(&sshd_dir).expect("mkdir");
    std::fs::create_dir_all(&ws).expect("mkdir");
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    let (_sshd, port, key) = rt.block_on(sshd::start_sshd(&sshd_dir));
    let file = base.join("runtimes.json");
    std::fs::write(
        &file,
        serde_json::json!({"runtimes": {"box": {
            "destination": format!("ssh://{}@127.0.0.1:{port}{}", sshd::user(), ws.display()),
            "remote_baton": env!("CARGO_BIN_EXE_baton"),
            "timeout_seconds": 60,
            "config": {
                "identity_file": key,
                "ssh_options": ["StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null",
                                "IdentitiesOnly=yes", "LogLevel=ERROR"],
            },
        }}})
        .to_string(),
    )
    .expect("write runtimes file");
    let data = base.join("data");
    let (server, url) = serve(&[
        "--runtimes".as_ref(),
        file.as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
    ]);

    let out = run(
        &[
            "workers",
            "spawn",
            "--url",
            &url,
            "--runtime",
            "box",
            "--tty",
            "--cwd",
            &ws.display().to_string(),
            "--",
            "sh",
            "-c",
            "[ -t 0 ] && echo tty-over-ssh; pwd; exit 4",
        ],
        "",
    );
    assert!(out.status.success(), "{out:?}");
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(id.starts_with("box/"), "{id}");
    let out = run(&["attach", "--url", &url, &id], "");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("tty-over-ssh"), "{out:?}");
    assert!(text.contains(&ws.display().to_string()), "{out:?}");
    assert_eq!(out.status.code(), Some(4), "{out:?}");

    let out = run(&["workers", "list", "--url", &url, "--json"], "");
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(listed.contains("\"box\""), "{listed}");
    assert!(
        !listed.contains(&port.to_string()),
        "the ssh address is never exposed: {listed}"
    );
    let out = run(&["workers", "runtimes", "--url", &url], "");
    let runtimes = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    assert!(runtimes.contains("box\tssh\tavailable"), "{runtimes}");
    assert!(runtimes.contains("local\tlocal\tavailable"), "{runtimes}");
    assert!(!runtimes.contains(&port.to_string()), "{runtimes}");
    drop(server);
}

/// A broken runtimes file stops `baton serve` with an error naming the field.
#[test]
fn a_bad_runtimes_file_is_refused_with_the_field_path() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("runtimes.json");
    std::fs::write(
        &file,
        r#"{"runtimes": {"a": {"destination": "ws://127.0.0.1:1", "tokn": 1}}}"#,
    )
    .expect("write");
    let out = baton()
        .args(["serve", "--listen", "127.0.0.1:0", "--runtimes"])
        .arg(&file)
        .arg("--data")
        .arg(tmp.path().join("data"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("runtimes.a") && err.contains("tokn"), "{err}");
}

/// Writes a throwaway CA (`ca.pem`) and a server certificate it signed for `127.0.0.1` and
/// `localhost` (`cert.pem`, `key.pem`) into `dir`.
fn write_tls_files(dir: &std::path::Path) {
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "baton cli test CA");
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().expect("server key");
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("server params")
        .signed_by(&key, &issuer)
        .expect("server cert");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write ca");
    std::fs::write(dir.join("cert.pem"), cert.pem()).expect("write cert");
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).expect("write key");
}

/// `baton serve --tls-cert --tls-key` prints an `https://` URL; `workers` and `attach` reach it
/// with `--ca-file` (or `BATON_BACKEND_CA`) and refuse it without; bad TLS flags or files stop
/// `baton serve` with the file named.
#[test]
fn serve_over_tls_with_ca_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    write_tls_files(tmp.path());
    let (ca, cert, key) = (
        tmp.path().join("ca.pem"),
        tmp.path().join("cert.pem"),
        tmp.path().join("key.pem"),
    );
    let ca_arg = ca.display().to_string();
    let data = tmp.path().join("data");
    let (server, url) = serve(&[
        std::ffi::OsString::from("--tls-cert"),
        cert.clone().into(),
        "--tls-key".into(),
        key.clone().into(),
        "--data".into(),
        data.clone().into(),
    ]);
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    let out = run(
        &[
            "workers",
            "spawn",
            "--ca-file",
            &ca_arg,
            "--url",
            &url,
            "--",
            "sh",
            "-c",
            "echo hello-over-tls; read x; echo got:$x; exit 7",
        ],
        "",
    );
    assert!(out.status.success(), "{out:?}");
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(id, "local/w1");

    let out = run(
        &["attach", "--url", &url, "--ca-file", &ca_arg, &id],
        "typed\n",
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("hello-over-tls"), "{out:?}");
    assert!(text.contains("got:typed"), "{out:?}");
    assert_eq!(out.status.code(), Some(7), "{out:?}");

    let out = baton()
        .env("BATON_BACKEND_CA", &ca)
        .args(["workers", "list", "--url", &url])
        .output()
        .expect("run");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("local/w1\texited"),
        "{out:?}"
    );

    // Without the CA the certificate is refused, with the reason.
    let out = run(&["workers", "list", "--url", &url], "");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid peer certificate"), "{err}");
    // A plain http:// URL to the TLS port is told to use https.
    let plain = url.replacen("https://", "http://", 1);
    let out = run(&["workers", "list", "--url", &plain], "");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("backend.tls_required"), "{err}");
    drop(server);

    // A missing key file is named; a certificate without its key is a usage error.
    let missing = tmp.path().join("missing-key.pem");
    let out = baton()
        .args(["serve", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&cert)
        .arg("--tls-key")
        .arg(&missing)
        .arg("--data")
        .arg(&data)
        .output()
        .expect("run");
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing-key.pem"), "{err}");
    let out = baton()
        .args(["serve", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&cert)
        .arg("--data")
        .arg(&data)
        .output()
        .expect("run");
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--tls-key"),
        "{out:?}"
    );
}
