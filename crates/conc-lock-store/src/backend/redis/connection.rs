//! Reaching Redis: one server through a connection manager, a cluster through the cluster
//! client, or the primary Redis Sentinels name; the URLs that name them (`redis+cluster://`
//! node lists, `sslrootcert=`), and the errors of a connection, named by cause.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;

use crate::error::LockError;

use super::BACKEND;
use super::sentinel::SentinelConnection;

/// One server through a connection manager, a cluster through the redis crate's cluster
/// connection (which follows `MOVED`/`ASK` and the cluster's topology), or the primary the
/// Sentinels name (which follows a failover).
#[derive(Clone)]
pub(super) enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(SentinelConnection),
}

impl redis::aio::ConnectionLike for Connection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
            Self::Sentinel(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
            Self::Sentinel(c) => c.get_db(),
        }
    }
}

/// A connection failure, with its cause named.
pub(super) fn connect_error(error: redis::RedisError) -> LockError {
    let cause = match error.kind() {
        redis::ErrorKind::AuthenticationFailed => crate::error::ConnectFailure::Authentication,
        _ if error.to_string().contains("NOAUTH") || error.to_string().contains("WRONGPASS") => {
            crate::error::ConnectFailure::Authentication
        }
        _ if error.is_connection_refusal() => crate::error::ConnectFailure::Refused,
        _ if error.is_timeout() => crate::error::ConnectFailure::Timeout,
        _ => LockError::connect_failure(&error),
    };
    LockError::Connect {
        backend: BACKEND,
        cause,
        message: error.to_string(),
    }
}

pub(super) fn redis_error(context: &'static str) -> impl Fn(redis::RedisError) -> LockError {
    move |e| LockError::backend(BACKEND, format!("{context}: {e}"), e)
}

pub(super) fn parse_error(context: &'static str) -> impl Fn(redis::ParsingError) -> LockError {
    move |e| LockError::Backend {
        backend: BACKEND,
        message: format!("{context}: unexpected reply: {e}"),
        source: None,
    }
}

pub(super) fn connect_timed_out(limit: Duration) -> LockError {
    LockError::Connect {
        backend: BACKEND,
        cause: crate::error::ConnectFailure::Timeout,
        message: format!("connecting took longer than {limit:?}"),
    }
}

pub(super) fn timed_out(what: &str, limit: Duration) -> LockError {
    LockError::Backend {
        backend: BACKEND,
        message: format!("{what} took longer than {limit:?}"),
        source: None,
    }
}

/// The node URLs of a `redis+cluster://` or `rediss+cluster://` URL
/// (`redis+cluster://[user:password@]host:port[,host:port…][/db][?query]`), or `None` for
/// any other URL.
pub(super) fn cluster_nodes(url: &str) -> Option<Result<Vec<String>, LockError>> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("redis+cluster://") {
        ("redis", rest)
    } else {
        ("rediss", url.strip_prefix("rediss+cluster://")?)
    };
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, format!("?{query}")),
        None => (rest, String::new()),
    };
    let (credentials, hosts) = match rest.rsplit_once('@') {
        Some((credentials, hosts)) => (format!("{credentials}@"), hosts),
        None => (String::new(), rest),
    };
    let (hosts, path) = match hosts.split_once('/') {
        Some((hosts, path)) => (hosts, format!("/{path}")),
        None => (hosts, String::new()),
    };
    let nodes: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|host| format!("{scheme}://{credentials}{host}{path}{query}"))
        .collect();
    if nodes.is_empty() {
        return Some(Err(LockError::InvalidUrl {
            reason: format!(
                "`{url}` names no node: write redis+cluster://HOST:PORT,HOST:PORT (any nodes of the cluster)"
            ),
        }));
    }
    Some(Ok(nodes))
}

/// A client for one server, with the root certificate an `sslrootcert=` option names.
pub(super) fn client_for(url: &str) -> Result<redis::Client, LockError> {
    let split = crate::backend::tls::split(url);
    crate::util::options::refuse_unknown(
        url,
        crate::util::options::REDIS_DRIVER,
        "a Redis URL",
        "prefix, allow_eviction, min_replicas, replica_timeout, op_timeout and connect_timeout",
    )?;
    #[cfg(not(feature = "tls"))]
    refuse_tls(&split.url, split.root_cert.as_deref())?;
    #[cfg(feature = "tls")]
    let client = match &split.root_cert {
        Some(path) => redis::Client::build_with_tls(
            split.url.as_str(),
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(crate::backend::tls::read_root_cert(BACKEND, path)?),
            },
        ),
        None => redis::Client::open(split.url.as_str()),
    };
    #[cfg(not(feature = "tls"))]
    let client = redis::Client::open(split.url.as_str());
    client.map_err(|e| LockError::InvalidUrl {
        reason: format!("bad Redis URL: {e}"),
    })
}

/// In a build without the `tls` feature, refuses a URL that asks for TLS (`rediss…://`, or
/// a root certificate to trust), naming the feature.
#[cfg(not(feature = "tls"))]
pub(super) fn refuse_tls(url: &str, root_cert: Option<&std::path::Path>) -> Result<(), LockError> {
    if let Some((scheme, _)) = url.split_once("://")
        && scheme.starts_with("rediss")
    {
        let what = format!("{scheme}://");
        return Err(crate::backend::tls::not_built(BACKEND, &what));
    }
    match root_cert {
        Some(path) => {
            let what = format!("sslrootcert={}", path.display());
            Err(crate::backend::tls::not_built(BACKEND, &what))
        }
        None => Ok(()),
    }
}

/// Escapes the glob characters of `text` for `SCAN … MATCH`.
pub(super) fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
