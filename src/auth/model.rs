//! Sessions (refresh-token families) and refresh tokens.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use crate::db::Conn;
use crate::db::schema::{refresh_tokens, sessions};
use crate::state::ClientInfo;

#[derive(Queryable, Selectable, Debug, Clone)]
#[diesel(table_name = sessions, check_for_backend(diesel::pg::Pg))]
pub struct Session {
    pub id: Uuid,
    pub user_id: Uuid,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Queryable, Selectable, Debug, Clone)]
#[diesel(table_name = refresh_tokens, check_for_backend(diesel::pg::Pg))]
pub struct RefreshToken {
    pub id: Uuid,
    pub session_id: Uuid,
    pub expires_at: DateTime<Utc>,
    pub rotated_at: Option<DateTime<Utc>>,
}

pub async fn create_session(
    conn: &mut Conn,
    user_id: Uuid,
    client: &ClientInfo,
) -> QueryResult<Uuid> {
    diesel::insert_into(sessions::table)
        .values((
            sessions::user_id.eq(user_id),
            sessions::ip.eq(client.ip.to_string()),
            sessions::user_agent.eq(client.user_agent.as_deref().map(|ua| truncate(ua, 512))),
        ))
        .returning(sessions::id)
        .get_result(conn)
        .await
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

pub async fn insert_refresh_token(
    conn: &mut Conn,
    session_id: Uuid,
    token_hash: &[u8],
    expires_at: DateTime<Utc>,
) -> QueryResult<()> {
    diesel::insert_into(refresh_tokens::table)
        .values((
            refresh_tokens::session_id.eq(session_id),
            refresh_tokens::token_hash.eq(token_hash),
            refresh_tokens::expires_at.eq(expires_at),
        ))
        .execute(conn)
        .await
        .map(drop)
}

/// The token with this hash and its session, both locked for the rest of the transaction.
pub async fn find_token_for_update(
    conn: &mut Conn,
    token_hash: &[u8],
) -> QueryResult<Option<(RefreshToken, Session)>> {
    refresh_tokens::table
        .inner_join(sessions::table)
        .filter(refresh_tokens::token_hash.eq(token_hash))
        .select((RefreshToken::as_select(), Session::as_select()))
        .for_update()
        .first(conn)
        .await
        .optional()
}

pub async fn mark_rotated(conn: &mut Conn, token_id: Uuid) -> QueryResult<()> {
    diesel::update(refresh_tokens::table.find(token_id))
        .set(refresh_tokens::rotated_at.eq(diesel::dsl::now))
        .execute(conn)
        .await
        .map(drop)
}

pub async fn touch_session(conn: &mut Conn, session_id: Uuid) -> QueryResult<()> {
    diesel::update(sessions::table.find(session_id))
        .set(sessions::last_used_at.eq(diesel::dsl::now))
        .execute(conn)
        .await
        .map(drop)
}

pub async fn revoke_session(conn: &mut Conn, session_id: Uuid, reason: &str) -> QueryResult<usize> {
    diesel::update(
        sessions::table
            .find(session_id)
            .filter(sessions::revoked_at.is_null()),
    )
    .set((
        sessions::revoked_at.eq(diesel::dsl::now),
        sessions::revoked_reason.eq(reason),
    ))
    .execute(conn)
    .await
}

/// Revokes the live sessions of these users, except `keep`; returns how many.
pub async fn revoke_user_sessions(
    conn: &mut Conn,
    user_ids: &[Uuid],
    keep: Option<Uuid>,
    reason: &str,
) -> QueryResult<usize> {
    let mut query = diesel::update(sessions::table)
        .filter(sessions::user_id.eq_any(user_ids))
        .filter(sessions::revoked_at.is_null())
        .into_boxed();
    if let Some(keep) = keep {
        query = query.filter(sessions::id.ne(keep));
    }
    query
        .set((
            sessions::revoked_at.eq(diesel::dsl::now),
            sessions::revoked_reason.eq(reason),
        ))
        .execute(conn)
        .await
}
