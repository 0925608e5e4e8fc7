//! conc-async beside its peers: `map_concurrent` against futures' `buffer_unordered`, the
//! bounded channel against tokio's mpsc, and supervised spawns against bare `tokio::spawn`.

use std::time::Duration;

use conc_async::{Supervisor, channel, map_concurrent};
use conc_core::Aborted;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use futures::StreamExt as _;

const ITEMS: u64 = 1_000;

fn fan_out(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("map_concurrent");
    for limit in [4usize, 64] {
        group.bench_function(BenchmarkId::new("conc", format!("limit {limit}")), |b| {
            b.iter(|| {
                rt.block_on(map_concurrent(0..ITEMS, limit, |n| async move {
                    tokio::task::yield_now().await;
                    n
                }))
            })
        });
        group.bench_function(
            BenchmarkId::new("futures-buffer_unordered", format!("limit {limit}")),
            |b| {
                b.iter(|| {
                    rt.block_on(
                        futures::stream::iter(0..ITEMS)
                            .map(|n| async move {
                                tokio::task::yield_now().await;
                                n
                            })
                            .buffer_unordered(limit)
                            .collect::<Vec<_>>(),
                    )
                })
            },
        );
    }
    group.finish();
}

/// One producer task and one consumer, 1000 messages through a buffer of 32.
fn channels(c: &mut Criterion) {
    let rt = conc_benches::runtime(2);
    let mut group = c.benchmark_group("channel_throughput");
    group.bench_function("conc", |b| {
        b.iter(|| {
            rt.block_on(async {
                let (tx, mut rx) = channel::<u64>(32).expect("capacity");
                let producer = tokio::spawn(async move {
                    for n in 0..ITEMS {
                        tx.send(n).await.expect("open");
                    }
                });
                let mut sum = 0;
                while let Some(n) = rx.recv().await {
                    sum += n;
                }
                producer.await.expect("producer");
                sum
            })
        })
    });
    group.bench_function("tokio-mpsc", |b| {
        b.iter(|| {
            rt.block_on(async {
                let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(32);
                let producer = tokio::spawn(async move {
                    for n in 0..ITEMS {
                        tx.send(n).await.expect("open");
                    }
                });
                let mut sum = 0;
                while let Some(n) = rx.recv().await {
                    sum += n;
                }
                producer.await.expect("producer");
                sum
            })
        })
    });
    group.finish();
}

/// 100 short tasks spawned and awaited.
fn spawning(c: &mut Criterion) {
    const TASKS: usize = 100;
    let rt = conc_benches::runtime(2);
    let mut group = c.benchmark_group("spawn_100");
    group.bench_function("conc", |b| {
        b.iter(|| {
            rt.block_on(async {
                let supervisor = Supervisor::new("bench");
                for _ in 0..TASKS {
                    supervisor
                        .spawn("t", |_| async { Ok::<_, Aborted>(()) })
                        .await
                        .expect("open");
                }
                supervisor.shutdown(Duration::from_secs(10)).await
            })
        })
    });
    group.bench_function("tokio", |b| {
        b.iter(|| {
            rt.block_on(async {
                let handles: Vec<_> = (0..TASKS).map(|_| tokio::spawn(async {})).collect();
                for handle in handles {
                    handle.await.expect("task");
                }
            })
        })
    });
    group.finish();
}

criterion_group!(benches, fan_out, channels, spawning);
criterion_main!(benches);
