//! The breaker's state machine, lock-free and in nanoseconds: one packed word holds the
//! state, the half-open probes admitted and succeeded, and a generation, so every decision
//! (admit, open, half-open, close) is one compare-and-swap on it. The loom models in
//! `tests.rs` check it. Also the public names of its states, [`CircuitState`] and
//! [`StateChange`].

use super::count_window::CountWindow;
use super::time_window::TimeWindow;
use crate::loom::{AtomicU32, AtomicU64, Ordering};

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CircuitState {
    /// Calls pass.
    Closed,
    /// Calls are rejected until the break is over.
    Open,
    /// A limited number of probe calls pass.
    HalfOpen,
    /// Held open by [`CircuitBreaker::isolate`](super::CircuitBreaker::isolate).
    Isolated,
}

/// A state change, given to the hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateChange {
    /// The state before.
    pub from: CircuitState,
    /// The state after.
    pub to: CircuitState,
}

pub(crate) const CLOSED: u64 = 0;
pub(crate) const OPEN: u64 = 1;
pub(crate) const HALF_OPEN: u64 = 2;
pub(crate) const ISOLATED: u64 = 3;
const TAG: u64 = 0b11;
const ADMITTED_SHIFT: u32 = 2;
const SUCCEEDED_SHIFT: u32 = 18;
const FIELD: u64 = 0xFFFF;
const GEN_SHIFT: u32 = 34;

pub(super) fn tag(s: u64) -> u64 {
    s & TAG
}
fn admitted(s: u64) -> u64 {
    (s >> ADMITTED_SHIFT) & FIELD
}
fn succeeded(s: u64) -> u64 {
    (s >> SUCCEEDED_SHIFT) & FIELD
}
fn generation(s: u64) -> u64 {
    s >> GEN_SHIFT
}
fn pack(tag: u64, admitted: u64, succeeded: u64, generation: u64) -> u64 {
    tag | (admitted << ADMITTED_SHIFT) | (succeeded << SUCCEEDED_SHIFT) | (generation << GEN_SHIFT)
}
pub(super) fn tag_state(s: u64) -> CircuitState {
    match tag(s) {
        CLOSED => CircuitState::Closed,
        OPEN => CircuitState::Open,
        HALF_OPEN => CircuitState::HalfOpen,
        _ => CircuitState::Isolated,
    }
}

pub(crate) struct CoreConfig {
    pub(crate) consecutive: Option<u32>,
    pub(crate) rate: Option<(f64, u32, u32)>,
    pub(crate) break_nanos: u64,
    pub(crate) growth: f64,
    pub(crate) max_break_nanos: u64,
    pub(crate) probes: u32,
    pub(crate) close_after: u32,
    /// Failure rate over time: rate, window (ns), minimum calls.
    pub(crate) time_rate: Option<(f64, u64, u32)>,
    /// Calls slower than this (ns) count as failures.
    pub(crate) slow_nanos: Option<u64>,
    /// The longest the breaker stays half-open (ns).
    pub(crate) max_half_open_nanos: Option<u64>,
}

/// What a permit remembers: the generation it was issued in, and whether it is a probe.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    generation: u64,
    pub(crate) probe: bool,
    /// When it was issued (ns), if slow calls are counted.
    started: u64,
}

/// The state machine. `state` packs tag, probes admitted, probes succeeded and a generation;
/// every half-open decision is one CAS on it, so exactly `probes` are admitted.
pub(crate) struct Core {
    config: CoreConfig,
    pub(crate) state: AtomicU64,
    /// When the current open period ends; valid for the generation in `open_generation`.
    pub(super) open_until: AtomicU64,
    /// The generation whose `open_until` is published (written after it, by the opener
    /// that won the CAS, so a loser never shortens or lengthens the break).
    open_generation: AtomicU64,
    opened_in_a_row: AtomicU32,
    consecutive: AtomicU32,
    /// The count-based window, when configured (no slots otherwise).
    window: CountWindow,
    /// The time-based window, when configured (a short lock per recorded outcome).
    time_window: Option<parking_lot::Mutex<TimeWindow>>,
    /// When the breaker went half-open (ns), for the generation in `half_open_generation`.
    half_open_since: AtomicU64,
    half_open_generation: AtomicU64,
}

impl Core {
    pub(crate) fn new(config: CoreConfig) -> Self {
        let window = config.rate.map_or(0, |(_, w, _)| w as usize);
        let time_window = config.time_rate.map(|(_, window_nanos, _)| window_nanos);
        Self {
            config,
            state: AtomicU64::new(pack(CLOSED, 0, 0, 0)),
            open_until: AtomicU64::new(0),
            open_generation: AtomicU64::new(u64::MAX),
            opened_in_a_row: AtomicU32::new(0),
            consecutive: AtomicU32::new(0),
            window: CountWindow::new(window),
            time_window: time_window
                .map(|window_nanos| parking_lot::Mutex::new(TimeWindow::new(window_nanos))),
            half_open_since: AtomicU64::new(0),
            half_open_generation: AtomicU64::new(u64::MAX),
        }
    }

    /// Moves an open breaker whose break is over to half-open (the winner of the CAS
    /// publishes when). Returns the change it made.
    pub(crate) fn expire_open(&self, now: u64) -> Option<StateChange> {
        let s = self.state.load(Ordering::Acquire);
        if tag(s) != OPEN || self.open_generation.load(Ordering::Acquire) != generation(s) {
            return None;
        }
        if now < self.open_until.load(Ordering::Acquire) {
            return None;
        }
        let next = pack(HALF_OPEN, 0, 0, generation(s) + 1);
        self.state
            .compare_exchange(s, next, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .and_then(|_| {
                self.half_open_since.store(now, Ordering::Release);
                self.half_open_generation
                    .store(generation(next), Ordering::Release);
                Self::change(s, next)
            })
    }

    fn change(from: u64, to: u64) -> Option<StateChange> {
        Some(StateChange {
            from: tag_state(from),
            to: tag_state(to),
        })
    }

    /// `Ok(ticket)` or `Err(retry_after_nanos)`; plus the state change it made, if any.
    pub(crate) fn acquire(
        &self,
        now: impl Fn() -> u64,
    ) -> (Result<Ticket, Option<u64>>, Option<StateChange>) {
        let mut change = None;
        let mut s = self.state.load(Ordering::Acquire);
        loop {
            match tag(s) {
                CLOSED => {
                    return (
                        Ok(Ticket {
                            generation: generation(s),
                            probe: false,
                            started: if self.config.slow_nanos.is_some() {
                                now()
                            } else {
                                0
                            },
                        }),
                        change,
                    );
                }
                OPEN => {
                    if self.open_generation.load(Ordering::Acquire) != generation(s) {
                        // Opened this instant; its opener has not published the end yet.
                        return (Err(None), change);
                    }
                    let until = self.open_until.load(Ordering::Acquire);
                    let now = now();
                    if now < until {
                        return (Err(Some(until - now)), change);
                    }
                    let next = pack(HALF_OPEN, 0, 0, generation(s) + 1);
                    match self
                        .state
                        .compare_exchange(s, next, Ordering::AcqRel, Ordering::Acquire)
                    {
                        Ok(_) => {
                            self.half_open_since.store(now, Ordering::Release);
                            self.half_open_generation
                                .store(generation(next), Ordering::Release);
                            change = Self::change(s, next);
                            s = next;
                        }
                        Err(now_state) => s = now_state,
                    }
                }
                HALF_OPEN => {
                    if admitted(s) >= u64::from(self.config.probes) {
                        // Probes that never settle must not hold it half-open for ever.
                        if let Some(max) = self.config.max_half_open_nanos
                            && self.half_open_generation.load(Ordering::Acquire) == generation(s)
                        {
                            let now = now();
                            let since = self.half_open_since.load(Ordering::Acquire);
                            if now.saturating_sub(since) >= max {
                                if let Some(reopened) = self.open_from(s, now) {
                                    change = Some(reopened);
                                }
                                s = self.state.load(Ordering::Acquire);
                                continue;
                            }
                        }
                        return (Err(None), change);
                    }
                    let next = s + (1 << ADMITTED_SHIFT);
                    match self
                        .state
                        .compare_exchange(s, next, Ordering::AcqRel, Ordering::Acquire)
                    {
                        Ok(_) => {
                            return (
                                Ok(Ticket {
                                    generation: generation(s),
                                    probe: true,
                                    started: if self.config.slow_nanos.is_some() {
                                        now()
                                    } else {
                                        0
                                    },
                                }),
                                change,
                            );
                        }
                        Err(now_state) => s = now_state,
                    }
                }
                _ => return (Err(None), change),
            }
        }
    }

    /// Records an outcome; returns the state change it caused, if any.
    pub(crate) fn record(
        &self,
        ticket: Ticket,
        success: bool,
        now: impl Fn() -> u64,
    ) -> Option<StateChange> {
        let mut success = success;
        if let Some(slow) = self.config.slow_nanos
            && now().saturating_sub(ticket.started) > slow
        {
            success = false;
        }
        let s = self.state.load(Ordering::Acquire);
        if generation(s) != ticket.generation {
            return None;
        }
        if ticket.probe {
            return self.record_probe(s, success, now);
        }
        if tag(s) != CLOSED {
            return None;
        }
        let window_trips = self.record_window(success) | self.record_time_window(success, &now);
        if success {
            // Read first: a store on every success would bounce the cache line.
            if self.consecutive.load(Ordering::Relaxed) != 0 {
                self.consecutive.store(0, Ordering::Release);
            }
            return None;
        }
        let in_a_row = self.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
        let consecutive_trips = self.config.consecutive.is_some_and(|n| in_a_row >= n);
        if consecutive_trips || window_trips {
            return self.open_from(s, now());
        }
        None
    }

    /// Updates the sliding window; whether the failure rate now trips the breaker.
    fn record_window(&self, success: bool) -> bool {
        let Some((rate, size, min_calls)) = self.config.rate else {
            return false;
        };
        self.window.record(success, rate, size, min_calls)
    }

    /// Updates the time-based window; whether its failure rate now trips the breaker.
    fn record_time_window(&self, success: bool, now: &impl Fn() -> u64) -> bool {
        let (Some((rate, _, min_calls)), Some(window)) = (self.config.time_rate, &self.time_window)
        else {
            return false;
        };
        let (calls, failures) = window.lock().record(now(), !success);
        !success && calls >= u64::from(min_calls) && failures as f64 >= rate * calls as f64
    }

    fn record_probe(
        &self,
        mut s: u64,
        success: bool,
        now: impl Fn() -> u64,
    ) -> Option<StateChange> {
        loop {
            if tag(s) != HALF_OPEN {
                return None;
            }
            if !success {
                return self.open_from(s, now());
            }
            let done = succeeded(s) + 1;
            let next = if done >= u64::from(self.config.close_after) {
                self.clear_counts();
                pack(CLOSED, 0, 0, generation(s) + 1)
            } else {
                s + (1 << SUCCEEDED_SHIFT)
            };
            match self
                .state
                .compare_exchange(s, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) if tag(next) == CLOSED => {
                    self.opened_in_a_row.store(0, Ordering::Release);
                    return Self::change(s, next);
                }
                Ok(_) => return None,
                Err(now_state) => {
                    if generation(now_state) != generation(s) {
                        return None;
                    }
                    s = now_state;
                }
            }
        }
    }

    /// Opens from state `s` (closed or half-open), growing the break if it re-opens. Only
    /// the caller whose CAS opens the breaker sets the break, once: concurrent failures
    /// that race to re-open it grow it by one step, not one per failure.
    fn open_from(&self, s: u64, now: u64) -> Option<StateChange> {
        let mut s = s;
        loop {
            let next = pack(OPEN, 0, 0, generation(s) + 1);
            match self
                .state
                .compare_exchange(s, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    let opened = self.opened_in_a_row.fetch_add(1, Ordering::AcqRel);
                    let grown = self.config.break_nanos as f64
                        * self.config.growth.powi(opened.min(64) as i32);
                    let break_nanos = if grown.is_finite() {
                        (grown as u64).min(self.config.max_break_nanos)
                    } else {
                        self.config.max_break_nanos
                    };
                    self.open_until
                        .store(now.saturating_add(break_nanos), Ordering::Release);
                    self.open_generation
                        .store(generation(next), Ordering::Release);
                    return Self::change(s, next);
                }
                // Only the probe counts moved (same state, same generation): try again, or
                // a concurrent probe's report would swallow this failure.
                Err(now_state)
                    if tag(now_state) == tag(s) && generation(now_state) == generation(s) =>
                {
                    s = now_state;
                }
                Err(_) => return None,
            }
        }
    }

    /// A permit dropped without an outcome: free its probe slot.
    pub(crate) fn release(&self, ticket: Ticket) {
        if !ticket.probe {
            return;
        }
        let mut s = self.state.load(Ordering::Acquire);
        while tag(s) == HALF_OPEN && generation(s) == ticket.generation && admitted(s) > 0 {
            match self.state.compare_exchange(
                s,
                s - (1 << ADMITTED_SHIFT),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(now_state) => s = now_state,
            }
        }
    }

    fn clear_counts(&self) {
        self.consecutive.store(0, Ordering::Release);
        self.window.clear();
        if let Some(window) = &self.time_window {
            window.lock().clear();
        }
    }

    /// Forces `CLOSED` (clearing counts) or `ISOLATED`.
    pub(crate) fn force(&self, to: u64) -> Option<StateChange> {
        if to == CLOSED {
            self.clear_counts();
            self.opened_in_a_row.store(0, Ordering::Release);
        }
        let mut s = self.state.load(Ordering::Acquire);
        loop {
            if tag(s) == to {
                return None;
            }
            let next = pack(to, 0, 0, generation(s) + 1);
            match self
                .state
                .compare_exchange(s, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Self::change(s, next),
                Err(now_state) => s = now_state,
            }
        }
    }
}
