//! The chaos: faults the demo injects unless `--no-chaos` is given. An operator's fault in
//! the middle of a generation (a forced release, or a take-over held briefly), and once
//! per run a generator whose thread stops dead past its lease, then tries to write.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use conc_session::{GenerationGuard, GenerationMode, Message, Role, SessionError};

use super::simulation::Rng;
use super::{Demo, bump};

impl Demo {
    /// A fault an operator causes in the middle of a generation: a forced release, or a
    /// take-over held briefly. Either way the generation's lease is gone.
    pub(super) async fn operator_fault(&self, rng: &mut Rng, conv: &str) {
        let key = format!("{}{conv}", self.manager.context().config.lock_prefix);
        let locks = &self.manager.context().locks;
        if rng.unit() < 0.5 {
            if locks.force_release(&key).await.unwrap_or(false) {
                bump(&self.counters.forced_releases);
            }
        } else {
            let request =
                conc_lock_store::LockRequest::new(key, "operator", Duration::from_millis(200));
            if let Ok(lease) = locks.take_over(&request).await {
                bump(&self.counters.take_overs);
                tokio::time::sleep(rng.millis(20, 120)).await;
                let _ = locks.release(&lease).await;
            }
        }
    }

    /// Whether the generation just started should be the paused generator: with chaos on,
    /// once per run, once the run is half over. Claims the one pause when it says yes.
    pub(super) fn pause_due(&self, stop_at: tokio::time::Instant) -> bool {
        self.options.chaos
            && !self.paused_once.load(Ordering::Relaxed)
            && tokio::time::Instant::now() + self.options.duration / 2 >= stop_at
            && !self.paused_once.swap(true, Ordering::Relaxed)
    }

    /// Runs `generation` on a thread of its own whose runtime then stops dead (as a stalled
    /// VM or a stopped process would) past the lease, renewals included; on waking it tries
    /// to write, which must be refused.
    pub(super) async fn pause_past_lease(
        self: Arc<Self>,
        conv: String,
        id: String,
        generation: GenerationGuard,
    ) {
        bump(&self.counters.pauses);
        let pause = self.manager.context().config.generation_ttl + Duration::from_millis(500);
        let (done, result) = tokio::sync::oneshot::channel();
        // The guard's renewal task runs on the runtime it was started on; move the lease
        // to a runtime that can stop: release this one and start a fresh generation there.
        let demo = self.clone();
        let thread = std::thread::Builder::new()
            .name("demo-paused-generator".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = done.send(Err(SessionError::Store {
                            backend: "runtime",
                            message: e.to_string(),
                            source: Some(Box::new(e)),
                        }));
                        return;
                    }
                };
                let outcome = runtime.block_on(async move {
                    let _ = generation.finish().await;
                    let generation = match demo
                        .manager
                        .start_generation(&conv, "paused-user", &id, GenerationMode::Reject)
                        .await
                    {
                        Ok(generation) => generation,
                        Err(_) => return Ok(()),
                    };
                    demo.saw_fence(&conv, generation.fence());
                    // The pause: this thread and its runtime stop.
                    std::thread::sleep(pause);
                    let reply =
                        Message::new(format!("{id}-reply"), Role::Assistant, "a late reply");
                    if demo.write_reply(&conv, &generation, reply).await? {
                        // A paused generator's write got through: count it against the fence.
                        bump(&demo.counters.superseded_accepted);
                        demo.saved_ids.lock().insert(format!("{id}-reply"));
                        bump(&demo.counters.assistant_saved);
                    }
                    drop(generation);
                    Ok(())
                });
                let _ = done.send(outcome);
            });
        match thread {
            Ok(_) => match result.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => self.error("the paused generator", &error),
                Err(error) => self.error("the paused generator", &error),
            },
            Err(error) => self.error("starting the paused generator's thread", &error),
        }
    }
}
