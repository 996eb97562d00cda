//! Per-process output retention for `process/read`, fed by the forwarder.
//!
//! The forwarder consumes the lossless, backpressured event stream of the process (baton-exec
//! streaming mode): while a connection is attached, each event is pushed here AND sent as a
//! notification, and the child is slowed down to the pace of the client instead of output
//! being dropped; while detached, events are only retained here (bounded in bytes, oldest
//! evicted, eviction reported to readers) and the child never blocks.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use baton_protocol::exec::{OutputChunk, OutputStream, ReadResponse};
use bytes::Bytes;
use tokio::sync::watch;

struct Chunk {
    seq: u64,
    stream: OutputStream,
    bytes: Bytes,
}

#[derive(Default)]
struct State {
    chunks: VecDeque<Chunk>,
    bytes: usize,
    /// Highest evicted chunk seq (0: none).
    evicted_through: u64,
    last_seq: u64,
    exit_code: Option<i32>,
    closed: bool,
}

/// Retained output of one process plus a change signal for long polls.
pub(crate) struct Retained {
    max_bytes: usize,
    state: Mutex<State>,
    changed: watch::Sender<u64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Retained {
    pub(crate) fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            state: Mutex::new(State::default()),
            changed: watch::channel(0).0,
        }
    }

    pub(crate) fn push_output(&self, seq: u64, stream: OutputStream, bytes: Bytes) {
        let mut s = lock(&self.state);
        s.last_seq = seq;
        s.bytes += bytes.len();
        s.chunks.push_back(Chunk { seq, stream, bytes });
        while s.bytes > self.max_bytes && s.chunks.len() > 1 {
            if let Some(old) = s.chunks.pop_front() {
                s.bytes -= old.bytes.len();
                s.evicted_through = old.seq;
            }
        }
        drop(s);
        self.changed.send_replace(seq);
    }

    pub(crate) fn push_exit(&self, seq: u64, code: i32) {
        let mut s = lock(&self.state);
        s.last_seq = seq;
        s.exit_code = Some(code);
        drop(s);
        self.changed.send_replace(seq);
    }

    pub(crate) fn push_closed(&self, seq: u64) {
        let mut s = lock(&self.state);
        s.last_seq = seq;
        s.closed = true;
        drop(s);
        self.changed.send_replace(seq);
    }

    /// Marks the end when the event stream stopped without `Closed` (runtime teardown).
    pub(crate) fn mark_closed(&self) {
        let mut s = lock(&self.state);
        s.closed = true;
        s.exit_code.get_or_insert(128 + 9);
        let seq = s.last_seq;
        drop(s);
        self.changed.send_modify(|v| *v = seq);
    }

    fn snapshot(&self, after: u64, max_bytes: Option<usize>) -> ReadResponse {
        let s = lock(&self.state);
        let start = s.chunks.partition_point(|c| c.seq <= after);
        let mut chunks = Vec::new();
        let mut total = 0usize;
        let mut truncated = false;
        for c in s.chunks.iter().skip(start) {
            if let Some(max) = max_bytes
                && !chunks.is_empty()
                && total + c.bytes.len() > max
            {
                truncated = true;
                break;
            }
            total += c.bytes.len();
            chunks.push(OutputChunk {
                seq: c.seq,
                stream: c.stream,
                chunk: c.bytes.to_vec().into(),
            });
        }
        let next_seq = match chunks.last() {
            Some(last) if truncated => last.seq + 1,
            _ => s.last_seq + 1,
        };
        ReadResponse {
            chunks,
            next_seq,
            exited: s.exit_code.is_some(),
            exit_code: s.exit_code,
            closed: s.closed,
            failure: None,
            evicted_before: (s.evicted_through > after).then_some(s.evicted_through + 1),
        }
    }

    /// Events after `after`, at most `max_bytes` of output (at least one chunk), waiting up to
    /// `wait` for something new.
    pub(crate) async fn read(
        &self,
        after: u64,
        max_bytes: Option<usize>,
        wait: Option<Duration>,
    ) -> ReadResponse {
        let deadline = wait.map(|w| tokio::time::Instant::now() + w);
        let mut rx = self.changed.subscribe();
        loop {
            rx.borrow_and_update();
            {
                let s = lock(&self.state);
                let news = s.last_seq > after || s.closed;
                let expired = deadline.is_none_or(|d| tokio::time::Instant::now() >= d);
                if news || expired {
                    drop(s);
                    return self.snapshot(after, max_bytes);
                }
            }
            let Some(deadline) = deadline else {
                return self.snapshot(after, max_bytes);
            };
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return self.snapshot(after, max_bytes),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eviction_is_reported_and_one_chunk_always_returned() {
        let r = Retained::new(10);
        r.push_output(1, OutputStream::Stdout, Bytes::from_static(b"0123456"));
        r.push_output(2, OutputStream::Stderr, Bytes::from_static(b"789abc"));
        r.push_exit(3, 0);
        r.push_closed(4);
        let s = r.snapshot(0, Some(1));
        assert_eq!(s.evicted_before, Some(2));
        assert_eq!(s.chunks.len(), 1);
        assert_eq!(s.chunks[0].seq, 2);
        assert_eq!((s.next_seq, s.exited, s.closed), (5, true, true));
        let later = r.snapshot(2, None);
        assert_eq!((later.chunks.len(), later.evicted_before), (0, None));
    }
}
