//! conc-lock-store beside raw statements: acquire+release pairs on memory and SQLite
//! against raw rusqlite INSERT+DELETE on the same schema, and the cost of a pair with
//! 10^3, 10^5 and 10^6 live keys.

use std::sync::Arc;
use std::time::Duration;

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

fn acquire_release(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let request = LockRequest::new("conversation:bench", "bench", Duration::from_secs(30));
    let mut group = c.benchmark_group("lock_acquire_release");

    let memory: Arc<dyn LockStore> = Arc::new(MemoryLockStore::new());
    group.bench_function(BenchmarkId::new("conc", "memory"), |b| {
        b.iter(|| pair(&rt, &memory, &request))
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
fn filled_memory(rt: &tokio::runtime::Runtime, n: u64) -> Arc<dyn LockStore> {
    let memory: Arc<dyn LockStore> = Arc::new(MemoryLockStore::new());
    rt.block_on(async {
        for i in 0..n {
            let request =
                LockRequest::new(format!("live:{i:08}"), "filler", Duration::from_secs(3600));
            memory.try_acquire(&request).await.expect("fill");
        }
    });
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

/// One acquire+release pair with `n` other live keys in the store (filled only when the
/// case runs, so a filter skips the cost).
fn live_keys(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let request = LockRequest::new("probe:key", "bench", Duration::from_secs(30));
    let mut group = c.benchmark_group("lock_pair_with_live_keys");
    group.sample_size(20);
    // `cargo xtask bench --quick` leaves out the million-key case (its set-up dominates).
    let sizes: &[u64] = if std::env::var_os("CONC_BENCH_QUICK").is_some() {
        &[1_000, 100_000]
    } else {
        &[1_000, 100_000, 1_000_000]
    };
    for &n in sizes {
        // Criterion calls a bench's closure for every sample: fill each store once, and
        // only if the case runs (a filter may skip it).
        let memory = std::cell::OnceCell::new();
        group.bench_function(BenchmarkId::new("memory", n), |b| {
            let store = memory.get_or_init(|| filled_memory(&rt, n));
            b.iter(|| pair(&rt, store, &request))
        });
        drop(memory);
        let dir = tempfile::tempdir().expect("tempdir");
        let sqlite = std::cell::OnceCell::new();
        group.bench_function(BenchmarkId::new("sqlite", n), |b| {
            let store = sqlite.get_or_init(|| filled_sqlite(&rt, dir.path(), n));
            b.iter(|| pair(&rt, store, &request))
        });
    }
    group.finish();
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
            let config = conc_lock_store::PostgresConfig {
                schema: "conc_bench".into(),
                ..Default::default()
            };
            let store: Arc<dyn LockStore> = Arc::new(
                rt.block_on(conc_lock_store::PostgresLockStore::connect(&url, config))
                    .expect("connect"),
            );
            group.bench_function(BenchmarkId::new("conc", "postgres"), |b| {
                b.iter(|| pair(&rt, &store, &request))
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
                         VALUES ($1, 'raw', 't', 1, '', clock_timestamp(), clock_timestamp() + interval '30 seconds')",
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
    match std::env::var("CONC_TEST_REDIS_URL") {
        Err(_) => println!(
            "skipped: CONC_TEST_REDIS_URL is not set, so the Redis lock bench does not run"
        ),
        Ok(url) => {
            let config = conc_lock_store::RedisConfig {
                prefix: "conc-bench:".into(),
                ..Default::default()
            };
            let store: Arc<dyn LockStore> = Arc::new(
                rt.block_on(conc_lock_store::RedisLockStore::connect(&url, config))
                    .expect("connect"),
            );
            group.bench_function(BenchmarkId::new("conc", "redis"), |b| {
                b.iter(|| pair(&rt, &store, &request))
            });
            let mut raw = rt
                .block_on(
                    redis::Client::open(url.as_str())
                        .expect("url")
                        .get_multiplexed_async_connection(),
                )
                .expect("raw");
            group.bench_function(BenchmarkId::new("raw-redis", "redis"), |b| {
                b.iter(|| {
                    rt.block_on(async {
                        let _: Option<String> = redis::cmd("SET")
                            .arg(&["conc-bench:raw", "t", "NX", "PX", "30000"])
                            .query_async(&mut raw)
                            .await
                            .expect("set");
                        let _: i64 = redis::cmd("DEL")
                            .arg("conc-bench:raw")
                            .query_async(&mut raw)
                            .await
                            .expect("del");
                    })
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, acquire_release, live_keys, servers);
criterion_main!(benches);
