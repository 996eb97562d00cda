//! Exec-server benchmark: Baton's server against Codex's (`codex exec-server`, npm
//! `@openai/codex`) in the same run, both over stdio and driven by the same client
//! (`baton-client`), so only the servers differ.
//!
//! ```sh
//! cargo build --release -p baton-cli
//! BATON_CODEX_BIN=/path/to/codex cargo bench -p baton-client --bench exec_server -- \
//!     [--baton target/release/baton] [--runs 200] [--mib 1024] [--concurrent 100]
//! ```
//!
//! Prints a Markdown table: idle-session memory (server RSS after the handshake), latency of
//! `process/start` → `process/closed` for `/bin/true` (p50, p99), wall time of 100 concurrent
//! processes, and output throughput of one process writing `--mib` MiB to stdout as received
//! by the client.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use baton_client::{ClientOptions, ExecClient, ProcessEvent, RemoteProcess};
use baton_rpc::Transport;

struct Options {
    baton: PathBuf,
    codex: Option<PathBuf>,
    runs: usize,
    mib: u64,
    concurrent: usize,
}

fn options() -> Options {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
    let release = target.join("release/baton");
    let mut o = Options {
        baton: if release.exists() {
            release
        } else {
            target.join("debug/baton")
        },
        codex: std::env::var_os("BATON_CODEX_BIN").map(PathBuf::from),
        runs: 200,
        mib: 1024,
        concurrent: 100,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--baton" => o.baton = PathBuf::from(value),
            "--codex" => o.codex = Some(PathBuf::from(value)),
            "--runs" => o.runs = value.parse().unwrap_or(o.runs),
            "--mib" => o.mib = value.parse().unwrap_or(o.mib),
            "--concurrent" => o.concurrent = value.parse().unwrap_or(o.concurrent),
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    o
}

#[expect(
    clippy::disallowed_methods,
    reason = "the benchmark starts the servers it measures"
)]
fn server_command(program: &Path) -> tokio::process::Command {
    tokio::process::Command::new(program)
}

struct Row {
    name: String,
    rss_kib: u64,
    p50_ms: f64,
    p99_ms: f64,
    concurrent_ms: f64,
    mb_per_s: f64,
}

async fn drain(p: &mut RemoteProcess) -> u64 {
    let mut bytes = 0;
    while let Some(ev) = p.next_event().await {
        match ev {
            ProcessEvent::Output { chunk, .. } => bytes += chunk.len() as u64,
            ProcessEvent::Closed { .. } => break,
            ProcessEvent::Failed(m) => panic!("process failed: {m}"),
            ProcessEvent::Exited { .. } => {}
        }
    }
    bytes
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn bench(name: &str, mut cmd: tokio::process::Command, dir: &Path, o: &Options) -> Row {
    let mut child = cmd
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start server");
    let pid = child.id().expect("pid");
    let transport = Transport::stdio(
        child.stdout.take().expect("stdout"),
        child.stdin.take().expect("stdin"),
    );
    let client = ExecClient::connect_transport(transport, ClientOptions::default())
        .await
        .expect("connect");
    let rss = rss_kib(pid);
    let env: HashMap<String, String> = [("PATH".to_string(), "/usr/bin:/bin".to_string())].into();
    let argv = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    // Warm-up, then latency of start → closed.
    let mut samples = Vec::new();
    for i in 0..o.runs + 10 {
        let t = Instant::now();
        let mut p = client
            .spawn(
                &format!("t{i}"),
                &argv(&["/bin/true"]),
                dir,
                env.clone(),
                false,
                false,
            )
            .await
            .expect("start");
        drain(&mut p).await;
        if i >= 10 {
            samples.push(t.elapsed());
        }
    }
    samples.sort();
    let pct = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i].as_secs_f64() * 1000.0
    };

    // Many processes at once.
    let t = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..o.concurrent {
        let client = client.clone();
        let env = env.clone();
        let dir = dir.to_path_buf();
        let argv = argv(&["sh", "-c", "echo hi"]);
        tasks.push(tokio::spawn(async move {
            let mut p = client
                .spawn(&format!("c{i}"), &argv, &dir, env, false, false)
                .await
                .expect("start");
            drain(&mut p).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("join"), 3);
    }
    let concurrent = t.elapsed();

    // Throughput.
    let size = o.mib * 1024 * 1024;
    let t = Instant::now();
    let mut p = client
        .spawn(
            "big",
            &argv(&["head", "-c", &size.to_string(), "/dev/zero"]),
            dir,
            env.clone(),
            false,
            false,
        )
        .await
        .expect("start");
    let got = drain(&mut p).await;
    let elapsed = t.elapsed();
    assert_eq!(got, size, "{name}: every byte arrives");
    client.close();
    let _ = child.kill().await;
    Row {
        name: name.to_owned(),
        rss_kib: rss,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        concurrent_ms: concurrent.as_secs_f64() * 1000.0,
        mb_per_s: size as f64
            / 1e6
            / elapsed
                .as_secs_f64()
                .max(Duration::from_micros(1).as_secs_f64()),
    }
}

#[tokio::main]
async fn main() {
    let o = options();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = std::fs::canonicalize(dir.path()).expect("canon");
    let mut rows = Vec::new();
    let mut baton = server_command(&o.baton);
    baton
        .args(["exec-server", "--listen", "stdio", "--root"])
        .arg(&root);
    rows.push(bench("baton exec-server", baton, &root, &o).await);
    if let Some(codex) = &o.codex {
        let mut cmd = server_command(codex);
        cmd.args(["exec-server", "--listen", "stdio"]);
        rows.push(bench("codex exec-server", cmd, &root, &o).await);
    } else {
        eprintln!("BATON_CODEX_BIN not set: Codex column skipped");
    }
    println!(
        "| server | idle session RSS | start→closed p50 | p99 | {} concurrent processes | {} MiB stdout throughput |",
        o.concurrent, o.mib
    );
    println!("|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {:.1} MiB | {:.2} ms | {:.2} ms | {:.0} ms | {:.0} MB/s |",
            r.name,
            r.rss_kib as f64 / 1024.0,
            r.p50_ms,
            r.p99_ms,
            r.concurrent_ms,
            r.mb_per_s
        );
    }
    println!(
        "\n({} latency runs after 10 warm-ups; same client for both servers, stdio transport)",
        o.runs
    );
}
