//! The errors a run saw, kept by where they happened and what they said, so that a run
//! whose error count is not zero says what went wrong (a pooler's `prepared statement "s3"
//! does not exist`, a refused connection), not only how many.

use std::collections::BTreeMap;
use std::fmt;

/// How many distinct messages are kept per place; the rest are counted together.
const DISTINCT: usize = 20;
/// How many messages of each place the report prints.
const SHOWN: usize = 3;

/// Error messages by place, each with its count.
#[derive(Default)]
pub(super) struct ErrorLog {
    places: BTreeMap<&'static str, Place>,
}

#[derive(Default)]
struct Place {
    messages: BTreeMap<String, u64>,
    others: u64,
}

impl ErrorLog {
    /// Records one error at `place`.
    pub(super) fn record(&mut self, place: &'static str, error: &dyn fmt::Display) {
        let place = self.places.entry(place).or_default();
        let message = error.to_string();
        if let Some(count) = place.messages.get_mut(&message) {
            *count += 1;
        } else if place.messages.len() < DISTINCT {
            place.messages.insert(message, 1);
        } else {
            place.others += 1;
        }
    }

    /// The report's lines: per place, the most frequent messages with their counts.
    pub(super) fn lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for (place, seen) in &self.places {
            let mut messages: Vec<(&String, &u64)> = seen.messages.iter().collect();
            messages.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let total: u64 = seen.messages.values().sum::<u64>() + seen.others;
            lines.push(format!("{place}: {total}"));
            for (message, count) in messages.iter().take(SHOWN) {
                lines.push(format!("  {count} x {message}"));
            }
            let rest = messages.len().saturating_sub(SHOWN);
            if rest > 0 || seen.others > 0 {
                lines.push(format!(
                    "  and {} more kinds of message",
                    rest as u64 + seen.others.min(1)
                ));
            }
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorLog;

    #[test]
    fn messages_are_counted_by_place_and_the_most_frequent_shown() {
        let mut log = ErrorLog::default();
        for _ in 0..3 {
            log.record(
                "saving a user message",
                &"prepared statement \"s3\" does not exist",
            );
        }
        log.record("saving a user message", &"connection refused");
        for n in 0..30 {
            log.record("starting a generation", &format!("error {n}"));
        }
        let lines = log.lines();
        assert_eq!(lines[0], "saving a user message: 4");
        assert_eq!(lines[1], "  3 x prepared statement \"s3\" does not exist");
        assert_eq!(lines[2], "  1 x connection refused");
        assert_eq!(lines[3], "starting a generation: 30");
        assert!(lines.last().unwrap().contains("more kinds"));
    }
}
