//! Every endpoint over HTTP semantics, through the router itself: the happy path, the 409
//! please-wait, stop, and bad input (unknown conversation, empty message, oversized body,
//! malformed JSON), each a clear 4xx JSON error, with the server still up afterwards.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use chat_server::{AppState, MAX_BODY, ModelConfig, router};
use conc_lock_store::MemoryLockStore;
use conc_session::{
    MemorySessionStore, SessionConfig, SessionContext, SessionManager, SessionStore as _,
};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;

fn app(token_delay: Duration) -> axum::Router {
    app_on(Arc::new(MemorySessionStore::new()), token_delay)
}

/// The app on `sessions`, which the test keeps to act on the store directly.
fn app_on(sessions: Arc<MemorySessionStore>, token_delay: Duration) -> axum::Router {
    let manager = SessionManager::new(SessionContext {
        sessions,
        locks: Arc::new(MemoryLockStore::new()),
        config: SessionConfig::default(),
    });
    let model = ModelConfig {
        token_delay,
        tokens: 4,
        failure_rate: 0.0,
    };
    router(AppState::new(manager, model, None))
}

async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    body: Option<&str>,
) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    (status, value)
}

/// Waits (up to 10 s) until `conversation` is not generating.
async fn idle(app: &axum::Router, conversation: &str) {
    for _ in 0..1000 {
        let (_, body) = call(
            app,
            "GET",
            &format!("/api/conversations/{conversation}"),
            None,
        )
        .await;
        if body["generating"] == false {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_conversation_round_trip_with_please_wait_and_stop() {
    let app = app(Duration::from_millis(100));
    let (status, body) = call(&app, "POST", "/api/conversations", Some(r#"{"id":"c1"}"#)).await;
    assert_eq!(
        (status, body["id"].as_str()),
        (StatusCode::CREATED, Some("c1"))
    );
    let (status, body) = call(&app, "GET", "/api/conversations", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["conversations"], json!(["c1"]));

    let (status, _) = call(
        &app,
        "POST",
        "/api/conversations/c1/messages",
        Some(r#"{"content":"hello"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, body) = call(
        &app,
        "POST",
        "/api/conversations/c1/messages",
        Some(r#"{"content":"again"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        body["error"].as_str().unwrap().contains("Please wait"),
        "{body}"
    );
    let (_, body) = call(&app, "GET", "/api/conversations/c1", None).await;
    assert_eq!(body["generating"], true);

    idle(&app, "c1").await;
    let (_, body) = call(&app, "GET", "/api/conversations/c1", None).await;
    assert_eq!(body["generating"], false);
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "{body}");
    assert_eq!(messages[1]["role"], "assistant");

    let (status, _) = call(
        &app,
        "POST",
        "/api/conversations/c1/messages",
        Some(r#"{"content":"long one"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, body) = call(&app, "POST", "/api/conversations/c1/stop", None).await;
    assert_eq!(
        (status, body["stopped"].as_bool()),
        (StatusCode::OK, Some(true))
    );
    idle(&app, "c1").await;
    let (_, body) = call(&app, "GET", "/api/conversations/c1", None).await;
    assert_eq!(body["generating"], false);
    assert_eq!(
        body["messages"].as_array().unwrap().len(),
        3,
        "the stopped reply was not saved: {body}"
    );
}

#[tokio::test]
async fn a_send_stopped_as_it_starts_is_a_409_and_saves_nothing() {
    let sessions = Arc::new(MemorySessionStore::new());
    let app = app_on(sessions.clone(), Duration::from_millis(10));
    let (status, _) = call(&app, "POST", "/api/conversations", Some(r#"{"id":"c9"}"#)).await;
    assert_eq!(status, StatusCode::CREATED);
    // A stop recorded a fence newer than the next grant's, as one landing between a grant
    // and the record of its fence does.
    sessions.advance_fence("c9", u64::MAX / 2).await.unwrap();
    let (status, body) = call(
        &app,
        "POST",
        "/api/conversations/c9/messages",
        Some(r#"{"content":"hello"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("stopped as it started"),
        "{body}"
    );
    let (_, body) = call(&app, "GET", "/api/conversations/c9", None).await;
    assert_eq!(body["generating"], false, "{body}");
    assert_eq!(body["messages"], json!([]), "nothing saved: {body}");
}

#[tokio::test]
async fn bad_input_gets_clear_4xx_json_errors_and_the_server_stays_up() {
    let app = app(Duration::from_millis(10));
    call(&app, "POST", "/api/conversations", Some(r#"{"id":"c1"}"#)).await;
    let cases: Vec<(&str, &str, Option<String>, StatusCode, &str)> = vec![
        (
            "GET",
            "/api/conversations/nope",
            None,
            StatusCode::NOT_FOUND,
            "no conversation",
        ),
        (
            "POST",
            "/api/conversations/nope/messages",
            Some(r#"{"content":"hi"}"#.into()),
            StatusCode::NOT_FOUND,
            "no conversation",
        ),
        (
            "POST",
            "/api/conversations/nope/stop",
            None,
            StatusCode::NOT_FOUND,
            "no conversation",
        ),
        (
            "POST",
            "/api/conversations/c1/messages",
            Some(r#"{"content":"   "}"#.into()),
            StatusCode::BAD_REQUEST,
            "empty",
        ),
        (
            "POST",
            "/api/conversations/c1/messages",
            Some("{not json".into()),
            StatusCode::BAD_REQUEST,
            "malformed JSON",
        ),
        (
            "POST",
            "/api/conversations/c1/messages",
            Some(r#"{"text":"wrong field"}"#.into()),
            StatusCode::BAD_REQUEST,
            "malformed JSON",
        ),
        (
            "POST",
            "/api/conversations/c1/messages",
            Some(format!(r#"{{"content":"{}"}}"#, "x".repeat(MAX_BODY + 10))),
            StatusCode::PAYLOAD_TOO_LARGE,
            "larger than",
        ),
        (
            "POST",
            "/api/conversations",
            Some(r#"{"id":"c1"}"#.into()),
            StatusCode::CONFLICT,
            "already exists",
        ),
        (
            "POST",
            "/api/conversations",
            Some(r#"{"id":""}"#.into()),
            StatusCode::BAD_REQUEST,
            "session id",
        ),
    ];
    for (method, uri, body, status, text) in cases {
        let (got, value) = call(&app, method, uri, body.as_deref()).await;
        assert_eq!(got, status, "{method} {uri}: {value}");
        let error = value["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(text),
            "{method} {uri}: `{error}` lacks `{text}`"
        );
    }
    let (status, _) = call(
        &app,
        "POST",
        "/api/conversations/c1/messages",
        Some(r#"{"content":"still up"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // The event stream of a known conversation opens (its body never ends, so only the head
    // is read here; the browser test reads the events).
    let request = Request::builder()
        .uri("/api/conversations/c1/events")
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let (status, page) = call(&app, "GET", "/", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.as_str().unwrap().contains("id=\"chat-input\""));
}

/// Two server processes on one SQLite store keep one generation per conversation between
/// them (two routers with their own managers stand for the two processes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_store_keep_one_generation_per_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let mut servers = Vec::new();
    for _ in 0..2 {
        let manager = SessionManager::new(SessionContext {
            sessions: Arc::new(conc_session::SqliteSessionStore::open(&path).await.unwrap()),
            locks: Arc::new(conc_lock_store::SqliteLockStore::open(&path).await.unwrap()),
            config: SessionConfig::default(),
        });
        let model = ModelConfig {
            token_delay: Duration::from_millis(100),
            tokens: 5,
            failure_rate: 0.0,
        };
        servers.push(router(AppState::new(manager, model, None)));
    }
    let (status, _) = call(
        &servers[0],
        "POST",
        "/api/conversations",
        Some(r#"{"id":"shared"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = call(
        &servers[0],
        "POST",
        "/api/conversations/shared/messages",
        Some(r#"{"content":"one"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, body) = call(
        &servers[1],
        "POST",
        "/api/conversations/shared/messages",
        Some(r#"{"content":"two"}"#),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "the other server refuses: {body}"
    );
    let (_, body) = call(&servers[1], "GET", "/api/conversations/shared", None).await;
    assert_eq!(body["generating"], true, "the other server sees the lock");
    idle(&servers[1], "shared").await;
    let (status, _) = call(
        &servers[1],
        "POST",
        "/api/conversations/shared/messages",
        Some(r#"{"content":"two"}"#),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "free again once the first finished"
    );
}

/// A server on `path` (SQLite sessions and locks), as a separate process would have.
async fn server_on(
    path: &std::path::Path,
    token_delay: Duration,
) -> (axum::Router, SessionManager) {
    let manager = SessionManager::new(SessionContext {
        sessions: Arc::new(conc_session::SqliteSessionStore::open(path).await.unwrap()),
        locks: Arc::new(conc_lock_store::SqliteLockStore::open(path).await.unwrap()),
        config: SessionConfig::default(),
    });
    let model = ModelConfig {
        token_delay,
        tokens: 8,
        failure_rate: 0.0,
    };
    (router(AppState::new(manager.clone(), model, None)), manager)
}

/// Two servers on one store keep each other's messages (random ids never collide), a stop
/// through the other server stops the generation and frees the conversation at once, and
/// after a restart "New conversation" still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_messages_stops_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let (a, _) = server_on(&path, Duration::from_millis(20)).await;
    let (b, b_manager) = server_on(&path, Duration::from_millis(20)).await;
    let (status, body) = call(&a, "POST", "/api/conversations", None).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    for (server, text) in [(&a, "through a"), (&b, "through b")] {
        let (status, body) = call(
            server,
            "POST",
            &format!("/api/conversations/{id}/messages"),
            Some(&json!({ "content": text }).to_string()),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        idle(server, &id).await;
    }
    let (_, body) = call(&a, "GET", &format!("/api/conversations/{id}"), None).await;
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(
        messages.len(),
        4,
        "both servers' messages and replies: {body}"
    );
    let ids: std::collections::HashSet<_> = messages.iter().map(|m| m["id"].clone()).collect();
    assert_eq!(ids.len(), 4, "no id collides: {body}");

    // A long generation on a, stopped through b.
    let (slow, _) = server_on(&path, Duration::from_millis(200)).await;
    let (status, _) = call(
        &slow,
        "POST",
        &format!("/api/conversations/{id}/messages"),
        Some(r#"{"content":"a long one"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, body) = call(&b, "POST", &format!("/api/conversations/{id}/stop"), None).await;
    assert_eq!(
        (status, body["stopped"].as_bool()),
        (StatusCode::OK, Some(true)),
        "{body}"
    );
    let (_, body) = call(&b, "GET", &format!("/api/conversations/{id}"), None).await;
    assert_eq!(body["generating"], false, "freed at once: {body}");
    assert_eq!(body["notice"], chat_server::STOPPED_NOTICE, "{body}");
    // No 11-second block: the next send through either server is accepted at once.
    let (status, body) = call(
        &b,
        "POST",
        &format!("/api/conversations/{id}/messages"),
        Some(r#"{"content":"right after the stop"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    idle(&b, &id).await;
    idle(&slow, &id).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let session = b_manager.session(&id).await.unwrap();
    let replies: Vec<_> = session
        .messages
        .iter()
        .filter(|m| m.role == conc_session::Role::Assistant)
        .collect();
    assert_eq!(
        replies.len(),
        3,
        "the stopped reply was discarded: {session:?}"
    );
    assert!(replies.iter().all(|m| !m.content.contains("a long one")));

    // A restart: a new server on the same store creates conversations without collisions.
    drop((a, b, slow));
    let (restarted, _) = server_on(&path, Duration::from_millis(20)).await;
    for _ in 0..2 {
        let (status, body) = call(&restarted, "POST", "/api/conversations", None).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (_, body) = call(&restarted, "GET", "/api/conversations", None).await;
    assert_eq!(body["conversations"].as_array().unwrap().len(), 3, "{body}");
}

/// `/metrics` answers Prometheus text with the crates' counters once a generation ran, and
/// a method a path does not serve gets a JSON 405 like every other error.
#[tokio::test]
async fn metrics_are_exported_and_wrong_methods_get_json_errors() {
    let app = app(Duration::from_millis(1));
    call(&app, "POST", "/api/conversations", Some(r#"{"id":"m1"}"#)).await;
    let (status, _) = call(
        &app,
        "POST",
        "/api/conversations/m1/messages",
        Some(r#"{"content":"count me"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    idle(&app, "m1").await;

    let request = Request::builder()
        .uri("/metrics")
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    for name in [
        "conc_session_generations_started",
        "conc_lock_acquired_total",
        "conc_tasks_total",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }

    let (status, body) = call(&app, "DELETE", "/api/conversations", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(body["error"].as_str().is_some(), "{body}");
}

/// A server on `path` with its housekeeping started as `identity` (a 3 s lease, a 50 ms
/// round), as a separate process would have.
async fn housekeeping_server(path: &std::path::Path, identity: &str) -> (axum::Router, AppState) {
    let manager = SessionManager::new(SessionContext {
        sessions: Arc::new(conc_session::SqliteSessionStore::open(path).await.unwrap()),
        locks: Arc::new(conc_lock_store::SqliteLockStore::open(path).await.unwrap()),
        config: SessionConfig::default(),
    });
    let model = ModelConfig {
        token_delay: Duration::from_millis(20),
        tokens: 4,
        failure_rate: 0.0,
    };
    let state = AppState::new(manager, model, None);
    state
        .start_housekeeping(
            identity.to_owned(),
            conc_lock_store::ElectionConfig::new(
                Duration::from_secs(3),
                Duration::from_secs(2),
                Duration::from_millis(500),
            ),
            Duration::from_millis(50),
        )
        .await
        .unwrap();
    (router(state.clone()), state)
}

/// The housekeeping runs on one elected server: of two servers on one store exactly one
/// leads and works (the other runs no round); when the leader shuts down it resigns, and
/// the other takes over at once (well before the 3 s lease could run out), with a higher
/// fence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn housekeeping_runs_on_one_elected_server() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let (a, a_state) = housekeeping_server(&path, "a").await;
    let (b, b_state) = housekeeping_server(&path, "b").await;
    let started = std::time::Instant::now();
    let (leader, follower) = loop {
        let (_, ra) = call(&a, "GET", "/api/housekeeping", None).await;
        let (_, rb) = call(&b, "GET", "/api/housekeeping", None).await;
        let leading = |r: &Value| r["leading"].as_bool().unwrap();
        assert!(!(leading(&ra) && leading(&rb)), "two leaders: {ra} {rb}");
        if leading(&ra) && ra["rounds"].as_u64().unwrap() >= 3 {
            break ((ra, &a_state), (rb, &b));
        }
        if leading(&rb) && rb["rounds"].as_u64().unwrap() >= 3 {
            break ((rb, &b_state), (ra, &a));
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nobody led: {ra} {rb}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (leader_report, leader_state) = leader;
    let (follower_report, follower_router) = follower;
    assert_eq!(
        follower_report["rounds"], 0,
        "the follower never ran a round"
    );

    leader_state
        .supervisor()
        .shutdown(Duration::from_secs(5))
        .await;
    let resigned = std::time::Instant::now();
    loop {
        let (_, report) = call(follower_router, "GET", "/api/housekeeping", None).await;
        if report["leading"].as_bool().unwrap() && report["rounds"].as_u64().unwrap() > 0 {
            assert!(report["fence"].as_u64().unwrap() > leader_report["fence"].as_u64().unwrap());
            break;
        }
        assert!(
            resigned.elapsed() < Duration::from_millis(2500),
            "the follower did not take over at once: {report}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The Rust front end's routes: the search (its delay capped, its counters), the page's
/// conversation id checked, the module's files refused without a folder to serve them.
#[tokio::test(start_paused = true)]
async fn the_front_end_routes_search_and_refuse_bad_input() {
    let app = app(Duration::from_millis(10));
    for id in ["conv-alpha", "conv-beta", "other"] {
        let body = json!({ "id": id }).to_string();
        let (status, _) = call(&app, "POST", "/api/conversations", Some(&body)).await;
        assert_eq!(status, StatusCode::CREATED, "{id}");
    }
    let (status, body) = call(&app, "GET", "/api/search?q=CONV&delay_ms=100", None).await;
    assert_eq!(status, StatusCode::OK);
    let mut found: Vec<String> = serde_json::from_value(body["conversations"].clone()).unwrap();
    found.sort();
    assert_eq!(found, ["conv-alpha", "conv-beta"]);
    // A delay past the cap waits the cap (paused time: it advances at once).
    let started = tokio::time::Instant::now();
    let (status, _) = call(&app, "GET", "/api/search?q=x&delay_ms=999999", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(started.elapsed(), chat_server::MAX_SEARCH_DELAY);
    let (_, stats) = call(&app, "GET", "/api/search/stats", None).await;
    assert_eq!(
        stats,
        json!({ "started": 2, "answered": 2, "abandoned": 0 })
    );
    // A search whose client goes away first is counted as abandoned.
    let request = Request::builder()
        .uri("/api/search?q=c&delay_ms=1000")
        .body(Body::empty())
        .unwrap();
    let dropped = tokio::time::timeout(Duration::from_millis(10), app.clone().oneshot(request));
    assert!(dropped.await.is_err());
    let (_, stats) = call(&app, "GET", "/api/search/stats", None).await;
    assert_eq!(
        stats,
        json!({ "started": 3, "answered": 2, "abandoned": 1 })
    );

    let (status, body) = call(&app, "GET", "/api/search?delay_ms=1", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "no q: {body}");
    let (status, body) = call(&app, "GET", "/app?conversation=%3Cscript%3E", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"].as_str().unwrap().contains("conversation="),
        "{body}"
    );
    let (status, page) = call(&app, "GET", "/app?conversation=conv-alpha", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.as_str()
            .unwrap()
            .contains("data-conversation=\"conv-alpha\"")
    );
    let (status, body) = call(&app, "GET", "/wasm/chat_web.js", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body["error"].as_str().unwrap().contains("--web-dir"),
        "{body}"
    );
    let (status, _) = call(&app, "GET", "/wasm/secret.txt", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
