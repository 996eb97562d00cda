//! The Rust client against the real IPC server (`baton_task::ipc`), from real processes: the
//! `baton-tool-demo` binary is spawned with `BATON_IPC` set, as `baton run` would, and without it.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use baton_cache::EnvPattern;
use baton_task::ipc::IpcServer;
use baton_tool::{Client, Pattern, ToolError};

fn os(bytes: &[u8]) -> OsString {
    OsString::from_vec(bytes.to_vec())
}

/// The runner's environment; the spawned tool gets none of it directly.
fn parent_env() -> Vec<(OsString, OsString)> {
    vec![
        (os(b"VITE_API_URL"), os(b"https://example.invalid")),
        (os(b"VITE_RAW"), os(b"\xff\x80 bytes\xfe")),
        (os(b"VITE_PRIVATE"), os(b"nope")),
        (os(b"NPM_TOKEN"), os(b"secret")),
        (os(b"MODE"), os(b"prod")),
    ]
}

/// Runs the demo tool with exactly `env` (plus PATH) in `cwd`.
#[expect(
    clippy::disallowed_methods,
    reason = "integration test spawns the demo tool the way baton run would"
)]
fn demo(args: &[&str], env: &[(OsString, OsString)], cwd: &Path) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_baton-tool-demo"))
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(cwd)
        .output()
        .expect("spawn baton-tool-demo")
}

async fn demo_async(args: Vec<String>, env: Vec<(OsString, OsString)>, cwd: PathBuf) -> Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        demo(&args, &env, &cwd)
    })
    .await
    .expect("join")
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_tool_reports_to_the_server() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cwd = tmp.path().canonicalize().expect("canonical");
    let server = IpcServer::start(
        parent_env(),
        vec!["NPM_TOKEN".into(), "VITE_PRIVATE".into()],
    )
    .expect("start");
    let args = strings(&[
        "in-baton",
        "+",
        "get-env",
        "VITE_RAW",
        "+",
        "get-env",
        "UNSET_VAR",
        "+",
        "get-env",
        "NPM_TOKEN",
        "+",
        "get-env",
        "MODE",
        "--untracked",
        "+",
        "get-envs",
        "prefix",
        "VITE_",
        "+",
        "get-envs",
        "glob",
        "*_TOKEN",
        "+",
        "ignore-input",
        ".cache/tool",
        "+",
        "ignore-output",
        "/w/out/../scratch",
        "+",
        "disable-cache",
        "nondeterministic",
    ]);
    let out = demo_async(args, server.child_env(), cwd.clone()).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr: {stderr}");
    assert_eq!(stderr, "");
    let expected = [
        "true".to_owned(),
        format!("VITE_RAW={}", hex(b"\xff\x80 bytes\xfe")),
        "UNSET_VAR unset".to_owned(),
        format!("NPM_TOKEN={}", hex(b"secret")),
        format!("MODE={}", hex(b"prod")),
        format!("VITE_API_URL={}", hex(b"https://example.invalid")),
        format!("VITE_PRIVATE={}", hex(b"nope")),
        format!("VITE_RAW={}", hex(b"\xff\x80 bytes\xfe")),
        "end".to_owned(),
        format!("NPM_TOKEN={}", hex(b"secret")),
        "end".to_owned(),
        "ok".to_owned(),
        "ok".to_owned(),
        "ok".to_owned(),
    ];
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .collect::<Vec<_>>(),
        expected
    );

    let reports = server.finish().await;
    assert_eq!(
        reports.tracked_env,
        BTreeMap::from([
            ("UNSET_VAR".to_owned(), None),
            ("VITE_RAW".to_owned(), Some(b"\xff\x80 bytes\xfe".to_vec())),
        ]),
        "NPM_TOKEN is untracked by config, MODE was read untracked"
    );
    let patterns: Vec<(EnvPattern, Vec<&String>)> = reports
        .tracked_env_patterns
        .iter()
        .map(|p| (p.pattern.clone(), p.matches.keys().collect()))
        .collect();
    let (api, raw) = ("VITE_API_URL".to_owned(), "VITE_RAW".to_owned());
    assert_eq!(
        patterns,
        [
            (EnvPattern::Prefix("VITE_".into()), vec![&api, &raw]),
            (EnvPattern::Glob("*_TOKEN".into()), vec![]),
        ]
    );
    assert_eq!(
        reports.ignored_inputs,
        BTreeSet::from([cwd.join(".cache/tool")])
    );
    assert_eq!(
        reports.ignored_outputs,
        BTreeSet::from([PathBuf::from("/w/scratch")])
    );
    assert!(
        reports
            .disable_cache
            .as_deref()
            .expect("disabled")
            .ends_with(": nondeterministic")
    );
    assert_eq!(reports.protocol_error, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tool_processes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = IpcServer::start(parent_env(), vec![]).expect("start");
    let mut runs = Vec::new();
    for i in 0..8 {
        let args = strings(&[
            "ignore-input",
            &format!("/w/in/{i}"),
            "+",
            "ignore-output",
            &format!("/w/out/{i}"),
            "+",
            "get-env",
            "MODE",
        ]);
        runs.push(tokio::spawn(demo_async(
            args,
            server.child_env(),
            tmp.path().to_owned(),
        )));
    }
    for run in runs {
        let out = run.await.expect("join");
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("ok\nok\nMODE={}\n", hex(b"prod"))
        );
    }
    let reports = server.finish().await;
    assert_eq!(reports.ignored_inputs.len(), 8);
    assert_eq!(reports.ignored_outputs.len(), 8);
    assert!(reports.ignores_output(Path::new("/w/out/7/bundle.js")));
    assert_eq!(reports.tracked_env.keys().collect::<Vec<_>>(), ["MODE"]);
}

#[test]
fn outside_baton_the_calls_are_no_ops() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let env = vec![(os(b"OWN"), os(b"\xfelocal")), (os(b"OWN_TWO"), os(b"2"))];
    let out = demo(
        &[
            "in-baton",
            "+",
            "get-env",
            "OWN",
            "+",
            "get-env",
            "MISSING",
            "+",
            "get-envs",
            "glob",
            "OWN*",
            "+",
            "get-envs",
            "prefix",
            "OWN_",
            "+",
            "ignore-input",
            "x",
            "+",
            "disable-cache",
        ],
        &env,
        tmp.path(),
    );
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "no warning");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "false\nOWN={}\nMISSING unset\nOWN={}\nOWN_TWO=32\nend\nOWN_TWO=32\nend\nok\nok\n",
            hex(b"\xfelocal"),
            hex(b"\xfelocal")
        )
    );
}

#[test]
fn an_unreachable_runner_warns_once_and_falls_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let env = vec![
        (
            os(b"BATON_IPC"),
            tmp.path().join("gone.sock").into_os_string(),
        ),
        (os(b"OWN"), os(b"mine")),
    ];
    let out = demo(
        &[
            "get-env",
            "OWN",
            "+",
            "ignore-input",
            "/x",
            "+",
            "disable-cache",
        ],
        &env,
        tmp.path(),
    );
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("OWN={}\nok\nok\n", hex(b"mine"))
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("baton-tool:").count(), 1, "{stderr}");
    assert!(stderr.contains("cannot connect"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_are_typed_and_disable_caching() {
    let server = IpcServer::start(parent_env(), vec![]).expect("start");
    let path = server.socket_path().to_owned();
    let outcome = tokio::task::spawn_blocking(move || {
        let mut c = Client::connect(&path).expect("connect");
        let bad = c.get_envs("[", true);
        let prefix = c
            .get_envs(Pattern::prefix("VITE_A"), false)
            .expect("prefix");
        let value = c.get_env("VITE_RAW", false).expect("get");
        (bad, prefix, value)
    })
    .await
    .expect("join");
    match outcome.0 {
        Err(ToolError::Rejected { code, .. }) => {
            assert_eq!(code, baton_protocol::tool::ErrorCode::InvalidPattern)
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(
        outcome.1,
        vec![(os(b"VITE_API_URL"), os(b"https://example.invalid"))]
    );
    assert_eq!(outcome.2, Some(os(b"\xff\x80 bytes\xfe")));
    let reports = server.finish().await;
    assert!(
        reports
            .cache_disabled_reason()
            .expect("protocol error")
            .contains("invalid glob")
    );
    assert!(reports.tracked_env.is_empty());
}

#[test]
fn connecting_to_a_missing_socket_is_a_connect_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let err = Client::connect(&tmp.path().join("none.sock")).expect_err("no server");
    assert!(matches!(err, ToolError::Connect { .. }), "{err:?}");
}
