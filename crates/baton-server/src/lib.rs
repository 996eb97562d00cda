//! baton-server (being built; see issue 3).
