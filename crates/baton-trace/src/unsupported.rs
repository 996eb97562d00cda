//! Stand-ins on platforms without seccomp user notification: [`start`](crate::start) always
//! reports [`Unavailable::UnsupportedPlatform`](crate::Unavailable::UnsupportedPlatform), so these
//! types are never constructed; they exist so callers compile everywhere.

use std::convert::Infallible;
use std::io;

use crate::{AccessLog, TraceError};

/// The child side of a trace; never constructed on this platform.
#[derive(Debug)]
pub struct ChildHook {
    never: Infallible,
}

impl ChildHook {
    /// Never called on this platform (no value of this type exists).
    ///
    /// # Errors
    /// None: unreachable.
    ///
    /// # Safety
    /// As on Linux: only in a forked child before `exec`.
    pub unsafe fn install(&self) -> io::Result<()> {
        match self.never {}
    }

    /// Never called on this platform (no value of this type exists).
    pub fn into_pre_exec(self) -> impl FnMut() -> io::Result<()> + Send + Sync + 'static {
        move || match self.never {}
    }
}

/// The supervisor side of a trace; never constructed on this platform.
#[derive(Debug)]
pub struct Supervisor {
    never: Infallible,
}

impl Supervisor {
    /// Never called on this platform (no value of this type exists).
    ///
    /// # Errors
    /// None: unreachable.
    pub fn finish(self) -> Result<AccessLog, TraceError> {
        match self.never {}
    }

    /// Never called on this platform (no value of this type exists).
    ///
    /// # Errors
    /// None: unreachable.
    pub fn wait_tree(self) -> Result<AccessLog, TraceError> {
        match self.never {}
    }
}
