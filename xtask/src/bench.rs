//! `cargo xtask bench`: times Baton against Turborepo, Nx, vite-task (`vp`) and a hand-written
//! scheduler on generated pnpm workspaces (cold build, full cache hit, one leaf source changed).

use std::collections::VecDeque;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::json;

use crate::proc::{self, bench_env, command};
use crate::workspace::{self, Graph, LAYER_WIDTH, LEAF_EDIT_FILE, WorkspaceSpec};

/// Versions of the peers installed into the tools directory (pinned for reproducible figures).
pub const TURBO_VERSION: &str = "2.11.11";
/// See [`TURBO_VERSION`].
pub const NX_VERSION: &str = "24.0.6";
/// See [`TURBO_VERSION`]; vite-plus 1.6.0 only installs with the `yuku-parser` 0.13.0 override.
pub const VITE_PLUS_VERSION: &str = "1.6.0";
/// See [`TURBO_VERSION`].
pub const PNPM_VERSION: &str = "12.21.0";

/// A column of the result table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tool {
    /// `baton run build -r`.
    Baton,
    /// `turbo run build`.
    Turbo,
    /// `nx run-many -t build`.
    Nx,
    /// `vp run -r --cache build`.
    Vp,
    /// The same `node build.js` commands, spawned in topological order by the xtask itself.
    Hand,
}

impl Tool {
    /// Every column, in table order.
    pub const ALL: [Tool; 5] = [Tool::Baton, Tool::Turbo, Tool::Nx, Tool::Vp, Tool::Hand];

    /// Lower-case name used on the command line and in the table.
    pub fn name(self) -> &'static str {
        match self {
            Tool::Baton => "baton",
            Tool::Turbo => "turbo",
            Tool::Nx => "nx",
            Tool::Vp => "vp",
            Tool::Hand => "hand",
        }
    }

    /// Parses a name as printed by [`Tool::name`].
    ///
    /// # Errors
    /// On an unknown name.
    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.name() == s.trim())
            .with_context(|| format!("unknown tool {s:?} (expected baton, turbo, nx, vp or hand)"))
    }

    /// Cache directories (relative to the workspace root) removed before a cold run.
    fn cache_dirs(self) -> &'static [&'static str] {
        match self {
            Tool::Baton => &[".baton"],
            Tool::Turbo => &[".turbo", "node_modules/.cache/turbo"],
            Tool::Nx => &[".nx"],
            Tool::Vp => &["node_modules/.vite"],
            Tool::Hand => &[],
        }
    }
}

/// A row of the result table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    /// Caches and every `dist/` removed, everything builds.
    Cold,
    /// Nothing changed since the last run: every task is a cache hit.
    Hit,
    /// One source file of a last-layer package changed: that build re-runs, the rest hit.
    Leaf,
}

impl Scenario {
    /// Every row, in table order.
    pub const ALL: [Scenario; 3] = [Scenario::Cold, Scenario::Hit, Scenario::Leaf];

    fn label(self) -> &'static str {
        match self {
            Scenario::Cold => "cold build",
            Scenario::Hit => "full cache hit",
            Scenario::Leaf => "one leaf changed",
        }
    }
}

/// Options of one bench invocation.
#[derive(Debug, Clone)]
pub struct Options {
    /// Workspace sizes (number of packages).
    pub sizes: Vec<usize>,
    /// Repetitions of the cache-hit and leaf-changed measurements.
    pub runs: usize,
    /// Repetitions of the cold measurement.
    pub cold_runs: usize,
    /// Tools to measure; `None` = every peer plus Baton when its binary works.
    pub only: Option<Vec<Tool>>,
    /// Markdown report path.
    pub out: PathBuf,
    /// Scratch directory for the tools install and the generated workspaces.
    pub work_dir: PathBuf,
    /// Parallelism given to every tool and the hand scheduler.
    pub concurrency: usize,
    /// The `baton` binary.
    pub baton: PathBuf,
    /// What the binary was built from (e.g. a commit), for the report; `None` = the repo HEAD
    /// at bench time is recorded instead.
    pub baton_rev: Option<String>,
}

/// Measurements of one cell.
#[derive(Debug, Clone)]
pub enum Cell {
    /// Every repetition: wall-clock time, and CPU time (user + system) of the process tree.
    Measured {
        /// Wall-clock times.
        wall: Vec<Duration>,
        /// CPU times, same order.
        cpu: Vec<Duration>,
    },
    /// The scenario means nothing for this tool (a hand-run has no cache).
    NotApplicable,
    /// Not measured, with the reason.
    Pending(String),
}

/// Median of `times` (mean of the two middle ones for an even count); `None` when empty.
fn median(times: &[Duration]) -> Option<Duration> {
    let mut t = times.to_vec();
    t.sort();
    let mid = t.len() / 2;
    match t.len() {
        0 => None,
        n if n % 2 == 1 => Some(t[mid]),
        _ => Some((t[mid - 1] + t[mid]) / 2),
    }
}

impl Cell {
    fn empty() -> Self {
        Cell::Measured {
            wall: Vec::new(),
            cpu: Vec::new(),
        }
    }

    fn median(&self) -> Option<Duration> {
        match self {
            Cell::Measured { wall, .. } => median(wall),
            _ => None,
        }
    }

    fn min(&self) -> Option<Duration> {
        match self {
            Cell::Measured { wall, .. } => wall.iter().min().copied(),
            _ => None,
        }
    }

    fn cpu_median(&self) -> Option<Duration> {
        match self {
            Cell::Measured { cpu, .. } => median(cpu),
            _ => None,
        }
    }
}

impl fmt::Display for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.median(), self.min(), self) {
            (Some(med), Some(min), _) => write!(f, "{} (min {})", ms(med), ms(min)),
            (_, _, Cell::NotApplicable) => write!(f, "—"),
            (_, _, Cell::Pending(_)) => write!(f, "pending"),
            _ => write!(f, "?"),
        }
    }
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else {
        format!("{ms:.1}")
    }
}

/// Results for one workspace size.
#[derive(Debug, Clone)]
pub struct SizeResult {
    /// Number of packages.
    pub packages: usize,
    /// Number of layers.
    pub layers: usize,
    /// `cells[tool][scenario]`, indexed like [`Tool::ALL`] and [`Scenario::ALL`].
    pub cells: Vec<Vec<Cell>>,
}

impl SizeResult {
    fn cell(&self, tool: Tool, scenario: Scenario) -> &Cell {
        &self.cells[tool as usize][scenario as usize]
    }
}

/// Context of the run recorded in the report.
#[derive(Debug, Clone)]
pub struct RunInfo {
    /// `(label, value)` lines describing the machine.
    pub machine: Vec<(String, String)>,
    /// `(tool, version)`.
    pub versions: Vec<(String, String)>,
    /// `(tool, command line)` as timed, Markdown (code spans included).
    pub commands: Vec<(String, String)>,
    /// Options of the run.
    pub options: Options,
}

/// Where the peers are installed.
struct Tools {
    dir: PathBuf,
    bin: PathBuf,
}

/// Installs turbo, nx, vite-plus and pnpm with npm into `<work>/tools` (skipped when the same
/// manifest is already installed).
fn install_tools(work: &Path) -> Result<Tools> {
    let dir = work.join("tools");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let manifest = serde_json::to_string_pretty(&json!({
        "name": "baton-bench-tools",
        "private": true,
        "dependencies": {
            "turbo": TURBO_VERSION,
            "nx": NX_VERSION,
            "vite-plus": VITE_PLUS_VERSION,
            "pnpm": PNPM_VERSION,
        },
        // vite-plus 1.6.0 resolves a yuku-parser that does not install; 0.13.0 does.
        "overrides": { "yuku-parser": "0.13.0" },
    }))?;
    let bin = dir.join("node_modules/.bin");
    let manifest_path = dir.join("package.json");
    let up_to_date = fs::read_to_string(&manifest_path).ok().as_deref() == Some(&manifest)
        && ["turbo", "nx", "vp", "pnpm"]
            .iter()
            .all(|b| bin.join(b).exists());
    if !up_to_date {
        fs::write(&manifest_path, &manifest)?;
        eprintln!("bench: npm install into {}", dir.display());
        proc::run(
            command("npm")
                .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&dir),
            "npm install (bench tools)",
        )?;
    }
    Ok(Tools { dir, bin })
}

fn installed_version(tools: &Tools, package: &str) -> String {
    let path = tools
        .dir
        .join("node_modules")
        .join(package)
        .join("package.json");
    fs::read_to_string(path)
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| v["version"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

/// A generated, installed workspace.
struct Ws {
    root: PathBuf,
    graph: Graph,
    leaf_original: String,
}

/// Generates the workspace of `n` packages for `tool` under `<work>/ws-<n>-<tool>`, runs
/// `pnpm install` and `git init` + commit there.
fn prepare_workspace(work: &Path, tools: &Tools, n: usize, tool: Tool) -> Result<Ws> {
    let root = work.join(format!("ws-{n}-{}", tool.name()));
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    }
    let graph = Graph::layered(n, LAYER_WIDTH)?;
    workspace::write_workspace(
        &root,
        &graph,
        &WorkspaceSpec {
            pnpm_version: installed_version(tools, "pnpm"),
        },
    )?;
    let env_cmd = |program: &str| {
        let mut c = command(program);
        bench_env(&mut c, &tools.bin);
        c.current_dir(&root);
        c
    };
    proc::run(
        env_cmd("pnpm").args(["install", "--prefer-offline"]),
        "pnpm install",
    )?;
    // nx and vp refuse to run without their package in the workspace's node_modules (turbo only
    // warns); a real repo has them as devDependencies. Link the npm-installed ones instead of
    // having pnpm fetch them again.
    for package in ["nx", "vite-plus", "turbo"] {
        let link = root.join("node_modules").join(package);
        std::os::unix::fs::symlink(tools.dir.join("node_modules").join(package), &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    proc::run(
        env_cmd("git").args(["init", "-q", "-b", "main"]),
        "git init",
    )?;
    proc::run(env_cmd("git").args(["add", "-A"]), "git add")?;
    proc::run(
        env_cmd("git").args([
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@example.invalid",
            "commit",
            "-q",
            "-m",
            "generated workspace",
        ]),
        "git commit",
    )?;
    let leaf_path = root
        .join(&graph.packages[graph.leaf()].dir)
        .join(LEAF_EDIT_FILE);
    let leaf_original = fs::read_to_string(&leaf_path)?;
    Ok(Ws {
        root,
        graph,
        leaf_original,
    })
}

impl Ws {
    fn leaf_path(&self) -> PathBuf {
        self.root
            .join(&self.graph.packages[self.graph.leaf()].dir)
            .join(LEAF_EDIT_FILE)
    }

    fn stamps(&self) -> Vec<Option<String>> {
        (0..self.graph.packages.len())
            .map(|i| fs::read_to_string(workspace::stamp_path(&self.root, &self.graph, i)).ok())
            .collect()
    }

    fn remove_dists(&self) -> Result<()> {
        for p in &self.graph.packages {
            let dist = self.root.join(&p.dir).join("dist");
            if dist.exists() {
                fs::remove_dir_all(&dist)
                    .with_context(|| format!("removing {}", dist.display()))?;
            }
        }
        Ok(())
    }

    fn remove_caches(&self, tool: Tool) -> Result<()> {
        for dir in tool.cache_dirs() {
            let path = self.root.join(dir);
            if path.exists() {
                fs::remove_dir_all(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
            }
        }
        Ok(())
    }
}

/// The command line a tool is timed with, run from the workspace root.
fn tool_argv(tool: Tool, opts: &Options) -> Option<Vec<String>> {
    let c = opts.concurrency.to_string();
    let argv: Vec<String> = match tool {
        Tool::Baton => vec![
            opts.baton.display().to_string(),
            "run".into(),
            "build".into(),
            "-r".into(),
            "--concurrency".into(),
            c,
        ],
        Tool::Turbo => vec![
            "turbo".into(),
            "run".into(),
            "build".into(),
            "--concurrency".into(),
            c,
        ],
        Tool::Nx => vec![
            "nx".into(),
            "run-many".into(),
            "-t".into(),
            "build".into(),
            "--parallel".into(),
            c,
        ],
        Tool::Vp => vec![
            "vp".into(),
            "run".into(),
            "-r".into(),
            "--cache".into(),
            "--concurrency-limit".into(),
            c,
            "build".into(),
        ],
        Tool::Hand => return None,
    };
    Some(argv)
}

fn run_tool(ws: &Ws, tools: &Tools, argv: &[String], what: &str) -> Result<proc::Finished> {
    let mut cmd = command(&argv[0]);
    cmd.args(&argv[1..]).current_dir(&ws.root);
    bench_env(&mut cmd, &tools.bin);
    proc::run(&mut cmd, what)
}

/// Runs `node build.js` in every package in topological order, at most `concurrency` at a time.
fn run_by_hand(ws: &Ws, tools: &Tools, concurrency: usize) -> Result<Duration> {
    let packages = &ws.graph.packages;
    let mut waiting: Vec<usize> = packages.iter().map(|p| p.deps.len()).collect();
    let mut dependents = vec![Vec::new(); packages.len()];
    for (i, p) in packages.iter().enumerate() {
        for d in &p.deps {
            dependents[*d].push(i);
        }
    }
    let mut ready: VecDeque<usize> = (0..packages.len()).filter(|i| waiting[*i] == 0).collect();
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    let (mut running, mut done) = (0, 0);
    while done < packages.len() {
        while running < concurrency {
            let Some(i) = ready.pop_front() else { break };
            let mut cmd = command("node");
            cmd.arg("build.js")
                .current_dir(ws.root.join(&packages[i].dir));
            bench_env(&mut cmd, &tools.bin);
            let tx = tx.clone();
            let name = packages[i].name.clone();
            std::thread::spawn(move || {
                let _ = tx.send((i, proc::run(&mut cmd, &format!("node build.js in {name}"))));
            });
            running += 1;
        }
        ensure!(running > 0, "hand scheduler stalled (cycle?)");
        let (i, result) = rx.recv().context("hand scheduler worker vanished")?;
        result?;
        running -= 1;
        done += 1;
        for d in &dependents[i] {
            waiting[*d] -= 1;
            if waiting[*d] == 0 {
                ready.push_back(*d);
            }
        }
    }
    Ok(start.elapsed())
}

/// Checks which packages executed their build, from the stamps before and after a run.
fn verify(
    ws: &Ws,
    tool: Tool,
    scenario: Scenario,
    before: &[Option<String>],
    output: &str,
) -> Result<()> {
    let after = ws.stamps();
    let leaf = ws.graph.leaf();
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        let name = &ws.graph.packages[i].name;
        let Some(a) = a else {
            bail!(
                "{} {}: {name} has no dist/stamp.txt after the run\n{}",
                tool.name(),
                scenario.label(),
                proc::tail(output, 40)
            );
        };
        let executed = b.as_ref() != Some(a);
        let expected = match scenario {
            Scenario::Cold => true,
            Scenario::Hit => false,
            Scenario::Leaf => i == leaf,
        };
        if executed != expected {
            bail!(
                "{} {}: {name} was {} but should have been {}\n{}",
                tool.name(),
                scenario.label(),
                if executed {
                    "built"
                } else {
                    "served from cache"
                },
                if expected {
                    "built"
                } else {
                    "served from cache"
                },
                proc::tail(output, 40)
            );
        }
    }
    Ok(())
}

/// Runs the tool (or the hand scheduler) once on `ws`; for the hand tool, `leaf_only` runs just
/// the leaf's build.
fn run_once(
    ws: &Ws,
    tools: &Tools,
    tool: Tool,
    opts: &Options,
    leaf_only: bool,
    what: &str,
) -> Result<(Duration, String)> {
    match tool_argv(tool, opts) {
        Some(argv) => {
            let f = run_tool(ws, tools, &argv, &format!("{} ({what})", tool.name()))?;
            Ok((f.elapsed, f.text()))
        }
        None if leaf_only => {
            let mut cmd = command("node");
            cmd.arg("build.js")
                .current_dir(ws.root.join(&ws.graph.packages[ws.graph.leaf()].dir));
            bench_env(&mut cmd, &tools.bin);
            let f = proc::run(&mut cmd, "node build.js (leaf)")?;
            Ok((f.elapsed, f.text()))
        }
        None => Ok((run_by_hand(ws, tools, opts.concurrency)?, String::new())),
    }
}

/// Untimed first run of a tool on its workspace: the first run may do one-time work (vp fetches
/// the `packageManager` pnpm into ~/.local/share/vite-plus) and warms the page cache.
fn warm_up(ws: &Ws, tools: &Tools, tool: Tool, opts: &Options) -> Result<()> {
    ws.remove_caches(tool)?;
    ws.remove_dists()?;
    run_once(ws, tools, tool, opts, false, "warm-up").map(drop)
}

/// One timed, verified repetition of `scenario`. `edit` numbers the leaf edit so that every
/// leaf-changed repetition writes content no cache has seen.
fn measure_once(
    ws: &Ws,
    tools: &Tools,
    tool: Tool,
    scenario: Scenario,
    opts: &Options,
    edit: u64,
) -> Result<(Duration, Duration)> {
    // Stamps are taken before deleting `dist/`: a build restored from a cache that survived the
    // clean-up would bring back an old stamp and be caught.
    let before = ws.stamps();
    match scenario {
        Scenario::Cold => {
            ws.remove_caches(tool)?;
            ws.remove_dists()?;
        }
        Scenario::Hit => {}
        Scenario::Leaf => fs::write(
            ws.leaf_path(),
            format!("{}// bench edit {edit}\n", ws.leaf_original),
        )?,
    }
    let cpu_before = proc::children_cpu();
    let (elapsed, output) = run_once(
        ws,
        tools,
        tool,
        opts,
        scenario == Scenario::Leaf,
        scenario.label(),
    )?;
    let cpu = proc::children_cpu().saturating_sub(cpu_before);
    verify(ws, tool, scenario, &before, &output)?;
    Ok((elapsed, cpu))
}

/// Whether the Baton binary exists and answers `baton run --help`; `Err(reason)` otherwise.
fn baton_available(opts: &Options, tools: &Tools) -> Result<(), String> {
    if !opts.baton.exists() {
        return Err(format!(
            "{} not found (build it with `cargo build --release -p baton-cli`)",
            opts.baton.display()
        ));
    }
    let mut cmd = command(&opts.baton);
    cmd.args(["run", "--help"]);
    bench_env(&mut cmd, &tools.bin);
    proc::run(&mut cmd, "baton run --help")
        .map(drop)
        .map_err(|e| format!("`baton run --help` failed: {}", first_line(&e.to_string())))
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_owned()
}

/// The 1/5/15-minute load averages: the machine may be shared (other builds running).
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn machine_info(tools: &Tools) -> Vec<(String, String)> {
    let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| "?".into());
    let mem = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map(|kb| format!("{:.1} GiB", kb as f64 / 1024.0 / 1024.0))
        .unwrap_or_else(|| "?".into());
    let nproc = std::thread::available_parallelism()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into());
    let mut node = command("node");
    node.arg("--version");
    bench_env(&mut node, &tools.bin);
    let node_version = proc::run(&mut node, "node --version")
        .map(|f| f.stdout.trim().to_owned())
        .unwrap_or_else(|_| "?".into());
    vec![
        ("CPU".into(), cpu),
        ("nproc".into(), nproc),
        ("memory".into(), mem),
        (
            "kernel".into(),
            format!("Linux {}", read("/proc/sys/kernel/osrelease").trim()),
        ),
        ("node".into(), node_version),
        ("load average at the start".into(), load_average()),
    ]
}

/// Runs the whole benchmark and writes the report.
///
/// # Errors
/// When a tool cannot be installed, a workspace cannot be prepared, or a tool fails or does not
/// hit/miss as expected (Baton auto-included is recorded as pending instead).
pub fn run(mut opts: Options) -> Result<()> {
    // Tools run from the workspace root: a relative `--baton` must not depend on it.
    if let Ok(abs) = opts.baton.canonicalize() {
        opts.baton = abs;
    }
    ensure!(
        opts.runs > 0 && opts.cold_runs > 0,
        "--runs and --cold-runs must be positive"
    );
    ensure!(opts.concurrency > 0, "--concurrency must be positive");
    fs::create_dir_all(&opts.work_dir)
        .with_context(|| format!("creating {}", opts.work_dir.display()))?;
    let work = opts.work_dir.canonicalize()?;
    let tools = install_tools(&work)?;

    let baton_explicit = opts.only.as_ref().is_some_and(|o| o.contains(&Tool::Baton));
    let baton_auto = opts.only.is_none();
    let mut baton_pending = None;
    let mut selected: Vec<Tool> = match &opts.only {
        Some(only) => Tool::ALL.into_iter().filter(|t| only.contains(t)).collect(),
        None => Tool::ALL.to_vec(),
    };
    if selected.contains(&Tool::Baton) {
        if let Err(reason) = baton_available(&opts, &tools) {
            ensure!(!baton_explicit, "baton requested but unavailable: {reason}");
            eprintln!("bench: baton skipped: {reason}");
            baton_pending = Some(reason);
            selected.retain(|t| *t != Tool::Baton);
        }
    } else if baton_auto {
        baton_pending = Some("not selected".into());
    }

    let mut versions = vec![
        ("turbo".to_owned(), installed_version(&tools, "turbo")),
        ("nx".to_owned(), installed_version(&tools, "nx")),
        (
            "vite-plus (vp)".to_owned(),
            installed_version(&tools, "vite-plus"),
        ),
        ("pnpm".to_owned(), installed_version(&tools, "pnpm")),
    ];
    if selected.contains(&Tool::Baton) {
        let mut cmd = command(&opts.baton);
        cmd.arg("--version");
        bench_env(&mut cmd, &tools.bin);
        let v = proc::run(&mut cmd, "baton --version")
            .map(|f| f.stdout.trim().to_owned())
            .unwrap_or_else(|_| "?".into());
        let commit = if let Some(rev) = &opts.baton_rev {
            format!("built from {rev}")
        } else {
            let mut git = command("git");
            git.args(["log", "-1", "--format=%h %cI"]);
            git.current_dir(env!("CARGO_MANIFEST_DIR"));
            let head = proc::run(&mut git, "git log")
                .map(|f| f.stdout.trim().to_owned())
                .unwrap_or_default();
            format!("repo HEAD at bench time: {head}")
        };
        let built = {
            let mut date = command("date");
            date.arg("-u")
                .arg("-r")
                .arg(&opts.baton)
                .arg("+%Y-%m-%dT%H:%M:%SZ");
            proc::run(&mut date, "date -r")
                .map(|f| f.stdout.trim().to_owned())
                .unwrap_or_default()
        };
        versions.insert(
            0,
            (
                "baton".into(),
                format!(
                    "{v} (binary {}, modified {built}; {commit})",
                    opts.baton.display()
                ),
            ),
        );
    }

    let mut machine = machine_info(&tools);
    let mut results = Vec::new();
    let mut edit = 0;
    let mut baton_failed: Option<String> = None;
    for &n in &opts.sizes {
        // One copy of the workspace per tool: tools restore `dist/` from their own caches, so
        // sharing one tree would mix their outputs; separate trees let the repetitions of all
        // tools interleave, spreading the noise of a shared machine evenly.
        let mut active: Vec<(Tool, Ws)> = Vec::new();
        for &tool in &selected {
            if tool == Tool::Baton && baton_failed.is_some() {
                continue;
            }
            eprintln!(
                "bench: {n} packages: preparing the {} workspace",
                tool.name()
            );
            let ws = prepare_workspace(&work, &tools, n, tool)?;
            eprintln!("bench: {n} packages: {} warm-up", tool.name());
            match warm_up(&ws, &tools, tool, &opts) {
                Ok(()) => active.push((tool, ws)),
                Err(e) if tool == Tool::Baton && !baton_explicit => {
                    eprintln!("bench: baton failed, recorded as pending: {e:#}");
                    baton_failed = Some(format!("failed: {}", first_line(&format!("{e:#}"))));
                }
                Err(e) => return Err(e),
            }
        }
        let mut cells: Vec<Vec<Cell>> = Tool::ALL
            .iter()
            .map(|t| {
                let why = match (t, &baton_failed, &baton_pending) {
                    (Tool::Baton, Some(why), _) | (Tool::Baton, None, Some(why)) => why.clone(),
                    _ => "not selected".into(),
                };
                vec![Cell::Pending(why); Scenario::ALL.len()]
            })
            .collect();
        for (tool, _) in &active {
            cells[*tool as usize] = Scenario::ALL
                .iter()
                .map(|sc| {
                    if *tool == Tool::Hand && *sc == Scenario::Hit {
                        Cell::NotApplicable
                    } else {
                        Cell::empty()
                    }
                })
                .collect();
        }
        for scenario in Scenario::ALL {
            let reps = match scenario {
                Scenario::Cold => opts.cold_runs,
                Scenario::Hit | Scenario::Leaf => opts.runs,
            };
            for rep in 0..reps {
                // Rotate the order so no tool always runs first (or right after another).
                let order: Vec<usize> = (0..active.len())
                    .map(|i| (i + rep) % active.len().max(1))
                    .collect();
                let mut dropped = Vec::new();
                for i in order {
                    let (tool, ws) = &active[i];
                    let Cell::Measured { wall, cpu } =
                        &mut cells[*tool as usize][scenario as usize]
                    else {
                        continue;
                    };
                    edit += 1;
                    match measure_once(ws, &tools, *tool, scenario, &opts, edit) {
                        Ok((elapsed, cpu_time)) => {
                            eprintln!(
                                "bench: {n:>4} {:<5} {:<16} #{rep}: {} ms (cpu {} ms)",
                                tool.name(),
                                scenario.label(),
                                ms(elapsed),
                                ms(cpu_time)
                            );
                            wall.push(elapsed);
                            cpu.push(cpu_time);
                        }
                        Err(e) if *tool == Tool::Baton && !baton_explicit => {
                            eprintln!("bench: baton failed, recorded as pending: {e:#}");
                            let why = format!("failed: {}", first_line(&format!("{e:#}")));
                            cells[*tool as usize] = vec![Cell::Pending(why.clone()); 3];
                            baton_failed = Some(why);
                            dropped.push(i);
                        }
                        Err(e) => return Err(e),
                    }
                }
                for i in dropped.into_iter().rev() {
                    active.remove(i);
                }
            }
        }
        for (_, ws) in &active {
            fs::write(ws.leaf_path(), &ws.leaf_original)?;
        }
        results.push(SizeResult {
            packages: n,
            layers: Graph::layered(n, LAYER_WIDTH)?.layers(),
            cells,
        });
    }

    let commands = Tool::ALL
        .iter()
        .map(|t| {
            let line = match tool_argv(*t, &opts) {
                Some(mut argv) if *t == Tool::Baton => {
                    argv[0] = "baton".into();
                    format!("`{}`", argv.join(" "))
                }
                Some(argv) => format!("`{}`", argv.join(" ")),
                None => format!(
                    "`node build.js` per package, spawned by the xtask in topological order, \
                     {} at a time (leaf: `node build.js` in the leaf package)",
                    opts.concurrency
                ),
            };
            (t.name().to_owned(), line)
        })
        .collect();
    let info = RunInfo {
        machine: {
            machine.push(("load average at the end".into(), load_average()));
            machine
        },
        versions,
        commands,
        options: opts.clone(),
    };
    let report = crate::report::render(&info, &results);
    // Other benchmarks live in the same file: only the generated block is replaced.
    let existing = fs::read_to_string(&opts.out).ok();
    let merged = crate::report::merge(existing.as_deref(), &report);
    fs::write(&opts.out, merged).with_context(|| format!("writing {}", opts.out.display()))?;
    eprintln!("bench: wrote {}", opts.out.display());
    Ok(())
}

/// Median wall time of a cell, for the report's target checks.
pub fn median_of(result: &SizeResult, tool: Tool, scenario: Scenario) -> Option<Duration> {
    result.cell(tool, scenario).median()
}

/// Minimum wall time of a cell, for the report's target checks.
pub fn min_of(result: &SizeResult, tool: Tool, scenario: Scenario) -> Option<Duration> {
    result.cell(tool, scenario).min()
}

/// Median CPU time of a cell, formatted (`—`/`pending` as for wall times).
pub fn cpu_text(result: &SizeResult, tool: Tool, scenario: Scenario) -> String {
    let cell = result.cell(tool, scenario);
    match cell.cpu_median() {
        Some(d) => ms(d),
        None => cell.to_string(),
    }
}

/// Why a tool's column is empty for this size, if it is.
pub fn pending_reason(result: &SizeResult, tool: Tool) -> Option<&str> {
    result.cells[tool as usize].iter().find_map(|c| match c {
        Cell::Pending(reason) => Some(reason.as_str()),
        _ => None,
    })
}

/// Formats a cell for the report.
pub fn cell_text(result: &SizeResult, tool: Tool, scenario: Scenario) -> String {
    result.cell(tool, scenario).to_string()
}

/// Label of a scenario row.
pub fn scenario_label(scenario: Scenario) -> &'static str {
    scenario.label()
}

/// Formats a duration in milliseconds as the report does.
pub fn format_ms(d: Duration) -> String {
    ms(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_min_of_a_cell() {
        let c = Cell::Measured {
            wall: vec![
                Duration::from_millis(30),
                Duration::from_millis(10),
                Duration::from_millis(20),
            ],
            cpu: vec![Duration::from_millis(5); 3],
        };
        assert_eq!(c.median(), Some(Duration::from_millis(20)));
        assert_eq!(c.min(), Some(Duration::from_millis(10)));
        assert_eq!(c.to_string(), "20.0 (min 10.0)");
        assert_eq!(c.cpu_median(), Some(Duration::from_millis(5)));
        let even = Cell::Measured {
            wall: vec![Duration::from_millis(100), Duration::from_millis(300)],
            cpu: vec![],
        };
        assert_eq!(even.cpu_median(), None);
        assert_eq!(even.to_string(), "200 (min 100)");
        assert_eq!(Cell::NotApplicable.to_string(), "—");
    }

    #[test]
    fn tool_names_round_trip() {
        for t in Tool::ALL {
            assert_eq!(Tool::parse(t.name()).unwrap(), t);
        }
        assert!(Tool::parse("lerna").is_err());
    }
}
