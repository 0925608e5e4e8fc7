//! The PostgreSQL backend through a PgBouncer of the test's own
//! (`servers::PrivatePgBouncer`, Debian's `pgbouncer` on a free port, in front of the test
//! database, with three server connections shared by every client): the whole conformance
//! suite in transaction mode (statements sent unnamed, watched keys polled, or `LISTEN` on
//! a direct `listen_url`) and in session mode.

#![cfg(all(feature = "postgres", feature = "conformance"))]

use conc_lock_store::servers::{BouncerMode, PrivatePgBouncer};
use conc_lock_store::{LockError, LockRequest, conformance};

/// The test database's host, port, database and user, or `None` (after a `skipped:` line)
/// when `CONC_TEST_POSTGRES_URL` is not set.
fn upstream() -> Option<(String, u16, String, String, String)> {
    let Ok(url) = std::env::var("CONC_TEST_POSTGRES_URL") else {
        println!(
            "skipped: CONC_TEST_POSTGRES_URL is not set, so the store is not tried through PgBouncer"
        );
        return None;
    };
    let config: tokio_postgres::Config = url.parse().expect("a PostgreSQL URL");
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let database = config.get_dbname().unwrap_or("postgres").to_owned();
    let user = config.get_user().unwrap_or("postgres").to_owned();
    Some((host, port, database, user, url))
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("conc_pgb_{name}_{}_{nanos}", std::process::id())
}

async fn drop_schema(direct: &str, schema: &str) {
    let (admin, connection) = tokio_postgres::connect(direct, tokio_postgres::NoTls)
        .await
        .expect("admin connection");
    tokio::spawn(connection);
    admin
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await
        .expect("drop schema");
}

/// Every conformance case through the bouncer, with `options` on each store's URL; the two
/// two-store cases (announced waits, watches made right before a change) on two stores, as
/// two processes have.
async fn conforms(
    bouncer: &PrivatePgBouncer,
    up: &(String, u16, String, String, String),
    options: &str,
    name: &str,
) {
    let (_, _, database, user, direct) = up;
    let schema = unique(name);
    let url = bouncer.url(user, database, &format!("?schema={schema}{options}"));
    let store = conc_lock_store::connect(&url)
        .await
        .expect("connect through PgBouncer");
    conformance::run_all(store.clone(), name).await;
    let other = conc_lock_store::connect(&url)
        .await
        .expect("connect through PgBouncer");
    conformance::announced_wait_is_woken(&store, &other, name).await;
    conformance::watch_reports_changes_made_right_after_it(&store, &other, name).await;
    drop_schema(direct, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_conforms_through_a_transaction_pooler() {
    let Some(up) = upstream() else { return };
    let Some(bouncer) = PrivatePgBouncer::start(&up.0, up.1, BouncerMode::Transaction, 3).unwrap()
    else {
        return;
    };
    // Watched keys polled: no LISTEN through the pooler.
    conforms(
        &bouncer,
        &up,
        "&pool_mode=transaction&watch_interval=20",
        "pgb_tx_poll",
    )
    .await;
    // LISTEN on a direct connection (percent-encoded, as a URL inside a URL must be).
    let direct =
        up.4.replace('%', "%25")
            .replace('&', "%26")
            .replace('?', "%3F")
            .replace('=', "%3D");
    conforms(
        &bouncer,
        &up,
        &format!("&pool_mode=transaction&listen_url={direct}"),
        "pgb_tx_listen",
    )
    .await;
    let log = bouncer.log();
    assert!(
        !log.contains("when not linked"),
        "PgBouncer saw a client answer out of turn (a LISTEN through the pooler?):\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_conforms_through_a_session_pooler() {
    let Some(up) = upstream() else { return };
    let Some(bouncer) = PrivatePgBouncer::start(&up.0, up.1, BouncerMode::Session, 20).unwrap()
    else {
        return;
    };
    conforms(&bouncer, &up, "", "pgb_session").await;
}

/// The default mode (named, cached statements) through a transaction pooler: a clear,
/// typed error that names the option, never a panic or a wrong answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_through_a_transaction_pooler_is_a_clear_error() {
    let Some(up) = upstream() else { return };
    let Some(bouncer) = PrivatePgBouncer::start(&up.0, up.1, BouncerMode::Transaction, 2).unwrap()
    else {
        return;
    };
    let (_, _, database, user, direct) = &up;
    let schema = unique("pgb_wrong");
    // Without `pool_mode=transaction`: the connection's `statement_timeout` option is
    // refused by PgBouncer at connect, or the named statements fail later. Either way
    // the error says what to do, and nothing panics.
    let url = bouncer.url(user, database, &format!("?schema={schema}"));
    match conc_lock_store::connect(&url).await {
        Err(error) => {
            let text = error.to_string();
            assert!(
                text.contains("pool_mode=transaction") || text.contains("startup parameter"),
                "a connect refused by the pooler says why: {text}"
            );
        }
        Ok(store) => {
            let tasks: Vec<_> = (0..8)
                .map(|n| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        let mut errors = Vec::new();
                        for i in 0..50 {
                            let request = LockRequest::new(
                                format!("k{n}-{i}"),
                                "o",
                                std::time::Duration::from_secs(5),
                            );
                            match store.try_acquire(&request).await {
                                Ok(Some(lease)) => {
                                    let _ = store.release(&lease).await;
                                }
                                Ok(None) => {}
                                Err(e) => errors.push(e),
                            }
                        }
                        errors
                    })
                })
                .collect();
            let (mut named, mut other) = (0, 0);
            for task in tasks {
                for error in task.await.expect("no panic") {
                    if let LockError::UnexpectedAnswer { reason, .. } = &error {
                        assert!(reason.contains("pool_mode=transaction"), "{reason}");
                        named += 1;
                    } else {
                        other += 1;
                    }
                }
            }
            println!("{named} errors named the option, {other} others");
        }
    }
    drop_schema(direct, &schema).await;
}
