//! Errors of workspace loading and task planning.

use std::path::{Path, PathBuf};

/// A workspace, package or config file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Reading a file or directory failed.
    #[error("cannot read {}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file parsed but a field is wrong (or the file is not valid JSON/YAML).
    #[error("{}: {field}: {message}", file.display())]
    Invalid {
        /// The file.
        file: PathBuf,
        /// Dotted path of the offending field (`tasks.build.dependsOn[0]`), or `.` for the file.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// No `package.json` in the directory or any ancestor.
    #[error("no package.json found in {} or any parent directory", dir.display())]
    NoPackageJson {
        /// Where the search started.
        dir: PathBuf,
    },
    /// Two packages share a name.
    #[error("two packages are named {name:?}: {} and {}", first.display(), second.display())]
    DuplicatePackage {
        /// The name.
        name: String,
        /// Directory of the first package.
        first: PathBuf,
        /// Directory of the second package.
        second: PathBuf,
    },
}

pub(crate) fn io_err(path: &Path, source: std::io::Error) -> LoadError {
    LoadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The requested tasks cannot be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A task name matched nothing.
    #[error("task {task:?} not found in {package}{hint}")]
    UnknownTask {
        /// The task name.
        task: String,
        /// The package searched.
        package: String,
        /// ", available: a, b" or empty.
        hint: String,
    },
    /// A package name or filter matched no package.
    #[error("no package matches {0:?}")]
    UnknownPackage(String),
    /// No selected package has the task.
    #[error("no selected package has a task named {0:?}")]
    NothingToRun(String),
    /// A `baton.json` `command` shadows a `package.json` script of the same name.
    #[error(
        "task {task:?} of {package} is defined twice: as a script in {} and with `command` in {}; keep one",
        package_json.display(),
        baton_json.display()
    )]
    CommandConflict {
        /// Package name.
        package: String,
        /// Task name.
        task: String,
        /// The package.json.
        package_json: PathBuf,
        /// The baton.json.
        baton_json: PathBuf,
    },
    /// The task graph has a cycle.
    #[error("dependency cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
    /// A filter expression is malformed.
    #[error("bad --filter {filter:?}: {message}")]
    BadFilter {
        /// The filter.
        filter: String,
        /// What is wrong.
        message: String,
    },
    /// Not inside any package.
    #[error(
        "the current directory is not inside a package of the workspace; use -r, --filter or pkg#task"
    )]
    NoCurrentPackage,
    /// A command could not be parsed.
    #[error("{task}: cannot parse command {command:?}: {message}")]
    BadCommand {
        /// Task id.
        task: String,
        /// The command text.
        command: String,
        /// What is wrong.
        message: String,
    },
    /// A glob in `input`/`output` is malformed.
    #[error("{task}: bad glob {glob:?} in {field}: {message}")]
    BadGlob {
        /// Task id.
        task: String,
        /// `input` or `output`.
        field: &'static str,
        /// The glob.
        glob: String,
        /// What is wrong.
        message: String,
    },
}
