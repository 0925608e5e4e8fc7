//! Session data: [`SessionData`], [`Message`], [`Role`].

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The person.
    User,
    /// The model.
    Assistant,
    /// Instructions.
    System,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// A stable id: appending the same id twice keeps one copy.
    pub id: String,
    /// Who wrote it.
    pub role: Role,
    /// The text.
    pub content: String,
    /// When it was written, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// For a message a generation wrote: that generation's fence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<u64>,
}

impl Message {
    /// A message written now.
    pub fn new(id: impl Into<String>, role: Role, content: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            role,
            content: content.into(),
            created_at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            fence: None,
        }
    }
}

/// A session: its messages, metadata and version. The version rises by one with every
/// saved update; a save against an older version is a conflict, never an overwrite.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SessionData {
    /// The session's id.
    pub id: String,
    /// Its messages, oldest first.
    pub messages: Vec<Message>,
    /// Free metadata (title, model, …).
    pub metadata: BTreeMap<String, String>,
    /// The version this copy was read at.
    pub version: u64,
    /// The highest generation fence the store has recorded for this session. The store
    /// keeps it apart from the data: a fenced write with an older fence is refused, and an
    /// ordinary save never lowers it.
    #[serde(default)]
    pub fence: u64,
}

impl SessionData {
    /// An empty session with `id`, at version 0.
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            ..Self::default()
        }
    }

    /// Whether a message with `id` is present.
    pub fn has_message(&self, id: &str) -> bool {
        self.messages.iter().any(|m| m.id == id)
    }
}
