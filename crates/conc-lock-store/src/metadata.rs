//! The text form of [`Metadata`] in the SQL stores: `name=value` lines, escaped.

use crate::lease::Metadata;

/// Encodes metadata as `name=value` lines, with `\`, `=` and newlines escaped; the form
/// every SQL backend stores.
pub(crate) fn encode_metadata(metadata: &Metadata) -> String {
    let mut out = String::new();
    for (name, value) in metadata {
        escape_into(&mut out, name);
        out.push('=');
        escape_into(&mut out, value);
        out.push('\n');
    }
    out
}

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

/// The inverse of [`encode_metadata`]; malformed lines are skipped.
pub(crate) fn decode_metadata(text: &str) -> Metadata {
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
        if in_value {
            metadata.insert(name, value);
        }
    }
    metadata
}

#[cfg(test)]
mod metadata_tests {
    use super::*;

    #[test]
    fn metadata_round_trips_through_its_text_form() {
        let mut m = Metadata::new();
        m.insert("user=id".into(), "a\\b\nc".into());
        m.insert("message_id".into(), "m-1".into());
        m.insert(String::new(), String::new());
        assert_eq!(decode_metadata(&encode_metadata(&m)), m);
    }
}
