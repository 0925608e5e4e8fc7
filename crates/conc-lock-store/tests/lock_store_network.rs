//! The network between a client and its store, faulted: one holder reaches its store
//! through a [`FaultProxy`], another goes straight to the server, and every scenario
//! checks, per key, that the intervals in which a holder believed it held the lock (from
//! the moment its acquire returned to the moment it saw the loss or began its release,
//! on this process's one monotonic clock) never overlap, and that fences rise with them.
//!
//! Scenarios, on PostgreSQL (direct and through PgBouncer), Redis (one server, through
//! Sentinel, and a Cluster of three masters) and etcd (three members):
//! - a late reply: the answer to an acquire is held past the lease's TTL and delivered
//!   after another holder took the key: it is never handed out;
//! - a black hole, and replies dropped: an acquire with wait W returns within about W, not
//!   the request timeout, and after the heal the grant its request made is released at
//!   once (the key is free within a round trip, not a TTL);
//! - black-holed renewals: the holder sees its loss before the other holder gets the key;
//!   after the heal its renewal says `Lost` and its release `false`;
//! - connections reset every 500 ms, and 150 ms each way: no loss.

#![cfg(feature = "conformance")]

use std::sync::Arc;
use std::time::Duration;

use conc_lock_store::proxy::{Fault, FaultProxy};
use conc_lock_store::{LockError, LockGuard, LockRequest, LockStore};
use tokio::time::Instant;

/// One holder's belief: key, who, from, until, fence.
type Interval = (String, &'static str, Instant, Instant, u64);

/// The intervals in which each holder believed it held each key.
#[derive(Default)]
struct Intervals {
    seen: parking_lot::Mutex<Vec<Interval>>,
}

impl Intervals {
    fn record(&self, key: &str, who: &'static str, from: Instant, to: Instant, fence: u64) {
        self.seen
            .lock()
            .push((key.to_owned(), who, from, to, fence));
    }

    /// No two intervals on one key overlap, and fences rise with them.
    fn check(&self) {
        let mut seen = self.seen.lock().clone();
        seen.sort_by(|a, b| (&a.0, a.2).cmp(&(&b.0, b.2)));
        for pair in seen.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            if a.0 != b.0 {
                continue;
            }
            assert!(
                a.3 <= b.2,
                "on `{}`, {} believed it held the lock (fence {}) until {:?} after {} took it (fence {})",
                a.0,
                a.1,
                a.4,
                a.3.duration_since(b.2),
                b.1,
                b.4
            );
            assert!(a.4 < b.4, "on `{}` fences went {} then {}", a.0, a.4, b.4);
        }
    }
}

/// A guard's interval ends when it sees its loss or its release begins.
async fn hold_until_lost_or(guard: &LockGuard, limit: Duration) -> Option<Instant> {
    let lost = guard.lost();
    tokio::select! {
        _ = lost.aborted() => Some(Instant::now()),
        () = tokio::time::sleep(limit) => None,
    }
}

struct Setup {
    name: &'static str,
    /// A store straight to the server.
    direct: Arc<dyn LockStore>,
    /// A store through the proxy.
    proxied: Arc<dyn LockStore>,
    /// The proxies in front of the server (one per node of a cluster).
    proxies: Vec<FaultProxy>,
    /// An acquire takes the key in its first request (etcd first asks for a lease, and
    /// waits for the answer).
    one_request: bool,
}

impl Setup {
    /// Puts `fault` between the proxied store and every node.
    fn set(&self, fault: Fault) {
        for proxy in &self.proxies {
            proxy.set(fault);
        }
    }

    /// Resets every connection of the proxied store.
    fn reset(&self) {
        for proxy in &self.proxies {
            proxy.reset();
        }
    }
}

fn key(setup: &Setup, what: &str) -> String {
    format!("net:{}:{what}:{}", setup.name, std::process::id())
}

async fn late_reply(setup: &Setup, intervals: &Intervals) {
    let key = key(setup, "late");
    let ttl = Duration::from_secs(2);
    // A connection is open, and the acquire's script known to the server, before the
    // replies are held (a new connection could not finish its handshake, and a script's
    // first run waits for the answer that it is unknown: either way the acquire would
    // never take the key).
    let warm = setup
        .proxied
        .try_acquire(&LockRequest::new(&key, "a", ttl))
        .await
        .unwrap()
        .expect("the key is free");
    assert!(setup.proxied.release(&warm).await.unwrap());
    setup.set(Fault::HoldReplies);
    let proxied = setup.proxied.clone();
    let request = LockRequest::new(&key, "a", ttl);
    let a = tokio::spawn(async move {
        let result = LockGuard::acquire(proxied, request, Duration::from_secs(6)).await;
        (result, Instant::now())
    });
    // The server granted A's request; its answer waits in the proxy. B takes the key once
    // A's lease has run out.
    // A's request reached the server and took the key (its answer is what is held).
    let asked = Instant::now();
    while setup.one_request && !setup.direct.is_locked(&key).await.unwrap() {
        assert!(
            asked.elapsed() < ttl,
            "{}: A's request never took the key",
            setup.name
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let b = LockGuard::acquire(
        setup.direct.clone(),
        LockRequest::new(&key, "b", Duration::from_secs(20)),
        Duration::from_secs(10),
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{}: B takes the key after A's lease ran out: {e}",
            setup.name
        )
    });
    let b_from = Instant::now();
    setup.set(Fault::Pass);
    let (a_result, a_at) = a.await.unwrap();
    match a_result {
        Ok(guard) => {
            let until = hold_until_lost_or(&guard, Duration::from_millis(10))
                .await
                .unwrap_or_else(Instant::now);
            intervals.record(&key, "A (late reply)", a_at, until, guard.fence());
            panic!(
                "{}: an acquire answered after its lease ran out returned a lease",
                setup.name
            );
        }
        Err(error) => {
            println!(
                "figures: {}: late reply: the acquire returned `{error}` {:?} after the other holder took the key",
                setup.name,
                a_at.duration_since(b_from)
            );
            assert!(
                matches!(
                    error,
                    LockError::LateReply { .. } | LockError::Timeout { .. }
                ),
                "{}: {error}",
                setup.name
            );
        }
    }
    assert!(b.is_valid(), "{}: B keeps the key", setup.name);
    intervals.record(&key, "B", b_from, Instant::now(), b.fence());
    assert!(
        b.release().await.unwrap(),
        "{}: B's lease was untouched",
        setup.name
    );
}

/// `fault` is [`Fault::BlackHole`] (the request waits in the network) or
/// [`Fault::DropReplies`] (the request runs, its answer is lost).
async fn cut_off(setup: &Setup, fault: Fault) {
    let what = if fault == Fault::BlackHole {
        "black hole"
    } else {
        "replies dropped"
    };
    let key = key(setup, &what.replace(' ', "-"));
    setup.set(fault);
    let wait = Duration::from_secs(1);
    let started = Instant::now();
    let result = setup
        .proxied
        .acquire(&LockRequest::new(&key, "a", Duration::from_secs(30)), wait)
        .await;
    let took = started.elapsed();
    assert!(result.is_err(), "{}: {what}: the acquire fails", setup.name);
    // The request timeout is 5 s: an acquire bounded by its own wait returns long before.
    assert!(
        took < Duration::from_secs(3),
        "{}: {what}: an acquire with a 1 s wait took {took:?}",
        setup.name
    );
    // The request took the key for nobody (when the reply was dropped), or the heal
    // delivers it and it may (a black hole); the call that gave up releases it.
    setup.set(Fault::Pass);
    let healed = Instant::now();
    let b = setup
        .direct
        .acquire(
            &LockRequest::new(&key, "b", Duration::from_secs(30)),
            Duration::from_secs(8),
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{}: {what}: the key is free soon after the heal, not after the 30 s TTL: {e}",
                setup.name
            )
        });
    println!(
        "figures: {}: {what}: an acquire with a 1 s wait returned after {took:?}; after the heal the key was taken {:?} later (TTL 30 s)",
        setup.name,
        healed.elapsed()
    );
    assert!(setup.direct.release(&b).await.unwrap());
}

async fn black_holed_renewals(setup: &Setup, intervals: &Intervals) {
    let key = key(setup, "renewals");
    let ttl = Duration::from_secs(2);
    let a = LockGuard::acquire(
        setup.proxied.clone(),
        LockRequest::new(&key, "a", ttl),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let a_from = Instant::now();
    let lease = a.lease();
    setup.set(Fault::BlackHole);
    let lost_at = hold_until_lost_or(&a, Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("{}: A sees its loss", setup.name));
    intervals.record(&key, "A (renewals cut)", a_from, lost_at, lease.fence);
    let b = LockGuard::acquire(
        setup.direct.clone(),
        LockRequest::new(&key, "b", Duration::from_secs(20)),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let b_at = Instant::now();
    intervals.record(&key, "B", b_at, b_at, b.fence());
    println!(
        "figures: {}: renewals black-holed: the holder saw its loss {:?} before the other process got the key",
        setup.name,
        b_at.duration_since(lost_at)
    );
    setup.set(Fault::Pass);
    let renewed =
        conc_lock_store::servers::through_transient_errors(Duration::from_secs(10), async || {
            setup.proxied.renew(&lease, ttl).await
        })
        .await;
    assert!(
        matches!(renewed, Err(LockError::Lost { .. })),
        "{}: after the heal A's renewal says Lost: {renewed:?}",
        setup.name
    );
    let released =
        conc_lock_store::servers::through_transient_errors(Duration::from_secs(10), async || {
            setup.proxied.release(&lease).await
        })
        .await
        .unwrap();
    assert!(!released, "{}: A's release frees nothing", setup.name);
    drop(a);
    assert!(b.is_valid(), "{}: B keeps the key", setup.name);
    assert!(b.release().await.unwrap());
}

/// One backend at a time through the resets and the slow link: what is measured is the
/// holder against the faults, not against the other backends' servers on two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn resets_and_slow_link(setup: &Setup, intervals: &Intervals) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let key = key(setup, "flaky");
    let a = LockGuard::acquire(
        setup.proxied.clone(),
        LockRequest::new(&key, "a", Duration::from_secs(3)),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let from = Instant::now();
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        setup.reset();
    }
    assert!(
        a.is_valid(),
        "{}: resets every 500 ms lost the lease",
        setup.name
    );
    setup.set(Fault::Delay(Duration::from_millis(150)));
    let lost = hold_until_lost_or(&a, Duration::from_secs(4)).await;
    setup.set(Fault::Pass);
    intervals.record(
        &key,
        "A (resets, slow link)",
        from,
        Instant::now(),
        a.fence(),
    );
    assert!(
        lost.is_none(),
        "{}: resets and a slow link lost the lease",
        setup.name
    );
    assert!(a.is_valid());
    assert!(
        a.release().await.unwrap(),
        "{}: the holder kept its lock",
        setup.name
    );
}

async fn run_all(setup: Setup) {
    // What the stores log (a renewal failed, a grant released in the background) shows
    // with `--nocapture`.
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_test_writer()
        .try_init();
    let intervals = Intervals::default();
    late_reply(&setup, &intervals).await;
    cut_off(&setup, Fault::BlackHole).await;
    cut_off(&setup, Fault::DropReplies).await;
    black_holed_renewals(&setup, &intervals).await;
    resets_and_slow_link(&setup, &intervals).await;
    intervals.check();
}

/// Both stores: one straight to `direct`, one to `through` behind a new proxy.
async fn setup(name: &'static str, direct: &str, through: &str) -> Setup {
    let (proxy, proxied) = FaultProxy::in_front_of(through).await.unwrap();
    Setup {
        name,
        direct: conc_lock_store::connect(direct).await.unwrap(),
        proxied: conc_lock_store::connect(&proxied).await.unwrap(),
        proxies: vec![proxy],
        one_request: name != "etcd",
    }
}

fn env_url(name: &str, what: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            println!("skipped: {name} is not set, so the network faults on {what} are not tested");
            None
        }
    }
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_under_network_faults() {
    let Some(url) = env_url("CONC_TEST_POSTGRES_URL", "PostgreSQL") else {
        return;
    };
    run_all(setup("postgres", &url, &url).await).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_through_pgbouncer_under_network_faults() {
    use conc_lock_store::servers::{BouncerMode, PrivatePgBouncer};
    let Some(url) = env_url("CONC_TEST_POSTGRES_URL", "PostgreSQL through PgBouncer") else {
        return;
    };
    let server = conc_lock_store::proxy::authority(&url);
    let (host, port) = server.rsplit_once(':').unwrap();
    let Some(bouncer) =
        PrivatePgBouncer::start(host, port.parse().unwrap(), BouncerMode::Transaction, 8).unwrap()
    else {
        return;
    };
    let database = url.rsplit('/').next().unwrap().split('?').next().unwrap();
    let bouncer_url = bouncer.url("postgres", database, "?pool_mode=transaction");
    run_all(setup("pgbouncer", &url, &bouncer_url).await).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_under_network_faults() {
    let Some(url) = env_url("CONC_TEST_REDIS_URL", "Redis") else {
        return;
    };
    let separator = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{separator}prefix=conc-net-{}:", std::process::id());
    let setup = setup("redis", &url, &url).await;
    let direct = setup.direct.clone();
    run_all(setup).await;
    // The shared server is left as it was found.
    direct.purge(true).await.unwrap();
}

#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_under_network_faults() {
    let Some(cluster) = conc_lock_store::servers::PrivateEtcdCluster::start(3).unwrap() else {
        return;
    };
    run_all(setup("etcd", &cluster.url(), &cluster.member_url(0)).await).await;
}

/// Redis through Sentinel: the Sentinels know the primary by the proxy's address, so the
/// store that finds the primary through them goes through the proxy; the other store goes
/// straight to the primary. (The Sentinels wait a minute before calling the primary down,
/// so the faults cause no failover.)
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sentinel_under_network_faults() {
    use conc_lock_store::servers::PrivateRedisSentinel;
    let proxy = FaultProxy::start_unbound().await.unwrap();
    let started = tokio::task::block_in_place(|| {
        PrivateRedisSentinel::start_behind(1, 3, |primary| {
            proxy.forward_to(&format!("127.0.0.1:{primary}"));
            proxy.port()
        })
    })
    .unwrap();
    let Some(sentinel) = started else {
        return;
    };
    let primary = sentinel.node_urls()[0].clone();
    let direct = conc_lock_store::connect(&primary).await.unwrap();
    let proxied = conc_lock_store::connect(&sentinel.url()).await.unwrap();
    run_all(Setup {
        name: "sentinel",
        direct,
        proxied,
        proxies: vec![proxy],
        one_request: true,
    })
    .await;
}

/// Redis Cluster: each node tells the cluster and its clients that it listens on its
/// proxy's port, so both stores go through the proxies (a cluster client learns the nodes'
/// addresses from the nodes), and the faults touch only the connections of the store that
/// logs in as the user `faulted`.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_under_network_faults() {
    use conc_lock_store::servers::PrivateRedisCluster;
    let mut proxies = Vec::new();
    for _ in 0..3 {
        let proxy = FaultProxy::start_unbound().await.unwrap();
        proxy.only_for(b"faulted");
        proxies.push(proxy);
    }
    let user = ["--user", "faulted", "on", ">faulted", "~*", "&*", "+@all"];
    let mut next = proxies.iter();
    let started = tokio::task::block_in_place(|| {
        PrivateRedisCluster::start_behind(3, 0, &user, |port| {
            let proxy = next.next().expect("one proxy per node");
            proxy.forward_to(&format!("127.0.0.1:{port}"));
            proxy.port()
        })
    })
    .unwrap();
    let Some(cluster) = started else {
        return;
    };
    let direct = conc_lock_store::connect(&cluster.url()).await.unwrap();
    let proxied = format!(
        "redis+cluster://faulted:faulted@{}",
        proxies
            .iter()
            .map(|proxy| proxy.addr().to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let proxied = conc_lock_store::connect(&proxied).await.unwrap();
    run_all(Setup {
        name: "cluster",
        direct,
        proxied,
        proxies,
        one_request: true,
    })
    .await;
}
