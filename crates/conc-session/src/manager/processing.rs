//! The processing lock: one session processed at a time in this process, and no switch of
//! the current session while it is ([`SessionManager::begin_processing`],
//! [`ProcessingGuard`]).

use std::fmt;

use conc_core::OwnedMutexGuard;

use super::{Flow, SessionManager};
use crate::error::SessionError;

impl SessionManager {
    /// Takes the processing lock for `expected_session`: while the guard lives,
    /// [`switch_session`](Self::switch_session) is refused.
    ///
    /// Errors instead of hangs: [`SessionError::ProcessingTimeout`] after the configured
    /// wait, [`SessionError::CircularWait`] when the task holding it asks again, and
    /// [`SessionError::SessionSwitched`] when the current session changed while waiting.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped call gives up its place in the queue.
    pub async fn begin_processing(
        &self,
        expected_session: &str,
    ) -> Result<ProcessingGuard, SessionError> {
        let me = Flow::current();
        if *self.inner.processing_task.lock() == Some(me) {
            return Err(SessionError::CircularWait);
        }
        let limit = self.inner.context.config.processing_timeout;
        let lock = self.inner.processing.clone().lock_owned();
        let mut guard = tokio::time::timeout(limit, lock)
            .await
            .map_err(|_| SessionError::ProcessingTimeout(limit))?;
        let current = self.inner.current.lock().clone().unwrap_or_default();
        if current != expected_session {
            return Err(SessionError::SessionSwitched {
                expected: expected_session.to_owned(),
                actual: current,
            });
        }
        *guard = Some(expected_session.to_owned());
        *self.inner.processing_task.lock() = Some(me);
        Ok(ProcessingGuard {
            manager: self.clone(),
            guard: Some(guard),
        })
    }

    /// Whether a session is being processed now.
    pub fn is_processing(&self) -> bool {
        self.inner.processing.is_locked()
    }
}

/// The processing lock, held; dropping it ends processing.
#[must_use = "if unused the processing lock is released at once"]
pub struct ProcessingGuard {
    manager: SessionManager,
    guard: Option<OwnedMutexGuard<Option<String>>>,
}

impl ProcessingGuard {
    /// The session being processed.
    pub fn session(&self) -> &str {
        self.guard
            .as_ref()
            .and_then(|g| g.as_deref())
            .unwrap_or_default()
    }
}

impl Drop for ProcessingGuard {
    fn drop(&mut self) {
        *self.manager.inner.processing_task.lock() = None;
        if let Some(mut guard) = self.guard.take() {
            *guard = None;
        }
    }
}

impl fmt::Debug for ProcessingGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessingGuard")
            .field("session", &self.session())
            .finish()
    }
}
