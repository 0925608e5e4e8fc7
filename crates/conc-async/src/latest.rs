//! [`Latest`]: the latest run wins, as one type: newer runs supersede and abort older ones.
//!
//! Each [`run`](Latest::run) takes a sequence token, aborts the run it supersedes,
//! coalesces with an identical run already in flight, and commits its value only if it is
//! still the newest, in one step with the check.

use std::fmt;
use std::future::Future;

use conc_core::{AbortManager, AbortReason, AbortSignal, IdempotencyKey, KeyError, SequenceGuard};

/// How a [`Latest::run`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LatestOutcome<T> {
    /// The run was the newest when it finished: its value is now [`Latest::value`].
    Committed(T),
    /// A newer run started (or [`Latest::cancel`] was called) while this one ran; its value
    /// was dropped.
    Stale,
    /// The run was aborted (superseded, or cancelled) before it finished.
    Aborted(AbortReason),
    /// An identical run (same key parts) was already in flight; it will commit.
    Coalesced,
}

/// Runs where only the newest one's result is kept, and the superseded ones are aborted.
///
/// ```
/// use conc_async::{Latest, LatestOutcome};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let search = Latest::<String>::new("search").unwrap();
/// let slow = search.run(["ru"], |signal| async move {
///     signal.run_until_aborted(tokio::time::sleep(std::time::Duration::from_secs(1))).await.ok();
///     "results for ru".to_owned()
/// });
/// let fast = search.run(["rust"], |_| async { "results for rust".to_owned() });
/// let (slow, fast) = tokio::join!(slow, fast);
/// assert!(matches!(slow, LatestOutcome::Aborted(_)));
/// assert_eq!(fast, LatestOutcome::Committed("results for rust".to_owned()));
/// assert_eq!(search.value().as_deref(), Some("results for rust"));
/// # }
/// ```
pub struct Latest<T> {
    base: IdempotencyKey,
    guard: SequenceGuard,
    aborts: AbortManager,
    /// The key, sequence and signal of the run in flight.
    in_flight: parking_lot::Mutex<Option<InFlight>>,
    value: parking_lot::Mutex<Option<T>>,
}

/// The run in flight: its key, its sequence and its signal.
type InFlight = (IdempotencyKey, u64, AbortSignal);

impl<T: Clone> Latest<T> {
    /// A latest-wins runner for `scope`; an empty scope is an error.
    pub fn new(scope: &str) -> Result<Self, KeyError> {
        Ok(Self {
            base: IdempotencyKey::new(scope, None::<&str>)?,
            guard: SequenceGuard::new(scope.to_owned()),
            aborts: AbortManager::new(),
            in_flight: parking_lot::Mutex::new(None),
            value: parking_lot::Mutex::new(None),
        })
    }

    /// Starts `work(signal)` as the newest run, keyed by `key_parts`.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops `work`'s future; nothing is committed, and the run stops
    /// counting as in flight.
    pub async fn run<I, F, Fut>(&self, key_parts: I, work: F) -> LatestOutcome<T>
    where
        I: IntoIterator,
        I::Item: fmt::Display,
        F: FnOnce(AbortSignal) -> Fut,
        Fut: Future<Output = T>,
    {
        let key = self.base.join(key_parts);
        let (token, lease) = {
            let mut in_flight = self.in_flight.lock();
            // Coalesce only onto a live run: a cancelled or aborted one will never commit.
            if in_flight
                .as_ref()
                .is_some_and(|(k, _, signal)| *k == key && !signal.is_aborted())
            {
                return LatestOutcome::Coalesced;
            }
            let token = self.guard.next();
            let lease = self.aborts.begin();
            *in_flight = Some((key, token.sequence(), lease.signal().clone()));
            (token, lease)
        };
        struct Clear<'a>(&'a parking_lot::Mutex<Option<InFlight>>, u64);
        impl Drop for Clear<'_> {
            fn drop(&mut self) {
                let mut in_flight = self.0.lock();
                if in_flight.as_ref().is_some_and(|(_, seq, _)| *seq == self.1) {
                    *in_flight = None;
                }
            }
        }
        let _clear = Clear(&self.in_flight, token.sequence());
        let signal = lease.signal().clone();
        match signal.run_until_aborted(work(signal.clone())).await {
            Err(aborted) => LatestOutcome::Aborted(aborted.into_reason()),
            Ok(value) => {
                let committed = self.guard.commit_if_current(&token, || {
                    *self.value.lock() = Some(value.clone());
                });
                match committed {
                    Some(()) => LatestOutcome::Committed(value),
                    None => LatestOutcome::Stale,
                }
            }
        }
    }

    /// The last committed value.
    pub fn value(&self) -> Option<T> {
        self.value.lock().clone()
    }

    /// Aborts the run in flight with `reason` and makes it stale (for cleanup, or a stop
    /// button). A later [`run`](Self::run), even with the same key, starts afresh and can
    /// commit.
    pub fn cancel(&self, reason: AbortReason) {
        let mut in_flight = self.in_flight.lock();
        self.guard.invalidate();
        self.aborts.abort_active(reason);
        *in_flight = None;
    }
}

impl<T> fmt::Debug for Latest<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Latest")
            .field("scope", &self.base.scope())
            .field("sequence", &self.guard.current())
            .finish()
    }
}
