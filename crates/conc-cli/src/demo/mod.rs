//! `conc demo`: a chat backend under load, on the conc crates.
//!
//! Users spam "send" (double clicks included), switch conversations mid-stream and press
//! stop; the model provider is slow and flaky (429 with Retry-After, 503s, hangs that only
//! timeouts end). Every crate is in play: the generation lock and atomic session updates
//! (conc-session over conc-lock-store), single-flight message saves and aborts (conc-core),
//! retry with a circuit breaker and a budget (conc-retry), timeouts and supervised tasks
//! (conc-async). At the end it checks the invariants and says which, if any, broke.
//!
//! This module holds the entry point the CLI calls ([`run`]), the state a run shares
//! ([`Demo`], its counters) and the final report. The rooms:
//!
//! - [`simulation`]: the users, their conversations and the simulated model provider;
//! - [`chaos`]: the faults the demo injects (forced releases, take-overs, a paused
//!   generator);
//! - [`leaders`]: the demo's elected leader and its fenced job (a leader killed, another
//!   paused);
//! - [`invariants`]: what the stores hold after the run, checked.

mod chaos;
mod errors;
mod invariants;
mod leaders;
mod simulation;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use conc_async::Supervisor;
use conc_core::IdempotencyRegistry;
use conc_lock_store::LockStore;
use conc_retry::{CircuitBreaker, Jitter, RetryBudget, RetryPolicy};
use conc_session::{
    SessionConfig, SessionContext, SessionError, SessionManager, SessionStats, SessionStore,
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
    /// What became of each send: these six add up to `sends`.
    sends_started: AtomicU64,
    sends_rejected: AtomicU64,
    sends_timed_out: AtomicU64,
    sends_unsaved: AtomicU64,
    sends_failed: AtomicU64,
    /// Stopped or taken over between its lock's grant and its fence's record.
    sends_superseded: AtomicU64,
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
    leader_terms: AtomicU64,
    leaders_killed: AtomicU64,
    leaders_paused: AtomicU64,
    leader_writes: AtomicU64,
    leader_writes_refused: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
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
    paused_once: AtomicBool,
    /// Whether a leader has been killed, and one paused.
    leader_killed: AtomicBool,
    leader_paused: AtomicBool,
    /// What the errors said, by place.
    errors: parking_lot::Mutex<errors::ErrorLog>,
}

impl Demo {
    /// Counts an error at `place` and keeps what it said for the report.
    fn error(&self, place: &'static str, error: &dyn std::fmt::Display) {
        bump(&self.counters.errors);
        self.errors.lock().record(place, error);
    }
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

/// One line of the final table.
pub(crate) struct Row(pub(crate) &'static str, pub(crate) String);

/// The outcome of a run.
pub(crate) struct Report {
    pub(crate) rows: Vec<Row>,
    pub(crate) invariants: Vec<(&'static str, bool, String)>,
    /// The errors seen, by place, with the most frequent messages (empty without errors).
    pub(crate) errors: Vec<String>,
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
        if !self.errors.is_empty() {
            out.push_str("\nerrors seen\n");
            for line in &self.errors {
                out.push_str(&format!("  {line}\n"));
            }
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
    match manager.create_session(leaders::LOG).await {
        Ok(_) | Err(SessionError::AlreadyExists(_)) => {}
        Err(e) => return Err(format!("cannot create the leaders' log: {e}")),
    }
    let run_started_ms = now_ms();
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
        paused_once: AtomicBool::new(false),
        leader_killed: AtomicBool::new(false),
        leader_paused: AtomicBool::new(false),
        errors: parking_lot::Mutex::new(errors::ErrorLog::default()),
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
    let leaders = tokio::spawn(demo.clone().leaders(stop_at));
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
    if leaders.await.is_err() {
        failures.push("the leader candidates' task failed".into());
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    supervisor.shutdown(Duration::from_secs(2)).await;

    // Check the invariants against what the stores hold.
    let stored = invariants::read_back(&manager, options.conversations, &instance).await?;
    let leader_log = invariants::read_leader_log(&manager, leaders::LOG, run_started_ms).await?;
    let saved = demo.saved_ids.lock().clone();
    let stats = manager.stats();
    let rows = rows(&counters, &stats);
    for failure in &failures {
        demo.errors
            .lock()
            .record("a user's flow ended early", failure);
    }
    let errors = demo.errors.lock().lines();
    let mut invariants = invariants::check(&stored, &saved, &counters, failures);
    invariants.insert(
        1,
        (
            "no two leaders' fenced writes interleave",
            leader_log.0 == 0,
            format!(
                "{} write(s) of an older leadership after a newer one's; {} lines by {} leadership(s)",
                leader_log.0, leader_log.1, leader_log.2
            ),
        ),
    );
    Ok(Report {
        rows,
        invariants,
        errors,
    })
}

/// The final table: what the run did, from the demo's counters and the manager's stats.
fn rows(counters: &Counters, stats: &SessionStats) -> Vec<Row> {
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed).to_string();
    let sends = counters.sends.load(Ordering::Relaxed);
    vec![
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
        Row(
            "  stopped as it started (a newer fence came first)",
            load(&counters.sends_superseded),
        ),
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
        Row("chaos: leaders killed", load(&counters.leaders_killed)),
        Row(
            "chaos: leaders paused past their lease",
            load(&counters.leaders_paused),
        ),
        Row("leader terms (this process)", load(&counters.leader_terms)),
        Row("  leader writes accepted", load(&counters.leader_writes)),
        Row(
            "  leader writes refused (stale fence)",
            load(&counters.leader_writes_refused),
        ),
        Row(
            "chaos: generators paused past their lease",
            load(&counters.pauses),
        ),
        Row("superseded writes refused", load(&counters.writes_refused)),
        Row("errors", load(&counters.errors)),
    ]
}
