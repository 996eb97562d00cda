//! The tool IPC server on real Unix sockets: raw protocol clients, many connections at once,
//! protocol errors, untracked names, and the JS client (`packages/tool-client`, run by `node`)
//! including the `@voidzero-dev/vite-task-client` contract through `VP_RUN_NODE_CLIENT_PATH`.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_cache::EnvPattern;
use baton_protocol::tool::{ErrorCode, GetEnvResult, GetEnvsResult, ResponseFrame};
use baton_task::ipc::{IpcServer, ToolReports, write_node_client};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// Upper bound for a test that would otherwise hang on a broken server (failure detection,
/// not synchronisation).
const HANG: Duration = Duration::from_secs(60);

fn os(bytes: &[u8]) -> OsString {
    OsString::from_vec(bytes.to_vec())
}

fn parent_env() -> Vec<(OsString, OsString)> {
    vec![
        (os(b"VITE_API_URL"), os(b"https://example.invalid/api")),
        (os(b"VITE_RAW"), os(b"\xff\xferaw\x80")),
        (os(b"VITE_SECRET_KEY"), os(b"hunter2")),
        (os(b"SECRET_TOKEN"), os(b"t0ken")),
        (os(b"PLAIN"), os(b"plain value")),
    ]
}

fn untracked() -> Vec<String> {
    vec!["SECRET_TOKEN".to_owned(), "VITE_SECRET_*".to_owned()]
}

struct Conn {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Conn {
    async fn open(path: &Path) -> Conn {
        let (r, w) = UnixStream::connect(path)
            .await
            .expect("connect")
            .into_split();
        Conn {
            reader: BufReader::new(r),
            writer: w,
        }
    }

    async fn send_raw(&mut self, line: &str) {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write");
    }

    /// The next response line, `None` at EOF.
    async fn recv(&mut self) -> Option<ResponseFrame> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).await.expect("read");
        (n > 0).then(|| serde_json::from_str(&line).expect("response is JSON"))
    }

    async fn call(&mut self, line: &str) -> ResponseFrame {
        self.send_raw(line).await;
        self.recv().await.expect("an answer")
    }

    async fn hello(path: &Path) -> Conn {
        let mut c = Conn::open(path).await;
        let resp = c.call(r#"{"id":0,"op":"hello","version":1}"#).await;
        assert_eq!(resp.error, None);
        assert_eq!(resp.result.expect("result")["version"], 1);
        c
    }
}

fn result<T: serde::de::DeserializeOwned>(resp: ResponseFrame) -> T {
    assert_eq!(resp.error, None, "unexpected error answer");
    serde_json::from_value(resp.result.expect("a result")).expect("result shape")
}

#[tokio::test]
async fn env_answers_are_byte_exact_and_untracked_names_stay_untracked() {
    let server = IpcServer::start(parent_env(), untracked()).expect("start");
    let mut c = Conn::hello(server.socket_path()).await;

    let raw: GetEnvResult = result(c.call(r#"{"id":1,"op":"getEnv","name":"VITE_RAW"}"#).await);
    assert_eq!(raw.value.expect("set").0, b"\xff\xferaw\x80");
    let unset: GetEnvResult = result(
        c.call(r#"{"id":2,"op":"getEnv","name":"NOPE","tracked":true}"#)
            .await,
    );
    assert_eq!(unset.value, None);
    // Answered (the task itself may not have it) but never tracked.
    let secret: GetEnvResult = result(
        c.call(r#"{"id":3,"op":"getEnv","name":"SECRET_TOKEN"}"#)
            .await,
    );
    assert_eq!(secret.value.expect("set").0, b"t0ken");
    let plain: GetEnvResult = result(
        c.call(r#"{"id":4,"op":"getEnv","name":"PLAIN","tracked":false}"#)
            .await,
    );
    assert_eq!(plain.value.expect("set").0, b"plain value");
    let vite: GetEnvsResult = result(c.call(r#"{"id":5,"op":"getEnvs","prefix":"VITE_"}"#).await);
    assert_eq!(
        vite.vars.keys().collect::<Vec<_>>(),
        ["VITE_API_URL", "VITE_RAW", "VITE_SECRET_KEY"]
    );
    assert_eq!(vite.vars["VITE_RAW"].0, b"\xff\xferaw\x80");
    let globbed: GetEnvsResult = result(
        c.call(r#"{"id":6,"op":"getEnvs","glob":"*_TOKEN","tracked":false}"#)
            .await,
    );
    assert_eq!(globbed.vars.keys().collect::<Vec<_>>(), ["SECRET_TOKEN"]);
    drop(c);

    let reports = server.finish().await;
    assert_eq!(
        reports.tracked_env,
        BTreeMap::from([
            ("NOPE".to_owned(), None),
            ("VITE_RAW".to_owned(), Some(b"\xff\xferaw\x80".to_vec())),
        ])
    );
    assert_eq!(reports.tracked_env_patterns.len(), 1);
    let p = &reports.tracked_env_patterns[0];
    assert_eq!(p.pattern, EnvPattern::Prefix("VITE_".into()));
    assert_eq!(
        p.matches.keys().collect::<Vec<_>>(),
        ["VITE_API_URL", "VITE_RAW"],
        "the untracked VITE_SECRET_KEY is not part of the tracked set"
    );
    assert_eq!(reports.protocol_error, None);
    assert_eq!(reports.cache_disabled_reason(), None);
}

#[tokio::test]
async fn ignores_are_normalised_and_disable_cache_keeps_the_first_reason() {
    let server = IpcServer::start(parent_env(), vec![]).expect("start");
    let mut c = Conn::hello(server.socket_path()).await;
    for (id, line) in [
        r#""op":"ignoreInput","path":"/w/pkg/./node_modules//.cache/""#,
        r#""op":"ignoreOutput","path":"/w/pkg/dist/../tmp""#,
        r#""op":"disableCache","reason":"dev server""#,
        r#""op":"disableCache""#,
    ]
    .iter()
    .enumerate()
    {
        let resp = c.call(&format!(r#"{{"id":{id},{line}}}"#)).await;
        assert_eq!(resp.id, Some(id as u64));
        assert_eq!(resp.error, None);
    }
    drop(c);
    let reports = server.finish().await;
    assert_eq!(
        reports.ignored_inputs,
        BTreeSet::from([PathBuf::from("/w/pkg/node_modules/.cache")])
    );
    assert_eq!(
        reports.ignored_outputs,
        BTreeSet::from([PathBuf::from("/w/pkg/tmp")])
    );
    assert!(reports.ignores_input(Path::new("/w/pkg/node_modules/.cache/vite/dep.json")));
    let reason = reports.disable_cache.clone().expect("disabled");
    assert!(reason.starts_with("disabled by a tool (pid "), "{reason}");
    assert!(reason.ends_with("): dev server"), "{reason}");
    assert_eq!(reports.cache_disabled_reason(), Some(reason));
}

#[tokio::test]
async fn malformed_request_is_answered_closes_the_connection_and_is_recorded() {
    let server = IpcServer::start(parent_env(), vec![]).expect("start");
    let mut c = Conn::hello(server.socket_path()).await;
    let resp = c.call(r#"{"id":9,"op":"getEnv","nam":"X"}"#).await;
    assert_eq!(resp.id, Some(9));
    assert_eq!(resp.error.expect("error").code, ErrorCode::BadRequest);
    assert!(
        c.recv().await.is_none(),
        "connection closed after the error"
    );

    let mut c2 = Conn::hello(server.socket_path()).await;
    let resp = c2.call("this is not json").await;
    assert_eq!(resp.id, None);
    assert_eq!(resp.error.expect("error").code, ErrorCode::BadRequest);
    drop(c2);

    let reports = server.finish().await;
    let reason = reports.protocol_error.clone().expect("recorded");
    assert!(reason.contains("malformed request"), "{reason}");
    assert!(reason.contains("`name`"), "the first error wins: {reason}");
    assert_eq!(reports.cache_disabled_reason(), Some(reason));
}

#[tokio::test]
async fn hello_is_required_and_versions_are_checked() {
    let server = IpcServer::start(parent_env(), vec![]).expect("start");
    let mut c = Conn::open(server.socket_path()).await;
    let resp = c.call(r#"{"id":1,"op":"getEnv","name":"PLAIN"}"#).await;
    assert_eq!(resp.error.expect("error").code, ErrorCode::HelloRequired);
    let mut c = Conn::open(server.socket_path()).await;
    let resp = c.call(r#"{"id":1,"op":"hello","version":99}"#).await;
    assert_eq!(
        resp.error.expect("error").code,
        ErrorCode::UnsupportedVersion
    );
    drop(c);
    let reports = server.finish().await;
    assert!(
        reports
            .protocol_error
            .expect("recorded")
            .contains("first request must be hello")
    );
    assert!(reports.tracked_env.is_empty());
}

#[tokio::test]
async fn invalid_glob_and_relative_path_are_errors_but_the_connection_stays() {
    let server = IpcServer::start(parent_env(), vec![]).expect("start");
    let mut c = Conn::hello(server.socket_path()).await;
    let resp = c
        .call(r#"{"id":1,"op":"getEnvs","glob":"[","tracked":true}"#)
        .await;
    assert_eq!(resp.error.expect("error").code, ErrorCode::InvalidPattern);
    let resp = c
        .call(r#"{"id":2,"op":"getEnvs","glob":"A*","prefix":"A"}"#)
        .await;
    assert_eq!(resp.error.expect("error").code, ErrorCode::InvalidPattern);
    let resp = c
        .call(r#"{"id":3,"op":"ignoreInput","path":"relative/dir"}"#)
        .await;
    assert_eq!(resp.error.expect("error").code, ErrorCode::InvalidPath);
    let ok: GetEnvResult = result(c.call(r#"{"id":4,"op":"getEnv","name":"PLAIN"}"#).await);
    assert!(ok.value.is_some());
    drop(c);
    let reports = server.finish().await;
    assert!(
        reports
            .protocol_error
            .expect("recorded")
            .contains("invalid glob")
    );
    assert!(reports.ignored_inputs.is_empty());
    assert!(reports.tracked_env_patterns.is_empty());
}

#[tokio::test]
async fn an_overlong_line_is_rejected() {
    let server = IpcServer::start(parent_env(), vec![]).expect("start");
    let mut c = Conn::hello(server.socket_path()).await;
    let huge = format!(
        r#"{{"id":1,"op":"ignoreInput","path":"/{}"}}"#,
        "a".repeat(baton_protocol::tool::MAX_LINE_BYTES)
    );
    // The server answers before the whole line is written; a write error after that is fine.
    let _ = c.writer.write_all(huge.as_bytes()).await;
    let resp = c.recv().await.expect("an answer");
    assert_eq!(resp.error.expect("error").code, ErrorCode::TooLong);
    drop(c);
    assert!(server.finish().await.protocol_error.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_at_once() {
    let server = IpcServer::start(parent_env(), vec![]).expect("start");
    let path = server.socket_path().to_owned();
    // All connections are open and greeted before any of them is used, and answered in
    // reverse order: a server that served one connection at a time would stall here.
    let mut conns = Vec::new();
    for _ in 0..40 {
        conns.push(Conn::open(&path).await);
    }
    for c in &mut conns {
        c.send_raw(r#"{"id":0,"op":"hello","version":1}"#).await;
    }
    let work = async {
        for c in conns.iter_mut().rev() {
            assert_eq!(c.recv().await.expect("hello answer").error, None);
        }
        let tasks: Vec<_> = conns
            .into_iter()
            .enumerate()
            .map(|(i, mut c)| {
                tokio::spawn(async move {
                    for j in 0..10 {
                        let resp = c
                            .call(&format!(
                                r#"{{"id":{j},"op":"ignoreInput","path":"/w/in-{i}-{j}"}}"#
                            ))
                            .await;
                        assert_eq!(resp.id, Some(j));
                        assert_eq!(resp.error, None);
                    }
                    let v: GetEnvResult =
                        result(c.call(r#"{"id":10,"op":"getEnv","name":"PLAIN"}"#).await);
                    assert_eq!(v.value.expect("set").0, b"plain value");
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("client task");
        }
    };
    tokio::time::timeout(HANG, work)
        .await
        .expect("served in time");
    let reports = server.finish().await;
    assert_eq!(reports.ignored_inputs.len(), 400);
    assert_eq!(reports.tracked_env.len(), 1);
    assert_eq!(reports.protocol_error, None);
}

#[tokio::test]
async fn requests_sent_without_waiting_for_answers_are_served_by_finish() {
    let server = IpcServer::start(parent_env(), vec![]).expect("start");
    // A fire-and-forget client that has exited before the run ends: its connection may still
    // be in the listen backlog when finish is called.
    {
        let mut s = std::os::unix::net::UnixStream::connect(server.socket_path()).expect("connect");
        std::io::Write::write_all(
            &mut s,
            concat!(
                r#"{"id":1,"op":"hello","version":1}"#,
                "\n",
                r#"{"id":2,"op":"ignoreOutput","path":"/w/.cache"}"#,
                "\n",
                r#"{"id":3,"op":"disableCache","reason":"bye"}"#,
                "\n",
            )
            .as_bytes(),
        )
        .expect("write");
    }
    let reports = server.finish().await;
    assert!(reports.ignores_output(Path::new("/w/.cache/x")));
    assert!(reports.disable_cache.expect("recorded").ends_with(": bye"));
}

#[tokio::test]
async fn socket_dir_is_private_and_removed_by_finish() {
    let server = IpcServer::start(vec![], vec![]).expect("start");
    let dir = server.socket_path().parent().expect("dir").to_owned();
    let mode = std::fs::metadata(&dir)
        .expect("dir exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    let env = server.child_env();
    assert_eq!(env[0].0, "BATON_IPC");
    assert_eq!(env[0].1, server.socket_path().as_os_str());
    assert_eq!(env[1], (OsString::from("BATON_RUN"), OsString::from("1")));
    // A client that is still connected when the run ends does not hold finish up for long.
    let _lingering = Conn::hello(server.socket_path()).await;
    let reports = server.finish().await;
    assert_eq!(reports, ToolReports::default());
    assert!(!dir.exists());
}

#[test]
fn works_without_a_runtime_and_while_the_caller_is_blocked() {
    // No tokio runtime here, and this thread blocks in plain std I/O while the server answers.
    let server = IpcServer::start(parent_env(), vec![]).expect("start");
    let mut s = std::os::unix::net::UnixStream::connect(server.socket_path()).expect("connect");
    std::io::Write::write_all(
        &mut s,
        concat!(
            r#"{"id":1,"op":"hello","version":1}"#,
            "\n",
            r#"{"id":2,"op":"getEnv","name":"PLAIN"}"#,
            "\n"
        )
        .as_bytes(),
    )
    .expect("write");
    let mut reader = std::io::BufReader::new(s);
    let mut lines = Vec::new();
    for _ in 0..2 {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut reader, &mut line).expect("read");
        lines.push(serde_json::from_str::<ResponseFrame>(&line).expect("json"));
    }
    let v: GetEnvResult = result(lines.pop().expect("answer"));
    assert_eq!(v.value.expect("set").0, b"plain value");
    drop(reader);
    let reports = server.finish_blocking();
    assert_eq!(reports.tracked_env.keys().collect::<Vec<_>>(), ["PLAIN"]);
}

// ---------------------------------------------------------------- JS client through node

/// Runs `node` with `args`, only the given env (plus PATH), in `cwd`; returns (status, stdout,
/// stderr). Blocking: call it from `spawn_blocking`.
#[expect(
    clippy::disallowed_methods,
    reason = "integration test spawns node to exercise the JS tool client"
)]
fn run_node(args: &[&str], env: &[(String, String)], cwd: &Path) -> (i32, String, String) {
    let out = std::process::Command::new("node")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(cwd)
        .output()
        .expect("node is installed (see .ci/run)");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes `script` to `dir/name` and runs it with node under `env`.
async fn node_script(
    dir: &Path,
    name: &str,
    script: &str,
    env: Vec<(String, String)>,
) -> (i32, String, String) {
    let file = dir.join(name);
    std::fs::write(&file, script).expect("write script");
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || run_node(&[file.to_str().expect("utf-8 path")], &env, &dir))
        .await
        .expect("join")
}

fn js_env(server: &IpcServer, client: &Path) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = server
        .child_env()
        .into_iter()
        .map(|(k, v)| {
            (
                k.into_string().expect("utf-8"),
                v.into_string().expect("utf-8"),
            )
        })
        .collect();
    env.push(("BATON_TOOL_CLIENT".into(), client.display().to_string()));
    env
}

const JS_DIRECT: &str = r#"
const c = require(process.env.BATON_TOOL_CLIENT);
const out = {
  inBaton: c.inBaton(),
  url: c.getEnv('VITE_API_URL'),
  raw: c.getEnv('VITE_RAW'),
  missing: c.getEnv('NOPE') === undefined,
  untrackedRead: c.getEnv('PLAIN', { tracked: false }),
  secret: c.getEnv('SECRET_TOKEN'),
  prefix: c.getEnvs({ prefix: 'VITE_' }),
  glob: c.getEnvs('*_TOKEN', { tracked: false }),
};
c.ignoreInput('node_modules/.cache');
c.ignoreOutput('/abs/out/./tmp');
c.disableCache('flaky mode');
try { c.getEnvs('['); out.threw = false; } catch (e) { out.threw = e.code; }
console.log(JSON.stringify(out));
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_client_talks_to_the_server() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let client = write_node_client(&tmp.path().join("rt")).expect("write client");
    let server = IpcServer::start(parent_env(), untracked()).expect("start");
    let (code, stdout, stderr) =
        node_script(tmp.path(), "direct.js", JS_DIRECT, js_env(&server, &client)).await;
    assert_eq!(code, 0, "stderr: {stderr}");
    let out: serde_json::Value = serde_json::from_str(stdout.trim()).expect("json");
    assert_eq!(out["inBaton"], true);
    assert_eq!(out["url"], "https://example.invalid/api");
    assert_eq!(
        out["raw"],
        String::from_utf8_lossy(b"\xff\xferaw\x80").as_ref(),
        "JS strings decode values as UTF-8 (lossy)"
    );
    assert_eq!(out["missing"], true);
    assert_eq!(out["untrackedRead"], "plain value");
    assert_eq!(out["secret"], "t0ken");
    assert_eq!(
        out["prefix"]
            .as_object()
            .expect("object")
            .keys()
            .collect::<Vec<_>>(),
        ["VITE_API_URL", "VITE_RAW", "VITE_SECRET_KEY"]
    );
    assert_eq!(out["glob"], serde_json::json!({"SECRET_TOKEN": "t0ken"}));
    assert_eq!(out["threw"], "invalidPattern");

    let reports = server.finish().await;
    assert_eq!(
        reports.tracked_env,
        BTreeMap::from([
            ("NOPE".to_owned(), None),
            (
                "VITE_API_URL".to_owned(),
                Some(b"https://example.invalid/api".to_vec())
            ),
            ("VITE_RAW".to_owned(), Some(b"\xff\xferaw\x80".to_vec())),
        ])
    );
    assert_eq!(reports.tracked_env_patterns.len(), 1);
    let cwd = tmp.path().canonicalize().expect("canonical tmp");
    assert_eq!(
        reports.ignored_inputs,
        BTreeSet::from([cwd.join("node_modules/.cache")])
    );
    assert_eq!(
        reports.ignored_outputs,
        BTreeSet::from([PathBuf::from("/abs/out/tmp")])
    );
    assert!(
        reports
            .disable_cache
            .as_deref()
            .expect("disabled")
            .ends_with(": flaky mode")
    );
    assert!(
        reports
            .protocol_error
            .expect("invalid glob")
            .contains("invalid glob")
    );
}

/// What `@voidzero-dev/vite-task-client` does: an ES module that `createRequire`s the path in
/// `VP_RUN_NODE_CLIENT_PATH` and calls `load()` on it, then the five methods.
const JS_VITE_CONTRACT: &str = r#"
import { createRequire } from 'node:module';
const runner = createRequire(import.meta.url)(process.env.VP_RUN_NODE_CLIENT_PATH).load();
const names = ['ignoreInput', 'ignoreOutput', 'disableCache', 'getEnv', 'getEnvs'];
const shape = names.map((n) => typeof runner[n]);
runner.ignoreOutput(process.cwd() + '/node_modules/.vite');
const mode = runner.getEnv('NODE_ENV');
const vite = runner.getEnvs({ prefix: 'VITE_' });
const globbed = runner.getEnvs('VITE_API_*', { tracked: false });
console.log(JSON.stringify({ shape, mode: mode ?? null, vite, globbed }));
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vite_task_client_contract_through_vp_run_node_client_path() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let client = write_node_client(&tmp.path().join("rt")).expect("write client");
    assert_eq!(
        write_node_client(&tmp.path().join("rt")).expect("again"),
        client,
        "written once, same name"
    );
    // `type: module` next to the script must not change how the client module loads.
    std::fs::write(tmp.path().join("package.json"), r#"{"type":"module"}"#).expect("write");
    let mut env = parent_env();
    env.push((os(b"NODE_ENV"), os(b"production")));
    let server = IpcServer::start(env, vec![]).expect("start");
    let mut child_env = js_env(&server, &client);
    child_env.push((
        "VP_RUN_NODE_CLIENT_PATH".into(),
        client.display().to_string(),
    ));
    let (code, stdout, stderr) =
        node_script(tmp.path(), "vite.mjs", JS_VITE_CONTRACT, child_env).await;
    assert_eq!(code, 0, "stderr: {stderr}");
    let out: serde_json::Value = serde_json::from_str(stdout.trim()).expect("json");
    assert_eq!(
        out["shape"],
        serde_json::json!(["function", "function", "function", "function", "function"])
    );
    assert_eq!(out["mode"], "production");
    assert_eq!(out["vite"]["VITE_API_URL"], "https://example.invalid/api");
    assert_eq!(
        out["globbed"],
        serde_json::json!({"VITE_API_URL": "https://example.invalid/api"})
    );
    let reports = server.finish().await;
    assert_eq!(
        reports.tracked_env.get("NODE_ENV"),
        Some(&Some(b"production".to_vec())),
        "getEnv is tracked by default"
    );
    assert_eq!(
        reports
            .tracked_env_patterns
            .iter()
            .map(|p| p.pattern.clone())
            .collect::<Vec<_>>(),
        [EnvPattern::Prefix("VITE_".into())],
        "the untracked glob read is not recorded"
    );
    let cwd = tmp.path().canonicalize().expect("canonical");
    assert!(reports.ignores_output(&cwd.join("node_modules/.vite/deps/x.js")));
    assert_eq!(reports.protocol_error, None);
}

/// A tool that forks worker processes, each reporting on its own connection.
const JS_WORKERS: &str = r#"
const { fork } = require('node:child_process');
const c = require(process.env.BATON_TOOL_CLIENT);
if (process.argv[2] === 'worker') {
  const i = process.argv[3];
  c.ignoreInput(`/w/worker-${i}`);
  process.stdout.write(`${i}:${c.getEnv('PLAIN')}\n`);
} else {
  c.ignoreInput('/w/main');
  let left = 6;
  for (let i = 0; i < 6; i++) {
    fork(__filename, ['worker', String(i)]).on('exit', (code) => {
      if (code !== 0) process.exitCode = 1;
      if (--left === 0) process.stdout.write('done\n');
    });
  }
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_worker_processes_each_report() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let client = write_node_client(&tmp.path().join("rt")).expect("write client");
    let server = IpcServer::start(parent_env(), vec![]).expect("start");
    let (code, stdout, stderr) = node_script(
        tmp.path(),
        "workers.js",
        JS_WORKERS,
        js_env(&server, &client),
    )
    .await;
    assert_eq!(code, 0, "stderr: {stderr}");
    let mut lines: Vec<&str> = stdout.lines().collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        [
            "0:plain value",
            "1:plain value",
            "2:plain value",
            "3:plain value",
            "4:plain value",
            "5:plain value",
            "done"
        ]
    );
    let reports = server.finish().await;
    let expected: BTreeSet<PathBuf> = std::iter::once(PathBuf::from("/w/main"))
        .chain((0..6).map(|i| PathBuf::from(format!("/w/worker-{i}"))))
        .collect();
    assert_eq!(reports.ignored_inputs, expected);
}

/// A tool whose worker threads (not processes) call the client too.
const JS_THREADS: &str = r#"
const { Worker, isMainThread, workerData } = require('node:worker_threads');
const c = require(process.env.BATON_TOOL_CLIENT);
if (isMainThread) {
  c.ignoreInput('/w/thread-main');
  let left = 3;
  for (let i = 0; i < 3; i++) {
    new Worker(__filename, { workerData: i }).on('exit', (code) => {
      if (code !== 0) process.exitCode = 1;
      if (--left === 0) console.log(c.getEnv('PLAIN', { tracked: false }));
    });
  }
} else {
  c.ignoreInput(`/w/thread-${workerData}`);
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_worker_threads_each_report() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let client = write_node_client(&tmp.path().join("rt")).expect("write client");
    let server = IpcServer::start(parent_env(), vec![]).expect("start");
    let (code, stdout, stderr) = node_script(
        tmp.path(),
        "threads.js",
        JS_THREADS,
        js_env(&server, &client),
    )
    .await;
    assert_eq!(code, 0, "stderr: {stderr}");
    assert_eq!(stdout, "plain value\n");
    let reports = server.finish().await;
    let expected: BTreeSet<PathBuf> = ["main", "0", "1", "2"]
        .iter()
        .map(|n| PathBuf::from(format!("/w/thread-{n}")))
        .collect();
    assert_eq!(reports.ignored_inputs, expected);
    assert!(reports.tracked_env.is_empty());
}

const JS_OUTSIDE: &str = r#"
const c = require(process.env.BATON_TOOL_CLIENT);
c.ignoreInput('x'); c.ignoreOutput('y'); c.disableCache();
const r = c.load();
console.log(JSON.stringify({
  inBaton: c.inBaton(),
  own: c.getEnv('OWN_VAR'),
  missing: r.getEnv('NOPE') === undefined,
  glob: r.getEnvs('OWN_*'),
  prefix: c.getEnvs({ prefix: 'OWN_V' }),
  cls: c.getEnvs('OWN_[!X]A?'),
}));
"#;

#[tokio::test]
async fn js_client_outside_baton_is_a_no_op() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let client = write_node_client(&tmp.path().join("rt")).expect("write client");
    let env = vec![
        ("BATON_TOOL_CLIENT".to_owned(), client.display().to_string()),
        ("OWN_VAR".to_owned(), "mine".to_owned()),
        ("OWN_XAB".to_owned(), "other".to_owned()),
    ];
    let (code, stdout, stderr) = node_script(tmp.path(), "outside.js", JS_OUTSIDE, env).await;
    assert_eq!(code, 0, "stderr: {stderr}");
    assert_eq!(stderr, "", "no warning outside Baton");
    let out: serde_json::Value = serde_json::from_str(stdout.trim()).expect("json");
    assert_eq!(
        out,
        serde_json::json!({
            "inBaton": false,
            "own": "mine",
            "missing": true,
            "glob": {"OWN_VAR": "mine", "OWN_XAB": "other"},
            "prefix": {"OWN_VAR": "mine"},
            "cls": {"OWN_VAR": "mine"},
        })
    );
}

#[tokio::test]
async fn js_client_with_an_unreachable_runner_warns_and_falls_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let client = write_node_client(&tmp.path().join("rt")).expect("write client");
    let env = vec![
        ("BATON_TOOL_CLIENT".to_owned(), client.display().to_string()),
        (
            "BATON_IPC".to_owned(),
            tmp.path().join("gone.sock").display().to_string(),
        ),
        ("OWN_VAR".to_owned(), "mine".to_owned()),
    ];
    let script = r#"
const c = require(process.env.BATON_TOOL_CLIENT);
c.ignoreInput('/x');
console.log(JSON.stringify({ own: c.getEnv('OWN_VAR') }));
"#;
    let (code, stdout, stderr) = node_script(tmp.path(), "gone.js", script, env).await;
    assert_eq!(code, 0, "stderr: {stderr}");
    assert_eq!(stdout.trim(), r#"{"own":"mine"}"#);
    assert_eq!(stderr.matches("@baton/tool-client:").count(), 1, "{stderr}");
}
