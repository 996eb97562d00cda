//! Observation cursors: `bo_` followed by exactly 16 lowercase hex digits of a global sequence.
//! The format is part of the backend API, so [`Cursor`] is defined in
//! [`baton_protocol::backend`] and re-exported here.

pub use baton_protocol::backend::{Cursor, CursorError};
