//! Atomic updates that lose nothing, the processing lock, and its errors.

use std::sync::Arc;
use std::time::Duration;

use conc_lock_store::MemoryLockStore;
use conc_session::{
    MemorySessionStore, Message, Role, SessionConfig, SessionContext, SessionError, SessionManager,
    SessionStore, SqliteSessionStore,
};

fn manager_with(sessions: Arc<dyn SessionStore>) -> SessionManager {
    SessionManager::new(SessionContext {
        sessions,
        locks: Arc::new(MemoryLockStore::new()),
        config: SessionConfig::default()
            .with_processing_timeout(Duration::from_millis(200))
            .with_max_update_attempts(1000),
    })
}

async fn hundred_updaters_lose_nothing(manager: SessionManager) {
    manager.create_session("s").await.unwrap();
    let tasks: Vec<_> = (0..100)
        .map(|n| {
            let manager = manager.clone();
            tokio::spawn(async move {
                manager
                    .append_message("s", Message::new(format!("m-{n}"), Role::User, "hi"))
                    .await
                    .unwrap();
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let session = manager.session("s").await.unwrap();
    assert_eq!(session.messages.len(), 100);
    assert_eq!(session.version, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_updaters_lose_nothing_in_memory() {
    hundred_updaters_lose_nothing(manager_with(Arc::new(MemorySessionStore::new()))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_updaters_lose_nothing_in_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteSessionStore::open(dir.path().join("sessions.db"))
        .await
        .unwrap();
    hundred_updaters_lose_nothing(manager_with(Arc::new(store))).await;
}

/// Two managers on one file stand for two processes: the version check makes the loser
/// reapply its update, so neither is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_managers_on_one_file_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessions.db");
    let a = manager_with(Arc::new(SqliteSessionStore::open(&path).await.unwrap()));
    let b = manager_with(Arc::new(SqliteSessionStore::open(&path).await.unwrap()));
    a.create_session("s").await.unwrap();
    let run = |m: SessionManager, tag: &'static str| {
        tokio::spawn(async move {
            for n in 0..50 {
                let message = Message::new(format!("{tag}-{n}"), Role::User, "x");
                m.update_session("s", |data| data.messages.push(message.clone()))
                    .await
                    .unwrap();
            }
        })
    };
    let (x, y) = (run(a.clone(), "a"), run(b.clone(), "b"));
    x.await.unwrap();
    y.await.unwrap();
    assert_eq!(a.session("s").await.unwrap().messages.len(), 100);
    assert!(
        a.stats().conflicts_retried + b.stats().conflicts_retried > 0,
        "they did collide"
    );
}

/// Appends from two managers on one file interleave: each is one atomic store operation,
/// so none is lost, none is doubled (a retried id is kept once), and the order is the
/// order they committed in; the version counts every append.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_from_two_managers_on_one_file_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessions.db");
    let a = manager_with(Arc::new(SqliteSessionStore::open(&path).await.unwrap()));
    let b = manager_with(Arc::new(SqliteSessionStore::open(&path).await.unwrap()));
    a.create_session("s").await.unwrap();
    let run = |m: SessionManager, tag: &'static str| {
        tokio::spawn(async move {
            for n in 0..50 {
                let message = Message::new(format!("{tag}-{n}"), Role::User, "x");
                assert!(m.append_message("s", message.clone()).await.unwrap().added);
                assert!(!m.append_message("s", message).await.unwrap().added);
            }
        })
    };
    let (x, y) = (run(a.clone(), "a"), run(b.clone(), "b"));
    x.await.unwrap();
    y.await.unwrap();
    let session = b.session("s").await.unwrap();
    assert_eq!(session.messages.len(), 100);
    assert_eq!(session.version, 100);
    for tag in ["a", "b"] {
        let mine: Vec<&str> = session
            .messages
            .iter()
            .map(|m| m.id.as_str())
            .filter(|id| id.starts_with(tag))
            .collect();
        let expected: Vec<String> = (0..50).map(|n| format!("{tag}-{n}")).collect();
        assert_eq!(mine, expected, "each writer's messages in its order");
    }
}

#[tokio::test]
async fn a_stale_save_is_a_conflict_and_callers_get_copies() {
    let store = MemorySessionStore::new();
    let mut first = store
        .create(&conc_session::SessionData::new("s"))
        .await
        .unwrap();
    let mut second = first.clone();
    first.metadata.insert("title".into(), "one".into());
    store.save(&first).await.unwrap();
    second.metadata.insert("title".into(), "two".into());
    assert!(matches!(
        store.save(&second).await,
        Err(SessionError::Conflict { expected: 0, .. })
    ));

    let manager = manager_with(Arc::new(MemorySessionStore::new()));
    manager.create_session("s").await.unwrap();
    let mut copy = manager.session("s").await.unwrap();
    copy.messages.push(Message::new("sneaky", Role::User, "x"));
    assert!(
        manager.session("s").await.unwrap().messages.is_empty(),
        "a copy cannot change the manager's state"
    );
}

#[tokio::test]
async fn a_switch_during_processing_is_refused() {
    let manager = manager_with(Arc::new(MemorySessionStore::new()));
    manager.create_session("a").await.unwrap();
    manager.create_session("b").await.unwrap();
    manager.switch_session("a").unwrap();
    let processing = manager.begin_processing("a").await.unwrap();
    assert!(manager.is_processing());
    let refused = manager.switch_session("b").unwrap_err();
    assert!(matches!(&refused, SessionError::Busy { session } if session == "a"));
    assert!(refused.to_string().contains("being processed"));
    drop(processing);
    assert!(!manager.is_processing());
    manager.switch_session("b").unwrap();
    assert_eq!(manager.current_session().await.unwrap().unwrap().id, "b");
}

#[tokio::test]
async fn the_processing_lock_errors_instead_of_hanging() {
    let manager = manager_with(Arc::new(MemorySessionStore::new()));
    manager.create_session("a").await.unwrap();
    let held = manager.begin_processing("a").await.unwrap();
    // The same flow asking again would wait for itself.
    assert!(matches!(
        manager.begin_processing("a").await,
        Err(SessionError::CircularWait)
    ));
    // Another flow times out.
    let other = {
        let manager = manager.clone();
        tokio::spawn(async move { manager.begin_processing("a").await.map(drop) })
    };
    assert!(matches!(
        other.await.unwrap(),
        Err(SessionError::ProcessingTimeout(_))
    ));
    // The session changes while another flow waits.
    let waiter = {
        let manager = manager.clone();
        tokio::spawn(async move { manager.begin_processing("a").await.map(drop) })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(held);
    manager.create_session("b").await.unwrap(); // creating makes it current
    let outcome = waiter.await.unwrap();
    assert!(
        matches!(&outcome, Err(SessionError::SessionSwitched { expected, actual }) if expected == "a" && actual == "b")
            || outcome.is_ok(),
        "{outcome:?}"
    );
    assert!(matches!(
        manager.switch_session(""),
        Err(SessionError::InvalidId(_))
    ));
}
