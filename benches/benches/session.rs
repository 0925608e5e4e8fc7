//! conc-session: session updates per second on memory and SQLite, and start+finish
//! generation pairs per second.

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

criterion_group!(benches, updates, generations);
criterion_main!(benches);
