//! [`Pipeline`]: stages joined by bounded channels.
//!
//! Each stage is a spawned task that takes items from its input channel, runs up to its
//! own `concurrency` of them at once (keeping their order), and sends the results on. A
//! full channel stops the stage before it from taking more: backpressure runs end to end.
//! The first error (or panic) aborts every stage and names the stage; an abort of the
//! pipeline's signal stops it cleanly.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use conc_core::{AbortController, AbortReason, AbortSignal};
use futures_util::StreamExt as _;
use futures_util::stream::FuturesOrdered;
use tokio::task::JoinSet;
use tracing::debug;

use crate::channel::{ChannelError, Receiver, Sender, channel};
use crate::util::{catch_unwind, panic_message};

/// Why a pipeline did not deliver all its items.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError<E> {
    /// A stage returned an error; every stage was stopped.
    #[error("pipeline stage `{stage}` failed")]
    Stage {
        /// The stage's name.
        stage: String,
        /// Its error.
        #[source]
        error: E,
    },
    /// A stage panicked; every stage was stopped.
    #[error("pipeline stage `{stage}` panicked: {message}")]
    Panicked {
        /// The stage's name.
        stage: String,
        /// The panic message.
        message: String,
    },
    /// The pipeline's signal was aborted.
    #[error("pipeline aborted: {0}")]
    Aborted(AbortReason),
}

enum Failure<E> {
    Error(E),
    Panic(String),
}

struct Shared<E> {
    controller: AbortController,
    failure: parking_lot::Mutex<Option<(String, Failure<E>)>>,
}

impl<E> Shared<E> {
    fn fail(&self, stage: &str, failure: Failure<E>) {
        let mut slot = self.failure.lock();
        if slot.is_none() {
            *slot = Some((stage.to_owned(), failure));
        }
        drop(slot);
        self.controller.abort(AbortReason::user(format!(
            "pipeline stage `{stage}` failed"
        )));
    }
}

/// A running pipeline whose last stage yields `T`; stages fail with `E`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use conc_async::Pipeline;
///
/// let lines = Pipeline::<u32, std::io::Error>::from_iter(1..=4, 2)
///     .unwrap()
///     .stage("square", 2, |n| async move { Ok(n * n) })
///     .stage("format", 1, |n| async move { Ok(format!("#{n}")) })
///     .collect()
///     .await
///     .unwrap();
/// assert_eq!(lines, ["#1", "#4", "#9", "#16"]);
/// # }
/// ```
pub struct Pipeline<T, E> {
    output: Receiver<T>,
    shared: Arc<Shared<E>>,
    tasks: JoinSet<()>,
    capacity: usize,
}

impl<T, E> Pipeline<T, E>
where
    T: Send + 'static,
    E: Send + 'static,
{
    /// A pipeline fed from `items`, with channels of `capacity` between stages. Must be
    /// called inside a tokio runtime (the stages are spawned tasks).
    pub fn from_iter<I>(items: I, capacity: usize) -> Result<Self, ChannelError>
    where
        I: IntoIterator<Item = T>,
        I::IntoIter: Send + 'static,
    {
        Self::build(items, capacity, AbortController::new())
    }

    /// Like [`from_iter`](Self::from_iter), stopped when `parent` is aborted.
    pub fn from_iter_with_signal<I>(
        items: I,
        capacity: usize,
        parent: &AbortSignal,
    ) -> Result<Self, ChannelError>
    where
        I: IntoIterator<Item = T>,
        I::IntoIter: Send + 'static,
    {
        Self::build(items, capacity, parent.child())
    }

    fn build<I>(
        items: I,
        capacity: usize,
        controller: AbortController,
    ) -> Result<Self, ChannelError>
    where
        I: IntoIterator<Item = T>,
        I::IntoIter: Send + 'static,
    {
        let (tx, output) = channel(capacity)?;
        let shared = Arc::new(Shared {
            controller,
            failure: parking_lot::Mutex::new(None),
        });
        let mut tasks = JoinSet::new();
        let signal = shared.controller.signal();
        let items = items.into_iter();
        tasks.spawn(async move {
            for item in items {
                match signal.run_until_aborted(tx.send(item)).await {
                    Ok(Ok(())) => {}
                    _ => break,
                }
            }
        });
        Ok(Self {
            output,
            shared,
            tasks,
            capacity,
        })
    }

    /// The pipeline's signal; abort its controller through a parent signal, or watch it.
    pub fn signal(&self) -> AbortSignal {
        self.shared.controller.signal()
    }

    /// Adds a stage named `name` that maps each item through `f`, running up to
    /// `concurrency` items at once (0 is taken as 1) and keeping their order.
    pub fn stage<U, F, Fut>(
        mut self,
        name: impl Into<String>,
        concurrency: usize,
        f: F,
    ) -> Pipeline<U, E>
    where
        U: Send + 'static,
        F: FnMut(T) -> Fut + Send + 'static,
        Fut: Future<Output = Result<U, E>> + Send + 'static,
    {
        let name = name.into();
        let concurrency = concurrency.max(1);
        let (tx, output) = channel(self.capacity).expect("capacity was checked at construction");
        let shared = self.shared.clone();
        let input = self.output;
        self.tasks.spawn(async move {
            let body = run_stage(
                input,
                tx,
                concurrency,
                f,
                shared.controller.signal(),
                &*shared,
                &name,
            );
            if let Err(panic) = catch_unwind(body).await {
                shared.fail(&name, Failure::Panic(panic_message(&*panic).to_owned()));
            }
        });
        Pipeline {
            output,
            shared: self.shared,
            tasks: self.tasks,
            capacity: self.capacity,
        }
    }

    /// Runs the pipeline to the end and returns every output, in order.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops the pipeline, which aborts every stage task.
    pub async fn collect(mut self) -> Result<Vec<T>, PipelineError<E>> {
        let signal = self.shared.controller.signal();
        let mut out = Vec::new();
        while let Ok(Some(item)) = signal.run_until_aborted(self.output.recv()).await {
            out.push(item);
        }
        while self.tasks.join_next().await.is_some() {}
        if let Some((stage, failure)) = self.shared.failure.lock().take() {
            return Err(match failure {
                Failure::Error(error) => PipelineError::Stage { stage, error },
                Failure::Panic(message) => PipelineError::Panicked { stage, message },
            });
        }
        match signal.reason() {
            Some(reason) => Err(PipelineError::Aborted(reason)),
            None => Ok(out),
        }
    }
}

async fn run_stage<T, U, E, F, Fut>(
    mut input: Receiver<T>,
    output: Sender<U>,
    concurrency: usize,
    mut f: F,
    signal: AbortSignal,
    shared: &Shared<E>,
    name: &str,
) where
    F: FnMut(T) -> Fut,
    Fut: Future<Output = Result<U, E>>,
{
    let mut running = FuturesOrdered::new();
    let mut input_done = false;
    loop {
        if input_done && running.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            _ = signal.aborted() => {
                debug!(stage = name, "pipeline stage stopped by abort");
                break;
            }
            done = running.next(), if !running.is_empty() => match done {
                Some(Ok(value)) => {
                    let sent = signal.run_until_aborted(output.send(value)).await;
                    if !matches!(sent, Ok(Ok(()))) {
                        break;
                    }
                }
                Some(Err(error)) => {
                    shared.fail(name, Failure::Error(error));
                    break;
                }
                None => {}
            },
            item = input.recv(), if !input_done && running.len() < concurrency => match item {
                Some(item) => running.push_back(f(item)),
                None => input_done = true,
            },
        }
    }
}

impl<T, E> fmt::Debug for Pipeline<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipeline")
            .field("stages_running", &self.tasks.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}
