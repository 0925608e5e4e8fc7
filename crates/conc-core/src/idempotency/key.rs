//! [`IdempotencyKey`]: a deterministic key from a scope and stable parts, escaped so that
//! different parts never give the same text, with a hash that is the same everywhere; and
//! [`KeyError`], the one way to get it wrong.

use std::fmt::{self, Display, Write as _};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// A bad idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The scope was empty.
    #[error("an idempotency key needs a non-empty scope, such as \"db-save-message\"")]
    EmptyScope,
}

/// A deterministic key from a scope and stable parts (conversation id, message id, attempt).
///
/// The text is `scope:part:part…`, with `\` and `:` escaped inside the scope and each part,
/// so `["a:b"]` and `["a", "b"]` give different keys.
///
/// # Stable hash
///
/// [`stable_hash`](Self::stable_hash) is 64-bit FNV-1a over the UTF-8 bytes of
/// [`as_str`](Self::as_str): the same on every platform, process and version of this crate,
/// so it can pick a shard ([`shard`](Self::shard)) that other processes agree on.
///
/// # Example
///
/// ```
/// use conc_core::IdempotencyKey;
///
/// let key = IdempotencyKey::new("db-save-message", ["conv-1", "msg-7"]).unwrap();
/// assert_eq!(key.as_str(), "db-save-message:conv-1:msg-7");
/// assert_ne!(
///     IdempotencyKey::new("s", ["a:b"]).unwrap(),
///     IdempotencyKey::new("s", ["a", "b"]).unwrap(),
/// );
/// assert!(IdempotencyKey::new("", [1]).is_err());
/// assert!(key.shard(16) < 16);
/// ```
#[derive(Clone)]
pub struct IdempotencyKey {
    text: Arc<str>,
    scope_len: usize,
    hash: u64,
}

impl IdempotencyKey {
    /// Builds a key; every part is formatted with `Display`.
    pub fn new<I>(scope: &str, parts: I) -> Result<Self, KeyError>
    where
        I: IntoIterator,
        I::Item: Display,
    {
        if scope.is_empty() {
            return Err(KeyError::EmptyScope);
        }
        let mut text = String::with_capacity(scope.len() + 32);
        escape_into(&mut text, scope);
        let scope_len = text.len();
        push_parts(&mut text, parts);
        let hash = fnv1a(text.as_bytes());
        Ok(Self {
            text: text.into(),
            scope_len,
            hash,
        })
    }

    /// This key with more `parts` appended (same scope): infallible, because the scope was
    /// checked when this key was made. Handy for a per-flow base key.
    ///
    /// ```
    /// use conc_core::IdempotencyKey;
    ///
    /// let base = IdempotencyKey::new("chat-stream", ["conv-1"]).unwrap();
    /// assert_eq!(base.join([7]), IdempotencyKey::new("chat-stream", ["conv-1", "7"]).unwrap());
    /// ```
    pub fn join<I>(&self, parts: I) -> IdempotencyKey
    where
        I: IntoIterator,
        I::Item: Display,
    {
        let mut text = String::with_capacity(self.text.len() + 32);
        text.push_str(&self.text);
        push_parts(&mut text, parts);
        let hash = fnv1a(text.as_bytes());
        IdempotencyKey {
            text: text.into(),
            scope_len: self.scope_len,
            hash,
        }
    }

    /// The key's text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The scope, as written in the key (escaped).
    pub fn scope(&self) -> &str {
        &self.text[..self.scope_len]
    }

    /// 64-bit FNV-1a of [`as_str`](Self::as_str); stable across platforms and versions.
    pub fn stable_hash(&self) -> u64 {
        self.hash
    }

    /// A shard in `0..shards` from the stable hash; `0` when `shards` is `0`.
    pub fn shard(&self, shards: u64) -> u64 {
        self.hash.checked_rem(shards).unwrap_or(0)
    }
}

fn push_parts<I>(text: &mut String, parts: I)
where
    I: IntoIterator,
    I::Item: Display,
{
    let mut part = String::new();
    for item in parts {
        part.clear();
        // Writing to a String cannot fail.
        let _ = write!(part, "{item}");
        text.push(':');
        escape_into(text, &part);
    }
}

fn escape_into(out: &mut String, raw: &str) {
    for c in raw.chars() {
        if c == '\\' || c == ':' {
            out.push('\\');
        }
        out.push(c);
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

impl PartialEq for IdempotencyKey {
    fn eq(&self, other: &Self) -> bool {
        // Clones of one key share their text: equal without reading it (the common case of
        // callers of one operation passing clones of one key).
        self.hash == other.hash && (Arc::ptr_eq(&self.text, &other.text) || self.text == other.text)
    }
}

impl Eq for IdempotencyKey {}

impl Hash for IdempotencyKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("IdempotencyKey").field(&&*self.text).finish()
    }
}

impl Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}
