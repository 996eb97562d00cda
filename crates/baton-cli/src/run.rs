//! `baton run`: select tasks, plan, run with the cache, report.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use baton_task::plan::{PlanRequest, build_plan, split_pkg_task};
use baton_task::run::{
    CacheStatus, CancelHandle, ItemResult, OutStream, Reporter, RunEvent, RunOptions, RunSummary,
    run_plan,
};
use baton_task::workspace::Workspace;

use crate::style::Style;

/// How task output is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogMode {
    /// Output as it arrives, tasks mixed (default).
    Interleaved,
    /// Every line prefixed with its task (`pkg#task | line`).
    Labeled,
    /// Each task's output shown in one block when it finishes.
    Grouped,
}

/// Arguments of `baton run`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = RUN_EXAMPLES)]
pub struct RunArgs {
    /// The task to run: a `package.json` script or `baton.json` task name, or `package#task`.
    pub task: String,

    /// Extra arguments passed to the task (after `--` when they start with `-`).
    pub args: Vec<String>,

    /// Run the task in every package of the workspace, in dependency order.
    #[arg(short, long)]
    pub recursive: bool,

    /// Select packages with pnpm's filter syntax: `name`, `@scope/*`, `./dir`, `pkg...`
    /// (with dependencies), `...pkg` (with dependents), `!pkg` (exclude). Repeatable.
    #[arg(short = 'F', long = "filter", value_name = "FILTER")]
    pub filters: Vec<String>,

    /// Maximum number of tasks running at once [default: number of CPU cores].
    #[arg(long, value_name = "N")]
    pub concurrency: Option<usize>,

    /// Ignore dependencies between tasks and run them all at once.
    #[arg(long)]
    pub parallel: bool,

    /// Neither read nor write the cache.
    #[arg(long)]
    pub no_cache: bool,

    /// Keep running independent tasks after a failure (default: stop and kill everything).
    #[arg(long)]
    pub continue_on_error: bool,

    /// How task output is shown.
    #[arg(long, value_enum, default_value_t = LogMode::Interleaved)]
    pub log: LogMode,

    /// Write a JSON summary of the run to FILE.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,

    /// Print details: restore counts, why a result was not stored.
    #[arg(short, long)]
    pub verbose: bool,

    /// Do not trace task processes: inputs fall back to the package's files (minus
    /// `.gitignore`), and tasks without `output` globs are not cached. Also `BATON_TRACE_DISABLE=1`.
    #[arg(long)]
    pub no_trace: bool,

    /// Cache directory [default: `.baton/cache` at the workspace root].
    #[arg(long, env = "BATON_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

const RUN_EXAMPLES: &str = "\
Examples:
  baton run build               build the package in the current directory
  baton run build -r            build every package, dependencies first
  baton run test -F @app/web... test @app/web and everything it depends on
  baton run @app/web#dev        a task of another package
  baton run test -- --watch     pass arguments to the task

Tasks come from package.json scripts and baton.json `tasks`; every task is cached
unless its config says `\"cache\": false`. Each cache miss says why.";

/// Runs `baton run`.
pub fn main(args: RunArgs) -> anyhow::Result<ExitCode> {
    // `BATON_LOG=baton_task=debug` shows the scheduler's steps with timestamps (stderr).
    crate::init_logging(None);
    let style = Style::detect();
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let ws = Workspace::discover(&cwd)?;
    let packages = if args.recursive || !args.filters.is_empty() {
        baton_task::filter::select_packages(&ws, &args.filters, &cwd)?
    } else if split_pkg_task(&args.task).is_some() {
        Default::default()
    } else {
        let p = ws
            .package_containing(&cwd)
            .ok_or(baton_task::PlanError::NoCurrentPackage)?;
        std::iter::once(p).collect()
    };
    let req = PlanRequest {
        task: args.task.clone(),
        packages,
        topological: args.recursive || !args.filters.is_empty(),
        extra_args: args.args.clone(),
    };
    let plan = build_plan(&ws, &req)?;
    let cache_dir = args
        .cache_dir
        .clone()
        .unwrap_or_else(|| ws.root.join(".baton").join("cache"));
    let opts = RunOptions {
        concurrency: args
            .concurrency
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1),
        parallel: args.parallel,
        use_cache: !args.no_cache,
        fail_fast: !args.continue_on_error,
        cache_dir,
        force_color: style.color,
        parent_env: baton_task::env::parent_env(),
        trace: !args.no_trace,
    };
    let ids: Vec<String> = plan.tasks.iter().map(|t| t.id.clone()).collect();
    let total = plan.tasks.len();
    let reporter = Arc::new(Printer::new(args.log, args.verbose, style, ids.clone()));
    let ws = Arc::new(ws);
    let plan = Arc::new(plan);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let cancel = CancelHandle::new();
    let summary = runtime.block_on(async {
        let c = cancel.clone();
        let signals = tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            let mut count = 0;
            loop {
                tokio::select! {
                    r = tokio::signal::ctrl_c() => if r.is_err() { return },
                    _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
                }
                count += 1;
                c.cancel();
                baton_exec::kill_all();
                if count > 1 {
                    std::process::exit(130);
                }
            }
        });
        let r = run_plan(ws, plan, opts, reporter.clone(), cancel.clone()).await;
        signals.abort();
        r
    })?;
    drop(runtime);
    baton_exec::kill_all();
    reporter.finish(&summary, total);
    if let Some(path) = &args.report {
        write_report(path, &summary, &ids)
            .with_context(|| format!("cannot write the report to {}", path.display()))?;
    }
    let code = if summary.cancelled {
        130
    } else {
        summary.failure.unwrap_or(0)
    };
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

fn write_report(path: &PathBuf, summary: &RunSummary, ids: &[String]) -> std::io::Result<()> {
    let tasks: Vec<serde_json::Value> = summary
        .items
        .iter()
        .map(|r| {
            serde_json::json!({
                "task": r.task_id,
                "item": r.item,
                "cache": r.cache.kind(),
                "reason": r.cache.reason(),
                "exit_code": r.exit_code,
                "duration_ms": ms(r.duration),
                "saved_ms": ms(r.saved),
            })
        })
        .collect();
    let hits = summary
        .items
        .iter()
        .filter(|r| r.cache == CacheStatus::Hit)
        .count();
    let report = serde_json::json!({
        "tasks": tasks,
        "skipped": summary.skipped.iter().map(|&i| ids[i].clone()).collect::<Vec<_>>(),
        "cache_hits": hits,
        "items": summary.items.len(),
        "saved_ms": ms(summary.items.iter().map(|r| r.saved).sum()),
        "duration_ms": ms(summary.duration),
        "exit_code": if summary.cancelled { 130 } else { summary.failure.unwrap_or(0) },
        "cancelled": summary.cancelled,
    });
    let mut text = serde_json::to_string_pretty(&report).map_err(std::io::Error::other)?;
    text.push('\n');
    std::fs::write(path, text)
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// Prints run events to the terminal in the chosen log mode.
struct Printer {
    /// Draw a progress line on stderr (a terminal).
    progress: bool,
    total: usize,
    mode: LogMode,
    verbose: bool,
    style: Style,
    ids: Vec<String>,
    state: Mutex<PrinterState>,
}

#[derive(Default)]
struct PrinterState {
    /// Labeled mode: unfinished last line per (task, item, stream).
    partial: HashMap<(usize, usize, bool), Vec<u8>>,
    /// Grouped mode: buffered output per task.
    grouped: HashMap<usize, Vec<(OutStream, Vec<u8>)>>,
    failures: Vec<(String, i32)>,
    /// Items killed by fail-fast or Ctrl-C.
    stopped: usize,
    /// Progress: tasks running now, and tasks finished.
    running: std::collections::BTreeSet<usize>,
    finished: usize,
    /// Whether the progress line is on screen.
    progress_shown: bool,
    /// Whether the last byte written was a newline (the progress line may be drawn).
    at_line_start: bool,
    /// Number of items per task, from their first start.
    items: HashMap<usize, usize>,
}

impl Printer {
    fn new(mode: LogMode, verbose: bool, style: Style, ids: Vec<String>) -> Self {
        use std::io::IsTerminal;
        Printer {
            progress: std::io::stderr().is_terminal()
                && std::env::var_os("TERM").is_none_or(|t| t != "dumb")
                && ids.len() > 1,
            total: ids.len(),
            mode,
            verbose,
            style,
            ids,
            state: Mutex::new(PrinterState {
                at_line_start: true,
                ..PrinterState::default()
            }),
        }
    }

    fn header(
        &self,
        task: usize,
        item: usize,
        items: usize,
        command: &str,
        status: &CacheStatus,
    ) -> String {
        let s = &self.style;
        let id = &self.ids[task];
        let label = if items > 1 {
            format!("{id} [{}/{items}]", item + 1)
        } else {
            id.clone()
        };
        let status_text = match status {
            CacheStatus::Hit => s.green("cache hit, replaying"),
            CacheStatus::Miss(r) => s.yellow(&format!("cache miss: {r}")),
            CacheStatus::Disabled(r) => s.dim(&format!("cache disabled: {r}")),
        };
        format!(
            "{} {} {} {}\n",
            s.bold(&format!("▶ {label}")),
            s.dim(&format!("$ {command}")),
            s.dim("—"),
            status_text
        )
    }

    fn write_out(&self, st: &mut PrinterState, stream: OutStream, bytes: &[u8]) {
        self.erase_progress(st);
        if let Some(&last) = bytes.last() {
            st.at_line_start = last == b'\n';
        }
        match stream {
            OutStream::Stdout => {
                let mut o = std::io::stdout().lock();
                let _ = o.write_all(bytes);
                let _ = o.flush();
            }
            OutStream::Stderr => {
                let mut o = std::io::stderr().lock();
                let _ = o.write_all(bytes);
                let _ = o.flush();
            }
        }
    }

    fn labeled(
        &self,
        st: &mut PrinterState,
        task: usize,
        item: usize,
        stream: OutStream,
        bytes: &[u8],
        flush: bool,
    ) {
        let key = (task, item, stream == OutStream::Stderr);
        let buf = st.partial.entry(key).or_default();
        buf.extend_from_slice(bytes);
        let prefix = self.style.dim(&format!("{} | ", self.ids[task]));
        let mut out = Vec::new();
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            out.extend_from_slice(prefix.as_bytes());
            out.extend(buf.drain(..=pos));
        }
        if flush && !buf.is_empty() {
            out.extend_from_slice(prefix.as_bytes());
            out.append(buf);
            out.push(b'\n');
        }
        if !out.is_empty() {
            self.write_out(st, stream, &out);
        }
    }

    /// A line of Baton's own about a task: in grouped mode kept with the task's block.
    fn status_line(&self, st: &mut PrinterState, task: usize, stream: OutStream, line: String) {
        if self.mode == LogMode::Grouped {
            st.grouped
                .entry(task)
                .or_default()
                .push((stream, line.into_bytes()));
        } else {
            self.write_out(st, stream, line.as_bytes());
        }
    }

    fn erase_progress(&self, st: &mut PrinterState) {
        if st.progress_shown {
            let mut e = std::io::stderr().lock();
            let _ = e.write_all(b"\r\x1b[2K");
            let _ = e.flush();
            st.progress_shown = false;
        }
    }

    /// Draws `[done/total] running: a#build, b#build` on the last line of the terminal.
    fn draw_progress(&self, st: &mut PrinterState) {
        if !self.progress || !st.at_line_start || st.running.is_empty() {
            return;
        }
        let width = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.parse::<usize>().ok())
            .unwrap_or(80)
            .max(20);
        let names: Vec<&str> = st.running.iter().map(|&t| self.ids[t].as_str()).collect();
        let mut line = format!(
            "[{}/{}] running: {}",
            st.finished,
            self.total,
            names.join(", ")
        );
        if line.chars().count() > width - 1 {
            line = line.chars().take(width - 2).collect::<String>() + "…";
        }
        let mut e = std::io::stderr().lock();
        let _ = e.write_all(format!("\r\x1b[2K{}", self.style.dim(&line)).as_bytes());
        let _ = e.flush();
        st.progress_shown = true;
    }

    fn finish(&self, summary: &RunSummary, total: usize) {
        let s = &self.style;
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.erase_progress(&mut st);
        let items = summary.items.len();
        let hits = summary
            .items
            .iter()
            .filter(|r| r.cache == CacheStatus::Hit)
            .count();
        let saved: Duration = summary.items.iter().map(|r| r.saved).sum();
        let failed = st.failures.len();
        let mut line = String::new();
        line.push_str(&format!(
            "\n{} {}/{} cache hit, {:.1} s saved · {} task{} in {:.1} s",
            s.bold("Summary:"),
            hits,
            items,
            saved.as_secs_f64(),
            total,
            if total == 1 { "" } else { "s" },
            summary.duration.as_secs_f64()
        ));
        if failed > 0 {
            line.push_str(&format!(" · {}", s.red(&format!("{failed} failed"))));
        }
        if st.stopped > 0 {
            line.push_str(&format!(" · {} stopped", st.stopped));
        }
        if !summary.skipped.is_empty() {
            line.push_str(&format!(" · {} not run", summary.skipped.len()));
        }
        if summary.cancelled {
            line.push_str(&format!(" · {}", s.red("cancelled")));
        }
        line.push('\n');
        for (id, code) in &st.failures {
            line.push_str(&format!("  {} {id} exited with code {code}\n", s.red("✗")));
        }
        let mut o = std::io::stdout().lock();
        let _ = o.write_all(line.as_bytes());
        let _ = o.flush();
    }
}

impl Printer {
    fn handle(&self, st: &mut PrinterState, event: RunEvent) {
        match event {
            RunEvent::ItemStart {
                task,
                item,
                items,
                command,
                status,
            } => {
                st.running.insert(task);
                st.items.insert(task, items);
                let h = self.header(task, item, items, &command, &status);
                self.status_line(st, task, OutStream::Stdout, h);
            }
            RunEvent::Output {
                task,
                item,
                stream,
                bytes,
            } => match self.mode {
                LogMode::Interleaved => self.write_out(st, stream, &bytes),
                LogMode::Labeled => self.labeled(st, task, item, stream, &bytes, false),
                LogMode::Grouped => st.grouped.entry(task).or_default().push((stream, bytes)),
            },
            RunEvent::Note {
                task,
                item: _,
                message,
            } => {
                let important = message.starts_with("not cached");
                if self.verbose || important {
                    let line = format!(
                        "{}\n",
                        self.style.dim(&format!("  {} {message}", self.ids[task]))
                    );
                    self.status_line(st, task, OutStream::Stderr, line);
                }
            }
            RunEvent::ItemEnd { task, result } => {
                let ItemResult {
                    item,
                    exit_code,
                    interrupted,
                    ..
                } = result;
                if exit_code != 0 || st.items.get(&task).is_none_or(|&n| item + 1 >= n) {
                    st.running.remove(&task);
                    st.finished += 1;
                }
                if self.mode == LogMode::Labeled {
                    for stream in [OutStream::Stdout, OutStream::Stderr] {
                        self.labeled(st, task, item, stream, &[], true);
                    }
                }
                if exit_code != 0 {
                    let line = if interrupted {
                        st.stopped += 1;
                        format!(
                            "{}\n",
                            self.style.dim(&format!("■ {} stopped", self.ids[task]))
                        )
                    } else {
                        st.failures.push((self.ids[task].clone(), exit_code));
                        format!(
                            "{}\n",
                            self.style.red(&format!(
                                "✗ {} exited with code {exit_code}",
                                self.ids[task]
                            ))
                        )
                    };
                    self.status_line(st, task, OutStream::Stderr, line);
                }
                if self.mode == LogMode::Grouped {
                    for (stream, bytes) in st.grouped.remove(&task).unwrap_or_default() {
                        self.write_out(st, stream, &bytes);
                    }
                }
            }
            RunEvent::Skipped { task } => {
                if self.verbose {
                    let line = format!(
                        "{}\n",
                        self.style.dim(&format!("- {} not run", self.ids[task]))
                    );
                    self.write_out(st, OutStream::Stderr, line.as_bytes());
                }
            }
        }
    }
}

impl Reporter for Printer {
    fn event(&self, event: RunEvent) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.handle(&mut st, event);
        self.draw_progress(&mut st);
    }
}
