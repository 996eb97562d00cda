//! Traces a command and prints what it touched, plus traced and untraced wall times.
//!
//! `cargo run -p baton-trace --example trace -- [--quiet] PROGRAM ARGS...`

use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus};
use std::time::Instant;

#[expect(
    clippy::disallowed_methods,
    reason = "baton-trace's example spawns directly until baton-exec grows a pre_exec hook"
)]
fn run(
    args: &[String],
    traced: bool,
) -> Result<(ExitStatus, Option<baton_trace::AccessLog>), Box<dyn std::error::Error>> {
    let mut cmd = Command::new(&args[0]);
    cmd.args(&args[1..]);
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
    Ok((status, log))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let quiet = args.first().is_some_and(|a| a == "--quiet");
    if quiet {
        args.remove(0);
    }
    if args.is_empty() {
        return Err("usage: trace [--quiet] PROGRAM ARGS...".into());
    }
    if let Err(reason) = baton_trace::is_available() {
        return Err(format!("{reason}").into());
    }
    let t = Instant::now();
    let (untraced_status, _) = run(&args, false)?;
    let untraced = t.elapsed();
    let t = Instant::now();
    let (status, log) = run(&args, true)?;
    let traced = t.elapsed();
    let log = log.ok_or("no log")?;
    if !quiet {
        for (path, kinds) in log.paths() {
            eprintln!("{kinds:?} {}", path.display());
        }
        for net in log.network() {
            eprintln!("connect {} loopback={}", net.addr, net.loopback);
        }
    }
    eprintln!(
        "status untraced={untraced_status} traced={status}; paths={} notifications={} unresolved={:?}",
        log.paths().len(),
        log.notifications(),
        log.unresolved()
    );
    eprintln!(
        "wall untraced={:.1} ms traced={:.1} ms ({:+.1}%)",
        untraced.as_secs_f64() * 1e3,
        traced.as_secs_f64() * 1e3,
        (traced.as_secs_f64() / untraced.as_secs_f64() - 1.0) * 100.0
    );
    Ok(())
}
