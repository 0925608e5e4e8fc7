//! [`Election`]: one leader at a time among the instances of a service, on any
//! [`LockStore`], with a fence the leader's work carries.
//!
//! The leader is the holder of the lock `election:<name>`. A candidate campaigns by
//! waiting for that lock (notified through the store's watch, as a waiter of a lock is),
//! and leads while its [`LockGuard`] renews it. Leadership ends when the candidate resigns
//! (the lock is released at once), when renewals fail for longer than the renew deadline
//! ([`Leadership::lost`] fires then, before the lease can lapse in the store), or when an
//! operator takes the lock over or frees it (the guard's watch tells at once).
//!
//! Unlike client-go's `leaderelection` (whose documentation says it "does not guarantee
//! that only one client is acting as a leader (a.k.a. fencing)"), every leadership has a
//! fence: the lock's, strictly increasing from one leader to the next. Send it with each
//! write of the leader's work, to a resource that refuses older fences, and a deposed
//! leader that has not noticed yet (a paused process) cannot overwrite its successor.
//!
//! The timing is client-go's: a lease of `lease_duration`; the leader counts its
//! leadership lost when no renewal succeeded for `renew_deadline`; candidates look again
//! at least every `retry_period` besides the store's notifications. As client-go checks,
//! `lease_duration > renew_deadline > 1.2 × retry_period`; the gap between
//! `lease_duration` and `renew_deadline` is the clock-rate tolerance: a deposed leader
//! stops `lease_duration − renew_deadline` before any other candidate can win, so clocks
//! may run that much apart over one lease (client-go's defaults, 15 s, 10 s and 2 s, allow
//! a third).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use conc_core::AbortSignal;

use crate::error::LockError;
use crate::notify::LockWatch;
use crate::recipe::guard::LockGuard;
use crate::request::{LockRequest, validate_key};
use crate::store::LockStore;

/// The timing of an [`Election`], as client-go's `LeaderElectionConfig` has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ElectionConfig {
    /// The leader's lease: how long after the leader's last renewal another candidate may
    /// win (default 15 s).
    pub lease_duration: Duration,
    /// How long the leader goes on leading without a successful renewal (default 10 s).
    pub renew_deadline: Duration,
    /// How often a candidate looks again besides the store's notifications (default 2 s).
    pub retry_period: Duration,
}

impl Default for ElectionConfig {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

impl ElectionConfig {
    /// A configuration of the three durations; checked by [`Election::new`].
    pub fn new(lease_duration: Duration, renew_deadline: Duration, retry_period: Duration) -> Self {
        Self {
            lease_duration,
            renew_deadline,
            retry_period,
        }
    }

    /// Checks it as client-go does: `lease_duration > renew_deadline >
    /// 1.2 × retry_period > 0`.
    pub fn validate(&self) -> Result<(), LockError> {
        let bad = |reason: String| Err(LockError::InvalidElection { reason });
        if self.retry_period.is_zero() {
            return bad("retry_period must be more than zero".into());
        }
        if self.lease_duration <= self.renew_deadline {
            return bad(format!(
                "lease_duration ({:?}) must be longer than renew_deadline ({:?}): the difference is how far the candidates' clocks may drift apart over one lease",
                self.lease_duration, self.renew_deadline
            ));
        }
        if self.renew_deadline <= self.retry_period.mul_f64(1.2) {
            return bad(format!(
                "renew_deadline ({:?}) must be longer than 1.2 × retry_period ({:?}), so the leader can retry a failed renewal in time",
                self.renew_deadline, self.retry_period
            ));
        }
        Ok(())
    }
}

/// Who leads an election now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// The leader's identity, as it campaigned.
    pub identity: String,
    /// Its leadership's fence.
    pub fence: u64,
    /// When it took the lead (the store's clock).
    pub since: SystemTime,
}

/// An election on a [`LockStore`]: one leader at a time, with a fence.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use conc_lock_store::{Election, ElectionConfig, LockStore, MemoryLockStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), conc_lock_store::LockError> {
/// let store: Arc<dyn LockStore> = Arc::new(MemoryLockStore::new());
/// let election = Election::new(store, "cleanup", ElectionConfig::default())?;
/// let leadership = election.campaign("server-a").await?;
/// assert_eq!(election.leader().await?.map(|l| l.identity), Some("server-a".into()));
/// // ... the once-per-cluster job, sending leadership.fence() with its writes and
/// // stopping when leadership.lost() fires ...
/// leadership.resign().await?;
/// assert!(election.leader().await?.is_none());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Election {
    store: Arc<dyn LockStore>,
    name: String,
    config: ElectionConfig,
}

/// This instance's leadership: held until [`resign`](Self::resign)ed, dropped, or lost.
#[derive(Debug)]
pub struct Leadership {
    guard: LockGuard,
    identity: String,
}

impl Leadership {
    /// The fence of this leadership: send it with every write of the leader's work.
    pub fn fence(&self) -> u64 {
        self.guard.fence()
    }

    /// The identity this instance campaigned with.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Fires when the leadership is lost: no renewal succeeded for the renew deadline, or
    /// the lock was taken over or freed by force. Stop the leader's work then.
    pub fn lost(&self) -> AbortSignal {
        self.guard.lost()
    }

    /// Whether this instance still leads, by its own clock.
    pub fn is_leading(&self) -> bool {
        self.guard.is_valid()
    }

    /// Gives the leadership up at once (the lock is released, so a waiting candidate wins
    /// without waiting out the lease). `Ok(false)` if it was already lost.
    ///
    /// # Cancel safety
    ///
    /// As [`LockGuard::release`]: if dropped, the lease runs out by itself.
    pub async fn resign(self) -> Result<bool, LockError> {
        self.guard.release().await
    }
}

impl Election {
    /// An election named `name` on `store`, with `config` checked
    /// ([`ElectionConfig::validate`]).
    pub fn new(
        store: Arc<dyn LockStore>,
        name: impl Into<String>,
        config: ElectionConfig,
    ) -> Result<Self, LockError> {
        config.validate()?;
        let name = name.into();
        validate_key(&format!("election:{name}"))?;
        Ok(Self {
            store,
            name,
            config,
        })
    }

    /// The lock whose holder leads: `election:<name>`.
    pub fn key(&self) -> String {
        format!("election:{}", self.name)
    }

    /// The election's timing.
    pub fn config(&self) -> ElectionConfig {
        self.config
    }

    fn request(&self, identity: &str) -> LockRequest {
        LockRequest::new(self.key(), identity, self.config.lease_duration)
    }

    fn lead(&self, lease: crate::lease::Lease, identity: &str) -> Leadership {
        let margin = self.config.lease_duration - self.config.renew_deadline;
        Leadership {
            guard: LockGuard::with_margin(self.store.clone(), lease, margin),
            identity: identity.to_owned(),
        }
    }

    /// Leads now if nobody does: `Ok(None)` otherwise.
    ///
    /// # Cancel safety
    ///
    /// A dropped call may leave a lease nobody renews: it runs out after `lease_duration`.
    pub async fn try_campaign(&self, identity: &str) -> Result<Option<Leadership>, LockError> {
        let lease = self.store.try_acquire(&self.request(identity)).await?;
        Ok(lease.map(|lease| self.lead(lease, identity)))
    }

    /// Waits until this instance leads (told at once when the leader resigns or is
    /// deposed; otherwise it looks again every `retry_period`, which covers a leader whose
    /// lease ran out). A store error ends the wait: campaign again (or use
    /// [`run`](Self::run), which does).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe for the leadership: drop the future to stop campaigning; a lock won at
    /// that moment is left to run out after `lease_duration`.
    pub async fn campaign(&self, identity: &str) -> Result<Leadership, LockError> {
        let request = self.request(identity);
        loop {
            match self.store.acquire(&request, self.config.retry_period).await {
                Ok(lease) => return Ok(self.lead(lease, identity)),
                Err(LockError::Timeout { .. }) => continue,
                Err(error) => return Err(error),
            }
        }
    }

    /// Who leads now, if anyone.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn leader(&self) -> Result<Option<Leader>, LockError> {
        Ok(self.store.inspect(&self.key()).await?.map(|info| Leader {
            identity: info.owner,
            fence: info.fence,
            since: info.acquired_at,
        }))
    }

    /// Leadership changes as they happen: see [`Observer::next`].
    pub fn observe(&self) -> Observer {
        Observer {
            election: self.clone(),
            watch: self.store.watch(&self.key()),
            last: None,
            started: false,
        }
    }

    /// Campaigns, runs `work` while leading, and campaigns again when the leadership is
    /// lost (client-go's `RunOrDie` with Curator's auto-requeue), until `shutdown` fires.
    ///
    /// `work` gets the [`Leadership`]'s fence and its `lost` signal; the future it returns
    /// is dropped the moment the leadership is lost (and should watch the signal at its own
    /// await points too). When the work ends by itself, the leadership is resigned and
    /// `run` returns. When `shutdown` fires, the work is dropped and the leadership
    /// resigned at once, so the next leader need not wait out the lease (client-go's
    /// `ReleaseOnCancel`). A store error while campaigning is logged and the campaign
    /// tried again after `retry_period`.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops the work and the leadership without resigning: the lease
    /// runs out after `lease_duration`. Prefer firing `shutdown`.
    pub async fn run<F, Fut>(
        &self,
        identity: &str,
        shutdown: &AbortSignal,
        mut work: F,
    ) -> Result<(), LockError>
    where
        F: FnMut(u64, AbortSignal) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        loop {
            let leadership = tokio::select! {
                _ = shutdown.aborted() => return Ok(()),
                outcome = self.campaign(identity) => match outcome {
                    Ok(leadership) => leadership,
                    Err(error) => {
                        tracing::warn!(election = %self.name, %error, "campaigning failed; trying again");
                        tokio::select! {
                            _ = shutdown.aborted() => return Ok(()),
                            () = tokio::time::sleep(self.config.retry_period) => continue,
                        }
                    }
                },
            };
            let lost = leadership.lost();
            tracing::info!(election = %self.name, identity, fence = leadership.fence(), "leading");
            let outcome = tokio::select! {
                () = work(leadership.fence(), lost.clone()) => Some(true),
                _ = lost.aborted() => None,
                _ = shutdown.aborted() => Some(false),
            };
            match outcome {
                // The work ended by itself: hand the lead on.
                Some(true) => {
                    leadership.resign().await?;
                    return Ok(());
                }
                Some(false) => {
                    tracing::info!(election = %self.name, identity, "shutting down: resigning");
                    leadership.resign().await?;
                    return Ok(());
                }
                None => {
                    tracing::warn!(election = %self.name, identity, "leadership lost; campaigning again");
                }
            }
        }
    }
}

/// Leadership changes of an [`Election`], from [`Election::observe`].
#[derive(Debug)]
pub struct Observer {
    election: Election,
    watch: Option<LockWatch>,
    last: Option<(String, u64)>,
    started: bool,
}

impl Observer {
    /// The next change of leadership: the new leader, or `None` when nobody leads. The
    /// first call returns the leadership as it is. Notified by the store's watch, and
    /// looked at again every `retry_period` (a lease that ran out sends no notification).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a change seen by a dropped call is reported by the next.
    pub async fn next(&mut self) -> Result<Option<Leader>, LockError> {
        loop {
            let leader = self.election.leader().await?;
            let now = leader.as_ref().map(|l| (l.identity.clone(), l.fence));
            if !self.started || now != self.last {
                self.started = true;
                self.last = now;
                return Ok(leader);
            }
            let pause = tokio::time::sleep(self.election.config.retry_period);
            match &mut self.watch {
                Some(watch) => {
                    if leader.is_some() {
                        crate::store::announce(
                            &*self.election.store,
                            &self.election.key(),
                            self.election.config.lease_duration,
                        )
                        .await;
                    }
                    tokio::select! {
                        () = pause => {}
                        () = watch.changed() => {}
                    }
                }
                None => pause.await,
            }
        }
    }
}
