//! The conformance suite: one async function per property of a [`LockStore`]; every
//! backend runs them all (see [`run_all`]). Built with the `conformance` feature.
//!
//! The functions panic with a description when a property fails, like assertions in a
//! test. Each one uses keys under its own `prefix`, and expects no other user of those
//! keys. [`cleanup_count`] counts everything a store cleans, so [`run_all`] runs the
//! properties one after the other.
//!
//! ```
//! # #[tokio::main]
//! # async fn main() {
//! use std::sync::Arc;
//! use conc_lock_store::{MemoryLockStore, conformance};
//!
//! conformance::run_all(Arc::new(MemoryLockStore::new()), "doc").await;
//! # }
//! ```

mod coordination;
mod exclusion;
mod holders;
mod inspection;
mod notification;
mod recipes;

pub use coordination::{
    election_has_one_leader, multi_lock_takes_all_or_none,
    rw_lock_shares_reads_and_serves_writers_first,
};
pub use exclusion::{
    dropped_acquire_never_outlives_ttl, foreign_release_refused, monotonic_fence, mutual_exclusion,
    renew_after_expiry_fails, renew_many_answers_per_lease, takeover_after_ttl,
};
pub use holders::{
    FenceError, FencedFile, guard_renews_and_reports_loss, take_over_fences_off_the_holder,
    take_over_reaches_the_holder_at_once,
};
pub use inspection::{
    bad_input_is_rejected, cleanup_count, inspect_is_truthful, list_by_prefix,
    wait_timeout_names_holder,
};
pub use notification::{announced_wait_is_woken, watch_reports_changes_made_right_after_it};
pub use recipes::{fair_lock_serves_in_arrival_order, semaphore_admits_n_holders};

use std::sync::Arc;

use crate::store::LockStore;

/// Runs every property against `store`, one after the other, under `prefix`.
///
/// # Cancel safety
///
/// Dropping it midway may leave locks under `prefix` held until their TTLs expire.
pub async fn run_all(store: Arc<dyn LockStore>, prefix: &str) {
    mutual_exclusion(&store, prefix).await;
    takeover_after_ttl(&store, prefix).await;
    monotonic_fence(&store, prefix).await;
    foreign_release_refused(&store, prefix).await;
    renew_after_expiry_fails(&store, prefix).await;
    renew_many_answers_per_lease(&store, prefix).await;
    inspect_is_truthful(&store, prefix).await;
    list_by_prefix(&store, prefix).await;
    cleanup_count(&store, prefix).await;
    wait_timeout_names_holder(&store, prefix).await;
    dropped_acquire_never_outlives_ttl(&store, prefix).await;
    bad_input_is_rejected(&store, prefix).await;
    guard_renews_and_reports_loss(&store, prefix).await;
    take_over_fences_off_the_holder(&store, prefix).await;
    take_over_reaches_the_holder_at_once(&store, prefix).await;
    watch_reports_changes_made_right_after_it(&store, &store, prefix).await;
    semaphore_admits_n_holders(&store, prefix).await;
    fair_lock_serves_in_arrival_order(&store, prefix).await;
    election_has_one_leader(&store, prefix).await;
    rw_lock_shares_reads_and_serves_writers_first(&store, prefix).await;
    multi_lock_takes_all_or_none(&store, prefix).await;
}

/// How much longer than its TTL a lease may hold its key on `store`, beyond what a
/// millisecond store allows: the TTL rounded up to the store's
/// [`lease_resolution`](LockStore::lease_resolution), plus one step (nothing on a
/// millisecond store).
pub(super) fn coarse_extra(store: &dyn LockStore, ttl: std::time::Duration) -> std::time::Duration {
    let step = store.lease_resolution();
    if step <= std::time::Duration::from_millis(1) {
        return std::time::Duration::ZERO;
    }
    let steps = ttl.as_nanos().div_ceil(step.as_nanos());
    let rounded = step * u32::try_from(steps).unwrap_or(u32::MAX);
    rounded.saturating_sub(ttl) + step
}

pub(super) fn key(prefix: &str, name: &str) -> String {
    format!("{prefix}:{name}")
}
