//! baton-rpc (placeholder until its issue lands).
