//! Replica acknowledgement on a Redis primary with a replica of the test's own (two
//! `servers::PrivateRedis`, the second started with `--replicaof`): with `min_replicas`
//! set, every lock write waits (`WAIT`) for the replica; with the replica paused (SIGSTOP),
//! an acquire fails with `LockError::NotReplicated` and leaves the key free.

#![cfg(all(feature = "redis", feature = "conformance"))]

use std::sync::Arc;
use std::time::{Duration, Instant};

use conc_lock_store::servers::{self, PrivateRedis};
use conc_lock_store::{
    LockError, LockRequest, LockStore, RedisConfig, RedisLockStore, conformance,
};

/// Waits until the primary at `url` reports `replicas` replicas online (at most 20 s).
async fn replicas_online(url: &str, replicas: usize) {
    let client = redis::Client::open(url).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let started = Instant::now();
    loop {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut connection)
            .await
            .unwrap();
        let online = info
            .lines()
            .filter(|line| line.starts_with("slave") && line.contains("state=online"))
            .count();
        if online >= replicas {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the replica did not come online:\n{info}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_writes_wait_for_a_replica_and_an_unreplicated_acquire_is_undone() {
    let Some(primary) = PrivateRedis::start(&[]).unwrap() else {
        return;
    };
    let port = primary.url().rsplit(':').next().unwrap().to_owned();
    let Some(replica) = PrivateRedis::start(&["--replicaof", "127.0.0.1", &port]).unwrap() else {
        return;
    };
    replicas_online(&primary.url(), 1).await;
    let config = || {
        RedisConfig::default()
            .with_prefix("replicated:")
            .with_replica_ack(1, Duration::from_secs(2))
    };
    let acked: Arc<dyn LockStore> = Arc::new(
        RedisLockStore::connect(&primary.url(), config())
            .await
            .unwrap(),
    );
    // Every property holds with every write acknowledged by the replica.
    conformance::run_all(acked.clone(), "acked").await;

    // The replica stops answering: an acquire is not acknowledged, so it is undone.
    let pid = replica.pid().expect("the replica's pid");
    servers::signal(pid, "-STOP").unwrap();
    let request = LockRequest::new("k", "holder", Duration::from_secs(30));
    let error = acked.try_acquire(&request).await.unwrap_err();
    servers::signal(pid, "-CONT").unwrap();
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
    assert!(error.is_transient());
    let plain = RedisLockStore::connect(
        &primary.url(),
        RedisConfig::default().with_prefix("replicated:"),
    )
    .await
    .unwrap();
    assert!(
        plain.inspect("k").await.unwrap().is_none(),
        "an unacknowledged acquire leaves the key free"
    );

    // Back online: acquires are acknowledged again.
    replicas_online(&primary.url(), 1).await;
    let lease = acked.try_acquire(&request).await.unwrap().expect("free");
    assert!(acked.release(&lease).await.unwrap());

    // What the acknowledgement costs, printed for the docs (no timing is asserted).
    for (name, store) in [("without", &plain as &dyn LockStore), ("with", &*acked)] {
        let started = Instant::now();
        for n in 0..200 {
            let request = LockRequest::new(format!("cost-{n}"), "o", Duration::from_secs(5));
            let lease = store.try_acquire(&request).await.unwrap().expect("free");
            store.release(&lease).await.unwrap();
        }
        println!(
            "acquire + release {name} a replica's acknowledgement: {:.0} µs a pair",
            started.elapsed().as_secs_f64() * 1e6 / 200.0
        );
    }
}
