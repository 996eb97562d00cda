//! Measures what tracing costs a command: runs it untraced and traced, alternately, and prints the
//! medians of wall time, the command's CPU time (user + sys of the tree, from `RUSAGE_CHILDREN`),
//! the supervisor's CPU time (`RUSAGE_SELF` of this process, whose main thread only waits) and
//! context switches.
//!
//! `cargo run --release -p baton-trace --example bench -- [--runs N] [--clean PATH]... [--traced-only | --untraced-only]
//! PROGRAM ARGS...`
//!
//! `--clean PATH` removes `PATH` (a file or directory) before every run, e.g. the build's output
//! directory. `--traced-only` / `--untraced-only` run one side only (to interleave several builds of this
//! example from a script).

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Default)]
struct Sample {
    wall: Duration,
    child_cpu: Duration,
    self_cpu: Duration,
    switches: i64,
    notifications: u64,
}

fn usage(who: libc::c_int) -> libc::rusage {
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid out-pointer.
    unsafe { libc::getrusage(who, &raw mut ru) };
    ru
}

fn cpu(ru: &libc::rusage) -> Duration {
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

#[expect(
    clippy::disallowed_methods,
    reason = "a benchmark of the tracer spawns the measured command directly"
)]
fn run_once(args: &[String], traced: bool) -> Result<Sample, Box<dyn std::error::Error>> {
    let mut cmd = Command::new(&args[0]);
    cmd.args(&args[1..]);
    let (c0, s0) = (usage(libc::RUSAGE_CHILDREN), usage(libc::RUSAGE_SELF));
    let t = Instant::now();
    let supervisor = if traced {
        let (hook, supervisor) = baton_trace::start()?;
        // SAFETY: the hook only makes async-signal-safe system calls in the forked child.
        unsafe { cmd.pre_exec(hook.into_pre_exec()) };
        Some(supervisor)
    } else {
        None
    };
    let status = cmd.spawn()?.wait()?;
    drop(cmd);
    let log = supervisor
        .map(baton_trace::Supervisor::finish)
        .transpose()?;
    let wall = t.elapsed();
    let (c1, s1) = (usage(libc::RUSAGE_CHILDREN), usage(libc::RUSAGE_SELF));
    if !status.success() {
        return Err(format!("command failed: {status}").into());
    }
    Ok(Sample {
        wall,
        child_cpu: cpu(&c1) - cpu(&c0),
        self_cpu: cpu(&s1) - cpu(&s0),
        switches: (c1.ru_nvcsw + c1.ru_nivcsw + s1.ru_nvcsw + s1.ru_nivcsw)
            - (c0.ru_nvcsw + c0.ru_nivcsw + s0.ru_nvcsw + s0.ru_nivcsw),
        notifications: log.map_or(0, |l| l.notifications()),
    })
}

fn median<T: Copy + Ord>(mut v: Vec<T>) -> T {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn report(label: &str, samples: &[Sample]) {
    let wall = median(samples.iter().map(|s| s.wall).collect());
    let child = median(samples.iter().map(|s| s.child_cpu).collect());
    let sup = median(samples.iter().map(|s| s.self_cpu).collect());
    let total = median(samples.iter().map(|s| s.child_cpu + s.self_cpu).collect());
    let switches = median(samples.iter().map(|s| s.switches).collect());
    let notes = median(samples.iter().map(|s| s.notifications).collect());
    println!(
        "{label:9} wall {:8.1} ms  cpu(cmd) {:8.1} ms  cpu(supervisor) {:6.1} ms  cpu(total) {:8.1} ms  switches {switches:7}  notifications {notes}",
        ms(wall),
        ms(child),
        ms(sup),
        ms(total)
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut runs = 7;
    let mut clean = Vec::new();
    let mut untraced = true;
    let mut traced_too = true;
    while let Some(first) = args.first().cloned() {
        match first.as_str() {
            "--runs" => {
                runs = args.get(1).ok_or("--runs N")?.parse()?;
                args.drain(..2);
            }
            "--clean" => {
                clean.push(args.get(1).ok_or("--clean PATH")?.clone());
                args.drain(..2);
            }
            "--traced-only" => {
                untraced = false;
                args.remove(0);
            }
            "--untraced-only" => {
                traced_too = false;
                args.remove(0);
            }
            _ => break,
        }
    }
    if args.is_empty() {
        return Err("usage: bench [--runs N] [--clean PATH]... [--traced-only | --untraced-only] PROGRAM ARGS...".into());
    }
    baton_trace::is_available()?;
    let prepare = || {
        for path in &clean {
            let _ = std::fs::remove_dir_all(path);
            let _ = std::fs::remove_file(path);
        }
    };
    let (mut plain, mut traced) = (Vec::new(), Vec::new());
    for i in 0..runs {
        // Alternate which one goes first, so a trend in machine load hits both alike.
        let order: &[bool] = match (untraced, traced_too, i % 2) {
            (false, _, _) => &[true],
            (true, false, _) => &[false],
            (true, true, 0) => &[false, true],
            (true, true, _) => &[true, false],
        };
        for &t in order {
            prepare();
            let s = run_once(&args, t)?;
            if t { &mut traced } else { &mut plain }.push(s);
        }
    }
    if untraced {
        report("untraced", &plain);
    }
    if !traced_too {
        return Ok(());
    }
    report("traced", &traced);
    if untraced {
        let w = |v: &[Sample]| ms(median(v.iter().map(|s| s.wall).collect()));
        let c = |v: &[Sample]| ms(median(v.iter().map(|s| s.child_cpu + s.self_cpu).collect()));
        println!(
            "overhead  wall {:+.1}%  cpu {:+.1}%",
            (w(&traced) / w(&plain) - 1.0) * 100.0,
            (c(&traced) / c(&plain) - 1.0) * 100.0
        );
    }
    Ok(())
}
