//! The loom shim: std and parking_lot types normally, loom's under `--cfg loom`.
//!
//! Every synchronisation primitive the crate uses comes from here, so that the
//! loom models in `src/tests/` explore the real code, not a copy of it.

#[cfg(not(loom))]
mod std_impl;
#[cfg(not(loom))]
pub(crate) use std_impl::*;

#[cfg(loom)]
mod loom_impl;
#[cfg(loom)]
pub(crate) use loom_impl::*;
