//! `chat-server`: serves the chat page and API on the conc crates.
//!
//! ```text
//! cargo run -p chat-server -- [--addr 127.0.0.1:3000] [--store sqlite:PATH|postgres://…]
//!                             [--queue-wait-ms N] [--token-delay-ms N] [--failure-rate R]
//! ```

use std::sync::Arc;
use std::time::Duration;

use chat_server::{AppState, ModelConfig, router};
use clap::Parser;
use conc_lock_store::{LockStore, PostgresConfig, PostgresLockStore, SqliteLockStore};
use conc_session::{
    PostgresSessionStore, SessionConfig, SessionContext, SessionManager, SessionStore,
    SqliteSessionStore,
};

/// The chat server.
#[derive(Debug, Parser)]
#[command(name = "chat-server", about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3000")]
    addr: String,
    /// Where conversations and locks live: sqlite:PATH or postgres://USER@HOST/DB.
    #[arg(long, default_value = "sqlite:chat.db")]
    store: String,
    /// Queue a second send for up to this long instead of answering 409.
    #[arg(long)]
    queue_wait_ms: Option<u64>,
    /// Delay between streamed tokens.
    #[arg(long, default_value_t = 120)]
    token_delay_ms: u64,
    /// Share of generations that fail half-way.
    #[arg(long, default_value_t = 0.0)]
    failure_rate: f64,
}

async fn stores(spec: &str) -> Result<(Arc<dyn SessionStore>, Arc<dyn LockStore>), String> {
    if let Some(path) = spec.strip_prefix("sqlite:") {
        let sessions = SqliteSessionStore::open(path)
            .await
            .map_err(|e| e.to_string())?;
        let locks = SqliteLockStore::open(path)
            .await
            .map_err(|e| e.to_string())?;
        Ok((Arc::new(sessions), Arc::new(locks)))
    } else if spec.starts_with("postgres://") {
        let sessions = PostgresSessionStore::connect(spec, "public")
            .await
            .map_err(|e| e.to_string())?;
        let locks = PostgresLockStore::connect(spec, PostgresConfig::default())
            .await
            .map_err(|e| e.to_string())?;
        Ok((Arc::new(sessions), Arc::new(locks)))
    } else {
        Err(format!(
            "unknown store `{spec}`: use sqlite:PATH or postgres://USER@HOST/DB"
        ))
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt().with_target(false).init();
    let args = Args::parse();
    let (sessions, locks) = match stores(&args.store).await {
        Ok(stores) => stores,
        Err(e) => {
            eprintln!("chat-server: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let manager = SessionManager::new(SessionContext {
        sessions,
        locks,
        config: SessionConfig::default(),
    });
    let model = ModelConfig {
        token_delay: Duration::from_millis(args.token_delay_ms),
        failure_rate: args.failure_rate.clamp(0.0, 1.0),
        ..ModelConfig::default()
    };
    let state = AppState::new(
        manager,
        model,
        args.queue_wait_ms.map(Duration::from_millis),
    );
    let listener = match tokio::net::TcpListener::bind(&args.addr).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("chat-server: cannot listen on {}: {e}", args.addr);
            return std::process::ExitCode::FAILURE;
        }
    };
    eprintln!("chat-server: open http://{}/ in a browser", args.addr);
    let supervisor = state.supervisor().clone();
    let served = axum::serve(listener, router(state))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    supervisor.shutdown(Duration::from_secs(5)).await;
    match served {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat-server: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
