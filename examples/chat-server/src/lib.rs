//! The seeds' chat app (seed 003) on the conc crates: a POST starts a generation under
//! the conversation's generation lock; a second send while one runs gets HTTP 409 with the
//! please-wait message (or waits, in queue mode); a stop endpoint aborts the generation;
//! a server-sent-events stream carries the tokens and the lock state to every open tab.
//!
//! The binary (`src/main.rs`) serves [`router`] on an address; the tests drive the same
//! router.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use conc_async::Supervisor;
use conc_session::{GenerationError, GenerationMode, Message, Role, SessionError, SessionManager};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// The largest request body accepted, in bytes.
pub const MAX_BODY: usize = 16 * 1024;
/// The longest message accepted, in characters.
pub const MAX_MESSAGE: usize = 4000;

/// How the simulated model behaves.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// Delay between streamed tokens.
    pub token_delay: Duration,
    /// Share of generations that fail half-way, 0 to 1.
    pub failure_rate: f64,
    /// Tokens per reply.
    pub tokens: usize,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            token_delay: Duration::from_millis(120),
            failure_rate: 0.0,
            tokens: 16,
        }
    }
}

/// The server's shared state.
#[derive(Clone)]
pub struct AppState {
    manager: SessionManager,
    model: ModelConfig,
    queue_wait: Option<Duration>,
    channels: Arc<parking_lot::Mutex<HashMap<String, broadcast::Sender<Value>>>>,
    supervisor: Supervisor,
    sequence: Arc<AtomicU64>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// State over `manager`; `queue_wait` switches from reject mode (409) to queue mode.
    pub fn new(manager: SessionManager, model: ModelConfig, queue_wait: Option<Duration>) -> Self {
        Self {
            manager,
            model,
            queue_wait,
            channels: Arc::default(),
            supervisor: Supervisor::new("chat-server").with_max_tasks(256),
            sequence: Arc::default(),
        }
    }

    /// The supervisor running the generations (shut it down on exit).
    pub fn supervisor(&self) -> &Supervisor {
        &self.supervisor
    }

    fn channel(&self, conversation: &str) -> broadcast::Sender<Value> {
        self.channels
            .lock()
            .entry(conversation.to_owned())
            .or_insert_with(|| broadcast::channel(256).0)
            .clone()
    }

    fn publish(&self, conversation: &str, event: Value) {
        // No subscriber is fine: nobody is watching.
        let _ = self.channel(conversation).send(event);
    }
}

/// A JSON error response: `{"error": message}`.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

fn session_error(e: SessionError) -> Response {
    match e {
        SessionError::NotFound(id) => {
            error(StatusCode::NOT_FOUND, format!("no conversation `{id}`"))
        }
        SessionError::AlreadyExists(id) => error(
            StatusCode::CONFLICT,
            format!("conversation `{id}` already exists"),
        ),
        SessionError::InvalidId(reason) => error(StatusCode::BAD_REQUEST, reason),
        other => error(StatusCode::SERVICE_UNAVAILABLE, other.to_string()),
    }
}

/// A request that cannot be served: its status and message (sent as a JSON error).
#[derive(Debug)]
struct Rejected(StatusCode, String);

impl IntoResponse for Rejected {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

/// Parses a JSON body, with JSON errors for a body too large or malformed.
fn parse<T: for<'de> Deserialize<'de>>(body: Result<Bytes, BytesRejection>) -> Result<T, Rejected> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Rejected(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than {MAX_BODY} bytes"),
            )
        } else {
            Rejected(rejection.status(), rejection.body_text())
        }
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Rejected(StatusCode::BAD_REQUEST, format!("malformed JSON body: {e}")))
}

/// The router: the page, the JSON API and the event streams.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { Html(include_str!("../static/index.html")) }),
        )
        .route(
            "/api/conversations",
            get(list_conversations).post(create_conversation),
        )
        .route("/api/conversations/{id}", get(get_conversation))
        .route("/api/conversations/{id}/messages", post(send_message))
        .route("/api/conversations/{id}/stop", post(stop))
        .route("/api/conversations/{id}/events", get(events))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

async fn list_conversations(State(state): State<AppState>) -> Response {
    match state.manager.context().sessions.list(1000).await {
        Ok(ids) => axum::Json(json!({ "conversations": ids })).into_response(),
        Err(e) => session_error(e),
    }
}

#[derive(Deserialize)]
struct NewConversation {
    id: Option<String>,
}

async fn create_conversation(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request: NewConversation = match body {
        Ok(ref b) if b.is_empty() => NewConversation { id: None },
        other => match parse(other) {
            Ok(request) => request,
            Err(rejected) => return rejected.into_response(),
        },
    };
    let id = request.id.unwrap_or_else(|| {
        format!(
            "conversation-{}",
            state.sequence.fetch_add(1, Ordering::Relaxed) + 1
        )
    });
    match state.manager.create_session(&id).await {
        Ok(session) => {
            (StatusCode::CREATED, axum::Json(json!({ "id": session.id }))).into_response()
        }
        Err(e) => session_error(e),
    }
}

async fn get_conversation(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let generating = state.manager.is_generating(&id).await.unwrap_or(false);
    match state.manager.session(&id).await {
        Ok(session) => axum::Json(json!({
            "id": session.id,
            "messages": session.messages,
            "generating": generating,
        }))
        .into_response(),
        Err(e) => session_error(e),
    }
}

#[derive(Deserialize)]
struct NewMessage {
    content: String,
    message_id: Option<String>,
}

async fn send_message(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request: NewMessage = match parse(body) {
        Ok(request) => request,
        Err(rejected) => return rejected.into_response(),
    };
    let content = request.content.trim().to_owned();
    if content.is_empty() {
        return error(StatusCode::BAD_REQUEST, "the message is empty");
    }
    if content.chars().count() > MAX_MESSAGE {
        return error(
            StatusCode::BAD_REQUEST,
            format!("the message is longer than {MAX_MESSAGE} characters"),
        );
    }
    if let Err(e) = state.manager.session(&id).await {
        return session_error(e);
    }
    let message_id = request
        .message_id
        .unwrap_or_else(|| format!("m-{}", state.sequence.fetch_add(1, Ordering::Relaxed) + 1));
    let mode = match state.queue_wait {
        Some(max_wait) => GenerationMode::Queue { max_wait },
        None => GenerationMode::Reject,
    };
    let generation = match state
        .manager
        .start_generation(&id, "web-user", &message_id, mode)
        .await
    {
        Ok(generation) => generation,
        Err(e @ GenerationError::InProgress { .. }) => {
            return error(StatusCode::CONFLICT, e.to_string());
        }
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    if let Err(e) = state
        .manager
        .append_message(&id, Message::new(&message_id, Role::User, &content))
        .await
    {
        return session_error(e);
    }
    state.publish(
        &id,
        json!({ "type": "message", "role": "user", "id": message_id, "content": content }),
    );
    state.publish(&id, json!({ "type": "state", "generating": true }));
    let task_state = state.clone();
    let conversation = id.clone();
    let reply_id = format!("{message_id}-reply");
    let spawned = state
        .supervisor
        .spawn(
            format!("generate {conversation}"),
            move |_signal| async move {
                generate(task_state, conversation, reply_id, content, generation).await
            },
        )
        .await;
    if let Err(e) = spawned {
        return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    }
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({ "message_id": message_id })),
    )
        .into_response()
}

/// The simulated model: streams tokens, watching the generation's signal.
async fn generate(
    state: AppState,
    conversation: String,
    reply_id: String,
    prompt: String,
    generation: conc_session::GenerationGuard,
) -> Result<(), String> {
    let signal = generation.signal();
    let mut text = String::new();
    let fails_at = {
        let roll = (state.sequence.fetch_add(1, Ordering::Relaxed) % 100) as f64 / 100.0;
        (roll < state.model.failure_rate).then_some(state.model.tokens / 2)
    };
    let words = [
        "Here",
        "is",
        "a",
        "considered",
        "answer",
        "to",
        "your",
        "question",
        "about",
    ];
    let mut outcome = Ok(());
    for n in 0..state.model.tokens {
        if signal
            .run_until_aborted(tokio::time::sleep(state.model.token_delay))
            .await
            .is_err()
        {
            state.publish(&conversation, json!({ "type": "stopped" }));
            break;
        }
        if fails_at == Some(n) {
            state.publish(
                &conversation,
                json!({ "type": "error", "error": "the model failed; please try again" }),
            );
            outcome = Err("the simulated model failed".to_owned());
            break;
        }
        let token = if n == state.model.tokens - 1 {
            format!("\"{prompt}\".")
        } else {
            words[n % words.len()].to_owned()
        };
        text.push_str(&token);
        text.push(' ');
        state.publish(
            &conversation,
            json!({ "type": "token", "id": reply_id, "text": format!("{token} ") }),
        );
    }
    if outcome.is_ok() && !signal.is_aborted() && generation.commit(|| ()).is_some() {
        let message = Message::new(&reply_id, Role::Assistant, text.trim_end());
        if let Err(e) = state.manager.append_message(&conversation, message).await {
            outcome = Err(e.to_string());
        }
    }
    let _ = generation.finish().await;
    state.publish(
        &conversation,
        json!({ "type": "state", "generating": false }),
    );
    outcome
}

async fn stop(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    if let Err(e) = state.manager.session(&id).await {
        return session_error(e);
    }
    match state.manager.stop_generation(&id).await {
        Ok(stopped) => axum::Json(json!({ "stopped": stopped })).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// Events for one conversation: its own broadcasts, plus the lock state polled from the
/// store, so a tab learns of a generation another server process runs.
async fn events(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    if let Err(e) = state.manager.session(&id).await {
        return session_error(e);
    }
    let stream = event_stream(state, id);
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn event_stream(state: AppState, id: String) -> impl Stream<Item = Result<Event, Infallible>> {
    let mut receiver = state.channel(&id).subscribe();
    let (tx, rx) = tokio::sync::mpsc::channel::<Value>(64);
    let forward = async move {
        let mut last: Option<bool> = None;
        let mut poll = tokio::time::interval(Duration::from_millis(250));
        loop {
            let event = tokio::select! {
                received = receiver.recv() => match received {
                    Ok(event) => event,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = poll.tick() => {
                    let generating = state.manager.is_generating(&id).await.unwrap_or(false);
                    if last == Some(generating) {
                        continue;
                    }
                    json!({ "type": "state", "generating": generating })
                }
            };
            if let Some(generating) = event.get("generating").and_then(Value::as_bool) {
                last = Some(generating);
            }
            if tx.send(event).await.is_err() {
                return; // the client went away
            }
        }
    };
    tokio::spawn(forward);
    tokio_stream::wrappers::ReceiverStream::new(rx).map_event()
}

trait MapEvent {
    fn map_event(self) -> impl Stream<Item = Result<Event, Infallible>>;
}

impl<S: Stream<Item = Value>> MapEvent for S {
    fn map_event(self) -> impl Stream<Item = Result<Event, Infallible>> {
        use futures_util::StreamExt as _;
        self.map(|value| Ok(Event::default().data(value.to_string())))
    }
}
