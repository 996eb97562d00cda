//! The tool IPC protocol (DESIGN.md §5 "Tool IPC"): how a tool spawned by `baton run` talks back
//! to the runner.
//!
//! # Transport
//!
//! One Unix stream socket per task run; its path is in the child's [`ENV_SOCKET`] variable
//! (`BATON_IPC`), and [`ENV_RUN`] (`BATON_RUN=1`) says the process runs under Baton. Any number of
//! processes of the task may connect, each any number of times; connections are independent.
//!
//! # Framing
//!
//! Newline-delimited JSON: every message is one compact JSON object in UTF-8 followed by `\n`
//! (JSON strings escape newlines, so a message never contains a raw one). A line is at most
//! [`MAX_LINE_BYTES`] bytes. The client sends [`RequestFrame`]s and reads exactly one
//! [`ResponseFrame`] per request, in order; `id` is echoed back (clients typically count from 1).
//!
//! # Session
//!
//! 1. The first request on a connection must be `hello` with [`PROTOCOL_VERSION`]; the answer
//!    is [`HelloResult`]. Any other first request is answered with
//!    [`ErrorCode::HelloRequired`], an unknown version with [`ErrorCode::UnsupportedVersion`].
//! 2. Then any of:
//!
//! | `op` | fields | result |
//! |---|---|---|
//! | `ignoreInput` | `path`: absolute path | [`Ack`] `{}` |
//! | `ignoreOutput` | `path`: absolute path | [`Ack`] `{}` |
//! | `disableCache` | `reason?`: string | [`Ack`] `{}` |
//! | `getEnv` | `name`, `tracked?` (default `true`) | [`GetEnvResult`] `{"value": base64 \| null}` |
//! | `getEnvs` | `glob` *or* `prefix`, `tracked?` (default `true`) | [`GetEnvsResult`] `{"vars": {name: base64}}` |
//!
//! Env values are the raw bytes of the runner's environment, standard base64, so non-UTF-8 values
//! arrive byte-exact. `getEnvs` globs use `globset` syntax, case-sensitive, matched against the
//! whole name (`VITE_*`); variables whose names are not UTF-8 are never returned.
//!
//! # Errors
//!
//! A line that is not a valid request (bad JSON, unknown `op`, missing field, relative path,
//! invalid glob, line too long) is answered with a [`ResponseFrame`] carrying an [`ErrorBody`]
//! (`id` is `null` when it could not be read) and the server may then close the connection.
//! Every error answer is a *protocol error*: the runner does not cache that task run and says why.
//!
//! Example session (`>` client, `<` server):
//!
//! ```text
//! > {"id":1,"op":"hello","version":1,"client":"baton-tool/0.1.0"}
//! < {"id":1,"result":{"version":1,"server":"baton/0.1.0"}}
//! > {"id":2,"op":"getEnv","name":"VITE_API_URL","tracked":true}
//! < {"id":2,"result":{"value":"aHR0cHM6Ly9leGFtcGxlLmludmFsaWQ="}}
//! > {"id":3,"op":"getEnvs","prefix":"VITE_"}
//! < {"id":3,"result":{"vars":{"VITE_API_URL":"aHR0cHM6Ly9leGFtcGxlLmludmFsaWQ="}}}
//! > {"id":4,"op":"ignoreOutput","path":"/repo/pkg/node_modules/.cache"}
//! < {"id":4,"result":{}}
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::exec::ByteChunk;

/// The protocol version this crate speaks (sent in `hello`).
pub const PROTOCOL_VERSION: u32 = 1;

/// Env variable holding the socket path, set in the environment of every task child.
pub const ENV_SOCKET: &str = "BATON_IPC";

/// Env variable set to `1` in the environment of every task child.
pub const ENV_RUN: &str = "BATON_RUN";

/// Env variable naming the JS module that implements the `@voidzero-dev/vite-task-client`
/// runtime contract (`require(path).load()` returns the five methods).
pub const ENV_VP_NODE_CLIENT: &str = "VP_RUN_NODE_CLIENT_PATH";

/// Largest accepted message line, in bytes, excluding the newline (1 MiB).
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// One request line: an id chosen by the client plus the operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestFrame {
    /// Echoed back in the response.
    pub id: u64,
    /// The operation and its fields (flattened: `"op"` plus the fields).
    #[serde(flatten)]
    pub request: Request,
}

/// An operation, tagged by `"op"` (camelCase names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Request {
    /// Opens the session; must come first. Answer: [`HelloResult`].
    Hello {
        /// The protocol version the client speaks ([`PROTOCOL_VERSION`]).
        version: u32,
        /// Free-form client name for diagnostics (`baton-tool/0.1.0`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
    },
    /// Do not count reads under `path` (a file or a directory, absolute) as automatic inputs.
    /// Answer: [`Ack`].
    IgnoreInput {
        /// Absolute path; the server normalises `.`/`..` lexically.
        path: String,
    },
    /// Do not count writes under `path` (absolute) as automatic outputs. Answer: [`Ack`].
    IgnoreOutput {
        /// Absolute path; the server normalises `.`/`..` lexically.
        path: String,
    },
    /// Do not cache this task run. Answer: [`Ack`].
    DisableCache {
        /// Why, shown to the user.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The value of one variable of the runner's environment. Answer: [`GetEnvResult`].
    GetEnv {
        /// Variable name.
        name: String,
        /// Make the value part of the run's cache key (unless the task config lists the name as
        /// untracked). Default `true`.
        #[serde(default = "default_tracked")]
        tracked: bool,
    },
    /// The variables of the runner's environment whose names match `glob` or start with
    /// `prefix` (exactly one of the two). Answer: [`GetEnvsResult`].
    GetEnvs {
        /// A glob over names (`VITE_*`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        glob: Option<String>,
        /// A literal name prefix (`VITE_`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prefix: Option<String>,
        /// Make the matching set part of the run's cache key (adding, removing or changing a
        /// match is a miss). Default `true`.
        #[serde(default = "default_tracked")]
        tracked: bool,
    },
}

fn default_tracked() -> bool {
    true
}

/// Which variables a `getEnvs` request selects.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EnvQuery {
    /// Names matching a glob.
    Glob(String),
    /// Names starting with a prefix.
    Prefix(String),
}

impl EnvQuery {
    /// The query of a `getEnvs` request's `glob` / `prefix` fields.
    ///
    /// Errors: both or neither given (the message says which).
    pub fn from_fields(glob: Option<String>, prefix: Option<String>) -> Result<Self, &'static str> {
        match (glob, prefix) {
            (Some(g), None) => Ok(Self::Glob(g)),
            (None, Some(p)) => Ok(Self::Prefix(p)),
            (Some(_), Some(_)) => Err("getEnvs takes either glob or prefix, not both"),
            (None, None) => Err("getEnvs needs glob or prefix"),
        }
    }

    /// The `(glob, prefix)` fields of a `getEnvs` request.
    pub fn into_fields(self) -> (Option<String>, Option<String>) {
        match self {
            Self::Glob(g) => (Some(g), None),
            Self::Prefix(p) => (None, Some(p)),
        }
    }
}

/// One response line: either `result` or `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseFrame {
    /// The request's id; `null` when the request line could not be parsed far enough.
    pub id: Option<u64>,
    /// The operation's result (shape per operation, see the module docs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// Why the request failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

impl ResponseFrame {
    /// A success answer carrying `result`.
    ///
    /// Errors: `result` does not serialise to JSON (never for this module's result types).
    pub fn ok<T: Serialize>(id: u64, result: &T) -> Result<Self, serde_json::Error> {
        Ok(Self {
            id: Some(id),
            result: Some(serde_json::to_value(result)?),
            error: None,
        })
    }

    /// An error answer.
    pub fn err(id: Option<u64>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            id,
            result: None,
            error: Some(ErrorBody {
                code,
                message: message.into(),
            }),
        }
    }
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable kind.
    pub code: ErrorCode,
    /// Human-readable detail (lowercase, no trailing period).
    pub message: String,
}

/// Kinds of request errors (camelCase on the wire). Every one makes the run uncached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ErrorCode {
    /// Not JSON, not an object, unknown `op`, missing or mistyped field.
    BadRequest,
    /// A request other than `hello` came first.
    HelloRequired,
    /// `hello` named a version the server does not speak.
    UnsupportedVersion,
    /// A path that is empty, relative or contains NUL.
    InvalidPath,
    /// A `getEnvs` glob that does not parse, or both/neither of `glob` and `prefix`.
    InvalidPattern,
    /// A line longer than [`MAX_LINE_BYTES`].
    TooLong,
}

/// Result of `hello`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloResult {
    /// The version the server will speak on this connection.
    pub version: u32,
    /// Server name for diagnostics (`baton/0.1.0`).
    pub server: String,
}

/// Result of `ignoreInput`, `ignoreOutput` and `disableCache`: `{}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {}

/// Result of `getEnv`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetEnvResult {
    /// The raw value (base64), `null` when the variable is not set.
    pub value: Option<ByteChunk>,
}

/// Result of `getEnvs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetEnvsResult {
    /// Matching variables: name → raw value (base64), sorted by name.
    pub vars: BTreeMap<String, ByteChunk>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_flat_camel_case_objects() {
        let frame = RequestFrame {
            id: 7,
            request: Request::GetEnvs {
                glob: None,
                prefix: Some("VITE_".into()),
                tracked: false,
            },
        };
        let text = serde_json::to_string(&frame).expect("serialise");
        assert_eq!(
            text,
            r#"{"id":7,"op":"getEnvs","prefix":"VITE_","tracked":false}"#
        );
        let back: RequestFrame = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, frame);
    }

    #[test]
    fn tracked_defaults_to_true_and_unknown_ops_fail() {
        let frame: RequestFrame =
            serde_json::from_str(r#"{"id":1,"op":"getEnv","name":"A"}"#).expect("parse");
        assert_eq!(
            frame.request,
            Request::GetEnv {
                name: "A".into(),
                tracked: true
            }
        );
        assert!(serde_json::from_str::<RequestFrame>(r#"{"id":1,"op":"nope"}"#).is_err());
        assert!(serde_json::from_str::<RequestFrame>(r#"{"id":1,"op":"getEnv"}"#).is_err());
    }

    #[test]
    fn env_values_are_base64_bytes() {
        let resp = ResponseFrame::ok(
            2,
            &GetEnvResult {
                value: Some(ByteChunk(vec![0xff, b'a', 0])),
            },
        )
        .expect("serialise");
        let text = serde_json::to_string(&resp).expect("serialise");
        assert_eq!(text, r#"{"id":2,"result":{"value":"/2EA"}}"#);
        let unset = serde_json::to_string(
            &ResponseFrame::ok(3, &GetEnvResult { value: None }).expect("ok"),
        )
        .expect("serialise");
        assert_eq!(unset, r#"{"id":3,"result":{"value":null}}"#);
        let err = ResponseFrame::err(None, ErrorCode::BadRequest, "not json");
        assert_eq!(
            serde_json::to_string(&err).expect("serialise"),
            r#"{"id":null,"error":{"code":"badRequest","message":"not json"}}"#
        );
    }

    #[test]
    fn env_query_needs_exactly_one_field() {
        assert_eq!(
            EnvQuery::from_fields(Some("A*".into()), None),
            Ok(EnvQuery::Glob("A*".into()))
        );
        assert!(EnvQuery::from_fields(None, None).is_err());
        assert!(EnvQuery::from_fields(Some("a".into()), Some("b".into())).is_err());
    }
}
