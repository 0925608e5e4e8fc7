//! Loom models of the breaker's state machine: half-open admits exactly N probes; a
//! probe's success races a probe's failure; racing failures grow the break once.

use loom::sync::Arc;
use loom::thread;

use super::state::{Core, CoreConfig, HALF_OPEN, OPEN, tag};
use crate::loom::Ordering;

fn core(probes: u32) -> Core {
    Core::new(CoreConfig {
        consecutive: Some(1),
        rate: None,
        break_nanos: 10,
        growth: 1.0,
        max_break_nanos: 10,
        probes,
        close_after: probes,
        time_rate: None,
        slow_nanos: None,
        max_half_open_nanos: None,
    })
}

/// Three callers race into a half-open breaker that admits `probes`: exactly that many
/// get a permit.
fn admits_exactly(probes: u32) {
    loom::model(move || {
        let core = Arc::new(core(probes));
        let (first, _) = core.acquire(|| 0);
        core.record(first.unwrap(), false, || 0); // opens until 10
        let callers: Vec<_> = (0..3)
            .map(|_| {
                let core = core.clone();
                thread::spawn(move || core.acquire(|| 20).0.is_ok())
            })
            .collect();
        let admitted = callers
            .into_iter()
            .map(|c| c.join().unwrap())
            .filter(|ok| *ok)
            .count();
        assert_eq!(admitted, probes as usize);
        assert_eq!(tag(core.state.load(Ordering::SeqCst)), HALF_OPEN);
    });
}

#[test]
fn half_open_admits_exactly_one_probe() {
    admits_exactly(1);
}

#[test]
fn half_open_admits_exactly_two_probes() {
    admits_exactly(2);
}

/// Two probes: one succeeds while the other fails. The breaker ends open (a failed
/// probe re-opens it) or, if the success closed it first, the stale failure is ignored.
#[test]
fn probe_success_races_probe_failure() {
    loom::model(|| {
        let core = Arc::new(core(2));
        let (first, _) = core.acquire(|| 0);
        core.record(first.unwrap(), false, || 0);
        let a = core.acquire(|| 20).0.unwrap();
        let b = core.acquire(|| 20).0.unwrap();
        let failing = {
            let core = core.clone();
            thread::spawn(move || core.record(b, false, || 20))
        };
        core.record(a, true, || 20);
        failing.join().unwrap();
        // close_after is 2, so one success cannot close it: the failure must open it.
        assert_eq!(tag(core.state.load(Ordering::SeqCst)), OPEN);
    });
}

/// Two probes fail at once with a growing break: the breaker re-opens once, and the
/// break grows one step (10 × 4), never two (10 × 16).
#[test]
fn racing_failures_grow_the_break_once() {
    loom::model(|| {
        let core = Arc::new(Core::new(CoreConfig {
            consecutive: Some(1),
            rate: None,
            break_nanos: 10,
            growth: 4.0,
            max_break_nanos: 1000,
            probes: 2,
            close_after: 2,
            time_rate: None,
            slow_nanos: None,
            max_half_open_nanos: None,
        }));
        let (first, _) = core.acquire(|| 0);
        core.record(first.unwrap(), false, || 0); // open until 10
        let a = core.acquire(|| 20).0.unwrap();
        let b = core.acquire(|| 20).0.unwrap();
        let other = {
            let core = core.clone();
            thread::spawn(move || core.record(b, false, || 20))
        };
        core.record(a, false, || 20);
        other.join().unwrap();
        assert_eq!(tag(core.state.load(Ordering::SeqCst)), OPEN);
        assert_eq!(core.open_until.load(Ordering::SeqCst), 20 + 40);
        // Until then it admits nobody; at 60 one probe again.
        assert!(core.acquire(|| 59).0.is_err());
        assert!(core.acquire(|| 60).0.is_ok());
    });
}
