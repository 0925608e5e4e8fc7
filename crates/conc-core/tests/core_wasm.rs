//! conc-core on WebAssembly: one thread, wasm-bindgen-futures' executor, the browser's (or
//! Node's) timers, as a Rust front end runs it. `cargo xtask wasm` runs these in Node and
//! in headless Chromium; natively this file is empty.

#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use conc_core::{
    AbortManager, AbortReason, IdempotencyKey, IdempotencyRegistry, Mutex, SequenceGuard,
};
use futures_util::FutureExt as _;
use gloo_timers::future::sleep;
use wasm_bindgen_test::wasm_bindgen_test;

/// Starts `future` on the executor now; the handle hands back its output.
fn spawn<T: 'static>(
    future: impl std::future::Future<Output = T> + 'static,
) -> futures_util::future::RemoteHandle<T> {
    let (done, output) = future.remote_handle();
    wasm_bindgen_futures::spawn_local(done);
    output
}

#[wasm_bindgen_test]
fn a_sequence_guard_commits_only_the_latest_token() {
    let guard = SequenceGuard::new("search");
    let first = guard.next();
    let second = guard.next();
    assert!(!guard.is_current(&first));
    assert!(guard.is_current(&second));
    assert_eq!(guard.commit_if_current(&first, || 1), None);
    assert_eq!(guard.commit_if_current(&second, || 2), Some(2));
}

/// Search as you type: five queries, the earlier ones slower; only the last commits, and
/// every superseded one is aborted, not left running.
#[wasm_bindgen_test]
async fn superseded_work_is_aborted_and_only_the_latest_commits() {
    let guard = Rc::new(SequenceGuard::new("search"));
    let aborts = Rc::new(AbortManager::new());
    let committed = Rc::new(RefCell::new(Vec::new()));
    let aborted = Rc::new(RefCell::new(0));
    let mut runs = Vec::new();
    for i in 0..5u64 {
        let (guard, aborts) = (guard.clone(), aborts.clone());
        let (committed, aborted) = (committed.clone(), aborted.clone());
        runs.push(spawn(async move {
            let token = guard.next();
            let outcome = aborts
                .with_abort(|signal| async move {
                    let latency = Duration::from_millis(50 - i * 10);
                    signal.run_until_aborted(sleep(latency)).await?;
                    Ok::<_, conc_core::Aborted>(format!("results for q{i}"))
                })
                .await;
            match outcome {
                Ok(Ok(results)) => {
                    guard.commit_if_current(&token, || committed.borrow_mut().push(results));
                }
                Ok(Err(stopped)) | Err(stopped) => {
                    assert_eq!(stopped.reason(), &AbortReason::Superseded);
                    *aborted.borrow_mut() += 1;
                }
            }
        }));
        sleep(Duration::from_millis(1)).await;
    }
    futures_util::future::join_all(runs).await;
    assert_eq!(*committed.borrow(), vec!["results for q4".to_owned()]);
    assert_eq!(*aborted.borrow(), 4, "superseded work is aborted");
}

/// A send button clicked three times: one write.
#[wasm_bindgen_test]
async fn duplicates_run_once() {
    let registry = Rc::new(IdempotencyRegistry::<u32>::new());
    let writes = Rc::new(RefCell::new(0));
    let send = |registry: Rc<IdempotencyRegistry<u32>>, writes: Rc<RefCell<u32>>| async move {
        let key = IdempotencyKey::new("send", ["conv-1", "hello"]).unwrap();
        registry
            .run(key, || async move {
                *writes.borrow_mut() += 1;
                sleep(Duration::from_millis(5)).await;
                7
            })
            .await
    };
    let clicks = (0..3).map(|_| spawn(send(registry.clone(), writes.clone())));
    let replies = futures_util::future::join_all(clicks).await;
    assert_eq!(replies, vec![Ok(7), Ok(7), Ok(7)]);
    assert_eq!(*writes.borrow(), 1);
}

/// The FIFO mutex hands over in arrival order on one thread, across timers.
#[wasm_bindgen_test]
async fn the_mutex_hands_over_in_arrival_order() {
    let mutex = Rc::new(Mutex::new(Vec::new()));
    let held = mutex.lock().await;
    let mut waiters = Vec::new();
    for i in 0..4 {
        let mutex = mutex.clone();
        waiters.push(spawn(async move {
            mutex
                .run_exclusive(async |order: &mut Vec<i32>| {
                    sleep(Duration::from_millis(1)).await;
                    order.push(i);
                })
                .await;
        }));
        // Each waiter queues before the next one starts.
        sleep(Duration::from_millis(1)).await;
    }
    drop(held);
    futures_util::future::join_all(waiters).await;
    assert_eq!(*mutex.lock().await, vec![0, 1, 2, 3]);
}

/// A stop aborts the work in flight with the caller's reason.
#[wasm_bindgen_test]
async fn a_stop_aborts_the_work_in_flight() {
    let aborts = Rc::new(AbortManager::new());
    let running = {
        let aborts = aborts.clone();
        spawn(async move {
            aborts
                .with_abort(|signal| async move {
                    signal
                        .run_until_aborted(sleep(Duration::from_secs(60)))
                        .await
                })
                .await
        })
    };
    sleep(Duration::from_millis(5)).await;
    assert!(aborts.abort_active(AbortReason::user("stop")));
    let outcome = running.await;
    let stopped = match outcome {
        Ok(Err(stopped)) | Err(stopped) => stopped,
        Ok(Ok(())) => panic!("the work ran to its end"),
    };
    assert_eq!(stopped.reason(), &AbortReason::user("stop"));
}

/// conc's abort reaches the browser signal a `fetch` would watch, with its reason.
#[cfg(feature = "web")]
#[wasm_bindgen_test]
fn a_conc_abort_aborts_the_browser_signal() {
    let controller = conc_core::AbortController::new();
    let web = controller.signal().to_web();
    assert!(!web.signal().aborted());
    controller.abort(AbortReason::Superseded);
    assert!(web.signal().aborted());
    let reason = web.signal().reason().as_string().unwrap();
    assert_eq!(reason, AbortReason::Superseded.to_string());
    // A signal that is already aborted gives an aborted browser signal.
    assert!(controller.signal().to_web().signal().aborted());
}

/// Superseded work aborts its request: the browser signal of the first of two searches
/// fires when the second begins.
#[cfg(feature = "web")]
#[wasm_bindgen_test]
async fn superseded_work_aborts_its_browser_signal() {
    let aborts = AbortManager::new();
    let first = aborts.begin();
    let web = first.signal().to_web();
    let second = aborts.begin();
    assert!(web.signal().aborted());
    assert!(!second.signal().to_web().signal().aborted());
}

/// The browser's abort (an unmount, a user's controller) stops conc's work.
#[cfg(feature = "web")]
#[wasm_bindgen_test]
async fn a_browser_abort_stops_concs_work() {
    let browser = web_sys::AbortController::new().unwrap();
    let signal = conc_core::from_web(&browser.signal());
    let work = spawn(async move {
        signal
            .run_until_aborted(sleep(Duration::from_secs(60)))
            .await
    });
    sleep(Duration::from_millis(5)).await;
    browser.abort_with_reason(&wasm_bindgen::JsValue::from_str("unmounted"));
    let stopped = work.await.unwrap_err();
    assert_eq!(stopped.reason(), &AbortReason::user("unmounted"));
    // Already aborted: the conc signal is too.
    assert!(conc_core::from_web(&browser.signal()).is_aborted());
}
