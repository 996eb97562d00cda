//! baton-task (placeholder until its issue lands).
