//! The etcd backend on a private 3-member cluster (`servers::PrivateEtcdCluster`: Debian's
//! `etcd` on free loopback ports): the whole conformance suite, two store instances (as two
//! processes have) seeing each other's changes at once, and the leader killed while leases
//! are held, trial after trial: no second holder, every fence forward, every holder keeps
//! its lease through the election, and a dead holder's lock frees after its TTL.

#![cfg(all(feature = "etcd", feature = "conformance"))]

use std::sync::Arc;
use std::time::{Duration, Instant};

use conc_lock_store::conformance;
use conc_lock_store::servers::{self, PrivateEtcdCluster};
use conc_lock_store::{EtcdConfig, EtcdLockStore, LockError, LockRequest, LockStore};

fn config(prefix: &str) -> EtcdConfig {
    EtcdConfig::default()
        .with_prefix(prefix)
        .with_op_timeout(Duration::from_secs(2))
        .with_connect_timeout(Duration::from_secs(5))
}

async fn connect(url: &str, prefix: &str) -> Arc<dyn LockStore> {
    Arc::new(EtcdLockStore::connect(url, config(prefix)).await.unwrap())
}

/// Retries `op` through the transient errors of a leader election, for at most 30 s.
async fn through_election<T, F: AsyncFn() -> Result<T, LockError>>(what: &str, op: F) -> T {
    servers::through_transient_errors(Duration::from_secs(30), op)
        .await
        .unwrap_or_else(|error| panic!("{what}: {error}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_store_conforms() {
    let Some(cluster) = PrivateEtcdCluster::start(3).unwrap() else {
        return;
    };
    let store = connect(&cluster.url(), "conformance/").await;
    conformance::run_all(store.clone(), "etcd").await;
    // Two instances, each with its own watch, one of them on a single member.
    let other = connect(&cluster.member_url(2), "conformance/").await;
    conformance::watch_reports_changes_made_right_after_it(&store, &other, "etcd").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_urls_and_a_dead_cluster_are_clear_errors() {
    for bad in [
        "etcd://",
        "etcd://h:x",
        "etcd://h:1/path",
        "etcd://h:1?sslrootcert=/ca",
    ] {
        let error = EtcdLockStore::connect(bad, EtcdConfig::default())
            .await
            .unwrap_err();
        assert!(
            matches!(error, LockError::InvalidUrl { .. }),
            "{bad}: {error}"
        );
    }
    let port = conc_lock_store::servers::free_port().unwrap();
    let error = EtcdLockStore::connect(
        &format!("etcd://127.0.0.1:{port}"),
        EtcdConfig::default().with_connect_timeout(Duration::from_secs(2)),
    )
    .await
    .unwrap_err();
    assert!(matches!(error, LockError::Connect { .. }), "{error}");
    assert!(error.is_transient(), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_while_leases_are_held() {
    let Some(mut cluster) = PrivateEtcdCluster::start(3).unwrap() else {
        return;
    };
    let holder = connect(&cluster.url(), "failover/").await;
    let contender = connect(&cluster.url(), "failover/").await;
    const KEYS: usize = 20;
    for trial in 0..3 {
        let leader = cluster.wait_until_healthy(Duration::from_secs(30)).unwrap();
        let names: Vec<String> = (0..KEYS).map(|k| format!("t{trial}-{k}")).collect();
        let grants = names.iter().map(|key| {
            let holder = holder.clone();
            async move {
                holder
                    .try_acquire(&LockRequest::new(
                        key.as_str(),
                        "holder",
                        Duration::from_secs(10),
                    ))
                    .await
            }
        });
        let leases: Vec<_> = futures_util::future::join_all(grants)
            .await
            .into_iter()
            .map(|outcome| outcome.unwrap().expect("fresh keys are free"))
            .collect();
        cluster.kill(leader);
        let started = Instant::now();
        // No second holder: every key stays held through the election.
        let mut second_holders = 0;
        for key in &names {
            let request = LockRequest::new(key.as_str(), "contender", Duration::from_secs(10));
            let got = through_election("contender's acquire", async || {
                contender.try_acquire(&request).await
            })
            .await;
            if got.is_some() {
                second_holders += 1;
            }
        }
        // Every holder keeps its lease, and hands the key over with the fence forward.
        for lease in &leases {
            let renewed = through_election("renew after the election", async || {
                holder.renew(lease, lease.ttl).await
            })
            .await;
            assert!(holder.release(&renewed).await.unwrap());
            let next = contender
                .try_acquire(&LockRequest::new(
                    lease.key.as_str(),
                    "contender",
                    Duration::from_secs(10),
                ))
                .await
                .unwrap()
                .expect("released, so free");
            assert!(next.fence > lease.fence, "{}: fences go forward", lease.key);
            assert!(contender.release(&next).await.unwrap());
        }
        println!(
            "etcd leader killed, trial {trial}: {KEYS} leases held, {second_holders} second holders, all renewed after the election ({:.1} s to the last renewal)",
            started.elapsed().as_secs_f64()
        );
        assert_eq!(second_holders, 0);
        cluster.restart(leader).unwrap();
    }

    // A holder that dies (its store dropped, nothing renews): the lock frees after the TTL,
    // give or take etcd's rounding to whole seconds and a leader's extension.
    cluster.wait_until_healthy(Duration::from_secs(30)).unwrap();
    let dying = connect(&cluster.url(), "failover/").await;
    let ttl = Duration::from_secs(2);
    let lease = dying
        .try_acquire(&LockRequest::new("dead", "dying", ttl))
        .await
        .unwrap()
        .expect("free");
    drop(dying);
    let started = Instant::now();
    let next = contender
        .acquire(
            &LockRequest::new("dead", "contender", ttl),
            Duration::from_secs(15),
        )
        .await
        .unwrap();
    let waited = started.elapsed();
    assert!(next.fence > lease.fence);
    assert!(
        waited >= ttl - Duration::from_millis(100),
        "freed after {waited:?}, before its TTL"
    );
    println!("a dead holder's {ttl:?} lock freed after {waited:?}");
}

/// The member a holder talks to (the leader: the worst case, an election on top) is
/// paused (SIGSTOP) while it serves the holder's keep-alives: the holder's guard reports the
/// lease lost before a contender on the other members gets the lock, and the contender's
/// fence is above the holder's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_paused_under_its_holder() {
    let Some(cluster) = PrivateEtcdCluster::start(3).unwrap() else {
        return;
    };
    for round in 0..2 {
        let paused = cluster.wait_until_healthy(Duration::from_secs(30)).unwrap();
        let other = (paused + 1) % 3;
        let holder = connect(&cluster.member_url(paused), "paused/").await;
        let contender = connect(&cluster.member_url(other), "paused/").await;
        let key = format!("paused-{round}");
        let ttl = Duration::from_secs(2);
        let guard = conc_lock_store::LockGuard::acquire(
            holder.clone(),
            LockRequest::new(key.as_str(), "holder", ttl),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        let pid = cluster.pid(paused).expect("the member runs");
        servers::signal(pid, "-STOP").unwrap();
        let stopped = Instant::now();
        let lost = tokio::spawn({
            let signal = guard.lost();
            async move {
                signal.aborted().await;
                Instant::now()
            }
        });
        let request = LockRequest::new(key.as_str(), "contender", ttl);
        let taken = through_election("the contender's acquire", async || {
            contender.acquire(&request, Duration::from_secs(20)).await
        })
        .await;
        let got = Instant::now();
        servers::signal(pid, "-CONT").unwrap();
        let lost = tokio::time::timeout(Duration::from_secs(1), lost)
            .await
            .expect("the holder's guard reported the loss")
            .unwrap();
        println!(
            "etcd member paused under its holder, round {round}: the holder knew it lost the lease {:?} after the pause, the contender got the lock {:?} after it",
            lost - stopped,
            got - stopped
        );
        assert!(
            lost < got,
            "the holder still believed it held the lock when the contender got it"
        );
        assert!(taken.fence > guard.fence());
        assert!(contender.release(&taken).await.unwrap());
        drop(guard);
        cluster.wait_until_healthy(Duration::from_secs(30)).unwrap();
    }
}
