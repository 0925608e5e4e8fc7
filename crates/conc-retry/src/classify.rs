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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use conc_async::TimeoutError;
use conc_core::Aborted;

/// What a failure means for retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

impl Classify for io::Error {
    fn class(&self) -> ErrorClass {
        if conc_core::is_abort_error(self) {
            return ErrorClass::Aborted;
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

impl Classify for TimeoutError {
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

/// Parses a `Retry-After` value: delta-seconds (`"120"`) or an IMF-fixdate
/// (`"Wed, 21 Oct 2015 07:28:00 GMT"`, taken relative to now; a past date is zero).
/// `None` for anything else.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = parse_http_date(value)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(at.saturating_sub(now)))
}

/// Seconds since the Unix epoch of an IMF-fixdate such as `Sun, 06 Nov 1994 08:49:37 GMT`.
fn parse_http_date(value: &str) -> Option<u64> {
    let rest = value.split_once(", ")?.1;
    let mut parts = rest.split(' ');
    let day: u64 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut clock = parts.next()?.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, s) = (clock.next()??, clock.next()??, clock.next()??);
    if parts.next()? != "GMT" || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day as i64);
    u64::try_from(days)
        .ok()
        .map(|d| d * 86_400 + h * 3600 + m * 60 + s)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_parse() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 PST"), None);
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
    }
}
