//! distributed-lock-postgres beside conc's PostgreSQL pair (measured by the main harness in
//! the same group): `try_acquire` (a pooled connection, `pg_try_advisory_lock`) and
//! `release` (`pg_advisory_unlock`), on the same server. An advisory lock lives as long as
//! its connection: no TTL, no fence, no metadata, no take-over, nothing written.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use distributed_lock_core::traits::{DistributedLock as _, LockHandle as _, LockProvider as _};
use distributed_lock_postgres::PostgresLockProvider;

fn pairs(c: &mut Criterion) {
    let Ok(url) = std::env::var("CONC_TEST_POSTGRES_URL") else {
        println!(
            "skipped: CONC_TEST_POSTGRES_URL is not set, so the distributed-lock-postgres row does not run"
        );
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let provider = rt
        .block_on(
            PostgresLockProvider::builder()
                .connection_string(url)
                .build(),
        )
        .expect("distributed-lock-postgres");
    let lock = provider.create_lock("conc-bench:dlp");
    let mut group = c.benchmark_group("lock_server_acquire_release");
    group.bench_function(
        BenchmarkId::new("distributed-lock-postgres", "postgres"),
        |b| {
            b.iter(|| {
                rt.block_on(async {
                    let handle = lock.try_acquire().await.expect("try").expect("free");
                    handle.release().await.expect("release");
                })
            })
        },
    );
    group.finish();
}

criterion_group!(benches, pairs);
criterion_main!(benches);
