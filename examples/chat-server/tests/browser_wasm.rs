//! The Rust front end (`examples/chat-web`, WebAssembly) in a real headless Chromium, served
//! by the chat-server at `/app`: search as you type over conversations while the server
//! answers shorter queries later (out of order): stale results are never shown and every
//! superseded search is aborted (the server counts the requests abandoned before their
//! answer); the send button clicked three times at once makes one request and one message;
//! the lock banner shows the generation; a stop ends it. Screenshots go to
//! `target/chat-screenshots/`. `cargo xtask wasm` builds the page and runs this test with
//! `CONC_CHAT_WEB_DIR` set; without it, it prints a `skipped:` line.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chat_server::{AppState, ModelConfig, router};
use conc_lock_store::SqliteLockStore;
use conc_session::{Role, SessionConfig, SessionContext, SessionManager, SqliteSessionStore};
use fantoccini::{Client, Locator};
use serde_json::{Value, json};

mod support;
use support::{browser, browser_installed, screenshot, wait_until};

async fn js(client: &Client, script: &str) -> Value {
    client.execute(script, vec![]).await.unwrap()
}

async fn stat(client: &Client, name: &str) -> String {
    let script = format!("return document.getElementById('stats').getAttribute('data-{name}')");
    js(client, &script)
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn search_stats(base: &str) -> Value {
    let body = reqwest_get(&format!("{base}/api/search/stats")).await;
    serde_json::from_str(&body).unwrap()
}

/// A GET with hyper (the dev-dependencies have no HTTP client of their own).
async fn reqwest_get(url: &str) -> String {
    use http_body_util::{BodyExt as _, Empty};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<axum::body::Bytes>>();
    let response = client.get(url.parse().unwrap()).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_front_end_searches_sends_once_and_stops() {
    let Some(web_dir) = std::env::var_os("CONC_CHAT_WEB_DIR") else {
        println!(
            "skipped: CONC_CHAT_WEB_DIR is not set, so the WebAssembly front end is not tested (`cargo xtask wasm` builds it and runs this test)"
        );
        return;
    };
    if !browser_installed() {
        return;
    }
    let store_dir = tempfile::tempdir().unwrap();
    let store = store_dir.path().join("chat.db");
    let manager = SessionManager::new(SessionContext {
        sessions: Arc::new(SqliteSessionStore::open(&store).await.unwrap()),
        locks: Arc::new(SqliteLockStore::open(&store).await.unwrap()),
        config: SessionConfig::default(),
    });
    for id in ["conv-alpha", "conv-beta", "other-1"] {
        manager.create_session(id).await.unwrap();
    }
    let model = ModelConfig {
        token_delay: Duration::from_millis(200),
        tokens: 40,
        failure_rate: 0.0,
    };
    let state = AppState::new(manager.clone(), model, None).with_web_dir(PathBuf::from(web_dir));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = router(state);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("test server failed: {e}");
        }
    });

    let browser = browser("1000,700").await;
    let client = browser.client.clone();
    client
        .goto(&format!("{base}/app?conversation=conv-alpha"))
        .await
        .unwrap();
    wait_until(
        "the WebAssembly module runs",
        Duration::from_secs(20),
        || async { stat(&client, "searches").await == "0" },
    )
    .await;

    // Search as you type: "c", "co", "con", "conv", each answered later than the next.
    let search = client.find(Locator::Id("search")).await.unwrap();
    search.send_keys("conv").await.unwrap();
    wait_until(
        "the last search is shown",
        Duration::from_secs(10),
        || async { stat(&client, "shown").await.ends_with("conv") },
    )
    .await;
    // A search aborted before its request left the browser never reaches the server (on a
    // loaded machine the next key can come that soon): the server counts those it saw.
    wait_until(
        "every search the server saw has ended",
        Duration::from_secs(10),
        || async {
            let stats = search_stats(&base).await;
            let settled = stats["answered"].as_u64().unwrap()
                + stats["abandoned"].as_u64().unwrap()
                == stats["started"].as_u64().unwrap();
            if !settled {
                // Shown only if the test fails.
                eprintln!("search stats: {stats}");
            }
            settled
        },
    )
    .await;
    assert_eq!(stat(&client, "searches").await, "4", "one search a key");
    screenshot(&client, "wasm-search").await;
    let shown = stat(&client, "shown").await;
    let order = ["c", "co", "con", "conv"];
    let positions: Vec<usize> = shown
        .split('|')
        .map(|q| order.iter().position(|o| *o == q).unwrap())
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "results were shown out of typing order (a stale answer): {shown}"
    );
    let results = js(
        &client,
        "return Array.from(document.querySelectorAll('#results li')).map(li => li.textContent)",
    )
    .await;
    assert_eq!(results, json!(["conv-alpha", "conv-beta"]));
    let stats = search_stats(&base).await;
    let superseded = 4 - positions.len() as u64;
    let started = stats["started"].as_u64().unwrap();
    assert!(started <= 4, "at most one request a key: {stats}");
    let never_sent = 4 - started;
    assert_eq!(
        stats["abandoned"].as_u64().unwrap() + never_sent,
        superseded,
        "every superseded search was aborted before its answer (or before it was sent): {stats}"
    );
    assert_eq!(stat(&client, "aborted").await, superseded.to_string());

    // Send, clicked three times at once: one request, one message.
    let message = client.find(Locator::Id("message")).await.unwrap();
    message.send_keys("hello").await.unwrap();
    js(
        &client,
        "const b = document.getElementById('send'); b.click(); b.click(); b.click(); return true",
    )
    .await;
    wait_until("the send is answered", Duration::from_secs(10), || async {
        js(
            &client,
            "return document.getElementById('status').textContent",
        )
        .await
        .as_str()
        .is_some_and(|s| s.starts_with("sent"))
    })
    .await;
    assert_eq!(stat(&client, "requests").await, "1");
    let session = manager.session("conv-alpha").await.unwrap();
    let from_user = session
        .messages
        .iter()
        .filter(|m| m.role == Role::User)
        .count();
    assert_eq!(from_user, 1, "three clicks made one message");

    // The lock banner shows the generation; a stop ends it.
    wait_until(
        "the banner shows the lock",
        Duration::from_secs(10),
        || async {
            js(
                &client,
                "return document.getElementById('banner').className",
            )
            .await
                == json!("locked")
        },
    )
    .await;
    screenshot(&client, "wasm-locked").await;
    client
        .find(Locator::Id("stop"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_until(
        "the generation is stopped",
        Duration::from_secs(10),
        || async { !manager.is_generating("conv-alpha").await.unwrap() },
    )
    .await;
    wait_until(
        "the banner is released",
        Duration::from_secs(10),
        || async {
            js(
                &client,
                "return document.getElementById('banner').className",
            )
            .await
                == json!("")
        },
    )
    .await;
    screenshot(&client, "wasm-stopped").await;
    let session = manager.session("conv-alpha").await.unwrap();
    assert!(
        session.messages.iter().all(|m| m.role == Role::User),
        "a stopped generation saves no reply"
    );
    client.close().await.unwrap();
}
