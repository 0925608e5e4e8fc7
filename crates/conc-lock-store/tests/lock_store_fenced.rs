//! Fencing: a holder that paused past its TTL cannot write with its stale fence.

use std::sync::Arc;
use std::time::Duration;

use conc_lock_store::conformance::{FenceError, FencedFile};
use conc_lock_store::{LockRequest, LockStore, MemoryLockStore};

#[tokio::test(start_paused = true)]
async fn a_paused_holder_is_fenced_off() {
    let dir = tempfile::tempdir().unwrap();
    let resource = FencedFile::new(dir.path().join("resource"));
    let store: Arc<dyn LockStore> = Arc::new(MemoryLockStore::new());
    let slow = store
        .try_acquire(&LockRequest::new("doc", "slow", Duration::from_secs(1)))
        .await
        .unwrap()
        .unwrap();
    // The slow holder pauses (a GC pause, a stalled VM) past its TTL...
    tokio::time::advance(Duration::from_secs(2)).await;
    let fast = store
        .try_acquire(&LockRequest::new("doc", "fast", Duration::from_secs(1)))
        .await
        .unwrap()
        .unwrap();
    resource.write(fast.fence).unwrap();
    // ...then wakes and writes: the resource refuses its older fence.
    let refused = resource.write(slow.fence).unwrap_err();
    assert!(
        matches!(refused, FenceError::Stale { fence, highest } if fence == slow.fence && highest == fast.fence)
    );
    assert_eq!(resource.highest().unwrap(), fast.fence);
}
