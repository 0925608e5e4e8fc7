//! Private servers for fault and TLS tests: a `redis-server` on a free port that a test
//! may restart, flush or reconfigure, a Redis Cluster of such servers, a primary with
//! replicas and Sentinels, an etcd cluster (feature `etcd`), a PostgreSQL
//! cluster of its own (`initdb` and `pg_ctl` in a temporary folder) and a PgBouncer in
//! front of a PostgreSQL, never the shared servers other tests use. Built with the
//! `conformance` feature.

#[cfg(feature = "etcd")]
mod etcd;
mod pgbouncer;
mod postgres;
mod redis;
mod redis_sentinel;

#[cfg(feature = "etcd")]
pub use etcd::PrivateEtcdCluster;
pub use pgbouncer::{BouncerMode, PrivatePgBouncer};
pub use postgres::PrivatePostgres;
pub use redis::{PrivateRedis, PrivateRedisCluster};
pub use redis_sentinel::PrivateRedisSentinel;

use std::net::TcpListener;
use std::process::Command;

/// A port nobody listens on now.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A temporary folder removed on drop (no dependency on `tempfile` in the library).
#[derive(Debug)]
pub(super) struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl TempDir {
    /// A fresh folder `conc-<what>-<pid>-<port>-<random>` in the system's temporary folder,
    /// given to the `postgres` user when this process is root (PostgreSQL and PgBouncer
    /// refuse to run as root, so they run as `postgres` and must own their files).
    pub(super) fn for_postgres(what: &str, port: u16) -> Result<Self, String> {
        let root = std::env::temp_dir().join(format!(
            "conc-{what}-{}-{port}-{}",
            std::process::id(),
            crate::util::random::next_u64()
        ));
        std::fs::create_dir_all(&root).map_err(|e| e.to_string())?;
        let dir = Self(root);
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:", &dir.0.display().to_string()])
                .status()
                .map_err(|e| e.to_string())?;
            if !status.success() {
                return Err("cannot give the folder to postgres".into());
            }
        }
        Ok(dir)
    }

    /// Its path.
    pub(super) fn path(&self) -> &std::path::Path {
        &self.0
    }
}

/// Sends `signal` (such as `-QUIT`) to `pid` and waits up to 10 s for the process to go;
/// returns whether it went.
pub(super) fn stop_by_pid(pid: u32, signal: &str) -> bool {
    let _ = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status();
    let proc = std::path::PathBuf::from(format!("/proc/{pid}"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while proc.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    !proc.exists()
}

/// Sends `signal` (`-STOP`, `-CONT`, `-KILL`, …) to `pid`, as a test pauses, resumes or
/// kills one of its servers.
pub fn signal(pid: u32, signal: &str) -> Result<(), String> {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .map_err(|e| format!("kill {signal} {pid}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("kill {signal} {pid}: {status}"))
    }
}

/// Runs `op` again after each transient error (a failover or an election in progress),
/// 50 ms apart, for at most `limit`; returns its first success, or the error that was not
/// transient or came after `limit`.
///
/// # Cancel safety
///
/// Dropping it stops between tries; a try in flight is dropped with it.
pub async fn through_transient_errors<T, F>(
    limit: std::time::Duration,
    op: F,
) -> Result<T, crate::error::LockError>
where
    F: AsyncFn() -> Result<T, crate::error::LockError>,
{
    let started = std::time::Instant::now();
    loop {
        match op().await {
            Ok(value) => return Ok(value),
            Err(error) if error.is_transient() && started.elapsed() < limit => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(error) => return Err(error),
        }
    }
}

pub(super) fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
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
