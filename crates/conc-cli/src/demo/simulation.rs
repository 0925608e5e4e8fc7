//! The simulation: a slow, flaky model provider, and the users who send messages, double
//! click, switch conversations and press stop, each on a seeded random schedule; every
//! generation calls the provider with retries and writes its reply through the fence.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use conc_core::{AbortManager, AbortReason, IdempotencyKey};
use conc_retry::{Classify, ErrorClass, Retry};
use conc_session::{GenerationError, GenerationGuard, GenerationMode, Message, Role, SessionError};

use super::{Demo, bump, conversation};

/// The provider's failures, classified for retrying.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ProviderError {
    RateLimited(Duration),
    Unavailable,
}

impl std::fmt::Display for ProviderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProviderError::RateLimited(d) => write!(f, "429 Too Many Requests (Retry-After {d:?})"),
            ProviderError::Unavailable => f.write_str("503 Service Unavailable"),
        }
    }
}

impl Classify for ProviderError {
    fn class(&self) -> ErrorClass {
        match self {
            ProviderError::RateLimited(d) => ErrorClass::RateLimited {
                retry_after: Some(*d),
            },
            ProviderError::Unavailable => ErrorClass::Server,
        }
    }
}

/// The demo's random numbers: `fastrand`'s generator, seeded per user from `--seed`, so a
/// run's schedule of user actions is repeatable.
pub(super) struct Rng(fastrand::Rng);

impl Rng {
    fn seeded(seed: u64) -> Self {
        Self(fastrand::Rng::with_seed(seed))
    }
    fn next(&mut self) -> u64 {
        self.0.u64(..)
    }
    pub(super) fn unit(&mut self) -> f64 {
        self.0.f64()
    }
    fn below(&mut self, n: usize) -> usize {
        self.0.usize(..n.max(1))
    }
    pub(super) fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(self.0.u64(low..high.max(low + 1)))
    }
}

/// A slow, flaky model: latency, 429s with Retry-After, 503s, and hangs.
async fn provider(rng: &mut Rng, failure_rate: f64, prompt: &str) -> Result<String, ProviderError> {
    let roll = rng.unit();
    let latency = rng.millis(20, 120);
    if roll < failure_rate * 0.35 {
        tokio::time::sleep(latency / 4).await;
        Err(ProviderError::RateLimited(Duration::from_millis(60)))
    } else if roll < failure_rate * 0.75 {
        tokio::time::sleep(latency / 2).await;
        Err(ProviderError::Unavailable)
    } else if roll < failure_rate {
        // A hang: only the attempt timeout ends it.
        std::future::pending().await
    } else {
        tokio::time::sleep(latency).await;
        Ok(format!("a thoughtful reply to: {prompt}"))
    }
}

impl Demo {
    /// Saves a user message once, even when the user double-clicks (single flight).
    async fn save_user_message(
        &self,
        conv: &str,
        id: &str,
        text: &str,
        double_click: bool,
    ) -> bool {
        let key =
            IdempotencyKey::new("db-save-message", [conv, id]).expect("a fixed, non-empty scope");
        let ran = AtomicU64::new(0);
        let save = || async {
            ran.fetch_add(1, Ordering::Relaxed);
            self.manager
                .append_message(conv, Message::new(id, Role::User, text))
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        };
        let outcome = if double_click {
            let (first, second) =
                tokio::join!(self.saves.run(key.clone(), save), self.saves.run(key, save));
            if ran.load(Ordering::Relaxed) == 1 {
                bump(&self.counters.duplicates_coalesced);
            }
            first.and(second)
        } else {
            self.saves.run(key, save).await
        };
        match outcome {
            Ok(Ok(())) => {
                bump(&self.counters.user_saved);
                self.saved_ids.lock().insert(id.to_owned());
                true
            }
            Ok(Err(error)) => {
                self.error("saving a user message", &error);
                false
            }
            Err(error) => {
                self.error("saving a user message", &error);
                false
            }
        }
    }

    /// Remembers that `conv` has recorded `fence` (a start or a stop in this process).
    pub(super) fn saw_fence(&self, conv: &str, fence: u64) {
        let mut latest = self.latest.lock();
        let entry = latest.entry(conv.to_owned()).or_default();
        *entry = (*entry).max(fence);
    }

    /// Writes a generation's reply: fenced (the session store checks the fence with the
    /// write), or with `--unfenced` the unsafe way (a local check, then a plain append).
    pub(super) async fn write_reply(
        &self,
        conv: &str,
        generation: &GenerationGuard,
        message: Message,
    ) -> Result<bool, SessionError> {
        let known = self.latest.lock().get(conv).copied().unwrap_or(0);
        let fence = generation.fence();
        let committed = if self.options.unfenced {
            if generation.commit(|| ()).is_some() {
                let mut message = message;
                message.fence = Some(fence);
                self.manager.append_message(conv, message).await?;
                true
            } else {
                false
            }
        } else {
            match generation.append_reply(message).await {
                Ok(written) => written.is_committed(),
                Err(GenerationError::Session(e)) => return Err(e),
                Err(e) => {
                    return Err(SessionError::Store {
                        backend: "lock",
                        message: e.to_string(),
                        source: Some(Box::new(e)),
                    });
                }
            }
        };
        if committed && known > fence {
            bump(&self.counters.superseded_accepted);
        }
        if !committed {
            bump(&self.counters.writes_refused);
        }
        Ok(committed)
    }

    /// One generation: the provider call with retries, maybe a switch or an operator's
    /// fault in the middle, then the fenced write of the reply.
    async fn generate(
        &self,
        rng: &mut Rng,
        aborts: &AbortManager,
        conv: &str,
        id: &str,
        text: &str,
        generation: GenerationGuard,
    ) -> Result<(), SessionError> {
        let switch_after = (rng.unit() < 0.15).then(|| rng.millis(10, 150));
        let fault_after = (self.options.chaos && rng.unit() < 0.08).then(|| rng.millis(5, 80));
        let lease = aborts.begin();
        let signal = generation.signal();
        let counters = self.counters.clone();
        let mut call_rng = Rng::seeded(rng.next());
        let attempt = || {
            bump(&counters.provider_calls);
            let mut attempt_rng = Rng::seeded(call_rng.next());
            let prompt = text.to_owned();
            let failure_rate = self.options.failure_rate;
            async move { provider(&mut attempt_rng, failure_rate, &prompt).await }
        };
        let call = Retry::new(&self.policy)
            .breaker(&self.breaker)
            .budget(&self.budget)
            .signal(&signal)
            .on_retry(|_, _, _| bump(&self.counters.retries))
            .run(attempt);
        // Sometimes the user switches conversations while the reply streams: the stream is
        // aborted and its result must not be committed.
        let guarded = lease.signal().run_until_aborted(call);
        tokio::pin!(guarded);
        let mut switch_armed = switch_after.is_some();
        let switch = tokio::time::sleep(switch_after.unwrap_or_default());
        tokio::pin!(switch);
        let mut fault_armed = fault_after.is_some();
        let fault = tokio::time::sleep(fault_after.unwrap_or_default());
        tokio::pin!(fault);
        let mut fault_rng = Rng::seeded(rng.next());
        let outcome = loop {
            tokio::select! {
                outcome = &mut guarded => break outcome,
                () = &mut switch, if switch_armed => {
                    switch_armed = false;
                    if aborts.abort_active(AbortReason::Superseded) {
                        bump(&self.counters.switches);
                    }
                }
                () = &mut fault, if fault_armed => {
                    fault_armed = false;
                    self.operator_fault(&mut fault_rng, conv).await;
                }
            }
        };
        match outcome {
            Err(_) => bump(&self.counters.stale_dropped),
            Ok(Err(error)) if error.is_aborted() => bump(&self.counters.stale_dropped),
            Ok(Err(_)) => bump(&self.counters.failed_generations),
            Ok(Ok(reply)) => {
                let reply_id = format!("{id}-reply");
                let message = Message::new(&reply_id, Role::Assistant, reply);
                if self.write_reply(conv, &generation, message).await? {
                    bump(&self.counters.assistant_saved);
                    self.saved_ids.lock().insert(reply_id);
                } else {
                    bump(&self.counters.stale_dropped);
                }
            }
        }
        let _ = generation.finish().await;
        Ok(())
    }

    /// One user, until `stop_at`: stops now and then, sends (sometimes double-clicked),
    /// starts a generation for each saved message and runs it, or hands it to the
    /// paused-generator fault once.
    pub(super) async fn user(
        self: Arc<Self>,
        user: usize,
        stop_at: tokio::time::Instant,
    ) -> Result<(), SessionError> {
        let mut rng =
            Rng::seeded(self.options.seed ^ (user as u64).wrapping_mul(0xA24B_AED4_963E_E407));
        let aborts = AbortManager::new();
        let spammer = user.is_multiple_of(3);
        let mut seq = 0u64;
        while tokio::time::Instant::now() < stop_at {
            let conv = conversation(rng.below(self.options.conversations));
            if rng.unit() < 0.04 && self.manager.stop_generation(&conv).await.unwrap_or(false) {
                bump(&self.counters.stops);
                // The stop recorded a newer fence than the stopped generation's.
                if let Ok(info) = self.manager.session(&conv).await {
                    self.saw_fence(&conv, info.fence);
                }
            }
            seq += 1;
            let id = format!("{}-u{user}-{seq}", self.instance);
            let text = format!("question {seq} from user {user}");
            bump(&self.counters.sends);
            if !self
                .save_user_message(&conv, &id, &text, rng.unit() < 0.3)
                .await
            {
                bump(&self.counters.sends_unsaved);
                continue;
            }
            let mode = if rng.unit() < 0.5 {
                GenerationMode::Reject
            } else {
                GenerationMode::Queue {
                    max_wait: Duration::from_millis(300),
                }
            };
            match self
                .manager
                .start_generation(&conv, &format!("user-{user}"), &id, mode)
                .await
            {
                Err(GenerationError::InProgress { .. }) => match mode {
                    GenerationMode::Reject => bump(&self.counters.sends_rejected),
                    _ => bump(&self.counters.sends_timed_out),
                },
                // A stop or a take-over recorded a newer fence between this generation's
                // grant and the record of its own: the session refused its first fenced
                // write, as it must. An outcome of the chaos, not an error.
                Err(error) if error.is_superseded() => {
                    bump(&self.counters.sends_superseded);
                    bump(&self.counters.writes_refused);
                }
                Err(error) => {
                    self.error("starting a generation", &error);
                    bump(&self.counters.sends_failed);
                }
                Ok(generation) => {
                    bump(&self.counters.sends_started);
                    self.saw_fence(&conv, generation.fence());
                    if self.pause_due(stop_at) {
                        // Hand this generation to a thread that stops dead past its lease.
                        self.clone()
                            .pause_past_lease(conv.clone(), id.clone(), generation)
                            .await;
                    } else {
                        self.generate(&mut rng, &aborts, &conv, &id, &text, generation)
                            .await?;
                    }
                }
            }
            if !spammer {
                tokio::time::sleep(rng.millis(5, 40)).await;
            }
        }
        Ok(())
    }
}
