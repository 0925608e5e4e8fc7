//! The seed's integration test in a real headless Chromium: send, then send again at once
//! (the toast says please wait and the input is disabled); the input comes back after the
//! response; stop aborts a generation; a second tab sees the lock too. Screenshots go to
//! `target/chat-screenshots/`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_server::{AppState, ModelConfig, router};
use conc_lock_store::MemoryLockStore;
use conc_session::{MemorySessionStore, SessionConfig, SessionContext, SessionManager};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

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

async fn screenshot(client: &Client, name: &str) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/chat-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let png = client.screenshot().await.unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_lock_in_a_real_browser() {
    if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
        println!(
            "skipped: {CHROMIUM} or {CHROMEDRIVER} is missing (install Debian's chromium and chromium-driver; .ci/run does)"
        );
        return;
    }
    // The server, in this process, on a free port.
    let manager = SessionManager::new(SessionContext {
        sessions: Arc::new(MemorySessionStore::new()),
        locks: Arc::new(MemoryLockStore::new()),
        config: SessionConfig::default(),
    });
    let model = ModelConfig {
        token_delay: Duration::from_millis(150),
        tokens: 12,
        failure_rate: 0.0,
    };
    let app = router(AppState::new(manager.clone(), model, None));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("test server failed: {e}");
        }
    });
    manager.create_session("browser-test").await.unwrap();

    // chromedriver and a headless Chromium with a fresh profile.
    let port = free_port();
    let _driver = Driver(
        Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver"),
    );
    let profile = tempfile::tempdir().unwrap();
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1100,800",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        }),
    );
    let mut builder = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
    builder.capabilities(capabilities);
    let webdriver = format!("http://127.0.0.1:{port}");
    let mut client = None;
    for _ in 0..100 {
        match builder.connect(&webdriver).await {
            Ok(c) => {
                client = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let client = client.expect("chromedriver accepts a session");
    let page = format!("{base}/#browser-test");
    client.goto(&page).await.unwrap();
    wait_until(
        "the conversation is open",
        Duration::from_secs(10),
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
    wait_until("the please-wait toast shows", Duration::from_secs(5), || async {
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

    // A second tab on the same conversation sees the lock too.
    let first_tab = client.window().await.unwrap();
    let second = client.new_window(true).await.unwrap();
    client
        .switch_to_window(second.handle.clone())
        .await
        .unwrap();
    client.goto(&page).await.unwrap();
    wait_until(
        "the second tab shows the lock",
        Duration::from_secs(5),
        || async { input_disabled(&client).await },
    )
    .await;
    screenshot(&client, "2-second-tab-locked").await;

    // After the response, the input is enabled again (in both tabs).
    wait_until(
        "the second tab unlocks",
        Duration::from_secs(10),
        || async { !input_disabled(&client).await },
    )
    .await;
    client.switch_to_window(first_tab).await.unwrap();
    wait_until("the first tab unlocks", Duration::from_secs(10), || async {
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
    wait_until("the generation runs", Duration::from_secs(5), || async {
        input_disabled(&client).await
    })
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    client
        .find(Locator::Id("stop-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_until("stop unlocks the input", Duration::from_secs(3), || async {
        !input_disabled(&client).await
    })
    .await;
    let status = client
        .find(Locator::Id("status"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    screenshot(&client, "4-stopped").await;
    let session = manager.session("browser-test").await.unwrap();
    assert_eq!(
        session.messages.len(),
        3,
        "the stopped reply was not saved (status: {status})"
    );
    client.close().await.unwrap();
}
