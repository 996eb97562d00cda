//! `baton cache`.
use std::process::ExitCode;

/// Arguments of `baton cache`.
#[derive(Debug, clap::Args)]
pub struct CacheArgs {}

/// Runs `baton cache`.
pub fn main(_args: CacheArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("baton cache is being built")
}
