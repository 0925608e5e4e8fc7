//! Hand-off latency: from a release through one store instance to `acquire` returning
//! through another (its own connections, its own event subscription, as a second process
//! would have), per backend, with the store's wake-ups (`watch`) and with polling alone
//! (the design before wake-ups: a jittered backoff of 2 to 100 ms).
//!
//! Not a criterion bench: a hand-off has a distribution, and its tail is the point. Each
//! round parks the waiter for a random 5 to 50 ms (so it is caught at every phase of its
//! backoff), releases, and times the waiter's return. Prints p50, p99 and the worst case,
//! and writes them to `target/conc-bench/handoff.md`.
//!
//! `cargo bench -p conc-benches --bench handoff` (`-- --quick` for 20 rounds). PostgreSQL
//! and Redis run when `CONC_TEST_POSTGRES_URL` / `CONC_TEST_REDIS_URL` are set; etcd, on a
//! private cluster, with `--features etcd`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use conc_lock_store::{
    Lease, LockError, LockInfo, LockRequest, LockStore, MemoryLockStore, PostgresConfig,
    PostgresLockStore, RedisConfig, RedisLockStore, SqliteLockStore,
};

/// A store with its wake-ups hidden: `acquire` falls back to polling.
#[derive(Debug)]
struct Polling(Arc<dyn LockStore>);

#[async_trait::async_trait]
impl LockStore for Polling {
    async fn try_acquire(&self, request: &LockRequest) -> Result<Option<Lease>, LockError> {
        self.0.try_acquire(request).await
    }
    async fn release(&self, lease: &Lease) -> Result<bool, LockError> {
        self.0.release(lease).await
    }
    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError> {
        self.0.renew(lease, ttl).await
    }
    async fn inspect(&self, key: &str) -> Result<Option<LockInfo>, LockError> {
        self.0.inspect(key).await
    }
    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<LockInfo>, LockError> {
        self.0.list(prefix, limit).await
    }
    async fn cleanup_expired(&self) -> Result<u64, LockError> {
        self.0.cleanup_expired().await
    }
    async fn force_release(&self, key: &str) -> Result<bool, LockError> {
        self.0.force_release(key).await
    }
    async fn take_over(&self, request: &LockRequest) -> Result<Lease, LockError> {
        self.0.take_over(request).await
    }
    fn max_ttl(&self) -> Duration {
        self.0.max_ttl()
    }
}

/// `rounds` hand-offs from `a` to `b` on one key; the latencies, sorted.
async fn measure(
    a: Arc<dyn LockStore>,
    b: Arc<dyn LockStore>,
    key: &str,
    rounds: usize,
) -> Vec<Duration> {
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut samples = Vec::with_capacity(rounds);
    let ttl = Duration::from_secs(10);
    for _ in 0..rounds {
        let held = a
            .try_acquire(&LockRequest::new(key, "a", ttl))
            .await
            .expect("try_acquire")
            .expect("the key is free between rounds");
        let waiter = {
            let b = b.clone();
            let key = key.to_owned();
            tokio::spawn(async move {
                let lease = b
                    .acquire(&LockRequest::new(key, "b", ttl), Duration::from_secs(10))
                    .await
                    .expect("acquire");
                (Instant::now(), lease)
            })
        };
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        tokio::time::sleep(Duration::from_millis(5 + seed % 46)).await;
        let released_at = Instant::now();
        assert!(a.release(&held).await.expect("release"));
        let (acquired_at, lease) = waiter.await.expect("waiter");
        samples.push(acquired_at.saturating_duration_since(released_at));
        assert!(b.release(&lease).await.expect("release"));
    }
    samples.sort();
    samples
}

/// `rounds` hand-offs through rslock (Redlock on one instance) between two lock managers:
/// the waiter's `acquire` loops over `lock`, which retries 3 times a random 0 to 200 ms
/// apart (rslock's defaults), then starts again; the latencies, sorted.
async fn measure_rslock(url: &str, key: &str, rounds: usize) -> Vec<Duration> {
    let a = rslock::LockManager::new(vec![url.to_owned()]);
    let b = Arc::new(rslock::LockManager::new(vec![url.to_owned()]));
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut samples = Vec::with_capacity(rounds);
    let ttl = Duration::from_secs(10);
    for _ in 0..rounds {
        let held = a
            .lock(key, ttl)
            .await
            .expect("the key is free between rounds");
        let waiter = {
            let b = b.clone();
            let key = key.to_owned();
            tokio::spawn(async move {
                let lock = b
                    .acquire_no_guard(key.as_str(), ttl)
                    .await
                    .expect("acquire");
                (Instant::now(), lock)
            })
        };
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        tokio::time::sleep(Duration::from_millis(5 + seed % 46)).await;
        let released_at = Instant::now();
        a.unlock(&held).await;
        let (acquired_at, lock) = waiter.await.expect("waiter");
        samples.push(acquired_at.saturating_duration_since(released_at));
        b.unlock(&lock).await;
    }
    samples.sort();
    samples
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

type Opened = (Arc<dyn LockStore>, Arc<dyn LockStore>);

async fn backends(dir: &std::path::Path, etcd: Option<&str>) -> Vec<(&'static str, Opened)> {
    let mut out: Vec<(&'static str, Opened)> = Vec::new();
    let memory: Arc<dyn LockStore> = Arc::new(MemoryLockStore::new());
    out.push(("memory", (memory.clone(), memory)));
    let path = dir.join("handoff.db");
    out.push((
        "sqlite",
        (
            Arc::new(SqliteLockStore::open(&path).await.expect("open")),
            Arc::new(SqliteLockStore::open(&path).await.expect("open")),
        ),
    ));
    match std::env::var("CONC_TEST_POSTGRES_URL") {
        Ok(url) => {
            let config = || PostgresConfig::default().with_table("conc_bench_handoff");
            out.push((
                "postgres",
                (
                    Arc::new(
                        PostgresLockStore::connect(&url, config())
                            .await
                            .expect("connect"),
                    ),
                    Arc::new(
                        PostgresLockStore::connect(&url, config())
                            .await
                            .expect("connect"),
                    ),
                ),
            ));
        }
        Err(_) => println!(
            "skipped: CONC_TEST_POSTGRES_URL is not set, so the PostgreSQL hand-off is not measured"
        ),
    }
    match std::env::var("CONC_TEST_REDIS_URL") {
        Ok(url) => {
            let config = || {
                RedisConfig::default()
                    .with_prefix(format!("conc-bench-handoff:{}:", std::process::id()))
            };
            out.push((
                "redis",
                (
                    Arc::new(
                        RedisLockStore::connect(&url, config())
                            .await
                            .expect("connect"),
                    ),
                    Arc::new(
                        RedisLockStore::connect(&url, config())
                            .await
                            .expect("connect"),
                    ),
                ),
            ));
        }
        Err(_) => println!(
            "skipped: CONC_TEST_REDIS_URL is not set, so the Redis hand-off is not measured"
        ),
    }
    #[cfg(feature = "etcd")]
    if let Some(url) = etcd {
        let config = || {
            conc_lock_store::EtcdConfig::default()
                .with_prefix(format!("conc-bench-handoff/{}/", std::process::id()))
        };
        out.push((
            "etcd",
            (
                Arc::new(
                    conc_lock_store::EtcdLockStore::connect(url, config())
                        .await
                        .expect("connect"),
                ),
                Arc::new(
                    conc_lock_store::EtcdLockStore::connect(url, config())
                        .await
                        .expect("connect"),
                ),
            ),
        ));
    }
    let _ = etcd;
    out
}

/// A private etcd cluster for the etcd row, with the `etcd` feature.
#[cfg(feature = "etcd")]
fn etcd_cluster() -> Option<conc_lock_store::servers::PrivateEtcdCluster> {
    match conc_lock_store::servers::PrivateEtcdCluster::start(3) {
        Ok(cluster) => cluster,
        Err(e) => {
            println!(
                "skipped: the private etcd cluster did not start ({e}), so the etcd hand-off is not measured"
            );
            None
        }
    }
}

fn main() {
    let (wanted, quick) = conc_benches::table_bench_args("handoff");
    if !wanted {
        return;
    }
    let rounds = if quick { 20 } else { 300 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    #[cfg(feature = "etcd")]
    let cluster = etcd_cluster();
    #[cfg(feature = "etcd")]
    let etcd = cluster.as_ref().map(|c| c.url());
    #[cfg(not(feature = "etcd"))]
    let etcd: Option<String> = {
        println!("skipped: the `etcd` feature is off, so the etcd hand-off is not measured");
        None
    };
    let mut table = String::from(
        "| backend | wake-ups p50 (ms) | wake-ups p99 (ms) | wake-ups max (ms) | polling p50 (ms) | polling p99 (ms) | goal p50 ≤ 2 ms, p99 ≤ 10 ms |\n| --- | --- | --- | --- | --- | --- | --- |\n",
    );
    runtime.block_on(async {
        for (name, (a, b)) in backends(dir.path(), etcd.as_deref()).await {
            let key = format!("handoff:{}", std::process::id());
            let woken = measure(a.clone(), b.clone(), &key, rounds).await;
            let polled = measure(a.clone(), Arc::new(Polling(b.clone())), &key, rounds).await;
            let (p50, p99) = (percentile(&woken, 0.5), percentile(&woken, 0.99));
            let met = p50 <= Duration::from_millis(2) && p99 <= Duration::from_millis(10);
            let row = format!(
                "| {name} | {} | {} | {} | {} | {} | {} |\n",
                ms(p50),
                ms(p99),
                ms(*woken.last().expect("samples")),
                ms(percentile(&polled, 0.5)),
                ms(percentile(&polled, 0.99)),
                if met { "met" } else { "not met" }
            );
            print!("{row}");
            table.push_str(&row);
            // The shared Redis is left as it was found (the store's prefix is this run's).
            if name == "redis"
                && let Err(error) = a.purge(true).await
            {
                println!("could not purge the Redis store after the hand-off: {error}");
            }
        }
    });
    // The peers that wait: rslock polls (no wake-ups); distributed-lock-redis's `acquire`
    // on one instance makes one attempt and fails while the key is held, so its callers
    // poll in a loop of their own, and it has no hand-off to measure.
    let mut peers = String::from(
        "| peer (Redis) | p50 (ms) | p99 (ms) | max (ms) | how it waits |\n| --- | --- | --- | --- | --- |\n",
    );
    match std::env::var("CONC_TEST_REDIS_URL") {
        Ok(url) => runtime.block_on(async {
            let key = format!("conc-bench-handoff:rslock:{}", std::process::id());
            let polled = measure_rslock(&url, &key, rounds / 3).await;
            let row = format!(
                "| rslock 0.10 | {} | {} | {} | polls: 3 tries a random 0 to 200 ms apart, again and again |\n",
                ms(percentile(&polled, 0.5)),
                ms(percentile(&polled, 0.99)),
                ms(*polled.last().expect("samples")),
            );
            print!("{row}");
            peers.push_str(&row);
            peers.push_str("| distributed-lock-redis 0.2 | | | | does not wait: one attempt, an error while the key is held (one instance); the caller polls |\n");
        }),
        Err(_) => println!(
            "skipped: CONC_TEST_REDIS_URL is not set, so the peers' Redis hand-off is not measured"
        ),
    }
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/conc-bench");
    let _ = std::fs::create_dir_all(&out);
    let report = format!(
        "# Hand-off latency\n\nFrom a release through one store instance to `acquire` returning through another, {rounds} rounds per row.\n\n{table}\nThe peers, from a release through one lock manager to the other's waiting acquire returning, {} rounds:\n\n{peers}",
        rounds / 3
    );
    if let Err(e) = std::fs::write(out.join("handoff.md"), report) {
        eprintln!("cannot write handoff.md: {e}");
    }
}
