//! The ordinary build: std atomics, parking_lot's mutex, a plain `UnsafeCell`.

pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// A blocking mutex with parking_lot's API (no poisoning).
pub(crate) type Mutex<T> = parking_lot::Mutex<T>;

/// Spins a little, then yields the thread; used only in short waits.
pub(crate) fn spin_wait(round: &mut u32) {
    if *round < 6 {
        for _ in 0..(1u32 << *round) {
            std::hint::spin_loop();
        }
        *round += 1;
    } else {
        std::thread::yield_now();
    }
}

/// `UnsafeCell` with loom's closure-based API.
#[derive(Debug)]
pub(crate) struct UnsafeCell<T: ?Sized>(std::cell::UnsafeCell<T>);

impl<T> UnsafeCell<T> {
    pub(crate) const fn new(value: T) -> Self {
        Self(std::cell::UnsafeCell::new(value))
    }

    pub(crate) fn into_inner(self) -> T {
        self.0.into_inner()
    }
}

impl<T: ?Sized> UnsafeCell<T> {
    #[inline(always)]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }

    #[inline(always)]
    pub(crate) fn get_mut(&mut self) -> &mut T {
        self.0.get_mut()
    }
}
