//! Loom models of each primitive's races, built only with `--cfg loom`.
//!
//! Run them with `cargo xtask loom` (which sets `LOOM_MAX_PREEMPTIONS`).

mod loom_abort;
mod loom_idempotency;
mod loom_mutex;
mod loom_sequence;

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// Polls `future` once with a no-op waker.
fn poll_once<F: Future>(future: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(Waker::noop()))
}

/// Polls a fresh future once, then drops it: a caller that gives up at once.
fn poll_then_drop<F: Future>(future: F) -> Poll<()> {
    let future = pin!(future);
    poll_once(future).map(|_| ())
}
