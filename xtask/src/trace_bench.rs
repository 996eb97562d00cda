//! `cargo xtask bench-trace`: the cost of zero-config caching.
//!
//! - **Tracing overhead**: a TypeScript project of N files built with `tsc`, and bundled with
//!   esbuild (a static Go binary), each run three ways in the same session: the tool by hand,
//!   `baton run --no-cache` (spawned by Baton, not traced, nothing stored) and `baton run` on an
//!   empty cache (traced, outputs archived and stored). The difference between the last two is
//!   what tracing plus storing costs.
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

use crate::proc::{bench_env, command, run};

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

/// Times `args` of `program` in `dir`, `runs` times, after `prepare` each time.
fn time(
    runs: usize,
    dir: &Path,
    program: &Path,
    args: &[&str],
    tools_bin: &Path,
    prepare: &dyn Fn() -> Result<()>,
    check: &dyn Fn(&str) -> Result<()>,
) -> Result<Duration> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        prepare()?;
        let mut cmd = command(program);
        cmd.args(args).current_dir(dir);
        bench_env(&mut cmd, tools_bin);
        let done = run(
            &mut cmd,
            &format!("{} {}", program.display(), args.join(" ")),
        )?;
        check(&done.text())?;
        times.push(done.elapsed);
    }
    Ok(median(times))
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
    let mut rows: Vec<(String, Duration, Duration, Duration)> = Vec::new();
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
        let hand = time(runs, &ts, &bin.join(program), &args, &bin, &prep, &none)?;
        let untraced = time(
            runs,
            &ts,
            baton,
            &["run", task, "--no-cache"],
            &bin,
            &prep,
            &expect("cache disabled"),
        )?;
        let traced = time(
            runs,
            &ts,
            baton,
            &["run", task],
            &bin,
            &prep,
            &expect("cache miss"),
        )?;
        rows.push((program.to_owned(), hand, untraced, traced));
    }
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
        "Same machine and session as below it was run in; medians of {runs} runs, ms. \
         Baton traces every process of a task (seccomp user notification) to find its inputs \
         and outputs; `--no-cache` runs the same command through Baton without tracing or \
         storing.\n"
    )?;
    writeln!(
        section,
        "| tool ({} TypeScript files) | by hand | `baton run --no-cache` | `baton run`, traced + stored | overhead vs `--no-cache` |",
        opts.files
    )?;
    writeln!(section, "|---|---:|---:|---:|---:|")?;
    for (program, hand, untraced, traced) in &rows {
        let over = (traced.as_secs_f64() / untraced.as_secs_f64() - 1.0) * 100.0;
        writeln!(
            section,
            "| {program} | {} | {} | {} | {over:+.1}% |",
            ms(*hand),
            ms(*untraced),
            ms(*traced)
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
    let tsc = rows.iter().find(|r| r.0 == "tsc");
    if let Some((_, _, untraced, traced)) = tsc {
        let over = (traced.as_secs_f64() / untraced.as_secs_f64() - 1.0) * 100.0;
        writeln!(
            section,
            "\nTarget: under 10% overhead on the tsc build — {over:+.1}%: {}.",
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
