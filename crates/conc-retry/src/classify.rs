//! Error classes: what a failure means for retrying.
//!
//! | class | retried | counts as a breaker failure |
//! | --- | --- | --- |
//! | `Transient` | yes | yes |
//! | `RateLimited` | yes, after `retry_after` if given | yes |
//! | `Server` | yes | yes |
//! | `Permanent` | no | no (the caller's mistake, not the dependency's) |
//! | `Aborted` | never | no (an outcome, not a failure) |

use std::io;
use std::time::Duration;

use conc_core::Aborted;

/// What a failure means for retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorClass {
    /// A passing fault (reset connection, timeout): retry.
    Transient,
    /// Told to slow down (HTTP 429): retry, after `retry_after` when the server gave one.
    RateLimited {
        /// The server's `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
    /// The dependency failed (HTTP 5xx): retry.
    Server,
    /// Retrying cannot help (bad request, not found, invalid input).
    Permanent,
    /// The work was aborted: never retried, never logged as an error.
    Aborted,
}

impl ErrorClass {
    /// Whether a retry may help.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorClass::Transient | ErrorClass::RateLimited { .. } | ErrorClass::Server
        )
    }

    /// Whether it counts against a circuit breaker.
    pub fn is_failure(self) -> bool {
        self.is_retryable()
    }
}

/// Classifies an error. Implement it for your error types.
///
/// ```
/// use conc_retry::{Classify, ErrorClass};
///
/// #[derive(Debug)]
/// enum LlmError { Overloaded, BadPrompt }
///
/// impl Classify for LlmError {
///     fn class(&self) -> ErrorClass {
///         match self {
///             LlmError::Overloaded => ErrorClass::Server,
///             LlmError::BadPrompt => ErrorClass::Permanent,
///         }
///     }
/// }
/// assert!(LlmError::Overloaded.class().is_retryable());
/// ```
pub trait Classify {
    /// This error's class.
    fn class(&self) -> ErrorClass;
}

/// An I/O error's class, by its kind:
///
/// | kind | class | why |
/// | --- | --- | --- |
/// | an abort error of conc-core (`conc_core::is_abort_error`) | `Aborted` | the work was stopped: never retried |
/// | `TimedOut`, `Interrupted`, `WouldBlock` | `Transient` | the next try may be quicker |
/// | `ConnectionReset`, `ConnectionAborted`, `ConnectionRefused`, `NotConnected`, `BrokenPipe`, `UnexpectedEof` | `Transient` | a connection failed; a new one may not |
/// | `AddrInUse`, `AddrNotAvailable`, `HostUnreachable`, `NetworkUnreachable`, `NetworkDown`, `ResourceBusy` | `Transient` | the network or host may recover |
/// | `Other` (what `io::Error::other(e)` makes) | the class of the `io::Error` it wraps, if it wraps one; else `Server` | a wrapped failure of a lower layer or a dependency, which a retry may outlast (and a breaker counts); wrap a bad request in `InvalidInput` or `InvalidData` instead |
/// | every other kind (`NotFound`, `PermissionDenied`, `InvalidInput`, `InvalidData`, `Unsupported`, …) | `Permanent` | the same call fails the same way |
impl Classify for io::Error {
    fn class(&self) -> ErrorClass {
        if conc_core::is_abort_error(self) {
            return ErrorClass::Aborted;
        }
        if self.kind() == io::ErrorKind::Other {
            return match self
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<io::Error>())
            {
                Some(inner) => inner.class(),
                None => ErrorClass::Server,
            };
        }
        match self.kind() {
            io::ErrorKind::TimedOut
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::NotConnected
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::AddrInUse
            | io::ErrorKind::AddrNotAvailable
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::NetworkDown
            | io::ErrorKind::ResourceBusy => ErrorClass::Transient,
            _ => ErrorClass::Permanent,
        }
    }
}

impl Classify for crate::retry::AttemptTimeout {
    fn class(&self) -> ErrorClass {
        ErrorClass::Transient
    }
}

/// conc-async's timeouts are transient (with the `conc-async` feature).
#[cfg(feature = "conc-async")]
impl Classify for conc_async::TimeoutError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Transient
    }
}

impl Classify for Aborted {
    fn class(&self) -> ErrorClass {
        ErrorClass::Aborted
    }
}

/// Classifies an HTTP status, with the response's `Retry-After` header value if any.
///
/// 429 is `RateLimited`; 503 with a `Retry-After` too; 408 is `Transient`; other 5xx
/// `Server`; everything else `Permanent`.
///
/// ```
/// use std::time::Duration;
/// use conc_retry::{ErrorClass, classify_http};
///
/// assert_eq!(
///     classify_http(429, Some("2")),
///     ErrorClass::RateLimited { retry_after: Some(Duration::from_secs(2)) }
/// );
/// assert_eq!(classify_http(502, None), ErrorClass::Server);
/// assert_eq!(classify_http(404, None), ErrorClass::Permanent);
/// ```
pub fn classify_http(status: u16, retry_after: Option<&str>) -> ErrorClass {
    let retry_after = retry_after.and_then(parse_retry_after);
    match status {
        429 => ErrorClass::RateLimited { retry_after },
        503 if retry_after.is_some() => ErrorClass::RateLimited { retry_after },
        408 => ErrorClass::Transient,
        500..=599 => ErrorClass::Server,
        _ => ErrorClass::Permanent,
    }
}

/// Parses a `Retry-After` value: delta-seconds (`"120"`) or an HTTP-date in any of the
/// three formats RFC 9110 requires a recipient to accept (IMF-fixdate
/// `"Sun, 06 Nov 1994 08:49:37 GMT"`, the obsolete RFC 850 `"Sunday, 06-Nov-94 08:49:37
/// GMT"` and asctime `"Sun Nov  6 08:49:37 1994"`), taken relative to now; a past date is
/// zero. `None` for anything else. Dates are parsed by the `httpdate` crate.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    // Through the Unix epoch: std's `SystemTime::now` panics on WebAssembly.
    let at = at.duration_since(std::time::UNIX_EPOCH).ok()?;
    Some(at.saturating_sub(crate::time::unix_now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_parse_in_all_three_formats() {
        for past in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(parse_retry_after(past), Some(Duration::ZERO), "{past}");
        }
        let later =
            httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(120));
        let parsed = parse_retry_after(&later).expect("a future IMF-fixdate");
        assert!(parsed > Duration::from_secs(110) && parsed <= Duration::from_secs(120));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 PST"), None);
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
    }
}
