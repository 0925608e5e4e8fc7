//! conc-core beside its peers: the mutexes (tokio, async-lock, parking_lot as the blocking
//! floor), the sequence guard (a bare `AtomicU64`), the registry (async_singleflight) and
//! abort signals (tokio-util's `CancellationToken`).

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use conc_benches::{contended_task_counts, ready, runtime, time_rounds};
use conc_core::{AbortController, AbortReason, IdempotencyKey, IdempotencyRegistry, SequenceGuard};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

fn mutex_uncontended(c: &mut Criterion) {
    let mut group = c.benchmark_group("mutex_uncontended");
    let conc = conc_core::Mutex::new(0u64);
    group.bench_function("conc", |b| b.iter(|| *ready(conc.lock()) += 1));
    let tokio = tokio::sync::Mutex::new(0u64);
    group.bench_function("tokio", |b| b.iter(|| *ready(tokio.lock()) += 1));
    let async_lock = async_lock::Mutex::new(0u64);
    group.bench_function("async-lock", |b| b.iter(|| *ready(async_lock.lock()) += 1));
    let parking = parking_lot::Mutex::new(0u64);
    group.bench_function("parking_lot", |b| b.iter(|| *parking.lock() += 1));
    group.finish();
}

/// Tasks on a multi-thread runtime, each taking the lock 100 times per round with a yield
/// inside the critical section, so the lock is really contended.
fn mutex_contended(c: &mut Criterion) {
    const LOCKS_PER_TASK: u64 = 100;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let rt = runtime(threads);
    let mut group = c.benchmark_group("mutex_contended");
    for tasks in contended_task_counts() {
        let label = format!("{tasks} tasks on {threads} threads");
        macro_rules! case {
            ($name:literal, $mutex:expr) => {
                group.bench_function(BenchmarkId::new($name, &label), |b| {
                    b.iter_custom(|iters| {
                        let mutex = Arc::new($mutex);
                        time_rounds(&rt, iters, || {
                            let mutex = mutex.clone();
                            async move {
                                let handles: Vec<_> = (0..tasks)
                                    .map(|_| {
                                        let mutex = mutex.clone();
                                        tokio::spawn(async move {
                                            for _ in 0..LOCKS_PER_TASK {
                                                let mut guard = mutex.lock().await;
                                                *guard += 1;
                                                tokio::task::yield_now().await;
                                            }
                                        })
                                    })
                                    .collect();
                                for handle in handles {
                                    handle.await.expect("bench task");
                                }
                            }
                        })
                    })
                });
            };
        }
        case!("conc", conc_core::Mutex::new(0u64));
        case!("tokio", tokio::sync::Mutex::new(0u64));
        case!("async-lock", async_lock::Mutex::new(0u64));
    }
    group.finish();
}

/// The hand-off itself: `waiters` tasks queued on one runtime, each taking the lock and
/// releasing it at once, over and over. A fair mutex queues the re-lock behind the others,
/// so every release hands the lock to the next waiter and the time measured is from an
/// unlock to the next holder running (one wake-up, one poll). The tasks are spawned and
/// queued before the clock starts; the time is per hand-off.
///
/// What each mutex gives differs, and the figures with it: conc's and tokio's are FIFO, so
/// each hand-off is a task switch; async-lock's is not (a release lets the releasing task
/// take the lock straight back, and a waiter gets it only once it has starved for 500 µs),
/// so most of its "hand-offs" are a re-lock by the same task with no task switch. The
/// `yield_now` row is the floor of any FIFO hand-off: the same tasks switching with no lock.
fn mutex_handoff(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    handoff_group(c, &rt, "mutex_handoff", "");
    handoff_group(c, &runtime(2), "mutex_handoff_2_threads", " on 2 threads");
}

fn handoff_group(c: &mut Criterion, rt: &tokio::runtime::Runtime, name: &str, threads: &str) {
    let mut group = c.benchmark_group(name);
    for waiters in [4usize, 16, 64] {
        let label = format!("{waiters} waiters{threads}");
        macro_rules! case {
            ($name:literal, $new:expr, |$mutex:ident| $first:block, $step:expr) => {
                group.bench_function(BenchmarkId::new($name, &label), |b| {
                    b.iter_custom(|iters| {
                        let rounds = iters.div_ceil(waiters as u64).max(1);
                        let mutex = Arc::new($new);
                        let elapsed = rt.block_on(async {
                            let held = mutex.lock().await;
                            let handles: Vec<_> = (0..waiters)
                                .map(|_| {
                                    let $mutex = mutex.clone();
                                    tokio::spawn(async move {
                                        $first
                                        for _ in 0..rounds {
                                            $step;
                                        }
                                    })
                                })
                                .collect();
                            // Let every task run to its first `lock()` and queue (on a
                            // multi-thread runtime the workers pick them up meanwhile).
                            tokio::task::yield_now().await;
                            let started = Instant::now();
                            drop(held);
                            for handle in handles {
                                handle.await.expect("bench task");
                            }
                            started.elapsed()
                        });
                        let handoffs = rounds * waiters as u64;
                        elapsed.mul_f64(iters as f64 / handoffs as f64)
                    })
                });
            };
        }
        case!(
            "conc",
            conc_core::Mutex::new(0u64),
            |m| {},
            *m.lock().await += 1
        );
        case!(
            "tokio",
            tokio::sync::Mutex::new(0u64),
            |m| {},
            *m.lock().await += 1
        );
        case!(
            "async-lock",
            async_lock::Mutex::new(0u64),
            |m| {},
            *m.lock().await += 1
        );
        // The floor: the tasks take turns with no lock; the held lock only holds back their
        // start until the clock runs.
        case!(
            "yield_now",
            conc_core::Mutex::new(0u64),
            |m| { drop(m.lock().await) },
            tokio::task::yield_now().await
        );
    }
    group.finish();
}

fn sequence(c: &mut Criterion) {
    let mut group = c.benchmark_group("sequence_next_is_current");
    let guard = SequenceGuard::new("bench");
    group.bench_function("conc", |b| {
        b.iter(|| {
            let token = guard.next();
            black_box(guard.is_current(black_box(&token)))
        })
    });
    let atomic = AtomicU64::new(0);
    group.bench_function("atomic", |b| {
        b.iter(|| {
            let token = atomic.fetch_add(1, Ordering::AcqRel) + 1;
            black_box(atomic.load(Ordering::Acquire) == black_box(token))
        })
    });
    group.finish();
}

/// One caller per key: the registry's bookkeeping alone (enter, run, leave), the
/// operation ready at once.
fn registry_single(c: &mut Criterion) {
    let mut group = c.benchmark_group("registry_1_caller");
    let conc = IdempotencyRegistry::<u64>::new();
    let key = IdempotencyKey::new("bench", ["conversation", "message"]).expect("key");
    group.bench_function("conc", |b| {
        b.iter(|| ready(conc.run(key.clone(), || async { 7 })))
    });
    let peer = async_singleflight::UnaryGroup::<String, u64>::new();
    let key = key.as_str().to_owned();
    group.bench_function("async_singleflight", |b| {
        b.iter(|| ready(peer.work(key.as_str(), async { 7 })))
    });
    group.finish();
}

/// 100 callers per key on one task (joined by the cheapest join, [`conc_benches::join_simple`],
/// so that the registries' own work is what is measured), the leader yielding once so that
/// the others arrive while it is in flight.
fn registry(c: &mut Criterion) {
    const CALLERS: usize = 100;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("registry_100_callers");
    let conc = IdempotencyRegistry::<u64>::new();
    let key = IdempotencyKey::new("bench", ["conversation", "message"]).expect("key");
    group.bench_function("conc", |b| {
        b.iter(|| {
            rt.block_on(conc_benches::join_simple((0..CALLERS).map(|_| {
                conc.run(key.clone(), || async {
                    tokio::task::yield_now().await;
                    7
                })
            })))
        })
    });
    let peer = async_singleflight::UnaryGroup::<String, u64>::new();
    let key = key.as_str().to_owned();
    group.bench_function("async_singleflight", |b| {
        b.iter(|| {
            rt.block_on(conc_benches::join_simple((0..CALLERS).map(|_| {
                peer.work(key.as_str(), async {
                    tokio::task::yield_now().await;
                    7
                })
            })))
        })
    });
    group.finish();
}

fn abort(c: &mut Criterion) {
    let mut group = c.benchmark_group("abort_check");
    let controller = AbortController::new();
    let signal = controller.signal();
    group.bench_function("conc", |b| b.iter(|| black_box(&signal).is_aborted()));
    let token = tokio_util::sync::CancellationToken::new();
    group.bench_function("tokio-util", |b| {
        b.iter(|| black_box(&token).is_cancelled())
    });
    group.finish();

    let mut group = c.benchmark_group("abort_child_cancel");
    group.bench_function("conc", |b| {
        b.iter(|| {
            let child = signal.child();
            child.abort(AbortReason::Timeout);
        })
    });
    group.bench_function("tokio-util", |b| {
        b.iter(|| {
            let child = token.child_token();
            child.cancel();
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    mutex_uncontended,
    mutex_contended,
    mutex_handoff,
    sequence,
    registry_single,
    registry,
    abort
);
criterion_main!(benches);
