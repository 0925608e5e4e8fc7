//! Comparison mode: two generations of one conversation at once, each on a permit of its
//! own and fenced within it, on the memory, SQLite and PostgreSQL session stores.

use std::sync::Arc;
use std::time::Duration;

use conc_lock_store::{LockRequest, LockStore, MemoryLockStore, SqliteLockStore};
use conc_session::{
    GenerationError, GenerationMode, GenerationWrite, MemorySessionStore, Message, Role,
    SessionConfig, SessionContext, SessionError, SessionManager, SessionStore,
};

fn manager(sessions: Arc<dyn SessionStore>, locks: Arc<dyn LockStore>) -> SessionManager {
    SessionManager::new(SessionContext {
        sessions,
        locks,
        config: SessionConfig::default()
            .with_generations_per_conversation(2)
            .with_generation_ttl(Duration::from_secs(30)),
    })
}

fn reply(id: &str) -> Message {
    Message::new(id, Role::Assistant, format!("reply {id}"))
}

async fn two_generations_side_by_side(
    sessions: Arc<dyn SessionStore>,
    locks: Arc<dyn LockStore>,
    conversation: &str,
) {
    let here = manager(sessions.clone(), locks.clone());
    let there = manager(sessions.clone(), locks.clone());
    here.create_session(conversation).await.unwrap();
    let a = here
        .start_generation(conversation, "u", "m-1", GenerationMode::Reject)
        .await
        .unwrap();
    let b = there
        .start_generation(conversation, "u", "m-1", GenerationMode::Reject)
        .await
        .unwrap();
    assert!(matches!(
        here.start_generation(conversation, "u", "m-1", GenerationMode::Reject)
            .await,
        Err(GenerationError::InProgress { .. })
    ));
    assert!(here.is_generating(conversation).await.unwrap());
    // Both write: neither fences the other off.
    for (generation, id) in [(&a, "a-1"), (&b, "b-1")] {
        let written = generation.append_reply(reply(id)).await.unwrap();
        assert!(
            matches!(written, GenerationWrite::Appended(ref w) if w.added),
            "{id}: {written:?}"
        );
    }
    // A newer generation on a's permit (another process took it over and recorded its
    // fence): the store refuses a's fence, while b goes on.
    let key = format!("generation:{conversation}");
    let holders = conc_lock_store::Semaphore::new(locks.clone(), 2)
        .unwrap()
        .holders(&key)
        .await
        .unwrap();
    assert_eq!(holders.len(), 2);
    let permit_a = holders
        .iter()
        .find(|h| h.fence == a.fence())
        .expect("a's permit")
        .key
        .clone();
    let scope_a = permit_a.strip_prefix(&key).unwrap().to_owned();
    let newer = locks
        .take_over(&LockRequest::new(
            permit_a.clone(),
            "newer",
            Duration::from_secs(30),
        ))
        .await
        .unwrap();
    sessions
        .advance_scoped_fence(conversation, &scope_a, newer.fence)
        .await
        .unwrap();
    assert!(matches!(
        sessions
            .append_scoped(conversation, &scope_a, &reply("a-late"), a.fence())
            .await,
        Err(SessionError::StaleFence { .. })
    ));
    let refused = a.append_reply(reply("a-2")).await.unwrap();
    assert!(!refused.is_committed(), "{refused:?}");
    assert!(b.append_reply(reply("b-2")).await.unwrap().is_committed());
    assert!(locks.release(&newer).await.unwrap());
    drop(a);
    // A whole-session update is not fenced per permit: refused in comparison mode.
    assert!(b.update(|_| {}).await.is_err());

    // A stop through either manager stops every generation of the conversation.
    let c = here
        .start_generation(
            conversation,
            "u",
            "m-2",
            GenerationMode::Queue {
                max_wait: Duration::from_secs(5),
            },
        )
        .await
        .unwrap();
    assert!(here.stop_generation(conversation).await.unwrap());
    for (generation, id) in [(&b, "b-3"), (&c, "c-1")] {
        let written = generation.append_reply(reply(id)).await.unwrap();
        assert!(!written.is_committed(), "{id} after the stop: {written:?}");
    }
    assert!(!here.is_generating(conversation).await.unwrap());
    drop((b, c));
    let session = sessions.load(conversation).await.unwrap().unwrap();
    let ids: Vec<&str> = session.messages.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["a-1", "b-1", "b-2"]);
    // Free again: two new generations start.
    let d = there
        .start_generation(conversation, "u", "m-3", GenerationMode::Reject)
        .await
        .unwrap();
    let e = here
        .start_generation(conversation, "u", "m-3", GenerationMode::Reject)
        .await
        .unwrap();
    assert!(d.append_reply(reply("d-1")).await.unwrap().is_committed());
    assert!(e.append_reply(reply("e-1")).await.unwrap().is_committed());
    assert!(d.finish().await.unwrap());
    assert!(e.finish().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comparison_mode_in_memory() {
    two_generations_side_by_side(
        Arc::new(MemorySessionStore::new()),
        Arc::new(MemoryLockStore::new()),
        "conv",
    )
    .await;
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comparison_mode_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    two_generations_side_by_side(
        Arc::new(
            conc_session::SqliteSessionStore::open(dir.path().join("sessions.db"))
                .await
                .unwrap(),
        ),
        Arc::new(
            SqliteLockStore::open(dir.path().join("locks.db"))
                .await
                .unwrap(),
        ),
        "conv",
    )
    .await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comparison_mode_on_postgres() {
    let Ok(url) = std::env::var("CONC_TEST_POSTGRES_URL") else {
        println!(
            "skipped: CONC_TEST_POSTGRES_URL is not set, so comparison mode is not tested on PostgreSQL"
        );
        return;
    };
    let schema = format!("conc_comparison_{}", std::process::id());
    let sessions = Arc::new(
        conc_session::PostgresSessionStore::connect(&url, &schema)
            .await
            .unwrap(),
    );
    let locks = Arc::new(
        conc_lock_store::PostgresLockStore::connect(
            &url,
            conc_lock_store::PostgresConfig::default().with_schema(schema.clone()),
        )
        .await
        .unwrap(),
    );
    two_generations_side_by_side(sessions, locks, "conv").await;
    let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    admin
        .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .await
        .unwrap();
}
