//! The session store is a fenced resource: a generation that was stopped, superseded or
//! paused past its lease never writes, on the memory, SQLite and PostgreSQL session stores,
//! and a stop through another manager (another process) fences the generation out at once
//! and frees the conversation at once.

use std::sync::Arc;
use std::time::Duration;

use conc_lock_store::{LockStore, MemoryLockStore, SqliteLockStore};
use conc_session::{
    GenerationMode, GenerationWrite, MemorySessionStore, Message, Role, SessionConfig,
    SessionContext, SessionData, SessionError, SessionManager, SessionStore, SqliteSessionStore,
};

fn manager(
    sessions: Arc<dyn SessionStore>,
    locks: Arc<dyn LockStore>,
    ttl: Duration,
) -> SessionManager {
    SessionManager::new(SessionContext {
        sessions,
        locks,
        config: SessionConfig::default().with_generation_ttl(ttl),
    })
}

fn reply(id: &str) -> Message {
    Message::new(id, Role::Assistant, format!("reply {id}"))
}

/// The store itself: an older fence is refused and nothing is written; an ordinary save
/// never lowers the fence.
async fn store_refuses_older_fences(store: Arc<dyn SessionStore>, id: &str) {
    store.create(&SessionData::new(id)).await.unwrap();
    assert_eq!(store.advance_fence(id, 10).await.unwrap(), 10);
    assert_eq!(
        store.advance_fence(id, 10).await.unwrap(),
        10,
        "an equal fence is fine"
    );
    let error = store.advance_fence(id, 9).await.unwrap_err();
    assert!(
        matches!(
            error,
            SessionError::StaleFence {
                fence: 9,
                seen: 10,
                ..
            }
        ),
        "{error}"
    );
    let mut copy = store.load(id).await.unwrap().unwrap();
    assert_eq!(copy.fence, 10);
    copy.messages.push(reply("stale"));
    let error = store.save_fenced(&copy, 5).await.unwrap_err();
    assert!(
        matches!(
            error,
            SessionError::StaleFence {
                fence: 5,
                seen: 10,
                ..
            }
        ),
        "{error}"
    );
    let unchanged = store.load(id).await.unwrap().unwrap();
    assert!(unchanged.messages.is_empty(), "nothing written");
    assert_eq!(unchanged.version, copy.version);
    let saved = store.save_fenced(&copy, 12).await.unwrap();
    assert_eq!(saved.fence, 12);
    // An ordinary save (a user's message) keeps the recorded fence.
    let mut copy = store.load(id).await.unwrap().unwrap();
    copy.fence = 0;
    copy.messages.push(Message::new("user", Role::User, "hi"));
    store.save(&copy).await.unwrap();
    let stored = store.load(id).await.unwrap().unwrap();
    assert_eq!(stored.fence, 12);
    assert_eq!(stored.messages.len(), 2);
    let error = store.advance_fence("missing", 1).await.unwrap_err();
    assert!(matches!(error, SessionError::NotFound(_)), "{error}");
}

/// Stops, take-overs and newer generations fence the old one out; a stop through another
/// manager frees the conversation at once.
async fn generations_are_fenced(
    sessions: Arc<dyn SessionStore>,
    locks: Arc<dyn LockStore>,
    conversation: &str,
) {
    let ttl = Duration::from_secs(30);
    let here = manager(sessions.clone(), locks.clone(), ttl);
    let there = manager(sessions.clone(), locks.clone(), ttl);
    here.create_session(conversation).await.unwrap();

    // A stop in the same process.
    let first = here
        .start_generation(conversation, "u", "m-1", GenerationMode::Reject)
        .await
        .unwrap();
    assert!(here.stop_generation(conversation).await.unwrap());
    assert_eq!(
        first.append_reply(reply("m-1-reply")).await.unwrap(),
        GenerationWrite::Stopped
    );
    drop(first);

    // A stop through another manager: the generator's signal fires within a second, the
    // conversation is free at once, and the stopped generation cannot write.
    let second = here
        .start_generation(conversation, "u", "m-2", GenerationMode::Reject)
        .await
        .unwrap();
    let signal = second.signal();
    assert!(there.stop_generation(conversation).await.unwrap());
    assert!(
        !there.is_generating(conversation).await.unwrap(),
        "freed at once"
    );
    tokio::time::timeout(Duration::from_secs(1), signal.aborted())
        .await
        .expect("the stop reached the generator within 1 s");
    let refused = second.append_reply(reply("m-2-reply")).await.unwrap();
    assert!(!refused.is_committed(), "{refused:?}");
    // A new generation starts at once, through either manager.
    let third = there
        .start_generation(conversation, "u", "m-3", GenerationMode::Reject)
        .await
        .unwrap();
    drop(second);

    // A forced release (an operator) lets a fourth in while the third still runs: the
    // fourth's start fences the third out, whatever the third's lease says.
    assert!(
        locks
            .force_release(&format!("generation:{conversation}"))
            .await
            .unwrap()
    );
    let fourth = here
        .start_generation(conversation, "u", "m-4", GenerationMode::Reject)
        .await
        .unwrap();
    assert!(fourth.fence() > third.fence());
    let late = third.append_reply(reply("m-3-reply")).await.unwrap();
    assert!(
        matches!(
            late,
            GenerationWrite::Superseded { .. } | GenerationWrite::LeaseLost
        ),
        "{late:?}"
    );
    let written = fourth.append_reply(reply("m-4-reply")).await.unwrap();
    assert!(
        matches!(written, GenerationWrite::Appended(a) if a.added && a.fence == fourth.fence()),
        "the current generation writes: {written:?}"
    );
    let saved = here.session(conversation).await.unwrap();
    let replies: Vec<_> = saved
        .messages
        .iter()
        .filter(|m| m.role == Role::Assistant)
        .map(|m| (m.id.as_str(), m.fence))
        .collect();
    assert_eq!(replies, [("m-4-reply", Some(fourth.fence()))]);
    assert!(fourth.finish().await.unwrap());
    assert!(here.stats().stale_results_dropped >= 2);
}

/// A generation paused past its lease (its whole runtime blocked, renewals included)
/// sees the loss on waking, before it can write, and a newer generation's fence would stop
/// it anyway.
async fn a_paused_generation_cannot_write(
    sessions: Arc<dyn SessionStore>,
    locks: Arc<dyn LockStore>,
    conversation: &str,
) {
    let ttl = Duration::from_millis(300);
    let paused = manager(sessions.clone(), locks.clone(), ttl);
    paused.create_session(conversation).await.unwrap();
    let generation = paused
        .start_generation(conversation, "u", "m-1", GenerationMode::Reject)
        .await
        .unwrap();
    // The pause: this thread, and with it the runtime's renewal task, stops.
    std::thread::sleep(ttl * 2);
    assert!(
        generation.signal().is_aborted(),
        "the signal fired on waking"
    );
    assert_eq!(
        generation.append_reply(reply("m-1-reply")).await.unwrap(),
        GenerationWrite::LeaseLost
    );
    assert!(
        paused
            .session(conversation)
            .await
            .unwrap()
            .messages
            .is_empty()
    );
}

#[tokio::test]
async fn memory_sessions_are_fenced() {
    store_refuses_older_fences(Arc::new(MemorySessionStore::new()), "s").await;
    let sessions: Arc<dyn SessionStore> = Arc::new(MemorySessionStore::new());
    let locks: Arc<dyn LockStore> = Arc::new(MemoryLockStore::new());
    generations_are_fenced(sessions.clone(), locks.clone(), "conv").await;
    a_paused_generation_cannot_write(sessions, locks, "paused").await;
}

#[tokio::test]
async fn sqlite_sessions_are_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let sessions: Arc<dyn SessionStore> = Arc::new(
        SqliteSessionStore::open(dir.path().join("sessions.db"))
            .await
            .unwrap(),
    );
    store_refuses_older_fences(sessions.clone(), "s").await;
    // Two lock stores on one file stand for two processes.
    let locks: Arc<dyn LockStore> = Arc::new(
        SqliteLockStore::open(dir.path().join("locks.db"))
            .await
            .unwrap(),
    );
    generations_are_fenced(sessions.clone(), locks.clone(), "conv").await;
    a_paused_generation_cannot_write(sessions, locks, "paused").await;
}

/// The generation lock on a private three-member etcd cluster, the sessions on SQLite.
#[cfg(feature = "etcd")]
#[tokio::test]
async fn sqlite_sessions_with_etcd_locks_are_fenced() {
    let Some(cluster) = conc_lock_store::servers::PrivateEtcdCluster::start(3).unwrap() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sessions: Arc<dyn SessionStore> = Arc::new(
        SqliteSessionStore::open(dir.path().join("sessions.db"))
            .await
            .unwrap(),
    );
    let locks: Arc<dyn LockStore> = Arc::new(
        conc_lock_store::EtcdLockStore::connect(
            &cluster.url(),
            conc_lock_store::EtcdConfig::default(),
        )
        .await
        .unwrap(),
    );
    generations_are_fenced(sessions.clone(), locks.clone(), "conv").await;
    a_paused_generation_cannot_write(sessions, locks, "paused").await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_sessions_are_fenced() {
    let Ok(url) = std::env::var("CONC_TEST_POSTGRES_URL") else {
        println!(
            "skipped: CONC_TEST_POSTGRES_URL is not set, so the PostgreSQL session store is not tested"
        );
        return;
    };
    let schema = format!("conc_fenced_{}", std::process::id());
    let sessions: Arc<dyn SessionStore> = Arc::new(
        conc_session::PostgresSessionStore::connect(&url, &schema)
            .await
            .unwrap(),
    );
    let locks: Arc<dyn LockStore> = Arc::new(
        conc_lock_store::PostgresLockStore::connect(
            &url,
            conc_lock_store::PostgresConfig::default().with_schema(schema.clone()),
        )
        .await
        .unwrap(),
    );
    store_refuses_older_fences(sessions.clone(), "s").await;
    generations_are_fenced(sessions.clone(), locks.clone(), "conv").await;
    a_paused_generation_cannot_write(sessions, locks, "paused").await;
    let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    admin
        .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .await
        .unwrap();
}

/// The PostgreSQL session store survives `pg_terminate_backend` of its connections in the
/// middle of a run (only its own, found by a unique application name): every update is
/// retried on a fresh connection and applied once.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sessions_survive_terminated_connections() {
    let Ok(url) = std::env::var("CONC_TEST_POSTGRES_URL") else {
        println!(
            "skipped: CONC_TEST_POSTGRES_URL is not set, so the PostgreSQL session store is not tested"
        );
        return;
    };
    let schema = format!("conc_terminated_{}", std::process::id());
    let application = format!("conc-session-test-{}", std::process::id());
    let pool = conc_lock_store::postgres_pool(
        &url,
        &conc_lock_store::PostgresConfig::default().with_application_name(application.clone()),
    )
    .unwrap();
    let sessions: Arc<dyn SessionStore> = Arc::new(
        conc_session::PostgresSessionStore::from_pool(pool, &schema)
            .await
            .unwrap(),
    );
    let manager = manager(
        sessions,
        Arc::new(MemoryLockStore::new()),
        Duration::from_secs(30),
    );
    manager.create_session("s").await.unwrap();
    let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    for n in 0..10 {
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
                &[&application],
            )
            .await
            .unwrap();
        manager
            .update_session("s", |data| {
                let count: u32 = data
                    .metadata
                    .get("count")
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                data.metadata
                    .insert("count".into(), (count + 1).to_string());
            })
            .await
            .unwrap_or_else(|e| panic!("update {n} failed: {e}"));
    }
    let session = manager.session("s").await.unwrap();
    assert_eq!(session.metadata["count"], "10");
    admin
        .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .await
        .unwrap();
}
