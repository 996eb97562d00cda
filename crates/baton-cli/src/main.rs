//! The `baton` command-line tool.
//!
//! This binary is the only place that sets up logging, colours and exit codes
//! (ARCHITECTURE.md). Each subcommand lives in its own module.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Baton runs commands for people, build tools and coding agents, streams what
/// they print without losing a byte, and never runs the same task twice.
#[derive(Debug, Parser)]
#[command(name = "baton", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a task of the current package, of named packages, or of every package (`-r`).
    Run(Box<run::RunArgs>),
    /// Inspect or clear the local task cache.
    Cache(cache_cmd::CacheArgs),
    /// Serve the exec-server protocol (JSON-RPC over WebSocket or stdio).
    ExecServer(Box<exec_server::ExecServerArgs>),
    /// Run one command on an exec server (or, with `--on`, in a runner workspace) and stream
    /// its output.
    Exec(Box<exec::ExecArgs>),
    /// Workspace snapshots of a runner destination (tar+zstd, content-addressed).
    #[command(subcommand)]
    Snapshot(runner_cmd::SnapshotCommand),
    /// Export files of a runner destination into the artifact store.
    #[command(subcommand)]
    Artifact(runner_cmd::ArtifactCommand),
    /// Workspaces anywhere (local:DIR, ws://, ssh://): exec, snapshots, artifacts.
    Runner(Box<runner_cmd::RunnerArgs>),
    /// Serve the backend: HTTP/WebSocket control plane over runtimes and workers.
    Serve(Box<serve::ServeArgs>),
    /// List, start, stop or interrupt workers of a backend.
    Workers(Box<serve::WorkersArgs>),
    /// Attach to a worker of a backend: live output, typed lines as input, Ctrl-C detaches.
    Attach(Box<serve::AttachArgs>),
}

mod cache_cmd;
mod exec;
mod exec_server;
mod run;
mod runner_cmd;
mod serve;
mod style;

/// Sets up logging to stderr (only the binary does this), filtered by `BATON_LOG`
/// (`tracing` syntax, e.g. `baton_task=debug`), with timestamps since start. With `default`
/// `None`, nothing is logged unless `BATON_LOG` is set.
pub(crate) fn init_logging(default: Option<&str>) {
    let filter = match (
        tracing_subscriber::EnvFilter::try_from_env("BATON_LOG"),
        default,
    ) {
        (Ok(filter), _) => filter,
        (Err(_), Some(default)) => tracing_subscriber::EnvFilter::new(default),
        (Err(_), None) => return,
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .with_writer(std::io::stderr)
        // When stderr is gone (`2>&1 | head`), tracing-subscriber would report the failed
        // write with `eprintln!`, which panics inside whatever task logged.
        .log_internal_errors(false)
        .try_init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::main(*args),
        Command::Cache(args) => cache_cmd::main(args),
        Command::ExecServer(args) => exec_server::main(*args),
        Command::Exec(args) => exec::main(*args),
        Command::Snapshot(cmd) => runner_cmd::snapshot_main(cmd),
        Command::Artifact(cmd) => runner_cmd::artifact_main(cmd),
        Command::Runner(args) => runner_cmd::main(*args),
        Command::Serve(args) => serve::serve_main(*args),
        Command::Workers(args) => serve::workers_main(*args),
        Command::Attach(args) => serve::attach_main(*args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("baton: error: {err:#}");
            ExitCode::from(1)
        }
    }
}
