//! Where one server saturates: acquire+release pairs per second with 2, 8 and 32 clients,
//! each on keys of its own (no contention: the server's work, not the lock's queue), for
//! PostgreSQL and Redis when their URLs are set, and SQLite (one file) for comparison.
//!
//! Not a criterion bench: throughput at a concurrency level is one number per run. Writes
//! `target/conc-bench/scale.md`. `cargo bench -p conc-benches --bench scale` (`-- --quick`
//! for 0.5 s per level instead of 3 s).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use conc_lock_store::{
    LockRequest, LockStore, PostgresConfig, PostgresLockStore, RedisConfig, RedisLockStore,
    SqliteLockStore,
};

/// Pairs per second with `clients` concurrent clients for `length`.
async fn pairs_per_second(store: Arc<dyn LockStore>, clients: usize, length: Duration) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + length;
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let (store, done) = (store.clone(), done.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let request = LockRequest::new(
                        format!("scale:{client}:{}", n % 64),
                        "bench",
                        Duration::from_secs(30),
                    );
                    let lease = store
                        .try_acquire(&request)
                        .await
                        .expect("try_acquire")
                        .expect("a key of its own is free");
                    store.release(&lease).await.expect("release");
                    n += 1;
                }
                done.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("client");
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let (wanted, quick) = conc_benches::table_bench_args("scale");
    if !wanted {
        return;
    }
    let length = Duration::from_millis(if quick { 300 } else { 3000 });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let levels = [2usize, 8, 32];
    let mut table = String::from(
        "| backend | 2 clients | 8 clients | 32 clients |\n| --- | ---: | ---: | ---: |\n",
    );
    runtime.block_on(async {
        let mut stores: Vec<(&str, Arc<dyn LockStore>)> = vec![(
            "sqlite",
            Arc::new(
                SqliteLockStore::open(dir.path().join("scale.db"))
                    .await
                    .expect("open"),
            ),
        )];
        match std::env::var("CONC_TEST_POSTGRES_URL") {
            Ok(url) => {
                let config = PostgresConfig::default()
                    .with_table("conc_bench_scale")
                    .with_pool_size(32);
                stores.push((
                    "postgres",
                    Arc::new(
                        PostgresLockStore::connect(&url, config)
                            .await
                            .expect("connect"),
                    ),
                ));
            }
            Err(_) => println!(
                "skipped: CONC_TEST_POSTGRES_URL is not set, so PostgreSQL's saturation is not measured"
            ),
        }
        match std::env::var("CONC_TEST_REDIS_URL") {
            Ok(url) => {
                let config = RedisConfig::default()
                    .with_prefix(format!("conc-bench-scale:{}:", std::process::id()));
                stores.push((
                    "redis",
                    Arc::new(RedisLockStore::connect(&url, config).await.expect("connect")),
                ));
            }
            Err(_) => println!(
                "skipped: CONC_TEST_REDIS_URL is not set, so Redis's saturation is not measured"
            ),
        }
        for (name, store) in stores {
            let mut row = format!("| {name} |");
            for clients in levels {
                let rate = pairs_per_second(store.clone(), clients, length).await;
                row.push_str(&format!(" {rate:.0} |"));
            }
            println!("{row}");
            table.push_str(&row);
            table.push('\n');
        }
    });
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/conc-bench");
    let _ = std::fs::create_dir_all(&out);
    let report = format!(
        "# Saturation\n\nAcquire+release pairs per second, each client on keys of its own, {}s per level, on a machine with {cpus} CPUs (the server on the same machine).\n\n{table}",
        length.as_secs()
    );
    if let Err(e) = std::fs::write(out.join("scale.md"), report) {
        eprintln!("cannot write scale.md: {e}");
    }
}
