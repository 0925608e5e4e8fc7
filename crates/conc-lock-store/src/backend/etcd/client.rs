//! Connecting: the `etcd://` and `etcds://` URLs, the client's options, the first read
//! (which proves the cluster answers), and the errors of a request, named by cause.

use std::sync::Arc;
use std::time::Duration;

use crate::error::{ConnectFailure, LockError};
use crate::notify::Watchers;

use super::watcher::watch;
use super::{BACKEND, EtcdConfig, EtcdLockStore};

/// What an `etcd://` URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Endpoints {
    /// `http://host:port` or `https://host:port`, one per member named.
    pub(super) urls: Vec<String>,
    /// `sslrootcert=`: a PEM file of CA certificates to trust.
    pub(super) root_cert: Option<std::path::PathBuf>,
    /// The user and password written before `@`, if any.
    pub(super) credentials: Option<(String, String)>,
}

const SHAPE: &str = "etcd://[USER:PASSWORD@]HOST:PORT[,HOST:PORT…] (etcds:// for TLS, with ?sslrootcert=PATH for a private CA)";

/// The members an `etcd://` or `etcds://` URL names.
pub(super) fn endpoints(url: &str) -> Result<Endpoints, LockError> {
    let bad = |reason: String| LockError::InvalidUrl {
        reason: format!("{reason}; write {SHAPE}"),
    };
    let (tls, rest) = if let Some(rest) = url.strip_prefix("etcd://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("etcds://") {
        (true, rest)
    } else {
        return Err(bad(format!("`{url}` is not an etcd URL")));
    };
    let decode = crate::util::percent::decode;
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (credentials, rest) = match rest.rsplit_once('@') {
        Some((credentials, rest)) => {
            let (user, password) = credentials.split_once(':').unwrap_or((credentials, ""));
            (Some((decode(user), decode(password))), rest)
        }
        None => (None, rest),
    };
    let hosts = rest.trim_end_matches('/');
    if hosts.contains('/') {
        return Err(bad(format!(
            "`{url}` has a path; etcd URLs name members only"
        )));
    }
    let scheme = if tls { "https" } else { "http" };
    let mut urls = Vec::new();
    for host in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
        let (name, port) = match host.rsplit_once(':') {
            Some((name, port)) if !name.ends_with(':') => {
                let port = port
                    .parse::<u16>()
                    .map_err(|_| bad(format!("`{port}` in `{host}` is not a port number")))?;
                (name, port)
            }
            _ => (host, 2379),
        };
        if name.is_empty() {
            return Err(bad(format!("`{host}` names no host")));
        }
        urls.push(format!("{scheme}://{name}:{port}"));
    }
    if urls.is_empty() {
        return Err(bad(format!("`{url}` names no member")));
    }
    let mut root_cert = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "sslrootcert" if tls => root_cert = Some(decode(value).into()),
            "sslrootcert" => {
                return Err(bad(
                    "sslrootcert= needs TLS: write etcds:// instead of etcd://".into(),
                ));
            }
            other => {
                return Err(bad(format!(
                    "unknown option `{other}` (an etcd URL takes sslrootcert=, besides conc's own)"
                )));
            }
        }
    }
    Ok(Endpoints {
        urls,
        root_cert,
        credentials,
    })
}

impl EtcdLockStore {
    /// Connects to the etcd cluster `url` names, `etcd://host:port[,host:port…]` (any of
    /// its members; the client spreads requests over them and goes on through the others
    /// when one fails), or `etcds://` for TLS (`?sslrootcert=PATH` for a private CA).
    /// Credentials go before `@` (`etcd://user:password@host:2379`) or in
    /// [`EtcdConfig::credentials`].
    ///
    /// It reads the lock keys' revision (so a cluster that does not answer is an error
    /// here, not at the first lock) and starts the store's one watch on its prefix.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: nothing is written on connect.
    pub async fn connect(url: &str, config: EtcdConfig) -> Result<Self, LockError> {
        let endpoints = endpoints(url)?;
        let mut options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_timeout(config.op_timeout)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5))
            // A member cut off from the leader refuses requests and ends watches, rather
            // than serve what it last knew.
            .with_require_leader(true);
        if let Some((user, password)) = endpoints
            .credentials
            .clone()
            .or_else(|| config.credentials.clone())
        {
            // Tokens expire; a long-lived store gets a new one when etcd says so.
            options = options
                .with_user(user, password)
                .with_auto_token_refresh(true);
        }
        #[cfg(not(feature = "tls"))]
        if endpoints.urls.iter().any(|u| u.starts_with("https://")) {
            return Err(crate::backend::tls::not_built(BACKEND, "etcds://"));
        }
        #[cfg(feature = "tls")]
        if endpoints.urls.iter().any(|u| u.starts_with("https://")) {
            let mut tls = etcd_client::TlsOptions::new().with_enabled_roots();
            if let Some(path) = &endpoints.root_cert {
                let pem = crate::backend::tls::read_root_cert(BACKEND, path)?;
                tls = tls.ca_certificate(etcd_client::Certificate::from_pem(pem));
            }
            options = options.with_tls(tls);
        }
        let connect = etcd_client::Client::connect(endpoints.urls.clone(), Some(options));
        let client = tokio::time::timeout(config.connect_timeout, connect)
            .await
            .map_err(|_| connect_timed_out(config.connect_timeout))?
            .map_err(|e| connect_error(&e))?;
        Self::from_client(client, config).await
    }

    /// A store on an [`etcd_client::Client`] the service already has. It reads the lock
    /// keys' revision and starts the store's watch.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: nothing is written on connect.
    pub async fn from_client(
        client: etcd_client::Client,
        config: EtcdConfig,
    ) -> Result<Self, LockError> {
        let watchers = Arc::<Watchers>::default();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let store = Self {
            client,
            config,
            watchers: watchers.clone(),
            _watcher: stop,
        };
        // The first read proves the cluster answers, and gives the revision the watch
        // starts after.
        let mut kv = store.client.kv_client();
        let read = kv.get(
            store.lock_prefix(),
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_keys_only()
                    .with_limit(1),
            ),
        );
        let revision = match tokio::time::timeout(store.config.connect_timeout, read).await {
            Ok(Ok(reply)) => reply.header().map_or(0, |h| h.revision()),
            Ok(Err(e)) => return Err(connect_error(&e)),
            Err(_) => return Err(connect_timed_out(store.config.connect_timeout)),
        };
        let (ready, started) = tokio::sync::oneshot::channel();
        tokio::spawn(watch(
            store.client.clone(),
            store.lock_prefix(),
            revision,
            store.config.connect_timeout,
            Arc::downgrade(&watchers),
            stopped,
            ready,
        ));
        match tokio::time::timeout(store.config.connect_timeout, started).await {
            Ok(Ok(())) => Ok(store),
            _ => Err(LockError::Backend {
                backend: BACKEND,
                message: format!(
                    "starting the watch on the lock keys took longer than {:?}",
                    store.config.connect_timeout
                ),
                source: None,
            }),
        }
    }

    /// `<prefix>lock/`: the start of every lock key.
    pub(super) fn lock_prefix(&self) -> String {
        format!("{}lock/", self.config.prefix)
    }

    /// The etcd key of the lock on `key`.
    pub(super) fn lock_key(&self, key: &str) -> String {
        format!("{}lock/{key}", self.config.prefix)
    }

    /// The user key of an etcd key under [`lock_prefix`](Self::lock_prefix).
    pub(super) fn user_key<'a>(&self, name: &'a [u8]) -> Option<&'a str> {
        std::str::from_utf8(name)
            .ok()?
            .strip_prefix(self.config.prefix.as_str())?
            .strip_prefix("lock/")
    }

    /// Runs one request (made by `make`) within the operation timeout, as
    /// [`call_raw`](Self::call_raw); etcd's error becomes a transient backend error.
    pub(super) async fn call<T, F>(
        &self,
        what: &'static str,
        make: impl Fn() -> F,
    ) -> Result<T, LockError>
    where
        F: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        self.call_raw(what, make)
            .await?
            .map_err(|e| request_error(what, e))
    }

    /// Runs one request (made by `make`) within the operation timeout: `Err` when time
    /// ran out, else etcd's answer. A request that never left (the member the client
    /// picked refused the connection, as a killed one does) is sent again, see
    /// [`send_until_sent`].
    pub(super) async fn call_raw<T, F>(
        &self,
        what: &'static str,
        make: impl Fn() -> F,
    ) -> Result<Result<T, etcd_client::Error>, LockError>
    where
        F: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + self.config.op_timeout;
        send_until_sent(deadline, make, never_sent)
            .await
            .ok_or_else(|| LockError::Backend {
                backend: BACKEND,
                message: format!("{what} took longer than {:?}", self.config.op_timeout),
                source: None,
            })
    }
}

/// Runs `make()`'s request until `deadline`, sending it again while it fails before
/// reaching any member (`never_sent`), as etcd's own client does: `None` when time ran out
/// during a try, else the last answer (a request that still could not be sent when the
/// next pause would pass the deadline answers with its error).
///
/// The tries are bounded by time, not counted: with a member down, the client's balancer
/// keeps picking it now and then (a refused connection fails at once, so the dead member
/// looks the least loaded), and four tries in a row went to it in a CI run. Sending again is
/// safe only because such a request cannot have been applied.
async fn send_until_sent<T, E, F>(
    deadline: tokio::time::Instant,
    make: impl Fn() -> F,
    never_sent: impl Fn(&E) -> bool,
) -> Option<Result<T, E>>
where
    F: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut tries = 0u64;
    loop {
        tries += 1;
        match tokio::time::timeout_at(deadline, make()).await {
            Err(_) => return None,
            Ok(Err(e)) if never_sent(&e) => {
                let pause = Duration::from_millis(20 * tries.min(5));
                if tokio::time::Instant::now() + pause >= deadline {
                    return Some(Err(e));
                }
                tracing::debug!(error = %e, tries, "an etcd request could not be sent; trying again");
                tokio::time::sleep(pause).await;
            }
            Ok(answer) => return Some(answer),
        }
    }
}

/// Whether a request failed before it reached any member (so sending it again cannot
/// apply it twice): a transport failure, or gRPC's UNAVAILABLE (code 14) for a connection
/// that could not be made.
fn never_sent(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) => true,
        etcd_client::Error::GRpcStatus(status) => {
            i32::from(status.code()) == 14 && status.message().contains("connect")
        }
        _ => false,
    }
}

/// A failed request, as a transient backend error naming what failed.
pub(super) fn request_error(what: &'static str, e: etcd_client::Error) -> LockError {
    LockError::backend(BACKEND, format!("{what}: {e}"), e)
}

fn connect_timed_out(limit: Duration) -> LockError {
    LockError::Connect {
        backend: BACKEND,
        cause: ConnectFailure::Timeout,
        message: format!("the cluster did not answer within {limit:?}"),
    }
}

/// A connection failure, with its cause named.
fn connect_error(error: &etcd_client::Error) -> LockError {
    let text = error.to_string();
    // gRPC's UNAUTHENTICATED is code 16.
    let cause = if let etcd_client::Error::GRpcStatus(status) = error
        && i32::from(status.code()) == 16
    {
        ConnectFailure::Authentication
    } else if text.contains("authentication failed") || text.contains("invalid auth") {
        ConnectFailure::Authentication
    } else {
        let found = LockError::connect_failure(error);
        if found == ConnectFailure::Other
            && (text.contains("Connection refused") || text.contains("tcp connect error"))
        {
            ConnectFailure::Refused
        } else {
            found
        }
    };
    LockError::Connect {
        backend: BACKEND,
        cause,
        message: text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request refused `refusals` times, then answered; `Err(true)` is "never sent".
    async fn refused_then_answered(
        refusals: u32,
        limit: Duration,
    ) -> (Option<Result<u32, bool>>, u32) {
        let tries = std::cell::Cell::new(0);
        let deadline = tokio::time::Instant::now() + limit;
        let answer = send_until_sent(
            deadline,
            || {
                tries.set(tries.get() + 1);
                let n = tries.get();
                async move { if n <= refusals { Err(true) } else { Ok(n) } }
            },
            |refused: &bool| *refused,
        )
        .await;
        (answer, tries.get())
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_was_never_sent_is_sent_again_while_time_lasts() {
        // Ten refusals in a row (a dead member picked again and again): still answered.
        assert_eq!(
            refused_then_answered(10, Duration::from_secs(5)).await,
            (Some(Ok(11)), 11)
        );
        // Refused for good: the refusal comes back before the deadline, not a timeout.
        let started = tokio::time::Instant::now();
        let (answer, tries) = refused_then_answered(u32::MAX, Duration::from_secs(1)).await;
        assert_eq!(answer, Some(Err(true)));
        assert!(tries > 4, "{tries} tries");
        assert!(started.elapsed() < Duration::from_secs(1));
        // An error that may have reached a member is not sent again.
        let tries = std::cell::Cell::new(0);
        let answer = send_until_sent(
            tokio::time::Instant::now() + Duration::from_secs(5),
            || {
                tries.set(tries.get() + 1);
                async { Err::<u32, bool>(false) }
            },
            |refused: &bool| *refused,
        )
        .await;
        assert_eq!((answer, tries.get()), (Some(Err(false)), 1));
    }

    #[test]
    fn etcd_urls_parse() {
        let parsed = endpoints("etcd://h1:2379,h2,10.0.0.3:32379").unwrap();
        assert_eq!(
            parsed.urls,
            ["http://h1:2379", "http://h2:2379", "http://10.0.0.3:32379"]
        );
        assert!(parsed.credentials.is_none());
        let parsed = endpoints("etcds://app:p%40ss@h:2379?sslrootcert=/ca.pem").unwrap();
        assert_eq!(parsed.urls, ["https://h:2379"]);
        assert_eq!(
            parsed.credentials,
            Some(("app".to_owned(), "p@ss".to_owned()))
        );
        assert_eq!(
            parsed.root_cert.as_deref(),
            Some(std::path::Path::new("/ca.pem"))
        );
        for bad in [
            "etcd://",
            "etcd://h:x",
            "etcd://h:1/path",
            "etcd://h:1?sslrootcert=/ca.pem",
            "etcd://h:1?prefix2=x",
            "redis://h:1",
        ] {
            let error = endpoints(bad).unwrap_err();
            assert!(
                matches!(&error, LockError::InvalidUrl { reason } if reason.contains("etcd://")),
                "{bad}: {error}"
            );
        }
    }
}
