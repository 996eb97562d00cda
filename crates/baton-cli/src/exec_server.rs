//! `baton exec-server`: the exec server of DESIGN.md §2 over WebSocket or stdio.
//!
//! Stdout carries only what is promised: the bound `ws://HOST:PORT` line (WebSocket), or the
//! protocol itself (stdio). Logs go to stderr (`BATON_LOG=debug` for more).

use std::net::{SocketAddr, ToSocketAddrs as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use baton_server::{ExecServer, ListenOptions, ServerConfig};

/// Arguments of `baton exec-server`.
#[derive(Debug, clap::Args)]
pub struct ExecServerArgs {
    /// `ws://HOST:PORT` (port 0 picks a free one; the bound URL is printed on stdout) or
    /// `stdio` (newline-delimited JSON on stdin/stdout; EOF on stdin shuts down).
    #[arg(long, default_value = "ws://127.0.0.1:0")]
    pub listen: String,
    /// A directory that `cwd` and file paths must lie under (repeatable; default: the current
    /// directory). Symlinks are resolved.
    #[arg(long = "root", value_name = "DIR")]
    pub roots: Vec<PathBuf>,
    /// File holding the bearer token clients must send; required off loopback.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Accept WebSocket requests carrying this `Origin` (repeatable); others with an Origin
    /// header are refused with 403.
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    pub allowed_origins: Vec<String>,
    /// How long a session whose connection dropped may be resumed (e.g. `60s`, `500ms`, `5m`).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub session_ttl: Duration,
    /// How long a closed process stays readable before its id is freed.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub closed_retention: Duration,
    /// Output retained per process (e.g. `8MiB`, `65536`).
    #[arg(long, default_value = "8MiB", value_parser = parse_size)]
    pub retained_bytes: usize,
    /// Largest accepted JSON-RPC message.
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    pub max_message_bytes: usize,
}

/// Parses `250ms`, `60s`, `5m`, `1h` or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration `{s}`"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "invalid duration unit in `{s}` (use ms, s, m or h)"
            ));
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("invalid duration `{s}`: {e}"))
}

/// Parses `65536`, `64KiB`, `8MiB`, `1GiB` (also `K`, `M`, `G`, `KB`, `MB`, `GB` as powers of 1024).
fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let n: usize = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid size `{s}`"))?;
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("invalid size unit in `{s}`")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size `{s}` is too large"))
}

/// Runs `baton exec-server`.
pub fn main(args: ExecServerArgs) -> anyhow::Result<ExitCode> {
    crate::init_logging(Some("warn"));
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let result = runtime.block_on(serve(args));
    baton_exec::kill_all();
    runtime.shutdown_background();
    result
}

async fn serve(args: ExecServerArgs) -> anyhow::Result<ExitCode> {
    let token = match &args.token_file {
        Some(f) => {
            let t = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read token file {}", f.display()))?;
            let t = t.trim().to_owned();
            if t.is_empty() {
                bail!("token file {} is empty", f.display());
            }
            Some(t)
        }
        None => None,
    };
    let server = ExecServer::new(ServerConfig {
        roots: args.roots.clone(),
        retained_bytes: args.retained_bytes,
        session_ttl: args.session_ttl,
        closed_retention: args.closed_retention,
        max_message_bytes: args.max_message_bytes,
    })
    .context("cannot start the exec server")?;
    let shutdown = server.clone();
    // Registered before anything is served, so no early signal is missed.
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("signal received, shutting down");
        shutdown.shutdown();
    });
    if args.listen == "stdio" {
        server.serve_stdio().await;
        return Ok(ExitCode::SUCCESS);
    }
    let Some(hostport) = args.listen.strip_prefix("ws://") else {
        bail!(
            "unsupported --listen `{}`: use ws://HOST:PORT or stdio",
            args.listen
        );
    };
    let hostport = hostport.trim_end_matches('/');
    let addr: SocketAddr = hostport
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve `{hostport}`"))?
        .next()
        .with_context(|| format!("`{hostport}` resolves to no address"))?;
    let listener = server
        .bind_ws(
            addr,
            ListenOptions {
                token,
                allowed_origins: args.allowed_origins.clone(),
            },
        )
        .await?;
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", listener.url()).context("cannot write the URL to stdout")?;
        out.flush().context("cannot write the URL to stdout")?;
    }
    tracing::info!(url = %listener.url(), roots = ?server.roots(), "exec server listening");
    listener.run().await;
    server.shutdown();
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("5 parsecs").is_err());
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("1k"), Ok(1024));
        assert!(parse_size("x").is_err());
    }
}
