//! [`RetryBudget`]: retries as a share of traffic, so a failing dependency cannot be
//! hammered with a multiple of its normal load (Finagle's retry budget, gRPC's retry
//! throttling).
//!
//! Every request [`deposit`](RetryBudget::deposit)s; every retry
//! [`try_withdraw`](RetryBudget::try_withdraw)s. Within the last `ttl`, retries may reach
//! `ratio` of the requests (0.2: one retry for every five requests), plus
//! `min_per_second × ttl` so that low traffic can still retry.

use std::fmt;
use std::time::Duration;

use crate::time::Instant;

/// A budget that cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum BudgetError {
    /// `ttl` outside 1 s ..= 60 s.
    #[error("ttl must be between 1 s and 60 s, got {0:?}")]
    BadTtl(Duration),
    /// A negative or non-finite ratio.
    #[error("the retry ratio must be a finite fraction of at least 0 (0.2 for 20%), got {0}")]
    BadPercent(f64),
}

/// A token bucket shared by every call to one dependency. Cheap to clone.
///
/// ```
/// use std::time::Duration;
/// use conc_retry::RetryBudget;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// // Retries up to 20% of requests, plus 1 per second of the 10 s window.
/// let budget = RetryBudget::new(Duration::from_secs(10), 1, 0.2).unwrap();
/// for _ in 0..100 {
///     budget.deposit();
/// }
/// let allowed = (0..100).filter(|_| budget.try_withdraw()).count();
/// assert_eq!(allowed, 20 + 10);
/// # }
/// ```
#[derive(Clone)]
pub struct RetryBudget {
    inner: std::sync::Arc<parking_lot::Mutex<Window>>,
    percent: f64,
    reserve: f64,
}

struct Window {
    epoch: Instant,
    /// Per-second buckets of (deposits, withdrawals), `ttl` seconds long.
    buckets: Vec<(u64, u64)>,
    /// The second the newest bucket belongs to.
    second: u64,
}

impl Window {
    fn advance(&mut self) {
        let now = self.epoch.elapsed().as_secs();
        let len = self.buckets.len() as u64;
        if now > self.second {
            let stale = (now - self.second).min(len);
            for k in 1..=stale {
                let index = ((self.second + k) % len) as usize;
                self.buckets[index] = (0, 0);
            }
            self.second = now;
        }
    }

    fn current(&mut self) -> &mut (u64, u64) {
        let index = (self.second % self.buckets.len() as u64) as usize;
        &mut self.buckets[index]
    }

    fn totals(&self) -> (u64, u64) {
        self.buckets
            .iter()
            .fold((0, 0), |(d, w), (bd, bw)| (d + bd, w + bw))
    }
}

impl RetryBudget {
    /// Retries up to `ratio` of the requests of the last `ttl` (1–60 s), plus
    /// `min_per_second` per second of it. `ratio` is a fraction, not a percentage: 0.2
    /// allows one retry for every five requests (20%), 1.0 one for each.
    pub fn new(ttl: Duration, min_per_second: u32, ratio: f64) -> Result<Self, BudgetError> {
        let percent = ratio;
        if ttl < Duration::from_secs(1) || ttl > Duration::from_secs(60) {
            return Err(BudgetError::BadTtl(ttl));
        }
        if !percent.is_finite() || percent < 0.0 {
            return Err(BudgetError::BadPercent(percent));
        }
        let seconds = ttl.as_secs();
        Ok(Self {
            inner: std::sync::Arc::new(parking_lot::Mutex::new(Window {
                epoch: Instant::now(),
                buckets: vec![(0, 0); seconds as usize],
                second: 0,
            })),
            percent,
            reserve: f64::from(min_per_second) * seconds as f64,
        })
    }

    /// Records a request (a first attempt).
    pub fn deposit(&self) {
        let mut window = self.inner.lock();
        window.advance();
        window.current().0 += 1;
    }

    /// Takes one retry from the budget; `false` when the budget is spent.
    pub fn try_withdraw(&self) -> bool {
        let mut window = self.inner.lock();
        window.advance();
        let (deposits, withdrawals) = window.totals();
        let allowed = deposits as f64 * self.percent + self.reserve;
        if (withdrawals as f64) + 1.0 <= allowed {
            window.current().1 += 1;
            true
        } else {
            false
        }
    }

    /// Retries left now.
    pub fn balance(&self) -> u64 {
        let mut window = self.inner.lock();
        window.advance();
        let (deposits, withdrawals) = window.totals();
        (deposits as f64 * self.percent + self.reserve - withdrawals as f64).max(0.0) as u64
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("percent", &self.percent)
            .field("reserve", &self.reserve)
            .field("balance", &self.balance())
            .finish()
    }
}
