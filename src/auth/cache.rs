//! Users and their live sessions in memory, so that judging a request (and answering
//! `me`) costs no query. Forgotten on every change through the live events (see
//! `crate::cache`): a user's row changed or deleted, or one of their sessions revoked.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::Deserialize;
use uuid::Uuid;

use crate::cache::{Freshness, Invalidated, Ticket};
use crate::events::Message;
use crate::users::model::User;

/// Published (by database triggers) when a user changes or a session is revoked.
pub const TOPIC: &str = "auth.identity";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Changed {
    /// `None`: anyone may have changed.
    user_id: Option<Uuid>,
}

/// Beyond this many users, expired entries are dropped (and if that is not enough, all).
const CAPACITY: usize = 100_000;

struct Entry {
    user: Arc<User>,
    /// Live sessions seen since `at`: only these are vouched for.
    sessions: Vec<Uuid>,
    at: Instant,
}

pub struct IdentityCache {
    freshness: Freshness,
    users: RwLock<HashMap<Uuid, Entry>>,
}

impl IdentityCache {
    pub fn new(ttl: Duration) -> Self {
        IdentityCache {
            freshness: Freshness::new(ttl),
            users: RwLock::new(HashMap::new()),
        }
    }

    /// The active user behind a live session, if known.
    pub fn session(&self, user_id: Uuid, session_id: Uuid) -> Option<Arc<User>> {
        let users = self.users.read().unwrap_or_else(|e| e.into_inner());
        let entry = users.get(&user_id)?;
        (self.freshness.fresh(entry.at) && entry.sessions.contains(&session_id))
            .then(|| entry.user.clone())
    }

    /// The user's row, if known.
    pub fn user(&self, user_id: Uuid) -> Option<Arc<User>> {
        let users = self.users.read().unwrap_or_else(|e| e.into_inner());
        let entry = users.get(&user_id)?;
        self.freshness.fresh(entry.at).then(|| entry.user.clone())
    }

    /// Take before reading; `None`: store nothing.
    pub fn ticket(&self) -> Option<Ticket> {
        self.freshness.ticket()
    }

    /// Remembers an active user and one of their live sessions, as read under `ticket`.
    pub fn store(&self, ticket: Ticket, user: User, session_id: Uuid) {
        let mut users = self.users.write().unwrap_or_else(|e| e.into_inner());
        if !self.freshness.storable(ticket) {
            return;
        }
        match users.get_mut(&user.id) {
            // Keeps its age: nothing in an entry is older than the TTL allows.
            Some(entry) if self.freshness.fresh(entry.at) => {
                entry.user = Arc::new(user);
                if !entry.sessions.contains(&session_id) {
                    entry.sessions.push(session_id);
                }
            }
            _ => {
                if users.len() >= CAPACITY {
                    users.retain(|_, e| self.freshness.fresh(e.at));
                    if users.len() >= CAPACITY {
                        users.clear();
                    }
                }
                users.insert(
                    user.id,
                    Entry {
                        user: Arc::new(user),
                        sessions: vec![session_id],
                        at: Instant::now(),
                    },
                );
            }
        }
    }

    /// This replica forgets these users at once (the writer calls it after commit; other
    /// replicas hear the database's event).
    pub fn forget(&self, user_ids: &[Uuid]) {
        self.freshness.invalidate();
        let mut users = self.users.write().unwrap_or_else(|e| e.into_inner());
        for id in user_ids {
            users.remove(id);
        }
    }
}

impl Invalidated for IdentityCache {
    fn freshness(&self) -> &Freshness {
        &self.freshness
    }

    fn apply(&self, message: &Message) {
        match message.decode::<Changed>(TOPIC) {
            Some(Changed { user_id: Some(id) }) => self.forget(&[id]),
            Some(Changed { user_id: None }) => self.clear(),
            // Ours but unreadable: fail closed.
            None if message.topic == TOPIC => self.clear(),
            None => {}
        }
    }

    fn clear(&self) {
        self.freshness.invalidate();
        self.users
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::model::Role;

    fn user(id: Uuid) -> User {
        let now = chrono::Utc::now();
        User {
            id,
            name: "N".into(),
            email: "n@example.com".into(),
            password_hash: String::new(),
            role: Role::User,
            is_active: true,
            email_verified_at: None,
            last_login_at: None,
            created_at: now,
            updated_at: now,
        }
    }

    fn listening(ttl: Duration) -> IdentityCache {
        let cache = IdentityCache::new(ttl);
        cache.freshness.set_listening(true);
        cache
    }

    #[test]
    fn vouches_only_for_sessions_it_was_told_about() {
        let cache = listening(Duration::from_secs(60));
        let (id, session, other) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        cache.store(cache.ticket().unwrap(), user(id), session);
        assert!(cache.session(id, session).is_some());
        assert!(cache.session(id, other).is_none());
        assert!(cache.user(id).is_some());
        cache.forget(&[id]);
        assert!(cache.session(id, session).is_none());
    }

    #[test]
    fn a_read_that_straddles_an_invalidation_is_not_stored() {
        let cache = listening(Duration::from_secs(60));
        let (id, session) = (Uuid::new_v4(), Uuid::new_v4());
        let ticket = cache.ticket().unwrap();
        // The change commits (and is forgotten) while the old row is being read.
        cache.forget(&[id]);
        cache.store(ticket, user(id), session);
        assert!(cache.session(id, session).is_none());
    }

    #[test]
    fn nothing_is_trusted_while_the_listener_is_down_or_after_the_ttl() {
        let cache = listening(Duration::from_secs(60));
        let (id, session) = (Uuid::new_v4(), Uuid::new_v4());
        cache.store(cache.ticket().unwrap(), user(id), session);
        cache.freshness.set_listening(false);
        assert!(cache.session(id, session).is_none());
        assert!(cache.ticket().is_none(), "nothing is stored meanwhile");

        let expiring = listening(Duration::from_millis(1));
        expiring.store(expiring.ticket().unwrap(), user(id), session);
        std::thread::sleep(Duration::from_millis(5));
        assert!(expiring.session(id, session).is_none());

        let off = listening(Duration::ZERO);
        assert!(off.ticket().is_none(), "a zero TTL turns caching off");
    }
}
