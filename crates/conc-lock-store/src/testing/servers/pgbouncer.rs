//! [`PrivatePgBouncer`]: a PgBouncer of a test's own, in front of a PostgreSQL server, in
//! transaction or session mode: what managed PostgreSQL is usually reached through.

use std::process::Command;
use std::time::{Duration, Instant};

use super::{TempDir, free_port, is_root, stop_by_pid};

/// How a PgBouncer lends its server connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BouncerMode {
    /// A server connection per transaction: each transaction of a client may run on
    /// another server connection (what most deployments use).
    Transaction,
    /// A server connection per client, for as long as the client stays connected.
    Session,
}

impl BouncerMode {
    fn name(self) -> &'static str {
        match self {
            BouncerMode::Transaction => "transaction",
            BouncerMode::Session => "session",
        }
    }
}

/// A `pgbouncer` on a free port in front of `host:port`, run as `postgres` when the test
/// runs as root (PgBouncer refuses root), with trust authentication, a small server pool
/// (so that clients share server connections) and its files in a temporary folder.
/// Stopped by PID on drop.
#[derive(Debug)]
pub struct PrivatePgBouncer {
    port: u16,
    dir: std::path::PathBuf,
    _temp: TempDir,
}

impl PrivatePgBouncer {
    /// Starts one in `mode` in front of the PostgreSQL at `host:port`, lending at most
    /// `pool_size` server connections per database and user. `Ok(None)`, after printing a
    /// `skipped:` line, when `pgbouncer` is not installed.
    pub fn start(
        host: &str,
        port: u16,
        mode: BouncerMode,
        pool_size: u32,
    ) -> Result<Option<Self>, String> {
        if Command::new("pgbouncer").arg("--version").output().is_err() {
            println!("skipped: pgbouncer is not installed, so no private PgBouncer can be started");
            return Ok(None);
        }
        let listen = free_port().map_err(|e| format!("no free port: {e}"))?;
        let temp = TempDir::for_postgres("pgbouncer", listen)?;
        let root = temp.path().to_path_buf();
        let dir = root.display().to_string();
        std::fs::write(root.join("userlist.txt"), "\"postgres\" \"\"\n")
            .map_err(|e| e.to_string())?;
        let ini = format!(
            "[databases]\n* = host={host} port={port}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {listen}\nunix_socket_dir =\nauth_type = trust\nauth_file = {dir}/userlist.txt\npool_mode = {mode}\ndefault_pool_size = {pool_size}\nmin_pool_size = 0\nreserve_pool_size = 0\nmax_client_conn = 500\nignore_startup_parameters = extra_float_digits\nserver_reset_query_always = 0\nlogfile = {dir}/pgbouncer.log\npidfile = {dir}/pgbouncer.pid\nadmin_users = postgres\n",
            mode = mode.name()
        );
        let ini_path = root.join("pgbouncer.ini");
        std::fs::write(&ini_path, ini).map_err(|e| e.to_string())?;
        let mut command = if is_root() {
            // The files written after the folder was made are given over too.
            let status = Command::new("chown")
                .args(["-R", "postgres:", &dir])
                .status()
                .map_err(|e| e.to_string())?;
            if !status.success() {
                return Err("cannot give the folder to postgres".into());
            }
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "pgbouncer"]);
            c
        } else {
            Command::new("pgbouncer")
        };
        let output = command
            .args(["-d", "-q", &ini_path.display().to_string()])
            .output()
            .map_err(|e| format!("cannot run pgbouncer: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "pgbouncer failed to start: {}{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
                std::fs::read_to_string(root.join("pgbouncer.log")).unwrap_or_default()
            ));
        }
        let bouncer = Self {
            port: listen,
            dir: root,
            _temp: temp,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", listen)).is_err() {
            if Instant::now() > deadline {
                return Err(format!(
                    "pgbouncer did not listen on {listen} within 10 s: {}",
                    std::fs::read_to_string(bouncer.dir.join("pgbouncer.log")).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Some(bouncer))
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for `user` on `database` through it, with `query` appended (for example
    /// `?pool_mode=transaction`).
    pub fn url(&self, user: &str, database: &str, query: &str) -> String {
        format!(
            "postgres://{user}@127.0.0.1:{}/{database}{query}",
            self.port
        )
    }

    /// What it logged so far (its `got packet … when not linked` and the like).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }

    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("pgbouncer.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for PrivatePgBouncer {
    fn drop(&mut self) {
        if let Some(pid) = self.pid()
            && !stop_by_pid(pid, "-INT")
        {
            stop_by_pid(pid, "-KILL");
        }
    }
}
