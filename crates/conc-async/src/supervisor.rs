//! [`Supervisor`]: background tasks that are tracked, cancellable and never fail silently.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use conc_core::{AbortController, AbortReason, AbortSignal, is_abort_error};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, error};

use crate::util::catch_unwind;

/// Why a task could not be spawned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// `try_spawn` found `max_tasks` tasks running.
    #[error(
        "supervisor `{supervisor}` already runs its maximum of {max} tasks; use `spawn` to wait for a slot"
    )]
    Full {
        /// The supervisor's name.
        supervisor: String,
        /// Its task limit.
        max: usize,
    },
    /// The supervisor is shutting down and takes no new tasks.
    #[error("supervisor `{supervisor}` is shutting down and takes no new tasks")]
    ShuttingDown {
        /// The supervisor's name.
        supervisor: String,
    },
}

/// How the supervisor's tasks ended, counted over its whole life; returned by
/// [`Supervisor::shutdown`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Returned `Ok`.
    pub finished: u64,
    /// Stopped by an abort: an `Err` that [`is_abort_error`], or dropped when the grace
    /// period ran out.
    pub aborted: u64,
    /// Returned another `Err` (logged at error level).
    pub failed: u64,
    /// Panicked (caught and logged at error level).
    pub panicked: u64,
}

/// The state every task touches, first in [`Inner`] so that it shares a cache line with
/// the `Arc`'s reference count (each task holds a reference): a task's start and end then
/// move one cache line between the spawning thread and the worker, not several.
#[derive(Default)]
struct Counters {
    /// Tasks spawned and not yet ended (their futures not yet dropped).
    running: AtomicUsize,
    finished: AtomicU64,
    aborted: AtomicU64,
    failed: AtomicU64,
    panicked: AtomicU64,
}

impl Counters {
    fn report(&self) -> ShutdownReport {
        ShutdownReport {
            finished: self.finished.load(Ordering::Acquire),
            aborted: self.aborted.load(Ordering::Acquire),
            failed: self.failed.load(Ordering::Acquire),
            panicked: self.panicked.load(Ordering::Acquire),
        }
    }
}

#[repr(C)]
struct Inner {
    counters: Counters,
    /// Set by `shutdown`: no new tasks; the last task to end wakes `all_ended`.
    closed: AtomicBool,
    all_ended: Notify,
    name: Cow<'static, str>,
    /// Cooperative cancellation: every task gets a clone of this controller's signal.
    controller: AbortController,
    /// Forced stop after the grace period: drops the tasks' futures.
    kill: CancellationToken,
    slots: Option<(Arc<Semaphore>, usize)>,
    /// The tasks' join handles, kept rather than dropped at spawn: dropping a handle while
    /// a worker is starting the task makes both threads fight over the task's header
    /// (measured: about 1 µs a task on a 16-core machine, three times tokio's own spawn).
    /// Handles of ended tasks are dropped in batches, when the list has doubled since the
    /// last sweep, so it holds at most about twice the running tasks (plus 64).
    handles: parking_lot::Mutex<Handles>,
}

#[derive(Default)]
struct Handles {
    list: Vec<tokio::task::JoinHandle<()>>,
    /// The length at which the next sweep runs.
    sweep_at: usize,
}

impl Handles {
    const MIN_SWEEP: usize = 64;

    fn push(&mut self, handle: tokio::task::JoinHandle<()>) {
        if self.list.len() >= self.sweep_at.max(Self::MIN_SWEEP) {
            self.list.retain(|handle| !handle.is_finished());
            self.sweep_at = self.list.len() * 2;
        }
        self.list.push(handle);
    }
}

impl Inner {
    fn new(
        name: Cow<'static, str>,
        controller: AbortController,
        slots: Option<(Arc<Semaphore>, usize)>,
    ) -> Self {
        Self {
            counters: Counters::default(),
            closed: AtomicBool::new(false),
            all_ended: Notify::new(),
            name,
            controller,
            kill: CancellationToken::new(),
            slots,
            handles: parking_lot::Mutex::default(),
        }
    }

    /// Waits until every task has ended (its future dropped), once `closed` is set.
    async fn wait_all_ended(&self) {
        loop {
            let ended = self.all_ended.notified();
            let mut ended = std::pin::pin!(ended);
            ended.as_mut().enable();
            // SeqCst here and in `TaskToken::drop`: either this load sees the last task's
            // decrement, or that task sees `closed` (set before) and wakes `ended`.
            if self.counters.running.load(Ordering::SeqCst) == 0 {
                return;
            }
            ended.await;
        }
    }
}

/// A spawned task's share of the supervisor: counted in `running` from spawn until the
/// task's future is dropped (finished, or dropped by the runtime or after the grace period).
struct TaskToken(Arc<Inner>);

impl TaskToken {
    fn new(inner: &Arc<Inner>) -> Self {
        inner.counters.running.fetch_add(1, Ordering::SeqCst);
        Self(inner.clone())
    }
}

impl Drop for TaskToken {
    fn drop(&mut self) {
        let inner = &self.0;
        if inner.counters.running.fetch_sub(1, Ordering::SeqCst) == 1
            && inner.closed.load(Ordering::SeqCst)
        {
            inner.all_ended.notify_waiters();
        }
    }
}

/// Spawns named background tasks, logs how each one ends, and shuts them all down.
///
/// - Start and finish are logged at debug level; an error at error level with the task's
///   name; a panic is caught, counted and logged, never lost.
/// - Each task gets the supervisor's [`AbortSignal`] (a clone: no allocation per task),
///   aborted with [`AbortReason::Shutdown`] by [`shutdown`](Self::shutdown).
/// - [`with_max_tasks`](Self::with_max_tasks) bounds how many run at once: `spawn` waits for
///   a slot (backpressure), `try_spawn` fails.
///
/// Cheap to clone; clones share the tasks.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use conc_async::Supervisor;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let supervisor = Supervisor::new("background").with_max_tasks(8);
/// supervisor
///     .spawn("refresh-cache", |signal| async move {
///         signal.run_until_aborted(tokio::time::sleep(Duration::from_secs(3600))).await?;
///         Ok::<_, conc_core::Aborted>(())
///     })
///     .await
///     .unwrap();
/// let report = supervisor.shutdown(Duration::from_secs(5)).await;
/// assert_eq!(report.aborted, 1);
/// # }
/// ```
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

impl Supervisor {
    /// A supervisor named `name` (the name appears in its log lines and errors).
    pub fn new(name: impl Into<Cow<'static, str>>) -> Self {
        Self::build(name.into(), None, None)
    }

    /// A supervisor whose tasks are also aborted when `parent` is.
    pub fn with_parent(name: impl Into<Cow<'static, str>>, parent: &AbortSignal) -> Self {
        Self::build(name.into(), None, Some(parent))
    }

    fn build(name: Cow<'static, str>, slots: Option<usize>, parent: Option<&AbortSignal>) -> Self {
        Self {
            inner: Arc::new(Inner::new(
                name,
                parent.map_or_else(AbortController::new, AbortSignal::child),
                slots.map(|n| (Arc::new(Semaphore::new(n)), n)),
            )),
        }
    }

    /// Allows at most `max` tasks at once (a `max` of 0 is taken as 1). Call it before
    /// spawning: it starts a fresh supervisor with the same name and parent signal.
    pub fn with_max_tasks(self, max: usize) -> Self {
        let max = max.max(1);
        let inner = &self.inner;
        Self {
            inner: Arc::new(Inner::new(
                inner.name.clone(),
                inner.controller.signal().child(),
                Some((Arc::new(Semaphore::new(max)), max)),
            )),
        }
    }

    /// The supervisor's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// How many tasks are running now.
    pub fn running(&self) -> usize {
        self.inner.counters.running.load(Ordering::Acquire)
    }

    /// The counts so far.
    pub fn report(&self) -> ShutdownReport {
        self.inner.counters.report()
    }

    /// The supervisor's signal (the parent of every task's signal).
    pub fn signal(&self) -> AbortSignal {
        self.inner.controller.signal()
    }

    /// Spawns `task(signal)` on the current tokio runtime, waiting for a slot if
    /// `max_tasks` are running.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future while it waits for a slot spawns nothing.
    pub async fn spawn<F, Fut, T, E>(
        &self,
        name: impl Into<Cow<'static, str>>,
        task: F,
    ) -> Result<(), SpawnError>
    where
        F: FnOnce(AbortSignal) -> Fut,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: Into<Box<dyn StdError + Send + Sync>> + Send + 'static,
    {
        self.check_open()?;
        let permit = match &self.inner.slots {
            Some((slots, _)) => Some(
                slots
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| self.shutting_down())?,
            ),
            None => None,
        };
        self.check_open()?;
        self.start(name.into(), task, permit);
        Ok(())
    }

    /// Spawns `task(signal)` if a slot is free now; fails with [`SpawnError::Full`] if not.
    pub fn try_spawn<F, Fut, T, E>(
        &self,
        name: impl Into<Cow<'static, str>>,
        task: F,
    ) -> Result<(), SpawnError>
    where
        F: FnOnce(AbortSignal) -> Fut,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: Into<Box<dyn StdError + Send + Sync>> + Send + 'static,
    {
        self.check_open()?;
        let permit = match &self.inner.slots {
            Some((slots, max)) => {
                Some(
                    slots
                        .clone()
                        .try_acquire_owned()
                        .map_err(|_| SpawnError::Full {
                            supervisor: self.inner.name.to_string(),
                            max: *max,
                        })?,
                )
            }
            None => None,
        };
        self.start(name.into(), task, permit);
        Ok(())
    }

    fn check_open(&self) -> Result<(), SpawnError> {
        if self.inner.closed.load(Ordering::Acquire) || self.inner.controller.is_aborted() {
            Err(self.shutting_down())
        } else {
            Ok(())
        }
    }

    fn shutting_down(&self) -> SpawnError {
        SpawnError::ShuttingDown {
            supervisor: self.inner.name.to_string(),
        }
    }

    fn start<F, Fut, T, E>(
        &self,
        name: Cow<'static, str>,
        task: F,
        permit: Option<OwnedSemaphorePermit>,
    ) where
        F: FnOnce(AbortSignal) -> Fut,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: Into<Box<dyn StdError + Send + Sync>> + Send + 'static,
    {
        let signal = self.inner.controller.signal();
        let future = task(signal);
        let token = TaskToken::new(&self.inner);
        let span = tracing::debug_span!("task", supervisor = %self.inner.name, task = %name);
        let task = async move {
            let _permit = permit;
            debug!("task started");
            let inner = &token.0;
            let counters = &inner.counters;
            // The task first: one that ends at its first poll never registers with
            // `kill` (a registration is a lock on the token, shared by every task). A
            // task still running after the grace period is dropped at its next poll.
            tokio::select! {
                biased;
                outcome = catch_unwind(future) => match outcome {
                    Ok(Ok(_)) => {
                        counters.finished.fetch_add(1, Ordering::AcqRel);
                        count_outcome("finished");
                        debug!("task finished");
                    }
                    Ok(Err(e)) => {
                        let e: Box<dyn StdError + Send + Sync> = e.into();
                        if is_abort_error(&*e) {
                            counters.aborted.fetch_add(1, Ordering::AcqRel);
                            count_outcome("aborted");
                            debug!(reason = %e, "task aborted");
                        } else {
                            counters.failed.fetch_add(1, Ordering::AcqRel);
                            count_outcome("failed");
                            error!(error = %e, "task failed");
                        }
                    }
                    Err(panic) => {
                        counters.panicked.fetch_add(1, Ordering::AcqRel);
                        count_outcome("panicked");
                        error!(panic = %crate::util::panic_message(&*panic), "task panicked");
                    }
                },
                () = inner.kill.cancelled() => {
                    counters.aborted.fetch_add(1, Ordering::AcqRel);
                    count_outcome("aborted");
                    debug!("task dropped after the shutdown grace period");
                }
            }
        };
        // A span nobody records costs a check on every poll: leave it out then.
        let handle = if span.is_disabled() {
            tokio::spawn(task)
        } else {
            tokio::spawn(task.instrument(span))
        };
        self.inner.handles.lock().push(handle);
    }

    /// Stops taking tasks, aborts every task's signal with [`AbortReason::Shutdown`], waits up
    /// to `grace` for them to end, then drops the rest (counted as aborted), and returns the
    /// counts.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future after it started leaves the supervisor closed and its tasks'
    /// signals aborted; the tasks that had not ended keep running until they notice.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        self.inner.closed.store(true, Ordering::SeqCst);
        if let Some((slots, _)) = &self.inner.slots {
            slots.close();
        }
        self.inner.controller.abort(AbortReason::Shutdown);
        if tokio::time::timeout(grace, self.inner.wait_all_ended())
            .await
            .is_err()
        {
            debug!(supervisor = %self.inner.name, running = self.running(), "grace period over; dropping the remaining tasks");
            self.inner.kill.cancel();
            self.inner.wait_all_ended().await;
        }
        // Every task has ended: its handle only holds the task's memory now.
        let ended = std::mem::take(&mut self.inner.handles.lock().list);
        drop(ended);
        self.inner.counters.report()
    }
}

impl fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Supervisor")
            .field("name", &self.inner.name)
            .field("running", &self.running())
            .field("max_tasks", &self.inner.slots.as_ref().map(|(_, n)| *n))
            .field("report", &self.report())
            .finish()
    }
}

/// Counts a supervised task's end, by `outcome` (`finished`, `failed`, `aborted`,
/// `panicked`), as `conc_tasks_total` with the `metrics` feature.
#[inline]
fn count_outcome(outcome: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("conc_tasks_total", "outcome" => outcome).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = outcome;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kept join handles of ended tasks are swept: the list stays within about twice
    /// the running tasks plus the minimum sweep, however many tasks have run.
    #[tokio::test(flavor = "current_thread")]
    async fn ended_tasks_handles_are_swept() {
        let supervisor = Supervisor::new("sweep");
        let blocker = Arc::new(tokio::sync::Notify::new());
        for n in 0..10 {
            let blocker = blocker.clone();
            supervisor
                .spawn(format!("long-{n}"), move |_| async move {
                    blocker.notified().await;
                    Ok::<_, conc_core::Aborted>(())
                })
                .await
                .unwrap();
        }
        for n in 0..2_000 {
            supervisor
                .spawn(format!("short-{n}"), |_| async {
                    Ok::<_, conc_core::Aborted>(())
                })
                .await
                .unwrap();
            tokio::task::yield_now().await;
            let kept = supervisor.inner.handles.lock().list.len();
            assert!(
                kept <= 2 * supervisor.running() + Handles::MIN_SWEEP + 1,
                "{kept} handles kept with {} running",
                supervisor.running()
            );
        }
        assert_eq!(supervisor.running(), 10);
        blocker.notify_waiters();
        let report = supervisor.shutdown(Duration::from_secs(5)).await;
        assert_eq!(report.finished, 2_010);
        assert!(supervisor.inner.handles.lock().list.is_empty());
    }
}
