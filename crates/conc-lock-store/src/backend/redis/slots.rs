//! The hash slots of a Redis Cluster, computed as the servers do (CRC16 of the key's hash
//! tag), and a short tag for each slot, so that a key can be named in any slot.

use std::sync::OnceLock;

/// How many hash slots a cluster has.
pub(super) const COUNT: u16 = 16384;

/// The slot of `key`: the CRC16 of its hash tag (the text between the first `{` and the
/// first `}` after it, when not empty), or of the whole key.
pub(super) fn of(key: &[u8]) -> u16 {
    let tag = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tag.unwrap_or(key)) % COUNT
}

/// The first decimal number whose CRC16 falls in `slot`: `{tag}` names a key in it.
pub(super) fn tag(slot: u16) -> &'static str {
    static TAGS: OnceLock<Vec<Box<str>>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let mut tags: Vec<Option<Box<str>>> = vec![None; usize::from(COUNT)];
        let mut missing = tags.len();
        let mut n = 0u64;
        while missing > 0 {
            let text = n.to_string();
            let slot = usize::from(of(text.as_bytes()));
            if tags[slot].is_none() {
                tags[slot] = Some(text.into_boxed_str());
                missing -= 1;
            }
            n += 1;
        }
        tags.into_iter().flatten().collect()
    });
    &tags[usize::from(slot % COUNT)]
}

#[cfg(test)]
mod tests {
    #[test]
    fn slots_match_the_servers_and_every_slot_has_a_tag() {
        // Known values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(super::of(b"123456789"), 0x31C3);
        assert_eq!(super::of(b"foo"), 12182);
        assert_eq!(super::of(b"{user1000}.following"), super::of(b"user1000"));
        assert_eq!(super::of(b"foo{}{bar}"), super::of(b"foo{}{bar}"));
        assert_eq!(super::of(b"foo{{bar}}zap"), super::of(b"{bar"));
        for slot in 0..super::COUNT {
            let tag = super::tag(slot);
            assert_eq!(super::of(format!("x{{{tag}}}y").as_bytes()), slot);
        }
    }
}
