//! The stored form of [`Metadata`] on SQLite and PostgreSQL: a JSON object of strings
//! (`{"user_id":"u-1"}`), in the `metadata` column: TEXT on SQLite (`json_extract` reads
//! it), JSONB on PostgreSQL (`metadata->>'user_id'`, and its indexes). Redis keeps one hash
//! field per entry (`m:user_id`) instead, which `HGET` reads. Rows written by earlier
//! versions, as escaped `name=value` lines, are still read. Nothing is skipped: text that
//! is neither is kept whole under the name `_unreadable`, with a warning.

use crate::lease::Metadata;

/// The key under which metadata that could not be read is kept, whole.
const UNREADABLE: &str = "_unreadable";

/// Metadata as a JSON object of strings (a map of strings always serializes).
#[cfg(any(feature = "sqlite", feature = "postgres", test))]
pub(crate) fn encode_metadata(metadata: &Metadata) -> String {
    serde_json::to_string(metadata).unwrap_or_else(|_| "{}".to_owned())
}

/// The inverse of [`encode_metadata`], also reading the older `name=value` lines.
pub(crate) fn decode_metadata(text: &str) -> Metadata {
    if text.is_empty() {
        return Metadata::new();
    }
    if text.starts_with('{') {
        return serde_json::from_str(text).unwrap_or_else(|error| {
            tracing::warn!(%error, "lock metadata is not a JSON object of strings; kept whole under `{UNREADABLE}`");
            Metadata::from([(UNREADABLE.to_owned(), text.to_owned())])
        });
    }
    decode_lines(text)
}

/// The older form: `name=value` lines, with `\`, `=` and newlines escaped. A line with no
/// `=` is a name with an empty value.
fn decode_lines(text: &str) -> Metadata {
    let mut metadata = Metadata::new();
    for line in text.split('\n').filter(|l| !l.is_empty()) {
        let mut name = String::new();
        let mut value = String::new();
        let mut in_value = false;
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            let target = if in_value { &mut value } else { &mut name };
            match c {
                '\\' => match chars.next() {
                    Some('n') => target.push('\n'),
                    Some(other) => target.push(other),
                    None => {}
                },
                '=' if !in_value => in_value = true,
                c => target.push(c),
            }
        }
        metadata.insert(name, value);
    }
    metadata
}

/// The older form, for the test that old rows are still read.
#[cfg(test)]
fn encode_lines(metadata: &Metadata) -> String {
    let mut out = String::new();
    for (name, value) in metadata {
        escape_into(&mut out, name);
        out.push('=');
        escape_into(&mut out, value);
        out.push('\n');
    }
    out
}

#[cfg(test)]
fn escape_into(out: &mut String, raw: &str) {
    for c in raw.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '=' => out.push_str("\\="),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Metadata {
        let mut m = Metadata::new();
        m.insert("user=id".into(), "a\\b\nc \"quoted\" {}".into());
        m.insert("message_id".into(), "m-1".into());
        m.insert(String::new(), String::new());
        m
    }

    #[test]
    fn metadata_round_trips_as_json() {
        let m = sample();
        let text = encode_metadata(&m);
        assert!(text.starts_with('{'), "{text}");
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed["message_id"], "m-1");
        assert_eq!(decode_metadata(&text), m);
        assert_eq!(decode_metadata(""), Metadata::new());
        assert_eq!(
            decode_metadata(&encode_metadata(&Metadata::new())),
            Metadata::new()
        );
    }

    #[test]
    fn rows_of_the_older_form_are_still_read() {
        let m = sample();
        assert_eq!(decode_metadata(&encode_lines(&m)), m);
        // A line with no `=` is a name with an empty value, not dropped.
        assert_eq!(
            decode_metadata("flag\nk=v\n"),
            Metadata::from([("flag".into(), String::new()), ("k".into(), "v".into())])
        );
    }

    #[test]
    fn unreadable_metadata_is_kept_whole() {
        let m = decode_metadata("{not json");
        assert_eq!(m.get(UNREADABLE).map(String::as_str), Some("{not json"));
    }
}
