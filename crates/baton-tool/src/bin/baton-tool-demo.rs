//! `baton-tool-demo`: a tiny command-line tool over `baton-tool`, used by the integration tests
//! (and usable from shell scripts in a task).
//!
//! Usage: `baton-tool-demo COMMAND [+ COMMAND]...` where COMMAND is one of
//! - `get-env NAME [--untracked]` → prints `NAME=HEX` (hex of the value's bytes) or `NAME unset`;
//! - `get-envs glob|prefix PATTERN [--untracked]` → prints `NAME=HEX` per match, then `end`;
//! - `ignore-input PATH`, `ignore-output PATH`, `disable-cache [REASON]` → prints `ok`;
//! - `in-baton` → prints `true` or `false`.
//!
//! Exit status 2 on a usage error.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn run(cmd: &[String]) -> Result<(), String> {
    let tracked = !cmd.iter().any(|a| a == "--untracked");
    let args: Vec<&str> = cmd
        .iter()
        .map(String::as_str)
        .filter(|a| *a != "--untracked")
        .collect();
    match args.as_slice() {
        ["get-env", name] => match baton_tool::get_env(name, tracked) {
            Some(v) => println!("{name}={}", hex(v.as_bytes())),
            None => println!("{name} unset"),
        },
        ["get-envs", kind @ ("glob" | "prefix"), pattern] => {
            let pattern = if *kind == "glob" {
                baton_tool::Pattern::from(*pattern)
            } else {
                baton_tool::Pattern::prefix(*pattern)
            };
            for (n, v) in baton_tool::get_envs(pattern, tracked) {
                println!("{}={}", OsStr::new(&n).to_string_lossy(), hex(v.as_bytes()));
            }
            println!("end");
        }
        ["ignore-input", path] => {
            baton_tool::ignore_input(path);
            println!("ok");
        }
        ["ignore-output", path] => {
            baton_tool::ignore_output(path);
            println!("ok");
        }
        ["disable-cache"] => {
            baton_tool::disable_cache();
            println!("ok");
        }
        ["disable-cache", reason] => {
            baton_tool::disable_cache_because(reason);
            println!("ok");
        }
        ["in-baton"] => println!("{}", baton_tool::in_baton()),
        other => return Err(format!("unknown command {other:?}")),
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    for cmd in args.split(|a| a == "+") {
        if let Err(e) = run(cmd) {
            eprintln!("baton-tool-demo: {e}");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
