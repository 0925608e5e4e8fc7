//! Fan-out / fan-in with bounded concurrency.

use std::future::Future;

use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;

/// The concurrency limit was zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a concurrency limit must be at least 1")]
pub struct LimitError;

/// A [`try_map_concurrent`] that did not finish.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TryMapError<E> {
    /// The concurrency limit was zero.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// The item at `index` failed first; the rest were dropped (aborted).
    #[error("item {index} failed")]
    Failed {
        /// The failing item's position in the input.
        index: usize,
        /// Its error.
        #[source]
        error: E,
    },
}

/// Runs `f` on every item, at most `limit` at a time, and returns the outputs in input
/// order.
///
/// The futures run concurrently inside the calling task (no spawning, no `'static`
/// bound); a new one starts as soon as one finishes.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let doubled = conc_async::map_concurrent(1..=5, 2, |n| async move { n * 2 }).await.unwrap();
/// assert_eq!(doubled, vec![2, 4, 6, 8, 10]);
/// # }
/// ```
///
/// # Cancel safety
///
/// Dropping the future drops every running item future; finished outputs are lost.
pub async fn map_concurrent<I, F, Fut>(
    items: I,
    limit: usize,
    mut f: F,
) -> Result<Vec<Fut::Output>, LimitError>
where
    I: IntoIterator,
    F: FnMut(I::Item) -> Fut,
    Fut: Future,
{
    let outcome = try_map_concurrent(items, limit, |item| {
        let future = f(item);
        async move { Ok::<_, std::convert::Infallible>(future.await) }
    })
    .await;
    match outcome {
        Ok(values) => Ok(values),
        Err(TryMapError::Limit(e)) => Err(e),
        Err(TryMapError::Failed { error, .. }) => match error {},
    }
}

/// Like [`map_concurrent`] for fallible work: stops at the first error (the first to
/// happen, not the first in input order) and drops the futures still running, which
/// aborts them.
///
/// ```
/// use conc_async::TryMapError;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let outcome = conc_async::try_map_concurrent([1, 2, 3], 3, |n| async move {
///     if n == 2 { Err("two is bad") } else { Ok(n) }
/// })
/// .await;
/// assert_eq!(outcome, Err(TryMapError::Failed { index: 1, error: "two is bad" }));
/// # }
/// ```
///
/// # Cancel safety
///
/// As [`map_concurrent`].
pub async fn try_map_concurrent<I, F, Fut, T, E>(
    items: I,
    limit: usize,
    mut f: F,
) -> Result<Vec<T>, TryMapError<E>>
where
    I: IntoIterator,
    F: FnMut(I::Item) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    if limit == 0 {
        return Err(LimitError.into());
    }
    let mut items = items.into_iter().enumerate();
    let mut slots: Vec<Option<T>> = Vec::with_capacity(items.size_hint().0);
    let mut running = FuturesUnordered::new();
    let mut exhausted = false;
    loop {
        while !exhausted && running.len() < limit {
            match items.next() {
                Some((index, item)) => {
                    let future = f(item);
                    slots.push(None);
                    running.push(async move { (index, future.await) });
                }
                None => exhausted = true,
            }
        }
        match running.next().await {
            Some((index, Ok(value))) => slots[index] = Some(value),
            Some((index, Err(error))) => return Err(TryMapError::Failed { index, error }),
            None => break,
        }
    }
    Ok(slots.into_iter().flatten().collect())
}
