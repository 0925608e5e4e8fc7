//! A chat client's stream runner as a test: rapid re-runs commit only the last result,
//! superseded work is aborted, and duplicates run once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use conc_core::{AbortManager, AbortReason, IdempotencyKey, IdempotencyRegistry, SequenceGuard};

#[derive(Default)]
struct Stats {
    fetches: AtomicUsize,
    aborted: AtomicUsize,
}

struct ChatStream {
    guard: SequenceGuard,
    aborts: AbortManager,
    registry: IdempotencyRegistry<String>,
    committed: parking_lot::Mutex<Vec<String>>,
    stats: Stats,
}

impl ChatStream {
    fn new() -> Self {
        Self {
            guard: SequenceGuard::new("chat-stream"),
            aborts: AbortManager::new(),
            registry: IdempotencyRegistry::new(),
            committed: Default::default(),
            stats: Stats::default(),
        }
    }

    /// The source app's `runStream`, with a simulated provider that takes `latency`.
    async fn run(&self, conversation: &str, message: &str, latency: Duration) {
        let token = self.guard.next();
        let outcome = self
            .aborts
            .with_abort(|signal| async move {
                let key = IdempotencyKey::new("chat-stream", [conversation, message]).unwrap();
                self.registry
                    .run(key, || async move {
                        self.stats.fetches.fetch_add(1, Ordering::SeqCst);
                        let fetched = signal.run_until_aborted(tokio::time::sleep(latency)).await;
                        match fetched {
                            Ok(()) => format!("reply to {message}"),
                            Err(_) => String::new(),
                        }
                    })
                    .await
            })
            .await;
        match outcome {
            Ok(Ok(result)) if !result.is_empty() => {
                self.guard
                    .commit_if_current(&token, || self.committed.lock().push(result));
            }
            Ok(_) => {}
            Err(aborted) => {
                assert_eq!(aborted.reason(), &AbortReason::Superseded);
                self.stats.aborted.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn rapid_reruns_commit_only_the_last_result() {
    let chat = Arc::new(ChatStream::new());
    let mut runs = Vec::new();
    // Five rapid sends; earlier ones are slower, so they would finish last.
    for i in 0..5u64 {
        let chat = chat.clone();
        runs.push(tokio::spawn(async move {
            chat.run(
                "conv-1",
                &format!("m{i}"),
                Duration::from_millis(100 - i * 10),
            )
            .await
        }));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for run in runs {
        run.await.unwrap();
    }
    assert_eq!(*chat.committed.lock(), vec!["reply to m4".to_owned()]);
    assert_eq!(
        chat.stats.aborted.load(Ordering::SeqCst),
        4,
        "superseded work is aborted"
    );
}

#[tokio::test(start_paused = true)]
async fn duplicates_run_once() {
    let chat = Arc::new(ChatStream::new());
    // The same write requested twice at once, by two callers sharing the registry but
    // with their own abort scopes.
    let registry = Arc::new(IdempotencyRegistry::<u32>::new());
    let writes = Arc::new(AtomicUsize::new(0));
    let save = |registry: Arc<IdempotencyRegistry<u32>>, writes: Arc<AtomicUsize>| async move {
        let key = IdempotencyKey::new("db-save-message", ["conv-1", "msg-9"]).unwrap();
        registry
            .run(key, || async move {
                writes.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                1
            })
            .await
    };
    let (a, b) = tokio::join!(
        save(registry.clone(), writes.clone()),
        save(registry.clone(), writes.clone())
    );
    assert_eq!((a, b), (Ok(1), Ok(1)));
    assert_eq!(writes.load(Ordering::SeqCst), 1);
    drop(chat);
}
