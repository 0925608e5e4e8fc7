//! The PostgreSQL session store (and the generation lock on PostgreSQL locks) through a
//! PgBouncer of the test's own, in transaction mode (`pool_mode=transaction`: every
//! statement unnamed) and in session mode: concurrent appends lose nothing, fences are
//! checked, a stop from another manager reaches the generator.

#![cfg(feature = "postgres")]

use std::sync::Arc;
use std::time::Duration;

use conc_lock_store::LockStore;
use conc_lock_store::servers::{BouncerMode, PrivatePgBouncer};
use conc_session::{
    GenerationMode, Message, Role, SessionConfig, SessionContext, SessionError, SessionManager,
    SessionStore,
};

struct Upstream {
    host: String,
    port: u16,
    database: String,
    user: String,
    direct: String,
}

fn upstream() -> Option<Upstream> {
    let Ok(direct) = std::env::var("CONC_TEST_POSTGRES_URL") else {
        println!(
            "skipped: CONC_TEST_POSTGRES_URL is not set, so the session store is not tried through PgBouncer"
        );
        return None;
    };
    let config: tokio_postgres::Config = direct.parse().expect("a PostgreSQL URL");
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    Some(Upstream {
        host,
        port: config.get_ports().first().copied().unwrap_or(5432),
        database: config.get_dbname().unwrap_or("postgres").to_owned(),
        user: config.get_user().unwrap_or("postgres").to_owned(),
        direct,
    })
}

async fn through(mode: BouncerMode, pool: u32, option: &str, name: &str) {
    let Some(up) = upstream() else { return };
    let Some(bouncer) = PrivatePgBouncer::start(&up.host, up.port, mode, pool).unwrap() else {
        return;
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let schema = format!("conc_sess_pgb_{name}_{}_{nanos}", std::process::id());
    let url = bouncer.url(&up.user, &up.database, &format!("?schema={schema}{option}"));
    let sessions: Arc<dyn SessionStore> = conc_session::connect(&url).await.expect("sessions");
    let manager = |locks: Arc<dyn LockStore>| {
        SessionManager::new(SessionContext {
            sessions: sessions.clone(),
            locks,
            config: SessionConfig::default()
                .with_max_update_attempts(1000)
                .with_generation_ttl(Duration::from_secs(30)),
        })
    };
    let here = manager(conc_lock_store::connect(&url).await.expect("locks"));
    let there = manager(conc_lock_store::connect(&url).await.expect("locks"));

    // A hundred concurrent appends from two managers: none lost, none doubled.
    here.create_session("s").await.unwrap();
    let tasks: Vec<_> = (0..100)
        .map(|n| {
            let manager = if n % 2 == 0 {
                here.clone()
            } else {
                there.clone()
            };
            tokio::spawn(async move {
                manager
                    .append_message("s", Message::new(format!("m-{n}"), Role::User, "hi"))
                    .await
                    .unwrap()
            })
        })
        .collect();
    for task in tasks {
        assert!(task.await.unwrap().added);
    }
    let session = here.session("s").await.unwrap();
    assert_eq!(session.messages.len(), 100, "{name}");
    assert_eq!(session.version, 100, "{name}");

    // The store refuses an older fence and writes nothing.
    assert_eq!(sessions.advance_fence("s", 10).await.unwrap(), 10);
    let error = sessions.advance_fence("s", 9).await.unwrap_err();
    assert!(matches!(error, SessionError::StaleFence { .. }), "{error}");

    // A stop from the other manager reaches the generator at once.
    let generation = here
        .start_generation("s", "u", "m-x", GenerationMode::Reject)
        .await
        .unwrap();
    assert!(there.stop_generation("s").await.unwrap());
    let fired = tokio::time::timeout(Duration::from_secs(5), generation.signal().aborted()).await;
    assert!(fired.is_ok(), "{name}: the stop reached the generator");
    assert!(
        generation.commit(|| ()).is_none(),
        "a stopped generation commits nothing"
    );
    drop(generation);

    let (admin, connection) = tokio_postgres::connect(&up.direct, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    admin
        .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_generations_work_through_a_transaction_pooler() {
    through(
        BouncerMode::Transaction,
        3,
        "&pool_mode=transaction&watch_interval=20",
        "tx",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_generations_work_through_a_session_pooler() {
    through(BouncerMode::Session, 40, "", "session").await;
}
