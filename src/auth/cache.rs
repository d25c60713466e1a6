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
