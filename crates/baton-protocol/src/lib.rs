//! Wire types of Baton: everything that crosses a process boundary.
//!
//! This crate does no I/O and has no async runtime (ARCHITECTURE.md). It holds:
//! - [`jsonrpc`]: the JSON-RPC 2.0 envelope (requests, notifications, responses, errors)
//!   shared by every Baton JSON-RPC transport;
//! - [`exec`]: the exec-server protocol of DESIGN.md §2, wire-compatible with the exec server of
//!   the Codex CLI (`codex exec-server`, npm `@openai/codex`): method names, params and results,
//!   notifications, error codes, base64 byte fields and both path dialects (bare absolute paths and
//!   `file://` URIs);
//! - [`backend`]: the backend API of DESIGN.md §3 (`baton serve`): HTTP bodies, observation
//!   WebSocket frames, diagnostic codes and the `bo_` cursor format;
//! - [`tool`]: the tool IPC protocol of DESIGN.md §5 (tools spawned by `baton run`).

pub mod backend;
pub mod exec;
pub mod jsonrpc;
pub mod tool;
