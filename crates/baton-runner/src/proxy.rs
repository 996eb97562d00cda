//! A loopback TCP listener for `expose_port`: every accepted connection is handed to a
//! provider-specific handler (a direct TCP connect for `local`, a tunnel process for
//! `exec-server`). Byte-stream level, so HTTP, WebSocket upgrades and anything else pass.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// Serves one accepted connection.
pub(crate) type ConnHandler =
    Arc<dyn Fn(TcpStream) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Binds `127.0.0.1:0` and serves connections with `handler` until the returned task is
/// aborted (which also aborts every connection task).
pub(crate) async fn listen(handler: ConnHandler) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        conns.spawn(handler(stream));
                    }
                    Err(e) => tracing::warn!("port proxy accept failed: {e}"),
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    });
    Ok((addr, task))
}

/// The `local` handler: connects to `127.0.0.1:port` and copies both ways until either side
/// closes.
pub(crate) fn direct(port: u16) -> ConnHandler {
    Arc::new(move |mut inbound: TcpStream| {
        Box::pin(async move {
            match TcpStream::connect(("127.0.0.1", port)).await {
                Ok(mut outbound) => {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
                Err(e) => tracing::debug!("port {port} not reachable: {e}"),
            }
        })
    })
}
