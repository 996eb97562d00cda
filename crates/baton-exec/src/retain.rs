//! The byte-bounded retention buffer behind [`crate::Process::read`].

use std::collections::VecDeque;

use bytes::Bytes;

use crate::process::{ExitStatus, ProcessEvent, Stream};

/// Default retention bound per process: 8 MiB of output bytes (DESIGN.md section 2).
pub const DEFAULT_RETAINED_BYTES: usize = 8 * 1024 * 1024;

/// One retained output chunk, as returned by [`crate::Process::read`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Position in the process's event sequence (from 1, shared with exit and close events).
    pub seq: u64,
    /// Which stream the bytes came from.
    pub stream: Stream,
    /// The raw bytes, exactly as read (not UTF-8 checked).
    pub bytes: Bytes,
}

/// The answer of [`crate::Process::read`] (the shape of the exec-server `process/read` result).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResult {
    /// Output chunks with `seq > after_seq`, oldest first, contiguous in the retained order;
    /// limited by `max_bytes` but always at least one chunk when one is available.
    pub chunks: Vec<Chunk>,
    /// The seq to continue from: pass `next_seq - 1` as the next `after_seq`. It is the last
    /// returned chunk's seq + 1 when chunks were held back by `max_bytes`, else the process's
    /// latest event seq + 1 (so exit/close events are stepped over too).
    pub next_seq: u64,
    /// Whether the process (the group leader) has exited.
    pub exited: bool,
    /// [`ExitStatus::code_for_shell`] once exited: the exit code, or 128 + signal number.
    pub exit_code: Option<i32>,
    /// The full exit status once exited.
    pub exit_status: Option<ExitStatus>,
    /// Whether the process exited AND all its output streams reached EOF: nothing more will come.
    pub closed: bool,
    /// `Some(s)` when output chunks after `after_seq` and before seq `s` were evicted from the
    /// retention buffer and are lost to this reader; `chunks` then starts at `s` or later.
    pub evicted_before: Option<u64>,
}

/// The answer of [`crate::Process::events_since`]: retained events as [`ProcessEvent`]s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsSince {
    /// Events with `seq > after_seq` that are still known, in seq order: retained output chunks
    /// and the `Exited`/`Closed` events (kept for the whole life of the process).
    pub events: Vec<ProcessEvent>,
    /// `Some(s)`: output chunks after `after_seq` and before seq `s` were evicted and are lost
    /// (as in [`ReadResult::evicted_before`]).
    pub evicted_before: Option<u64>,
}

/// Retained state of one process (behind that process's own mutex).
#[derive(Debug)]
pub(crate) struct Retained {
    chunks: VecDeque<Chunk>,
    bytes: usize,
    max_bytes: usize,
    /// Highest seq of an evicted chunk (0: nothing evicted).
    evicted_through: u64,
    /// Latest seq of any event published.
    last_seq: u64,
    exit: Option<ExitStatus>,
    closed: bool,
    /// Seq of the `Exited` event (0: not yet).
    exit_seq: u64,
    /// Seq of the `Closed` event (0: not yet).
    closed_seq: u64,
}

impl Retained {
    pub(crate) fn new(max_bytes: usize) -> Self {
        Self {
            chunks: VecDeque::new(),
            bytes: 0,
            max_bytes,
            evicted_through: 0,
            last_seq: 0,
            exit: None,
            closed: false,
            exit_seq: 0,
            closed_seq: 0,
        }
    }

    /// Records the `Exited` event.
    pub(crate) fn set_exited(&mut self, seq: u64, status: ExitStatus) {
        self.last_seq = seq;
        self.exit = Some(status);
        self.exit_seq = seq;
    }

    /// Records the `Closed` event.
    pub(crate) fn set_closed(&mut self, seq: u64) {
        self.last_seq = seq;
        self.closed = true;
        self.closed_seq = seq;
    }

    /// Marks the process as ended without events (its pump was torn down by a runtime shutdown
    /// and the group killed), so readers stop waiting.
    pub(crate) fn mark_torn_down(&mut self) {
        self.exit.get_or_insert(ExitStatus::Signaled(libc::SIGKILL));
        self.closed = true;
    }

    /// Every retained event after `after_seq` in seq order (output chunks still retained, plus
    /// the `Exited` and `Closed` events, which are never evicted).
    pub(crate) fn events_since(&self, after_seq: u64) -> EventsSince {
        let start = self.chunks.partition_point(|c| c.seq <= after_seq);
        let mut events: Vec<ProcessEvent> = self
            .chunks
            .iter()
            .skip(start)
            .map(|c| ProcessEvent::Output {
                seq: c.seq,
                stream: c.stream,
                chunk: c.bytes.clone(),
            })
            .collect();
        if let Some(status) = self.exit
            && self.exit_seq > after_seq
        {
            let at = events.partition_point(|e| e.seq() < self.exit_seq);
            events.insert(
                at,
                ProcessEvent::Exited {
                    seq: self.exit_seq,
                    status,
                },
            );
        }
        if self.closed && self.closed_seq > after_seq {
            events.push(ProcessEvent::Closed {
                seq: self.closed_seq,
            });
        }
        EventsSince {
            events,
            evicted_before: (self.evicted_through > after_seq).then_some(self.evicted_through + 1),
        }
    }

    /// Appends an output chunk and evicts the oldest ones while over the bound (keeping at least
    /// the newest chunk, even when it alone is larger than the bound).
    pub(crate) fn push(&mut self, chunk: Chunk) {
        self.last_seq = chunk.seq;
        self.bytes += chunk.bytes.len();
        self.chunks.push_back(chunk);
        while self.bytes > self.max_bytes && self.chunks.len() > 1 {
            if let Some(old) = self.chunks.pop_front() {
                self.bytes -= old.bytes.len();
                self.evicted_through = old.seq;
            }
        }
    }

    /// Bytes currently retained.
    #[cfg(test)]
    pub(crate) fn retained_bytes(&self) -> usize {
        self.bytes
    }

    /// Whether a read after `after_seq` has anything to report right now (new events, or the end).
    pub(crate) fn has_news(&self, after_seq: u64) -> bool {
        self.last_seq > after_seq || self.closed
    }

    /// Builds the answer for a read after `after_seq` of at most `max_bytes` (at least one chunk).
    pub(crate) fn read(&self, after_seq: u64, max_bytes: Option<usize>) -> ReadResult {
        let start = self.chunks.partition_point(|c| c.seq <= after_seq);
        let evicted_before = (self.evicted_through > after_seq).then_some(self.evicted_through + 1);
        let mut chunks = Vec::new();
        let mut total = 0usize;
        let mut truncated = false;
        for chunk in self.chunks.iter().skip(start) {
            let len = chunk.bytes.len();
            if let Some(max) = max_bytes
                && !chunks.is_empty()
                && total + len > max
            {
                truncated = true;
                break;
            }
            total += len;
            chunks.push(chunk.clone());
        }
        let next_seq = match chunks.last() {
            Some(last) if truncated => last.seq + 1,
            _ => self.last_seq + 1,
        };
        ReadResult {
            chunks,
            next_seq,
            exited: self.exit.is_some(),
            exit_code: self.exit.map(|s| s.code_for_shell()),
            exit_status: self.exit,
            closed: self.closed,
            evicted_before,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(seq: u64, text: &str) -> Chunk {
        Chunk {
            seq,
            stream: Stream::Stdout,
            bytes: Bytes::copy_from_slice(text.as_bytes()),
        }
    }

    #[test]
    fn evicts_oldest_and_reports_it() {
        let mut r = Retained::new(10);
        r.push(chunk(1, "aaaa"));
        r.push(chunk(2, "bbbb"));
        assert_eq!(r.retained_bytes(), 8);
        r.push(chunk(3, "cccc"));
        assert_eq!(r.retained_bytes(), 8);
        let res = r.read(0, None);
        assert_eq!(res.evicted_before, Some(2));
        assert_eq!(
            res.chunks.iter().map(|c| c.seq).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert_eq!(res.next_seq, 4);
        // a reader already past the evicted part is not told anything was lost
        let res = r.read(1, None);
        assert_eq!(res.evicted_before, None);
        assert_eq!(res.chunks.len(), 2);
    }

    #[test]
    fn max_bytes_returns_at_least_one_chunk_and_continues() {
        let mut r = Retained::new(1000);
        r.push(chunk(1, "0123456789"));
        r.push(chunk(2, "abc"));
        r.set_exited(3, ExitStatus::Exited(0));
        let res = r.read(0, Some(4));
        assert_eq!(res.chunks.len(), 1);
        assert_eq!(res.next_seq, 2);
        let res = r.read(1, Some(4));
        assert_eq!(res.chunks.len(), 1);
        assert_eq!(res.chunks[0].seq, 2);
        assert_eq!(res.next_seq, 4, "steps over the exit event");
        let res = r.read(3, Some(4));
        assert!(res.chunks.is_empty());
        assert_eq!(res.next_seq, 4);
        assert!(!r.has_news(3));
        assert!(r.has_news(2));
    }

    #[test]
    fn events_since_interleaves_exit_and_close() {
        let mut r = Retained::new(6);
        r.push(chunk(1, "aaaa"));
        r.set_exited(2, ExitStatus::Signaled(9));
        r.push(chunk(3, "bbbb"));
        r.set_closed(4);
        let all = r.events_since(0);
        assert_eq!(all.evicted_before, Some(2));
        assert_eq!(
            all.events.iter().map(ProcessEvent::seq).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        assert!(matches!(all.events[0], ProcessEvent::Exited { .. }));
        assert!(matches!(all.events[2], ProcessEvent::Closed { .. }));
        let tail = r.events_since(3);
        assert_eq!(tail.events, vec![ProcessEvent::Closed { seq: 4 }]);
        assert_eq!(tail.evicted_before, None);
        assert!(r.events_since(4).events.is_empty());
    }

    #[test]
    fn a_single_huge_chunk_is_kept() {
        let mut r = Retained::new(2);
        r.push(chunk(1, "abcdef"));
        let res = r.read(0, Some(1));
        assert_eq!(res.chunks.len(), 1);
        assert_eq!(res.evicted_before, None);
    }
}
