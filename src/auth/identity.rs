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

/// What a bearer token claims, before the caller's current state is looked up. A
/// WebSocket keeps this from `connection_init` and has every operation judged anew.
#[derive(Clone, Debug)]
pub enum Credentials {
    None,
    /// Malformed, badly signed or expired at the time it was presented.
    Invalid,
    User {
        user_id: Uuid,
        session_id: Uuid,
        /// Unix seconds: the token's `exp`.
        expires_at: i64,
    },
    Node {
        token_hash: Vec<u8>,
    },
}

/// Reads an `Authorization` header value (`Bearer <token>`): signature and expiry only.
pub fn credentials(state: &AppState, authorization: Option<&str>) -> Credentials {
    let Some(header) = authorization.map(str::trim).filter(|h| !h.is_empty()) else {
        return Credentials::None;
    };
    let Some(token) = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
    else {
        return Credentials::Invalid;
    };
    if token.starts_with(crate::nodes::TOKEN_PREFIX) {
        return Credentials::Node {
            token_hash: super::token_hash(token),
        };
    }
    match state.jwt.verify(token) {
        Ok(claims) => Credentials::User {
            user_id: claims.sub,
            session_id: claims.sid,
            expires_at: claims.exp,
        },
        Err(e) => {
            tracing::debug!(error = %e, "rejected access token");
            Credentials::Invalid
        }
    }
}

/// The identity `credentials` stand for now: the token unexpired, the session not revoked,
/// the user active, with the user's current role.
pub async fn judge(state: &AppState, credentials: &Credentials) -> AppResult<Identity> {
    Ok(match credentials {
        Credentials::None => Identity::Anonymous,
        Credentials::Invalid => Identity::Invalid,
        Credentials::Node { token_hash } => Identity::Node {
            token_hash: token_hash.clone(),
        },
        Credentials::User { expires_at, .. } if *expires_at <= Utc::now().timestamp() => {
            Identity::Invalid
        }
        Credentials::User {
            user_id,
            session_id,
            ..
        } => match current(state, *user_id, *session_id).await? {
            Some(actor) => Identity::User(actor),
            None => Identity::Invalid,
        },
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
