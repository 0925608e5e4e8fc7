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
    GenerationError, GenerationMode, Message, Role, SessionConfig, SessionContext, SessionError,
    SessionManager, SessionStore,
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
}

#[derive(Default)]
struct Counters {
    sends: AtomicU64,
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
    overlaps: AtomicU64,
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

/// SplitMix64, seeded per user so a run is repeatable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.next() % (high - low).max(1))
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

    /// Marks the conversation as generating in the shared session store; an existing live
    /// mark from someone else means two generations at once: an invariant broken.
    async fn mark(&self, conv: &str, mine: &str, set: bool) -> Result<(), SessionError> {
        let overlaps = &self.counters.overlaps;
        self.manager
            .update_session(conv, |data| {
                let existing = data.metadata.get("generating").cloned();
                if set {
                    if let Some(other) = &existing {
                        let live = other
                            .split('@')
                            .nth(1)
                            .and_then(|t| t.parse::<u64>().ok())
                            .is_some_and(|until| until > now_ms());
                        if live && other != mine {
                            overlaps.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    data.metadata.insert("generating".into(), mine.to_owned());
                } else if existing.as_deref() == Some(mine) {
                    data.metadata.remove("generating");
                }
            })
            .await
            .map(drop)
    }

    async fn user(
        self: Arc<Self>,
        user: usize,
        stop_at: tokio::time::Instant,
    ) -> Result<(), SessionError> {
        let mut rng = Rng(self.options.seed ^ (user as u64).wrapping_mul(0xA24B_AED4_963E_E407));
        let aborts = AbortManager::new();
        let spammer = user.is_multiple_of(3);
        let mut seq = 0u64;
        while tokio::time::Instant::now() < stop_at {
            let conv = conversation(rng.below(self.options.conversations));
            if rng.unit() < 0.04 && self.manager.stop_generation(&conv).await.unwrap_or(false) {
                bump(&self.counters.stops);
            }
            seq += 1;
            let id = format!("{}-u{user}-{seq}", self.instance);
            let text = format!("question {seq} from user {user}");
            bump(&self.counters.sends);
            if !self
                .save_user_message(&conv, &id, &text, rng.unit() < 0.3)
                .await
            {
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
                Err(GenerationError::InProgress { .. }) => {}
                Err(_) => bump(&self.counters.errors),
                Ok(generation) => {
                    let ttl = self.manager.context().config.generation_ttl;
                    let mine = format!(
                        "{}#{}@{}",
                        self.instance,
                        generation.fence(),
                        now_ms() + ttl.as_millis() as u64
                    );
                    self.mark(&conv, &mine, true).await?;
                    let switch_after = (rng.unit() < 0.15).then(|| rng.millis(10, 150));
                    let lease = aborts.begin();
                    let signal = generation.signal();
                    let counters = self.counters.clone();
                    let attempt = || {
                        bump(&counters.provider_calls);
                        let mut call_rng = Rng(rng.next());
                        let prompt = text.clone();
                        let failure_rate = self.options.failure_rate;
                        async move { provider(&mut call_rng, failure_rate, &prompt).await }
                    };
                    let call = Retry::new(&self.policy)
                        .breaker(&self.breaker)
                        .budget(&self.budget)
                        .signal(&signal)
                        .on_retry(|_, _, _| bump(&self.counters.retries))
                        .run(attempt);
                    // Sometimes the user switches conversations while the reply streams:
                    // the stream is aborted and its result must not be committed.
                    let guarded = lease.signal().run_until_aborted(call);
                    tokio::pin!(guarded);
                    let mut armed = switch_after.is_some();
                    let switch = tokio::time::sleep(switch_after.unwrap_or_default());
                    tokio::pin!(switch);
                    let outcome = loop {
                        tokio::select! {
                            outcome = &mut guarded => break outcome,
                            () = &mut switch, if armed => {
                                armed = false;
                                if aborts.abort_active(AbortReason::Superseded) {
                                    bump(&self.counters.switches);
                                }
                            }
                        }
                    };
                    match outcome {
                        Err(_) => bump(&self.counters.stale_dropped),
                        Ok(Err(error)) if error.is_aborted() => bump(&self.counters.stale_dropped),
                        Ok(Err(_)) => bump(&self.counters.failed_generations),
                        Ok(Ok(reply)) => {
                            let reply_id = format!("{id}-reply");
                            if generation.commit(|| ()).is_some() {
                                self.manager
                                    .append_message(
                                        &conv,
                                        Message::new(&reply_id, Role::Assistant, reply),
                                    )
                                    .await?;
                                bump(&self.counters.assistant_saved);
                                self.saved_ids.lock().insert(reply_id);
                            } else {
                                bump(&self.counters.stale_dropped);
                            }
                        }
                    }
                    self.mark(&conv, &mine, false).await?;
                    let _ = generation.finish().await;
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
        config: SessionConfig {
            generation_ttl: Duration::from_secs(3),
            max_update_attempts: 10_000,
            instance: instance.clone(),
            ..SessionConfig::default()
        },
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
    for n in 0..options.conversations {
        let session = manager
            .session(&conversation(n))
            .await
            .map_err(|e| e.to_string())?;
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
    let overlaps = counters.overlaps.load(Ordering::Relaxed);
    let rows = vec![
        Row("sends", load(&counters.sends)),
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
        Row("errors", load(&counters.errors)),
    ];
    let mut invariants = vec![
        (
            "never two generations at once in one conversation",
            overlaps == 0,
            format!("{overlaps} overlap(s) seen"),
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
    ];
    if !failures.is_empty() {
        invariants.push(("every user flow ran to the end", false, failures.join("; ")));
    }
    Ok(Report { rows, invariants })
}
