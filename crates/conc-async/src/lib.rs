//! tokio adapters on [`conc_core`] that make the safe way the easy path: timeouts on every
//! external call, bounded channels, supervised tasks that never fail silently.
//!
//! | what the crate guarantees | here |
//! | --- | --- |
//! | every external call has a timeout | [`timeout`], [`FutureExt::with_timeout`], [`lock_timeout`] |
//! | no silent spawn failures; track tasks; cancel them | [`Supervisor`] |
//! | bounded channels only | [`channel`], [`blocking_channel`]; no unbounded constructor |
//! | fan-out / fan-in with bounded concurrency | [`map_concurrent`], [`try_map_concurrent`] |
//! | pipelines with backpressure | [`Pipeline`] |
//! | cancellable, composable tasks | [`Task`], [`TaskHandle`] |
//! | latest wins; abort the superseded | [`Latest`] |
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use conc_async::{FutureExt as _, Supervisor, channel};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let (tx, mut rx) = channel::<String>(16).unwrap();
//! let supervisor = Supervisor::new("indexer");
//! supervisor
//!     .spawn("producer", move |_signal| async move {
//!         for word in ["a", "b"] {
//!             tx.send(word.to_owned()).with_timeout("queue word", Duration::from_secs(1)).await??;
//!         }
//!         Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
//!     })
//!     .await
//!     .unwrap();
//! assert_eq!(rx.recv().await.as_deref(), Some("a"));
//! assert_eq!(rx.recv().await.as_deref(), Some("b"));
//! let report = supervisor.shutdown(Duration::from_secs(1)).await;
//! assert_eq!(report.finished, 1);
//! # }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

mod cancel;
mod channel;
mod fanout;
mod latest;
mod pipeline;
mod supervisor;
mod task;
mod timeout;
mod util;

pub use cancel::{AbortSignalExt, CancellationTokenExt, NoRuntime};
pub use channel::{
    ChannelError, Receiver, SendError, SendTimeoutError, Sender, TrySendError, blocking_channel,
    channel,
};
pub use fanout::{LimitError, TryMapError, map_concurrent, try_map_concurrent};
pub use latest::{Latest, LatestOutcome};
pub use pipeline::{Pipeline, PipelineError};
pub use supervisor::{ShutdownReport, SpawnError, Supervisor};
pub use task::{EmptyRace, Task, TaskError, TaskHandle};
pub use timeout::{FutureExt, TimeoutError, lock_timeout, timeout, timeout_abort};

/// The crate's README, whose examples are compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
