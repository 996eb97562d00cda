//! `baton-task`: the task runner behind `baton run`.
//!
//! - [`workspace`]: find the workspace root, its packages and their dependency graph.
//! - [`config`]: `baton.json` task configuration and root `taskDefaults`.
//! - [`filter`]: pnpm `--filter` selection.
//! - [`plan`]: the task graph (`dependsOn`, `^task`, `pkg#task`, topological order, cycles).
//! - [`command`]: `a && b` items, direct spawn or `sh -c`.
//! - [`env`]: what a task's environment holds and how it enters the cache key.
//! - [`inputs`]: default and glob inputs, glob outputs.
//! - [`run`]: the scheduler: concurrency, cache lookups, replay, fail-fast, cancellation.

pub mod command;
pub mod config;
pub mod env;
pub mod error;
pub mod filter;
pub mod inputs;
pub mod ipc;
pub mod plan;
pub mod run;
pub mod traced;
pub mod workspace;

pub use error::{LoadError, PlanError};
