//! `baton cache`: statistics and cleaning of the local task cache.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use baton_cache::CacheStore;
use baton_task::workspace::Workspace;

/// Arguments of `baton cache`.
#[derive(Debug, clap::Args)]
pub struct CacheArgs {
    #[command(subcommand)]
    command: CacheCommand,

    /// Cache directory [default: `.baton/cache` at the workspace root].
    #[arg(long, env = "BATON_CACHE_DIR", value_name = "DIR", global = true)]
    cache_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum CacheCommand {
    /// Show the number of entries and the size of the cache.
    Stats {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Delete every cache entry and blob.
    Clean,
}

fn cache_dir(args: &CacheArgs) -> anyhow::Result<PathBuf> {
    if let Some(d) = &args.cache_dir {
        return Ok(d.clone());
    }
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let ws = Workspace::discover(&cwd)?;
    Ok(ws.root.join(".baton").join("cache"))
}

/// Runs `baton cache`.
pub fn main(args: CacheArgs) -> anyhow::Result<ExitCode> {
    let dir = cache_dir(&args)?;
    match args.command {
        CacheCommand::Stats { json } => {
            if !dir.exists() {
                if json {
                    println!("{{\"dir\":{},\"schemas\":[]}}", serde_json::json!(dir));
                } else {
                    println!("no cache at {}", dir.display());
                }
                return Ok(ExitCode::SUCCESS);
            }
            let store = CacheStore::open(&dir)
                .with_context(|| format!("cannot open the cache at {}", dir.display()))?;
            let stats = store.stats()?;
            if json {
                let schemas: Vec<serde_json::Value> = stats
                    .schemas
                    .iter()
                    .map(|s| {
                        serde_json::json!({
                            "name": s.name, "current": s.current, "entries": s.entries,
                            "tasks": s.tasks, "blobs": s.blobs, "bytes": s.bytes,
                        })
                    })
                    .collect();
                let v = serde_json::json!({ "dir": stats.dir, "schemas": schemas });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("cache: {}", stats.dir.display());
                for s in &stats.schemas {
                    let what = if s.current { "current" } else { "old, unused" };
                    println!(
                        "  {} ({what}): {} entries, {} tasks, {} blobs, {}",
                        s.name,
                        s.entries.map_or("?".into(), |n| n.to_string()),
                        s.tasks.map_or("?".into(), |n| n.to_string()),
                        s.blobs,
                        human_bytes(s.bytes)
                    );
                }
            }
        }
        CacheCommand::Clean => {
            if !dir.exists() {
                println!("no cache at {}", dir.display());
                return Ok(ExitCode::SUCCESS);
            }
            let store = CacheStore::open(&dir)
                .with_context(|| format!("cannot open the cache at {}", dir.display()))?;
            let cleaned = store.clean()?;
            println!(
                "removed {} entries, freed {}",
                cleaned.entries,
                human_bytes(cleaned.bytes)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `1536` → `1.5 KiB`.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
