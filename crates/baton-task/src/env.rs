//! Which environment variables a task sees, and how they enter its cache key.
//!
//! A task sees only:
//! - **tracked** variables: names or `PREFIX_*` patterns from its `env` config; each value is part
//!   of the cache key as a blake3 digest of its raw bytes (non-UTF-8 values byte-exact);
//! - **pass-through** variables: names or patterns from `untrackedEnv` plus [`DEFAULT_PASS_THROUGH`]
//!   (the Turborepo habit: PATH, HOME, SHELL, TERM, CI, …); only their names are in the key.
//!
//! Everything else in the parent environment is withheld. `PATH` gets the package's and the
//! workspace root's `node_modules/.bin` prepended.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// Variables passed through to every task by name (values not in the key). `*` is a wildcard.
pub const DEFAULT_PASS_THROUGH: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "TERM",
    "TERM_PROGRAM",
    "COLORTERM",
    "NO_COLOR",
    "FORCE_COLOR",
    "CI",
    "TMPDIR",
    "TMP",
    "TEMP",
    "LANG",
    "LANGUAGE",
    "LC_*",
    "TZ",
    "DISPLAY",
    "WAYLAND_DISPLAY",
    "XDG_*",
    "SSH_AUTH_SOCK",
    "HOSTNAME",
    "COLUMNS",
    "LINES",
    "PNPM_HOME",
    "COREPACK_HOME",
    "NODE_EXTRA_CA_CERTS",
];

/// How one variable enters the cache key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum EnvKeyPart {
    /// Tracked: hex blake3 digest of the value bytes.
    Tracked(String),
    /// Passed through: name only.
    PassThrough,
}

/// The environment of one task: what the child gets and what goes in the key.
#[derive(Debug, Clone, Default)]
pub struct TaskEnv {
    /// The complete child environment (sorted by name).
    pub vars: Vec<(OsString, OsString)>,
    /// Key parts by variable name: tracked digests, and pass-through names that are set.
    pub key: BTreeMap<String, EnvKeyPart>,
}

/// `true` when `name` matches `pattern` (`*` matches any run of characters).
pub fn env_pattern_matches(pattern: &str, name: &str) -> bool {
    // No allocation: this runs for every parent variable against every pattern, per task.
    let Some((first, mut pattern_rest)) = pattern.split_once('*') else {
        return pattern == name;
    };
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    loop {
        match pattern_rest.split_once('*') {
            // The last part ends the name.
            None => return rest.ends_with(pattern_rest),
            Some((part, more)) => {
                match rest.find(part) {
                    Some(pos) => rest = &rest[pos + part.len()..],
                    None => return false,
                }
                pattern_rest = more;
            }
        }
    }
}

/// Hex blake3 digest of a value's raw bytes.
pub fn value_digest(value: &OsStr) -> String {
    blake3::hash(value.as_bytes()).to_hex().to_string()
}

impl TaskEnv {
    /// Builds a task's environment from the parent's.
    ///
    /// `tracked` and `untracked` are names or `*` patterns; a name that is both is tracked.
    /// `path_prepend` goes in front of the parent `PATH` (in order).
    pub fn build(
        parent: &[(OsString, OsString)],
        tracked: &[String],
        untracked: &[String],
        path_prepend: &[PathBuf],
        extra: &[(OsString, OsString)],
    ) -> TaskEnv {
        let mut vars: BTreeMap<OsString, OsString> = BTreeMap::new();
        let mut key = BTreeMap::new();
        for (name, value) in parent {
            let Some(n) = name.to_str() else { continue };
            if tracked.iter().any(|p| env_pattern_matches(p, n)) {
                key.insert(n.to_owned(), EnvKeyPart::Tracked(value_digest(value)));
                vars.insert(name.clone(), value.clone());
            } else if untracked
                .iter()
                .map(String::as_str)
                .chain(DEFAULT_PASS_THROUGH.iter().copied())
                .any(|p| env_pattern_matches(p, n))
            {
                key.insert(n.to_owned(), EnvKeyPart::PassThrough);
                vars.insert(name.clone(), value.clone());
            }
        }
        if !path_prepend.is_empty() {
            let mut path: Vec<PathBuf> = path_prepend.to_vec();
            if let Some(old) = vars.get(OsStr::new("PATH")) {
                path.extend(std::env::split_paths(old));
            }
            if let Ok(joined) = std::env::join_paths(path) {
                vars.insert("PATH".into(), joined);
                key.entry("PATH".into()).or_insert(EnvKeyPart::PassThrough);
            }
        }
        for (k, v) in extra {
            vars.insert(k.clone(), v.clone());
        }
        TaskEnv {
            vars: vars.into_iter().collect(),
            key,
        }
    }
}

/// The current process environment as raw pairs.
pub fn parent_env() -> Vec<(OsString, OsString)> {
    std::env::vars_os().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    fn os(bytes: &[u8]) -> OsString {
        OsString::from_vec(bytes.to_vec())
    }

    fn pair(k: &str, v: &[u8]) -> (OsString, OsString) {
        (k.into(), os(v))
    }

    #[test]
    fn patterns() {
        assert!(env_pattern_matches("LC_*", "LC_ALL"));
        assert!(env_pattern_matches("*_URL", "VITE_API_URL"));
        assert!(env_pattern_matches("A*B*C", "AxxBC"));
        assert!(!env_pattern_matches("LC_*", "XLC_ALL"));
        assert!(!env_pattern_matches("PATH", "PATHX"));
        assert!(env_pattern_matches("*", "ANY"));
        assert!(env_pattern_matches("A**C", "ABC"));
        assert!(!env_pattern_matches("A*B*C", "AxxCB"));
        assert!(!env_pattern_matches("AB*BA", "ABA"));
        assert!(env_pattern_matches("AB*BA", "ABBA"));
    }

    #[test]
    fn filters_and_digests() {
        let parent = vec![
            pair("PATH", b"/bin"),
            pair("SECRET", b"s3cr3t"),
            pair("NODE_ENV", b"production"),
            pair("RAW", b"\xff\xfe"),
            pair("MY_VAR", b"x"),
        ];
        let env = TaskEnv::build(
            &parent,
            &["NODE_ENV".into(), "RAW".into()],
            &["MY_*".into()],
            &[PathBuf::from("/ws/node_modules/.bin")],
            &[],
        );
        let names: Vec<_> = env.vars.iter().map(|(k, _)| k.to_str().unwrap()).collect();
        assert_eq!(names, ["MY_VAR", "NODE_ENV", "PATH", "RAW"]);
        assert_eq!(env.vars[2].1, OsString::from("/ws/node_modules/.bin:/bin"));
        assert_eq!(env.key["MY_VAR"], EnvKeyPart::PassThrough);
        let EnvKeyPart::Tracked(d) = &env.key["RAW"] else {
            panic!()
        };
        assert_eq!(d, &blake3::hash(b"\xff\xfe").to_hex().to_string());
        assert_ne!(
            value_digest(&os(b"\xff\xfe")),
            value_digest(OsStr::new("\u{fffd}\u{fffd}"))
        );
        assert!(!env.key.contains_key("SECRET"));
    }
}
