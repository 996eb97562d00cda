//! Test harness: fixture workspaces in temp dirs, the real `baton` binary, redacted output.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A fixture workspace in a temporary directory.
pub struct Fixture {
    dir: tempfile::TempDir,
    /// Cache directory used by every run of this fixture (inside the workspace unless shared).
    pub cache_dir: Option<PathBuf>,
}

/// What a `baton` run printed.
#[derive(Debug)]
pub struct Run {
    /// Exit code.
    pub code: i32,
    /// stdout, paths and durations redacted.
    pub stdout: String,
    /// stderr, paths and durations redacted.
    pub stderr: String,
}

impl Run {
    /// stdout and stderr as one snapshot text.
    pub fn snapshot(&self) -> String {
        format!(
            "exit: {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl Fixture {
    /// Creates a workspace from `(path, content)` pairs.
    pub fn new(files: &[(&str, &str)]) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let f = Fixture {
            dir,
            cache_dir: None,
        };
        for (p, c) in files {
            f.write(p, c);
        }
        f
    }

    /// The workspace root.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file (creating parents); `.sh` files become executable.
    pub fn write(&self, rel: &str, content: &str) {
        let p = self.root().join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, content).expect("write");
    }

    /// Reads a file of the workspace.
    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.root().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    /// Runs `baton ARGS` in the workspace root.
    pub fn baton(&self, args: &[&str]) -> Run {
        self.baton_in("", args, &[])
    }

    /// Runs `baton ARGS` in `subdir` with extra environment variables.
    pub fn baton_in(&self, subdir: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
        let out = self.command(subdir, args, env).output().expect("run baton");
        self.finish(out)
    }

    /// The command that [`baton_in`](Self::baton_in) runs, for tests that need the child.
    pub fn command(&self, subdir: &str, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut cmd = baton_command();
        cmd.args(args)
            .current_dir(self.root().join(subdir))
            .env_remove("FORCE_COLOR")
            .env_remove("BATON_CACHE_DIR")
            .env("NO_COLOR", "1");
        if let Some(c) = &self.cache_dir {
            cmd.env("BATON_CACHE_DIR", c);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Turns a finished child's output into a redacted [`Run`].
    pub fn finish(&self, out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: self.redact(&String::from_utf8_lossy(&out.stdout)),
            stderr: self.redact(&String::from_utf8_lossy(&out.stderr)),
        }
    }

    fn redact(&self, s: &str) -> String {
        let root = self.root().to_string_lossy().into_owned();
        let canon = std::fs::canonicalize(self.root())
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|_| root.clone());
        let s = s.replace(&canon, "[root]").replace(&root, "[root]");
        redact_durations(&s)
    }
}

/// Replaces `1.2 s` and `12ms` style durations with `[t] s` and `[t]ms`.
pub fn redact_durations(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() && (i == 0 || !b[i - 1].is_ascii_alphanumeric()) {
            let mut j = i;
            while j < b.len() && (b[j].is_ascii_digit() || b[j] == b'.') {
                j += 1;
            }
            if s[j..].starts_with(" s") && s[i..j].contains('.') {
                out.push_str("[t]");
                i = j;
                continue;
            }
            if s[j..].starts_with("ms") && !s[j + 2..].starts_with(|c: char| c.is_alphanumeric()) {
                out.push_str("[t]");
                i = j;
                continue;
            }
        }
        let ch = s[i..].chars().next().expect("char");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// A `Command` for the `baton` binary under test.
#[expect(
    clippy::disallowed_methods,
    reason = "end-to-end tests drive the real baton binary"
)]
pub fn baton_command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_baton"))
}

/// A `Command` for a helper program (npm, cp) in tests.
#[expect(
    clippy::disallowed_methods,
    reason = "end-to-end tests prepare fixtures with real tools"
)]
pub fn tool_command(program: &str) -> Command {
    Command::new(program)
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // Field 3 is the state; after the `)` of the command name.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .unwrap_or("");
            state != "Z" && state != "X"
        }
        Err(_) => false,
    }
}
