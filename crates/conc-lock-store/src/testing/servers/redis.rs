//! [`PrivateRedis`] and [`PrivateRedisCluster`]: Redis servers of a test's own (the
//! Sentinels are in `redis_sentinel.rs`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{TempDir, free_port};

/// A `redis-server` of the test's own, on a free port, keeping nothing on disk. Stopped by
/// its PID on drop.
#[derive(Debug)]
pub struct PrivateRedis {
    pub(super) port: u16,
    pub(super) args: Vec<String>,
    pub(super) child: Option<Child>,
    pub(super) tls: bool,
    /// A Sentinel's configuration file (a Sentinel rewrites it, so it needs one).
    pub(super) sentinel_config: Option<std::path::PathBuf>,
}

impl PrivateRedis {
    /// Starts one with `extra` arguments (such as `["--maxmemory-policy", "allkeys-lru"]`).
    /// `Ok(None)`, after printing a `skipped:` line, when `redis-server` is not installed.
    pub fn start(extra: &[&str]) -> Result<Option<Self>, String> {
        if Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            println!("skipped: redis-server is not installed, so no private Redis can be started");
            return Ok(None);
        }
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let mut server = Self {
            port,
            args: extra.iter().map(|s| (*s).to_owned()).collect(),
            child: None,
            tls: false,
            sentinel_config: None,
        };
        server.launch()?;
        Ok(Some(server))
    }

    /// Starts one that speaks only TLS, with the PEM files `cert`, `key` and `ca`;
    /// its [`url`](Self::url) is `rediss://`.
    pub fn start_tls(
        cert: &std::path::Path,
        key: &std::path::Path,
        ca: &std::path::Path,
    ) -> Result<Option<Self>, String> {
        let Some(mut probe) = Self::start(&[])? else {
            return Ok(None);
        };
        probe.stop();
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let path = |p: &std::path::Path| p.display().to_string();
        let mut server = Self {
            port,
            args: vec![
                "--tls-cert-file".into(),
                path(cert),
                "--tls-key-file".into(),
                path(key),
                "--tls-ca-cert-file".into(),
                path(ca),
                "--tls-auth-clients".into(),
                "no".into(),
            ],
            child: None,
            tls: true,
            sentinel_config: None,
        };
        server.launch()?;
        Ok(Some(server))
    }

    pub(super) fn launch(&mut self) -> Result<(), String> {
        if let Some(config) = &self.sentinel_config {
            let child = Command::new("redis-server")
                .arg(config)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot start redis-server --sentinel: {e}"))?;
            self.child = Some(child);
            return self.wait_for_ping();
        }
        let port = self.port.to_string();
        let ports: [&str; 4] = if self.tls {
            ["--port", "0", "--tls-port", &port]
        } else {
            ["--port", &port, "--tls-port", "0"]
        };
        let child = Command::new("redis-server")
            .args(ports)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            // A replica loads its primary's data from the socket, never writing an RDB file
            // into the working folder.
            .args(["--repl-diskless-load", "swapdb"])
            .args(["--daemonize", "no", "--logfile", ""])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start redis-server: {e}"))?;
        self.child = Some(child);
        self.wait_for_ping()
    }

    fn wait_for_ping(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "redis-server on port {} did not answer within 10 s",
            self.port
        ))
    }

    fn ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        if self.tls {
            // Listening is all a plain socket can tell of a TLS port.
            return true;
        }
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    /// Its URL (`rediss://` for a TLS server).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Its PID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills it (SIGKILL: a crash, nothing kept) and starts it again on the same port.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.launch()
    }

    /// Kills it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Redis Cluster of the test's own: `masters` masters with `replicas` replicas each,
/// `redis-server --cluster-enabled yes` on free ports, joined by `redis-cli --cluster
/// create`. Nodes keep no data on disk; a node's cluster configuration lives in a
/// temporary folder, so a restarted node rejoins (empty). A failed master's replica takes
/// over after a second. Every node is stopped by its PID on drop.
#[derive(Debug)]
pub struct PrivateRedisCluster {
    nodes: Vec<PrivateRedis>,
    _dir: TempDir,
}

impl PrivateRedisCluster {
    /// Starts and joins the nodes, and waits until the cluster serves every slot.
    /// `Ok(None)`, after printing a `skipped:` line, when `redis-server` or `redis-cli` is
    /// not installed.
    pub fn start(masters: usize, replicas: usize) -> Result<Option<Self>, String> {
        Self::start_with(masters, replicas, &[], None)
    }

    /// As [`start`](Self::start), but every node gets `args` too (an ACL user, say) and
    /// tells the cluster and its clients that it listens on the port `announce` returns
    /// for its real port (a [`FaultProxy`](crate::proxy::FaultProxy) in front of it,
    /// say), so every client goes that way; the nodes reach each other on their own
    /// cluster bus ports, not through it.
    pub fn start_behind(
        masters: usize,
        replicas: usize,
        args: &[&str],
        mut announce: impl FnMut(u16) -> u16,
    ) -> Result<Option<Self>, String> {
        Self::start_with(masters, replicas, args, Some(&mut announce))
    }

    fn start_with(
        masters: usize,
        replicas: usize,
        extra: &[&str],
        mut announce: Option<&mut dyn FnMut(u16) -> u16>,
    ) -> Result<Option<Self>, String> {
        if Command::new("redis-cli")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            println!(
                "skipped: redis-cli is not installed, so no private Redis Cluster can be started"
            );
            return Ok(None);
        }
        let dir = std::env::temp_dir().join(format!(
            "conc-redis-cluster-{}-{}",
            std::process::id(),
            free_port().map_err(|e| format!("no free port: {e}"))?
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {dir:?}: {e}"))?;
        let dir = TempDir(dir);
        let mut nodes = Vec::new();
        for _ in 0..masters * (1 + replicas) {
            let port = free_port().map_err(|e| format!("no free port: {e}"))?;
            // The bus port is chosen too: the default, 10000 above the node's port, does
            // not exist for a port above 55535.
            let bus = free_port().map_err(|e| format!("no free port: {e}"))?;
            let config = dir.0.join(format!("nodes-{port}.conf"));
            let args = [
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus.to_string(),
                "--cluster-config-file",
                &config.display().to_string(),
                "--cluster-node-timeout",
                "1000",
                "--cluster-require-full-coverage",
                "no",
                "--cluster-replica-validity-factor",
                "0",
                "--repl-diskless-sync-delay",
                "0",
                "--dir",
                &dir.0.display().to_string(),
            ]
            .map(str::to_owned);
            let mut args = args.to_vec();
            args.extend(extra.iter().map(|arg| (*arg).to_owned()));
            if let Some(announce) = announce.as_mut() {
                args.extend([
                    "--cluster-announce-port".to_owned(),
                    announce(port).to_string(),
                    "--cluster-announce-bus-port".to_owned(),
                    bus.to_string(),
                ]);
            }
            let mut node = PrivateRedis {
                port,
                args,
                child: None,
                tls: false,
                sentinel_config: None,
            };
            match node.launch() {
                Ok(()) => nodes.push(node),
                Err(e) if e.contains("cannot start") => {
                    println!(
                        "skipped: redis-server is not installed, so no private Redis Cluster can be started"
                    );
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let output = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run redis-cli: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let cluster = Self { nodes, _dir: dir };
        cluster.wait_until_ok(Duration::from_secs(30))?;
        Ok(Some(cluster))
    }

    /// `redis-cli -p PORT ARGS…`'s output, or `None` when it fails or takes longer than
    /// 2 s (a paused server accepts connections and never answers).
    pub(super) fn cli(port: u16, args: &[&str]) -> Option<String> {
        let mut child = Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
            }
        }
        let output = child.wait_with_output().ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Waits until every running node reports `cluster_state:ok` with all 16384 slots
    /// served, sees every master that serves slots connected (after a kill: until the
    /// replica has taken over), and every running replica is in sync with its master.
    pub fn wait_until_ok(&self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            let ok = self.nodes.iter().filter(|n| n.child.is_some()).all(|node| {
                let info_ok = Self::cli(node.port, &["cluster", "info"]).is_some_and(|info| {
                    info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
                });
                // Every master that serves slots is up: a killed one has been replaced.
                let masters_up = Self::cli(node.port, &["cluster", "nodes"]).is_some_and(|nodes| {
                    nodes.lines().all(|line| {
                        let fields: Vec<&str> = line.split_whitespace().collect();
                        fields.len() < 9
                            || !fields[2].contains("master")
                            || (fields[7] == "connected" && !fields[2].contains("fail"))
                    })
                });
                // A replica has its master's data (or it could not take over).
                let synced = Self::cli(node.port, &["info", "replication"]).is_some_and(|info| {
                    !info.contains("role:slave") || info.contains("master_link_status:up")
                });
                info_ok && masters_up && synced
            });
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the private Redis Cluster was not ok within {limit:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Its URL: `redis+cluster://` and every node.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// The `redis://` URL of each node.
    pub fn node_urls(&self) -> Vec<String> {
        self.nodes.iter().map(PrivateRedis::url).collect()
    }

    /// The index (into [`node_urls`](Self::node_urls)) of the running master that serves
    /// the hash slot of `key`, as a running node reports it.
    pub fn master_of(&self, key: &str) -> Result<usize, String> {
        let asked = self
            .nodes
            .iter()
            .find(|n| n.child.is_some())
            .ok_or("no node runs")?;
        let slot: u16 = Self::cli(asked.port, &["cluster", "keyslot", key])
            .ok_or("CLUSTER KEYSLOT failed")?
            .trim()
            .parse()
            .map_err(|e| format!("CLUSTER KEYSLOT: {e}"))?;
        let nodes = Self::cli(asked.port, &["cluster", "nodes"]).ok_or("CLUSTER NODES failed")?;
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| {
                let (start, end) = range.split_once('-').unwrap_or((range, range));
                matches!((start.parse::<u16>(), end.parse::<u16>()), (Ok(s), Ok(e)) if s <= slot && slot <= e)
            });
            if !serves {
                continue;
            }
            let port: u16 = fields[1]
                .split(['@', ':'])
                .nth(1)
                .and_then(|p| p.parse().ok())
                .ok_or("a node address without a port")?;
            return self
                .nodes
                .iter()
                .position(|n| n.port == port)
                .ok_or_else(|| format!("no node of ours on port {port}"));
        }
        Err(format!("no master serves slot {slot}"))
    }

    /// Kills node `index` (SIGKILL: a crash, nothing kept).
    pub fn kill(&mut self, index: usize) {
        if let Some(node) = self.nodes.get_mut(index) {
            node.stop();
        }
    }

    /// Starts node `index` again on its port, with its cluster configuration and no data.
    pub fn restart(&mut self, index: usize) -> Result<(), String> {
        let node = self.nodes.get_mut(index).ok_or("no such node")?;
        node.restart()
    }
}
