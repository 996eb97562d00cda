//! JSON-RPC 2.0 connections for Baton (DESIGN.md §1, §2).
//!
//! A [`Connection`] runs one JSON-RPC peer over a [`Transport`] — WebSocket (one message per
//! text frame, binary frames accepted), stdio (newline-delimited JSON) or an in-memory pair —
//! and gives back a cloneable [`Peer`] to make calls, send notifications and close it.
//!
//! Behaviour:
//! - `"jsonrpc":"2.0"` is always written and accepted absent or present
//!   ([`baton_protocol::jsonrpc`]).
//! - Incoming requests are handled concurrently, each in its own task, so a long poll blocks
//!   nothing else; incoming notifications are handled inline, in arrival order.
//! - A message that is not valid JSON, or not a valid JSON-RPC message, is answered with an
//!   error (`-32700` / `-32600`) whose id is `null` (or the id, when it could be read), and the
//!   connection keeps serving.
//! - A message over the size limit is rejected with a `-32600` error naming the limit; on stdio
//!   and in memory the connection goes on, on WebSocket it is then closed with close code 1009
//!   (the frame cannot be skipped).
//! - When the transport closes, pending calls fail with [`CallError::Closed`] and request tasks
//!   still running are aborted.

mod connection;
mod transport;

pub use connection::{CallError, Connection, ConnectionConfig, Handler, Peer};
pub use transport::{Transport, ws_config};

/// Re-export of tokio-tungstenite, so users build WebSocket streams with the same version.
pub use tokio_tungstenite;
