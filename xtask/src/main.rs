//! Developer tasks: `cargo xtask bench`.
fn main() {}
