//! PostgreSQL with `durability=guard` (grants committed without a flush, a crash waited
//! out): the conformance suite on the shared server (`CONC_TEST_POSTGRES_URL`), a flushing
//! store refused on a guarded table, a private server killed with SIGKILL in the middle
//! of grants (grants it answered are lost, and no other holder gets their keys while those
//! leases could be live; fences go forward), and a clean restart (nothing lost, no wait).

// A test may panic on an unexpected row; library code may not (clippy.toml).
#![allow(clippy::disallowed_methods)]
#![cfg(all(feature = "postgres", feature = "conformance"))]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use conc_lock_store::servers::PrivatePostgres;
use conc_lock_store::{
    LockError, LockRequest, LockStore, PostgresConfig, PostgresDurability, PostgresLockStore,
    conformance,
};

fn url() -> Option<String> {
    match std::env::var("CONC_TEST_POSTGRES_URL") {
        Ok(url) => Some(url),
        Err(_) => {
            println!(
                "skipped: CONC_TEST_POSTGRES_URL is not set, so the PostgreSQL lock store's guard mode is not tested on it"
            );
            None
        }
    }
}

fn unique(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("conc_test_{name}_{}_{nanos}", std::process::id())
}

fn guarded(schema: &str) -> PostgresConfig {
    PostgresConfig::default()
        .with_schema(schema.to_owned())
        .with_durability(PostgresDurability::Guard)
}

async fn execute(url: &str, sql: &str) -> Vec<tokio_postgres::Row> {
    let (client, connection) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_postgres::connect(url, tokio_postgres::NoTls),
    )
    .await
    .expect("PostgreSQL answers within 10 s")
    .expect("connect to PostgreSQL");
    tokio::spawn(connection);
    client.query(sql, &[]).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarded_store_conforms_and_a_flushing_one_refuses_its_table() {
    let Some(url) = url() else { return };
    let schema = unique("guard");
    let store = PostgresLockStore::connect(&url, guarded(&schema))
        .await
        .unwrap();
    conformance::run_all(Arc::new(store), "pg-guard").await;
    let refused =
        PostgresLockStore::connect(&url, PostgresConfig::default().with_schema(schema.clone()))
            .await
            .unwrap_err();
    assert!(
        matches!(&refused, LockError::Unsafe { reason, .. } if reason.contains("durability=guard")),
        "{refused}"
    );
    let from_url = conc_lock_store::connect(&format!(
        "{url}{}schema={schema}&durability=guard",
        if url.contains('?') { '&' } else { '?' }
    ))
    .await
    .unwrap();
    let lease = from_url
        .try_acquire(&LockRequest::new("url", "holder", Duration::from_secs(5)))
        .await
        .unwrap()
        .expect("free");
    assert!(from_url.release(&lease).await.unwrap());
    let typo = conc_lock_store::connect(&format!("{url}?durability=gaurd"))
        .await
        .unwrap_err();
    assert!(typo.to_string().contains("durability"), "{typo}");
    execute(&url, &format!("DROP SCHEMA \"{schema}\" CASCADE")).await;
}

/// The server is killed (every process, SIGKILL) right after a run of grants it answered
/// without flushing them, with the WAL writer and background writer slowed so that the
/// grants are still in its memory. After the restart the grants are gone from the table,
/// and yet no other holder gets a key before the lease it replaced has run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_that_loses_grants_is_waited_out() {
    let Some(server) = PrivatePostgres::start(None, &[]).unwrap() else {
        return;
    };
    server
        .configure(
            "wal_writer_delay = 10000ms\nbgwriter_lru_maxpages = 0\ncheckpoint_timeout = 3600",
        )
        .unwrap();
    server.crash().unwrap();
    server.start_again().unwrap();
    let url = server.url("postgres", "postgres", "");
    let config = || guarded("crash").with_op_timeout(Duration::from_secs(2));
    let holder = PostgresLockStore::connect(&url, config()).await.unwrap();
    let ttl = Duration::from_secs(3);
    let mut leases = Vec::new();
    for n in 0..40 {
        let request = LockRequest::new(format!("k{n}"), "holder", ttl);
        leases.push(holder.try_acquire(&request).await.unwrap().expect("free"));
        // Enough grants, and the last of them still only in the server's memory: its
        // WAL inserted but not yet written out (the WAL writer writes whole pages early).
        let unwritten = execute(
            &url,
            "SELECT pg_current_wal_insert_lsn() > pg_current_wal_lsn()",
        )
        .await[0]
            .get::<_, bool>(0);
        if n >= 19 && unwritten {
            break;
        }
    }
    server.crash().unwrap();
    server.start_again().unwrap();

    let kept = execute(
        &url,
        "SELECT count(*) FROM crash.conc_locks WHERE owner = 'holder' AND token NOT LIKE 'released:%'",
    )
    .await[0]
        .get::<_, i64>(0);
    assert!(
        kept < leases.len() as i64,
        "the crash lost some of the answered grants (kept {kept} of {}): else this test proves nothing",
        leases.len()
    );

    println!(
        "the crash lost {} of the {} grants the server had answered",
        leases.len() as i64 - kept,
        leases.len()
    );
    let other = PostgresLockStore::connect(&url, config()).await.unwrap();
    let latest_expiry = leases.iter().map(|l| l.expires_at).max().unwrap();
    let mut until = None;
    for lease in &leases {
        let intruder = LockRequest::new(&lease.key, "intruder", ttl);
        match other.try_acquire(&intruder).await {
            Err(LockError::Recovering { until: at, .. }) => {
                assert!(
                    at >= latest_expiry,
                    "the wait ends after every lost lease ({at:?} < {latest_expiry:?})"
                );
                until = Some(at);
            }
            answer => panic!(
                "{}: no grant while a lost lease could be live: {answer:?}",
                lease.key
            ),
        }
    }
    // The holder's own store (its connections broken by the crash) is refused as well.
    let again = LockRequest::new("k0", "holder-again", ttl);
    assert!(matches!(
        holder.try_acquire(&again).await,
        Err(LockError::Recovering { .. })
    ));

    let until = until.unwrap();
    if let Ok(left) = until.duration_since(SystemTime::now()) {
        tokio::time::sleep(left + Duration::from_millis(50)).await;
    }
    for lease in &leases {
        let intruder = LockRequest::new(&lease.key, "intruder", ttl);
        let taken = other
            .try_acquire(&intruder)
            .await
            .unwrap()
            .expect("free once the wait is over");
        assert!(
            taken.fence > lease.fence,
            "{}: fences go forward through the crash",
            lease.key
        );
    }
}

/// A clean restart writes every commit to the disk before it stops: nothing is lost, the
/// marker stays, and grants go on at once (no needless wait).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_restart_loses_nothing_and_grants_go_on() {
    let Some(server) = PrivatePostgres::start(None, &[]).unwrap() else {
        return;
    };
    let url = server.url("postgres", "postgres", "");
    let store = PostgresLockStore::connect(&url, guarded("clean"))
        .await
        .unwrap();
    let ttl = Duration::from_secs(30);
    let held = store
        .try_acquire(&LockRequest::new("held", "holder", ttl))
        .await
        .unwrap()
        .expect("free");
    server.restart().unwrap();
    assert!(
        store
            .try_acquire(&LockRequest::new("held", "other", ttl))
            .await
            .unwrap()
            .is_none(),
        "the grant, committed without a flush, survived the clean restart"
    );
    let fresh = store
        .try_acquire(&LockRequest::new("fresh", "holder", ttl))
        .await
        .unwrap()
        .expect("granted at once after a clean restart");
    assert!(fresh.fence > held.fence);
}
