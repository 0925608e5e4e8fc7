//! Loom: `commit_if_current` against `next`, and `invalidate`.

use std::sync::Arc;

use loom::sync::atomic::{AtomicU64, Ordering};
use loom::thread;

use crate::SequenceGuard;

/// A commit that succeeds never overlaps a newer token: when `next()` returns, every
/// successful commit of an older token is complete, and a commit that starts after it
/// fails.
#[test]
fn commit_if_current_against_next() {
    loom::model(|| {
        let guard = Arc::new(SequenceGuard::new("loom"));
        let token = guard.next();
        // 0: nothing yet; 1: commit ran; 2: next() returned.
        let log = Arc::new(AtomicU64::new(0));

        let committer = {
            let (guard, log) = (guard.clone(), log.clone());
            thread::spawn(move || {
                guard.commit_if_current(&token, || {
                    // next() cannot have returned while we commit.
                    assert_eq!(log.load(Ordering::SeqCst), 0);
                    assert!(guard.is_current(&token));
                    log.store(1, Ordering::SeqCst);
                })
            })
        };
        let newer = guard.next();
        let before = log.swap(2, Ordering::SeqCst);
        let committed = committer.join().unwrap();
        // If the commit ran, it finished before next() returned.
        assert_eq!(committed.is_some(), before == 1);
        assert!(guard.is_current(&newer));
    });
}

/// Two commits of the same token run one after the other, never at once.
#[test]
fn commits_of_one_token_are_serialised() {
    loom::model(|| {
        let guard = Arc::new(SequenceGuard::new("loom"));
        let token = guard.next();
        let inside = Arc::new(AtomicU64::new(0));
        let other = {
            let (guard, inside, token) = (guard.clone(), inside.clone(), token.clone());
            thread::spawn(move || {
                guard.commit_if_current(&token, || {
                    assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                    inside.fetch_sub(1, Ordering::SeqCst);
                })
            })
        };
        let mine = guard.commit_if_current(&token, || {
            assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
            inside.fetch_sub(1, Ordering::SeqCst);
        });
        assert!(mine.is_some());
        assert!(other.join().unwrap().is_some());
    });
}

/// `invalidate` racing a commit: the commit either finishes first or does not run.
#[test]
fn invalidate_against_commit() {
    loom::model(|| {
        let guard = Arc::new(SequenceGuard::new("loom"));
        let token = guard.next();
        let invalidated = Arc::new(AtomicU64::new(0));
        let cleaner = {
            let (guard, invalidated) = (guard.clone(), invalidated.clone());
            thread::spawn(move || {
                guard.invalidate();
                invalidated.store(1, Ordering::SeqCst);
            })
        };
        guard.commit_if_current(&token, || {
            assert_eq!(invalidated.load(Ordering::SeqCst), 0);
        });
        cleaner.join().unwrap();
        assert!(!guard.is_current(&token));
    });
}
