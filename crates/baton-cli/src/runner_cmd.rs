//! `baton runner`: the runner API (`baton-runner`) from the command line — run a command in a
//! workspace anywhere, snapshot and restore a workspace, export an artifact. The same code
//! paths the backend uses.
//!
//! DESTINATION is `local:DIR`, `ws://HOST:PORT` / `wss://…` (an exec server; the workspace is
//! `--workspace`, default the current directory) or `ssh://[USER@]HOST[:PORT][/ABS/PATH]`
//! (`baton exec-server --listen stdio` started over ssh; the workspace is the URL path or
//! `--workspace`). Snapshots and artifacts go to `--store` (default `.baton/runner`).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use baton_runner::{
    DestinationOptions, EXEC_SERVER_PROVIDER_ID, ExecServerProvider, LOCAL_PROVIDER_ID,
    LocalProvider, RunnerArtifactExportRequest, RunnerCommandRequest, RunnerDestination,
    RunnerEvent, RunnerProvider, RunnerSecretRef, RunnerSession, RunnerSignal, RunnerSnapshotRef,
    RunnerStream, SshProvider, parse_destination,
};
use tokio::io::AsyncReadExt as _;

/// Arguments of `baton runner`.
#[derive(Debug, clap::Args)]
pub struct RunnerArgs {
    #[command(subcommand)]
    command: RunnerCommand,
}

#[derive(Debug, clap::Subcommand)]
enum RunnerCommand {
    /// Run a command in the destination's workspace, streaming its output; exits with its code.
    Exec(ExecOnArgs),
    /// Workspace snapshots (tar+zstd, content-addressed).
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Artifacts (files or directories copied into the artifact store).
    #[command(subcommand)]
    Artifact(ArtifactCommand),
}

/// `baton snapshot …` (also `baton runner snapshot …`).
#[derive(Debug, clap::Subcommand)]
pub enum SnapshotCommand {
    /// Archive the workspace into the snapshot store; prints the snapshot ref (JSON).
    Create(Target),
    /// Restore a snapshot (by id, from the store) into the destination's workspace.
    Restore {
        #[command(flatten)]
        target: Target,
        /// The snapshot id (64 hex digits).
        snapshot_id: String,
    },
}

/// `baton artifact …` (also `baton runner artifact …`).
#[derive(Debug, clap::Subcommand)]
pub enum ArtifactCommand {
    /// Copy a file (or, with `--recursive`, a directory as tar+zstd) into the artifact store;
    /// prints the result (JSON: id, size, blake3).
    Export {
        #[command(flatten)]
        target: Target,
        /// Path in the workspace.
        path: PathBuf,
        /// Export a directory.
        #[arg(long)]
        recursive: bool,
    },
}

/// Where to work.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// `local:DIR`, `ws://HOST:PORT`, `wss://…` or `ssh://[USER@]HOST[:PORT][/PATH]`.
    #[arg(long = "on", value_name = "DESTINATION")]
    on: String,
    /// Workspace on the runner for ws:// and ssh:// (absolute; default: the current
    /// directory for ws://).
    #[arg(long, value_name = "DIR")]
    workspace: Option<PathBuf>,
    /// Extra read root on the runner (repeatable).
    #[arg(long = "read-root", value_name = "DIR")]
    read_roots: Vec<PathBuf>,
    /// Secret id of the exec server's bearer token (read from `BATON_SECRET_<ID>`).
    #[arg(long, value_name = "ID")]
    token_secret: Option<String>,
    /// `baton` binary on an ssh host.
    #[arg(long, value_name = "PATH")]
    remote_baton: Option<String>,
    /// Snapshot and artifact store on this host.
    #[arg(long, value_name = "DIR", default_value = ".baton/runner")]
    store: PathBuf,
}

#[derive(Debug, clap::Args)]
struct ExecOnArgs {
    #[command(flatten)]
    target: Target,
    /// Working directory, relative to the workspace (or absolute under it).
    #[arg(long, value_name = "DIR")]
    cwd: Option<PathBuf>,
    /// Environment variable for the command (repeatable); it otherwise gets only `PATH`.
    #[arg(long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// The program and its arguments.
    #[arg(last = true, required = true, value_name = "PROGRAM ARGS")]
    command: Vec<String>,
}

/// Runs `baton snapshot …`.
pub fn snapshot_main(command: SnapshotCommand) -> anyhow::Result<ExitCode> {
    main(RunnerArgs {
        command: RunnerCommand::Snapshot(command),
    })
}

/// Runs `baton artifact …`.
pub fn artifact_main(command: ArtifactCommand) -> anyhow::Result<ExitCode> {
    main(RunnerArgs {
        command: RunnerCommand::Artifact(command),
    })
}

/// Runs `baton exec --on DESTINATION -- CMD…`: the command in a runner session's workspace,
/// with the other `Target` settings at their defaults.
pub fn exec_on_main(
    on: String,
    cwd: Option<PathBuf>,
    env: Vec<String>,
    command: Vec<String>,
) -> anyhow::Result<ExitCode> {
    main(RunnerArgs {
        command: RunnerCommand::Exec(ExecOnArgs {
            target: Target {
                on,
                workspace: None,
                read_roots: Vec::new(),
                token_secret: None,
                remote_baton: None,
                store: PathBuf::from(".baton/runner"),
            },
            cwd,
            env,
            command,
        }),
    })
}

/// Runs `baton runner`.
pub fn main(args: RunnerArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let result = runtime.block_on(run(args));
    // Our stdin reader may still be blocked in read(2): do not wait for it.
    runtime.shutdown_background();
    result
}

/// A provider and destination for `target`.
fn resolve(target: &Target) -> anyhow::Result<(Arc<dyn RunnerProvider>, RunnerDestination)> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let store = if target.store.is_absolute() {
        target.store.clone()
    } else {
        cwd.join(&target.store)
    };
    let is_ws = target.on.starts_with("ws://") || target.on.starts_with("wss://");
    let options = DestinationOptions {
        base_dir: cwd.clone(),
        // ws:// defaults to the current directory; ssh:// needs a path or --workspace.
        workspace: target
            .workspace
            .clone()
            .or_else(|| is_ws.then(|| cwd.clone())),
        read_roots: target.read_roots.clone(),
        token: target
            .token_secret
            .as_ref()
            .map(|id| RunnerSecretRef { id: id.clone() }),
        remote_baton: target.remote_baton.clone(),
    };
    let destination = parse_destination(&target.on, &target.on, &options)?;
    let provider: Arc<dyn RunnerProvider> = match destination.provider_id.as_str() {
        LOCAL_PROVIDER_ID => Arc::new(LocalProvider::new(&store)?),
        EXEC_SERVER_PROVIDER_ID => Arc::new(ExecServerProvider::new(&store)?),
        _ => Arc::new(SshProvider::new(&store)?),
    };
    Ok((provider, destination))
}

async fn run(args: RunnerArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        RunnerCommand::Exec(exec) => run_exec(exec).await,
        RunnerCommand::Snapshot(SnapshotCommand::Create(target)) => {
            let (provider, destination) = resolve(&target)?;
            let session = provider.create_session(destination).await?;
            let snapshot = session.snapshot().await;
            session.close().await?;
            println!("{}", serde_json::to_string(&snapshot?)?);
            Ok(ExitCode::SUCCESS)
        }
        RunnerCommand::Snapshot(SnapshotCommand::Restore {
            target,
            snapshot_id,
        }) => {
            let (provider, destination) = resolve(&target)?;
            let snapshot = RunnerSnapshotRef {
                provider_id: provider.id(),
                snapshot_id,
                metadata: serde_json::Value::Null,
            };
            let session = provider
                .create_session_from_snapshot(destination, snapshot)
                .await?;
            session.close().await?;
            Ok(ExitCode::SUCCESS)
        }
        RunnerCommand::Artifact(ArtifactCommand::Export {
            target,
            path,
            recursive,
        }) => {
            let (provider, destination) = resolve(&target)?;
            let session = provider.create_session(destination).await?;
            let result = session
                .export_artifact(RunnerArtifactExportRequest { path, recursive })
                .await;
            session.close().await?;
            println!("{}", serde_json::to_string(&result?)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn run_exec(args: ExecOnArgs) -> anyhow::Result<ExitCode> {
    let (provider, destination) = resolve(&args.target)?;
    let session = provider.create_session(destination).await?;
    let result = exec_in(&*session, &args).await;
    session.close().await?;
    result
}

async fn exec_in(session: &dyn RunnerSession, args: &ExecOnArgs) -> anyhow::Result<ExitCode> {
    let Some((program, rest)) = args.command.split_first() else {
        bail!("no command given");
    };
    let mut request =
        RunnerCommandRequest::new("baton-runner-exec", program.clone(), rest.to_vec());
    request.cwd = args.cwd.clone();
    for kv in &args.env {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("--env expects K=V, got `{kv}`");
        };
        request.env.push((k.to_owned(), v.to_owned()));
    }
    // Handle Ctrl-C from before the command starts, so none is missed (nor kills us while
    // the command runs on).
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot handle SIGINT")?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot handle SIGTERM")?;
    let mut process = session.spawn(request).await?;
    let (stdin_tx, mut stdin_rx) = tokio::sync::mpsc::channel::<Option<Vec<u8>>>(4);
    tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stdin.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = stdin_tx.send(None).await;
                    break;
                }
                Ok(n) => {
                    if stdin_tx.send(Some(buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut stdin_open = true;
    let mut code = None;
    let mut interrupts = 0u32;
    loop {
        tokio::select! {
            event = process.next_event() => match event {
                Some(RunnerEvent::Output { stream, chunk, .. }) => {
                    if stream == RunnerStream::Stderr {
                        let mut err = std::io::stderr().lock();
                        err.write_all(&chunk)?;
                        err.flush()?;
                    } else {
                        let mut out = std::io::stdout().lock();
                        out.write_all(&chunk)?;
                        out.flush()?;
                    }
                }
                Some(RunnerEvent::Exited { exit_code, .. }) => code = Some(exit_code),
                Some(RunnerEvent::Closed { .. }) | None => break,
                Some(RunnerEvent::Failed { message }) => bail!("command lost: {message}"),
            },
            input = stdin_rx.recv(), if stdin_open => match input {
                Some(Some(bytes)) => {
                    if process.write_stdin(&bytes).await.is_err() {
                        stdin_open = false;
                    }
                }
                _ => {
                    stdin_open = false;
                    let _ = process.close_stdin().await;
                }
            },
            _ = terminate.recv() => {
                session.cancel_command(process.id()).await?;
            }
            _ = interrupt.recv() => {
                // First Ctrl-C: SIGINT to the command's process group, as a terminal would;
                // the next (or a runner that cannot signal): kill the whole tree.
                interrupts += 1;
                let interrupted = interrupts == 1
                    && session
                        .signal_command(process.id(), RunnerSignal::Interrupt)
                        .await
                        .is_ok();
                if !interrupted {
                    session.cancel_command(process.id()).await?;
                }
            }
        }
    }
    let code = code.unwrap_or(1);
    Ok(ExitCode::from(
        u8::try_from(code.clamp(0, 255)).unwrap_or(1),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(on: &str) -> Target {
        Target {
            on: on.into(),
            workspace: None,
            read_roots: vec![],
            token_secret: Some("tok".into()),
            remote_baton: None,
            store: std::env::temp_dir().join("baton-runner-cmd-test-store"),
        }
    }

    #[test]
    fn destinations_parse() {
        let (p, d) = resolve(&target("local:/tmp/ws")).expect("local");
        assert_eq!(
            (p.id().as_str(), d.config["workspace"].as_str()),
            ("local", Some("/tmp/ws"))
        );
        let (p, d) = resolve(&target("ws://127.0.0.1:7070")).expect("ws");
        assert_eq!(p.id(), "exec-server");
        assert_eq!(d.config["token"]["id"], "tok");
        let (p, d) = resolve(&target("ssh://me@host:2222/srv/ws")).expect("ssh");
        assert_eq!(p.id(), "ssh");
        assert_eq!(d.config["destination"], "me@host");
        assert_eq!(d.config["port"], 2222);
        assert_eq!(d.config["workspace"], "/srv/ws");
        assert!(resolve(&target("ssh://host")).is_err());
        assert!(resolve(&target("ftp://x")).is_err());
    }
}
