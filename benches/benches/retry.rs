//! conc-retry beside its peers: the success path against a direct call and against backon;
//! the retry layer against tower-resilience's and tower's own; the circuit breaker's closed
//! path and its rejection when open against failsafe and tower-resilience.

use std::hint::black_box;
use std::io;

use backon::{ExponentialBuilder, Retryable as _};
use conc_benches::ready;
use conc_retry::{CircuitBreaker, RetryPolicy, retry};
use criterion::{Criterion, criterion_group, criterion_main};

async fn operation(n: u64) -> Result<u64, io::Error> {
    Ok(black_box(n) + 1)
}

fn success_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("retry_success_path");
    let policy = RetryPolicy::default();
    group.bench_function("conc", |b| {
        b.iter(|| ready(retry(&policy, || operation(1))))
    });
    group.bench_function("direct", |b| b.iter(|| ready(operation(1))));
    let backoff = ExponentialBuilder::default();
    group.bench_function("backon", |b| {
        b.iter(|| ready((|| operation(1)).retry(backoff)))
    });
    group.finish();
}

fn breaker_closed(c: &mut Criterion) {
    let mut group = c.benchmark_group("breaker_closed_path");
    let breaker = CircuitBreaker::builder().build().expect("breaker");
    group.bench_function("conc", |b| {
        b.iter(|| {
            let permit = breaker.try_acquire().expect("closed");
            let value = black_box(1u64) + 1;
            permit.success();
            value
        })
    });
    group.bench_function("direct", |b| b.iter(|| black_box(1u64) + 1));
    // The peer: failsafe's circuit breaker (consecutive failures, its default policy),
    // the same work through `call`.
    let peer = failsafe::Config::new().build();
    group.bench_function("failsafe", |b| {
        b.iter(|| {
            use failsafe::CircuitBreaker as _;
            peer.call(|| Ok::<u64, ()>(black_box(1u64) + 1))
                .expect("closed")
        })
    });
    group.finish();
}

/// The breaker as tower middleware, closed: one call through `ready` and `call` of a
/// service that answers at once, conc's `CircuitBreakerLayer` beside tower-resilience's.
fn breaker_tower(c: &mut Criterion) {
    use tower::{Layer as _, Service as _, ServiceExt as _, service_fn};
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("breaker_tower_closed_path");
    let inner = || service_fn(|n: u64| async move { Ok::<u64, std::io::Error>(n + 1) });
    let breaker = CircuitBreaker::builder().build().expect("breaker");
    let layer = conc_retry::CircuitBreakerLayer::new(breaker, |_: &std::io::Error| {
        conc_retry::ErrorClass::Server
    });
    let mut conc = layer.layer(inner());
    group.bench_function("conc", |b| {
        b.iter(|| {
            rt.block_on(async {
                let ready = conc.ready().await.expect("ready");
                black_box(ready.call(black_box(1)).await.expect("call"))
            })
        })
    });
    let peer_layer = tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_size(100)
        .build()
        .expect("peer");
    let mut peer = peer_layer.layer(inner());
    group.bench_function("tower-resilience", |b| {
        b.iter(|| {
            rt.block_on(async {
                let ready = peer.ready().await.expect("ready");
                black_box(ready.call(black_box(1)).await.expect("call"))
            })
        })
    });
    let mut direct = inner();
    group.bench_function("direct", |b| {
        b.iter(|| {
            rt.block_on(async {
                let ready = direct.ready().await.expect("ready");
                black_box(ready.call(black_box(1)).await.expect("call"))
            })
        })
    });
    group.finish();
}

/// The breaker open (tripped by failures, a break of an hour): what a rejected call costs,
/// conc's `try_acquire` beside failsafe's `call`.
fn breaker_open(c: &mut Criterion) {
    let mut group = c.benchmark_group("breaker_open_rejection");
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(3)
        .break_duration(std::time::Duration::from_secs(3600))
        .build()
        .expect("breaker");
    for _ in 0..3 {
        breaker.try_acquire().expect("closed").failure();
    }
    assert!(breaker.try_acquire().is_err(), "conc's breaker is open");
    group.bench_function("conc", |b| {
        b.iter(|| black_box(breaker.try_acquire().is_err()))
    });
    let peer = failsafe::Config::new()
        .failure_policy(failsafe::failure_policy::consecutive_failures(
            3,
            failsafe::backoff::constant(std::time::Duration::from_secs(3600)),
        ))
        .build();
    {
        use failsafe::CircuitBreaker as _;
        for _ in 0..3 {
            let _ = peer.call(|| Err::<u64, ()>(()));
        }
        assert!(
            matches!(
                peer.call(|| Ok::<u64, ()>(1)),
                Err(failsafe::Error::Rejected)
            ),
            "failsafe's breaker is open"
        );
    }
    group.bench_function("failsafe", |b| {
        b.iter(|| {
            use failsafe::CircuitBreaker as _;
            black_box(peer.call(|| Ok::<u64, ()>(black_box(1u64) + 1)).is_err())
        })
    });
    group.finish();
}

/// The same as tower middleware: a call through `ready` and `call` of an open breaker
/// layer, conc's beside tower-resilience's.
fn breaker_tower_open(c: &mut Criterion) {
    use tower::{Layer as _, Service as _, ServiceExt as _, service_fn};
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("breaker_tower_open_rejection");
    // Fails on 0, answers otherwise.
    let inner = || {
        service_fn(|n: u64| async move {
            if n == 0 {
                Err(std::io::Error::other("down"))
            } else {
                Ok(n + 1)
            }
        })
    };
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(3)
        .break_duration(std::time::Duration::from_secs(3600))
        .build()
        .expect("breaker");
    let layer = conc_retry::CircuitBreakerLayer::new(breaker, |_: &std::io::Error| {
        conc_retry::ErrorClass::Server
    });
    let mut conc = layer.layer(inner());
    let peer_layer = tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .consecutive_failures(3)
        .wait_duration_in_open(std::time::Duration::from_secs(3600))
        .build()
        .expect("peer");
    let mut peer = peer_layer.layer(inner());
    rt.block_on(async {
        for _ in 0..3 {
            let _ = conc.ready().await.expect("ready").call(0).await;
            let _ = peer.ready().await.expect("ready").call(0).await;
        }
        assert!(
            conc.ready().await.is_err() || conc.call(1).await.is_err(),
            "conc's layer is open"
        );
        assert!(
            peer.ready().await.is_err() || peer.call(1).await.is_err(),
            "the peer's layer is open"
        );
    });
    group.bench_function("conc", |b| {
        b.iter(|| {
            rt.block_on(async {
                let rejected = match conc.ready().await {
                    Ok(ready) => ready.call(black_box(1)).await.is_err(),
                    Err(_) => true,
                };
                black_box(rejected)
            })
        })
    });
    group.bench_function("tower-resilience", |b| {
        b.iter(|| {
            rt.block_on(async {
                let rejected = match peer.ready().await {
                    Ok(ready) => ready.call(black_box(1)).await.is_err(),
                    Err(_) => true,
                };
                black_box(rejected)
            })
        })
    });
    group.finish();
}

/// tower's own retry needs a policy: this one retries any error up to twice, at once (tower
/// leaves the backoff to the policy; the success path never reaches it).
#[derive(Clone)]
struct Attempts(usize);

impl<E> tower::retry::Policy<u64, u64, E> for Attempts {
    type Future = std::future::Ready<()>;

    fn retry(&mut self, _: &mut u64, result: &mut Result<u64, E>) -> Option<Self::Future> {
        match result {
            Ok(_) => None,
            Err(_) if self.0 > 0 => {
                self.0 -= 1;
                Some(std::future::ready(()))
            }
            Err(_) => None,
        }
    }

    fn clone_request(&mut self, request: &u64) -> Option<u64> {
        Some(*request)
    }
}

/// A retry layer around a service that answers at once: conc's `RetryLayer` (default
/// policy: 3 attempts, exponential backoff with jitter) beside tower-resilience's
/// `RetryLayer` (3 attempts, exponential backoff) and tower's `Retry` with a policy.
fn retry_tower(c: &mut Criterion) {
    use tower::{Layer as _, Service as _, ServiceExt as _, service_fn};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("retry_tower_success_path");
    let inner = || service_fn(|n: u64| async move { Ok::<u64, std::io::Error>(n + 1) });
    let layer = conc_retry::RetryLayer::new(RetryPolicy::default(), |_: &std::io::Error| {
        conc_retry::ErrorClass::Transient
    });
    let mut conc = layer.layer(inner());
    group.bench_function("conc", |b| {
        b.iter(|| {
            rt.block_on(async {
                let ready = conc.ready().await.expect("ready");
                black_box(ready.call(black_box(1)).await.expect("call"))
            })
        })
    });
    let peer_layer = tower_resilience::retry::RetryLayer::<u64, u64, std::io::Error>::builder()
        .max_attempts(3)
        .exponential_backoff(std::time::Duration::from_millis(100))
        .build();
    let mut peer = peer_layer.layer(inner());
    group.bench_function("tower-resilience", |b| {
        b.iter(|| {
            rt.block_on(async {
                let ready = peer.ready().await.expect("ready");
                black_box(ready.call(black_box(1)).await.expect("call"))
            })
        })
    });
    let mut tower_retry = tower::retry::RetryLayer::new(Attempts(2)).layer(inner());
    group.bench_function("tower", |b| {
        b.iter(|| {
            rt.block_on(async {
                let ready = tower_retry.ready().await.expect("ready");
                black_box(ready.call(black_box(1)).await.expect("call"))
            })
        })
    });
    let mut direct = inner();
    group.bench_function("direct", |b| {
        b.iter(|| {
            rt.block_on(async {
                let ready = direct.ready().await.expect("ready");
                black_box(ready.call(black_box(1)).await.expect("call"))
            })
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    success_path,
    breaker_closed,
    breaker_tower,
    breaker_open,
    breaker_tower_open,
    retry_tower
);
criterion_main!(benches);
