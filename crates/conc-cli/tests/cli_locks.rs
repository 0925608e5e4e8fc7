//! `conc locks`, run as an operator runs it, against SQLite, and against PostgreSQL and
//! Redis when their test URLs are set.

use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use conc_lock_store::{
    LockRequest, LockStore, PostgresConfig, PostgresLockStore, RedisConfig, RedisLockStore,
    SqliteLockStore,
};

fn conc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_conc"))
        .args(args)
        .output()
        .expect("run conc")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "conc failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs every `conc locks` command against `spec`, where `store` is the same store.
async fn exercise(store: Arc<dyn LockStore>, spec: &str, prefix: &str) {
    let key = format!("{prefix}conversation:7");
    let request = LockRequest::new(&key, "generator-on-host-3", Duration::from_secs(60))
        .with_metadata("message_id", "m-9");
    let lease = store.try_acquire(&request).await.unwrap().expect("free");
    // A lease that runs out before the listing: long enough for a loaded machine to answer
    // its grant within it (a reply later than the TTL is refused as `LateReply`), then
    // waited out.
    let expired_ttl = Duration::from_millis(400);
    let expired = LockRequest::new(format!("{prefix}expired"), "gone", expired_ttl);
    store.try_acquire(&expired).await.unwrap().expect("free");
    tokio::time::sleep(expired_ttl).await;

    let listed = stdout(&conc(&[
        "locks", "list", "--prefix", prefix, "--locks", spec,
    ]));
    assert!(listed.starts_with("KEY"), "{listed}");
    assert!(
        listed.contains("AGE") && listed.contains("LEFT"),
        "{listed}"
    );
    let second = LockRequest::new(
        format!("{prefix}conversation:8"),
        "other",
        Duration::from_secs(60),
    );
    let second = store.try_acquire(&second).await.unwrap().expect("free");
    let cut = stdout(&conc(&[
        "locks", "list", "--prefix", prefix, "--limit", "1", "--locks", spec,
    ]));
    assert!(cut.contains("raise --limit"), "the cut is said: {cut}");
    store.release(&second).await.unwrap();
    assert!(
        listed.contains(&key)
            && listed.contains("generator-on-host-3")
            && listed.contains("message_id=m-9"),
        "{listed}"
    );

    let json = stdout(&conc(&[
        "locks", "inspect", &key, "--json", "--locks", spec,
    ]));
    let value: serde_json::Value = serde_json::from_str(json.trim()).expect("JSON");
    assert_eq!(value["owner"], "generator-on-host-3");
    assert_eq!(value["fence"], lease.fence);

    let refused = conc(&["locks", "release", &key, "--locks", spec]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--force"));
    assert!(
        store.is_locked(&key).await.unwrap(),
        "nothing released without --force"
    );

    let released = stdout(&conc(&[
        "locks", "release", &key, "--force", "--locks", spec,
    ]));
    assert!(released.contains("released"), "{released}");
    assert!(
        released.contains("keeps running until it notices") && released.contains("new fence"),
        "{released}"
    );
    assert!(!store.is_locked(&key).await.unwrap());
    assert!(
        !store.release(&lease).await.unwrap(),
        "the holder learns it lost the lease"
    );

    tokio::time::sleep(Duration::from_millis(60)).await;
    let cleaned = stdout(&conc(&["locks", "cleanup", "--json", "--locks", spec]));
    let value: serde_json::Value = serde_json::from_str(cleaned.trim()).expect("JSON");
    assert!(value["removed"].as_u64().unwrap() >= 1, "{cleaned}");
    let inspected = stdout(&conc(&["locks", "inspect", &key, "--locks", spec]));
    assert!(inspected.contains("is not locked"), "{inspected}");
}

#[tokio::test]
async fn purge_refuses_live_locks_and_the_default_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("locks.db");
    let store = SqliteLockStore::open(&path).await.unwrap();
    let lease = store
        .try_acquire(&LockRequest::new(
            "purge:1",
            "worker",
            Duration::from_secs(60),
        ))
        .await
        .unwrap()
        .unwrap();
    let spec = format!("sqlite:{}", path.display());
    let refused = conc(&["locks", "purge", "--locks", &spec]);
    assert!(!refused.status.success(), "a live lock refuses the purge");
    assert!(store.is_locked("purge:1").await.unwrap());
    let purged = conc(&["locks", "purge", "--force", "--locks", &spec]);
    assert!(
        purged.status.success(),
        "{}",
        String::from_utf8_lossy(&purged.stderr)
    );
    assert!(!store.is_locked("purge:1").await.unwrap());
    assert!(!store.release(&lease).await.unwrap());
    // The default namespace of a shared server is refused before anything is opened.
    let output = conc(&["locks", "purge", "--locks", "redis://127.0.0.1:1"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("default namespace") && stderr.contains("--force"),
        "{stderr}"
    );
    let output = conc(&["locks", "purge", "--prefix", "x:", "--locks", &spec]);
    assert!(
        !output.status.success(),
        "--prefix names a Redis or etcd prefix"
    );
}

#[tokio::test]
async fn locks_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("locks.db");
    let store = Arc::new(SqliteLockStore::open(&path).await.unwrap());
    exercise(store, &format!("sqlite:{}", path.display()), "cli-test:").await;
}

#[tokio::test]
async fn locks_on_postgres() {
    let Ok(url) = std::env::var("CONC_TEST_POSTGRES_URL") else {
        println!(
            "skipped: CONC_TEST_POSTGRES_URL is not set, so `conc locks` is not tested on PostgreSQL"
        );
        return;
    };
    let store = Arc::new(
        PostgresLockStore::connect(&url, PostgresConfig::default())
            .await
            .expect("PostgreSQL answers"),
    );
    let prefix = format!("cli-test-{}:", std::process::id());
    exercise(store, &url, &prefix).await;
}

#[tokio::test]
async fn locks_on_redis_leaves_no_keys() {
    let Ok(url) = std::env::var("CONC_TEST_REDIS_URL") else {
        println!("skipped: CONC_TEST_REDIS_URL is not set, so `conc locks` is not tested on Redis");
        return;
    };
    let store = Arc::new(
        RedisLockStore::connect(&url, RedisConfig::default())
            .await
            .expect("Redis answers"),
    );
    let prefix = format!("cli-test-{}:", std::process::id());
    exercise(store, &url, &prefix).await;
}

/// `conc locks` on a Redis Cluster of the test's own, named by a `redis+cluster://` URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_on_a_redis_cluster() {
    let Some(cluster) = conc_lock_store::servers::PrivateRedisCluster::start(3, 0).unwrap() else {
        return;
    };
    let url = cluster.url();
    let store = Arc::new(
        RedisLockStore::connect(&url, RedisConfig::default())
            .await
            .expect("the cluster answers"),
    );
    exercise(store, &url, "cli-cluster:").await;
}
