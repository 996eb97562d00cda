//! The scheduler: runs a [`Plan`] with a concurrency limit, cache lookups, replay, fail-fast and
//! cancellation.
//!
//! Each task's command items run in order; each item is looked up in the cache first:
//! - hit: its outputs are restored (files already identical are skipped) and its logs replayed;
//! - miss: it runs (own process group, output streamed to the [`Reporter`] and recorded), and on
//!   exit 0 its outputs and logs are stored: right away for a walked task, after the task's last
//!   item for a traced one (so what a later item writes is known when an earlier item's inputs
//!   are fingerprinted, and a directory holding any of the task's outputs is not a listing
//!   input of any item).
//!
//! A task's inputs are its package's files (see [`crate::inputs`]) plus the outputs of the tasks it
//! depends on, so a change that alters a dependency's output is a miss of the dependents naming the
//! changed file, plus a stamp of each dependency's own cache key, so a change further upstream
//! (one a dependency does not pass on in its outputs, but a bundler reads) is a miss too. On a
//! failure (fail-fast) or cancellation every running process group is killed and
//! nothing new starts.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use baton_cache::{
    CacheStore, CurrentInputs, Digest, EnvFingerprint, InputFingerprint, LogChunk, Lookup,
    MissReason, NewEntry, PathState, Probe, SpawnFingerprint, fingerprint_paths,
};
use baton_exec::{CommandSpec, ProcessEvent, SpawnOptions, StdinMode, Stream};
use tokio::sync::{Notify, mpsc};

use crate::env::{EnvKeyPart, TaskEnv};
use crate::inputs::{FileSelection, IgnoreCache};
use crate::ipc::{IpcServer, trackable_env, write_node_client};
use crate::plan::{Plan, PlannedTask};
use crate::traced::{TracedAccesses, classify, fingerprint_traced};
use crate::workspace::{Workspace, rel_slash};

/// How a task item relates to the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheStatus {
    /// Replayed from the cache.
    Hit,
    /// Ran; the reason says why the cache could not serve it.
    Miss(String),
    /// Ran without the cache; the reason says why.
    Disabled(String),
}

impl CacheStatus {
    /// `hit`, `miss` or `disabled` (the `--report` vocabulary).
    pub fn kind(&self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss(_) => "miss",
            CacheStatus::Disabled(_) => "disabled",
        }
    }

    /// The reason, empty for a hit.
    pub fn reason(&self) -> &str {
        match self {
            CacheStatus::Hit => "",
            CacheStatus::Miss(r) | CacheStatus::Disabled(r) => r,
        }
    }
}

/// Which stream a chunk of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Progress of a run, delivered to a [`Reporter`] in order per task item.
#[derive(Debug, Clone)]
pub enum RunEvent {
    /// An item starts (after its cache lookup).
    ItemStart {
        /// Task index in the plan.
        task: usize,
        /// Item index within the task.
        item: usize,
        /// Number of items of the task.
        items: usize,
        /// The command text of the item.
        command: String,
        /// Cache status.
        status: CacheStatus,
    },
    /// Output of an item (live, or replayed on a hit).
    Output {
        /// Task index.
        task: usize,
        /// Item index.
        item: usize,
        /// Stream.
        stream: OutStream,
        /// Bytes, as written by the process.
        bytes: Vec<u8>,
    },
    /// Extra information (`-v`): restore counts, why a result was not stored.
    Note {
        /// Task index.
        task: usize,
        /// Item index.
        item: usize,
        /// The note.
        message: String,
    },
    /// An item finished.
    ItemEnd {
        /// Task index.
        task: usize,
        /// The result.
        result: ItemResult,
    },
    /// A task was not run because a dependency failed or the run was cancelled.
    Skipped {
        /// Task index.
        task: usize,
    },
}

/// Receives run events. Called from several threads; must not block for long.
pub trait Reporter: Send + Sync {
    /// One event.
    fn event(&self, event: RunEvent);
}

/// The result of one task item.
#[derive(Debug, Clone)]
pub struct ItemResult {
    /// Task index in the plan.
    pub task: usize,
    /// `pkg#task`.
    pub task_id: String,
    /// Item index.
    pub item: usize,
    /// Cache status.
    pub cache: CacheStatus,
    /// Exit code (0 on a hit; 128+N when killed by signal N).
    pub exit_code: i32,
    /// Whether Baton killed it (fail-fast after another task failed, or Ctrl-C).
    pub interrupted: bool,
    /// Wall time of this item now (replay time on a hit).
    pub duration: Duration,
    /// On a hit: the original run's duration (time saved).
    pub saved: Duration,
}

/// Summary of a whole run.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    /// Every item that ran or was replayed, in completion order.
    pub items: Vec<ItemResult>,
    /// Tasks not run (dependency failed, fail-fast, cancelled).
    pub skipped: Vec<usize>,
    /// Exit code of the first failing item, if any.
    pub failure: Option<i32>,
    /// Whether the run was cancelled (Ctrl-C).
    pub cancelled: bool,
    /// Wall time of the whole run.
    pub duration: Duration,
}

/// Options of a run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Maximum number of task items running at once (≥ 1).
    pub concurrency: usize,
    /// Ignore dependencies between tasks and run everything at once.
    pub parallel: bool,
    /// Use the cache (lookup and store). `--no-cache` turns both off.
    pub use_cache: bool,
    /// Stop starting tasks and kill running ones after the first failure.
    pub fail_fast: bool,
    /// The cache directory (`.baton/cache` at the workspace root unless overridden).
    pub cache_dir: PathBuf,
    /// Whether child processes may print colours (FORCE_COLOR is set for them).
    pub force_color: bool,
    /// The parent environment the task environments are built from.
    pub parent_env: Vec<(OsString, OsString)>,
    /// Trace task processes to find inputs and outputs (when the platform allows it).
    pub trace: bool,
}

/// Cancels a run from outside (Ctrl-C): running process groups are killed, nothing new starts.
#[derive(Debug, Clone, Default)]
pub struct CancelHandle {
    inner: Arc<CancelInner>,
}

#[derive(Debug, Default)]
struct CancelInner {
    cancelled: AtomicBool,
    notify: Notify,
}

impl CancelHandle {
    /// A handle that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels the run.
    pub fn cancel(&self) {
        self.inner.cancelled.store(true, Ordering::SeqCst);
        self.inner.notify.notify_waiters();
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::SeqCst)
    }

    async fn cancelled(&self) {
        loop {
            let notified = self.inner.notify.notified();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

/// Errors that stop a run before any task starts.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The cache store could not be opened.
    #[error("cannot open the cache at {}", dir.display())]
    Cache {
        /// The cache directory.
        dir: PathBuf,
        /// Cause.
        #[source]
        source: baton_cache::CacheError,
    },
    /// An `input`/`output` glob is malformed.
    #[error(transparent)]
    Plan(#[from] crate::PlanError),
}

struct Shared {
    ws: Arc<Workspace>,
    plan: Arc<Plan>,
    opts: RunOptions,
    store: Option<Arc<CacheStore>>,
    reporter: Arc<dyn Reporter>,
    selections: Vec<FileSelection>,
    /// Nested package directories to skip when walking a package (for the root package).
    nested: Vec<Vec<PathBuf>>,
    /// `.gitignore` matchers, shared by every task's input walk.
    ignores: IgnoreCache,
    /// Per task: how inputs are found, or why the task cannot be cached.
    modes: Vec<Result<InputMode, String>>,
    /// Lookups started ahead of time for traced tasks (taken by the task when it starts).
    early: Vec<std::sync::Mutex<Option<tokio::task::JoinHandle<Looked>>>>,
    /// The JS tool client (`VP_RUN_NODE_CLIENT_PATH`), written on first use.
    node_client: std::sync::OnceLock<Option<PathBuf>>,
    /// External cancellation (Ctrl-C).
    cancel: CancelHandle,
    /// Stops everything: set on cancellation and, under fail-fast, after the first failure.
    stop: CancelHandle,
}

/// What a finished task hands to its dependents.
#[derive(Debug, Clone)]
struct TaskOutcome {
    ok: bool,
    /// Output files (workspace-relative), for dependents' inputs.
    outputs: Vec<String>,
    /// `pkg#task`.
    id: String,
    /// This task and every task below it were replayed and restoring wrote nothing: the file
    /// system is as it was before the run started.
    clean: bool,
    /// A digest standing for this task's result (its cache keys), used as a dependent's input
    /// when the task has no declared outputs.
    stamp: Digest,
}

impl Shared {
    /// Writes the JS tool client into the cache directory once per run; `None` if that fails
    /// (tools built on vite-task-client then run as outside Baton).
    fn node_client(&self) -> Option<&Path> {
        self.node_client
            .get_or_init(|| write_node_client(&self.opts.cache_dir.join("tool-client")).ok())
            .as_deref()
    }
}

/// The result reported for a task whose run panicked: exit code 1, not cached.
fn panicked_result(task: usize, task_id: String) -> ItemResult {
    ItemResult {
        task,
        task_id,
        item: 0,
        cache: CacheStatus::Disabled("internal error".into()),
        exit_code: 1,
        interrupted: false,
        duration: Duration::ZERO,
        saved: Duration::ZERO,
    }
}

impl TaskOutcome {
    fn failed() -> Self {
        TaskOutcome {
            ok: false,
            outputs: Vec::new(),
            id: String::new(),
            clean: false,
            stamp: Digest([0; 32]),
        }
    }
}

/// Starts the lookups of every cacheable traced task at once, a few at a time on the blocking
/// pool, instead of layer by layer: a traced task's inputs are whatever its recorded paths hold
/// now, so its lookup stays valid unless a dependency changes a file (the task then looks up
/// again). A full hit is then bounded by the hashing, not by the depth of the graph.
fn start_early_lookups(sh: &Arc<Shared>) {
    if sh.store.is_none() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let permits = Arc::new(tokio::sync::Semaphore::new(cores));
    for (i, t) in sh.plan.tasks.iter().enumerate() {
        if sh.modes[i] != Ok(InputMode::Traced) || t.config.cache == Some(false) {
            continue;
        }
        let sh2 = sh.clone();
        let permits = permits.clone();
        let handle = tokio::spawn(async move {
            let _permit = permits.acquire_owned().await.expect("never closed");
            let sh3 = sh2.clone();
            tokio::task::spawn_blocking(move || lookup_items(&sh3, i, &DepInputs::default(), true))
                .await
                .expect("lookup does not panic")
        });
        *sh.early[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
    }
}

/// Messages from running tasks to the scheduler.
enum SchedMsg {
    /// The task's processes are done; its concurrency slot is free (it may still be storing).
    SlotFree(usize),
    /// The task is finished.
    Done(usize, TaskOutcome, Vec<ItemResult>),
}

/// A task's concurrency slot, released once (explicitly, or when the task is done).
struct Slot {
    tx: mpsc::UnboundedSender<SchedMsg>,
    task: usize,
    released: AtomicBool,
}

impl Slot {
    fn release(&self) {
        if !self.released.swap(true, Ordering::SeqCst) {
            let _ = self.tx.send(SchedMsg::SlotFree(self.task));
        }
    }
}

/// Runs a plan to completion. Items stream their events to `reporter`.
pub async fn run_plan(
    ws: Arc<Workspace>,
    plan: Arc<Plan>,
    opts: RunOptions,
    reporter: Arc<dyn Reporter>,
    cancel: CancelHandle,
) -> Result<RunSummary, RunError> {
    let started = Instant::now();
    let mut selections: Vec<FileSelection> = Vec::with_capacity(plan.tasks.len());
    // Tasks usually share their globs (`taskDefaults`): compile each distinct pair once.
    let mut compiled: Vec<(usize, FileSelection)> = Vec::new();
    for t in &plan.tasks {
        let (input, output) = (t.config.input.as_deref(), t.config.output.as_deref());
        let same = |&&(i, _): &&(usize, FileSelection)| {
            let c = &plan.tasks[i].config;
            c.input.as_deref() == input && c.output.as_deref() == output
        };
        if let Some((_, sel)) = compiled.iter().find(same) {
            selections.push(sel.clone());
            continue;
        }
        let sel = FileSelection::new(input, output).map_err(|(field, glob, message)| {
            crate::PlanError::BadGlob {
                task: t.id.clone(),
                field,
                glob,
                message,
            }
        })?;
        compiled.push((t.index, sel.clone()));
        selections.push(sel);
    }
    // Packages nested inside a task's package (the root package usually) are not its files.
    // In sorted order, the packages inside a directory follow it directly.
    let mut dirs: Vec<&PathBuf> = ws.packages.iter().map(|p| &p.dir).collect();
    dirs.sort();
    let nested: Vec<Vec<PathBuf>> = plan
        .tasks
        .iter()
        .map(|t| {
            let dir = &ws.packages[t.package].dir;
            let start = dirs.partition_point(|d| *d <= dir);
            dirs[start..]
                .iter()
                .take_while(|d| d.starts_with(dir))
                .map(|d| (*d).clone())
                .collect()
        })
        .collect();
    let tracing = if opts.trace {
        baton_trace::is_available().map_err(|e| e.to_string())
    } else {
        Err("tracing turned off (BATON_TRACE_DISABLE or --no-trace)".to_owned())
    };
    let modes: Vec<Result<InputMode, String>> = selections
        .iter()
        .map(|sel| match (&tracing, sel.auto(), sel.has_outputs()) {
            (_, false, _) => Ok(InputMode::Walked),
            (Ok(()), true, _) => Ok(InputMode::Traced),
            (Err(_), true, true) => Ok(InputMode::Walked),
            (Err(why), true, false) => Err(format!(
                "file access tracing is unavailable ({why}); declare `output` globs to cache this task without it"
            )),
        })
        .collect();
    let store = if opts.use_cache && plan.tasks.iter().any(|t| t.config.cache != Some(false)) {
        let dir = opts.cache_dir.clone();
        let s = tokio::task::spawn_blocking(move || CacheStore::open(&dir))
            .await
            .expect("cache open does not panic")
            .map_err(|source| RunError::Cache {
                dir: opts.cache_dir.clone(),
                source,
            })?;
        Some(Arc::new(s))
    } else {
        None
    };
    let shared = Arc::new(Shared {
        ws,
        plan: plan.clone(),
        opts,
        store,
        reporter,
        selections,
        nested,
        ignores: IgnoreCache::new(),
        modes,
        early: (0..plan.tasks.len())
            .map(|_| std::sync::Mutex::new(None))
            .collect(),
        node_client: std::sync::OnceLock::new(),
        cancel: cancel.clone(),
        stop: CancelHandle::new(),
    });
    start_early_lookups(&shared);
    {
        let (cancel, stop) = (cancel.clone(), shared.stop.clone());
        tokio::spawn(async move {
            cancel.cancelled().await;
            stop.cancel();
        });
    }

    let n = plan.tasks.len();
    let mut remaining: Vec<usize> = plan
        .tasks
        .iter()
        .map(|t| {
            if shared.opts.parallel {
                0
            } else {
                t.deps.len()
            }
        })
        .collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    if !shared.opts.parallel {
        for t in &plan.tasks {
            for &d in &t.deps {
                dependents[d].push(t.index);
            }
        }
    }
    let mut outcomes: Vec<Option<TaskOutcome>> = vec![None; n];
    let mut summary = RunSummary::default();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<SchedMsg>();
    let limit = if shared.opts.parallel {
        n.max(1)
    } else {
        shared.opts.concurrency.max(1)
    };
    // Ready tasks start in plan order, so a run with --concurrency 1 is deterministic.
    let mut ready: BTreeSet<usize> = (0..n).filter(|&i| remaining[i] == 0).collect();
    // `busy`: concurrency slots in use; a task frees its slot when its last process exits, so
    // storing its result overlaps the next task's run. `in_flight`: tasks not done yet.
    let mut busy = 0usize;
    let mut in_flight = 0usize;
    let mut slot_freed = vec![false; n];
    let mut blocked = vec![false; n];

    loop {
        if !shared.stop.is_cancelled() {
            while busy < limit
                && let Some(i) = ready.pop_first()
            {
                let dep_outcomes: Vec<TaskOutcome> = plan.tasks[i]
                    .deps
                    .iter()
                    .filter_map(|&d| outcomes[d].clone())
                    .collect();
                let sh = shared.clone();
                let tx = done_tx.clone();
                busy += 1;
                in_flight += 1;
                let task_id = plan.tasks[i].id.clone();
                let slot_tx = tx.clone();
                let task = tokio::spawn(async move {
                    let slot = Slot {
                        tx: slot_tx,
                        task: i,
                        released: AtomicBool::new(false),
                    };
                    run_task(&sh, i, dep_outcomes, &slot).await
                });
                // A task that panics (a bug) fails like a failing command instead of leaving
                // the scheduler waiting for its `Done` forever.
                tokio::spawn(async move {
                    let msg = match task.await {
                        Ok((outcome, results)) => SchedMsg::Done(i, outcome, results),
                        Err(e) => {
                            tracing::error!(task = %task_id, error = %e, "internal error: the task panicked");
                            let _ = std::io::Write::write_all(
                                &mut std::io::stderr(),
                                format!("baton: internal error in {task_id}: {e}\n").as_bytes(),
                            );
                            SchedMsg::Done(
                                i,
                                TaskOutcome::failed(),
                                vec![panicked_result(i, task_id)],
                            )
                        }
                    };
                    let _ = tx.send(msg);
                });
            }
        }
        if in_flight == 0 {
            break;
        }
        let Some(msg) = done_rx.recv().await else {
            break;
        };
        let (i, outcome, results) = match msg {
            SchedMsg::SlotFree(i) => {
                if !std::mem::replace(&mut slot_freed[i], true) {
                    busy -= 1;
                }
                continue;
            }
            SchedMsg::Done(i, outcome, results) => (i, outcome, results),
        };
        in_flight -= 1;
        if !std::mem::replace(&mut slot_freed[i], true) {
            busy -= 1;
        }
        for r in &results {
            if r.exit_code != 0 && !r.interrupted && summary.failure.is_none() {
                summary.failure = Some(r.exit_code);
            }
        }
        summary.items.extend(results);
        let ok = outcome.ok;
        if !ok && shared.opts.fail_fast {
            shared.stop.cancel();
        }
        outcomes[i] = Some(outcome);
        for &d in &dependents[i] {
            if !ok {
                blocked[d] = true;
            }
            remaining[d] -= 1;
            if remaining[d] == 0 && !blocked[d] {
                ready.insert(d);
            }
        }
    }
    for (i, o) in outcomes.iter().enumerate() {
        if o.is_none() {
            summary.skipped.push(i);
            shared.reporter.event(RunEvent::Skipped { task: i });
        }
    }
    summary.cancelled = shared.cancel.is_cancelled();
    summary.duration = started.elapsed();
    Ok(summary)
}

/// How a task's inputs and outputs are found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputMode {
    /// The process tree is traced: inputs are the files it observed, outputs the files it wrote
    /// (unless `output` globs are configured), plus any explicit `input` globs.
    Traced,
    /// No tracing: inputs are the package's files (minus `.gitignore`) or the `input` globs, plus
    /// the outputs and cache keys of the tasks depended on; outputs come from `output` globs.
    Walked,
}

/// Runs one task.
///
/// Every item is looked up first. When all hit, each is replayed (outputs restored, logs shown).
/// Otherwise every item runs for real, in order: an item's effects outside its declared outputs
/// (a `mkdir`, an `rm -rf`) are not in the cache, so replaying some items and running others
/// could feed a later item a state no real run produces. Each item is stored as an entry of
/// its own; a traced task's items are stored together after the last one succeeded.
async fn run_task(
    sh: &Arc<Shared>,
    index: usize,
    deps: Vec<TaskOutcome>,
    slot: &Slot,
) -> (TaskOutcome, Vec<ItemResult>) {
    let task = &sh.plan.tasks[index];
    let mode = sh.modes[index].clone();
    let mut dep_inputs = DepInputs::default();
    if mode == Ok(InputMode::Walked) {
        for d in &deps {
            dep_inputs.files.extend(d.outputs.iter().cloned());
            // The stamp covers the dependency's own inputs, which include its dependencies'
            // stamps: a change anywhere upstream reaches every dependent, even one that only
            // sees it through a bundle. It sorts after file paths, so a miss names a file first.
            dep_inputs
                .stamps
                .push((format!("{DEP_PREFIX}{}", d.id), d.stamp));
        }
    }
    dep_inputs.files.sort();
    dep_inputs.files.dedup();
    dep_inputs.stamps.sort();
    let dep_inputs = Arc::new(dep_inputs);
    let cacheable = sh.store.is_some() && task.config.cache != Some(false) && mode.is_ok();
    // Prepared by the lookup when there is one (once per item, on the blocking pool).
    let mut preps: Vec<Prepared> = Vec::new();

    // Phase 1: look every item up.
    let mut lookups: Vec<Lookup> = Vec::new();
    let mut pre: Option<InputFingerprint> = None;
    let mut input_paths_list: Arc<Vec<String>> = Arc::new(Vec::new());
    let mut lookup_error: Option<String> = None;
    let mut restores = Vec::new();
    if cacheable {
        let traced = mode == Ok(InputMode::Traced);
        // A lookup made ahead of time (before the dependencies finished) is still valid when
        // every dependency was replayed without writing a file: nothing it could read changed.
        let early = sh.early[index]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let early_valid = traced && deps.iter().all(|d| d.clean);
        // Otherwise a finished early lookup still stands when it missed for reasons no file
        // can change (no entry for this spawn key, a different command or env): a cold run
        // then asks the cache once per task, ahead of time, not again when a slot is free.
        let early = match early {
            Some(handle) if traced && !early_valid && handle.is_finished() => {
                let looked = handle.await.expect("lookup does not panic");
                if settled_miss(&looked) {
                    Ok(looked)
                } else {
                    Err(None)
                }
            }
            Some(handle) if early_valid => {
                let looked = handle.await.expect("lookup does not panic");
                Ok(looked)
            }
            other => Err(other),
        };
        let looked = match early {
            Ok(looked) => {
                let all_hit =
                    matches!(&looked.res, Ok(l) if l.iter().all(|l| matches!(l, Lookup::Hit(_))));
                if all_hit {
                    // Restoring needs the hits back from the blocking pool: one more trip.
                    let sh2 = sh.clone();
                    tokio::task::spawn_blocking(move || {
                        let restores = restore_all(&sh2, &looked.res);
                        (looked, restores)
                    })
                    .await
                    .expect("restore does not panic")
                } else {
                    (looked, Vec::new())
                }
            }
            Err(early) => {
                if let Some(handle) = early {
                    handle.abort();
                }
                let sh2 = sh.clone();
                let deps2 = dep_inputs.clone();
                tokio::task::spawn_blocking(move || {
                    let looked = lookup_items(&sh2, index, &deps2, traced);
                    // When every item hits, restore here too: one trip per task.
                    let restores = restore_all(&sh2, &looked.res);
                    (looked, restores)
                })
                .await
                .expect("lookup does not panic")
            }
        };
        let (
            Looked {
                preps: p,
                paths,
                fp,
                res,
            },
            r,
        ) = looked;
        tracing::debug!(task = %task.id, inputs = paths.len(), "looked up");
        preps = p;
        input_paths_list = Arc::new(paths);
        pre = fp;
        restores = r;
        match res {
            Ok(l) => lookups = l,
            Err(e) => lookup_error = Some(e),
        }
    }

    if preps.is_empty() {
        preps = (0..task.items.len())
            .map(|i| prepare(sh, task, i))
            .collect();
    }
    let mut results = Vec::new();
    let mut outputs: Vec<String> = Vec::new();
    let mut stamp = blake3::Hasher::new();
    let all_hit = !lookups.is_empty() && lookups.iter().all(|l| matches!(l, Lookup::Hit(_)));

    // Phase 2a: every item hit: replay.
    let mut first_to_run = task.items.len();
    let mut restore_failure: Option<String> = None;
    // Clean is transitive: a dependent may read what a dependency's dependency wrote (a bundler
    // follows imports through the whole graph).
    let mut clean = all_hit && deps.iter().all(|d| d.clean);
    if all_hit {
        let walked_stamps = match (&mode, &pre) {
            (Ok(InputMode::Walked), Some(fp)) => Some(
                preps
                    .iter()
                    .map(|p| result_stamp(&p.spawn, fp))
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        };
        let mut restores = restores.into_iter();
        for (item, lookup) in lookups.drain(..).enumerate() {
            let Lookup::Hit(hit) = lookup else {
                unreachable!("all_hit checked every lookup")
            };
            let st = match &walked_stamps {
                Some(s) => s[item],
                None => manifest_stamp(&preps[item].spawn, &hit),
            };
            let restored = restores.next().unwrap_or_else(|| {
                Err(baton_cache::CacheError::Restore {
                    path: String::new(),
                    reason: "an earlier item failed to restore".into(),
                })
            });
            if let Ok(stats) = &restored {
                clean &= stats.written == 0 && stats.mode_fixed == 0;
            }
            match restored.map(|stats| replay(sh, task, item, &preps[item], hit, stats, st)) {
                Ok(r) => {
                    stamp.update(&r.stamp.0);
                    outputs.extend(r.outputs);
                    sh.reporter.event(RunEvent::ItemEnd {
                        task: index,
                        result: r.result.clone(),
                    });
                    results.push(r.result);
                }
                Err(e) => {
                    restore_failure = Some(match e.as_miss_reason() {
                        Some(reason) => reason.to_string(),
                        None => format!("restoring outputs failed: {e}"),
                    });
                    first_to_run = item;
                    clean = false;
                    break;
                }
            }
        }
    } else {
        first_to_run = 0;
    }

    // Phase 2b: run the items for real.
    let first_miss = lookups
        .iter()
        .position(|l| matches!(l, Lookup::Miss(_)))
        .map(|i| i + 1);
    let traced = mode == Ok(InputMode::Traced);
    // A traced task is stored after its last item (see [`store_traced`]), against the inputs
    // known before its first item ran.
    let task_pre = if traced { pre.clone() } else { None };
    let mut pending: Vec<PendingItem> = Vec::new();
    let mut refused = false;
    let mut pre_item = pre;
    for (item, prep) in preps.iter().enumerate().skip(first_to_run) {
        if sh.stop.is_cancelled() {
            return (TaskOutcome::failed(), results);
        }
        let status = if let Err(why) = &mode {
            CacheStatus::Disabled(why.clone())
        } else if !cacheable {
            CacheStatus::Disabled(if task.config.cache == Some(false) {
                "cache: false in config".into()
            } else {
                "--no-cache".into()
            })
        } else if let Some(r) = &restore_failure {
            CacheStatus::Miss(r.clone())
        } else if let Some(e) = &lookup_error {
            CacheStatus::Miss(e.clone())
        } else {
            match lookups.get(item) {
                Some(Lookup::Miss(reason)) => CacheStatus::Miss(reason_text(reason)),
                _ => CacheStatus::Miss(format!(
                    "item {} of this task missed, so every item runs",
                    first_miss.unwrap_or(0)
                )),
            }
        };
        let ctx = ItemContext {
            task,
            item,
            prep,
            slot,
            traced,
            paths: &input_paths_list,
            dep_inputs: &dep_inputs,
        };
        let (r, post) = run_item(sh, &ctx, status, pre_item.take()).await;
        pre_item = post;
        stamp.update(&r.stamp.0);
        outputs.extend(r.outputs);
        match r.deferred {
            Deferred::None => {}
            Deferred::Refused => refused = true,
            Deferred::Pending(p) => pending.push(*p),
        }
        let ok = r.result.exit_code == 0;
        sh.reporter.event(RunEvent::ItemEnd {
            task: index,
            result: r.result.clone(),
        });
        results.push(r.result);
        if !ok {
            return (TaskOutcome::failed(), results);
        }
    }
    outputs.sort();
    outputs.dedup();
    if let Some(pre) = task_pre.filter(|_| !refused && !pending.is_empty()) {
        let sh2 = sh.clone();
        let paths = input_paths_list.clone();
        let deps = dep_inputs.clone();
        let task_outputs = outputs.clone();
        let note = tokio::task::spawn_blocking(move || {
            store_traced(&sh2, &paths, &deps, &pre, pending, &task_outputs)
        })
        .await
        .expect("store does not panic");
        tracing::debug!(task = %task.id, stored = note.is_none(), "stored");
        if let Some((item, message)) = note {
            sh.reporter.event(RunEvent::Note {
                task: index,
                item,
                message,
            });
        }
    }
    (
        TaskOutcome {
            ok: true,
            outputs,
            id: task.id.clone(),
            clean,
            stamp: Digest(*stamp.finalize().as_bytes()),
        },
        results,
    )
}

/// The result of looking every item of a task up.
struct Looked {
    /// Every item, prepared (environment, spawn fingerprint): what the lookup used, reused to
    /// replay or run.
    preps: Vec<Prepared>,
    /// Input paths known before the run (see [`input_paths`]).
    paths: Vec<String>,
    /// Their fingerprint (with dependency stamps), if it could be taken.
    fp: Option<InputFingerprint>,
    /// One lookup per item, or why the cache could not be asked.
    res: Result<Vec<Lookup>, String>,
}

/// Looks up every item of task `index` (blocking: file hashing and SQLite).
fn lookup_items(sh: &Shared, index: usize, deps: &DepInputs, traced: bool) -> Looked {
    let task = &sh.plan.tasks[index];
    let paths = input_paths(sh, task, deps, traced);
    let fp = fingerprint_inputs(sh, &paths, deps);
    let store = sh.store.as_ref().expect("cacheable implies a store");
    let probe_fn = |paths: &[&str]| {
        fingerprint_traced(&sh.ws.root, paths, |files| {
            store.fingerprint_paths(&sh.ws.root, files)
        })
    };
    // Variables a tool may have tracked through the IPC (config's untrackedEnv never).
    let trackable = trackable_env(
        &sh.opts.parent_env,
        task.config.untracked_env.as_deref().unwrap_or(&[]),
    );
    let preps: Vec<Prepared> = (0..task.items.len())
        .map(|item| prepare(sh, task, item))
        .collect();
    let res: Result<Vec<Lookup>, String> = match &fp {
        Ok(fp) => {
            // An item's traced inputs may be files an earlier item of the task wrote: they are
            // checked against what that item's hit restores, not against the disk (where they
            // may have been deleted, or be stale until the restore).
            let mut restored: BTreeMap<String, PathState> = BTreeMap::new();
            preps
                .iter()
                .map(|prep| {
                    let overlay = |paths: &[&str]| {
                        let (over, rest): (Vec<&str>, Vec<&str>) =
                            paths.iter().partition(|p| restored.contains_key(**p));
                        let mut fp = probe_fn(&rest)?;
                        for p in over {
                            fp.insert(p, restored[p]);
                        }
                        Ok(fp)
                    };
                    let current = CurrentInputs {
                        known: fp,
                        probe: match (traced, restored.is_empty()) {
                            (false, _) => Probe::Absent,
                            (true, true) => Probe::With(&probe_fn),
                            (true, false) => Probe::With(&overlay),
                        },
                        env: Some(&trackable),
                        root: Some(&sh.ws.root),
                    };
                    let l = store
                        .lookup(&prep.task_key, &prep.spawn, &current)
                        .map_err(|e| format!("cache lookup failed: {e}"))?;
                    if let Lookup::Hit(hit) = &l {
                        for o in hit.outputs() {
                            match &o.kind {
                                baton_cache::OutputKind::File { hash, .. } => {
                                    restored
                                        .insert(o.path.clone(), PathState::File { hash: *hash });
                                }
                                // A link is probed where it points, on disk.
                                baton_cache::OutputKind::Symlink { .. } => {
                                    restored.remove(&o.path);
                                }
                            }
                        }
                    }
                    Ok(l)
                })
                .collect()
        }
        Err(e) => Ok(preps
            .iter()
            .map(|_| {
                Lookup::Miss(MissReason::Unreadable {
                    path: e.path.clone(),
                    error: e.source.to_string(),
                })
            })
            .collect()),
    };
    Looked {
        preps,
        paths,
        fp: fp.ok(),
        res,
    }
}

/// Whether every item of an early lookup missed for a reason that does not depend on the
/// state of any file (so looking up again after the dependencies ran would miss the same way),
/// and the task has no explicit input paths (whose fingerprint was taken early).
fn settled_miss(looked: &Looked) -> bool {
    let Ok(lookups) = &looked.res else {
        return false;
    };
    looked.paths.is_empty()
        && looked.fp.is_some()
        && !lookups.is_empty()
        && lookups.iter().all(|l| {
            matches!(
                l,
                Lookup::Miss(
                    MissReason::NotFound
                        | MissReason::CommandChanged
                        | MissReason::CwdChanged
                        | MissReason::ProgramChanged
                        | MissReason::ArgsChanged
                        | MissReason::EnvAdded(_)
                        | MissReason::EnvRemoved(_)
                        | MissReason::EnvChanged(_)
                        | MissReason::InputConfigChanged
                        | MissReason::OutputConfigChanged
                )
            )
        })
}

/// Restores the outputs of every item when all of them hit (stops at the first failure);
/// nothing otherwise.
fn restore_all(
    sh: &Shared,
    res: &Result<Vec<Lookup>, String>,
) -> Vec<Result<baton_cache::RestoreStats, baton_cache::CacheError>> {
    match res {
        Ok(l) if l.iter().all(|l| matches!(l, Lookup::Hit(_))) => {
            let mut out = Vec::with_capacity(l.len());
            for lookup in l {
                let Lookup::Hit(hit) = lookup else { break };
                let r = hit.restore_outputs(&sh.ws.root);
                let failed = r.is_err();
                out.push(r);
                if failed {
                    break;
                }
            }
            out
        }
        _ => Vec::new(),
    }
}

/// A stamp for a traced hit: its spawn key and the outputs it restored.
fn manifest_stamp(spawn: &SpawnFingerprint, hit: &baton_cache::CachedRun) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(&spawn.spawn_key().0);
    for o in hit.outputs() {
        h.update(o.path.as_bytes());
        match &o.kind {
            baton_cache::OutputKind::File { hash, .. } => h.update(&hash.0),
            baton_cache::OutputKind::Symlink { target } => h.update(target.as_bytes()),
        };
    }
    Digest(*h.finalize().as_bytes())
}

/// What [`run_item`] needs to know about the item.
struct ItemContext<'a> {
    task: &'a PlannedTask,
    item: usize,
    prep: &'a Prepared,
    /// Released after the task's last process exits.
    slot: &'a Slot,
    /// Trace the process tree for inputs and outputs.
    traced: bool,
    /// Input paths known before the run (globs, package files, dependency outputs).
    paths: &'a Arc<Vec<String>>,
    dep_inputs: &'a Arc<DepInputs>,
}

struct ItemRun {
    result: ItemResult,
    outputs: Vec<String>,
    stamp: Digest,
    /// For a traced item that ran: what to store once the task's last item has run.
    deferred: Deferred,
}

/// What becomes of a traced item that ran, once its task's last item has run.
enum Deferred {
    /// Nothing to store (replayed, failed, walked, or not cacheable).
    None,
    /// It cannot be stored; the reason was reported. The task's other items are not stored
    /// either (a task is replayed only when every item hits).
    Refused,
    /// Stored with the other items of the task by [`store_traced`].
    Pending(Box<PendingItem>),
}

/// A traced item's result waiting for the task's last item.
struct PendingItem {
    /// Item index.
    item: usize,
    /// Cache task id (`pkg#task[i]`).
    key: String,
    spawn: SpawnFingerprint,
    /// Traced input keys (workspace-relative; `dir/` = existence only).
    inputs: Vec<String>,
    /// Output paths (workspace-relative).
    outputs: Vec<String>,
    logs: Vec<LogChunk>,
    duration: Duration,
    reports: Option<crate::ipc::ToolReports>,
    /// When the item started: an input modified later was changed under it.
    started_at: std::time::SystemTime,
}

/// What a task's dependencies contribute to its inputs.
#[derive(Debug, Clone, Default)]
struct DepInputs {
    /// Output files of dependencies (workspace-relative).
    files: Vec<String>,
    /// `(~dependency pkg#task, stamp)` for every dependency.
    stamps: Vec<(String, Digest)>,
}

/// Prefix of the pseudo input that stands for a dependency's result.
const DEP_PREFIX: &str = "~dependency ";

/// A miss reason as printed: dependency stamps read `dependency pkg#task changed`.
fn reason_text(reason: &MissReason) -> String {
    match reason {
        MissReason::Modified(p) | MissReason::Added(p) | MissReason::Removed(p)
            if p.starts_with(DEP_PREFIX) =>
        {
            format!("dependency {} changed", &p[DEP_PREFIX.len()..])
        }
        other => other.to_string(),
    }
}

/// A digest of what decided an item's result: its spawn key and input states.
fn result_stamp(spawn: &SpawnFingerprint, inputs: &InputFingerprint) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(&spawn.spawn_key().0);
    for (p, s) in &inputs.paths {
        h.update(p.as_bytes());
        h.update(&[0]);
        match s {
            PathState::File { hash } => h.update(&hash.0),
            PathState::Dir { listing_hash } => h.update(b"d").update(&listing_hash.0),
            PathState::Absent => h.update(b"-"),
        };
    }
    Digest(*h.finalize().as_bytes())
}

/// A digest that never repeats (for items that ran uncached).
fn fresh_stamp() -> Digest {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    Digest(*blake3::hash(format!("{}:{t}:{n}", std::process::id()).as_bytes()).as_bytes())
}

/// Everything needed to look up, run and store one item.
struct Prepared {
    spec: CommandSpec,
    spawn: SpawnFingerprint,
    /// Cache task id: `pkg#task`, or `pkg#task[i]` for the items of an `a && b` task.
    task_key: String,
    /// The command as shown (with extra arguments).
    display: String,
}

fn prepare(sh: &Shared, task: &PlannedTask, item: usize) -> Prepared {
    let ws = &sh.ws;
    let pkg = &ws.packages[task.package];
    let mut cmd = task.items[item].clone();
    if item + 1 == task.items.len() && !task.extra_args.is_empty() {
        cmd.push_args(&task.extra_args);
    }
    let (program, args) = cmd.argv();
    let mut path_prepend = vec![pkg.dir.join("node_modules/.bin")];
    if pkg.dir != ws.root {
        path_prepend.push(ws.root.join("node_modules/.bin"));
    }
    let mut extra: Vec<(OsString, OsString)> = Vec::new();
    if sh.opts.force_color {
        extra.push(("FORCE_COLOR".into(), "1".into()));
        extra.push(("CLICOLOR_FORCE".into(), "1".into()));
    }
    let env = TaskEnv::build(
        &sh.opts.parent_env,
        task.config.env.as_deref().unwrap_or(&[]),
        task.config.untracked_env.as_deref().unwrap_or(&[]),
        &path_prepend,
        &extra,
    );
    let env_fp: BTreeMap<String, EnvFingerprint> = env
        .key
        .iter()
        .map(|(k, v)| {
            let fp = match v {
                EnvKeyPart::Tracked(d) => EnvFingerprint::Tracked { digest: d.clone() },
                EnvKeyPart::PassThrough => EnvFingerprint::PassThrough,
            };
            (k.clone(), fp)
        })
        .collect();
    let spawn = SpawnFingerprint {
        cwd: rel_slash(&ws.root, &task.cwd),
        program: program.clone(),
        args: args.clone(),
        env: env_fp,
        input_config: serde_json::json!({
            "input": task.config.input,
            "mode": match &sh.modes[task.index] {
                Ok(InputMode::Traced) => "traced",
                Ok(InputMode::Walked) => "walked",
                Err(_) => "none",
            },
        }),
        output_config: serde_json::json!({ "output": task.config.output }),
        command: task.items[item].display(),
    };
    let spec = CommandSpec {
        program: program.into(),
        args: args.into_iter().map(OsString::from).collect(),
        arg0: None,
        cwd: task.cwd.clone(),
        env: env.vars,
        stdin: StdinMode::Null,
        pty: None,
    };
    let task_key = if task.items.len() == 1 {
        task.id.clone()
    } else {
        format!("{}[{item}]", task.id)
    };
    Prepared {
        spec,
        spawn,
        task_key,
        display: cmd.display(),
    }
}

/// Input paths known before the run: with tracing only the explicit `input` globs, without it
/// the package's files (or the globs) and the dependencies' outputs.
fn input_paths(sh: &Shared, task: &PlannedTask, deps: &DepInputs, traced: bool) -> Vec<String> {
    let pkg = &sh.ws.packages[task.package];
    let nested: Vec<&Path> = sh.nested[task.index].iter().map(PathBuf::as_path).collect();
    let sel = &sh.selections[task.index];
    let mut paths = if traced {
        sel.glob_inputs(&sh.ws.root, &pkg.dir, &nested)
    } else {
        sel.inputs(&sh.ws.root, &pkg.dir, &nested, &sh.ignores)
    };
    paths.extend(deps.files.iter().cloned());
    paths.sort();
    paths.dedup();
    paths
}

/// Fingerprints the item's input files and adds the dependency stamps.
fn fingerprint_inputs(
    sh: &Shared,
    paths: &[String],
    deps: &DepInputs,
) -> Result<InputFingerprint, baton_cache::FingerprintError> {
    // The store's variant reuses hashes of files whose stat data did not change.
    let mut fp = match &sh.store {
        Some(store) => store.fingerprint_paths(&sh.ws.root, paths)?,
        None => fingerprint_paths(&sh.ws.root, paths)?,
    };
    for (name, stamp) in &deps.stamps {
        fp.insert(name.clone(), PathState::File { hash: *stamp });
    }
    Ok(fp)
}

/// Size and modification time of a file (for "did this item change it").
fn file_stat(path: &Path) -> Option<(u64, std::time::SystemTime)> {
    let m = std::fs::symlink_metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?))
}

fn output_stats(sh: &Shared, task: &PlannedTask) -> BTreeMap<String, (u64, std::time::SystemTime)> {
    output_paths(sh, task)
        .into_iter()
        .filter_map(|p| file_stat(&sh.ws.root.join(&p)).map(|s| (p, s)))
        .collect()
}

fn output_paths(sh: &Shared, task: &PlannedTask) -> Vec<String> {
    let pkg = &sh.ws.packages[task.package];
    let nested: Vec<&Path> = sh.nested[task.index].iter().map(PathBuf::as_path).collect();
    sh.selections[task.index].outputs(&sh.ws.root, &pkg.dir, &nested)
}

/// Runs one item for real and, on a cacheable success, stores it. Returns the item's result and
/// the input fingerprint after it (the next item's "before").
#[allow(clippy::too_many_arguments)]
/// Runs one item for real and, on a cacheable success, stores it. Returns the item's result and
/// the input fingerprint after it (the next item's "before").
async fn run_item(
    sh: &Arc<Shared>,
    ctx: &ItemContext<'_>,
    status: CacheStatus,
    pre: Option<InputFingerprint>,
) -> (ItemRun, Option<InputFingerprint>) {
    let ItemContext {
        task, item, prep, ..
    } = *ctx;
    let started = Instant::now();
    let started_at = std::time::SystemTime::now();
    sh.reporter.event(RunEvent::ItemStart {
        task: task.index,
        item,
        items: task.items.len(),
        command: prep.display.clone(),
        status: status.clone(),
    });
    let globbed_outputs = sh.selections[task.index].has_outputs();
    // With several items, an item's outputs are the matching files it created or changed.
    let before = (globbed_outputs && task.items.len() > 1).then(|| output_stats(sh, task));
    let trace = ctx.traced && matches!(status, CacheStatus::Miss(_));
    // Tools talk back through a per-item IPC server (ignore a path, read a tracked env var,
    // disable caching); its variables are not part of the cache key.
    let mut spec = prep.spec.clone();
    let ipc = match IpcServer::start(
        sh.opts.parent_env.clone(),
        task.config.untracked_env.clone().unwrap_or_default(),
    ) {
        Ok(server) => {
            spec.env.extend(server.child_env());
            if let Some(path) = sh.node_client() {
                spec.env
                    .push((baton_protocol::tool::ENV_VP_NODE_CLIENT.into(), path.into()));
            }
            Some(server)
        }
        Err(e) => {
            sh.reporter.event(RunEvent::Note {
                task: task.index,
                item,
                message: format!("tool IPC unavailable: {e}"),
            });
            None
        }
    };
    tracing::debug!(task = %task.id, item, trace, "spawning");
    let last = item + 1 == task.items.len();
    let mut run = execute(sh, task, item, spec, trace, (ctx.slot, last)).await;
    if item + 1 == task.items.len() || run.exit_code != 0 {
        ctx.slot.release();
    }
    let reports = match ipc {
        Some(server) => Some(server.finish().await),
        None => None,
    };
    tracing::debug!(task = %task.id, item, "tool IPC finished");
    let duration = started.elapsed();
    // What tools asked to ignore is neither an automatic input nor an output.
    if let (Some(Ok(t)), Some(r)) = (run.trace.as_mut(), reports.as_ref()) {
        let root = &sh.ws.root;
        t.inputs.retain(|p| !r.ignores_input(&root.join(p)));
        t.outputs.retain(|p| !r.ignores_output(&root.join(p)));
        t.conflicts
            .retain(|p| !r.ignores_input(&root.join(p)) && !r.ignores_output(&root.join(p)));
    }
    tracing::debug!(task = %task.id, item, code = run.exit_code, ?duration, "finished");
    let mut outputs = Vec::new();
    let mut stamp = fresh_stamp();
    if run.exit_code != 0 || run.interrupted {
        return (item_run(ctx, status, &run, duration, outputs, stamp), None);
    }
    if globbed_outputs {
        outputs = output_paths(sh, task);
        if let Some(before) = &before {
            let root = &sh.ws.root;
            outputs.retain(|p| before.get(p) != file_stat(&root.join(p)).as_ref());
        }
    }
    if !matches!(status, CacheStatus::Miss(_)) {
        return (item_run(ctx, status, &run, duration, outputs, stamp), None);
    }
    // A walked item is stored right away, when its inputs did not change while it ran; a traced
    // one after the task's last item (see [`store_traced`]).
    let pre = match pre {
        Some(pre) if !ctx.traced => pre,
        _ if ctx.traced => InputFingerprint::default(),
        _ => return (item_run(ctx, status, &run, duration, outputs, stamp), None),
    };
    // What tracing says, or why the result cannot be stored.
    let mut traced_inputs: Vec<String> = Vec::new();
    let mut refuse: Option<String> = reports
        .as_ref()
        .and_then(|r| r.cache_disabled_reason())
        .map(|why| format!("not cached: {why}"));
    if ctx.traced && refuse.is_none() {
        match &run.trace {
            Some(Ok(t)) => {
                if !globbed_outputs {
                    outputs = t.outputs.clone();
                }
                traced_inputs = t.inputs.clone();
                if let Some(c) = t.conflicts.first() {
                    let more = if t.conflicts.len() > 1 {
                        format!(" (and {} more)", t.conflicts.len() - 1)
                    } else {
                        String::new()
                    };
                    refuse = Some(format!(
                        "not cached: the task both read and wrote '{c}'{more}"
                    ));
                } else if let Some(addr) = t
                    .network
                    .as_ref()
                    .filter(|_| task.config.cache != Some(true))
                {
                    refuse = Some(format!(
                        "not cached: the task connected to {addr} (a deploy, publish or install?); set \"cache\": true to cache it anyway"
                    ));
                } else if t.unresolved > 0 {
                    refuse = Some(format!(
                        "not cached: {} file access(es) could not be resolved",
                        t.unresolved
                    ));
                }
            }
            Some(Err(e)) => refuse = Some(format!("not cached: tracing failed: {e}")),
            None => refuse = Some("not cached: the run was not traced".into()),
        }
    }
    if let Some(message) = refuse {
        sh.reporter.event(RunEvent::Note {
            task: task.index,
            item,
            message,
        });
        let mut r = item_run(ctx, status, &run, duration, outputs, stamp);
        r.deferred = Deferred::Refused;
        return (r, None);
    }
    if ctx.traced {
        let pending = PendingItem {
            item,
            key: prep.task_key.clone(),
            spawn: prep.spawn.clone(),
            inputs: traced_inputs,
            outputs: outputs.clone(),
            logs: run.logs.clone(),
            duration,
            reports,
            started_at,
        };
        let mut r = item_run(ctx, status, &run, duration, outputs, stamp);
        r.deferred = Deferred::Pending(Box::new(pending));
        return (r, None);
    }
    let store = sh.store.clone().expect("a miss implies a store");
    let sh2 = sh.clone();
    let spawn = prep.spawn.clone();
    let paths = ctx.paths.clone();
    let deps = ctx.dep_inputs.clone();
    let outs = outputs.clone();
    let key = prep.task_key.clone();
    let logs = run.logs.clone();
    let (note, post, st) = tokio::task::spawn_blocking(move || {
        let post = match fingerprint_inputs(&sh2, &paths, &deps) {
            Ok(post) => post,
            Err(e) => return (Some(format!("not cached: {e}")), None, None),
        };
        if post != pre {
            let why = pre
                .diff(&post)
                .map(|r| reason_text(&r))
                .unwrap_or_else(|| "inputs changed".into());
            return (
                Some(format!(
                    "not cached: an input changed during the run ({why})"
                )),
                Some(post),
                None,
            );
        }
        let mut inputs = post.clone();
        if let Some(r) = &reports {
            r.record_env_inputs(&mut inputs);
        }
        let entry = NewEntry {
            task_id: &key,
            spawn: &spawn,
            inputs: &inputs,
            root: &sh2.ws.root,
            outputs: &outs,
            logs: &logs,
            duration,
        };
        let st = result_stamp(&spawn, &inputs);
        match store.put(&entry) {
            Ok(_) => (None, Some(post), Some(st)),
            Err(e) => (Some(format!("not cached: {e}")), Some(post), None),
        }
    })
    .await
    .expect("store does not panic");
    tracing::debug!(task = %task.id, item, stored = note.is_none(), "stored");
    if let Some(st) = st {
        stamp = st;
    }
    if let Some(message) = note {
        sh.reporter.event(RunEvent::Note {
            task: task.index,
            item,
            message,
        });
    }
    (item_run(ctx, status, &run, duration, outputs, stamp), post)
}

/// Stores the items of a traced task that all ran and succeeded, after the last one: every
/// item's traced inputs are fingerprinted now, in the state the task left behind (the state
/// the next run's lookup sees). Returns why nothing was stored, as `(item, note)`; on a refusal
/// no item is stored (a task replays only when every item hits).
///
/// - The directories holding any of the task's outputs (`task_outputs`, every item's) are not
///   inputs of any item: a restore recreates them, and a later item creating `dist/` in a
///   directory an earlier item listed must not invalidate the earlier item.
/// - An item that observed a path a later item writes saw state the task itself produces (the
///   next run would see the previous run's output): nothing is stored.
/// - The explicit inputs (`paths`, `deps`) must be as they were before the first item (`pre`).
/// - A traced input modified after its item started was changed under it: nothing is stored.
fn store_traced(
    sh: &Shared,
    paths: &[String],
    deps: &DepInputs,
    pre: &InputFingerprint,
    items: Vec<PendingItem>,
    task_outputs: &[String],
) -> Option<(usize, String)> {
    let first = items.first().map_or(0, |p| p.item);
    let store = sh.store.as_ref().expect("a miss implies a store");
    let post = match fingerprint_inputs(sh, paths, deps) {
        Ok(post) => post,
        Err(e) => return Some((first, format!("not cached: {e}"))),
    };
    if post != *pre {
        let why = pre
            .diff(&post)
            .map(|r| reason_text(&r))
            .unwrap_or_else(|| "inputs changed".into());
        return Some((
            first,
            format!("not cached: an input changed during the run ({why})"),
        ));
    }
    let accesses: Vec<ItemAccesses<'_>> = items
        .iter()
        .map(|p| ItemAccesses {
            item: p.item,
            inputs: &p.inputs,
            outputs: &p.outputs,
        })
        .collect();
    if let Some((reader, path, writer)) = cross_item_conflict(&accesses) {
        return Some((
            reader,
            format!(
                "not cached: item {} observed '{path}', which item {} of the task writes",
                reader + 1,
                writer + 1
            ),
        ));
    }
    let parents = output_parents(task_outputs);
    let root = &sh.ws.root;
    let mut entries = Vec::with_capacity(items.len());
    for p in &items {
        let keys: Vec<&str> = p
            .inputs
            .iter()
            .map(String::as_str)
            .filter(|k| !parents.contains(k.trim_end_matches('/')))
            .collect();
        // Fingerprinted now, after the run; a file changed by someone else while the task ran
        // would store a state the task never saw, so such a run is not stored.
        for k in keys.iter().filter(|k| !k.ends_with('/')) {
            let changed = std::fs::symlink_metadata(root.join(k))
                .and_then(|m| m.modified())
                .is_ok_and(|m| m > p.started_at);
            if changed {
                return Some((
                    p.item,
                    format!("not cached: '{k}' changed while the task ran"),
                ));
            }
        }
        let mut inputs = post.clone();
        match fingerprint_traced(root, &keys, |files| store.fingerprint_paths(root, files)) {
            Ok(fp) => inputs.extend(fp.paths),
            Err(e) => return Some((p.item, format!("not cached: {e}"))),
        }
        if let Some(r) = &p.reports {
            r.record_env_inputs(&mut inputs);
        }
        entries.push(inputs);
    }
    for (p, inputs) in items.iter().zip(&entries) {
        let entry = NewEntry {
            task_id: &p.key,
            spawn: &p.spawn,
            inputs,
            root,
            outputs: &p.outputs,
            logs: &p.logs,
            duration: p.duration,
        };
        if let Err(e) = store.put(&entry) {
            return Some((p.item, format!("not cached: {e}")));
        }
    }
    None
}

/// Every directory above one of `outputs` (workspace-relative, `/`-separated).
fn output_parents(outputs: &[String]) -> BTreeSet<&str> {
    let mut parents = BTreeSet::new();
    for o in outputs {
        let mut rest = o.as_str();
        while let Some(pos) = rest.rfind('/') {
            rest = &rest[..pos];
            if !parents.insert(rest) {
                break;
            }
        }
    }
    parents
}

/// An item's traced inputs and its outputs, for [`cross_item_conflict`].
struct ItemAccesses<'a> {
    item: usize,
    inputs: &'a [String],
    outputs: &'a [String],
}

/// The first input of an item that a later item of the same task writes (the path itself, or a
/// directory output holding it), as `(reader item, path, writer item)`: the reader saw state
/// the task produces.
fn cross_item_conflict(items: &[ItemAccesses<'_>]) -> Option<(usize, String, usize)> {
    // Outputs of the items after the one being checked → the nearest item writing them.
    let mut later: BTreeMap<&str, usize> = BTreeMap::new();
    let mut found = None;
    for p in items.iter().rev() {
        for input in p.inputs {
            let mut path = input.trim_end_matches('/');
            loop {
                if let Some(&w) = later.get(path) {
                    found = Some((p.item, input.trim_end_matches('/').to_owned(), w));
                    break;
                }
                match path.rfind('/') {
                    Some(pos) => path = &path[..pos],
                    None => break,
                }
            }
            if found.as_ref().is_some_and(|f| f.0 == p.item) {
                break;
            }
        }
        for o in p.outputs {
            later.insert(o.as_str(), p.item);
        }
    }
    found
}

fn item_run(
    ctx: &ItemContext<'_>,
    status: CacheStatus,
    run: &Executed,
    duration: Duration,
    outputs: Vec<String>,
    stamp: Digest,
) -> ItemRun {
    ItemRun {
        result: ItemResult {
            task: ctx.task.index,
            task_id: ctx.task.id.clone(),
            item: ctx.item,
            cache: status,
            exit_code: run.exit_code,
            interrupted: run.interrupted,
            duration,
            saved: Duration::ZERO,
        },
        outputs,
        stamp,
        deferred: Deferred::None,
    }
}

/// Replays a hit whose outputs were restored: shows the status and the logs.
fn replay(
    sh: &Arc<Shared>,
    task: &PlannedTask,
    item: usize,
    prep: &Prepared,
    hit: baton_cache::CachedRun,
    stats: baton_cache::RestoreStats,
    stamp: Digest,
) -> ItemRun {
    let started = Instant::now();
    sh.reporter.event(RunEvent::ItemStart {
        task: task.index,
        item,
        items: task.items.len(),
        command: prep.display.clone(),
        status: CacheStatus::Hit,
    });
    if stats.written > 0 {
        sh.reporter.event(RunEvent::Note {
            task: task.index,
            item,
            message: format!(
                "restored {} output file(s), {} already up to date",
                stats.written, stats.skipped
            ),
        });
    }
    for chunk in hit.logs() {
        sh.reporter.event(RunEvent::Output {
            task: task.index,
            item,
            stream: match chunk.stream {
                baton_cache::Stream::Stdout => OutStream::Stdout,
                baton_cache::Stream::Stderr => OutStream::Stderr,
            },
            bytes: chunk.bytes.clone(),
        });
    }
    ItemRun {
        result: ItemResult {
            task: task.index,
            task_id: task.id.clone(),
            item,
            cache: CacheStatus::Hit,
            exit_code: 0,
            interrupted: false,
            duration: started.elapsed(),
            saved: hit.duration(),
        },
        outputs: hit.outputs().iter().map(|o| o.path.clone()).collect(),
        stamp,
        deferred: Deferred::None,
    }
}

/// What [`execute`] observed.
struct Executed {
    exit_code: i32,
    logs: Vec<LogChunk>,
    /// Killed by Baton (fail-fast, Ctrl-C).
    interrupted: bool,
    /// The traced accesses (when tracing was asked for), or why tracing failed.
    trace: Option<Result<TracedAccesses, String>>,
}

/// Spawns the item (traced when asked), streams its output to the reporter, records it. The
/// slot is released as soon as the process group is gone when this is the task's last item
/// (`slot.1`) or it failed: the tracer's log is read while the next task starts.
async fn execute(
    sh: &Arc<Shared>,
    task: &PlannedTask,
    item: usize,
    spec: CommandSpec,
    trace: bool,
    slot: (&Slot, bool),
) -> Executed {
    let program = spec.program.clone();
    let mut supervisor = None;
    let mut trace_error = None;
    let spawned = if trace {
        match baton_trace::start() {
            Ok((hook, sup)) => {
                supervisor = Some(sup);
                // SAFETY: the hook only makes async-signal-safe system calls (baton-trace's
                // contract), and baton-exec runs it last in the forked child.
                unsafe {
                    baton_exec::spawn_with_pre_exec(
                        &spec,
                        SpawnOptions::streaming(),
                        hook.into_pre_exec(),
                    )
                }
            }
            Err(e) => {
                trace_error = Some(e.to_string());
                baton_exec::spawn(&spec, SpawnOptions::streaming())
            }
        }
    } else {
        baton_exec::spawn(&spec, SpawnOptions::streaming())
    };
    let process = match spawned {
        Ok(p) => p,
        Err(e) => {
            let msg = format!("baton: cannot start {}: {e}\n", program.to_string_lossy());
            sh.reporter.event(RunEvent::Output {
                task: task.index,
                item,
                stream: OutStream::Stderr,
                bytes: msg.into_bytes(),
            });
            if let Some(sup) = supervisor {
                let _ = tokio::task::spawn_blocking(move || sup.finish()).await;
            }
            return Executed {
                exit_code: 127,
                logs: Vec::new(),
                interrupted: false,
                trace: None,
            };
        }
    };
    let mut events = process
        .take_events()
        .expect("a streaming process hands out its events once");
    let mut logs: Vec<LogChunk> = Vec::new();
    let mut exit = None;
    let mut interrupted = false;
    loop {
        let ev = tokio::select! {
            ev = events.recv() => ev,
            _ = sh.stop.cancelled() => {
                process.terminate();
                interrupted = true;
                break;
            }
        };
        let Some(ev) = ev else { break };
        match ev {
            ProcessEvent::Output { stream, chunk, .. } => {
                let out = match stream {
                    Stream::Stderr => OutStream::Stderr,
                    _ => OutStream::Stdout,
                };
                logs.push(LogChunk {
                    stream: match out {
                        OutStream::Stdout => baton_cache::Stream::Stdout,
                        OutStream::Stderr => baton_cache::Stream::Stderr,
                    },
                    bytes: chunk.to_vec(),
                });
                sh.reporter.event(RunEvent::Output {
                    task: task.index,
                    item,
                    stream: out,
                    bytes: chunk.to_vec(),
                });
            }
            ProcessEvent::Exited { status, .. } => exit = Some(status.code_for_shell()),
            ProcessEvent::Closed { .. } => break,
        }
    }
    let code = match exit {
        Some(c) => c,
        None => process.wait().await.code_for_shell(),
    };
    tracing::debug!(task = %task.id, item, "exited");
    // The task is over: whatever is left of its process group goes (no orphans), then the
    // tracer has seen everything.
    process.terminate();
    drop(events);
    drop(process);
    if slot.1 || code != 0 {
        slot.0.release();
    }
    let trace = match supervisor {
        Some(sup) => {
            let root = sh.ws.root.clone();
            let exclude = vec![sh.opts.cache_dir.clone()];
            Some(
                tokio::task::spawn_blocking(move || {
                    sup.finish()
                        .map(|log| classify(&log, &root, &exclude))
                        .map_err(|e| e.to_string())
                })
                .await
                .unwrap_or_else(|e| Err(format!("tracer panicked: {e}"))),
            )
        }
        None => trace_error.map(Err),
    };
    tracing::debug!(task = %task.id, item, "trace classified");
    Executed {
        exit_code: code,
        logs,
        interrupted,
        trace,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn output_parents_are_every_directory_above_an_output() {
        let outs = strings(&["p/app/dist/a.js", "p/app/dist/sub/b.js", "top.txt"]);
        let parents: Vec<&str> = output_parents(&outs).into_iter().collect();
        assert_eq!(parents, ["p", "p/app", "p/app/dist", "p/app/dist/sub"]);
    }

    #[test]
    fn an_input_written_by_a_later_item_is_a_conflict_naming_both_items() {
        let (i0, o0) = (strings(&["src/a.ts", "dist/"]), strings(&["gen/t.d.ts"]));
        let (i1, o1) = (strings(&["gen/t.d.ts"]), strings(&["dist/app.js"]));
        let (i2, o2) = (strings(&["gen/t.d.ts"]), strings(&["out"]));
        let item = |item, inputs, outputs| ItemAccesses {
            item,
            inputs,
            outputs,
        };
        // Reading an earlier item's output is fine; a directory above a later output is not a
        // conflict (it is dropped as an output parent instead).
        assert_eq!(
            cross_item_conflict(&[item(0, &i0, &o0), item(1, &i1, &o1)]),
            None
        );
        // Item 1 probed a path inside a directory item 2 writes as a whole.
        let probe = strings(&["out/x.txt"]);
        assert_eq!(
            cross_item_conflict(&[item(0, &i0, &o0), item(1, &probe, &o1), item(2, &i2, &o2)]),
            Some((1, "out/x.txt".to_owned(), 2))
        );
        // The earliest reader is named, with the nearest later writer.
        let reads_dist = strings(&["dist/app.js"]);
        assert_eq!(
            cross_item_conflict(&[
                item(0, &reads_dist, &o0),
                item(1, &probe, &o1),
                item(2, &i2, &o2)
            ]),
            Some((0, "dist/app.js".to_owned(), 1))
        );
    }
}
