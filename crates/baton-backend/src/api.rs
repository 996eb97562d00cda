//! The JSON shapes of the backend API (DESIGN.md §3). They cross a process boundary, so they are
//! defined in [`baton_protocol::backend`] (ARCHITECTURE.md invariant 1); this module re-exports
//! them for the rest of the crate.

pub use baton_protocol::backend::{
    Diagnostic, ErrorBody, EventEnvelope, FrameDiagnostic, InputKind, InputRequest,
    LifecycleRequest, OperationResult, OperationState, RuntimeCapabilities, RuntimeList,
    RuntimeSummary, Severity, SpawnRequest, Transcript, TranscriptItem, WorkerList, WorkerState,
    WorkerSummary, WsFrame,
};
