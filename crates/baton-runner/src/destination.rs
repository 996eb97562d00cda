//! Destination URIs: the one-string form of a [`RunnerDestination`] used on command lines and
//! in config files (`baton exec --on`, `baton runner … --on`, `baton serve --runtime`).
//!
//! | URI | provider | destination `config` |
//! |---|---|---|
//! | `local:DIR` | `local` | `{workspace: DIR}` (relative to `base_dir`) |
//! | `ws://HOST:PORT[/…]`, `wss://…` | `exec-server` | `{url, workspace, token?}`; `workspace` from the options (required) |
//! | `ssh://[USER@]HOST[:PORT][/ABS/PATH]` | `ssh` | `{destination: [USER@]HOST, port?, workspace: /ABS/PATH, baton?}`; without a path the options' workspace |
//!
//! Every form also takes the options' read roots.

use std::path::{Path, PathBuf};

use crate::{
    EXEC_SERVER_PROVIDER_ID, LOCAL_PROVIDER_ID, RunnerDestination, RunnerError, RunnerSecretRef,
    SSH_PROVIDER_ID,
};

/// What a destination URI does not carry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestinationOptions {
    /// Directory relative `local:` paths are resolved against (absolute; usually the current
    /// directory).
    pub base_dir: PathBuf,
    /// Workspace on the runner for `ws://` and for `ssh://` URIs without a path (absolute).
    pub workspace: Option<PathBuf>,
    /// Extra read roots on the runner (absolute).
    pub read_roots: Vec<PathBuf>,
    /// Bearer token of an exec server (`ws://`), by reference: resolved from
    /// `BATON_SECRET_<ID>` by the process that connects.
    pub token: Option<RunnerSecretRef>,
    /// The `baton` binary on an ssh host (default `baton` on its `PATH`).
    pub remote_baton: Option<String>,
}

/// Parses a destination URI (see the module docs) into a destination with id `id`.
///
/// # Errors
/// [`RunnerError::InvalidDestination`] naming what is wrong: an unknown scheme, a bad ssh port,
/// a missing workspace.
pub fn parse_destination(
    id: &str,
    uri: &str,
    options: &DestinationOptions,
) -> Result<RunnerDestination, RunnerError> {
    let invalid = |m: String| RunnerError::InvalidDestination(m);
    let (provider_id, config) = if let Some(dir) = uri.strip_prefix("local:") {
        if dir.is_empty() {
            return Err(invalid("local: needs a directory, e.g. local:./ws".into()));
        }
        (
            LOCAL_PROVIDER_ID,
            serde_json::json!({
                "workspace": absolute(&options.base_dir, Path::new(dir)),
                "read_roots": options.read_roots,
            }),
        )
    } else if uri.starts_with("ws://") || uri.starts_with("wss://") {
        let Some(workspace) = &options.workspace else {
            return Err(invalid(format!(
                "{uri}: an exec-server destination needs a workspace directory on the server"
            )));
        };
        (
            EXEC_SERVER_PROVIDER_ID,
            serde_json::json!({
                "url": uri,
                "workspace": workspace,
                "read_roots": options.read_roots,
                "token": options.token,
            }),
        )
    } else if let Some(rest) = uri.strip_prefix("ssh://") {
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(PathBuf::from(&rest[i..]))),
            None => (rest, None),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h,
                Some(
                    p.parse::<u16>()
                        .map_err(|_| invalid(format!("{uri}: bad ssh port {p:?}")))?,
                ),
            ),
            None => (authority, None),
        };
        if host.is_empty() || host.ends_with('@') {
            return Err(invalid(format!("{uri}: no ssh host")));
        }
        let Some(workspace) = path
            .filter(|p| p != Path::new("/"))
            .or_else(|| options.workspace.clone())
        else {
            return Err(invalid(format!(
                "{uri}: ssh destinations need a workspace: ssh://HOST/ABS/PATH"
            )));
        };
        (
            SSH_PROVIDER_ID,
            serde_json::json!({
                "destination": host,
                "port": port,
                "workspace": workspace,
                "read_roots": options.read_roots,
                "baton": options.remote_baton,
            }),
        )
    } else {
        return Err(invalid(format!(
            "unknown destination `{uri}`: expected local:DIR, ws://…, wss://… or ssh://…"
        )));
    };
    Ok(RunnerDestination {
        id: id.to_owned(),
        provider_id: provider_id.into(),
        config,
        default_manifest: Default::default(),
    })
}

fn absolute(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> DestinationOptions {
        DestinationOptions {
            base_dir: "/here".into(),
            workspace: Some("/srv/ws".into()),
            ..Default::default()
        }
    }

    #[test]
    fn each_scheme_parses() {
        let d = parse_destination("a", "local:sub", &opts()).expect("local");
        assert_eq!(d.provider_id, "local");
        assert_eq!(d.config["workspace"], "/here/sub");

        let d = parse_destination("b", "ws://127.0.0.1:9", &opts()).expect("ws");
        assert_eq!(d.provider_id, "exec-server");
        assert_eq!(d.config["url"], "ws://127.0.0.1:9");
        assert_eq!(d.config["workspace"], "/srv/ws");

        let d = parse_destination("c", "ssh://me@host:2222/data/w", &opts()).expect("ssh");
        assert_eq!(d.provider_id, "ssh");
        assert_eq!(d.config["destination"], "me@host");
        assert_eq!(d.config["port"], 2222);
        assert_eq!(d.config["workspace"], "/data/w");
        assert_eq!(d.id, "c");

        let d = parse_destination("d", "ssh://host", &opts()).expect("ssh, workspace option");
        assert_eq!(d.config["workspace"], "/srv/ws");
    }

    #[test]
    fn bad_uris_say_why() {
        let none = DestinationOptions::default();
        for (uri, needle) in [
            ("ftp://x", "unknown destination"),
            ("ssh://host:port/x", "bad ssh port"),
            ("ssh://host", "need a workspace"),
            ("ssh:///x", "no ssh host"),
            ("ws://h:1", "needs a workspace"),
            ("local:", "needs a directory"),
        ] {
            let e = parse_destination("x", uri, &none)
                .expect_err(uri)
                .to_string();
            assert!(e.contains(needle), "{uri}: {e}");
        }
    }
}
