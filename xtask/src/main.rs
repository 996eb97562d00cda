//! Developer tasks: `cargo xtask bench`.
//!
//! `cargo xtask bench [--packages 50,200] [--runs N] [--cold-runs N] [--only baton,turbo,nx,vp,hand]
//! [--out BENCHMARKS.md] [--work-dir DIR] [--concurrency N] [--baton PATH] [--baton-rev REV]`
//! generates pnpm workspaces, installs the peers with npm into the work dir, times them and
//! writes the report.

mod bench;
mod proc;
mod report;
mod trace_bench;
mod workspace;

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

/// Repository root (the parent of this crate).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

#[derive(Parser)]
#[command(name = "xtask", about = "Baton developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Time zero-config caching: tracing overhead on tsc and esbuild, and the hit check of
    /// 10,000 inferred inputs.
    BenchTrace {
        /// TypeScript files in the tsc/esbuild project.
        #[arg(long, default_value_t = 400)]
        files: usize,
        /// Files read by the hit-check task.
        #[arg(long, default_value_t = 10_000)]
        inputs: usize,
        /// Repetitions (median reported).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Report path.
        #[arg(long)]
        out: Option<PathBuf>,
        /// The baton binary (default: target/release/baton).
        #[arg(long)]
        baton: Option<PathBuf>,
    },
    /// Time Baton, turbo, nx, vp and a hand scheduler on generated pnpm workspaces.
    Bench {
        /// Workspace sizes, comma-separated.
        #[arg(long, default_value = "50,200", value_delimiter = ',')]
        packages: Vec<usize>,
        /// Repetitions of the full-hit and leaf-changed measurements.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Repetitions of the cold measurement.
        #[arg(long, default_value_t = 3)]
        cold_runs: usize,
        /// Tools to measure, comma-separated (baton,turbo,nx,vp,hand). Default: all peers and
        /// hand, plus baton when its binary exists and `baton run` works.
        #[arg(long, value_delimiter = ',')]
        only: Option<Vec<String>>,
        /// Report path.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Scratch directory for the npm-installed tools and generated workspaces.
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// Parallelism given to every tool (default: number of cores).
        #[arg(long)]
        concurrency: Option<usize>,
        /// The baton binary (default: target/release/baton).
        #[arg(long)]
        baton: Option<PathBuf>,
        /// What the baton binary was built from (e.g. a commit), recorded in the report.
        #[arg(long)]
        baton_rev: Option<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::BenchTrace {
            files,
            inputs,
            runs,
            out,
            baton,
        } => {
            let root = repo_root();
            trace_bench::run_bench(&trace_bench::Options {
                files: files.max(2),
                inputs,
                runs: runs.max(1),
                out: out.unwrap_or_else(|| root.join("BENCHMARKS.md")),
                work_dir: root.join("target/bench-work"),
                baton: baton.unwrap_or_else(|| root.join("target/release/baton")),
                repo: root,
            })
        }
        Cmd::Bench {
            packages,
            runs,
            cold_runs,
            only,
            out,
            work_dir,
            concurrency,
            baton,
            baton_rev,
        } => {
            let root = repo_root();
            let only = only
                .map(|names| names.iter().map(|n| bench::Tool::parse(n)).collect())
                .transpose()?;
            if packages.is_empty() {
                bail!("--packages needs at least one size");
            }
            let concurrency = match concurrency {
                Some(c) => c,
                None => std::thread::available_parallelism()
                    .context("detecting the number of cores")?
                    .get(),
            };
            bench::run(bench::Options {
                sizes: packages,
                runs,
                cold_runs,
                only,
                out: out.unwrap_or_else(|| root.join("BENCHMARKS.md")),
                work_dir: work_dir.unwrap_or_else(|| root.join("target/bench-work")),
                concurrency,
                baton: baton.unwrap_or_else(|| root.join("target/release/baton")),
                baton_rev,
            })
        }
    }
}
