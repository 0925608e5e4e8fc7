//! Sessions under the network's faults between a manager and its lock store: one manager
//! reaches the lock store (Redis, and PostgreSQL with the `postgres` feature) through a
//! fault-injecting proxy, another goes straight to it, and both share one session store.
//! A generation whose renewals are cut off, one stopped while its lock store is cut off,
//! and one whose start was answered too late never write; the other manager's generation
//! does.

#![cfg(feature = "sqlite")]

use std::sync::Arc;
use std::time::Duration;

use conc_lock_store::LockStore;
use conc_lock_store::proxy::{Fault, FaultProxy};
use conc_session::{
    GenerationMode, GenerationWrite, Message, Role, SessionConfig, SessionContext, SessionManager,
    SessionStore, SqliteSessionStore,
};

fn manager(sessions: Arc<dyn SessionStore>, locks: Arc<dyn LockStore>) -> SessionManager {
    SessionManager::new(SessionContext {
        sessions,
        locks,
        config: SessionConfig::default().with_generation_ttl(Duration::from_secs(2)),
    })
}

fn reply(id: &str) -> Message {
    Message::new(id, Role::Assistant, format!("reply {id}"))
}

/// The assistant replies saved in `conversation`.
async fn replies(manager: &SessionManager, conversation: &str) -> Vec<String> {
    manager
        .session(conversation)
        .await
        .unwrap()
        .messages
        .iter()
        .filter(|m| m.role == Role::Assistant)
        .map(|m| m.id.clone())
        .collect()
}

const QUEUE: GenerationMode = GenerationMode::Queue {
    max_wait: Duration::from_secs(10),
};

/// `here` reaches the lock store through `proxy`; `there` goes straight to it.
async fn run_all(
    name: &str,
    here: SessionManager,
    there: SessionManager,
    proxy: FaultProxy,
    here_locks: Arc<dyn LockStore>,
) {
    let pid = std::process::id();
    let t0 = tokio::time::Instant::now();
    macro_rules! at {
        ($what:expr) => {
            println!("{name}: {} at {:?}", $what, t0.elapsed())
        };
    }

    // Renewals cut off: the generation learns its loss, the other manager takes the
    // conversation once the lease ran out, and after the heal the old one cannot write.
    let conversation = format!("net-{name}-cut-{pid}");
    here.create_session(&conversation).await.unwrap();
    let cut = here
        .start_generation(&conversation, "u", "m-1", GenerationMode::Reject)
        .await
        .unwrap();
    proxy.set(Fault::BlackHole);
    tokio::time::timeout(Duration::from_secs(10), cut.signal().aborted())
        .await
        .unwrap_or_else(|_| panic!("{name}: the cut-off generation learns of its loss"));
    let next = there
        .start_generation(&conversation, "u", "m-2", QUEUE)
        .await
        .unwrap();
    at!("cut: next started");
    proxy.set(Fault::Pass);
    let late = cut.append_reply(reply("m-1-reply")).await.unwrap();
    assert!(!late.is_committed(), "{name}: {late:?}");
    let written = next.append_reply(reply("m-2-reply")).await.unwrap();
    assert!(
        matches!(written, GenerationWrite::Appended(_)),
        "{name}: {written:?}"
    );
    assert_eq!(replies(&there, &conversation).await, ["m-2-reply"]);
    drop(cut);
    assert!(next.finish().await.unwrap());

    // Stopped through the other manager while cut off from the lock store: the stop fences
    // the session store at once, so the generation's write is refused.
    let conversation = format!("net-{name}-stop-{pid}");
    here.create_session(&conversation).await.unwrap();
    let stopped = here
        .start_generation(&conversation, "u", "m-1", GenerationMode::Reject)
        .await
        .unwrap();
    proxy.set(Fault::BlackHole);
    assert!(there.stop_generation(&conversation).await.unwrap());
    let refused = stopped.append_reply(reply("m-1-reply")).await.unwrap();
    assert!(!refused.is_committed(), "{name}: {refused:?}");
    proxy.set(Fault::Pass);
    assert!(replies(&there, &conversation).await.is_empty());
    drop(stopped);

    // A start whose answer is held past the lease: the other manager takes the
    // conversation meanwhile, and the late start never writes.
    let conversation = format!("net-{name}-late-{pid}");
    here.create_session(&conversation).await.unwrap();
    // A connection to the lock store is open, and the acquire's statement (or script)
    // known on it, before the replies are held: a new connection could not finish its
    // handshake, and a first acquire on a fresh one waits for its statement's preparation
    // to be answered, so the start would never reach the store.
    assert!(!here_locks.is_locked("warm-up").await.unwrap());
    let warm = here_locks
        .try_acquire(&conc_lock_store::LockRequest::new(
            "warm-up",
            "warm",
            Duration::from_secs(5),
        ))
        .await
        .unwrap()
        .expect("the warm-up key is free");
    assert!(here_locks.release(&warm).await.unwrap());
    proxy.set(Fault::HoldReplies);
    let late_start = {
        let here = here.clone();
        let conversation = conversation.clone();
        tokio::spawn(async move {
            here.start_generation(&conversation, "u", "m-1", GenerationMode::Reject)
                .await
        })
    };
    // The store granted the held start: the other manager sees the conversation busy.
    let asked = tokio::time::Instant::now();
    while !there.is_generating(&conversation).await.unwrap() {
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "{name}: the held start reaches the store"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let current = there
        .start_generation(&conversation, "u", "m-2", QUEUE)
        .await
        .unwrap();
    at!("late: current started");
    proxy.set(Fault::Pass);
    let late_start = late_start.await.unwrap();
    at!(format!(
        "late: the late start returned {:?}",
        late_start.as_ref().err()
    ));
    assert!(
        matches!(
            &late_start,
            Err(conc_session::GenerationError::Lock(
                conc_lock_store::LockError::LateReply { .. }
            ))
        ),
        "{name}: a start answered after its lease ran out is refused: {:?}",
        late_start.as_ref().err()
    );
    if let Ok(generation) = late_start {
        let write = generation.append_reply(reply("m-1-reply")).await.unwrap();
        assert!(
            !write.is_committed(),
            "{name}: a start answered after its lease ran out wrote: {write:?}"
        );
    }
    let written = current.append_reply(reply("m-2-reply")).await.unwrap();
    assert!(
        matches!(written, GenerationWrite::Appended(_)),
        "{name}: {written:?}"
    );
    assert_eq!(replies(&there, &conversation).await, ["m-2-reply"]);
    assert!(current.finish().await.unwrap());
}

async fn sessions() -> (tempfile::TempDir, Arc<dyn SessionStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteSessionStore::open(dir.path().join("sessions.db"))
        .await
        .unwrap();
    (dir, Arc::new(store))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generations_on_redis_under_network_faults() {
    let Ok(url) = std::env::var("CONC_TEST_REDIS_URL") else {
        println!(
            "skipped: CONC_TEST_REDIS_URL is not set, so sessions under network faults on Redis are not tested"
        );
        return;
    };
    let separator = if url.contains('?') { '&' } else { '?' };
    let url = format!(
        "{url}{separator}prefix=conc-session-net-{}:",
        std::process::id()
    );
    let (proxy, proxied) = FaultProxy::in_front_of(&url).await.unwrap();
    let (_dir, sessions) = sessions().await;
    let here_locks = conc_lock_store::connect(&proxied).await.unwrap();
    let here = manager(sessions.clone(), here_locks.clone());
    let direct = conc_lock_store::connect(&url).await.unwrap();
    let there = manager(sessions, direct.clone());
    run_all("redis", here, there, proxy, here_locks).await;
    // The shared server is left as it was found.
    direct.purge(true).await.unwrap();
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generations_on_postgres_under_network_faults() {
    let Ok(url) = std::env::var("CONC_TEST_POSTGRES_URL") else {
        println!(
            "skipped: CONC_TEST_POSTGRES_URL is not set, so sessions under network faults on PostgreSQL are not tested"
        );
        return;
    };
    let (proxy, proxied) = FaultProxy::in_front_of(&url).await.unwrap();
    // One pooled connection, which the scenarios keep open: a held start goes out on it
    // (a new connection could not finish its handshake while replies are held).
    let separator = if url.contains('?') { '&' } else { '?' };
    let proxied = format!("{proxied}{separator}pool_size=1");
    let (_dir, sessions) = sessions().await;
    let here_locks = conc_lock_store::connect(&proxied).await.unwrap();
    let here = manager(sessions.clone(), here_locks.clone());
    let there = manager(sessions, conc_lock_store::connect(&url).await.unwrap());
    run_all("postgres", here, there, proxy, here_locks).await;
}
