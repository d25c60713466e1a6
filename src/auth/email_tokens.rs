//! The `email_tokens` table: one-time tokens sent by mail, stored as their SHA-256.

use chrono::{DateTime, Utc};
use diesel::deserialize::FromSqlRow;
use diesel::expression::AsExpression;
use diesel::prelude::*;
use diesel::sql_types::Text;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use crate::db::Conn;
use crate::db::schema::email_tokens;

#[derive(AsExpression, FromSqlRow, Clone, Copy, Debug, PartialEq, Eq)]
#[diesel(sql_type = Text)]
pub enum Purpose {
    VerifyEmail,
    ResetPassword,
}

crate::text_enum!(Purpose {
    VerifyEmail => "VERIFY_EMAIL",
    ResetPassword => "RESET_PASSWORD",
});

pub async fn insert(
    conn: &mut Conn,
    user_id: Uuid,
    purpose: Purpose,
    hash: &[u8],
    email: &str,
    expires_at: DateTime<Utc>,
) -> QueryResult<()> {
    diesel::insert_into(email_tokens::table)
        .values((
            email_tokens::user_id.eq(user_id),
            email_tokens::purpose.eq(purpose),
            email_tokens::token_hash.eq(hash),
            email_tokens::email.eq(email),
            email_tokens::expires_at.eq(expires_at),
        ))
        .execute(conn)
        .await
        .map(drop)
}

/// Uses the token once: its user and the address it was sent to, when it is of `purpose`,
/// unused and not expired at `now`. Two racing uses: one wins.
pub async fn consume(
    conn: &mut Conn,
    hash: &[u8],
    purpose: Purpose,
    now: DateTime<Utc>,
) -> QueryResult<Option<(Uuid, String)>> {
    diesel::update(
        email_tokens::table
            .filter(email_tokens::token_hash.eq(hash))
            .filter(email_tokens::purpose.eq(purpose))
            .filter(email_tokens::used_at.is_null())
            .filter(email_tokens::expires_at.gt(now)),
    )
    .set(email_tokens::used_at.eq(now))
    .returning((email_tokens::user_id, email_tokens::email))
    .get_result(conn)
    .await
    .optional()
}

/// Whether the token would be accepted now (a cheap check before expensive work).
pub async fn is_live(
    conn: &mut Conn,
    hash: &[u8],
    purpose: Purpose,
    now: DateTime<Utc>,
) -> QueryResult<bool> {
    diesel::select(diesel::dsl::exists(
        email_tokens::table
            .filter(email_tokens::token_hash.eq(hash))
            .filter(email_tokens::purpose.eq(purpose))
            .filter(email_tokens::used_at.is_null())
            .filter(email_tokens::expires_at.gt(now)),
    ))
    .get_result(conn)
    .await
}

/// Every other unused token of the user for `purpose` stops working (one was just used).
pub async fn retire(
    conn: &mut Conn,
    user_id: Uuid,
    purpose: Purpose,
    now: DateTime<Utc>,
) -> QueryResult<()> {
    diesel::update(
        email_tokens::table
            .filter(email_tokens::user_id.eq(user_id))
            .filter(email_tokens::purpose.eq(purpose))
            .filter(email_tokens::used_at.is_null()),
    )
    .set(email_tokens::used_at.eq(now))
    .execute(conn)
    .await
    .map(drop)
}

/// Tokens long past use are deleted by the token clean-up.
pub async fn prune(conn: &mut Conn, before: DateTime<Utc>) -> QueryResult<usize> {
    diesel::delete(email_tokens::table.filter(email_tokens::expires_at.lt(before)))
        .execute(conn)
        .await
}
