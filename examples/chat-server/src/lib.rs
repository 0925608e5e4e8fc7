//! A chat app on the conc crates: a POST starts a generation under the conversation's
//! generation lock; a second send while one runs gets HTTP 409 with the please-wait
//! message (or waits, in queue mode); a stop endpoint stops the generation, in whichever
//! server runs it; a server-sent-events stream carries the tokens and the lock state to
//! every open tab, and what the shared store holds, so a tab on one server shows the
//! messages and generations of every server on the same store.
//!
//! Ids are random (128 bits), so servers sharing a store, and restarts, never collide.
//! A reply is written with the generation's fence, so a stopped or superseded generation
//! never writes; its partial reply is discarded, and the page says so.
//!
//! Once-per-cluster housekeeping (removing expired leases from the lock store) runs on one
//! server at a time: the servers sharing the lock store elect a leader
//! ([`conc_lock_store::Election`]), and `GET /api/housekeeping` tells which one this is.
//!
//! The binary (`src/main.rs`) serves [`router`] on an address; the tests drive the same
//! router.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
use conc_lock_store::{Election, ElectionConfig};
use conc_session::{GenerationError, GenerationMode, Message, Role, SessionError, SessionManager};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::{BroadcastStream, IntervalStream};

mod web;
pub use web::{MAX_SEARCH_DELAY, SearchStats};

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
    housekeeping: Arc<Housekeeping>,
    web_dir: Option<Arc<PathBuf>>,
    search: Arc<web::SearchStats>,
}

/// This server's part in the cluster's housekeeping (see
/// [`AppState::start_housekeeping`]), as `GET /api/housekeeping` reports it.
#[derive(Debug, Default)]
pub struct Housekeeping {
    identity: parking_lot::Mutex<String>,
    leading: AtomicBool,
    fence: AtomicU64,
    rounds: AtomicU64,
    removed: AtomicU64,
}

impl Housekeeping {
    /// What it reports: identity, whether it leads, its leadership's fence, how many
    /// rounds it ran and how many expired leases they removed.
    pub fn report(&self) -> Value {
        json!({
            "identity": *self.identity.lock(),
            "leading": self.leading.load(Ordering::SeqCst),
            "fence": self.fence.load(Ordering::SeqCst),
            "rounds": self.rounds.load(Ordering::SeqCst),
            "removed": self.removed.load(Ordering::SeqCst),
        })
    }
}

/// Marks the housekeeping as led by this server while it lives.
struct Leading(Arc<Housekeeping>);

impl Drop for Leading {
    fn drop(&mut self) {
        self.0.leading.store(false, Ordering::SeqCst);
    }
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
            housekeeping: Arc::default(),
            web_dir: None,
            search: Arc::default(),
        }
    }

    /// Serves the WebAssembly front end (`/app`) from `dir`: the output of
    /// `wasm-bindgen --target web` for `examples/chat-web` (`cargo xtask wasm` writes it to
    /// `target/chat-web/pkg`).
    pub fn with_web_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.web_dir = Some(Arc::new(dir.into()));
        self
    }

    /// Starts the cluster's housekeeping under the supervisor: every server on the same
    /// lock store campaigns in the election `chat-server-housekeeping` as `identity`, and
    /// only the leader removes expired leases from the lock store, every `interval`. A
    /// leader that loses its lease stops at once (its round is dropped) and campaigns
    /// again; at shutdown (the supervisor's) it resigns, so another server takes over
    /// without waiting out the lease.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future while it waits for a task slot starts nothing.
    pub async fn start_housekeeping(
        &self,
        identity: String,
        config: ElectionConfig,
        interval: Duration,
    ) -> Result<(), String> {
        let locks = self.manager.context().locks.clone();
        let election = Election::new(locks.clone(), "chat-server-housekeeping", config)
            .map_err(|e| e.to_string())?;
        let status = self.housekeeping.clone();
        *status.identity.lock() = identity.clone();
        self.supervisor
            .spawn("housekeeping", move |shutdown| async move {
                election
                    .run(&identity, &shutdown, |fence, lost| {
                        let (status, locks) = (status.clone(), locks.clone());
                        async move {
                            status.fence.store(fence, Ordering::SeqCst);
                            status.leading.store(true, Ordering::SeqCst);
                            let _leading = Leading(status.clone());
                            loop {
                                match locks.cleanup_expired().await {
                                    Ok(removed) => {
                                        status.removed.fetch_add(removed, Ordering::SeqCst);
                                        status.rounds.fetch_add(1, Ordering::SeqCst);
                                    }
                                    Err(error) => {
                                        tracing::warn!(%error, "housekeeping: removing expired leases failed");
                                    }
                                }
                                tokio::select! {
                                    _ = lost.aborted() => return,
                                    () = tokio::time::sleep(interval) => {}
                                }
                            }
                        }
                    })
                    .await
            })
            .await
            .map_err(|e| e.to_string())
    }

    /// This server's part in the housekeeping.
    pub fn housekeeping(&self) -> &Arc<Housekeeping> {
        &self.housekeeping
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

/// A random 128-bit id, `<prefix>-<32 hex digits>`: unique across servers and restarts.
fn random_id(prefix: &str) -> Result<String, String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness for a new id: {e}"))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{prefix}-{hex}"))
}

/// What the page says when a generation was stopped: its partial reply is not kept.
pub const STOPPED_NOTICE: &str = "Stopped. The partial reply was discarded.";

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

/// The process's Prometheus recorder, installed as the `metrics` facade's global recorder
/// the first time it is asked for (a second recorder cannot be installed: then this one
/// only renders what it was given, which is nothing).
pub fn prometheus() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was installed already; /metrics stays empty");
        }
        handle
    })
}

/// The router: the page, the JSON API, the event streams and `/metrics` (Prometheus text).
pub fn router(state: AppState) -> Router {
    let metrics = prometheus();
    Router::new()
        .route(
            "/",
            get(|| async { Html(include_str!("../static/index.html")) }),
        )
        .route(
            "/api/conversations",
            get(list_conversations).post(create_conversation),
        )
        .route("/app", get(web::app_page))
        .route("/wasm/{file}", get(web::wasm_file))
        .route("/api/search", get(web::search))
        .route("/api/search/stats", get(web::search_stats))
        .route("/api/conversations/{id}", get(get_conversation))
        .route("/api/conversations/{id}/messages", post(send_message))
        .route("/api/conversations/{id}/stop", post(stop))
        .route("/api/conversations/{id}/events", get(events))
        .route(
            "/api/housekeeping",
            get(|State(state): State<AppState>| async move {
                axum::Json(state.housekeeping.report())
            }),
        )
        .route(
            "/metrics",
            get(move || async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    metrics.render(),
                )
            }),
        )
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "this method is not allowed on this path",
            )
        })
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
    let id = match request.id {
        Some(id) => id,
        None => match random_id("conversation") {
            Ok(id) => id,
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
        },
    };
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
            "notice": session.metadata.get("notice"),
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
    let message_id = match request.message_id {
        Some(given) => given,
        None => match random_id("m") {
            Ok(id) => id,
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
        },
    };
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
        // A stop (here or on another server) came between this generation's grant and the
        // record of its fence: nothing ran and nothing was saved.
        Err(e) if e.is_superseded() => {
            return error(
                StatusCode::CONFLICT,
                "The reply was stopped as it started; nothing was saved. Send the message again.",
            );
        }
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let user_message = Message::new(&message_id, Role::User, &content);
    let appended = state
        .manager
        .update_session(&id, |data| {
            data.metadata.remove("notice");
            if !data.has_message(&user_message.id) {
                data.messages.push(user_message.clone());
            }
        })
        .await;
    if let Err(e) = appended {
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
    let mut stopped = false;
    for n in 0..state.model.tokens {
        if signal
            .run_until_aborted(tokio::time::sleep(state.model.token_delay))
            .await
            .is_err()
        {
            stopped = true;
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
    if outcome.is_ok() && !stopped {
        // The reply carries the generation's fence; the store refuses it if a stop or a
        // newer generation (through any server) recorded a newer fence meanwhile.
        let message = Message::new(&reply_id, Role::Assistant, text.trim_end());
        match generation.append_reply(message).await {
            Ok(written) if written.is_committed() => {}
            Ok(_) => stopped = true,
            Err(e) => outcome = Err(e.to_string()),
        }
    }
    if stopped {
        state.publish(
            &conversation,
            json!({ "type": "stopped", "id": reply_id, "notice": STOPPED_NOTICE }),
        );
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
        Ok(stopped) => {
            if stopped {
                // Every tab, on every server, learns from the store.
                let noted = state
                    .manager
                    .update_session(&id, |data| {
                        data.metadata.insert("notice".into(), STOPPED_NOTICE.into());
                    })
                    .await;
                if let Err(e) = noted {
                    tracing::warn!(conversation = %id, error = %e, "could not note the stop");
                }
                state.publish(&id, json!({ "type": "stopped", "notice": STOPPED_NOTICE }));
            }
            axum::Json(json!({ "stopped": stopped })).into_response()
        }
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

/// What an event stream reads: the conversation's broadcasts (from this server's
/// generations) and a tick to look at the shared store (what other servers wrote).
enum Input {
    Broadcast(Result<Value, BroadcastStreamRecvError>),
    Tick,
}

/// What a stream last told its client, so that a tick sends only what changed.
#[derive(Default)]
struct Seen {
    generating: Option<bool>,
    version: Option<u64>,
}

/// The conversation's events: its broadcast channel merged with a 250 ms interval
/// (`BroadcastStream` and `IntervalStream`), each tick turned into a `sync` (when the stored
/// session changed) and a `state` (when generating changed). The stream is the whole
/// plumbing: when the client goes away, axum drops it, and nothing is left running.
fn event_stream(state: AppState, id: String) -> impl Stream<Item = Result<Event, Infallible>> {
    use futures_util::StreamExt as _;
    let broadcasts = BroadcastStream::new(state.channel(&id).subscribe()).map(Input::Broadcast);
    let ticks =
        IntervalStream::new(tokio::time::interval(Duration::from_millis(250))).map(|_| Input::Tick);
    let seen = Arc::new(parking_lot::Mutex::new(Seen::default()));
    tokio_stream::StreamExt::merge(broadcasts, ticks)
        .then(move |input| {
            let (state, id, seen) = (state.clone(), id.clone(), seen.clone());
            async move {
                match input {
                    Input::Broadcast(Ok(event)) => {
                        if let Some(generating) = event.get("generating").and_then(Value::as_bool) {
                            seen.lock().generating = Some(generating);
                        }
                        vec![event]
                    }
                    // A slow client missed some: the next tick's `sync` catches it up.
                    Input::Broadcast(Err(BroadcastStreamRecvError::Lagged(_))) => Vec::new(),
                    Input::Tick => {
                        let session = state.manager.session(&id).await.ok();
                        let generating = state.manager.is_generating(&id).await.unwrap_or(false);
                        let mut out = Vec::new();
                        let mut seen = seen.lock();
                        // The shared store is the truth: what another server wrote shows here.
                        if let Some(session) = session
                            && seen.version != Some(session.version)
                        {
                            seen.version = Some(session.version);
                            out.push(json!({
                                "type": "sync",
                                "messages": session.messages,
                                "notice": session.metadata.get("notice"),
                            }));
                        }
                        if seen.generating != Some(generating) {
                            seen.generating = Some(generating);
                            out.push(json!({ "type": "state", "generating": generating }));
                        }
                        out
                    }
                }
            }
        })
        .flat_map(futures_util::stream::iter)
        .map_event()
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
