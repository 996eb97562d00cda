//! `baton run`.
use std::process::ExitCode;

/// Arguments of `baton run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The task to run, or `package#task`.
    pub task: String,
}

/// Runs `baton run`.
pub fn main(_args: RunArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("baton run is being built")
}
