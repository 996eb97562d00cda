//! Process helpers: the one spawn point of the xtask, the environment of timed commands, and
//! timed runs that fail loudly with the captured output.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// Creates a [`Command`] for `program`: the only place the xtask spawns processes.
#[expect(
    clippy::disallowed_methods,
    reason = "the bench drives external programs (npm, pnpm, git, node, turbo, nx, vp, baton); \
              it is a developer tool, not part of the product, so it does not go through baton-exec"
)]
pub fn command(program: impl AsRef<OsStr>) -> Command {
    Command::new(program)
}

/// Captured result of one finished command.
#[derive(Debug)]
pub struct Finished {
    /// Wall-clock time from spawn to exit.
    pub elapsed: Duration,
    /// Captured stdout, lossily decoded.
    pub stdout: String,
    /// Captured stderr, lossily decoded.
    pub stderr: String,
}

impl Finished {
    /// stdout and stderr together, for matching and error messages.
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Prepares `cmd` the way every timed command runs: no `NODE_EXTRA_CA_CERTS` (it costs ~50 ms per
/// node start here), telemetry, update checks and daemons off, no colours, `tools_bin` first on
/// `PATH`.
pub fn bench_env(cmd: &mut Command, tools_bin: &Path) {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![tools_bin.to_path_buf()];
    paths.extend(std::env::split_paths(&path));
    if let Ok(joined) = std::env::join_paths(paths) {
        cmd.env("PATH", joined);
    }
    cmd.env_remove("NODE_EXTRA_CA_CERTS")
        .env_remove("NODE_OPTIONS")
        .env_remove("CI")
        .env("DO_NOT_TRACK", "1")
        .env("NO_COLOR", "1")
        .env("TURBO_TELEMETRY_DISABLED", "1")
        .env("TURBO_NO_UPDATE_NOTIFIER", "1")
        .env("NX_DAEMON", "false")
        .env("NX_NO_CLOUD", "true")
        .env("NX_TUI", "false")
        .env("NO_UPDATE_NOTIFIER", "1")
        .env("npm_config_update_notifier", "false");
}

/// Runs `cmd` to completion with stdin closed and output captured, timing it.
///
/// # Errors
/// When it cannot be spawned or exits unsuccessfully; the error carries `what`, the exit status
/// and the tail of the output.
pub fn run(cmd: &mut Command, what: &str) -> Result<Finished> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let child = cmd.spawn().with_context(|| format!("spawning {what}"))?;
    let output = child
        .wait_with_output()
        .with_context(|| format!("waiting for {what}"))?;
    let elapsed = start.elapsed();
    let finished = Finished {
        elapsed,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    if !output.status.success() {
        bail!(
            "{what} failed ({}):\n{}",
            output.status,
            tail(&finished.text(), 60)
        );
    }
    Ok(finished)
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// CPU time (user + system) of every child of this process reaped so far, with the descendants
/// they reaped themselves (`getrusage(RUSAGE_CHILDREN)`); zero if unavailable. The difference
/// around a run is the CPU cost of that process tree, far less sensitive than wall time to other
/// load on the machine (orphaned daemons are not counted).
pub fn children_cpu() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    let to_duration = |tv: nix::sys::time::TimeVal| {
        let secs = u64::try_from(tv.tv_sec()).unwrap_or(0);
        let micros = u32::try_from(tv.tv_usec()).unwrap_or(0);
        Duration::from_secs(secs) + Duration::from_micros(u64::from(micros))
    };
    getrusage(UsageWho::RUSAGE_CHILDREN)
        .map(|u| to_duration(u.user_time()) + to_duration(u.system_time()))
        .unwrap_or_default()
}
