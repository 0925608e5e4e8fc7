//! The circuit breaker: triggers, half-open probes, growth, hooks, isolate and reset.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use conc_retry::{BreakerConfigError, CircuitBreaker, CircuitState, ErrorClass, StateChange};

fn fail(breaker: &CircuitBreaker) {
    breaker.try_acquire().expect("admitted").failure();
}

fn succeed(breaker: &CircuitBreaker) {
    breaker.try_acquire().expect("admitted").success();
}

#[tokio::test(start_paused = true)]
async fn opens_on_consecutive_failures_and_recovers_through_a_probe() {
    let changes = Arc::new(Mutex::new(Vec::new()));
    let seen = changes.clone();
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(3)
        .break_duration(Duration::from_secs(10))
        .on_state_change(move |c| seen.lock().unwrap().push(c))
        .build()
        .unwrap();
    fail(&breaker);
    fail(&breaker);
    succeed(&breaker); // resets the run
    fail(&breaker);
    fail(&breaker);
    assert_eq!(breaker.state(), CircuitState::Closed);
    fail(&breaker);
    assert_eq!(breaker.state(), CircuitState::Open);
    let open = breaker.try_acquire().unwrap_err();
    assert_eq!(open.retry_after, Some(Duration::from_secs(10)));

    tokio::time::advance(Duration::from_secs(10)).await;
    let probe = breaker.try_acquire().expect("one probe");
    assert_eq!(breaker.state(), CircuitState::HalfOpen);
    assert!(breaker.try_acquire().is_err(), "exactly one probe");
    probe.success();
    assert_eq!(breaker.state(), CircuitState::Closed);
    use CircuitState::*;
    let expected = [(Closed, Open), (Open, HalfOpen), (HalfOpen, Closed)]
        .map(|(from, to)| StateChange { from, to });
    assert_eq!(*changes.lock().unwrap(), expected);
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_reopens_with_a_growing_break() {
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(1)
        .break_duration(Duration::from_secs(1))
        .break_growth(2.0, Duration::from_secs(3))
        .build()
        .unwrap();
    fail(&breaker);
    for expected in [2, 3, 3] {
        tokio::time::advance(Duration::from_secs(5)).await;
        fail(&breaker); // the probe fails
        assert_eq!(
            breaker.try_acquire().unwrap_err().retry_after,
            Some(Duration::from_secs(expected))
        );
    }
}

#[tokio::test(start_paused = true)]
async fn opens_on_the_failure_rate_over_the_window() {
    let breaker = CircuitBreaker::builder()
        .no_consecutive_trigger()
        .failure_rate(0.5, 10, 4)
        .build()
        .unwrap();
    fail(&breaker);
    fail(&breaker);
    assert_eq!(breaker.state(), CircuitState::Closed, "below min_calls");
    for _ in 0..8 {
        succeed(&breaker);
    }
    // window: F F S S S S S S S S → 2 of 10; three more failures replace the oldest
    fail(&breaker); // replaces F: 2/10
    fail(&breaker); // replaces F: 2/10
    fail(&breaker); // replaces S: 3/10
    fail(&breaker); // 4/10
    assert_eq!(breaker.state(), CircuitState::Closed);
    fail(&breaker); // 5/10 = 50%
    assert_eq!(breaker.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn several_probes_and_a_dropped_probe_frees_its_slot() {
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(1)
        .break_duration(Duration::from_secs(1))
        .half_open_probes(2)
        .build()
        .unwrap();
    fail(&breaker);
    tokio::time::advance(Duration::from_secs(1)).await;
    let a = breaker.try_acquire().unwrap();
    let b = breaker.try_acquire().unwrap();
    assert!(breaker.try_acquire().is_err());
    drop(b); // cancelled: neither success nor failure
    let c = breaker.try_acquire().expect("the slot was freed");
    a.success();
    assert_eq!(
        breaker.state(),
        CircuitState::HalfOpen,
        "needs two successes"
    );
    c.success();
    assert_eq!(breaker.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn permanent_and_aborted_outcomes_do_not_count() {
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(2)
        .build()
        .unwrap();
    for _ in 0..5 {
        breaker.try_acquire().unwrap().record(ErrorClass::Permanent);
        breaker.try_acquire().unwrap().record(ErrorClass::Aborted);
    }
    assert_eq!(breaker.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn isolate_and_reset() {
    let breaker = CircuitBreaker::builder().build().unwrap();
    breaker.isolate();
    assert_eq!(breaker.state(), CircuitState::Isolated);
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert_eq!(breaker.try_acquire().unwrap_err().retry_after, None);
    breaker.reset();
    assert_eq!(breaker.state(), CircuitState::Closed);
    succeed(&breaker);
    let shared = breaker.clone();
    shared.isolate();
    assert_eq!(
        breaker.state(),
        CircuitState::Isolated,
        "clones share one state"
    );
}

#[test]
fn bad_configurations_are_typed_errors() {
    let build = |b: conc_retry::CircuitBreakerBuilder| b.build().unwrap_err();
    assert_eq!(
        build(CircuitBreaker::builder().no_consecutive_trigger()),
        BreakerConfigError::NoTrigger
    );
    assert_eq!(
        build(CircuitBreaker::builder().consecutive_failures(0)),
        BreakerConfigError::Zero("consecutive_failures")
    );
    assert_eq!(
        build(CircuitBreaker::builder().failure_rate(1.5, 10, 5)),
        BreakerConfigError::BadRate(1.5)
    );
    assert_eq!(
        build(CircuitBreaker::builder().half_open_probes(0)),
        BreakerConfigError::Zero("half_open_probes")
    );
    assert!(matches!(
        build(CircuitBreaker::builder().half_open_probes(1).close_after(2)),
        BreakerConfigError::CloseAfterAboveProbes { .. }
    ));
    assert!(matches!(
        build(CircuitBreaker::builder().break_growth(0.5, Duration::from_secs(1))),
        BreakerConfigError::BadGrowth(_)
    ));
}

/// resilience4j's time-based sliding window: the failure rate over the last `window` of
/// time; older outcomes fall out.
#[tokio::test(start_paused = true)]
async fn opens_on_the_failure_rate_over_time() {
    let breaker = CircuitBreaker::builder()
        .no_consecutive_trigger()
        .failure_rate_over(0.5, Duration::from_secs(10), 4)
        .build()
        .unwrap();
    fail(&breaker);
    fail(&breaker);
    tokio::time::advance(Duration::from_secs(11)).await;
    // The two old failures are out of the window: 1 of 3, then 2 of 4 calls.
    succeed(&breaker);
    succeed(&breaker);
    fail(&breaker);
    assert_eq!(breaker.state(), CircuitState::Closed);
    fail(&breaker);
    assert_eq!(breaker.state(), CircuitState::Open);
}

/// A call slower than the threshold counts as a failure, even when it succeeds.
#[tokio::test(start_paused = true)]
async fn slow_calls_count_as_failures() {
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(2)
        .slow_call_threshold(Duration::from_millis(100))
        .build()
        .unwrap();
    for _ in 0..2 {
        let permit = breaker.try_acquire().unwrap();
        tokio::time::advance(Duration::from_millis(200)).await;
        permit.success();
    }
    assert_eq!(breaker.state(), CircuitState::Open);
    let fast = CircuitBreaker::builder()
        .consecutive_failures(2)
        .slow_call_threshold(Duration::from_millis(100))
        .build()
        .unwrap();
    for _ in 0..2 {
        let permit = fast.try_acquire().unwrap();
        tokio::time::advance(Duration::from_millis(50)).await;
        permit.success();
    }
    assert_eq!(fast.state(), CircuitState::Closed);
}

/// A probe that hangs cannot hold the breaker half-open for ever: past the maximum wait it
/// opens again, and a later probe is admitted after the break.
#[tokio::test(start_paused = true)]
async fn a_hung_probe_cannot_hold_it_half_open() {
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(1)
        .break_duration(Duration::from_secs(1))
        .max_wait_in_half_open(Duration::from_secs(5))
        .build()
        .unwrap();
    fail(&breaker);
    tokio::time::advance(Duration::from_secs(1)).await;
    let hung = breaker.try_acquire().expect("the probe");
    assert_eq!(breaker.state(), CircuitState::HalfOpen);
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(breaker.try_acquire().is_err(), "still probing");
    tokio::time::advance(Duration::from_secs(4)).await;
    assert!(breaker.try_acquire().is_err());
    assert_eq!(
        breaker.state(),
        CircuitState::Open,
        "re-opened past the wait"
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    let probe = breaker.try_acquire().expect("a new probe after the break");
    probe.success();
    drop(hung);
    assert_eq!(breaker.state(), CircuitState::Closed);
}

/// With automatic half-open, the breaker reads (and reports) half-open as soon as the
/// break is over, without a call.
#[tokio::test(start_paused = true)]
async fn automatic_half_open_without_a_call() {
    let changes = Arc::new(Mutex::new(Vec::new()));
    let seen = changes.clone();
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(1)
        .break_duration(Duration::from_secs(1))
        .automatic_half_open(true)
        .on_state_change(move |change: StateChange| seen.lock().unwrap().push(change.to))
        .build()
        .unwrap();
    fail(&breaker);
    assert_eq!(breaker.state(), CircuitState::Open);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(breaker.state(), CircuitState::HalfOpen);
    assert_eq!(
        *changes.lock().unwrap(),
        [CircuitState::Open, CircuitState::HalfOpen]
    );
}

/// A failed call's error shows through the breaker's: in its message and as its source.
#[test]
fn a_failed_calls_cause_shows_through_the_breaker_error() {
    use std::error::Error as _;
    let error: conc_retry::BreakerError<std::io::Error> =
        conc_retry::BreakerError::Inner(std::io::Error::other("upstream said 503"));
    assert_eq!(error.to_string(), "the call failed: upstream said 503");
    assert_eq!(
        error.source().map(ToString::to_string).as_deref(),
        Some("upstream said 503")
    );
    // The breaker's errors classify: an open circuit stops a retry, a failed call keeps
    // its class.
    use conc_retry::{Classify as _, ErrorClass};
    assert_eq!(error.class(), ErrorClass::Server);
    let open: conc_retry::BreakerError<std::io::Error> =
        conc_retry::BreakerError::Open(conc_retry::CircuitOpen { retry_after: None });
    assert_eq!(open.class(), ErrorClass::Permanent);
    let classify =
        conc_retry::BreakerError::classify_with(|_: &std::io::Error| ErrorClass::Transient);
    assert_eq!(classify(&open), ErrorClass::Permanent);
    assert_eq!(classify(&error), ErrorClass::Transient);
}
