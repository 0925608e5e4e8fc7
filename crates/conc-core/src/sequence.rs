//! [`SequenceGuard`]: drop stale completions, commit only the newest.
//!
//! Every request takes a [`SequenceToken`] from [`SequenceGuard::next`] before it starts.
//! When its result arrives, it commits through [`SequenceGuard::commit_if_current`], which runs
//! the commit only if no newer request has started since, and holds newer requests back
//! while the commit runs, so the check and the commit are one atomic step.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc as StdArc;
use std::sync::atomic::{AtomicU64 as StdAtomicU64, Ordering as StdOrdering};

use crate::loom::{AtomicU64, Ordering, spin_wait};

/// Low bit of the state word: a commit is running.
const COMMITTING: u64 = 1;
/// The sequence lives above the commit bit.
const STEP: u64 = 2;

/// Gives every guard an identity, so a token never matches another guard.
static NEXT_GUARD_ID: StdAtomicU64 = StdAtomicU64::new(1);

/// The name of a guard's scope, such as `"chat-stream"`.
///
/// A `&'static str` is stored as is and copied for free into every token; an owned `String`
/// is shared behind an `Arc`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Scope(ScopeRepr);

#[derive(Clone, PartialEq, Eq, Hash)]
enum ScopeRepr {
    Static(&'static str),
    Shared(StdArc<str>),
}

impl Scope {
    /// The scope's name.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            ScopeRepr::Static(s) => s,
            ScopeRepr::Shared(s) => s,
        }
    }
}

impl From<&'static str> for Scope {
    fn from(s: &'static str) -> Self {
        Scope(ScopeRepr::Static(s))
    }
}

impl From<String> for Scope {
    fn from(s: String) -> Self {
        Scope(ScopeRepr::Shared(s.into()))
    }
}

impl From<Cow<'static, str>> for Scope {
    fn from(s: Cow<'static, str>) -> Self {
        match s {
            Cow::Borrowed(s) => s.into(),
            Cow::Owned(s) => s.into(),
        }
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A ticket for one request, issued by [`SequenceGuard::next`].
///
/// It remembers the guard that issued it, the guard's scope and its sequence number.
/// Tokens are cheap to clone and compare.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SequenceToken {
    guard: u64,
    sequence: u64,
    scope: Scope,
}

impl SequenceToken {
    /// The sequence number: 1 for the first token of a guard, then one more per [`next`].
    ///
    /// [`next`]: SequenceGuard::next
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// The scope of the guard that issued this token.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }
}

impl fmt::Debug for SequenceToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SequenceToken")
            .field("scope", &self.scope)
            .field("sequence", &self.sequence)
            .finish()
    }
}

/// Issues increasing tokens and tells whether a token is still the newest.
///
/// One guard per independent flow (`"chat-stream"`, `"title-generation"`), shared by
/// reference or in an `Arc`. All methods take `&self` and are lock-free, except that
/// [`next`](Self::next) and [`invalidate`](Self::invalidate) wait while a
/// [`commit_if_current`](Self::commit_if_current) closure runs.
///
/// # Example
///
/// ```
/// use conc_core::SequenceGuard;
///
/// let guard = SequenceGuard::new("chat-stream");
/// let first = guard.next();
/// let second = guard.next(); // the user typed again
///
/// // The first response arrives late: it is stale and is not committed.
/// assert_eq!(guard.commit_if_current(&first, || "first"), None);
/// assert_eq!(guard.commit_if_current(&second, || "second"), Some("second"));
/// ```
pub struct SequenceGuard {
    /// `sequence * STEP`, plus [`COMMITTING`] while a commit closure runs.
    state: AtomicU64,
    id: u64,
    scope: Scope,
}

impl SequenceGuard {
    /// A guard for `scope`, with no token issued yet.
    pub fn new(scope: impl Into<Scope>) -> Self {
        Self {
            state: AtomicU64::new(0),
            id: NEXT_GUARD_ID.fetch_add(1, StdOrdering::Relaxed),
            scope: scope.into(),
        }
    }

    /// The guard's scope.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// Issues a new token; every earlier token becomes stale.
    ///
    /// If a [`commit_if_current`](Self::commit_if_current) closure is running, this waits
    /// (spinning, then yielding the thread) until it returns, so that the commit sees its
    /// token current from start to end.
    pub fn next(&self) -> SequenceToken {
        let sequence = self.advance();
        SequenceToken {
            guard: self.id,
            sequence,
            scope: self.scope.clone(),
        }
    }

    /// Makes every outstanding token stale without issuing a new one (for cleanup, such as
    /// an unmount or a shutdown). Waits for a running commit as [`next`](Self::next) does.
    pub fn invalidate(&self) {
        self.advance();
    }

    /// Whether `token` is the newest token of this guard (and no `invalidate` came since).
    ///
    /// A token from another guard is never current.
    #[inline]
    pub fn is_current(&self, token: &SequenceToken) -> bool {
        token.guard == self.id && self.state.load(Ordering::Acquire) / STEP == token.sequence
    }

    /// The newest sequence number issued (0 before the first [`next`](Self::next)); an
    /// [`invalidate`](Self::invalidate) counts as one.
    pub fn current(&self) -> u64 {
        self.state.load(Ordering::Acquire) / STEP
    }

    /// Runs `commit` only if `token` is current, and returns its result; `None` if the token
    /// is stale (or from another guard).
    ///
    /// # Guarantee
    ///
    /// The check and the commit are one step: from the moment the check succeeds until
    /// `commit` returns (or unwinds), no [`next`](Self::next) or
    /// [`invalidate`](Self::invalidate) on this guard can return; they wait. So a newer
    /// request either started before the check (and the commit does not run), or starts
    /// after the commit is complete. Two commits with the same token run one after the
    /// other, never at once. [`is_current`](Self::is_current) stays lock-free and answers
    /// `true` for the committing token throughout.
    ///
    /// Keep `commit` short and synchronous: it delays every `next()` on this guard. Calling
    /// `next`, `invalidate` or `commit_if_current` on the same guard from inside `commit`
    /// deadlocks, as re-locking a mutex does.
    pub fn commit_if_current<R>(
        &self,
        token: &SequenceToken,
        commit: impl FnOnce() -> R,
    ) -> Option<R> {
        if token.guard != self.id {
            return None;
        }
        let current = token.sequence.checked_mul(STEP)?;
        let mut round = 0;
        loop {
            match self.state.compare_exchange_weak(
                current,
                current | COMMITTING,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                // Same token, committing elsewhere: wait our turn.
                Err(seen) if seen == current | COMMITTING => spin_wait(&mut round),
                // Spurious failure of the weak exchange.
                Err(seen) if seen == current => {}
                Err(_) => return None,
            }
        }
        struct Release<'a>(&'a AtomicU64, u64);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                // Only the committer changes the state while the bit is set.
                self.0.store(self.1, Ordering::Release);
            }
        }
        let _release = Release(&self.state, current);
        Some(commit())
    }

    /// Moves the sequence one step on, waiting out a running commit; returns the new value.
    fn advance(&self) -> u64 {
        let mut seen = self.state.load(Ordering::Relaxed);
        let mut round = 0;
        loop {
            if seen & COMMITTING != 0 {
                spin_wait(&mut round);
                seen = self.state.load(Ordering::Relaxed);
                continue;
            }
            match self.state.compare_exchange_weak(
                seen,
                seen + STEP,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return (seen + STEP) / STEP,
                Err(now) => seen = now,
            }
        }
    }
}

impl fmt::Debug for SequenceGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SequenceGuard")
            .field("scope", &self.scope)
            .field("current", &self.current())
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn tokens_increase_and_only_the_newest_is_current() {
        let guard = SequenceGuard::new("s");
        assert_eq!(guard.current(), 0);
        let a = guard.next();
        let b = guard.next();
        assert_eq!((a.sequence(), b.sequence()), (1, 2));
        assert!(!guard.is_current(&a));
        assert!(guard.is_current(&b));
        assert_eq!(b.scope().as_str(), "s");
    }

    #[test]
    fn invalidate_makes_every_token_stale() {
        let guard = SequenceGuard::new(String::from("dynamic"));
        let a = guard.next();
        guard.invalidate();
        assert!(!guard.is_current(&a));
        assert_eq!(guard.commit_if_current(&a, || ()), None);
        let b = guard.next();
        assert!(guard.is_current(&b));
    }

    #[test]
    fn a_token_from_another_guard_is_never_current() {
        let one = SequenceGuard::new("same");
        let two = SequenceGuard::new("same");
        let token = one.next();
        two.next();
        assert!(!two.is_current(&token));
        assert_eq!(two.commit_if_current(&token, || ()), None);
    }

    #[test]
    fn a_panicking_commit_releases_the_guard() {
        let guard = SequenceGuard::new("s");
        let token = guard.next();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            guard.commit_if_current(&token, || panic!("commit failed"));
        }));
        assert!(caught.is_err());
        assert!(guard.is_current(&token));
        assert_eq!(guard.next().sequence(), 2);
    }

    #[test]
    fn next_waits_for_a_running_commit() {
        use std::sync::atomic::AtomicBool;
        let guard = StdArc::new(SequenceGuard::new("s"));
        let token = guard.next();
        let committed = StdArc::new(AtomicBool::new(false));
        let (entered_tx, entered_rx) = std::sync::mpsc::sync_channel(1);
        let (go_tx, go_rx) = std::sync::mpsc::sync_channel::<()>(1);
        let committer = {
            let (guard, committed) = (guard.clone(), committed.clone());
            std::thread::spawn(move || {
                guard.commit_if_current(&token, || {
                    entered_tx.send(()).unwrap();
                    go_rx.recv().unwrap();
                    committed.store(true, StdOrdering::SeqCst);
                })
            })
        };
        entered_rx.recv().unwrap();
        let newer = {
            let (guard, committed) = (guard.clone(), committed.clone());
            std::thread::spawn(move || {
                let token = guard.next();
                (token.sequence(), committed.load(StdOrdering::SeqCst))
            })
        };
        go_tx.send(()).unwrap();
        assert_eq!(committer.join().unwrap(), Some(()));
        // `next` returned only after the commit had finished.
        assert_eq!(newer.join().unwrap(), (2, true));
    }
}
