//! conc-retry beside its peers: the success path against a direct call and against backon,
//! and the circuit breaker's closed path against a direct call.

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

criterion_group!(benches, success_path, breaker_closed, breaker_tower);
criterion_main!(benches);
