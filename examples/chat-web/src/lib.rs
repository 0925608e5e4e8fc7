//! The chat's browser client in Rust, compiled to `wasm32-unknown-unknown` and served by the
//! chat-server at `/app`: the page's logic on conc-core's primitives, the way a chat
//! client uses them.
//!
//! - Search as you type: each keystroke takes a `SequenceGuard` token and begins an
//!   `AbortManager` lease; the lease's signal, linked to the browser's
//!   (`AbortSignal::to_web`), aborts the previous
//!   search's `fetch`, and an answer is shown only if its token is still current. The
//!   server answers shorter queries later (`delay_ms`), so without both a stale answer
//!   would land last.
//! - Send: the click runs through an `IdempotencyRegistry` keyed by conversation and
//!   text, so three quick clicks make one request.
//! - Stop: aborts the page's watch of the reply and asks the server to stop the
//!   generation.
//! - The lock banner: the conversation's `generating` state, polled.
//!
//! The page counts what happened (`data-` attributes of `#stats`) for the browser test.
//! Built for `wasm32` only; elsewhere the crate is empty.

#![cfg(target_arch = "wasm32")]

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use conc_core::{AbortManager, IdempotencyKey, IdempotencyRegistry, SequenceGuard};
use wasm_bindgen::JsCast as _;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{JsFuture, spawn_local};

/// How long the server waits before answering a search for `query`: shorter (earlier)
/// queries wait longer, so answers arrive out of order.
pub fn search_delay(query: &str) -> u32 {
    let typed = u32::try_from(query.chars().count()).unwrap_or(u32::MAX);
    900u32.saturating_sub(typed.saturating_mul(200)).max(50)
}

/// The page's state.
struct App {
    document: web_sys::Document,
    conversation: String,
    search_guard: SequenceGuard,
    search_aborts: AbortManager,
    sends: IdempotencyRegistry<Result<String, String>>,
    watch: AbortManager,
    /// Counters shown as `data-` attributes of `#stats`.
    searches: Cell<u32>,
    shown: RefCell<Vec<String>>,
    aborted: Cell<u32>,
    stale: Cell<u32>,
    requests: Cell<u32>,
}

/// Wires the page: `#search`, `#results`, `#message`, `#send`, `#stop`, `#banner`, `#stats`;
/// the conversation is `#app`'s `data-conversation`.
#[wasm_bindgen(start)]
pub fn start() -> Result<(), JsValue> {
    let window = web_sys::window().ok_or("no window")?;
    let document = window.document().ok_or("no document")?;
    let conversation = element(&document, "app")?
        .get_attribute("data-conversation")
        .unwrap_or_default();
    let app = Rc::new(App {
        document,
        conversation,
        search_guard: SequenceGuard::new("search"),
        search_aborts: AbortManager::new(),
        sends: IdempotencyRegistry::new(),
        watch: AbortManager::new(),
        searches: Cell::new(0),
        shown: RefCell::new(Vec::new()),
        aborted: Cell::new(0),
        stale: Cell::new(0),
        requests: Cell::new(0),
    });
    on(&app, "search", "input", |app| {
        let query = input_value(&app.document, "search");
        spawn_local(search(app, query));
    })?;
    on(&app, "send", "click", |app| {
        let text = input_value(&app.document, "message");
        spawn_local(send(app, text));
    })?;
    on(&app, "stop", "click", |app| spawn_local(stop(app)))?;
    spawn_local(banner(app.clone()));
    app.publish();
    Ok(())
}

impl App {
    /// Writes the counters where the test reads them.
    fn publish(&self) {
        if let Ok(stats) = element(&self.document, "stats") {
            let _ = stats.set_attribute("data-searches", &self.searches.get().to_string());
            let _ = stats.set_attribute("data-shown", &self.shown.borrow().join("|"));
            let _ = stats.set_attribute("data-aborted", &self.aborted.get().to_string());
            let _ = stats.set_attribute("data-stale", &self.stale.get().to_string());
            let _ = stats.set_attribute("data-requests", &self.requests.get().to_string());
            stats.set_text_content(Some(&format!(
                "searches {} · shown {} · aborted {} · stale answers dropped {} · send requests {}",
                self.searches.get(),
                self.shown.borrow().len(),
                self.aborted.get(),
                self.stale.get(),
                self.requests.get()
            )));
        }
    }

    fn say(&self, text: &str) {
        if let Ok(status) = element(&self.document, "status") {
            status.set_text_content(Some(text));
        }
    }
}

/// One search: the newest wins; the one it replaces is aborted.
async fn search(app: Rc<App>, query: String) {
    let token = app.search_guard.next();
    let lease = app.search_aborts.begin();
    let web = lease.signal().to_web();
    app.searches.set(app.searches.get() + 1);
    app.publish();
    let url = format!(
        "/api/search?q={}&delay_ms={}",
        js_sys::encode_uri_component(&query),
        search_delay(&query)
    );
    let answer = fetch_json(&url, "GET", None, Some(web.signal())).await;
    match answer {
        Ok(body) => {
            let shown = app.search_guard.commit_if_current(&token, || {
                render_results(&app.document, &query, &body);
                app.shown.borrow_mut().push(query.clone());
            });
            if shown.is_none() {
                app.stale.set(app.stale.get() + 1);
            }
        }
        Err(_) if lease.signal().is_aborted() => app.aborted.set(app.aborted.get() + 1),
        Err(error) => app.say(&format!("search failed: {error}")),
    }
    app.publish();
}

fn render_results(document: &web_sys::Document, query: &str, body: &JsValue) {
    let Ok(list) = element(document, "results") else {
        return;
    };
    list.set_inner_html("");
    let _ = list.set_attribute("data-query", query);
    let found = js_sys::Reflect::get(body, &"conversations".into()).unwrap_or(JsValue::NULL);
    for id in js_sys::Array::from(&found).iter() {
        if let Ok(item) = document.create_element("li") {
            item.set_text_content(id.as_string().as_deref());
            let _ = list.append_child(&item);
        }
    }
}

/// One send per conversation and text while it runs, however often the button is clicked.
async fn send(app: Rc<App>, text: String) {
    let text = text.trim().to_owned();
    if text.is_empty() {
        return;
    }
    let key = match IdempotencyKey::new("send", [app.conversation.as_str(), text.as_str()]) {
        Ok(key) => key,
        Err(error) => return app.say(&format!("cannot send: {error}")),
    };
    let runner = app.clone();
    let sent = app
        .sends
        .run(key, || async move {
            runner.requests.set(runner.requests.get() + 1);
            runner.publish();
            let body = js_sys::Object::new();
            let _ = js_sys::Reflect::set(&body, &"content".into(), &text.as_str().into());
            let body = js_sys::JSON::stringify(&body)
                .map(String::from)
                .unwrap_or_default();
            let url = format!("/api/conversations/{}/messages", runner.conversation);
            fetch_json(&url, "POST", Some(&body), None)
                .await
                .map(|reply| {
                    js_sys::Reflect::get(&reply, &"message_id".into())
                        .ok()
                        .and_then(|id| id.as_string())
                        .unwrap_or_default()
                })
        })
        .await;
    match sent {
        Ok(Ok(id)) => app.say(&format!("sent ({id})")),
        Ok(Err(error)) => app.say(&format!("send failed: {error}")),
        Err(error) => app.say(&format!("send failed: {error}")),
    }
}

/// Stops the reply: the page stops watching it and asks the server to stop it.
async fn stop(app: Rc<App>) {
    app.watch
        .abort_active(conc_core::AbortReason::user("stopped"));
    let url = format!("/api/conversations/{}/stop", app.conversation);
    match fetch_json(&url, "POST", Some("{}"), None).await {
        Ok(_) => app.say("Stopped."),
        Err(error) => app.say(&format!("stop failed: {error}")),
    }
}

/// The lock banner: polls the conversation's state while the page lives.
async fn banner(app: Rc<App>) {
    let url = format!("/api/conversations/{}", app.conversation);
    loop {
        let lease = app.watch.begin();
        let web = lease.signal().to_web();
        if let Ok(body) = fetch_json(&url, "GET", None, Some(web.signal())).await {
            let generating = js_sys::Reflect::get(&body, &"generating".into())
                .ok()
                .and_then(|g| g.as_bool())
                .unwrap_or(false);
            if let Ok(banner) = element(&app.document, "banner") {
                let (class, text) = if generating {
                    (
                        "locked",
                        "A reply is being generated: this conversation is locked until it ends or is stopped.",
                    )
                } else {
                    ("", "Ready: send a message.")
                };
                banner.set_class_name(class);
                banner.set_text_content(Some(text));
            }
        }
        drop(lease);
        gloo_timers::future::sleep(Duration::from_millis(200)).await;
    }
}

/// `fetch` with a JSON answer; an error names the status or the failure.
async fn fetch_json(
    url: &str,
    method: &str,
    body: Option<&str>,
    signal: Option<&web_sys::AbortSignal>,
) -> Result<JsValue, String> {
    let window = web_sys::window().ok_or("no window")?;
    let init = web_sys::RequestInit::new();
    init.set_method(method);
    if let Some(body) = body {
        init.set_body(&body.into());
        let headers = web_sys::Headers::new().map_err(|e| format!("{e:?}"))?;
        let _ = headers.set("content-type", "application/json");
        init.set_headers(&headers);
    }
    init.set_signal(signal);
    let response = JsFuture::from(window.fetch_with_str_and_init(url, &init))
        .await
        .map_err(|e| format!("{e:?}"))?;
    let response: web_sys::Response = response.dyn_into().map_err(|e| format!("{e:?}"))?;
    if !response.ok() {
        return Err(format!("{} answered {}", url, response.status()));
    }
    let json = response.json().map_err(|e| format!("{e:?}"))?;
    JsFuture::from(json).await.map_err(|e| format!("{e:?}"))
}

fn element(document: &web_sys::Document, id: &str) -> Result<web_sys::Element, JsValue> {
    document
        .get_element_by_id(id)
        .ok_or_else(|| JsValue::from_str(&format!("no #{id} on the page")))
}

fn input_value(document: &web_sys::Document, id: &str) -> String {
    document
        .get_element_by_id(id)
        .and_then(|e| e.dyn_into::<web_sys::HtmlInputElement>().ok())
        .map(|input| input.value())
        .unwrap_or_default()
}

/// Calls `handler` with the app on each `event` of `#id`; the listener lives as long as
/// the page.
fn on(app: &Rc<App>, id: &str, event: &str, handler: fn(Rc<App>)) -> Result<(), JsValue> {
    let target = element(&app.document, id)?;
    let app = app.clone();
    let listener = Closure::<dyn FnMut()>::new(move || handler(app.clone()));
    target.add_event_listener_with_callback(event, listener.as_ref().unchecked_ref())?;
    listener.forget();
    Ok(())
}
