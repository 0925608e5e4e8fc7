//! Bounded channels only.
//!
//! A thin layer over tokio's bounded `mpsc` that adds what services need: a zero
//! capacity is an error, not a panic; any sender can [`close`](Sender::close) the channel
//! (the receiver drains what was sent, then gets `None`); `send_timeout` names its limit;
//! the receiver is a `Stream`. For blocking threads, [`blocking_channel`] is a bounded
//! crossbeam channel with the same rules. This module has no unbounded constructor.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_core::Stream;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// A channel could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// The capacity was zero.
    #[error(
        "a channel needs a capacity of at least 1 (a bounded buffer is what gives backpressure)"
    )]
    ZeroCapacity,
}

/// `send` found the channel closed; the value comes back.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[error("the channel is closed")]
pub struct SendError<T>(pub T);

/// `try_send` could not send; the value comes back.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrySendError<T> {
    /// The buffer is full.
    #[error("the channel is full")]
    Full(T),
    /// The channel is closed.
    #[error("the channel is closed")]
    Closed(T),
}

/// `send_timeout` could not send; the value comes back.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendTimeoutError<T> {
    /// The buffer stayed full for the whole limit.
    #[error("the channel stayed full for {1:?}")]
    Timeout(T, Duration),
    /// The channel is closed.
    #[error("the channel is closed")]
    Closed(T),
}

impl<T> fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SendError(..)")
    }
}

impl<T> fmt::Debug for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("Full(..)"),
            TrySendError::Closed(_) => f.write_str("Closed(..)"),
        }
    }
}

impl<T> fmt::Debug for SendTimeoutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendTimeoutError::Timeout(_, limit) => write!(f, "Timeout(.., {limit:?})"),
            SendTimeoutError::Closed(_) => f.write_str("Closed(..)"),
        }
    }
}

struct Shared {
    closed: AtomicBool,
    close: CancellationToken,
}

/// Makes a bounded channel of `capacity` messages.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (tx, mut rx) = conc_async::channel::<u32>(2).unwrap();
/// tx.send(1).await.unwrap();
/// tx.close(); // any sender may close; what was sent is still received
/// assert_eq!(rx.recv().await, Some(1));
/// assert_eq!(rx.recv().await, None);
/// assert!(conc_async::channel::<u32>(0).is_err());
/// # }
/// ```
pub fn channel<T>(capacity: usize) -> Result<(Sender<T>, Receiver<T>), ChannelError> {
    if capacity == 0 {
        return Err(ChannelError::ZeroCapacity);
    }
    let (tx, rx) = mpsc::channel(capacity);
    let shared = Arc::new(Shared {
        closed: AtomicBool::new(false),
        close: CancellationToken::new(),
    });
    let closing = Box::pin(shared.close.clone().cancelled_owned());
    Ok((
        Sender {
            tx,
            shared: shared.clone(),
        },
        Receiver {
            rx,
            shared,
            closing,
            closing_waker: None,
            rx_closed: false,
        },
    ))
}

/// The sending half; clone it for more producers.
pub struct Sender<T> {
    tx: mpsc::Sender<T>,
    shared: Arc<Shared>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<T> Sender<T> {
    /// Sends `value`, waiting while the buffer is full (backpressure).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe as tokio's `Sender::send` is: dropping the future before it completes
    /// sends nothing (and loses the value, which the future owned).
    pub async fn send(&self, value: T) -> Result<(), SendError<T>> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(SendError(value));
        }
        self.tx.send(value).await.map_err(|e| SendError(e.0))
    }

    /// Sends `value` if there is room now.
    pub fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(TrySendError::Closed(value));
        }
        self.tx.try_send(value).map_err(|e| match e {
            mpsc::error::TrySendError::Full(v) => TrySendError::Full(v),
            mpsc::error::TrySendError::Closed(v) => TrySendError::Closed(v),
        })
    }

    /// Sends `value`, waiting at most `limit` for room.
    ///
    /// # Cancel safety
    ///
    /// As [`send`](Self::send).
    pub async fn send_timeout(&self, value: T, limit: Duration) -> Result<(), SendTimeoutError<T>> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(SendTimeoutError::Closed(value));
        }
        self.tx
            .send_timeout(value, limit)
            .await
            .map_err(|e| match e {
                mpsc::error::SendTimeoutError::Timeout(v) => SendTimeoutError::Timeout(v, limit),
                mpsc::error::SendTimeoutError::Closed(v) => SendTimeoutError::Closed(v),
            })
    }

    /// Closes the channel for every sender: later sends fail, and the receiver gets what
    /// was already sent, then `None`.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.close.cancel();
    }

    /// Whether the channel is closed (by a sender, the receiver, or the receiver's drop).
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire) || self.tx.is_closed()
    }

    /// The buffer's capacity.
    pub fn max_capacity(&self) -> usize {
        self.tx.max_capacity()
    }

    /// Free slots in the buffer now.
    pub fn capacity(&self) -> usize {
        self.tx.capacity()
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("closed", &self.is_closed())
            .field("capacity", &self.capacity())
            .finish()
    }
}

/// The receiving half; also a [`Stream`].
pub struct Receiver<T> {
    rx: mpsc::Receiver<T>,
    shared: Arc<Shared>,
    closing: Pin<Box<WaitForCancellationFutureOwned>>,
    /// The waker `closing` was last polled with (and so will wake when a sender closes),
    /// by its data and vtable addresses (see [`waker_identity`]).
    closing_waker: Option<(usize, usize)>,
    rx_closed: bool,
}

impl<T> Receiver<T> {
    /// The next message; `None` once the channel is closed (or every sender dropped) and
    /// drained.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a message is never lost when the future is dropped.
    pub async fn recv(&mut self) -> Option<T> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next message (the `Stream` and `recv` are built on it).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        if !self.rx_closed {
            if let Poll::Ready(message) = self.rx.poll_recv(cx) {
                return Poll::Ready(message);
            }
            if !self.close_requested(cx) {
                return Poll::Pending;
            }
            // A sender closed the channel: stop new sends, then drain.
            self.close();
        }
        self.rx.poll_recv(cx)
    }

    /// Whether a sender closed the channel; if not, `cx`'s task will be woken when one does.
    ///
    /// A sender's close sets `closed` before it cancels the token, whose wake-up goes to
    /// the waker `closing` was last polled with. So while `cx`'s waker is that same waker,
    /// reading the flag is enough: polling `closing` again would take two locks (the
    /// token's and its `Notify`'s) on every wait for a message. Kept out of line, so that
    /// `poll_recv`'s path for a buffered message stays small enough to inline.
    #[inline(never)]
    fn close_requested(&mut self, cx: &mut Context<'_>) -> bool {
        if self.shared.closed.load(Ordering::Acquire) {
            return true;
        }
        let waker = waker_identity(cx.waker());
        if self.closing_waker == Some(waker) {
            return false;
        }
        if self.closing.as_mut().poll(cx).is_ready() {
            return true;
        }
        self.closing_waker = Some(waker);
        false
    }

    /// A message if one is buffered now.
    pub fn try_recv(&mut self) -> Option<T> {
        self.rx.try_recv().ok()
    }

    /// Closes the channel from the receiving side: later sends fail; buffered messages can
    /// still be received.
    pub fn close(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.rx.close();
        self.rx_closed = true;
    }

    /// Messages buffered now.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// Whether no message is buffered now.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}

/// A waker's data and vtable addresses, what [`Waker::will_wake`] compares, kept as numbers
/// so that the receiver stays `Send`. Compared with the identity of an earlier `cx.waker()`,
/// not of a clone: a clone may carry a copy of the vtable at another address. The address
/// cannot be reused by another task's waker while `closing` holds a clone of this one.
fn waker_identity(waker: &Waker) -> (usize, usize) {
    (
        waker.data() as usize,
        std::ptr::from_ref(waker.vtable()) as usize,
    )
}

impl<T> Stream for Receiver<T> {
    type Item = T;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.get_mut().poll_recv(cx)
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("buffered", &self.len())
            .field("closed", &self.rx_closed)
            .finish()
    }
}

/// A bounded channel for blocking threads (crossbeam-channel): `send` blocks while full.
///
/// Use it between worker threads; to feed async code from a thread, use [`channel`] and
/// tokio's `blocking_send` pattern instead, through [`Sender::try_send`] or a
/// `Handle::block_on`.
///
/// ```
/// let (tx, rx) = conc_async::blocking_channel::<u8>(1).unwrap();
/// std::thread::spawn(move || tx.send(7).unwrap());
/// assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(5)), Ok(7));
/// ```
pub fn blocking_channel<T>(
    capacity: usize,
) -> Result<(crossbeam_channel::Sender<T>, crossbeam_channel::Receiver<T>), ChannelError> {
    if capacity == 0 {
        return Err(ChannelError::ZeroCapacity);
    }
    Ok(crossbeam_channel::bounded(capacity))
}
