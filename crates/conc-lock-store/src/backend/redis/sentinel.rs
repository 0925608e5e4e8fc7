//! Reaching the primary that Redis Sentinels name: the `redis+sentinel://` URL, and a
//! connection that asks the Sentinels again whenever the primary it reached may be gone.
//!
//! The connection keeps one multiplexed connection to the primary the Sentinels named last.
//! It drops it, and asks the Sentinels again on the next request, after any sign that the
//! node no longer serves as primary: a broken or closed connection, a `READONLY` or
//! `MASTERDOWN` answer (the node was demoted to a replica), `LOADING`, or a request left
//! unanswered for longer than [`STALLED`] (a paused or partitioned node; the caller's
//! timeout ends the request, and the next one goes to whatever the Sentinels name by then).
//! The Sentinels' answer is checked against the node itself (`ROLE` must say master), so a
//! demoted node is never taken for the primary. Every change of primary is logged at info
//! and announced to the store's subscription, which subscribes again on the new primary.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{AsyncConnectionConfig, ConnectionAddr, TlsMode};

use crate::error::LockError;

#[cfg(feature = "tls")]
use super::BACKEND;

/// A request unanswered for this long drops the connection it went out on.
const STALLED: Duration = Duration::from_secs(1);

/// What a `redis+sentinel://` URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SentinelTarget {
    /// The Sentinels, `host:port` each.
    pub(super) sentinels: Vec<(String, u16)>,
    /// The name the Sentinels monitor the primary by.
    pub(super) master: String,
    /// The database number on the primary.
    pub(super) db: i64,
    /// The primary's user name, if any.
    pub(super) username: Option<String>,
    /// The primary's password, if any.
    pub(super) password: Option<String>,
    /// The Sentinels' user name (`sentinel_username=`), if any.
    pub(super) sentinel_username: Option<String>,
    /// The Sentinels' password (`sentinel_password=`), if any.
    pub(super) sentinel_password: Option<String>,
    /// `rediss+sentinel://`: TLS to the Sentinels and the primary.
    pub(super) tls: bool,
    /// `sslrootcert=`: a PEM file of CA certificates to trust.
    pub(super) root_cert: Option<std::path::PathBuf>,
}

/// What a `redis+sentinel://` URL looks like, for error messages.
const SHAPE: &str = "redis+sentinel://[USER:PASSWORD@]HOST:PORT[,HOST:PORT…]/MASTER_NAME[/DB][?sentinel_password=…]";

/// The target of a `redis+sentinel://` or `rediss+sentinel://` URL, or `None` for any other
/// URL.
pub(super) fn sentinel_target(url: &str) -> Option<Result<SentinelTarget, LockError>> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("redis+sentinel://") {
        (false, rest)
    } else {
        (true, url.strip_prefix("rediss+sentinel://")?)
    };
    Some(parse(tls, rest))
}

fn parse(tls: bool, rest: &str) -> Result<SentinelTarget, LockError> {
    let bad = |reason: String| LockError::InvalidUrl {
        reason: format!("{reason}; write {SHAPE}"),
    };
    let decode = crate::util::percent::decode;
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (credentials, rest) = match rest.rsplit_once('@') {
        Some((credentials, rest)) => (Some(credentials), rest),
        None => (None, rest),
    };
    let (username, password) = match credentials {
        None => (None, None),
        Some(credentials) => match credentials.split_once(':') {
            Some((user, password)) => (
                (!user.is_empty()).then(|| decode(user)),
                (!password.is_empty()).then(|| decode(password)),
            ),
            None => (None, (!credentials.is_empty()).then(|| decode(credentials))),
        },
    };
    let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut sentinels = Vec::new();
    for host in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
        let (name, port) = match host.rsplit_once(':') {
            Some((name, port)) => {
                let port = port
                    .parse::<u16>()
                    .map_err(|_| bad(format!("`{port}` in `{host}` is not a port number")))?;
                (name, port)
            }
            // The Sentinels' usual port.
            None => (host, 26379),
        };
        let name = name.trim_start_matches('[').trim_end_matches(']');
        if name.is_empty() {
            return Err(bad(format!("`{host}` names no host")));
        }
        sentinels.push((name.to_owned(), port));
    }
    if sentinels.is_empty() {
        return Err(bad("the URL names no Sentinel".into()));
    }
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    let master = segments.next().map(decode).ok_or_else(|| {
        bad("the URL names no master (the name the Sentinels monitor it by)".into())
    })?;
    let db = match segments.next() {
        None => 0,
        Some(db) => db
            .parse::<i64>()
            .map_err(|_| bad(format!("the database `{db}` is not a number")))?,
    };
    if let Some(extra) = segments.next() {
        return Err(bad(format!("`/{extra}` follows the database number")));
    }
    let mut target = SentinelTarget {
        sentinels,
        master,
        db,
        username,
        password,
        sentinel_username: None,
        sentinel_password: None,
        tls,
        root_cert: None,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "sentinel_username" => target.sentinel_username = Some(decode(value)),
            "sentinel_password" => target.sentinel_password = Some(decode(value)),
            "sslrootcert" => target.root_cert = Some(decode(value).into()),
            other => {
                return Err(bad(format!(
                    "unknown option `{other}` (a Sentinel URL takes sentinel_username=, sentinel_password= and sslrootcert=, besides conc's own)"
                )));
            }
        }
    }
    Ok(target)
}

/// A connection to the primary the Sentinels name, asking them again after any sign that
/// it changed (see the module's documentation). Clones share the connection.
#[derive(Clone)]
pub(super) struct SentinelConnection {
    inner: Arc<Inner>,
}

struct Inner {
    /// Asks the Sentinels; one lookup at a time.
    client: tokio::sync::Mutex<SentinelClient>,
    /// The connection in use, with its generation.
    current: parking_lot::Mutex<Current>,
    /// The address of the primary in use, announced to the subscription.
    primary: tokio::sync::watch::Sender<Option<String>>,
    config: AsyncConnectionConfig,
    connect_timeout: Duration,
    master: String,
    db: i64,
}

#[derive(Default)]
struct Current {
    connection: Option<MultiplexedConnection>,
    generation: u64,
}

impl SentinelConnection {
    /// A connection for `target`: it asks the Sentinels for the primary and connects to it
    /// (so a wrong URL or unreachable Sentinels fail here).
    pub(super) async fn connect(
        target: &SentinelTarget,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Result<Self, LockError> {
        #[cfg(feature = "tls")]
        let root_cert = match &target.root_cert {
            Some(path) => Some(crate::backend::tls::read_root_cert(BACKEND, path)?),
            None => None,
        };
        #[cfg(not(feature = "tls"))]
        if target.tls || target.root_cert.is_some() {
            let scheme = if target.tls { "rediss" } else { "redis" };
            super::connection::refuse_tls(
                &format!("{scheme}+sentinel://"),
                target.root_cert.as_deref(),
            )?;
        }
        let addresses = target.sentinels.iter().map(|(host, port)| {
            if target.tls {
                ConnectionAddr::TcpTls {
                    host: host.clone(),
                    port: *port,
                    insecure: false,
                    tls_params: None,
                }
            } else {
                ConnectionAddr::Tcp(host.clone(), *port)
            }
        });
        let invalid = |e: redis::RedisError| LockError::InvalidUrl {
            reason: format!("bad Redis Sentinel URL: {e}"),
        };
        let mut builder =
            SentinelClientBuilder::new(addresses, &target.master, SentinelServerType::Master)
                .map_err(invalid)?
                .set_client_to_redis_db(target.db);
        if let Some(username) = &target.username {
            builder = builder.set_client_to_redis_username(username);
        }
        if let Some(password) = &target.password {
            builder = builder.set_client_to_redis_password(password);
        }
        if let Some(username) = &target.sentinel_username {
            builder = builder.set_client_to_sentinel_username(username);
        }
        if let Some(password) = &target.sentinel_password {
            builder = builder.set_client_to_sentinel_password(password);
        }
        if target.tls {
            builder = builder
                .set_client_to_redis_tls_mode(TlsMode::Secure)
                .set_client_to_sentinel_tls_mode(TlsMode::Secure);
            #[cfg(feature = "tls")]
            if let Some(pem) = root_cert {
                let certificates = || redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                };
                builder = builder
                    .set_client_to_redis_certificates(certificates())
                    .set_client_to_sentinel_certificates(certificates());
            }
        }
        let client = builder.build().map_err(invalid)?;
        let connection = Self {
            inner: Arc::new(Inner {
                client: tokio::sync::Mutex::new(client),
                current: parking_lot::Mutex::default(),
                primary: tokio::sync::watch::Sender::new(None),
                config: AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(Some(response_timeout)),
                connect_timeout,
                master: target.master.clone(),
                db: target.db,
            }),
        };
        connection
            .current()
            .await
            .map_err(super::connection::connect_error)?;
        Ok(connection)
    }

    /// The connection in use and its generation; asks the Sentinels and connects when there
    /// is none.
    async fn current(&self) -> redis::RedisResult<(MultiplexedConnection, u64)> {
        if let Some(found) = self.in_use() {
            return Ok(found);
        }
        let mut client = self.inner.client.lock().await;
        // Another request may have connected while this one waited for the lookup.
        if let Some(found) = self.in_use() {
            return Ok(found);
        }
        let limit = self.inner.connect_timeout;
        let primary = tokio::time::timeout(limit, client.async_get_client())
            .await
            .map_err(|_| timed_out("asking the Sentinels for the primary", limit))??;
        let address = primary.get_connection_info().addr().to_string();
        let connection = tokio::time::timeout(
            limit,
            primary.get_multiplexed_async_connection_with_config(&self.inner.config),
        )
        .await
        .map_err(|_| timed_out("connecting to the primary", limit))??;
        drop(client);
        let generation = {
            let mut current = self.inner.current.lock();
            current.generation += 1;
            current.connection = Some(connection.clone());
            current.generation
        };
        self.inner.primary.send_if_modified(|known| {
            if known.as_deref() == Some(address.as_str()) {
                return false;
            }
            if known.is_some() {
                tracing::info!(master = %self.inner.master, primary = %address, "the Redis Sentinels name a new primary; the lock store follows it");
            }
            *known = Some(address.clone());
            true
        });
        Ok((connection, generation))
    }

    fn in_use(&self) -> Option<(MultiplexedConnection, u64)> {
        let current = self.inner.current.lock();
        current
            .connection
            .clone()
            .map(|connection| (connection, current.generation))
    }

    /// Drops the connection of `generation`, if it is still the one in use.
    fn forget(&self, generation: u64) {
        let mut current = self.inner.current.lock();
        if current.generation == generation && current.connection.take().is_some() {
            tracing::debug!(master = %self.inner.master, "dropping the connection to the Redis primary; the Sentinels are asked again");
        }
    }

    /// A client for the primary the Sentinels name now, for the subscription.
    pub(super) async fn primary_client(&self) -> Result<redis::Client, String> {
        let limit = self.inner.connect_timeout;
        let mut client = self.inner.client.lock().await;
        let primary = tokio::time::timeout(limit, client.async_get_client())
            .await
            .map_err(|_| format!("asking the Sentinels took longer than {limit:?}"))?
            .map_err(|e| e.to_string())?;
        Ok(primary)
    }

    /// Changes whenever the connection reaches a new primary.
    pub(super) fn primary_changes(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.inner.primary.subscribe()
    }

    /// Runs one request (a command or a pipeline) on the connection in use, dropping that
    /// connection after any sign that its node no longer serves as primary.
    async fn request(&self, request: Request<'_>) -> redis::RedisResult<Reply> {
        use redis::aio::ConnectionLike as _;
        let (mut connection, generation) = self.current().await?;
        let mut pending = Pending {
            connection: self,
            generation,
            sent: Instant::now(),
            done: false,
        };
        let result = match request {
            Request::Command(cmd) => connection.req_packed_command(cmd).await.map(Reply::One),
            Request::Pipeline(pipeline, offset, count) => connection
                .req_packed_commands(pipeline, offset, count)
                .await
                .map(Reply::Many),
        };
        pending.done = true;
        if let Err(error) = &result
            && primary_gone(error)
        {
            self.forget(generation);
        }
        result
    }
}

/// A request of [`ConnectionLike`](redis::aio::ConnectionLike).
enum Request<'a> {
    Command(&'a redis::Cmd),
    Pipeline(&'a redis::Pipeline, usize, usize),
}

/// Its reply.
enum Reply {
    One(redis::Value),
    Many(Vec<redis::Value>),
}

/// Drops the connection when a request on it is abandoned after [`STALLED`].
struct Pending<'a> {
    connection: &'a SentinelConnection,
    generation: u64,
    sent: Instant,
    done: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.done && self.sent.elapsed() >= STALLED {
            self.connection.forget(self.generation);
        }
    }
}

/// Whether `error` says the node may no longer be the primary, or no longer reachable.
fn primary_gone(error: &redis::RedisError) -> bool {
    // What a retry on the same connection could outlive, and a refused connection: the
    // primary is gone, so the Sentinels are asked again.
    super::run::retriable(error) || error.is_connection_refusal()
}

fn timed_out(what: &str, limit: Duration) -> redis::RedisError {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what} took longer than {limit:?}"),
    )
    .into()
}

/// A reply of the other shape than the request's (which `request` never returns).
fn unreachable_reply<T>() -> redis::RedisResult<T> {
    Err(redis::RedisError::from((
        redis::ErrorKind::Client,
        "a reply of the wrong shape",
    )))
}

impl redis::aio::ConnectionLike for SentinelConnection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        Box::pin(async move {
            match self.request(Request::Command(cmd)).await? {
                Reply::One(value) => Ok(value),
                Reply::Many(_) => unreachable_reply(),
            }
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        Box::pin(async move {
            match self
                .request(Request::Pipeline(pipeline, offset, count))
                .await?
            {
                Reply::Many(values) => Ok(values),
                Reply::One(_) => unreachable_reply(),
            }
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.db
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_parse() {
        let target = sentinel_target(
            "redis+sentinel://app:s%40cret@h1:26379,h2,[::1]:26380/mymaster/2?sentinel_password=pw",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            target.sentinels,
            vec![
                ("h1".to_owned(), 26379),
                ("h2".to_owned(), 26379),
                ("::1".to_owned(), 26380)
            ]
        );
        assert_eq!(target.master, "mymaster");
        assert_eq!(target.db, 2);
        assert_eq!(target.username.as_deref(), Some("app"));
        assert_eq!(target.password.as_deref(), Some("s@cret"));
        assert_eq!(target.sentinel_password.as_deref(), Some("pw"));
        assert!(!target.tls);
        let tls = sentinel_target("rediss+sentinel://h:1/m?sslrootcert=/ca.pem")
            .unwrap()
            .unwrap();
        assert!(tls.tls);
        assert_eq!(
            tls.root_cert.as_deref(),
            Some(std::path::Path::new("/ca.pem"))
        );
        assert!(sentinel_target("redis://h:1").is_none());
        for bad in [
            "redis+sentinel://",
            "redis+sentinel://h:1",
            "redis+sentinel://h:1/",
            "redis+sentinel://h:x/m",
            "redis+sentinel://h:1/m/zero",
            "redis+sentinel://h:1/m/0/more",
            "redis+sentinel://h:1/m?db=1",
        ] {
            let error = sentinel_target(bad).unwrap().unwrap_err();
            assert!(
                matches!(&error, LockError::InvalidUrl { reason } if reason.contains("redis+sentinel://")),
                "{bad}: {error}"
            );
        }
    }
}
