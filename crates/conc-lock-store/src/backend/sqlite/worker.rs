//! [`SqliteWorker`]: one thread that owns a SQLite connection; async callers send it jobs
//! over a bounded channel, so blocking SQLite work never runs on the async executor. The
//! lock store and conc-session's session store both run on it.

use std::fmt;
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// The worker could not run a job.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqliteWorkerError {
    /// The connection's thread has stopped (its connection failed to open, or it panicked).
    #[error("the SQLite connection thread has stopped")]
    Stopped,
    /// The job (queueing included) took longer than the worker's operation timeout.
    #[error("the SQLite operation took longer than {0:?}")]
    TimedOut(Duration),
    /// The thread could not be started.
    #[error("could not start the SQLite connection thread: {0}")]
    Spawn(#[source] std::io::Error),
}

/// One thread that owns a SQLite connection; [`call`](Self::call) runs a closure on it
/// within the operation timeout. Cheap to clone; clones share the thread, which ends when
/// the last clone is dropped.
#[derive(Clone)]
pub struct SqliteWorker {
    jobs: mpsc::Sender<Job>,
    op_timeout: Duration,
}

impl fmt::Debug for SqliteWorker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteWorker")
            .field("op_timeout", &self.op_timeout)
            .finish_non_exhaustive()
    }
}

impl SqliteWorker {
    /// Starts a thread named `name` that opens its connection with `open`, then serves up
    /// to `queue` waiting jobs. The outer error is the worker's; the inner one, `open`'s.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future leaves the thread to open and then end (nobody can send it a
    /// job).
    pub async fn start<E: Send + 'static>(
        name: &str,
        queue: usize,
        op_timeout: Duration,
        open: impl FnOnce() -> Result<Connection, E> + Send + 'static,
    ) -> Result<Result<Self, E>, SqliteWorkerError> {
        let (jobs, mut inbox) = mpsc::channel::<Job>(queue.max(1));
        let (ready_tx, ready_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let mut connection = match open() {
                    Ok(connection) => {
                        let _ = ready_tx.send(Ok(()));
                        connection
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Some(job) = next_job(&mut inbox) {
                    job(&mut connection);
                }
            })
            .map_err(SqliteWorkerError::Spawn)?;
        match tokio::time::timeout(op_timeout, ready_rx).await {
            Err(_) => Err(SqliteWorkerError::TimedOut(op_timeout)),
            Ok(Err(_)) => Err(SqliteWorkerError::Stopped),
            Ok(Ok(Err(e))) => Ok(Err(e)),
            Ok(Ok(Ok(()))) => Ok(Ok(Self { jobs, op_timeout })),
        }
    }

    /// Runs `f` on the connection's thread, within the operation timeout.
    ///
    /// # Cancel safety
    ///
    /// A dropped call may or may not have run `f` (a queued job still runs).
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> R + Send + 'static,
    ) -> Result<R, SqliteWorkerError> {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |connection| {
            let _ = reply.send(f(connection));
        });
        let exchange = async {
            self.jobs
                .send(job)
                .await
                .map_err(|_| SqliteWorkerError::Stopped)?;
            // Most operations finish in tens of microseconds: poll for the answer while
            // yielding to other tasks (never blocking the executor) before parking, which
            // saves the costly wake-up of a parked runtime thread.
            let mut answer = answer;
            let spin_until = std::time::Instant::now() + Duration::from_micros(60);
            while std::time::Instant::now() < spin_until {
                match answer.try_recv() {
                    Ok(result) => return Ok(result),
                    Err(oneshot::error::TryRecvError::Closed) => {
                        return Err(SqliteWorkerError::Stopped);
                    }
                    Err(oneshot::error::TryRecvError::Empty) => tokio::task::yield_now().await,
                }
            }
            answer.await.map_err(|_| SqliteWorkerError::Stopped)
        };
        tokio::time::timeout(self.op_timeout, exchange)
            .await
            .map_err(|_| SqliteWorkerError::TimedOut(self.op_timeout))?
    }
}

/// The next job: polls briefly (yielding the CPU) before parking, because one operation is
/// usually followed at once by more work, and waking a parked thread costs tens of
/// microseconds.
fn next_job(inbox: &mut mpsc::Receiver<Job>) -> Option<Job> {
    let spin_until = std::time::Instant::now() + Duration::from_micros(50);
    loop {
        match inbox.try_recv() {
            Ok(job) => return Some(job),
            Err(mpsc::error::TryRecvError::Disconnected) => return None,
            Err(mpsc::error::TryRecvError::Empty) if std::time::Instant::now() < spin_until => {
                std::thread::yield_now();
            }
            Err(mpsc::error::TryRecvError::Empty) => return inbox.blocking_recv(),
        }
    }
}
