//! Retained mode (the exec server's `process/read`) and live subscriptions, with real processes.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use baton_exec::{
    CommandSpec, ExitStatus, Process, ProcessEvent, ReadError, SpawnOptions, StdinMode, Stream,
    SubscriptionError, spawn, spawn_streaming,
};
use common::sh;

const LONG: Option<Duration> = Some(Duration::from_secs(60));

fn cat(options: SpawnOptions) -> Process {
    let spec = CommandSpec::new("cat", "/")
        .env("PATH", common::path())
        .stdin(StdinMode::Piped);
    spawn(&spec, options).unwrap()
}

/// Polls `fut` exactly once; true if it is still pending.
async fn is_pending<F: Future>(fut: &mut Pin<Box<F>>) -> bool {
    std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx).is_pending())).await
}

/// Writes `data` to cat and long-polls until it came back as new chunk(s); returns the last seq.
async fn echo_through(p: &Process, after: u64, data: &[u8]) -> u64 {
    p.write_stdin(data).await.unwrap();
    let mut got = Vec::new();
    let mut after = after;
    while got.len() < data.len() {
        let r = p.read(Some(after), None, LONG).await.unwrap();
        assert!(!r.chunks.is_empty(), "long-poll timed out");
        assert_eq!(r.evicted_before, None);
        for c in &r.chunks {
            got.extend_from_slice(&c.bytes);
        }
        after = r.next_seq - 1;
    }
    assert_eq!(got, data);
    after
}

#[tokio::test]
async fn read_returns_everything_with_status() {
    let p = spawn(
        &sh("echo out; echo err >&2; exit 4"),
        SpawnOptions::retained(),
    )
    .unwrap();
    assert_eq!(p.wait_closed().await, ExitStatus::Exited(4));
    let r = p.read(None, None, None).await.unwrap();
    assert!(r.exited && r.closed);
    assert_eq!(r.exit_code, Some(4));
    assert_eq!(r.exit_status, Some(ExitStatus::Exited(4)));
    assert_eq!(r.evicted_before, None);
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    for (i, c) in r.chunks.iter().enumerate() {
        assert_eq!(c.seq, i as u64 + 1);
        match c.stream {
            Stream::Stdout => stdout.extend_from_slice(&c.bytes),
            Stream::Stderr => stderr.extend_from_slice(&c.bytes),
            Stream::Pty => panic!("no pty"),
        }
    }
    assert_eq!(stdout, b"out\n");
    assert_eq!(stderr, b"err\n");
    // chunks, Exited, Closed
    assert_eq!(r.next_seq, r.chunks.len() as u64 + 3);
    assert_eq!(p.last_seq(), r.chunks.len() as u64 + 2);
    // reading from the end of a closed process returns at once, empty
    let r2 = p.read(Some(r.next_seq - 1), None, LONG).await.unwrap();
    assert!(r2.chunks.is_empty() && r2.closed);
    assert_eq!(r2.next_seq, r.next_seq);
}

#[tokio::test]
async fn long_poll_wakes_on_output() {
    let p = cat(SpawnOptions::retained());
    let mut read = Box::pin(p.read(Some(0), None, LONG));
    assert!(is_pending(&mut read).await, "nothing to read yet");
    p.write_stdin(b"ping\n").await.unwrap();
    let r = read.await.unwrap();
    assert_eq!(r.chunks.len(), 1);
    assert_eq!(r.chunks[0].bytes.as_ref(), b"ping\n");
    assert_eq!(r.chunks[0].seq, 1);
    assert_eq!(r.next_seq, 2);
    assert!(!r.exited);
}

#[tokio::test]
async fn long_poll_wakes_on_exit() {
    let p = cat(SpawnOptions::retained());
    let mut read = Box::pin(p.read(None, None, LONG));
    assert!(is_pending(&mut read).await);
    p.close_stdin().await.unwrap();
    let r = read.await.unwrap();
    assert!(r.chunks.is_empty());
    assert!(r.exited, "woken by the exit event");
    assert_eq!(r.exit_code, Some(0));
}

#[tokio::test]
async fn a_read_without_news_times_out_empty() {
    let p = cat(SpawnOptions::retained());
    let r = p
        .read(None, None, Some(Duration::from_millis(20)))
        .await
        .unwrap();
    assert!(r.chunks.is_empty());
    assert_eq!(r.next_seq, 1);
    assert!(!r.exited && !r.closed);
    let r = p.read(None, None, None).await.unwrap();
    assert!(r.chunks.is_empty());
}

#[tokio::test]
async fn max_bytes_pages_but_returns_at_least_one_chunk() {
    let p = cat(SpawnOptions::retained());
    let mut after = 0;
    for text in ["aaaa", "bbbb", "cccc"] {
        after = echo_through(&p, after, text.as_bytes()).await;
    }
    let r = p.read(None, Some(1), None).await.unwrap();
    assert_eq!(
        r.chunks.len(),
        1,
        "one whole chunk though larger than max_bytes"
    );
    assert_eq!(r.chunks[0].bytes.as_ref(), b"aaaa");
    assert_eq!(r.next_seq, 2);
    let r = p.read(Some(1), Some(8), None).await.unwrap();
    assert_eq!(
        r.chunks
            .iter()
            .map(|c| c.bytes.as_ref())
            .collect::<Vec<_>>(),
        vec![b"bbbb".as_ref(), b"cccc".as_ref()]
    );
    assert_eq!(r.next_seq, after + 1);
}

#[tokio::test]
async fn eviction_is_reported_not_skipped() {
    let p = cat(SpawnOptions::retained_bytes(1000));
    let block = [b'x'; 300];
    let mut after = 0;
    for _ in 0..10 {
        after = echo_through(&p, after, &block).await;
    }
    let r = p.read(None, None, None).await.unwrap();
    let first = r.chunks.first().unwrap().seq;
    assert!(first > 1, "old chunks were evicted");
    assert_eq!(r.evicted_before, Some(first), "the loss is explicit");
    let retained: usize = r.chunks.iter().map(|c| c.bytes.len()).sum();
    assert!(retained <= 1000, "bounded: {retained}");
    assert_eq!(r.chunks.last().unwrap().seq, after);
    // a reader whose cursor is inside the retained window loses nothing
    let r = p.read(Some(first - 1), None, None).await.unwrap();
    assert_eq!(r.evicted_before, None);
    assert_eq!(r.chunks.first().unwrap().seq, first);
    // a cursor before the window is told where the retained data starts
    let r = p.read(Some(1), Some(1), None).await.unwrap();
    assert_eq!(r.evicted_before, Some(first));
    assert_eq!(r.chunks.len(), 1);
}

#[tokio::test]
async fn subscribers_see_live_events_and_learn_when_they_lag() {
    let p = cat(SpawnOptions {
        subscriber_capacity: 2,
        ..SpawnOptions::retained()
    });
    let mut live = p.subscribe();
    let mut slow = p.subscribe();
    let mut after = 0;
    for text in ["one", "two", "three", "four", "five"] {
        after = echo_through(&p, after, text.as_bytes()).await;
        let ev = live.recv().await.unwrap();
        let ProcessEvent::Output { seq, chunk, .. } = ev else {
            panic!("{ev:?}")
        };
        assert_eq!(seq, after);
        assert_eq!(chunk.as_ref(), text.as_bytes());
    }
    // 5 events were sent into a ring of 2: the slow one missed 3 and is told so.
    assert_eq!(
        slow.recv().await,
        Err(SubscriptionError::Lagged { missed: 3 })
    );
    // it can catch up from its last seen seq (0) with read, nothing lost (nothing evicted)
    let r = p.read(Some(0), None, None).await.unwrap();
    assert_eq!(r.chunks.len(), 5);
    assert_eq!(slow.recv().await.unwrap().seq(), 4);
    assert_eq!(slow.recv().await.unwrap().seq(), 5);

    p.close_stdin().await.unwrap();
    let ev = live.recv().await.unwrap();
    assert!(matches!(ev, ProcessEvent::Exited { seq: 6, .. }), "{ev:?}");
    let ev = live.recv().await.unwrap();
    assert!(matches!(ev, ProcessEvent::Closed { seq: 7 }), "{ev:?}");
    assert_eq!(live.recv().await, Err(SubscriptionError::Ended));
    // subscribing after the end ends at once
    assert_eq!(p.subscribe().recv().await, Err(SubscriptionError::Ended));
}

#[tokio::test]
async fn streaming_mode_has_no_retained_output() {
    let (p, mut ev) = spawn_streaming(&sh("true")).unwrap();
    assert!(matches!(
        p.read(None, None, None).await,
        Err(ReadError::NotRetained)
    ));
    common::collect(&mut ev).await;
    assert!(p.take_events().is_none());
}

#[tokio::test]
async fn retained_mode_never_blocks_the_child() {
    // 4 MiB through a 64 KiB retention buffer that nobody reads: the child finishes anyway.
    let spec = CommandSpec::new("head", "/")
        .args(["-c", "4194304", "/dev/zero"])
        .env("PATH", common::path());
    let p = spawn(&spec, SpawnOptions::retained_bytes(64 * 1024)).unwrap();
    assert_eq!(p.wait_closed().await, ExitStatus::Exited(0));
    let r = p.read(None, None, None).await.unwrap();
    assert!(r.evicted_before.is_some());
    assert!(r.chunks.iter().map(|c| c.bytes.len()).sum::<usize>() <= 64 * 1024);
}

#[tokio::test]
async fn events_since_replays_output_exit_and_close_in_order() {
    let p = spawn(&sh("echo one; exit 2"), SpawnOptions::retained()).unwrap();
    p.wait_closed().await;
    let all = p.events_since(0).unwrap();
    assert_eq!(all.evicted_before, None);
    let seqs: Vec<u64> = all.events.iter().map(ProcessEvent::seq).collect();
    assert_eq!(seqs, (1..=p.last_seq()).collect::<Vec<_>>());
    assert!(matches!(
        all.events.last(),
        Some(ProcessEvent::Closed { .. })
    ));
    let exited = &all.events[all.events.len() - 2];
    assert!(
        matches!(
            exited,
            ProcessEvent::Exited {
                status: ExitStatus::Exited(2),
                ..
            }
        ),
        "{exited:?}"
    );
    let tail = p.events_since(p.last_seq() - 1).unwrap();
    assert_eq!(tail.events.len(), 1);
}
