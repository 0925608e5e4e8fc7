//! Two processes each make 500 updates to one session on one SQLite file (and on
//! PostgreSQL when `CONC_TEST_POSTGRES_URL` is set): exactly 1000 messages result.
//!
//! A `harness = false` test: the same binary is the parent and, with `CONC_SESSION_CHILD`
//! set, each child.

use std::path::Path;
use std::process::{Command, ExitCode};
use std::sync::Arc;

use conc_lock_store::MemoryLockStore;
use conc_session::{
    Message, Role, SessionConfig, SessionContext, SessionManager, SessionStore, SqliteSessionStore,
};

const PER_PROCESS: usize = 500;

async fn store(backend: &str, target: &str) -> Arc<dyn SessionStore> {
    match backend {
        #[cfg(feature = "postgres")]
        "postgres" => {
            let url = std::env::var("CONC_TEST_POSTGRES_URL").expect("url");
            Arc::new(
                conc_session::PostgresSessionStore::connect(&url, target)
                    .await
                    .expect("connect"),
            )
        }
        _ => Arc::new(
            SqliteSessionStore::open(Path::new(target))
                .await
                .expect("open"),
        ),
    }
}

fn manager(sessions: Arc<dyn SessionStore>) -> SessionManager {
    SessionManager::new(SessionContext {
        sessions,
        locks: Arc::new(MemoryLockStore::new()),
        config: SessionConfig::default().with_max_update_attempts(10_000),
    })
}

fn child(backend: &str, target: &str, tag: &str) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let manager = manager(store(backend, target).await);
        // Four concurrent flows in this process, over the same session.
        let tasks: Vec<_> = (0..4)
            .map(|flow| {
                let manager = manager.clone();
                let tag = tag.to_owned();
                tokio::spawn(async move {
                    for n in (flow..PER_PROCESS).step_by(4) {
                        manager
                            .append_message(
                                "shared",
                                Message::new(format!("{tag}-{n}"), Role::User, "x"),
                            )
                            .await
                            .expect("update");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("flow");
        }
    });
    ExitCode::SUCCESS
}

fn parent(backend: &str) -> Result<String, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let target = match backend {
        "postgres" => format!("conc_test_sessions_{}_{nanos}", std::process::id()),
        _ => dir
            .path()
            .join("sessions.db")
            .to_string_lossy()
            .into_owned(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sessions = runtime.block_on(store(backend, &target));
    runtime
        .block_on(sessions.create(&conc_session::SessionData::new("shared")))
        .map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let children: Vec<_> = ["p1", "p2"]
        .iter()
        .map(|tag| {
            Command::new(&exe)
                .env("CONC_SESSION_CHILD", tag)
                .env("CONC_SESSION_BACKEND", backend)
                .env("CONC_SESSION_TARGET", &target)
                .spawn()
                .expect("spawn")
        })
        .collect();
    for mut child in children {
        let status = child.wait().map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("a child failed: {status}"));
        }
    }
    let session = runtime
        .block_on(sessions.load("shared"))
        .map_err(|e| e.to_string())?
        .ok_or("gone")?;
    #[cfg(feature = "postgres")]
    if backend == "postgres" {
        runtime.block_on(async {
            let url = std::env::var("CONC_TEST_POSTGRES_URL").unwrap();
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(connection);
            client
                .batch_execute(&format!("DROP SCHEMA \"{target}\" CASCADE"))
                .await
                .map_err(|e| e.to_string())
        })?;
    }
    if session.messages.len() != 2 * PER_PROCESS {
        return Err(format!(
            "{} messages, expected {}: an update was lost",
            session.messages.len(),
            2 * PER_PROCESS
        ));
    }
    Ok(format!(
        "session_processes ({backend}): 2 processes x {PER_PROCESS} updates = {} messages, version {}",
        session.messages.len(),
        session.version
    ))
}

fn main() -> ExitCode {
    if let Ok(tag) = std::env::var("CONC_SESSION_CHILD") {
        let backend = std::env::var("CONC_SESSION_BACKEND").unwrap_or_default();
        let target = std::env::var("CONC_SESSION_TARGET").unwrap_or_default();
        return child(&backend, &target, &tag);
    }
    let mut backends = vec!["sqlite"];
    if std::env::var("CONC_TEST_POSTGRES_URL").is_err() {
        println!(
            "skipped: CONC_TEST_POSTGRES_URL is not set, so the two-process session test does not run on PostgreSQL"
        );
    } else if !cfg!(feature = "postgres") {
        println!(
            "skipped: the `postgres` feature is off, so the two-process session test does not run on PostgreSQL"
        );
    } else {
        backends.push("postgres");
    }
    let (mut passed, mut failed) = (0, 0);
    for backend in backends {
        match parent(backend) {
            Ok(summary) => {
                println!("{summary}");
                passed += 1;
            }
            Err(e) => {
                eprintln!("two processes on {backend} FAILED: {e}");
                failed += 1;
            }
        }
    }
    println!("session_processes: {passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
