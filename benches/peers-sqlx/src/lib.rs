//! Nothing but the bench (`benches/postgres_peer.rs`): this crate exists to build a peer
//! whose dependencies cannot join the main workspace. `cargo xtask bench` runs it with the
//! main workspace's target folder, so its rows land in the same report.
