//! The supervisor: spawned tasks are tracked, cancellable, and report every failure through
//! tracing.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use conc_async::{SpawnError, Supervisor};
use conc_core::Aborted;

/// Captures log lines for one test.
#[derive(Clone, Default)]
struct Logs(Arc<parking_lot::Mutex<Vec<u8>>>);

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock()).into_owned()
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One global subscriber for the whole test binary (a per-thread default can miss events
/// whose callsite interest was cached by another test); each test reads only the lines of
/// its own supervisor.
fn logs() -> &'static Logs {
    static LOGS: std::sync::OnceLock<Logs> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("one subscriber per test binary");
        logs
    })
}

fn lines_of(supervisor: &str) -> String {
    let needle = format!("supervisor={supervisor}");
    logs()
        .text()
        .lines()
        .filter(|l| l.contains(&needle))
        .collect::<Vec<_>>()
        .join("\n")
}

#[derive(Debug, thiserror::Error)]
#[error("provider returned 503")]
struct ProviderDown;

/// Failures at error level with the task's name, start and finish at
/// debug, panics caught and reported.
#[tokio::test(start_paused = true)]
async fn every_outcome_is_logged_and_counted() {
    logs();
    let supervisor = Supervisor::new("logged");
    supervisor
        .spawn("ok", |_| async { Ok::<_, ProviderDown>(()) })
        .await
        .unwrap();
    supervisor
        .spawn("fails", |_| async { Err::<(), _>(ProviderDown) })
        .await
        .unwrap();
    supervisor
        .spawn("panics", |_| async {
            if true {
                panic!("bug in handler")
            } else {
                Ok::<(), ProviderDown>(())
            }
        })
        .await
        .unwrap();
    let report = supervisor.shutdown(Duration::from_secs(1)).await;
    assert_eq!(
        (
            report.finished,
            report.failed,
            report.panicked,
            report.aborted
        ),
        (1, 1, 1, 0)
    );
    let text = lines_of("logged");
    assert!(
        text.contains("ERROR")
            && text.contains("task failed")
            && text.contains("provider returned 503")
    );
    assert!(
        text.contains("task=fails"),
        "the failure names its task:\n{text}"
    );
    assert!(text.contains("task panicked") && text.contains("bug in handler"));
    assert!(
        text.contains("DEBUG") && text.contains("task started") && text.contains("task finished")
    );
}

/// Abort is an outcome: a task that stops because of its signal is counted as aborted and
/// not logged as an error.
#[tokio::test(start_paused = true)]
async fn shutdown_aborts_cooperative_tasks_and_drops_stubborn_ones() {
    logs();
    let supervisor = Supervisor::new("shutdown");
    supervisor
        .spawn("cooperative", |signal| async move {
            signal
                .run_until_aborted(std::future::pending::<()>())
                .await?;
            Ok::<_, Aborted>(())
        })
        .await
        .unwrap();
    supervisor
        .spawn("stubborn", |_| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, Aborted>(())
        })
        .await
        .unwrap();
    assert_eq!(supervisor.running(), 2);
    let report = supervisor.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.aborted, 2);
    assert_eq!(report.failed, 0);
    let text = lines_of("shutdown");
    assert!(
        text.contains("task aborted") && !text.contains("ERROR"),
        "{text}"
    );
    assert_eq!(supervisor.running(), 0);
    let refused = supervisor.try_spawn("late", |_| async { Ok::<_, Aborted>(()) });
    assert!(matches!(refused, Err(SpawnError::ShuttingDown { .. })));
}

/// `with_max_tasks`: `try_spawn` fails when full, `spawn` waits for a slot.
#[tokio::test(start_paused = true)]
async fn max_tasks_gives_backpressure() {
    let supervisor = Supervisor::new("bounded").with_max_tasks(1);
    supervisor
        .spawn("first", |_| async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok::<_, Aborted>(())
        })
        .await
        .unwrap();
    let full = supervisor.try_spawn("second", |_| async { Ok::<_, Aborted>(()) });
    assert_eq!(
        full,
        Err(SpawnError::Full {
            supervisor: "bounded".into(),
            max: 1
        })
    );
    let started = tokio::time::Instant::now();
    supervisor
        .spawn("second", |_| async { Ok::<_, Aborted>(()) })
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "spawn waited for the slot"
    );
    let report = supervisor.shutdown(Duration::from_secs(1)).await;
    assert_eq!(report.finished, 2);
}

/// A bounded supervisor under a parent still obeys the parent: its shutdown aborts the
/// running tasks and refuses new spawns.
#[tokio::test(start_paused = true)]
async fn a_bounded_child_supervisor_obeys_its_parent() {
    let parent = conc_core::AbortController::new();
    let supervisor = Supervisor::with_parent("child", &parent.signal()).with_max_tasks(2);
    let (started, mut running) = tokio::sync::mpsc::channel::<()>(1);
    supervisor
        .spawn("waits", move |signal| async move {
            started.send(()).await.ok();
            signal.aborted().await;
            Ok::<_, conc_core::Aborted>(())
        })
        .await
        .unwrap();
    running.recv().await.unwrap();
    parent.abort(conc_core::AbortReason::Shutdown);
    assert!(
        supervisor.signal().is_aborted(),
        "the parent's abort reached it"
    );
    let refused = supervisor.try_spawn("late", |_| async { Ok::<_, conc_core::Aborted>(()) });
    assert!(refused.is_err(), "no spawn after the parent's shutdown");
}

/// Tasks spawned from several threads at once while they end on the runtime's workers:
/// `shutdown` returns only when every one has ended, and every one is counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_every_task_spawned_from_many_threads() {
    const THREADS: u64 = 4;
    const TASKS: u64 = 250;
    let supervisor = Supervisor::new("many-threads");
    let ended = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let spawners: Vec<_> = (0..THREADS)
        .map(|_| {
            let (supervisor, ended) = (supervisor.clone(), ended.clone());
            tokio::spawn(async move {
                for n in 0..TASKS {
                    let ended = ended.clone();
                    supervisor
                        .spawn("t", move |_| async move {
                            if n % 3 == 0 {
                                tokio::task::yield_now().await;
                            }
                            ended.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            Ok::<_, Aborted>(())
                        })
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for spawner in spawners {
        spawner.await.unwrap();
    }
    let report = supervisor.shutdown(Duration::from_secs(30)).await;
    assert_eq!(
        ended.load(std::sync::atomic::Ordering::SeqCst),
        THREADS * TASKS
    );
    assert_eq!(report.finished, THREADS * TASKS);
    assert_eq!(supervisor.running(), 0);
}

/// A task whose runtime is dropped is no longer running: its future is dropped, and a
/// shutdown elsewhere does not wait for it.
#[test]
fn a_task_dropped_with_its_runtime_is_no_longer_running() {
    let supervisor = Supervisor::new("dropped-runtime");
    let doomed = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    doomed.block_on(async {
        supervisor
            .spawn("forever", |_| std::future::pending::<Result<(), Aborted>>())
            .await
            .unwrap();
        tokio::task::yield_now().await;
    });
    assert_eq!(supervisor.running(), 1);
    drop(doomed);
    assert_eq!(supervisor.running(), 0);
    let report = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
        .block_on(supervisor.shutdown(Duration::from_secs(3600)));
    assert_eq!(report, conc_async::ShutdownReport::default());
}
