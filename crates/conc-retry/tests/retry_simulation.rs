//! A small simulation: many clients against one contended resource. Full jitter needs
//! fewer calls than no jitter (AWS's "Exponential Backoff And Jitter"); the figures are
//! printed.

use std::time::Duration;

use conc_retry::{Jitter, RetryPolicy};

/// `clients` all call at t = 0; the resource serves `per_slot` calls per 10 ms slot and
/// rejects the rest, who retry on their own schedule until served. Returns the total
/// number of calls and the time the last client was served.
fn simulate(jitter: Jitter, clients: usize, per_slot: usize) -> (usize, Duration) {
    let policy = RetryPolicy::builder()
        .max_attempts(u32::MAX)
        .base_delay(Duration::from_millis(10))
        .max_delay(Duration::from_secs(5))
        .jitter(jitter)
        .seed(2026)
        .build()
        .unwrap();
    let slot = Duration::from_millis(10);
    let mut waiting: Vec<(Duration, conc_retry::Schedule)> = (0..clients)
        .map(|_| (Duration::ZERO, policy.schedule()))
        .collect();
    let mut calls = 0;
    let mut finished_at = Duration::ZERO;
    while !waiting.is_empty() {
        // The earliest slot with a call in it.
        let now = waiting.iter().map(|(at, _)| *at).min().unwrap();
        let slot_end = (now.as_nanos() / slot.as_nanos() + 1) * slot.as_nanos();
        let slot_end = Duration::from_nanos(slot_end as u64);
        let mut served = 0;
        let mut next = Vec::with_capacity(waiting.len());
        for (at, mut schedule) in waiting {
            if at >= slot_end {
                next.push((at, schedule));
                continue;
            }
            calls += 1;
            if served < per_slot {
                served += 1;
                finished_at = finished_at.max(at);
            } else {
                let delay = schedule.next().unwrap();
                next.push((at + delay, schedule));
            }
        }
        waiting = next;
    }
    (calls, finished_at)
}

#[test]
fn full_jitter_makes_fewer_calls_than_no_jitter() {
    let clients = 100;
    let (none_calls, none_time) = simulate(Jitter::None, clients, 5);
    let (full_calls, full_time) = simulate(Jitter::Full, clients, 5);
    let (equal_calls, equal_time) = simulate(Jitter::Equal, clients, 5);
    let (decorrelated_calls, decorrelated_time) = simulate(Jitter::Decorrelated, clients, 5);
    println!("{clients} clients, a resource serving 5 calls per 10 ms:");
    println!("  jitter        calls   last served");
    println!("  none         {none_calls:>6}   {none_time:?}");
    println!("  full         {full_calls:>6}   {full_time:?}");
    println!("  equal        {equal_calls:>6}   {equal_time:?}");
    println!("  decorrelated {decorrelated_calls:>6}   {decorrelated_time:?}");
    assert!(
        full_calls < none_calls,
        "full jitter {full_calls} vs none {none_calls}"
    );
    assert!(
        full_calls * 2 < none_calls,
        "full jitter should at least halve the calls"
    );
}
