//! The Rust front end's routes (`examples/chat-web`, compiled to WebAssembly): its page at
//! `/app?conversation=ID`, its files at `/wasm/…` (from the folder
//! [`AppState::with_web_dir`] names), and the search it calls as the user types:
//! `/api/search?q=…&delay_ms=N` answers after `N` ms (so answers can arrive out of order),
//! and counts the searches that were abandoned before their answer (the client aborted its
//! `fetch`, which closes the connection) at `/api/search/stats`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::{AppState, error, session_error};

/// The longest delay a search may ask for.
pub const MAX_SEARCH_DELAY: Duration = Duration::from_secs(5);

/// What the searches did.
#[derive(Debug, Default)]
pub struct SearchStats {
    started: AtomicU64,
    answered: AtomicU64,
    abandoned: AtomicU64,
}

/// Counts a search abandoned when its handler is dropped before it answered.
struct Pending<'a>(&'a SearchStats, bool);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let counter = if self.1 {
            &self.0.answered
        } else {
            &self.0.abandoned
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }
}

#[derive(Deserialize)]
pub(crate) struct AppQuery {
    conversation: String,
}

/// The page, for one conversation.
pub(crate) async fn app_page(Query(query): Query<AppQuery>) -> Response {
    let id = query.conversation;
    let valid = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        return error(
            StatusCode::BAD_REQUEST,
            "conversation= takes a conversation id (letters, digits, - and _)",
        );
    }
    Html(include_str!("../static/app.html").replace("{{conversation}}", &id)).into_response()
}

/// The page's script and WebAssembly module, as `wasm-bindgen --target web` wrote them.
pub(crate) async fn wasm_file(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    let content_type = match name.as_str() {
        "chat_web.js" => "text/javascript",
        "chat_web_bg.wasm" => "application/wasm",
        _ => return error(StatusCode::NOT_FOUND, "no such file"),
    };
    let Some(dir) = &state.web_dir else {
        return error(
            StatusCode::NOT_FOUND,
            "this server has no WebAssembly front end (start it with --web-dir, the output of `cargo xtask wasm`)",
        );
    };
    match tokio::fs::read(dir.join(&name)).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, content_type)], bytes).into_response(),
        Err(e) => error(StatusCode::NOT_FOUND, format!("{name}: {e}")),
    }
}

#[derive(Deserialize)]
pub(crate) struct SearchQuery {
    q: String,
    delay_ms: Option<u64>,
}

/// The conversations whose id contains `q` (ignoring case), after `delay_ms`.
pub(crate) async fn search(
    State(state): State<AppState>,
    Query(query): Query<SearchQuery>,
) -> Response {
    let stats = &state.search;
    stats.started.fetch_add(1, Ordering::SeqCst);
    let mut pending = Pending(stats, false);
    let delay = Duration::from_millis(query.delay_ms.unwrap_or(0)).min(MAX_SEARCH_DELAY);
    tokio::time::sleep(delay).await;
    let ids = match state.manager.context().sessions.list(1000).await {
        Ok(ids) => ids,
        Err(e) => return session_error(e),
    };
    let needle = query.q.to_lowercase();
    let found: Vec<String> = ids
        .into_iter()
        .filter(|id| id.to_lowercase().contains(&needle))
        .collect();
    pending.1 = true;
    axum::Json(json!({ "query": query.q, "conversations": found })).into_response()
}

/// The search counters: started, answered, abandoned (the client went away first).
pub(crate) async fn search_stats(State(state): State<AppState>) -> Response {
    let stats = &state.search;
    axum::Json(json!({
        "started": stats.started.load(Ordering::SeqCst),
        "answered": stats.answered.load(Ordering::SeqCst),
        "abandoned": stats.abandoned.load(Ordering::SeqCst),
    }))
    .into_response()
}
