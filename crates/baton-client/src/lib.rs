//! baton-client (being built; see issue 3).
