//! The browser's `AbortSignal` and conc's, linked (feature `web`, on `wasm32` only): a
//! `fetch` is aborted when the work it belongs to is superseded or stopped
//! ([`AbortSignal::to_web`]), and a browser signal (a component's unmount, a user's
//! `AbortController`) aborts conc's work ([`from_web`]).
//!
//! ```no_run
//! # async fn example(signal: conc_core::AbortSignal) {
//! let web = signal.to_web();
//! let init = web_sys::RequestInit::new();
//! init.set_signal(Some(web.signal()));
//! // window.fetch_with_str_and_init("/api/search?q=…", &init): rejected with an
//! // AbortError when `signal` aborts (newer work superseded it, or a stop).
//! # let _ = init;
//! # }
//! ```

use std::cell::RefCell;
use std::collections::HashMap;

use wasm_bindgen::JsCast as _;
use wasm_bindgen::JsValue;
use wasm_bindgen::closure::Closure;

use crate::abort::{AbortCallback, AbortController, AbortReason, AbortSignal};

thread_local! {
    /// The browser controllers of the live [`WebAbortSignal`]s, by id: a registration's
    /// callback must be `Send`, a browser object is not, so the callback carries the id.
    static CONTROLLERS: RefCell<(u64, HashMap<u64, web_sys::AbortController>)> =
        RefCell::new((0, HashMap::new()));
}

/// A browser `AbortSignal` that aborts when a conc [`AbortSignal`] does, with the reason's
/// text as its `reason`. The link lasts while this value lives: keep it for as long as the
/// request that uses [`signal`](Self::signal) runs.
#[must_use = "dropping it unlinks the browser signal from conc's"]
pub struct WebAbortSignal {
    id: u64,
    signal: web_sys::AbortSignal,
    _link: AbortCallback,
}

impl WebAbortSignal {
    /// The browser signal: pass it to `fetch` (`RequestInit::set_signal`) or any web API
    /// that takes one.
    pub fn signal(&self) -> &web_sys::AbortSignal {
        &self.signal
    }
}

impl Drop for WebAbortSignal {
    fn drop(&mut self) {
        let _ = CONTROLLERS.try_with(|controllers| controllers.borrow_mut().1.remove(&self.id));
    }
}

impl std::fmt::Debug for WebAbortSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebAbortSignal")
            .field("aborted", &self.signal.aborted())
            .finish()
    }
}

impl AbortSignal {
    /// A browser `AbortSignal` that aborts when this one does (at once if it already is),
    /// with the reason's text (`superseded by newer work`, a user's stop) as its `reason`.
    /// An abort reaches it on the thread that made it (a page's one thread).
    ///
    /// # Panics
    ///
    /// Never in a browser or Node; outside a JavaScript host (no `AbortController`
    /// global), web-sys's binding throws.
    pub fn to_web(&self) -> WebAbortSignal {
        let controller =
            web_sys::AbortController::new().expect("the host has an AbortController global");
        let signal = controller.signal();
        let id = CONTROLLERS.with(|controllers| {
            let mut controllers = controllers.borrow_mut();
            controllers.0 += 1;
            let id = controllers.0;
            controllers.1.insert(id, controller);
            id
        });
        let link = self.on_abort(move |reason| {
            let controller = CONTROLLERS.with(|controllers| controllers.borrow_mut().1.remove(&id));
            if let Some(controller) = controller {
                controller.abort_with_reason(&JsValue::from_str(&reason.to_string()));
            }
        });
        WebAbortSignal {
            id,
            signal,
            _link: link,
        }
    }
}

/// A conc [`AbortSignal`] that aborts when the browser's `signal` does (at once if it
/// already has), with [`AbortReason::User`] holding the browser reason's text. The event
/// listener is the browser's to keep: it runs once, on the abort, and goes with `signal`.
pub fn from_web(signal: &web_sys::AbortSignal) -> AbortSignal {
    let controller = AbortController::new();
    let conc = controller.signal();
    if signal.aborted() {
        controller.abort(AbortReason::user(reason_text(&signal.reason())));
        return conc;
    }
    let watched = signal.clone();
    let on_abort = Closure::once_into_js(move || {
        controller.abort(AbortReason::user(reason_text(&watched.reason())));
    });
    let options = web_sys::AddEventListenerOptions::new();
    options.set_once(true);
    let _ = signal.add_event_listener_with_callback_and_add_event_listener_options(
        "abort",
        on_abort.unchecked_ref(),
        &options,
    );
    conc
}

/// A browser abort reason as text: a string as it is, an error's message, else "aborted".
fn reason_text(reason: &JsValue) -> String {
    if let Some(text) = reason.as_string() {
        return text;
    }
    js_sys_message(reason).unwrap_or_else(|| "aborted".to_owned())
}

/// An `Error`'s (a `DOMException`'s) `message`.
fn js_sys_message(reason: &JsValue) -> Option<String> {
    reason
        .dyn_ref::<web_sys::DomException>()
        .map(web_sys::DomException::message)
}
