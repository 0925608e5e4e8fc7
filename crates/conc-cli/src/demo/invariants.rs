//! The checks printed at the end of a run: what the stores hold of this run is read back,
//! then held against what the demo counted, invariant by invariant.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use conc_session::{Role, SessionManager};

use super::{Counters, conversation};

/// What the session store holds of this run, read back after it.
pub(super) struct Stored {
    /// How many times each of this run's messages was stored, by id.
    ours: HashMap<String, usize>,
    /// Replies appended with a fence no newer than an earlier reply's.
    out_of_order: usize,
}

/// Reads every conversation back from the session store.
pub(super) async fn read_back(
    manager: &SessionManager,
    conversations: usize,
    instance: &str,
) -> Result<Stored, String> {
    let mut ours: HashMap<String, usize> = HashMap::new();
    // Each conversation's replies, in the order the store appended them, must carry
    // strictly increasing fences: a generation's reply appended after a newer generation
    // (or a stop) recorded its fence means two generations committed at once.
    let mut out_of_order = 0usize;
    for n in 0..conversations {
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
    Ok(Stored { ours, out_of_order })
}

/// The leaders' log of this run (lines written from `since_ms` on), in append order: how
/// many lines carry a fence older than a line before them (two leaderships' writes
/// interleaved), how many lines, and how many distinct fences.
pub(super) async fn read_leader_log(
    manager: &SessionManager,
    log: &str,
    since_ms: u64,
) -> Result<(usize, usize, usize), String> {
    let session = manager.session(log).await.map_err(|e| e.to_string())?;
    let mut highest = 0u64;
    let mut backwards = 0usize;
    let mut lines = 0usize;
    let mut fences = HashSet::new();
    for message in session
        .messages
        .iter()
        .filter(|m| m.created_at_ms >= since_ms)
    {
        let Some(fence) = message.fence else {
            continue;
        };
        lines += 1;
        fences.insert(fence);
        if fence < highest {
            backwards += 1;
        }
        highest = highest.max(fence);
    }
    Ok((backwards, lines, fences.len()))
}

/// The invariants, each with whether it held and the numbers behind the verdict: what the
/// stores `held` against `saved` (the ids the demo saw saved) and the counters; a user flow
/// that did not run to the end (`failures`) breaks one more.
pub(super) fn check(
    held: &Stored,
    saved: &HashSet<String>,
    counters: &Counters,
    failures: Vec<String>,
) -> Vec<(&'static str, bool, String)> {
    let ours = &held.ours;
    let out_of_order = held.out_of_order;
    let duplicated = ours.values().filter(|n| **n > 1).count();
    let missing = saved.iter().filter(|id| !ours.contains_key(*id)).count();
    let appended = counters.user_saved.load(Ordering::Relaxed)
        + counters.assistant_saved.load(Ordering::Relaxed);
    let stored: usize = ours.values().sum();
    let superseded_accepted = counters.superseded_accepted.load(Ordering::Relaxed);
    let sends = counters.sends.load(Ordering::Relaxed);
    let outcomes = [
        &counters.sends_started,
        &counters.sends_rejected,
        &counters.sends_timed_out,
        &counters.sends_unsaved,
        &counters.sends_superseded,
        &counters.sends_failed,
    ]
    .iter()
    .map(|c| c.load(Ordering::Relaxed))
    .sum::<u64>();
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
                "{sends} sends; started + rejected + timed out + unsaved + stopped + failed = {outcomes}"
            ),
        ),
    ];
    if !failures.is_empty() {
        invariants.push(("every user flow ran to the end", false, failures.join("; ")));
    }
    invariants
}
