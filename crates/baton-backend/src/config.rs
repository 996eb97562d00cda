//! Runtime registration: `baton serve --runtime NAME=DESTINATION` and the runtimes file
//! (`baton serve --runtimes FILE`).
//!
//! # The runtimes file
//!
//! JSON, one entry per runtime id (unknown fields are errors, reported with their path):
//!
//! ```json
//! {
//!   "runtimes": {
//!     "build1": { "destination": "ws://10.0.0.5:7070", "workspace": "/srv/ws",
//!                 "token_secret": "build1" },
//!     "box":    { "destination": "ssh://ci@box.internal/srv/ws",
//!                 "config": { "identity_file": "/etc/baton/id_ed25519",
//!                             "ssh_options": ["StrictHostKeyChecking=accept-new"] },
//!                 "timeout_seconds": 60 },
//!     "scratch": { "destination": "local:/tmp/scratch" }
//!   }
//! }
//! ```
//!
//! - `destination` (required): a runner destination URI (`local:DIR`, `ws://`, `wss://`,
//!   `ssh://[USER@]HOST[:PORT][/ABS/PATH]`; see `baton_runner::parse_destination`).
//! - `workspace`: the workspace on the runner for `ws://`/`wss://` (and `ssh://` without a
//!   path); default: the backend's default worker directory.
//! - `read_roots`, `remote_baton`: as for `baton runner`.
//! - `token_secret`: id of the exec server's bearer token, resolved from `BATON_SECRET_<ID>`
//!   in the backend's environment (never written in the file). Without it, a `ws://` runtime
//!   `NAME` uses `BATON_SECRET_<NAME>` when that variable is set.
//! - `config`: extra provider config merged over the parsed destination (e.g. ssh's
//!   `identity_file`, `ssh_options`); secret-looking values are refused.
//! - `timeout_seconds`: limit for opening the session and starting a worker (default 30);
//!   past it a spawn answers 504.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use baton_runner::{
    DestinationOptions, EXEC_SERVER_PROVIDER_ID, ExecServerProvider, LOCAL_PROVIDER_ID,
    LocalProvider, RunnerProvider, RunnerSecretRef, SshProvider, parse_destination,
};
use serde::Deserialize;

use crate::runner::{DEFAULT_RUNNER_TIMEOUT, RunnerRuntime};

/// One runtime of the runtimes file (see the module docs).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuntimeEntry {
    /// Destination URI.
    pub destination: String,
    /// Workspace on the runner (absolute).
    #[serde(default)]
    pub workspace: Option<PathBuf>,
    /// Extra read roots on the runner (absolute).
    #[serde(default)]
    pub read_roots: Vec<PathBuf>,
    /// Secret id of the exec server's bearer token.
    #[serde(default)]
    pub token_secret: Option<String>,
    /// `baton` binary on an ssh host.
    #[serde(default)]
    pub remote_baton: Option<String>,
    /// Provider config merged over the parsed destination.
    #[serde(default)]
    pub config: serde_json::Map<String, serde_json::Value>,
    /// Session-open and worker-start limit in seconds.
    #[serde(default)]
    pub timeout_seconds: Option<f64>,
}

/// The runtimes file: `{"runtimes": {ID: RuntimeEntry}}`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuntimesFile {
    /// Entries by runtime id.
    pub runtimes: BTreeMap<String, RuntimeEntry>,
}

/// Errors of runtime registration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path:?}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid runtimes file; `message` names the JSON path.
    #[error("{path:?}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        message: String,
    },
    /// A `--runtime` flag is not `NAME=DESTINATION`.
    #[error("--runtime expects NAME=DESTINATION (local:DIR, ws://…, ssh://…), got {0:?}")]
    Flag(String),
    /// A runtime is invalid (bad id, destination, config or timeout).
    #[error("runtime {id:?}: {message}")]
    Runtime {
        /// Runtime id.
        id: String,
        /// What is wrong.
        message: String,
    },
}

impl RuntimesFile {
    /// Reads and parses a runtimes file.
    ///
    /// # Errors
    /// [`ConfigError::Read`], [`ConfigError::Parse`] (with the JSON path of the bad field).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut de = serde_json::Deserializer::from_str(&text);
        serde_path_to_error::deserialize(&mut de).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: if e.path().to_string() == "." {
                e.inner().to_string()
            } else {
                format!("at {}: {}", e.path(), e.inner())
            },
        })
    }
}

/// Parses a `--runtime NAME=DESTINATION` flag into an id and an entry.
///
/// # Errors
/// [`ConfigError::Flag`].
pub fn parse_runtime_flag(flag: &str) -> Result<(String, RuntimeEntry), ConfigError> {
    match flag.split_once('=') {
        Some((name, dest)) if !name.is_empty() && !dest.is_empty() => Ok((
            name.to_owned(),
            RuntimeEntry {
                destination: dest.to_owned(),
                ..RuntimeEntry::default()
            },
        )),
        _ => Err(ConfigError::Flag(flag.to_owned())),
    }
}

/// Builds (without connecting) the runtime `id` described by `entry`.
///
/// `default_workspace` is used for `ws://` entries without `workspace`; `base_dir` resolves a
/// relative `local:` directory; providers keep their snapshot and artifact stores under
/// `store/<id>/`.
///
/// # Errors
/// [`ConfigError::Runtime`] for a bad id, destination, provider config or timeout.
pub fn build_runtime(
    id: &str,
    entry: &RuntimeEntry,
    default_workspace: &Path,
    base_dir: &Path,
    store: &Path,
) -> Result<RunnerRuntime, ConfigError> {
    let invalid = |message: String| ConfigError::Runtime {
        id: id.to_owned(),
        message,
    };
    crate::validate_id("runtime", id).map_err(|e| invalid(e.diagnostic.message))?;
    let token = entry
        .token_secret
        .clone()
        .map(|id| RunnerSecretRef { id })
        .or_else(|| {
            let implied = RunnerSecretRef { id: id.to_owned() };
            std::env::var_os(implied.env_var()).map(|_| implied)
        });
    let options = DestinationOptions {
        base_dir: base_dir.to_path_buf(),
        workspace: Some(
            entry
                .workspace
                .clone()
                .unwrap_or_else(|| default_workspace.to_path_buf()),
        ),
        read_roots: entry.read_roots.clone(),
        token,
        remote_baton: entry.remote_baton.clone(),
    };
    let mut destination =
        parse_destination(id, &entry.destination, &options).map_err(|e| invalid(e.to_string()))?;
    if let Some(config) = destination.config.as_object_mut() {
        for (k, v) in &entry.config {
            config.insert(k.clone(), v.clone());
        }
    }
    baton_runner::check_no_secrets(&destination.config).map_err(|e| invalid(e.to_string()))?;
    let timeout = match entry.timeout_seconds {
        None => DEFAULT_RUNNER_TIMEOUT,
        Some(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => Duration::from_secs_f64(s),
        Some(s) => {
            return Err(invalid(format!(
                "timeout_seconds must be in (0, 86400], got {s}"
            )));
        }
    };
    let store = store.join(id);
    let provider: Arc<dyn RunnerProvider> = match destination.provider_id.as_str() {
        LOCAL_PROVIDER_ID => {
            Arc::new(LocalProvider::new(&store).map_err(|e| invalid(e.to_string()))?)
        }
        EXEC_SERVER_PROVIDER_ID => {
            Arc::new(ExecServerProvider::new(&store).map_err(|e| invalid(e.to_string()))?)
        }
        _ => Arc::new(SshProvider::new(&store).map_err(|e| invalid(e.to_string()))?),
    };
    Ok(RunnerRuntime::new(id, provider, destination, timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("runtimes.json");
        std::fs::write(&p, text).expect("write");
        p
    }

    #[test]
    fn file_parses_and_errors_name_the_field() {
        let tmp = tempfile::tempdir().expect("tmp");
        let p = write(
            tmp.path(),
            r#"{"runtimes": {"b": {"destination": "ws://127.0.0.1:1", "workspace": "/w",
                 "token_secret": "tok", "timeout_seconds": 2.5,
                 "config": {"ssh_options": []}}}}"#,
        );
        let f = RuntimesFile::load(&p).expect("parse");
        let b = &f.runtimes["b"];
        assert_eq!(b.destination, "ws://127.0.0.1:1");
        assert_eq!(b.timeout_seconds, Some(2.5));

        let p = write(
            tmp.path(),
            r#"{"runtimes": {"b": {"destination": "ws://x", "tokne": "oops"}}}"#,
        );
        let e = RuntimesFile::load(&p)
            .expect_err("unknown field")
            .to_string();
        assert!(e.contains("runtimes.b") && e.contains("tokne"), "{e}");
        let p = write(tmp.path(), "{");
        assert!(RuntimesFile::load(&p).is_err());
    }

    #[test]
    fn build_checks_ids_destinations_secrets_and_timeouts() {
        let tmp = tempfile::tempdir().expect("tmp");
        let build = |id: &str, entry: RuntimeEntry| {
            build_runtime(id, &entry, Path::new("/w"), tmp.path(), tmp.path())
        };
        let entry = |d: &str| RuntimeEntry {
            destination: d.into(),
            ..Default::default()
        };
        let rt = build("b", entry("ws://127.0.0.1:1")).expect("ws");
        assert_eq!(crate::Runtime::kind(&rt), "exec-server");
        assert_eq!(crate::Runtime::default_cwd(&rt), PathBuf::from("/w"));
        let rt = build("s", entry("ssh://me@h/srv")).expect("ssh");
        assert_eq!(crate::Runtime::kind(&rt), "ssh");
        assert_eq!(crate::Runtime::default_cwd(&rt), PathBuf::from("/srv"));

        let err = |id: &str, e: RuntimeEntry| build(id, e).expect_err("invalid").to_string();
        assert!(err("b", entry("ftp://x")).contains("unknown destination"));
        assert!(err("bad\nid", entry("ws://h:1")).contains("runtime"));
        let mut with_secret = entry("ws://h:1");
        with_secret
            .config
            .insert("password".into(), "hunter2".into());
        let e = err("b", with_secret);
        assert!(e.contains("password") && !e.contains("hunter2"), "{e}");
        let mut slow = entry("ws://h:1");
        slow.timeout_seconds = Some(0.0);
        assert!(err("b", slow).contains("timeout_seconds"));
        assert!(parse_runtime_flag("x").is_err());
        assert_eq!(
            parse_runtime_flag("a=local:/x").expect("flag").0,
            "a".to_string()
        );
    }
}
