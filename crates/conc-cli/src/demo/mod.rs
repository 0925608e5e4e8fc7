//! `conc demo`: a chat backend under load, on the conc crates.
//!
//! Users spam "send" (double clicks included), switch conversations mid-stream and press
//! stop; the model provider is slow and flaky (429 with Retry-After, 503s, hangs that only
//! timeouts end). Every crate is in play: the generation lock and atomic session updates
//! (conc-session over conc-lock-store), single-flight message saves and aborts (conc-core),
//! retry with a circuit breaker and a budget (conc-retry), timeouts and supervised tasks
//! (conc-async). At the end it checks the invariants and says which, if any, broke.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use conc_async::Supervisor;
use conc_core::{AbortManager, AbortReason, IdempotencyKey, IdempotencyRegistry};
use conc_lock_store::LockStore;
use conc_retry::{CircuitBreaker, Classify, ErrorClass, Jitter, Retry, RetryBudget, RetryPolicy};
use conc_session::{
    GenerationError, GenerationGuard, GenerationMode, Message, Role, SessionConfig, SessionContext,
    SessionError, SessionManager, SessionStore,
};

/// What `conc demo` was asked to do.
#[derive(Debug, Clone)]
pub(crate) struct DemoOptions {
    pub(crate) users: usize,
    pub(crate) conversations: usize,
    pub(crate) duration: Duration,
    pub(crate) failure_rate: f64,
    pub(crate) seed: u64,
    pub(crate) progress: bool,
    /// Inject faults: forced releases, take-overs, a generator paused past its lease.
    pub(crate) chaos: bool,
    /// Write replies without the fence (to show what it prevents).
    pub(crate) unfenced: bool,
}

#[derive(Default)]
struct Counters {
    sends: AtomicU64,
    /// What became of each send: these five add up to `sends`.
    sends_started: AtomicU64,
    sends_rejected: AtomicU64,
    sends_timed_out: AtomicU64,
    sends_unsaved: AtomicU64,
    sends_failed: AtomicU64,
    duplicates_coalesced: AtomicU64,
    user_saved: AtomicU64,
    assistant_saved: AtomicU64,
    provider_calls: AtomicU64,
    retries: AtomicU64,
    circuit_openings: AtomicU64,
    stale_dropped: AtomicU64,
    switches: AtomicU64,
    stops: AtomicU64,
    failed_generations: AtomicU64,
    forced_releases: AtomicU64,
    take_overs: AtomicU64,
    pauses: AtomicU64,
    writes_refused: AtomicU64,
    superseded_accepted: AtomicU64,
    errors: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

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
struct Rng(fastrand::Rng);

impl Rng {
    fn seeded(seed: u64) -> Self {
        Self(fastrand::Rng::with_seed(seed))
    }
    fn next(&mut self) -> u64 {
        self.0.u64(..)
    }
    fn unit(&mut self) -> f64 {
        self.0.f64()
    }
    fn below(&mut self, n: usize) -> usize {
        self.0.usize(..n.max(1))
    }
    fn millis(&mut self, low: u64, high: u64) -> Duration {
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

struct Demo {
    manager: SessionManager,
    saves: IdempotencyRegistry<Result<(), String>>,
    policy: RetryPolicy,
    breaker: CircuitBreaker,
    budget: RetryBudget,
    counters: Arc<Counters>,
    instance: String,
    options: DemoOptions,
    saved_ids: parking_lot::Mutex<HashSet<String>>,
    /// The newest fence this process knows each conversation has recorded (a start or a
    /// stop): a write accepted with an older fence, begun after that, is a superseded
    /// generation's write getting through.
    latest: parking_lot::Mutex<HashMap<String, u64>>,
    /// Whether the paused-generator fault has been injected.
    paused_once: std::sync::atomic::AtomicBool,
}

fn conversation(n: usize) -> String {
    format!("demo-conversation-{n}")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
            _ => {
                bump(&self.counters.errors);
                false
            }
        }
    }

    /// Remembers that `conv` has recorded `fence` (a start or a stop in this process).
    fn saw_fence(&self, conv: &str, fence: u64) {
        let mut latest = self.latest.lock();
        let entry = latest.entry(conv.to_owned()).or_default();
        *entry = (*entry).max(fence);
    }

    /// Writes a generation's reply: fenced (the session store checks the fence with the
    /// write), or with `--unfenced` the unsafe way (a local check, then a plain append).
    async fn write_reply(
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

    /// A fault an operator causes in the middle of a generation: a forced release, or a
    /// take-over held briefly. Either way the generation's lease is gone.
    async fn operator_fault(&self, rng: &mut Rng, conv: &str) {
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

    /// Runs `generation` on a thread of its own whose runtime then stops dead (as a stalled
    /// VM or a stopped process would) past the lease, renewals included; on waking it tries
    /// to write, which must be refused.
    async fn pause_past_lease(
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
                _ => bump(&self.counters.errors),
            },
            Err(_) => bump(&self.counters.errors),
        }
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

    async fn user(
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
                Err(_) => {
                    bump(&self.counters.errors);
                    bump(&self.counters.sends_failed);
                }
                Ok(generation) => {
                    bump(&self.counters.sends_started);
                    self.saw_fence(&conv, generation.fence());
                    if self.options.chaos
                        && !self.paused_once.load(Ordering::Relaxed)
                        && tokio::time::Instant::now() + self.options.duration / 2 >= stop_at
                        && !self.paused_once.swap(true, Ordering::Relaxed)
                    {
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

/// One line of the final table.
pub(crate) struct Row(pub(crate) &'static str, pub(crate) String);

/// The outcome of a run.
pub(crate) struct Report {
    pub(crate) rows: Vec<Row>,
    pub(crate) invariants: Vec<(&'static str, bool, String)>,
}

impl Report {
    pub(crate) fn ok(&self) -> bool {
        self.invariants.iter().all(|(_, ok, _)| *ok)
    }

    pub(crate) fn render(&self) -> String {
        let width = self
            .rows
            .iter()
            .map(|r| r.0.len())
            .chain(self.invariants.iter().map(|i| i.0.len()))
            .max()
            .unwrap_or(0);
        let mut out = String::from("\nconc demo: results\n");
        for Row(label, value) in &self.rows {
            out.push_str(&format!("  {label:<width$}  {value:>8}\n"));
        }
        out.push_str("\ninvariants\n");
        for (label, ok, detail) in &self.invariants {
            let verdict = if *ok { "ok" } else { "BROKEN" };
            out.push_str(&format!("  {label:<width$}  {verdict:>8}  {detail}\n"));
        }
        out
    }
}

/// Runs the demo on `locks` and `sessions`.
pub(crate) async fn run(
    options: DemoOptions,
    locks: Arc<dyn LockStore>,
    sessions: Arc<dyn SessionStore>,
) -> Result<Report, String> {
    let instance = format!(
        "p{}-{:04x}",
        std::process::id(),
        options.seed & 0xffff ^ (now_ms() & 0xffff)
    );
    let manager = SessionManager::new(SessionContext {
        sessions,
        locks,
        config: SessionConfig::default()
            .with_generation_ttl(Duration::from_secs(2))
            .with_max_update_attempts(10_000)
            .with_instance(instance.clone()),
    });
    for n in 0..options.conversations {
        match manager.create_session(&conversation(n)).await {
            Ok(_) | Err(SessionError::AlreadyExists(_)) => {}
            Err(e) => return Err(format!("cannot create the demo's sessions: {e}")),
        }
    }
    let counters = Arc::new(Counters::default());
    let openings = counters.clone();
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(6)
        .break_duration(Duration::from_millis(400))
        .on_state_change(move |change| {
            if change.to == conc_retry::CircuitState::Open {
                bump(&openings.circuit_openings);
            }
        })
        .build()
        .map_err(|e| e.to_string())?;
    let policy = RetryPolicy::builder()
        .max_attempts(4)
        .base_delay(Duration::from_millis(20))
        .max_delay(Duration::from_millis(400))
        .jitter(Jitter::Full)
        .attempt_timeout(Duration::from_millis(300))
        .max_elapsed(Duration::from_secs(2))
        .seed(options.seed)
        .build()
        .map_err(|e| e.to_string())?;
    let demo = Arc::new(Demo {
        manager: manager.clone(),
        saves: IdempotencyRegistry::new(),
        policy,
        breaker,
        budget: RetryBudget::new(Duration::from_secs(10), 5, 0.5).map_err(|e| e.to_string())?,
        counters: counters.clone(),
        instance: instance.clone(),
        options: options.clone(),
        saved_ids: parking_lot::Mutex::new(HashSet::new()),
        latest: parking_lot::Mutex::new(HashMap::new()),
        paused_once: std::sync::atomic::AtomicBool::new(false),
    });

    let supervisor = Supervisor::new("demo");
    manager
        .spawn_lock_cleanup(&supervisor, Duration::from_secs(1))
        .await
        .map_err(|e| e.to_string())?;
    let stop_at = tokio::time::Instant::now() + options.duration;
    let progress = options.progress.then(|| {
        let bar = indicatif::ProgressBar::new(options.duration.as_millis() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{bar:30}] {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let users: Vec<_> = (0..options.users)
        .map(|user| tokio::spawn(demo.clone().user(user, stop_at)))
        .collect();
    let started = tokio::time::Instant::now();
    while tokio::time::Instant::now() < stop_at {
        if let Some(bar) = &progress {
            let stats = manager.stats();
            bar.set_position(started.elapsed().as_millis() as u64);
            bar.set_message(format!(
                "{} sends, {} generations, {} rejected, {} retries",
                counters.sends.load(Ordering::Relaxed),
                stats.generations_started,
                stats.rejected,
                counters.retries.load(Ordering::Relaxed)
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut failures = Vec::new();
    for user in users {
        match user.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(e.to_string()),
            Err(e) => failures.push(format!("a user task failed: {e}")),
        }
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    supervisor.shutdown(Duration::from_secs(2)).await;

    // Check the invariants against what the stores hold.
    let mut ours: HashMap<String, usize> = HashMap::new();
    // Each conversation's replies, in the order the store appended them, must carry
    // strictly increasing fences: a generation's reply appended after a newer generation
    // (or a stop) recorded its fence means two generations committed at once.
    let mut out_of_order = 0usize;
    for n in 0..options.conversations {
        let session = manager
            .session(&conversation(n))
            .await
            .map_err(|e| e.to_string())?;
        let mut last_fence = 0u64;
        for message in session
            .messages
            .iter()
            .filter(|m| m.role == Role::Assistant)
        {
            if let Some(fence) = message.fence {
                if fence <= last_fence {
                    out_of_order += 1;
                }
                last_fence = last_fence.max(fence);
            }
        }
        for message in session
            .messages
            .iter()
            .filter(|m| m.id.starts_with(&format!("{instance}-")))
        {
            *ours.entry(message.id.clone()).or_default() += 1;
        }
    }
    let saved = demo.saved_ids.lock().clone();
    let duplicated = ours.values().filter(|n| **n > 1).count();
    let missing = saved.iter().filter(|id| !ours.contains_key(*id)).count();
    let appended = counters.user_saved.load(Ordering::Relaxed)
        + counters.assistant_saved.load(Ordering::Relaxed);
    let stored: usize = ours.values().sum();
    let stats = manager.stats();
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed).to_string();
    let superseded_accepted = counters.superseded_accepted.load(Ordering::Relaxed);
    let sends = counters.sends.load(Ordering::Relaxed);
    let outcomes = [
        &counters.sends_started,
        &counters.sends_rejected,
        &counters.sends_timed_out,
        &counters.sends_unsaved,
        &counters.sends_failed,
    ]
    .iter()
    .map(|c| c.load(Ordering::Relaxed))
    .sum::<u64>();
    let rows = vec![
        Row("sends", sends.to_string()),
        Row("  started a generation", load(&counters.sends_started)),
        Row(
            "  rejected: a reply was being generated",
            load(&counters.sends_rejected),
        ),
        Row(
            "  queued, then timed out waiting",
            load(&counters.sends_timed_out),
        ),
        Row("  message not saved", load(&counters.sends_unsaved)),
        Row("  generation failed to start", load(&counters.sends_failed)),
        Row("generations started", stats.generations_started.to_string()),
        Row(
            "generations rejected (please wait)",
            stats.rejected.to_string(),
        ),
        Row("generations queued", stats.queued.to_string()),
        Row(
            "generations failed (provider down)",
            load(&counters.failed_generations),
        ),
        Row(
            "stale results dropped",
            (counters.stale_dropped.load(Ordering::Relaxed)).to_string(),
        ),
        Row("duplicates coalesced", load(&counters.duplicates_coalesced)),
        Row("provider calls", load(&counters.provider_calls)),
        Row("retries", load(&counters.retries)),
        Row("circuit openings", load(&counters.circuit_openings)),
        Row("leases lost", stats.leases_lost.to_string()),
        Row("conversation switches", load(&counters.switches)),
        Row("stops pressed", load(&counters.stops)),
        Row(
            "session update conflicts retried",
            stats.conflicts_retried.to_string(),
        ),
        Row("chaos: forced releases", load(&counters.forced_releases)),
        Row("chaos: take-overs", load(&counters.take_overs)),
        Row(
            "chaos: generators paused past their lease",
            load(&counters.pauses),
        ),
        Row("superseded writes refused", load(&counters.writes_refused)),
        Row("errors", load(&counters.errors)),
    ];
    let mut invariants = vec![
        (
            "no two generations commit in one conversation",
            out_of_order == 0,
            format!("{out_of_order} reply(ies) committed after a newer generation's fence"),
        ),
        (
            "no write from a superseded generation is accepted",
            superseded_accepted == 0,
            format!(
                "{superseded_accepted} accepted, {} refused",
                counters.writes_refused.load(Ordering::Relaxed)
            ),
        ),
        (
            "every message saved exactly once",
            duplicated == 0 && missing == 0,
            format!(
                "{} saved, {duplicated} duplicated, {missing} missing",
                saved.len()
            ),
        ),
        (
            "no session update lost",
            stored as u64 == appended,
            format!("{appended} appended, {stored} stored"),
        ),
        (
            "every send is accounted for",
            outcomes == sends,
            format!(
                "{sends} sends; started + rejected + timed out + unsaved + failed = {outcomes}"
            ),
        ),
    ];
    if !failures.is_empty() {
        invariants.push(("every user flow ran to the end", false, failures.join("; ")));
    }
    Ok(Report { rows, invariants })
}
