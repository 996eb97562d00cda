//! `cargo xtask bench-trace`: the cost of zero-config caching.
//!
//! - **Tracing overhead**: a TypeScript project of N files built with `tsc`, and bundled with
//!   esbuild (a static Go binary), each run four ways, interleaved: the tool by hand,
//!   `baton run --no-cache` (spawned by Baton, not traced, nothing stored), `baton run` on an
//!   empty cache (traced, outputs archived and stored), and the same with the tracer's
//!   supervisor at normal priority (`BATON_TRACE_REALTIME=0`). The difference between the second
//!   and the third is what tracing plus storing costs; wall time and the CPU time (user + sys)
//!   of the process tree are both reported.
//! - **Hit check**: a task whose build reads 10,000 files: the wall time of `baton run` when
//!   everything hits (every inferred input re-fingerprinted), against the same for a task with
//!   one input; the difference is the check of 10,000 inputs (warm: the file-hash cache holds).
//!
//! The TypeScript tools come from `examples/monorepo/node_modules` (`npm ci` there first).
//! Results go to BENCHMARKS.md between `<!-- bench-trace:start -->` and `<!-- bench-trace:end -->`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use crate::proc::{bench_env, children_cpu, command, run};

/// Options of `cargo xtask bench-trace`.
pub struct Options {
    /// Number of TypeScript files of the tsc/esbuild project.
    pub files: usize,
    /// Number of files the hit-check task reads.
    pub inputs: usize,
    /// Repetitions of each measurement (the median is reported).
    pub runs: usize,
    /// The report to update.
    pub out: PathBuf,
    /// Scratch directory.
    pub work_dir: PathBuf,
    /// The baton binary.
    pub baton: PathBuf,
    /// Repository root (for `examples/monorepo/node_modules`).
    pub repo: PathBuf,
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// A TypeScript project of `n` modules, each importing the previous one.
fn generate_ts(dir: &Path, n: usize, bin: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    let tsc = bin.join("tsc");
    let esbuild = bin.join("esbuild");
    write(
        &dir.join("package.json"),
        &format!(
            r#"{{ "name": "ts-bench", "private": true, "scripts": {{
  "build": "{} -p .",
  "bundle": "{} src/index.ts --bundle --platform=node --outfile=bundle/index.js"
}} }}"#,
            tsc.display(),
            esbuild.display()
        ),
    )?;
    write(
        &dir.join("tsconfig.json"),
        r#"{ "compilerOptions": { "target": "ES2022", "module": "NodeNext", "moduleResolution": "NodeNext", "strict": true, "declaration": true, "outDir": "dist", "rootDir": "src", "skipLibCheck": true }, "include": ["src"] }"#,
    )?;
    write(&dir.join(".gitignore"), "dist\nbundle\n.baton\n")?;
    for i in 0..n {
        let body = if i == 0 {
            "export function f0(x: number): number {\n  return x + 1;\n}\n".to_owned()
        } else {
            format!(
                "import {{ f{p} }} from \"./m{p}.js\";\n\n/** Step {i}. */\nexport function f{i}(x: number): number {{\n  const y: number = f{p}(x) * 2;\n  return y % 1000003;\n}}\n",
                p = i - 1
            )
        };
        write(&dir.join(format!("src/m{i}.ts")), &body)?;
    }
    write(
        &dir.join("src/index.ts"),
        &format!(
            "import {{ f{last} }} from \"./m{last}.js\";\nconsole.log(f{last}(1));\n",
            last = n - 1
        ),
    )?;
    Ok(())
}

/// A task that reads `n` files (and one with a single input, the baseline).
fn generate_many(dir: &Path, n: usize) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    write(
        &dir.join("package.json"),
        r#"{ "name": "trace-many-root", "private": true, "workspaces": ["pkgs/*"] }"#,
    )?;
    write(
        &dir.join("pkgs/many/package.json"),
        r#"{ "name": "many", "scripts": { "build": "node build.js" } }"#,
    )?;
    write(
        &dir.join("pkgs/many/build.js"),
        r#"const fs = require("fs");
let total = 0;
for (const d of fs.readdirSync("data")) for (const f of fs.readdirSync("data/" + d)) total += fs.readFileSync(`data/${d}/${f}`).length;
fs.writeFileSync("total.txt", String(total));
"#,
    )?;
    for i in 0..n {
        write(
            &dir.join(format!("pkgs/many/data/d{}/f{i}.txt", i / 500)),
            &format!("{i}\n"),
        )?;
    }
    write(
        &dir.join("pkgs/one/package.json"),
        r#"{ "name": "one", "scripts": { "build": "node build.js" } }"#,
    )?;
    write(
        &dir.join("pkgs/one/build.js"),
        r#"require("fs").writeFileSync("total.txt", "1");"#,
    )?;
    Ok(())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn pct(after: Duration, before: Duration) -> String {
    format!(
        "{:+.1}%",
        (after.as_secs_f64() / before.as_secs_f64() - 1.0) * 100.0
    )
}

/// Medians of one way of running a command: wall time, and CPU time (user + system) of the
/// process tree it started.
#[derive(Clone, Copy)]
struct Timing {
    wall: Duration,
    cpu: Duration,
}

/// One way of running the measured command.
struct Mode<'a> {
    program: &'a Path,
    args: Vec<&'a str>,
    env: &'a [(&'a str, &'a str)],
    check: &'a dyn Fn(&str) -> Result<()>,
}

/// Times every mode `runs` times, in rotating order (so load from elsewhere on the machine spreads
/// over all of them), after `prepare` each time; medians per mode.
fn time_modes(
    runs: usize,
    dir: &Path,
    tools_bin: &Path,
    modes: &[Mode<'_>],
    prepare: &dyn Fn() -> Result<()>,
) -> Result<Vec<Timing>> {
    let mut samples: Vec<(Vec<Duration>, Vec<Duration>)> = modes
        .iter()
        .map(|_| (Vec::with_capacity(runs), Vec::with_capacity(runs)))
        .collect();
    for round in 0..runs {
        for k in 0..modes.len() {
            let i = (k + round) % modes.len();
            let mode = &modes[i];
            prepare()?;
            let mut cmd = command(mode.program);
            cmd.args(&mode.args).current_dir(dir);
            bench_env(&mut cmd, tools_bin);
            for (name, value) in mode.env {
                cmd.env(name, value);
            }
            let cpu_before = children_cpu();
            let done = run(
                &mut cmd,
                &format!("{} {}", mode.program.display(), mode.args.join(" ")),
            )?;
            let cpu = children_cpu().saturating_sub(cpu_before);
            (mode.check)(&done.text())?;
            samples[i].0.push(done.elapsed);
            samples[i].1.push(cpu);
        }
    }
    Ok(samples
        .into_iter()
        .map(|(wall, cpu)| Timing {
            wall: median(wall),
            cpu: median(cpu),
        })
        .collect())
}

/// Times `args` of `program` in `dir`, `runs` times, after `prepare` each time (wall medians).
fn time(
    runs: usize,
    dir: &Path,
    program: &Path,
    args: &[&str],
    tools_bin: &Path,
    prepare: &dyn Fn() -> Result<()>,
    check: &dyn Fn(&str) -> Result<()>,
) -> Result<Duration> {
    let mode = Mode {
        program,
        args: args.to_vec(),
        env: &[],
        check,
    };
    Ok(time_modes(runs, dir, tools_bin, &[mode], prepare)?[0].wall)
}

/// The 1-, 5- and 15-minute load averages (`/proc/loadavg`), for the report.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Runs the benchmark and updates the report.
pub fn run_bench(opts: &Options) -> Result<()> {
    let bin = opts.repo.join("examples/monorepo/node_modules/.bin");
    if !bin.join("tsc").exists() || !bin.join("esbuild").exists() {
        bail!("run `npm ci` in examples/monorepo first (tsc and esbuild come from there)");
    }
    if !opts.baton.exists() {
        bail!(
            "{} not found: cargo build --release -p baton-cli",
            opts.baton.display()
        );
    }
    let ts = opts.work_dir.join("trace-ts");
    let many = opts.work_dir.join("trace-many");
    eprintln!(
        "generating {} TypeScript files and {} inputs…",
        opts.files, opts.inputs
    );
    generate_ts(&ts, opts.files, &bin)?;
    generate_many(&many, opts.inputs)?;
    let baton = opts.baton.as_path();
    let clean = |dir: &Path, what: &[&str]| -> Result<()> {
        for w in what {
            let _ = std::fs::remove_dir_all(dir.join(w));
        }
        Ok(())
    };
    let none = |_: &str| Ok(());
    let expect = |needle: &'static str| {
        move |text: &str| {
            if text.contains(needle) {
                Ok(())
            } else {
                bail!("expected `{needle}` in:\n{}", crate::proc::tail(text, 20))
            }
        }
    };
    let runs = opts.runs;
    let load_before = load_average();
    // Per tool: by hand, --no-cache, traced + stored, traced + stored with the supervisor at
    // normal priority.
    let mut rows: Vec<(String, Vec<Timing>)> = Vec::new();
    for (task, out_dir, program) in [("build", "dist", "tsc"), ("bundle", "bundle", "esbuild")] {
        eprintln!("timing {program}…");
        let args: Vec<String> = if program == "tsc" {
            vec!["-p".into(), ".".into()]
        } else {
            "src/index.ts --bundle --platform=node --outfile=bundle/index.js"
                .split(' ')
                .map(str::to_owned)
                .collect()
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let prep = || clean(&ts, &[out_dir, ".baton"]);
        let tool = bin.join(program);
        let disabled = expect("cache disabled");
        let miss = expect("cache miss");
        let modes = [
            Mode {
                program: &tool,
                args: args.clone(),
                env: &[],
                check: &none,
            },
            Mode {
                program: baton,
                args: vec!["run", task, "--no-cache"],
                env: &[],
                check: &disabled,
            },
            Mode {
                program: baton,
                args: vec!["run", task],
                env: &[],
                check: &miss,
            },
            Mode {
                program: baton,
                args: vec!["run", task],
                env: &[("BATON_TRACE_REALTIME", "0")],
                check: &miss,
            },
        ];
        let timings = time_modes(runs, &ts, &bin, &modes, &prep)?;
        rows.push((program.to_owned(), timings));
    }
    let load_after = load_average();
    eprintln!("timing the hit check…");
    let warm = |dir: &Path, pkg: &str| -> Result<()> {
        let mut cmd = command(baton);
        cmd.args(["run", "build"])
            .current_dir(dir.join("pkgs").join(pkg));
        bench_env(&mut cmd, &bin);
        run(&mut cmd, "warm-up run")?;
        Ok(())
    };
    warm(&many, "many")?;
    warm(&many, "one")?;
    let hit = |pkg: &str| {
        time(
            runs.max(5),
            &many.join("pkgs").join(pkg),
            baton,
            &["run", "build"],
            &bin,
            &|| Ok(()),
            &expect("cache hit"),
        )
    };
    let hit_many = hit("many")?;
    let hit_one = hit("one")?;

    let mut section = String::new();
    writeln!(
        section,
        "## Zero-config caching (`cargo xtask bench-trace`)\n"
    )?;
    writeln!(
        section,
        "Medians of {runs} runs per column, ms; the columns of a tool run in rotating order, \
         so load from elsewhere on the machine spreads over all of them (load average before: \
         {load_before}, after: {load_after}, 2 cores). Baton traces every process of a task \
         (seccomp user notification) to find its inputs and outputs; `--no-cache` runs the same \
         command through Baton without tracing or storing. While one thread of the task makes \
         call after call, the tracer's supervisor thread runs at real-time priority when allowed \
         (root here); the last column turns that off (`BATON_TRACE_REALTIME=0`), as for a user \
         without `CAP_SYS_NICE`.\n"
    )?;
    writeln!(
        section,
        "| tool ({} TypeScript files) | by hand | `baton run --no-cache` | `baton run`, traced + stored | overhead vs `--no-cache` | traced + stored, normal priority | overhead |",
        opts.files
    )?;
    writeln!(section, "|---|---:|---:|---:|---:|---:|---:|")?;
    for (program, t) in &rows {
        writeln!(
            section,
            "| {program} wall | {} | {} | {} | {} | {} | {} |",
            ms(t[0].wall),
            ms(t[1].wall),
            ms(t[2].wall),
            pct(t[2].wall, t[1].wall),
            ms(t[3].wall),
            pct(t[3].wall, t[1].wall),
        )?;
        writeln!(
            section,
            "| {program} CPU (user + sys) | {} | {} | {} | {} | {} | {} |",
            ms(t[0].cpu),
            ms(t[1].cpu),
            ms(t[2].cpu),
            pct(t[2].cpu, t[1].cpu),
            ms(t[3].cpu),
            pct(t[3].cpu, t[1].cpu),
        )?;
    }
    writeln!(section)?;
    writeln!(
        section,
        "Hit check: `baton run build` with every input unchanged, for a task that read {} files: \
         {} ms; for a task with one input: {} ms; the check of {} inferred inputs costs the \
         difference, **{} ms** (target: under 50 ms warm).",
        opts.inputs,
        ms(hit_many),
        ms(hit_one),
        opts.inputs,
        ms(hit_many.saturating_sub(hit_one))
    )?;
    if let Some((_, t)) = rows.iter().find(|r| r.0 == "tsc") {
        let over = (t[2].wall.as_secs_f64() / t[1].wall.as_secs_f64() - 1.0) * 100.0;
        writeln!(
            section,
            "\nTarget: under 10% overhead on the tsc build (wall) — {over:+.1}%: {}.",
            if over < 10.0 { "met" } else { "**not met**" }
        )?;
    }
    update_report(&opts.out, &section)?;
    eprintln!("{section}");
    Ok(())
}

const START: &str = "<!-- bench-trace:start -->";
const END: &str = "<!-- bench-trace:end -->";

/// Replaces (or appends) the marked section of the report.
fn update_report(path: &Path, section: &str) -> Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let block = format!("{START}\n{section}{END}\n");
    let new = match (old.find(START), old.find(END)) {
        (Some(a), Some(b)) if b > a => format!(
            "{}{block}{}",
            &old[..a],
            &old[b + END.len()..].trim_start_matches('\n')
        ),
        _ => format!("{}\n{block}", old.trim_end()),
    };
    write(path, &new)
}
