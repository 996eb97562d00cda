//! Backend benchmark (`cargo bench -p baton-backend`): events per second from one worker to 1,
//! 10 and 100 observers; worker-write → observer-frame latency (p50/p99); time to resume from a
//! cursor 100,000 events back. Prints a Markdown table for BENCHMARKS.md.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use baton_backend::Retention;
use common::*;
use serde_json::json;

const LINES: usize = 20_000;

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

async fn fan_out(addr: std::net::SocketAddr, observers: usize) -> (f64, f64, usize) {
    let script =
        format!("read go; i=0; while [ $i -lt {LINES} ]; do echo line $i; i=$((i+1)); done");
    let summary = spawn_worker(addr, json!({"argv": ["sh", "-c", script]})).await;
    let w = summary["worker_id"].as_str().expect("id").to_owned();
    let mut sockets = Vec::new();
    for _ in 0..observers {
        let mut ws = observe(addr, "local", &w, None).await;
        next_frame(&mut ws).await.expect("snapshot");
        sockets.push(ws);
    }
    let start = Instant::now();
    http(
        addr,
        "POST",
        &format!("/api/runtimes/local/workers/{w}/input"),
        Some(r#"{"kind":"user","content":"go"}"#),
        None,
    )
    .await;
    let tasks: Vec<_> = sockets
        .into_iter()
        .map(|mut ws| tokio::spawn(async move { events_until(&mut ws, is_exit).await.len() }))
        .collect();
    let mut per_observer = 0;
    for t in tasks {
        per_observer = t.await.expect("observer");
    }
    let secs = start.elapsed().as_secs_f64();
    (
        per_observer as f64 / secs,
        LINES as f64 / secs,
        per_observer,
    )
}

async fn latency(addr: std::net::SocketAddr, samples: usize) -> (f64, f64) {
    let script =
        format!("i=0; while [ $i -lt {samples} ]; do date +%s%N; sleep 0.005; i=$((i+1)); done");
    let summary = spawn_worker(addr, json!({"argv": ["sh", "-c", script]})).await;
    let w = summary["worker_id"].as_str().expect("id").to_owned();
    let mut ws = observe(addr, "local", &w, Some("bo_0000000000000000")).await;
    let mut lat = Vec::new();
    loop {
        let frame = next_frame(&mut ws).await.expect("frame");
        let received = now_ns();
        let p = &frame["envelope"]["payload"];
        if p["type"] == "exit" {
            break;
        }
        if p["type"] == "output" {
            for line in p["text"].as_str().unwrap_or_default().lines() {
                if let Ok(written) = line.trim().parse::<u128>() {
                    lat.push(received.saturating_sub(written) as f64 / 1e6);
                }
            }
        }
    }
    lat.sort_by(f64::total_cmp);
    let pct = |q: f64| lat[((lat.len() as f64 - 1.0) * q) as usize];
    (pct(0.5), pct(0.99))
}

async fn resume(events: usize) -> f64 {
    // A log with `events` output events of one (ended) worker, written before the server starts;
    // the server then replays them from SQLite to an observer resuming from before the first.
    let data = tempfile::tempdir().expect("tempdir");
    {
        let log = baton_backend::EventLog::open(data.path(), Retention::default()).expect("log");
        let summary = json!({
            "runtime_id": "local", "worker_id": "w1", "label": "bench", "state": "exited",
            "status": "exit code 0", "exit_code": 0, "argv": ["bench"], "cwd": "/",
            "tty": false, "created_at_ms": 0
        });
        log.save_worker(&baton_backend::WorkerRow {
            runtime_id: "local".into(),
            worker_id: "w1".into(),
            summary,
            handle: None,
        })
        .expect("worker");
        for i in 0..events {
            log.append(
                "local",
                "w1",
                json!({"type": "output", "stream": "stdout", "text": format!("line {i}\n")}),
            )
            .expect("append");
        }
    }
    let server = TestServer::start(data.path(), Retention::default(), None);
    let start = Instant::now();
    let mut ws = observe(server.addr, "local", "w1", Some("bo_0000000000000000")).await;
    let mut n = 0;
    while n < events {
        next_frame(&mut ws).await.expect("frame");
        n += 1;
    }
    start.elapsed().as_secs_f64()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let data = tempfile::tempdir().expect("tempdir");
        let server = TestServer::start(data.path(), Retention::default(), None);
        let addr = server.addr;
        println!("| measurement | result |");
        println!("|---|---|");
        for n in [1, 10, 100] {
            let (per, lines, events) = fan_out(addr, n).await;
            println!("| one worker printing {LINES} lines → {n} observer(s) | {events} events each; {per:.0} events/s and {lines:.0} lines/s per observer, {:.0} frames/s total |", per * n as f64);
        }
        let (p50, p99) = latency(addr, 300).await;
        println!("| worker write → observer frame (300 samples) | p50 {p50:.2} ms, p99 {p99:.2} ms |");
        let secs = resume(100_000).await;
        println!("| resume from a cursor 100,000 events back | {:.2} s ({:.0} events/s) |", secs, 100_000.0 / secs);
        drop(server);
    });
}
