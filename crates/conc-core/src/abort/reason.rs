//! Why work was aborted ([`AbortReason`]), the error that carries it ([`Aborted`]), and
//! [`is_abort_error`], which finds that error anywhere in a source chain.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

/// Why a signal was aborted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AbortReason {
    /// Newer work in the same scope replaced this work.
    Superseded,
    /// The work ran past its time limit.
    Timeout,
    /// The service is shutting down.
    Shutdown,
    /// The parent signal was aborted, for the reason inside.
    Parent(Box<AbortReason>),
    /// A reason given by the user, such as "stop generating".
    User(Arc<str>),
}

impl AbortReason {
    /// A user-supplied reason.
    pub fn user(message: impl Into<Arc<str>>) -> Self {
        AbortReason::User(message.into())
    }

    /// The first reason in the chain that is not [`Parent`](AbortReason::Parent).
    pub fn root(&self) -> &AbortReason {
        let mut reason = self;
        while let AbortReason::Parent(inner) = reason {
            reason = inner;
        }
        reason
    }
}

impl fmt::Display for AbortReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AbortReason::Superseded => f.write_str("superseded by newer work"),
            AbortReason::Timeout => f.write_str("timed out"),
            AbortReason::Shutdown => f.write_str("shutting down"),
            AbortReason::Parent(reason) => write!(f, "parent aborted: {reason}"),
            AbortReason::User(message) => f.write_str(message),
        }
    }
}

/// The error of work that was aborted. An outcome, not a failure: do not log it as an
/// error, do not retry it (see [`is_abort_error`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("operation aborted: {reason}")]
pub struct Aborted {
    reason: AbortReason,
}

impl Aborted {
    /// An `Aborted` error for `reason`.
    pub fn new(reason: AbortReason) -> Self {
        Self { reason }
    }

    /// Why the work was aborted.
    pub fn reason(&self) -> &AbortReason {
        &self.reason
    }

    /// The reason, by value.
    pub fn into_reason(self) -> AbortReason {
        self.reason
    }
}

/// Whether `error`, or any error in its [`source`](Error::source) chain, is [`Aborted`]
/// (including an [`Aborted`] carried inside a `std::io::Error`).
///
/// ```
/// use conc_core::{AbortReason, Aborted, is_abort_error};
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("fetch failed")]
/// struct FetchError(#[source] Aborted);
///
/// let error = FetchError(Aborted::new(AbortReason::Superseded));
/// assert!(is_abort_error(&error));
/// assert!(!is_abort_error(&std::io::Error::other("disk full")));
/// ```
pub fn is_abort_error(error: &(dyn Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if error.is::<Aborted>() {
            return true;
        }
        // `io::Error` forwards `source()` to its payload's source, skipping the payload
        // itself; look inside it too.
        if let Some(inner) = error
            .downcast_ref::<std::io::Error>()
            .and_then(|e| e.get_ref())
            && is_abort_error(inner)
        {
            return true;
        }
        current = error.source();
    }
    false
}
