//! `chat-server`: serves the chat page and API on the conc crates.
//!
//! ```text
//! cargo run -p chat-server -- [--addr 127.0.0.1:3000] [--store sqlite:PATH|postgres://…]
//!                             [--locks redis://…|rediss://…|redis+sentinel://…|postgres://…|sqlite:PATH]
//!                             [--queue-wait-ms N] [--token-delay-ms N] [--failure-rate R]
//! ```

use std::sync::Arc;
use std::time::Duration;

use chat_server::{AppState, ModelConfig, router};
use clap::Parser;
use conc_lock_store::{ElectionConfig, LockStore};
use conc_session::{SessionConfig, SessionContext, SessionManager, SessionStore};

/// The chat server.
#[derive(Debug, Parser)]
#[command(name = "chat-server", about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3000")]
    addr: String,
    /// Where conversations (and, unless --locks says otherwise, locks) live: sqlite:PATH,
    /// postgres://USER@HOST/DB (`?sslmode=require&sslrootcert=PATH` for TLS) or memory.
    #[arg(long, default_value = "sqlite:chat.db")]
    store: String,
    /// Where the generation locks live, if not with the conversations: any lock store URL,
    /// Redis (`redis://`, `rediss://`, `redis+sentinel://HOST:PORT/MASTER`) included.
    #[arg(long)]
    locks: Option<String>,
    /// Queue a second send for up to this long instead of answering 409.
    #[arg(long)]
    queue_wait_ms: Option<u64>,
    /// Delay between streamed tokens.
    #[arg(long, default_value_t = 120)]
    token_delay_ms: u64,
    /// Share of generations that fail half-way, from 0 to 1.
    #[arg(long, default_value_t = 0.0, value_parser = share, allow_negative_numbers = true)]
    failure_rate: f64,
    /// Serve the Rust front end (`/app?conversation=ID`) from this folder: the output of
    /// `wasm-bindgen --target web` for `examples/chat-web` (`cargo xtask wasm` writes it to
    /// `target/chat-web/pkg`).
    #[arg(long)]
    web_dir: Option<std::path::PathBuf>,
}

/// A share from 0 to 1 (`--failure-rate`): anything else is an error, not clamped.
fn share(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number; give a share from 0 to 1, such as 0.2"))?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!(
            "{value} is outside 0..=1; give a share from 0 to 1, such as 0.2"
        ))
    }
}

async fn stores(
    spec: &str,
    locks: Option<&str>,
) -> Result<(Arc<dyn SessionStore>, Arc<dyn LockStore>), String> {
    // The libraries' URL parser: sqlite:PATH, postgres://… (with sslmode and sslrootcert),
    // memory; locks may also live in Redis.
    let sessions = conc_session::connect(spec)
        .await
        .map_err(|e| e.to_string())?;
    let locks = conc_lock_store::connect(locks.unwrap_or(spec))
        .await
        .map_err(|e| e.to_string())?;
    Ok((sessions, locks))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt().with_target(false).init();
    let args = Args::parse();
    let (sessions, locks) = match stores(&args.store, args.locks.as_deref()).await {
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
        failure_rate: args.failure_rate,
        ..ModelConfig::default()
    };
    let mut state = AppState::new(
        manager,
        model,
        args.queue_wait_ms.map(Duration::from_millis),
    );
    if let Some(dir) = args.web_dir {
        state = state.with_web_dir(dir);
    }
    let identity = format!("{}#{}", args.addr, std::process::id());
    if let Err(e) = state
        .start_housekeeping(identity, ElectionConfig::default(), Duration::from_secs(30))
        .await
    {
        eprintln!("chat-server: cannot start the housekeeping: {e}");
        return std::process::ExitCode::FAILURE;
    }
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
