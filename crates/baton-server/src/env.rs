//! Building a child environment from `env` and `envPolicy` (DESIGN.md §2, Codex's
//! `shell_environment_policy`).

use std::collections::HashMap;
use std::ffi::OsString;

use baton_protocol::exec::{EnvInherit, EnvPolicy};

/// Variables kept by `inherit: core`.
const CORE: &[&str] = &[
    "HOME", "LOGNAME", "PATH", "SHELL", "USER", "USERNAME", "TMPDIR", "TEMP", "TMP", "LANG",
    "LC_ALL", "LC_CTYPE", "TERM", "TZ",
];

/// Name patterns dropped unless `ignoreDefaultExcludes`.
const DEFAULT_EXCLUDES: &[&str] = &["*KEY*", "*SECRET*", "*TOKEN*"];

/// The child's environment, in a deterministic (sorted) order.
pub(crate) fn build(
    policy: Option<&EnvPolicy>,
    env: &HashMap<String, String>,
    parent: impl Iterator<Item = (OsString, OsString)>,
) -> Vec<(OsString, OsString)> {
    let mut out: std::collections::BTreeMap<OsString, OsString> = Default::default();
    if let Some(policy) = policy {
        for (k, v) in parent {
            let name = k.to_string_lossy();
            let keep = match policy.inherit {
                EnvInherit::All => true,
                EnvInherit::Core => CORE.contains(&name.as_ref()),
                EnvInherit::None => false,
            };
            if keep {
                out.insert(k, v);
            }
        }
        if !policy.ignore_default_excludes {
            out.retain(|k, _| !matches_any(DEFAULT_EXCLUDES.iter().copied(), k));
        }
        out.retain(|k, _| !matches_any(policy.exclude.iter().map(String::as_str), k));
        for (k, v) in &policy.set {
            out.insert(k.into(), v.into());
        }
        if !policy.include_only.is_empty() {
            out.retain(|k, _| matches_any(policy.include_only.iter().map(String::as_str), k));
        }
    }
    for (k, v) in env {
        out.insert(k.into(), v.into());
    }
    out.into_iter().collect()
}

fn matches_any<'a>(mut patterns: impl Iterator<Item = &'a str>, name: &OsString) -> bool {
    let name = name.to_string_lossy().to_ascii_uppercase();
    patterns.any(|p| glob(&p.to_ascii_uppercase(), &name))
}

/// `*`-only wildcard match.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let mut rest = text;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else if let Some(pos) = rest.find(part) {
            rest = &rest[pos + part.len()..];
        } else {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parent() -> impl Iterator<Item = (OsString, OsString)> {
        [
            ("PATH", "/bin"),
            ("HOME", "/h"),
            ("API_KEY", "k"),
            ("GH_TOKEN", "t"),
            ("OTHER", "o"),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
    }

    fn names(v: &[(OsString, OsString)]) -> Vec<String> {
        v.iter()
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn policies() {
        let env: HashMap<String, String> = [("X".to_string(), "1".to_string())].into();
        assert_eq!(names(&build(None, &env, parent())), ["X"]);
        let all = EnvPolicy {
            inherit: EnvInherit::All,
            ..Default::default()
        };
        assert_eq!(
            names(&build(Some(&all), &env, parent())),
            ["HOME", "OTHER", "PATH", "X"]
        );
        let core = EnvPolicy {
            exclude: vec!["h*".into()],
            ..Default::default()
        };
        assert_eq!(names(&build(Some(&core), &env, parent())), ["PATH", "X"]);
        let only = EnvPolicy {
            inherit: EnvInherit::All,
            ignore_default_excludes: true,
            include_only: vec!["*_*".into()],
            set: [("S_1".to_string(), "v".to_string())].into(),
            ..Default::default()
        };
        assert_eq!(
            names(&build(Some(&only), &HashMap::new(), parent())),
            ["API_KEY", "GH_TOKEN", "S_1"]
        );
        assert!(glob("A*B*C", "AXXBYYC") && !glob("A*B", "AXXBC") && glob("*", ""));
    }
}
