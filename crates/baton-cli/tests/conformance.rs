//! Conformance: one JSON-RPC script driven against `baton exec-server --listen stdio` and, when
//! `BATON_CODEX_BIN` names a `codex` binary (npm `@openai/codex`), against `codex exec-server
//! --listen stdio`; the normalised answers must equal the expected ones for both.
//!
//! Normalisation keeps what a client relies on (result fields, error codes, output bytes per
//! stream, exit codes) and drops what legitimately differs (messages, session ids, seq
//! numbering, extra fields).

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);

#[expect(
    clippy::disallowed_methods,
    reason = "the test drives real exec-server binaries"
)]
fn command(program: &str) -> Command {
    Command::new(program)
}

struct Server {
    child: Child,
    stdin: ChildStdin,
    rx: Receiver<Value>,
    stash: Vec<Value>,
    next_id: i64,
}

impl Server {
    fn start(mut cmd: Command, cwd: &Path) -> Server {
        let mut child = cmd
            .current_dir(cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn server");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line).expect("every stdout line is JSON");
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Server {
            child,
            stdin,
            rx,
            stash: Vec::new(),
            next_id: 1,
        }
    }

    fn send(&mut self, v: &Value) {
        writeln!(self.stdin, "{v}").expect("send");
    }

    fn recv(&mut self, deadline: Instant) -> Value {
        match self
            .rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok(v) => v,
            Err(RecvTimeoutError::Timeout) => panic!("server did not answer in time"),
            Err(RecvTimeoutError::Disconnected) => panic!("server closed stdout"),
        }
    }

    /// Sends a request and returns `Ok(result)` or `Err(code)`.
    fn call(&mut self, method: &str, params: Value) -> Result<Value, i64> {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"id": id, "method": method, "params": params}));
        let deadline = Instant::now() + T;
        loop {
            let v = self.recv(deadline);
            if v.get("id") == Some(&json!(id)) {
                return match v.get("error") {
                    Some(e) => Err(e["code"].as_i64().expect("code")),
                    None => Ok(v["result"].clone()),
                };
            }
            self.stash.push(v);
        }
    }

    fn notify(&mut self, method: &str) {
        self.send(&json!({"method": method, "params": {}}));
    }

    /// Notifications of `pid` until its `process/closed`: (stdout, stderr, exit code).
    fn until_closed(&mut self, pid: &str) -> (String, String, i64) {
        let deadline = Instant::now() + T;
        loop {
            let closed = self
                .stash
                .iter()
                .any(|n| n["method"] == "process/closed" && n["params"]["processId"] == pid);
            if closed {
                return self.summary(pid);
            }
            let v = self.recv(deadline);
            self.stash.push(v);
        }
    }

    /// Waits until `pid` printed `text` on stdout.
    fn until_output(&mut self, pid: &str, text: &str) {
        let deadline = Instant::now() + T;
        while !self.summary(pid).0.contains(text) {
            let v = self.recv(deadline);
            self.stash.push(v);
        }
    }

    fn summary(&self, pid: &str) -> (String, String, i64) {
        let mut events: Vec<&Value> = self
            .stash
            .iter()
            .filter(|n| n["params"]["processId"] == pid)
            .collect();
        events.sort_by_key(|n| n["params"]["seq"].as_u64());
        let (mut out, mut err, mut code) = (Vec::new(), Vec::new(), -1);
        for n in events {
            match n["method"].as_str() {
                Some("process/output") => {
                    let bytes = b64(n["params"]["chunk"].as_str().expect("chunk"));
                    if n["params"]["stream"] == "stderr" {
                        err.extend(bytes);
                    } else {
                        out.extend(bytes);
                    }
                }
                Some("process/exited") => code = n["params"]["exitCode"].as_i64().expect("code"),
                _ => {}
            }
        }
        (
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
            code,
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn b64(s: &str) -> Vec<u8> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = A.iter().position(|&a| a == c).expect("base64") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

fn uri(p: &Path) -> String {
    format!("file://{}", p.display())
}

/// Runs the script and returns one normalised line per step.
fn script(server: &mut Server, dir: &Path) -> Vec<String> {
    let mut log = Vec::new();
    let cwd = uri(dir);
    let env = json!({"PATH": "/usr/bin:/bin"});
    let start = |id: &str, argv: Value, extra: Value| {
        let mut p = json!({"processId": id, "argv": argv, "cwd": cwd, "env": env, "tty": false});
        if let (Some(p), Some(extra)) = (p.as_object_mut(), extra.as_object()) {
            p.extend(extra.clone());
        }
        p
    };
    let shape = |r: Result<Value, i64>, keys: &[&str]| match r {
        Ok(v) => {
            let picked: Vec<String> = keys.iter().map(|k| format!("{k}={}", v[*k])).collect();
            format!("ok {}", picked.join(" "))
        }
        Err(code) => format!("error {code}"),
    };

    let r = server.call("process/start", start("early", json!(["true"]), json!({})));
    log.push(format!("start before initialize: {}", shape(r, &[])));
    let r = server.call("initialize", json!({"clientName": "conformance"}));
    log.push(format!(
        "initialize: {}",
        match r {
            Ok(v) => format!("ok sessionId is string: {}", v["sessionId"].is_string()),
            Err(c) => format!("error {c}"),
        }
    ));
    let r = server.call("process/start", start("early", json!(["true"]), json!({})));
    log.push(format!("start before initialized: {}", shape(r, &[])));
    server.notify("initialized");
    let r = server.call("initialize", json!({"clientName": "again"}));
    log.push(format!("second initialize: {}", shape(r, &[])));

    let r = server.call(
        "process/start",
        start(
            "p1",
            json!(["sh", "-c", "echo out; echo err >&2; exit 3"]),
            json!({}),
        ),
    );
    log.push(format!("start p1: {}", shape(r, &["processId"])));
    log.push(format!("p1 events: {:?}", server.until_closed("p1")));
    let r = server.call("process/read", json!({"processId": "p1", "afterSeq": 0}));
    log.push(match r {
        Ok(v) => {
            let mut out = Vec::new();
            let mut err = Vec::new();
            for c in v["chunks"].as_array().expect("chunks") {
                let bytes = b64(c["chunk"].as_str().expect("chunk"));
                if c["stream"] == "stderr" {
                    err.extend(bytes);
                } else {
                    out.extend(bytes);
                }
            }
            format!(
                "read p1: out={:?} err={:?} exited={} exitCode={} closed={} failure={}",
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&err),
                v["exited"],
                v["exitCode"],
                v["closed"],
                v["failure"]
            )
        }
        Err(c) => format!("read p1: error {c}"),
    });
    let r = server.call("process/start", start("p1", json!(["true"]), json!({})));
    log.push(format!("duplicate start: {}", shape(r, &[])));
    let r = server.call(
        "process/start",
        start(
            "u",
            json!(["pwd"]),
            json!({"cwd": dir.display().to_string()}),
        ),
    );
    log.push(format!(
        "bare-path cwd: {}",
        if r.is_ok() {
            "accepted".to_string()
        } else {
            "refused".to_string()
        }
    ));

    let r = server.call(
        "process/start",
        start("c", json!(["cat"]), json!({"pipeStdin": true})),
    );
    log.push(format!("start cat: {}", shape(r, &["processId"])));
    for _ in 0..2 {
        let r = server.call(
            "process/write",
            json!({"processId": "c", "chunk": "aGkK", "writeId": "w1"}),
        );
        log.push(format!("write w1: {}", shape(r, &["status"])));
    }
    let r = server.call(
        "process/write",
        json!({"processId": "c", "chunk": "Ynll", "writeId": "w2"}),
    );
    log.push(format!("write w2: {}", shape(r, &["status"])));
    server.until_output("c", "hi\nbye");
    let r = server.call("process/terminate", json!({"processId": "c"}));
    log.push(format!("terminate cat: {}", shape(r, &["running"])));
    log.push(format!("cat events: {:?}", server.until_closed("c")));
    let r = server.call("process/terminate", json!({"processId": "ghost"}));
    log.push(format!("terminate unknown: {}", shape(r, &["running"])));
    let r = server.call("process/read", json!({"processId": "ghost"}));
    log.push(format!("read unknown: {}", shape(r, &[])));
    let r = server.call(
        "process/write",
        json!({"processId": "ghost", "chunk": "", "writeId": "w3"}),
    );
    log.push(format!("write unknown: {}", shape(r, &["status"])));
    let r = server.call("process/start", start("e", json!([]), json!({})));
    log.push(format!("empty argv: {}", shape(r, &[])));
    let r = server.call(
        "process/start",
        start("nf", json!(["/nonexistent/prog"]), json!({})),
    );
    log.push(format!("missing program: {}", shape(r, &[])));
    let r = server.call(
        "process/signal",
        json!({"processId": "p1", "signal": "interrupt"}),
    );
    log.push(format!("signal closed process: {}", shape(r, &[])));

    let f = uri(&dir.join("w/f.txt"));
    let r = server.call(
        "fs/createDirectory",
        json!({"path": uri(&dir.join("w/a/b"))}),
    );
    log.push(format!("mkdir -p: {}", shape(r, &[])));
    let r = server.call("fs/writeFile", json!({"path": f, "dataBase64": "ZGF0YQ=="}));
    log.push(format!("write file: {}", shape(r, &[])));
    let r = server.call("fs/readFile", json!({"path": f}));
    log.push(format!("read file: {}", shape(r, &["dataBase64"])));
    let r = server.call("fs/getMetadata", json!({"path": f}));
    log.push(format!(
        "metadata: {}",
        shape(r, &["isDirectory", "isFile", "isSymlink", "size"])
    ));
    // Entry order is unspecified (Codex lists in directory order): compare sorted.
    let r = server
        .call("fs/readDirectory", json!({"path": uri(&dir.join("w"))}))
        .map(|mut v| {
            if let Some(entries) = v["entries"].as_array_mut() {
                entries.sort_by_key(|e| e["fileName"].as_str().unwrap_or_default().to_owned());
            }
            v
        });
    log.push(format!("list: {}", shape(r, &["entries"])));
    let r = server.call("fs/readFile", json!({"path": uri(&dir.join("w/nope"))}));
    log.push(format!("read missing: {}", shape(r, &[])));
    let r = server.call(
        "fs/copy",
        json!({"sourcePath": uri(&dir.join("w/a")), "destinationPath": uri(&dir.join("w/c")),
               "recursive": true}),
    );
    log.push(format!("copy -r: {}", shape(r, &[])));
    let r = server.call("fs/getMetadata", json!({"path": uri(&dir.join("w/c/b"))}));
    log.push(format!("copied dir: {}", shape(r, &["isDirectory"])));
    let r = server.call("fs/remove", json!({"path": uri(&dir.join("w/zzz"))}));
    log.push(format!("remove missing: {}", shape(r, &[])));
    let r = server.call(
        "fs/remove",
        json!({"path": uri(&dir.join("w/zzz")), "force": false}),
    );
    log.push(format!("remove missing, no force: {}", shape(r, &[])));
    let r = server.call("fs/remove", json!({"path": uri(&dir.join("w/c"))}));
    log.push(format!("remove dir: {}", shape(r, &[])));
    let r = server.call("fs/readFile", json!({"path": "relative/x"}));
    log.push(format!("relative path: {}", shape(r, &[])));
    let r = server.call("no/such", json!({}));
    log.push(format!("unknown method: {}", shape(r, &[])));
    log
}

const EXPECTED: &[&str] = &[
    "start before initialize: error -32600",
    "initialize: ok sessionId is string: true",
    "start before initialized: error -32600",
    "second initialize: error -32600",
    "start p1: ok processId=\"p1\"",
    "p1 events: (\"out\\n\", \"err\\n\", 3)",
    "read p1: out=\"out\\n\" err=\"err\\n\" exited=true exitCode=3 closed=true failure=null",
    "duplicate start: error -32600",
    "start cat: ok processId=\"c\"",
    "write w1: ok status=\"accepted\"",
    "write w1: ok status=\"accepted\"",
    "write w2: ok status=\"accepted\"",
    "terminate cat: ok running=true",
    "cat events: (\"hi\\nbye\", \"\", 137)",
    "terminate unknown: ok running=false",
    "read unknown: error -32600",
    "write unknown: ok status=\"unknownProcess\"",
    "empty argv: error -32602",
    "missing program: error -32603",
    "signal closed process: ok ",
    "mkdir -p: ok ",
    "write file: ok ",
    "read file: ok dataBase64=\"ZGF0YQ==\"",
    "metadata: ok isDirectory=false isFile=true isSymlink=false size=4",
    "list: ok entries=[{\"fileName\":\"a\",\"isDirectory\":true,\"isFile\":false},{\"fileName\":\"f.txt\",\"isDirectory\":false,\"isFile\":true}]",
    "read missing: error -32004",
    "copy -r: ok ",
    "copied dir: ok isDirectory=true",
    "remove missing: ok ",
    "remove missing, no force: error -32004",
    "remove dir: ok ",
    "relative path: error -32602",
    "unknown method: error -32601",
];

/// The bare-path line differs on purpose: Baton accepts both dialects, current Codex only URIs.
fn without_dialect(log: &[String]) -> (Vec<String>, String) {
    let mut rest = Vec::new();
    let mut dialect = String::new();
    for l in log {
        if l.starts_with("bare-path cwd") {
            dialect = l.clone();
        } else {
            rest.push(l.clone());
        }
    }
    (rest, dialect)
}

#[test]
fn baton_and_codex_answer_the_same_script_alike() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = std::fs::canonicalize(dir.path()).expect("canon");
    let mut cmd = command(env!("CARGO_BIN_EXE_baton"));
    cmd.args(["exec-server", "--listen", "stdio", "--root"])
        .arg(&root);
    let mut baton = Server::start(cmd, &root);
    let (baton_log, dialect) = without_dialect(&script(&mut baton, &root));
    assert_eq!(baton_log, EXPECTED, "baton");
    assert_eq!(dialect, "bare-path cwd: accepted");

    let Ok(codex) = std::env::var("BATON_CODEX_BIN") else {
        eprintln!("BATON_CODEX_BIN not set: compared Baton with the expected answers only");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let root = std::fs::canonicalize(dir.path()).expect("canon");
    let mut cmd = command(&codex);
    cmd.args(["exec-server", "--listen", "stdio"]);
    let mut codex = Server::start(cmd, &root);
    let (codex_log, _) = without_dialect(&script(&mut codex, &root));
    assert_eq!(codex_log, baton_log, "codex vs baton");
}

#[test]
fn baton_exec_runs_against_codex_exec_server() {
    let Ok(codex) = std::env::var("BATON_CODEX_BIN") else {
        eprintln!("BATON_CODEX_BIN not set: skipped");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let root = std::fs::canonicalize(dir.path()).expect("canon");
    let out = command(env!("CARGO_BIN_EXE_baton"))
        .args([
            "exec",
            "--stdio-command",
            &format!("{codex} exec-server --listen stdio"),
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; pwd; exit 4",
        ])
        .current_dir(&root)
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("out\n{}\n", root.display())
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
}
