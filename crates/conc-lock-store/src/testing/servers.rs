//! Private servers for fault and TLS tests: a `redis-server` on a free port that a test
//! may restart, flush or reconfigure, a Redis Cluster of such servers, and a PostgreSQL cluster of its own (`initdb` and
//! `pg_ctl` in a temporary folder), never the shared servers other tests use. Built with
//! the `conformance` feature.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port nobody listens on now.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A `redis-server` of the test's own, on a free port, keeping nothing on disk. Stopped by
/// its PID on drop.
#[derive(Debug)]
pub struct PrivateRedis {
    port: u16,
    args: Vec<String>,
    child: Option<Child>,
    tls: bool,
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
        };
        server.launch()?;
        Ok(Some(server))
    }

    fn launch(&mut self) -> Result<(), String> {
        let port = self.port.to_string();
        let ports: [&str; 4] = if self.tls {
            ["--port", "0", "--tls-port", &port]
        } else {
            ["--port", &port, "--tls-port", "0"]
        };
        let child = Command::new("redis-server")
            .args(ports)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--logfile", ""])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start redis-server: {e}"))?;
        self.child = Some(child);
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
            let config = dir.0.join(format!("nodes-{port}.conf"));
            let args = [
                "--cluster-enabled",
                "yes",
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
            let mut node = PrivateRedis {
                port,
                args: args.to_vec(),
                child: None,
                tls: false,
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

    fn cli(port: u16, args: &[&str]) -> Option<String> {
        let output = Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .ok()?;
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

/// A PostgreSQL cluster of the test's own: `initdb` in a temporary folder (as the
/// `postgres` user when run as root), on a free port, optionally with TLS. Stopped by its
/// PID on drop.
#[derive(Debug)]
pub struct PrivatePostgres {
    port: u16,
    dir: std::path::PathBuf,
    _temp: TempDir,
}

/// A temporary folder removed on drop (no dependency on `tempfile` in the library).
#[derive(Debug)]
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Runs a PostgreSQL tool, as `postgres` when this process is root.
fn pg_tool(tool: &str, args: &[&str]) -> Result<std::process::Output, String> {
    let mut command = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", tool]);
        c
    } else {
        Command::new(tool)
    };
    let output = command
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {tool}: {e}"))?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(format!(
            "{tool} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

impl PrivatePostgres {
    /// Starts a cluster; with `tls` = `(cert PEM, key PEM)`, `ssl = on` with them. `hba`
    /// lines go first in `pg_hba.conf` (the rest trusts local connections). `Ok(None)`,
    /// after printing a `skipped:` line, when `initdb` is not installed.
    pub fn start(tls: Option<(&str, &str)>, hba: &[&str]) -> Result<Option<Self>, String> {
        if Command::new("initdb").arg("--version").output().is_err() {
            println!("skipped: initdb is not installed, so no private PostgreSQL can be started");
            return Ok(None);
        }
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let root = std::env::temp_dir().join(format!(
            "conc-pg-{}-{port}-{}",
            std::process::id(),
            crate::util::random::next_u64()
        ));
        std::fs::create_dir_all(&root).map_err(|e| e.to_string())?;
        let temp = TempDir(root.clone());
        let data = root.join("data");
        if is_root() {
            let status = Command::new("chown")
                .args(["postgres:", &root.display().to_string()])
                .status()
                .map_err(|e| e.to_string())?;
            if !status.success() {
                return Err("cannot give the folder to postgres".into());
            }
        }
        let data_arg = data.display().to_string();
        pg_tool(
            "initdb",
            &[
                "-D",
                &data_arg,
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        )?;
        let mut conf = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\n",
            root.display()
        );
        if let Some((cert, key)) = tls {
            let (cert_path, key_path) = (data.join("server.crt"), data.join("server.key"));
            std::fs::write(&cert_path, cert).map_err(|e| e.to_string())?;
            std::fs::write(&key_path, key).map_err(|e| e.to_string())?;
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| e.to_string())?;
            if is_root() {
                let _ = Command::new("chown")
                    .args([
                        "postgres:",
                        &cert_path.display().to_string(),
                        &key_path.display().to_string(),
                    ])
                    .status();
            }
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        }
        let append = |file: &str, text: &str, first: bool| -> Result<(), String> {
            let path = data.join(file);
            let old = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
            let new = if first {
                format!("{text}{old}")
            } else {
                format!("{old}{text}")
            };
            std::fs::write(&path, new).map_err(|e| e.to_string())
        };
        append("postgresql.conf", &conf, false)?;
        if !hba.is_empty() {
            append("pg_hba.conf", &format!("{}\n", hba.join("\n")), true)?;
        }
        let log = root.join("log").display().to_string();
        pg_tool(
            "pg_ctl",
            &["-D", &data_arg, "-l", &log, "-w", "-t", "30", "start"],
        )?;
        Ok(Some(Self {
            port,
            dir: data,
            _temp: temp,
        }))
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for `user` (and `password`) on `database`, with `query` appended.
    pub fn url(&self, user: &str, database: &str, query: &str) -> String {
        format!(
            "postgres://{user}@127.0.0.1:{}/{database}{query}",
            self.port
        )
    }

    /// The postmaster's PID.
    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        // Immediate shutdown, by PID; then wait for it to go.
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args(["-QUIT", &pid.to_string()])
                .status();
            let proc = std::path::PathBuf::from(format!("/proc/{pid}"));
            let deadline = Instant::now() + Duration::from_secs(10);
            while proc.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// PEM text for TLS tests, made at test time: a CA, and a server certificate for
/// `localhost` and `127.0.0.1` signed by it, with its key.
#[derive(Debug, Clone)]
pub struct TestCertificates {
    /// The CA certificate (what a client trusts, as `sslrootcert`).
    pub ca: String,
    /// The server certificate.
    pub cert: String,
    /// The server certificate's private key.
    pub key: String,
}

impl TestCertificates {
    /// A fresh CA and server certificate.
    pub fn new() -> Result<Self, String> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let fail = |e: rcgen::Error| format!("cannot make a test certificate: {e}");
        let ca_key = KeyPair::generate().map_err(fail)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "conc test CA");
        let ca = ca_params.self_signed(&ca_key).map_err(fail)?;
        let issuer = Issuer::from_params(&ca_params, &ca_key);
        let key = KeyPair::generate().map_err(fail)?;
        let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .map_err(fail)?;
        let cert = params.signed_by(&key, &issuer).map_err(fail)?;
        Ok(Self {
            ca: ca.pem(),
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}
