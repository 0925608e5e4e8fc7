//! The Redis backend on a Redis Cluster of the test's own (`servers::PrivateRedisCluster`:
//! `redis-server --cluster-enabled yes` on free ports, joined by `redis-cli --cluster
//! create`): the whole conformance suite, and the loss of a master.

#![cfg(all(feature = "redis", feature = "conformance"))]

use std::sync::Arc;
use std::time::Duration;

use conc_lock_store::conformance::{self, FencedFile};
use conc_lock_store::servers::PrivateRedisCluster;
use conc_lock_store::{LockGuard, LockRequest, LockStore, RedisConfig, RedisLockStore};

fn config() -> RedisConfig {
    RedisConfig::default()
        .with_prefix("cluster:")
        .with_op_timeout(Duration::from_secs(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_store_conforms() {
    let Some(cluster) = PrivateRedisCluster::start(3, 0).unwrap() else {
        return;
    };
    let store = RedisLockStore::connect(&cluster.url(), config())
        .await
        .unwrap();
    assert!(store.is_cluster());
    conformance::run_all(Arc::new(store), "redis-cluster").await;
    // Two instances, as two processes have, each with its own subscription.
    let watching: Arc<dyn LockStore> = Arc::new(
        RedisLockStore::connect(&cluster.url(), config())
            .await
            .unwrap(),
    );
    let other: Arc<dyn LockStore> = Arc::new(
        RedisLockStore::connect(&cluster.url(), config())
            .await
            .unwrap(),
    );
    conformance::watch_reports_changes_made_right_after_it(&watching, &other, "redis-cluster")
        .await;
}

/// Keys spread over every master: `list` walks them all, in key order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_cleanup_walk_every_master() {
    let Some(cluster) = PrivateRedisCluster::start(3, 0).unwrap() else {
        return;
    };
    let store = RedisLockStore::connect(&cluster.url(), config())
        .await
        .unwrap();
    let mut masters = std::collections::HashSet::new();
    for n in 0..40 {
        let key = format!("spread:{n:02}");
        masters.insert(cluster.master_of(&key).unwrap());
        store
            .try_acquire(&LockRequest::new(&key, "o", Duration::from_secs(30)))
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(masters.len(), 3, "the keys fall on every master");
    let listed = store.list("spread:", 1000).await.unwrap();
    let keys: Vec<String> = listed.into_iter().map(|info| info.key).collect();
    let expected: Vec<String> = (0..40).map(|n| format!("spread:{n:02}")).collect();
    assert_eq!(keys, expected);
    assert_eq!(store.list("spread:", 7).await.unwrap().len(), 7);
    for n in 0..10 {
        let request = LockRequest::new(format!("short:{n}"), "o", Duration::from_millis(50));
        store.try_acquire(&request).await.unwrap().unwrap();
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(store.cleanup_expired().await.unwrap(), 10);
    assert_eq!(store.cleanup_expired().await.unwrap(), 0);
}

/// A master dies: its replica takes over; leases on the other masters never notice; every
/// key can be locked again, with fences that only went forward, and a holder fenced off by
/// a take-over after the failover cannot write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_fails_over_and_fences_go_forward() {
    let Some(mut cluster) = PrivateRedisCluster::start(3, 1).unwrap() else {
        return;
    };
    let url = cluster.url();
    let store: Arc<dyn LockStore> =
        Arc::new(RedisLockStore::connect(&url, config()).await.unwrap());
    let other: Arc<dyn LockStore> =
        Arc::new(RedisLockStore::connect(&url, config()).await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let keys: Vec<String> = (0..24).map(|n| format!("conv:{n}")).collect();
    let victim = cluster.master_of(&keys[0]).unwrap();
    let on_victim: Vec<&String> = keys
        .iter()
        .filter(|k| cluster.master_of(k).unwrap() == victim)
        .collect();
    let elsewhere: Vec<&String> = keys
        .iter()
        .filter(|k| cluster.master_of(k).unwrap() != victim)
        .collect();
    assert!(!elsewhere.is_empty());
    // While a master is down and being replaced, the cluster client can fail requests to
    // every node for a second or two: a lease must outlast that (the generation lock's
    // default is 30 s), or healthy holders lapse.
    let ttl = Duration::from_secs(10);
    let mut before = std::collections::HashMap::new();
    let mut guards = Vec::new();
    for key in &keys {
        let guard = LockGuard::acquire(
            store.clone(),
            LockRequest::new(key.as_str(), "holder", ttl),
            Duration::from_secs(2),
        )
        .await
        .unwrap();
        FencedFile::new(dir.path().join(key))
            .write(guard.fence())
            .unwrap();
        before.insert(key.clone(), guard.fence());
        guards.push(guard);
    }
    cluster.kill(victim);
    // The other masters go on: their holders renew, and nobody else gets in.
    for key in &elsewhere {
        let intruder = LockRequest::new(key.as_str(), "intruder", ttl);
        assert!(other.try_acquire(&intruder).await.unwrap().is_none());
    }
    cluster.wait_until_ok(Duration::from_secs(30)).unwrap();
    // After the failover every key is served again; a take-over fences off the holder.
    for key in &on_victim {
        let request = LockRequest::new(key.as_str(), "operator", ttl);
        let mut taken = None;
        let mut last_error = None;
        for _ in 0..200 {
            match other.take_over(&request).await {
                Ok(lease) => {
                    taken = Some(lease);
                    break;
                }
                Err(e) => {
                    last_error = Some(e);
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
            }
        }
        let taken = taken.unwrap_or_else(|| {
            panic!("{key} is not served again after the failover: {last_error:?}")
        });
        assert!(
            taken.fence > before[*key],
            "fence {} after {}",
            taken.fence,
            before[*key]
        );
        let resource = FencedFile::new(dir.path().join(key));
        resource.write(taken.fence).unwrap();
        assert!(
            resource.write(before[*key]).is_err(),
            "the old holder is fenced off"
        );
        assert!(other.release(&taken).await.unwrap());
    }
    for (key, guard) in keys.iter().zip(&guards) {
        if on_victim.contains(&key) {
            tokio::time::timeout(Duration::from_secs(5), guard.lost().aborted())
                .await
                .expect("the holder fenced off by the take-over learns of it");
        } else {
            let lost = guard.lost();
            assert!(
                !lost.is_aborted(),
                "{key} was never touched, yet: {:?}",
                lost.reason()
            );
        }
    }
    // The killed node comes back (empty) as a replica; the cluster stays whole.
    cluster.restart(victim).unwrap();
    cluster.wait_until_ok(Duration::from_secs(30)).unwrap();
    for key in &keys {
        let lease = loop {
            if let Some(lease) = other
                .try_acquire(&LockRequest::new(key.as_str(), "after", ttl))
                .await
                .unwrap()
            {
                break lease;
            }
            if !on_victim.contains(&key) {
                // Still held by its first holder: take it, fenced.
                break other
                    .take_over(&LockRequest::new(key.as_str(), "after", ttl))
                    .await
                    .unwrap();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(lease.fence > before[key]);
    }
}

/// The replica acknowledgement on a cluster with a replica per master: every property holds
/// with every lock write acknowledged (`WAIT`, routed to the key's master); with the
/// replicas gone, an acquire fails with `NotReplicated` and leaves the key free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_acknowledgement_on_a_cluster_with_replicas() {
    use conc_lock_store::LockError;
    let Some(mut cluster) = PrivateRedisCluster::start(3, 1).unwrap() else {
        return;
    };
    let acked = config().with_replica_ack(1, Duration::from_secs(1));
    let store: Arc<dyn LockStore> = Arc::new(
        RedisLockStore::connect(&cluster.url(), acked.clone())
            .await
            .unwrap(),
    );
    conformance::run_all(store.clone(), "cluster-acked").await;

    // Stop every replica (CLUSTER NODES names them `slave`).
    let urls = cluster.node_urls();
    let client = redis::Client::open(urls[0].as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut connection)
        .await
        .unwrap();
    let replicas: Vec<usize> = nodes
        .lines()
        .filter(|line| {
            line.split_whitespace()
                .nth(2)
                .is_some_and(|f| f.contains("slave"))
        })
        .filter_map(|line| {
            let port = line.split_whitespace().nth(1)?.split(['@', ':']).nth(1)?;
            urls.iter()
                .position(|url| url.ends_with(&format!(":{port}")))
        })
        .collect();
    assert_eq!(replicas.len(), 3, "a replica per master:\n{nodes}");
    for index in replicas {
        cluster.kill(index);
    }
    let request = LockRequest::new("unreplicated", "holder", Duration::from_secs(30));
    let error = store.try_acquire(&request).await.unwrap_err();
    assert!(
        matches!(
            error,
            LockError::NotReplicated {
                acknowledged: 0,
                required: 1,
                ..
            }
        ),
        "{error}"
    );
    let plain = RedisLockStore::connect(&cluster.url(), config())
        .await
        .unwrap();
    assert!(
        plain.inspect("unreplicated").await.unwrap().is_none(),
        "an unacknowledged acquire leaves the key free"
    );
}
