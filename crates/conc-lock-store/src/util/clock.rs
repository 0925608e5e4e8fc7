//! Clock arithmetic shared by the stores: fences drawn from the clock, Unix times, and
//! the time format of messages.

use std::time::SystemTime;

/// The next fence after `previous`: at least one more, and at least the store's clock in
/// microseconds since the Unix epoch. The clock part is what keeps fences going forward
/// when a store loses its state (a restart without persistence, a flush, an eviction):
/// the next fence is then drawn from the clock alone, which has moved past every fence
/// drawn before, as long as the store's clock never steps back.
pub(crate) fn next_fence(previous: u64, clock_micros: u64) -> u64 {
    previous.saturating_add(1).max(clock_micros)
}

/// Microseconds since the Unix epoch on this machine's wall clock.
pub(crate) fn unix_micros(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC), for messages and operators.
pub(crate) fn format_time(time: SystemTime) -> String {
    let millis = crate::util::clock::unix_millis(time);
    let (secs, ms) = (millis.div_euclid(1000), millis.rem_euclid(1000));
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z")
}

/// Milliseconds since the Unix epoch, for wall-clock expiry shared between processes.
pub(crate) fn unix_millis(time: std::time::SystemTime) -> i64 {
    match time.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

#[cfg(any(feature = "sqlite", feature = "redis", feature = "etcd"))]
/// The inverse of [`unix_millis`].
pub(crate) fn from_unix_millis(millis: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(millis).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn times_format_as_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(784_111_777_123);
        assert_eq!(format_time(t), "1994-11-06T08:49:37.123Z");
        assert_eq!(
            format_time(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000Z"
        );
    }
}
