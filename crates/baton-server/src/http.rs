//! The WebSocket listener: a minimal HTTP/1.1 front that answers `GET /readyz`, refuses
//! requests carrying an `Origin` header (unless allowed), checks the bearer token, and upgrades
//! everything else to a WebSocket (RFC 6455) served by the exec server.

use std::net::SocketAddr;
use std::time::Duration;

use baton_rpc::tokio_tungstenite::WebSocketStream;
use baton_rpc::tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use baton_rpc::tokio_tungstenite::tungstenite::protocol::Role;
use baton_rpc::{Transport, ws_config};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::ExecServer;

/// Largest accepted HTTP request head.
const MAX_HEAD: usize = 16 * 1024;
/// Time allowed for a client to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Who may connect to a WebSocket listener.
#[derive(Debug, Clone, Default)]
pub struct ListenOptions {
    /// Required bearer token (`Authorization: Bearer <token>`); mandatory off loopback.
    pub token: Option<String>,
    /// `Origin` values accepted (exact match); any other request with an `Origin` header is
    /// refused with 403, which keeps browsers' pages from driving the server.
    pub allowed_origins: Vec<String>,
}

/// Why [`ExecServer::bind_ws`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Binding a non-loopback address without a token.
    #[error("refusing to listen on non-loopback address {0} without a bearer token (--token-file)")]
    TokenRequired(SocketAddr),
    /// The socket could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// A bound WebSocket listener; [`WsListener::run`] serves it.
pub struct WsListener {
    listener: TcpListener,
    addr: SocketAddr,
    options: ListenOptions,
    server: ExecServer,
}

impl ExecServer {
    /// Binds `addr` (port 0 picks a free port).
    ///
    /// Errors: [`ListenError::TokenRequired`] for a non-loopback address without
    /// `options.token`; [`ListenError::Bind`] when the bind fails.
    pub async fn bind_ws(
        &self,
        addr: SocketAddr,
        options: ListenOptions,
    ) -> Result<WsListener, ListenError> {
        if !addr.ip().is_loopback() && options.token.is_none() {
            return Err(ListenError::TokenRequired(addr));
        }
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ListenError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| ListenError::Bind { addr, source })?;
        Ok(WsListener {
            listener,
            addr,
            options,
            server: self.clone(),
        })
    }
}

impl WsListener {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL clients connect to: `ws://HOST:PORT` (IPv6 hosts in brackets).
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Accepts connections until the server shuts down.
    pub async fn run(self) {
        let shutdown = self.server.inner.shutdown.clone();
        loop {
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                () = shutdown.cancelled() => break,
            };
            match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    let server = self.server.clone();
                    let options = self.options.clone();
                    tokio::spawn(async move {
                        if let Err(e) = handle(tcp, peer, server, &options).await {
                            tracing::debug!(%peer, "http connection failed: {e}");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    // Out of descriptors and the like: back off a little instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

async fn respond(tcp: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let text = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(text.as_bytes()).await?;
    tcp.shutdown().await
}

/// Constant-time byte comparison.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn handle(
    mut tcp: TcpStream,
    peer_addr: SocketAddr,
    server: ExecServer,
    options: &ListenOptions,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let head_len = tokio::time::timeout(HEAD_TIMEOUT, async {
        loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return Ok(Some(i + 4));
            }
            if buf.len() > MAX_HEAD {
                return Ok(None);
            }
            let mut chunk = [0u8; 4096];
            let n = tcp.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed during the request head",
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request head timeout"))??;
    let Some(head_len) = head_len else {
        return respond(
            &mut tcp,
            "431 Request Header Fields Too Large",
            "request head too large\n",
        )
        .await;
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(
        req.parse(&buf[..head_len]),
        Ok(httparse::Status::Complete(_))
    ) {
        return respond(&mut tcp, "400 Bad Request", "malformed HTTP request\n").await;
    }
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_owned())
    };
    let path = req.path.unwrap_or("/");
    let method = req.method.unwrap_or("");
    if path == "/readyz" || path.starts_with("/readyz?") {
        return if method == "GET" || method == "HEAD" {
            respond(&mut tcp, "200 OK", "ok\n").await
        } else {
            respond(&mut tcp, "405 Method Not Allowed", "use GET\n").await
        };
    }
    if let Some(origin) = header("origin")
        && !options.allowed_origins.iter().any(|o| o == &origin)
    {
        tracing::warn!(%peer_addr, %origin, "refused a request with an Origin header");
        return respond(
            &mut tcp,
            "403 Forbidden",
            "cross-origin requests are refused\n",
        )
        .await;
    }
    if let Some(token) = &options.token {
        let given = header("authorization").unwrap_or_default();
        let ok = given
            .strip_prefix("Bearer ")
            .or_else(|| given.strip_prefix("bearer "))
            .is_some_and(|t| same(t.trim().as_bytes(), token.as_bytes()));
        if !ok {
            return respond(
                &mut tcp,
                "401 Unauthorized",
                "a valid bearer token is required\n",
            )
            .await;
        }
    }
    let upgrade = header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    let (Some(key), true) = (header("sec-websocket-key"), upgrade) else {
        return respond(
            &mut tcp,
            "426 Upgrade Required",
            "this is a JSON-RPC WebSocket endpoint; GET /readyz for health\n",
        )
        .await;
    };
    if method != "GET" || header("sec-websocket-version").as_deref() != Some("13") {
        return respond(
            &mut tcp,
            "400 Bad Request",
            "WebSocket version 13 GET expected\n",
        )
        .await;
    }
    let accept = derive_accept_key(key.as_bytes());
    let leftover = buf[head_len..].to_vec();
    let reply = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    tcp.write_all(reply.as_bytes()).await?;
    let config = ws_config(server.inner.config.max_message_bytes);
    let ws = WebSocketStream::from_partially_read(tcp, leftover, Role::Server, Some(config)).await;
    server.serve_connection(Transport::websocket(ws), &format!("ws {peer_addr}"));
    Ok(())
}
