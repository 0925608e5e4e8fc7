//! [`PrivateRedisSentinel`]: a primary, its replicas and the Sentinels that watch them, of a
//! test's own.

use std::time::{Duration, Instant};

use super::redis::{PrivateRedis, PrivateRedisCluster};
use super::{TempDir, free_port};

/// A primary with replicas and the Redis Sentinels that watch them, all of the test's own
/// on free ports (`redis-server --sentinel` with a configuration file in a temporary
/// folder), keeping nothing on disk. The Sentinels monitor the primary as
/// [`MASTER_NAME`](Self::MASTER_NAME) with a quorum of two, call it down after 500 ms
/// without an answer, and fail over to a replica. Every server is stopped by its PID on
/// drop.
#[derive(Debug)]
pub struct PrivateRedisSentinel {
    nodes: Vec<PrivateRedis>,
    sentinels: Vec<PrivateRedis>,
    /// The port the Sentinels know the first primary by, and its real port, when they
    /// differ ([`start_behind`](Self::start_behind)).
    alias: Option<(u16, u16)>,
    _dir: TempDir,
}

impl PrivateRedisSentinel {
    /// The name the Sentinels monitor the primary by.
    pub const MASTER_NAME: &'static str = "conc-primary";

    /// Starts a primary, `replicas` replicas and `sentinels` Sentinels, and waits until
    /// every replica is in sync and every Sentinel sees the primary and its replicas.
    /// `Ok(None)`, after printing a `skipped:` line, when `redis-server` is not installed.
    pub fn start(replicas: usize, sentinels: usize) -> Result<Option<Self>, String> {
        Self::start_with(replicas, sentinels, |port| port, 1000)
    }

    /// As [`start`](Self::start), but the Sentinels know the primary by the port `monitor`
    /// returns for its real port (a [`FaultProxy`](crate::proxy::FaultProxy) in front of
    /// it, say), so every client that finds the primary through them goes that way; the
    /// replicas follow the primary directly. The Sentinels wait a minute before they call
    /// the primary down, so the network faults a test puts in the way cause no failover.
    pub fn start_behind(
        replicas: usize,
        sentinels: usize,
        monitor: impl FnOnce(u16) -> u16,
    ) -> Result<Option<Self>, String> {
        Self::start_with(replicas, sentinels, monitor, 60_000)
    }

    fn start_with(
        replicas: usize,
        sentinels: usize,
        monitor: impl FnOnce(u16) -> u16,
        down_after_ms: u64,
    ) -> Result<Option<Self>, String> {
        let Some(primary) = PrivateRedis::start(&["--repl-diskless-sync-delay", "0"])? else {
            return Ok(None);
        };
        let dir = std::env::temp_dir().join(format!(
            "conc-redis-sentinel-{}-{}",
            std::process::id(),
            primary.port
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {dir:?}: {e}"))?;
        let dir = TempDir(dir);
        let primary_port = primary.port;
        let monitored_port = monitor(primary_port);
        let mut nodes = vec![primary];
        for _ in 0..replicas {
            let port = primary_port.to_string();
            let replica = PrivateRedis::start(&[
                "--repl-diskless-sync-delay",
                "0",
                "--replicaof",
                "127.0.0.1",
                &port,
            ])?
            .ok_or("redis-server went missing")?;
            nodes.push(replica);
        }
        let mut watchers = Vec::new();
        for _ in 0..sentinels {
            let port = free_port().map_err(|e| format!("no free port: {e}"))?;
            let config = dir.0.join(format!("sentinel-{port}.conf"));
            let text = format!(
                "port {port}\nbind 127.0.0.1\ndaemonize no\nlogfile {dir}/sentinel-{port}.log\ndir {dir}\n\
                 sentinel monitor {name} 127.0.0.1 {monitored_port} 2\n\
                 sentinel down-after-milliseconds {name} {down_after_ms}\n\
                 sentinel failover-timeout {name} 10000\n\
                 sentinel parallel-syncs {name} 2\n",
                dir = dir.0.display(),
                name = Self::MASTER_NAME,
            );
            std::fs::write(&config, text).map_err(|e| format!("cannot write {config:?}: {e}"))?;
            let mut sentinel = PrivateRedis {
                port,
                args: Vec::new(),
                child: None,
                tls: false,
                sentinel_config: Some(config),
            };
            sentinel.launch()?;
            watchers.push(sentinel);
        }
        let topology = Self {
            nodes,
            sentinels: watchers,
            alias: (monitored_port != primary_port).then_some((monitored_port, primary_port)),
            _dir: dir,
        };
        topology.wait_until_ok(Duration::from_secs(30))?;
        Ok(Some(topology))
    }

    fn cli(port: u16, args: &[&str]) -> Option<String> {
        PrivateRedisCluster::cli(port, args)
    }

    /// Its URL: `redis+sentinel://` with every Sentinel and the master name.
    pub fn url(&self) -> String {
        let sentinels: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!(
            "redis+sentinel://{}/{}",
            sentinels.join(","),
            Self::MASTER_NAME
        )
    }

    /// The `redis://` URL of each data node (the primary first, at the start).
    pub fn node_urls(&self) -> Vec<String> {
        self.nodes.iter().map(PrivateRedis::url).collect()
    }

    /// The index of the data node that every running Sentinel names as the primary, and
    /// that calls itself master; an error while they disagree.
    pub fn primary(&self) -> Result<usize, String> {
        let mut named = None;
        for sentinel in self.sentinels.iter().filter(|s| s.child.is_some()) {
            let reply = Self::cli(
                sentinel.port,
                &["sentinel", "get-master-addr-by-name", Self::MASTER_NAME],
            )
            .ok_or("SENTINEL GET-MASTER-ADDR-BY-NAME failed")?;
            let port: u16 = reply
                .lines()
                .nth(1)
                .and_then(|p| p.trim().parse().ok())
                .ok_or_else(|| format!("a Sentinel answered `{reply}`"))?;
            if named.is_some_and(|known| known != port) {
                return Err("the Sentinels name different primaries".into());
            }
            named = Some(port);
        }
        let mut port = named.ok_or("no Sentinel runs")?;
        if let Some((known_as, real)) = self.alias
            && port == known_as
        {
            port = real;
        }
        let index = self
            .nodes
            .iter()
            .position(|n| n.port == port)
            .ok_or_else(|| format!("no node of ours on port {port}"))?;
        let node = &self.nodes[index];
        let role = node
            .child
            .as_ref()
            .and_then(|_| Self::cli(port, &["role"]))
            .unwrap_or_default();
        if !role.starts_with("master") {
            return Err(format!(
                "the named primary (port {port}) is not a master yet"
            ));
        }
        Ok(index)
    }

    /// Waits until every Sentinel names the same primary, every other running node is
    /// its replica and in sync, and every Sentinel sees each of them as a healthy replica.
    pub fn wait_until_ok(&self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            let ok = self.primary().ok().is_some_and(|primary| {
                let running: Vec<&PrivateRedis> = self
                    .nodes
                    .iter()
                    .enumerate()
                    .filter(|(i, n)| *i != primary && n.child.is_some())
                    .map(|(_, n)| n)
                    .collect();
                let synced = running.iter().all(|node| {
                    Self::cli(node.port, &["info", "replication"]).is_some_and(|info| {
                        info.contains("role:slave") && info.contains("master_link_status:up")
                    })
                });
                let seen =
                    self.sentinels
                        .iter()
                        .filter(|s| s.child.is_some())
                        .all(|s| {
                            Self::cli(s.port, &["sentinel", "replicas", Self::MASTER_NAME])
                                .is_some_and(|reply| {
                                    running.iter().all(|node| {
                                        // Each replica is a list of name/value lines; find ours.
                                        let lines: Vec<&str> = reply.lines().collect();
                                        lines.windows(2).any(|pair| {
                                            pair[0] == "name"
                                                && pair[1] == format!("127.0.0.1:{}", node.port)
                                        }) && Self::replica_flags(&lines, node.port)
                                            .is_some_and(|flags| flags == "slave")
                                    })
                                })
                        });
                synced && seen
            });
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the private Redis with Sentinels was not ok within {limit:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The `flags` a Sentinel reports for the replica on `port`, in a `SENTINEL REPLICAS`
    /// reply split into lines.
    fn replica_flags(lines: &[&str], port: u16) -> Option<String> {
        let name = format!("127.0.0.1:{port}");
        let start = lines
            .windows(2)
            .position(|pair| pair[0] == "name" && pair[1] == name)?;
        lines[start..]
            .windows(2)
            .find(|pair| pair[0] == "flags")
            .map(|pair| pair[1].to_owned())
    }

    /// Waits until the Sentinels name a primary other than node `old`, and it serves as
    /// master; returns its index.
    pub fn wait_for_failover(&self, old: usize, limit: Duration) -> Result<usize, String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(primary) = self.primary()
                && primary != old
            {
                return Ok(primary);
            }
            if Instant::now() > deadline {
                return Err(format!("no failover from node {old} within {limit:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The PID of data node `index`, while it runs.
    pub fn pid(&self, index: usize) -> Option<u32> {
        self.nodes.get(index).and_then(PrivateRedis::pid)
    }

    /// Kills data node `index` (SIGKILL: a crash, nothing kept).
    pub fn kill(&mut self, index: usize) {
        if let Some(node) = self.nodes.get_mut(index) {
            node.stop();
        }
    }

    /// Starts data node `index` again on its port, empty, as a replica of the primary the
    /// Sentinels name now (as an operator brings a failed primary back).
    pub fn restart_as_replica(&mut self, index: usize) -> Result<(), String> {
        let primary = self.primary()?;
        let primary_port = self.nodes[primary].port.to_string();
        let node = self.nodes.get_mut(index).ok_or("no such node")?;
        node.stop();
        node.args = [
            "--repl-diskless-sync-delay",
            "0",
            "--replicaof",
            "127.0.0.1",
            &primary_port,
        ]
        .map(str::to_owned)
        .to_vec();
        node.launch()
    }
}
