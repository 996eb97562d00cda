//! HTTPS/WSS end to end on real loopback sockets: a backend serving TLS with a throwaway CA
//! (rcgen), the Rust client trusting that CA (spawn, transcript, observation from a cursor),
//! clients that do not trust it, and plain-HTTP clients on the TLS port.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use baton_backend::{Backend, BackendConfig, ServeOptions, TlsConfig, TlsConfigError};
use baton_client::backend::{
    BackendClientError, BackendEvent, BackendHttp, BackendObserver, BackendTarget, BackendTls,
    ObserveOptions, decode_cursor,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Failure guard for waits (never used to synchronise).
const GUARD: Duration = Duration::from_secs(60);

/// A throwaway CA and a server certificate it signed for `127.0.0.1` and `localhost`, as PEM.
struct Pki {
    ca: String,
    cert: String,
    key: String,
}

fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "baton test CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().expect("server key");
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("server params");
    let cert = params.signed_by(&key, &issuer).expect("server cert");
    Pki {
        ca: ca_cert.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

/// A backend serving HTTPS on loopback; dropping it stops serving (workers are shut down by
/// [`Served::stop`]).
struct Served {
    addr: SocketAddr,
    backend: Backend,
    task: tokio::task::JoinHandle<Result<(), baton_backend::ServeError>>,
}

impl Served {
    async fn start(data: &Path, pki: &Pki, token: Option<&str>) -> Self {
        let tls = TlsConfig::from_pem(pki.cert.as_bytes(), pki.key.as_bytes()).expect("tls");
        let mut config = BackendConfig::new(data);
        config.default_cwd = std::env::temp_dir();
        let backend = Backend::open(config, Vec::new()).expect("open backend");
        let options = ServeOptions {
            token: token.map(str::to_owned),
            tls: Some(tls),
        };
        let listener = baton_backend::bind("127.0.0.1:0".parse().expect("addr"), &options)
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(baton_backend::serve(listener, backend.clone(), options));
        Self {
            addr,
            backend,
            task,
        }
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    async fn stop(self) {
        assert!(!self.task.is_finished(), "the server is still serving");
        self.task.abort();
        self.backend.shutdown().await;
    }
}

fn trusting(pki: &Pki) -> BackendTls {
    BackendTls::with_ca_pem(pki.ca.as_bytes()).expect("ca")
}

fn options() -> ObserveOptions {
    ObserveOptions {
        max_reconnects: 0,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(10),
        transcript_limit: 64,
    }
}

async fn next(o: &mut BackendObserver) -> Option<BackendEvent> {
    tokio::time::timeout(GUARD, o.next_event())
        .await
        .expect("event in time")
}

/// Reads events until an output event whose text (accumulated) contains `needle`, or the exit
/// event when `needle` is `None`; returns the events read.
async fn events_until(o: &mut BackendObserver, needle: Option<&str>) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut text = String::new();
    loop {
        match next(o).await.expect("observer still running") {
            BackendEvent::Event { cursor, payload } => {
                text.push_str(payload["text"].as_str().unwrap_or_default());
                let done = match needle {
                    Some(n) => text.contains(n),
                    None => payload["type"] == "exit",
                };
                out.push((cursor, payload));
                if done {
                    return out;
                }
            }
            BackendEvent::Snapshot { .. } | BackendEvent::Transcript(_) => {}
            BackendEvent::Diagnostic { code, message } => panic!("[{code}] {message}"),
        }
    }
}

/// The client trusting the CA spawns a worker over HTTPS, observes it over WSS, reads its
/// transcript, resumes from a saved cursor (exactly the later events), and loads transcript +
/// live events in one `connect`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_wss_with_the_ca() {
    let data = tempfile::tempdir().expect("tempdir");
    let pki = pki();
    let server = Served::start(data.path(), &pki, None).await;
    let http = BackendHttp::new(&server.url(), None)
        .expect("client")
        .with_tls(trusting(&pki));
    let summary = http
        .spawn(
            "local",
            &json!({"argv": ["sh", "-c", "echo first; read x; echo second:$x; exit 6"]}),
        )
        .await
        .expect("spawn over https");
    let w = summary["worker_id"].as_str().expect("worker id").to_owned();
    let target = BackendTarget::new(server.url(), "local", w.clone()).with_tls(trusting(&pki));

    // Over WSS from the start of the log until the first line; remember its cursor.
    let mut o =
        BackendObserver::resume(target.clone(), options(), "bo_0000000000000000").expect("observe");
    let seen = events_until(&mut o, Some("first")).await;
    let saved = seen.last().expect("an event").0.clone();
    drop(o);

    let transcript = http
        .transcript("local", &w, 0, 100)
        .await
        .expect("transcript over https");
    assert!(
        transcript.items.iter().any(|i| i.content == "first"),
        "{transcript:?}"
    );

    let r = http
        .input("local", &w, "user", "typed")
        .await
        .expect("input");
    assert_eq!(r.state, "accepted");

    // Resume over WSS from the saved cursor: only what came after it, in order, to the exit.
    let mut o = BackendObserver::resume(target.clone(), options(), &saved).expect("resume");
    let after = events_until(&mut o, None).await;
    let saved_seq = decode_cursor(&saved).expect("cursor");
    let mut last = saved_seq;
    for (cursor, payload) in &after {
        let seq = decode_cursor(cursor).expect("cursor");
        assert!(
            seq > last,
            "in order, nothing at or before the cursor: {after:?}"
        );
        last = seq;
        assert!(
            !payload["text"]
                .as_str()
                .is_some_and(|t| t.contains("first")),
            "{after:?}"
        );
    }
    assert!(
        after.iter().any(|(_, p)| p["text"]
            .as_str()
            .is_some_and(|t| t.contains("second:typed"))),
        "{after:?}"
    );
    assert_eq!(after.last().expect("exit").1["exit_code"], 6);
    drop(o);

    // Transcript then observation from the transcript's cursor, all over TLS.
    let mut o = BackendObserver::connect(target, options())
        .await
        .expect("observe");
    let mut items = Vec::new();
    while let Some(BackendEvent::Transcript(item)) = o.try_next_event() {
        items.push(item.content);
    }
    assert!(items.contains(&"first".to_owned()), "{items:?}");
    assert!(items.contains(&"second:typed".to_owned()), "{items:?}");
    assert!(o.start_cursor().is_some());
    server.stop().await;
}

/// Without the CA (default roots only, or another CA) the certificate is refused: a typed
/// error naming the certificate problem from `BackendHttp`, diagnostics (no retries) from the
/// observer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_a_clear_error() {
    let data = tempfile::tempdir().expect("tempdir");
    let pki = pki();
    let other = self::pki();
    let server = Served::start(data.path(), &pki, None).await;
    for tls in [BackendTls::default(), trusting(&other)] {
        let http = BackendHttp::new(&server.url(), None)
            .expect("client")
            .with_tls(tls.clone());
        let err = http.list_workers().await.expect_err("untrusted");
        let BackendClientError::Tls { url, source } = &err else {
            panic!("expected a TLS error, got {err:?}");
        };
        assert!(url.starts_with(&server.url()), "{url}");
        assert!(
            source.to_string().contains("invalid peer certificate"),
            "{source}"
        );

        let target = BackendTarget::new(server.url(), "local", "w1").with_tls(tls);
        let mut o = BackendObserver::connect(
            target,
            ObserveOptions {
                max_reconnects: 5,
                ..options()
            },
        )
        .await
        .expect("connect returns; failures are diagnostics");
        let mut codes = Vec::new();
        while let Some(event) = next(&mut o).await {
            let BackendEvent::Diagnostic { code, message } = event else {
                panic!("unexpected {event:?}");
            };
            assert!(message.contains("invalid peer certificate"), "{message}");
            codes.push(code);
        }
        assert_eq!(
            codes,
            ["client.transcript_unavailable", "client.tls_failed"],
            "a refused certificate is not retried"
        );
    }
    // The same server still serves a trusting client.
    let http = BackendHttp::new(&server.url(), None)
        .expect("client")
        .with_tls(trusting(&pki));
    assert!(http.list_workers().await.expect("list").is_empty());
    server.stop().await;
}

/// Plain HTTP, plain WebSocket, garbage and silent clients on the TLS port fail cleanly and the
/// server keeps serving TLS clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_clients_on_the_tls_port_fail_cleanly() {
    let data = tempfile::tempdir().expect("tempdir");
    let pki = pki();
    let server = Served::start(data.path(), &pki, Some("s3cret")).await;
    let plain_url = format!("http://{}", server.addr);

    let plain = BackendHttp::new(&plain_url, Some("s3cret".into())).expect("client");
    match plain.list_workers().await {
        Err(BackendClientError::Status { status, code, .. }) => {
            assert_eq!((status, code.as_str()), (400, "backend.tls_required"));
        }
        other => panic!("expected 400 backend.tls_required, got {other:?}"),
    }
    let body = json!({"argv": ["true"]});
    match plain.spawn("local", &body).await {
        Err(BackendClientError::Status { status, code, .. }) => {
            assert_eq!((status, code.as_str()), (400, "backend.tls_required"));
        }
        other => panic!("expected 400 backend.tls_required, got {other:?}"),
    }

    let mut target = BackendTarget::new(plain_url, "local", "w1");
    target.token = Some("s3cret".into());
    let mut o = BackendObserver::resume(target, options(), "bo_0000000000000000").expect("resume");
    let mut codes = Vec::new();
    while let Some(event) = next(&mut o).await {
        let BackendEvent::Diagnostic { code, .. } = event else {
            panic!("unexpected {event:?}");
        };
        codes.push(code);
    }
    assert_eq!(
        codes,
        ["client.ws_connect_failed", "client.reconnect_exhausted"]
    );

    // A handshake record followed by garbage, then a client that connects and says nothing.
    let mut raw = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    raw.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5])
        .await
        .expect("write");
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(GUARD, raw.read_to_end(&mut sink))
        .await
        .expect("the server closes a broken handshake");
    let silent = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");

    // Meanwhile TLS clients are served, with the token over TLS.
    let tls = trusting(&pki);
    let http = BackendHttp::new(&server.url(), Some("s3cret".into()))
        .expect("client")
        .with_tls(tls.clone());
    assert!(http.list_workers().await.expect("list").is_empty());
    let anonymous = BackendHttp::new(&server.url(), None)
        .expect("client")
        .with_tls(tls);
    match anonymous.list_workers().await {
        Err(BackendClientError::Status { status, .. }) => assert_eq!(status, 401),
        other => panic!("expected 401, got {other:?}"),
    }
    drop(silent);
    server.stop().await;
}

/// Bad certificate or key inputs are refused with the file (or argument) at fault.
#[test]
fn bad_certificate_or_key_files_name_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki();
    let other = self::pki();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let other_key = dir.path().join("other-key.pem");
    let missing = dir.path().join("missing.pem");
    std::fs::write(&cert, &pki.cert).expect("write");
    std::fs::write(&key, &pki.key).expect("write");
    std::fs::write(&other_key, &other.key).expect("write");

    TlsConfig::from_pem_files(&cert, &key).expect("a matching pair loads");

    let err = TlsConfig::from_pem_files(&missing, &key).expect_err("missing");
    assert!(matches!(&err, TlsConfigError::Read { path, .. } if path == &missing));
    assert!(err.to_string().contains("missing.pem"), "{err}");

    let err = TlsConfig::from_pem_files(&key, &key).expect_err("a key is no certificate");
    assert!(
        matches!(&err, TlsConfigError::NoCertificate { origin } if origin.ends_with("key.pem")),
        "{err:?}"
    );

    let err = TlsConfig::from_pem_files(&cert, &cert).expect_err("a certificate is no key");
    assert!(
        matches!(&err, TlsConfigError::Key { origin, .. } if origin.ends_with("cert.pem")),
        "{err:?}"
    );

    let err = TlsConfig::from_pem_files(&cert, &other_key).expect_err("mismatched pair");
    assert!(
        matches!(&err, TlsConfigError::Rejected { key, .. } if key.ends_with("other-key.pem")),
        "{err:?}"
    );

    let err = TlsConfig::from_pem(b"-----BEGIN CERTIFICATE-----\nnot base64!\n", b"")
        .expect_err("malformed");
    assert!(
        matches!(&err, TlsConfigError::Certificate { origin, .. } if origin == "certificate PEM"),
        "{err:?}"
    );
}
