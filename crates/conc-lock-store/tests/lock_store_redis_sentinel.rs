//! The Redis backend through Redis Sentinel, on servers of the test's own
//! (`servers::PrivateRedisSentinel`: a primary, two replicas and three Sentinels on free
//! ports): the whole conformance suite through a `redis+sentinel://` URL, then the primary
//! killed (SIGKILL) while leases are held, trial after trial, with and without the replica
//! acknowledgement (`min_replicas=1`):
//!
//! - the store, and its subscription, reach the new primary by themselves;
//! - with the acknowledgement no second holder is ever admitted, and every lease granted
//!   before the failover is renewed after it;
//! - without it, leases the replicas had not received are lost in the failover (shown by
//!   pausing the replicas, SIGSTOP, and cutting their links while the leases are granted):
//!   a second holder is admitted, as the crate's documentation says;
//! - fences only go forward in every trial.
//!
//! The counts are printed (`cargo test -- --nocapture`) and written in docs/PERFORMANCE.md.

#![cfg(all(feature = "redis", feature = "conformance"))]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use conc_lock_store::conformance;
use conc_lock_store::servers::{self, PrivateRedisSentinel};
use conc_lock_store::{Lease, LockError, LockRequest, LockStore, RedisConfig, RedisLockStore};

const TTL: Duration = Duration::from_secs(30);

fn config(acknowledged: bool) -> RedisConfig {
    let config = RedisConfig::default()
        .with_prefix("sentinel:")
        .with_op_timeout(Duration::from_secs(2))
        .with_connect_timeout(Duration::from_secs(2));
    if acknowledged {
        config.with_replica_ack(1, Duration::from_millis(500))
    } else {
        config
    }
}

async fn connect(topology: &PrivateRedisSentinel, acknowledged: bool) -> Arc<dyn LockStore> {
    Arc::new(
        RedisLockStore::connect(&topology.url(), config(acknowledged))
            .await
            .unwrap(),
    )
}

/// Retries `op` through the transient errors of a failover, for at most 30 s.
async fn through_failover<T, F: AsyncFn() -> Result<T, LockError>>(what: &str, op: F) -> T {
    servers::through_transient_errors(Duration::from_secs(30), op)
        .await
        .unwrap_or_else(|error| panic!("{what}: {error}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sentinel_store_conforms() {
    let Some(topology) = PrivateRedisSentinel::start(2, 3).unwrap() else {
        return;
    };
    let store = connect(&topology, true).await;
    conformance::run_all(store.clone(), "redis-sentinel").await;
    let other = connect(&topology, true).await;
    conformance::watch_reports_changes_made_right_after_it(&store, &other, "redis-sentinel").await;
}

/// What happens to the primary.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// SIGKILL: a crash.
    Kill,
    /// SIGSTOP until the failover is over: a stalled process, which comes back (SIGCONT)
    /// and is made a replica.
    Pause,
}

/// What one trial saw.
#[derive(Debug, Default)]
struct Trial {
    granted: usize,
    refused: usize,
    second_holders: usize,
    renewed: usize,
}

/// Grants `keys` leases through a holder (with the replicas paused while it does, if
/// `lagging`), kills the primary at once, and after the failover has a contender try every
/// key; then the holder renews what it still holds and hands each key over, so every key's
/// fence is seen to go forward.
async fn trial(
    topology: &mut PrivateRedisSentinel,
    round: usize,
    (acknowledged, lagging, fault): (bool, bool, Fault),
    keys: usize,
) -> Trial {
    let holder = connect(topology, acknowledged).await;
    let contender = connect(topology, acknowledged).await;
    let old = topology.primary().unwrap();
    let replicas: Vec<u32> = (0..topology.node_urls().len())
        .filter(|&i| i != old)
        .filter_map(|i| topology.pid(i))
        .collect();
    if lagging {
        // The replicas stop, and the primary drops its links to them: what it writes from
        // now on stays on the primary (data already sent would still reach a paused
        // replica, from its socket buffer).
        for pid in &replicas {
            servers::signal(*pid, "-STOP").unwrap();
        }
        let client = redis::Client::open(topology.node_urls()[old].as_str()).unwrap();
        let mut primary = client.get_multiplexed_async_connection().await.unwrap();
        let _: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("replica")
            .query_async(&mut primary)
            .await
            .unwrap();
    }
    let names: Vec<String> = (0..keys).map(|k| format!("trial{round}-{k}")).collect();
    let grants = names.iter().map(|key| {
        let holder = holder.clone();
        async move {
            holder
                .try_acquire(&LockRequest::new(key.as_str(), "holder", TTL))
                .await
        }
    });
    let outcomes = futures_util::future::join_all(grants).await;
    let old_pid = topology.pid(old).expect("the primary runs");
    match fault {
        Fault::Kill => topology.kill(old),
        Fault::Pause => servers::signal(old_pid, "-STOP").unwrap(),
    }
    if lagging {
        for pid in &replicas {
            servers::signal(*pid, "-CONT").unwrap();
        }
    }
    let mut seen = Trial::default();
    let mut held: Vec<Option<Lease>> = Vec::new();
    for outcome in outcomes {
        match outcome {
            Ok(Some(lease)) => {
                seen.granted += 1;
                held.push(Some(lease));
            }
            Ok(None) => panic!("a fresh key was not free"),
            Err(LockError::NotReplicated { .. }) if acknowledged => {
                seen.refused += 1;
                held.push(None);
            }
            Err(error) => panic!("acquire before the failover: {error}"),
        }
    }
    topology
        .wait_for_failover(old, Duration::from_secs(30))
        .unwrap();

    // The contender asks for every key on the new primary.
    let mut taken = Vec::new();
    for (key, lease) in names.iter().zip(&held) {
        let request = LockRequest::new(key.as_str(), "contender", TTL);
        let got = through_failover("contender's acquire", async || {
            contender.try_acquire(&request).await
        })
        .await;
        if let (Some(got), Some(lease)) = (&got, lease) {
            // The holder's lease has not run out by its own clock: two holders.
            if lease.expires_at > SystemTime::now() {
                seen.second_holders += 1;
            }
            assert!(
                got.fence > lease.fence,
                "{key}: fence {} after {} through the failover",
                got.fence,
                lease.fence
            );
        }
        taken.push(got);
    }

    // The holder keeps every lease the failover kept, then hands each key over.
    for ((key, lease), got) in names.iter().zip(&held).zip(taken) {
        let Some(lease) = lease else {
            if let Some(got) = got {
                contender.release(&got).await.unwrap();
            }
            continue;
        };
        if let Some(got) = got {
            contender.release(&got).await.unwrap();
            continue;
        }
        let renewed = through_failover("renew after the failover", async || {
            holder.renew(lease, TTL).await
        })
        .await;
        seen.renewed += 1;
        assert!(holder.release(&renewed).await.unwrap(), "{key}: release");
        let next = contender
            .try_acquire(&LockRequest::new(key.as_str(), "contender", TTL))
            .await
            .unwrap()
            .expect("released, so free");
        assert!(next.fence > lease.fence, "{key}: fences go forward");
        contender.release(&next).await.unwrap();
    }

    // The subscription followed the primary: a waiter learns of a release at once (well
    // before the lease's 30 s), not at its expiry.
    let key = format!("trial{round}-wait");
    let lease = through_failover("acquire after the failover", async || {
        holder
            .try_acquire(&LockRequest::new(key.as_str(), "holder", TTL))
            .await
    })
    .await
    .expect("free");
    let (waiting, mut told) = tokio::sync::mpsc::channel(1);
    let waiter = {
        let contender = contender.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let request = LockRequest::new(key.as_str(), "contender", TTL);
            loop {
                let mut watch = contender.watch(&key).expect("redis watches");
                contender.announce_wait(&key, TTL).await.unwrap();
                match contender.try_acquire(&request).await {
                    Ok(Some(lease)) => return lease,
                    Ok(None) => {}
                    // The other replica may still be syncing with the new primary.
                    Err(error) if error.is_transient() => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    Err(error) => panic!("the waiter's acquire: {error}"),
                }
                let _ = waiting.try_send(());
                watch.changed().await;
            }
        })
    };
    // Released once the waiter has found the key held and waits.
    told.recv().await.expect("the waiter waits");
    assert!(holder.release(&lease).await.unwrap());
    let next = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter was told of the release on the new primary")
        .unwrap();
    contender.release(&next).await.unwrap();

    match fault {
        Fault::Kill => topology.restart_as_replica(old).unwrap(),
        // Back from its pause, the old primary is made a replica by the Sentinels.
        Fault::Pause => servers::signal(old_pid, "-CONT").unwrap(),
    }
    topology.wait_until_ok(Duration::from_secs(30)).unwrap();
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failovers_with_and_without_the_replica_acknowledgement() {
    let Some(mut topology) = PrivateRedisSentinel::start(2, 3).unwrap() else {
        return;
    };
    let mut round = 0;
    // (acknowledged, replicas lagging, what happens to the primary, trials, keys)
    let plan = [
        (true, false, Fault::Kill, 3, 20),
        (false, false, Fault::Kill, 2, 20),
        (true, false, Fault::Pause, 1, 20),
        (true, true, Fault::Kill, 1, 4),
        (false, true, Fault::Kill, 1, 4),
    ];
    for (acknowledged, lagging, fault, trials, keys) in plan {
        for _ in 0..trials {
            round += 1;
            let started = Instant::now();
            let seen = trial(&mut topology, round, (acknowledged, lagging, fault), keys).await;
            println!(
                "sentinel failover {round}: primary {fault:?}, {} acknowledgement, replicas {}: {} granted, {} refused, {} second holders, {} renewed after it; fences forward ({:.1} s)",
                if acknowledged { "with" } else { "without" },
                if lagging { "cut off" } else { "in sync" },
                seen.granted,
                seen.refused,
                seen.second_holders,
                seen.renewed,
                started.elapsed().as_secs_f64(),
            );
            if acknowledged {
                assert_eq!(seen.second_holders, 0, "{seen:?}");
                assert_eq!(seen.renewed, seen.granted, "{seen:?}");
            }
            if lagging && acknowledged {
                assert_eq!(seen.refused, keys, "no replica could acknowledge: {seen:?}");
            }
            if lagging && !acknowledged {
                // The replicas never saw these leases: the failover forgot every one.
                assert_eq!(seen.second_holders, keys, "{seen:?}");
            }
        }
    }
}
