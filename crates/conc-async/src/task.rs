//! [`Task`]: cancellable, composable units of work.
//!
//! A `Task` is a recipe: nothing runs until it is [`run`](Task::run) with a signal or
//! [`spawn`](Task::spawn)ed. Combinators build bigger recipes; every task in them gets a
//! child of the signal it runs under, so cancelling the whole cancels every part.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use conc_core::{AbortController, AbortReason, AbortSignal};
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use tokio::task::JoinHandle;
use tracing::{debug, error};

use crate::timeout::TimeoutError;
use crate::util::{catch_unwind, panic_message};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type Recipe<T, E> = Box<dyn FnOnce(AbortSignal) -> BoxFuture<Result<T, E>> + Send>;

/// A unit of work that yields `Ok(T)` or `Err(E)` and watches an [`AbortSignal`].
///
/// ```
/// use conc_async::{Task, TaskError};
/// use conc_core::AbortReason;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let users = Task::<Vec<&str>, String>::new(|_signal| async { Ok(vec!["ada", "linus"]) });
/// let posts = Task::new(|_signal| async { Ok(3usize) });
/// let both = users.and_then(|users| posts.map(move |posts| (users.len(), posts)));
/// assert_eq!(both.spawn().await, Ok((2, 3)));
///
/// let slow = Task::<(), String>::new(|signal| async move {
///     signal.aborted().await;
///     Ok(())
/// })
/// .spawn();
/// slow.cancel(AbortReason::user("user left"));
/// assert_eq!(slow.await, Err(TaskError::Cancelled(AbortReason::user("user left"))));
/// # }
/// ```
pub struct Task<T, E> {
    recipe: Recipe<T, E>,
}

/// An empty list was given to [`Task::race`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Task::race needs at least one task (an empty race would never settle)")]
pub struct EmptyRace;

impl<T, E> Task<T, E>
where
    T: Send + 'static,
    E: Send + 'static,
{
    /// A task from an async closure that receives its signal.
    pub fn new<F, Fut>(f: F) -> Self
    where
        F: FnOnce(AbortSignal) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        Self {
            recipe: Box::new(move |signal| Box::pin(f(signal))),
        }
    }

    /// A task that succeeds with `value`.
    pub fn ok(value: T) -> Self {
        Self::new(move |_| async move { Ok(value) })
    }

    /// A task that fails with `error`.
    pub fn err(error: E) -> Self {
        Self::new(move |_| async move { Err(error) })
    }

    /// Maps the success value.
    pub fn map<U: Send + 'static>(self, f: impl FnOnce(T) -> U + Send + 'static) -> Task<U, E> {
        Task::new(move |signal| async move { (self.recipe)(signal).await.map(f) })
    }

    /// Maps the error.
    pub fn map_err<E2: Send + 'static>(
        self,
        f: impl FnOnce(E) -> E2 + Send + 'static,
    ) -> Task<T, E2> {
        Task::new(move |signal| async move { (self.recipe)(signal).await.map_err(f) })
    }

    /// Runs `f(value)`'s task after this one succeeds (`flatMap`), under the same signal.
    pub fn and_then<U: Send + 'static>(
        self,
        f: impl FnOnce(T) -> Task<U, E> + Send + 'static,
    ) -> Task<U, E> {
        Task::new(move |signal: AbortSignal| async move {
            let value = (self.recipe)(signal.clone()).await?;
            (f(value).recipe)(signal).await
        })
    }

    /// Fails with a [`TimeoutError`] (converted into `E`) after `limit`, aborting this
    /// task's signal with [`AbortReason::Timeout`].
    pub fn timeout(
        self,
        operation: impl Into<std::borrow::Cow<'static, str>>,
        limit: Duration,
    ) -> Task<T, E>
    where
        E: From<TimeoutError>,
    {
        let operation = operation.into();
        Task::new(move |signal: AbortSignal| async move {
            let child = signal.child();
            crate::timeout::timeout_abort(operation, limit, &child, (self.recipe)(child.signal()))
                .await
                .map_err(E::from)?
        })
    }

    /// All tasks at once; the values in input order. Fails fast: the first error aborts
    /// the siblings' signals and drops them.
    pub fn all(tasks: impl IntoIterator<Item = Task<T, E>>) -> Task<Vec<T>, E> {
        let tasks: Vec<_> = tasks.into_iter().collect();
        Task::new(move |signal: AbortSignal| async move {
            let group = signal.child();
            let mut slots: Vec<Option<T>> = tasks.iter().map(|_| None).collect();
            let mut running: FuturesUnordered<_> = tasks
                .into_iter()
                .enumerate()
                .map(|(i, task)| {
                    let run = (task.recipe)(group.signal().child().signal());
                    async move { (i, run.await) }
                })
                .collect();
            while let Some((i, outcome)) = running.next().await {
                match outcome {
                    Ok(value) => slots[i] = Some(value),
                    Err(error) => {
                        group.abort(AbortReason::user("a sibling task failed"));
                        return Err(error);
                    }
                }
            }
            Ok(slots.into_iter().flatten().collect())
        })
    }

    /// All tasks at once; every outcome, in input order.
    pub fn all_settled(tasks: impl IntoIterator<Item = Task<T, E>>) -> Task<Vec<Result<T, E>>, E> {
        let tasks: Vec<_> = tasks.into_iter().collect();
        Task::new(move |signal: AbortSignal| async move {
            let runs = tasks
                .into_iter()
                .map(|task| (task.recipe)(signal.child().signal()));
            Ok(futures_util::future::join_all(runs).await)
        })
    }

    /// The first task to settle (success or error) wins; the others' signals are aborted
    /// with [`AbortReason::Superseded`] and they are dropped.
    pub fn race(tasks: impl IntoIterator<Item = Task<T, E>>) -> Result<Task<T, E>, EmptyRace> {
        let tasks: Vec<_> = tasks.into_iter().collect();
        if tasks.is_empty() {
            return Err(EmptyRace);
        }
        Ok(Task::new(move |signal: AbortSignal| async move {
            let group = signal.child();
            let mut running: FuturesUnordered<_> = tasks
                .into_iter()
                .map(|task| (task.recipe)(group.signal().child().signal()))
                .collect();
            let first = running.next().await;
            group.abort(AbortReason::Superseded);
            match first {
                Some(outcome) => outcome,
                // Not reached: `race` checked that there is at least one task.
                None => std::future::pending().await,
            }
        }))
    }

    /// Runs the task inline under `signal`.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops the task's future.
    pub async fn run(self, signal: AbortSignal) -> Result<T, E> {
        (self.recipe)(signal).await
    }

    /// Spawns the task on the current tokio runtime and returns a handle to cancel or
    /// await it. A failure or panic is also logged at error level, so it is never lost
    /// when the handle is dropped.
    pub fn spawn(self) -> TaskHandle<T, E>
    where
        E: fmt::Display,
    {
        let controller = AbortController::new();
        let signal = controller.signal();
        let join = tokio::spawn(async move {
            let run = signal.run_until_aborted((self.recipe)(signal.clone()));
            let outcome = match catch_unwind(run).await {
                Ok(outcome) => outcome,
                Err(panic) => {
                    error!(panic = %panic_message(&*panic), "spawned task panicked");
                    std::panic::resume_unwind(panic)
                }
            };
            match &outcome {
                Ok(Err(e)) => error!(error = %e, "spawned task failed"),
                Err(aborted) => debug!(reason = %aborted.reason(), "spawned task cancelled"),
                Ok(Ok(_)) => {}
            }
            outcome
        });
        TaskHandle { controller, join }
    }
}

impl<T, E> fmt::Debug for Task<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Task { .. }")
    }
}

/// How a spawned task did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError<E> {
    /// It was cancelled, for this reason.
    #[error("task cancelled: {0}")]
    Cancelled(AbortReason),
    /// It returned an error.
    #[error("task failed")]
    Failed(#[source] E),
    /// It panicked, with this message.
    #[error("task panicked: {0}")]
    Panicked(String),
}

/// A spawned [`Task`]: cancel it, or await its outcome.
///
/// Dropping the handle detaches the task (it keeps running, and a failure is still logged).
#[must_use = "a dropped handle detaches the task"]
pub struct TaskHandle<T, E> {
    controller: AbortController,
    join: JoinHandle<Result<Result<T, E>, conc_core::Aborted>>,
}

impl<T, E> TaskHandle<T, E> {
    /// Cancels the task with `reason`. Returns `false` if it was already cancelled.
    pub fn cancel(&self, reason: AbortReason) -> bool {
        self.controller.abort(reason)
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.controller.is_aborted()
    }

    /// The task's signal.
    pub fn signal(&self) -> AbortSignal {
        self.controller.signal()
    }

    /// Whether the task has ended.
    pub fn is_finished(&self) -> bool {
        self.join.is_finished()
    }
}

impl<T, E> Future for TaskHandle<T, E> {
    type Output = Result<T, TaskError<E>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.join)
            .poll(cx)
            .map(|joined| match joined {
                Ok(Ok(Ok(value))) => Ok(value),
                Ok(Ok(Err(error))) => Err(TaskError::Failed(error)),
                Ok(Err(aborted)) => Err(TaskError::Cancelled(aborted.into_reason())),
                Err(join) if join.is_panic() => Err(TaskError::Panicked(
                    panic_message(&*join.into_panic()).to_owned(),
                )),
                Err(_) => Err(TaskError::Cancelled(AbortReason::Shutdown)),
            })
    }
}

impl<T, E> fmt::Debug for TaskHandle<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskHandle")
            .field("cancelled", &self.is_cancelled())
            .field("finished", &self.is_finished())
            .finish()
    }
}
