//! The time-based sliding window: the outcomes of the last `window` of time, kept as ten
//! buckets, from which the failure rate over that time is read. The state machine holds it
//! behind a short lock.

/// Ten buckets covering the time window.
pub(super) struct TimeWindow {
    bucket_nanos: u64,
    buckets: [Bucket; 10],
}

/// One tenth of the window: which tenth of time it covers, and its calls and failures.
#[derive(Clone, Copy, Default)]
struct Bucket {
    index: u64,
    calls: u32,
    failures: u32,
}

impl TimeWindow {
    /// An empty window of `window_nanos`, in ten buckets.
    pub(super) fn new(window_nanos: u64) -> Self {
        Self {
            bucket_nanos: (window_nanos / 10).max(1),
            buckets: [Bucket::default(); 10],
        }
    }

    /// Records one outcome at `now`; the calls and failures in the window.
    pub(super) fn record(&mut self, now: u64, failed: bool) -> (u64, u64) {
        let index = now / self.bucket_nanos;
        let n = self.buckets.len() as u64;
        let bucket = &mut self.buckets[(index % n) as usize];
        if bucket.index != index || bucket.calls == 0 {
            *bucket = Bucket {
                index,
                calls: 0,
                failures: 0,
            };
        }
        bucket.calls = bucket.calls.saturating_add(1);
        if failed {
            bucket.failures = bucket.failures.saturating_add(1);
        }
        self.buckets
            .iter()
            .filter(|b| b.calls > 0 && index.saturating_sub(b.index) < n && b.index <= index)
            .fold((0, 0), |(calls, failures), b| {
                (calls + u64::from(b.calls), failures + u64::from(b.failures))
            })
    }

    /// Forgets every outcome.
    pub(super) fn clear(&mut self) {
        self.buckets = [Bucket::default(); 10];
    }
}
