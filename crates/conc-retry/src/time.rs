//! The clock and the timers: tokio's on native targets (so a test can pause time), the
//! browser's on WebAssembly, where std's `Instant::now` and `SystemTime::now` panic and no
//! tokio runtime drives timers: `web-time` reads `performance.now()` and `Date.now()`,
//! `gloo-timers` sleeps on `setTimeout` (as backon does there).

use std::time::Duration;

#[cfg(not(target_arch = "wasm32"))]
pub(crate) use tokio::time::{Instant, sleep, timeout};
#[cfg(target_arch = "wasm32")]
pub(crate) use web_time::Instant;

/// Time since the Unix epoch by the wall clock.
pub(crate) fn unix_now() -> Duration {
    #[cfg(not(target_arch = "wasm32"))]
    use std::time::{SystemTime, UNIX_EPOCH};
    #[cfg(target_arch = "wasm32")]
    use web_time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

/// Waits `duration` on the host's timer.
///
/// # Cancel safety
///
/// Cancel safe: a dropped sleep clears its timer.
#[cfg(target_arch = "wasm32")]
pub(crate) async fn sleep(duration: Duration) {
    gloo_timers::future::sleep(duration).await;
}

/// `future`'s output, or [`Elapsed`] once `limit` has passed first.
///
/// # Cancel safety
///
/// As cancel safe as `future`: dropping the call drops it.
#[cfg(target_arch = "wasm32")]
pub(crate) async fn timeout<F: std::future::Future>(
    limit: Duration,
    future: F,
) -> Result<F::Output, Elapsed> {
    use std::future::Future as _;
    use std::task::Poll;
    let mut future = std::pin::pin!(future);
    let mut timer = std::pin::pin!(gloo_timers::future::sleep(limit));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Ok(output));
        }
        timer.as_mut().poll(cx).map(|()| Err(Elapsed))
    })
    .await
}

/// A [`timeout`] ran out.
#[cfg(target_arch = "wasm32")]
#[derive(Debug)]
pub(crate) struct Elapsed;
