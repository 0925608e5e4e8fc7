//! conc-lock-store beside raw statements: acquire+release pairs on memory and SQLite
//! against raw rusqlite INSERT+DELETE on the same schema, and the cost of a pair with
//! 10^3, 10^5 and 10^6 live keys.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use conc_benches::ready;

use conc_lock_store::{LockRequest, LockStore, MemoryLockStore, SqliteLockStore};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use rusqlite::params;

fn pair(rt: &tokio::runtime::Runtime, store: &Arc<dyn LockStore>, request: &LockRequest) {
    rt.block_on(async {
        let lease = store
            .try_acquire(request)
            .await
            .expect("acquire")
            .expect("free");
        assert!(store.release(&lease).await.expect("release"));
    })
}

/// One acquire+release pair on the memory store, polled directly: the store never waits,
/// so no executor is needed and none is measured.
fn memory_pair(store: &MemoryLockStore, request: &LockRequest) {
    let lease = ready(store.try_acquire(request))
        .expect("acquire")
        .expect("free");
    assert!(ready(store.release(&lease)).expect("release"));
}

/// The floor for the memory store: a `parking_lot` mutex over a `HashMap` doing the same
/// bookkeeping (owner, random token, fence, monotonic TTL deadline), with no validation,
/// no wall-clock times, no watchers and no trait.
#[derive(Default)]
struct Floor {
    state: parking_lot::Mutex<(HashMap<String, FloorEntry>, u64)>,
}

struct FloorEntry {
    #[expect(
        dead_code,
        reason = "kept as the store keeps it: its allocation is part of the cost"
    )]
    owner: String,
    token: u128,
    fence: u64,
    deadline: Instant,
}

struct FloorLease {
    key: String,
    token: u128,
    fence: u64,
}

impl Floor {
    fn acquire(&self, key: &str, owner: &str, ttl: Duration, token: u128) -> Option<FloorLease> {
        let now = Instant::now();
        let mut state = self.state.lock();
        let (map, fence) = &mut *state;
        if map.get(key).is_some_and(|e| e.deadline > now) {
            return None;
        }
        *fence += 1;
        map.insert(
            key.to_owned(),
            FloorEntry {
                owner: owner.to_owned(),
                token,
                fence: *fence,
                deadline: now + ttl,
            },
        );
        Some(FloorLease {
            key: key.to_owned(),
            token,
            fence: *fence,
        })
    }

    fn release(&self, lease: &FloorLease) -> bool {
        let now = Instant::now();
        let mut state = self.state.lock();
        let held = state
            .0
            .get(&lease.key)
            .is_some_and(|e| e.token == lease.token && e.fence == lease.fence && e.deadline > now);
        if held {
            state.0.remove(&lease.key);
        }
        held
    }
}

fn acquire_release(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let request = LockRequest::new("conversation:bench", "bench", Duration::from_secs(30));
    let mut group = c.benchmark_group("lock_acquire_release");

    let memory = MemoryLockStore::new();
    group.bench_function(BenchmarkId::new("conc", "memory"), |b| {
        b.iter(|| memory_pair(&memory, &request))
    });
    let floor = Floor::default();
    // A cheap random token for the floor (splitmix64 over a counter).
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    group.bench_function(BenchmarkId::new("parking_lot-hashmap", "memory"), |b| {
        b.iter(|| {
            seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            let token = u128::from(z ^ (z >> 31)) << 64 | u128::from(seed);
            let lease = floor
                .acquire(&request.key, &request.owner, request.ttl, token)
                .expect("free");
            assert!(floor.release(black_box(&lease)));
        })
    });

    let path = dir.path().join("locks.db");
    let sqlite: Arc<dyn LockStore> =
        Arc::new(rt.block_on(SqliteLockStore::open(&path)).expect("open"));
    group.bench_function(BenchmarkId::new("conc", "sqlite"), |b| {
        b.iter(|| pair(&rt, &sqlite, &request))
    });

    // The floor: the same schema, the same file settings, two raw statements.
    let raw = rusqlite::Connection::open(&path).expect("raw open");
    raw.pragma_update(None, "journal_mode", "WAL").expect("wal");
    raw.pragma_update(None, "synchronous", "NORMAL")
        .expect("sync");
    raw.busy_timeout(Duration::from_secs(5)).expect("busy");
    group.bench_function(BenchmarkId::new("raw-rusqlite", "sqlite"), |b| {
        b.iter(|| {
            raw.prepare_cached(
                "INSERT INTO conc_locks (key, owner, token, fence, metadata, acquired_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, '', ?5, ?6)",
            )
            .and_then(|mut s| s.execute(params!["raw:bench", "bench", "token", 1, 0, i64::MAX]))
            .expect("insert");
            raw.prepare_cached("DELETE FROM conc_locks WHERE key = ?1 AND token = ?2")
                .and_then(|mut s| s.execute(params!["raw:bench", "token"]))
                .expect("delete");
        })
    });
    group.finish();
}

/// A memory store holding `n` live keys.
fn filled_memory(n: u64) -> MemoryLockStore {
    let memory = MemoryLockStore::new();
    for i in 0..n {
        let request = LockRequest::new(format!("live:{i:08}"), "filler", Duration::from_secs(3600));
        ready(memory.try_acquire(&request)).expect("fill");
    }
    memory
}

/// A SQLite store in `dir` holding `n` live keys.
fn filled_sqlite(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    n: u64,
) -> Arc<dyn LockStore> {
    let path = dir.join("live.db");
    let sqlite: Arc<dyn LockStore> =
        Arc::new(rt.block_on(SqliteLockStore::open(&path)).expect("open"));
    let mut fill = rusqlite::Connection::open(&path).expect("fill open");
    let tx = fill.transaction().expect("tx");
    {
        let mut insert = tx
            .prepare("INSERT INTO conc_locks VALUES (?1, 'filler', 't', ?2, '', 0, ?3)")
            .expect("prepare");
        for i in 0..n {
            insert
                .execute(params![format!("live:{i:08}"), i as i64, i64::MAX])
                .expect("fill");
        }
    }
    tx.commit().expect("commit");
    sqlite
}

/// One acquire+release pair with `n` other live keys in the store, at 10^3 and 10^6 keys
/// (each store filled only when its case runs, so a filter skips the cost). The goal is a
/// flat cost: the pair at 10^6 keys within 1.5x of the pair at 10^3.
fn live_keys(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let request = LockRequest::new("probe:key", "bench", Duration::from_secs(30));
    let mut group = c.benchmark_group("lock_live_keys");
    group.sample_size(20);
    for n in [1_000u64, 1_000_000] {
        let label = format!("{n} keys");
        // Criterion calls a bench's closure for every sample: fill each store once.
        let memory = std::cell::OnceCell::new();
        group.bench_function(BenchmarkId::new("memory", &label), |b| {
            let store = memory.get_or_init(|| filled_memory(n));
            b.iter(|| memory_pair(store, &request))
        });
        drop(memory);
        let dir = tempfile::tempdir().expect("tempdir");
        let sqlite = std::cell::OnceCell::new();
        group.bench_function(BenchmarkId::new("sqlite", &label), |b| {
            let store = sqlite.get_or_init(|| filled_sqlite(&rt, dir.path(), n));
            b.iter(|| pair(&rt, store, &request))
        });
        if let Ok(url) = std::env::var("CONC_TEST_POSTGRES_URL") {
            let postgres = std::cell::OnceCell::new();
            group.bench_function(BenchmarkId::new("postgres", &label), |b| {
                let store = postgres.get_or_init(|| filled_postgres(&rt, &url, n));
                b.iter(|| pair(&rt, store, &request))
            });
            if postgres.get().is_some() {
                rt.block_on(empty_postgres(&url));
            }
        }
    }
    group.finish();
}

const LIVE_SCHEMA: &str = "conc_bench_live";

/// A PostgreSQL store in its own schema holding `n` live keys (one `generate_series`).
fn filled_postgres(rt: &tokio::runtime::Runtime, url: &str, n: u64) -> Arc<dyn LockStore> {
    rt.block_on(async {
        let config = conc_lock_store::PostgresConfig::default()
            .with_schema(LIVE_SCHEMA);
        let store = conc_lock_store::PostgresLockStore::connect(url, config)
            .await
            .expect("connect");
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("fill connect");
        let connection = tokio::spawn(connection);
        client
            .batch_execute(&format!(
                "DELETE FROM {LIVE_SCHEMA}.conc_locks WHERE key LIKE 'live:%';
                 INSERT INTO {LIVE_SCHEMA}.conc_locks (key, owner, token, fence, metadata, acquired_at, expires_at)
                 SELECT 'live:' || lpad(i::text, 8, '0'), 'filler', 't', i, '{{}}', now(), now() + interval '1 hour'
                 FROM generate_series(1, {n}) AS i;
                 ANALYZE {LIVE_SCHEMA}.conc_locks;"
            ))
            .await
            .expect("fill");
        drop(client);
        let _ = connection.await;
        Arc::new(store) as Arc<dyn LockStore>
    })
}

/// Takes the filler keys out of the shared server again.
async fn empty_postgres(url: &str) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    let connection = tokio::spawn(connection);
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {LIVE_SCHEMA} CASCADE"))
        .await
        .expect("drop the bench schema");
    drop(client);
    let _ = connection.await;
}

/// PostgreSQL and Redis, when their test URLs are set: the store's acquire+release against
/// the same kind of raw statements sent by one client to the same server.
fn servers(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let request = LockRequest::new("bench:server", "bench", Duration::from_secs(30));
    let mut group = c.benchmark_group("lock_server_acquire_release");
    match std::env::var("CONC_TEST_POSTGRES_URL") {
        Err(_) => println!(
            "skipped: CONC_TEST_POSTGRES_URL is not set, so the PostgreSQL lock bench does not run"
        ),
        Ok(url) => {
            let config = conc_lock_store::PostgresConfig::default().with_schema("conc_bench");
            let store: Arc<dyn LockStore> = Arc::new(
                rt.block_on(conc_lock_store::PostgresLockStore::connect(&url, config))
                    .expect("connect"),
            );
            group.bench_function(BenchmarkId::new("conc", "postgres"), |b| {
                b.iter(|| pair(&rt, &store, &request))
            });
            // No flush per grant, a crash waited out instead (its own table: a flushing
            // store refuses a guarded one).
            let config = conc_lock_store::PostgresConfig::default()
                .with_schema("conc_bench_guard")
                .with_durability(conc_lock_store::PostgresDurability::Guard);
            let guarded: Arc<dyn LockStore> = Arc::new(
                rt.block_on(conc_lock_store::PostgresLockStore::connect(&url, config))
                    .expect("connect"),
            );
            group.bench_function(BenchmarkId::new("conc durability=guard", "postgres"), |b| {
                b.iter(|| pair(&rt, &guarded, &request))
            });
            let client = rt.block_on(async {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .expect("raw");
                tokio::spawn(connection);
                client
            });
            let (insert, delete) = rt.block_on(async {
                let insert = client
                    .prepare(
                        "INSERT INTO conc_bench.conc_locks (key, owner, token, fence, metadata, acquired_at, expires_at)
                         VALUES ($1, 'raw', 't', 1, '{}', clock_timestamp(), clock_timestamp() + interval '30 seconds')",
                    )
                    .await
                    .expect("prepare");
                let delete = client.prepare("DELETE FROM conc_bench.conc_locks WHERE key = $1 AND token = 't'").await.expect("prepare");
                (insert, delete)
            });
            group.bench_function(BenchmarkId::new("raw-tokio-postgres", "postgres"), |b| {
                b.iter(|| {
                    rt.block_on(async {
                        client
                            .execute(&insert, &[&"bench:raw"])
                            .await
                            .expect("insert");
                        client
                            .execute(&delete, &[&"bench:raw"])
                            .await
                            .expect("delete");
                    })
                })
            });
        }
    }
    // What sqlx's `PgAdvisoryLock` does: a session-level advisory lock pair on one
    // connection (no TTL, no fence, no metadata, no take-over: it lives as long as the
    // connection).
    if let Ok(url) = std::env::var("CONC_TEST_POSTGRES_URL") {
        let client = rt.block_on(async {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("connect");
            tokio::spawn(connection);
            client
        });
        let lock = rt
            .block_on(client.prepare("SELECT pg_advisory_lock($1)"))
            .expect("prepare");
        let unlock = rt
            .block_on(client.prepare("SELECT pg_advisory_unlock($1)"))
            .expect("prepare");
        group.bench_function(BenchmarkId::new("pg-advisory-lock", "postgres"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    client
                        .execute(&lock, &[&7_340_001_i64])
                        .await
                        .expect("lock");
                    client
                        .execute(&unlock, &[&7_340_001_i64])
                        .await
                        .expect("unlock");
                })
            })
        });
    }
    match std::env::var("CONC_TEST_REDIS_URL") {
        Err(_) => println!(
            "skipped: CONC_TEST_REDIS_URL is not set, so the Redis lock bench does not run"
        ),
        Ok(url) => {
            let config = conc_lock_store::RedisConfig::default().with_prefix("conc-bench:");
            let store: Arc<dyn LockStore> = Arc::new(
                rt.block_on(conc_lock_store::RedisLockStore::connect(&url, config))
                    .expect("connect"),
            );
            group.bench_function(BenchmarkId::new("conc", "redis"), |b| {
                b.iter(|| pair(&rt, &store, &request))
            });
            // The peers, the same key pattern and TTL: rslock (Redlock on one instance),
            // distributed-lock-redis (a DistributedLock port on fred) with one client, and
            // raw commands.
            let mut peers = RedisPeers::connect(&rt, &url);
            group.bench_function(BenchmarkId::new("rslock", "redis"), |b| {
                b.iter(|| peers.rslock_pair(&rt))
            });
            group.bench_function(BenchmarkId::new("distributed-lock-redis", "redis"), |b| {
                b.iter(|| peers.distributed_lock_pair(&rt))
            });
            group.bench_function(BenchmarkId::new("raw-redis", "redis"), |b| {
                b.iter(|| peers.raw_pair(&rt))
            });
        }
    }
    #[cfg(feature = "etcd")]
    etcd_pairs(&rt, &request, &mut group);
    #[cfg(not(feature = "etcd"))]
    println!("skipped: the `etcd` feature is off, so the etcd lock bench does not run");
    group.finish();
}

/// On a private three-member etcd cluster: conc's pair (a lease grant, the put-if-free
/// transaction, the guarded delete; the lease is revoked in the background) against the
/// same done by hand with `etcd-client` (grant, put-if-free, delete, revoke, each awaited).
#[cfg(feature = "etcd")]
fn etcd_pairs(
    rt: &tokio::runtime::Runtime,
    request: &LockRequest,
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
) {
    use conc_lock_store::servers::PrivateEtcdCluster;
    use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
    let cluster = match PrivateEtcdCluster::start(3) {
        Ok(Some(cluster)) => cluster,
        Ok(None) => return,
        Err(e) => {
            println!(
                "skipped: the private etcd cluster did not start ({e}), so the etcd lock bench does not run"
            );
            return;
        }
    };
    let store: Arc<dyn LockStore> = Arc::new(
        rt.block_on(conc_lock_store::EtcdLockStore::connect(
            &cluster.url(),
            conc_lock_store::EtcdConfig::default().with_prefix("conc-bench/"),
        ))
        .expect("connect"),
    );
    group.bench_function(BenchmarkId::new("conc", "etcd"), |b| {
        b.iter(|| pair(rt, &store, request))
    });
    let mut client = rt
        .block_on(etcd_client::Client::connect(cluster.endpoints(), None))
        .expect("raw");
    group.bench_function(BenchmarkId::new("raw-etcd-client", "etcd"), |b| {
        b.iter(|| {
            rt.block_on(async {
                let key = "conc-bench/raw";
                let lease = client.lease_grant(30, None).await.expect("grant").id();
                let txn = Txn::new()
                    .when([Compare::create_revision(key, CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(
                        key,
                        "t",
                        Some(PutOptions::new().with_lease(lease)),
                    )]);
                assert!(client.txn(txn).await.expect("txn").succeeded());
                client.delete(key, None).await.expect("delete");
                client.lease_revoke(lease).await.expect("revoke");
            })
        })
    });
}

/// The Redis peers, connected to one server: a raw connection, rslock's manager and a
/// distributed-lock-redis lock, each with its acquire+release pair (key pattern and TTL as
/// conc's).
struct RedisPeers {
    raw: redis::aio::MultiplexedConnection,
    redlock: rslock::LockManager,
    // Kept alive for its lock's clients.
    _provider: distributed_lock_redis::RedisLockProvider,
    lock: distributed_lock_redis::RedisDistributedLock,
}

impl RedisPeers {
    fn connect(rt: &tokio::runtime::Runtime, url: &str) -> Self {
        use distributed_lock_core::traits::LockProvider as _;
        let raw = rt
            .block_on(
                redis::Client::open(url)
                    .expect("url")
                    .get_multiplexed_async_connection(),
            )
            .expect("raw");
        let provider = rt
            .block_on(
                distributed_lock_redis::RedisLockProvider::builder()
                    .url(url)
                    .expiry(Duration::from_secs(30))
                    .build(),
            )
            .expect("distributed-lock-redis");
        let lock = provider.create_lock("conc-bench:dlr");
        Self {
            raw,
            redlock: rslock::LockManager::new(vec![url.to_owned()]),
            _provider: provider,
            lock,
        }
    }

    fn raw_pair(&mut self, rt: &tokio::runtime::Runtime) {
        rt.block_on(async {
            let _: Option<String> = redis::cmd("SET")
                .arg(&["conc-bench:raw", "t", "NX", "PX", "30000"])
                .query_async(&mut self.raw)
                .await
                .expect("set");
            let _: i64 = redis::cmd("DEL")
                .arg("conc-bench:raw")
                .query_async(&mut self.raw)
                .await
                .expect("del");
        })
    }

    fn rslock_pair(&self, rt: &tokio::runtime::Runtime) {
        rt.block_on(async {
            let lock = self
                .redlock
                .lock("conc-bench:rslock", Duration::from_secs(30))
                .await
                .expect("rslock");
            self.redlock.unlock(&lock).await;
        })
    }

    fn distributed_lock_pair(&self, rt: &tokio::runtime::Runtime) {
        use distributed_lock_core::traits::{DistributedLock as _, LockHandle as _};
        rt.block_on(async {
            let handle = self.lock.try_acquire().await.expect("try").expect("free");
            handle.release().await.expect("release");
        })
    }
}

/// The sum of `usec` in `INFO commandstats` over `commands`: the server's own time for
/// them since its start.
fn server_usec(
    rt: &tokio::runtime::Runtime,
    connection: &mut redis::aio::MultiplexedConnection,
    commands: &[&str],
) -> u64 {
    let info: String = rt
        .block_on(
            redis::cmd("INFO")
                .arg("commandstats")
                .query_async(connection),
        )
        .expect("info");
    info.lines()
        .filter_map(|line| {
            let (name, fields) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            if !commands.contains(&name) {
                return None;
            }
            fields
                .split(',')
                .find_map(|field| field.strip_prefix("usec="))?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// The time a pair takes inside Redis, read from `INFO commandstats` of a private server
/// around the pairs (each sent alone, as the clients send them): conc's two scripts
/// (`EVALSHA`) beside a raw `SET NX PX`/`DEL`, rslock's `SET` and release script and
/// distributed-lock-redis's `SET` and `EVAL`s. Reported as the time per pair.
fn redis_server_time(c: &mut Criterion) {
    use conc_lock_store::servers::PrivateRedis;
    let server = match PrivateRedis::start(&[]) {
        Ok(Some(server)) => server,
        Ok(None) => return,
        Err(e) => {
            println!(
                "skipped: the private Redis did not start ({e}), so the Redis server-time bench does not run"
            );
            return;
        }
    };
    let url = server.url();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut stats = rt
        .block_on(
            redis::Client::open(url.as_str())
                .expect("url")
                .get_multiplexed_async_connection(),
        )
        .expect("stats connection");
    let mut group = c.benchmark_group("redis_server_time");
    let mut measure = |name: &str, commands: &[&str], pair: &mut dyn FnMut()| {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let before = server_usec(&rt, &mut stats, commands);
                for _ in 0..iters {
                    pair();
                }
                Duration::from_micros(server_usec(&rt, &mut stats, commands) - before)
            })
        });
    };
    let request = LockRequest::new("bench:server", "bench", Duration::from_secs(30));
    let store: Arc<dyn LockStore> = Arc::new(
        rt.block_on(conc_lock_store::RedisLockStore::connect(
            &url,
            conc_lock_store::RedisConfig::default(),
        ))
        .expect("connect"),
    );
    measure("conc", &["evalsha"], &mut || pair(&rt, &store, &request));
    let peers = std::cell::RefCell::new(RedisPeers::connect(&rt, &url));
    measure("raw-redis", &["set", "del"], &mut || {
        peers.borrow_mut().raw_pair(&rt)
    });
    measure("rslock", &["set", "evalsha"], &mut || {
        peers.borrow().rslock_pair(&rt)
    });
    measure("distributed-lock-redis", &["set", "eval"], &mut || {
        peers.borrow().distributed_lock_pair(&rt)
    });
    group.finish();
}

criterion_group!(
    benches,
    acquire_release,
    live_keys,
    servers,
    redis_server_time
);
criterion_main!(benches);
