//! [`MemorySessionStore`]: sessions in this process's memory, with the same versioning,
//! fencing and idempotent appends as the database stores.

use std::collections::{HashMap, HashSet};

use super::{Appended, SessionStore, check_id, stale};
use crate::data::{Message, SessionData};
use crate::error::SessionError;

/// Sessions in memory, for one process.
#[derive(Debug, Default)]
pub struct MemorySessionStore {
    sessions: parking_lot::Mutex<HashMap<String, Stored>>,
}

/// A session, the ids of its messages (so an append checks for its id in O(1)) and the
/// fences of its scopes.
#[derive(Debug)]
struct Stored {
    data: SessionData,
    ids: HashSet<String>,
    scopes: HashMap<String, u64>,
}

impl Stored {
    fn new(data: SessionData) -> Self {
        let ids = data.messages.iter().map(|m| m.id.clone()).collect();
        Self {
            data,
            ids,
            scopes: HashMap::new(),
        }
    }

    /// Checks `fence` against the scope's highest and records it.
    fn advance_scope(&mut self, id: &str, scope: &str, fence: u64) -> Result<(), SessionError> {
        let recorded = self.scopes.entry(scope.to_owned()).or_insert(0);
        if *recorded > fence {
            return Err(stale(id, fence, *recorded));
        }
        *recorded = fence;
        Ok(())
    }
}

impl MemorySessionStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn save_checked(
        &self,
        session: &SessionData,
        fence: Option<u64>,
    ) -> Result<SessionData, SessionError> {
        let mut sessions = self.sessions.lock();
        let stored = sessions
            .get_mut(&session.id)
            .ok_or_else(|| SessionError::NotFound(session.id.clone()))?;
        if let Some(fence) = fence
            && stored.data.fence > fence
        {
            return Err(stale(&session.id, fence, stored.data.fence));
        }
        if stored.data.version != session.version {
            return Err(SessionError::Conflict {
                id: session.id.clone(),
                expected: session.version,
            });
        }
        let scopes = std::mem::take(&mut stored.scopes);
        *stored = Stored::new(SessionData {
            version: session.version + 1,
            fence: stored.data.fence.max(fence.unwrap_or(0)),
            ..session.clone()
        });
        stored.scopes = scopes;
        Ok(stored.data.clone())
    }
}

#[async_trait::async_trait]
impl SessionStore for MemorySessionStore {
    async fn create(&self, session: &SessionData) -> Result<SessionData, SessionError> {
        check_id(&session.id)?;
        let mut sessions = self.sessions.lock();
        if sessions.contains_key(&session.id) {
            return Err(SessionError::AlreadyExists(session.id.clone()));
        }
        let stored = SessionData {
            version: 0,
            ..session.clone()
        };
        sessions.insert(session.id.clone(), Stored::new(stored.clone()));
        Ok(stored)
    }

    async fn load(&self, id: &str) -> Result<Option<SessionData>, SessionError> {
        Ok(self.sessions.lock().get(id).map(|s| s.data.clone()))
    }

    async fn append(
        &self,
        id: &str,
        message: &Message,
        fence: Option<u64>,
    ) -> Result<Appended, SessionError> {
        let mut sessions = self.sessions.lock();
        let stored = sessions
            .get_mut(id)
            .ok_or_else(|| SessionError::NotFound(id.to_owned()))?;
        if let Some(fence) = fence
            && stored.data.fence > fence
        {
            return Err(stale(id, fence, stored.data.fence));
        }
        let added = stored.ids.insert(message.id.clone());
        if added {
            stored.data.messages.push(message.clone());
            stored.data.version += 1;
            stored.data.fence = stored.data.fence.max(fence.unwrap_or(0));
        }
        Ok(Appended {
            added,
            version: stored.data.version,
            fence: stored.data.fence,
        })
    }

    async fn save(&self, session: &SessionData) -> Result<SessionData, SessionError> {
        self.save_checked(session, None)
    }

    async fn save_fenced(
        &self,
        session: &SessionData,
        fence: u64,
    ) -> Result<SessionData, SessionError> {
        self.save_checked(session, Some(fence))
    }

    async fn advance_fence(&self, id: &str, fence: u64) -> Result<u64, SessionError> {
        let mut sessions = self.sessions.lock();
        let stored = sessions
            .get_mut(id)
            .ok_or_else(|| SessionError::NotFound(id.to_owned()))?;
        if stored.data.fence > fence {
            return Err(stale(id, fence, stored.data.fence));
        }
        stored.data.fence = fence;
        Ok(fence)
    }

    async fn advance_scoped_fence(
        &self,
        id: &str,
        scope: &str,
        fence: u64,
    ) -> Result<u64, SessionError> {
        if scope.is_empty() {
            return self.advance_fence(id, fence).await;
        }
        let mut sessions = self.sessions.lock();
        let stored = sessions
            .get_mut(id)
            .ok_or_else(|| SessionError::NotFound(id.to_owned()))?;
        stored.advance_scope(id, scope, fence)?;
        Ok(fence)
    }

    async fn append_scoped(
        &self,
        id: &str,
        scope: &str,
        message: &Message,
        fence: u64,
    ) -> Result<Appended, SessionError> {
        if scope.is_empty() {
            return self.append(id, message, Some(fence)).await;
        }
        let mut sessions = self.sessions.lock();
        let stored = sessions
            .get_mut(id)
            .ok_or_else(|| SessionError::NotFound(id.to_owned()))?;
        stored.advance_scope(id, scope, fence)?;
        let added = stored.ids.insert(message.id.clone());
        if added {
            stored.data.messages.push(message.clone());
            stored.data.version += 1;
        }
        Ok(Appended {
            added,
            version: stored.data.version,
            fence: stored.data.fence,
        })
    }

    async fn list(&self, limit: usize) -> Result<Vec<String>, SessionError> {
        let mut ids: Vec<String> = self.sessions.lock().keys().cloned().collect();
        ids.sort();
        ids.truncate(limit);
        Ok(ids)
    }
}
