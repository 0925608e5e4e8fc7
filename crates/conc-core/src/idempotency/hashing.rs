//! The registry map's hasher: it mixes the hash a key already carries with a seed drawn
//! per registry, instead of hashing the key's text again on every lookup.

use std::hash::Hasher;

/// The registry map's hashing: a key carries its hash, computed once when it was made, so
/// the map only mixes that with a seed drawn per registry (std's random keys) rather than
/// hash the text again on every lookup.
#[derive(Clone)]
pub(super) struct KeyHashing(u64);

impl KeyHashing {
    pub(super) fn new() -> Self {
        use std::hash::BuildHasher as _;
        Self(std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64))
    }
}

impl std::hash::BuildHasher for KeyHashing {
    type Hasher = KeyHasher;

    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(self.0)
    }
}

/// See [`KeyHashing`]: a multiply-xorshift of the key's hash and the seed.
pub(super) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `IdempotencyKey`; anything else is still mixed in.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        let mixed = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = mixed ^ (mixed >> 29);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}
