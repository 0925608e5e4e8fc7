//! The followers' wakers, in registration order, one stored per run of entries of the same
//! task; and [`wake_all`], which wakes each task among them once.

use std::task::Waker;

/// The followers' wakers, in registration order. Followers polled by one task (joined
/// futures) register the same waker: an entry whose waker would be the one before it (by
/// `will_wake`) stores none, which saves a clone and a drop (two atomic operations on the
/// task's reference count) per follower.
#[derive(Default)]
pub(super) struct Waiters {
    /// `(waiter id, waker)`; `None` stands for the nearest earlier entry's waker. The first
    /// entry always has one.
    pub(super) entries: Vec<(u64, Option<Waker>)>,
    /// The index of the last entry that has a waker.
    last: Option<usize>,
}

impl Waiters {
    pub(super) fn push(&mut self, id: u64, waker: &Waker) {
        let same = self
            .last
            .is_some_and(|at| matches!(&self.entries[at].1, Some(last) if last.will_wake(waker)));
        if same {
            self.entries.push((id, None));
        } else {
            self.entries.push((id, Some(waker.clone())));
            self.last = Some(self.entries.len() - 1);
        }
    }

    /// The waker the entry at `at` stands for.
    fn waker_at(&self, at: usize) -> Option<&Waker> {
        self.entries[..=at]
            .iter()
            .rev()
            .find_map(|(_, w)| w.as_ref())
    }

    /// Registers `waker` for `id`: replaces its entry's waker if it would not wake the same
    /// task, or adds an entry if a wake-up already took it out.
    pub(super) fn update(&mut self, id: u64, waker: &Waker) {
        let Some(at) = self.entries.iter().position(|(w, _)| *w == id) else {
            self.push(id, waker);
            return;
        };
        let current = self.waker_at(at);
        if current.is_some_and(|w| w.will_wake(waker)) {
            return;
        }
        // The entries after this one that stood for its old waker keep it.
        let old = current.cloned();
        if let Some((_, next @ None)) = self.entries.get_mut(at + 1) {
            *next = old;
        }
        self.entries[at].1 = Some(waker.clone());
        self.last = self.entries.iter().rposition(|(_, w)| w.is_some());
    }

    /// Takes `id`'s entry out, if it is still there.
    pub(super) fn remove(&mut self, id: u64) {
        let Some(at) = self.entries.iter().position(|(w, _)| *w == id) else {
            return;
        };
        let (_, waker) = self.entries.remove(at);
        if let (Some(waker), Some((_, next @ None))) = (waker, self.entries.get_mut(at)) {
            *next = Some(waker);
        }
        self.last = self.entries.iter().rposition(|(_, w)| w.is_some());
    }
}

/// Wakes every waiter's task once: followers polled by one task (joined futures) register
/// the same waker, and waking it again would only repeat a wake-up already pending.
pub(super) fn wake_all(waiters: Waiters) {
    let mut last: Option<Waker> = None;
    for waker in waiters.entries.into_iter().filter_map(|(_, waker)| waker) {
        if last.as_ref().is_some_and(|woken| woken.will_wake(&waker)) {
            continue;
        }
        waker.wake_by_ref();
        last = Some(waker);
    }
}
