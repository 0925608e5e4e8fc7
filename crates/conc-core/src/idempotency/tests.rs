//! Unit tests of the registry's private parts: the map's hashing spreads keys over the
//! bits a hash table looks at, and the waiter list still wakes every registered task after
//! entries are removed or re-registered.

use std::hash::BuildHasher as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Wake, Waker};

use super::hashing::KeyHashing;
use super::key::IdempotencyKey;
use super::waiters::{Waiters, wake_all};

/// The registry's hashing spreads keys over the low bits (the bucket index) and the high
/// bits (hashbrown's control bytes) alike.
#[test]
fn keys_spread_over_low_and_high_bits() {
    let hashing = KeyHashing::new();
    let hashes: Vec<u64> = (0..4096)
        .map(|n| hashing.hash_one(IdempotencyKey::new("conv", [n]).unwrap()))
        .collect();
    let low: std::collections::HashSet<u64> = hashes.iter().map(|h| h & 1023).collect();
    let high: std::collections::HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
    assert!(low.len() > 950, "{} of 1024 low buckets used", low.len());
    assert_eq!(high.len(), 128, "every 7-bit tag is used");
}

struct Count(AtomicUsize);

impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn tasks(n: usize) -> (Vec<Arc<Count>>, Vec<Waker>) {
    let counts: Vec<_> = (0..n)
        .map(|_| Arc::new(Count(AtomicUsize::new(0))))
        .collect();
    let wakers = counts.iter().map(|c| Waker::from(c.clone())).collect();
    (counts, wakers)
}

fn woken(counts: &[Arc<Count>]) -> Vec<usize> {
    counts.iter().map(|c| c.0.load(Ordering::SeqCst)).collect()
}

/// Entries that share the previous entry's waker keep none of their own; whatever is
/// removed or re-registered, every task still registered is woken (once per run of
/// entries of the same task).
#[test]
fn shared_wakers_survive_removal_and_re_registration() {
    let (counts, w) = tasks(3);
    let mut waiters = Waiters::default();
    for id in 0..4 {
        waiters.push(id, &w[0]);
    }
    waiters.push(4, &w[1]);
    waiters.push(5, &w[1]);
    assert_eq!(
        waiters.entries.iter().filter(|(_, w)| w.is_some()).count(),
        2,
        "one waker per run of the same task"
    );
    // The entry holding task 0's waker goes: the next one takes it over.
    waiters.remove(0);
    // Entry 2 moves to task 2: entry 3 must still wake task 0.
    waiters.update(2, &w[2]);
    // Entry 5 re-registers with its own task: nothing changes.
    waiters.update(5, &w[1]);
    // An entry taken out by a wake-up comes back.
    waiters.update(9, &w[0]);
    // Entries now: task 0, task 2, task 0 (kept for entry 3), task 1 twice, task 0.
    wake_all(std::mem::take(&mut waiters));
    assert_eq!(woken(&counts), [3, 1, 1]);

    // Only task 1's entries are left after the others go: it alone is woken.
    let (counts, w) = tasks(2);
    let mut waiters = Waiters::default();
    waiters.push(0, &w[0]);
    waiters.push(1, &w[1]);
    waiters.push(2, &w[1]);
    waiters.remove(1);
    waiters.remove(0);
    wake_all(waiters);
    assert_eq!(woken(&counts), [0, 1]);
}
