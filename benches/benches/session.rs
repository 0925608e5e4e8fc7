//! conc-session: session updates per second on memory and SQLite, appends at 10, 1 000 and
//! 10 000 messages (memory, SQLite, PostgreSQL when `CONC_TEST_POSTGRES_URL` is set), and
//! start+finish generation pairs per second.

use std::sync::Arc;

use conc_lock_store::{LockStore, MemoryLockStore, SqliteLockStore};
use conc_session::{
    GenerationMode, MemorySessionStore, Message, Role, SessionConfig, SessionContext,
    SessionManager, SessionStore, SqliteSessionStore,
};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

fn manager(sessions: Arc<dyn SessionStore>, locks: Arc<dyn LockStore>) -> SessionManager {
    SessionManager::new(SessionContext {
        sessions,
        locks,
        config: SessionConfig::default(),
    })
}

fn updates(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut group = c.benchmark_group("session_update");
    let memory = manager(
        Arc::new(MemorySessionStore::new()),
        Arc::new(MemoryLockStore::new()),
    );
    let sqlite_store = rt
        .block_on(SqliteSessionStore::open(dir.path().join("s.db")))
        .expect("open");
    let sqlite = manager(Arc::new(sqlite_store), Arc::new(MemoryLockStore::new()));
    for (name, manager) in [("memory", memory), ("sqlite", sqlite)] {
        rt.block_on(manager.create_session("bench"))
            .expect("create");
        let mut n = 0u64;
        group.bench_function(BenchmarkId::new("conc", name), |b| {
            b.iter(|| {
                n += 1;
                rt.block_on(manager.update_session("bench", |data| {
                    data.metadata.insert("counter".into(), n.to_string());
                }))
                .expect("update")
            })
        });
        let _ = Message::new("m", Role::User, "");
    }
    group.finish();
}

/// One append to a conversation of `n` messages. The conversation is put back to `n`
/// messages (untimed, by a save) whenever the appends have grown it by a tenth (at least
/// 20), so each case measures its own length.
fn appends(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut group = c.benchmark_group("session_append");
    let mut stores: Vec<(&str, Arc<dyn SessionStore>)> = vec![
        ("memory", Arc::new(MemorySessionStore::new())),
        (
            "sqlite",
            Arc::new(
                rt.block_on(SqliteSessionStore::open(dir.path().join("append.db")))
                    .expect("open"),
            ),
        ),
    ];
    let schema = format!("conc_bench_append_{}", std::process::id());
    match std::env::var("CONC_TEST_POSTGRES_URL") {
        Ok(url) => stores.push((
            "postgres",
            Arc::new(
                rt.block_on(conc_session::PostgresSessionStore::connect(&url, &schema))
                    .expect("connect"),
            ),
        )),
        Err(_) => println!(
            "skipped: CONC_TEST_POSTGRES_URL is not set, so appends are not measured on PostgreSQL"
        ),
    }
    for (name, store) in &stores {
        for n in [10usize, 1_000, 10_000] {
            let id = format!("append-{n}");
            let mut start = conc_session::SessionData::new(&id);
            start.messages = (0..n)
                .map(|i| Message::new(format!("m-{i}"), Role::User, "a message of some length"))
                .collect();
            rt.block_on(store.create(&start)).expect("create");
            let regrow = (n / 10).max(20);
            let mut counter = 0u64;
            let mut added = 0usize;
            group.bench_function(BenchmarkId::new("conc", format!("{name} {n}")), |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let mut total = std::time::Duration::ZERO;
                        for _ in 0..iters {
                            if added == regrow {
                                let mut session =
                                    store.load(&id).await.expect("load").expect("session");
                                session.messages.truncate(n);
                                store.save(&session).await.expect("reset");
                                added = 0;
                            }
                            counter += 1;
                            let message =
                                Message::new(format!("b-{counter}"), Role::User, "a reply");
                            let started = std::time::Instant::now();
                            let appended = store.append(&id, &message, None).await.expect("append");
                            total += started.elapsed();
                            assert!(appended.added);
                            added += 1;
                        }
                        total
                    })
                })
            });
        }
    }
    group.finish();
    if let Ok(url) = std::env::var("CONC_TEST_POSTGRES_URL") {
        rt.block_on(async {
            if let Ok((client, connection)) =
                tokio_postgres::connect(&url, tokio_postgres::NoTls).await
            {
                tokio::spawn(connection);
                let _ = client
                    .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
                    .await;
            }
        });
    }
}

fn generations(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut group = c.benchmark_group("session_generation_pair");
    let sqlite_locks = rt
        .block_on(SqliteLockStore::open(dir.path().join("l.db")))
        .expect("open");
    let stores: [(&str, Arc<dyn LockStore>); 2] = [
        ("memory", Arc::new(MemoryLockStore::new())),
        ("sqlite", Arc::new(sqlite_locks)),
    ];
    for (name, locks) in stores {
        let manager = manager(Arc::new(MemorySessionStore::new()), locks);
        group.bench_function(BenchmarkId::new("conc", name), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let generation = manager
                        .start_generation("conv", "user", "m", GenerationMode::Reject)
                        .await
                        .expect("start");
                    generation.finish().await.expect("finish")
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, updates, appends, generations);
criterion_main!(benches);
