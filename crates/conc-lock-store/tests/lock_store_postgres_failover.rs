//! PostgreSQL with a streaming replica promoted (two `servers::PrivatePostgres`, the second
//! a `pg_basebackup -R` of the first): leases that had reached the replica when the primary
//! died still hold on the promoted replica, and fences go forward through the promotion.
//! Replication is asynchronous: a write not yet streamed when the primary dies is lost with
//! it, which the first test does not claim to survive; with `durability=guard` the promoted
//! replica is closed to grants until every lease granted on the old primary has run out.

#![cfg(all(feature = "postgres", feature = "conformance"))]

use std::time::{Duration, Instant};

use conc_lock_store::servers::PrivatePostgres;
use conc_lock_store::{
    LockError, LockRequest, LockStore, PostgresConfig, PostgresDurability, PostgresLockStore,
};

async fn lsn(url: &str, query: &str) -> String {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let row = client.query_one(query, &[]).await.expect("lsn");
    row.try_get::<_, Option<String>>(0)
        .expect("an lsn")
        .unwrap_or_default()
}

/// Waits until the replica has replayed everything the primary has written.
async fn caught_up(primary: &str, replica: &str) {
    let target = lsn(primary, "SELECT pg_current_wal_lsn()::text").await;
    let started = Instant::now();
    loop {
        let (client, connection) = tokio_postgres::connect(replica, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        let row = client
            .query_one(
                "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                &[&target],
            )
            .await
            .expect("replay lsn");
        if row.try_get::<_, Option<bool>>(0).expect("bool") == Some(true) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the replica did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A private primary and its streaming replica, with their URLs; `None` (after a `skipped:`
/// line) where PostgreSQL's tools are not installed.
fn primary_and_replica() -> Option<(PrivatePostgres, PrivatePostgres, String, String)> {
    let primary = PrivatePostgres::start(None, &[]).unwrap()?;
    let replica = PrivatePostgres::start_replica_of(&primary).unwrap()?;
    let (primary_url, replica_url) = (
        primary.url("postgres", "postgres", ""),
        replica.url("postgres", "postgres", ""),
    );
    Some((primary, replica, primary_url, replica_url))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_that_reached_the_replica_hold_and_fences_go_forward_after_promotion() {
    let Some((primary, replica, primary_url, replica_url)) = primary_and_replica() else {
        return;
    };
    let config = || PostgresConfig::default().with_schema("failover");
    let before = PostgresLockStore::connect(&primary_url, config())
        .await
        .unwrap();
    let ttl = Duration::from_secs(60);
    let mut fences = Vec::new();
    for n in 0..10 {
        let lease = before
            .try_acquire(&LockRequest::new(format!("k{n}"), "holder", ttl))
            .await
            .unwrap()
            .expect("free");
        fences.push(lease.fence);
    }
    caught_up(&primary_url, &replica_url).await;
    drop(before);
    drop(primary); // an immediate shutdown: the primary is gone
    replica.promote().unwrap();

    let after = PostgresLockStore::connect(&replica_url, config())
        .await
        .unwrap();
    for (n, fence) in fences.iter().enumerate() {
        let key = format!("k{n}");
        let other = LockRequest::new(&key, "other", ttl);
        assert!(
            after.try_acquire(&other).await.unwrap().is_none(),
            "{key}: the lease streamed before the failover still holds"
        );
        let held = after.inspect(&key).await.unwrap().expect("held");
        assert_eq!((held.owner.as_str(), held.fence), ("holder", *fence));
        let taken = after.take_over(&other).await.unwrap();
        assert!(
            taken.fence > *fence,
            "{key}: fences go forward through the promotion"
        );
    }
    let fresh = after
        .try_acquire(&LockRequest::new("new", "holder", ttl))
        .await
        .unwrap()
        .expect("free");
    assert!(
        fences.iter().all(|fence| fresh.fence > *fence),
        "a new key's fence is above every fence drawn before the failover (the clock floor)"
    );
}

/// With `durability=guard`: the promoted replica has no crash-guard marker (an unlogged
/// table's rows never reach a replica), so it grants nothing until every lease the old
/// primary could have granted has run out, whether or not that grant had been streamed;
/// the leases that had been streamed still hold, and fences go forward.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_replica_waits_out_the_old_primarys_leases_in_guard_mode() {
    let Some((primary, replica, primary_url, replica_url)) = primary_and_replica() else {
        return;
    };
    let config = || {
        PostgresConfig::default()
            .with_schema("guarded")
            .with_durability(PostgresDurability::Guard)
    };
    let before = PostgresLockStore::connect(&primary_url, config())
        .await
        .unwrap();
    let ttl = Duration::from_secs(3);
    let mut leases = Vec::new();
    for n in 0..5 {
        let request = LockRequest::new(format!("k{n}"), "holder", ttl);
        leases.push(before.try_acquire(&request).await.unwrap().expect("free"));
    }
    caught_up(&primary_url, &replica_url).await;
    // One more, perhaps not streamed before the primary goes.
    let last = LockRequest::new("late", "holder", ttl);
    leases.push(before.try_acquire(&last).await.unwrap().expect("free"));
    drop(before);
    drop(primary);
    replica.promote().unwrap();

    let after = PostgresLockStore::connect(&replica_url, config())
        .await
        .unwrap();
    let latest_expiry = leases.iter().map(|l| l.expires_at).max().unwrap();
    let mut until = None;
    for lease in &leases {
        match after
            .try_acquire(&LockRequest::new(&lease.key, "intruder", ttl))
            .await
        {
            Err(LockError::Recovering { until: at, .. }) => {
                assert!(at >= latest_expiry, "the wait covers every old lease");
                until = Some(at);
            }
            answer => panic!(
                "{}: no grant on the promoted replica yet: {answer:?}",
                lease.key
            ),
        }
    }
    for lease in &leases[..5] {
        let held = after.inspect(&lease.key).await.unwrap().expect("streamed");
        assert_eq!((held.owner.as_str(), held.fence), ("holder", lease.fence));
    }
    if let Ok(left) = until.unwrap().duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(left + Duration::from_millis(50)).await;
    }
    for lease in &leases {
        let taken = after
            .take_over(&LockRequest::new(&lease.key, "intruder", ttl))
            .await
            .unwrap();
        assert!(
            taken.fence > lease.fence,
            "{}: fences go forward",
            lease.key
        );
    }
}
