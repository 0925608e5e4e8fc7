//! [`SpinLock`]: the blocking lock around the [`Mutex`](crate::Mutex)'s waiter queue.
//!
//! The queue's critical sections are a handful of instructions (push or pop one waiter,
//! store one id) and never block, so a spin lock fits: taking it is one compare-and-swap
//! and releasing it one plain `Release` store, where `parking_lot`'s mutex pays a second
//! compare-and-swap to release (it must look for parked threads). A waiter spins briefly,
//! then yields its thread ([`spin_wait`]), so a preempted holder is not spun against for
//! long.
//!
//! It is built from the crate's loom shim, and its loom model below runs this code with
//! loom's atomics and cell. (The mutex's own models use loom's mutex for the queue: there,
//! every turn of a spin loop would be one more branch of models that are large already.)

// In the loom build only this module's own model uses it.
#![cfg_attr(loom, allow(dead_code))]

use std::ops::{Deref, DerefMut};

use crate::loom::{AtomicBool, Ordering, UnsafeCell, spin_wait};

/// A spin lock with `parking_lot`'s API: `lock()` returns a guard.
#[derive(Debug)]
pub(crate) struct SpinLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the lock gives one thread at a time access to `T`, so it may be shared and sent
// where `T` may be sent (std's rule for `Mutex<T>`).
unsafe impl<T: Send> Send for SpinLock<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for SpinLock<T> {}

impl<T: Default> Default for SpinLock<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

impl<T> SpinLock<T> {
    #[cfg(not(loom))]
    pub(crate) const fn new(value: T) -> Self {
        Self {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    #[cfg(loom)]
    pub(crate) fn new(value: T) -> Self {
        Self {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    #[inline]
    pub(crate) fn lock(&self) -> SpinGuard<'_, T> {
        if self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_contended();
        }
        SpinGuard { lock: self }
    }

    #[cold]
    fn lock_contended(&self) {
        let mut round = 0;
        loop {
            // Spin on a load (no cache-line ping-pong), then try again.
            while self.locked.load(Ordering::Relaxed) {
                spin_wait(&mut round);
            }
            if self
                .locked
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return;
            }
        }
    }
}

/// Access to a [`SpinLock`]'s value; released on drop.
pub(crate) struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> Deref for SpinGuard<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while `locked` is true and this thread set it, so no
        // other reference to the value exists.
        self.lock.value.with(|ptr| unsafe { &*ptr })
    }
}

impl<T> DerefMut for SpinGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as for `deref`, and `&mut self` makes this borrow unique.
        self.lock.value.with_mut(|ptr| unsafe { &mut *ptr })
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use loom::sync::Arc;
    use loom::thread;

    use super::SpinLock;

    /// Two threads increment under the lock: no update is lost, and each sees the other's
    /// write once it holds the lock (the `Acquire`/`Release` pair).
    #[test]
    fn two_threads_exclude_each_other() {
        loom::model(|| {
            let lock = Arc::new(SpinLock::new(0u32));
            let other = {
                let lock = lock.clone();
                thread::spawn(move || {
                    *lock.lock() += 1;
                })
            };
            *lock.lock() += 1;
            other.join().unwrap();
            assert_eq!(*lock.lock(), 2);
        });
    }
}
