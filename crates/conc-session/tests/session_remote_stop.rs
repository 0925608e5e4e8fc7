//! A stop sent from another process right after a generation starts (0, 5 and 10 ms
//! after) reaches the generator at once, on every shared lock store: SQLite (two stores on
//! one file), PostgreSQL, Redis (two connections each, as two processes have) and etcd (a
//! private three-member cluster, with the `etcd` feature). The
//! generator's renewals come every 10 s here (a 30 s TTL), so only the store's watch can
//! tell it within the second.

use std::sync::Arc;
use std::time::Duration;

use conc_lock_store::LockStore;
use conc_session::{
    GenerationMode, MemorySessionStore, SessionConfig, SessionContext, SessionManager,
};

fn manager(sessions: Arc<MemorySessionStore>, locks: Arc<dyn LockStore>) -> SessionManager {
    SessionManager::new(SessionContext {
        sessions,
        locks,
        config: SessionConfig::default().with_generation_ttl(Duration::from_secs(30)),
    })
}

/// Starts generations through one manager and stops each through the other, 0, 5 and
/// 10 ms later; each generator's signal must fire within 1 s.
async fn stops_reach_the_generator(url: &str, what: &str) {
    let here: Arc<dyn LockStore> = conc_lock_store::connect(url).await.expect("connect");
    let there: Arc<dyn LockStore> = conc_lock_store::connect(url).await.expect("connect");
    let sessions = Arc::new(MemorySessionStore::new());
    let generator = manager(sessions.clone(), here);
    let stopper = manager(sessions, there);
    for round in 0..3 {
        for delay_ms in [0_u64, 5, 10] {
            let conversation = format!("stop-{round}-{delay_ms}");
            let generation = generator
                .start_generation(&conversation, "u", "m-1", GenerationMode::Reject)
                .await
                .expect("start");
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            assert!(
                stopper.stop_generation(&conversation).await.expect("stop"),
                "{what}: the stop found the generation"
            );
            let fired =
                tokio::time::timeout(Duration::from_secs(1), generation.signal().aborted()).await;
            assert!(
                fired.is_ok(),
                "{what}: a stop {delay_ms} ms after the start did not reach the generator within 1 s"
            );
        }
    }
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("conc_stop_{name}_{}_{nanos}", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_right_after_the_start_reaches_the_generator_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("locks.db").display());
    stops_reach_the_generator(&url, "sqlite").await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_right_after_the_start_reaches_the_generator_on_postgres() {
    let Ok(url) = std::env::var("CONC_TEST_POSTGRES_URL") else {
        println!(
            "skipped: CONC_TEST_POSTGRES_URL is not set, so the stop is not tried on PostgreSQL"
        );
        return;
    };
    let schema = unique("pg");
    let separator = if url.contains('?') { '&' } else { '?' };
    stops_reach_the_generator(&format!("{url}{separator}schema={schema}"), "postgres").await;
    let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    admin
        .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_right_after_the_start_reaches_the_generator_on_redis() {
    let Ok(url) = std::env::var("CONC_TEST_REDIS_URL") else {
        println!("skipped: CONC_TEST_REDIS_URL is not set, so the stop is not tried on Redis");
        return;
    };
    let prefix = unique("redis");
    let separator = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{separator}prefix={prefix}:");
    stops_reach_the_generator(&url, "redis").await;
    // The shared server is left as it was found.
    conc_lock_store::connect(&url)
        .await
        .unwrap()
        .purge(true)
        .await
        .unwrap();
}

#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_right_after_the_start_reaches_the_generator_on_etcd() {
    let Some(cluster) = conc_lock_store::servers::PrivateEtcdCluster::start(3).expect("etcd")
    else {
        return;
    };
    let prefix = unique("etcd");
    stops_reach_the_generator(&format!("{}?prefix={prefix}/", cluster.url()), "etcd").await;
}
