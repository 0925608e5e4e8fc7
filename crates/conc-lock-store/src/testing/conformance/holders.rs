//! A holder's [`LockGuard`] and the resource it writes to: renewal and loss, take-overs
//! that fence the old holder off (checked by [`FencedFile`], a fenced resource on disk)
//! and that reach it at once.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::error::LockError;
use crate::recipe::LockGuard;
use crate::request::LockRequest;
use crate::store::LockStore;

use super::key;

/// A [`LockGuard`] keeps a short lease alive past its TTL, and fires `lost` when the lock
/// is taken from it.
///
/// # Cancel safety
///
/// Dropping it midway may leave locks under `prefix` held until their TTLs expire.
pub async fn guard_renews_and_reports_loss(store: &Arc<dyn LockStore>, prefix: &str) {
    let key = key(prefix, "guard");
    // Generous margins: a loaded CI machine may delay a renewal by a few hundred ms.
    let request = LockRequest::new(&key, "guarded", Duration::from_millis(900));
    let guard = LockGuard::acquire(store.clone(), request, Duration::from_secs(1))
        .await
        .expect("acquire");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(!guard.lost().is_aborted(), "renewals keep it");
    assert!(store.is_locked(&key).await.expect("is_locked"));
    assert!(store.force_release(&key).await.expect("force"));
    let reason = tokio::time::timeout(Duration::from_secs(2), guard.lost().aborted()).await;
    assert!(reason.is_ok(), "lost() fired after the lock was taken away");
    assert!(!guard.release().await.expect("release"), "already lost");
}

/// `take_over` takes a held lock with a higher fence; the previous holder can neither
/// renew nor release it any more.
///
/// # Cancel safety
///
/// Dropping it midway may leave locks under `prefix` held until their TTLs expire.
pub async fn take_over_fences_off_the_holder(store: &Arc<dyn LockStore>, prefix: &str) {
    let key = key(prefix, "take-over");
    let holder = store
        .try_acquire(&LockRequest::new(&key, "holder", Duration::from_secs(5)))
        .await
        .expect("try_acquire")
        .expect("free");
    let taker = store
        .take_over(&LockRequest::new(&key, "operator", Duration::from_secs(5)))
        .await
        .expect("take_over");
    assert!(taker.fence > holder.fence);
    assert_eq!(
        store
            .inspect(&key)
            .await
            .expect("inspect")
            .expect("held")
            .owner,
        "operator"
    );
    assert!(matches!(
        store.renew(&holder, Duration::from_secs(5)).await,
        Err(LockError::Lost { .. })
    ));
    assert!(!store.release(&holder).await.expect("release"));
    assert!(store.release(&taker).await.expect("release"));
    let free = store
        .take_over(&LockRequest::new(&key, "operator", Duration::from_secs(5)))
        .await
        .expect("take_over a free key");
    store.release(&free).await.expect("release");
}

/// A resource that remembers the highest fence it accepted and refuses older ones: the
/// storage side of fencing, kept in a file that several processes share.
#[derive(Debug, Clone)]
pub struct FencedFile {
    path: PathBuf,
}

/// The fenced resource refused a write.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// The fence is older than one already accepted.
    #[error("stale fence {fence}: the resource already accepted {highest}")]
    Stale {
        /// The fence offered.
        fence: u64,
        /// The highest accepted.
        highest: u64,
    },
    /// The file could not be used.
    #[error("fenced file: {0}")]
    Io(#[from] std::io::Error),
}

impl FencedFile {
    /// A fenced resource in `path` (created on first write).
    pub fn new(path: impl AsRef<Path>) -> Self {
        Self {
            path: path.as_ref().to_path_buf(),
        }
    }

    /// Accepts a write with `fence` if it is at least the highest seen, remembering it.
    pub fn write(&self, fence: u64) -> Result<(), FenceError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.path)?;
        file.lock()?;
        let outcome = Self::check_and_store(&mut file, fence);
        file.unlock()?;
        outcome
    }

    fn check_and_store(file: &mut File, fence: u64) -> Result<(), FenceError> {
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        let highest = text.trim().parse::<u64>().unwrap_or(0);
        if fence < highest {
            return Err(FenceError::Stale { fence, highest });
        }
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        write!(file, "{fence}")?;
        file.sync_data()?;
        Ok(())
    }

    /// The highest fence accepted so far.
    pub fn highest(&self) -> Result<u64, FenceError> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => Ok(text.trim().parse().unwrap_or(0)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e.into()),
        }
    }
}

/// A take-over and a forced release reach the holder's [`LockGuard`] at once, through the
/// store's [`watch`](LockStore::watch), long before its next renewal would have found out.
///
/// # Cancel safety
///
/// Dropping it midway may leave locks under `prefix` held until their TTLs expire.
pub async fn take_over_reaches_the_holder_at_once(store: &Arc<dyn LockStore>, prefix: &str) {
    let key = key(prefix, "reach");
    // Renewals every 20 s: only the watch can tell the holder within the second.
    let long = Duration::from_secs(60);
    let guard = LockGuard::acquire(
        store.clone(),
        LockRequest::new(&key, "holder", long),
        Duration::from_secs(1),
    )
    .await
    .expect("acquire");
    let taker = store
        .take_over(&LockRequest::new(&key, "stopper", Duration::from_secs(5)))
        .await
        .expect("take_over");
    let reached = tokio::time::timeout(Duration::from_secs(1), guard.lost().aborted()).await;
    assert!(reached.is_ok(), "lost() fired within 1 s of the take-over");
    assert!(guard.check().is_err());
    assert!(store.release(&taker).await.expect("release"));
    let second = LockGuard::acquire(
        store.clone(),
        LockRequest::new(&key, "holder", long),
        Duration::from_secs(1),
    )
    .await
    .expect("acquire");
    assert!(store.force_release(&key).await.expect("force"));
    let reached = tokio::time::timeout(Duration::from_secs(1), second.lost().aborted()).await;
    assert!(
        reached.is_ok(),
        "lost() fired within 1 s of the forced release"
    );
}
