//! Message framing over the three transports: WebSocket, stdio NDJSON and in-memory.

use std::pin::Pin;

use futures::{Sink, SinkExt as _, Stream, StreamExt as _};
use tokio::io::{AsyncBufRead, AsyncBufReadExt as _, AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};

type WsRead = Pin<Box<dyn Stream<Item = Result<WsMessage, tungstenite::Error>> + Send>>;
type WsWrite = Pin<Box<dyn Sink<WsMessage, Error = tungstenite::Error> + Send>>;

/// A bidirectional message channel that a [`crate::Connection`] runs over.
///
/// Framing: WebSocket carries one JSON-RPC message per text frame (binary frames are accepted
/// as UTF-8 JSON too); stdio carries one message per `\n`-terminated line (`\r\n` accepted,
/// blank lines skipped); the in-memory pair passes whole strings.
pub struct Transport {
    pub(crate) reader: Reader,
    pub(crate) writer: Writer,
}

pub(crate) enum Reader {
    Lines(Pin<Box<dyn AsyncBufRead + Send>>),
    Ws(WsRead),
    Mem(mpsc::Receiver<String>),
}

pub(crate) enum Writer {
    Lines(Pin<Box<dyn AsyncWrite + Send>>),
    Ws(WsWrite),
    Mem(mpsc::Sender<String>),
}

/// What reading one message produced.
pub(crate) enum ReadEvent {
    /// A whole message.
    Message(Vec<u8>),
    /// A message over the size limit was discarded; `size` is the bytes seen (at least
    /// `limit + 1`). `fatal` when the transport cannot go on (WebSocket).
    TooLarge { size: usize, fatal: bool },
    /// The peer closed the transport (EOF, close frame, dropped channel).
    Closed(Option<String>),
    /// A control frame (WebSocket ping/pong): the peer is alive.
    Activity,
}

impl Transport {
    /// Newline-delimited JSON over a byte reader and writer (a child's stdio, our own
    /// stdin/stdout, a socket).
    pub fn stdio(
        reader: impl AsyncRead + Send + 'static,
        writer: impl AsyncWrite + Send + 'static,
    ) -> Self {
        Self {
            reader: Reader::Lines(Box::pin(tokio::io::BufReader::with_capacity(
                64 * 1024,
                reader,
            ))),
            writer: Writer::Lines(Box::pin(writer)),
        }
    }

    /// A WebSocket connection (either role), after its handshake. Create it with
    /// [`ws_config`] so tungstenite enforces the same message limit as the connection.
    pub fn websocket<S>(ws: WebSocketStream<S>) -> Self
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (write, read) = ws.split();
        Self {
            reader: Reader::Ws(Box::pin(read)),
            writer: Writer::Ws(Box::pin(write)),
        }
    }

    /// Two connected in-memory transports (for tests and embedding a server in-process).
    pub fn memory_pair() -> (Self, Self) {
        let (a_tx, a_rx) = mpsc::channel(1024);
        let (b_tx, b_rx) = mpsc::channel(1024);
        (
            Self {
                reader: Reader::Mem(a_rx),
                writer: Writer::Mem(b_tx),
            },
            Self {
                reader: Reader::Mem(b_rx),
                writer: Writer::Mem(a_tx),
            },
        )
    }
}

/// The tungstenite configuration matching a connection limit of `max_message_bytes`
/// (the WebSocket layer refuses larger messages and frames before buffering them).
pub fn ws_config(max_message_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes))
}

impl Reader {
    pub(crate) async fn next(&mut self, limit: usize) -> std::io::Result<ReadEvent> {
        match self {
            Reader::Lines(r) => read_line(r, limit).await,
            Reader::Mem(rx) => Ok(match rx.recv().await {
                Some(s) if s.len() > limit => ReadEvent::TooLarge {
                    size: s.len(),
                    fatal: false,
                },
                Some(s) => ReadEvent::Message(s.into_bytes()),
                None => ReadEvent::Closed(None),
            }),
            Reader::Ws(ws) => Ok(match ws.next().await {
                None => ReadEvent::Closed(None),
                Some(Ok(WsMessage::Text(t))) => ReadEvent::Message(t.as_bytes().to_vec()),
                Some(Ok(WsMessage::Binary(b))) => ReadEvent::Message(b.to_vec()),
                Some(Ok(WsMessage::Close(frame))) => {
                    ReadEvent::Closed(frame.map(|f| f.reason.to_string()))
                }
                Some(Ok(_)) => ReadEvent::Activity,
                Some(Err(tungstenite::Error::Capacity(e))) => {
                    let size = match e {
                        tungstenite::error::CapacityError::MessageTooLong { size, .. } => size,
                        _ => limit + 1,
                    };
                    ReadEvent::TooLarge { size, fatal: true }
                }
                Some(Err(
                    tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed,
                )) => ReadEvent::Closed(None),
                Some(Err(tungstenite::Error::Io(e))) => return Err(e),
                Some(Err(e)) => return Err(std::io::Error::other(e)),
            }),
        }
    }
}

/// Reads one line of at most `limit` bytes (without the newline). Longer lines are consumed
/// and reported as `TooLarge` without being buffered whole.
async fn read_line(
    r: &mut Pin<Box<dyn AsyncBufRead + Send>>,
    limit: usize,
) -> std::io::Result<ReadEvent> {
    let mut line = Vec::new();
    let mut seen = 0usize;
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            // EOF: a final unterminated line still counts as a message.
            if seen > limit {
                return Ok(ReadEvent::TooLarge {
                    size: seen,
                    fatal: false,
                });
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                return Ok(ReadEvent::Closed(None));
            }
            return Ok(ReadEvent::Message(line));
        }
        let (chunk, found) = match memchr(buf) {
            Some(i) => (&buf[..i], Some(i)),
            None => (buf, None),
        };
        seen += chunk.len();
        if seen <= limit {
            line.extend_from_slice(chunk);
        } else if !line.is_empty() {
            line = Vec::new();
        }
        let used = found.map_or(chunk.len(), |i| i + 1);
        r.consume(used);
        if found.is_some() {
            if seen > limit {
                return Ok(ReadEvent::TooLarge {
                    size: seen,
                    fatal: false,
                });
            }
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                line.clear();
                seen = 0;
                continue;
            }
            return Ok(ReadEvent::Message(line));
        }
    }
}

fn memchr(buf: &[u8]) -> Option<usize> {
    memchr::memchr(b'\n', buf)
}

impl Writer {
    /// Queues one message; `flush` sends everything queued.
    pub(crate) async fn feed(&mut self, text: String) -> std::io::Result<()> {
        match self {
            Writer::Lines(w) => {
                w.write_all(text.as_bytes()).await?;
                w.write_all(b"\n").await
            }
            Writer::Ws(ws) => ws
                .feed(WsMessage::text(text))
                .await
                .map_err(std::io::Error::other),
            Writer::Mem(tx) => tx
                .send(text)
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "peer gone")),
        }
    }

    /// Whether keepalive pings can be sent (WebSocket only).
    pub(crate) fn can_ping(&self) -> bool {
        matches!(self, Writer::Ws(_))
    }

    /// Sends a WebSocket ping (no-op on other transports).
    pub(crate) async fn ping(&mut self) -> std::io::Result<()> {
        match self {
            Writer::Ws(ws) => ws
                .send(WsMessage::Ping(Vec::new().into()))
                .await
                .map_err(std::io::Error::other),
            _ => Ok(()),
        }
    }

    pub(crate) async fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Writer::Lines(w) => w.flush().await,
            Writer::Ws(ws) => ws.flush().await.map_err(std::io::Error::other),
            Writer::Mem(_) => Ok(()),
        }
    }

    /// Closes the transport; for WebSocket with a close frame of `code` and `reason`.
    pub(crate) async fn close(&mut self, too_big: bool, reason: &str) {
        match self {
            Writer::Lines(w) => {
                let _ = w.flush().await;
                let _ = w.shutdown().await;
            }
            Writer::Ws(ws) => {
                let code = if too_big {
                    CloseCode::Size
                } else {
                    CloseCode::Normal
                };
                let _ = ws
                    .send(WsMessage::Close(Some(CloseFrame {
                        code,
                        reason: reason.into(),
                    })))
                    .await;
                let _ = ws.close().await;
            }
            Writer::Mem(_) => {}
        }
    }
}
