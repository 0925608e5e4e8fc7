//! Several processes on one store: 4 children contend for 500 acquisitions in all; one is
//! killed with SIGKILL while it holds the lock. Expected: no overlap, no stale write
//! accepted, the lock recovered within the TTL plus a small margin. Then a holder is paused
//! with SIGSTOP past its TTL while another process takes the lock and writes; on SIGCONT
//! its `lost()` has fired before it can write again. Then an election among 3 processes
//! whose leader writes with its leadership's fence: the leader is killed (SIGKILL), the
//! next one paused (SIGSTOP) and resumed; a new leader takes over each time, and the
//! resource accepts no write of an older leadership after a newer one's. Run on a SQLite file, and on
//! PostgreSQL (straight, and through a private PgBouncer in transaction mode) and Redis
//! when their test URLs are set, on a private Redis Cluster, and on a private etcd cluster
//! with the `etcd` feature.
//!
//! A `harness = false` test: the same binary is the parent and, with `CONC_LOCK_CHILD`
//! set, each child.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use conc_lock_store::conformance::{FenceError, FencedFile};
use std::sync::Arc;

use conc_lock_store::{LockGuard, LockRequest, LockStore, SqliteLockStore};

const CHILDREN: usize = 4;
const TOTAL: u64 = 500;
const TTL: Duration = Duration::from_millis(1000);
const VICTIM_AFTER: u64 = 3;
const KEY: &str = "conversation:processes";
const PAUSED_KEY: &str = "conversation:paused";
const PAUSED_TTL: Duration = Duration::from_millis(800);

fn millis() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

fn log(path: &Path, line: String) {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("log");
    file.write_all(format!("{line}\n").as_bytes())
        .expect("log write");
}

/// The URL of the private Redis Cluster the parent started (`redis-cluster` runs).
static CLUSTER_URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
/// The URL of the private etcd cluster the parent started (`etcd` runs).
static ETCD_URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
/// The URL of the private PgBouncer (transaction mode) in front of the test database.
static BOUNCER_URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The cluster's URL: the parent's, or the one a child was given.
#[cfg(feature = "redis")]
fn cluster_url() -> String {
    CLUSTER_URL
        .get()
        .cloned()
        .or_else(|| std::env::var("CONC_LOCK_CLUSTER_URL").ok())
        .expect("the cluster's URL")
}

/// Opens the store a run uses: `sqlite`, `postgres` or `redis`, isolated by `scope`.
async fn open(backend: &str, dir: &Path, scope: &str) -> Arc<dyn LockStore> {
    match backend {
        #[cfg(feature = "postgres")]
        "postgres" => {
            let url = std::env::var("CONC_TEST_POSTGRES_URL").expect("url");
            let config = conc_lock_store::PostgresConfig::default().with_schema(scope.to_owned());
            Arc::new(
                conc_lock_store::PostgresLockStore::connect(&url, config)
                    .await
                    .expect("connect"),
            )
        }
        #[cfg(feature = "postgres")]
        "postgres-pgbouncer" => {
            let url = BOUNCER_URL
                .get()
                .cloned()
                .or_else(|| std::env::var("CONC_LOCK_BOUNCER_URL").ok())
                .expect("the PgBouncer's URL");
            let config = conc_lock_store::PostgresConfig::default()
                .with_schema(scope.to_owned())
                .with_pool_mode(conc_lock_store::PostgresPoolMode::Transaction);
            Arc::new(
                conc_lock_store::PostgresLockStore::connect(&url, config)
                    .await
                    .expect("connect"),
            )
        }
        #[cfg(feature = "redis")]
        "redis" | "redis-cluster" => {
            let url = if backend == "redis" {
                std::env::var("CONC_TEST_REDIS_URL").expect("url")
            } else {
                cluster_url()
            };
            let config = conc_lock_store::RedisConfig::default().with_prefix(format!("{scope}:"));
            Arc::new(
                conc_lock_store::RedisLockStore::connect(&url, config)
                    .await
                    .expect("connect"),
            )
        }
        #[cfg(feature = "etcd")]
        "etcd" => {
            let url = ETCD_URL
                .get()
                .cloned()
                .or_else(|| std::env::var("CONC_LOCK_ETCD_URL").ok())
                .expect("the etcd cluster's URL");
            let config = conc_lock_store::EtcdConfig::default().with_prefix(format!("{scope}/"));
            Arc::new(
                conc_lock_store::EtcdLockStore::connect(&url, config)
                    .await
                    .expect("connect"),
            )
        }
        _ => {
            let _ = scope;
            Arc::new(
                SqliteLockStore::open(dir.join("locks.db"))
                    .await
                    .expect("open"),
            )
        }
    }
}

fn child(dir: PathBuf, victim: bool) -> ExitCode {
    let backend = std::env::var("CONC_LOCK_BACKEND").unwrap_or_default();
    let scope = std::env::var("CONC_LOCK_SCOPE").unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = open(&backend, &dir, &scope).await;
        let fenced = FencedFile::new(dir.join("resource"));
        let counter = dir.join("count");
        let events = dir.join("events.log");
        let pid = std::process::id();
        let mut mine = 0;
        loop {
            let request = LockRequest::new(KEY, format!("pid-{pid}"), TTL);
            let lease = store
                .acquire(&request, Duration::from_secs(60))
                .await
                .expect("acquire");
            let count: u64 = std::fs::read_to_string(&counter)
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(0);
            if count >= TOTAL {
                store.release(&lease).await.expect("release");
                return ExitCode::SUCCESS;
            }
            log(&events, format!("enter {pid} {} {}", lease.fence, millis()));
            if let Err(e) = fenced.write(lease.fence) {
                eprintln!("child {pid}: fenced write refused: {e}");
                return ExitCode::FAILURE;
            }
            std::fs::write(&counter, (count + 1).to_string()).expect("count");
            mine += 1;
            if victim && mine == VICTIM_AFTER {
                log(
                    &events,
                    format!("victim {pid} {} {}", lease.fence, millis()),
                );
                std::fs::write(dir.join("victim-holding"), lease.fence.to_string())
                    .expect("marker");
                // Hold the lock until the parent kills us.
                std::thread::sleep(Duration::from_secs(3600));
            }
            log(&events, format!("exit {pid} {} {}", lease.fence, millis()));
            store.release(&lease).await.expect("release");
            // Step back a moment so that the others (the victim too) get their turns:
            // polling acquirers would otherwise lose to whoever just released.
            tokio::time::sleep(Duration::from_millis(2 + u64::from(pid % 3))).await;
        }
    })
}

/// The paused holder: holds the lock and writes with its fence every few ms, checking the
/// guard first, until it sees the loss (or the resource refuses it).
fn paused_child(dir: PathBuf) -> ExitCode {
    let backend = std::env::var("CONC_LOCK_BACKEND").unwrap_or_default();
    let scope = std::env::var("CONC_LOCK_SCOPE").unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = open(&backend, &dir, &scope).await;
        let fenced = FencedFile::new(dir.join("paused-resource"));
        let outcome = dir.join("paused.log");
        let request = LockRequest::new(
            PAUSED_KEY,
            format!("pid-{}", std::process::id()),
            PAUSED_TTL,
        );
        let guard = LockGuard::acquire(store, request, Duration::from_secs(10))
            .await
            .expect("acquire");
        std::fs::write(dir.join("paused-ready"), guard.fence().to_string()).expect("ready");
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if guard.lost().is_aborted() {
                log(&outcome, "lost".into());
                return ExitCode::SUCCESS;
            }
            match guard.check() {
                Err(_) => {
                    log(&outcome, "lost".into());
                    return ExitCode::SUCCESS;
                }
                Ok(fence) => match fenced.write(fence) {
                    Ok(()) => {}
                    Err(FenceError::Stale { .. }) => {
                        log(&outcome, "refused".into());
                        return ExitCode::SUCCESS;
                    }
                    Err(e) => panic!("resource: {e}"),
                },
            }
            // Most of the time asleep: a SIGSTOP lands here, not between check and write.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        log(&outcome, "never-lost".into());
        ExitCode::FAILURE
    })
}

/// Pauses a holder with SIGSTOP past its TTL, lets another process take the lock and write,
/// resumes it: it must see the loss before it writes (or, had the pause landed between its
/// check and its write, have the write refused by the fence).
/// This binary as a child on `backend` in `scope`, working in `dir`, with the URLs of the
/// private servers the parent started.
fn child_command(exe: &Path, dir: &Path, backend: &str, scope: &str) -> Command {
    let mut command = Command::new(exe);
    command
        .env("CONC_LOCK_CHILD", dir)
        .env("CONC_LOCK_BACKEND", backend)
        .env("CONC_LOCK_SCOPE", scope)
        .env(
            "CONC_LOCK_CLUSTER_URL",
            CLUSTER_URL.get().map_or("", String::as_str),
        )
        .env(
            "CONC_LOCK_BOUNCER_URL",
            BOUNCER_URL.get().map_or("", String::as_str),
        )
        .env(
            "CONC_LOCK_ETCD_URL",
            ETCD_URL.get().map_or("", String::as_str),
        );
    command
}

fn paused_holder(backend: &str, scope: &str) -> Result<bool, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = child_command(&exe, dir.path(), backend, scope)
        .env("CONC_LOCK_PAUSED", "1")
        .spawn()
        .map_err(|e| e.to_string())?;
    let ready = dir.path().join("paused-ready");
    let started = Instant::now();
    while !ready.exists() {
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            return Err("the paused holder never held the lock".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(50));
    let signal = |name: &str| {
        Command::new("kill")
            .args([name, &child.id().to_string()])
            .status()
            .map_err(|e| format!("kill {name}: {e}"))
    };
    signal("-STOP")?;
    std::thread::sleep(PAUSED_TTL + Duration::from_millis(400));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let taken = runtime.block_on(async {
        let store = open(backend, dir.path(), scope).await;
        let lease = store
            .acquire(
                &LockRequest::new(PAUSED_KEY, "successor", Duration::from_secs(5)),
                Duration::from_secs(5),
            )
            .await
            .map_err(|e| format!("the successor never got the lock: {e}"))?;
        Ok::<_, String>(lease.fence)
    });
    // The successor writes while the holder is still stopped. The holder may have been
    // stopped inside its own write, holding the resource's file lock: then the successor's
    // write waits for it, so it runs on a thread of its own.
    let resource = dir.path().join("paused-resource");
    let writer = taken.clone().map(|fence| {
        std::thread::spawn(move || {
            FencedFile::new(resource)
                .write(fence)
                .map_err(|e| format!("the successor's write was refused: {e}"))
        })
    });
    std::thread::sleep(Duration::from_millis(100));
    signal("-CONT")?;
    let taken = taken?;
    writer?
        .join()
        .map_err(|_| "the successor's writer panicked".to_owned())??;
    let status = child.wait().map_err(|e| e.to_string())?;
    let outcome = std::fs::read_to_string(dir.path().join("paused.log")).unwrap_or_default();
    let highest = FencedFile::new(dir.path().join("paused-resource"))
        .highest()
        .map_err(|e| e.to_string())?;
    if !status.success() || highest != taken {
        return Err(format!(
            "the paused holder went on writing: {outcome:?}, resource at {highest}, successor {taken}"
        ));
    }
    match outcome.trim() {
        "lost" => Ok(true),
        // The pause landed between its check and its write: the fence refused the write.
        "refused" => Ok(false),
        other => Err(format!("unexpected outcome of the paused holder: {other}")),
    }
}

struct Event {
    kind: String,
    pid: u32,
    fence: u64,
    at: u128,
}

/// Runs the test on `backend` and removes its schema or keys, whatever the outcome.
fn parent(backend: &str) -> Result<(), String> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let scope = format!("conc_test_processes_{}_{nanos}", std::process::id());
    let outcome = contend(backend, &scope).and_then(|()| {
        // A pause that lands in the microseconds between the check and the write is
        // refused by the fence instead; try again then (it is rare).
        for _ in 0..3 {
            if paused_holder(backend, &scope)? {
                println!(
                    "lock_store_processes ({backend}): a holder paused past its TTL saw lost() fire before it could write"
                );
                return Ok(());
            }
        }
        Err("three paused holders wrote before lost() fired (the fence refused them)".into())
    })
    .and_then(|()| election(backend, &scope));
    cleanup(backend, &scope);
    outcome
}

fn contend(backend: &str, scope: &str) -> Result<(), String> {
    let scope = scope.to_owned();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(open(backend, dir.path(), &scope));
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut children: Vec<_> = (0..CHILDREN)
        .map(|i| {
            child_command(&exe, dir.path(), backend, &scope)
                .env("CONC_LOCK_VICTIM", if i == 0 { "1" } else { "0" })
                .spawn()
                .expect("spawn child")
        })
        .collect();
    // Kill the victim while it holds the lock.
    let marker = dir.path().join("victim-holding");
    while !marker.exists() {
        if started.elapsed() > Duration::from_secs(60) {
            return Err("the victim never held the lock".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    children[0].kill().map_err(|e| e.to_string())?; // SIGKILL
    let killed_at = millis();
    children[0].wait().map_err(|e| e.to_string())?;
    for child in &mut children[1..] {
        let status = child.wait().map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("a child failed: {status}"));
        }
    }
    let count = std::fs::read_to_string(dir.path().join("count")).map_err(|e| e.to_string())?;
    if count.trim() != TOTAL.to_string() {
        return Err(format!(
            "{count} acquisitions counted, expected {TOTAL}: an update was lost"
        ));
    }
    let text = std::fs::read_to_string(dir.path().join("events.log")).map_err(|e| e.to_string())?;
    let events: Vec<Event> = text
        .lines()
        .map(|l| {
            let p: Vec<&str> = l.split(' ').collect();
            Event {
                kind: p[0].into(),
                pid: p[1].parse().unwrap(),
                fence: p[2].parse().unwrap(),
                at: p[3].parse().unwrap(),
            }
        })
        .collect();
    // No overlap: every enter is followed by its own exit (or the victim's mark) before the
    // next enter; fences strictly increase.
    let mut holder: Option<&Event> = None;
    let mut last_fence = 0;
    let mut victim: Option<&Event> = None;
    let mut recovered_at = None;
    for event in &events {
        match event.kind.as_str() {
            "enter" => {
                if let Some(h) = holder {
                    return Err(format!(
                        "overlap: pid {} entered (fence {}) while pid {} held fence {}",
                        event.pid, event.fence, h.pid, h.fence
                    ));
                }
                if event.fence <= last_fence {
                    return Err(format!("fence {} after {last_fence}", event.fence));
                }
                last_fence = event.fence;
                holder = Some(event);
                if let Some(v) = victim
                    && recovered_at.is_none()
                {
                    // The lease began a little before the victim logged it (and the
                    // server's clock may differ by a few ms): allow 100 ms of slack.
                    if event.at + 100 < v.at + TTL.as_millis() {
                        return Err("the victim's lock was taken before its TTL".into());
                    }
                    recovered_at = Some(event.at);
                }
            }
            "exit" => holder = None,
            "victim" => {
                victim = Some(event);
                holder = None; // it holds until its lease expires; checked above
            }
            other => return Err(format!("unknown event {other}")),
        }
    }
    let victim = victim.ok_or("no victim event")?;
    let recovered_at = recovered_at.ok_or("nobody acquired after the victim")?;
    let recovery = recovered_at.saturating_sub(killed_at.max(victim.at));
    if recovered_at > victim.at + TTL.as_millis() + 1500 {
        return Err(format!(
            "recovered {recovery} ms after the kill; the TTL is {} ms",
            TTL.as_millis()
        ));
    }
    // The killed holder's fence is stale now.
    let fenced = FencedFile::new(dir.path().join("resource"));
    match fenced.write(victim.fence) {
        Err(FenceError::Stale { .. }) => {}
        other => {
            return Err(format!(
                "the victim's stale fence was not refused: {other:?}"
            ));
        }
    }
    println!(
        "lock_store_processes ({backend}): {} acquisitions by {CHILDREN} processes, no overlap, fences increasing; \
         lock recovered {} ms after the holder was killed (TTL {} ms); stale fence refused",
        events.iter().filter(|e| e.kind == "enter").count(),
        recovered_at - victim.at,
        TTL.as_millis()
    );
    Ok(())
}

/// Leaves no rows or keys behind on the shared servers.
fn cleanup(backend: &str, scope: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        match backend {
            #[cfg(feature = "postgres")]
            "postgres" | "postgres-pgbouncer" => {
                let url = std::env::var("CONC_TEST_POSTGRES_URL").expect("url");
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .expect("admin");
                tokio::spawn(connection);
                client
                    .batch_execute(&format!("DROP SCHEMA \"{scope}\" CASCADE"))
                    .await
                    .expect("drop schema");
            }
            #[cfg(feature = "redis")]
            "redis" => {
                let url = std::env::var("CONC_TEST_REDIS_URL").expect("url");
                let mut admin = redis::Client::open(url.as_str())
                    .unwrap()
                    .get_multiplexed_async_connection()
                    .await
                    .expect("admin");
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{scope}:*"))
                    .query_async(&mut admin)
                    .await
                    .unwrap();
                if !keys.is_empty() {
                    let _: () = redis::cmd("DEL")
                        .arg(keys)
                        .query_async(&mut admin)
                        .await
                        .unwrap();
                }
            }
            _ => {}
        }
    });
}

/// The election's timing in the several-process test: a 1.5 s lease.
fn election_config() -> conc_lock_store::ElectionConfig {
    conc_lock_store::ElectionConfig::new(
        Duration::from_millis(1500),
        Duration::from_millis(1000),
        Duration::from_millis(300),
    )
}

/// A candidate: campaigns, and while leading writes its fence to the resource every
/// 10 ms, logging each write accepted (`write <pid> <fence> <ms>`) or refused.
fn election_child(dir: PathBuf) -> ExitCode {
    let backend = std::env::var("CONC_LOCK_BACKEND").unwrap_or_default();
    let scope = std::env::var("CONC_LOCK_SCOPE").unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = open(&backend, &dir, &scope).await;
        let election = conc_lock_store::Election::new(store, "processes", election_config())
            .expect("election");
        let pid = std::process::id();
        let never = conc_core::AbortController::new();
        let dir = &dir;
        let outcome = election
            .run(
                &format!("pid-{pid}"),
                &never.signal(),
                |fence, lost| async move {
                    let fenced = FencedFile::new(dir.join("election-resource"));
                    let events = dir.join("election.log");
                    while !lost.is_aborted() {
                        match fenced.write(fence) {
                            Ok(()) => log(&events, format!("write {pid} {fence} {}", millis())),
                            Err(_) => log(&events, format!("refused {pid} {fence} {}", millis())),
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
            )
            .await;
        match outcome {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("candidate {pid}: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// The accepted writes of the election log: (pid, fence, ms).
fn election_writes(dir: &Path) -> Vec<(u32, u64, u128)> {
    std::fs::read_to_string(dir.join("election.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            if parts.next()? != "write" {
                return None;
            }
            Some((
                parts.next()?.parse().ok()?,
                parts.next()?.parse().ok()?,
                parts.next()?.parse().ok()?,
            ))
        })
        .collect()
}

/// Three candidates; the leader is killed, the next leader paused and resumed. Each time a
/// new leader writes within the lease plus a few seconds, and the accepted writes' fences
/// never go back (each fence one leader's).
fn election(backend: &str, scope: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut children: Vec<std::process::Child> = (0..3)
        .map(|_| {
            child_command(&exe, dir.path(), backend, scope)
                .env("CONC_LOCK_ELECTION", "1")
                .spawn()
        })
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let signal = |pid: u32, name: &str| {
        Command::new("kill")
            .args([name, &pid.to_string()])
            .status()
            .map_err(|e| format!("kill {name}: {e}"))
    };
    // Waits for a write by a leader other than `not`, after `after` (ms); its pid and fence.
    let next_leader = |not: &[u32], after: u128| -> Result<(u32, u64, u128), String> {
        let started = Instant::now();
        loop {
            if let Some(write) = election_writes(dir.path())
                .into_iter()
                .find(|(pid, _, at)| !not.contains(pid) && *at > after)
            {
                return Ok(write);
            }
            if started.elapsed() > Duration::from_secs(15) {
                return Err(format!("no new leader wrote within 15 s (after {not:?})"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let outcome = (|| {
        let (first, first_fence, _) = next_leader(&[], 0)?;
        signal(first, "-KILL")?;
        let killed_at = millis();
        let (second, second_fence, second_at) = next_leader(&[first], killed_at)?;
        // Pause the leader outside the resource's critical section: a writer stopped while
        // it holds the resource's file lock would stall every later writer until it
        // resumes (the resource's own problem, which a real store solves with its own
        // timeouts), and the test would wait for a write that cannot come.
        let resource = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.path().join("election-resource"))
            .map_err(|e| e.to_string())?;
        resource.lock().map_err(|e| e.to_string())?;
        let stopped = signal(second, "-STOP");
        let paused_at = millis();
        resource.unlock().map_err(|e| e.to_string())?;
        stopped?;
        let (third, third_fence, third_at) = next_leader(&[first, second], paused_at)?;
        signal(second, "-CONT")?;
        std::thread::sleep(Duration::from_millis(300));
        let writes = election_writes(dir.path());
        let mut highest = 0;
        let mut owner: std::collections::HashMap<u64, u32> = std::collections::HashMap::new();
        for (pid, fence, at) in &writes {
            if *fence < highest {
                return Err(format!(
                    "pid {pid}'s write at {at} with fence {fence} was accepted after fence {highest}"
                ));
            }
            highest = *fence;
            if owner
                .insert(*fence, *pid)
                .is_some_and(|other| other != *pid)
            {
                return Err(format!("fence {fence} wrote for two processes"));
            }
        }
        if third == second || !(first_fence < second_fence && second_fence < third_fence) {
            return Err(format!(
                "fences {first_fence}, {second_fence}, {third_fence} do not go forward"
            ));
        }
        println!(
            "lock_store_processes ({backend}): election among 3 processes: leader killed, a new one wrote {} ms later; the next paused, a new one wrote {} ms later; {} writes accepted, fences only forward",
            second_at.saturating_sub(killed_at),
            third_at.saturating_sub(paused_at),
            writes.len()
        );
        Ok(())
    })();
    for child in &mut children {
        let _ = signal(child.id(), "-CONT");
        let _ = child.kill();
        let _ = child.wait();
    }
    outcome
}

fn main() -> ExitCode {
    if let Ok(dir) = std::env::var("CONC_LOCK_CHILD") {
        if std::env::var("CONC_LOCK_PAUSED").is_ok() {
            return paused_child(PathBuf::from(dir));
        }
        if std::env::var("CONC_LOCK_ELECTION").is_ok() {
            return election_child(PathBuf::from(dir));
        }
        let victim = std::env::var("CONC_LOCK_VICTIM").as_deref() == Ok("1");
        return child(PathBuf::from(dir), victim);
    }
    let mut backends = vec!["sqlite"];
    for (backend, var, enabled) in [
        (
            "postgres",
            "CONC_TEST_POSTGRES_URL",
            cfg!(feature = "postgres"),
        ),
        ("redis", "CONC_TEST_REDIS_URL", cfg!(feature = "redis")),
    ] {
        if std::env::var(var).is_err() {
            println!(
                "skipped: {var} is not set, so the several-process test does not run on {backend}"
            );
        } else if !enabled {
            println!(
                "skipped: the `{backend}` feature is off, so the several-process test does not run on {backend}"
            );
        } else {
            backends.push(backend);
        }
    }
    // A PgBouncer of the test's own, in transaction mode, in front of the test database.
    #[cfg(feature = "postgres")]
    let _bouncer = if backends.contains(&"postgres") {
        let url = std::env::var("CONC_TEST_POSTGRES_URL").expect("url");
        let config: tokio_postgres::Config = url.parse().expect("a PostgreSQL URL");
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            _ => "127.0.0.1".to_owned(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let database = config.get_dbname().unwrap_or("postgres").to_owned();
        let user = config.get_user().unwrap_or("postgres").to_owned();
        match conc_lock_store::servers::PrivatePgBouncer::start(
            &host,
            port,
            conc_lock_store::servers::BouncerMode::Transaction,
            3,
        ) {
            Ok(Some(bouncer)) => {
                let _ = BOUNCER_URL.set(bouncer.url(&user, &database, ""));
                backends.push("postgres-pgbouncer");
                Some(bouncer)
            }
            Ok(None) => None,
            Err(e) => {
                eprintln!(
                    "several processes on postgres-pgbouncer FAILED: cannot start PgBouncer: {e}"
                );
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    // A Redis Cluster of the test's own (three masters), when Redis is built in.
    #[cfg(feature = "redis")]
    let _cluster = match conc_lock_store::servers::PrivateRedisCluster::start(3, 0) {
        Ok(Some(cluster)) => {
            let _ = CLUSTER_URL.set(cluster.url());
            backends.push("redis-cluster");
            Some(cluster)
        }
        Ok(None) => None,
        Err(e) => {
            eprintln!("several processes on redis-cluster FAILED: cannot start the cluster: {e}");
            return ExitCode::FAILURE;
        }
    };
    // An etcd cluster of the test's own (three members), when etcd is built in.
    #[cfg(feature = "etcd")]
    let _etcd = match conc_lock_store::servers::PrivateEtcdCluster::start(3) {
        Ok(Some(cluster)) => {
            let _ = ETCD_URL.set(cluster.url());
            backends.push("etcd");
            Some(cluster)
        }
        Ok(None) => None,
        Err(e) => {
            eprintln!("several processes on etcd FAILED: cannot start the cluster: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (mut passed, mut failed) = (0, 0);
    for backend in backends {
        match parent(backend) {
            Ok(()) => passed += 1,
            Err(e) => {
                eprintln!("several processes on {backend} FAILED: {e}");
                failed += 1;
            }
        }
    }
    println!("lock_store_processes: {passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
