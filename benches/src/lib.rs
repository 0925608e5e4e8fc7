//! Helpers shared by the bench files: polling a ready future, runtimes of a given size, and
//! running a contended round of tasks.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Polls `future` once with a no-op waker and returns its output; the benches only pass
/// futures that are ready at once (an uncontended lock), so anything else is a bench bug.
#[inline(always)]
pub fn ready<F: Future>(future: F) -> F::Output {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("bench bug: the future was expected to be ready"),
    }
}

/// Runs `futures` to completion on the calling task and returns their outputs in order:
/// each wake-up polls every future not yet done, with the task's own waker. The cheapest
/// join there is for a hundred futures that mostly wait on one event (futures'
/// `join_all` switches to a `FuturesOrdered`, with a waker and a queue entry per future,
/// above 30), so that a bench of what the futures do is not mostly a bench of the join.
pub async fn join_simple<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut pending: Vec<Option<std::pin::Pin<Box<F>>>> =
        futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut outputs: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    let mut left = pending.len();
    std::future::poll_fn(move |cx| {
        for (slot, output) in pending.iter_mut().zip(outputs.iter_mut()) {
            if let Some(future) = slot
                && let Poll::Ready(value) = future.as_mut().poll(cx)
            {
                *output = Some(value);
                *slot = None;
                left -= 1;
            }
        }
        if left == 0 {
            Poll::Ready(outputs.iter_mut().filter_map(Option::take).collect())
        } else {
            Poll::Pending
        }
    })
    .await
}

/// A multi-thread tokio runtime with `threads` workers.
pub fn runtime(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// The task counts of the contended cases: 2 and 4, and 16 where the machine has 16 threads.
pub fn contended_task_counts() -> Vec<usize> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut counts = vec![2, 4];
    if threads >= 16 {
        counts.push(16);
    }
    counts
}

/// Runs `iters` rounds of `make_round()` on `runtime` and returns the total time, for
/// criterion's `iter_custom`.
pub fn time_rounds<F, Fut>(
    runtime: &tokio::runtime::Runtime,
    iters: u64,
    mut make_round: F,
) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let started = Instant::now();
    for _ in 0..iters {
        runtime.block_on(make_round());
    }
    started.elapsed()
}

/// For the benches that print a table instead of running criterion (hand-off, saturation):
/// whether `name` was asked for (no filter, or a filter it contains) and whether `--quick`
/// was given. `cargo bench` passes `--bench` and maybe criterion's options with their
/// values; those are not filters.
pub fn table_bench_args(name: &str) -> (bool, bool) {
    let mut quick = false;
    let mut filter = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--bench" | "--test" | "--nocapture" | "--list" | "--exact" | "--noplot"
            | "--verbose" | "--quiet" => {}
            flag if flag.starts_with("--") => {
                if !flag.contains('=') {
                    args.next();
                }
            }
            _ => filter.push(arg),
        }
    }
    let wanted = filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    (wanted, quick)
}
