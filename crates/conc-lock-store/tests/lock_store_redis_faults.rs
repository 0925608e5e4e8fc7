//! Fault tests on Redis (`CONC_TEST_REDIS_URL`): killed connections and FLUSHALL. In their
//! own test binary, because they disturb every client of the server, and cargo runs test
//! binaries one at a time.

#![cfg(all(feature = "redis", feature = "conformance"))]

use std::sync::Arc;
use std::time::Duration;

use conc_lock_store::{LockGuard, LockRequest, LockStore};

mod redis_common;

use redis_common::{admin, prefix, scrub, store, url};

/// `CLIENT KILL` of the store's connection in the middle of renewals: it reconnects and the
/// leases survive; then `FLUSHALL` wipes them, and every guard's `lost()` fires at its next
/// renewal. (One test, so that the kills and the flush hit nobody else in this binary.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connections_recover_and_flushall_is_noticed() {
    let Some(url) = url() else { return };
    let prefix = prefix("faults");
    let mut admin = admin(&url).await;
    let store: Arc<dyn LockStore> = Arc::new(store(&url, &prefix).await);
    let mut guards = Vec::new();
    for n in 0..3 {
        let request = LockRequest::new(format!("conv:{n}"), "holder", Duration::from_millis(900));
        guards.push(
            LockGuard::acquire(store.clone(), request, Duration::from_secs(2))
                .await
                .unwrap(),
        );
    }
    for _ in 0..4 {
        let _: redis::Value = redis::cmd("CLIENT")
            .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"])
            .query_async(&mut admin)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        let intruder = LockRequest::new("conv:0", "intruder", Duration::from_secs(5));
        assert!(
            store.try_acquire(&intruder).await.unwrap().is_none(),
            "no second holder"
        );
    }
    for guard in &guards {
        assert!(
            !guard.lost().is_aborted(),
            "lost() fired but the lease never lapsed"
        );
    }
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut admin)
        .await
        .unwrap();
    for guard in &guards {
        let fired = tokio::time::timeout(Duration::from_secs(2), guard.lost().aborted()).await;
        assert!(fired.is_ok(), "lost() fired after FLUSHALL");
    }
    for guard in guards {
        assert!(!guard.release().await.unwrap());
    }
    scrub(&mut admin, &prefix).await;
}
