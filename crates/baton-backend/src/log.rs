//! The durable event log: one SQLite database (`events.sqlite3`, WAL mode) under the backend's
//! data directory.
//!
//! Every worker event is appended with a global sequence (SQLite `AUTOINCREMENT`, so a sequence
//! is never reused, even after retention deleted it). A committed event is published to live
//! observers *after* its transaction committed and *while* the writer lock is still held, so the
//! live channel carries events in sequence order, and [`EventLog::subscribe`] (which takes the
//! same lock) returns a receiver plus the exact head sequence below which everything must be read
//! back from the database: replay `(cursor, head]` from SQLite, then take live events `> head`.
//!
//! Retention ([`Retention`]) deletes the oldest events by age and by total payload size. For each
//! worker it records the highest deleted sequence (`pruned_through`); a cursor below it can no
//! longer be served without a gap and is reported as expired ([`CursorCheck::Expired`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension as _, params};
use tokio::sync::broadcast;

/// Capacity of the live channel; an observer that falls further behind re-reads from SQLite.
const LIVE_CAPACITY: usize = 8192;
/// Retention runs after this many appends (and whenever [`EventLog::apply_retention`] is called).
const RETENTION_EVERY: u64 = 1024;

/// How long and how much the log keeps. `None` means unbounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// Events older than this are deleted.
    pub max_age: Option<Duration>,
    /// When the payloads of all events exceed this many bytes, the oldest are deleted until they
    /// fit.
    pub max_bytes: Option<u64>,
}

/// One event of the log, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedEvent {
    /// Global sequence (`1..`); its cursor spelling is the event's `event_id`.
    pub sequence: u64,
    /// Runtime of the worker.
    pub runtime_id: String,
    /// Worker the event belongs to.
    pub worker_id: String,
    /// When it was appended, milliseconds since the Unix epoch.
    pub recorded_at_ms: u64,
    /// The event payload (a JSON object with a `type` field; see the crate docs).
    pub payload: serde_json::Value,
}

/// Whether a cursor can be served for a worker ([`EventLog::check_cursor`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorCheck {
    /// Every event of the worker after the cursor is still in the log.
    Valid,
    /// Retention deleted events of the worker after the cursor.
    Expired,
    /// The cursor is beyond the log's head (it was never issued by this log).
    Unknown,
}

/// A stored worker record (its summary as JSON, kept so workers survive a restart).
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerRow {
    /// Runtime id.
    pub runtime_id: String,
    /// Worker id.
    pub worker_id: String,
    /// The worker summary, as served by the API.
    pub summary: serde_json::Value,
    /// What its runtime needs to follow it again after a restart (see
    /// [`EventLog::save_worker_handle`]); `None` for workers of the embedded runtime. Ignored by
    /// [`EventLog::save_worker`].
    pub handle: Option<serde_json::Value>,
}

/// Errors of the event log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The data directory could not be created.
    #[error("cannot create data directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// SQLite failed (open, schema, read or write).
    #[error("event log {op} failed")]
    Sqlite {
        /// What was being done.
        op: &'static str,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// A stored payload is not JSON (the database was edited by hand or is corrupt).
    #[error("stored event {sequence} is not valid JSON")]
    Corrupt {
        /// The sequence.
        sequence: u64,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
}

fn sql(op: &'static str) -> impl FnOnce(rusqlite::Error) -> LogError {
    move |source| LogError::Sqlite { op, source }
}

struct Writer {
    conn: Connection,
    head: u64,
    appends: u64,
}

/// The durable, append-only event log with live fan-out. Cheap to share behind an `Arc`; all
/// methods are synchronous (call them from `spawn_blocking` when they read many rows).
pub struct EventLog {
    path: PathBuf,
    writer: Mutex<Writer>,
    reader: Mutex<Connection>,
    live: broadcast::Sender<Arc<LoggedEvent>>,
    retention: Retention,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog")
            .field("path", &self.path)
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn open_conn(path: &Path) -> Result<Connection, LogError> {
    let conn = Connection::open(path).map_err(sql("open"))?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(sql("open"))?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(sql("open"))?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(sql("open"))?;
    Ok(conn)
}

impl EventLog {
    /// Opens (creating if needed) `dir/events.sqlite3` with the given retention, and applies
    /// retention once.
    ///
    /// # Errors
    /// [`LogError::CreateDir`] or [`LogError::Sqlite`].
    pub fn open(dir: &Path, retention: Retention) -> Result<Self, LogError> {
        std::fs::create_dir_all(dir).map_err(|source| LogError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join("events.sqlite3");
        let conn = open_conn(&path)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS events (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 runtime_id TEXT NOT NULL,
                 worker_id TEXT NOT NULL,
                 ts_ms INTEGER NOT NULL,
                 size INTEGER NOT NULL,
                 payload TEXT NOT NULL);
             CREATE INDEX IF NOT EXISTS events_worker ON events(runtime_id, worker_id, seq);
             CREATE TABLE IF NOT EXISTS workers (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 runtime_id TEXT NOT NULL,
                 worker_id TEXT NOT NULL,
                 summary TEXT NOT NULL,
                 pruned_through INTEGER NOT NULL DEFAULT 0,
                 UNIQUE(runtime_id, worker_id));
             CREATE TABLE IF NOT EXISTS runtime_state (
                 runtime_id TEXT PRIMARY KEY,
                 state TEXT NOT NULL);",
        )
        .map_err(sql("create schema"))?;
        // Added after the first release of the schema: add it to older databases.
        let has_handle: bool = conn
            .query_row(
                "SELECT COUNT(*) FROM pragma_table_info('workers') WHERE name = 'handle'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(sql("read schema"))?
            > 0;
        if !has_handle {
            conn.execute_batch("ALTER TABLE workers ADD COLUMN handle TEXT")
                .map_err(sql("migrate schema"))?;
        }
        let head: i64 = conn
            .query_row(
                "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)",
                [],
                |r| r.get(0),
            )
            .map_err(sql("read head"))?;
        let reader = open_conn(&path)?;
        let (live, _) = broadcast::channel(LIVE_CAPACITY);
        let log = Self {
            path,
            writer: Mutex::new(Writer {
                conn,
                head: head as u64,
                appends: 0,
            }),
            reader: Mutex::new(reader),
            live,
            retention,
        };
        log.apply_retention(now_ms())?;
        Ok(log)
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event for `runtime_id/worker_id`, commits it, publishes it to live
    /// subscribers and returns it with its sequence.
    ///
    /// # Errors
    /// [`LogError::Sqlite`] when the insert fails (nothing is published then).
    pub fn append(
        &self,
        runtime_id: &str,
        worker_id: &str,
        payload: serde_json::Value,
    ) -> Result<Arc<LoggedEvent>, LogError> {
        let text = payload.to_string();
        let ts = now_ms();
        let mut w = lock(&self.writer);
        w.conn
            .execute(
                "INSERT INTO events (runtime_id, worker_id, ts_ms, size, payload)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![runtime_id, worker_id, ts as i64, text.len() as i64, text],
            )
            .map_err(sql("append"))?;
        let sequence = w.conn.last_insert_rowid() as u64;
        w.head = sequence;
        w.appends += 1;
        let event = Arc::new(LoggedEvent {
            sequence,
            runtime_id: runtime_id.to_owned(),
            worker_id: worker_id.to_owned(),
            recorded_at_ms: ts,
            payload,
        });
        // No receivers is fine: nobody observes right now.
        let _ = self.live.send(event.clone());
        if w.appends.is_multiple_of(RETENTION_EVERY)
            && let Err(e) = Self::retain(&w.conn, self.retention, ts)
        {
            tracing::warn!(error = %e, "event log retention failed");
        }
        Ok(event)
    }

    /// Subscribes to live events and returns the receiver with the head sequence at that
    /// instant: every event `> head` arrives on the receiver (unless it lags), every event
    /// `<= head` must be read with [`EventLog::read_after`].
    pub fn subscribe(&self) -> (broadcast::Receiver<Arc<LoggedEvent>>, u64) {
        let w = lock(&self.writer);
        (self.live.subscribe(), w.head)
    }

    /// The highest sequence appended so far (0 for an empty log).
    pub fn head(&self) -> u64 {
        lock(&self.writer).head
    }

    /// Events of one worker with `after < sequence <= up_to`, oldest first, at most `limit`.
    ///
    /// # Errors
    /// [`LogError::Sqlite`] or [`LogError::Corrupt`].
    pub fn read_after(
        &self,
        runtime_id: &str,
        worker_id: &str,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> Result<Vec<LoggedEvent>, LogError> {
        let conn = lock(&self.reader);
        let mut stmt = conn
            .prepare_cached(
                "SELECT seq, ts_ms, payload FROM events
                 WHERE runtime_id = ?1 AND worker_id = ?2 AND seq > ?3 AND seq <= ?4
                 ORDER BY seq LIMIT ?5",
            )
            .map_err(sql("read"))?;
        let rows = stmt
            .query_map(
                params![
                    runtime_id,
                    worker_id,
                    after as i64,
                    up_to.min(i64::MAX as u64) as i64,
                    limit as i64
                ],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)? as u64,
                        r.get::<_, i64>(1)? as u64,
                        r.get::<_, String>(2)?,
                    ))
                },
            )
            .map_err(sql("read"))?;
        let mut out = Vec::new();
        for row in rows {
            let (sequence, recorded_at_ms, text) = row.map_err(sql("read"))?;
            let payload = serde_json::from_str(&text)
                .map_err(|source| LogError::Corrupt { sequence, source })?;
            out.push(LoggedEvent {
                sequence,
                runtime_id: runtime_id.to_owned(),
                worker_id: worker_id.to_owned(),
                recorded_at_ms,
                payload,
            });
        }
        Ok(out)
    }

    /// Whether every event of the worker after `cursor` is still stored.
    ///
    /// # Errors
    /// [`LogError::Sqlite`].
    pub fn check_cursor(
        &self,
        runtime_id: &str,
        worker_id: &str,
        cursor: u64,
    ) -> Result<CursorCheck, LogError> {
        if cursor > self.head() {
            return Ok(CursorCheck::Unknown);
        }
        let pruned = self.pruned_through(runtime_id, worker_id)?;
        Ok(if cursor < pruned {
            CursorCheck::Expired
        } else {
            CursorCheck::Valid
        })
    }

    /// The highest sequence of the worker that retention deleted (0: none).
    ///
    /// # Errors
    /// [`LogError::Sqlite`].
    pub fn pruned_through(&self, runtime_id: &str, worker_id: &str) -> Result<u64, LogError> {
        let conn = lock(&self.reader);
        let v: Option<i64> = conn
            .query_row(
                "SELECT pruned_through FROM workers WHERE runtime_id = ?1 AND worker_id = ?2",
                params![runtime_id, worker_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("read worker"))?;
        Ok(v.unwrap_or(0) as u64)
    }

    /// Reserves a new worker row and returns its number (unique for the life of the database,
    /// used to build worker ids).
    ///
    /// # Errors
    /// [`LogError::Sqlite`].
    pub fn next_worker_number(&self, runtime_id: &str) -> Result<u64, LogError> {
        let w = lock(&self.writer);
        w.conn
            .execute(
                "INSERT INTO workers (runtime_id, worker_id, summary) VALUES (?1, '', '{}')",
                params![runtime_id],
            )
            .map_err(sql("reserve worker"))?;
        let id = w.conn.last_insert_rowid();
        let worker_id = format!("w{id}");
        w.conn
            .execute(
                "UPDATE workers SET worker_id = ?1 WHERE id = ?2",
                params![worker_id, id],
            )
            .map_err(sql("reserve worker"))?;
        Ok(id as u64)
    }

    /// Stores (inserts or replaces) a worker's summary.
    ///
    /// # Errors
    /// [`LogError::Sqlite`].
    pub fn save_worker(&self, row: &WorkerRow) -> Result<(), LogError> {
        let w = lock(&self.writer);
        w.conn
            .execute(
                "INSERT INTO workers (runtime_id, worker_id, summary) VALUES (?1, ?2, ?3)
                 ON CONFLICT(runtime_id, worker_id) DO UPDATE SET summary = excluded.summary",
                params![row.runtime_id, row.worker_id, row.summary.to_string()],
            )
            .map_err(sql("save worker"))?;
        Ok(())
    }

    /// Records what `runtime_id/worker_id`'s runtime needs to follow it again after a restart
    /// (secret-free JSON, e.g. `{"command_id": …}`).
    ///
    /// # Errors
    /// [`LogError::Sqlite`].
    pub fn save_worker_handle(
        &self,
        runtime_id: &str,
        worker_id: &str,
        handle: &serde_json::Value,
    ) -> Result<(), LogError> {
        let w = lock(&self.writer);
        w.conn
            .execute(
                "UPDATE workers SET handle = ?3 WHERE runtime_id = ?1 AND worker_id = ?2",
                params![runtime_id, worker_id, handle.to_string()],
            )
            .map_err(sql("save worker handle"))?;
        Ok(())
    }

    /// Stores a runtime's persistable session state (secret-free JSON; replaces the last).
    ///
    /// # Errors
    /// [`LogError::Sqlite`].
    pub fn save_runtime_state(
        &self,
        runtime_id: &str,
        state: &serde_json::Value,
    ) -> Result<(), LogError> {
        let w = lock(&self.writer);
        w.conn
            .execute(
                "INSERT INTO runtime_state (runtime_id, state) VALUES (?1, ?2)
                 ON CONFLICT(runtime_id) DO UPDATE SET state = excluded.state",
                params![runtime_id, state.to_string()],
            )
            .map_err(sql("save runtime state"))?;
        Ok(())
    }

    /// The state last stored by [`EventLog::save_runtime_state`], if any (and if it is JSON).
    ///
    /// # Errors
    /// [`LogError::Sqlite`].
    pub fn load_runtime_state(
        &self,
        runtime_id: &str,
    ) -> Result<Option<serde_json::Value>, LogError> {
        let conn = lock(&self.reader);
        let text: Option<String> = conn
            .query_row(
                "SELECT state FROM runtime_state WHERE runtime_id = ?1",
                params![runtime_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("load runtime state"))?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }

    /// The highest runtime sequence number (`payload.seq`) among the worker's recorded events,
    /// or 0: where following it again must resume.
    ///
    /// # Errors
    /// [`LogError::Sqlite`].
    pub fn last_runtime_seq(&self, runtime_id: &str, worker_id: &str) -> Result<u64, LogError> {
        let conn = lock(&self.reader);
        let v: Option<i64> = conn
            .query_row(
                "SELECT json_extract(payload, '$.seq') FROM events
                 WHERE runtime_id = ?1 AND worker_id = ?2
                   AND json_extract(payload, '$.seq') IS NOT NULL
                 ORDER BY seq DESC LIMIT 1",
                params![runtime_id, worker_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("read last runtime seq"))?;
        Ok(v.map_or(0, |v| v.max(0) as u64))
    }

    /// Every stored worker, oldest first.
    ///
    /// # Errors
    /// [`LogError::Sqlite`]; rows whose summary is not JSON are skipped.
    pub fn load_workers(&self) -> Result<Vec<WorkerRow>, LogError> {
        let conn = lock(&self.reader);
        let mut stmt = conn
            .prepare("SELECT runtime_id, worker_id, summary, handle FROM workers WHERE worker_id != '' ORDER BY id")
            .map_err(sql("load workers"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                ))
            })
            .map_err(sql("load workers"))?;
        let mut out = Vec::new();
        for row in rows {
            let (runtime_id, worker_id, text, handle) = row.map_err(sql("load workers"))?;
            let handle = handle.and_then(|h| serde_json::from_str(&h).ok());
            match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(summary) if summary.is_object() && summary.get("worker_id").is_some() => out
                    .push(WorkerRow {
                        runtime_id,
                        worker_id,
                        summary,
                        handle,
                    }),
                _ => tracing::warn!(%runtime_id, %worker_id, "skipping worker without summary"),
            }
        }
        Ok(out)
    }

    /// Applies the retention policy now (`now_ms`: the current time in Unix milliseconds).
    /// Returns how many events were deleted.
    ///
    /// # Errors
    /// [`LogError::Sqlite`].
    pub fn apply_retention(&self, now_ms: u64) -> Result<u64, LogError> {
        let w = lock(&self.writer);
        Self::retain(&w.conn, self.retention, now_ms)
    }

    fn retain(conn: &Connection, retention: Retention, now_ms: u64) -> Result<u64, LogError> {
        let mut cutoff: u64 = 0;
        if let Some(age) = retention.max_age {
            let oldest_kept = now_ms.saturating_sub(age.as_millis() as u64);
            let c: i64 = conn
                .query_row(
                    "SELECT COALESCE(MAX(seq), 0) FROM events WHERE ts_ms < ?1",
                    params![oldest_kept as i64],
                    |r| r.get(0),
                )
                .map_err(sql("retention"))?;
            cutoff = cutoff.max(c as u64);
        }
        if let Some(max) = retention.max_bytes {
            let c: i64 = conn
                .query_row(
                    "SELECT COALESCE(MAX(seq), 0) FROM (
                         SELECT seq, SUM(size) OVER (ORDER BY seq DESC) AS total FROM events)
                     WHERE total > ?1",
                    params![max.min(i64::MAX as u64) as i64],
                    |r| r.get(0),
                )
                .map_err(sql("retention"))?;
            cutoff = cutoff.max(c as u64);
        }
        if cutoff == 0 {
            return Ok(0);
        }
        let tx = conn.unchecked_transaction().map_err(sql("retention"))?;
        tx.execute(
            "UPDATE workers SET pruned_through = MAX(pruned_through, (
                 SELECT MAX(e.seq) FROM events e
                 WHERE e.runtime_id = workers.runtime_id AND e.worker_id = workers.worker_id
                   AND e.seq <= ?1))
             WHERE EXISTS (SELECT 1 FROM events e
                 WHERE e.runtime_id = workers.runtime_id AND e.worker_id = workers.worker_id
                   AND e.seq <= ?1)",
            params![cutoff as i64],
        )
        .map_err(sql("retention"))?;
        let deleted = tx
            .execute("DELETE FROM events WHERE seq <= ?1", params![cutoff as i64])
            .map_err(sql("retention"))?;
        tx.commit().map_err(sql("retention"))?;
        Ok(deleted as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sequences_survive_reopen_and_retention_expires_cursors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = EventLog::open(dir.path(), Retention::default()).expect("open");
        log.save_worker(&WorkerRow {
            runtime_id: "local".into(),
            worker_id: "w1".into(),
            summary: json!({"worker_id": "w1"}),
            handle: None,
        })
        .expect("save");
        for i in 0..10 {
            let e = log
                .append("local", "w1", json!({"type": "output", "i": i}))
                .expect("append");
            assert_eq!(e.sequence, i + 1);
        }
        drop(log);
        let log = EventLog::open(
            dir.path(),
            Retention {
                max_age: None,
                max_bytes: Some(3 * json!({"type": "output", "i": 1}).to_string().len() as u64),
            },
        )
        .expect("reopen");
        assert_eq!(log.head(), 10);
        // Only the last three fit: 1..=7 were deleted.
        assert_eq!(log.pruned_through("local", "w1").expect("pruned"), 7);
        assert_eq!(
            log.check_cursor("local", "w1", 6).expect("check"),
            CursorCheck::Expired
        );
        assert_eq!(
            log.check_cursor("local", "w1", 7).expect("check"),
            CursorCheck::Valid
        );
        assert_eq!(
            log.check_cursor("local", "w1", 11).expect("check"),
            CursorCheck::Unknown
        );
        let rest = log
            .read_after("local", "w1", 7, u64::MAX, 100)
            .expect("read");
        assert_eq!(
            rest.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            vec![8, 9, 10]
        );
        let e = log
            .append("local", "w1", json!({"type": "x"}))
            .expect("append");
        assert_eq!(e.sequence, 11, "sequences are never reused");
        assert_eq!(log.load_workers().expect("load").len(), 1);
    }

    #[test]
    fn age_retention_deletes_old_events() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = EventLog::open(
            dir.path(),
            Retention {
                max_age: Some(Duration::from_secs(60)),
                max_bytes: None,
            },
        )
        .expect("open");
        for _ in 0..3 {
            log.append("local", "w1", json!({"type": "x"}))
                .expect("append");
        }
        log.save_worker(&WorkerRow {
            runtime_id: "local".into(),
            worker_id: "w1".into(),
            summary: json!({"worker_id": "w1"}),
            handle: None,
        })
        .expect("save");
        assert_eq!(log.apply_retention(now_ms()).expect("retain"), 0);
        // An hour later every event is too old.
        assert_eq!(
            log.apply_retention(now_ms() + 3_600_000).expect("retain"),
            3
        );
        assert_eq!(
            log.check_cursor("local", "w1", 0).expect("check"),
            CursorCheck::Expired
        );
        assert_eq!(
            log.check_cursor("local", "w1", 3).expect("check"),
            CursorCheck::Valid
        );
    }
}
