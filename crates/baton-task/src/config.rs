//! `baton.json`: per-package task configuration, and root `taskDefaults`.
//!
//! Shape (the fields of vite-task's `vite-task.json`, plus Turborepo-style defaults):
//!
//! ```json
//! {
//!   "tasks": {
//!     "build": { "dependsOn": ["^build"], "output": ["dist/**"] },
//!     "lint":  { "command": "eslint .", "cache": false }
//!   },
//!   "taskDefaults": { "test": { "dependsOn": ["build"], "env": ["NODE_ENV"] } }
//! }
//! ```
//!
//! An entry with `command` defines a task; one without configures the `package.json` script of that
//! name. `taskDefaults` (root `baton.json` only, no `command`) applies to that task in every package,
//! field by field overridden by the package's own entry. Unknown fields are errors that name the file
//! and the field.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use serde::Deserialize;

use crate::error::{LoadError, io_err};

/// One `input` entry: a glob (`src/**`, `!**/*.test.ts`) or `{ "auto": bool }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum InputEntry {
    /// A glob relative to the package directory; a leading `!` excludes.
    Glob(String),
    /// `{ "auto": true|false }`: automatic (traced, or default) inputs on or off.
    Auto {
        /// Whether automatic inputs are used.
        auto: bool,
    },
}

/// Configuration of one task (all fields optional).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskConfig {
    /// Command line; defines a task that is not a `package.json` script.
    pub command: Option<String>,
    /// Working directory relative to the package directory.
    pub cwd: Option<String>,
    /// Tasks that must finish first: `build` (same package), `^build` (in every dependency package),
    /// `pkg#build` (a task of another package).
    pub depends_on: Option<Vec<String>>,
    /// Whether the task is cached (default true).
    pub cache: Option<bool>,
    /// Env var names (or `PREFIX_*` patterns) passed to the task and tracked in the cache key.
    pub env: Option<Vec<String>>,
    /// Env var names (or patterns) passed to the task; only their names are in the cache key.
    pub untracked_env: Option<Vec<String>>,
    /// Input globs (relative to the package), `!glob` exclusions, `{auto}`.
    pub input: Option<Vec<InputEntry>>,
    /// Output globs (relative to the package); archived and restored on a hit.
    pub output: Option<Vec<String>>,
}

impl TaskConfig {
    /// `self` with every unset field taken from `defaults`.
    pub fn merged_over(&self, defaults: &TaskConfig) -> TaskConfig {
        TaskConfig {
            command: self.command.clone().or_else(|| defaults.command.clone()),
            cwd: self.cwd.clone().or_else(|| defaults.cwd.clone()),
            depends_on: self
                .depends_on
                .clone()
                .or_else(|| defaults.depends_on.clone()),
            cache: self.cache.or(defaults.cache),
            env: self.env.clone().or_else(|| defaults.env.clone()),
            untracked_env: self
                .untracked_env
                .clone()
                .or_else(|| defaults.untracked_env.clone()),
            input: self.input.clone().or_else(|| defaults.input.clone()),
            output: self.output.clone().or_else(|| defaults.output.clone()),
        }
    }
}

/// A parsed `baton.json`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatonConfig {
    /// Tasks and script configurations by name.
    #[serde(default)]
    pub tasks: BTreeMap<String, TaskConfig>,
    /// Defaults by task name (root `baton.json` only).
    #[serde(default)]
    pub task_defaults: BTreeMap<String, TaskConfig>,
    /// `$schema` is accepted and ignored.
    #[serde(default, rename = "$schema")]
    pub schema: Option<String>,
}

/// Parses JSON with an error that names the file and the failing field path.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    file: &Path,
    text: &str,
) -> Result<T, LoadError> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        LoadError::Invalid {
            file: file.to_path_buf(),
            field,
            message: inner.to_string(),
        }
    })
}

/// Loads and validates a `baton.json`. `is_root` allows `taskDefaults`.
pub fn load_baton_json(path: &Path, is_root: bool) -> Result<BatonConfig, LoadError> {
    let text = fs::read_to_string(path).map_err(|e| io_err(path, e))?;
    let cfg: BatonConfig = parse_json(path, &text)?;
    if !is_root && !cfg.task_defaults.is_empty() {
        return Err(LoadError::Invalid {
            file: path.to_path_buf(),
            field: "taskDefaults".into(),
            message: "only the workspace root baton.json may hold taskDefaults".into(),
        });
    }
    for (name, t) in &cfg.task_defaults {
        if t.command.is_some() {
            return Err(LoadError::Invalid {
                file: path.to_path_buf(),
                field: format!("taskDefaults.{name}.command"),
                message: "taskDefaults configure tasks and cannot define a command".into(),
            });
        }
    }
    for (name, t) in cfg.tasks.iter().chain(cfg.task_defaults.iter()) {
        for (field, list) in [("env", &t.env), ("untrackedEnv", &t.untracked_env)] {
            for (i, v) in list.iter().flatten().enumerate() {
                if v.is_empty() || v.contains('=') {
                    return Err(LoadError::Invalid {
                        file: path.to_path_buf(),
                        field: format!("tasks.{name}.{field}[{i}]"),
                        message: format!("{v:?} is not an environment variable name"),
                    });
                }
            }
        }
        if let Some(cmd) = &t.command
            && cmd.trim().is_empty()
        {
            return Err(LoadError::Invalid {
                file: path.to_path_buf(),
                field: format!("tasks.{name}.command"),
                message: "command is empty".into(),
            });
        }
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_field_names_file_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("baton.json");
        fs::write(&p, r#"{"tasks":{"build":{"dependOn":["^build"]}}}"#).unwrap();
        let err = load_baton_json(&p, false).unwrap_err().to_string();
        assert!(err.contains("baton.json"), "{err}");
        assert!(err.contains("tasks.build"), "{err}");
        assert!(err.contains("dependOn"), "{err}");
    }

    #[test]
    fn wrong_type_names_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("baton.json");
        fs::write(&p, r#"{"tasks":{"build":{"cache":"yes"}}}"#).unwrap();
        let err = load_baton_json(&p, false).unwrap_err().to_string();
        assert!(err.contains("tasks.build.cache"), "{err}");
    }

    #[test]
    fn defaults_merge_field_by_field() {
        let d = TaskConfig {
            cache: Some(false),
            env: Some(vec!["A".into()]),
            ..Default::default()
        };
        let t = TaskConfig {
            env: Some(vec!["B".into()]),
            ..Default::default()
        };
        let m = t.merged_over(&d);
        assert_eq!(m.cache, Some(false));
        assert_eq!(m.env, Some(vec!["B".into()]));
    }

    #[test]
    fn task_defaults_only_at_root_and_without_command() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("baton.json");
        fs::write(&p, r#"{"taskDefaults":{"build":{"cache":false}}}"#).unwrap();
        assert!(load_baton_json(&p, false).is_err());
        assert!(load_baton_json(&p, true).is_ok());
        fs::write(&p, r#"{"taskDefaults":{"build":{"command":"x"}}}"#).unwrap();
        let err = load_baton_json(&p, true).unwrap_err().to_string();
        assert!(err.contains("taskDefaults.build.command"), "{err}");
    }
}
