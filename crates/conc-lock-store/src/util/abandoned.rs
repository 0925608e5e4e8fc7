//! What a lock call leaves behind when it gives up: a grant the store may have made (or
//! may still make, when a request held in the network arrives late) for a caller that no
//! longer waits. [`Abandoned`] releases it by its token in the background, so the key is
//! free within a round trip of the store answering again, not a whole TTL later.

use std::future::Future;
use std::time::Duration;

use crate::error::LockError;

/// How long a background release keeps trying to reach a store that does not answer. A
/// request held in a stalled network can still arrive and take the key while its
/// connection lives; past this, the lease it could take expires on its own.
pub(crate) const RETRY_FOR: Duration = Duration::from_secs(300);

/// The first pause between tries of a background release; it doubles up to
/// [`PAUSE_LIMIT`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const PAUSE_LIMIT: Duration = Duration::from_secs(5);

/// A grant its call may have taken but will not hand out: unless
/// [`disarm`](Self::disarm)ed (the lease is handed out, or the store said it granted
/// nothing), dropping it starts its cleanup, which releases the token in the background.
/// Dropped by an error return, a late answer or a cancelled future alike.
#[must_use]
pub(crate) struct Abandoned {
    cleanup: Option<Box<dyn FnOnce() + Send>>,
}

impl Abandoned {
    /// Runs `cleanup` (which spawns the release) when dropped armed.
    pub(crate) fn new(cleanup: impl FnOnce() + Send + 'static) -> Self {
        Self {
            cleanup: Some(Box::new(cleanup)),
        }
    }

    /// The call's outcome is known and kept: nothing to clean up.
    pub(crate) fn disarm(mut self) {
        self.cleanup = None;
    }
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        if let Some(cleanup) = self.cleanup.take() {
            cleanup();
        }
    }
}

/// Spawns `release` (one try of a token-checked release, bounded by the store's request
/// timeout) until the store answers, with a doubling pause between tries, for at most
/// [`RETRY_FOR`]. A release that found nothing is sent once more after that answer, so
/// that the call's request, held in the network on another connection than the release
/// and delivered when the link heals, is released too. Outside a tokio runtime it does nothing but log: the lease expires with
/// its TTL.
pub(crate) fn release_in_background<F, Fut>(backend: &'static str, key: String, mut release: F)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<bool, LockError>> + Send + 'static,
{
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!(
            backend,
            key,
            "a lock call gave up outside a tokio runtime; what it may have taken expires with its TTL"
        );
        return;
    };
    runtime.spawn(async move {
        let started = tokio::time::Instant::now();
        let mut pause = FIRST_PAUSE;
        let mut answered = false;
        loop {
            match release().await {
                Ok(true) => {
                    tracing::debug!(backend, key, "released a grant its call had given up on");
                    return;
                }
                // Nothing to release, in an answer to a release sent after the store had
                // answered once: the call's request, if held in the network, arrived
                // before it (a cut link delivers what it held when it heals).
                Ok(false) if answered => return,
                // Nothing yet: the call's request may be held on another connection and
                // arrive as this answer does (when a cut heals, every connection's held
                // bytes go through at once). Ask once more, a round trip later.
                Ok(false) => {
                    answered = true;
                    continue;
                }
                Err(error) if error.is_transient() && started.elapsed() < RETRY_FOR => {
                    tracing::debug!(backend, key, %error, "releasing a grant its call gave up on failed; trying again");
                }
                Err(error) => {
                    tracing::warn!(backend, key, %error, "could not release a grant its call gave up on; it expires with its TTL");
                    return;
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(PAUSE_LIMIT);
        }
    });
}
