//! [`BreakerPermit`]: permission for one call, on which its outcome is reported; and the
//! owned permit the tower layer keeps in a `'static` future.

use std::fmt;

use super::CircuitBreaker;
use super::state::Ticket;
use crate::classify::ErrorClass;

/// Permission for one call; report its outcome with [`success`](Self::success),
/// [`failure`](Self::failure) or [`record`](Self::record). Dropped without a report, it
/// counts as neither (and frees its half-open probe slot).
#[must_use = "report the call's outcome on the permit"]
pub struct BreakerPermit<'a> {
    pub(super) breaker: &'a CircuitBreaker,
    pub(super) ticket: Option<Ticket>,
}

impl BreakerPermit<'_> {
    /// The call succeeded.
    pub fn success(mut self) {
        if let Some(ticket) = self.ticket.take() {
            let change = self
                .breaker
                .inner
                .core
                .record(ticket, true, || self.breaker.now());
            self.breaker.fire(change);
        }
    }

    /// The call failed (counts against the breaker).
    pub fn failure(mut self) {
        if let Some(ticket) = self.ticket.take() {
            let change = self
                .breaker
                .inner
                .core
                .record(ticket, false, || self.breaker.now());
            self.breaker.fire(change);
        }
    }

    /// Records by class: retryable classes are failures; `Permanent` counts as a success
    /// of the dependency; `Aborted` counts as nothing.
    pub fn record(self, class: ErrorClass) {
        match class {
            ErrorClass::Aborted => drop(self),
            ErrorClass::Permanent => self.success(),
            _ => self.failure(),
        }
    }
}

#[cfg(feature = "tower")]
impl BreakerPermit<'_> {
    pub(super) fn into_ticket(mut self) -> Option<Ticket> {
        self.ticket.take()
    }
}

/// An owned permit (a breaker clone and a ticket), for the tower layer.
#[cfg(feature = "tower")]
pub(crate) struct OwnedPermit {
    pub(super) breaker: CircuitBreaker,
    pub(super) ticket: Option<Ticket>,
}

#[cfg(feature = "tower")]
impl OwnedPermit {
    /// Moves the ticket into a borrowed permit, to report the outcome as usual.
    pub(crate) fn take(&mut self) -> BreakerPermit<'_> {
        BreakerPermit {
            breaker: &self.breaker,
            ticket: self.ticket.take(),
        }
    }
}

#[cfg(feature = "tower")]
impl Drop for OwnedPermit {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.breaker.inner.core.release(ticket);
        }
    }
}

impl Drop for BreakerPermit<'_> {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.breaker.inner.core.release(ticket);
        }
    }
}

impl fmt::Debug for BreakerPermit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerPermit")
            .field("probe", &self.ticket.map(|t| t.probe))
            .finish()
    }
}
