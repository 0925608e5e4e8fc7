//! Loom: the mutex's hand-off order, cancelled waiters, `try_lock` against unlock, and the
//! truth of `is_locked`.

use std::pin::pin;
use std::sync::Arc;

use loom::future::block_on;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;

use super::{poll_once, poll_then_drop};
use crate::Mutex;

/// Mutual exclusion and no lost wake-up: two tasks on two threads increment under the lock.
#[test]
fn two_lockers_exclude_each_other() {
    loom::model(|| {
        let mutex = Arc::new(Mutex::new(0usize));
        let other = {
            let mutex = mutex.clone();
            thread::spawn(move || {
                block_on(async {
                    let mut guard = mutex.lock().await;
                    *guard += 1;
                })
            })
        };
        block_on(async {
            let mut guard = mutex.lock().await;
            *guard += 1;
        });
        other.join().unwrap();
        assert_eq!(*block_on(mutex.lock()), 2);
        assert!(!mutex.is_locked());
        assert_eq!(mutex.waiters(), 0);
    });
}

/// A waiter queued first is served first: a `try_lock` racing the release cannot barge
/// in between the release and the hand-off.
#[test]
fn hand_off_is_fifo() {
    loom::model(|| {
        let mutex = Arc::new(Mutex::new(Vec::new()));
        let holder = mutex.clone().try_lock_owned().unwrap();
        let mut lock = pin!(mutex.lock());
        assert!(poll_once(lock.as_mut()).is_pending());
        assert_eq!(mutex.waiters(), 1);
        let barger = {
            let mutex = mutex.clone();
            thread::spawn(move || {
                if let Ok(mut guard) = mutex.try_lock() {
                    guard.push("barger");
                }
            })
        };
        let releaser = thread::spawn(move || drop(holder));
        block_on(lock).push("waiter");
        barger.join().unwrap();
        releaser.join().unwrap();
        let order = block_on(mutex.lock()).clone();
        assert_eq!(order.first(), Some(&"waiter"));
        assert!(!mutex.is_locked());
    });
}

/// A waiter that gives up (its future dropped) while queued, or just after it was granted
/// the lock, never swallows the wake-up of the waiter behind it.
#[test]
fn cancelled_waiter_passes_the_wake_up_on() {
    loom::model(|| {
        let mutex = Arc::new(Mutex::new(()));
        let holder = mutex.try_lock().unwrap();
        let quitter = {
            let mutex = mutex.clone();
            thread::spawn(move || {
                let _ = poll_then_drop(mutex.lock());
            })
        };
        let patient = {
            let mutex = mutex.clone();
            thread::spawn(move || {
                drop(block_on(mutex.lock()));
            })
        };
        drop(holder);
        quitter.join().unwrap();
        patient.join().unwrap();
        assert!(!mutex.is_locked());
        assert_eq!(mutex.waiters(), 0);
    });
}

/// `try_lock` racing `unlock`: either it fails while held, or it succeeds after; the state
/// ends unlocked and consistent.
#[test]
fn try_lock_against_unlock() {
    loom::model(|| {
        let mutex = Arc::new(Mutex::new(0));
        let holder = mutex.try_lock().unwrap();
        let other = {
            let mutex = mutex.clone();
            thread::spawn(move || mutex.try_lock().map(|mut g| *g += 1).is_ok())
        };
        drop(holder);
        let got = other.join().unwrap();
        assert_eq!(*mutex.try_lock().unwrap(), usize::from(got));
        assert!(!mutex.is_locked());
    });
}

/// `is_locked` is true exactly while a guard lives, under every interleaving with another
/// locker. A mutex built as a chain of promises can report `is_locked()` as `true` for
/// ever, even when nobody holds it; this one must say `false` again as soon as the last
/// guard is dropped.
#[test]
fn is_locked_tells_the_truth() {
    loom::model(|| {
        let mutex = Arc::new(Mutex::new(()));
        let holders = Arc::new(AtomicUsize::new(0));
        let other = {
            let (mutex, holders) = (mutex.clone(), holders.clone());
            thread::spawn(move || {
                block_on(async {
                    let guard = mutex.lock().await;
                    holders.fetch_add(1, Ordering::SeqCst);
                    assert!(mutex.is_locked());
                    holders.fetch_sub(1, Ordering::SeqCst);
                    drop(guard);
                })
            })
        };
        block_on(async {
            let guard = mutex.lock().await;
            assert!(mutex.is_locked());
            assert_eq!(holders.load(Ordering::SeqCst), 0);
            drop(guard);
        });
        other.join().unwrap();
        assert!(!mutex.is_locked());
    });
}

/// Three waiters queue behind a holder; the middle one is cancelled while the holder
/// releases: the first waiter gets the lock, then the third; nobody hangs, and the order
/// stays first-in, first-out.
#[test]
fn three_waiters_with_a_cancellation_in_the_middle() {
    loom::model(|| {
        let mutex = Arc::new(Mutex::new(Vec::new()));
        let holder = mutex.clone().try_lock_owned().unwrap();
        let mut first = Box::pin(mutex.clone().lock_owned());
        let mut middle = Box::pin(mutex.clone().lock_owned());
        let mut last = Box::pin(mutex.clone().lock_owned());
        assert!(poll_once(first.as_mut()).is_pending());
        assert!(poll_once(middle.as_mut()).is_pending());
        assert!(poll_once(last.as_mut()).is_pending());
        assert_eq!(mutex.waiters(), 3);
        let canceller = thread::spawn(move || drop(middle));
        let releaser = thread::spawn(move || drop(holder));
        block_on(first.as_mut()).push("first");
        canceller.join().unwrap();
        releaser.join().unwrap();
        block_on(last.as_mut()).push("last");
        assert_eq!(*block_on(mutex.lock()), ["first", "last"]);
        assert!(!mutex.is_locked());
        assert_eq!(mutex.waiters(), 0);
    });
}

/// A mapped guard excludes like the guard it came from, and releases the lock on drop even
/// on another thread.
#[test]
fn mapped_guards_exclude_and_release() {
    loom::model(|| {
        let mutex = Arc::new(Mutex::new((0u32, 0u32)));
        let other = {
            let mutex = mutex.clone();
            thread::spawn(move || {
                let mut second = crate::MutexGuard::map(block_on(mutex.lock()), |p| &mut p.1);
                *second += 1;
            })
        };
        {
            let mut first = crate::MutexGuard::map(block_on(mutex.lock()), |p| &mut p.0);
            *first += 1;
        }
        other.join().unwrap();
        let pair = block_on(mutex.lock());
        assert_eq!(*pair, (1, 1));
        drop(pair);
        assert!(!mutex.is_locked());
    });
}
