//! Loom: abort against a waiter registering (no lost wake-up), and the child cascade.

use loom::future::block_on;
use loom::thread;

use crate::{AbortController, AbortManager, AbortReason};

/// A task that starts waiting while another thread aborts is always woken.
#[test]
fn abort_against_a_registering_waiter() {
    loom::model(|| {
        let controller = AbortController::new();
        let signal = controller.signal();
        let waiter = thread::spawn(move || block_on(signal.aborted()));
        assert!(controller.abort(AbortReason::Timeout));
        assert_eq!(waiter.join().unwrap(), AbortReason::Timeout);
    });
}

/// A child created while its parent is being aborted ends up aborted either way, and a
/// waiter on the child is woken.
#[test]
fn child_cascade_against_abort() {
    loom::model(|| {
        let parent = AbortController::new();
        let signal = parent.signal();
        let child_thread = thread::spawn(move || {
            let child = signal.child();
            let reason = block_on(child.signal().aborted());
            assert_eq!(reason, AbortReason::Parent(Box::new(AbortReason::Shutdown)));
        });
        parent.abort(AbortReason::Shutdown);
        child_thread.join().unwrap();
    });
}

/// Two racing `begin`s: exactly one lease survives, the other is superseded.
#[test]
fn racing_begins_leave_one_active() {
    loom::model(|| {
        let manager = AbortManager::new();
        let other = {
            let manager = manager.clone();
            thread::spawn(move || {
                let lease = manager.begin();
                let signal = lease.signal().clone();
                std::mem::forget(lease);
                signal
            })
        };
        let mine = manager.begin();
        let theirs = other.join().unwrap();
        assert!(mine.signal().is_aborted() != theirs.is_aborted());
        assert!(manager.abort_active(AbortReason::Shutdown));
        assert!(mine.signal().is_aborted() && theirs.is_aborted());
    });
}

/// The root is aborted while another thread drops the middle controller: the grandchild
/// ends aborted either way (it is re-linked to the root, or reached through the middle).
#[test]
fn abort_against_dropping_the_middle() {
    loom::model(|| {
        let root = AbortController::new();
        let middle = root.signal().child();
        let grandchild = middle.signal().child();
        let dropper = thread::spawn(move || drop(middle));
        root.abort(AbortReason::Shutdown);
        dropper.join().unwrap();
        assert!(grandchild.is_aborted());
        assert_eq!(
            grandchild.signal().reason(),
            Some(AbortReason::Parent(Box::new(AbortReason::Shutdown)))
        );
    });
}

/// A grandchild aborts and drops its last handle while another thread drops the middle
/// (whose detach moves its children to the root): whichever goes first, no link to the
/// grandchild is left behind, and the root's abort afterwards finds nothing to cascade.
#[test]
fn leaf_abort_and_drop_against_dropping_the_middle() {
    loom::model(|| {
        let root = AbortController::new();
        let middle = root.signal().child();
        let leaf = middle.signal().child();
        let leaf_thread = thread::spawn(move || {
            assert!(leaf.abort(AbortReason::Timeout));
            drop(leaf);
        });
        let dropper = thread::spawn(move || drop(middle));
        leaf_thread.join().unwrap();
        dropper.join().unwrap();
        assert_eq!(root.signal().linked_children(), 0);
        assert!(root.abort(AbortReason::Shutdown));
    });
}

/// A child made while a sibling's last handle is dropped (its unlink swaps the parent's
/// last child, maybe the new one, into its slot): the new child ends linked at the right
/// slot, so its parent's abort reaches it and its own drop unlinks it.
#[test]
fn child_made_against_a_sibling_unlinking() {
    loom::model(|| {
        let parent = AbortController::new();
        let sibling = parent.signal().child();
        let signal = parent.signal();
        let maker = thread::spawn(move || signal.child());
        drop(sibling);
        let child = maker.join().unwrap();
        assert_eq!(parent.signal().linked_children(), 1);
        let kept = child.signal();
        drop(child);
        drop(kept);
        assert_eq!(parent.signal().linked_children(), 0);
        let child = parent.signal().child();
        assert!(parent.abort(AbortReason::Shutdown));
        assert!(child.is_aborted());
    });
}

/// The same race, the parent aborted after it: the new child is reached by the cascade.
#[test]
fn child_made_against_a_sibling_unlinking_then_abort() {
    loom::model(|| {
        let parent = AbortController::new();
        let first = parent.signal().child();
        let second = parent.signal().child();
        let signal = parent.signal();
        let maker = thread::spawn(move || signal.child());
        drop(first);
        let child = maker.join().unwrap();
        drop(second);
        assert_eq!(parent.signal().linked_children(), 1);
        assert!(parent.abort(AbortReason::Shutdown));
        assert!(child.is_aborted());
    });
}

/// A child made while another thread aborts its parent: either it is linked (and the
/// cascade reaches it) or it is made aborted; dropped afterwards, it leaves no link.
#[test]
fn child_made_and_dropped_against_abort() {
    loom::model(|| {
        let parent = AbortController::new();
        let signal = parent.signal();
        let maker = thread::spawn(move || {
            let child = signal.child();
            let child_signal = child.signal();
            drop(child);
            (child_signal, signal)
        });
        parent.abort(AbortReason::Shutdown);
        let (child_signal, signal) = maker.join().unwrap();
        assert!(child_signal.is_aborted());
        drop(child_signal);
        assert_eq!(signal.linked_children(), 0);
    });
}

/// An abort races a waiter that registered and is then dropped: no lost wake-up for the
/// waiter that stays, no stale waker left behind.
#[test]
fn abort_against_a_dropped_waiter() {
    use std::future::Future;
    use std::task::{Context, Waker};
    loom::model(|| {
        let controller = AbortController::new();
        let signal = controller.signal();
        let other = controller.signal();
        let dropped = thread::spawn(move || {
            let mut wait = std::pin::pin!(other.aborted());
            let mut cx = Context::from_waker(Waker::noop());
            let _ = wait.as_mut().poll(&mut cx);
        });
        let stays = thread::spawn(move || block_on(signal.aborted()));
        controller.abort(AbortReason::Timeout);
        dropped.join().unwrap();
        assert_eq!(stays.join().unwrap(), AbortReason::Timeout);
    });
}

/// A callback registered while another thread aborts runs exactly once.
#[test]
fn on_abort_against_abort() {
    use loom::sync::atomic::{AtomicUsize, Ordering};
    loom::model(|| {
        let controller = AbortController::new();
        let signal = controller.signal();
        let runs = std::sync::Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        let registrar = thread::spawn(move || {
            signal
                .on_abort(move |_| {
                    counted.fetch_add(1, Ordering::SeqCst);
                })
                .detach();
        });
        controller.abort(AbortReason::Shutdown);
        registrar.join().unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    });
}

/// `unobserved` registering while another thread drops the last signal: the future always
/// completes (the dropper finds the waker, or the poll sees the count fall).
#[test]
fn unobserved_against_the_last_signal_dropped() {
    loom::model(|| {
        let controller = AbortController::new();
        let signal = controller.signal();
        let dropper = thread::spawn(move || drop(signal));
        block_on(controller.unobserved());
        dropper.join().unwrap();
    });
}

/// With two signals dropped on two threads, `unobserved` completes only after both.
#[test]
fn unobserved_waits_for_every_signal() {
    loom::model(|| {
        let controller = AbortController::new();
        let (a, b) = (controller.signal(), controller.signal());
        let dropped = std::sync::Arc::new(loom::sync::atomic::AtomicUsize::new(0));
        let threads: Vec<_> = [a, b]
            .into_iter()
            .map(|signal| {
                let dropped = dropped.clone();
                thread::spawn(move || {
                    dropped.fetch_add(1, loom::sync::atomic::Ordering::SeqCst);
                    drop(signal);
                })
            })
            .collect();
        block_on(controller.unobserved());
        assert_eq!(dropped.load(loom::sync::atomic::Ordering::SeqCst), 2);
        for thread in threads {
            thread.join().unwrap();
        }
    });
}
