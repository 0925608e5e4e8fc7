//! The count-based sliding window: the outcomes of the last `window` calls, one atomic slot
//! each, and how many of them failed, from which the failure rate is read. Atomics only
//! (from the crate's loom shim), so the loom models explore it as they run.

use crate::loom::{AtomicU8, AtomicU32, AtomicU64, Ordering};

const EMPTY: u8 = 0;
const OK: u8 = 1;
const FAIL: u8 = 2;

/// A ring of the last calls' outcomes (empty when no failure rate over calls is set).
pub(super) struct CountWindow {
    slots: Vec<AtomicU8>,
    position: AtomicU64,
    failures: AtomicU32,
}

impl CountWindow {
    /// An empty window of `size` calls.
    pub(super) fn new(size: usize) -> Self {
        Self {
            slots: (0..size).map(|_| AtomicU8::new(EMPTY)).collect(),
            position: AtomicU64::new(0),
            failures: AtomicU32::new(0),
        }
    }

    /// Records one outcome in a window of `size` calls; whether the failures now reach
    /// `rate` of the calls, once at least `min_calls` were made.
    pub(super) fn record(&self, success: bool, rate: f64, size: u32, min_calls: u32) -> bool {
        let position = self.position.fetch_add(1, Ordering::AcqRel);
        let slot = &self.slots[(position % u64::from(size)) as usize];
        let new = if success { OK } else { FAIL };
        let old = slot.swap(new, Ordering::AcqRel);
        if old != FAIL && new == FAIL {
            self.failures.fetch_add(1, Ordering::AcqRel);
        } else if old == FAIL && new != FAIL {
            self.failures.fetch_sub(1, Ordering::AcqRel);
        }
        if success {
            return false;
        }
        let calls = (position + 1).min(u64::from(size));
        let failures = u64::from(self.failures.load(Ordering::Acquire));
        calls >= u64::from(min_calls) && failures as f64 >= rate * calls as f64
    }

    /// Forgets every outcome.
    pub(super) fn clear(&self) {
        for slot in &self.slots {
            slot.store(EMPTY, Ordering::Release);
        }
        self.position.store(0, Ordering::Release);
        self.failures.store(0, Ordering::Release);
    }
}
