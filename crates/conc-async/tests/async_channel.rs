//! Bounded channels with backpressure and close.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use conc_async::{ChannelError, SendTimeoutError, TrySendError, blocking_channel, channel};
use futures_util::StreamExt as _;

#[test]
fn zero_capacity_is_a_clear_error() {
    assert_eq!(channel::<u8>(0).unwrap_err(), ChannelError::ZeroCapacity);
    assert_eq!(
        blocking_channel::<u8>(0).unwrap_err(),
        ChannelError::ZeroCapacity
    );
    assert!(
        ChannelError::ZeroCapacity
            .to_string()
            .contains("at least 1")
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_channel_pushes_back() {
    let (tx, mut rx) = channel::<u32>(2).unwrap();
    tx.send(1).await.unwrap();
    tx.try_send(2).unwrap();
    assert!(matches!(tx.try_send(3), Err(TrySendError::Full(3))));
    let error = tx
        .send_timeout(3, Duration::from_millis(10))
        .await
        .unwrap_err();
    assert!(
        matches!(error, SendTimeoutError::Timeout(3, limit) if limit == Duration::from_millis(10))
    );
    assert_eq!(rx.recv().await, Some(1));
    tx.send_timeout(3, Duration::from_millis(10)).await.unwrap();
    assert_eq!(rx.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn close_by_a_sender_drains_then_ends() {
    let (tx, mut rx) = channel::<u32>(4).unwrap();
    let other = tx.clone();
    tx.send(1).await.unwrap();
    other.send(2).await.unwrap();
    tx.close();
    assert!(other.is_closed());
    assert!(
        matches!(other.send(3).await, Err(e) if e.0 == 3),
        "the value comes back"
    );
    assert_eq!(rx.recv().await, Some(1));
    assert_eq!(rx.recv().await, Some(2));
    assert_eq!(rx.recv().await, None);
}

#[tokio::test(start_paused = true)]
async fn close_wakes_a_waiting_receiver() {
    let (tx, mut rx) = channel::<u32>(1).unwrap();
    let receiver = tokio::spawn(async move { rx.recv().await });
    tokio::time::sleep(Duration::from_millis(1)).await;
    tx.close();
    assert_eq!(receiver.await.unwrap(), None);
}

#[tokio::test(start_paused = true)]
async fn a_receiver_woken_by_messages_still_hears_the_close() {
    let (tx, mut rx) = channel::<u32>(1).unwrap();
    let receiver = tokio::spawn(async move {
        let mut received = 0;
        while rx.recv().await.is_some() {
            received += 1;
        }
        received
    });
    // Each message finds the receiver waiting (and so polled again by the same task).
    for n in 0..3 {
        tokio::time::sleep(Duration::from_millis(1)).await;
        tx.send(n).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
    tx.close();
    assert_eq!(receiver.await.unwrap(), 3);
}

/// A waker that counts its wake-ups.
struct Counting(AtomicUsize);

impl Wake for Counting {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn the_close_wakes_the_task_that_polled_last() {
    let (tx, mut rx) = channel::<u32>(1).unwrap();
    let first = Arc::new(Counting(AtomicUsize::new(0)));
    let second = Arc::new(Counting(AtomicUsize::new(0)));
    let first_waker = Waker::from(first.clone());
    let second_waker = Waker::from(second.clone());
    for _ in 0..2 {
        assert!(
            rx.poll_recv(&mut Context::from_waker(&first_waker))
                .is_pending()
        );
    }
    // The receiver moves to another task: that task is the one to wake.
    assert!(
        rx.poll_recv(&mut Context::from_waker(&second_waker))
            .is_pending()
    );
    tx.close();
    assert_eq!(
        second.0.load(Ordering::SeqCst),
        1,
        "the last poller is woken"
    );
    assert_eq!(
        rx.poll_recv(&mut Context::from_waker(&second_waker)),
        Poll::Ready(None)
    );
}

#[tokio::test(start_paused = true)]
async fn the_receiver_is_a_stream() {
    let (tx, rx) = channel::<u32>(8).unwrap();
    for n in 0..5 {
        tx.send(n).await.unwrap();
    }
    drop(tx);
    assert_eq!(rx.collect::<Vec<_>>().await, vec![0, 1, 2, 3, 4]);
}

#[test]
fn the_blocking_bridge_is_bounded() {
    let (tx, rx) = blocking_channel::<u32>(1).unwrap();
    tx.send(1).unwrap();
    assert!(tx.try_send(2).is_err(), "full at capacity 1");
    let producer = std::thread::spawn(move || tx.send(2));
    assert_eq!(rx.recv(), Ok(1));
    assert_eq!(rx.recv(), Ok(2));
    producer.join().unwrap().unwrap();
}
