//! Opening a transport to an exec server: WebSocket, or the stdio of a spawned command.

use std::time::Duration;

use baton_exec::{CommandSpec, ProcessEvent as ExecEvent, StdinMode};
use baton_rpc::tokio_tungstenite::{self, tungstenite};
use baton_rpc::{Transport, ws_config};
use tokio::io::AsyncReadExt as _;
use tokio::io::AsyncWriteExt as _;

use crate::{ClientError, Endpoint};

/// Opens a fresh transport to `endpoint`. For [`Endpoint::Command`] the returned process keeps
/// the server alive; dropping it kills the server's process group.
pub(crate) async fn open(
    endpoint: &Endpoint,
    connect_timeout: Duration,
    max_message_bytes: usize,
) -> Result<(Transport, Option<baton_exec::Process>), ClientError> {
    match endpoint {
        Endpoint::WebSocket { url, token } => {
            use tungstenite::client::IntoClientRequest as _;
            let mut request =
                url.as_str()
                    .into_client_request()
                    .map_err(|e| ClientError::Connect {
                        target: url.clone(),
                        message: e.to_string(),
                    })?;
            if let Some(token) = token {
                let value =
                    format!("Bearer {token}")
                        .parse()
                        .map_err(|_| ClientError::Connect {
                            target: url.clone(),
                            message: "the token is not a valid header value".into(),
                        })?;
                request.headers_mut().insert("authorization", value);
            }
            let connect = tokio_tungstenite::connect_async_with_config(
                request,
                Some(ws_config(max_message_bytes)),
                true,
            );
            let (ws, _) = tokio::time::timeout(connect_timeout, connect)
                .await
                .map_err(|_| ClientError::Timeout {
                    what: format!("connecting to {url}"),
                    after: connect_timeout,
                })?
                .map_err(|e| ClientError::Connect {
                    target: url.clone(),
                    message: e.to_string(),
                })?;
            Ok((Transport::websocket(ws), None))
        }
        Endpoint::Command { argv, cwd, env } => {
            let Some(program) = argv.first() else {
                return Err(ClientError::Connect {
                    target: String::new(),
                    message: "empty command".into(),
                });
            };
            let cwd = match cwd {
                Some(c) => c.clone(),
                None => std::env::current_dir().map_err(|e| ClientError::Connect {
                    target: program.clone(),
                    message: e.to_string(),
                })?,
            };
            let spec = CommandSpec::new(program, cwd)
                .args(argv.iter().skip(1))
                .env_from_parent()
                .envs(env.iter().map(|(k, v)| (k.clone(), v.clone())))
                .stdin(StdinMode::Piped);
            let (process, mut events) =
                baton_exec::spawn_streaming(&spec).map_err(|e| ClientError::Connect {
                    target: argv.join(" "),
                    message: error_chain(&e),
                })?;
            // stdout → the transport's reader; stderr → our stderr; our writes → its stdin.
            let (to_client, client_reader) = tokio::io::duplex(256 * 1024);
            let (client_writer, mut from_client) = tokio::io::duplex(256 * 1024);
            tokio::spawn(async move {
                let mut to_client = to_client;
                while let Some(ev) = events.recv().await {
                    if let ExecEvent::Output { stream, chunk, .. } = ev {
                        if stream == baton_exec::Stream::Stderr {
                            let _ = tokio::io::stderr().write_all(&chunk).await;
                        } else if to_client.write_all(&chunk).await.is_err() {
                            break;
                        }
                    }
                }
                let _ = to_client.shutdown().await;
            });
            let stdin_proc = process.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match from_client.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if stdin_proc.write_stdin(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = stdin_proc.close_stdin().await;
            });
            Ok((
                Transport::stdio(client_reader, client_writer),
                Some(process),
            ))
        }
    }
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}
