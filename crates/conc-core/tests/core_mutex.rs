//! The FIFO async mutex, driven by tokio: order, cancellation, `is_locked`.

use std::sync::Arc;
use std::time::Duration;

use conc_core::Mutex;

/// The source app's `isLocked()` was always true; here it is false before, true inside
/// `run_exclusive`, and false after.
#[tokio::test]
async fn is_locked_false_before_true_inside_false_after() {
    let mutex = Mutex::new(());
    assert!(!mutex.is_locked());
    let inside = mutex
        .run_exclusive(async |_: &mut ()| mutex.is_locked())
        .await;
    assert!(inside);
    assert!(!mutex.is_locked());
}

#[tokio::test]
async fn run_exclusive_releases_on_error() {
    let mutex = Mutex::new(0);
    let result: Result<(), &str> = mutex
        .run_exclusive(async |n: &mut i32| {
            *n += 1;
            Err("provider failed")
        })
        .await;
    assert_eq!(result, Err("provider failed"));
    assert!(!mutex.is_locked());
    assert_eq!(*mutex.try_lock().unwrap(), 1);
}

#[tokio::test]
async fn run_exclusive_releases_on_panic() {
    let mutex = Arc::new(Mutex::new(0));
    let task = {
        let mutex = mutex.clone();
        tokio::spawn(async move {
            mutex
                .run_exclusive(async |_: &mut i32| panic!("handler bug"))
                .await
        })
    };
    assert!(task.await.unwrap_err().is_panic());
    assert!(!mutex.is_locked());
    assert!(mutex.try_lock().is_ok());
}

/// Waiters are served in the order they queued, and `waiters()` counts them.
#[tokio::test(start_paused = true)]
async fn waiters_are_served_in_fifo_order() {
    let mutex = Arc::new(Mutex::new(Vec::new()));
    let holder = mutex.lock().await;
    let mut tasks = Vec::new();
    for i in 0..5 {
        let mutex = mutex.clone();
        tasks.push(tokio::spawn(async move {
            mutex.lock().await.push(i);
        }));
        // Let task i queue before task i+1 starts.
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(mutex.waiters(), 5);
    assert!(
        mutex.try_lock().is_err(),
        "try_lock must not jump the queue"
    );
    drop(holder);
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(*mutex.lock().await, vec![0, 1, 2, 3, 4]);
    assert_eq!(mutex.waiters(), 0);
}

/// A `lock()` cancelled by a timeout leaves the queue and the next waiter still gets the
/// lock.
#[tokio::test(start_paused = true)]
async fn a_timed_out_waiter_gives_up_its_place() {
    let mutex = Arc::new(Mutex::new(0));
    let holder = mutex.lock().await;
    let impatient = tokio::time::timeout(Duration::from_millis(10), mutex.lock()).await;
    assert!(impatient.is_err());
    assert_eq!(mutex.waiters(), 0);
    let patient = {
        let mutex = mutex.clone();
        tokio::spawn(async move { *mutex.lock().await += 1 })
    };
    tokio::task::yield_now().await;
    assert_eq!(mutex.waiters(), 1);
    drop(holder);
    patient.await.unwrap();
    assert_eq!(*mutex.lock().await, 1);
}

/// Many tasks on a multi-thread runtime: no update is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_increments_lose_nothing() {
    let mutex = Arc::new(Mutex::new(0u64));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let mutex = mutex.clone();
            tokio::spawn(async move {
                for _ in 0..500 {
                    let mut guard = mutex.lock().await;
                    let seen = *guard;
                    tokio::task::yield_now().await;
                    *guard = seen + 1;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(*mutex.lock().await, 16 * 500);
    assert!(!mutex.is_locked());
}

#[tokio::test]
async fn owned_guards_move_into_tasks() {
    let mutex = Arc::new(Mutex::new(String::new()));
    let guard = mutex.clone().lock_owned().await;
    let task = tokio::spawn(async move {
        let mut guard = guard;
        guard.push_str("from a task");
    });
    task.await.unwrap();
    assert_eq!(&*mutex.lock().await, "from a task");
    let mut unique = Mutex::new(1);
    *unique.get_mut() += 1;
    assert_eq!(unique.into_inner(), 2);
    assert!(mutex.clone().try_lock_owned().is_ok());
}
