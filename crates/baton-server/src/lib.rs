//! The Baton exec server (`baton exec-server`, DESIGN.md §2).
//!
//! A JSON-RPC 2.0 server that starts processes, streams their output as ordered notifications,
//! takes stdin, kills process trees and does file operations, over WebSocket or stdio. It is
//! wire-compatible with `codex exec-server` (npm `@openai/codex`) and goes beyond it:
//!
//! - requests on one connection are handled concurrently (a long-poll `process/read` blocks
//!   nothing else);
//! - output retention is bounded per process ([`ServerConfig::retained_bytes`]) and eviction is
//!   reported (`evictedBefore` in `process/read`);
//! - a dropped connection detaches its session for [`ServerConfig::session_ttl`];
//!   `initialize {resumeSessionId}` reattaches. Resuming a session that is still attached is
//!   refused with `-32010` and evicts the old connection, so the client's retry succeeds;
//! - security: loopback by default, bearer token required off loopback ([`ListenOptions`]),
//!   requests with an `Origin` header refused (403), `GET /readyz`, `cwd` and fs paths confined
//!   to the roots with symlinks resolved (`-32003` otherwise).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use baton_server::{ExecServer, ListenOptions, ServerConfig};
//! let server = ExecServer::new(ServerConfig::default())?;
//! let listener = server.bind_ws("127.0.0.1:0".parse()?, ListenOptions::default()).await?;
//! println!("{}", listener.url());
//! listener.run().await; // until server.shutdown()
//! # Ok(()) }
//! ```

mod env;
mod fs;
mod http;
mod paths;
mod retain;
mod server;

use std::path::PathBuf;
use std::time::Duration;

pub use http::{ListenError, ListenOptions, WsListener};
pub use paths::Roots;
pub use server::{ExecServer, ServerError};

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Directories that `cwd` and every fs path must lie under (symlinks resolved). Empty: the
    /// server's working directory.
    pub roots: Vec<PathBuf>,
    /// Output bytes retained per process for `process/read` (default 8 MiB).
    pub retained_bytes: usize,
    /// How long a session whose connection dropped waits for a resume before its processes are
    /// killed (default 60 s).
    pub session_ttl: Duration,
    /// How long a closed process stays readable before its id is freed (default 5 min).
    pub closed_retention: Duration,
    /// Largest accepted JSON-RPC message in bytes (default 64 MiB).
    pub max_message_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            roots: Vec::new(),
            retained_bytes: baton_exec::DEFAULT_RETAINED_BYTES,
            session_ttl: Duration::from_secs(60),
            closed_retention: Duration::from_secs(300),
            max_message_bytes: 64 * 1024 * 1024,
        }
    }
}

impl ExecServer {
    /// Serves one connection over this process's stdin/stdout (newline-delimited JSON) until
    /// EOF on stdin or [`ExecServer::shutdown`]; then shuts the server down, killing every
    /// process. Nothing else may write to stdout meanwhile.
    pub async fn serve_stdio(&self) {
        let peer = self.serve_connection(
            baton_rpc::Transport::stdio(tokio::io::stdin(), tokio::io::stdout()),
            "stdio",
        );
        tokio::select! {
            _ = peer.closed() => {}
            () = self.shut_down() => {}
        }
        self.shutdown();
    }
}
