//! The demo's leader: one instance at a time, across every process on the stores, runs the
//! leader's job, appending a line to the session `demo-leader-log` every 20 ms with its
//! leadership's fence, which the session store checks (with `--unfenced`, without it).
//! Each process runs two candidates for the election `demo-leader`, each on a thread and a
//! runtime of its own (so a pause stops its renewals too). With chaos, a leader is killed
//! (it stops leading without resigning, as a crashed process would, and campaigns again
//! later) and another is paused past its lease (its thread stops dead), then writes once
//! on waking, before it looks at its leadership: the store's fence must refuse that write.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use conc_lock_store::{Election, ElectionConfig};
use conc_session::{Message, Role, SessionError};

use super::{Demo, bump};

/// The session the leaders write to.
pub(super) const LOG: &str = "demo-leader-log";

/// The election's timing: short, so a run of a few seconds sees leaders come and go.
fn timing() -> ElectionConfig {
    ElectionConfig::new(
        Duration::from_millis(600),
        Duration::from_millis(400),
        Duration::from_millis(150),
    )
}

/// What a candidate does once it leads for a while.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    Kill,
    Pause,
}

impl Demo {
    /// Runs this process's two candidates until `stop_at`, each on a thread of its own.
    pub(super) async fn leaders(self: Arc<Self>, stop_at: tokio::time::Instant) {
        let threads: Vec<_> = (0..2)
            .map(|n| {
                let demo = self.clone();
                std::thread::Builder::new()
                    .name(format!("demo-candidate-{n}"))
                    .spawn(move || {
                        let runtime = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build();
                        match runtime {
                            Ok(runtime) => runtime.block_on(demo.candidate(n, stop_at)),
                            Err(error) => demo.error("a leader candidate's runtime", &error),
                        }
                    })
            })
            .collect();
        for thread in threads {
            match thread {
                Ok(thread) => {
                    let joined = tokio::task::spawn_blocking(move || thread.join()).await;
                    if !matches!(joined, Ok(Ok(()))) {
                        self.error("a leader candidate", &"its thread panicked");
                    }
                }
                Err(error) => self.error("starting a leader candidate", &error),
            }
        }
    }

    /// Which fault, if any, the candidate that just took the lead plays.
    fn leader_fault(&self, stop_at: tokio::time::Instant) -> Fault {
        if !self.options.chaos {
            return Fault::None;
        }
        let left = stop_at.saturating_duration_since(tokio::time::Instant::now());
        if !self.leader_killed.swap(true, Ordering::Relaxed) {
            return Fault::Kill;
        }
        // A pause needs the lease and a successor's writes before the run ends.
        if left > timing().lease_duration * 3 && !self.leader_paused.swap(true, Ordering::Relaxed) {
            return Fault::Pause;
        }
        Fault::None
    }

    /// One candidate: campaigns, leads (writing every 20 ms) until it loses the lead or the
    /// run ends, and campaigns again.
    async fn candidate(self: Arc<Self>, n: usize, stop_at: tokio::time::Instant) {
        let locks = self.manager.context().locks.clone();
        let election = match Election::new(locks, "demo-leader", timing()) {
            Ok(election) => election,
            Err(error) => return self.error("the demo's election", &error),
        };
        let identity = format!("{}-candidate-{n}", self.instance);
        let mut line = 0u64;
        while tokio::time::Instant::now() < stop_at {
            let campaign = tokio::time::timeout_at(stop_at, election.campaign(&identity)).await;
            let leadership = match campaign {
                Err(_) => return,
                Ok(Ok(leadership)) => leadership,
                Ok(Err(error)) => {
                    self.error("campaigning for the demo's leader", &error);
                    tokio::time::sleep(timing().retry_period).await;
                    continue;
                }
            };
            bump(&self.counters.leader_terms);
            let fence = leadership.fence();
            let fault = self.leader_fault(stop_at);
            let led = tokio::time::Instant::now();
            let mut paused = false;
            loop {
                if tokio::time::Instant::now() >= stop_at {
                    let _ = leadership.resign().await;
                    return;
                }
                if fault == Fault::Kill && led.elapsed() >= Duration::from_millis(200) {
                    // A crash: no resignation; the lease runs out by itself.
                    bump(&self.counters.leaders_killed);
                    drop(leadership);
                    tokio::time::sleep(timing().lease_duration).await;
                    break;
                }
                if fault == Fault::Pause && !paused && led.elapsed() >= Duration::from_millis(200) {
                    // The whole thread stops, renewals included, past the lease; on waking
                    // it writes once before it looks at its leadership.
                    bump(&self.counters.leaders_paused);
                    paused = true;
                    std::thread::sleep(timing().lease_duration + Duration::from_millis(300));
                } else if leadership.lost().is_aborted() {
                    break;
                }
                line += 1;
                let id = format!("{identity}-{line}");
                if let Err(error) = self.leader_write(&id, fence).await {
                    self.error("the leader's write", &error);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Appends one line of the leader's job to the log, with `fence` (checked by the
    /// session store) unless `--unfenced`.
    async fn leader_write(&self, id: &str, fence: u64) -> Result<(), SessionError> {
        let mut message = Message::new(id, Role::System, "the leader's job ran");
        message.fence = Some(fence);
        let checked = (!self.options.unfenced).then_some(fence);
        match self
            .manager
            .context()
            .sessions
            .append(LOG, &message, checked)
            .await
        {
            Ok(_) => {
                bump(&self.counters.leader_writes);
                Ok(())
            }
            Err(SessionError::StaleFence { .. }) => {
                bump(&self.counters.leader_writes_refused);
                Ok(())
            }
            Err(error) => Err(error),
        }
    }
}
