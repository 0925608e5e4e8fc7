//! conc-retry on WebAssembly: the schedule's delays on the host's timers, attempt
//! timeouts, the breaker's clock and the budget's window on `performance.now()` (std's
//! clock panics there), and an abort that ends the wait. `cargo xtask wasm` runs these in
//! Node and in headless Chromium; natively this file is empty.

#![cfg(target_arch = "wasm32")]

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use conc_core::{AbortController, AbortReason};
use conc_retry::{
    AttemptFailure, BreakerError, CircuitBreaker, CircuitState, Jitter, Retry, RetryBudget,
    RetryPolicy, StopReason,
};
use wasm_bindgen_test::wasm_bindgen_test;

fn reset() -> std::io::Error {
    std::io::Error::from(std::io::ErrorKind::ConnectionReset)
}

fn policy(attempts: u32) -> RetryPolicy {
    RetryPolicy::builder()
        .max_attempts(attempts)
        .base_delay(Duration::from_millis(5))
        .jitter(Jitter::None)
        .build()
        .unwrap()
}

#[wasm_bindgen_test]
async fn a_flaky_call_is_retried_after_its_delays() {
    let calls = Rc::new(Cell::new(0));
    let started = web_time::Instant::now();
    let policy = policy(4);
    let reply = Retry::new(&policy)
        .run(|| {
            let calls = calls.clone();
            async move {
                calls.set(calls.get() + 1);
                if calls.get() < 3 {
                    Err(reset())
                } else {
                    Ok("hello")
                }
            }
        })
        .await
        .unwrap();
    assert_eq!(reply, "hello");
    assert_eq!(calls.get(), 3);
    // Two delays, 5 ms and 10 ms, on the host's timer.
    assert!(started.elapsed() >= Duration::from_millis(15));
}

#[wasm_bindgen_test]
async fn attempts_time_out_and_the_retries_run_out() {
    let policy = RetryPolicy::builder()
        .max_attempts(2)
        .base_delay(Duration::from_millis(1))
        .attempt_timeout(Duration::from_millis(10))
        .build()
        .unwrap();
    let error = Retry::new(&policy)
        .run(|| async {
            gloo_timers::future::sleep(Duration::from_secs(60)).await;
            Ok::<_, std::io::Error>(())
        })
        .await
        .unwrap_err();
    assert_eq!(error.attempts, 2);
    assert_eq!(error.stop, StopReason::Exhausted);
    assert!(matches!(error.last, Some(AttemptFailure::Timeout(_))));
}

#[wasm_bindgen_test]
async fn an_abort_ends_the_wait_between_attempts() {
    let controller = AbortController::new();
    let policy = RetryPolicy::builder()
        .max_attempts(10)
        .base_delay(Duration::from_secs(1))
        .build()
        .unwrap();
    let signal = controller.signal();
    let retrying = Retry::new(&policy)
        .signal(&signal)
        .run(|| async { Err::<(), _>(reset()) });
    let stop = async {
        gloo_timers::future::sleep(Duration::from_millis(5)).await;
        controller.abort(AbortReason::user("stop"));
    };
    let (error, ()) = futures_util::future::join(retrying, stop).await;
    assert_eq!(error.unwrap_err().stop, StopReason::Aborted);
}

#[wasm_bindgen_test]
async fn the_breaker_opens_and_half_opens_on_the_hosts_clock() {
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(2)
        .break_duration(Duration::from_millis(20))
        .build()
        .unwrap();
    for _ in 0..2 {
        let failed = breaker.call(|| async { Err::<(), _>(reset()) }).await;
        assert!(matches!(failed, Err(BreakerError::Inner(_))));
    }
    assert_eq!(breaker.state(), CircuitState::Open);
    let rejected = breaker.call(|| async { Ok::<_, std::io::Error>(()) }).await;
    assert!(matches!(rejected, Err(BreakerError::Open(_))));
    gloo_timers::future::sleep(Duration::from_millis(30)).await;
    let probe = breaker.call(|| async { Ok::<_, std::io::Error>(()) }).await;
    assert!(probe.is_ok());
    assert_eq!(breaker.state(), CircuitState::Closed);
}

#[wasm_bindgen_test]
fn the_budget_counts_on_the_hosts_clock() {
    let budget = RetryBudget::new(Duration::from_secs(10), 1, 0.2).unwrap();
    for _ in 0..100 {
        budget.deposit();
    }
    let allowed = (0..100).filter(|_| budget.try_withdraw()).count();
    assert_eq!(allowed, 20 + 10);
}

#[wasm_bindgen_test]
fn retry_after_dates_are_read_on_the_wall_clock() {
    let later = httpdate::fmt_http_date(
        std::time::UNIX_EPOCH
            + Duration::from_secs_f64(wall_clock_seconds())
            + Duration::from_secs(120),
    );
    let wait = conc_retry::parse_retry_after(&later).unwrap();
    assert!(wait > Duration::from_secs(100) && wait <= Duration::from_secs(120));
}

fn wall_clock_seconds() -> f64 {
    web_time::SystemTime::now()
        .duration_since(web_time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}
