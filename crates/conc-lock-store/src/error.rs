//! [`LockError`]: every way a lock operation can fail, with a message a user can act on.

use std::time::Duration;

use crate::lease::LockInfo;

/// Why a store could not connect: each cause has its own advice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnectFailure {
    /// Nothing listens at the address (a closed port, a server that is down).
    Refused,
    /// The server refused the credentials.
    Authentication,
    /// The database (or schema) named in the URL does not exist.
    DatabaseMissing,
    /// The TLS handshake failed: a certificate that does not verify, a server without TLS.
    Tls,
    /// The server did not answer in time.
    Timeout,
    /// Any other connection failure (a reset, a DNS error, …).
    Other,
}

impl ConnectFailure {
    fn advice(self) -> &'static str {
        match self {
            ConnectFailure::Refused => {
                "connection refused: is the server running, and are the host and port right?"
            }
            ConnectFailure::Authentication => {
                "authentication failed: check the user and password in the URL"
            }
            ConnectFailure::DatabaseMissing => {
                "the database does not exist: create it, or fix its name in the URL"
            }
            ConnectFailure::Tls => {
                "TLS failed: check that the server speaks TLS and that its certificate verifies (add `sslrootcert=PATH` for a private CA)"
            }
            ConnectFailure::Timeout => {
                "the server did not answer in time: check the network, or raise the connect timeout"
            }
            ConnectFailure::Other => "could not connect",
        }
    }
}

impl std::fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.advice())
    }
}

/// A lock operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// The key is empty or too long.
    #[error("invalid lock key: {reason}")]
    InvalidKey {
        /// What is wrong with it.
        reason: String,
    },
    /// A semaphore's number of permits is out of range.
    #[error(
        "invalid number of permits {permits}: a semaphore has 1 to {max} (each permit is a lease of its own)"
    )]
    InvalidPermits {
        /// The number asked for.
        permits: u32,
        /// The most a semaphore may have.
        max: u32,
    },
    /// An election's timing does not hold together (see `ElectionConfig::validate`).
    #[error("invalid election configuration: {reason}")]
    InvalidElection {
        /// What is wrong, and what would be right.
        reason: String,
    },
    /// The owner is empty.
    #[error(
        "invalid lock owner: the owner must not be empty, only whitespace or hold a NUL byte (use a worker, user or process id)"
    )]
    InvalidOwner,
    /// A store URL that names no store conc knows, or has a bad option.
    #[error("invalid lock store URL: {reason}")]
    InvalidUrl {
        /// What is wrong, and what would be right.
        reason: String,
    },
    /// A metadata entry cannot be stored (it holds a NUL byte).
    #[error("invalid lock metadata: {reason}")]
    InvalidMetadata {
        /// What is wrong with it.
        reason: String,
    },
    /// The store lost its state (a restart without persistence, a flush) and grants no
    /// lock until every lease that could still be live has run out.
    #[error("the {backend} lock store lost its state and grants no lock until {} (the longest lease that could still be live); retry then", crate::util::clock::format_time(*.until))]
    Recovering {
        /// Which backend.
        backend: &'static str,
        /// When it grants locks again.
        until: std::time::SystemTime,
    },
    /// The store is set up in a way that can lose live locks.
    #[error("{backend} lock store refused: {reason}")]
    Unsafe {
        /// Which backend.
        backend: &'static str,
        /// What is wrong, and what to do.
        reason: String,
    },
    /// The TTL is outside what the store accepts.
    #[error("invalid lock ttl {ttl:?}: it must be between {min:?} and {max:?}")]
    InvalidTtl {
        /// The TTL asked for.
        ttl: Duration,
        /// The shortest accepted.
        min: Duration,
        /// The longest accepted.
        max: Duration,
    },
    /// The TTL leaves no time to use the lease: a holder treats its lease as valid for the
    /// TTL less the drift margin (counted from when the request was sent), and that would
    /// be less than [`MIN_VALIDITY`](crate::MIN_VALIDITY).
    #[error(
        "lock ttl {ttl:?} is too short: a holder stops {margin:?} (the drift margin) before it runs out, so the lease would be lost as soon as it was granted; use a TTL of at least {least:?} (in practice, several round trips to the store), or a smaller drift margin"
    )]
    TtlWithinMargin {
        /// The TTL asked for.
        ttl: Duration,
        /// The drift margin in force.
        margin: Duration,
        /// The shortest TTL that leaves the lease any use.
        least: Duration,
    },
    /// `acquire` waited its whole limit.
    #[error("timed out after {waited:?} waiting for lock `{key}`{}", match .holder {
        Some(h) => format!("; held by `{}` since {} (fence {})", h.owner, crate::util::clock::format_time(h.acquired_at), h.fence),
        None => String::new(),
    })]
    Timeout {
        /// The key.
        key: String,
        /// How long it waited.
        waited: Duration,
        /// Who holds it now, if known.
        holder: Option<Box<LockInfo>>,
    },
    /// The lease expired or was taken: the holder must stop using the resource.
    #[error("lease on `{key}` lost: it expired or was taken over (fence {fence})")]
    Lost {
        /// The key.
        key: String,
        /// The lost lease's fence.
        fence: u64,
    },
    /// The store granted or renewed the lease, but its answer came back so late that the
    /// lease's validity, counted from when the request was sent (its TTL less the drift
    /// margin), had already run out: another process may hold the lock by now, so the
    /// lease is not handed out. It is released by its token in the background (a no-op if
    /// it has expired). A slow or stalled network between this process and the store
    /// causes it; transient: [`LockStore::acquire`](crate::LockStore::acquire) tries again
    /// within its wait.
    #[error(
        "the store's answer to the {operation} of `{key}` came {answered_after:?} after the request was sent, past the lease's validity of {valid_for:?} (its TTL less the drift margin): the lease (fence {fence}) may already be another holder's, so it was not handed out and is being released; check the network to the store, or use a longer TTL"
    )]
    LateReply {
        /// The key.
        key: String,
        /// The lease's fence, which a fenced resource now refuses.
        fence: u64,
        /// What was asked: `acquire`, `take-over` or `renew`.
        operation: &'static str,
        /// How long after the request was sent the answer came.
        answered_after: std::time::Duration,
        /// How long the lease was valid for, from when the request was sent.
        valid_for: std::time::Duration,
    },
    /// The store could not connect to its server, for `cause`.
    #[error("{backend} lock store: {cause} ({message})")]
    Connect {
        /// Which backend.
        backend: &'static str,
        /// Why.
        cause: ConnectFailure,
        /// What the driver said.
        message: String,
    },
    /// The backend failed (I/O, a server error, a dropped connection, a timeout).
    #[error("{backend} lock store failed: {message}")]
    Backend {
        /// Which backend.
        backend: &'static str,
        /// What happened.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// Fewer replicas than asked for acknowledged a lock write in time (the store's
    /// `min_replicas`, Redis's `WAIT`): a failover now could promote a replica without it.
    /// An acquire or take-over is undone before this is returned; transient.
    #[error(
        "{backend} lock store: only {acknowledged} of the {required} replicas asked for acknowledged the {operation} in time; a failover could lose it, so it was not kept"
    )]
    NotReplicated {
        /// Which backend.
        backend: &'static str,
        /// What was written.
        operation: &'static str,
        /// How many replicas acknowledged it.
        acknowledged: u32,
        /// How many were asked for.
        required: u32,
    },
    /// The server answered something this store did not ask for: a row of the wrong shape,
    /// or a prepared statement that is not the one sent (what a transaction pooler does to
    /// named statements). Not transient: retrying the same way gets the same answer; the
    /// message says what to change.
    #[error("{backend} lock store got an unexpected answer to {statement}: {reason}")]
    UnexpectedAnswer {
        /// Which backend.
        backend: &'static str,
        /// Which statement or script.
        statement: &'static str,
        /// What was wrong, and what to do.
        reason: String,
    },
}

impl LockError {
    #[cfg(any(feature = "sqlite", feature = "postgres", feature = "redis"))]
    /// The error to report for each lease of a batch whose one request failed (a batched
    /// renewal): the same kind and message, without the source, which cannot be shared.
    pub(crate) fn for_each_of_a_batch(&self) -> LockError {
        match self {
            LockError::Connect {
                backend,
                cause,
                message,
            } => LockError::Connect {
                backend,
                cause: *cause,
                message: message.clone(),
            },
            LockError::Backend {
                backend, message, ..
            } => LockError::Backend {
                backend,
                message: message.clone(),
                source: None,
            },
            LockError::NotReplicated {
                backend,
                operation,
                acknowledged,
                required,
            } => LockError::NotReplicated {
                backend,
                operation,
                acknowledged: *acknowledged,
                required: *required,
            },
            other => LockError::Backend {
                backend: "lock store",
                message: other.to_string(),
                source: None,
            },
        }
    }

    /// A backend error with its source.
    pub fn backend(
        backend: &'static str,
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        LockError::Backend {
            backend,
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// The outcome of a take-over that must take the lock (a backend that found nothing
    /// taken reports an error rather than panicking).
    pub(crate) fn taken(
        backend: &'static str,
        lease: Option<crate::lease::Lease>,
    ) -> Result<crate::lease::Lease, LockError> {
        lease.ok_or_else(|| LockError::Backend {
            backend,
            message: "take-over did not take the lock".into(),
            source: None,
        })
    }

    /// Whether retrying the operation may help (a backend failure, or a store waiting out
    /// its recovery).
    pub fn is_transient(&self) -> bool {
        match self {
            LockError::Backend { .. }
            | LockError::Recovering { .. }
            | LockError::NotReplicated { .. }
            | LockError::LateReply { .. } => true,
            LockError::Connect { cause, .. } => matches!(
                cause,
                ConnectFailure::Refused | ConnectFailure::Timeout | ConnectFailure::Other
            ),
            _ => false,
        }
    }

    /// Classifies a connection error by walking its source chain: a TLS error anywhere, a
    /// refused or timed-out socket, or `Other`.
    pub fn connect_failure(error: &(dyn std::error::Error + 'static)) -> ConnectFailure {
        let mut current = Some(error);
        let mut cause = ConnectFailure::Other;
        while let Some(error) = current {
            let text = error.to_string().to_ascii_lowercase();
            if text.contains("certificate") || text.contains("tls") || text.contains("ssl") {
                return ConnectFailure::Tls;
            }
            if let Some(io) = error.downcast_ref::<std::io::Error>() {
                match io.kind() {
                    std::io::ErrorKind::ConnectionRefused => cause = ConnectFailure::Refused,
                    std::io::ErrorKind::TimedOut => cause = ConnectFailure::Timeout,
                    _ => {}
                }
                if let Some(inner) = io.get_ref()
                    && Self::connect_failure(inner) == ConnectFailure::Tls
                {
                    return ConnectFailure::Tls;
                }
            }
            current = error.source();
        }
        cause
    }
}
