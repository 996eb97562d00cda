//! `baton exec`: run one command on an exec server (Baton's or Codex's), stream its output to
//! ours, forward our stdin and Ctrl-C, and exit with its exit code.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use baton_client::{ClientOptions, Endpoint, ExecClient, ProcessEvent};
use baton_protocol::exec::{EnvInherit, EnvPolicy, OutputStream, ProcessSignal, StartParams};
use tokio::io::AsyncReadExt as _;

/// Arguments of `baton exec`.
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// Run in a runner workspace instead: `local:DIR`, `ws://HOST:PORT`, `wss://…` or
    /// `ssh://[USER@]HOST[:PORT][/PATH]` (the same as `baton runner exec --on`, which has
    /// more options).
    #[arg(long, value_name = "DESTINATION", conflicts_with_all = ["server", "stdio_command", "tty"])]
    pub on: Option<String>,
    /// WebSocket URL of the exec server (`ws://HOST:PORT`). Without it (and without
    /// `--stdio-command`) a private local server is started over stdio.
    #[arg(long, value_name = "URL", conflicts_with = "stdio_command")]
    pub server: Option<String>,
    /// A command whose stdio speaks the protocol, e.g. `ssh host baton exec-server --listen stdio`
    /// (split like a POSIX shell would).
    #[arg(long, value_name = "CMD")]
    pub stdio_command: Option<String>,
    /// File holding the bearer token for `--server`.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Working directory of the command on the server (default: the current directory).
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<PathBuf>,
    /// Extra environment variable for the command (repeatable). The command otherwise gets
    /// the server's environment.
    #[arg(long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Run the command on a pseudo-terminal. When our stdin is a terminal it is put in raw mode
    /// for the command's lifetime (keys, Ctrl-C included, go to the remote terminal; restored
    /// on exit) and the remote terminal follows our window size.
    #[arg(long)]
    pub tty: bool,
    /// Send paths as bare absolute paths instead of `file://` URIs (for older Codex servers).
    #[arg(long)]
    pub bare_paths: bool,
    /// Reconnect attempts after the connection drops (with backoff from 100 ms to 5 s).
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub reconnect_attempts: u32,
    /// The program and its arguments.
    #[arg(last = true, required = true, value_name = "PROGRAM ARGS")]
    pub command: Vec<String>,
}

/// Runs `baton exec`.
pub fn main(args: ExecArgs) -> anyhow::Result<ExitCode> {
    if let Some(on) = args.on {
        return crate::runner_cmd::exec_on_main(on, args.cwd, args.env, args.command);
    }
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let result = runtime.block_on(run(args));
    // Our stdin reader may still be blocked in read(2): do not wait for it.
    runtime.shutdown_background();
    result
}

async fn run(args: ExecArgs) -> anyhow::Result<ExitCode> {
    let cwd = match &args.cwd {
        Some(c) if c.is_absolute() => c.clone(),
        Some(c) => std::env::current_dir()
            .context("cannot read the current directory")?
            .join(c),
        None => std::env::current_dir().context("cannot read the current directory")?,
    };
    let mut env = HashMap::new();
    for kv in &args.env {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("--env expects K=V, got `{kv}`");
        };
        env.insert(k.to_owned(), v.to_owned());
    }
    let endpoint = if let Some(url) = &args.server {
        let token = match &args.token_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .with_context(|| format!("cannot read token file {}", f.display()))?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        Endpoint::WebSocket {
            url: url.clone(),
            token,
        }
    } else if let Some(cmd) = &args.stdio_command {
        let argv = shlex::split(cmd).with_context(|| format!("cannot split `{cmd}`"))?;
        if argv.is_empty() {
            bail!("--stdio-command is empty");
        }
        Endpoint::Command {
            argv,
            cwd: None,
            env: Vec::new(),
        }
    } else {
        let me = std::env::current_exe().context("cannot find the baton executable")?;
        Endpoint::Command {
            argv: vec![
                me.to_string_lossy().into_owned(),
                "exec-server".into(),
                "--listen".into(),
                "stdio".into(),
                "--root".into(),
                cwd.to_string_lossy().into_owned(),
            ],
            cwd: None,
            env: Vec::new(),
        }
    };
    let client = ExecClient::connect(
        endpoint,
        ClientOptions {
            client_name: "baton exec".into(),
            uri_paths: !args.bare_paths,
            reconnect: baton_client::ReconnectPolicy {
                max_attempts: args.reconnect_attempts,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .context("cannot connect to the exec server")?;
    let cwd_wire = if !args.bare_paths {
        baton_protocol::exec::WirePath::uri_from_path(&cwd)
    } else {
        baton_protocol::exec::WirePath::from_path(&cwd)
    };
    // Catch Ctrl-C and SIGTERM before the command starts, so none is missed.
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let id = format!("exec-{}", std::process::id());
    let mut process = client
        .start(StartParams {
            process_id: id.as_str().into(),
            argv: args.command.clone(),
            cwd: cwd_wire,
            env,
            env_policy: Some(EnvPolicy {
                inherit: EnvInherit::All,
                ignore_default_excludes: true,
                ..Default::default()
            }),
            tty: args.tty,
            pipe_stdin: !args.tty,
            arg0: None,
        })
        .await
        .with_context(|| format!("cannot start `{}`", args.command.join(" ")))?;

    // A terminal on our side: raw mode (restored when `_raw` drops) and the window size.
    let _raw = if args.tty { RawTerminal::enter() } else { None };
    if _raw.is_some() {
        let mut winch = signal(SignalKind::window_change()).context("cannot handle SIGWINCH")?;
        // The first size is applied before any input is forwarded.
        if let Some((rows, cols)) = window_size() {
            let _ = client.resize(process.id(), rows, cols).await;
        }
        let resize_client = client.clone();
        let resize_id = process.id().clone();
        tokio::spawn(async move {
            while winch.recv().await.is_some() {
                if let Some((rows, cols)) = window_size() {
                    let _ = resize_client.resize(&resize_id, rows, cols).await;
                }
            }
        });
    }

    // stdin → the process; EOF closes its stdin.
    let stdin_client = client.clone();
    let stdin_id = process.id().clone();
    tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stdin.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = stdin_client.write(&stdin_id, Vec::new(), true).await;
                    break;
                }
                Ok(n) => {
                    if stdin_client
                        .write(&stdin_id, buf[..n].to_vec(), false)
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });

    // Ctrl-C → interrupt (a second one kills the group); SIGTERM → terminate.
    let sig_client = client.clone();
    let sig_id = process.id().clone();
    tokio::spawn(async move {
        let mut interrupts = 0;
        loop {
            tokio::select! {
                _ = int.recv() => {
                    interrupts += 1;
                    if interrupts == 1 {
                        let _ = sig_client.signal(&sig_id, ProcessSignal::Interrupt).await;
                    } else {
                        let _ = sig_client.terminate(&sig_id).await;
                    }
                }
                _ = term.recv() => {
                    let _ = sig_client.terminate(&sig_id).await;
                }
            }
        }
    });

    let mut exit_code = None;
    while let Some(event) = process.next_event().await {
        match event {
            ProcessEvent::Output { stream, chunk, .. } => {
                let written = if stream == OutputStream::Stderr {
                    let mut e = std::io::stderr().lock();
                    e.write_all(&chunk).and_then(|()| e.flush())
                } else {
                    let mut o = std::io::stdout().lock();
                    o.write_all(&chunk).and_then(|()| o.flush())
                };
                if written.is_err() {
                    // Our stdout is gone (e.g. `| head`): stop the remote command.
                    let _ = process.terminate().await;
                }
            }
            ProcessEvent::Exited { exit_code: c, .. } => exit_code = Some(c),
            ProcessEvent::Closed { .. } => break,
            ProcessEvent::Failed(message) => bail!("lost the remote command: {message}"),
        }
    }
    client.close();
    let code = exit_code.context("the remote command ended without an exit code")?;
    Ok(ExitCode::from(
        u8::try_from(code.clamp(0, 255)).unwrap_or(255),
    ))
}

/// Our terminal in raw mode while this lives (stdin is fd 0); the saved settings are restored on
/// drop, whatever way `baton exec` ends.
struct RawTerminal {
    saved: nix::sys::termios::Termios,
}

impl RawTerminal {
    /// `None` when stdin is not a terminal or its settings cannot be changed.
    fn enter() -> Option<Self> {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).ok()?;
        Some(Self { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        use nix::sys::termios::{SetArg, tcsetattr};
        let _ = tcsetattr(std::io::stdin(), SetArg::TCSADRAIN, &self.saved);
    }
}

/// Rows and columns of the terminal on stdin, if it is one.
fn window_size() -> Option<(u16, u16)> {
    let mut ws = nix::libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the live struct we pass.
    let r = unsafe { nix::libc::ioctl(0, nix::libc::TIOCGWINSZ, &raw mut ws) };
    (r == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}
