//! The chat in a real headless Chromium, on two servers that share one SQLite store: send,
//! then send again at once (the toast says please wait and the input is disabled); the
//! input comes back after the response; a tab on the second server sees the lock and the
//! messages; a stop pressed on the second server stops the generation the first one runs,
//! and the page says the partial reply was discarded; after a restart of the first server,
//! "New conversation" works. Screenshots go to `target/chat-screenshots/`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chat_server::{AppState, ModelConfig, router};
use conc_lock_store::SqliteLockStore;
use conc_session::{SessionConfig, SessionContext, SessionManager, SqliteSessionStore};
use fantoccini::{Client, Locator};
use serde_json::json;

mod support;
use support::{browser, browser_installed, screenshot, wait_until};

async fn input_disabled(client: &Client) -> bool {
    client
        .execute(
            "return document.getElementById('chat-input').disabled",
            vec![],
        )
        .await
        .unwrap()
        == json!(true)
}

/// A server (as its own process would be) on the SQLite store at `path`, on a free port:
/// its base URL, its task and its manager.
async fn start_server(path: &Path) -> (String, tokio::task::JoinHandle<()>, SessionManager) {
    let manager = SessionManager::new(SessionContext {
        sessions: Arc::new(SqliteSessionStore::open(path).await.unwrap()),
        locks: Arc::new(SqliteLockStore::open(path).await.unwrap()),
        config: SessionConfig::default(),
    });
    // A reply takes 6 s: long enough that, on a loaded machine, the stop pressed in the
    // other tab still arrives while it is being written.
    let model = ModelConfig {
        token_delay: Duration::from_millis(150),
        tokens: 40,
        failure_rate: 0.0,
    };
    let app = router(AppState::new(manager.clone(), model, None));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("test server failed: {e}");
        }
    });
    (base, task, manager)
}

async fn status_text(client: &Client) -> String {
    client
        .find(Locator::Id("status"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_lock_in_a_real_browser() {
    if !browser_installed() {
        return;
    }
    // Two servers, in this process, on one store.
    let store_dir = tempfile::tempdir().unwrap();
    let store = store_dir.path().join("chat.db");
    let (base, server_a, manager) = start_server(&store).await;
    let (base_b, _server_b, _) = start_server(&store).await;
    manager.create_session("browser-test").await.unwrap();

    // chromedriver and a headless Chromium with a fresh profile.
    let browser = browser("1100,800").await;
    let client = browser.client.clone();
    let page = format!("{base}/#browser-test");
    client.goto(&page).await.unwrap();
    wait_until(
        "the conversation is open",
        Duration::from_secs(20),
        || async {
            client
                .execute(
                    "return document.querySelector('#conversation-list .current') !== null",
                    vec![],
                )
                .await
                .unwrap()
                == json!(true)
        },
    )
    .await;

    // Type and send, then send again at once: the toast says please wait, the input is disabled.
    let input = client.find(Locator::Id("chat-input")).await.unwrap();
    input.send_keys("What is a fencing token?").await.unwrap();
    // A double click: two clicks before the first answer comes back.
    client
        .execute(
            "const b = document.getElementById('send-button'); b.click(); b.click();",
            vec![],
        )
        .await
        .unwrap();
    wait_until("the please-wait toast shows", Duration::from_secs(15), || async {
        let toasts = client
            .execute("return Array.from(document.querySelectorAll('.toast-error')).map(t => t.textContent).join('|')", vec![])
            .await
            .unwrap();
        toasts.as_str().unwrap_or_default().to_lowercase().contains("please wait")
    })
    .await;
    assert!(
        input_disabled(&client).await,
        "the input is disabled while generating"
    );
    let placeholder = client
        .execute(
            "return document.getElementById('chat-input').placeholder",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(placeholder, json!("Waiting for response..."));
    screenshot(&client, "1-generating-with-toast").await;

    // A second tab, on the other server, sees the lock too.
    let first_tab = client.window().await.unwrap();
    let second = client.new_window(true).await.unwrap();
    let second_tab = second.handle.clone();
    client.switch_to_window(second_tab.clone()).await.unwrap();
    client
        .goto(&format!("{base_b}/#browser-test"))
        .await
        .unwrap();
    wait_until(
        "the second tab shows the lock",
        Duration::from_secs(15),
        || async { input_disabled(&client).await },
    )
    .await;
    screenshot(&client, "2-second-tab-locked").await;

    // After the response, the input is enabled again (in both tabs).
    wait_until(
        "the second tab unlocks",
        Duration::from_secs(20),
        || async { !input_disabled(&client).await },
    )
    .await;
    wait_until(
        "the second tab shows the other server's messages",
        Duration::from_secs(15),
        || async {
            client
                .find_all(Locator::Css("#messages .message"))
                .await
                .unwrap()
                .len()
                == 2
        },
    )
    .await;
    client.switch_to_window(first_tab.clone()).await.unwrap();
    wait_until("the first tab unlocks", Duration::from_secs(20), || async {
        !input_disabled(&client).await
    })
    .await;
    let messages = client
        .find_all(Locator::Css("#messages .message"))
        .await
        .unwrap();
    assert_eq!(messages.len(), 2, "the question and its answer");
    screenshot(&client, "3-answered").await;

    // Stop aborts a running generation.
    let input = client.find(Locator::Id("chat-input")).await.unwrap();
    input.send_keys("Tell me a long story").await.unwrap();
    client
        .find(Locator::Id("send-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_until("the generation runs", Duration::from_secs(15), || async {
        input_disabled(&client).await
    })
    .await;
    // The stop is pressed in the tab of the other server.
    client.switch_to_window(second_tab.clone()).await.unwrap();
    wait_until(
        "the other server's tab sees the generation",
        Duration::from_secs(15),
        || async { input_disabled(&client).await },
    )
    .await;
    client
        .find(Locator::Id("stop-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    client.switch_to_window(first_tab.clone()).await.unwrap();
    wait_until(
        "stop unlocks the input",
        Duration::from_secs(15),
        || async { !input_disabled(&client).await },
    )
    .await;
    wait_until(
        "the page says the partial reply was discarded",
        Duration::from_secs(15),
        || async { status_text(&client).await.contains("discarded") },
    )
    .await;
    let status = status_text(&client).await;
    screenshot(&client, "4-stopped").await;
    let session = manager.session("browser-test").await.unwrap();
    assert_eq!(
        session.messages.len(),
        3,
        "the stopped reply was not saved (status: {status})"
    );
    assert_eq!(
        client
            .find_all(Locator::Css("#messages .message"))
            .await
            .unwrap()
            .len(),
        3,
        "the partial reply is gone from the page too"
    );

    // A restart of the first server: new conversations still get fresh ids.
    server_a.abort();
    let _ = server_a.await;
    let (restarted, _server_a2, _) = start_server(&store).await;
    client.goto(&format!("{restarted}/")).await.unwrap();
    for n in 1..=2 {
        client
            .find(Locator::Id("new-conversation"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_until(
            "the new conversation is listed",
            Duration::from_secs(15),
            || async {
                client
                    .find_all(Locator::Css("#conversation-list button"))
                    .await
                    .unwrap()
                    .len()
                    == 1 + n
            },
        )
        .await;
    }
    let toasts = client.find_all(Locator::Css(".toast-error")).await.unwrap();
    assert!(toasts.is_empty(), "no `already exists` after the restart");
    screenshot(&client, "5-after-restart").await;
    client.close().await.unwrap();
}
