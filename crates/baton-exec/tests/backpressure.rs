//! Streaming mode is lossless: a slow consumer blocks the child instead of losing bytes.

mod common;

use baton_exec::{CommandSpec, ExitStatus, OutputMode, ProcessEvent, SpawnOptions, Stream, spawn};

/// What `seq 1 n` prints.
fn expected_seq_output(n: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(n as usize * 8);
    for i in 1..=n {
        v.extend_from_slice(i.to_string().as_bytes());
        v.push(b'\n');
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_megabytes_through_a_slow_consumer_lose_nothing() {
    // `seq 1 6500000` prints 52 MB of distinct lines, so a lost, duplicated or reordered chunk
    // shows up as a mismatch.
    const N: u32 = 6_500_000;
    let spec = CommandSpec::new("seq", "/")
        .args(["1", &N.to_string()])
        .env("PATH", common::path());
    let process = spawn(
        &spec,
        SpawnOptions {
            output: OutputMode::Streaming { capacity: 2 },
            ..SpawnOptions::streaming()
        },
    )
    .unwrap();
    let mut events = process.take_events().unwrap();
    let mut got = Vec::with_capacity(N as usize * 8);
    let mut next_seq = 1;
    let mut status = None;
    while let Some(ev) = events.recv().await {
        assert_eq!(ev.seq(), next_seq);
        next_seq += 1;
        match ev {
            ProcessEvent::Output { stream, chunk, .. } => {
                assert_eq!(stream, Stream::Stdout);
                got.extend_from_slice(&chunk);
                // be slower than the producer: give the runtime away on every chunk
                tokio::task::yield_now().await;
            }
            ProcessEvent::Exited { status: s, .. } => status = Some(s),
            ProcessEvent::Closed { .. } => {}
        }
    }
    assert_eq!(status, Some(ExitStatus::Exited(0)));
    let want = expected_seq_output(N);
    assert!(want.len() > 50_000_000);
    assert_eq!(got.len(), want.len());
    assert!(got == want, "content differs");
}
