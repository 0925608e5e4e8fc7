//! Pipeline stages joined by bounded channels.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use conc_async::{Pipeline, PipelineError};
use conc_core::{AbortController, AbortReason};

#[tokio::test(start_paused = true)]
async fn stages_run_in_order_with_their_own_concurrency() {
    let out = Pipeline::<u64, String>::from_iter(0..50, 4)
        .unwrap()
        .stage("slow-double", 8, |n| async move {
            tokio::time::sleep(Duration::from_millis(50 - n)).await;
            Ok(n * 2)
        })
        .stage("stringify", 1, |n| async move { Ok(n.to_string()) })
        .collect()
        .await
        .unwrap();
    assert_eq!(
        out,
        (0..50).map(|n| (n * 2).to_string()).collect::<Vec<_>>()
    );
}

/// A slow last stage holds the first one back: with capacity 2 the fast stage can be at
/// most a few items ahead, never the whole input.
#[tokio::test(start_paused = true)]
async fn backpressure_reaches_the_first_stage() {
    let produced = Arc::new(AtomicUsize::new(0));
    let consumed = Arc::new(AtomicUsize::new(0));
    let max_lead = Arc::new(AtomicUsize::new(0));
    let (p, c, lead) = (produced.clone(), consumed.clone(), max_lead.clone());
    let pipeline = Pipeline::<u32, String>::from_iter(0..100, 2)
        .unwrap()
        .stage("fast", 1, move |n| {
            let p = p.clone();
            async move {
                p.fetch_add(1, Ordering::SeqCst);
                Ok(n)
            }
        })
        .stage("slow", 1, move |n| {
            let (produced, c, lead) = (produced.clone(), c.clone(), lead.clone());
            async move {
                let done = c.fetch_add(1, Ordering::SeqCst);
                lead.fetch_max(produced.load(Ordering::SeqCst) - done, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
                Ok(n)
            }
        });
    assert_eq!(pipeline.collect().await.unwrap().len(), 100);
    assert_eq!(consumed.load(Ordering::SeqCst), 100);
    let lead = max_lead.load(Ordering::SeqCst);
    assert!(lead <= 6, "the fast stage ran {lead} items ahead");
}

#[tokio::test(start_paused = true)]
async fn the_first_error_stops_every_stage_and_names_its_stage() {
    let after = Arc::new(AtomicUsize::new(0));
    let seen = after.clone();
    let outcome = Pipeline::<u32, String>::from_iter(0..1000, 2)
        .unwrap()
        .stage("parse", 2, |n| async move {
            if n == 10 {
                Err(format!("bad record {n}"))
            } else {
                Ok(n)
            }
        })
        .stage("store", 1, move |n| {
            let seen = seen.clone();
            async move {
                seen.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1)).await;
                Ok(n)
            }
        })
        .collect()
        .await;
    assert_eq!(
        outcome,
        Err(PipelineError::Stage {
            stage: "parse".into(),
            error: "bad record 10".into()
        })
    );
    assert!(
        after.load(Ordering::SeqCst) < 20,
        "the stages stopped early"
    );
}

#[tokio::test(start_paused = true)]
async fn a_panicking_stage_is_reported() {
    let outcome = Pipeline::<u32, String>::from_iter(0..3, 1)
        .unwrap()
        .stage("explode", 1, |n| async move {
            if n == 1 {
                panic!("stage bug");
            }
            Ok(n)
        })
        .collect()
        .await;
    assert!(
        matches!(outcome, Err(PipelineError::Panicked { stage, message }) if stage == "explode" && message == "stage bug")
    );
}

#[tokio::test(start_paused = true)]
async fn an_abort_stops_it_cleanly() {
    let controller = AbortController::new();
    let pipeline =
        Pipeline::<u32, String>::from_iter_with_signal(0..1_000_000, 2, &controller.signal())
            .unwrap()
            .stage("tick", 1, |n| async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                Ok(n)
            });
    let run = tokio::spawn(pipeline.collect());
    tokio::time::sleep(Duration::from_millis(20)).await;
    controller.abort(AbortReason::Shutdown);
    let outcome = run.await.unwrap();
    assert!(
        matches!(outcome, Err(PipelineError::Aborted(reason)) if reason.root() == &AbortReason::Shutdown)
    );
}
