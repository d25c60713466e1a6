//! The identity behind a request, judged by the user's current state in the database
//! (active, role, session not revoked), never by the token's claims alone.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use crate::db::schema::{sessions, users};
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use crate::users::model::{Role, User};

#[derive(Clone, Debug)]
pub struct Actor {
    pub user_id: Uuid,
    pub role: Role,
    pub session_id: Uuid,
}

impl Actor {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Administrator
    }
}

#[derive(Clone, Debug)]
pub enum Identity {
    Anonymous,
    /// A token was sent but is malformed, expired, revoked, or its user is deactivated.
    Invalid,
    User(Actor),
    /// A worker node's token (`pdn_...`), checked by the heartbeat path itself, which
    /// keeps the tokens it has seen in memory: heartbeats are too frequent for a lookup each.
    Node {
        token_hash: Vec<u8>,
    },
}

impl Identity {
    /// The signed-in user, or UNAUTHENTICATED.
    pub fn actor(&self) -> AppResult<&Actor> {
        match self {
            Identity::User(actor) => Ok(actor),
            Identity::Anonymous => Err(AppError::unauthenticated()),
            Identity::Node { .. } => Err(AppError::Forbidden(
                "node tokens only send heartbeats".into(),
            )),
            Identity::Invalid => Err(AppError::Unauthenticated(
                "the access token is invalid, expired or revoked".into(),
            )),
        }
    }

    pub fn is_admin(&self) -> bool {
        matches!(self, Identity::User(actor) if actor.is_admin())
    }

    /// A signed-in administrator, or UNAUTHENTICATED / FORBIDDEN.
    pub fn admin(&self) -> AppResult<&Actor> {
        let actor = self.actor()?;
        if !actor.is_admin() {
            return Err(AppError::Forbidden("administrators only".into()));
        }
        Ok(actor)
    }
}

/// Resolves an `Authorization` header value (`Bearer <token>`).
pub async fn resolve(state: &AppState, authorization: Option<&str>) -> AppResult<Identity> {
    let Some(header) = authorization.map(str::trim).filter(|h| !h.is_empty()) else {
        return Ok(Identity::Anonymous);
    };
    let Some(token) = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
    else {
        return Ok(Identity::Invalid);
    };
    if token.starts_with(crate::nodes::TOKEN_PREFIX) {
        return Ok(Identity::Node {
            token_hash: super::token_hash(token),
        });
    }
    let claims = match state.jwt.verify(token) {
        Ok(claims) => claims,
        Err(e) => {
            tracing::debug!(error = %e, "rejected access token");
            return Ok(Identity::Invalid);
        }
    };
    Ok(match current(state, claims.sub, claims.sid).await? {
        Some(actor) => Identity::User(actor),
        None => Identity::Invalid,
    })
}

/// The user behind a session as they are now: none if deactivated or the session revoked.
/// Long-lived subscriptions call it again before delivering each event. Served from
/// memory when this replica has seen the pair since the last change to either (see
/// `auth::cache`); the row read otherwise is remembered for `me`.
pub async fn current(
    state: &AppState,
    user_id: Uuid,
    session_id: Uuid,
) -> AppResult<Option<Actor>> {
    let cache = &state.identity_cache;
    if let Some(user) = cache.session(user_id, session_id) {
        return Ok(Some(Actor {
            user_id,
            role: user.role,
            session_id,
        }));
    }
    let ticket = cache.ticket();
    let mut conn = state.pool.get().await?;
    let row: Option<(User, Option<DateTime<Utc>>)> = users::table
        .inner_join(sessions::table)
        .filter(users::id.eq(user_id))
        .filter(sessions::id.eq(session_id))
        .select((User::as_select(), sessions::revoked_at))
        .first(&mut conn)
        .await
        .optional()?;
    drop(conn);
    Ok(match row {
        Some((user, None)) if user.is_active => {
            let role = user.role;
            if let Some(ticket) = ticket {
                cache.store(ticket, user, session_id);
            }
            Some(Actor {
                user_id,
                role,
                session_id,
            })
        }
        _ => None,
    })
}
