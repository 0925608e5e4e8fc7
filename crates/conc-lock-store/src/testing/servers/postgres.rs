//! [`PrivatePostgres`]: a PostgreSQL cluster of a test's own (`initdb` and `pg_ctl` in a
//! temporary folder).

use std::process::Command;

use super::free_port;
use super::{TempDir, is_root, stop_by_pid};

/// A PostgreSQL cluster of the test's own: `initdb` in a temporary folder (as the
/// `postgres` user when run as root), on a free port, optionally with TLS. Stopped by its
/// PID on drop.
#[derive(Debug)]
pub struct PrivatePostgres {
    port: u16,
    dir: std::path::PathBuf,
    _temp: TempDir,
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
        let temp = TempDir::for_postgres("pg", port)?;
        let root = temp.path().to_path_buf();
        let data = root.join("data");
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

impl PrivatePostgres {
    /// Starts a streaming replica of `primary` (`pg_basebackup -R -X stream` of it, on a
    /// free port, in a temporary folder): it follows the primary until
    /// [`promote`](Self::promote)d. `Ok(None)`, after printing a `skipped:` line, when
    /// `pg_basebackup` is not installed.
    pub fn start_replica_of(primary: &PrivatePostgres) -> Result<Option<Self>, String> {
        if Command::new("pg_basebackup")
            .arg("--version")
            .output()
            .is_err()
        {
            println!("skipped: pg_basebackup is not installed, so no replica can be started");
            return Ok(None);
        }
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let temp = TempDir::for_postgres("pg-replica", port)?;
        let root = temp.path().to_path_buf();
        let data = root.join("data");
        let data_arg = data.display().to_string();
        let primary_port = primary.port.to_string();
        pg_tool(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &primary_port,
                "-U",
                "postgres",
                "-D",
                &data_arg,
                "-R",
                "-X",
                "stream",
                "--no-sync",
            ],
        )?;
        let conf = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\n",
            root.display()
        );
        let path = data.join("postgresql.conf");
        let old = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
        std::fs::write(&path, format!("{old}{conf}")).map_err(|e| e.to_string())?;
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

    /// Promotes this replica to a primary (`pg_ctl promote`, waiting until it accepts
    /// writes).
    pub fn promote(&self) -> Result<(), String> {
        let data = self.dir.display().to_string();
        pg_tool("pg_ctl", &["-D", &data, "-w", "-t", "30", "promote"]).map(drop)
    }
}

impl PrivatePostgres {
    /// Appends `settings` (`name = value` lines) to `postgresql.conf`; they apply from the
    /// next start ([`crash`](Self::crash) then [`start_again`](Self::start_again)).
    pub fn configure(&self, settings: &str) -> Result<(), String> {
        let path = self.dir.join("postgresql.conf");
        let old = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
        std::fs::write(&path, format!("{old}\n{settings}\n")).map_err(|e| e.to_string())
    }

    /// Kills the server as a power cut would: the postmaster is stopped, then it and every
    /// process it started get SIGKILL, so nothing still in the server's memory (the WAL
    /// not yet written out, unlogged tables' pages) reaches the disk. Returns once all are
    /// gone.
    pub fn crash(&self) -> Result<(), String> {
        let pid = self.pid().ok_or("the server is not running")?;
        super::signal(pid, "-STOP")?;
        let _ = Command::new("pkill")
            .args(["-KILL", "-P", &pid.to_string()])
            .status();
        if stop_by_pid(pid, "-KILL") {
            // Its children go with it; wait until none is left.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while Command::new("pgrep")
                .args(["-P", &pid.to_string()])
                .output()
                .is_ok_and(|out| !out.stdout.is_empty())
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Ok(())
        } else {
            Err(format!("the postmaster {pid} outlived SIGKILL"))
        }
    }

    /// Restarts the server cleanly (`pg_ctl restart -m fast`: a shutdown checkpoint first,
    /// so every commit reaches the disk).
    pub fn restart(&self) -> Result<(), String> {
        self.pg_ctl(&["-m", "fast", "restart"])
    }

    /// Starts the server again on its folder and port (after [`crash`](Self::crash): it
    /// recovers from its WAL first).
    pub fn start_again(&self) -> Result<(), String> {
        self.pg_ctl(&["start"])
    }

    /// `pg_ctl` on this server's folder and log, waiting up to 30 s, then `args`.
    fn pg_ctl(&self, args: &[&str]) -> Result<(), String> {
        let data = self.dir.display().to_string();
        let log = self.dir.parent().unwrap_or(&self.dir).join("log");
        let log = log.display().to_string();
        let mut all = vec!["-D", data.as_str(), "-l", log.as_str(), "-w", "-t", "30"];
        all.extend_from_slice(args);
        pg_tool("pg_ctl", &all).map(drop)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        // Immediate shutdown, by PID; then wait for it to go.
        if let Some(pid) = self.pid() {
            stop_by_pid(pid, "-QUIT");
        }
    }
}
