//! The network rule of zero-config caching: a task whose process tree connects to a
//! non-loopback address (a deploy, a publish, an install) is not cached unless its config says
//! `"cache": true`; loopback connections do not count.
//!
//! No packet may leave this machine, so the connecting process runs in a fresh network
//! namespace (`unshare -n`, root only): it has no route, the kernel answers `ENETUNREACH`, and
//! the tracer still sees the attempted `connect` to `10.255.255.1:80`.

mod common;

use common::Fixture;

/// The node script: connect to `HOST:PORT` (the attempt fails at once), then write an output.
const CONNECT_JS: &str = r#"const net = require("net");
const fs = require("fs");
const [host, port] = process.argv.slice(2);
const s = net.connect(Number(port), host);
s.on("error", (e) => {
  fs.writeFileSync("out.txt", "tried " + host + "\n");
  console.log("connect", host, e.code);
});
s.on("connect", () => { s.destroy(); fs.writeFileSync("out.txt", "tried " + host + "\n"); });
"#;

/// Whether `unshare -n` works here (root or CAP_SYS_ADMIN, util-linux installed).
#[expect(
    clippy::disallowed_methods,
    reason = "a capability probe of the test machine, not part of Baton"
)]
fn netns_available() -> bool {
    std::process::Command::new("unshare")
        .args(["-n", "true"])
        .status()
        .is_ok_and(|s| s.success())
}

fn fixture(cache: Option<bool>) -> Fixture {
    let f = Fixture::new(&[(
        "package.json",
        r#"{ "name": "app", "scripts": {
            "deploy": "unshare -n node connect.js 10.255.255.1 80",
            "probe": "node connect.js 127.0.0.1 1" } }"#,
    )]);
    f.write("connect.js", CONNECT_JS);
    if let Some(c) = cache {
        f.write(
            "baton.json",
            &format!(r#"{{ "tasks": {{ "deploy": {{ "cache": {c} }} }} }}"#),
        );
    }
    f
}

#[test]
fn a_non_loopback_connection_makes_the_task_uncached() {
    if !netns_available() {
        eprintln!("skipped: `unshare -n` is not permitted here (needs root)");
        return;
    }
    let f = fixture(None);
    let first = f.baton(&["run", "deploy"]);
    assert_eq!(first.code, 0, "{}", first.snapshot());
    assert!(
        first.stdout.contains("connect 10.255.255.1 ENETUNREACH"),
        "the connect was attempted and failed inside the namespace: {}",
        first.snapshot()
    );
    assert!(
        first.stderr.contains(
            "app#deploy not cached: the task connected to 10.255.255.1:80 (a deploy, publish or install?)"
        ),
        "{}",
        first.snapshot()
    );
    let second = f.baton(&["run", "deploy"]);
    assert!(
        second.stdout.contains("connect 10.255.255.1"),
        "not cached, so it runs again: {}",
        second.snapshot()
    );
    assert!(
        second.stdout.contains("— cache miss: not found in cache"),
        "{}",
        second.snapshot()
    );
}

#[test]
fn cache_true_caches_a_task_that_connects_out() {
    if !netns_available() {
        eprintln!("skipped: `unshare -n` is not permitted here (needs root)");
        return;
    }
    let f = fixture(Some(true));
    assert_cached_after_connecting(&f, "deploy", "10.255.255.1");
}

#[test]
fn loopback_connections_do_not_count() {
    let f = fixture(None);
    assert_cached_after_connecting(&f, "probe", "127.0.0.1");
}

/// Runs `task` (which connects to `host`) once for real, checks nothing refused caching, and
/// once more expecting a hit.
fn assert_cached_after_connecting(f: &Fixture, task: &str, host: &str) {
    let first = f.baton(&["run", task]);
    assert_eq!(first.code, 0, "{}", first.snapshot());
    let ran = format!("connect {host}");
    assert!(first.stdout.contains(&ran), "{}", first.snapshot());
    assert!(
        !first.snapshot().contains("not cached"),
        "{}",
        first.snapshot()
    );
    std::fs::remove_file(f.root().join("out.txt")).expect("remove output");
    let second = f.baton(&["run", task]);
    assert!(
        second.stdout.contains("— cache hit"),
        "{}",
        second.snapshot()
    );
    assert_eq!(f.read("out.txt"), format!("tried {host}\n"), "restored");
}
